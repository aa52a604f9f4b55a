//! The hub's status socket: what an operator asks a running `vhost-user-rpmsg` (guests, link
//! states, names, per-link counters, remotes), as a table, as JSON, or as a Prometheus text
//! exposition. [`ControlSocket`] serves it on a thread of its own (`vamp-status`); [`query`]
//! is the client (`vhost-user-rpmsg status`).
//!
//! The protocol and its bounds are those of every vamp status socket
//! ([`vamp_remoteproc::status_socket`]): one request line, whole-exchange deadlines, clients
//! served one at a time, owner-only. Each of the hub's locks is held only to copy its
//! counters ([`SharedHub::status`](crate::hub::SharedHub::status)), never across socket I/O.
//!
//! # Sandbox
//!
//! The thread renders names the guests announced (guest bytes, shown lossily) and reads what
//! local clients write: it runs confined like every thread that reads outside input
//! ([`ThreadKind::Status`]: accept, read, write, socket timeouts, and the common calls).

use crate::hub::{DropReason, HubStatus, LinkStatus, SharedHub};
use crate::sandbox::{self, ThreadKind};
use std::fmt::Write as _;
use std::io;
use std::path::Path;
pub use vamp_remoteproc::status_socket::{
    ANSWER_TIME, MAX_ANSWER, MAX_REQUEST, REQUEST_TIME, Request, query,
};
use vamp_remoteproc::status_socket::{StatusSocket, json, label};

/// The hub's status socket, bound and listening, not served yet.
#[derive(Debug)]
pub struct ControlSocket(StatusSocket);

impl ControlSocket {
    /// Binds `path` (a stale socket file there is replaced; one something listens on is not)
    /// and makes it owner-only.
    pub fn bind(path: &Path) -> io::Result<Self> {
        StatusSocket::bind(path).map(ControlSocket)
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Serves clients on a thread of its own (`vamp-status`), confined, for as long as the
    /// process runs.
    pub fn spawn(self, hub: SharedHub) -> io::Result<()> {
        std::thread::Builder::new()
            .name("vamp-status".into())
            .spawn(move || {
                sandbox::enter(ThreadKind::Status);
                self.0.serve(|request| render(request, &hub.status()))
            })
            .map(drop)
    }
}

/// `request`'s answer for `status`.
pub fn render(request: Request, status: &HubStatus) -> String {
    match request {
        Request::Status => table(status),
        Request::Json => json(status),
        Request::Metrics => metrics(status),
        // A request a newer status socket knows and the hub does not answer.
        other => format!("error: the hub does not answer {}\n", other.word()),
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
        if let Some(rings) = l.rings {
            let _ = writeln!(out, "  rings:     {rings}");
        }
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
