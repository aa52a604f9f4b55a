//! What `remoteproc-vm` reports about remotes: [`RemoteReport`] per remote (state, restarts,
//! crashes and why, channels announced, messages), rendered as a table, as JSON or as a
//! Prometheus text exposition. `remoteproc-vm status` prints it for the configured remotes
//! (read from sysfs for physical cores), and a running `remoteproc-vm run/start` answers it on
//! its status socket (`--control-socket`, see [`crate::status_socket`]) for the remote it runs.
//!
//! Channel names are the remote's bytes: kept escaped as the console is
//! ([`crate::console::escape`]) and on one line, so a name cannot forge table lines.

use crate::remoteproc::RemoteState;
use crate::status_socket::{Request, json, label};
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

/// One remote as an operator sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemoteReport {
    /// Its name (the configured one, or the image's for `remoteproc-vm run`).
    pub name: String,
    /// `kvm` or `sysfs`.
    pub backend: String,
    /// Its state: a [`RemoteState`] word, `exited` once it exited, or the kernel's own word
    /// for a physical core.
    pub state: String,
    /// The image: a path, a built-in image's name, or the firmware the kernel loads.
    pub image: String,
    /// Restarts after a crash so far.
    pub restarts: u32,
    /// Restarts its recovery policy allows.
    pub max_restarts: u32,
    /// Crashes seen.
    pub crashes: u64,
    /// Why it last crashed.
    pub last_crash: Option<String>,
    /// Its exit code, once it exited.
    pub exit_code: Option<u32>,
    /// Channels it announced and has not withdrawn (escaped).
    pub channels: Vec<String>,
    /// Messages received from it.
    pub messages: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
}

/// Every remote of one answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The remotes, in configuration order.
    pub remotes: Vec<RemoteReport>,
}

impl RemoteReport {
    /// Notes a state change of the remote.
    pub fn set_state(&mut self, state: RemoteState) {
        self.state = state.to_string();
    }

    /// Notes a crash, and why.
    pub fn crashed(&mut self, why: &str) {
        self.state = RemoteState::Crashed.to_string();
        self.crashes += 1;
        self.last_crash = Some(one_line(why.as_bytes()));
    }

    /// Notes its exit.
    pub fn exited(&mut self, code: u32) {
        self.state = "exited".into();
        self.exit_code = Some(code);
        self.channels.clear();
    }

    /// Notes a channel it announced (`created`) or withdrew.
    pub fn channel(&mut self, name: &[u8], created: bool) {
        let name = one_line(name);
        self.channels.retain(|c| *c != name);
        if created {
            self.channels.push(name);
        }
    }

    /// Notes a message of `len` payload bytes from it.
    pub fn message(&mut self, len: usize) {
        self.messages += 1;
        self.bytes += len as u64;
    }
}

/// `bytes` escaped as the console escapes them, line breaks and tabs included.
fn one_line(bytes: &[u8]) -> String {
    crate::console::escape(bytes)
        .replace('\n', "\\n")
        .replace('\t', "\\t")
}

/// One running remote's report, shared between the thread that runs it (writes) and the
/// status socket's thread (reads a copy).
#[derive(Debug, Clone, Default)]
pub struct SharedReport(Arc<Mutex<RemoteReport>>);

impl SharedReport {
    /// Shares `report`.
    pub fn new(report: RemoteReport) -> Self {
        SharedReport(Arc::new(Mutex::new(report)))
    }

    /// The report, to change it (a panic elsewhere leaves it readable).
    pub fn lock(&self) -> MutexGuard<'_, RemoteReport> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy, as a one-remote [`Status`].
    pub fn status(&self) -> Status {
        Status {
            remotes: vec![self.lock().clone()],
        }
    }
}

/// `request`'s answer for `status`.
pub fn render(request: Request, status: &Status) -> String {
    match request {
        Request::Json => json(status),
        Request::Metrics => metrics(status),
        _ => table(status),
    }
}

fn table(status: &Status) -> String {
    let mut out = String::new();
    let width = status
        .remotes
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:width$}  {:7}  {:9}  {:>8}  {:>7}  {:>10}  {:>12}  IMAGE",
        "NAME", "BACKEND", "STATE", "RESTARTS", "CRASHES", "MESSAGES", "BYTES"
    );
    for r in &status.remotes {
        let _ = writeln!(
            out,
            "{:width$}  {:7}  {:9}  {:>8}  {:>7}  {:>10}  {:>12}  {}",
            r.name,
            r.backend,
            r.state,
            format!("{}/{}", r.restarts, r.max_restarts),
            r.crashes,
            r.messages,
            r.bytes,
            r.image
        );
    }
    for r in &status.remotes {
        if !r.channels.is_empty() {
            let names: Vec<String> = r.channels.iter().map(|c| format!("\"{c}\"")).collect();
            let _ = writeln!(out, "{}: channels {}", r.name, names.join(", "));
        }
        if let Some(why) = &r.last_crash {
            let _ = writeln!(out, "{}: last crash: {why}", r.name);
        }
        if let Some(code) = r.exit_code {
            let _ = writeln!(out, "{}: exited with code {code}", r.name);
        }
    }
    out
}

/// Every metric: name, type, help, value for one remote.
type PerRemote = (
    &'static str,
    &'static str,
    &'static str,
    fn(&RemoteReport) -> u64,
);

/// The per-remote metrics (their names are documented in the README's remoteproc-vm section).
const PER_REMOTE: &[PerRemote] = &[
    (
        "vamp_remote_running",
        "gauge",
        "1 while the remote runs",
        |r| u64::from(r.state == "running"),
    ),
    (
        "vamp_remote_restarts_total",
        "counter",
        "times the remote was restarted after a crash",
        |r| u64::from(r.restarts),
    ),
    (
        "vamp_remote_crashes_total",
        "counter",
        "crashes of the remote seen",
        |r| r.crashes,
    ),
    (
        "vamp_remote_messages_total",
        "counter",
        "messages received from the remote",
        |r| r.messages,
    ),
    (
        "vamp_remote_payload_bytes_total",
        "counter",
        "payload bytes of the messages received from the remote",
        |r| r.bytes,
    ),
    (
        "vamp_remote_channels",
        "gauge",
        "channels the remote announced and has not withdrawn",
        |r| r.channels.len() as u64,
    ),
];

fn metrics(status: &Status) -> String {
    let mut out = String::new();
    for (name, kind, help, value) in PER_REMOTE {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in &status.remotes {
            let _ = writeln!(
                out,
                "{name}{{remote=\"{}\",backend=\"{}\"}} {}",
                label(&r.name),
                label(&r.backend),
                value(r)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> RemoteReport {
        let mut r = RemoteReport {
            name: "echo".into(),
            backend: "kvm".into(),
            image: "echo".into(),
            max_restarts: 2,
            ..Default::default()
        };
        r.set_state(RemoteState::Running);
        r.channel(b"rpmsg-openamp-demo-channel", true);
        r.message(16);
        r.message(496);
        r
    }

    #[test]
    fn the_three_renderings_carry_the_same_counts() {
        let status = Status {
            remotes: vec![echo()],
        };
        let table = render(Request::Status, &status);
        assert!(table.contains("running"), "{table}");
        assert!(table.contains("0/2"), "{table}");
        assert!(table.contains("512"), "{table}");
        assert!(table.contains("\"rpmsg-openamp-demo-channel\""), "{table}");
        let v: serde_json::Value = serde_json::from_str(&render(Request::Json, &status)).unwrap();
        assert_eq!(v["remotes"][0]["messages"], 2);
        assert_eq!(v["remotes"][0]["bytes"], 512);
        assert_eq!(v["remotes"][0]["state"], "running");
        let metrics = render(Request::Metrics, &status);
        assert!(metrics.contains("vamp_remote_running{remote=\"echo\",backend=\"kvm\"} 1"));
        assert!(metrics.contains("vamp_remote_messages_total{remote=\"echo\",backend=\"kvm\"} 2"));
    }

    #[test]
    fn crashes_exits_and_withdrawals_are_kept() {
        let mut r = echo();
        r.crashed("triple fault\nforged line");
        assert_eq!(r.state, "crashed");
        assert_eq!(r.crashes, 1);
        assert!(!r.last_crash.as_ref().unwrap().contains('\n'));
        r.channel(b"rpmsg-openamp-demo-channel", false);
        assert!(r.channels.is_empty());
        r.channel(b"evil\n\"name", true);
        assert!(!r.channels[0].contains('\n'));
        r.exited(3);
        assert_eq!((r.state.as_str(), r.exit_code), ("exited", Some(3)));
        assert!(r.channels.is_empty());
    }
}
