//! The hub's status socket: what an operator asks a running `vhost-user-rpmsg` (guests, link
//! states, names, per-link counters, remotes), as a table, as JSON, or as a Prometheus text
//! exposition. [`ControlSocket`] serves it on a thread of its own (`vamp-status`); [`query`]
//! is the client (`vhost-user-rpmsg status`).
//!
//! # Protocol
//!
//! A client connects to the AF_UNIX stream socket, writes one request line (`status`, `json`
//! or `metrics`, at most [`MAX_REQUEST`] bytes with its newline), and reads the answer until
//! the hub closes the connection. An unknown request is answered `error: ...`.
//!
//! # Bounds
//!
//! Clients are local but not trusted to behave: each gets [`REQUEST_TIME`] to send its line
//! and [`ANSWER_TIME`] to take the answer (whole-exchange deadlines, not per read, so a client
//! dribbling a byte at a time is cut off too); a longer line is refused unread. Clients are
//! served one at a time, so a slow one delays the next by those bounds at most, and never the
//! hub: each of its locks is held only to copy its counters
//! ([`SharedHub::status`](crate::hub::SharedHub::status)), never across socket I/O. The socket is
//! made owner-only (0600).
//!
//! # Sandbox
//!
//! The thread renders names the guests announced (guest bytes, shown lossily) and reads what
//! local clients write: it runs confined like every thread that reads outside input
//! ([`ThreadKind::Status`]: accept, read, write, socket timeouts, and the common calls).

use crate::hub::{DropReason, HubStatus, LinkStatus, SharedHub};
use crate::sandbox::{self, ThreadKind};
use std::fmt::Write as _;
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
    /// The same as JSON (one object: `links`, `lock_taken`, `lock_waited`).
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

/// The status socket, bound and listening, not served yet.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` (a stale socket file there is replaced; one something listens on is not)
    /// and makes it owner-only.
    pub fn bind(path: &Path) -> io::Result<Self> {
        if std::fs::symlink_metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "something listens on it already (another hub?)",
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients on a thread of its own (`vamp-status`), confined, for as long as the
    /// process runs.
    pub fn spawn(self, hub: SharedHub) -> io::Result<()> {
        std::thread::Builder::new()
            .name("vamp-status".into())
            .spawn(move || {
                sandbox::enter(ThreadKind::Status);
                self.serve(&hub)
            })
            .map(drop)
    }

    fn serve(&self, hub: &SharedHub) {
        let mut failures = crate::hub::Reports::default();
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = answer(stream, hub)
                        && failures.worth_logging(crate::hub::Reports::FIRST)
                    {
                        log::info!("status socket: a client: {e}");
                    }
                }
                Err(e) => {
                    if failures.worth_logging(crate::hub::Reports::FIRST) {
                        log::warn!("status socket {}: accept: {e}", self.path.display());
                    }
                    // Out of descriptors or alike: do not spin.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// Reads one client's request within the bounds and answers it.
fn answer(mut stream: UnixStream, hub: &SharedHub) -> io::Result<()> {
    let line = read_request(&mut stream)?;
    let text = match Request::parse(&line) {
        Some(request) => render(request, &hub.status()),
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

/// `request`'s answer for `status`.
pub fn render(request: Request, status: &HubStatus) -> String {
    match request {
        Request::Status => table(status),
        Request::Json => {
            let mut text = serde_json::to_string_pretty(status)
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            text.push('\n');
            text
        }
        Request::Metrics => metrics(status),
    }
}

/// Asks the hub listening on `path` for `request` and returns its answer (the client side of
/// `vhost-user-rpmsg status`). `timeout` bounds the connect-to-last-byte exchange.
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

/// Names joined for the table, `-` for none.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "-".into()
    } else {
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn table(status: &HubStatus) -> String {
    let mut out = String::new();
    let guests = status.links.iter().filter(|l| l.kind == "guest").count();
    let _ = writeln!(
        out,
        "{guests} guest(s), {} remote(s); hub lock taken {} times, {} of them waited",
        status.links.len() - guests,
        status.lock_taken,
        status.lock_waited
    );
    let width = status
        .links
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:width$}  {:6}  {:6}  {:>10}  {:>10}  {:>12}  {:>8}  {:>8}  {:>7}  {:>10}  {:>6}",
        "NAME",
        "KIND",
        "STATE",
        "FORWARDED",
        "SERVED",
        "BYTES",
        "DROPPED",
        "QUEUED",
        "WAITING",
        "RECONNECTS",
        "ERRORS"
    );
    for l in &status.links {
        let s = &l.stats;
        let _ = writeln!(
            out,
            "{:width$}  {:6}  {:6}  {:>10}  {:>10}  {:>12}  {:>8}  {:>8}  {:>7}  {:>10}  {:>6}",
            l.name,
            l.kind,
            l.state,
            s.forwarded,
            s.served,
            s.bytes,
            s.dropped,
            s.queued,
            l.queued_now,
            l.reconnects,
            s.protocol_errors + s.bad_chains
        );
    }
    for l in &status.links {
        let _ = writeln!(out, "\n{} {}:", l.kind, l.name);
        let _ = writeln!(out, "  announced: {}", list(&l.announced));
        let _ = writeln!(out, "  offered:   {}", list(&l.offered));
        let drops: Vec<String> = DropReason::ALL
            .iter()
            .filter(|r| l.stats.drops(**r) > 0)
            .map(|r| format!("{} {}", r.name(), l.stats.drops(*r)))
            .collect();
        if !drops.is_empty() {
            let _ = writeln!(out, "  dropped:   {}", drops.join(", "));
        }
        let _ = writeln!(
            out,
            "  errors:    {} protocol, {} malformed chains; {} polls over budget",
            l.stats.protocol_errors, l.stats.bad_chains, l.stats.budget_spent
        );
        if let Some(why) = l.broken_why {
            let _ = writeln!(out, "  broken:    {why} (down until it resets the device)");
        }
        if let Some(r) = l.remote {
            let _ = writeln!(out, "  remote:    {}, {} restart(s)", r.state, r.restarts);
        }
    }
    out
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every metric the exposition has: name, type, help, and its value for one link (`None`:
/// not for this link).
type PerLink = (
    &'static str,
    &'static str,
    &'static str,
    fn(&LinkStatus) -> Option<u64>,
);

/// The per-link metrics (the names are documented in the README's operators section).
const PER_LINK: &[PerLink] = &[
    ("vamp_hub_link_up", "gauge", "1 while the link is up", |l| {
        Some(u64::from(l.state == "up"))
    }),
    (
        "vamp_hub_link_broken",
        "gauge",
        "1 while the link is down for breaking the ring protocol, until a device reset",
        |l| Some(u64::from(l.state == "broken")),
    ),
    (
        "vamp_hub_messages_forwarded_total",
        "counter",
        "messages from the link delivered to another link",
        |l| Some(l.stats.forwarded),
    ),
    (
        "vamp_hub_messages_served_total",
        "counter",
        "messages from the link answered by a host service",
        |l| Some(l.stats.served),
    ),
    (
        "vamp_hub_payload_bytes_total",
        "counter",
        "payload bytes of the messages forwarded and served",
        |l| Some(l.stats.bytes),
    ),
    (
        "vamp_hub_messages_queued_total",
        "counter",
        "messages for the link that waited for its buffers",
        |l| Some(l.stats.queued),
    ),
    (
        "vamp_hub_messages_waiting",
        "gauge",
        "messages waiting for the link's buffers now",
        |l| Some(l.queued_now as u64),
    ),
    (
        "vamp_hub_link_ups_total",
        "counter",
        "times the link came up (reconnects, resets and restarts after the first)",
        |l| Some(l.stats.ups),
    ),
    (
        "vamp_hub_protocol_errors_total",
        "counter",
        "times the link broke the ring protocol",
        |l| Some(l.stats.protocol_errors),
    ),
    (
        "vamp_hub_bad_chains_total",
        "counter",
        "malformed descriptor chains returned unused",
        |l| Some(l.stats.bad_chains),
    ),
    (
        "vamp_hub_poll_budget_spent_total",
        "counter",
        "polls of the link that took their whole budget",
        |l| Some(l.stats.budget_spent),
    ),
    (
        "vamp_hub_names_announced",
        "gauge",
        "names the link announced",
        |l| Some(l.announced.len() as u64),
    ),
    (
        "vamp_hub_names_offered",
        "gauge",
        "names the hub announced to the link",
        |l| Some(l.offered.len() as u64),
    ),
    (
        "vamp_hub_remote_running",
        "gauge",
        "1 while the remote runs",
        |l| l.remote.map(|r| u64::from(r.state == "running")),
    ),
    (
        "vamp_hub_remote_restarts_total",
        "counter",
        "times the remote was restarted after a crash",
        |l| l.remote.map(|r| r.restarts),
    ),
];

fn metrics(status: &HubStatus) -> String {
    let mut out = String::new();
    for (name, kind, help, value) in PER_LINK {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in &status.links {
            if let Some(v) = value(l) {
                let _ = writeln!(
                    out,
                    "{name}{{link=\"{}\",kind=\"{}\"}} {v}",
                    label(&l.name),
                    l.kind
                );
            }
        }
    }
    let name = "vamp_hub_messages_dropped_total";
    let _ = writeln!(
        out,
        "# HELP {name} messages from the link that were not delivered, by reason\n# TYPE {name} counter"
    );
    for l in &status.links {
        for r in DropReason::ALL {
            let _ = writeln!(
                out,
                "{name}{{link=\"{}\",kind=\"{}\",reason=\"{}\"}} {}",
                label(&l.name),
                l.kind,
                r.name(),
                l.stats.drops(r)
            );
        }
    }
    for (name, help, v) in [
        (
            "vamp_hub_lock_taken_total",
            "times one of the hub's locks (one per group of connected links) was taken",
            status.lock_taken,
        ),
        (
            "vamp_hub_lock_waited_total",
            "times taking one of the hub's locks had to wait",
            status.lock_waited,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    out
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
