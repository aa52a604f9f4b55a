//! Guests driven in memory: their rings live in this process and the hub is called directly,
//! for the hub's own cost (the full-ring and scale rows: no vhost-user threads in the way).
//! The hub's busy-poll rows run the real program instead (`polled_hub.rs`).

use super::Res;
use super::clients::Fig;
use super::hub::topology;
use super::sys::{TempDir, close_fd, efd_write, new_eventfd, temp_dir};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use vamp_rpmsg::guest_ram::GuestRam;
use vamp_rpmsg::rpmsg::{Config, Rpmsg};
use vamp_rpmsg::transport::{DriverTransport, Environment, Transport};
use vamp_rpmsg::wire::Endian;
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
