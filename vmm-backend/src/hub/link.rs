//! The link adapter: how the hub drives one guest's rings. [`LinkTransport`] puts either role
//! (the hub as device for a vhost-user guest, as driver for a remote's vdev) behind one
//! [`Transport`]; [`LinkEnv`] sends the engine's interrupts to the guest's [`Notifier`];
//! [`Link`] is the state of a link that is up (its engine, memory, routes and inbox) and
//! [`Slot`] what the hub keeps per guest across links going up and down.

use super::forward::PendingQueue;
use super::routes::{Proxies, Routes};
use super::stats::{LinkStats, Reports};
use crate::guest_memory::GuestRam;
use std::sync::Arc;
use std::time::Instant;
use vamp_rpmsg::rpmsg::{HeldRx, Rpmsg};
use vamp_rpmsg::transport::{
    Buffer, DeviceTransport, DriverTransport, Environment, LinkError, RingFormat, Transport,
};
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::Endian;

/// Index of a guest in the topology (and of its link).
pub type LinkId = usize;

/// Largest message the hub puts in a guest's buffer (Linux's buffers are 512 bytes).
pub const MAX_BUFFER: u32 = 512;

/// Signals a guest that a queue has news (the vhost-user call eventfd).
pub trait Notifier: Send + Sync {
    /// Interrupts the guest for `queue`.
    fn notify(&self, queue: u16);

    /// The guest broke the ring protocol: its link is down until it resets the device (virtio's
    /// DEVICE_NEEDS_RESET). Called once per break, with the hub locked: only signal here. The
    /// default does nothing.
    fn needs_reset(&self) {}

    /// The hub left messages in the guest's transmit ring (its
    /// [`POLL_BUDGET`](super::POLL_BUDGET) ran out) and the guest will not kick for them: have
    /// [`Hub::service`](super::Hub::service) called again soon, as a kick would (signal the
    /// kick eventfd the guest's thread waits on). Called with the hub locked: only signal
    /// here. Returns whether it will; when not (the default), the hub's clock
    /// ([`Hub::tick`](super::Hub::tick)) serves the rest.
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

/// The rings of one link, in whichever role the hub plays on it. A guest's rings (the common
/// case, on every message's path) stay inline; a remote's transport, rarer, is boxed. One of
/// these per link, so the size difference costs nothing that matters.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
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

// The per-message calls are inlined into the engine: out of line, each moved its 80-byte
// buffer through one more `Result` layer.
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
    #[inline]
    fn take_tx(&mut self) -> Result<Option<Buffer>, LinkError> {
        each_role!(self, t => t.take_tx())
    }
    #[inline]
    fn send_tx(&mut self, buf: Buffer, len: u32) -> Result<(), LinkError> {
        each_role!(self, t => t.send_tx(buf, len))
    }
    fn release_tx(&mut self, buf: Buffer) {
        each_role!(self, t => t.release_tx(buf))
    }
    #[inline]
    fn take_rx(&mut self) -> Result<Option<Buffer>, LinkError> {
        each_role!(self, t => t.take_rx())
    }
    #[inline]
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
    /// The format its rings run in.
    pub(super) fn ring_format(&self) -> RingFormat {
        each_role!(self, t => t.ring_format())
    }

    /// Where a device-role link's rings stand (vhost-user's GET_VRING_BASE); `None` for a
    /// driver-role link, whose rings the hub owns.
    pub(super) fn next_avail(&self) -> Option<[u16; 2]> {
        match self {
            LinkTransport::Device(t) => Some(t.next_avail()),
            LinkTransport::Driver(_) => None,
        }
    }

    /// Where a stopping device-role link's rings resume ([`DeviceTransport::resume_point`]):
    /// `Err` with the chains still held when a packed ring cannot report an exact position.
    pub(super) fn resume_point(&mut self) -> Option<Result<[u16; 2], usize>> {
        match self {
            LinkTransport::Device(t) => Some(t.resume_point()),
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
    /// Where to resume reading each ring (for packed rings an `off_wrap` word: index, wrap
    /// counter in bit 15).
    pub next_avail: [u16; 2],
    /// Split or packed (VIRTIO_F_RING_PACKED was negotiated).
    pub format: RingFormat,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// VIRTIO_RPMSG_F_NS was negotiated.
    pub name_service: bool,
}

/// A link that is up: one guest's rings, the hub's engine on them, and the hub's tables for it.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) engine: LinkEngine,
    /// The guest's memory table, the one its engine reads (payloads forwarded from this link
    /// are copied out of it).
    pub(super) mem: GuestRam,
    pub(super) rings: [VringLayout; 2],
    /// Tells this link from an earlier one of the same guest (waiting messages name the link
    /// whose buffer they hold).
    pub(super) incarnation: u64,
    /// Where each hub address of this link leads.
    pub(super) nat: Routes,
    /// The way back: the hub address standing for each (sender, address). At most
    /// [`MAX_PROXIES_PER_SOURCE`](super::routes::MAX_PROXIES_PER_SOURCE) per sender: bounds
    /// what one guest can make the hub create in another guest's link by sending from ever
    /// new addresses.
    pub(super) reverse: Proxies,
    /// The names this guest announced, at its addresses.
    pub(super) announced: Vec<(Vec<u8>, u32)>,
    /// Messages for this guest waiting for its buffers.
    pub(super) pending: PendingQueue,
    /// The hub gave up on this link: a message waited for it longer than the pending timeout.
    /// Messages for it are not queued (dropped when it has no free buffer) until it takes one
    /// again.
    pub(super) stalled: bool,
    /// The last poll of this link ran out of its budget: messages may be left in its
    /// transmit ring, which its guest will not kick for.
    pub(super) more: bool,
    /// Malformed chains of its transport already counted.
    pub(super) bad_chains_seen: u64,
    /// The guest's kicks are suppressed: a poll thread spins on its rings (see `poll.rs`).
    pub(super) kicks_suppressed: bool,
}

/// A guest's [`Notifier`], kept by its slot.
#[derive(Clone)]
pub(super) struct SlotNotifier(pub(super) Arc<dyn Notifier>);

impl std::fmt::Debug for SlotNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotNotifier")
    }
}

/// What the hub keeps per guest: its link while up, and what outlives the link.
#[derive(Debug, Default)]
pub(super) struct Slot {
    /// "guest" or "remote", for log lines.
    pub(super) kind: &'static str,
    pub(super) name: String,
    pub(super) link: Option<Link>,
    /// Rings on which the guest broke the protocol: ignored until it sets up new ones.
    pub(super) broken: Option<[VringLayout; 2]>,
    /// Why it broke, while [`broken`](Self::broken) (the status shows it).
    pub(super) broken_why: &'static str,
    /// A remote's lifecycle, as its lifecycle thread last reported it.
    pub(super) remote: Option<super::stats::RemoteState>,
    /// Where the guest's interrupts go (set when its link comes up): told of a break.
    pub(super) notifier: Option<SlotNotifier>,
    pub(super) stats: LinkStats,
    /// Events taken from the guest's rings, over all its links (a poll thread tells work
    /// from an idle round by it).
    pub(super) taken: u64,
    /// Log reports of dropped messages, malformed chains, other link errors, name-service
    /// events, and of the link's ups, downs and breaks (a guest can reconnect at line rate).
    pub(super) drop_reports: Reports,
    pub(super) bad_reports: Reports,
    pub(super) error_reports: Reports,
    pub(super) ns_reports: Reports,
    pub(super) link_reports: Reports,
}

/// The links of `a` and `b` at once, for copying from one into the other: `b`'s is `None`
/// when `b` is `a` (a service answering on the sender's own link). `None` when `a` is down
/// or `b` (another guest) is.
pub(super) fn links_mut(
    slots: &mut [Slot],
    a: LinkId,
    b: LinkId,
) -> Option<(&mut Link, Option<&mut Link>)> {
    if a == b {
        return Some((slots.get_mut(a)?.link.as_mut()?, None));
    }
    let [sa, sb] = slots.get_disjoint_mut([a, b]).ok()?;
    Some((sa.link.as_mut()?, Some(sb.link.as_mut()?)))
}

/// Gives a held buffer back to its sender's link, if that link (the `incarnation` that lent
/// it) is still up; a link that went down took its buffers with it.
pub(super) fn release_held(slots: &mut [Slot], from: LinkId, incarnation: u64, held: HeldRx) {
    let slot = &mut slots[from];
    let Some(link) = slot.link.as_mut().filter(|l| l.incarnation == incarnation) else {
        return;
    };
    if let Err(e) = link.engine.release_rx(held)
        && slot.error_reports.worth_logging(Reports::FIRST)
    {
        log::warn!("guest {}: returning a held buffer failed: {e}", slot.name);
    }
}
