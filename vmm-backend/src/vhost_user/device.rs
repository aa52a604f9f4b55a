//! The vhost-user device of one guest on rust-vmm's vhost-user-backend: [`RpmsgBackend`]
//! answers the frontend's feature and ring set-up, turns its memory table into the hub's
//! `GuestRam` (once per table), and runs the hub for each kick (`handle_event`, on the
//! connection's vring worker, confined at its first event). A polled guest's kicks also hand
//! its rings to the poll thread (crate::vhost_user::poll); both serve them through
//! `serve_rings`.

use super::control::ResetNotice;
use super::poll::Job;
use crate::guest_memory::{GuestMemoryMap, GuestRam, check_table, max_mapped, register_table};
use crate::hub::{LinkId, Notifier, Reports, RingsInfo, SharedHub, stop};
use crate::sandbox::{self, ThreadKind};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vamp_rpmsg::transport::RingFormat;
use vamp_rpmsg::virtio::{NUM_QUEUES, VIRTIO_F_RING_PACKED, VIRTIO_RPMSG_F_NS};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

/// Largest queue the backend accepts.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// Whether backends offer VIRTIO_F_RING_PACKED (the default; `vhost-user-rpmsg --no-packed`
/// turns it off for the process). A frontend that does not ack it gets split rings.
static OFFER_PACKED: AtomicBool = AtomicBool::new(true);

/// Offer packed virtqueues (VIRTIO_F_RING_PACKED) on connections set up from now on, or not.
pub fn set_offer_packed(on: bool) {
    OFFER_PACKED.store(on, Ordering::Relaxed);
}

struct VringNotifier {
    vrings: Vec<VringRwLock>,
    /// Woken when the hub breaks the guest's link (see [`crate::vhost_user::control`]).
    reset_notice: Option<Arc<ResetNotice>>,
}

impl Notifier for VringNotifier {
    fn notify(&self, queue: u16) {
        if let Some(vring) = self.vrings.get(queue as usize) {
            // The call fd is replaced by SET_VRING_CALL: the vring always signals the current one.
            if let Err(e) = vring.signal_used_queue() {
                log::debug!("signalling queue {queue} failed: {e}");
            }
        }
    }

    fn needs_reset(&self) {
        if let Some(notice) = &self.reset_notice {
            notice.wake();
        }
    }

    fn resume(&self) -> bool {
        // A kick of our own on the transmit queue: this guest's worker thread wakes and calls
        // `Hub::service` again, after other guests' threads had their turn at the hub's lock.
        let Some(vring) = self.vrings.get(1) else {
            return false;
        };
        let state = vring.get_ref();
        let Some(kick) = state.get_kick() else {
            return false;
        };
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) of 8 bytes from a live local buffer to the kick eventfd, which the
        // vring state (borrowed for the call) keeps open.
        let n = unsafe { libc::write(kick.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        n == one.len() as isize
    }
}

/// The backend of one guest.
pub struct RpmsgBackend {
    id: LinkId,
    name: String,
    hub: SharedHub,
    /// The guest's memory table, made a [`GuestRam`] once per table (in `update_memory`),
    /// not per kick.
    ram: Option<GuestRam>,
    acked_features: u64,
    /// VIRTIO_F_RING_PACKED is offered (fixed per connection: the daemon asks for the
    /// features more than once).
    offer_packed: bool,
    event_idx: bool,
    vrings: Option<(Vec<VringRwLock>, Arc<dyn Notifier>)>,
    /// Told when the hub breaks this guest's link (see [`crate::vhost_user::control`]).
    reset_notice: Option<Arc<ResetNotice>>,
    /// Exit-event consumers given to vhost-user-backend: it registers each with its epoll by
    /// raw descriptor and never closes it (0.24), so they are closed when this backend (one per
    /// connection) is dropped. Without this every connection leaked an eventfd.
    exit_consumers: Mutex<Vec<std::os::fd::RawFd>>,
    /// Memory tables refused on this connection (for rate-limited logging).
    refused_tables: Reports,
    /// The guest is polled (its topology entry or `--poll`): its job with the poll thread.
    poll: Option<Arc<Job>>,
}

impl Drop for RpmsgBackend {
    fn drop(&mut self) {
        if let Some(job) = &self.poll {
            job.withdraw();
        }
        let fds = self
            .exit_consumers
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        for fd in fds.drain(..) {
            // SAFETY: `fd` came from `EventConsumer::into_raw_fd` in vhost-user-backend, which
            // owns it from then on but never closes it; its epoll handler, the only user, holds
            // this backend, so it is gone now and nothing else closes or uses the descriptor.
            unsafe {
                libc::close(fd);
            }
        }
    }
}

impl std::fmt::Debug for RpmsgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpmsgBackend")
            .field("guest", &self.name)
            .finish_non_exhaustive()
    }
}

impl RpmsgBackend {
    /// The backend for guest `id` of the hub.
    pub fn new(hub: SharedHub, id: LinkId) -> Self {
        let guest = &hub.topology().guests[id];
        let (name, poll) = (guest.name.clone(), guest.poll_quiet());
        let poll = poll.map(|quiet| Job::register(hub.clone(), id, quiet));
        RpmsgBackend {
            id,
            name,
            hub,
            ram: None,
            acked_features: 0,
            offer_packed: OFFER_PACKED.load(Ordering::Relaxed),
            event_idx: false,
            vrings: None,
            reset_notice: None,
            exit_consumers: Mutex::new(Vec::new()),
            refused_tables: Reports::default(),
            poll,
        }
    }

    /// Stops polling until the next kick (the rings are about to stop or reset).
    fn pause_polling(&self) {
        if let Some(job) = &self.poll {
            job.pause();
        }
    }

    /// Wakes `notice` whenever a kick finds this guest's link broken (DEVICE_NEEDS_RESET).
    pub fn set_reset_notice(&mut self, notice: Arc<ResetNotice>) {
        self.reset_notice = Some(notice);
    }

    fn rings_info(&self, vrings: &[VringRwLock]) -> Option<RingsInfo> {
        let mut rings = Vec::with_capacity(NUM_QUEUES);
        let mut next_avail = [0u16; NUM_QUEUES];
        for (i, vring) in vrings.iter().enumerate().take(NUM_QUEUES) {
            let state = vring.get_ref();
            let queue = state.get_queue();
            if !queue.ready() || !state.is_enabled() {
                return None;
            }
            match vamp_rpmsg::vring::VringLayout::new(
                queue.size(),
                queue.desc_table(),
                queue.avail_ring(),
                queue.used_ring(),
            ) {
                Ok(l) => rings.push(l),
                Err(e) => {
                    log::error!(
                        "guest {}: queue {i} has an impossible layout: {e}",
                        self.name
                    );
                    return None;
                }
            }
            // For packed rings the same three addresses are the descriptor ring and the
            // driver and device event suppression areas (in_areas_of in the engine), and the
            // base is the low half of vhost-user's packed ring base: the available position
            // with its wrap counter in bit 15 (vhost-user-backend keeps 16 bits of it).
            next_avail[i] = queue.next_avail();
        }
        Some(RingsInfo {
            rings: rings.try_into().ok()?,
            next_avail,
            format: RingFormat::from_features(self.acked_features),
            event_idx: self.event_idx,
            name_service: self.acked_features & VIRTIO_RPMSG_F_NS != 0,
        })
    }
}

/// Records where the guest's rings stand with the frontend (vhost-user's GET_VRING_BASE
/// reports it).
pub(super) fn record(vrings: &[VringRwLock], at: [u16; NUM_QUEUES]) {
    for (vring, next) in vrings.iter().zip(at) {
        vring.set_queue_next_avail(next);
    }
}

/// What a service call does with the guest's kicks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kicks {
    /// Leaves them as they are (a kick: the call also brings new rings up).
    Unchanged,
    /// Polling: asks the guest not to kick, after serving. Only on a link that is up.
    Suppress,
    /// Backing off: asks the guest to kick again, then serves. Only on a link that is up.
    Enable,
}

/// What a service call found.
#[derive(Debug, Clone, Copy)]
pub(super) struct Served {
    /// Where the rings stand, to [`record`].
    pub(super) at: Option<[u16; NUM_QUEUES]>,
    /// The hub's count of events taken from the guest's rings, after the call
    /// ([`crate::hub::Hub::events_taken`]).
    pub(super) taken: u64,
}

/// Serves guest `id`'s rings: the one call into the hub of both a kick (`handle_event`) and
/// the poll thread (crate::vhost_user::poll). `None` when `kicks` is not
/// [`Kicks::Unchanged`] and the guest's link is not up on `info`'s rings: only a kick brings
/// a link up, or moves it to new rings.
pub(super) fn serve_rings(
    hub: &SharedHub,
    id: LinkId,
    ram: &GuestRam,
    info: RingsInfo,
    notifier: &Arc<dyn Notifier>,
    kicks: Kicks,
) -> Option<Served> {
    // A break, found here or on another guest's thread, reaches the control thread through
    // the notifier's `needs_reset`. Memory that vanished under any thread (this one or
    // another) costs its own guest its link (SharedHub::serve_with, crate::guest_memory).
    hub.serve_with(id, |hub| {
        if kicks != Kicks::Unchanged && !hub.is_up_on(id, &info.rings) {
            return None;
        }
        // Enable, then check: the service below sees what was made available before the
        // guest saw kicks enabled.
        let kicks_ok = kicks != Kicks::Enable || hub.suppress_kicks(id, false);
        let at = if kicks_ok {
            hub.service(id, ram, info, notifier)
        } else {
            None
        };
        if kicks == Kicks::Suppress {
            hub.suppress_kicks(id, true);
        }
        Some(Served {
            at,
            taken: hub.events_taken(id),
        })
    })
}

impl VhostUserBackendMut for RpmsgBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let packed = if self.offer_packed {
            VIRTIO_F_RING_PACKED
        } else {
            0
        };
        packed
            | (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VIRTIO_RPMSG_F_NS
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // rpmsg has no config space: no CONFIG feature.
        VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn reset_device(&mut self) {
        self.pause_polling();
        let at = self
            .hub
            .run_ring_work(self.id, stop(self.id, "device reset"));
        if let (Some((vrings, _)), Some(at)) = (&self.vrings, at) {
            record(vrings, at);
        }
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn update_memory(&mut self, mem: GuestMemoryMap) -> io::Result<()> {
        // vhost-user-backend has mapped the table already; nothing reads through it until it is
        // kept here, so a refused table is never touched (and the previous one is dropped: the
        // guest asked to replace it).
        let checked = check_table(&mem.memory(), max_mapped())
            .and_then(|()| register_table(self.id, &mem.memory().into_inner()));
        if let Err(e) = checked {
            // vhost-user-backend keeps the map it gave us until the next table: empty it, so a
            // refused table's mappings (up to terabytes of address space) go now.
            mem.lock()
                .map(|guard| guard.replace(GuestMemoryMmap::new()))
                .ok();
            self.ram = None;
            self.pause_polling();
            // Rate-limited: a VMM can resend a bad table in a loop.
            if self.refused_tables.worth_logging(Reports::FIRST) {
                log::warn!(
                    "guest {}: memory table refused ({} so far): {e}",
                    self.name,
                    self.refused_tables.count()
                );
            }
            return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
        }
        let ram = GuestRam::snapshot(&mem);
        if let Some(job) = &self.poll {
            job.set_memory(&ram);
        }
        self.ram = Some(ram);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without an exit event the daemon cannot stop its worker thread when the frontend
        // disconnects, and serving the next connection would wait for it forever.
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()?;
        self.exit_consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(std::os::fd::AsRawFd::as_raw_fd(&consumer));
        Some((consumer, notifier))
    }

    fn stop_vring(&mut self, _queue_index: u32) -> io::Result<()> {
        self.pause_polling();
        let at = self
            .hub
            .run_ring_work(self.id, stop(self.id, "the frontend stopped the rings"));
        if let (Some((vrings, _)), Some(at)) = (&self.vrings, at) {
            record(vrings, at);
        }
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // The first event on this worker thread, before any guest memory is read: vhost-user-
        // backend has no other hook on its worker threads (see crate::sandbox).
        sandbox::enter(ThreadKind::Worker);
        if device_event as usize >= NUM_QUEUES {
            return Err(io::Error::other(format!("unexpected event {device_event}")));
        }
        let Some(ram) = self.ram.as_ref() else {
            return Ok(());
        };
        if self.vrings.is_none() {
            let notifier: Arc<dyn Notifier> = Arc::new(VringNotifier {
                vrings: vrings.to_vec(),
                reset_notice: self.reset_notice.clone(),
            });
            self.vrings = Some((vrings.to_vec(), notifier));
        }
        let Some(info) = self.rings_info(vrings) else {
            return Ok(());
        };
        let notifier = self
            .vrings
            .as_ref()
            .map(|(_, n)| n.clone())
            .expect("set above");
        let served = serve_rings(&self.hub, self.id, ram, info, &notifier, Kicks::Unchanged);
        if let Some(at) = served.and_then(|s| s.at) {
            record(vrings, at);
        }
        // A kick of a polled guest (its first, or its first after a quiet period): poll.
        if let Some(job) = &self.poll {
            job.kicked(ram, info, vrings, &notifier);
        }
        Ok(())
    }
}
