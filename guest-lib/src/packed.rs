//! Packed virtqueues (virtio 1.1 and later, section "Packed Virtqueues"; feature
//! [`VIRTIO_F_RING_PACKED`](crate::virtio::VIRTIO_F_RING_PACKED)) in both roles.
//!
//! One ring of descriptors carries buffers both ways: the driver marks a descriptor available
//! by setting its AVAIL flag to the driver's wrap counter and its USED flag to the inverse; the
//! device marks a buffer used by writing one descriptor, at its own used position, with both
//! flags equal to its wrap counter. Each side flips its wrap counter whenever its position
//! passes the end of the ring. Two small event-suppression structures (one written by each
//! side) say whether, and at which descriptor, the writer wants to be notified.
//!
//! - [`PackedDriverQueue`]: owns the buffers; posts chains under a buffer id and reclaims them
//!   when the device marks them used.
//! - [`PackedDeviceQueue`]: takes available chains and marks them used with the written length.
//!
//! As in [`crate::vring`], both keep their own copy of every position they depend on, and
//! everything the other side writes (flags, ids, lengths, addresses, event structures) is
//! untrusted: a bad value gives a [`VringError`], never a panic, an out-of-bounds access or an
//! endless loop. Errors and chains are those of the split ring ([`VringError`], [`PopError`],
//! [`Chain`], whose `head` is here the buffer id), so a transport can hold either kind.
//!
//! vamp never offers VIRTIO_F_INDIRECT_DESC: an indirect descriptor is refused
//! ([`VringError::Indirect`]) like in the split ring.
//!
//! Notifications: DISABLE is binding (unlike the split ring's flags, which EVENT_IDX turns into
//! hints), so busy-poll needs no re-arming; with EVENT_IDX, enabling names a descriptor (DESC
//! mode), re-armed as buffers are taken or reclaimed, as the split ring's event indices are.
//! Packed rings exist only in virtio 1.x, whose rings are little-endian; the queues still take
//! an [`Endian`] so that a transport passes one value for either format.

use crate::mem::{MemError, SharedMemory, full_barrier, read_barrier, write_barrier};
use crate::vring::{
    Area, Chain, MAX_SEGMENTS, PopError, Segment, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE, VringError, VringLayout,
};
use crate::wire::Endian;
use alloc::vec::Vec;

/// Descriptor flag: the driver's half of the availability mark.
pub const PACKED_DESC_F_AVAIL: u16 = 1 << 7;
/// Descriptor flag: the device's half of the availability mark (set equal to AVAIL when used).
pub const PACKED_DESC_F_USED: u16 = 1 << 15;
/// Event suppression flags: notify at every new buffer.
pub const RING_EVENT_FLAGS_ENABLE: u16 = 0;
/// Event suppression flags: never notify.
pub const RING_EVENT_FLAGS_DISABLE: u16 = 1;
/// Event suppression flags: notify when the descriptor named by the structure's offset and
/// wrap counter is reached (only with VIRTIO_RING_F_EVENT_IDX).
pub const RING_EVENT_FLAGS_DESC: u16 = 2;
/// Largest queue size of a packed ring (positions are 15 bits in the event structures).
pub const MAX_PACKED_QUEUE_SIZE: u16 = 32768;

const DESC_SIZE: u64 = 16;
/// Offsets within a descriptor.
const DESC_ADDR: u64 = 0;
const DESC_LEN: u64 = 8;
const DESC_ID: u64 = 12;
const DESC_FLAGS: u64 = 14;
/// Offsets within an event suppression structure.
const EVENT_OFF_WRAP: u64 = 0;
const EVENT_FLAGS: u64 = 2;
const EVENT_BYTES: u64 = 4;
/// The two bits of an event structure's flags word that carry the mode.
const EVENT_FLAGS_MASK: u16 = 3;
/// The wrap counter's bit in an event structure's `off_wrap` word.
const EVENT_WRAP_BIT: u16 = 1 << 15;

/// Where the three parts of one packed virtqueue live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedLayout {
    /// Number of descriptors (1 to 32768; unlike a split ring, not necessarily a power of two).
    pub size: u16,
    /// Descriptor ring address (16-byte aligned).
    pub desc: u64,
    /// Driver event suppression structure (written by the driver; 4-byte aligned).
    pub driver_event: u64,
    /// Device event suppression structure (written by the device; 4-byte aligned).
    pub device_event: u64,
}

impl PackedLayout {
    /// Checks a layout given part by part (as vhost-user and virtio-pci give it: descriptor
    /// area, driver area, device area).
    pub fn new(
        size: u16,
        desc: u64,
        driver_event: u64,
        device_event: u64,
    ) -> Result<Self, VringError> {
        if size == 0 || size > MAX_PACKED_QUEUE_SIZE {
            return Err(VringError::BadLayout(
                "packed queue size must be 1 to 32768",
            ));
        }
        if !desc.is_multiple_of(16)
            || !driver_event.is_multiple_of(4)
            || !device_event.is_multiple_of(4)
        {
            return Err(VringError::BadLayout("ring parts are misaligned"));
        }
        let layout = PackedLayout {
            size,
            desc,
            driver_event,
            device_event,
        };
        for (start, len) in layout.parts() {
            start
                .checked_add(len)
                .ok_or(VringError::BadLayout("ring part wraps the address space"))?;
        }
        Ok(layout)
    }

    /// The layout vamp uses in one block at `base` (16-byte aligned): the descriptor ring,
    /// then the driver event structure, then the device event structure.
    pub fn contiguous(base: u64, size: u16) -> Result<Self, VringError> {
        let wraps = VringError::BadLayout("ring wraps the address space");
        let driver_event = base.checked_add(DESC_SIZE * u64::from(size)).ok_or(wraps)?;
        let device_event = driver_event.checked_add(EVENT_BYTES).ok_or(wraps)?;
        Self::new(size, base, driver_event, device_event)
    }

    /// The packed ring in the three areas of a split ring's layout: virtio-pci and vhost-user
    /// give both formats the same three addresses (descriptor area, driver area, device area),
    /// and a split ring's areas are always large enough for the packed ones.
    pub fn in_areas_of(split: &VringLayout) -> Result<Self, VringError> {
        Self::new(split.size, split.desc, split.avail, split.used)
    }

    /// Bytes the [`contiguous`](Self::contiguous) layout of `size` descriptors occupies.
    pub fn contiguous_bytes(size: u16) -> u64 {
        DESC_SIZE * u64::from(size) + 2 * EVENT_BYTES
    }

    /// Bytes of the descriptor ring.
    pub fn desc_bytes(&self) -> u64 {
        DESC_SIZE * u64::from(self.size)
    }

    fn parts(&self) -> [(u64, u64); 3] {
        [
            (self.desc, self.desc_bytes()),
            (self.driver_event, EVENT_BYTES),
            (self.device_event, EVENT_BYTES),
        ]
    }

    /// Checks that the whole ring lies inside `mem`.
    pub fn check<M: SharedMemory + ?Sized>(&self, mem: &M) -> Result<(), VringError> {
        for (addr, len) in self.parts() {
            if mem.region(addr, len as usize).is_none() {
                return Err(VringError::Memory(MemError {
                    addr,
                    len: len as usize,
                }));
            }
        }
        Ok(())
    }

    fn desc_area<'m, M: SharedMemory + ?Sized>(
        &self,
        mem: &'m M,
        endian: Endian,
    ) -> Result<Area<'m>, MemError> {
        Area::get(mem, self.desc, self.desc_bytes(), 8, endian)
    }

    fn driver_event_area<'m, M: SharedMemory + ?Sized>(
        &self,
        mem: &'m M,
        endian: Endian,
    ) -> Result<Area<'m>, MemError> {
        Area::get(mem, self.driver_event, EVENT_BYTES, 2, endian)
    }

    fn device_event_area<'m, M: SharedMemory + ?Sized>(
        &self,
        mem: &'m M,
        endian: Endian,
    ) -> Result<Area<'m>, MemError> {
        Area::get(mem, self.device_event, EVENT_BYTES, 2, endian)
    }
}

/// A place in the ring: a descriptor index and the wrap counter that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    idx: u16,
    wrap: bool,
}

impl Position {
    /// Where both sides start: descriptor 0, wrap counter 1.
    const START: Position = Position { idx: 0, wrap: true };

    /// `n` descriptors further (`n` at most the ring size), flipping the wrap counter when
    /// passing the end of the ring.
    fn advance(self, n: u16, size: u16) -> Position {
        let next = u32::from(self.idx) + u32::from(n);
        if next >= u32::from(size) {
            Position {
                idx: (next - u32::from(size)) as u16,
                wrap: !self.wrap,
            }
        } else {
            Position {
                idx: next as u16,
                wrap: self.wrap,
            }
        }
    }

    /// The position as an event structure's `off_wrap` word (and vhost-user's ring base).
    fn off_wrap(self) -> u16 {
        self.idx | if self.wrap { EVENT_WRAP_BIT } else { 0 }
    }

    fn from_off_wrap(v: u16) -> Position {
        Position {
            idx: v & !EVENT_WRAP_BIT,
            wrap: v & EVENT_WRAP_BIT != 0,
        }
    }

    /// The position on the cycle of two laps (`0..2 * size`), where wrap counter 1 is the
    /// first lap: two positions' distance there is exact for any distance below two laps.
    fn on_cycle(self, size: u16) -> u32 {
        let lap = if self.wrap { 0 } else { u32::from(size) };
        (u32::from(self.idx) + lap) % (2 * u32::from(size))
    }

    fn desc_off(self) -> u64 {
        DESC_SIZE * u64::from(self.idx)
    }
}

/// What the flags of the descriptor at a side's position say, for a reader whose wrap counter
/// is `wrap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Made available in the reader's lap, not yet used (AVAIL = wrap, USED = !wrap).
    Available,
    /// Used in the reader's lap (AVAIL = USED = wrap).
    Used,
    /// Anything else: left over from the previous lap.
    Stale,
}

fn mark(flags: u16, wrap: bool) -> Mark {
    let avail = flags & PACKED_DESC_F_AVAIL != 0;
    let used = flags & PACKED_DESC_F_USED != 0;
    match (avail == wrap, used == wrap) {
        (true, false) => Mark::Available,
        (true, true) => Mark::Used,
        _ => Mark::Stale,
    }
}

/// The AVAIL/USED bits with which a driver in lap `wrap` marks a descriptor available.
fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        PACKED_DESC_F_AVAIL
    } else {
        PACKED_DESC_F_USED
    }
}

/// The AVAIL/USED bits with which a device in lap `wrap` marks a descriptor used.
fn used_bits(wrap: bool) -> u16 {
    if wrap {
        PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED
    } else {
        0
    }
}

/// Whether the peer, whose event suppression structure is `event`, wants to hear that our
/// position moved `moved` descriptors from `old` (to where we are now). With DESC mode (and
/// EVENT_IDX negotiated): whether the descriptor it names was among them; DISABLE: no; ENABLE,
/// or a mode a peer should not write: yes (a notification too many is harmless, one too few
/// stalls the peer). Nothing moved: no.
fn peer_wants_notice(
    event: &Area<'_>,
    event_idx: bool,
    old: Position,
    moved: u32,
    size: u16,
) -> Result<bool, MemError> {
    if moved == 0 {
        return Ok(false);
    }
    // Our descriptor stores must be visible before we read the peer's suppression state, or
    // both sides could decide that the other needs no notification.
    full_barrier();
    match event.u16(EVENT_FLAGS)? & EVENT_FLAGS_MASK {
        RING_EVENT_FLAGS_DISABLE => Ok(false),
        RING_EVENT_FLAGS_DESC if event_idx => {
            let cycle = 2 * u32::from(size);
            if moved >= cycle {
                // Every position of both laps was passed, the named one too.
                return Ok(true);
            }
            let target = Position::from_off_wrap(event.u16(EVENT_OFF_WRAP)?).on_cycle(size);
            let ahead = (target + cycle - old.on_cycle(size)) % cycle;
            Ok(ahead < moved)
        }
        _ => Ok(true),
    }
}

/// Writes our event suppression structure: DESC at `at` with EVENT_IDX, else ENABLE.
fn enable_events(event: &Area<'_>, event_idx: bool, at: Position) -> Result<(), MemError> {
    if event_idx {
        // The position first: a peer that sees DESC must find the position it goes with.
        event.set_u16(EVENT_OFF_WRAP, at.off_wrap())?;
        event.set_u16(EVENT_FLAGS, RING_EVENT_FLAGS_DESC)
    } else {
        event.set_u16(EVENT_FLAGS, RING_EVENT_FLAGS_ENABLE)
    }
}

/// The driver side of one packed queue: posts buffer chains under ids, reclaims used ones.
///
/// Each buffer carries a caller's `token` (a buffer number) that comes back when the buffer
/// is used.
#[derive(Debug)]
pub struct PackedDriverQueue {
    layout: PackedLayout,
    endian: Endian,
    event_idx: bool,
    /// Buffer ids not in flight.
    free_ids: Vec<u16>,
    /// Per buffer id: the caller's token while in flight, and how many descriptors it took.
    in_flight: Vec<Option<(u32, u16)>>,
    num_in_flight: u16,
    /// Descriptors not in flight.
    free_descs: u16,
    /// Where the next chain goes.
    avail: Position,
    /// Where the next used descriptor will appear.
    used: Position,
    /// Available position at the last kick decision, and descriptors made available since.
    kicked: Position,
    added_since_kick: u32,
    interrupts: bool,
    /// Busy-poll: interrupts stay disabled.
    suppressed: bool,
}

impl PackedDriverQueue {
    /// Sets up the queue: zeroes the ring and both event structures in `mem`, and asks for
    /// interrupts (at the first used descriptor with EVENT_IDX).
    pub fn new<M: SharedMemory + ?Sized>(
        mem: &M,
        layout: PackedLayout,
        endian: Endian,
        event_idx: bool,
    ) -> Result<Self, VringError> {
        layout.check(mem)?;
        for (addr, len) in layout.parts() {
            mem.fill(addr, len as usize, 0)?;
        }
        enable_events(
            &layout.driver_event_area(mem, endian)?,
            event_idx,
            Position::START,
        )?;
        Ok(PackedDriverQueue {
            layout,
            endian,
            event_idx,
            free_ids: (0..layout.size).rev().collect(),
            in_flight: alloc::vec![None; usize::from(layout.size)],
            num_in_flight: 0,
            free_descs: layout.size,
            avail: Position::START,
            used: Position::START,
            kicked: Position::START,
            added_since_kick: 0,
            interrupts: true,
            suppressed: false,
        })
    }

    /// The ring's layout.
    pub fn layout(&self) -> &PackedLayout {
        &self.layout
    }

    /// Buffers posted and not yet returned.
    pub fn in_flight(&self) -> u16 {
        self.num_in_flight
    }

    /// Free descriptors.
    pub fn free_count(&self) -> usize {
        usize::from(self.free_descs)
    }

    /// Posts one buffer of one descriptor.
    pub fn add<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        addr: u64,
        len: u32,
        device_writable: bool,
        token: u32,
    ) -> Result<(), VringError> {
        self.add_chain(mem, &[Segment { addr, len }], device_writable, token)
    }

    /// Posts one buffer of `segments` (all of one direction) as a chain of descriptors, and
    /// makes it available: every descriptor but the first is written and marked first, the
    /// first one's flags last, so the device never sees part of a chain.
    pub fn add_chain<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        segments: &[Segment],
        device_writable: bool,
        token: u32,
    ) -> Result<(), VringError> {
        if segments.is_empty() {
            return Err(VringError::EmptyBuffer);
        }
        let n = u16::try_from(segments.len()).map_err(|_| VringError::Full)?;
        if n > self.free_descs {
            return Err(VringError::Full);
        }
        let id = *self.free_ids.last().ok_or(VringError::Full)?;
        let desc = self.layout.desc_area(mem, self.endian)?;
        let direction = if device_writable {
            VRING_DESC_F_WRITE
        } else {
            0
        };
        let head = self.avail;
        let mut head_flags = 0;
        let mut pos = head;
        for (k, seg) in segments.iter().enumerate() {
            let next = if k + 1 < segments.len() {
                VRING_DESC_F_NEXT
            } else {
                0
            };
            let flags = direction | next | avail_bits(pos.wrap);
            let at = pos.desc_off();
            desc.set_u64(at + DESC_ADDR, seg.addr)?;
            desc.set_u32(at + DESC_LEN, seg.len)?;
            // The device reads the id from the last descriptor; every one carries it.
            desc.set_u16(at + DESC_ID, id)?;
            if k == 0 {
                head_flags = flags;
            } else {
                desc.set_u16(at + DESC_FLAGS, flags)?;
            }
            pos = pos.advance(1, self.layout.size);
        }
        // The whole chain must be visible before the flags that make its head available.
        write_barrier();
        desc.set_u16(head.desc_off() + DESC_FLAGS, head_flags)?;
        self.free_ids.pop();
        self.in_flight[usize::from(id)] = Some((token, n));
        self.num_in_flight += 1;
        self.free_descs -= n;
        self.avail = pos;
        self.added_since_kick += u32::from(n);
        Ok(())
    }

    /// Whether the device must be kicked for what was added since the last call.
    pub fn should_kick<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, VringError> {
        let old = core::mem::replace(&mut self.kicked, self.avail);
        let moved = core::mem::take(&mut self.added_since_kick);
        // The device's suppression state is its event structure.
        let event = self.layout.device_event_area(mem, self.endian)?;
        Ok(peer_wants_notice(
            &event,
            self.event_idx,
            old,
            moved,
            self.layout.size,
        )?)
    }

    /// Takes one used buffer: its token and the length the device reports (the length of a
    /// used descriptor without WRITE is reserved by the spec; it is reported as written, as
    /// Linux does, and vamp's device puts the buffer's readable length there).
    pub fn pop_used<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<(u32, u32)>, VringError> {
        if self.num_in_flight == 0 {
            // Nothing can be used; whatever the device wrote is not ours to read.
            return Ok(None);
        }
        let desc = self.layout.desc_area(mem, self.endian)?;
        let at = self.used.desc_off();
        if mark(desc.u16(at + DESC_FLAGS)?, self.used.wrap) != Mark::Used {
            return Ok(None);
        }
        // Read the descriptor only after seeing the flags that publish it.
        read_barrier();
        let id = desc.u16(at + DESC_ID)?;
        let len = desc.u32(at + DESC_LEN)?;
        let Some((token, count)) = self.in_flight.get(usize::from(id)).copied().flatten() else {
            return Err(VringError::BadUsedId(u32::from(id)));
        };
        self.in_flight[usize::from(id)] = None;
        self.free_ids.push(id);
        self.num_in_flight -= 1;
        self.free_descs += count;
        // The device skips the whole chain it used, wherever that chain was posted.
        self.used = self.used.advance(count, self.layout.size);
        if self.event_idx && self.interrupts && !self.suppressed {
            // Ask for an interrupt at the next used descriptor.
            let event = self.layout.driver_event_area(mem, self.endian)?;
            event.set_u16(EVENT_OFF_WRAP, self.used.off_wrap())?;
        }
        Ok(Some((token, len)))
    }

    /// Whether used buffers are waiting.
    pub fn has_used<M: SharedMemory + ?Sized>(&self, mem: &M) -> Result<bool, VringError> {
        if self.num_in_flight == 0 {
            return Ok(false);
        }
        let desc = self.layout.desc_area(mem, self.endian)?;
        let flags = desc.u16(self.used.desc_off() + DESC_FLAGS)?;
        Ok(mark(flags, self.used.wrap) == Mark::Used)
    }

    /// Asks the device to interrupt us when it uses a buffer (DESC at our used position with
    /// EVENT_IDX, ENABLE without). Returns whether used buffers are already waiting (then the
    /// caller should process them instead of sleeping).
    pub fn enable_interrupts<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, VringError> {
        self.interrupts = true;
        self.suppressed = false;
        let event = self.layout.driver_event_area(mem, self.endian)?;
        enable_events(&event, self.event_idx, self.used)?;
        full_barrier();
        self.has_used(mem)
    }

    /// Asks the device not to interrupt us (DISABLE: unlike the split ring's flag, binding
    /// with EVENT_IDX too).
    pub fn disable_interrupts<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<(), VringError> {
        self.interrupts = false;
        let event = self.layout.driver_event_area(mem, self.endian)?;
        event.set_u16(EVENT_FLAGS, RING_EVENT_FLAGS_DISABLE)?;
        Ok(())
    }

    /// Busy-poll (`on`): asks the device never to interrupt us. DISABLE holds by itself, so
    /// nothing needs re-arming as buffers come back.
    /// [`enable_interrupts`](Self::enable_interrupts) ends it; `off` leaves interrupts
    /// disabled, as the split ring's does.
    pub fn set_interrupt_suppression<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        on: bool,
    ) -> Result<(), VringError> {
        self.suppressed = on;
        if on {
            self.disable_interrupts(mem)?;
        }
        Ok(())
    }

    /// Whether interrupts are suppressed for busy-polling.
    pub fn interrupts_suppressed(&self) -> bool {
        self.suppressed
    }
}

/// The device side of one packed queue: takes available chains, marks them used.
#[derive(Debug)]
pub struct PackedDeviceQueue {
    layout: PackedLayout,
    endian: Endian,
    event_idx: bool,
    /// Where the next available chain starts.
    avail: Position,
    /// Where the next used descriptor goes.
    used: Position,
    /// Used position at the last interrupt decision, and descriptors used since.
    signalled: Position,
    used_since_signal: u32,
    /// Per buffer id at the device: how many descriptors its chain took (0: not here) and
    /// whether it is device-writable.
    taken: Vec<(u16, bool)>,
    kicks: bool,
    /// Busy-poll: kicks stay disabled.
    suppressed: bool,
}

impl PackedDeviceQueue {
    /// Attaches to a ring the driver set up. `start` is where both the available and the used
    /// position resume, as an `off_wrap` word (descriptor index, wrap counter in bit 15;
    /// vhost-user's ring base for packed rings): [`START`](Self::START) for a fresh ring.
    pub fn new<M: SharedMemory + ?Sized>(
        mem: &M,
        layout: PackedLayout,
        endian: Endian,
        event_idx: bool,
        start: u16,
    ) -> Result<Self, VringError> {
        layout.check(mem)?;
        let start = Position::from_off_wrap(start);
        if start.idx >= layout.size {
            return Err(VringError::BadLayout("resume position outside the ring"));
        }
        Ok(PackedDeviceQueue {
            layout,
            endian,
            event_idx,
            avail: start,
            used: start,
            signalled: start,
            used_since_signal: 0,
            taken: alloc::vec![(0, false); usize::from(layout.size)],
            kicks: true,
            suppressed: false,
        })
    }

    /// The start of a fresh ring as [`new`](Self::new) takes it: descriptor 0, wrap counter 1.
    pub const START: u16 = EVENT_WRAP_BIT;

    /// The ring's layout.
    pub fn layout(&self) -> &PackedLayout {
        &self.layout
    }

    /// Where the next available chain starts, as an `off_wrap` word (what [`new`](Self::new)
    /// takes to resume there).
    pub fn next_avail(&self) -> u16 {
        self.avail.off_wrap()
    }

    /// Chains taken and not yet marked used. A resume point ([`next_avail`](Self::next_avail))
    /// is exact only when this is 0: [`new`](Self::new) resumes the used position at the same
    /// place as the available one.
    pub fn outstanding(&self) -> usize {
        self.taken.iter().filter(|&&(n, _)| n != 0).count()
    }

    /// Whether the driver has made a chain available that we have not taken. A descriptor
    /// marked used in our lap where nothing was used yet is a lie about the wrap counter.
    pub fn has_avail<M: SharedMemory + ?Sized>(&self, mem: &M) -> Result<bool, VringError> {
        let desc = self.layout.desc_area(mem, self.endian)?;
        match mark(
            desc.u16(self.avail.desc_off() + DESC_FLAGS)?,
            self.avail.wrap,
        ) {
            Mark::Available => Ok(true),
            Mark::Stale => Ok(false),
            Mark::Used => Err(VringError::WrapCounter),
        }
    }

    /// Takes the next available chain, if any.
    ///
    /// The walk follows NEXT for at most the ring's size in descriptors. A chain whose end is
    /// found (and whose id is in range and not already here) is consumed even if it is
    /// malformed: the error then carries its id in [`PopError::head`] so the caller returns it
    /// used with length 0 and the ring keeps moving. A chain whose end cannot be found, or
    /// whose id cannot be returned, is a fatal error (`head: None`) and consumes nothing.
    pub fn pop<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<Option<Chain>, PopError> {
        let desc = self
            .layout
            .desc_area(mem, self.endian)
            .map_err(PopError::fatal)?;
        let head_flags = desc
            .u16(self.avail.desc_off() + DESC_FLAGS)
            .map_err(PopError::fatal)?;
        match mark(head_flags, self.avail.wrap) {
            Mark::Available => {}
            Mark::Stale => return Ok(None),
            // Nothing at or after our available position has been used in this lap: only a
            // driver lying about its wrap counter writes that.
            Mark::Used => return Err(PopError::fatal(VringError::WrapCounter)),
        }
        // Read the chain only after the head's flags that published it.
        read_barrier();
        let size = self.layout.size;
        let mut chain = Chain {
            head: 0,
            segments: [Segment::default(); MAX_SEGMENTS],
            count: 0,
            writable: head_flags & VRING_DESC_F_WRITE != 0,
        };
        let mut malformed = None;
        let mut pos = self.avail;
        let mut flags = head_flags;
        let mut walked: u16 = 0;
        let id = loop {
            if walked == size {
                // NEXT all around the ring: no end to find.
                return Err(PopError::fatal(VringError::ChainTooLong));
            }
            if walked > 0 {
                flags = desc
                    .u16(pos.desc_off() + DESC_FLAGS)
                    .map_err(PopError::fatal)?;
                if mark(flags, pos.wrap) != Mark::Available {
                    // The driver publishes a chain's head last: a tail that is not available
                    // is a lie about the wrap counter.
                    return Err(PopError::fatal(VringError::WrapCounter));
                }
            }
            walked += 1;
            let at = pos.desc_off();
            pos = pos.advance(1, size);
            if malformed.is_none()
                && let Err(e) = Self::check_segment(mem, &desc, at, flags, &mut chain)
            {
                malformed = Some(e);
            }
            if flags & VRING_DESC_F_NEXT == 0 {
                break desc.u16(at + DESC_ID).map_err(PopError::fatal)?;
            }
        };
        match self.taken.get(usize::from(id)) {
            None => return Err(PopError::fatal(VringError::BadDescriptorIndex(id))),
            Some(&(n, _)) if n != 0 => return Err(PopError::fatal(VringError::IdInUse(id))),
            Some(_) => {}
        }
        self.taken[usize::from(id)] = (walked, chain.writable);
        self.avail = pos;
        if self.event_idx && self.kicks && !self.suppressed {
            // Ask to be kicked for the chain after this one.
            self.layout
                .device_event_area(mem, self.endian)
                .and_then(|event| event.set_u16(EVENT_OFF_WRAP, self.avail.off_wrap()))
                .map_err(PopError::fatal)?;
        }
        chain.head = id;
        match malformed {
            Some(error) => Err(PopError {
                head: Some(id),
                error,
            }),
            None => Ok(Some(chain)),
        }
    }

    /// Checks the descriptor at `at` (whose flags are `flags`) and appends it to `chain`.
    fn check_segment<M: SharedMemory + ?Sized>(
        mem: &M,
        desc: &Area<'_>,
        at: u64,
        flags: u16,
        chain: &mut Chain,
    ) -> Result<(), VringError> {
        if flags & VRING_DESC_F_INDIRECT != 0 {
            return Err(VringError::Indirect);
        }
        if usize::from(chain.count) == MAX_SEGMENTS {
            return Err(VringError::ChainTooLong);
        }
        if (flags & VRING_DESC_F_WRITE != 0) != chain.writable {
            return Err(VringError::WrongDirection);
        }
        let addr = desc.u64(at + DESC_ADDR)?;
        let len = desc.u32(at + DESC_LEN)?;
        if len == 0 {
            return Err(VringError::EmptyBuffer);
        }
        if mem.region(addr, len as usize).is_none() {
            return Err(VringError::Memory(MemError {
                addr,
                len: len as usize,
            }));
        }
        chain.segments[usize::from(chain.count)] = Segment { addr, len };
        chain.count += 1;
        Ok(())
    }

    /// Marks the buffer `id` used with `len` bytes written into it: one descriptor at our used
    /// position (id and length first, the flags that publish it last), then skips the
    /// descriptors its chain took.
    pub fn push_used<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        id: u16,
        len: u32,
    ) -> Result<(), VringError> {
        let (count, writable) = match self.taken.get(usize::from(id)) {
            Some(&(n, w)) if n != 0 => (n, w),
            _ => return Err(VringError::BadUsedId(u32::from(id))),
        };
        let desc = self.layout.desc_area(mem, self.endian)?;
        let at = self.used.desc_off();
        desc.set_u16(at + DESC_ID, id)?;
        desc.set_u32(at + DESC_LEN, len)?;
        let direction = if writable { VRING_DESC_F_WRITE } else { 0 };
        // The descriptor (and the data written into the buffer) before the flags.
        write_barrier();
        desc.set_u16(at + DESC_FLAGS, direction | used_bits(self.used.wrap))?;
        self.taken[usize::from(id)] = (0, false);
        self.used = self.used.advance(count, self.layout.size);
        self.used_since_signal += u32::from(count);
        Ok(())
    }

    /// Whether the driver wants an interrupt for what was used since the last call.
    pub fn should_notify<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, VringError> {
        let old = core::mem::replace(&mut self.signalled, self.used);
        let moved = core::mem::take(&mut self.used_since_signal);
        // The driver's suppression state is its event structure.
        let event = self.layout.driver_event_area(mem, self.endian)?;
        Ok(peer_wants_notice(
            &event,
            self.event_idx,
            old,
            moved,
            self.layout.size,
        )?)
    }

    /// Asks the driver to kick us when it makes buffers available (DESC at our available
    /// position with EVENT_IDX, ENABLE without). Returns whether some are already there (then
    /// process them instead of sleeping).
    pub fn enable_kicks<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, VringError> {
        self.kicks = true;
        self.suppressed = false;
        let event = self.layout.device_event_area(mem, self.endian)?;
        enable_events(&event, self.event_idx, self.avail)?;
        full_barrier();
        self.has_avail(mem)
    }

    /// Asks the driver not to kick us (DISABLE).
    pub fn disable_kicks<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<(), VringError> {
        self.kicks = false;
        let event = self.layout.device_event_area(mem, self.endian)?;
        event.set_u16(EVENT_FLAGS, RING_EVENT_FLAGS_DISABLE)?;
        Ok(())
    }

    /// Busy-poll (`on`): asks the driver never to kick us. [`enable_kicks`](Self::enable_kicks)
    /// ends it; `off` leaves kicks disabled.
    pub fn set_kick_suppression<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        on: bool,
    ) -> Result<(), VringError> {
        self.suppressed = on;
        if on {
            self.disable_kicks(mem)?;
        }
        Ok(())
    }

    /// Whether kicks are suppressed for busy-polling.
    pub fn kicks_suppressed(&self) -> bool {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::mem::HeapMemory;
    use alloc::collections::{BTreeMap, BTreeSet};
    use proptest::prelude::*;

    const RING: u64 = 0x1000;
    const BUFS: u64 = 0x8000;

    fn pair(size: u16, event_idx: bool) -> (HeapMemory, PackedDriverQueue, PackedDeviceQueue) {
        let mem = HeapMemory::new(0x10000, 0);
        let layout = PackedLayout::contiguous(RING, size).unwrap();
        let d = PackedDriverQueue::new(&mem, layout, Endian::Little, event_idx).unwrap();
        let v = PackedDeviceQueue::new(
            &mem,
            layout,
            Endian::Little,
            event_idx,
            PackedDeviceQueue::START,
        )
        .unwrap();
        (mem, d, v)
    }

    fn seg(addr: u64, len: u32) -> Segment {
        Segment { addr, len }
    }

    #[test]
    fn layouts_are_checked() {
        let l = PackedLayout::contiguous(0x2000, 3).unwrap();
        assert_eq!(
            (l.desc, l.driver_event, l.device_event),
            (0x2000, 0x2030, 0x2034)
        );
        assert_eq!(PackedLayout::contiguous_bytes(3), 56);
        assert!(PackedLayout::contiguous(0x2000, 0).is_err());
        assert!(PackedLayout::contiguous(0x2000, 32769).is_err());
        assert!(PackedLayout::contiguous(0x2000, 32768).is_ok());
        assert!(
            PackedLayout::contiguous(0x2008, 4).is_err(),
            "descriptors misaligned"
        );
        assert!(PackedLayout::new(4, 0, 2, 8).is_err(), "event misaligned");
        assert!(PackedLayout::contiguous(u64::MAX - 15, 4).is_err());
        let mem = HeapMemory::new(0x1000, 0);
        let outside = PackedLayout::contiguous(0xff0, 1).unwrap();
        assert!(outside.check(&mem).is_err());
        assert!(PackedDriverQueue::new(&mem, outside, Endian::Little, false).is_err());
        let inside = PackedLayout::contiguous(0x100, 4).unwrap();
        assert!(PackedDeviceQueue::new(&mem, inside, Endian::Little, false, 4).is_err());
        assert!(PackedDeviceQueue::new(&mem, inside, Endian::Little, false, 3).is_ok());
        let split = VringLayout::legacy(0x4000, 256, 0x1000).unwrap();
        let packed = PackedLayout::in_areas_of(&split).unwrap();
        assert_eq!(
            (packed.desc, packed.driver_event, packed.device_event),
            (split.desc, split.avail, split.used)
        );
    }

    #[test]
    fn buffers_travel_both_ways() {
        for event_idx in [false, true] {
            let (mem, mut d, mut v) = pair(4, event_idx);
            d.add(&mem, BUFS, 64, true, 7).unwrap();
            d.add(&mem, BUFS + 0x40, 64, false, 8).unwrap();
            assert!(d.should_kick(&mem).unwrap());
            let a = v.pop(&mem).unwrap().unwrap();
            assert_eq!(a.segments(), &[seg(BUFS, 64)]);
            assert!(a.writable);
            let b = v.pop(&mem).unwrap().unwrap();
            assert!(!b.writable);
            assert_ne!(a.head, b.head);
            assert_eq!(v.pop(&mem).unwrap(), None);
            assert!(!d.has_used(&mem).unwrap());
            // Out of order: the second buffer comes back first.
            v.push_used(&mem, b.head, 0).unwrap();
            v.push_used(&mem, a.head, 20).unwrap();
            assert!(v.should_notify(&mem).unwrap());
            assert!(d.has_used(&mem).unwrap());
            assert_eq!(d.pop_used(&mem).unwrap(), Some((8, 0)));
            assert_eq!(d.pop_used(&mem).unwrap(), Some((7, 20)));
            assert_eq!(d.pop_used(&mem).unwrap(), None);
            assert_eq!((d.free_count(), d.in_flight()), (4, 0));
            // Returning an id twice is refused.
            assert_eq!(
                v.push_used(&mem, a.head, 0),
                Err(VringError::BadUsedId(a.head.into()))
            );
        }
    }

    #[test]
    fn used_descriptors_carry_the_write_flag_of_their_chain() {
        let (mem, mut d, mut v) = pair(2, false);
        d.add(&mem, BUFS, 64, true, 0).unwrap();
        d.add(&mem, BUFS + 0x40, 64, false, 1).unwrap();
        let (a, b) = (v.pop(&mem).unwrap().unwrap(), v.pop(&mem).unwrap().unwrap());
        v.push_used(&mem, a.head, 10).unwrap();
        v.push_used(&mem, b.head, 64).unwrap();
        let flags = |i: u64| mem.load_u16(RING + 16 * i + DESC_FLAGS).unwrap();
        let marks = PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED;
        assert_eq!(flags(0), marks | VRING_DESC_F_WRITE);
        assert_eq!(flags(1), marks);
    }

    #[test]
    fn chains_are_skipped_by_their_length_across_many_wraps() {
        // A ring of 5 (not a power of two), chains of 1 to 3 descriptors returned in reverse
        // order, for hundreds of laps.
        let (mem, mut d, mut v) = pair(5, true);
        let mut token = 0u32;
        for round in 0..400u32 {
            let mut posted = Vec::new();
            loop {
                let n = 1 + (token + round) % 3;
                let segs: Vec<Segment> = (0..n)
                    .map(|k| {
                        seg(
                            BUFS + 0x100 * u64::from(token % 16) + 0x10 * u64::from(k),
                            8,
                        )
                    })
                    .collect();
                match d.add_chain(&mem, &segs, true, token) {
                    Ok(()) => posted.push((token, n)),
                    Err(VringError::Full) => break,
                    Err(e) => panic!("{e}"),
                }
                token += 1;
            }
            let mut taken = Vec::new();
            while let Some(c) = v.pop(&mem).unwrap() {
                taken.push(c);
            }
            assert_eq!(taken.len(), posted.len());
            for (c, (_, n)) in taken.iter().zip(&posted) {
                assert_eq!(c.segments().len(), *n as usize);
                assert_eq!(c.total_len(), 8 * u64::from(*n));
            }
            for c in taken.iter().rev() {
                v.push_used(&mem, c.head, c.total_len() as u32).unwrap();
            }
            let mut back = Vec::new();
            while let Some((t, len)) = d.pop_used(&mem).unwrap() {
                back.push((t, len));
            }
            let want: Vec<(u32, u32)> = posted.iter().rev().map(|&(t, n)| (t, 8 * n)).collect();
            assert_eq!(back, want, "round {round}");
            assert_eq!(d.free_count(), 5);
        }
    }

    /// Writes descriptor `i` by hand, as a hostile driver would.
    fn write_desc(mem: &HeapMemory, i: u64, addr: u64, len: u32, id: u16, flags: u16) {
        let at = RING + 16 * i;
        mem.store_u64(at, addr).unwrap();
        mem.store_u32(at + DESC_LEN, len).unwrap();
        mem.store_u16(at + DESC_ID, id).unwrap();
        mem.store_u16(at + DESC_FLAGS, flags).unwrap();
    }

    /// Available in the first lap.
    const A: u16 = PACKED_DESC_F_AVAIL;
    const N: u16 = VRING_DESC_F_NEXT;
    const W: u16 = VRING_DESC_F_WRITE;

    type Setup = dyn Fn(&HeapMemory);

    #[test]
    fn device_returns_malformed_chains_and_moves_on() {
        let cases: [(&str, &Setup, VringError); 6] = [
            (
                "indirect",
                &|m| write_desc(m, 0, BUFS, 16, 3, A | VRING_DESC_F_INDIRECT),
                VringError::Indirect,
            ),
            (
                "zero length",
                &|m| write_desc(m, 0, BUFS, 0, 3, A),
                VringError::EmptyBuffer,
            ),
            (
                "outside memory",
                &|m| write_desc(m, 0, 0xFFFF_0000, 8, 3, A),
                VringError::Memory(MemError {
                    addr: 0xFFFF_0000,
                    len: 8,
                }),
            ),
            (
                "mixed directions",
                &|m| {
                    write_desc(m, 0, BUFS, 8, 3, A | N);
                    write_desc(m, 1, BUFS, 8, 3, A | W);
                },
                VringError::WrongDirection,
            ),
            (
                "more segments than MAX_SEGMENTS",
                &|m| {
                    for i in 0..MAX_SEGMENTS as u64 {
                        write_desc(m, i, BUFS, 8, 3, A | N);
                    }
                    write_desc(m, MAX_SEGMENTS as u64, BUFS, 8, 3, A);
                },
                VringError::ChainTooLong,
            ),
            (
                "bad address in the middle, id in the last",
                &|m| {
                    write_desc(m, 0, BUFS, 8, 9, A | N);
                    write_desc(m, 1, u64::MAX - 3, 8, 9, A | N);
                    write_desc(m, 2, BUFS, 8, 3, A);
                },
                VringError::Memory(MemError {
                    addr: u64::MAX - 3,
                    len: 8,
                }),
            ),
        ];
        for (what, setup, want) in cases {
            let mem = HeapMemory::new(0x10000, 0);
            let l = PackedLayout::contiguous(RING, 8).unwrap();
            let mut v =
                PackedDeviceQueue::new(&mem, l, Endian::Little, false, PackedDeviceQueue::START)
                    .unwrap();
            setup(&mem);
            let err = v.pop(&mem).unwrap_err();
            assert_eq!(
                err,
                PopError {
                    head: Some(3),
                    error: want
                },
                "{what}"
            );
            // Consumed: the ring moves on, and the id goes back used.
            assert_eq!(v.pop(&mem).unwrap(), None, "{what}");
            v.push_used(&mem, 3, 0).unwrap();
        }
    }

    #[test]
    fn device_refuses_lies_it_cannot_step_over() {
        let cases: [(&str, &Setup, VringError); 5] = [
            (
                "id out of range",
                &|m| write_desc(m, 0, BUFS, 8, 8, A),
                VringError::BadDescriptorIndex(8),
            ),
            (
                "NEXT all around the ring",
                &|m| {
                    for i in 0..8 {
                        write_desc(m, i, BUFS, 8, 0, A | N);
                    }
                },
                VringError::ChainTooLong,
            ),
            (
                "tail not made available",
                &|m| {
                    write_desc(m, 0, BUFS, 8, 0, A | N);
                    write_desc(m, 1, BUFS, 8, 0, 0);
                },
                VringError::WrapCounter,
            ),
            (
                "tail marked for the wrong lap",
                &|m| {
                    write_desc(m, 0, BUFS, 8, 0, A | N);
                    write_desc(m, 1, BUFS, 8, 0, PACKED_DESC_F_USED);
                },
                VringError::WrapCounter,
            ),
            (
                "head marked used in a lap nothing was used in",
                &|m| write_desc(m, 0, BUFS, 8, 0, A | PACKED_DESC_F_USED),
                VringError::WrapCounter,
            ),
        ];
        for (what, setup, want) in cases {
            let mem = HeapMemory::new(0x10000, 0);
            let l = PackedLayout::contiguous(RING, 8).unwrap();
            let mut v =
                PackedDeviceQueue::new(&mem, l, Endian::Little, false, PackedDeviceQueue::START)
                    .unwrap();
            setup(&mem);
            for _ in 0..2 {
                // Fatal and nothing consumed: the same answer again, never a different chain.
                assert_eq!(v.pop(&mem), Err(PopError::fatal(want)), "{what}");
            }
            assert_eq!(v.next_avail(), PackedDeviceQueue::START, "{what}");
        }
    }

    #[test]
    fn device_refuses_an_id_it_already_holds() {
        let mem = HeapMemory::new(0x10000, 0);
        let l = PackedLayout::contiguous(RING, 8).unwrap();
        let mut v =
            PackedDeviceQueue::new(&mem, l, Endian::Little, false, PackedDeviceQueue::START)
                .unwrap();
        write_desc(&mem, 0, BUFS, 8, 5, A);
        write_desc(&mem, 1, BUFS, 8, 5, A);
        assert_eq!(v.pop(&mem).unwrap().unwrap().head, 5);
        assert_eq!(v.pop(&mem), Err(PopError::fatal(VringError::IdInUse(5))));
        v.push_used(&mem, 5, 0).unwrap();
        assert_eq!(v.pop(&mem).unwrap().unwrap().head, 5, "free again");
    }

    #[test]
    fn driver_refuses_bad_used_descriptors() {
        let used = PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED;
        // Used descriptors while nothing is in flight are not read.
        let (mem, mut d, _) = pair(4, false);
        write_desc(&mem, 0, 0, 0, 0, used);
        assert_eq!(d.pop_used(&mem), Ok(None));
        assert!(!d.has_used(&mem).unwrap());
        // An id out of range, then one that is not in flight.
        d.add(&mem, BUFS, 8, true, 0).unwrap();
        write_desc(&mem, 0, 0, 0, 4, used);
        assert_eq!(d.pop_used(&mem), Err(VringError::BadUsedId(4)));
        write_desc(&mem, 0, 0, 0, 2, used);
        assert_eq!(d.pop_used(&mem), Err(VringError::BadUsedId(2)));
        // Marked for the other lap: not used yet.
        write_desc(&mem, 0, 0, 0, 0, 0);
        assert_eq!(d.pop_used(&mem), Ok(None));
        assert_eq!(d.in_flight(), 1);
    }

    #[test]
    fn flags_mode_suppresses_both_ways() {
        let (mem, mut d, mut v) = pair(4, false);
        v.disable_kicks(&mem).unwrap();
        d.add(&mem, BUFS, 8, true, 0).unwrap();
        assert!(!d.should_kick(&mem).unwrap());
        assert!(v.enable_kicks(&mem).unwrap(), "a buffer is already waiting");
        let c = v.pop(&mem).unwrap().unwrap();
        d.add(&mem, BUFS, 8, true, 1).unwrap();
        assert!(d.should_kick(&mem).unwrap());
        assert!(!d.should_kick(&mem).unwrap(), "nothing new");
        d.disable_interrupts(&mem).unwrap();
        v.push_used(&mem, c.head, 0).unwrap();
        assert!(!v.should_notify(&mem).unwrap());
        assert!(
            d.enable_interrupts(&mem).unwrap(),
            "a used buffer is waiting"
        );
        d.pop_used(&mem).unwrap().unwrap();
        let c = v.pop(&mem).unwrap().unwrap();
        v.push_used(&mem, c.head, 0).unwrap();
        assert!(v.should_notify(&mem).unwrap());
        assert!(!v.should_notify(&mem).unwrap(), "nothing new");
    }

    #[test]
    fn desc_mode_notifies_at_the_named_descriptor() {
        let (mem, mut d, mut v) = pair(4, true);
        // The device asks for a kick at its available position (descriptor 0, lap 1).
        assert!(!v.enable_kicks(&mem).unwrap());
        d.add(&mem, BUFS, 8, true, 0).unwrap();
        assert!(d.should_kick(&mem).unwrap());
        // The device has not taken it: the next chain (descriptor 1) needs no kick.
        d.add(&mem, BUFS, 8, true, 1).unwrap();
        assert!(!d.should_kick(&mem).unwrap());
        // Taking re-arms at the next position.
        let a = v.pop(&mem).unwrap().unwrap();
        let b = v.pop(&mem).unwrap().unwrap();
        d.add_chain(&mem, &[seg(BUFS, 8), seg(BUFS + 8, 8)], true, 2)
            .unwrap();
        assert!(
            d.should_kick(&mem).unwrap(),
            "the chain starts at the named descriptor"
        );
        // The driver named its used position (0, lap 1): the first used buffer interrupts,
        // and reclaiming it moves the event on.
        v.push_used(&mem, b.head, 1).unwrap();
        assert!(v.should_notify(&mem).unwrap());
        v.push_used(&mem, a.head, 1).unwrap();
        assert!(
            !v.should_notify(&mem).unwrap(),
            "the driver has not reclaimed yet"
        );
        d.pop_used(&mem).unwrap().unwrap();
        d.pop_used(&mem).unwrap().unwrap();
        let c = v.pop(&mem).unwrap().unwrap();
        v.push_used(&mem, c.head, 1).unwrap();
        assert!(
            v.should_notify(&mem).unwrap(),
            "past the end of the ring, in lap 2"
        );
        assert_eq!(d.pop_used(&mem).unwrap(), Some((2, 1)));
    }

    #[test]
    fn a_decision_after_two_laps_of_progress_still_notifies() {
        // Ring of 2: the device uses four buffers (two laps) between two decisions, so its
        // used position is back where it was. The driver named a descriptor in between.
        let (mem, mut d, mut v) = pair(2, true);
        assert!(!d.enable_interrupts(&mem).unwrap());
        for round in 0..2 {
            d.add(&mem, BUFS, 8, true, 0).unwrap();
            d.add(&mem, BUFS, 8, true, 1).unwrap();
            for _ in 0..2 {
                let c = v.pop(&mem).unwrap().unwrap();
                v.push_used(&mem, c.head, 0).unwrap();
            }
            if round == 0 {
                while d.pop_used(&mem).unwrap().is_some() {}
            }
        }
        assert!(v.should_notify(&mem).unwrap());
        // Same for the driver's kicks: four chains added over two laps, one decision.
        let (mem, mut d, mut v) = pair(2, true);
        assert!(!v.enable_kicks(&mem).unwrap());
        for _ in 0..2 {
            d.add(&mem, BUFS, 8, true, 0).unwrap();
            d.add(&mem, BUFS, 8, true, 1).unwrap();
            for _ in 0..2 {
                let c = v.pop(&mem).unwrap().unwrap();
                v.push_used(&mem, c.head, 0).unwrap();
            }
            while d.pop_used(&mem).unwrap().is_some() {}
        }
        assert!(d.should_kick(&mem).unwrap());
    }

    #[test]
    fn disabled_interrupts_stay_off_when_the_device_decides_late() {
        let (mem, mut d, mut v) = pair(8, true);
        d.add(&mem, BUFS, 64, true, 0).unwrap();
        d.add(&mem, BUFS + 0x40, 64, true, 1).unwrap();
        for _ in 0..2 {
            let c = v.pop(&mem).unwrap().unwrap();
            v.push_used(&mem, c.head, 16).unwrap();
        }
        assert!(d.pop_used(&mem).unwrap().is_some());
        assert!(d.pop_used(&mem).unwrap().is_some());
        d.disable_interrupts(&mem).unwrap();
        assert!(!v.should_notify(&mem).unwrap());
    }

    #[test]
    fn busy_poll_suppression_holds_across_many_laps() {
        for event_idx in [false, true] {
            let (mem, mut d, mut v) = pair(3, event_idx);
            d.set_interrupt_suppression(&mem, true).unwrap();
            v.set_kick_suppression(&mem, true).unwrap();
            assert!(d.interrupts_suppressed() && v.kicks_suppressed());
            let mut token = 0u32;
            while token < 20_000 {
                let batch = 1 + token % 3;
                for _ in 0..batch {
                    d.add(&mem, BUFS, 8, true, token).unwrap();
                    token += 1;
                }
                assert!(!d.should_kick(&mem).unwrap(), "kick at {token}");
                while let Some(c) = v.pop(&mem).unwrap() {
                    v.push_used(&mem, c.head, 0).unwrap();
                }
                assert!(!v.should_notify(&mem).unwrap(), "interrupt at {token}");
                while d.pop_used(&mem).unwrap().is_some() {}
            }
            assert!(!v.enable_kicks(&mem).unwrap());
            assert!(!d.enable_interrupts(&mem).unwrap());
            assert!(!d.interrupts_suppressed() && !v.kicks_suppressed());
            d.add(&mem, BUFS, 8, true, 0).unwrap();
            assert!(d.should_kick(&mem).unwrap());
            let c = v.pop(&mem).unwrap().unwrap();
            v.push_used(&mem, c.head, 0).unwrap();
            assert!(v.should_notify(&mem).unwrap());
        }
    }

    #[test]
    fn a_device_resumes_where_it_stopped() {
        let (mem, mut d, mut v) = pair(3, false);
        for t in 0..2 {
            d.add(&mem, BUFS, 8, true, t).unwrap();
            let c = v.pop(&mem).unwrap().unwrap();
            v.push_used(&mem, c.head, t).unwrap();
            assert_eq!(d.pop_used(&mem).unwrap(), Some((t, t)));
        }
        let at = v.next_avail();
        let mut v = PackedDeviceQueue::new(&mem, *d.layout(), Endian::Little, false, at).unwrap();
        for t in 2..6 {
            d.add(&mem, BUFS, 8, true, t).unwrap();
            let c = v.pop(&mem).unwrap().unwrap();
            v.push_used(&mem, c.head, t).unwrap();
            assert_eq!(d.pop_used(&mem).unwrap(), Some((t, t)));
        }
    }

    /// Both roles on two threads over one memory: the orderings of flags and fences hold up
    /// when the other side really runs concurrently.
    #[test]
    fn concurrent_driver_and_device_agree() {
        use alloc::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        const COUNT: u32 = 20_000;
        let mem = Arc::new(HeapMemory::new(0x10000, 0));
        let layout = PackedLayout::contiguous(RING, 7).unwrap();
        let mut d = PackedDriverQueue::new(&*mem, layout, Endian::Little, true).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let device = {
            let (mem, done) = (mem.clone(), done.clone());
            std::thread::spawn(move || {
                let mut v = PackedDeviceQueue::new(
                    &*mem,
                    layout,
                    Endian::Little,
                    true,
                    PackedDeviceQueue::START,
                )
                .unwrap();
                let mut held = Vec::new();
                while !done.load(Ordering::Acquire) {
                    while let Some(c) = v.pop(&*mem).unwrap() {
                        held.push(c);
                    }
                    // Alternate the order of returns.
                    if held.len().is_multiple_of(2) {
                        held.reverse();
                    }
                    for c in held.drain(..) {
                        // The first segment holds the token; its length travels back.
                        let token = mem.load_u32(c.segments()[0].addr).unwrap();
                        v.push_used(&*mem, c.head, token).unwrap();
                    }
                    let _ = v.should_notify(&*mem).unwrap();
                    std::thread::yield_now();
                }
            })
        };
        let mut next = 0u32;
        let mut back = BTreeSet::new();
        while back.len() < COUNT as usize {
            if next < COUNT {
                let n = 1 + next % 3;
                let slot = BUFS + 0x40 * u64::from(next % 64);
                let segs: Vec<Segment> = (0..n).map(|k| seg(slot + 8 * u64::from(k), 8)).collect();
                if n as usize <= d.free_count() {
                    mem.store_u32(slot, next).unwrap();
                    d.add_chain(&*mem, &segs, n.is_multiple_of(2), next)
                        .unwrap();
                    next += 1;
                }
                let _ = d.should_kick(&*mem).unwrap();
            }
            while let Some((token, len)) = d.pop_used(&*mem).unwrap() {
                assert_eq!(token, len, "the length travels with its buffer");
                assert!(back.insert(token), "token {token} came back twice");
            }
            std::thread::yield_now();
        }
        done.store(true, Ordering::Release);
        device.join().unwrap();
        assert_eq!(d.in_flight(), 0);
        assert_eq!(d.free_count(), 7);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Post a chain of 1 to 3 descriptors, with or without a kick decision.
        Add(u8, bool),
        KickDecision,
        Take,
        /// Return one held buffer, with or without an interrupt decision.
        Return(usize, bool),
        NotifyDecision,
        Reclaim,
        /// A side enables notifications and sleeps if nothing waits.
        DeviceSleeps,
        DriverSleeps,
        DeviceDisables,
        DriverDisables,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..4, any::<bool>()).prop_map(|(n, d)| Op::Add(n, d)),
            1 => Just(Op::KickDecision),
            3 => Just(Op::Take),
            3 => (0usize..8, any::<bool>()).prop_map(|(i, d)| Op::Return(i, d)),
            1 => Just(Op::NotifyDecision),
            3 => Just(Op::Reclaim),
            1 => Just(Op::DeviceSleeps),
            1 => Just(Op::DriverSleeps),
            1 => Just(Op::DeviceDisables),
            1 => Just(Op::DriverDisables),
        ]
    }

    proptest! {
        /// Random interleavings of both roles: buffers come back with their ids and lengths,
        /// none lost or duplicated, and a side asleep with notifications enabled is always
        /// woken for work waiting for it.
        #[test]
        fn interleavings_conserve_buffers_and_wake_sleepers(
            ops in proptest::collection::vec(op(), 1..400),
            size in 1u16..9,
            event_idx: bool,
        ) {
            let (mem, mut d, mut v) = pair(size, event_idx);
            let mut next_token = 0u32;
            let mut posted = BTreeMap::new();
            let mut at_device: Vec<(u16, u32)> = Vec::new();
            let mut reclaimed = BTreeSet::new();
            let (mut device_asleep, mut driver_asleep) = (false, false);
            for op in ops {
                match op {
                    Op::Add(n, decide) => {
                        // Each buffer's first segment is at an address naming its token.
                        let base = BUFS + 0x40 * u64::from(next_token);
                        let segs: Vec<Segment> =
                            (0..n).map(|k| seg(base + 8 * u64::from(k), 8)).collect();
                        match d.add_chain(&mem, &segs, true, next_token) {
                            Ok(()) => {
                                posted.insert(next_token, u32::from(n));
                                next_token += 1;
                            }
                            Err(e) => prop_assert_eq!(e, VringError::Full),
                        }
                        if decide {
                            if d.should_kick(&mem).unwrap() {
                                device_asleep = false;
                            } else {
                                prop_assert!(!(device_asleep && v.has_avail(&mem).unwrap()), "missed kick");
                            }
                        }
                    }
                    Op::KickDecision => {
                        if d.should_kick(&mem).unwrap() {
                            device_asleep = false;
                        } else {
                            prop_assert!(!(device_asleep && v.has_avail(&mem).unwrap()), "missed kick");
                        }
                    }
                    Op::Take => {
                        device_asleep = false;
                        if let Some(c) = v.pop(&mem).unwrap() {
                            let token = ((c.segments()[0].addr - BUFS) / 0x40) as u32;
                            prop_assert_eq!(c.segments().len() as u32, posted[&token]);
                            at_device.push((c.head, token));
                        }
                    }
                    Op::Return(i, decide) => {
                        device_asleep = false;
                        if !at_device.is_empty() {
                            let (id, token) = at_device.remove(i % at_device.len());
                            v.push_used(&mem, id, token).unwrap();
                        }
                        if decide {
                            if v.should_notify(&mem).unwrap() {
                                driver_asleep = false;
                            } else {
                                prop_assert!(!(driver_asleep && d.has_used(&mem).unwrap()), "missed interrupt");
                            }
                        }
                    }
                    Op::NotifyDecision => {
                        if v.should_notify(&mem).unwrap() {
                            driver_asleep = false;
                        } else {
                            prop_assert!(!(driver_asleep && d.has_used(&mem).unwrap()), "missed interrupt");
                        }
                    }
                    Op::Reclaim => {
                        driver_asleep = false;
                        if let Some((token, len)) = d.pop_used(&mem).unwrap() {
                            prop_assert_eq!(token, len, "length travels with its buffer");
                            prop_assert!(posted.remove(&token).is_some(), "reclaimed a buffer not in flight");
                            prop_assert!(reclaimed.insert(token), "duplicate");
                        }
                    }
                    Op::DeviceSleeps => device_asleep = !v.enable_kicks(&mem).unwrap(),
                    Op::DriverSleeps => driver_asleep = !d.enable_interrupts(&mem).unwrap(),
                    Op::DeviceDisables => {
                        device_asleep = false;
                        v.disable_kicks(&mem).unwrap();
                    }
                    Op::DriverDisables => {
                        driver_asleep = false;
                        d.disable_interrupts(&mem).unwrap();
                    }
                }
                prop_assert_eq!(usize::from(d.in_flight()), posted.len());
                let descs: u32 = posted.values().sum();
                prop_assert_eq!(d.free_count() + descs as usize, usize::from(size));
            }
            // Drain: everything posted comes back exactly once.
            while let Some(c) = v.pop(&mem).unwrap() {
                at_device.push((c.head, ((c.segments()[0].addr - BUFS) / 0x40) as u32));
            }
            for (id, token) in at_device.drain(..) {
                v.push_used(&mem, id, token).unwrap();
            }
            while let Some((token, len)) = d.pop_used(&mem).unwrap() {
                prop_assert_eq!(token, len);
                prop_assert!(posted.remove(&token).is_some());
            }
            prop_assert!(posted.is_empty());
        }
    }
}
