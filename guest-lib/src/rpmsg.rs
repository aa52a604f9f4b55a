//! The RPMsg engine: endpoints, addresses, name service, sending and receiving.
//!
//! [`Rpmsg`] is sans-IO: it drives a [`Transport`] (which moves buffers over the vrings of
//! one virtio-rpmsg device, in either role) and never opens a socket, spawns a thread or reads
//! a clock of its own. Receiving (in `receive.rs`) is pull-style: [`Rpmsg::next_event`]
//! returns what the peer sent and never re-enters its caller; [`Rpmsg::poll`] hands the same
//! events to a [`Handler`], the Rust form of OpenAMP's endpoint and name-service callbacks.
//!
//! The API follows OpenAMP's: `create_ept`, `destroy_ept`, `send`, `sendto`,
//! `send_offchannel_raw`, `trysend`, `trysendto`, `is_ept_ready`, zero-copy transmit buffers
//! (`get_tx_payload_buffer`, `send_nocopy`, `release_tx_buffer`) and held receive buffers
//! (`hold_rx`, `release_rx`). Behaviour matches upstream Linux where the two differ on the
//! wire: oversize payloads are refused (never truncated), dynamic addresses start at 1024 and
//! are the lowest free one.

use crate::mem::SharedMemory;
use crate::transport::{Buffer, LinkError, Transport, copy_buffer};
use crate::wire::{
    ADDR_ANY, Endian, HEADER_LEN, NS_ADDR, NS_NAME_LEN, NameServiceMsg, NsFlags,
    RESERVED_ADDRESSES, encode_header,
};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use hashbrown::HashMap;

/// Default bound on a blocking send waiting for a free buffer (Linux waits 15 s).
pub const DEFAULT_SEND_TIMEOUT_US: u64 = 15_000_000;

/// Sends and buffer returns after which a batch makes its notification decision anyway (see
/// [`Rpmsg::begin_batch`]).
const BATCH_LIMIT: u32 = 32;

/// Dynamic addresses tracked for lowest-free allocation: 1024 .. 1024 + this.
const DYNAMIC_ADDRESSES: u32 = 1 << 20;

/// Why an engine call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint does not know its destination yet (OpenAMP: not ready).
    NotReady,
    /// An address is `ADDR_ANY` where a real one is needed.
    InvalidAddress,
    /// The endpoint handle is stale or was never valid.
    InvalidEndpoint,
    /// The address is taken.
    AddressInUse(u32),
    /// No dynamic address is left.
    NoAddress,
    /// The name is longer than 31 bytes.
    NameTooLong,
    /// No transmit buffer is free now (`trysend`).
    NoBuffer,
    /// No transmit buffer came free before the send timeout.
    Timeout,
    /// The peer is gone (its environment says so): nothing will ever come free.
    PeerGone,
    /// The payload does not fit in one buffer; it was not sent.
    TooLarge {
        /// Payload bytes asked for.
        len: usize,
        /// Payload bytes one buffer takes.
        max: usize,
    },
    /// A held buffer or transmit buffer was given back twice or is not ours.
    UnknownBuffer,
    /// The link failed (the peer broke the ring protocol or memory is unreachable).
    Link(LinkError),
}

impl From<LinkError> for Error {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::UnknownBuffer => Error::UnknownBuffer,
            e => Error::Link(e),
        }
    }
}

impl From<crate::mem::MemError> for Error {
    fn from(e: crate::mem::MemError) -> Self {
        Error::Link(LinkError::Memory(e))
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::NotReady => write!(f, "endpoint has no destination yet"),
            Error::InvalidAddress => write!(f, "address is ANY where a real address is needed"),
            Error::InvalidEndpoint => write!(f, "no such endpoint"),
            Error::AddressInUse(a) => write!(f, "address {a} is in use"),
            Error::NoAddress => write!(f, "no free dynamic address"),
            Error::NameTooLong => write!(f, "name longer than 31 bytes"),
            Error::NoBuffer => write!(f, "no transmit buffer free"),
            Error::Timeout => write!(f, "timed out waiting for a transmit buffer"),
            Error::PeerGone => write!(f, "the peer is gone"),
            Error::TooLarge { len, max } => {
                write!(f, "payload of {len} bytes exceeds the {max} a buffer takes")
            }
            Error::UnknownBuffer => write!(f, "buffer is not held by this engine"),
            Error::Link(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for Error {}

/// Settings of one rpmsg device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// VIRTIO_RPMSG_F_NS was negotiated: announce endpoints, handle announcements at 53.
    pub name_service: bool,
    /// How long a blocking send waits for a free buffer, in microseconds.
    pub send_timeout_us: u64,
    /// Bind an endpoint without destination to the source of the first message it receives
    /// (OpenAMP does; a remote learns Linux's address this way).
    pub bind_on_first_message: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name_service: true,
            send_timeout_us: DEFAULT_SEND_TIMEOUT_US,
            bind_on_first_message: true,
        }
    }
}

/// A handle to an endpoint. Stale handles (of destroyed endpoints) are refused, never
/// mistaken for a newer endpoint in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EptId {
    index: u32,
    generation: u32,
}

/// An endpoint's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    name: [u8; NS_NAME_LEN],
    name_len: u8,
    addr: u32,
    dest: u32,
    announced: bool,
}

impl Endpoint {
    /// The endpoint's name (may be empty).
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len as usize]
    }
    /// Local address.
    pub fn addr(&self) -> u32 {
        self.addr
    }
    /// Destination address, `ADDR_ANY` while unknown.
    pub fn dest(&self) -> u32 {
        self.dest
    }
    /// Whether this endpoint was announced to the peer.
    pub fn announced(&self) -> bool {
        self.announced
    }
}

/// A transmit buffer borrowed for zero-copy sending; send it with [`Rpmsg::send_nocopy`] or
/// give it back with [`Rpmsg::release_tx_buffer`].
#[derive(Debug)]
#[must_use = "a borrowed transmit buffer is lost until sent or released"]
pub struct TxBuffer {
    buf: Buffer,
}

impl TxBuffer {
    /// Payload bytes this buffer takes.
    pub fn capacity(&self) -> usize {
        (self.buf.len() as usize).saturating_sub(HEADER_LEN)
    }

    /// Where the payload lives, for writing in place: segments of the buffer after the
    /// header. Most buffers are one segment.
    pub fn payload_address(&self) -> Option<u64> {
        let first = self.buf.segments().first()?;
        (first.len as usize > HEADER_LEN).then_some(first.addr + HEADER_LEN as u64)
    }
}

/// Counters of one engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages delivered to endpoints.
    pub received: u64,
    /// Messages sent (including name-service messages).
    pub sent: u64,
    /// Incoming buffers dropped (see [`Dropped`]).
    pub dropped: u64,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    ept: Option<Endpoint>,
}

/// Lowest-free allocation over the dynamic address range.
#[derive(Debug, Default)]
struct AddressBitmap {
    words: Vec<u64>,
    /// No free bit lies in a word below this one.
    first_candidate: usize,
}

impl AddressBitmap {
    fn index(addr: u32) -> Option<usize> {
        let i = addr.checked_sub(RESERVED_ADDRESSES)?;
        (i < DYNAMIC_ADDRESSES).then_some(i as usize)
    }

    fn set(&mut self, addr: u32, used: bool) {
        let Some(i) = Self::index(addr) else { return };
        let (w, b) = (i / 64, i % 64);
        if w >= self.words.len() {
            if !used {
                return;
            }
            self.words.resize(w + 1, 0);
        }
        if used {
            self.words[w] |= 1 << b;
        } else {
            self.words[w] &= !(1 << b);
            self.first_candidate = self.first_candidate.min(w);
        }
    }

    fn lowest_free(&mut self) -> Option<u32> {
        let mut w = self.first_candidate;
        while w < self.words.len() && self.words[w] == u64::MAX {
            w += 1;
        }
        self.first_candidate = w;
        let bit = self
            .words
            .get(w)
            .map_or(0, |word| (!word).trailing_zeros() as usize);
        let i = w * 64 + bit;
        (i < DYNAMIC_ADDRESSES as usize).then(|| RESERVED_ADDRESSES + i as u32)
    }
}

/// The RPMsg engine of one virtio-rpmsg device, in either role.
///
/// Two engines over one block of memory, a host (driver role) and a remote (device role);
/// `examples/loopback_echo.rs` is the same, commented, as a program:
///
/// ```
/// use std::sync::Arc;
/// use vamp_rpmsg::mem::HeapMemory;
/// use vamp_rpmsg::rpmsg::{Config, Handler, NsEvent, Received, Rpmsg};
/// use vamp_rpmsg::transport::{
///     BufferConfig, DeviceTransport, DriverLayout, DriverTransport, Environment, Transport,
/// };
/// use vamp_rpmsg::vring::VringLayout;
/// use vamp_rpmsg::wire::{ADDR_ANY, Endian};
///
/// // Both engines run in this thread and poll in turn: no kicks, no waits.
/// #[derive(Default)]
/// struct Polled(u64);
/// impl Environment for Polled {
///     fn notify(&mut self, _queue: u16) {}
///     fn now_us(&mut self) -> u64 {
///         self.0 += 1;
///         self.0
///     }
/// }
///
/// // Records announcements and messages.
/// #[derive(Default)]
/// struct Seen {
///     names: Vec<(Vec<u8>, u32)>,
///     messages: Vec<Vec<u8>>,
/// }
/// impl<T: Transport> Handler<T> for Seen {
///     fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
///         self.messages.push(rpmsg.payload(msg).unwrap());
///     }
///     fn on_name_service(&mut self, _: &mut Rpmsg<T>, event: NsEvent<'_>) {
///         if let NsEvent::Created { name, addr, .. } = event {
///             self.names.push((name.to_vec(), addr));
///         }
///     }
/// }
///
/// let mem = Arc::new(HeapMemory::new(0x40000, 0));
/// let buffers = BufferConfig::default();
/// let layout = DriverLayout {
///     rx_ring: VringLayout::legacy(0x4000, 64, 0x1000).unwrap(),
///     tx_ring: VringLayout::legacy(0x8000, 64, 0x1000).unwrap(),
///     pool_addr: 0x10000,
///     pool_len: 0x30000,
///     buffers,
/// };
/// let driver =
///     DriverTransport::new(mem.clone(), Polled::default(), layout, Endian::Little, true).unwrap();
/// let device = DeviceTransport::new(
///     mem, Polled::default(), layout.rx_ring, layout.tx_ring, Endian::Little, true,
///     buffers.r2h_buf_size,
/// )
/// .unwrap();
/// let mut host = Rpmsg::new(driver, Config::default());
/// let mut remote = Rpmsg::new(device, Config::default());
///
/// // The remote's named endpoint is announced; the host binds to it and sends.
/// remote.create_ept(b"svc", ADDR_ANY, ADDR_ANY).unwrap();
/// let mut at_host = Seen::default();
/// host.poll(&mut at_host).unwrap();
/// let (name, addr) = at_host.names[0].clone();
/// assert_eq!(name, b"svc");
/// let ept = host.create_ept(b"svc", ADDR_ANY, addr).unwrap();
/// host.send(ept, b"ping").unwrap();
///
/// let mut at_remote = Seen::default();
/// remote.poll(&mut at_remote).unwrap();
/// assert_eq!(at_remote.messages, [b"ping".to_vec()]);
/// ```
#[derive(Debug)]
pub struct Rpmsg<T: Transport> {
    transport: T,
    config: Config,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    by_addr: HashMap<u32, u32>,
    by_name: HashMap<[u8; NS_NAME_LEN], Vec<u32>>,
    dynamic: AddressBitmap,
    pending_ns: VecDeque<NameServiceMsg>,
    held_rx: usize,
    /// Open batches ([`begin_batch`](Self::begin_batch)): while any is open, sends and
    /// releases publish their buffers but leave the notification decision to the batch's end.
    batches: u32,
    /// Sends and releases since the last notification decision, while batched.
    batched_ops: u32,
    stats: Stats,
}

impl<T: Transport> Rpmsg<T> {
    /// Starts an engine over a ready transport.
    pub fn new(transport: T, config: Config) -> Self {
        Rpmsg {
            transport,
            config,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_addr: HashMap::new(),
            by_name: HashMap::new(),
            dynamic: AddressBitmap::default(),
            pending_ns: VecDeque::new(),
            held_rx: 0,
            batches: 0,
            batched_ops: 0,
            stats: Stats::default(),
        }
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Takes the engine apart, giving back its transport and settings (to drive the same
    /// rings with another engine, e.g. the hub's).
    pub fn into_parts(self) -> (T, Config) {
        (self.transport, self.config)
    }

    /// The transport, mutably (to wait on its environment, for instance).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes the blocking-send bound.
    pub fn set_send_timeout_us(&mut self, us: u64) {
        self.config.send_timeout_us = us;
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Received buffers currently held by the application.
    pub fn held_rx_count(&self) -> usize {
        self.held_rx
    }

    /// Name-service messages waiting for a transmit buffer.
    pub fn pending_announcements(&self) -> usize {
        self.pending_ns.len()
    }

    /// Number of endpoints.
    pub fn endpoint_count(&self) -> usize {
        self.by_addr.len()
    }

    fn endian(&self) -> Endian {
        self.transport.endian()
    }

    // ----- endpoints -------------------------------------------------------------------

    /// Creates an endpoint (OpenAMP `rpmsg_create_ept`).
    ///
    /// `src` = `ADDR_ANY` takes the lowest free dynamic address (from 1024). With the name
    /// service on, a named endpoint without destination is announced to the peer.
    pub fn create_ept(&mut self, name: &[u8], src: u32, dest: u32) -> Result<EptId, Error> {
        let announce = self.config.name_service && !name.is_empty() && dest == ADDR_ANY;
        self.create_ept_announcing(name, src, dest, announce)
    }

    /// Creates an endpoint and says whether to announce it, whatever its destination (Linux
    /// announces every channel it creates locally).
    pub fn create_ept_announcing(
        &mut self,
        name: &[u8],
        src: u32,
        dest: u32,
        announce: bool,
    ) -> Result<EptId, Error> {
        if name.len() >= NS_NAME_LEN || name.contains(&0) {
            return Err(Error::NameTooLong);
        }
        let addr = if src == ADDR_ANY {
            self.dynamic.lowest_free().ok_or(Error::NoAddress)?
        } else {
            if self.by_addr.contains_key(&src) || (self.config.name_service && src == NS_ADDR) {
                return Err(Error::AddressInUse(src));
            }
            src
        };
        let mut field = [0u8; NS_NAME_LEN];
        field[..name.len()].copy_from_slice(name);
        let ept = Endpoint {
            name: field,
            name_len: name.len() as u8,
            addr,
            dest,
            announced: announce && self.config.name_service,
        };
        let index = match self.free_slots.pop() {
            Some(i) => {
                self.slots[i as usize].ept = Some(ept);
                i
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    ept: Some(ept),
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.dynamic.set(addr, true);
        self.by_addr.insert(addr, index);
        self.by_name.entry(field).or_default().push(index);
        let id = EptId {
            index,
            generation: self.slots[index as usize].generation,
        };
        if announce && self.config.name_service {
            self.pending_ns
                .push_back(NameServiceMsg::new(name, addr, NsFlags::Create));
            self.flush_announcements()?;
        }
        Ok(id)
    }

    /// Announces an existing endpoint (name-service create), if not done yet.
    pub fn announce(&mut self, id: EptId) -> Result<(), Error> {
        if !self.config.name_service {
            return Ok(());
        }
        let ept = self.slot_mut(id)?;
        if ept.announced || ept.name_len == 0 {
            return Ok(());
        }
        ept.announced = true;
        let msg = NameServiceMsg::new(ept.name(), ept.addr, NsFlags::Create);
        self.pending_ns.push_back(msg);
        self.flush_announcements()
    }

    /// Names an existing endpoint `name` and announces it (name-service create), unless it was
    /// announced already. For an endpoint that first served without a name and later stands
    /// for a named one (the hub's reply proxy for an address its guest then announces at):
    /// the same address, so the peer's replies keep reaching it.
    pub fn announce_as(&mut self, id: EptId, name: &[u8]) -> Result<(), Error> {
        if name.len() >= NS_NAME_LEN || name.contains(&0) {
            return Err(Error::NameTooLong);
        }
        let ept = self.slot_mut(id)?;
        if ept.announced {
            return Ok(());
        }
        let old = ept.name;
        let mut field = [0u8; NS_NAME_LEN];
        field[..name.len()].copy_from_slice(name);
        ept.name = field;
        ept.name_len = name.len() as u8;
        if let Some(list) = self.by_name.get_mut(&old) {
            list.retain(|&i| i != id.index);
            if list.is_empty() {
                self.by_name.remove(&old);
            }
        }
        self.by_name.entry(field).or_default().push(id.index);
        self.announce(id)
    }

    /// Destroys an endpoint (OpenAMP `rpmsg_destroy_ept`); an announced one is withdrawn
    /// from the peer with a name-service destroy.
    pub fn destroy_ept(&mut self, id: EptId) -> Result<(), Error> {
        self.slot_mut(id)?;
        let slot = &mut self.slots[id.index as usize];
        let ept = slot.ept.take().ok_or(Error::InvalidEndpoint)?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free_slots.push(id.index);
        self.by_addr.remove(&ept.addr);
        self.dynamic.set(ept.addr, false);
        if let Some(list) = self.by_name.get_mut(&ept.name) {
            list.retain(|&i| i != id.index);
            if list.is_empty() {
                self.by_name.remove(&ept.name);
            }
        }
        if ept.announced {
            // An announcement still queued need not go out at all.
            let before = self.pending_ns.len();
            self.pending_ns
                .retain(|m| !(m.addr == ept.addr && m.flags == NsFlags::Create));
            if self.pending_ns.len() == before {
                self.pending_ns.push_back(NameServiceMsg::new(
                    ept.name(),
                    ept.addr,
                    NsFlags::Destroy,
                ));
            }
            self.flush_announcements()?;
        }
        Ok(())
    }

    /// The endpoint behind a handle.
    pub fn endpoint(&self, id: EptId) -> Option<&Endpoint> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.ept.as_ref()
    }

    /// The endpoint at a local address.
    #[inline]
    pub fn endpoint_by_addr(&self, addr: u32) -> Option<EptId> {
        let &index = self.by_addr.get(&addr)?;
        Some(EptId {
            index,
            generation: self.slots[index as usize].generation,
        })
    }

    /// Endpoints with a name.
    pub fn endpoints_named<'a>(&'a self, name: &[u8]) -> impl Iterator<Item = EptId> + 'a {
        let key = NameServiceMsg::new(name, 0, NsFlags::Create);
        self.by_name
            .get(key.name_field())
            .into_iter()
            .flatten()
            .map(move |&index| EptId {
                index,
                generation: self.slots[index as usize].generation,
            })
    }

    /// Sets or clears an endpoint's destination.
    pub fn set_dest(&mut self, id: EptId, dest: u32) -> Result<(), Error> {
        self.slot_mut(id)?.dest = dest;
        Ok(())
    }

    /// Whether the endpoint knows its destination (OpenAMP `is_rpmsg_ept_ready`).
    pub fn is_ept_ready(&self, id: EptId) -> bool {
        self.endpoint(id)
            .is_some_and(|e| e.dest != ADDR_ANY && e.addr != ADDR_ANY)
    }

    fn slot_mut(&mut self, id: EptId) -> Result<&mut Endpoint, Error> {
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .ok_or(Error::InvalidEndpoint)?;
        if slot.generation != id.generation {
            return Err(Error::InvalidEndpoint);
        }
        slot.ept.as_mut().ok_or(Error::InvalidEndpoint)
    }

    // ----- sending ---------------------------------------------------------------------

    /// Payload bytes one transmit buffer takes, where the transport knows it in advance.
    pub fn max_payload(&self) -> Option<usize> {
        self.transport
            .tx_buffer_size()
            .map(|s| (s as usize).saturating_sub(HEADER_LEN))
    }

    /// Sends to the endpoint's destination, waiting (bounded) for a buffer.
    pub fn send(&mut self, id: EptId, data: &[u8]) -> Result<usize, Error> {
        let (src, dst) = self.route(id, None)?;
        self.send_offchannel_raw(src, dst, data, true)
    }

    /// Sends to `dst`, waiting (bounded) for a buffer.
    pub fn sendto(&mut self, id: EptId, dst: u32, data: &[u8]) -> Result<usize, Error> {
        let (src, dst) = self.route(id, Some(dst))?;
        self.send_offchannel_raw(src, dst, data, true)
    }

    /// Sends to the endpoint's destination, failing at once with [`Error::NoBuffer`] when no
    /// buffer is free.
    pub fn trysend(&mut self, id: EptId, data: &[u8]) -> Result<usize, Error> {
        let (src, dst) = self.route(id, None)?;
        self.send_offchannel_raw(src, dst, data, false)
    }

    /// Sends to `dst`, failing at once when no buffer is free.
    pub fn trysendto(&mut self, id: EptId, dst: u32, data: &[u8]) -> Result<usize, Error> {
        let (src, dst) = self.route(id, Some(dst))?;
        self.send_offchannel_raw(src, dst, data, false)
    }

    fn route(&self, id: EptId, dst: Option<u32>) -> Result<(u32, u32), Error> {
        let ept = self.endpoint(id).ok_or(Error::InvalidEndpoint)?;
        let dst = dst.unwrap_or(ept.dest);
        if dst == ADDR_ANY {
            return Err(if self.endpoint(id).is_some() {
                Error::NotReady
            } else {
                Error::InvalidEndpoint
            });
        }
        Ok((ept.addr, dst))
    }

    /// Sends `data` from any `src` to `dst` (OpenAMP `rpmsg_send_offchannel_raw`). With
    /// `wait`, waits up to the send timeout for a buffer. Returns the payload length sent.
    pub fn send_offchannel_raw(
        &mut self,
        src: u32,
        dst: u32,
        data: &[u8],
        wait: bool,
    ) -> Result<usize, Error> {
        if src == ADDR_ANY || dst == ADDR_ANY {
            return Err(Error::InvalidAddress);
        }
        if let Some(max) = self.max_payload()
            && data.len() > max
        {
            return Err(Error::TooLarge {
                len: data.len(),
                max,
            });
        }
        // Announcements go first, so a peer never hears from an endpoint before its name.
        self.flush_announcements()?;
        let buf = self.take_tx(wait)?;
        self.fill_and_send(buf, src, dst, data)?;
        Ok(data.len())
    }

    fn fill_and_send(&mut self, buf: Buffer, src: u32, dst: u32, data: &[u8]) -> Result<(), Error> {
        let max = (buf.len() as usize)
            .saturating_sub(HEADER_LEN)
            .min(u16::MAX as usize);
        if data.len() > max {
            self.transport.release_tx(buf);
            return Err(Error::TooLarge {
                len: data.len(),
                max,
            });
        }
        let header = encode_header(self.endian(), src, dst, data.len() as u16);
        let mem = self.transport.memory();
        let written = buf
            .write(mem, 0, &header)
            .and_then(|()| buf.write(mem, HEADER_LEN, data));
        if let Err(e) = written {
            self.transport.release_tx(buf);
            return Err(e.into());
        }
        self.transport
            .send_tx(buf, (HEADER_LEN + data.len()) as u32)?;
        self.stats.sent += 1;
        self.flush_unless_batched()?;
        Ok(())
    }

    fn take_tx(&mut self, wait: bool) -> Result<Buffer, Error> {
        if let Some(b) = self.transport.take_tx()? {
            return Ok(b);
        }
        if !wait {
            return Err(Error::NoBuffer);
        }
        let timeout = self.config.send_timeout_us;
        let deadline = self
            .transport
            .environment()
            .now_us()
            .saturating_add(timeout);
        // The peer may need to hear of what this batch already sent before it can return a
        // buffer.
        self.transport.flush()?;
        self.transport.want_tx_notifications(true)?;
        // In busy-poll mode no notification will come: spin on the ring instead of waiting.
        let busy_poll = self.transport.busy_poll();
        let result = loop {
            match self.transport.take_tx() {
                Ok(Some(b)) => break Ok(b),
                Ok(None) => {}
                Err(e) => break Err(e.into()),
            }
            let env = self.transport.environment();
            if env.peer_gone() {
                break Err(Error::PeerGone);
            }
            let now = env.now_us();
            if now >= deadline {
                break Err(Error::Timeout);
            }
            if busy_poll {
                core::hint::spin_loop();
            } else {
                env.wait(deadline - now);
            }
        };
        self.transport.want_tx_notifications(false)?;
        result
    }

    /// Sends queued name-service messages while buffers are free; the rest wait for the next
    /// [`poll`](Self::poll) or send.
    ///
    /// Every send calls it: the usual case, nothing queued, is an inlined check.
    #[inline]
    pub fn flush_announcements(&mut self) -> Result<(), Error> {
        if self.pending_ns.is_empty() {
            return Ok(());
        }
        self.send_announcements()
    }

    fn send_announcements(&mut self) -> Result<(), Error> {
        while let Some(msg) = self.pending_ns.front().copied() {
            let Some(buf) = self.transport.take_tx()? else {
                break;
            };
            let src = msg.addr;
            let bytes = msg.encode(self.endian());
            self.fill_and_send(buf, src, NS_ADDR, &bytes)?;
            self.pending_ns.pop_front();
        }
        Ok(())
    }

    /// Sends a payload that lives in another memory (a message received on another link)
    /// from `src` to `dst`, copying it once, straight into our transmit buffer.
    pub fn send_copy_from<S: SharedMemory + ?Sized>(
        &mut self,
        src: u32,
        dst: u32,
        from_mem: &S,
        payload: &PayloadRef,
        wait: bool,
    ) -> Result<usize, Error> {
        if src == ADDR_ANY || dst == ADDR_ANY {
            return Err(Error::InvalidAddress);
        }
        let len = payload.len();
        if let Some(max) = self.max_payload().filter(|&max| len > max) {
            return Err(Error::TooLarge { len, max });
        }
        self.flush_announcements()?;
        let buf = self.take_tx(wait)?;
        let max = (buf.len() as usize).saturating_sub(HEADER_LEN);
        if len > max {
            self.transport.release_tx(buf);
            return Err(Error::TooLarge { len, max });
        }
        let header = encode_header(self.endian(), src, dst, len as u16);
        let mem = self.transport.memory();
        let written = buf.write(mem, 0, &header).and_then(|()| {
            copy_buffer(
                from_mem,
                &payload.buf,
                HEADER_LEN,
                mem,
                &buf,
                HEADER_LEN,
                len,
            )
        });
        if let Err(e) = written {
            self.transport.release_tx(buf);
            return Err(e.into());
        }
        self.transport.send_tx(buf, (HEADER_LEN + len) as u32)?;
        self.stats.sent += 1;
        self.flush_unless_batched()?;
        Ok(len)
    }

    // ----- zero copy -------------------------------------------------------------------

    /// Borrows a transmit buffer to fill in place (OpenAMP `rpmsg_get_tx_payload_buffer`).
    pub fn get_tx_payload_buffer(&mut self, wait: bool) -> Result<TxBuffer, Error> {
        Ok(TxBuffer {
            buf: self.take_tx(wait)?,
        })
    }

    /// Writes into a borrowed transmit buffer's payload at `offset`.
    pub fn write_tx_payload(&self, tx: &TxBuffer, offset: usize, data: &[u8]) -> Result<(), Error> {
        let end = offset.saturating_add(data.len());
        if end > tx.capacity() {
            return Err(Error::TooLarge {
                len: end,
                max: tx.capacity(),
            });
        }
        tx.buf
            .write(self.transport.memory(), HEADER_LEN + offset, data)?;
        Ok(())
    }

    /// Sends a borrowed buffer holding `len` payload bytes from `src` to `dst`, without
    /// copying (OpenAMP `rpmsg_send_offchannel_nocopy`).
    pub fn send_offchannel_nocopy(
        &mut self,
        src: u32,
        dst: u32,
        tx: TxBuffer,
        len: usize,
    ) -> Result<usize, Error> {
        if src == ADDR_ANY || dst == ADDR_ANY {
            self.transport.release_tx(tx.buf);
            return Err(Error::InvalidAddress);
        }
        if len > tx.capacity() || len > u16::MAX as usize {
            let max = tx.capacity();
            self.transport.release_tx(tx.buf);
            return Err(Error::TooLarge { len, max });
        }
        let header = encode_header(self.endian(), src, dst, len as u16);
        if let Err(e) = tx.buf.write(self.transport.memory(), 0, &header) {
            self.transport.release_tx(tx.buf);
            return Err(e.into());
        }
        self.transport.send_tx(tx.buf, (HEADER_LEN + len) as u32)?;
        self.stats.sent += 1;
        self.flush_unless_batched()?;
        Ok(len)
    }

    /// Sends a borrowed buffer to the endpoint's destination (OpenAMP `rpmsg_send_nocopy`).
    pub fn send_nocopy(&mut self, id: EptId, tx: TxBuffer, len: usize) -> Result<usize, Error> {
        match self.route(id, None) {
            Ok((src, dst)) => self.send_offchannel_nocopy(src, dst, tx, len),
            Err(e) => {
                self.transport.release_tx(tx.buf);
                Err(e)
            }
        }
    }

    /// Sends a borrowed buffer to `dst` (OpenAMP `rpmsg_sendto_nocopy`).
    pub fn sendto_nocopy(
        &mut self,
        id: EptId,
        dst: u32,
        tx: TxBuffer,
        len: usize,
    ) -> Result<usize, Error> {
        match self.route(id, Some(dst)) {
            Ok((src, dst)) => self.send_offchannel_nocopy(src, dst, tx, len),
            Err(e) => {
                self.transport.release_tx(tx.buf);
                Err(e)
            }
        }
    }

    /// Gives back a borrowed buffer unsent (OpenAMP `rpmsg_release_tx_buffer`).
    pub fn release_tx_buffer(&mut self, tx: TxBuffer) {
        self.transport.release_tx(tx.buf);
    }

    /// Opens a batch: until the matching [`end_batch`](Self::end_batch), sends and buffer
    /// releases publish their buffers at once but make no notification decision; `end_batch`
    /// makes one for all of them (with EVENT_IDX, at most one interrupt for the batch; a long batch
    /// decides every 32 sends and returns, so that a busy peer cannot stretch it without end). Saves
    /// a memory barrier and a look at the peer's event index per message. [`poll`](Self::poll)
    /// batches what its handler sends by itself; this is for sends into this engine made while
    /// another one polls (the hub, forwarding between links). A blocking send that has to wait
    /// for a buffer notifies first, so a batch never holds back what the peer needs.
    pub fn begin_batch(&mut self) {
        self.batches += 1;
    }

    /// Closes a batch opened by [`begin_batch`](Self::begin_batch); the last one to close
    /// notifies the peer if what was sent needs it.
    pub fn end_batch(&mut self) -> Result<(), Error> {
        self.batches = self.batches.saturating_sub(1);
        self.flush_unless_batched()
    }

    #[inline]
    fn flush_unless_batched(&mut self) -> Result<(), Error> {
        if self.batches > 0 {
            // A batch is bounded: a peer that keeps the rings busy could otherwise keep one
            // poll going for ever, and a decision over more than half the index space is
            // meaningless (EVENT_IDX compares 16-bit distances).
            self.batched_ops += 1;
            if self.batched_ops < BATCH_LIMIT {
                return Ok(());
            }
        }
        self.batched_ops = 0;
        self.transport.flush()?;
        Ok(())
    }
}

mod receive;
pub use receive::{Dropped, Event, Handler, HeldRx, NameService, NsEvent, PayloadRef, Received};

#[cfg(test)]
mod tests;
