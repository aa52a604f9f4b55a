//! The vhost-user backend of one guest, on rust-vmm's vhost-user-backend.
//!
//! Each guest has its own socket and daemon thread; all of them share one [`Hub`] behind a
//! mutex, which moves messages between their rings.

use crate::control::{Control, ResetNotice};
use crate::guest_memory::{
    GuestMemoryMap, GuestRam, check_table, max_mapped, register_table, take_faults,
};
use crate::hub::{Hub, LinkId, Notifier, Reports, RingsInfo};
use crate::sandbox::{self, ThreadKind};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, TryLockError};
use std::time::Duration;
use vamp_rpmsg::virtio::{NUM_QUEUES, VIRTIO_RPMSG_F_NS};
use vhost::vhost_user::Listener;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

/// Largest queue the backend accepts.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// Locks the hub, surviving a panic in another guest's thread: the hub's state is kept
/// consistent between calls, so a poisoned lock only means that thread died.
pub fn lock_hub(hub: &Mutex<Hub>) -> std::sync::MutexGuard<'_, Hub> {
    let (mut guard, waited) = match hub.try_lock() {
        Ok(guard) => (guard, false),
        Err(TryLockError::Poisoned(poisoned)) => (poisoned.into_inner(), false),
        Err(TryLockError::WouldBlock) => (
            hub.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            true,
        ),
    };
    // Counted inside the hub, under its lock: no shared counter of its own on the hot path.
    guard.count_lock(waited);
    guard
}

struct VringNotifier {
    vrings: Vec<VringRwLock>,
    /// Woken when the hub breaks the guest's link (see [`crate::control`]).
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
    hub: Arc<Mutex<Hub>>,
    /// The guest's memory table, made a [`GuestRam`] once per table (in `update_memory`),
    /// not per kick.
    ram: Option<GuestRam>,
    acked_features: u64,
    event_idx: bool,
    vrings: Option<(Vec<VringRwLock>, Arc<dyn Notifier>)>,
    /// Told when the hub breaks this guest's link (see [`crate::control`]).
    reset_notice: Option<Arc<ResetNotice>>,
    /// Exit-event consumers given to vhost-user-backend: it registers each with its epoll by
    /// raw descriptor and never closes it (0.24), so they are closed when this backend (one per
    /// connection) is dropped. Without this every connection leaked an eventfd.
    exit_consumers: Mutex<Vec<std::os::fd::RawFd>>,
    /// Memory tables refused on this connection (for rate-limited logging).
    refused_tables: Reports,
}

impl Drop for RpmsgBackend {
    fn drop(&mut self) {
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
    pub fn new(hub: Arc<Mutex<Hub>>, id: LinkId) -> Self {
        let name = lock_hub(&hub).topology().guests[id].name.clone();
        RpmsgBackend {
            id,
            name,
            hub,
            ram: None,
            acked_features: 0,
            event_idx: false,
            vrings: None,
            reset_notice: None,
            exit_consumers: Mutex::new(Vec::new()),
            refused_tables: Reports::default(),
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
            next_avail[i] = queue.next_avail();
        }
        Some(RingsInfo {
            rings: rings.try_into().ok()?,
            next_avail,
            event_idx: self.event_idx,
            name_service: self.acked_features & VIRTIO_RPMSG_F_NS != 0,
        })
    }

    fn record(vrings: &[VringRwLock], at: [u16; NUM_QUEUES]) {
        for (vring, next) in vrings.iter().zip(at) {
            vring.set_queue_next_avail(next);
        }
    }
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
        (1 << VIRTIO_F_VERSION_1)
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
        let at = run_ring_work(&self.hub, stop(self.id, "device reset"));
        if let (Some((vrings, _)), Some(at)) = (&self.vrings, at) {
            Self::record(vrings, at);
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
        self.ram = Some(GuestRam::snapshot(&mem));
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
        let at = run_ring_work(&self.hub, stop(self.id, "the frontend stopped the rings"));
        if let (Some((vrings, _)), Some(at)) = (&self.vrings, at) {
            Self::record(vrings, at);
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
        // A break, found here or on another guest's thread, reaches the control thread through
        // the notifier's `needs_reset`.
        let at = {
            let mut hub = lock_hub(&self.hub);
            let at = hub.service(self.id, ram, info, &notifier);
            // Memory that vanished under any thread (this one or another) costs its own guest
            // its link (see crate::guest_memory).
            for owner in take_faults() {
                hub.break_memory_fault(owner);
            }
            at
        };
        if let Some(at) = at {
            Self::record(vrings, at);
        }
        Ok(())
    }
}

/// Runs `work` on the hub from a confined thread and returns its result: here if the calling
/// thread is confined already (the request, control and remote-ring threads), else on a
/// thread of its own (`vamp-ring-work`) confined as [`ThreadKind::RingWork`]. For the events
/// that make the hub write into other guests' rings (a disconnect seen by the accept thread,
/// a remote's start or end seen by its lifecycle thread; see crate::sandbox). If no thread
/// can be made, the work runs here, logged.
pub fn run_ring_work<R: Send + 'static, W: FnOnce(&mut Hub) -> R + Send + 'static>(
    hub: &Arc<Mutex<Hub>>,
    work: W,
) -> R {
    if sandbox::is_confined() {
        return work(&mut lock_hub(hub));
    }
    let shared = hub.clone();
    let slot = Arc::new(Mutex::new(Some(work)));
    let theirs = slot.clone();
    let take = |slot: &Mutex<Option<_>>| slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    let spawned = std::thread::Builder::new()
        .name("vamp-ring-work".into())
        .spawn(move || {
            sandbox::enter(ThreadKind::RingWork);
            take(&theirs).map(|work: W| work(&mut lock_hub(&shared)))
        });
    match spawned.map(|t| t.join()) {
        Ok(Ok(Some(result))) => result,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Ok(Ok(None)) | Err(_) => {
            log::error!("cannot start a ring-work thread: the work runs unconfined");
            let work = take(&slot).expect("not taken: the thread never ran it");
            work(&mut lock_hub(hub))
        }
    }
}

/// The work of stopping guest `id`'s link, for [`run_ring_work`].
pub fn stop(id: LinkId, reason: impl Into<String>) -> impl FnOnce(&mut Hub) -> Option<[u16; 2]> {
    let reason = reason.into();
    move |hub| hub.stop(id, &reason)
}

/// How often the hub's clock ticks (see [`Hub::tick`]).
pub const TICK: Duration = Duration::from_millis(100);

/// Calls [`Hub::tick`] every [`TICK`] on a thread of its own, until the hub is dropped. The
/// hub is otherwise driven by kicks alone, and a guest whose sends are blocked does not kick:
/// without a clock, a stuck receiver would hold its senders' buffers until some other event.
pub fn spawn_clock(hub: &Arc<Mutex<Hub>>) {
    let hub = Arc::downgrade(hub);
    let clock = move || {
        sandbox::enter(ThreadKind::Clock);
        while let Some(hub) = hub.upgrade() {
            lock_hub(&hub).tick();
            drop(hub);
            std::thread::sleep(TICK);
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("vamp-hub-clock".into())
        .spawn(clock)
    {
        log::error!("cannot start the hub's clock: {e}; timeouts are checked at kicks only");
    }
}

/// Serves guest `id` on its socket until the process ends: one frontend connection at a time,
/// a fresh backend for each, the guest's link withdrawn whenever its frontend goes away.
///
/// The listening socket stays open across connections, so a frontend that reconnects (QEMU's
/// `reconnect=`) waits in its backlog instead of finding no socket.
pub fn serve_guest(
    hub: Arc<Mutex<Hub>>,
    id: LinkId,
    socket: &Path,
) -> Result<(), vhost_user_backend::Error> {
    let name = lock_hub(&hub).topology().guests[id].name.clone();
    if lock_hub(&hub).claim_clock() {
        spawn_clock(&hub);
    }
    let listener =
        Listener::new(socket, true).map_err(vhost_user_backend::Error::CreateBackendListener)?;
    let notice = Arc::new(ResetNotice::new().map_err(vhost_user_backend::Error::StartDaemon)?);
    loop {
        let mut backend = RpmsgBackend::new(hub.clone(), id);
        backend.set_reset_notice(notice.clone());
        let backend = Arc::new(RwLock::new(backend));
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(format!("vamp-vu-{name}"), backend, mem)?;
        log::info!(
            "guest {name}: waiting for a frontend on {}",
            socket.display()
        );
        // The frontend talks to the daemon through a control thread, which adds device status
        // and the backend channel (crate::control).
        let mut control = None;
        let result = accept(&listener).and_then(|frontend| {
            let started = Control::start(
                frontend,
                |path| start_confined(&mut daemon, path),
                hub.clone(),
                id,
                notice.clone(),
            );
            control = Some(started.map_err(vhost_user_backend::Error::StartDaemon)?);
            daemon.wait()
        });
        // Dropping the daemon stops and joins its worker threads: only then can no late kick
        // of the old connection bring the link back up.
        drop(daemon);
        drop(control);
        run_ring_work(&hub, stop(id, "the frontend disconnected"));
        match result {
            Ok(()) => log::info!("guest {name}: frontend disconnected"),
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => log::info!("guest {name}: frontend disconnected"),
            Err(e) => log::warn!("guest {name}: connection ended: {e}"),
        }
    }
}

/// Connects `daemon` to the control thread's private socket at `path` and starts its request
/// thread, from a short-lived thread confined as [`ThreadKind::Request`]: the request thread
/// inherits the filter, so it is confined before it reads the frontend's first message.
fn start_confined(
    daemon: &mut VhostUserDaemon<Arc<RwLock<RpmsgBackend>>>,
    path: &str,
) -> Result<(), vhost_user_backend::Error> {
    std::thread::scope(|scope| {
        let starter = std::thread::Builder::new()
            .name("vamp-vhost-start".into())
            .spawn_scoped(scope, || {
                sandbox::enter(ThreadKind::Request);
                daemon.start_client(path)
            })
            .map_err(vhost_user_backend::Error::StartDaemon)?;
        starter
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The next frontend connection on `listener`.
fn accept(
    listener: &Listener,
) -> Result<std::os::unix::net::UnixStream, vhost_user_backend::Error> {
    loop {
        match listener.accept() {
            Ok(Some(stream)) => return Ok(stream),
            Ok(None) => continue,
            Err(e) => {
                // Out of file descriptors or the like: do not spin.
                std::thread::sleep(Duration::from_millis(100));
                return Err(vhost_user_backend::Error::CreateBackendListener(e));
            }
        }
    }
}
