//! The KVM link: the echo firmware booted in a KVM remote, the host's engine on its vdev,
//! its round trips and throughput, and the remote's start time.

use super::clients::{Fig, find_name, measure, rerr};
use super::in_memory::check_quiet;
use super::sys::pin;
use super::{Cpus, FIRMWARE_CHANNEL, Plan, Res, busy_only};
use std::time::{Duration, Instant};
use vamp_remoteproc::image::MemoryImage;
use vamp_remoteproc::kvm::{KvmOptions, KvmRemote};
use vamp_remoteproc::remoteproc::{RemoteRpmsg, Remoteproc};
use vamp_rpmsg::apps::SHUTDOWN_MSG;
use vamp_rpmsg::guest_ram::GuestRam;
use vamp_rpmsg::rpmsg::EptId;
use vamp_rpmsg::transport::{BufferConfig, RingFormat};
use vamp_rpmsg::wire::ADDR_ANY;

/// A running echo remote and the host's engine on its vdev.
struct Remote {
    rp: Remoteproc<KvmRemote>,
    rpmsg: RemoteRpmsg<GuestRam>,
    /// VM, memory and vCPU created.
    created: Duration,
    /// Image loaded and resources handled.
    loaded: Duration,
    /// First name-service announcement received.
    announced: Duration,
    /// Where the echo channel is.
    addr: u32,
}

/// Boots the echo firmware with its vCPU on `vcpu_cpu`, in busy-poll mode (both sides)
/// if `busy`, on rings of `ring` format; times every step from `KvmRemote::new` to the first
/// announcement.
fn boot(vcpu_cpu: usize, my_cpu: usize, busy: bool, ring: RingFormat) -> Res<Remote> {
    let image = vamp_remoteproc::images::builtin("echo").ok_or("no built-in echo image")?;
    let t0 = Instant::now();
    let options = KvmOptions {
        busy_poll: busy,
        ring_format: ring,
        ..KvmOptions::default()
    };
    let backend = KvmRemote::new(options).map_err(|e| e.to_string())?;
    let created = t0.elapsed();
    let mut rp = Remoteproc::new(backend);
    rp.load(&mut MemoryImage::new(image))
        .map_err(|e| e.to_string())?;
    let loaded = t0.elapsed();
    // The vCPU (and watchdog) threads inherit the affinity of the thread that starts them.
    pin(vcpu_cpu);
    let started = rp.start();
    pin(my_cpu);
    started.map_err(|e| e.to_string())?;
    let mut rpmsg = rp
        .create_virtio(0, BufferConfig::default())
        .map_err(|e| e.to_string())?;
    let running = rpmsg.transport().ring_format();
    if running != ring {
        return Err(format!("the remote came up on {running} rings, not {ring}"));
    }
    if busy {
        rpmsg
            .transport_mut()
            .set_busy_poll(true)
            .map_err(|e| format!("busy-poll mode: {e}"))?;
    }
    let addr = find_name(&mut rpmsg, FIRMWARE_CHANNEL, busy)?;
    let announced = t0.elapsed();
    Ok(Remote {
        rp,
        rpmsg,
        created,
        loaded,
        announced,
        addr,
    })
}

impl Remote {
    /// Notifications in either direction so far: the host's rings, the remote's kicks
    /// (taken from the doorbell here: the busy host never waits for them) and its waits.
    fn notifications(&mut self) -> u64 {
        self.rp.doorbell().wait(Duration::ZERO);
        let s = self.rp.backend().stats();
        s.rings + s.kicks_taken + s.wait_exits
    }

    fn stop(mut self, ept: Option<EptId>) {
        if let Some(ept) = ept {
            let _ = self
                .rpmsg
                .sendto(ept, self.addr, &SHUTDOWN_MSG.to_ne_bytes());
        }
        drop(self.rpmsg);
        if let Err(e) = self.rp.shutdown() {
            log::warn!("stopping the KVM remote: {e}");
        }
    }
}

/// Notify figures, busy-poll figures, start time.
type KvmRows = ([Res<Fig>; 2], [Res<Fig>; 2], Res<StartFig>);

/// The KVM rows: notify (on the first of the start-time runs), busy-poll (one more remote, in
/// busy-poll mode from its start; only with two CPUs) and the start time.
pub(super) fn kvm_rows(plan: &Plan, cpus: Cpus, two_cpus: bool) -> KvmRows {
    let fail = |e: String| -> KvmRows {
        (
            [Err(e.clone()), Err(e.clone())],
            [Err(e.clone()), Err(e.clone())],
            Err(e),
        )
    };
    if let Err(e) = vamp_remoteproc::kvm::kvm_available() {
        return fail(format!("not measured: no KVM here ({e})"));
    }
    let mut starts = Vec::new();
    let mut figs = None;
    for run in 0..plan.start_runs.max(1) {
        let remote = match boot(cpus.b, cpus.a, false, RingFormat::Split) {
            Ok(r) => r,
            Err(e) => return fail(format!("KVM remote: {e}")),
        };
        starts.push((remote.created, remote.loaded, remote.announced));
        if run == 0 {
            figs = Some(kvm_measure(remote, false, plan));
        } else {
            remote.stop(None);
        }
    }
    let busy_figs = busy_only(two_cpus, || kvm_link(plan, cpus, true, RingFormat::Split));
    let med = |f: &dyn Fn(&(Duration, Duration, Duration)) -> Duration| {
        let mut v: Vec<f64> = starts.iter().map(|s| f(s).as_nanos() as f64).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let start = StartFig {
        vm_ns: med(&|s| s.0),
        load_ns: med(&|s| s.1 - s.0),
        announce_ns: med(&|s| s.2 - s.1),
        total_ns: med(&|s| s.2),
        min_total_ns: starts
            .iter()
            .map(|s| s.2.as_nanos() as f64)
            .fold(f64::INFINITY, f64::min),
        runs: starts.len(),
    };
    (
        figs.unwrap_or_else(|| [Err("not run".into()), Err("not run".into())]),
        busy_figs,
        Ok(start),
    )
}

/// Round trips and throughput to a freshly booted echo remote, in busy-poll mode if `busy`, on
/// rings of `ring` format.
fn kvm_link(plan: &Plan, cpus: Cpus, busy: bool, ring: RingFormat) -> [Res<Fig>; 2] {
    match boot(cpus.b, cpus.a, busy, ring) {
        Ok(remote) => kvm_measure(remote, busy, plan),
        Err(e) => {
            let mode = if busy { "busy-poll" } else { "notify" };
            let e = format!("KVM remote ({mode}, {ring} rings): {e}");
            [Err(e.clone()), Err(e)]
        }
    }
}

/// The KVM rows on packed rings: notify, and busy-poll (only with two CPUs).
pub(super) fn kvm_packed_rows(
    plan: &Plan,
    cpus: Cpus,
    two_cpus: bool,
) -> ([Res<Fig>; 2], [Res<Fig>; 2]) {
    if let Err(e) = vamp_remoteproc::kvm::kvm_available() {
        let e = format!("not measured: no KVM here ({e})");
        return ([Err(e.clone()), Err(e.clone())], [Err(e.clone()), Err(e)]);
    }
    let notify = kvm_link(plan, cpus, false, RingFormat::Packed);
    let busy = busy_only(two_cpus, || kvm_link(plan, cpus, true, RingFormat::Packed));
    (notify, busy)
}

/// Round trips and throughput to a booted echo remote, then stops it. Busy-poll rows must not
/// notify at all, in either direction.
fn kvm_measure(mut remote: Remote, busy: bool, plan: &Plan) -> [Res<Fig>; 2] {
    let addr = remote.addr;
    match remote
        .rpmsg
        .create_ept(FIRMWARE_CHANNEL.as_bytes(), ADDR_ANY, addr)
    {
        Ok(ept) => {
            let before = remote.notifications();
            let figs = measure(&mut remote.rpmsg, (ept, addr), busy, plan);
            let notified = remote.notifications() - before;
            remote.stop(Some(ept));
            if busy {
                check_quiet(figs, notified)
            } else {
                figs
            }
        }
        Err(e) => {
            remote.stop(None);
            [Err(rerr(e)), Err(rerr(e))]
        }
    }
}

/// Remote start time, medians over runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct StartFig {
    pub(super) vm_ns: f64,
    pub(super) load_ns: f64,
    pub(super) announce_ns: f64,
    pub(super) total_ns: f64,
    pub(super) min_total_ns: f64,
    pub(super) runs: usize,
}
