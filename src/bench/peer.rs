//! The child-process protocol: `vamp bench` starts copies of itself (`vamp bench-peer KIND
//! ARGS...`) as the other side of a measurement, reads their progress lines from stdout and
//! stops them by closing their stdin.

use super::floors::{peer_eventfd, peer_pingpong, peer_ring};
use super::native_link::{peer_native, peer_native_rows};
use super::polled_hub::hub_echo_busy;
use super::scale::{peer_hub_full_rings, peer_hub_guest, peer_hub_memory};
use super::sys::{allowed_cpus, pin};
use super::{Cpus, Plan, Res, SIZES, STEP_TIMEOUT};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use vamp_rpmsg::transport::RingFormat;

/// A copy of this program, started with the hidden `bench-peer` command.
#[derive(Debug)]
pub(super) struct Peer {
    pub(super) child: Child,
    pub(super) stdin: Option<ChildStdin>,
    pub(super) stdout: Option<BufReader<ChildStdout>>,
}

impl Peer {
    pub(super) fn spawn(args: &[String]) -> Res<Peer> {
        let exe = std::env::current_exe().map_err(|e| format!("find own binary: {e}"))?;
        let mut child = Command::new(exe)
            .arg("bench-peer")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start a peer process: {e}"))?;
        Ok(Peer {
            stdin: child.stdin.take(),
            stdout: child.stdout.take().map(BufReader::new),
            child,
        })
    }

    /// The next line the peer prints.
    pub(super) fn line(&mut self) -> Res<String> {
        let mut line = String::new();
        let out = self.stdout.as_mut().ok_or("peer has no output")?;
        match out.read_line(&mut line) {
            Ok(0) => Err("the peer process ended early".into()),
            Ok(_) => Ok(line.trim().to_string()),
            Err(e) => Err(format!("read from the peer: {e}")),
        }
    }

    /// Closes its input (which tells a waiting peer to stop) and waits for it to exit.
    pub(super) fn finish(mut self) -> Res<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("peer process failed: {status}")),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => return Err("peer process did not stop".into()),
                Err(e) => return Err(format!("wait for the peer: {e}")),
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(super) fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Res<T> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("bench-peer: bad or missing {what}"))
}

/// Runs the other side of one measurement (`vamp bench-peer KIND ARGS...`, started by `vamp
/// bench` itself).
pub fn run_peer(args: &[String]) -> Result<(), String> {
    // SAFETY: plain prctl: this process is killed if the bench that started it dies.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let kind = args.first().map(String::as_str).unwrap_or("");
    let rest = args.get(1..).unwrap_or(&[]);
    match kind {
        "eventfd" => peer_eventfd(rest),
        "futex" | "spin" => peer_pingpong(rest, kind == "spin"),
        "ring" => peer_ring(rest),
        "native" => peer_native(rest),
        "hub-memory" => peer_hub_memory(rest),
        "hub-guest" => peer_hub_guest(rest),
        "hub-full-rings" => peer_hub_full_rings(rest),
        "native-rows" => peer_native_rows(rest),
        "hub-echo-busy" => {
            let allowed = allowed_cpus();
            pin(allowed[0]);
            let cpus = Cpus {
                a: allowed[0],
                b: *allowed.last().unwrap_or(&0),
            };
            let ring = match rest.first() {
                None => RingFormat::Split,
                Some(name) => RingFormat::from_name(name).ok_or_else(|| {
                    format!("bench-peer hub-echo-busy: rings are split or packed, not {name:?}")
                })?,
            };
            for (fig, size) in hub_echo_busy(&Plan::new(false), cpus, ring)
                .into_iter()
                .zip(SIZES)
            {
                let f = fig?;
                println!(
                    "{size} B: rtt p50 {:.0} ns; {:.0} ns per message windowed",
                    f.lat.p50_ns, f.tput.ns_per_msg
                );
            }
            Ok(())
        }
        other => Err(format!("bench-peer: unknown kind {other:?}")),
    }
}
