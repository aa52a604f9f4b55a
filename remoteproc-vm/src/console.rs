//! What a remote prints, made safe for the operator's terminal: the one escaping helper and
//! the bounds on console text that every path from a remote's console (the console port, the
//! proxy's fd 1 and 2, trace buffers) shares.
//!
//! A remote is untrusted: its bytes must never reach a terminal raw, where ESC, CSI, OSC and
//! the other C0/C1 controls could move the cursor, retitle the window or answer queries.
//! Printable text (valid UTF-8 minus controls), newlines and tabs stay as they are; every other
//! byte or character is written as a visible `\xNN` / `\u{NNNN}` escape.

/// Bytes of console output kept unread per remote; beyond it new bytes are dropped until the
/// host takes the buffer.
pub const MAX_CONSOLE_BUFFER: usize = 64 * 1024;
/// Characters of one console line at most once escaped; a longer line is cut with a marker.
pub const MAX_CONSOLE_LINE: usize = 1024;
/// Bytes a trace-buffer read returns at most, whatever size the firmware's resource table
/// (or the kernel's debugfs file) claims.
pub const MAX_TRACE_READ: usize = 256 * 1024;

/// `bytes` with every terminal control escaped: printable characters, `\n` and `\t` kept, a
/// backslash doubled, other controls (C0, DEL, C1) as `\u{..}` and invalid UTF-8 as `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' | '\t' => out.push(c),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The lines of `bytes`, escaped (see [`escape`]) and each cut to [`MAX_CONSOLE_LINE`]
/// characters, ready to print one per terminal line.
pub fn escaped_lines(bytes: &[u8]) -> Vec<String> {
    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    text.split(|&b| b == b'\n')
        .map(|l| bound_line(escape(l.strip_suffix(b"\r").unwrap_or(l))))
        .collect()
}

fn bound_line(line: String) -> String {
    match line.char_indices().nth(MAX_CONSOLE_LINE) {
        Some((cut, _)) => format!("{}[... line cut]", &line[..cut]),
        None => line,
    }
}

/// Appends `bytes` to a console buffer, keeping it within [`MAX_CONSOLE_BUFFER`]; returns the
/// bytes dropped.
pub fn push_bounded(buffer: &mut Vec<u8>, bytes: &[u8]) -> usize {
    let room = MAX_CONSOLE_BUFFER.saturating_sub(buffer.len());
    let kept = bytes.len().min(room);
    buffer.extend_from_slice(&bytes[..kept]);
    bytes.len() - kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_text_kept() {
        assert_eq!(escape(b"hi\tthere\n"), "hi\tthere\n");
        assert_eq!(escape("héllo".as_bytes()), "héllo");
        assert_eq!(escape(b"\x1b[2J\x07"), "\\u{1b}[2J\\u{7}");
        assert_eq!(escape("\u{9b}31m".as_bytes()), "\\u{9b}31m");
        assert_eq!(escape(b"\xff\xfe"), "\\xff\\xfe");
        assert_eq!(escape(b"a\\b"), "a\\\\b");
        assert!(
            !escape(b"\x1b]0;title\x07\r\x7f")
                .chars()
                .any(|c| c.is_control())
        );
    }

    #[test]
    fn lines_are_split_and_bounded() {
        assert_eq!(escaped_lines(b"a\nb\r\n"), vec!["a", "b"]);
        assert_eq!(escaped_lines(b"a\n\nb"), vec!["a", "", "b"]);
        assert!(escaped_lines(b"").is_empty());
        let long = vec![b'x'; MAX_CONSOLE_LINE * 3];
        let lines = escaped_lines(&long);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].chars().count() < MAX_CONSOLE_LINE + 20);
    }

    #[test]
    fn buffer_is_bounded() {
        let mut buf = Vec::new();
        assert_eq!(push_bounded(&mut buf, &[1; 100]), 0);
        assert_eq!(push_bounded(&mut buf, &vec![2; MAX_CONSOLE_BUFFER]), 100);
        assert_eq!(buf.len(), MAX_CONSOLE_BUFFER);
    }
}
