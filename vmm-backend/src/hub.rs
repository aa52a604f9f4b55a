//! The hub: routes rpmsg between guests and to host services.
//!
//! Every guest is one *link*: a virtio-rpmsg device in which the hub is the device (remote)
//! and the guest the driver. Each link has its own address space, as in Linux and OpenAMP, and
//! the hub keeps, per link, a table from the hub-side addresses in that link to where they lead
//! (a host service, or an address in another guest), like a NAT:
//!
//! 1. Guest B announces "foo" at b. If the topology lets guest A see B's "foo", the hub creates
//!    a proxy endpoint pA in A's link and announces "foo" at pA to A.
//! 2. A sends from a1 to pA. The hub finds (B, b), gives (A, a1) a reply proxy pB in B's link
//!    (created once, reused) and copies the message once, from A's buffer into one of B's, with
//!    src = pB and dst = b.
//! 3. B answers to pB; the hub maps it back to (A, a1) and delivers it with src = pA.
//! 4. B's name-service destroy, reset or disconnect withdraws "foo" from A (a name-service
//!    destroy at pA) and frees the proxies.
//!
//! A guest can only reach hub addresses in its own link, so it can never address a name its
//! topology does not offer, and never send as another guest: the source a receiver sees is
//! always the hub's proxy for the sender. A receiver without free buffers delays only traffic
//! to itself: messages for it wait in its queue, holding the sender's buffers (so the sender
//! feels backpressure, bounded by its own ring), and go out when it posts buffers again. The
//! wait is bounded in time too: a guest that takes no message for the pending timeout is
//! given up on (see [`Hub::set_pending_timeout`]), so one that never reads cannot keep the
//! buffers of the guests that talk to it, and with them all their other traffic.
//!
//! Sharing is fair: the clock of that timeout runs per message (the oldest waiting message
//! must go out within it, however many others the receiver took meanwhile); one sender may
//! have at most [`MAX_QUEUED_PER_SENDER`] messages (by default) waiting for one receiver,
//! further ones being dropped and counted against it, so that its buffers come back and its
//! traffic to everyone else keeps flowing; and one service call takes at most
//! [`POLL_BUDGET`] messages from a link (the rest on the next call, which the hub asks for
//! itself: see [`Notifier::resume`]).
//!
//! The route tables keep one hub address per (receiver, sender, sender's address), whatever
//! the order of sends and announcements: a reply proxy whose address is later announced
//! becomes the offered endpoint. Each receiver keeps its proxies grouped by sender, so a
//! guest's link going down costs time in proportion to what it left in the others.

use crate::config::{ServiceKind, Topology};
use crate::guest_memory::GuestRam;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vamp_rpmsg::rpmsg::{
    Config, Dropped, Error as RpmsgError, Handler, HeldRx, NsEvent, Received, Rpmsg,
};
use vamp_rpmsg::transport::{
    Buffer, DeviceTransport, DriverTransport, Environment, LinkError, Transport,
};
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::{ADDR_ANY, Endian, NS_ADDR, RESERVED_ADDRESSES};

/// Index of a guest in the topology (and of its link).
pub type LinkId = usize;

/// Largest message the hub puts in a guest's buffer (Linux's buffers are 512 bytes).
pub const MAX_BUFFER: u32 = 512;

/// Names one link may have announced at a time. Further announcements are refused (logged,
/// counted as dropped): a guest announcing without end would otherwise grow the hub and flood
/// every guest its names are offered to.
pub const MAX_NAMES_PER_LINK: usize = 1024;

/// Addresses of one guest that another guest's link may know it by: its announced names
/// ([`MAX_NAMES_PER_LINK`]) plus this many source addresses it sent from. Messages from further
/// new source addresses are dropped (logged): without a bound, a guest sending from ever new
/// addresses would make the hub create endpoints in the receiver's link without end. Linux and
/// OpenAMP hand out the lowest free address, so a real guest uses few.
pub const MAX_REPLY_PROXIES_PER_SOURCE: usize = 4096;
const MAX_PROXIES_PER_SOURCE: usize = MAX_NAMES_PER_LINK + MAX_REPLY_PROXIES_PER_SOURCE;

/// How long a message may wait for a guest's buffers before the hub gives up on that guest
/// (see [`Hub::set_pending_timeout`]).
pub const DEFAULT_PENDING_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages one sender may have waiting for one receiver's buffers, by default (see
/// [`Hub::set_max_queued_per_sender`]). Further messages from it to that receiver are dropped
/// (counted against the sender, logged rate-limited) rather than left in its ring: its
/// buffers come back, so its traffic to everyone else keeps flowing, and no sender can fill a
/// receiver's queue for the others. Linux and vamp's own driver have at most 256 transmit
/// buffers (half of Linux's 512), so a well-behaved guest meets its own ring's backpressure
/// first; only a VMM with a larger ring and forged descriptors reaches the cap.
pub const MAX_QUEUED_PER_SENDER: usize = 256;

/// Messages the hub takes from one link per service call: a guest that reposts its ring as
/// fast as the hub reads it cannot hold the hub (and its lock) for the others. The rest wait
/// for the next call, which the hub asks for itself ([`Notifier::resume`]) or its clock makes.
pub const POLL_BUDGET: usize = 64;

/// Name-service events of one link logged in full before the log thins out to every 1000th
/// (a guest can announce and withdraw at line rate).
const NS_LOG_LINES: u64 = 100;
/// Reports of other kinds logged in full before the log thins out.
const LOG_LINES: u64 = 10;

/// Reports of one kind from one guest: every log line a guest can make the hub write goes
/// through one of these, so no guest can flood the log.
#[derive(Debug, Default, Clone, Copy)]
struct Reports(u64);

impl Reports {
    /// Counts one report; whether it is logged: the first `first`, then every 1000th.
    fn worth_logging(&mut self, first: u64) -> bool {
        self.0 += 1;
        self.0 <= first || self.0.is_multiple_of(1000)
    }

    /// Reports so far.
    fn count(self) -> u64 {
        self.0
    }
}

/// Signals a guest that a queue has news (the vhost-user call eventfd).
pub trait Notifier: Send + Sync {
    /// Interrupts the guest for `queue`.
    fn notify(&self, queue: u16);

    /// The guest broke the ring protocol: its link is down until it resets the device (virtio's
    /// DEVICE_NEEDS_RESET). Called once per break, with the hub locked: only signal here. The
    /// default does nothing.
    fn needs_reset(&self) {}

    /// The hub left messages in the guest's transmit ring (its [`POLL_BUDGET`] ran out) and
    /// the guest will not kick for them: have [`Hub::service`] called again soon, as a kick
    /// would (signal the kick eventfd the guest's thread waits on). Called with the hub
    /// locked: only signal here. Returns whether it will; when not (the default), the hub's
    /// clock ([`Hub::tick`]) serves the rest.
    fn resume(&self) -> bool {
        false
    }
}

/// The environment of a link's engine: interrupts go to the guest's call eventfds.
pub struct LinkEnv {
    notifier: Arc<dyn Notifier>,
    start: Instant,
}

impl std::fmt::Debug for LinkEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkEnv").finish_non_exhaustive()
    }
}

impl LinkEnv {
    /// An environment whose notifications go to `notifier`.
    pub fn new(notifier: Arc<dyn Notifier>) -> Self {
        LinkEnv {
            notifier,
            start: Instant::now(),
        }
    }
}

impl Environment for LinkEnv {
    fn notify(&mut self, queue: u16) {
        self.notifier.notify(queue);
    }

    fn now_us(&mut self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// The rings of one link, in whichever role the hub plays on it.
#[derive(Debug)]
pub enum LinkTransport {
    /// A guest is the driver (vhost-user): the hub is the device.
    Device(DeviceTransport<GuestRam, LinkEnv>),
    /// A remote is the device (its resource table's vdev): the hub is the driver and owns
    /// the buffers.
    Driver(Box<DriverTransport<GuestRam, LinkEnv>>),
}

macro_rules! each_role {
    ($self:expr, $t:ident => $e:expr) => {
        match $self {
            LinkTransport::Device($t) => $e,
            LinkTransport::Driver($t) => $e,
        }
    };
}

impl Transport for LinkTransport {
    type Memory = GuestRam;

    fn memory(&self) -> &GuestRam {
        each_role!(self, t => t.memory())
    }
    fn endian(&self) -> Endian {
        each_role!(self, t => t.endian())
    }
    fn tx_buffer_size(&self) -> Option<u32> {
        each_role!(self, t => t.tx_buffer_size())
    }
    fn rx_buffer_size(&self) -> Option<u32> {
        each_role!(self, t => t.rx_buffer_size())
    }
    fn take_tx(&mut self) -> Result<Option<Buffer>, LinkError> {
        each_role!(self, t => t.take_tx())
    }
    fn send_tx(&mut self, buf: Buffer, len: u32) -> Result<(), LinkError> {
        each_role!(self, t => t.send_tx(buf, len))
    }
    fn release_tx(&mut self, buf: Buffer) {
        each_role!(self, t => t.release_tx(buf))
    }
    fn take_rx(&mut self) -> Result<Option<Buffer>, LinkError> {
        each_role!(self, t => t.take_rx())
    }
    fn release_rx(&mut self, buf: Buffer) -> Result<(), LinkError> {
        each_role!(self, t => t.release_rx(buf))
    }
    fn flush(&mut self) -> Result<(), LinkError> {
        each_role!(self, t => t.flush())
    }
    fn want_tx_notifications(&mut self, on: bool) -> Result<bool, LinkError> {
        each_role!(self, t => t.want_tx_notifications(on))
    }
    fn environment(&mut self) -> &mut dyn Environment {
        each_role!(self, t => t.environment())
    }
}

impl LinkTransport {
    /// Where a device-role link's rings stand (vhost-user's GET_VRING_BASE); `None` for a
    /// driver-role link, whose rings the hub owns.
    fn next_avail(&self) -> Option<[u16; 2]> {
        match self {
            LinkTransport::Device(t) => Some(t.next_avail()),
            LinkTransport::Driver(_) => None,
        }
    }
}

/// The engine of one link.
pub type LinkEngine = Rpmsg<LinkTransport>;

/// The state of a guest's rings, as its frontend set them up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingsInfo {
    /// vq 0 and vq 1.
    pub rings: [VringLayout; 2],
    /// Where to resume reading each ring.
    pub next_avail: [u16; 2],
    /// VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// VIRTIO_RPMSG_F_NS was negotiated.
    pub name_service: bool,
}

/// Counters of one guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Messages from this guest delivered to another guest.
    pub forwarded: u64,
    /// Messages from this guest answered by a host service.
    pub served: u64,
    /// Messages from this guest that could not be delivered (see the log for why).
    pub dropped: u64,
    /// Messages for this guest that had to wait for its buffers.
    pub queued: u64,
    /// Times the link came up.
    pub ups: u64,
    /// Times the guest broke the ring protocol.
    pub protocol_errors: u64,
    /// Malformed descriptor chains from this guest (each returned used with length 0).
    pub bad_chains: u64,
    /// Polls of this guest's ring that took their whole [`POLL_BUDGET`] and left the rest for
    /// the next call.
    pub budget_spent: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Service(usize),
    Guest { link: LinkId, addr: u32 },
}

/// Where each hub address of one link leads. The hub's engine allocates every one of these
/// addresses itself (services, announced proxies, reply proxies: all `ADDR_ANY`, so the lowest
/// free from 1024 up), which keeps them dense: a vector indexed by address serves the lookup
/// every message needs without hashing.
#[derive(Debug, Default)]
struct Routes(Vec<Option<Target>>);

impl Routes {
    fn index(addr: u32) -> Option<usize> {
        addr.checked_sub(RESERVED_ADDRESSES).map(|i| i as usize)
    }

    fn get(&self, addr: u32) -> Option<Target> {
        self.0.get(Self::index(addr)?).copied().flatten()
    }

    fn insert(&mut self, addr: u32, target: Target) {
        let Some(i) = Self::index(addr) else {
            // The engine never hands out a reserved address for ADDR_ANY.
            log::error!("hub address {addr:#x} is reserved: route to {target:?} not kept");
            return;
        };
        if i >= self.0.len() {
            self.0.resize(i + 1, None);
        }
        self.0[i] = Some(target);
    }

    fn remove(&mut self, addr: u32) {
        if let Some(slot) = Self::index(addr).and_then(|i| self.0.get_mut(i)) {
            *slot = None;
        }
        while self.0.last() == Some(&None) {
            self.0.pop();
        }
    }

    /// Every route, by hub address.
    fn iter(&self) -> impl Iterator<Item = (u32, Target)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (RESERVED_ADDRESSES + i as u32, t)))
    }
}

/// A hub address in a receiver's link that stands for one address of one sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proxy {
    /// The hub address, in the receiver's link.
    addr: u32,
    /// Announced to the receiver under a name the sender announced at that address (else a
    /// reply proxy only: the source the receiver sees on the sender's messages).
    offered: bool,
}

/// The proxies in one receiver's link, grouped by sender: (sender, sender's address) maps to
/// one hub address, and a sender's link going down finds its own proxies without a scan.
#[derive(Debug, Default)]
struct Proxies(HashMap<LinkId, HashMap<u32, Proxy>>);

impl Proxies {
    fn get(&self, from: LinkId, addr: u32) -> Option<Proxy> {
        self.0.get(&from)?.get(&addr).copied()
    }

    /// Proxies for `from`'s addresses.
    fn count_from(&self, from: LinkId) -> usize {
        self.0.get(&from).map_or(0, HashMap::len)
    }

    fn insert(&mut self, from: LinkId, addr: u32, proxy: Proxy) {
        self.0.entry(from).or_default().insert(addr, proxy);
    }

    fn remove(&mut self, from: LinkId, addr: u32) -> Option<Proxy> {
        let of_sender = self.0.get_mut(&from)?;
        let proxy = of_sender.remove(&addr);
        if of_sender.is_empty() {
            self.0.remove(&from);
        }
        proxy
    }

    /// Takes every proxy of `from`: (sender's address, proxy).
    fn take_from(&mut self, from: LinkId) -> HashMap<u32, Proxy> {
        self.0.remove(&from).unwrap_or_default()
    }
}

/// A message for a guest that had no free buffer, holding its sender's buffer.
#[derive(Debug)]
struct Pending {
    from: LinkId,
    from_incarnation: u64,
    held: HeldRx,
    src: u32,
    dst: u32,
    /// When it started to wait: the pending timeout is judged on each message's own wait.
    since: Instant,
}

/// The messages waiting for one guest's buffers, in order, with how many each sender has
/// among them (bounded by [`Hub::set_max_queued_per_sender`]).
#[derive(Debug, Default)]
struct PendingQueue {
    queue: VecDeque<Pending>,
    per_sender: HashMap<LinkId, usize>,
}

impl PendingQueue {
    fn len(&self) -> usize {
        self.queue.len()
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn front(&self) -> Option<&Pending> {
        self.queue.front()
    }

    /// Messages of `from` waiting here.
    fn count_from(&self, from: LinkId) -> usize {
        self.per_sender.get(&from).copied().unwrap_or(0)
    }

    fn push_back(&mut self, p: Pending) {
        *self.per_sender.entry(p.from).or_default() += 1;
        self.queue.push_back(p);
    }

    fn pop_front(&mut self) -> Option<Pending> {
        let p = self.queue.pop_front()?;
        self.uncount(p.from, 1);
        Some(p)
    }

    fn uncount(&mut self, from: LinkId, n: usize) {
        if let Some(c) = self.per_sender.get_mut(&from) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.per_sender.remove(&from);
            }
        }
    }

    /// Forgets the messages of `from` (its link went down: their buffers went with its rings).
    /// Costs nothing when it has none here.
    fn forget_from(&mut self, from: LinkId) {
        if self.per_sender.remove(&from).is_some() {
            self.queue.retain(|p| p.from != from);
        }
    }

    /// Takes every message.
    fn take_all(&mut self) -> VecDeque<Pending> {
        self.per_sender.clear();
        std::mem::take(&mut self.queue)
    }

    fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.queue.iter()
    }
}

#[derive(Debug)]
struct Link {
    engine: Option<LinkEngine>,
    mem: GuestRam,
    rings: [VringLayout; 2],
    incarnation: u64,
    /// Where each hub address of this link leads.
    nat: Routes,
    /// The way back: the hub address standing for each (sender, address). At most
    /// [`MAX_PROXIES_PER_SOURCE`] per sender: bounds what one guest can make the hub create
    /// in another guest's link by sending from ever new addresses.
    reverse: Proxies,
    announced: Vec<(Vec<u8>, u32)>,
    pending: PendingQueue,
    /// The hub gave up on this link: a message waited for it longer than the pending timeout.
    /// Messages for it are not queued (dropped when it has no free buffer) until it takes one
    /// again.
    stalled: bool,
    /// The last poll of this link ran out of its [`POLL_BUDGET`]: messages may be left in its
    /// transmit ring, which its guest will not kick for.
    more: bool,
    /// Malformed chains of its transport already counted.
    bad_chains_seen: u64,
}

/// A guest's [`Notifier`], kept by its slot.
#[derive(Clone)]
struct SlotNotifier(Arc<dyn Notifier>);

impl std::fmt::Debug for SlotNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotNotifier")
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// "guest" or "remote", for log lines.
    kind: &'static str,
    name: String,
    link: Option<Link>,
    /// Rings on which the guest broke the protocol: ignored until it sets up new ones.
    broken: Option<[VringLayout; 2]>,
    /// Where the guest's interrupts go (set when its link comes up): told of a break.
    notifier: Option<SlotNotifier>,
    stats: LinkStats,
    /// Log reports of dropped messages, malformed chains, other link errors, name-service
    /// events, and of the link's ups, downs and breaks (a guest can reconnect at line rate).
    drop_reports: Reports,
    bad_reports: Reports,
    error_reports: Reports,
    ns_reports: Reports,
    link_reports: Reports,
}

/// The hub: every guest's link and the routes between them.
#[derive(Debug)]
pub struct Hub {
    topology: Topology,
    slots: Vec<Slot>,
    incarnations: u64,
    pending_timeout: Duration,
    /// Messages one sender may have waiting for one receiver.
    max_queued_per_sender: usize,
    /// Someone calls [`tick`](Self::tick) periodically.
    clock_claimed: bool,
    /// Times [`lock_hub`](crate::backend::lock_hub) took the hub's lock, and found it held.
    locks: (u64, u64),
    /// The links one poll sent into (see `Router::batched`), kept between polls.
    batched: Vec<LinkId>,
}

impl Hub {
    /// A hub for a topology; no guest is connected yet.
    pub fn new(topology: Topology) -> Self {
        let guests = topology.guests.iter().map(|g| ("guest", &g.name));
        let remotes = topology.remotes.iter().map(|r| ("remote", &r.name));
        let slots = guests
            .chain(remotes)
            .map(|(kind, name)| Slot {
                kind,
                name: name.clone(),
                ..Default::default()
            })
            .collect();
        Hub {
            topology,
            slots,
            incarnations: 0,
            pending_timeout: DEFAULT_PENDING_TIMEOUT,
            max_queued_per_sender: MAX_QUEUED_PER_SENDER,
            clock_claimed: false,
            locks: (0, 0),
            batched: Vec::new(),
        }
    }

    /// Returns `true` once: the caller is to call [`tick`](Self::tick) every 100 ms or so
    /// for as long as it uses the hub (`serve_guest` does, on a thread of its own).
    pub fn claim_clock(&mut self) -> bool {
        !std::mem::replace(&mut self.clock_claimed, true)
    }

    /// Sets how long a message may wait for a guest's buffers. When the oldest waiting message
    /// has waited that long, the hub gives up on the guest: what waits is dropped (counted
    /// against the senders, who get their buffers back), and messages for it are dropped
    /// instead of queued until it takes one again. Judged per message, not on "any delivery":
    /// a guest that takes one message now and then cannot keep the rest waiting for ever. A
    /// guest that keeps up with what is sent to it never hits it. Checked at every
    /// [`tick`](Self::tick) and kick.
    pub fn set_pending_timeout(&mut self, timeout: Duration) {
        self.pending_timeout = timeout;
    }

    /// Sets how many messages one sender may have waiting for one receiver's buffers (at
    /// least 1; [`MAX_QUEUED_PER_SENDER`] by default). Further ones are dropped against the
    /// sender, whose buffers come back: its traffic to the others keeps flowing.
    pub fn set_max_queued_per_sender(&mut self, n: usize) {
        self.max_queued_per_sender = n.max(1);
    }

    /// Housekeeping, to call every 100 ms or so (`serve_guest` does): gives up on guests
    /// whose oldest waiting message waited the pending timeout, serves what a poll left for
    /// later (its budget ran out), and accounts malformed chains.
    pub fn tick(&mut self) {
        let now = Instant::now();
        for id in 0..self.slots.len() {
            let Some(link) = self.slots[id].link.as_ref() else {
                continue;
            };
            // The oldest message has waited longest: the queue is in arrival order.
            if let Some(oldest) = link.pending.front() {
                let waited = now.duration_since(oldest.since);
                if waited >= self.pending_timeout {
                    self.give_up_on(id, waited);
                }
            }
            if let Some(link) = self.slots[id].link.as_ref()
                && link.more
            {
                let rings = link.rings;
                self.process(id, rings);
            }
        }
        self.account_bad_chains();
    }

    /// Drops what waits for guest `id`, which took nothing for `waited`.
    fn give_up_on(&mut self, id: LinkId, waited: Duration) {
        let Some(link) = self.slots[id].link.as_mut() else {
            return;
        };
        link.stalled = true;
        let pending = link.pending.take_all();
        let dropped = pending.len();
        for p in pending {
            self.slots[p.from].stats.dropped += 1;
            release_held(&mut self.slots, p.from, p.from_incarnation, p.held);
        }
        let slot = &mut self.slots[id];
        if slot.error_reports.worth_logging(LOG_LINES) {
            log::warn!(
                "{} {}: took no message for {waited:.1?}: {dropped} message(s) waiting for it dropped, \
                 their senders' buffers returned; messages for it are dropped while it takes none",
                slot.kind,
                slot.name
            );
        }
    }

    /// Counts (and logs, rate-limited) the malformed chains each link's transport returned.
    fn account_bad_chains(&mut self) {
        for slot in &mut self.slots {
            let Some(link) = slot.link.as_mut() else {
                continue;
            };
            let Some(LinkTransport::Device(t)) = link.engine.as_ref().map(|e| e.transport()) else {
                continue;
            };
            let (total, last) = (t.bad_chains(), t.last_bad_chain());
            let new = total.saturating_sub(link.bad_chains_seen);
            link.bad_chains_seen = total;
            if new == 0 {
                continue;
            }
            slot.stats.bad_chains += new;
            if slot.bad_reports.worth_logging(LOG_LINES) {
                let why = last.map(|e| e.to_string()).unwrap_or_default();
                log::warn!(
                    "{} {}: {new} malformed descriptor chain(s) returned unused ({why}; {} so far)",
                    slot.kind,
                    slot.name,
                    slot.stats.bad_chains
                );
            }
        }
    }

    /// Notes one taking of the hub's lock (by [`lock_hub`](crate::backend::lock_hub)), and
    /// whether it had to wait for another thread.
    pub fn count_lock(&mut self, waited: bool) {
        self.locks.0 += 1;
        self.locks.1 += u64::from(waited);
    }

    /// How often the hub's lock, which all guests share, was taken through
    /// [`lock_hub`](crate::backend::lock_hub), and how often that had to wait for another
    /// thread (`vamp bench` reports it for its many-guest runs).
    pub fn lock_counts(&self) -> (u64, u64) {
        self.locks
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Counters of a guest.
    pub fn stats(&self, id: LinkId) -> LinkStats {
        self.slots.get(id).map(|s| s.stats).unwrap_or_default()
    }

    /// Whether a guest's link is up.
    pub fn is_up(&self, id: LinkId) -> bool {
        self.slots.get(id).is_some_and(|s| s.link.is_some())
    }

    /// Whether a guest broke the ring protocol on its current rings: its link is down and its
    /// kicks are ignored until it resets the device or sets up new rings (virtio's
    /// DEVICE_NEEDS_RESET: the guest's [`Notifier::needs_reset`] was told).
    pub fn is_broken(&self, id: LinkId) -> bool {
        self.slots.get(id).is_some_and(|s| s.broken.is_some())
    }

    /// Hub addresses in guest `to`'s link that stand for addresses of guest `from` (offered
    /// names and reply proxies): at most [`MAX_NAMES_PER_LINK`] +
    /// [`MAX_REPLY_PROXIES_PER_SOURCE`].
    pub fn proxies_for(&self, to: LinkId, from: LinkId) -> usize {
        self.slots
            .get(to)
            .and_then(|s| s.link.as_ref())
            .map_or(0, |l| l.reverse.count_from(from))
    }

    /// Endpoints of the hub's engine in guest `id`'s link (services and proxies).
    pub fn endpoints_in(&self, id: LinkId) -> usize {
        self.slots
            .get(id)
            .and_then(|s| s.link.as_ref())
            .and_then(|l| l.engine.as_ref())
            .map_or(0, |e| e.endpoint_count())
    }

    /// Checks the hub's invariants (for the stateful fuzz target and tests): the route tables
    /// agree with each other and with each link's engine (no orphaned proxy, none beyond its
    /// bound, none offered under a name its guest did not announce or the topology does not
    /// offer), and every buffer the hub holds is accounted for by a waiting message within
    /// its sender's share. Returns what is wrong.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        for (to, slot) in self.slots.iter().enumerate() {
            let Some(link) = slot.link.as_ref() else {
                continue;
            };
            let who = &slot.name;
            let engine = link
                .engine
                .as_ref()
                .ok_or_else(|| format!("{who}: engine out of its link outside a poll"))?;
            if link.announced.len() > MAX_NAMES_PER_LINK {
                return Err(format!("{who}: {} names announced", link.announced.len()));
            }
            // Every route has its endpoint; every guest route its proxy entry, and back.
            let mut routes = 0;
            for (addr, target) in link.nat.iter() {
                routes += 1;
                if engine.endpoint_by_addr(addr).is_none() {
                    return Err(format!(
                        "{who}: route {addr:#x} -> {target:?} without endpoint"
                    ));
                }
                if let Target::Guest {
                    link: from,
                    addr: a,
                } = target
                    && link.reverse.get(from, a).map(|p| p.addr) != Some(addr)
                {
                    return Err(format!(
                        "{who}: route {addr:#x} -> {target:?} not in reverse"
                    ));
                }
            }
            if engine.endpoint_count() != routes {
                return Err(format!(
                    "{who}: {} endpoints for {routes} routes (orphaned proxies)",
                    engine.endpoint_count()
                ));
            }
            for (&from, proxies) in &link.reverse.0 {
                let sender = self.slots.get(from).ok_or("proxy for no link")?;
                let Some(from_link) = sender.link.as_ref() else {
                    return Err(format!(
                        "{who}: proxies for {}, whose link is down",
                        sender.name
                    ));
                };
                if from == to || proxies.is_empty() || proxies.len() > MAX_PROXIES_PER_SOURCE {
                    return Err(format!(
                        "{who}: {} proxies for {}",
                        proxies.len(),
                        sender.name
                    ));
                }
                for (&a, p) in proxies {
                    if link.nat.get(p.addr)
                        != Some(Target::Guest {
                            link: from,
                            addr: a,
                        })
                    {
                        return Err(format!(
                            "{who}: proxy {p:?} for ({from}, {a:#x}) has no route"
                        ));
                    }
                    let ept = engine
                        .endpoint_by_addr(p.addr)
                        .and_then(|e| engine.endpoint(e))
                        .ok_or_else(|| format!("{who}: proxy {p:?} without endpoint"))?;
                    if !p.offered {
                        continue;
                    }
                    let name = ept.name();
                    let announced = from_link
                        .announced
                        .iter()
                        .any(|(n, x)| n == name && *x == a);
                    if !announced || !self.topology.offers(&sender.name, name, who) {
                        return Err(format!(
                            "{who}: offered {:?} at {:#x} for {} at {a:#x}, which it does not announce or may not offer",
                            String::from_utf8_lossy(name),
                            p.addr,
                            sender.name
                        ));
                    }
                }
            }
            // Waiting messages: counted per sender, each within its share, each from a live
            // link of the incarnation that sent it.
            let mut per_sender: HashMap<LinkId, usize> = HashMap::new();
            for p in link.pending.iter() {
                *per_sender.entry(p.from).or_default() += 1;
                let live = self.slots[p.from]
                    .link
                    .as_ref()
                    .is_some_and(|l| l.incarnation == p.from_incarnation);
                if !live {
                    return Err(format!(
                        "{who}: a waiting message from a link that went down"
                    ));
                }
            }
            if per_sender != link.pending.per_sender {
                return Err(format!(
                    "{who}: per-sender counts {:?}, queue holds {per_sender:?}",
                    link.pending.per_sender
                ));
            }
            if let Some((from, n)) = per_sender
                .iter()
                .find(|(_, n)| **n > self.max_queued_per_sender)
            {
                return Err(format!("{who}: {n} messages of link {from} wait"));
            }
        }
        // Every buffer a link's engine holds is a message waiting somewhere.
        for (id, slot) in self.slots.iter().enumerate() {
            let Some(engine) = slot.link.as_ref().and_then(|l| l.engine.as_ref()) else {
                continue;
            };
            let waiting: usize = self
                .slots
                .iter()
                .filter_map(|s| s.link.as_ref())
                .map(|l| l.pending.count_from(id))
                .sum();
            if engine.held_rx_count() != waiting {
                return Err(format!(
                    "{}: {} buffers held, {waiting} messages waiting",
                    slot.name,
                    engine.held_rx_count()
                ));
            }
        }
        Ok(())
    }

    /// Messages waiting for a guest's buffers.
    pub fn queued_for(&self, id: LinkId) -> usize {
        self.slots
            .get(id)
            .and_then(|s| s.link.as_ref())
            .map_or(0, |l| l.pending.len())
    }

    /// Handles a kick from guest `id`: brings its link up if its rings are new, delivers what
    /// it sent and what waits for it. Returns where its rings stand, to record with the
    /// frontend (vhost-user's GET_VRING_BASE reports it).
    pub fn service(
        &mut self,
        id: LinkId,
        mem: &GuestRam,
        info: RingsInfo,
        notifier: &Arc<dyn Notifier>,
    ) -> Option<[u16; 2]> {
        self.tick();
        let slot = self.slots.get_mut(id)?;
        if slot.broken == Some(info.rings) {
            return None;
        }
        slot.broken = None;
        let rebuild = slot.link.as_ref().is_none_or(|l| l.rings != info.rings);
        if rebuild {
            self.link_down(id, "the guest set up new rings");
            self.slots[id].notifier = Some(SlotNotifier(notifier.clone()));
            if let Err(e) = self.link_up(id, mem, info, notifier) {
                let slot = &mut self.slots[id];
                if slot.link_reports.worth_logging(LOG_LINES) {
                    log::error!("guest {}: cannot attach to its rings: {e}", slot.name);
                }
                self.slots[id].stats.protocol_errors += 1;
                self.mark_broken(id, info.rings);
                return None;
            }
        } else if let Some(link) = self.slots[id].link.as_mut()
            && !link.mem.same_as(mem)
        {
            link.mem = mem.clone();
            if let Some(engine) = link.engine.as_mut()
                && let LinkTransport::Device(t) = engine.transport_mut()
                && let Err(e) = t.set_memory(mem.clone())
            {
                // Serving on from the old table would read memory the guest gave up: the
                // rings are gone, as much a protocol error as a ring outside memory at setup.
                let slot = &mut self.slots[id];
                if slot.link_reports.worth_logging(LOG_LINES) {
                    log::error!(
                        "guest {}: rings outside its new memory table ({e}); its link is down until it resets the device",
                        slot.name
                    );
                }
                self.slots[id].stats.protocol_errors += 1;
                self.link_down(id, "rings outside the new memory table");
                self.mark_broken(id, info.rings);
                return None;
            }
        }
        self.process(id, info.rings);
        self.next_avail(id)
    }

    /// Stops guest `id`'s link (its frontend stopped the rings, reset the device or went away):
    /// withdraws its names from the others and drops what waits for it. Returns where its rings
    /// stood.
    pub fn stop(&mut self, id: LinkId, reason: &str) -> Option<[u16; 2]> {
        let at = self.next_avail(id);
        self.link_down(id, reason);
        if let Some(slot) = self.slots.get_mut(id) {
            slot.broken = None;
        }
        at
    }

    /// Guest `id`'s memory vanished under the hub (its VMM shrank the file; the fault was
    /// survived in crate::guest_memory): its link goes down and stays down until it resets
    /// the device (DEVICE_NEEDS_RESET), as for a ring protocol error.
    /// Logged once per fault (a region faults once: it is zero memory from then on).
    pub fn break_memory_fault(&mut self, id: LinkId) {
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        log::error!(
            "{} {}: its memory vanished (the file behind it shrank); its link is down until it resets the device",
            slot.kind,
            slot.name
        );
        // The zeros read in its place may have broken the link already.
        let Some(rings) = slot.link.as_ref().map(|l| l.rings) else {
            return;
        };
        self.link_down(id, "guest memory vanished");
        self.mark_broken(id, rings);
    }

    fn next_avail(&self, id: LinkId) -> Option<[u16; 2]> {
        let link = self.slots.get(id)?.link.as_ref()?;
        link.engine.as_ref()?.transport().next_avail()
    }

    fn link_up(
        &mut self,
        id: LinkId,
        mem: &GuestRam,
        info: RingsInfo,
        notifier: &Arc<dyn Notifier>,
    ) -> Result<(), LinkError> {
        let env = LinkEnv::new(notifier.clone());
        let mut transport = DeviceTransport::resume(
            mem.clone(),
            env,
            info.rings,
            info.next_avail,
            Endian::Little,
            info.event_idx,
            MAX_BUFFER,
        )?;
        transport.want_rx_notifications(true)?;
        transport.want_tx_notifications(true)?;
        let config = Config {
            name_service: info.name_service,
            ..Config::default()
        };
        self.install(
            id,
            LinkTransport::Device(transport),
            config,
            mem,
            info.rings,
        );
        Ok(())
    }

    /// Attaches a link on which the hub is the driver: a remote's vdev (see remoteproc-vm),
    /// whose rings and buffers the caller laid out. Any previous link of `id` goes down first.
    pub fn attach(
        &mut self,
        id: LinkId,
        transport: DriverTransport<GuestRam, LinkEnv>,
        name_service: bool,
    ) {
        self.link_down(id, "re-attached");
        // A fresh device: whatever the previous one broke is forgotten.
        if let Some(slot) = self.slots.get_mut(id) {
            slot.broken = None;
        }
        let mem = transport.memory().clone();
        let rings = [transport.layout().rx_ring, transport.layout().tx_ring];
        let config = Config {
            name_service,
            ..Config::default()
        };
        self.install(
            id,
            LinkTransport::Driver(Box::new(transport)),
            config,
            &mem,
            rings,
        );
        self.process(id, rings);
    }

    /// Handles a notification on an attached link (the remote kicked): delivers what it sent
    /// and what waits for it.
    pub fn service_attached(&mut self, id: LinkId) {
        self.tick();
        let Some(rings) = self
            .slots
            .get(id)
            .and_then(|s| s.link.as_ref())
            .map(|l| l.rings)
        else {
            return;
        };
        self.process(id, rings);
    }

    fn install(
        &mut self,
        id: LinkId,
        transport: LinkTransport,
        config: Config,
        mem: &GuestRam,
        rings: [VringLayout; 2],
    ) {
        self.incarnations += 1;
        let slot = &mut self.slots[id];
        slot.stats.ups += 1;
        if slot.link_reports.worth_logging(LOG_LINES) {
            log::info!(
                "{} {}: link up (name service {}; {} link event(s))",
                slot.kind,
                slot.name,
                if config.name_service { "on" } else { "off" },
                slot.link_reports.count()
            );
        }
        let mut engine = Rpmsg::new(transport, config);
        let mut nat = Routes::default();
        // Host services this link may see.
        let name = slot.name.clone();
        for (index, spec) in self.topology.services_for(&name) {
            match engine.create_ept(spec.name.as_bytes(), ADDR_ANY, ADDR_ANY) {
                Ok(ept) => {
                    let addr = engine.endpoint(ept).map_or(ADDR_ANY, |e| e.addr());
                    nat.insert(addr, Target::Service(index));
                }
                // Its rings can refuse the announcement: rate-limited like the rest.
                Err(e) => {
                    if slot.error_reports.worth_logging(LOG_LINES) {
                        log::error!("{name}: cannot announce service {}: {e}", spec.name);
                    }
                }
            }
        }
        self.slots[id].link = Some(Link {
            engine: Some(engine),
            mem: mem.clone(),
            rings,
            incarnation: self.incarnations,
            nat,
            reverse: Proxies::default(),
            announced: Vec::new(),
            pending: PendingQueue::default(),
            stalled: false,
            more: false,
            bad_chains_seen: 0,
        });
        // Names the other links announced that this one may see.
        let offers: Vec<(LinkId, Vec<u8>, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(other, _)| other != id)
            .filter_map(|(other, s)| s.link.as_ref().map(|l| (other, s, l)))
            .flat_map(|(other, s, l)| {
                l.announced
                    .iter()
                    .filter(|(n, _)| self.topology.offers(&s.name, n, &name))
                    .map(move |(n, addr)| (other, n.clone(), *addr))
            })
            .collect();
        for (other, n, addr) in offers {
            offer(&mut self.slots, other, &n, addr, id);
        }
    }

    fn link_down(&mut self, id: LinkId, reason: &str) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let Some(mut link) = slot.link.take() else {
            return;
        };
        if slot.link_reports.worth_logging(LOG_LINES) {
            log::info!(
                "{} {}: link down ({reason}); withdrawing {} name(s)",
                slot.kind,
                slot.name,
                link.announced.len()
            );
        }
        // What it left in the others, found through their per-sender indexes: no scan of
        // their tables, so this costs time in proportion to the dead link's own state.
        for other in 0..self.slots.len() {
            let Some(l) = self.slots[other].link.as_mut() else {
                continue;
            };
            // Messages from the dead link hold buffers of rings that no longer exist.
            l.pending.forget_from(id);
            for (_, proxy) in l.reverse.take_from(id) {
                remove_proxy(&mut self.slots[other], proxy);
            }
        }
        // Messages that were waiting for the dead link: give the senders their buffers back.
        let pending = link.pending.take_all();
        let dropped = pending.len();
        for p in pending {
            if p.from != id {
                release_held(&mut self.slots, p.from, p.from_incarnation, p.held);
                self.slots[p.from].stats.dropped += 1;
            }
        }
        let slot = &mut self.slots[id];
        if dropped > 0 && slot.error_reports.worth_logging(LOG_LINES) {
            log::warn!(
                "guest {}: {dropped} message(s) for it were dropped: it went away before posting buffers",
                slot.name
            );
        }
    }

    fn process(&mut self, id: LinkId, rings: [VringLayout; 2]) {
        let Some(mut engine) = self.slots[id].link.as_mut().and_then(|l| l.engine.take()) else {
            return;
        };
        let mut router = Router {
            topology: &self.topology,
            max_queued_per_sender: self.max_queued_per_sender,
            slots: &mut self.slots,
            me: id,
            broken: Vec::new(),
            batched: std::mem::take(&mut self.batched),
        };
        let result = engine.poll_budget(&mut router, POLL_BUDGET);
        let broken = std::mem::take(&mut router.broken);
        let batched = std::mem::take(&mut router.batched);
        if let Some(link) = self.slots[id].link.as_mut() {
            link.engine = Some(engine);
        }
        // One notification decision per receiver for everything this poll copied into it.
        for &to in &batched {
            self.end_batch(to);
        }
        // Kept for the next poll: no allocation per kick.
        self.batched = batched;
        self.batched.clear();
        self.account_bad_chains();
        // Receivers whose rings turned out broken while messages were copied into them.
        for (to, e) in broken {
            self.break_link(to, &e);
        }
        match result {
            Ok(taken) => {
                let more = taken >= POLL_BUDGET;
                if let Some(link) = self.slots[id].link.as_mut() {
                    link.more = more;
                }
                self.slots[id].stats.budget_spent += u64::from(more);
                if more && let Some(n) = &self.slots[id].notifier {
                    // Without it, the next tick serves the rest.
                    n.0.resume();
                }
            }
            Err(RpmsgError::Link(e)) => {
                if self.slots[id]
                    .link
                    .as_ref()
                    .is_some_and(|l| l.rings == rings)
                {
                    self.break_link(id, &e);
                }
                return;
            }
            Err(e) => {
                // Not a ring error, but it can repeat at every kick: rate-limited.
                let slot = &mut self.slots[id];
                if slot.error_reports.worth_logging(LOG_LINES) {
                    log::warn!(
                        "{} {}: {e} ({} so far)",
                        slot.kind,
                        slot.name,
                        slot.error_reports.count()
                    );
                }
            }
        }
        self.drain(id);
        self.account_bad_chains();
    }

    /// Guest `id` broke the ring protocol: its link goes down, and stays down (its kicks
    /// ignored) until it sets up new rings, by a device reset or otherwise. Its notifier hears of it
    /// ([`Notifier::needs_reset`]): virtio's DEVICE_NEEDS_RESET.
    fn break_link(&mut self, id: LinkId, e: &LinkError) {
        let Some(rings) = self.slots[id].link.as_ref().map(|l| l.rings) else {
            return;
        };
        let slot = &mut self.slots[id];
        if slot.link_reports.worth_logging(LOG_LINES) {
            log::error!(
                "{} {}: broke the virtio ring protocol ({e}); its link is down until it resets the device",
                slot.kind,
                slot.name
            );
        }
        slot.stats.protocol_errors += 1;
        self.link_down(id, "ring protocol error");
        self.mark_broken(id, rings);
    }

    /// Closes the batch of sends into link `id` (see [`Rpmsg::begin_batch`]).
    fn end_batch(&mut self, id: LinkId) {
        let Some(engine) = self.slots[id].link.as_mut().and_then(|l| l.engine.as_mut()) else {
            return;
        };
        match engine.end_batch() {
            Ok(()) => {}
            Err(RpmsgError::Link(e @ LinkError::Vring(_))) => self.break_link(id, &e),
            Err(e) => {
                let slot = &mut self.slots[id];
                if slot.error_reports.worth_logging(LOG_LINES) {
                    log::warn!("{} {}: notifying it failed: {e}", slot.kind, slot.name);
                }
            }
        }
    }

    /// Marks guest `id`'s `rings` broken and tells its notifier (DEVICE_NEEDS_RESET).
    fn mark_broken(&mut self, id: LinkId, rings: [VringLayout; 2]) {
        let slot = &mut self.slots[id];
        slot.broken = Some(rings);
        if let Some(n) = &slot.notifier {
            n.0.needs_reset();
        }
    }

    /// Sends what waits for guest `id`, in order, while it has buffers.
    fn drain(&mut self, id: LinkId) {
        let Some(engine) = self.slots[id].link.as_mut().and_then(|l| l.engine.as_mut()) else {
            return;
        };
        engine.begin_batch();
        self.drain_batched(id);
        self.end_batch(id);
    }

    fn drain_batched(&mut self, id: LinkId) {
        loop {
            let Some(link) = self.slots[id].link.as_ref() else {
                return;
            };
            let Some(p) = link.pending.front() else {
                return;
            };
            let from_mem = if p.from == id {
                Some(link.mem.clone())
            } else {
                self.slots[p.from]
                    .link
                    .as_ref()
                    .filter(|l| l.incarnation == p.from_incarnation)
                    .map(|l| l.mem.clone())
            };
            let link = self.slots[id].link.as_mut().expect("checked above");
            let Some(from_mem) = from_mem else {
                // The sender went away; its buffer went with it.
                link.pending.pop_front();
                continue;
            };
            let Some(engine) = link.engine.as_mut() else {
                return;
            };
            let p = link.pending.front().expect("checked above");
            let sent = engine.send_copy_from(p.src, p.dst, &from_mem, &p.held.payload_ref(), false);
            if sent == Err(RpmsgError::NoBuffer) {
                return;
            }
            let p = link.pending.pop_front().expect("checked above");
            if let Err(e) = sent {
                let slot = &mut self.slots[id];
                if slot.error_reports.worth_logging(LOG_LINES) {
                    log::warn!(
                        "guest {}: a queued message could not be delivered: {e}",
                        slot.name
                    );
                }
                self.slots[p.from].stats.dropped += 1;
            }
            release_held(&mut self.slots, p.from, p.from_incarnation, p.held);
            if let Err(RpmsgError::Link(e @ LinkError::Vring(_))) = sent {
                self.break_link(id, &e);
                return;
            }
        }
    }
}

fn release_held(slots: &mut [Slot], from: LinkId, incarnation: u64, held: HeldRx) {
    let Some(link) = slots[from]
        .link
        .as_mut()
        .filter(|l| l.incarnation == incarnation)
    else {
        return;
    };
    if let Some(engine) = link.engine.as_mut()
        && let Err(e) = engine.release_rx(held)
    {
        let slot = &mut slots[from];
        if slot.error_reports.worth_logging(LOG_LINES) {
            log::warn!("guest {}: returning a held buffer failed: {e}", slot.name);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The route tables: proxies made, offered and removed. Each (receiver, sender, sender's
// address) has at most one proxy, whatever the order of sends and announcements.

/// Makes `from`'s name (announced at `addr`) visible in `to`'s link: announces the proxy of
/// (`from`, `addr`) there, the reply proxy it already has if it sent from that address.
fn offer(slots: &mut [Slot], from: LinkId, name: &[u8], addr: u32, to: LinkId) {
    let shown = String::from_utf8_lossy(name);
    let Some(link) = slots[to].link.as_mut() else {
        return;
    };
    let Some(engine) = link.engine.as_mut() else {
        return;
    };
    let offered = match link.reverse.get(from, addr) {
        Some(proxy) if proxy.offered => return,
        Some(proxy) => engine
            .endpoint_by_addr(proxy.addr)
            .ok_or(RpmsgError::InvalidEndpoint)
            .and_then(|ept| engine.announce_as(ept, name))
            .map(|()| proxy.addr),
        None if link.reverse.count_from(from) >= MAX_PROXIES_PER_SOURCE => {
            Err(RpmsgError::NoAddress)
        }
        None => engine
            .create_ept_announcing(name, ADDR_ANY, ADDR_ANY, true)
            .and_then(|ept| {
                engine
                    .endpoint(ept)
                    .map(|e| e.addr())
                    .ok_or(RpmsgError::InvalidEndpoint)
            }),
    };
    match offered {
        Ok(proxy) => {
            link.nat.insert(proxy, Target::Guest { link: from, addr });
            link.reverse.insert(
                from,
                addr,
                Proxy {
                    addr: proxy,
                    offered: true,
                },
            );
            log::debug!(
                "{} -> {}: {shown:?} at {addr:#x} offered as {proxy:#x}",
                slots[from].name,
                slots[to].name,
            );
        }
        Err(e) => {
            // The announcing guest can repeat this at line rate: rate-limited on its count.
            let to_name = slots[to].name.clone();
            let slot = &mut slots[from];
            if slot.error_reports.worth_logging(LOG_LINES) {
                log::warn!(
                    "guest {}: cannot offer {shown:?} to {to_name}: {e}",
                    slot.name
                );
            }
        }
    }
}

/// Removes `to`'s proxy for (`from`, `addr`), announcing its destruction if it was announced.
fn withdraw(slots: &mut [Slot], from: LinkId, addr: u32, to: LinkId) {
    let Some(proxy) = slots[to]
        .link
        .as_mut()
        .and_then(|l| l.reverse.remove(from, addr))
    else {
        return;
    };
    remove_proxy(&mut slots[to], proxy);
}

/// Removes `proxy`, already out of the slot's link's `reverse`, from its routes and engine.
fn remove_proxy(slot: &mut Slot, proxy: Proxy) {
    let Some(link) = slot.link.as_mut() else {
        return;
    };
    link.nat.remove(proxy.addr);
    if let Some(engine) = link.engine.as_mut()
        && let Some(ept) = engine.endpoint_by_addr(proxy.addr)
        && let Err(e) = engine.destroy_ept(ept)
        && slot.error_reports.worth_logging(LOG_LINES)
    {
        log::warn!("guest {}: withdrawing {:#x}: {e}", slot.name, proxy.addr);
    }
}

/// The handler of one guest's messages while its engine polls.
struct Router<'a> {
    topology: &'a Topology,
    /// [`Hub::set_max_queued_per_sender`].
    max_queued_per_sender: usize,
    slots: &'a mut Vec<Slot>,
    me: LinkId,
    /// Receivers found breaking the ring protocol while sending to them: their links go down
    /// once the poll is over.
    broken: Vec<(LinkId, LinkError)>,
    /// Other links this poll sent into, each in a batch that closes once the poll is over.
    batched: Vec<LinkId>,
}

impl Router<'_> {
    fn report_drop(&mut self, what: std::fmt::Arguments<'_>) {
        let slot = &mut self.slots[self.me];
        slot.stats.dropped += 1;
        // A guest can send garbage at line rate: report the first few, then every 1000th.
        if slot.drop_reports.worth_logging(LOG_LINES) {
            log::warn!(
                "guest {}: {what} (dropped, {} so far)",
                slot.name,
                slot.stats.dropped
            );
        }
    }

    /// The hub address in link `to` that stands for (`from`, `addr`), made on first use.
    fn reply_proxy(&mut self, to: LinkId, from: LinkId, addr: u32) -> Result<u32, &'static str> {
        let link = self.slots[to]
            .link
            .as_mut()
            .ok_or("the destination is not connected")?;
        if let Some(p) = link.reverse.get(from, addr) {
            return Ok(p.addr);
        }
        if link.reverse.count_from(from) >= MAX_PROXIES_PER_SOURCE {
            return Err("the sender uses too many source addresses towards it");
        }
        let engine = link
            .engine
            .as_mut()
            .ok_or("the destination is not connected")?;
        let ept = engine
            .create_ept(b"", ADDR_ANY, ADDR_ANY)
            .map_err(|_| "no address left in the destination's link")?;
        let proxy = engine
            .endpoint(ept)
            .ok_or("no address left in the destination's link")?
            .addr();
        link.nat.insert(proxy, Target::Guest { link: from, addr });
        link.reverse.insert(
            from,
            addr,
            Proxy {
                addr: proxy,
                offered: false,
            },
        );
        Ok(proxy)
    }

    /// Copies `msg` (in this guest's memory) into link `to` as src -> dst, or queues it.
    fn forward(
        &mut self,
        rpmsg: &mut LinkEngine,
        msg: &mut Received,
        to: LinkId,
        src: u32,
        dst: u32,
    ) -> bool {
        let me = self.me;
        let from_mem = rpmsg.transport().memory().clone();
        let incarnation = self.slots[me].link.as_ref().map_or(0, |l| l.incarnation);
        let payload = msg.payload_ref();
        let Some(link) = self.slots[to].link.as_mut() else {
            self.report_drop(format_args!("destination guest {} is gone", to));
            return false;
        };
        let sent = if !link.pending.is_empty() {
            Err(RpmsgError::NoBuffer)
        } else if to == me {
            rpmsg.send_copy_from(src, dst, &from_mem, &payload, false)
        } else {
            match link.engine.as_mut() {
                Some(engine) => {
                    if !self.batched.contains(&to) {
                        engine.begin_batch();
                        self.batched.push(to);
                    }
                    engine.send_copy_from(src, dst, &from_mem, &payload, false)
                }
                None => Err(RpmsgError::InvalidEndpoint),
            }
        };
        match sent {
            Ok(_) => {
                // It takes messages again.
                link.stalled = false;
                true
            }
            Err(RpmsgError::NoBuffer) if link.stalled => {
                let name = self.slots[to].name.clone();
                self.report_drop(format_args!(
                    "message for guest {name} not delivered: it takes no messages"
                ));
                false
            }
            Err(RpmsgError::NoBuffer)
                if link.pending.count_from(me) >= self.max_queued_per_sender =>
            {
                // Its share of the receiver's queue is full: dropped, so that its buffer
                // comes back and its traffic to the others keeps flowing.
                let (name, cap) = (self.slots[to].name.clone(), self.max_queued_per_sender);
                self.report_drop(format_args!(
                    "message for guest {name} not delivered: {cap} of its messages already wait for it"
                ));
                false
            }
            Err(RpmsgError::NoBuffer) => {
                let held = rpmsg.hold_rx(msg);
                link.pending.push_back(Pending {
                    from: me,
                    from_incarnation: incarnation,
                    held,
                    src,
                    dst,
                    since: Instant::now(),
                });
                self.slots[to].stats.queued += 1;
                true
            }
            Err(e) => {
                let name = self.slots[to].name.clone();
                self.report_drop(format_args!("message for guest {name} not delivered: {e}"));
                if let RpmsgError::Link(e @ LinkError::Vring(_)) = e {
                    // Its receive ring is broken (a ring error is always the receiver's):
                    // the link goes down instead of failing every message sent to it.
                    self.broken.push((to, e));
                }
                false
            }
        }
    }
}

impl Handler<LinkTransport> for Router<'_> {
    fn on_message(&mut self, rpmsg: &mut LinkEngine, msg: &mut Received) {
        let me = self.me;
        if msg.src == ADDR_ANY {
            // No reply could ever reach it, and the receiver's answers would be dropped
            // against the receiver's count: refuse it here, against the sender's.
            self.report_drop(format_args!(
                "message to {:#x} with source address ANY",
                msg.dst
            ));
            return;
        }
        let Some(target) = self.slots[me]
            .link
            .as_ref()
            .and_then(|l| l.nat.get(msg.dst))
        else {
            self.report_drop(format_args!(
                "message to {:#x}, which leads nowhere",
                msg.dst
            ));
            return;
        };
        match target {
            Target::Service(index) => match self.topology.services[index].kind {
                ServiceKind::Echo => {
                    if self.forward(rpmsg, msg, me, msg.dst, msg.src) {
                        self.slots[me].stats.served += 1;
                    }
                }
            },
            Target::Guest { link: to, addr } => {
                let src = match self.reply_proxy(to, me, msg.src) {
                    Ok(src) => src,
                    Err(why) => {
                        let name = self.slots[to].name.clone();
                        self.report_drop(format_args!(
                            "message from {:#x} for guest {name} not delivered: {why}",
                            msg.src
                        ));
                        return;
                    }
                };
                if self.forward(rpmsg, msg, to, src, addr) {
                    self.slots[me].stats.forwarded += 1;
                }
            }
        }
    }

    fn on_name_service(&mut self, _rpmsg: &mut LinkEngine, event: NsEvent<'_>) {
        let me = self.me;
        let my_name = self.slots[me].name.clone();
        match event {
            NsEvent::Created { name, addr, .. } => {
                // Names are the guest's bytes: logged escaped ({:?}), so a name cannot forge
                // log lines or drive a terminal.
                let shown = String::from_utf8_lossy(name);
                if name.is_empty() || addr == ADDR_ANY || addr == NS_ADDR {
                    // Nothing could be offered under it, or no message could reach it.
                    self.report_drop(format_args!(
                        "announcement of {shown:?} at {addr:#x} ignored: not a usable name and address"
                    ));
                    return;
                }
                let Some(link) = self.slots[me].link.as_mut() else {
                    return;
                };
                if !link.announced.iter().any(|(n, a)| n == name && *a == addr) {
                    if link.announced.len() >= MAX_NAMES_PER_LINK {
                        self.report_drop(format_args!(
                            "announces more than {MAX_NAMES_PER_LINK} names: {shown:?} at {addr:#x} ignored"
                        ));
                        return;
                    }
                    link.announced.push((name.to_vec(), addr));
                }
                let slot = &mut self.slots[me];
                if slot.ns_reports.worth_logging(NS_LOG_LINES) {
                    log::info!(
                        "guest {my_name}: announced {shown:?} at {addr:#x} ({} name-service event(s))",
                        slot.ns_reports.count()
                    );
                }
                for other in 0..self.slots.len() {
                    if other != me
                        && self
                            .topology
                            .offers(&my_name, name, &self.slots[other].name)
                    {
                        offer(self.slots, me, name, addr, other);
                    }
                }
            }
            NsEvent::Destroyed { name, addr, .. } => {
                let Some(link) = self.slots[me].link.as_mut() else {
                    return;
                };
                link.announced.retain(|(n, a)| !(n == name && *a == addr));
                let slot = &mut self.slots[me];
                if slot.ns_reports.worth_logging(NS_LOG_LINES) {
                    log::info!(
                        "guest {my_name}: withdrew {:?} at {addr:#x} ({} name-service event(s))",
                        String::from_utf8_lossy(name),
                        slot.ns_reports.count()
                    );
                }
                for other in 0..self.slots.len() {
                    if other != me {
                        withdraw(self.slots, me, addr, other);
                    }
                }
            }
        }
    }

    fn on_dropped(&mut self, why: Dropped) {
        self.report_drop(format_args!("{why:?}"));
    }
}
