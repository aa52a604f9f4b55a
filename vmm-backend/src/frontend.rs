//! A vhost-user *frontend* that plays a guest in vamp's driver role: the "native guest".
//!
//! [`NativeGuest`] does what QEMU and a guest's virtio-rpmsg driver do together, from a plain
//! process: it connects to a vhost-user rpmsg backend's socket, negotiates features, shares a
//! memfd as guest RAM, lays out both vrings and the buffer pool in it (as Linux's
//! `virtio_rpmsg_bus` does) and runs vamp's engine in the driver role over them. Tests use it
//! to play guests against the backend without a VM; `vamp demo` runs guests as processes.
//!
//! Guest-physical addresses are offsets into the memfd (one region at 0). The vhost-user
//! messages carry, like QEMU's, *frontend virtual* ring addresses; the backend translates them
//! through the memory table.
//!
//! The handshake follows QEMU: `GET_FEATURES`, `GET_PROTOCOL_FEATURES` and
//! `SET_PROTOCOL_FEATURES` (when offered), `SET_OWNER`; then, to start the device,
//! `SET_FEATURES`, `SET_MEM_TABLE`, per queue `SET_VRING_NUM`, `SET_VRING_BASE`,
//! `SET_VRING_ADDR`, `SET_VRING_CALL`, `SET_VRING_KICK`, and `SET_VRING_ENABLE` for both
//! queues when protocol features were negotiated. The rings are initialised before their
//! addresses are sent, so the backend never sees garbage.
//!
//! When the backend offers them, the guest also negotiates `VHOST_USER_PROTOCOL_F_STATUS`
//! (it sets the device status as a driver does: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK
//! once started, 0 to reset, and reads it back with `GET_STATUS`) and
//! `VHOST_USER_PROTOCOL_F_BACKEND_REQ` (a backend channel on which the backend's
//! configuration-change notices arrive). A backend that sets DEVICE_NEEDS_RESET is seen with
//! [`NativeGuest::needs_reset`]; [`NativeGuest::reset`] answers it.

use std::fmt;
use std::io;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vamp_rpmsg::mapped_file::MappedFile;
use vamp_rpmsg::packed::PackedDeviceQueue;
use vamp_rpmsg::rpmsg::{Config, Handler, Rpmsg};
use vamp_rpmsg::transport::{
    BufferConfig, DriverLayout, DriverTransport, Environment, LinkError, RingFormat, Transport,
};
use vamp_rpmsg::virtio::{
    NUM_QUEUES, RX_QUEUE, STATUS_NEEDS_RESET, STATUS_STARTED, TX_QUEUE, VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RPMSG_F_NS,
};
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::Endian;
use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, HandlerResult, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EFD_CLOEXEC, EFD_NONBLOCK, EventFd};

/// VHOST_USER_F_PROTOCOL_FEATURES (bit 30).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Features the backend must offer.
pub const REQUIRED_FEATURES: u64 = VIRTIO_RPMSG_F_NS | VIRTIO_F_VERSION_1;
/// Alignment of each ring block and of the pool inside guest memory.
const PAGE: u64 = 4096;
/// Pause between connection attempts.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// The engine of a native guest.
pub type GuestRpmsg = Rpmsg<GuestTransport>;
/// The transport of a native guest: driver role over its memfd, kicks over eventfds.
pub type GuestTransport = DriverTransport<Arc<MappedFile>, GuestEnv>;

/// Why a native guest could not come up or carry on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrontendError {
    /// Nobody accepted a connection on the socket before the timeout.
    #[error("cannot connect to vhost-user socket {path} within {timeout:?}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// How long we tried.
        timeout: Duration,
        /// The last attempt's error.
        source: io::Error,
    },
    /// A vhost-user request failed or the backend answered nonsense.
    #[error("vhost-user {step} failed: {source}")]
    Protocol {
        /// The request.
        step: &'static str,
        /// What went wrong.
        source: vhost::Error,
    },
    /// The backend does not offer a feature we need.
    #[error("backend offers features {offered:#x} but lacks required {missing:#x}")]
    MissingFeatures {
        /// Everything the backend offered.
        offered: u64,
        /// Required bits it did not offer.
        missing: u64,
    },
    /// A system call for guest memory or an eventfd failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The options cannot work (memory too small for rings and pool, bad queue size...).
    #[error("invalid guest options: {0}")]
    Options(&'static str),
    /// The engine could not set up or use the rings.
    #[error("rpmsg link: {0}")]
    Link(#[from] LinkError),
    /// A device-status request (`SET_STATUS`, `GET_STATUS`) failed or was answered wrongly.
    #[error("vhost-user {step}: {source}")]
    Status {
        /// The request.
        step: &'static str,
        /// What went wrong.
        source: io::Error,
    },
}

fn protocol(step: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |source| FrontendError::Protocol { step, source }
}

/// How a native guest is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestOptions {
    /// Bytes of guest RAM (a multiple of 4096). Default 8 MiB.
    pub mem_size: usize,
    /// Entries per vring (a power of two). Default 256.
    pub queue_size: u16,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX when the backend offers it. Default true.
    pub event_idx: bool,
    /// Buffer sizes (Linux: 512 bytes each way).
    pub buffers: BufferConfig,
    /// How long [`NativeGuest::connect`] keeps retrying. Default 5 s.
    pub connect_timeout: Duration,
    /// Negotiate VIRTIO_F_RING_PACKED when the backend offers it, and drive packed rings (in
    /// the same areas the split layout gives). Default false.
    pub packed: bool,
}

impl Default for GuestOptions {
    fn default() -> Self {
        GuestOptions {
            mem_size: 8 << 20,
            queue_size: 256,
            event_idx: true,
            buffers: BufferConfig::default(),
            connect_timeout: Duration::from_secs(5),
            packed: false,
        }
    }
}

impl GuestOptions {
    /// Where the rings and the pool go in guest memory: vq 0 at 0, vq 1 on the next page
    /// after it, the pool on the page after that, up to the end of memory.
    pub fn driver_layout(&self) -> Result<DriverLayout, FrontendError> {
        if self.mem_size == 0 || !(self.mem_size as u64).is_multiple_of(PAGE) {
            return Err(FrontendError::Options(
                "memory size must be a non-zero multiple of 4096",
            ));
        }
        let bad_ring = |_| FrontendError::Options("queue size must be a power of two up to 32768");
        // Ring sizes are checked by the layout constructor (power of two, at most 32768).
        let ring_bytes = VringLayout::legacy_bytes(self.queue_size, PAGE).next_multiple_of(PAGE);
        let rx_ring = VringLayout::legacy(0, self.queue_size, PAGE).map_err(bad_ring)?;
        let tx_ring = VringLayout::legacy(ring_bytes, self.queue_size, PAGE).map_err(bad_ring)?;
        let pool_addr = 2 * ring_bytes;
        let pool_len = (self.mem_size as u64).saturating_sub(pool_addr);
        let layout = DriverLayout {
            rx_ring,
            tx_ring,
            pool_addr,
            pool_len,
            buffers: self.buffers,
        };
        if layout.pool_bytes() > pool_len {
            return Err(FrontendError::Options(
                "guest memory too small for the rings and buffer pool",
            ));
        }
        Ok(layout)
    }
}

/// A native guest's environment: kicks are writes to the queues' kick eventfds, the
/// backend's interrupts arrive on the call eventfds.
#[derive(Debug)]
pub struct GuestEnv {
    kicks: [EventFd; NUM_QUEUES],
    calls: [EventFd; NUM_QUEUES],
    start: Instant,
    /// Kicks sent.
    pub kicks_sent: u64,
    /// Calls (interrupts) seen.
    pub calls_received: u64,
}

impl GuestEnv {
    fn new() -> Result<Self, FrontendError> {
        let new = || {
            EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(|source| FrontendError::Io {
                what: "eventfd",
                source,
            })
        };
        Ok(GuestEnv {
            kicks: [new()?, new()?],
            calls: [new()?, new()?],
            start: Instant::now(),
            kicks_sent: 0,
            calls_received: 0,
        })
    }

    /// The eventfd the backend signals when it used buffers of `queue`.
    pub fn call_fd(&self, queue: u16) -> Option<&EventFd> {
        self.calls.get(queue as usize)
    }

    /// The eventfd we write to kick `queue`.
    pub fn kick_fd(&self, queue: u16) -> Option<&EventFd> {
        self.kicks.get(queue as usize)
    }

    /// Reads both call eventfds; returns whether either had fired.
    fn drain(&mut self) -> bool {
        let mut fired = false;
        for call in &self.calls {
            // Non-blocking: an error is EAGAIN (nothing pending).
            if let Ok(n) = call.read() {
                fired = true;
                self.calls_received += n;
            }
        }
        fired
    }

    /// Blocks until the backend signals either queue or `timeout` passes; drains both call
    /// eventfds and returns whether any had fired.
    pub fn wait_for_call(&mut self, timeout: Duration) -> bool {
        if self.drain() {
            return true;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut fds = self.calls.each_ref().map(|c| libc::pollfd {
                fd: c.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: `fds` is an array of valid pollfds that outlives the call; the count
            // matches its length.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if r > 0 {
                return self.drain();
            }
            let interrupted =
                r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted;
            if !interrupted || Instant::now() >= deadline {
                return false;
            }
        }
    }
}

impl Environment for GuestEnv {
    fn notify(&mut self, queue: u16) {
        if let Some(kick) = self.kicks.get(queue as usize) {
            // The only failure is a counter about to overflow, which still means "kicked".
            let _ = kick.write(1);
            self.kicks_sent += 1;
        }
    }

    fn wait(&mut self, timeout_us: u64) -> bool {
        self.wait_for_call(Duration::from_micros(timeout_us))
    }

    fn now_us(&mut self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// Counts the backend's configuration-change notices.
#[derive(Debug, Default)]
struct ConfigChanges(AtomicU64);

impl VhostUserFrontendReqHandler for ConfigChanges {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }
}

/// A descriptor number, lent to a call that wants `AsRawFd`.
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A guest played by this process: a vhost-user connection, its RAM, and vamp's engine in the
/// driver role over the device's two vrings.
pub struct NativeGuest {
    frontend: Frontend,
    mem: Arc<MappedFile>,
    layout: DriverLayout,
    event_idx: bool,
    offered: u64,
    acked: u64,
    protocol: VhostUserProtocolFeatures,
    /// Our end of the backend channel (with BACKEND_REQ).
    channel: Option<FrontendReqHandler<ConfigChanges>>,
    config_changes: Arc<ConfigChanges>,
    /// Notices [`NativeGuest::wait_config_change`] has reported.
    config_changes_waited: u64,
    rpmsg: GuestRpmsg,
}

impl fmt::Debug for NativeGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeGuest")
            .field("mem", &self.mem)
            .field("layout", &self.layout)
            .field("offered", &format_args!("{:#x}", self.offered))
            .field("acked", &format_args!("{:#x}", self.acked))
            .field("protocol", &self.protocol)
            .field("rpmsg", &self.rpmsg)
            .finish_non_exhaustive()
    }
}

impl NativeGuest {
    /// Connects to the backend at `socket` (retrying until `opts.connect_timeout`), negotiates
    /// and starts the device, posts the receive buffers and kicks vq 0.
    ///
    /// A backend that accepts but never answers a request blocks this call (as it would
    /// block QEMU): vhost's frontend retries interrupted and timed-out reads itself.
    pub fn connect(socket: &Path, opts: GuestOptions) -> Result<Self, FrontendError> {
        let layout = opts.driver_layout()?;
        let mem = Arc::new(
            MappedFile::anonymous(c"vamp-native-guest", opts.mem_size).map_err(|e| {
                FrontendError::Io {
                    what: e.what,
                    source: e.source,
                }
            })?,
        );
        let stream = connect_with_retry(socket, opts.connect_timeout)?;
        let mut frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);

        let offered = frontend.get_features().map_err(protocol("GET_FEATURES"))?;
        let missing = REQUIRED_FEATURES & !offered;
        if missing != 0 {
            return Err(FrontendError::MissingFeatures { offered, missing });
        }
        let mut acked = REQUIRED_FEATURES;
        let event_idx = opts.event_idx && offered & VIRTIO_RING_F_EVENT_IDX != 0;
        if event_idx {
            acked |= VIRTIO_RING_F_EVENT_IDX;
        }
        if opts.packed && offered & VIRTIO_F_RING_PACKED != 0 {
            acked |= VIRTIO_F_RING_PACKED;
        }
        let mut protocol_acked = VhostUserProtocolFeatures::empty();
        if offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            acked |= VHOST_USER_F_PROTOCOL_FEATURES;
            let offered_protocol = frontend
                .get_protocol_features()
                .map_err(protocol("GET_PROTOCOL_FEATURES"))?;
            // rpmsg has no config space and one queue pair: all we want is acknowledged
            // requests, so a backend's refusal surfaces as an error here, the device status
            // and the backend channel, for DEVICE_NEEDS_RESET.
            protocol_acked = offered_protocol
                & (VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::STATUS
                    | VhostUserProtocolFeatures::BACKEND_REQ
                    | XEN_MMAP);
            frontend
                .set_protocol_features(protocol_acked)
                .map_err(protocol("SET_PROTOCOL_FEATURES"))?;
            if protocol_acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        frontend.set_owner().map_err(protocol("SET_OWNER"))?;
        let config_changes = Arc::new(ConfigChanges::default());
        let mut channel = None;
        if protocol_acked.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            let mut handler = FrontendReqHandler::new(config_changes.clone())
                .map_err(|e| protocol("backend channel")(e.into()))?;
            handler
                .set_reply_ack_flag(protocol_acked.contains(VhostUserProtocolFeatures::REPLY_ACK));
            frontend
                .set_backend_request_fd(&Fd(handler.get_tx_raw_fd()))
                .map_err(protocol("SET_BACKEND_REQ_FD"))?;
            channel = Some(handler);
        }

        let rpmsg = start(&mut frontend, &mem, layout, acked, event_idx)?;
        let mut guest = NativeGuest {
            frontend,
            mem,
            layout,
            event_idx,
            offered,
            acked,
            protocol: protocol_acked,
            channel,
            config_changes,
            config_changes_waited: 0,
            rpmsg,
        };
        guest.set_status(STATUS_STARTED)?;
        Ok(guest)
    }

    /// The engine: create endpoints, send, receive.
    pub fn rpmsg(&mut self) -> &mut GuestRpmsg {
        &mut self.rpmsg
    }

    /// Delivers every received message to `handler` (see [`Rpmsg::poll`]).
    pub fn poll<H: Handler<GuestTransport>>(
        &mut self,
        handler: &mut H,
    ) -> Result<usize, vamp_rpmsg::rpmsg::Error> {
        self.rpmsg.poll(handler)
    }

    /// Blocks until the backend signals either queue or `timeout` passes; drains both call
    /// eventfds and returns whether any had fired.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        self.rpmsg.transport_mut().env_mut().wait_for_call(timeout)
    }

    /// Virtio features acknowledged with `SET_FEATURES`.
    pub fn negotiated_features(&self) -> u64 {
        self.acked
    }

    /// Virtio features the backend offered.
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// Protocol features acknowledged (empty without VHOST_USER_F_PROTOCOL_FEATURES).
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Whether VIRTIO_RING_F_EVENT_IDX is in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Guest RAM, for raw access (tests that play a misbehaving guest).
    pub fn memory(&self) -> &Arc<MappedFile> {
        &self.mem
    }

    /// Where the rings and buffers live, in guest-physical addresses.
    pub fn layout(&self) -> DriverLayout {
        self.layout
    }

    /// The vhost-user connection, for tests that send requests of their own.
    pub fn frontend_mut(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// Restarts the device as a guest whose driver re-probes: writes status 0 (with
    /// `VHOST_USER_PROTOCOL_F_STATUS`), disables and stops both rings (`SET_VRING_ENABLE 0`,
    /// `GET_VRING_BASE`), then sets everything up again from scratch with fresh rings,
    /// buffers, eventfds and engine (endpoints are gone), and sets the status of a started
    /// device. This is what a driver does when the device reports DEVICE_NEEDS_RESET.
    ///
    /// On error the guest is stopped and should be dropped.
    pub fn reset(&mut self) -> Result<(), FrontendError> {
        self.set_status(0)?;
        if self.acked & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            for q in 0..NUM_QUEUES {
                self.frontend
                    .set_vring_enable(q, false)
                    .map_err(protocol("SET_VRING_ENABLE"))?;
            }
        }
        for q in 0..NUM_QUEUES {
            self.frontend
                .get_vring_base(q)
                .map_err(protocol("GET_VRING_BASE"))?;
        }
        self.rpmsg = start(
            &mut self.frontend,
            &self.mem,
            self.layout,
            self.acked,
            self.event_idx,
        )?;
        self.set_status(STATUS_STARTED)
    }

    /// The device status (`GET_STATUS`), or `None` when the backend does not offer
    /// `VHOST_USER_PROTOCOL_F_STATUS`.
    pub fn status(&mut self) -> Result<Option<u8>, FrontendError> {
        if !self.protocol.contains(VhostUserProtocolFeatures::STATUS) {
            return Ok(None);
        }
        let step = "GET_STATUS";
        let mut sock = self.control_socket(step)?;
        let code = u32::from(FrontendReq::GET_STATUS);
        send_raw(&mut sock, code, 0, None).map_err(status_error(step))?;
        let value = recv_u64_reply(&mut sock, code).map_err(status_error(step))?;
        u8::try_from(value)
            .map(Some)
            .map_err(|_| status_error(step)(invalid_reply(format!("status {value:#x}"))))
    }

    /// Whether the backend set DEVICE_NEEDS_RESET (always `false` without
    /// `VHOST_USER_PROTOCOL_F_STATUS`). The driver's answer is [`reset`](Self::reset).
    pub fn needs_reset(&mut self) -> Result<bool, FrontendError> {
        Ok(self.status()?.is_some_and(|s| s & STATUS_NEEDS_RESET != 0))
    }

    /// Configuration-change notices received on the backend channel so far (handling any
    /// that wait; 0 without `VHOST_USER_PROTOCOL_F_BACKEND_REQ`).
    pub fn config_changes(&mut self) -> Result<u64, FrontendError> {
        while self.handle_channel(Duration::ZERO)? {}
        Ok(self.config_changes.0.load(Ordering::SeqCst))
    }

    /// Waits up to `timeout` for a configuration-change notice that no earlier call
    /// reported (one that came before this call counts); returns whether there was one.
    pub fn wait_config_change(&mut self, timeout: Duration) -> Result<bool, FrontendError> {
        let deadline = Instant::now() + timeout;
        loop {
            let total = self.config_changes()?;
            if total != self.config_changes_waited {
                self.config_changes_waited = total;
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.handle_channel(left)?;
        }
    }

    /// Handles one message on the backend channel if one arrives within `timeout`.
    fn handle_channel(&mut self, timeout: Duration) -> Result<bool, FrontendError> {
        let Some(channel) = self.channel.as_mut() else {
            if !timeout.is_zero() {
                std::thread::sleep(timeout);
            }
            return Ok(false);
        };
        let mut fd = libc::pollfd {
            fd: channel.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, living across the call.
        let ready = unsafe { libc::poll(&mut fd, 1, ms) };
        if ready <= 0 {
            return Ok(false);
        }
        channel
            .handle_request()
            .map_err(|e| protocol("backend channel")(e.into()))?;
        Ok(true)
    }

    /// `SET_STATUS`, when the backend offers it.
    fn set_status(&mut self, value: u8) -> Result<(), FrontendError> {
        if !self.protocol.contains(VhostUserProtocolFeatures::STATUS) {
            return Ok(());
        }
        let step = "SET_STATUS";
        let ack = self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        let mut sock = self.control_socket(step)?;
        let code = u32::from(FrontendReq::SET_STATUS);
        let flags = if ack {
            VhostUserHeaderFlag::NEED_REPLY.bits()
        } else {
            0
        };
        send_raw(&mut sock, code, flags, Some(u64::from(value))).map_err(status_error(step))?;
        if ack {
            let result = recv_u64_reply(&mut sock, code).map_err(status_error(step))?;
            if result != 0 {
                return Err(status_error(step)(invalid_reply(format!(
                    "refused ({result:#x})"
                ))));
            }
        }
        Ok(())
    }

    /// The vhost-user socket, for the requests vhost's `Frontend` has no method for. Used
    /// between two of its calls, so no reply of its own is pending.
    fn control_socket(&self, step: &'static str) -> Result<UnixStream, FrontendError> {
        // SAFETY: the descriptor is the frontend's socket, open for as long as
        // `self.frontend` lives, which outlives this borrow; it is only duplicated.
        let fd = unsafe { BorrowedFd::borrow_raw(self.frontend.as_raw_fd()) };
        fd.try_clone_to_owned()
            .map(UnixStream::from)
            .map_err(status_error(step))
    }

    /// Closes the connection (the backend sees the guest go away).
    pub fn disconnect(self) {
        drop(self);
    }
}

fn status_error(step: &'static str) -> impl FnOnce(io::Error) -> FrontendError {
    move |source| FrontendError::Status { step, source }
}

fn invalid_reply(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Sends a vhost-user request of version 1 with an optional u64 body.
fn send_raw(sock: &mut UnixStream, code: u32, flags: u32, body: Option<u64>) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(&code.to_le_bytes());
    bytes.extend_from_slice(&(0x1 | flags).to_le_bytes());
    let size: u32 = if body.is_some() { 8 } else { 0 };
    bytes.extend_from_slice(&size.to_le_bytes());
    if let Some(v) = body {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    sock.write_all(&bytes)
}

/// Reads the reply to request `code`: a u64.
fn recv_u64_reply(sock: &mut UnixStream, code: u32) -> io::Result<u64> {
    let mut reply = [0u8; 20];
    sock.read_exact(&mut reply)?;
    let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().expect("4 bytes"));
    let (request, flags, size) = (word(0), word(4), word(8));
    if request != code || flags & VhostUserHeaderFlag::REPLY.bits() == 0 || size != 8 {
        return Err(invalid_reply(format!(
            "reply {request} flags {flags:#x} size {size} to request {code}"
        )));
    }
    Ok(u64::from_le_bytes(reply[12..].try_into().expect("8 bytes")))
}

/// Connects to `path`, retrying while nobody listens yet.
fn connect_with_retry(path: &Path, timeout: Duration) -> Result<UnixStream, FrontendError> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(source) if Instant::now() >= deadline => {
                return Err(FrontendError::Connect {
                    path: path.to_path_buf(),
                    timeout,
                    source,
                });
            }
            Err(_) => {
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(CONNECT_RETRY.min(left));
            }
        }
    }
}

/// Built for Xen (the `xen` feature), the memory table messages carry Xen's mapping flags, which
/// a backend built the same way insists on being acknowledged (as xen-vhost-frontend does); our
/// memory is a plain shared file, flagged as such ([`shared_file_region`]).
#[cfg(feature = "xen")]
const XEN_MMAP: VhostUserProtocolFeatures = VhostUserProtocolFeatures::XEN_MMAP;
#[cfg(not(feature = "xen"))]
const XEN_MMAP: VhostUserProtocolFeatures = VhostUserProtocolFeatures::empty();

/// A memory table entry: `size` bytes of the shared file `fd` from `mmap_offset`, mapped in this
/// process at `userspace_addr` and at `guest_phys_addr` for the guest. A plain file, which a
/// backend built for Xen (the `xen` feature) maps the Unix way too.
pub fn shared_file_region(
    guest_phys_addr: u64,
    size: u64,
    userspace_addr: u64,
    mmap_offset: u64,
    fd: std::os::fd::RawFd,
) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr,
        memory_size: size,
        userspace_addr,
        mmap_offset,
        mmap_handle: fd,
        #[cfg(feature = "xen")]
        xen_mmap_flags: vm_memory::MmapXenFlags::UNIX.bits(),
        #[cfg(feature = "xen")]
        xen_mmap_data: 0,
    }
}

/// Starts the device: features, memory table, both rings (initialised before the backend
/// learns their addresses), enable, and a first kick for the posted receive buffers.
fn start(
    frontend: &mut Frontend,
    mem: &Arc<MappedFile>,
    layout: DriverLayout,
    acked: u64,
    event_idx: bool,
) -> Result<GuestRpmsg, FrontendError> {
    frontend
        .set_features(acked)
        .map_err(protocol("SET_FEATURES"))?;
    let base = mem.host_address();
    let region = shared_file_region(0, mem.size() as u64, base, 0, mem.fd());
    frontend
        .set_mem_table(&[region])
        .map_err(protocol("SET_MEM_TABLE"))?;

    // Zeroes both rings and posts the receive half of the pool on vq 0.
    let format = RingFormat::from_features(acked);
    let mut transport = DriverTransport::with_format(
        mem.clone(),
        GuestEnv::new()?,
        layout,
        Endian::Little,
        event_idx,
        format,
    )?;
    // A packed ring starts at descriptor 0 with its wrap counters at 1: vhost-user's packed
    // ring base carries the available position's counter in bit 15 (the used position's half
    // does not fit the frontend's 16-bit base; a fresh ring's is the same).
    let start = match format {
        RingFormat::Split => 0,
        RingFormat::Packed => PackedDeviceQueue::START,
    };
    for (q, ring) in [(RX_QUEUE, layout.rx_ring), (TX_QUEUE, layout.tx_ring)] {
        let index = q as usize;
        frontend
            .set_vring_num(index, ring.size)
            .map_err(protocol("SET_VRING_NUM"))?;
        frontend
            .set_vring_base(index, start)
            .map_err(protocol("SET_VRING_BASE"))?;
        let config = VringConfigData {
            queue_max_size: ring.size,
            queue_size: ring.size,
            flags: 0,
            desc_table_addr: base + ring.desc,
            used_ring_addr: base + ring.used,
            avail_ring_addr: base + ring.avail,
            log_addr: None,
        };
        frontend
            .set_vring_addr(index, &config)
            .map_err(protocol("SET_VRING_ADDR"))?;
        let env = transport.env_mut();
        frontend
            .set_vring_call(index, &env.calls[index])
            .map_err(protocol("SET_VRING_CALL"))?;
        frontend
            .set_vring_kick(index, &env.kicks[index])
            .map_err(protocol("SET_VRING_KICK"))?;
    }
    if acked & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
        for q in 0..NUM_QUEUES {
            frontend
                .set_vring_enable(q, true)
                .map_err(protocol("SET_VRING_ENABLE"))?;
        }
    }
    let config = Config {
        name_service: acked & VIRTIO_RPMSG_F_NS != 0,
        ..Config::default()
    };
    let mut rpmsg = Rpmsg::new(transport, config);
    // Tell the backend its transmit buffers (our receive buffers) are posted.
    rpmsg.transport_mut().flush()?;
    Ok(rpmsg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::thread::JoinHandle;
    use vamp_rpmsg::rpmsg::Received;
    use vamp_rpmsg::wire::ADDR_ANY;
    use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
    use virtio_queue::{QueueOwnedT, QueueT};
    use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
    use vmm_sys_util::epoll::EventSet;
    use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier};

    /// Largest message the echo device copies (bigger chains are returned unread).
    const ECHO_MAX: usize = 64 * 1024;

    /// A minimal rpmsg device: every buffer the driver sends on vq 1 comes back on vq 0 with
    /// the same bytes, source and destination swapped.
    struct EchoDevice {
        features: u64,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        pending: VecDeque<Vec<u8>>,
        echoed: u64,
    }

    fn other(e: impl fmt::Debug) -> io::Error {
        io::Error::other(format!("{e:?}"))
    }

    impl EchoDevice {
        /// Moves everything it can, until neither queue has news.
        fn pump(&mut self, vrings: &[VringRwLock]) -> io::Result<()> {
            let [to_driver, from_driver] = vrings else {
                return Err(other("expected two vrings"));
            };
            // Without PROTOCOL_FEATURES a ring goes live at its own SET_VRING_KICK, so vq 0 is
            // served before vq 1 is set up. An error here would end the daemon's worker
            // thread for good: wait for both instead.
            if !vrings.iter().all(|v| v.get_ref().get_queue().ready()) {
                return Ok(());
            }
            let guard = self.mem.memory();
            let mem: &GuestMemoryMmap = &guard;
            loop {
                from_driver.disable_notification().map_err(other)?;
                // Collect first: holding the `get_mut` guard across `add_used` deadlocks.
                let chains: Vec<_> = from_driver
                    .get_mut()
                    .get_queue_mut()
                    .iter(mem)
                    .map_err(other)?
                    .collect();
                let received = !chains.is_empty();
                for chain in chains {
                    let head = chain.head_index();
                    let mut bytes = Vec::new();
                    for desc in chain.clone() {
                        if desc.is_write_only() || bytes.len() + desc.len() as usize > ECHO_MAX {
                            continue;
                        }
                        let start = bytes.len();
                        bytes.resize(start + desc.len() as usize, 0);
                        mem.read_slice(&mut bytes[start..], desc.addr())
                            .map_err(other)?;
                    }
                    // rpmsg-compat: consumed driver-to-device buffers go back with their
                    // readable length, as vamp's DeviceTransport returns them.
                    let readable: u32 = chain
                        .clone()
                        .filter(|d| !d.is_write_only())
                        .fold(0u32, |n, d| n.saturating_add(d.len()));
                    from_driver.add_used(head, readable).map_err(other)?;
                    if bytes.len() >= 8 {
                        let (src, dst) = bytes.split_at_mut(4);
                        src.swap_with_slice(&mut dst[..4]);
                    }
                    self.pending.push_back(bytes);
                }
                if received && from_driver.needs_notification().map_err(other)? {
                    from_driver.signal_used_queue()?;
                }

                let mut sent = false;
                while let Some(bytes) = self.pending.front() {
                    let chain = to_driver
                        .get_mut()
                        .get_queue_mut()
                        .pop_descriptor_chain(mem);
                    let Some(chain) = chain else { break };
                    let mut done = 0;
                    for desc in chain.clone() {
                        if !desc.is_write_only() || done == bytes.len() {
                            continue;
                        }
                        let n = (desc.len() as usize).min(bytes.len() - done);
                        mem.write_slice(&bytes[done..done + n], desc.addr())
                            .map_err(other)?;
                        done += n;
                    }
                    to_driver
                        .add_used(chain.head_index(), done as u32)
                        .map_err(other)?;
                    self.pending.pop_front();
                    self.echoed += 1;
                    sent = true;
                }
                if sent && to_driver.needs_notification().map_err(other)? {
                    to_driver.signal_used_queue()?;
                }

                let more_in = from_driver.enable_notification().map_err(other)?;
                let more_out =
                    to_driver.enable_notification().map_err(other)? && !self.pending.is_empty();
                if !more_in && !more_out {
                    return Ok(());
                }
            }
        }
    }

    impl VhostUserBackendMut for EchoDevice {
        type Bitmap = ();
        type Vring = VringRwLock;

        fn num_queues(&self) -> usize {
            2
        }

        fn max_queue_size(&self) -> usize {
            1024
        }

        fn features(&self) -> u64 {
            self.features
        }

        fn protocol_features(&self) -> VhostUserProtocolFeatures {
            // CONFIG and MQ are offered to check that the guest acknowledges only REPLY_ACK
            // (which vhost adds by itself).
            VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
        }

        fn set_event_idx(&mut self, _enabled: bool) {}

        fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
            self.mem = mem;
            Ok(())
        }

        fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
            vmm_sys_util::event::new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
        }

        fn handle_event(
            &mut self,
            device_event: u16,
            _evset: EventSet,
            vrings: &[VringRwLock],
            _thread_id: usize,
        ) -> io::Result<()> {
            if device_event as usize >= NUM_QUEUES {
                return Ok(());
            }
            self.pump(vrings)
        }
    }

    /// A socket path of our own.
    fn socket_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vamp-frontend-{tag}-{}.sock", std::process::id()))
    }

    /// Everything the echo device offers by default.
    const ALL_FEATURES: u64 = VIRTIO_RPMSG_F_NS
        | VIRTIO_F_VERSION_1
        | VIRTIO_RING_F_EVENT_IDX
        | VHOST_USER_F_PROTOCOL_FEATURES;

    /// Serves one connection of the echo device, offering `features`, on `path` in a thread.
    fn spawn_echo(path: &Path, features: u64) -> (Arc<Mutex<EchoDevice>>, JoinHandle<()>) {
        let _ = std::fs::remove_file(path);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let device = Arc::new(Mutex::new(EchoDevice {
            features,
            mem: mem.clone(),
            pending: VecDeque::new(),
            echoed: 0,
        }));
        let mut daemon = VhostUserDaemon::new("echo".into(), device.clone(), mem).unwrap();
        let path = path.to_path_buf();
        let thread = std::thread::spawn(move || {
            daemon.serve(&path).unwrap();
            let _ = std::fs::remove_file(&path);
        });
        (device, thread)
    }

    #[derive(Default)]
    struct Collect {
        got: Vec<(u32, u32, Vec<u8>)>,
    }

    impl Handler<GuestTransport> for Collect {
        fn on_message(&mut self, rpmsg: &mut GuestRpmsg, msg: &mut Received) {
            let payload = rpmsg.payload(msg).unwrap();
            self.got.push((msg.src, msg.dst, payload));
        }
    }

    fn message(i: usize) -> Vec<u8> {
        // Sizes 1..=496 (496 fills a 512-byte buffer), both ends included.
        let len = match i {
            0 => 1,
            1 => 496,
            _ => 1 + (i * 37) % 496,
        };
        (0..len).map(|k| (i * 7 + k * 13) as u8).collect()
    }

    /// Sends `count` messages from a fresh endpoint to `peer` and checks every echo. With
    /// `burst`, sends them all before receiving any, so sends wait for transmit buffers.
    fn echo_traffic(guest: &mut NativeGuest, peer: u32, count: usize, burst: bool) {
        let ept = guest
            .rpmsg()
            .create_ept(b"echo-test", ADDR_ANY, peer)
            .unwrap();
        let local = guest.rpmsg().endpoint(ept).unwrap().addr();
        let mut h = Collect::default();
        for i in 0..count {
            let n = guest.rpmsg().send(ept, &message(i)).unwrap();
            assert_eq!(n, message(i).len());
            if !burst {
                guest.poll(&mut h).unwrap();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.got.len() < count && Instant::now() < deadline {
            guest.wait(Duration::from_millis(100));
            guest.poll(&mut h).unwrap();
        }
        assert_eq!(h.got.len(), count, "every message comes back");
        for (i, (src, dst, payload)) in h.got.iter().enumerate() {
            assert_eq!(
                (*src, *dst),
                (peer, local),
                "message {i}: addresses swapped"
            );
            assert_eq!(payload, &message(i), "message {i}: payload intact");
        }
        guest.rpmsg().destroy_ept(ept).unwrap();
    }

    #[test]
    fn frontend_echoes_through_a_vhost_user_device() {
        let path = socket_path("echo");
        let (device, server) = spawn_echo(&path, ALL_FEATURES);
        let mut guest = NativeGuest::connect(&path, GuestOptions::default()).unwrap();

        assert_eq!(guest.offered_features(), ALL_FEATURES);
        assert_eq!(guest.negotiated_features(), ALL_FEATURES);
        // CONFIG and MQ were offered too; only REPLY_ACK is taken (and Xen's mapping flags,
        // built for Xen).
        assert_eq!(
            guest.protocol_features(),
            VhostUserProtocolFeatures::REPLY_ACK | XEN_MMAP
        );
        assert!(guest.event_idx());
        assert!(guest.rpmsg().config().name_service);
        let layout = guest.layout();
        assert_eq!(layout.num_bufs(), 512);
        assert!(layout.pool_addr + layout.pool_bytes() <= guest.memory().size() as u64);

        echo_traffic(&mut guest, 0x1234, 300, false);
        assert_eq!(device.lock().unwrap().echoed, 300);

        // The guest re-probes: fresh rings, and traffic flows again.
        guest.reset().unwrap();
        echo_traffic(&mut guest, 0x4321, 300, false);
        guest.reset().unwrap();
        echo_traffic(&mut guest, 77, 300, true);
        assert_eq!(device.lock().unwrap().echoed, 900);

        guest.disconnect();
        server.join().unwrap();
    }

    #[test]
    fn frontend_works_without_event_idx() {
        let path = socket_path("no-event-idx");
        let (_device, server) = spawn_echo(&path, ALL_FEATURES);
        let opts = GuestOptions {
            event_idx: false,
            queue_size: 64,
            mem_size: 1 << 20,
            ..GuestOptions::default()
        };
        let mut guest = NativeGuest::connect(&path, opts).unwrap();
        assert_eq!(guest.negotiated_features() & VIRTIO_RING_F_EVENT_IDX, 0);
        assert_eq!(guest.layout().num_bufs(), 128);
        // Far more messages than buffers, sent before any is received: sends wait for the
        // device to return transmit buffers.
        echo_traffic(&mut guest, 9, 300, true);
        echo_traffic(&mut guest, 10, 300, false);
        guest.disconnect();
        server.join().unwrap();
    }

    /// The test device returns consumed buffers whole, as vamp's device role does: a driver
    /// following OpenAMP's rule (recycled buffers sized by used.len) keeps sending.
    #[test]
    fn echo_device_serves_an_openamp_style_driver() {
        let path = socket_path("openamp-driver");
        let (device, server) = spawn_echo(&path, ALL_FEATURES);
        let mut guest = NativeGuest::connect(&path, GuestOptions::default()).unwrap();
        guest.rpmsg().transport_mut().set_openamp_tx_rule(true);
        echo_traffic(&mut guest, 0x99, 480, false);
        assert_eq!(device.lock().unwrap().echoed, 480);
        guest.disconnect();
        server.join().unwrap();
    }

    #[test]
    fn frontend_works_without_protocol_features() {
        // Rings start enabled on SET_FEATURES; no SET_VRING_ENABLE, no REPLY_ACK.
        let path = socket_path("no-protocol");
        let features = VIRTIO_RPMSG_F_NS | VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
        let (_device, server) = spawn_echo(&path, features);
        let mut guest = NativeGuest::connect(&path, GuestOptions::default()).unwrap();
        assert_eq!(guest.negotiated_features(), features);
        assert!(guest.protocol_features().is_empty());
        echo_traffic(&mut guest, 5, 300, false);
        guest.reset().unwrap();
        echo_traffic(&mut guest, 6, 300, true);
        guest.disconnect();
        server.join().unwrap();
    }

    #[test]
    fn a_backend_without_rpmsg_features_is_refused() {
        let path = socket_path("no-ns");
        let (_device, server) = spawn_echo(&path, ALL_FEATURES & !VIRTIO_RPMSG_F_NS);
        let err = NativeGuest::connect(&path, GuestOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                FrontendError::MissingFeatures {
                    missing: VIRTIO_RPMSG_F_NS,
                    ..
                }
            ),
            "{err}"
        );
        server.join().unwrap();
    }

    #[test]
    fn connecting_to_nobody_fails_within_the_timeout() {
        let path = socket_path("nobody");
        let _ = std::fs::remove_file(&path);
        let opts = GuestOptions {
            connect_timeout: Duration::from_millis(300),
            ..GuestOptions::default()
        };
        let started = Instant::now();
        let err = NativeGuest::connect(&path, opts).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, FrontendError::Connect { .. }), "{err}");
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(err.to_string().contains("vamp-frontend-nobody"), "{err}");
    }

    #[test]
    fn impossible_options_are_refused() {
        let tiny = GuestOptions {
            mem_size: 64 << 10,
            ..GuestOptions::default()
        };
        assert!(matches!(
            tiny.driver_layout(),
            Err(FrontendError::Options(_))
        ));
        let odd = GuestOptions {
            queue_size: 100,
            ..GuestOptions::default()
        };
        assert!(matches!(
            odd.driver_layout(),
            Err(FrontendError::Options(_))
        ));
        let ragged = GuestOptions {
            mem_size: (8 << 20) + 1,
            ..GuestOptions::default()
        };
        assert!(matches!(
            ragged.driver_layout(),
            Err(FrontendError::Options(_))
        ));
    }
}
