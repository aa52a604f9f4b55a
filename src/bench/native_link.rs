//! The native link: a copy of this program as the remote over vamp's two-process shared-memory
//! link, echoing on announced and unannounced endpoints.

use super::clients::{Echo, Fig, find_name, measure, rerr};
use super::in_memory::check_quiet;
use super::peer::{Peer, arg};
use super::sys::{allowed_cpus, pin};
use super::{ECHO_NAME, ENDPOINT_BASE, Plan, Res, SIZES, STEP_TIMEOUT};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use vamp_rpmsg::apps::SHUTDOWN_MSG;
use vamp_rpmsg::native;
use vamp_rpmsg::native::NativePaths;
use vamp_rpmsg::rpmsg::EptId;
use vamp_rpmsg::transport::{Environment, RingFormat};
use vamp_rpmsg::wire::ADDR_ANY;

/// The remote of a native link: echoes on `ENDPOINT_BASE..+endpoints` until the shutdown word.
pub(super) fn peer_native(args: &[String]) -> Res<()> {
    let shm: PathBuf = arg(args, 0, "shm path")?;
    let socket: PathBuf = arg(args, 1, "socket path")?;
    let cpu: usize = arg(args, 2, "cpu")?;
    let busy = arg::<u8>(args, 3, "busy flag")? != 0;
    let endpoints: u32 = arg(args, 4, "endpoint count")?;
    pin(cpu);
    let paths = NativePaths { shm, socket };
    let mut rpmsg = native::start_remote(&paths, Some(STEP_TIMEOUT), || {})
        .map_err(|e| format!("native remote: {e}"))?;
    if busy {
        rpmsg
            .transport_mut()
            .set_busy_poll(true)
            .map_err(|e| e.to_string())?;
    }
    for i in 0..endpoints {
        rpmsg
            .create_ept(b"", ENDPOINT_BASE + i, ADDR_ANY)
            .map_err(rerr)?;
    }
    // Announced last: when the host hears it, every endpoint exists.
    rpmsg
        .create_ept(ECHO_NAME.as_bytes(), ADDR_ANY, ADDR_ANY)
        .map_err(rerr)?;
    let mut echo = Echo::new();
    loop {
        let n = rpmsg.poll(&mut echo).map_err(rerr)?;
        if echo.shutdown {
            break;
        }
        if n == 0 {
            if busy {
                std::hint::spin_loop();
            } else {
                let env = rpmsg.transport_mut().env_mut();
                if env.peer_gone() {
                    break;
                }
                env.wait_for_kick(Duration::from_millis(200));
            }
        }
    }
    if echo.failed > 0 {
        return Err(format!("{} echoes failed", echo.failed));
    }
    Ok(())
}

/// A native link with its remote in another process; the host side is this thread.
pub(super) struct NativeSession {
    pub(super) rpmsg: native::HostRpmsg,
    pub(super) peer: Peer,
    pub(super) paths: NativePaths,
    pub(super) targets: Vec<(EptId, u32)>,
    pub(super) busy: bool,
}

impl NativeSession {
    /// A session on split rings.
    pub(super) fn start(remote_cpu: usize, busy: bool, endpoints: u32) -> Res<Self> {
        Self::start_on(remote_cpu, busy, endpoints, RingFormat::Split)
    }

    /// A session on rings of `ring` format (the host asks, the remote follows: a link that
    /// came up on other rings is an error, not a row measured on the wrong rings).
    pub(super) fn start_on(
        remote_cpu: usize,
        busy: bool,
        endpoints: u32,
        ring: RingFormat,
    ) -> Res<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let paths = native::private_paths(&format!("bench{}", N.fetch_add(1, Ordering::Relaxed)));
        let peer = Peer::spawn(&[
            "native".into(),
            paths.shm.display().to_string(),
            paths.socket.display().to_string(),
            remote_cpu.to_string(),
            u8::from(busy).to_string(),
            endpoints.to_string(),
        ])?;
        let mut rpmsg = native::start_host_with_rings(&paths, STEP_TIMEOUT, ring)
            .map_err(|e| format!("native host: {e}"))?;
        let running = rpmsg.transport().ring_format();
        if running != ring {
            return Err(format!(
                "native link came up on {running} rings, not {ring}"
            ));
        }
        if busy {
            rpmsg
                .transport_mut()
                .set_busy_poll(true)
                .map_err(|e| e.to_string())?;
        }
        find_name(&mut rpmsg, ECHO_NAME, busy)?;
        let mut targets = Vec::with_capacity(endpoints as usize);
        for i in 0..endpoints {
            let ept = rpmsg
                .create_ept(b"", ADDR_ANY, ENDPOINT_BASE + i)
                .map_err(rerr)?;
            targets.push((ept, ENDPOINT_BASE + i));
        }
        Ok(NativeSession {
            rpmsg,
            peer,
            paths,
            targets,
            busy,
        })
    }

    pub(super) fn finish(mut self) -> Res<()> {
        let (ept, dst) = self.targets[0];
        let sent = self.rpmsg.sendto(ept, dst, &SHUTDOWN_MSG.to_ne_bytes());
        let done = self.peer.finish();
        native::cleanup(&self.paths);
        sent.map_err(rerr)?;
        done
    }
}

pub(super) fn native_rows(
    plan: &Plan,
    remote_cpu: usize,
    busy: bool,
    ring: RingFormat,
) -> [Res<Fig>; 2] {
    let mut session = match NativeSession::start_on(remote_cpu, busy, 1, ring) {
        Ok(s) => s,
        Err(e) => return [Err(e.clone()), Err(e)],
    };
    let target = session.targets[0];
    let busy = session.busy;
    let kicks = |s: &mut NativeSession| s.rpmsg.transport_mut().env_mut().kicks_sent;
    let before = kicks(&mut session);
    let mut figs = measure(&mut session.rpmsg, target, busy, plan);
    if busy {
        figs = check_quiet(figs, kicks(&mut session) - before);
    }
    if let Err(e) = session.finish() {
        return [Err(e.clone()), Err(e)];
    }
    figs
}

/// `vamp bench-peer native-rows notify|busy [same-cpu|other-cpu] [split|packed]`: the native link's
/// rows alone (this process on CPU 0, the remote on CPU 1 or also on 0), on split or packed
/// rings, for profiling the engine.
pub(super) fn peer_native_rows(args: &[String]) -> Res<()> {
    let busy = match args.first().map(String::as_str) {
        Some("notify") => false,
        Some("busy") => true,
        _ => return Err("bench-peer native-rows: say notify or busy".into()),
    };
    let allowed = allowed_cpus();
    pin(allowed[0]);
    let remote_cpu = match args.get(1).map(String::as_str) {
        Some("same-cpu") => allowed[0],
        _ => *allowed.last().unwrap_or(&0),
    };
    let ring = match args.get(2) {
        None => RingFormat::Split,
        Some(name) => RingFormat::from_name(name).ok_or_else(|| {
            format!("bench-peer native-rows: rings are split or packed, not {name:?}")
        })?,
    };
    let plan = Plan::new(false);
    for (fig, size) in native_rows(&plan, remote_cpu, busy, ring)
        .into_iter()
        .zip(SIZES)
    {
        let f = fig?;
        println!(
            "{size} B: rtt p50 {:.0} ns, p99 {:.0} ns; {:.0} ns per message windowed",
            f.lat.p50_ns, f.lat.p99_ns, f.tput.ns_per_msg
        );
    }
    Ok(())
}
