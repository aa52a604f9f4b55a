//! Moving rpmsg buffers over the two vrings of one virtio-rpmsg device, in either role.
//!
//! The engine ([`crate::rpmsg`]) sees only [`Transport`]: get a buffer to send in, send it,
//! get a received buffer, give it back. The two implementations here hide which side owns
//! the buffers:
//!
//! - [`DriverTransport`] (host/master, Linux's role): owns a pool of buffers laid out as Linux
//!   lays it out, posts the receive half on vq 0, sends on vq 1 and reclaims from its used ring.
//! - [`DeviceTransport`] (remote): sends by filling a buffer the driver posted on vq 0 and
//!   returning it used; receives from vq 1's available ring.
//!
//! Both run over split rings ([`crate::vring`], the default) or packed rings
//! ([`crate::packed`]), as [`RingFormat`] says.
//!
//! What a link must do around them (kick the peer, wait for a kick, tell time) is the
//! [`Environment`], so bare-metal, RTOS and Linux users plug in their own.

use crate::mem::{MemError, SharedMemory};
#[cfg(feature = "packed-rings")]
use crate::packed::{PackedDeviceQueue, PackedDriverQueue, PackedLayout};
use crate::virtio::VIRTIO_F_RING_PACKED;
use crate::vring::{Chain, DeviceQueue, DriverQueue, PopError, Segment, VringError, VringLayout};
use crate::wire::Endian;
use alloc::vec::Vec;

pub use crate::virtio::{RX_QUEUE, TX_QUEUE};

/// The virtqueue format of a link's two rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RingFormat {
    /// Split virtqueues ([`crate::vring`]): the default, and the only format OpenAMP and
    /// remoteproc know.
    #[default]
    Split,
    /// Packed virtqueues ([`crate::packed`]), in the same three areas of each ring's layout
    /// ([`PackedLayout::in_areas_of`]).
    Packed,
}

impl RingFormat {
    /// Its name: "split" or "packed" (as in logs, CLI options and the bench's JSON).
    pub const fn name(self) -> &'static str {
        match self {
            RingFormat::Split => "split",
            RingFormat::Packed => "packed",
        }
    }

    /// The format [`name`](Self::name) gives `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        [RingFormat::Split, RingFormat::Packed]
            .into_iter()
            .find(|r| r.name() == name)
    }

    /// The format negotiated `features` select (VIRTIO_F_RING_PACKED).
    pub fn from_features(features: u64) -> Self {
        if features & VIRTIO_F_RING_PACKED != 0 {
            RingFormat::Packed
        } else {
            RingFormat::Split
        }
    }

    /// The format a host's mode word in the vamp platform entry selects
    /// ([`MODE_PACKED_RING`](crate::wire::platform::MODE_PACKED_RING)): where the vdev's
    /// 32-bit feature words cannot carry VIRTIO_F_RING_PACKED (see [`crate::wire::platform`]).
    pub fn from_platform_mode(mode: u32) -> Self {
        if mode & crate::wire::platform::MODE_PACKED_RING != 0 {
            RingFormat::Packed
        } else {
            RingFormat::Split
        }
    }

    /// This format's bit of the platform entry's mode word (0 for split rings).
    pub fn platform_mode(self) -> u32 {
        match self {
            RingFormat::Split => 0,
            RingFormat::Packed => crate::wire::platform::MODE_PACKED_RING,
        }
    }
}

impl core::fmt::Display for RingFormat {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether this build of the engine runs packed rings (feature `packed-rings`, on by default).
/// A firmware that can only ever be given split rings (a core behind Linux's remoteproc, whose
/// resource-table features cannot offer packed ones) leaves it out and saves their code; it
/// then must not declare packed rings in its platform entry.
pub const PACKED_RINGS: bool = cfg!(feature = "packed-rings");

/// The error of a transport asked for packed rings in a build without them.
#[cfg(not(feature = "packed-rings"))]
const NO_PACKED_RINGS: VringError =
    VringError::BadLayout("packed rings are not in this build (feature packed-rings)");

/// Calls the same method on whichever queue a ring enum holds.
macro_rules! either_queue {
    ($ring:expr, $q:ident => $call:expr) => {
        match $ring {
            Self::Split($q) => $call,
            #[cfg(feature = "packed-rings")]
            Self::Packed($q) => $call,
        }
    };
}

/// The driver side of one ring, in either format.
#[derive(Debug)]
enum DriverRing {
    Split(DriverQueue),
    #[cfg(feature = "packed-rings")]
    Packed(PackedDriverQueue),
}

impl DriverRing {
    fn new<M: SharedMemory + ?Sized>(
        mem: &M,
        layout: VringLayout,
        endian: Endian,
        event_idx: bool,
        format: RingFormat,
    ) -> Result<Self, VringError> {
        Ok(match format {
            RingFormat::Split => Self::Split(DriverQueue::new(mem, layout, endian, event_idx)?),
            #[cfg(feature = "packed-rings")]
            RingFormat::Packed => Self::Packed(PackedDriverQueue::new(
                mem,
                PackedLayout::in_areas_of(&layout)?,
                endian,
                event_idx,
            )?),
            #[cfg(not(feature = "packed-rings"))]
            RingFormat::Packed => return Err(NO_PACKED_RINGS),
        })
    }

    #[inline]
    fn add<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        addr: u64,
        len: u32,
        device_writable: bool,
        token: u32,
    ) -> Result<(), VringError> {
        either_queue!(self, q => q.add(mem, addr, len, device_writable, token))
    }

    fn should_kick<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, VringError> {
        either_queue!(self, q => q.should_kick(mem))
    }

    #[inline]
    fn pop_used<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<(u32, u32)>, VringError> {
        either_queue!(self, q => q.pop_used(mem))
    }

    fn enable_interrupts<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, VringError> {
        either_queue!(self, q => q.enable_interrupts(mem))
    }

    fn disable_interrupts<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<(), VringError> {
        either_queue!(self, q => q.disable_interrupts(mem))
    }

    fn set_interrupt_suppression<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        on: bool,
    ) -> Result<(), VringError> {
        either_queue!(self, q => q.set_interrupt_suppression(mem, on))
    }
}

/// The device side of one ring, in either format.
#[derive(Debug)]
enum DeviceRing {
    Split(DeviceQueue),
    #[cfg(feature = "packed-rings")]
    Packed(PackedDeviceQueue),
}

impl DeviceRing {
    /// Attaches at `next_avail`: a split ring's available index, or a packed ring's position
    /// as an `off_wrap` word.
    fn new<M: SharedMemory + ?Sized>(
        mem: &M,
        layout: VringLayout,
        endian: Endian,
        event_idx: bool,
        next_avail: u16,
        format: RingFormat,
    ) -> Result<Self, VringError> {
        Ok(match format {
            RingFormat::Split => Self::Split(DeviceQueue::new(
                mem, layout, endian, event_idx, next_avail,
            )?),
            #[cfg(feature = "packed-rings")]
            RingFormat::Packed => Self::Packed(PackedDeviceQueue::new(
                mem,
                PackedLayout::in_areas_of(&layout)?,
                endian,
                event_idx,
                next_avail,
            )?),
            #[cfg(not(feature = "packed-rings"))]
            RingFormat::Packed => return Err(NO_PACKED_RINGS),
        })
    }

    /// Checks that the ring lies inside `mem`.
    fn check<M: SharedMemory + ?Sized>(&self, mem: &M) -> Result<(), VringError> {
        either_queue!(self, q => q.layout().check(mem))
    }

    #[inline]
    fn pop<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<Option<Chain>, PopError> {
        either_queue!(self, q => q.pop(mem))
    }

    #[inline]
    fn push_used<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), VringError> {
        either_queue!(self, q => q.push_used(mem, head, len))
    }

    fn should_notify<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, VringError> {
        either_queue!(self, q => q.should_notify(mem))
    }

    fn has_avail<M: SharedMemory + ?Sized>(&self, mem: &M) -> Result<bool, VringError> {
        either_queue!(self, q => q.has_avail(mem))
    }

    fn enable_kicks<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, VringError> {
        either_queue!(self, q => q.enable_kicks(mem))
    }

    fn disable_kicks<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<(), VringError> {
        either_queue!(self, q => q.disable_kicks(mem))
    }

    fn set_kick_suppression<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        on: bool,
    ) -> Result<(), VringError> {
        either_queue!(self, q => q.set_kick_suppression(mem, on))
    }

    fn next_avail(&self) -> u16 {
        either_queue!(self, q => q.next_avail())
    }

    /// Chains taken and not marked used, where that matters for resuming: a split ring's used
    /// index lives in the ring, so a split ring always resumes right (0).
    fn outstanding(&self) -> usize {
        match self {
            Self::Split(_) => 0,
            #[cfg(feature = "packed-rings")]
            Self::Packed(q) => q.outstanding(),
        }
    }
}

/// What OpenAMP's libmetal gives a port, reduced to what the engine needs.
pub trait Environment {
    /// Notifies the peer that queue `queue` (0 or 1) has news.
    fn notify(&mut self, queue: u16);

    /// Blocks until the peer notifies us or `timeout_us` microseconds pass. Returns whether a
    /// notification arrived. The default does not block: callers fall back to polling.
    fn wait(&mut self, timeout_us: u64) -> bool {
        let _ = timeout_us;
        false
    }

    /// A monotonic clock in microseconds, used to bound blocking sends.
    fn now_us(&mut self) -> u64;

    /// Whether the peer is gone for good (its process exited, its VM crashed): a blocking
    /// send then fails at once with [`PeerGone`](crate::rpmsg::Error::PeerGone) instead of
    /// waiting out its bound. The default never knows.
    fn peer_gone(&mut self) -> bool {
        false
    }
}

/// One rpmsg buffer handed out by a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Transport-private identity (pool index or descriptor head).
    pub(crate) id: u32,
    pub(crate) chain: Chain,
    /// Bytes of valid data (received buffers) or capacity (buffers to send in).
    pub(crate) len: u32,
}

impl Buffer {
    /// Capacity or received length in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's segments.
    pub fn segments(&self) -> &[Segment] {
        self.chain.segments()
    }

    /// Reads `out.len()` bytes at `offset` within the buffer, across segments.
    pub fn read<M: SharedMemory + ?Sized>(
        &self,
        mem: &M,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), MemError> {
        self.walk(offset, out.len(), |addr, range| {
            mem.read(addr, &mut out[range])
        })
    }

    /// Writes `data` at `offset` within the buffer, across segments.
    pub fn write<M: SharedMemory + ?Sized>(
        &self,
        mem: &M,
        offset: usize,
        data: &[u8],
    ) -> Result<(), MemError> {
        self.walk(offset, data.len(), |addr, range| {
            mem.write(addr, &data[range])
        })
    }

    /// Calls `f(address, range within the caller's bytes)` for each piece of
    /// `offset..offset + len` that falls in one segment.
    #[inline]
    pub(crate) fn walk(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(u64, core::ops::Range<usize>) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        // Linux's and OpenAMP's buffers are one segment each: the whole range in the first
        // one is a single call, without the loop (each message walks four times; an empty
        // range takes the loop, which calls nothing).
        let first = self.chain.segments[0];
        if self.chain.count > 0
            && len > 0
            && (offset as u64).saturating_add(len as u64) <= u64::from(first.len)
        {
            return f(first.addr + offset as u64, 0..len);
        }
        let mut skip = offset as u64;
        let mut done = 0usize;
        for seg in self.segments() {
            if done == len {
                break;
            }
            let seg_len = seg.len as u64;
            if skip >= seg_len {
                skip -= seg_len;
                continue;
            }
            let n = ((seg_len - skip) as usize).min(len - done);
            f(seg.addr + skip, done..done + n)?;
            done += n;
            skip = 0;
        }
        if done < len {
            let addr = self.segments().first().map_or(0, |s| s.addr);
            return Err(MemError {
                addr: addr + offset as u64,
                len,
            });
        }
        Ok(())
    }
}

/// Copies `len` bytes from `from` (at `from_off` within it) into `to` (at `to_off`), across
/// the segments of both: the hub's single copy of a message between two memories.
pub fn copy_buffer<A: SharedMemory + ?Sized, B: SharedMemory + ?Sized>(
    from_mem: &A,
    from: &Buffer,
    from_off: usize,
    to_mem: &B,
    to: &Buffer,
    to_off: usize,
    len: usize,
) -> Result<(), MemError> {
    from.walk(from_off, len, |src, range| {
        to.walk(to_off + range.start, range.len(), |dst, piece| {
            crate::mem::copy_between(from_mem, src + piece.start as u64, to_mem, dst, piece.len())
        })
    })
}

/// Why a transport could not move a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer broke the ring protocol; the link needs a reset.
    Vring(VringError),
    /// A buffer the peer gave us points outside shared memory.
    Memory(MemError),
    /// The peer gave a buffer of the wrong direction or shape for its queue.
    BadBuffer(VringError),
    /// A buffer handed back that the transport does not know.
    UnknownBuffer,
}

impl From<VringError> for LinkError {
    fn from(e: VringError) -> Self {
        LinkError::Vring(e)
    }
}

impl From<MemError> for LinkError {
    fn from(e: MemError) -> Self {
        LinkError::Memory(e)
    }
}

impl core::fmt::Display for LinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LinkError::Vring(e) => write!(f, "ring protocol broken: {e}"),
            LinkError::Memory(e) => e.fmt(f),
            LinkError::BadBuffer(e) => write!(f, "unusable buffer: {e}"),
            LinkError::UnknownBuffer => write!(f, "buffer handed back twice or never handed out"),
        }
    }
}

impl core::error::Error for LinkError {}

/// What the engine needs from the two vrings of one virtio-rpmsg device.
pub trait Transport {
    /// The memory the buffers live in.
    type Memory: SharedMemory;

    /// The memory the buffers live in.
    fn memory(&self) -> &Self::Memory;

    /// Byte order of headers and name-service messages on this link.
    fn endian(&self) -> Endian;

    /// The largest buffer (header included) this side can send in, if known before a buffer
    /// is taken: the driver knows its pool; the device learns sizes from posted buffers.
    fn tx_buffer_size(&self) -> Option<u32>;

    /// Size of the buffers this side receives in, if known.
    fn rx_buffer_size(&self) -> Option<u32>;

    /// Takes a buffer to send in, or `None` if none is free now.
    fn take_tx(&mut self) -> Result<Option<Buffer>, LinkError>;

    /// Sends a buffer holding `len` bytes (header and payload). The peer is notified at the
    /// next [`flush`](Self::flush).
    fn send_tx(&mut self, buf: Buffer, len: u32) -> Result<(), LinkError>;

    /// Gives back a buffer from [`take_tx`](Self::take_tx) without sending it.
    fn release_tx(&mut self, buf: Buffer);

    /// Takes the next received buffer, if any. Its `len` is the bytes the peer reports.
    fn take_rx(&mut self) -> Result<Option<Buffer>, LinkError>;

    /// Gives a received buffer back to the peer.
    fn release_rx(&mut self, buf: Buffer) -> Result<(), LinkError>;

    /// Notifies the peer of everything sent or released since the last flush, where its
    /// notification suppression asks for it.
    fn flush(&mut self) -> Result<(), LinkError>;

    /// Asks to be notified when a transmit buffer comes free (`true`) or not (`false`).
    /// Returns whether one may already be free.
    fn want_tx_notifications(&mut self, on: bool) -> Result<bool, LinkError>;

    /// The environment, for waiting and time.
    fn environment(&mut self) -> &mut dyn Environment;

    /// Whether the transport is in busy-poll mode (opt-in, off by default): it never notifies
    /// the peer and has asked the peer never to notify it, so callers spin on the rings
    /// instead of waiting in the [`Environment`].
    fn busy_poll(&self) -> bool {
        false
    }
}

/// Buffer sizes of one rpmsg device (OpenAMP's `rpmsg_virtio_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferConfig {
    /// Size of host-to-remote (driver TX) buffers, header included.
    pub h2r_buf_size: u32,
    /// Size of remote-to-host (driver RX) buffers, header included.
    pub r2h_buf_size: u32,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            h2r_buf_size: 512,
            r2h_buf_size: 512,
        }
    }
}

/// Linux's cap on the number of rpmsg buffers.
pub const MAX_RPMSG_NUM_BUFS: u32 = 512;

/// Where a driver-role rpmsg device keeps its rings and buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverLayout {
    /// vq 0: the driver's receive ring.
    pub rx_ring: VringLayout,
    /// vq 1: the driver's transmit ring.
    pub tx_ring: VringLayout,
    /// Start of the buffer pool.
    pub pool_addr: u64,
    /// Bytes available for the pool.
    pub pool_len: u64,
    /// Buffer sizes.
    pub buffers: BufferConfig,
}

impl DriverLayout {
    /// Number of buffers, as Linux computes it: twice the ring size, at most 512 (half to
    /// receive, half to send).
    pub fn num_bufs(&self) -> u32 {
        (2 * self.rx_ring.size as u32).min(MAX_RPMSG_NUM_BUFS)
    }

    /// Pool bytes the buffers need.
    pub fn pool_bytes(&self) -> u64 {
        let half = self.num_bufs() as u64 / 2;
        half * self.buffers.r2h_buf_size as u64 + half * self.buffers.h2r_buf_size as u64
    }
}

/// The driver side: owns the buffers.
#[derive(Debug)]
pub struct DriverTransport<M: SharedMemory, E: Environment> {
    mem: M,
    env: E,
    endian: Endian,
    layout: DriverLayout,
    format: RingFormat,
    rx: DriverRing,
    tx: DriverRing,
    num_half: u32,
    /// TX buffers handed out fresh so far (Linux's `last_sbuf`).
    fresh_tx: u32,
    /// TX buffers given back unused.
    spare_tx: Vec<u32>,
    /// Per TX buffer: whether it is out (in the caller's hands or in the ring).
    tx_out: Vec<bool>,
    /// Per RX buffer: whether the caller holds it.
    rx_out: Vec<bool>,
    kick_rx: bool,
    kick_tx: bool,
    busy_poll: bool,
    /// Picks and posts transmit buffers by OpenAMP's driver rule instead of Linux's (a test
    /// double: see [`crate::testing`]).
    #[cfg(feature = "testing")]
    openamp_tx_rule: bool,
}

impl<M: SharedMemory, E: Environment> DriverTransport<M, E> {
    /// Sets up both rings in `mem`, lays out the pool and posts every receive buffer.
    ///
    /// The receive buffers are the first half of the pool in order, the transmit buffers the
    /// second half: Linux's `rbufs`/`sbufs` split. The rings are split rings.
    pub fn new(
        mem: M,
        env: E,
        layout: DriverLayout,
        endian: Endian,
        event_idx: bool,
    ) -> Result<Self, LinkError> {
        Self::with_format(mem, env, layout, endian, event_idx, RingFormat::Split)
    }

    /// As [`new`](Self::new), with rings of `format` (packed rings go in the same areas of
    /// each ring's layout).
    pub fn with_format(
        mem: M,
        env: E,
        layout: DriverLayout,
        endian: Endian,
        event_idx: bool,
        format: RingFormat,
    ) -> Result<Self, LinkError> {
        let num_half = layout.num_bufs() / 2;
        if layout.rx_ring.size as u32 > num_half * 2 || layout.tx_ring.size == 0 {
            return Err(LinkError::Vring(VringError::BadLayout(
                "ring sizes do not fit the pool",
            )));
        }
        if layout.buffers.h2r_buf_size < 16 || layout.buffers.r2h_buf_size < 16 {
            return Err(LinkError::Vring(VringError::BadLayout(
                "buffers smaller than a header",
            )));
        }
        if layout.pool_bytes() > layout.pool_len
            || mem
                .region(layout.pool_addr, layout.pool_bytes() as usize)
                .is_none()
        {
            return Err(LinkError::Memory(MemError {
                addr: layout.pool_addr,
                len: layout.pool_bytes() as usize,
            }));
        }
        let mut rx = DriverRing::new(&mem, layout.rx_ring, endian, event_idx, format)?;
        let tx = DriverRing::new(&mem, layout.tx_ring, endian, event_idx, format)?;
        for i in 0..num_half.min(layout.rx_ring.size as u32) {
            let addr = layout.pool_addr + i as u64 * layout.buffers.r2h_buf_size as u64;
            rx.add(&mem, addr, layout.buffers.r2h_buf_size, true, i)?;
        }
        let mut t = DriverTransport {
            mem,
            env,
            endian,
            layout,
            format,
            rx,
            tx,
            num_half,
            fresh_tx: 0,
            spare_tx: Vec::new(),
            tx_out: alloc::vec![false; num_half as usize],
            rx_out: alloc::vec![false; num_half as usize],
            kick_rx: true,
            kick_tx: false,
            busy_poll: false,
            #[cfg(feature = "testing")]
            openamp_tx_rule: false,
        };
        // Like Linux: interrupts for transmit completions only while someone waits for one.
        t.tx.disable_interrupts(&t.mem)?;
        Ok(t)
    }

    /// The layout in use.
    pub fn layout(&self) -> &DriverLayout {
        &self.layout
    }

    /// The rings' format.
    pub fn ring_format(&self) -> RingFormat {
        self.format
    }

    /// Turns busy-poll mode on or off (off by default). On: [`flush`](Transport::flush) never
    /// notifies the device, and the device is asked never to interrupt us on either queue
    /// (VRING_AVAIL_F_NO_INTERRUPT, and with EVENT_IDX a `used_event` kept out of reach), so
    /// both sides must poll their rings. Off: receive interrupts are enabled again, as after
    /// [`new`](Self::new), and the next flush kicks for anything posted meanwhile.
    pub fn set_busy_poll(&mut self, on: bool) -> Result<(), LinkError> {
        self.busy_poll = on;
        self.rx.set_interrupt_suppression(&self.mem, on)?;
        self.tx.set_interrupt_suppression(&self.mem, on)?;
        if !on {
            self.rx.enable_interrupts(&self.mem)?;
            self.tx.disable_interrupts(&self.mem)?;
            self.kick_rx = true;
            self.kick_tx = true;
        }
        Ok(())
    }

    /// The environment.
    pub fn env_mut(&mut self) -> &mut E {
        &mut self.env
    }

    /// Makes this driver pick and post transmit buffers as OpenAMP's driver role does
    /// ([`crate::testing`] describes the rule) instead of as Linux does.
    #[cfg(feature = "testing")]
    pub fn set_openamp_tx_rule(&mut self, on: bool) {
        self.openamp_tx_rule = on;
    }

    /// OpenAMP's driver-role rule for a buffer to send in: unused spares first, then a buffer
    /// recycled from vq 1's used ring sized by the used element's length, and only then a
    /// fresh one.
    #[cfg(feature = "testing")]
    fn take_tx_recycling_used_first(&mut self) -> Result<Option<Buffer>, LinkError> {
        let (i, len) = if let Some(i) = self.spare_tx.pop() {
            (i, self.layout.buffers.h2r_buf_size)
        } else if let Some((token, used_len)) = self.tx.pop_used(&self.mem)? {
            (token, used_len.min(self.layout.buffers.h2r_buf_size))
        } else if self.fresh_tx < self.num_half {
            self.fresh_tx += 1;
            (self.fresh_tx - 1, self.layout.buffers.h2r_buf_size)
        } else {
            return Ok(None);
        };
        let Some(out) = self.tx_out.get_mut(i as usize) else {
            return Err(LinkError::UnknownBuffer);
        };
        *out = true;
        Ok(Some(Buffer {
            len,
            ..self.tx_buffer(i)
        }))
    }

    fn rx_addr(&self, i: u32) -> u64 {
        self.layout.pool_addr + i as u64 * self.layout.buffers.r2h_buf_size as u64
    }

    fn tx_addr(&self, i: u32) -> u64 {
        self.layout.pool_addr
            + self.num_half as u64 * self.layout.buffers.r2h_buf_size as u64
            + i as u64 * self.layout.buffers.h2r_buf_size as u64
    }

    fn tx_buffer(&self, i: u32) -> Buffer {
        let size = self.layout.buffers.h2r_buf_size;
        Buffer {
            id: i,
            chain: Chain::single(0, self.tx_addr(i), size, false),
            len: size,
        }
    }
}

impl<M: SharedMemory, E: Environment> Transport for DriverTransport<M, E> {
    type Memory = M;

    fn memory(&self) -> &M {
        &self.mem
    }

    fn endian(&self) -> Endian {
        self.endian
    }

    fn tx_buffer_size(&self) -> Option<u32> {
        Some(self.layout.buffers.h2r_buf_size)
    }

    fn rx_buffer_size(&self) -> Option<u32> {
        Some(self.layout.buffers.r2h_buf_size)
    }

    fn take_tx(&mut self) -> Result<Option<Buffer>, LinkError> {
        #[cfg(feature = "testing")]
        if self.openamp_tx_rule {
            return self.take_tx_recycling_used_first();
        }
        let i = if let Some(i) = self.spare_tx.pop() {
            i
        } else if self.fresh_tx < self.num_half {
            self.fresh_tx += 1;
            self.fresh_tx - 1
        } else {
            match self.tx.pop_used(&self.mem)? {
                Some((token, _len)) => token,
                None => return Ok(None),
            }
        };
        let Some(out) = self.tx_out.get_mut(i as usize) else {
            return Err(LinkError::UnknownBuffer);
        };
        *out = true;
        Ok(Some(self.tx_buffer(i)))
    }

    fn send_tx(&mut self, buf: Buffer, len: u32) -> Result<(), LinkError> {
        if !self.tx_out.get(buf.id as usize).copied().unwrap_or(false) {
            return Err(LinkError::UnknownBuffer);
        }
        let len = len.min(self.layout.buffers.h2r_buf_size);
        // OpenAMP's driver posts a transmit descriptor with the whole buffer's size (the
        // header's len says how much is message); Linux posts the message's length.
        #[cfg(feature = "testing")]
        let len = if self.openamp_tx_rule {
            self.layout.buffers.h2r_buf_size
        } else {
            len
        };
        self.tx
            .add(&self.mem, self.tx_addr(buf.id), len, false, buf.id)?;
        self.tx_out[buf.id as usize] = false;
        self.kick_tx = true;
        Ok(())
    }

    fn release_tx(&mut self, buf: Buffer) {
        if let Some(out) = self.tx_out.get_mut(buf.id as usize)
            && *out
        {
            *out = false;
            self.spare_tx.push(buf.id);
        }
    }

    fn take_rx(&mut self) -> Result<Option<Buffer>, LinkError> {
        let Some((token, len)) = self.rx.pop_used(&self.mem)? else {
            return Ok(None);
        };
        let size = self.layout.buffers.r2h_buf_size;
        let Some(out) = self.rx_out.get_mut(token as usize) else {
            return Err(LinkError::UnknownBuffer);
        };
        *out = true;
        Ok(Some(Buffer {
            id: token,
            chain: Chain::single(0, self.rx_addr(token), size, true),
            len: len.min(size),
        }))
    }

    fn release_rx(&mut self, buf: Buffer) -> Result<(), LinkError> {
        match self.rx_out.get_mut(buf.id as usize) {
            Some(out) if *out => *out = false,
            _ => return Err(LinkError::UnknownBuffer),
        }
        let size = self.layout.buffers.r2h_buf_size;
        self.rx
            .add(&self.mem, self.rx_addr(buf.id), size, true, buf.id)?;
        self.kick_rx = true;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LinkError> {
        if self.busy_poll {
            // The device polls: no kick, and no kick decision either (the next one after
            // busy-poll ends covers everything posted meanwhile).
            self.kick_rx = false;
            self.kick_tx = false;
            return Ok(());
        }
        if self.kick_rx {
            self.kick_rx = false;
            if self.rx.should_kick(&self.mem)? {
                self.env.notify(RX_QUEUE);
            }
        }
        if self.kick_tx {
            self.kick_tx = false;
            if self.tx.should_kick(&self.mem)? {
                self.env.notify(TX_QUEUE);
            }
        }
        Ok(())
    }

    fn want_tx_notifications(&mut self, on: bool) -> Result<bool, LinkError> {
        if on && self.busy_poll {
            // No interrupts in busy-poll mode: the caller polls for a free buffer.
            Ok(true)
        } else if on {
            Ok(self.tx.enable_interrupts(&self.mem)? || !self.spare_tx.is_empty())
        } else {
            self.tx.disable_interrupts(&self.mem)?;
            Ok(false)
        }
    }

    fn environment(&mut self) -> &mut dyn Environment {
        &mut self.env
    }

    fn busy_poll(&self) -> bool {
        self.busy_poll
    }
}

/// The smallest buffer a [`DeviceTransport`] sends in: one that holds a name-service
/// message (header and 40 bytes). Linux and OpenAMP post 512-byte buffers. A smaller one is
/// returned unused as malformed: kept as a spare, it would fail every later send (even the
/// announcements), and the link would be stuck with it.
pub const MIN_DEVICE_TX_BUFFER: u32 = (crate::wire::HEADER_LEN + crate::wire::NS_MSG_LEN) as u32;

/// Where a [`DeviceTransport`] finds its two rings, where it resumes on them and their
/// format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRings {
    /// The areas of vq 0 and vq 1.
    pub areas: [VringLayout; 2],
    /// Where each ring resumes: a split ring's next available index, a packed ring's next
    /// position as an `off_wrap` word (index, wrap counter in bit 15).
    pub next_avail: [u16; 2],
    /// The rings' format.
    pub format: RingFormat,
}

impl DeviceRings {
    /// Fresh rings of `format` at `vq0` and `vq1`, taken from their start.
    pub fn fresh(vq0: VringLayout, vq1: VringLayout, format: RingFormat) -> Self {
        let start = match format {
            RingFormat::Split => 0,
            #[cfg(feature = "packed-rings")]
            RingFormat::Packed => PackedDeviceQueue::START,
            // Refused when attached (NO_PACKED_RINGS).
            #[cfg(not(feature = "packed-rings"))]
            RingFormat::Packed => 0,
        };
        DeviceRings {
            areas: [vq0, vq1],
            next_avail: [start; 2],
            format,
        }
    }
}

/// The device side: sends in the driver's buffers.
#[derive(Debug)]
pub struct DeviceTransport<M: SharedMemory, E: Environment> {
    mem: M,
    env: E,
    endian: Endian,
    /// The areas of vq 0 and vq 1, as given.
    rings: [VringLayout; 2],
    format: RingFormat,
    /// vq 0: buffers the driver posted for us to send in.
    tx: DeviceRing,
    /// vq 1: messages the driver sent us.
    rx: DeviceRing,
    /// Buffers taken off vq 0 and given back unused, kept for the next send (a device
    /// cannot return a buffer to the available ring).
    spare_tx: Vec<Buffer>,
    /// Largest payload buffer we will fill (OpenAMP's r2h size); smaller posted buffers
    /// limit it further.
    tx_limit: u32,
    notify_tx: bool,
    notify_rx: bool,
    /// Malformed chains seen (each returned used with length 0).
    bad_chains: u64,
    /// Why the last one was malformed.
    last_bad_chain: Option<VringError>,
    busy_poll: bool,
}

impl<M: SharedMemory, E: Environment> DeviceTransport<M, E> {
    /// Attaches to fresh rings the driver set up. `tx_limit` caps the bytes we put in one
    /// buffer.
    pub fn new(
        mem: M,
        env: E,
        vq0: VringLayout,
        vq1: VringLayout,
        endian: Endian,
        event_idx: bool,
        tx_limit: u32,
    ) -> Result<Self, LinkError> {
        Self::resume(mem, env, [vq0, vq1], [0, 0], endian, event_idx, tx_limit)
    }

    /// Attaches to split rings a previous owner left at `next_avail` (vhost-user's
    /// SET_VRING_BASE).
    pub fn resume(
        mem: M,
        env: E,
        rings: [VringLayout; 2],
        next_avail: [u16; 2],
        endian: Endian,
        event_idx: bool,
        tx_limit: u32,
    ) -> Result<Self, LinkError> {
        let rings = DeviceRings {
            areas: rings,
            next_avail,
            format: RingFormat::Split,
        };
        Self::attach(mem, env, rings, endian, event_idx, tx_limit)
    }

    /// Attaches to `rings`, in their format and where they resume.
    pub fn attach(
        mem: M,
        env: E,
        rings: DeviceRings,
        endian: Endian,
        event_idx: bool,
        tx_limit: u32,
    ) -> Result<Self, LinkError> {
        let DeviceRings {
            areas,
            next_avail,
            format,
        } = rings;
        let tx = DeviceRing::new(&mem, areas[0], endian, event_idx, next_avail[0], format)?;
        let rx = DeviceRing::new(&mem, areas[1], endian, event_idx, next_avail[1], format)?;
        Ok(DeviceTransport {
            mem,
            env,
            endian,
            rings: areas,
            format,
            tx,
            rx,
            spare_tx: Vec::new(),
            tx_limit,
            notify_tx: false,
            notify_rx: false,
            bad_chains: 0,
            last_bad_chain: None,
            busy_poll: false,
        })
    }

    /// The environment.
    pub fn env_mut(&mut self) -> &mut E {
        &mut self.env
    }

    /// Malformed chains seen so far (each was returned with length 0).
    pub fn bad_chains(&self) -> u64 {
        self.bad_chains
    }

    /// Turns busy-poll mode on or off (off by default). On: [`flush`](Transport::flush) never
    /// notifies the driver, and the driver is asked never to kick us on either queue
    /// (VRING_USED_F_NO_NOTIFY, and with EVENT_IDX an `avail_event` kept out of reach), so
    /// both sides must poll their rings. Off: kicks are enabled again on both queues, as
    /// after [`new`](Self::new), and the next flush notifies for anything used meanwhile.
    pub fn set_busy_poll(&mut self, on: bool) -> Result<(), LinkError> {
        self.busy_poll = on;
        self.tx.set_kick_suppression(&self.mem, on)?;
        self.rx.set_kick_suppression(&self.mem, on)?;
        if !on {
            self.tx.enable_kicks(&self.mem)?;
            self.rx.enable_kicks(&self.mem)?;
            self.notify_tx = true;
            self.notify_rx = true;
        }
        Ok(())
    }

    /// Asks the driver not to kick us on either queue (`on`), or to kick us again (`off`),
    /// leaving our notifications to the driver as they are (unlike [`set_busy_poll`](Self::set_busy_poll)):
    /// for a device that polls the rings for a while. On: VRING_USED_F_NO_NOTIFY, and with
    /// EVENT_IDX an `avail_event` kept out of reach (split); DISABLE in the device event
    /// structure (packed). Off: kicks are enabled on both queues; the caller then checks the
    /// rings once, since the driver may have made buffers available before it saw the change.
    pub fn set_kick_suppression(&mut self, on: bool) -> Result<(), LinkError> {
        self.tx.set_kick_suppression(&self.mem, on)?;
        self.rx.set_kick_suppression(&self.mem, on)?;
        if !on {
            self.tx.enable_kicks(&self.mem)?;
            self.rx.enable_kicks(&self.mem)?;
        }
        Ok(())
    }

    /// The ring layouts of vq 0 and vq 1 (for packed rings, the three areas of each).
    pub fn rings(&self) -> [VringLayout; 2] {
        self.rings
    }

    /// The rings' format.
    pub fn ring_format(&self) -> RingFormat {
        self.format
    }

    /// Next available index of vq 0 and vq 1: where a new owner would resume (for packed
    /// rings, the position as an `off_wrap` word: index, wrap counter in bit 15).
    pub fn next_avail(&self) -> [u16; 2] {
        [self.tx.next_avail(), self.rx.next_avail()]
    }

    /// Where a new owner would resume, for a link that stops now (vhost-user's
    /// GET_VRING_BASE). A packed ring resumes its used position where its available one is
    /// (vhost-user's ring base as the hub receives it carries only the available position),
    /// so nothing may be outstanding: spare transmit buffers are given back used with length 0
    /// first, and if chains are still held the count of them is the error (the position would
    /// be wrong, and the driver would wait for their used descriptors forever).
    pub fn resume_point(&mut self) -> Result<[u16; 2], usize> {
        if self.format == RingFormat::Packed {
            for buf in core::mem::take(&mut self.spare_tx) {
                // A buffer already marked used cannot be here; a failure leaves it counted.
                let _ = self.tx.push_used(&self.mem, buf.chain.head, 0);
            }
        }
        match self.tx.outstanding() + self.rx.outstanding() {
            0 => Ok(self.next_avail()),
            held => Err(held),
        }
    }

    /// Replaces the memory (the driver remapped it, e.g. a new vhost-user memory table); the
    /// rings must still lie inside it.
    pub fn set_memory(&mut self, mem: M) -> Result<(), LinkError> {
        self.tx.check(&mem)?;
        self.rx.check(&mem)?;
        self.mem = mem;
        Ok(())
    }

    /// Asks the driver to kick us for new messages (vq 1). Returns whether some are waiting.
    /// In busy-poll mode kicks stay off and this only reports whether messages wait.
    pub fn want_rx_notifications(&mut self, on: bool) -> Result<bool, LinkError> {
        if self.busy_poll {
            Ok(self.rx.has_avail(&self.mem)?)
        } else if on {
            Ok(self.rx.enable_kicks(&self.mem)?)
        } else {
            self.rx.disable_kicks(&self.mem)?;
            Ok(false)
        }
    }

    /// Why the last malformed chain was returned unused, if one was.
    pub fn last_bad_chain(&self) -> Option<VringError> {
        self.last_bad_chain
    }

    /// Pops a chain, returning malformed ones (and ones shorter than `min_len`) at once so the
    /// ring keeps moving; counts them in `bad` and records why in `last`.
    #[inline]
    fn pop_good(
        queue: &mut DeviceRing,
        mem: &M,
        writable: bool,
        min_len: u32,
        (bad, last): (&mut u64, &mut Option<VringError>),
        pending: &mut bool,
    ) -> Result<Option<Chain>, LinkError> {
        loop {
            let (head, error) = match queue.pop(mem) {
                Ok(None) => return Ok(None),
                Ok(Some(c)) if c.writable != writable => (c.head, VringError::WrongDirection),
                Ok(Some(c)) if c.total_len() < u64::from(min_len) => (
                    c.head,
                    VringError::TooSmall {
                        len: c.total_len(),
                        min: min_len,
                    },
                ),
                Ok(Some(c)) => return Ok(Some(c)),
                Err(PopError {
                    head: Some(head),
                    error,
                }) => (head, error),
                Err(PopError { head: None, error }) => return Err(LinkError::Vring(error)),
            };
            log::debug!("returning a malformed descriptor chain (head {head}) unused: {error}");
            *bad += 1;
            *last = Some(error);
            queue.push_used(mem, head, 0)?;
            *pending = true;
        }
    }
}

impl<M: SharedMemory, E: Environment> Transport for DeviceTransport<M, E> {
    type Memory = M;

    fn memory(&self) -> &M {
        &self.mem
    }

    fn endian(&self) -> Endian {
        self.endian
    }

    fn tx_buffer_size(&self) -> Option<u32> {
        None
    }

    fn rx_buffer_size(&self) -> Option<u32> {
        None
    }

    #[inline]
    fn take_tx(&mut self) -> Result<Option<Buffer>, LinkError> {
        if let Some(b) = self.spare_tx.pop() {
            return Ok(Some(b));
        }
        let chain = Self::pop_good(
            &mut self.tx,
            &self.mem,
            true,
            MIN_DEVICE_TX_BUFFER,
            (&mut self.bad_chains, &mut self.last_bad_chain),
            &mut self.notify_tx,
        )?;
        Ok(chain.map(|c| Buffer {
            id: c.head as u32,
            len: (c.total_len().min(u32::MAX as u64) as u32).min(self.tx_limit),
            chain: c,
        }))
    }

    fn send_tx(&mut self, buf: Buffer, len: u32) -> Result<(), LinkError> {
        self.tx
            .push_used(&self.mem, buf.chain.head, len.min(buf.len))?;
        self.notify_tx = true;
        Ok(())
    }

    fn release_tx(&mut self, buf: Buffer) {
        self.spare_tx.push(buf);
    }

    #[inline]
    fn take_rx(&mut self) -> Result<Option<Buffer>, LinkError> {
        let chain = Self::pop_good(
            &mut self.rx,
            &self.mem,
            false,
            0,
            (&mut self.bad_chains, &mut self.last_bad_chain),
            &mut self.notify_rx,
        )?;
        Ok(chain.map(|c| Buffer {
            id: c.head as u32,
            len: c.total_len().min(u32::MAX as u64) as u32,
            chain: c,
        }))
    }

    fn release_rx(&mut self, buf: Buffer) -> Result<(), LinkError> {
        // rpmsg-compat: a consumed driver-to-device buffer goes back with used.len = the
        // chain's readable length, not the 0 bytes the device wrote. OpenAMP's driver role
        // posts each transmit buffer whole, recycles transmit buffers from this used ring
        // before fresh ones and takes used.len as the buffer's size (with 0 it computes a
        // payload room of -16 and sends len 0xFFF0); Linux's virtio_rpmsg_bus ignores it.
        // Malformed chains (`pop_good`) stay at 0: they have no length worth trusting.
        self.rx.push_used(&self.mem, buf.chain.head, buf.len)?;
        self.notify_rx = true;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LinkError> {
        if self.busy_poll {
            // The driver polls: no interrupt, and no decision either (the next one after
            // busy-poll ends covers everything used meanwhile).
            self.notify_tx = false;
            self.notify_rx = false;
            return Ok(());
        }
        if self.notify_tx {
            self.notify_tx = false;
            if self.tx.should_notify(&self.mem)? {
                self.env.notify(RX_QUEUE);
            }
        }
        if self.notify_rx {
            self.notify_rx = false;
            if self.rx.should_notify(&self.mem)? {
                self.env.notify(TX_QUEUE);
            }
        }
        Ok(())
    }

    fn want_tx_notifications(&mut self, on: bool) -> Result<bool, LinkError> {
        if on && self.busy_poll {
            // No kicks in busy-poll mode: the caller polls for a posted buffer.
            Ok(true)
        } else if on {
            Ok(self.tx.enable_kicks(&self.mem)? || !self.spare_tx.is_empty())
        } else {
            self.tx.disable_kicks(&self.mem)?;
            Ok(false)
        }
    }

    fn environment(&mut self) -> &mut dyn Environment {
        &mut self.env
    }

    fn busy_poll(&self) -> bool {
        self.busy_poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Loopback, LoopbackDevice, LoopbackDriver};

    /// Both roles on one memory, without EVENT_IDX.
    fn pair_of(format: RingFormat) -> (LoopbackDriver, LoopbackDevice) {
        let (host, remote, _, _) = Loopback {
            event_idx: false,
            format,
            ..Loopback::default()
        }
        .transports();
        (host, remote)
    }

    #[test]
    fn the_negotiated_features_pick_the_ring_format() {
        use crate::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RPMSG_F_NS};
        assert_eq!(RingFormat::default(), RingFormat::Split);
        assert_eq!(
            RingFormat::from_features(VIRTIO_F_VERSION_1 | VIRTIO_RPMSG_F_NS),
            RingFormat::Split
        );
        assert_eq!(
            RingFormat::from_features(VIRTIO_F_VERSION_1 | VIRTIO_F_RING_PACKED),
            RingFormat::Packed
        );
    }

    /// A packed chain the driver broke after posting it (a zero length) goes back used and
    /// empty, is counted, and the link carries the next message.
    #[cfg(feature = "packed-rings")]
    #[test]
    fn a_malformed_packed_chain_goes_back_empty_and_the_link_moves_on() {
        let (mut host, mut remote) = pair_of(RingFormat::Packed);
        let buf = host.take_tx().unwrap().unwrap();
        host.send_tx(buf, 100).unwrap();
        // Descriptor 0 of vq 1 is the one just posted: its length becomes 0.
        let desc = host.layout().tx_ring.desc;
        host.mem.store_u32(desc + 8, 0).unwrap();
        assert_eq!(remote.take_rx().unwrap(), None);
        assert_eq!(remote.bad_chains(), 1);
        assert_eq!(remote.last_bad_chain(), Some(VringError::EmptyBuffer));
        assert_eq!(host.tx.pop_used(&host.mem).unwrap(), Some((buf.id, 0)));
        let next = host.take_tx().unwrap().unwrap();
        host.send_tx(next, 50).unwrap();
        assert_eq!(remote.take_rx().unwrap().map(|b| b.len()), Some(50));
    }

    /// A driver that marks a packed descriptor with the wrong wrap counter breaks the link:
    /// an error, not a chain, and nothing taken.
    #[cfg(feature = "packed-rings")]
    #[test]
    fn a_packed_wrap_counter_lie_is_a_link_error() {
        let (host, mut remote) = pair_of(RingFormat::Packed);
        let desc = host.layout().tx_ring.desc;
        let lie = crate::packed::PACKED_DESC_F_AVAIL | crate::packed::PACKED_DESC_F_USED;
        host.mem.store_u16(desc + 14, lie).unwrap();
        for _ in 0..2 {
            assert_eq!(
                remote.take_rx(),
                Err(LinkError::Vring(VringError::WrapCounter))
            );
        }
        assert_eq!(
            remote.next_avail()[1],
            crate::packed::PackedDeviceQueue::START
        );
    }

    /// A packed ring resumes both positions at one place: a stopping device gives its spare
    /// buffers back (used, empty) and refuses a resume point while it still holds a chain.
    #[cfg(feature = "packed-rings")]
    #[test]
    fn a_packed_resume_point_needs_nothing_outstanding() {
        let (mut host, mut remote) = pair_of(RingFormat::Packed);
        let spare = remote.take_tx().unwrap().unwrap();
        remote.release_tx(spare);
        let out = host.take_tx().unwrap().unwrap();
        host.send_tx(out, 10).unwrap();
        let held = remote.take_rx().unwrap().unwrap();
        assert_eq!(remote.resume_point(), Err(1), "the held message");
        // The spare went back to the driver, used and empty.
        assert_eq!(host.rx.pop_used(&host.mem).unwrap(), Some((spare.id, 0)));
        remote.release_rx(held).unwrap();
        let at = remote.resume_point().unwrap();
        assert_eq!(at, remote.next_avail());
        assert_ne!(at[0], crate::packed::PackedDeviceQueue::START, "one taken");
    }

    /// Split rings keep their used index in the ring: any moment is a resume point.
    #[test]
    fn a_split_resume_point_is_the_next_avail_index() {
        let (_host, mut remote) = pair_of(RingFormat::Split);
        let spare = remote.take_tx().unwrap().unwrap();
        remote.release_tx(spare);
        assert_eq!(remote.resume_point(), Ok([1, 0]));
    }

    /// rpmsg-compat: a consumed driver-to-device buffer comes back with its readable length
    /// (OpenAMP's driver sizes recycled transmit buffers by it), not with 0.
    #[test]
    fn device_returns_driver_buffers_with_their_readable_length() {
        for format in [RingFormat::Split, RingFormat::Packed] {
            let (mut host, mut remote) = pair_of(format);
            let buf = host.take_tx().unwrap().unwrap();
            host.send_tx(buf, 100).unwrap();
            let got = remote.take_rx().unwrap().unwrap();
            assert_eq!(got.len(), 100);
            remote.release_rx(got).unwrap();
            assert_eq!(
                host.tx.pop_used(&host.mem).unwrap(),
                Some((buf.id, 100)),
                "used length of a consumed transmit buffer ({format:?})"
            );
        }
    }

    /// The OpenAMP-style driver posts whole buffers and, once the device returns them whole,
    /// sends in recycled buffers of full size.
    #[cfg(feature = "testing")]
    #[test]
    fn openamp_rule_recycles_used_buffers_first_at_their_used_length() {
        let (mut host, mut remote) = pair_of(RingFormat::Split);
        host.set_openamp_tx_rule(true);
        let first = host.take_tx().unwrap().unwrap();
        host.send_tx(first, 20).unwrap();
        let got = remote.take_rx().unwrap().unwrap();
        assert_eq!(got.len(), 512, "posted whole");
        remote.release_rx(got).unwrap();
        let again = host.take_tx().unwrap().unwrap();
        assert_eq!((again.id, again.len()), (first.id, 512), "recycled first");
    }
}
