//! The hub's busy-poll rows, measured on the program users run: `vhost-user-rpmsg --poll`
//! (its code, `vamp_vmm_backend::cli::run`, started as this binary's hidden `vamp
//! vhost-user-rpmsg` command) in a process of its own, pinned to the hub's CPU, with
//! busy-polling guests (vamp's frontend; neither side notifies) connected over its sockets.
//! On split rings (the hub run with `--no-packed`) and packed rings (the guests ack
//! VIRTIO_F_RING_PACKED when offered).

use super::clients::{Echo, Fig, find_name, measure, rerr};
use super::in_memory::check_quiet;
use super::sys::{TempDir, pin, temp_dir};
use super::{Cpus, ECHO_NAME, PEER_NAME, Plan, Res, STEP_TIMEOUT};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vamp_rpmsg::transport::RingFormat;
use vamp_rpmsg::virtio::{RX_QUEUE, TX_QUEUE};
use vamp_rpmsg::wire::ADDR_ANY;
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest};

/// The hidden command of this binary that runs `vhost-user-rpmsg` (src/main.rs).
pub const HUB_COMMAND: &str = "vhost-user-rpmsg";

/// `vhost-user-rpmsg --poll` in a child process pinned to one CPU; killed when dropped (and
/// when this process dies).
struct HubProcess {
    child: Child,
    dir: TempDir,
}

impl HubProcess {
    /// Starts the hub with `args` on `cpu` and waits for `sockets` (in its dir) to listen.
    fn start(tag: &str, args: &[&str], sockets: &[&str], cpu: usize) -> Res<(Self, Vec<PathBuf>)> {
        let dir = temp_dir(tag)?;
        let log_path = dir.0.join("hub.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("hub log: {e}"))?;
        let exe = std::env::current_exe().map_err(|e| format!("find own binary: {e}"))?;
        // SAFETY: cpu_set_t is plain data and all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET writes one bit of the set; `cpu` came from sched_getaffinity.
        unsafe { libc::CPU_SET(cpu.min(libc::CPU_SETSIZE as usize - 1), &mut set) };
        let mut cmd = Command::new(exe);
        cmd.arg(HUB_COMMAND)
            .args(args)
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: between fork and exec the closure makes two system calls (no allocation, no
        // lock): the child dies with this process, and it and every thread it starts run on
        // `cpu` (the affinity survives exec). `set` is a copy owned by the closure.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("start the hub process: {e}"))?;
        let mut hub = HubProcess { child, dir };
        let paths: Vec<PathBuf> = sockets.iter().map(|s| hub.dir.0.join(s)).collect();
        let deadline = Instant::now() + STEP_TIMEOUT;
        while !paths.iter().all(|p| p.exists()) {
            if let Ok(Some(status)) = hub.child.try_wait() {
                return Err(format!(
                    "the hub process ended ({status}): {}",
                    std::fs::read_to_string(&log_path)
                        .unwrap_or_default()
                        .trim()
                ));
            }
            if Instant::now() > deadline {
                return Err("the hub process never listened".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((hub, paths))
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hub's arguments for `ring` rings: `--no-packed` withholds packed rings. The longest
/// quiet period: a busy-polling guest never kicks, so a hub that backed off to kicks while
/// it paused (between connecting and measuring) would not hear from it again.
fn hub_args<'a>(base: &[&'a str], ring: RingFormat) -> Vec<&'a str> {
    let mut args = base.to_vec();
    args.extend(["--poll", "--poll-quiet-ms", "60000"]);
    if ring == RingFormat::Split {
        args.push("--no-packed");
    }
    args
}

/// A busy-polling guest on `socket` that takes packed rings when offered; checked to be on
/// `ring` rings.
fn busy_guest(socket: &Path, ring: RingFormat) -> Res<NativeGuest> {
    let opts = GuestOptions {
        connect_timeout: Duration::from_secs(10),
        packed: true,
        ..Default::default()
    };
    let mut g = NativeGuest::connect(socket, opts).map_err(|e| format!("native guest: {e}"))?;
    let got = g.rpmsg().transport().ring_format();
    if got != ring {
        return Err(format!("the link came up on {got:?} rings, not {ring:?}"));
    }
    g.rpmsg()
        .transport_mut()
        .set_busy_poll(true)
        .map_err(|e| e.to_string())?;
    Ok(g)
}

/// Counts the notifications a guest takes part in from its creation on: kicks it sends and
/// interrupts the hub sends it (read off its call eventfds, which count them).
struct Notified {
    kicks: u64,
}

impl Notified {
    /// Starts counting now: what came before is forgotten.
    fn start(g: &mut NativeGuest) -> Self {
        calls(g);
        Notified {
            kicks: g.rpmsg().transport_mut().env_mut().kicks_sent,
        }
    }

    /// Kicks and interrupts since [`start`](Self::start).
    fn since(self, g: &mut NativeGuest) -> u64 {
        let kicks = g.rpmsg().transport_mut().env_mut().kicks_sent;
        kicks - self.kicks + calls(g)
    }
}

/// Interrupts from the hub since the last call (drains the guest's call eventfds).
fn calls(g: &mut NativeGuest) -> u64 {
    let env = g.rpmsg().transport_mut().env_mut();
    [RX_QUEUE, TX_QUEUE]
        .iter()
        .filter_map(|&q| env.call_fd(q))
        .map(|fd| fd.read().unwrap_or(0))
        .sum()
}

/// Guest -> the polling hub's echo, on `ring` rings.
pub(super) fn hub_echo_busy(plan: &Plan, cpus: Cpus, ring: RingFormat) -> [Res<Fig>; 2] {
    let run = || -> Res<[Res<Fig>; 2]> {
        let args = hub_args(&["--socket-path", "g.sock", "--echo", ECHO_NAME], ring);
        let (_hub, sockets) = HubProcess::start("polled-echo", &args, &["g.sock"], cpus.b)?;
        let mut g = busy_guest(&sockets[0], ring)?;
        let addr = find_name(g.rpmsg(), ECHO_NAME, true)?;
        let ept = g.rpmsg().create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
        let notified = Notified::start(&mut g);
        let figs = measure(g.rpmsg(), (ept, addr), true, plan);
        let notified = notified.since(&mut g);
        Ok(check_quiet(figs, notified))
    };
    run().unwrap_or_else(|e| [Err(e.clone()), Err(e)])
}

/// An echoing busy guest in a thread on `cpu` until `stop`, yielding its CPU when it found
/// nothing (it shares the CPU with the hub's poll thread); returns the notifications it took
/// part in after it came up.
fn echo_guest(
    socket: PathBuf,
    ring: RingFormat,
    cpu: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Res<u64>> {
    std::thread::spawn(move || {
        pin(cpu);
        let mut g = busy_guest(&socket, ring)?;
        g.rpmsg()
            .create_ept(PEER_NAME.as_bytes(), ADDR_ANY, ADDR_ANY)
            .map_err(rerr)?;
        let notified = Notified::start(&mut g);
        let mut echo = Echo::new();
        while !stop.load(Ordering::Relaxed) && !echo.shutdown {
            if g.poll(&mut echo).map_err(rerr)? == 0 {
                std::thread::yield_now();
            }
        }
        Ok(notified.since(&mut g))
    })
}

/// Guest -> the polling hub -> an echoing guest, both busy, on `ring` rings.
pub(super) fn guest_to_guest_busy(plan: &Plan, cpus: Cpus, ring: RingFormat) -> [Res<Fig>; 2] {
    let run = || -> Res<[Res<Fig>; 2]> {
        // Two guests that see each other's names.
        let args = hub_args(&["--socket-path", "g.sock", "--socket-count", "2"], ring);
        let (_hub, sockets) =
            HubProcess::start("polled-g2g", &args, &["g.sock0", "g.sock1"], cpus.b)?;
        let stop = Arc::new(AtomicBool::new(false));
        let echo = echo_guest(sockets[1].clone(), ring, cpus.b, stop.clone());
        let measured = (|| -> Res<([Res<Fig>; 2], u64)> {
            let mut g = busy_guest(&sockets[0], ring)?;
            let addr = find_name(g.rpmsg(), PEER_NAME, true)?;
            let ept = g.rpmsg().create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
            let notified = Notified::start(&mut g);
            let figs = measure(g.rpmsg(), (ept, addr), true, plan);
            Ok((figs, notified.since(&mut g)))
        })();
        stop.store(true, Ordering::Relaxed);
        let echo_notified = echo.join().map_err(|_| "echo guest panicked")??;
        let (figs, notified) = measured?;
        Ok(check_quiet(figs, notified + echo_notified))
    };
    run().unwrap_or_else(|e| [Err(e.clone()), Err(e)])
}
