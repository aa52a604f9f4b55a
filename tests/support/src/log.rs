//! Log files and console captures read back, for checks and failure reports.

use std::path::Path;

/// The file at `path` as text (invalid UTF-8 replaced), or empty if it cannot be read.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of a text (carriage returns dropped).
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of the file at `path` under a heading naming `what`, for a failure
/// message.
pub fn log_tail(what: &str, path: &Path, n: usize) -> String {
    format!(
        "\n----- {what} ({}), last lines -----\n{}\n",
        path.display(),
        tail(&read_lossy(path), n)
    )
}

/// How many lines of `text` contain `needle`.
pub fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// What follows `needle` on the first line of `text` that contains it, trimmed.
pub fn rest_of_line(text: &str, needle: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains(needle))?;
    let rest = line.split_once(needle).map_or("", |(_, r)| r);
    Some(rest.trim_end_matches('\r').trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_and_lines() {
        assert_eq!(tail("a\r\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\n", 5), "a");
        assert_eq!(count_lines("x1\ny\nx2", "x"), 2);
        assert_eq!(rest_of_line("k: v \r\nk: w", "k:"), Some("v".into()));
        assert_eq!(rest_of_line("", "k:"), None);
    }
}
