//! The status socket vamp's long-running programs answer on (`vhost-user-rpmsg` and
//! `remoteproc-vm run/start`): the protocol, its bounds, the serving loop and the client. What
//! an answer says is the program's own (the hub's links, a runner's remotes); this module only
//! carries it.
//!
//! # Protocol
//!
//! A client connects to the AF_UNIX stream socket, writes one request line (`status`, `json`
//! or `metrics`, at most [`MAX_REQUEST`] bytes with its newline), and reads the answer until
//! the server closes the connection. An unknown request is answered `error: ...`.
//!
//! # Bounds
//!
//! Clients are local but not trusted to behave: each gets [`REQUEST_TIME`] to send its line
//! and [`ANSWER_TIME`] to take the answer (whole-exchange deadlines, not per read, so a client
//! dribbling a byte at a time is cut off too); a longer line is refused unread. Clients are
//! served one at a time, so a slow one delays the next by those bounds at most, and never the
//! program it asks: the answer is rendered before any socket I/O. The socket is made
//! owner-only (0600).

use crate::ratelog::warn_limited;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest request line, newline included.
pub const MAX_REQUEST: usize = 64;
/// How long a client has to send its request line.
pub const REQUEST_TIME: Duration = Duration::from_secs(1);
/// How long a client has to take the whole answer.
pub const ANSWER_TIME: Duration = Duration::from_secs(2);
/// Largest answer [`query`] accepts (a hub of thousands of guests fits).
pub const MAX_ANSWER: u64 = 64 << 20;

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// The human-readable table.
    Status,
    /// The same as JSON.
    Json,
    /// The counters in the Prometheus text exposition format (version 0.0.4).
    Metrics,
}

impl Request {
    /// The request line's word.
    pub fn word(self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Json => "json",
            Request::Metrics => "metrics",
        }
    }

    fn parse(line: &[u8]) -> Option<Self> {
        [Request::Status, Request::Json, Request::Metrics]
            .into_iter()
            .find(|r| r.word().as_bytes() == line)
    }
}

/// A status socket, bound and listening, not served yet.
#[derive(Debug)]
pub struct StatusSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl StatusSocket {
    /// Binds `path` (a stale socket file there is replaced; one something listens on is not)
    /// and makes it owner-only.
    pub fn bind(path: &Path) -> io::Result<Self> {
        if std::fs::symlink_metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "something listens on it already (another instance?)",
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(StatusSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients one at a time, for ever: each request is answered with what `answer`
    /// renders for it. Failures are logged, rate-limited; an accept that fails (out of
    /// descriptors) pauses the loop briefly instead of spinning.
    pub fn serve(&self, mut answer: impl FnMut(Request) -> String) -> ! {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = answer_one(stream, &mut answer) {
                        warn_limited!("status socket {}: a client: {e}", self.path.display());
                    }
                }
                Err(e) => {
                    warn_limited!("status socket {}: accept: {e}", self.path.display());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// Reads one client's request within the bounds and answers it.
fn answer_one(
    mut stream: UnixStream,
    answer: &mut impl FnMut(Request) -> String,
) -> io::Result<()> {
    let line = read_request(&mut stream)?;
    let text = match Request::parse(&line) {
        Some(request) => answer(request),
        None => format!(
            "error: unknown request {:?}: ask for status, json or metrics\n",
            String::from_utf8_lossy(&line)
        ),
    };
    write_within(&mut stream, text.as_bytes(), ANSWER_TIME)
}

/// The request line, without its newline: at most [`MAX_REQUEST`] bytes within
/// [`REQUEST_TIME`], or an error.
fn read_request(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + REQUEST_TIME;
    let mut line = Vec::with_capacity(MAX_REQUEST);
    let mut buf = [0u8; MAX_REQUEST];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request line in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf[..MAX_REQUEST - line.len()])?;
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return Ok(line);
        }
        if n == 0 {
            // A client may end its request by closing its side instead of a newline.
            return Ok(line);
        }
        if line.len() >= MAX_REQUEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request longer than {MAX_REQUEST} bytes"),
            ));
        }
    }
}

/// Writes all of `data` within `limit`, or gives up.
fn write_within(stream: &mut UnixStream, mut data: &[u8], limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    while !data.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not take its answer in time",
            ));
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Asks the program listening on `path` for `request` and returns its answer (the client side
/// of `vhost-user-rpmsg status` and `remoteproc-vm status`). `timeout` bounds the
/// connect-to-last-byte exchange.
pub fn query(path: &Path, request: Request, timeout: Duration) -> io::Result<String> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("{}\n", request.word()).as_bytes())?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    match text.strip_prefix("error: ") {
        Some(e) => Err(io::Error::other(e.trim_end().to_string())),
        None => Ok(text),
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A value as pretty JSON with a final newline; a serializer error becomes a JSON object
/// saying it (the answer is always JSON).
pub fn json<T: serde::Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value)
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_exactly() {
        assert_eq!(Request::parse(b"status"), Some(Request::Status));
        assert_eq!(Request::parse(b"metrics"), Some(Request::Metrics));
        assert_eq!(Request::parse(b"json"), Some(Request::Json));
        assert_eq!(Request::parse(b"json "), None);
        assert_eq!(Request::parse(b""), None);
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_served_socket_answers_and_refuses_unknown_requests() {
        let dir = std::env::temp_dir().join(format!("vamp-status-socket-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let socket = StatusSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            StatusSocket::bind(&path).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        std::thread::spawn(move || socket.serve(|r| format!("answer to {}\n", r.word())));
        let t = Duration::from_secs(10);
        assert_eq!(query(&path, Request::Json, t).unwrap(), "answer to json\n");
        assert_eq!(
            query(&path, Request::Metrics, t).unwrap(),
            "answer to metrics\n"
        );
        let mut raw = UnixStream::connect(&path).unwrap();
        raw.write_all(b"hello\n").unwrap();
        let mut text = String::new();
        raw.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("error: unknown request"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_slow_or_flooding_client_is_cut_off_within_the_bounds() {
        // A client that never sends its line.
        let (mut server, _client) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let err = read_request(&mut server).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        assert!(start.elapsed() < REQUEST_TIME * 5);

        // A client that dribbles a byte at a time never reaches its deadline's end.
        let (mut server, mut client) = UnixStream::pair().unwrap();
        let dribbler = std::thread::spawn(move || {
            for _ in 0..40 {
                if client.write_all(b"s").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let start = Instant::now();
        assert!(read_request(&mut server).is_err());
        assert!(start.elapsed() < REQUEST_TIME * 3);
        drop(server);
        dribbler.join().unwrap();

        // A line longer than the bound.
        let (mut server, mut client) = UnixStream::pair().unwrap();
        client.write_all(&[b'x'; MAX_REQUEST * 2]).unwrap();
        let err = read_request(&mut server).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // A client that does not read its answer.
        let (mut server, _client) = UnixStream::pair().unwrap();
        let big = vec![b'y'; 8 << 20];
        let start = Instant::now();
        assert!(write_within(&mut server, &big, Duration::from_millis(300)).is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
