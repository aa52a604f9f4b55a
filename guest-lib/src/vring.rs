//! Split virtqueues (virtio 1.x section 2.7) in both roles.
//!
//! - [`DriverQueue`]: the side that owns the buffers (Linux as host, the remoteproc master, our
//!   vhost-user test frontend): it posts buffers on the available ring and reclaims them from
//!   the used ring.
//! - [`DeviceQueue`]: the side that consumes them (the remote, the vhost-user backend): it takes
//!   descriptor chains from the available ring and returns them on the used ring.
//!
//! Both keep their own copy of every index they depend on and treat everything the other
//! side writes (indices, descriptor addresses, lengths, flags, chain links) as untrusted: a bad
//! value gives a [`VringError`], never a panic, an out-of-bounds access or an endless loop.

use crate::mem::{MemError, SharedMemory, full_barrier, read_barrier, write_barrier};
use crate::wire::Endian;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ptr::NonNull;

/// Descriptor continues in `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Buffer is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Buffer holds a table of descriptors (not offered by vamp, refused when seen).
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// Driver to device: do not interrupt me (without EVENT_IDX).
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Device to driver: do not kick me (without EVENT_IDX).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// Largest queue size the split ring allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Most descriptors one buffer may span in vamp (rpmsg buffers are one descriptor in Linux and
/// OpenAMP; a few more are accepted so that other drivers' framing works too).
pub const MAX_SEGMENTS: usize = 4;

const DESC_SIZE: u64 = 16;

/// Why a ring operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VringError {
    /// The layout is impossible (size not a power of two, zero, misaligned, overflowing).
    BadLayout(&'static str),
    /// A ring or buffer address lies outside shared memory.
    Memory(MemError),
    /// The driver's available index moved further than the queue size.
    AvailIndexJump {
        /// Index read from the ring.
        avail_idx: u16,
        /// Our last seen index.
        last_avail: u16,
    },
    /// A head or `next` descriptor index is not below the queue size.
    BadDescriptorIndex(u16),
    /// A chain is longer than [`MAX_SEGMENTS`] or loops.
    ChainTooLong,
    /// An indirect descriptor, which vamp never negotiates.
    Indirect,
    /// A chain mixes device-readable and device-writable parts in an order rpmsg cannot use,
    /// or has the wrong direction for its queue.
    WrongDirection,
    /// A descriptor has zero length.
    EmptyBuffer,
    /// A buffer too small for any message of the protocol on top (the transport's minimum).
    TooSmall {
        /// Bytes in the buffer.
        len: u64,
        /// Bytes a buffer needs at least.
        min: u32,
    },
    /// The device returned a used id that is not a buffer we have in flight.
    BadUsedId(u32),
    /// The used index moved further than the number of buffers in flight.
    UsedIndexJump,
    /// No free descriptor: the queue is full.
    Full,
    /// A packed-ring descriptor's AVAIL/USED flags contradict the ring's wrap counters (a
    /// descriptor no honest peer can have written there, or a chain whose tail was never made
    /// available).
    WrapCounter,
    /// A packed-ring buffer id that is already at the device (the driver reused it).
    IdInUse(u16),
}

impl From<MemError> for VringError {
    fn from(e: MemError) -> Self {
        VringError::Memory(e)
    }
}

impl core::fmt::Display for VringError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VringError::BadLayout(why) => write!(f, "bad vring layout: {why}"),
            VringError::Memory(e) => write!(f, "vring access: {e}"),
            VringError::AvailIndexJump {
                avail_idx,
                last_avail,
            } => {
                write!(f, "available index jumped from {last_avail} to {avail_idx}")
            }
            VringError::BadDescriptorIndex(i) => write!(f, "descriptor index {i} out of range"),
            VringError::ChainTooLong => write!(f, "descriptor chain too long or looping"),
            VringError::Indirect => write!(f, "indirect descriptors were not negotiated"),
            VringError::WrongDirection => write!(f, "descriptor direction does not fit the queue"),
            VringError::EmptyBuffer => write!(f, "zero-length descriptor"),
            VringError::TooSmall { len, min } => {
                write!(
                    f,
                    "buffer of {len} bytes is too small (at least {min} needed)"
                )
            }
            VringError::BadUsedId(id) => write!(f, "used id {id} is not in flight"),
            VringError::UsedIndexJump => write!(f, "used index moved past the buffers in flight"),
            VringError::Full => write!(f, "no free descriptor"),
            VringError::WrapCounter => {
                write!(f, "descriptor flags contradict the ring's wrap counter")
            }
            VringError::IdInUse(id) => write!(f, "buffer id {id} is already in use"),
        }
    }
}

impl core::error::Error for VringError {}

/// Distance ahead of our own index at which busy-poll parks the peer's event index: the peer
/// can never have more than a queue's worth (at most 32768) of entries beyond our index, so a
/// window of entries it publishes between two notification decisions never reaches this far
/// (unless it makes no decision for 32768 entries, which costs one spurious notification).
const UNREACHABLE_EVENT: u16 = 0x8000;

/// `vring_need_event`: whether moving an index from `old` to `new` crosses `event`.
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Where the three parts of one split virtqueue live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringLayout {
    /// Number of descriptors (a power of two).
    pub size: u16,
    /// Descriptor table address (16-byte aligned).
    pub desc: u64,
    /// Available ring address (2-byte aligned).
    pub avail: u64,
    /// Used ring address (4-byte aligned).
    pub used: u64,
}

impl VringLayout {
    /// Checks a layout given part by part (as vhost-user and virtio-pci give it).
    pub fn new(size: u16, desc: u64, avail: u64, used: u64) -> Result<Self, VringError> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(VringError::BadLayout(
                "queue size must be a power of two up to 32768",
            ));
        }
        if !desc.is_multiple_of(16) || !avail.is_multiple_of(2) || !used.is_multiple_of(4) {
            return Err(VringError::BadLayout("ring parts are misaligned"));
        }
        let layout = VringLayout {
            size,
            desc,
            avail,
            used,
        };
        for (start, len) in [
            (desc, layout.desc_bytes()),
            (avail, layout.avail_bytes()),
            (used, layout.used_bytes()),
        ] {
            start
                .checked_add(len)
                .ok_or(VringError::BadLayout("ring part wraps the address space"))?;
        }
        Ok(layout)
    }

    /// The legacy layout in one block at `base` (remoteproc vdev vrings): descriptors, then
    /// the available ring, then the used ring at the next multiple of `align`.
    pub fn legacy(base: u64, size: u16, align: u64) -> Result<Self, VringError> {
        if align == 0 || !align.is_power_of_two() {
            return Err(VringError::BadLayout(
                "vring alignment must be a power of two",
            ));
        }
        let wraps = VringError::BadLayout("ring wraps the address space");
        let avail = base.checked_add(DESC_SIZE * size as u64).ok_or(wraps)?;
        let used = avail
            .checked_add(6 + 2 * size as u64 + (align - 1))
            .ok_or(wraps)?
            & !(align - 1);
        Self::new(size, base, avail, used)
    }

    /// Bytes the legacy layout of `size` entries with `align` occupies.
    pub fn legacy_bytes(size: u16, align: u64) -> u64 {
        let used_off = (DESC_SIZE * size as u64 + 6 + 2 * size as u64).next_multiple_of(align);
        used_off + 6 + 8 * size as u64
    }

    /// Bytes of the descriptor table.
    pub fn desc_bytes(&self) -> u64 {
        DESC_SIZE * self.size as u64
    }

    /// Bytes of the available ring, including `used_event`.
    pub fn avail_bytes(&self) -> u64 {
        6 + 2 * self.size as u64
    }

    /// Bytes of the used ring, including `avail_event`.
    pub fn used_bytes(&self) -> u64 {
        6 + 8 * self.size as u64
    }

    /// Checks that the whole ring lies inside `mem`.
    pub fn check<M: SharedMemory + ?Sized>(&self, mem: &M) -> Result<(), VringError> {
        for (addr, len) in [
            (self.desc, self.desc_bytes()),
            (self.avail, self.avail_bytes()),
            (self.used, self.used_bytes()),
        ] {
            if mem.region(addr, len as usize).is_none() {
                return Err(VringError::Memory(MemError {
                    addr,
                    len: len as usize,
                }));
            }
        }
        Ok(())
    }
}

/// One contiguous piece of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Address in the link's address space.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A buffer as a ring carries it: up to [`MAX_SEGMENTS`] segments, all of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    /// Head descriptor index (the id returned on the used ring; a packed ring's buffer id).
    pub head: u16,
    pub(crate) segments: [Segment; MAX_SEGMENTS],
    pub(crate) count: u8,
    /// Whether the segments are device-writable.
    pub writable: bool,
}

impl Chain {
    /// A chain of one segment.
    pub fn single(head: u16, addr: u64, len: u32, writable: bool) -> Self {
        let mut segments = [Segment::default(); MAX_SEGMENTS];
        segments[0] = Segment { addr, len };
        Chain {
            head,
            segments,
            count: 1,
            writable,
        }
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count as usize]
    }

    /// Total bytes over all segments.
    #[inline]
    pub fn total_len(&self) -> u64 {
        // `take`, not a slice of `count`: no bounds check to pay (a count over MAX_SEGMENTS
        // cannot be built).
        self.segments
            .iter()
            .take(self.count as usize)
            .map(|s| s.len as u64)
            .sum()
    }
}

/// One part of a ring (descriptor table, available ring or used ring) looked up once for an
/// operation: its accesses are then offsets checked against the part's length, instead of one
/// lookup in the memory each (the lookups were a quarter of the hub's time per message).
/// Shared with the packed ring (`crate::packed`).
pub(crate) struct Area<'m> {
    addr: u64,
    ptr: NonNull<u8>,
    len: usize,
    endian: Endian,
    _mem: PhantomData<&'m ()>,
}

impl<'m> Area<'m> {
    /// The `len` bytes at `addr`, whose host address must be aligned to `align` (the widest
    /// field in the part), as every field offset within a part is a multiple of its size.
    /// Inlined: it runs several times per message, and its result is then built in place.
    #[inline(always)]
    pub(crate) fn get<M: SharedMemory + ?Sized>(
        mem: &'m M,
        addr: u64,
        len: u64,
        align: usize,
        endian: Endian,
    ) -> Result<Self, MemError> {
        let err = MemError {
            addr,
            len: len as usize,
        };
        let ptr = mem.region(addr, len as usize).ok_or(err)?;
        if !(ptr.as_ptr() as usize).is_multiple_of(align) {
            return Err(err);
        }
        Ok(Area {
            addr,
            ptr,
            len: len as usize,
            endian,
            _mem: PhantomData,
        })
    }

    /// A pointer to the `size` bytes at `off`, checked against the part and for alignment.
    #[inline]
    fn at(&self, off: u64, size: usize) -> Result<*mut u8, MemError> {
        let off = off as usize;
        if off.checked_add(size).is_none_or(|end| end > self.len) || !off.is_multiple_of(size) {
            return Err(MemError {
                addr: self.addr.wrapping_add(off as u64),
                len: size,
            });
        }
        // SAFETY: `off + size <= len`, and `region` promised `len` bytes at `ptr`.
        Ok(unsafe { self.ptr.as_ptr().add(off) })
    }
}

/// The typed accessors of [`Area`]: a load and a store per field width, in the ring's byte
/// order.
macro_rules! area_accessors {
    ($($ty:ty: $load:ident, $store:ident, $from:ident, $to:ident;)*) => {
        impl Area<'_> {
            $(
                #[inline]
                // The 64-bit load serves only packed rings (their descriptors' addresses).
                #[cfg_attr(not(feature = "packed-rings"), allow(dead_code))]
                pub(crate) fn $load(&self, off: u64) -> Result<$ty, MemError> {
                    let p = self.at(off, core::mem::size_of::<$ty>())?;
                    // SAFETY: `at` checked range and alignment (the base is aligned at `get`);
                    // the memory stays mapped while `'m` borrows it. Volatile: the peer writes
                    // it concurrently.
                    Ok(self.endian.$from(unsafe { p.cast::<$ty>().read_volatile() }))
                }

                #[inline]
                pub(crate) fn $store(&self, off: u64, v: $ty) -> Result<(), MemError> {
                    let p = self.at(off, core::mem::size_of::<$ty>())?;
                    // SAFETY: as for the load.
                    unsafe { p.cast::<$ty>().write_volatile(self.endian.$to(v)) };
                    Ok(())
                }
            )*
        }
    };
}

area_accessors! {
    u16: u16, set_u16, from_raw_u16, to_raw_u16;
    u32: u32, set_u32, from_raw_u32, to_raw_u32;
    u64: u64, set_u64, from_raw_u64, to_raw_u64;
}

impl Area<'_> {
    /// The four fields of the 16-byte split-ring descriptor at `off` (address, length, flags,
    /// next), under one range and alignment check instead of one per field.
    #[inline(always)]
    fn descriptor(&self, off: u64) -> Result<(u64, u32, u16, u16), MemError> {
        let p = self.at(off, DESC_SIZE as usize)?;
        let e = self.endian;
        // SAFETY: `at` checked that the 16 bytes at `p` lie inside the part, at an offset that
        // is a multiple of 16 from a base aligned to 8 (`desc_area`): the u64 at 0, the u32
        // at 8 and the u16s at 12 and 14 are each inside and naturally aligned. The memory
        // stays mapped while `'m` borrows it. Volatile: the driver writes it concurrently.
        unsafe {
            Ok((
                e.from_raw_u64(p.cast::<u64>().read_volatile()),
                e.from_raw_u32(p.add(8).cast::<u32>().read_volatile()),
                e.from_raw_u16(p.add(12).cast::<u16>().read_volatile()),
                e.from_raw_u16(p.add(14).cast::<u16>().read_volatile()),
            ))
        }
    }
}

impl VringLayout {
    fn desc_area<'m, M: SharedMemory + ?Sized>(
        &self,
        mem: &'m M,
        endian: Endian,
    ) -> Result<Area<'m>, MemError> {
        Area::get(mem, self.desc, self.desc_bytes(), 8, endian)
    }

    fn avail_area<'m, M: SharedMemory + ?Sized>(
        &self,
        mem: &'m M,
        endian: Endian,
    ) -> Result<Area<'m>, MemError> {
        Area::get(mem, self.avail, self.avail_bytes(), 2, endian)
    }

    fn used_area<'m, M: SharedMemory + ?Sized>(
        &self,
        mem: &'m M,
        endian: Endian,
    ) -> Result<Area<'m>, MemError> {
        Area::get(mem, self.used, self.used_bytes(), 4, endian)
    }
}

/// Offsets within the parts of a ring.
const AVAIL_FLAGS: u64 = 0;
const AVAIL_IDX: u64 = 2;
const USED_FLAGS: u64 = 0;
const USED_IDX: u64 = 2;

impl VringLayout {
    fn desc_off(&self, i: u16) -> u64 {
        DESC_SIZE * i as u64
    }
    fn avail_ring_off(&self, slot: u16) -> u64 {
        4 + 2 * (slot & (self.size - 1)) as u64
    }
    fn used_event_off(&self) -> u64 {
        4 + 2 * self.size as u64
    }
    fn used_ring_off(&self, slot: u16) -> u64 {
        4 + 8 * (slot & (self.size - 1)) as u64
    }
    fn avail_event_off(&self) -> u64 {
        4 + 8 * self.size as u64
    }
}

/// Absolute addresses of ring fields, for tests that play the peer by hand.
#[cfg(test)]
impl VringLayout {
    fn desc_addr(&self, i: u16) -> u64 {
        self.desc + self.desc_off(i)
    }
    fn avail_idx(&self) -> u64 {
        self.avail + AVAIL_IDX
    }
    fn avail_ring(&self, slot: u16) -> u64 {
        self.avail + self.avail_ring_off(slot)
    }
    fn used_idx(&self) -> u64 {
        self.used + USED_IDX
    }
    fn used_ring(&self, slot: u16) -> u64 {
        self.used + self.used_ring_off(slot)
    }
}

/// Whether the peer wants to hear that our index moved from `old` to `new`: with EVENT_IDX,
/// whether the move crossed its event index (at `event_off` in `area`); without, whether its
/// flags word (the start of `area`) lacks `suppress_flag`. Nothing moved: no.
fn peer_wants_notice(
    area: &Area<'_>,
    event_off: Option<u64>,
    suppress_flag: u16,
    old: u16,
    new: u16,
) -> Result<bool, MemError> {
    if old == new {
        return Ok(false);
    }
    // Our index store must be visible before we read the peer's suppression state, or both
    // sides could decide that the other needs no notification.
    full_barrier();
    match event_off {
        Some(off) => Ok(need_event(area.u16(off)?, new, old)),
        None => Ok(area.u16(0)? & suppress_flag == 0),
    }
}

#[inline(always)]
fn read_desc(
    desc: &Area<'_>,
    layout: &VringLayout,
    i: u16,
) -> Result<(u64, u32, u16, u16), VringError> {
    Ok(desc.descriptor(layout.desc_off(i))?)
}

/// The driver side of one queue: owns descriptors, posts buffers, reclaims used ones.
///
/// Buffers are single descriptors, as rpmsg's are in Linux and OpenAMP. Each carries a
/// caller's `token` (a buffer number) that comes back when the buffer is used.
#[derive(Debug)]
pub struct DriverQueue {
    layout: VringLayout,
    endian: Endian,
    event_idx: bool,
    free: Vec<u16>,
    /// What we last wrote into each descriptor (address, length, flags). Reposting a buffer at
    /// the descriptor it had leaves the descriptor alone: rewriting equal values would still
    /// take the cache line back from the device's CPU, which then misses on it again.
    written: Vec<(u64, u32, u16)>,
    /// token + 1 for descriptors in flight, 0 for free ones.
    in_flight: Vec<u32>,
    num_in_flight: u16,
    avail_idx: u16,
    /// Available index at the last kick decision.
    kicked_idx: u16,
    last_used: u16,
    interrupts: bool,
    /// Busy-poll: interrupts stay off and the event index keeps being moved out of reach.
    suppressed: bool,
}

impl DriverQueue {
    /// Sets up the queue: zeroes the rings in `mem` and chains every descriptor as free.
    pub fn new<M: SharedMemory + ?Sized>(
        mem: &M,
        layout: VringLayout,
        endian: Endian,
        event_idx: bool,
    ) -> Result<Self, VringError> {
        layout.check(mem)?;
        mem.fill(layout.desc, layout.desc_bytes() as usize, 0)?;
        mem.fill(layout.avail, layout.avail_bytes() as usize, 0)?;
        mem.fill(layout.used, layout.used_bytes() as usize, 0)?;
        Ok(DriverQueue {
            layout,
            endian,
            event_idx,
            free: (0..layout.size).rev().collect(),
            written: alloc::vec![(0, 0, 0); layout.size as usize],
            in_flight: alloc::vec![0; layout.size as usize],
            num_in_flight: 0,
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            interrupts: true,
            suppressed: false,
        })
    }

    /// The ring's layout.
    pub fn layout(&self) -> &VringLayout {
        &self.layout
    }

    /// Buffers posted and not yet returned.
    pub fn in_flight(&self) -> u16 {
        self.num_in_flight
    }

    /// Free descriptors.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Posts one buffer and publishes it on the available ring.
    pub fn add<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        addr: u64,
        len: u32,
        device_writable: bool,
        token: u32,
    ) -> Result<(), VringError> {
        if token == u32::MAX {
            return Err(VringError::BadUsedId(token));
        }
        let id = *self.free.last().ok_or(VringError::Full)?;
        let desc = self.layout.desc_area(mem, self.endian)?;
        let avail = self.layout.avail_area(mem, self.endian)?;
        let at = self.layout.desc_off(id);
        let flags = if device_writable {
            VRING_DESC_F_WRITE
        } else {
            0
        };
        if self.written[id as usize] != (addr, len, flags) {
            desc.set_u64(at, addr)?;
            desc.set_u32(at + 8, len)?;
            desc.set_u16(at + 12, flags)?;
            // `next` is 0 from `new` on and never written otherwise.
            self.written[id as usize] = (addr, len, flags);
        }
        avail.set_u16(self.layout.avail_ring_off(self.avail_idx), id)?;
        // The descriptor and the ring entry must be visible before the index that publishes them.
        write_barrier();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        avail.set_u16(AVAIL_IDX, self.avail_idx)?;
        self.free.pop();
        self.in_flight[id as usize] = token + 1;
        self.num_in_flight += 1;
        Ok(())
    }

    /// Whether the device must be kicked for what was added since the last call.
    pub fn should_kick<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, VringError> {
        let old = core::mem::replace(&mut self.kicked_idx, self.avail_idx);
        // The device's suppression state lives in the used ring.
        let used = self.layout.used_area(mem, self.endian)?;
        let event = self.layout.avail_event_off();
        Ok(peer_wants_notice(
            &used,
            self.event_idx.then_some(event),
            VRING_USED_F_NO_NOTIFY,
            old,
            self.avail_idx,
        )?)
    }

    /// Takes one used buffer: its token and the length the device reports.
    pub fn pop_used<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<(u32, u32)>, VringError> {
        let used = self.layout.used_area(mem, self.endian)?;
        let used_idx = used.u16(USED_IDX)?;
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.num_in_flight {
            return Err(VringError::UsedIndexJump);
        }
        // Read the entry only after seeing the index that published it.
        read_barrier();
        let at = self.layout.used_ring_off(self.last_used);
        let id = used.u32(at)?;
        let len = used.u32(at + 4)?;
        if id >= self.layout.size as u32 || self.in_flight[id as usize] == 0 {
            return Err(VringError::BadUsedId(id));
        }
        let token = self.in_flight[id as usize] - 1;
        self.in_flight[id as usize] = 0;
        self.num_in_flight -= 1;
        self.free.push(id as u16);
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx && (self.interrupts || self.suppressed) {
            let event = if self.interrupts {
                // Ask for an interrupt at the next used entry.
                self.last_used
            } else {
                // Keep the event out of the device's reach.
                self.last_used.wrapping_add(UNREACHABLE_EVENT)
            };
            let avail = self.layout.avail_area(mem, self.endian)?;
            avail.set_u16(self.layout.used_event_off(), event)?;
        }
        Ok(Some((token, len)))
    }

    /// Whether used buffers are waiting.
    pub fn has_used<M: SharedMemory + ?Sized>(&self, mem: &M) -> Result<bool, VringError> {
        let used = self.layout.used_area(mem, self.endian)?;
        Ok(used.u16(USED_IDX)? != self.last_used)
    }

    /// Asks the device to interrupt us when it uses a buffer. Returns whether used buffers
    /// are already waiting (then the caller should process them instead of sleeping).
    pub fn enable_interrupts<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, VringError> {
        self.interrupts = true;
        self.suppressed = false;
        let avail = self.layout.avail_area(mem, self.endian)?;
        if self.event_idx {
            avail.set_u16(self.layout.used_event_off(), self.last_used)?;
        }
        avail.set_u16(AVAIL_FLAGS, 0)?;
        full_barrier();
        self.has_used(mem)
    }

    /// Asks the device not to interrupt us (a hint: with EVENT_IDX the device may still do so).
    pub fn disable_interrupts<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<(), VringError> {
        self.interrupts = false;
        let avail = self.layout.avail_area(mem, self.endian)?;
        avail.set_u16(AVAIL_FLAGS, VRING_AVAIL_F_NO_INTERRUPT)?;
        if self.event_idx {
            // Park the event half the index space ahead of us. Just behind us is not out of
            // reach: the device decides over everything it used since its last decision, and
            // that can start before the entries we already took (a busy-polling driver takes
            // them as soon as they are published), so an event just behind us fell inside its
            // window and drew interrupts nobody asked for.
            let far = self.last_used.wrapping_add(UNREACHABLE_EVENT);
            avail.set_u16(self.layout.used_event_off(), far)?;
        }
        Ok(())
    }

    /// Busy-poll (`on`): asks the device never to interrupt us, and keeps the request in force
    /// as buffers come back (with EVENT_IDX the event index is parked out of the device's reach
    /// again at every [`pop_used`](Self::pop_used)). The caller polls the
    /// used ring instead of waiting. [`enable_interrupts`](Self::enable_interrupts) ends it;
    /// `off` only stops re-arming the suppression (interrupts stay disabled).
    pub fn set_interrupt_suppression<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        on: bool,
    ) -> Result<(), VringError> {
        self.suppressed = on;
        if on {
            self.disable_interrupts(mem)?;
            if self.event_idx {
                let far = self.last_used.wrapping_add(UNREACHABLE_EVENT);
                let avail = self.layout.avail_area(mem, self.endian)?;
                avail.set_u16(self.layout.used_event_off(), far)?;
            }
        }
        Ok(())
    }

    /// Whether interrupts are suppressed for busy-polling.
    pub fn interrupts_suppressed(&self) -> bool {
        self.suppressed
    }
}

/// The device side of one queue: takes available chains, returns them used.
#[derive(Debug)]
pub struct DeviceQueue {
    layout: VringLayout,
    endian: Endian,
    event_idx: bool,
    last_avail: u16,
    used_idx: u16,
    /// Used index at the last interrupt decision.
    signalled_used: u16,
    /// Busy-poll: kicks stay off and the event index keeps being moved out of reach.
    suppressed: bool,
}

impl DeviceQueue {
    /// Attaches to a ring the driver set up. `last_avail` and `used_idx` are where a previous
    /// owner stopped (0 for a fresh ring; vhost-user's SET_VRING_BASE otherwise).
    pub fn new<M: SharedMemory + ?Sized>(
        mem: &M,
        layout: VringLayout,
        endian: Endian,
        event_idx: bool,
        last_avail: u16,
    ) -> Result<Self, VringError> {
        layout.check(mem)?;
        Ok(DeviceQueue {
            layout,
            endian,
            event_idx,
            last_avail,
            used_idx: last_avail,
            signalled_used: last_avail,
            suppressed: false,
        })
    }

    /// The ring's layout.
    pub fn layout(&self) -> &VringLayout {
        &self.layout
    }

    /// Index of the next available entry we will read (vhost-user's GET_VRING_BASE).
    pub fn next_avail(&self) -> u16 {
        self.last_avail
    }

    /// Whether the driver has published chains we have not taken.
    pub fn has_avail<M: SharedMemory + ?Sized>(&self, mem: &M) -> Result<bool, VringError> {
        let avail = self.layout.avail_area(mem, self.endian)?;
        Ok(avail.u16(AVAIL_IDX)? != self.last_avail)
    }

    /// Takes the next available chain, if any.
    ///
    /// A chain that is malformed is still consumed (its head is known) when possible: the
    /// error carries it back through [`PopError`] so the caller can return it used with length
    /// 0 and the ring keeps moving.
    #[inline]
    pub fn pop<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<Option<Chain>, PopError> {
        let avail = self
            .layout
            .avail_area(mem, self.endian)
            .map_err(PopError::fatal)?;
        let avail_idx = avail.u16(AVAIL_IDX).map_err(PopError::fatal)?;
        let pending = avail_idx.wrapping_sub(self.last_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.layout.size {
            return Err(PopError::fatal(VringError::AvailIndexJump {
                avail_idx,
                last_avail: self.last_avail,
            }));
        }
        // Read the ring entry and the descriptors only after the index that published them.
        read_barrier();
        let head = avail
            .u16(self.layout.avail_ring_off(self.last_avail))
            .map_err(PopError::fatal)?;
        if head >= self.layout.size {
            return Err(PopError::fatal(VringError::BadDescriptorIndex(head)));
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        if self.event_idx {
            // Ask to be kicked for the entry after this one (busy-poll: keep the event out of
            // the driver's reach).
            let event = if self.suppressed {
                self.last_avail.wrapping_add(UNREACHABLE_EVENT)
            } else {
                self.last_avail
            };
            self.layout
                .used_area(mem, self.endian)
                .and_then(|used| used.set_u16(self.layout.avail_event_off(), event))
                .map_err(PopError::fatal)?;
        }
        self.walk(mem, head).map(Some).map_err(|error| PopError {
            head: Some(head),
            error,
        })
    }

    // Inlined into `pop`: the chain is then built where the caller wants it, instead of being
    // copied through two layers of `Result` (store-forwarding stalls showed in profiles).
    #[inline(always)]
    fn walk<M: SharedMemory + ?Sized>(&self, mem: &M, head: u16) -> Result<Chain, VringError> {
        let desc = self.layout.desc_area(mem, self.endian)?;
        let mut segments = [Segment::default(); MAX_SEGMENTS];
        let mut count = 0usize;
        let mut writable = None;
        let mut i = head;
        loop {
            if count == MAX_SEGMENTS {
                return Err(VringError::ChainTooLong);
            }
            let (addr, len, flags, next) = read_desc(&desc, &self.layout, i)?;
            if flags & VRING_DESC_F_INDIRECT != 0 {
                return Err(VringError::Indirect);
            }
            if len == 0 {
                return Err(VringError::EmptyBuffer);
            }
            let w = flags & VRING_DESC_F_WRITE != 0;
            if *writable.get_or_insert(w) != w {
                return Err(VringError::WrongDirection);
            }
            if mem.region(addr, len as usize).is_none() {
                return Err(VringError::Memory(MemError {
                    addr,
                    len: len as usize,
                }));
            }
            segments[count] = Segment { addr, len };
            count += 1;
            if flags & VRING_DESC_F_NEXT == 0 {
                break;
            }
            if next >= self.layout.size {
                return Err(VringError::BadDescriptorIndex(next));
            }
            i = next;
        }
        Ok(Chain {
            head,
            segments,
            count: count as u8,
            writable: writable.unwrap_or(false),
        })
    }

    /// Returns a chain to the driver with `len` bytes written into it.
    pub fn push_used<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), VringError> {
        let used = self.layout.used_area(mem, self.endian)?;
        let at = self.layout.used_ring_off(self.used_idx);
        used.set_u32(at, head as u32)?;
        used.set_u32(at + 4, len)?;
        // The entry (and the data written into the buffer) before the index.
        write_barrier();
        self.used_idx = self.used_idx.wrapping_add(1);
        used.set_u16(USED_IDX, self.used_idx)?;
        Ok(())
    }

    /// Whether the driver wants an interrupt for what was used since the last call.
    pub fn should_notify<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, VringError> {
        let old = core::mem::replace(&mut self.signalled_used, self.used_idx);
        // The driver's suppression state lives in the available ring.
        let avail = self.layout.avail_area(mem, self.endian)?;
        let event = self.layout.used_event_off();
        Ok(peer_wants_notice(
            &avail,
            self.event_idx.then_some(event),
            VRING_AVAIL_F_NO_INTERRUPT,
            old,
            self.used_idx,
        )?)
    }

    /// Asks the driver to kick us when it makes buffers available. Returns whether some are
    /// already there (then process them instead of sleeping).
    pub fn enable_kicks<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, VringError> {
        self.suppressed = false;
        let used = self.layout.used_area(mem, self.endian)?;
        if self.event_idx {
            used.set_u16(self.layout.avail_event_off(), self.last_avail)?;
        } else {
            used.set_u16(USED_FLAGS, 0)?;
        }
        full_barrier();
        self.has_avail(mem)
    }

    /// Asks the driver not to kick us (a hint).
    pub fn disable_kicks<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<(), VringError> {
        if !self.event_idx {
            let used = self.layout.used_area(mem, self.endian)?;
            used.set_u16(USED_FLAGS, VRING_USED_F_NO_NOTIFY)?;
        }
        Ok(())
    }

    /// Busy-poll (`on`): asks the driver never to kick us (VRING_USED_F_NO_NOTIFY, and with
    /// EVENT_IDX an event index parked out of the driver's reach at every [`pop`](Self::pop)). The caller
    /// polls the available ring instead of waiting. [`enable_kicks`](Self::enable_kicks) ends
    /// it; `off` only stops re-arming the suppression.
    pub fn set_kick_suppression<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        on: bool,
    ) -> Result<(), VringError> {
        self.suppressed = on;
        if on {
            let used = self.layout.used_area(mem, self.endian)?;
            if self.event_idx {
                let far = self.last_avail.wrapping_add(UNREACHABLE_EVENT);
                used.set_u16(self.layout.avail_event_off(), far)?;
            } else {
                used.set_u16(USED_FLAGS, VRING_USED_F_NO_NOTIFY)?;
            }
        }
        Ok(())
    }

    /// Whether kicks are suppressed for busy-polling.
    pub fn kicks_suppressed(&self) -> bool {
        self.suppressed
    }
}

/// A failed [`DeviceQueue::pop`]: the error, and the head of the bad chain if one was taken
/// off the ring (return it used with length 0 so the driver gets it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PopError {
    /// Head of the consumed, malformed chain.
    pub head: Option<u16>,
    /// What was wrong.
    pub error: VringError,
}

impl PopError {
    pub(crate) fn fatal(e: impl Into<VringError>) -> Self {
        PopError {
            head: None,
            error: e.into(),
        }
    }
}

impl core::fmt::Display for PopError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.error.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::HeapMemory;
    use proptest::prelude::*;

    fn pair(size: u16, event_idx: bool) -> (HeapMemory, DriverQueue, DeviceQueue) {
        let mem = HeapMemory::new(0x10000, 0);
        let layout = VringLayout::legacy(0x1000, size, 0x1000).unwrap();
        let d = DriverQueue::new(&mem, layout, Endian::Little, event_idx).unwrap();
        let v = DeviceQueue::new(&mem, layout, Endian::Little, event_idx, 0).unwrap();
        (mem, d, v)
    }

    #[test]
    fn legacy_layout_matches_linux_vring_size() {
        // vring_size(256, 4096): 4096 + 518 -> 0x2000, + 2054 = 0x2806.
        let l = VringLayout::legacy(0x4000, 256, 0x1000).unwrap();
        assert_eq!((l.desc, l.avail, l.used), (0x4000, 0x5000, 0x6000));
        assert_eq!(VringLayout::legacy_bytes(256, 0x1000), 0x2806);
        assert!(VringLayout::legacy(0, 3, 0x1000).is_err());
        assert!(VringLayout::legacy(0, 0, 0x1000).is_err());
        assert!(VringLayout::new(4, 8, 0, 0).is_err());
        assert!(VringLayout::legacy(u64::MAX - 10, 4, 16).is_err());
    }

    #[test]
    fn buffers_travel_both_ways() {
        for event_idx in [false, true] {
            let (mem, mut d, mut v) = pair(4, event_idx);
            d.add(&mem, 0x8000, 64, true, 7).unwrap();
            d.add(&mem, 0x8040, 64, false, 8).unwrap();
            assert!(d.should_kick(&mem).unwrap());
            let a = v.pop(&mem).unwrap().unwrap();
            assert_eq!(
                a.segments(),
                &[Segment {
                    addr: 0x8000,
                    len: 64
                }]
            );
            assert!(a.writable);
            let b = v.pop(&mem).unwrap().unwrap();
            assert!(!b.writable);
            assert_eq!(v.pop(&mem).unwrap(), None);
            v.push_used(&mem, b.head, 0).unwrap();
            v.push_used(&mem, a.head, 20).unwrap();
            assert!(v.should_notify(&mem).unwrap());
            assert_eq!(d.pop_used(&mem).unwrap(), Some((8, 0)));
            assert_eq!(d.pop_used(&mem).unwrap(), Some((7, 20)));
            assert_eq!(d.pop_used(&mem).unwrap(), None);
            assert_eq!(d.free_count(), 4);
        }
    }

    #[test]
    fn disabled_interrupts_stay_off_when_the_device_decides_late() {
        // The device uses two buffers and decides about interrupts only after the driver has
        // already taken both and turned interrupts off: no interrupt may follow.
        let (mem, mut d, mut v) = pair(8, true);
        d.add(&mem, 0x8000, 64, true, 0).unwrap();
        d.add(&mem, 0x8040, 64, true, 1).unwrap();
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
    fn full_queue_refuses() {
        let (mem, mut d, _) = pair(2, false);
        d.add(&mem, 0x8000, 8, true, 0).unwrap();
        d.add(&mem, 0x8000, 8, true, 1).unwrap();
        assert_eq!(d.add(&mem, 0x8000, 8, true, 2), Err(VringError::Full));
    }

    #[test]
    fn event_idx_suppresses_kicks_until_asked() {
        let (mem, mut d, mut v) = pair(8, true);
        // Device asked for a kick at avail index 0 (the zeroed avail_event): first add kicks.
        d.add(&mem, 0x8000, 8, true, 0).unwrap();
        assert!(d.should_kick(&mem).unwrap());
        // Device has not consumed or re-armed: the next add does not need a kick.
        d.add(&mem, 0x8000, 8, true, 1).unwrap();
        assert!(!d.should_kick(&mem).unwrap());
        // Device consumes both and re-arms for the next one.
        v.pop(&mem).unwrap().unwrap();
        v.pop(&mem).unwrap().unwrap();
        assert!(!v.enable_kicks(&mem).unwrap());
        d.add(&mem, 0x8000, 8, true, 2).unwrap();
        assert!(d.should_kick(&mem).unwrap());
    }

    #[test]
    fn notification_flags_without_event_idx() {
        let (mem, mut d, mut v) = pair(4, false);
        v.disable_kicks(&mem).unwrap();
        d.add(&mem, 0x8000, 8, true, 0).unwrap();
        assert!(!d.should_kick(&mem).unwrap());
        assert!(v.enable_kicks(&mem).unwrap(), "a buffer is already waiting");
        let c = v.pop(&mem).unwrap().unwrap();
        d.disable_interrupts(&mem).unwrap();
        v.push_used(&mem, c.head, 0).unwrap();
        assert!(!v.should_notify(&mem).unwrap());
        assert!(d.enable_interrupts(&mem).unwrap());
    }

    #[test]
    fn busy_poll_suppression_holds_across_index_wraps() {
        for event_idx in [false, true] {
            let (mem, mut d, mut v) = pair(4, event_idx);
            d.set_interrupt_suppression(&mem, true).unwrap();
            v.set_kick_suppression(&mem, true).unwrap();
            assert!(d.interrupts_suppressed() && v.kicks_suppressed());
            // Past a 16-bit wrap of every index, with varying batch sizes.
            let mut token = 0u32;
            while token < 70_000 {
                let batch = 1 + token % 4;
                for _ in 0..batch {
                    d.add(&mem, 0x8000, 8, true, token).unwrap();
                    token += 1;
                }
                assert!(!d.should_kick(&mem).unwrap(), "kick at {token}");
                while let Some(c) = v.pop(&mem).unwrap() {
                    v.push_used(&mem, c.head, 0).unwrap();
                }
                assert!(!v.should_notify(&mem).unwrap(), "interrupt at {token}");
                while d.pop_used(&mem).unwrap().is_some() {}
            }
            // Enabling ends the suppression: notifications flow again.
            assert!(!v.enable_kicks(&mem).unwrap());
            assert!(!d.enable_interrupts(&mem).unwrap());
            assert!(!d.interrupts_suppressed() && !v.kicks_suppressed());
            d.add(&mem, 0x8000, 8, true, 0).unwrap();
            assert!(d.should_kick(&mem).unwrap());
            let c = v.pop(&mem).unwrap().unwrap();
            v.push_used(&mem, c.head, 0).unwrap();
            assert!(v.should_notify(&mem).unwrap());
        }
    }

    fn write_desc(
        mem: &HeapMemory,
        l: &VringLayout,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = l.desc_addr(i);
        mem.store_u64(at, addr).unwrap();
        mem.store_u32(at + 8, len).unwrap();
        mem.store_u16(at + 12, flags).unwrap();
        mem.store_u16(at + 14, next).unwrap();
    }

    fn publish(mem: &HeapMemory, l: &VringLayout, slot: u16, head: u16) {
        mem.store_u16(l.avail_ring(slot), head).unwrap();
        mem.store_u16(l.avail_idx(), slot.wrapping_add(1)).unwrap();
    }

    type Setup = dyn Fn(&HeapMemory, &VringLayout);

    #[test]
    fn device_refuses_hostile_chains() {
        let cases: [(&str, &Setup, VringError); 6] = [
            (
                "loop",
                &|m, l| write_desc(m, l, 0, 0x8000, 8, VRING_DESC_F_NEXT, 0),
                VringError::ChainTooLong,
            ),
            (
                "next out of range",
                &|m, l| write_desc(m, l, 0, 0x8000, 8, VRING_DESC_F_NEXT, 99),
                VringError::BadDescriptorIndex(99),
            ),
            (
                "outside memory",
                &|m, l| write_desc(m, l, 0, 0xFFFF_0000, 8, 0, 0),
                VringError::Memory(MemError {
                    addr: 0xFFFF_0000,
                    len: 8,
                }),
            ),
            (
                "zero length",
                &|m, l| write_desc(m, l, 0, 0x8000, 0, 0, 0),
                VringError::EmptyBuffer,
            ),
            (
                "indirect",
                &|m, l| write_desc(m, l, 0, 0x8000, 16, VRING_DESC_F_INDIRECT, 0),
                VringError::Indirect,
            ),
            (
                "mixed",
                &|m, l| {
                    write_desc(m, l, 0, 0x8000, 8, VRING_DESC_F_NEXT, 1);
                    write_desc(m, l, 1, 0x8000, 8, VRING_DESC_F_WRITE, 0);
                },
                VringError::WrongDirection,
            ),
        ];
        for (what, setup, want) in cases {
            let mem = HeapMemory::new(0x10000, 0);
            let l = VringLayout::legacy(0x1000, 8, 0x1000).unwrap();
            let mut v = DeviceQueue::new(&mem, l, Endian::Little, false, 0).unwrap();
            setup(&mem, &l);
            publish(&mem, &l, 0, 0);
            let err = v.pop(&mem).unwrap_err();
            assert_eq!(
                err,
                PopError {
                    head: Some(0),
                    error: want
                },
                "{what}"
            );
            // The ring moves on: the bad chain was consumed.
            assert_eq!(v.pop(&mem).unwrap(), None, "{what}");
        }
    }

    #[test]
    fn device_refuses_bad_indices() {
        let mem = HeapMemory::new(0x10000, 0);
        let l = VringLayout::legacy(0x1000, 8, 0x1000).unwrap();
        let mut v = DeviceQueue::new(&mem, l, Endian::Little, false, 0).unwrap();
        mem.store_u16(l.avail_idx(), 9).unwrap();
        assert!(matches!(
            v.pop(&mem),
            Err(PopError {
                head: None,
                error: VringError::AvailIndexJump { .. }
            })
        ));
        publish(&mem, &l, 0, 8);
        assert_eq!(
            v.pop(&mem).unwrap_err().error,
            VringError::BadDescriptorIndex(8)
        );
    }

    #[test]
    fn driver_refuses_bad_used_entries() {
        let (mem, mut d, _) = pair(4, false);
        d.add(&mem, 0x8000, 8, true, 0).unwrap();
        let l = *d.layout();
        // Used id of a descriptor that is not in flight.
        mem.store_u32(l.used_ring(0), 3).unwrap();
        mem.store_u16(l.used_idx(), 1).unwrap();
        assert_eq!(d.pop_used(&mem), Err(VringError::BadUsedId(3)));
        // Used index beyond what is in flight.
        mem.store_u16(l.used_idx(), 3).unwrap();
        assert_eq!(d.pop_used(&mem), Err(VringError::UsedIndexJump));
    }

    #[test]
    fn chains_of_several_segments() {
        let mem = HeapMemory::new(0x10000, 0);
        let l = VringLayout::legacy(0x1000, 8, 0x1000).unwrap();
        let mut v = DeviceQueue::new(&mem, l, Endian::Little, false, 0).unwrap();
        write_desc(&mem, &l, 2, 0x8000, 16, VRING_DESC_F_NEXT, 5);
        write_desc(&mem, &l, 5, 0x9000, 100, 0, 0);
        publish(&mem, &l, 0, 2);
        let c = v.pop(&mem).unwrap().unwrap();
        assert_eq!(c.head, 2);
        assert_eq!(c.total_len(), 116);
        assert_eq!(c.segments().len(), 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add,
        Take,
        Return(usize),
        Reclaim,
    }

    proptest! {
        /// Random interleavings of both roles never lose or duplicate a buffer.
        #[test]
        fn interleavings_conserve_buffers(
            ops in proptest::collection::vec(prop_oneof![
                Just(Op::Add), Just(Op::Take), (0usize..8).prop_map(Op::Return), Just(Op::Reclaim)
            ], 1..300),
            size_pow in 0u32..4,
            event_idx: bool,
        ) {
            let size = 1u16 << size_pow;
            let (mem, mut d, mut v) = pair(size, event_idx);
            let mut next_token = 0u32;
            let mut posted = alloc::collections::BTreeSet::new();
            let mut at_device: Vec<(u16, u32)> = Vec::new();
            let mut reclaimed = alloc::collections::BTreeSet::new();
            let mut addr_of = alloc::collections::BTreeMap::new();
            for op in ops {
                match op {
                    Op::Add => {
                        let addr = 0x8000 + 16 * next_token as u64;
                        match d.add(&mem, addr, 16, true, next_token) {
                            Ok(()) => { posted.insert(next_token); addr_of.insert(addr, next_token); next_token += 1; }
                            Err(e) => prop_assert_eq!(e, VringError::Full),
                        }
                        let _ = d.should_kick(&mem).unwrap();
                    }
                    Op::Take => {
                        if let Some(c) = v.pop(&mem).unwrap() {
                            let token = addr_of[&c.segments()[0].addr];
                            at_device.push((c.head, token));
                        }
                    }
                    Op::Return(i) => {
                        if !at_device.is_empty() {
                            let (head, token) = at_device.remove(i % at_device.len());
                            v.push_used(&mem, head, token).unwrap();
                            let _ = v.should_notify(&mem).unwrap();
                        }
                    }
                    Op::Reclaim => {
                        if let Some((token, len)) = d.pop_used(&mem).unwrap() {
                            prop_assert_eq!(token, len, "length travels with its buffer");
                            prop_assert!(posted.remove(&token), "reclaimed a buffer not in flight");
                            prop_assert!(reclaimed.insert(token), "duplicate");
                        }
                    }
                }
                prop_assert_eq!(d.in_flight() as usize, posted.len());
                prop_assert_eq!(d.free_count() + posted.len(), size as usize);
            }
            // Drain: everything posted comes back exactly once.
            while let Some(c) = v.pop(&mem).unwrap() {
                at_device.push((c.head, addr_of[&c.segments()[0].addr]));
            }
            for (head, token) in at_device.drain(..) {
                v.push_used(&mem, head, token).unwrap();
            }
            while let Some((token, _)) = d.pop_used(&mem).unwrap() {
                prop_assert!(posted.remove(&token));
            }
            prop_assert!(posted.is_empty());
        }
    }
}
