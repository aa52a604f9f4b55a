//! Cores behind the kernel's remoteproc in the hub (dom0's R5s): their rpmsg channels end in
//! the kernel, at `/dev/rpmsgN` endpoints, not in rings the hub could drive. So the hub reaches
//! them through an in-process bridge:
//!
//! - the hub drives a link of its own memory (anonymous, laid out as a vdev: two rings of
//!   [`RING`] entries and a buffer pool) in the driver role, exactly as a KVM remote's vdev;
//! - the bridge runs the device side of that memory with the engine: it announces each channel
//!   the core announced to the kernel (`/sys/bus/rpmsg/devices`), so the hub offers it to the
//!   guests the topology allows, with its per-link address translation;
//! - a message the hub forwards to a channel goes out through a kernel endpoint opened for
//!   that (hub address, channel) pair (`RPMSG_CREATE_EPT_IOCTL`, see
//!   [`SysfsRemote::open_endpoint`]), so the core's answer, read from that endpoint, goes back
//!   to the very sender;
//! - a channel that disappears from the kernel, or whose endpoint hangs up (the core crashed
//!   or stopped), is withdrawn (a name-service destroy: the hub withdraws it from the guests)
//!   and announced again when the kernel lists it again (the core recovered). With the
//!   kernel's recovery enabled a crash lasts milliseconds and the channels come back under
//!   the same names, so a scan alone may never see the gap: the endpoints' hang-up is what
//!   tells.
//!
//! The bridge runs on the remote's lifecycle thread (`vamp-remote`, unconfined: it opens and
//! ioctls the kernel's rpmsg devices, which no sandbox list could hold). What it reads is the
//! device side of rings the hub itself writes (in this process) and the bytes the core sends,
//! which it only copies. The hub's side of the link is served by a confined
//! `vamp-remote-rings` thread, as for a KVM remote.

use super::{DoorbellNotifier, RemoteError, RingServer};
use crate::config::RemoteSpec;
use crate::hub::{LinkEnv, LinkId, MAX_BUFFER, MAX_NAMES_PER_LINK, SharedHub, stop};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vamp_remoteproc::backend::Doorbell;
use vamp_remoteproc::config::Recovery;
use vamp_remoteproc::image::ImageSource;
use vamp_remoteproc::remoteproc::{LifecycleError, RemoteState};
use vamp_remoteproc::sysfs::{AnnouncedChannel, RpmsgEndpoint, SysfsRemote};
use vamp_rpmsg::guest_ram::GuestRam;
use vamp_rpmsg::rpmsg::{Config, EptId, Error as RpmsgError, Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::{
    BufferConfig, DeviceTransport, DriverLayout, DriverTransport, Environment,
};
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::{ADDR_ANY, Endian};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Bytes of the bridge's memory.
const MEM_LEN: usize = 0x80000;
/// Where vq 0 (bridge to hub) lies.
const VQ0: u64 = 0x4000;
/// Where vq 1 (hub to bridge) lies.
const VQ1: u64 = 0x8000;
/// Where the buffer pool starts (it runs to the end).
const POOL: u64 = 0x10000;
/// Entries per ring.
pub const RING: u16 = 256;

/// How often the bridge lists the core's channels.
const SCAN_INTERVAL: Duration = Duration::from_millis(200);
/// Messages taken from one kernel endpoint per round (the others, and the hub, get their turn).
const RECV_BUDGET: usize = 64;
/// Distinct scan warnings remembered (each logged once).
const MAX_WARNINGS_KEPT: usize = 256;
/// The longest the bridge waits for a kick or a message between checks.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// How long a withdrawn channel stays withdrawn before the next listing may announce it
/// again: the kernel may list a dying channel for a moment after its endpoints hung up.
const REANNOUNCE_DELAY: Duration = Duration::from_millis(500);
/// Kernel endpoints one channel may have open (one per hub address that sent to it). A new
/// sender beyond it takes the place of the one that sent least recently: hub addresses of
/// guests that left are never told to the bridge, and must not use up the channel.
pub const MAX_ENDPOINTS_PER_CHANNEL: usize = 64;
/// Messages from the core that may wait for the hub's buffers (beyond it the bridge reads no
/// more from the kernel: a hub that takes nothing must not cost the bridge unbounded memory),
/// and messages for the core that may wait for the kernel's (beyond it the bridge takes no
/// more from the hub).
pub const MAX_BACKLOG: usize = 256;

/// The bridge's memory layout: the vdev the hub drives.
fn layout() -> DriverLayout {
    DriverLayout {
        rx_ring: VringLayout::legacy(VQ0, RING, 0x1000).expect("a 256-entry ring fits"),
        tx_ring: VringLayout::legacy(VQ1, RING, 0x1000).expect("a 256-entry ring fits"),
        pool_addr: POOL,
        pool_len: MEM_LEN as u64 - POOL,
        buffers: BufferConfig {
            h2r_buf_size: MAX_BUFFER,
            r2h_buf_size: MAX_BUFFER,
        },
    }
}

// ----- the kernel's side -----------------------------------------------------------------

/// A core's channels as the kernel shows them: what [`SysfsRemote`] gives, behind a trait so
/// that the bridge is tested without a kernel.
pub trait KernelChannels: Send {
    /// The channels the core announces now.
    fn channels(&mut self) -> Result<Vec<AnnouncedChannel>, String>;
    /// Opens an endpoint of our own on channel `name` at the core's address `dst`.
    fn open(&mut self, name: &str, dst: u32) -> Result<Box<dyn KernelEndpoint>, String>;
}

/// One kernel endpoint: one message per send and per receive.
pub trait KernelEndpoint: Send {
    /// A descriptor that polls readable when a message waits, and hangs up when the endpoint
    /// is gone.
    fn fd(&self) -> RawFd;
    /// Sends one message.
    fn send(&mut self, msg: &[u8]) -> io::Result<()>;
    /// Takes one waiting message without blocking; `None` if none waits. An error once the
    /// endpoint is gone.
    fn recv(&mut self) -> io::Result<Option<Vec<u8>>>;
}

impl KernelChannels for SysfsRemote {
    fn channels(&mut self) -> Result<Vec<AnnouncedChannel>, String> {
        self.announced_channels().map_err(|e| e.to_string())
    }

    fn open(&mut self, name: &str, dst: u32) -> Result<Box<dyn KernelEndpoint>, String> {
        let ept = self.open_endpoint(name, dst).map_err(|e| e.to_string())?;
        // A core out of buffers must not stall the bridge: a send then fails with EAGAIN
        // (the kernel's rpmsg_trysend) and waits in the bridge.
        ept.set_nonblocking(true)
            .map_err(|e| format!("{}: non-blocking: {e}", ept.dev_path().display()))?;
        Ok(Box::new(ept))
    }
}

impl KernelEndpoint for RpmsgEndpoint {
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        RpmsgEndpoint::send(self, msg)
    }

    fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        RpmsgEndpoint::recv(self, Duration::ZERO)
    }
}

// ----- the signals between the hub and the bridge ----------------------------------------

/// Both directions of notification: the hub kicks the bridge through an eventfd (polled with
/// the kernel endpoints), the bridge wakes the hub's ring thread through a condition variable.
struct Bell {
    kick: OwnedFd,
    to_hub: Mutex<bool>,
    hub_wakes: Condvar,
    stopped: AtomicBool,
}

impl Bell {
    fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointer; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Bell {
            // SAFETY: `fd` is a fresh descriptor owned by nobody else.
            kick: unsafe { OwnedFd::from_raw_fd(fd) },
            to_hub: Mutex::new(false),
            hub_wakes: Condvar::new(),
            stopped: AtomicBool::new(false),
        })
    }

    /// Takes the hub's kicks (the eventfd is non-blocking: nothing to take returns at once).
    fn drain_kicks(&self) {
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from a descriptor this struct owns.
        let _ = unsafe {
            libc::read(
                self.kick.as_raw_fd(),
                (&mut count as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    fn tell_hub(&self) {
        *self.to_hub.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.hub_wakes.notify_one();
    }
}

impl Doorbell for Bell {
    // The hub's driver side notified a queue: wake the bridge.
    fn ring(&self, _notifyid: u32) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to a descriptor this struct owns.
        let _ = unsafe {
            libc::write(
                self.kick.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    // The hub's ring thread waits for the bridge.
    fn wait(&self, timeout: Duration) -> bool {
        let told = self.to_hub.lock().unwrap_or_else(|p| p.into_inner());
        let (mut told, _) = self
            .hub_wakes
            .wait_timeout_while(told, timeout, |t| !*t)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *told, false)
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// The bridge's engine environment: its notifications wake the hub's ring thread.
struct BridgeEnv {
    bell: Arc<Bell>,
    start: Instant,
}

impl Environment for BridgeEnv {
    fn notify(&mut self, _queue: u16) {
        self.bell.tell_hub();
    }

    fn now_us(&mut self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

// ----- the bridge ------------------------------------------------------------------------

/// A channel announced to the hub.
struct Channel {
    name: String,
    /// The core's address of it (in the kernel's link).
    dst: u32,
    /// The bridge's endpoint for it (in the hub's link), and its address.
    ept: EptId,
    addr: u32,
}

/// A kernel endpoint opened for one hub address on one channel.
struct Route {
    /// The channel's bridge address.
    channel: u32,
    /// The hub's address that sent to it, to which the core's answers go.
    peer: u32,
    endpoint: Box<dyn KernelEndpoint>,
    /// When the peer last sent through it.
    used: Instant,
}

/// Messages the bridge's engine received from the hub in one poll.
#[derive(Default)]
struct FromHub {
    messages: Vec<(u32, u32, Vec<u8>)>,
}

impl<T: vamp_rpmsg::transport::Transport> Handler<T> for FromHub {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        let at = rpmsg.endpoint(msg.ept).map_or(ADDR_ANY, |e| e.addr());
        match rpmsg.payload(msg) {
            Ok(data) => self.messages.push((at, msg.src, data)),
            Err(e) => log::debug!("bridge: unreadable message from {:#x}: {e:?}", msg.src),
        }
    }

    // The hub may offer guests' names to the core; a core behind the kernel cannot take them.
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, e: NsEvent<'_>) {
        if let NsEvent::Created { name, addr, .. } = e {
            log::debug!(
                "bridge: the hub offers {:?} at {addr:#x}; a core behind the kernel cannot see it",
                String::from_utf8_lossy(name)
            );
        }
    }
}

type BridgeEngine = Rpmsg<DeviceTransport<GuestRam, BridgeEnv>>;

/// The device side of the hub's link to a core behind the kernel.
struct Bridge<'k> {
    name: String,
    engine: BridgeEngine,
    kernel: &'k mut dyn KernelChannels,
    bell: Arc<Bell>,
    channels: Vec<Channel>,
    routes: Vec<Route>,
    /// Messages from the core waiting for the hub's buffers: (channel address, peer, data).
    backlog: VecDeque<(u32, u32, Vec<u8>)>,
    /// Messages for the core waiting for the kernel's buffers (endpoints are non-blocking:
    /// a core that takes nothing must not stall the bridge); at most [`MAX_BACKLOG`], beyond
    /// which the bridge takes nothing more from the hub, whose senders then wait as for any
    /// slow receiver.
    outbound: VecDeque<(u32, u32, Vec<u8>)>,
    /// Withdrawn channels and when they may be announced again.
    held_off: HashMap<(String, u32), Instant>,
    next_scan: Instant,
    /// Warnings of the scans logged already.
    warned: HashSet<String>,
}

/// Where a bridge stands, for tests and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeStatus {
    /// Channels announced to the hub, by name.
    pub channels: Vec<String>,
    /// Kernel endpoints open.
    pub endpoints: usize,
    /// Times a channel was withdrawn.
    pub withdrawals: u64,
}

impl Bridge<'_> {
    /// Lists the kernel's channels: withdraws those gone, announces the new ones.
    fn scan(&mut self, status: &mut BridgeStatus) {
        let listed = match self.kernel.channels() {
            Ok(l) => l,
            Err(e) => {
                self.warn_once(format!(
                    "remote {}: cannot list its channels: {e}",
                    self.name
                ));
                Vec::new()
            }
        };
        let gone: Vec<u32> = self
            .channels
            .iter()
            .filter(|c| !listed.iter().any(|l| l.name == c.name && l.dst == c.dst))
            .map(|c| c.addr)
            .collect();
        for addr in gone {
            self.withdraw(addr, "the kernel no longer lists it", status);
        }
        let now = Instant::now();
        self.held_off.retain(|_, until| *until > now);
        for l in listed {
            let known = self
                .channels
                .iter()
                .any(|c| c.name == l.name && c.dst == l.dst);
            if known || self.held_off.contains_key(&(l.name.clone(), l.dst)) {
                continue;
            }
            if self.channels.len() >= MAX_NAMES_PER_LINK {
                self.warn_once(format!(
                    "remote {}: more than {MAX_NAMES_PER_LINK} channels; {:?} not offered",
                    self.name, l.name
                ));
                continue;
            }
            match self
                .engine
                .create_ept(l.name.as_bytes(), ADDR_ANY, ADDR_ANY)
            {
                Ok(ept) => {
                    let addr = self.engine.endpoint(ept).map_or(ADDR_ANY, |e| e.addr());
                    log::info!(
                        "remote {}: channel {:?} (core address {:#x}) offered to the hub",
                        self.name,
                        l.name,
                        l.dst
                    );
                    self.channels.push(Channel {
                        name: l.name,
                        dst: l.dst,
                        ept,
                        addr,
                    });
                }
                Err(e) => self.warn_once(format!(
                    "remote {}: cannot announce channel {:?}: {e:?}",
                    self.name, l.name
                )),
            }
        }
        self.update(status);
    }

    /// Logs a warning the scans would otherwise repeat every [`SCAN_INTERVAL`]: once, until
    /// [`MAX_WARNINGS_KEPT`] distinct ones were seen (then the record starts over).
    fn warn_once(&mut self, warning: String) {
        if self.warned.len() >= MAX_WARNINGS_KEPT {
            self.warned.clear();
        }
        if self.warned.insert(warning.clone()) {
            log::warn!("{warning}");
        }
    }

    /// Withdraws the channel at bridge address `addr` from the hub and closes its endpoints.
    fn withdraw(&mut self, addr: u32, why: &str, status: &mut BridgeStatus) {
        let Some(i) = self.channels.iter().position(|c| c.addr == addr) else {
            return;
        };
        let c = self.channels.remove(i);
        log::warn!(
            "remote {}: channel {:?} withdrawn ({why})",
            self.name,
            c.name
        );
        if let Err(e) = self.engine.destroy_ept(c.ept) {
            log::warn!("remote {}: withdrawing {:?}: {e:?}", self.name, c.name);
        }
        self.routes.retain(|r| r.channel != addr);
        self.backlog.retain(|(a, ..)| *a != addr);
        self.outbound.retain(|(a, ..)| *a != addr);
        self.held_off
            .insert((c.name, c.dst), Instant::now() + REANNOUNCE_DELAY);
        status.withdrawals += 1;
        self.update(status);
    }

    fn update(&self, status: &mut BridgeStatus) {
        status.channels = self.channels.iter().map(|c| c.name.clone()).collect();
        status.endpoints = self.routes.len();
    }

    /// A message from hub address `peer` to channel `addr`: out through the peer's endpoint.
    /// Queued behind what waits already; sent as far as the kernel's buffers allow.
    fn send_to_core(&mut self, addr: u32, peer: u32, data: Vec<u8>, status: &mut BridgeStatus) {
        let Some(channel) = self.channels.iter().find(|c| c.addr == addr) else {
            log::debug!(
                "remote {}: message for withdrawn {addr:#x} dropped",
                self.name
            );
            return;
        };
        let route = match self
            .routes
            .iter()
            .position(|r| r.channel == addr && r.peer == peer)
        {
            Some(i) => i,
            None => {
                let open = self.routes.iter().filter(|r| r.channel == addr).count();
                if open >= MAX_ENDPOINTS_PER_CHANNEL
                    && let Some(oldest) = self
                        .routes
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.channel == addr)
                        .min_by_key(|(_, r)| r.used)
                        .map(|(i, _)| i)
                {
                    let old = self.routes.remove(oldest);
                    log::info!(
                        "remote {}: channel {:?}: the endpoint of {:#x} closed for {peer:#x} ({open} open)",
                        self.name,
                        channel.name,
                        old.peer
                    );
                }
                match self.kernel.open(&channel.name, channel.dst) {
                    Ok(endpoint) => {
                        self.routes.push(Route {
                            channel: addr,
                            peer,
                            endpoint,
                            used: Instant::now(),
                        });
                        self.update(status);
                        self.routes.len() - 1
                    }
                    Err(e) => {
                        let why = format!("opening an endpoint failed: {e}");
                        self.withdraw(addr, &why, status);
                        return;
                    }
                }
            }
        };
        self.routes[route].used = Instant::now();
        self.outbound.push_back((addr, peer, data));
        self.flush_outbound(status);
    }

    /// Sends what waits for the core, in order, until the kernel has no buffer (its buffers are
    /// one pool for all of the core's endpoints, so nothing behind could go either).
    fn flush_outbound(&mut self, status: &mut BridgeStatus) {
        while let Some((addr, peer, data)) = self.outbound.front() {
            let (addr, peer) = (*addr, *peer);
            let Some(route) = self
                .routes
                .iter_mut()
                .find(|r| r.channel == addr && r.peer == peer)
            else {
                // Its channel was withdrawn, or its endpoint given to another sender.
                self.outbound.pop_front();
                continue;
            };
            match route.endpoint.send(data) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    log::warn!("remote {}: message dropped: {e}", self.name);
                }
                Err(e) => {
                    self.outbound.pop_front();
                    self.withdraw(addr, &format!("sending failed: {e}"), status);
                    continue;
                }
            }
            self.outbound.pop_front();
        }
    }

    /// Gives the hub what the core sent, as far as the hub's buffers allow.
    fn flush_backlog(&mut self) {
        while let Some((addr, peer, data)) = self.backlog.front() {
            let Some(c) = self.channels.iter().find(|c| c.addr == *addr) else {
                self.backlog.pop_front();
                continue;
            };
            match self.engine.trysendto(c.ept, *peer, data) {
                Ok(_) => {
                    self.backlog.pop_front();
                }
                Err(RpmsgError::NoBuffer) => break,
                Err(e) => {
                    log::warn!(
                        "remote {}: a message of {} bytes from the core dropped: {e:?}",
                        self.name,
                        data.len()
                    );
                    self.backlog.pop_front();
                }
            }
        }
    }

    /// Waits for the hub's kick or a message from the core, at most until the next scan.
    fn wait(&mut self) -> Vec<libc::pollfd> {
        // With the backlog full the core's messages wait in the kernel: their endpoints are
        // not polled (they would be readable at once, and the bridge would spin).
        let routes = if self.backlog.len() >= MAX_BACKLOG {
            &[][..]
        } else {
            &self.routes[..]
        };
        let mut fds: Vec<libc::pollfd> = std::iter::once(self.bell.kick.as_raw_fd())
            .chain(routes.iter().map(|r| r.endpoint.fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout = self
            .next_scan
            .saturating_duration_since(Instant::now())
            .min(WAIT_SLICE);
        // Backlog waiting: the hub's buffers come back with a kick, the kernel's without any
        // notice; look again soon.
        let timeout = if self.backlog.is_empty() && self.outbound.is_empty() {
            timeout
        } else {
            timeout.min(Duration::from_millis(5))
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(100);
        // SAFETY: `fds` is a live array of `fds.len()` pollfds for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            for f in &mut fds {
                f.revents = 0;
            }
        }
        fds
    }

    /// One round: scan if due, wait, take the hub's messages, take the core's.
    fn round(&mut self, status: &mut BridgeStatus) {
        if Instant::now() >= self.next_scan {
            self.scan(status);
            self.next_scan = Instant::now() + SCAN_INTERVAL;
        }
        if self.engine.pending_announcements() > 0 {
            let _ = self.engine.flush_announcements();
        }
        let fds = self.wait();
        self.bell.drain_kicks();
        self.flush_outbound(status);
        let room = MAX_BACKLOG.saturating_sub(self.outbound.len());
        let mut from_hub = FromHub::default();
        if room > 0
            && let Err(e) = self.engine.poll_budget(&mut from_hub, room)
        {
            log::warn!("remote {}: bridge: {e:?}", self.name);
        }
        for (addr, peer, data) in from_hub.messages {
            self.send_to_core(addr, peer, data, status);
        }
        // The core's answers. The routes polled are the first fds.len() - 1 (routes opened
        // since are polled next round).
        let mut hung_up = Vec::new();
        for (i, f) in fds.iter().skip(1).enumerate() {
            let Some(route) = self.routes.get_mut(i) else {
                break;
            };
            if f.revents == 0 || route.endpoint.fd() != f.fd {
                continue;
            }
            // Bounded per round, and not beyond the backlog: what is left waits in the kernel.
            for _ in 0..RECV_BUDGET {
                if self.backlog.len() >= MAX_BACKLOG {
                    break;
                }
                match route.endpoint.recv() {
                    Ok(Some(data)) => self.backlog.push_back((route.channel, route.peer, data)),
                    Ok(None) => break,
                    Err(e) => {
                        hung_up.push((route.channel, e));
                        break;
                    }
                }
            }
        }
        self.flush_backlog();
        for (addr, e) in hung_up {
            self.withdraw(addr, &format!("its endpoint hung up: {e}"), status);
        }
    }
}

/// Runs the bridge for link `id` until `stop` is set: attaches the hub to the bridge's memory
/// (served by a confined ring thread), then offers the kernel's channels and relays (see the
/// module). `status` is kept current.
pub fn run_bridge(
    hub: &SharedHub,
    id: LinkId,
    name: &str,
    kernel: &mut dyn KernelChannels,
    stop_when: &AtomicBool,
    status: &Mutex<BridgeStatus>,
) -> Result<(), RemoteError> {
    let fail = |why: String| RemoteError::Bridge {
        remote: name.to_string(),
        why,
    };
    let bell = Arc::new(Bell::new().map_err(|e| fail(format!("eventfd: {e}")))?);
    let mmap = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_LEN)])
        .map_err(|e| fail(format!("memory: {e}")))?;
    let ram = GuestRam::new(mmap);
    let layout = layout();
    let doorbell: Arc<dyn Doorbell> = bell.clone();
    let notifier = Arc::new(DoorbellNotifier {
        doorbell: doorbell.clone(),
        notifyids: [0, 1],
    });
    // The driver first: it lays out the rings and posts its receive buffers.
    let driver = DriverTransport::new(
        ram.clone(),
        LinkEnv::new(notifier),
        layout,
        Endian::Little,
        true,
    )
    .map_err(|e| fail(format!("rings: {e}")))?;
    let device = DeviceTransport::new(
        ram,
        BridgeEnv {
            bell: bell.clone(),
            start: Instant::now(),
        },
        layout.rx_ring,
        layout.tx_ring,
        Endian::Little,
        true,
        layout.buffers.r2h_buf_size,
    )
    .map_err(|e| fail(format!("rings: {e}")))?;
    hub.run_ring_work(id, move |hub| hub.attach(id, driver, true));
    let rings = RingServer::start(hub.clone(), id, doorbell, name);
    let mut bridge = Bridge {
        name: name.to_string(),
        engine: Rpmsg::new(device, Config::default()),
        kernel,
        bell: bell.clone(),
        channels: Vec::new(),
        routes: Vec::new(),
        backlog: VecDeque::new(),
        outbound: VecDeque::new(),
        held_off: HashMap::new(),
        next_scan: Instant::now(),
        warned: HashSet::new(),
    };
    let mut mine = BridgeStatus::default();
    while !stop_when.load(Ordering::Acquire) {
        bridge.round(&mut mine);
        let mut shared = status.lock().unwrap_or_else(|p| p.into_inner());
        if *shared != mine {
            *shared = mine.clone();
        }
    }
    bell.stopped.store(true, Ordering::Release);
    bell.tell_hub();
    rings.stop();
    hub.run_ring_work(id, stop(id, "the bridge stopped"));
    Ok(())
}

/// Starts a core behind sysfs for the hub (or adopts it if it runs): a stopped core gets the
/// spec's firmware (an ELF file, copied where the kernel finds it) and recovery policy, a
/// crashed one is recovered.
pub fn start_or_adopt(core: &mut SysfsRemote, spec: &RemoteSpec) -> Result<(), RemoteError> {
    let lifecycle = |source: LifecycleError| RemoteError::Lifecycle {
        remote: spec.name.clone(),
        source,
    };
    let state = core.state().map_err(lifecycle)?;
    match state {
        RemoteState::Running => {
            log::info!("remote {}: running already: adopted", spec.name);
            return Ok(());
        }
        RemoteState::Crashed => {
            log::warn!("remote {}: found crashed: recovering it", spec.name);
            return core.recover().map_err(lifecycle);
        }
        RemoteState::Offline => {
            if let ImageSource::File(path) = super::image_source(spec)? {
                let installed = core.set_firmware(&path).map_err(lifecycle)?;
                log::info!("remote {}: firmware {}", spec.name, installed.display());
            }
        }
        _ => {}
    }
    // The kernel applies the policy, without a restart limit of its own.
    let recover = matches!(spec.recovery, Recovery::Restart { .. });
    core.set_recovery(recover).map_err(lifecycle)?;
    core.start().map_err(lifecycle)?;
    log::info!(
        "remote {}: started through {}",
        spec.name,
        core.root().display()
    );
    Ok(())
}

/// Serves a `backend = "sysfs"` remote: starts or adopts the core at `sysfs_path` and runs
/// its bridge for as long as the hub runs.
pub fn serve_sysfs_remote(
    hub: SharedHub,
    id: LinkId,
    spec: RemoteSpec,
    sysfs_path: &Path,
) -> Result<(), RemoteError> {
    let mut core = SysfsRemote::at(sysfs_path);
    start_or_adopt(&mut core, &spec)?;
    let never = AtomicBool::new(false);
    let status = Mutex::new(BridgeStatus::default());
    run_bridge(&hub, id, &spec.name, &mut core, &never, &status)
}
