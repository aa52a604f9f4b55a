//! Guests driven in memory: their rings live in this process and the hub is polled directly,
//! for the hub's busy-poll rows (no vhost-user threads in the way).

use super::clients::{Echo, Fig, find_name, measure, rerr};
use super::hub::topology;
use super::sys::{TempDir, close_fd, efd_write, new_eventfd, pin, temp_dir};
use super::{Cpus, ECHO_NAME, PEER_NAME, Plan, Res};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;
use vamp_rpmsg::guest_ram::GuestRam;
use vamp_rpmsg::rpmsg::{Config, Rpmsg};
use vamp_rpmsg::transport::{DriverTransport, Environment, Transport};
use vamp_rpmsg::wire::{ADDR_ANY, Endian};
use vamp_vmm_backend::frontend::GuestOptions;
use vamp_vmm_backend::hub::SharedHub;
use vamp_vmm_backend::hub::{Hub, Notifier, RingsInfo};

/// An Environment counting kicks and writing them to an eventfd (the cost a kick has).
#[derive(Debug)]
pub(super) struct KickEnv {
    pub(super) fd: i32,
    pub(super) start: Instant,
    pub(super) kicks: u64,
}

impl Environment for KickEnv {
    fn notify(&mut self, _queue: u16) {
        self.kicks += 1;
        efd_write(self.fd, 1);
    }
    fn now_us(&mut self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

impl Drop for KickEnv {
    fn drop(&mut self) {
        close_fd(self.fd);
    }
}

/// Interrupts from the hub: one eventfd write each, as vhost-user's call eventfd.
pub(super) struct CallNotifier {
    pub(super) fd: i32,
    pub(super) count: AtomicU64,
}

impl Notifier for CallNotifier {
    fn notify(&self, _queue: u16) {
        self.count.fetch_add(1, Ordering::Relaxed);
        efd_write(self.fd, 1);
    }
}

impl Drop for CallNotifier {
    fn drop(&mut self) {
        close_fd(self.fd);
    }
}

pub(super) type DirectRpmsg = Rpmsg<DriverTransport<GuestRam, KickEnv>>;

/// A guest whose rings the hub serves by direct calls (no vhost-user socket, no kick
/// eventfd watched): its memory, rings and engine are those of a native guest.
pub(super) struct DirectGuest {
    pub(super) id: usize,
    pub(super) rpmsg: DirectRpmsg,
    pub(super) ram: GuestRam,
    pub(super) info: RingsInfo,
}

impl DirectGuest {
    pub(super) fn new(id: usize, busy: bool) -> Res<Self> {
        let opts = GuestOptions {
            mem_size: 1 << 20,
            ..Default::default()
        };
        let layout = opts.driver_layout().map_err(|e| e.to_string())?;
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
            vm_memory::GuestAddress(0),
            opts.mem_size,
        )])
        .map_err(|e| format!("guest memory: {e}"))?;
        let ram = GuestRam::new(mem);
        let env = KickEnv {
            fd: new_eventfd(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            start: Instant::now(),
            kicks: 0,
        };
        let t = DriverTransport::new(ram.clone(), env, layout, Endian::Little, true)
            .map_err(|e| e.to_string())?;
        let mut rpmsg = Rpmsg::new(t, Config::default());
        if busy {
            rpmsg
                .transport_mut()
                .set_busy_poll(true)
                .map_err(|e| e.to_string())?;
        }
        rpmsg.transport_mut().flush().map_err(|e| e.to_string())?;
        Ok(DirectGuest {
            id,
            rpmsg,
            ram,
            info: RingsInfo {
                rings: [layout.rx_ring, layout.tx_ring],
                next_avail: [0, 0],
                format: vamp_rpmsg::transport::RingFormat::Split,
                event_idx: true,
                name_service: true,
            },
        })
    }

    pub(super) fn serve(&self, hub: &SharedHub, notifier: &Arc<dyn Notifier>) {
        hub.service(self.id, &self.ram, self.info, notifier);
    }

    fn kicks(&mut self) -> u64 {
        self.rpmsg.transport_mut().env_mut().kicks
    }
}

pub(super) fn call_notifier() -> Res<Arc<CallNotifier>> {
    Ok(Arc::new(CallNotifier {
        fd: new_eventfd(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        count: AtomicU64::new(0),
    }))
}

/// Busy-poll rows must not notify at all: `notified` is what was sent in either direction
/// while measuring.
pub(super) fn check_quiet(figs: [Res<Fig>; 2], notified: u64) -> [Res<Fig>; 2] {
    if notified == 0 {
        return figs;
    }
    let e = format!("busy-poll mode still sent {notified} notifications");
    [Err(e.clone()), Err(e)]
}

pub(super) fn direct_hub(guests: usize, pairs: bool) -> Res<(SharedHub, TempDir)> {
    let dir = temp_dir("direct")?;
    let t = topology(guests, pairs, &dir.0)?;
    Ok((SharedHub::new(Hub::new(t)), dir))
}

/// A thread on `cpu` that serves the given guests' rings in a loop until `stop`; `extra`
/// runs in the same loop (an echo guest sharing the CPU).
/// Returns, when stopped, the kicks the extra guest sent.
fn hub_poller(
    hub: SharedHub,
    served: Vec<(usize, GuestRam, RingsInfo)>,
    mut extra: Option<DirectGuest>,
    cpu: usize,
    stop: Arc<AtomicBool>,
    notifier: Arc<dyn Notifier>,
) -> std::thread::JoinHandle<Res<u64>> {
    std::thread::spawn(move || {
        pin(cpu);
        let mut echo = Echo::new();
        let kicks0 = extra.as_mut().map_or(0, DirectGuest::kicks);
        while !stop.load(Ordering::Relaxed) {
            for (id, ram, info) in &served {
                hub.service(*id, ram, *info, &notifier);
            }
            if let Some(g) = extra.as_mut() {
                g.rpmsg.poll(&mut echo).map_err(rerr)?;
            }
        }
        Ok(extra.as_mut().map_or(0, DirectGuest::kicks) - kicks0)
    })
}

pub(super) fn hub_echo_busy(plan: &Plan, cpus: Cpus) -> [Res<Fig>; 2] {
    let run = || -> Res<[Res<Fig>; 2]> {
        let (hub, _dir) = direct_hub(1, false)?;
        let calls = call_notifier()?;
        let notifier: Arc<dyn Notifier> = calls.clone();
        let mut g = DirectGuest::new(0, true)?;
        g.serve(&hub, &notifier);
        let addr = find_name(&mut g.rpmsg, ECHO_NAME, true)?;
        let ept = g.rpmsg.create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let before = g.kicks() + calls.count.load(Ordering::Relaxed);
        let poller = hub_poller(
            hub.clone(),
            vec![(0, g.ram.clone(), g.info)],
            None,
            cpus.b,
            stop.clone(),
            notifier,
        );
        let figs = measure(&mut g.rpmsg, (ept, addr), true, plan);
        stop.store(true, Ordering::Relaxed);
        poller.join().map_err(|_| "hub poller panicked")??;
        let after = g.kicks() + calls.count.load(Ordering::Relaxed);
        Ok(check_quiet(figs, after - before))
    };
    run().unwrap_or_else(|e| [Err(e.clone()), Err(e)])
}

pub(super) fn guest_to_guest_busy(plan: &Plan, cpus: Cpus) -> [Res<Fig>; 2] {
    let run = || -> Res<[Res<Fig>; 2]> {
        let (hub, _dir) = direct_hub(2, true)?;
        let calls = call_notifier()?;
        let notifier: Arc<dyn Notifier> = calls.clone();
        let mut a = DirectGuest::new(0, true)?;
        let mut b = DirectGuest::new(1, true)?;
        a.serve(&hub, &notifier);
        b.serve(&hub, &notifier);
        b.rpmsg
            .create_ept(PEER_NAME.as_bytes(), ADDR_ANY, ADDR_ANY)
            .map_err(rerr)?;
        b.serve(&hub, &notifier);
        let addr = find_name(&mut a.rpmsg, PEER_NAME, true)?;
        let ept = a.rpmsg.create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = vec![(0, a.ram.clone(), a.info), (1, b.ram.clone(), b.info)];
        let before = a.kicks() + calls.count.load(Ordering::Relaxed);
        let poller = hub_poller(hub.clone(), served, Some(b), cpus.b, stop.clone(), notifier);
        let figs = measure(&mut a.rpmsg, (ept, addr), true, plan);
        stop.store(true, Ordering::Relaxed);
        let b_kicks = poller.join().map_err(|_| "hub poller panicked")??;
        let after = a.kicks() + calls.count.load(Ordering::Relaxed) + b_kicks;
        Ok(check_quiet(figs, after - before))
    };
    run().unwrap_or_else(|e| [Err(e.clone()), Err(e)])
}
