//! The native-Linux link: two processes, one in each role, sharing a file, laid out as
//! OpenAMP's native-Linux machine (openamp-system-reference, `system/linux/machine/generic`),
//! so an OpenAMP program built for that machine can be either side unchanged.
//!
//! - Shared memory: a file (`/dev/shm/openamp.shm`, 0x80000 bytes) that both map; "physical"
//!   addresses are offsets into it. The resource table is at 0 with one rpmsg vdev (F_NS) whose
//!   vrings sit at 0x4000 and 0x8000 (256 entries, align 0x1000); buffers at 0x10000.
//! - Kicks: one byte over a UNIX stream socket (`/tmp/openamp.event.0`). The remote (device
//!   role, OpenAMP's processor index 0) writes the resource table, listens and accepts; the
//!   host (driver role, index 1) connects.
//! - Start-up: the host negotiates features and sets DRIVER_OK in the vdev's status; the
//!   remote waits for it, as OpenAMP's `rpmsg_virtio_wait_remote_ready` does.
//! - Ring format: split rings unless both sides are vamp's and the host asks for packed ones.
//!   vamp's remote adds the vamp platform entry ([`crate::wire::platform`], a vendor entry
//!   OpenAMP's parser skips) after the vdev and declares [`F_PACKED_RING`] in it; a host that
//!   wants packed rings and finds the feature sets
//!   [`MODE_PACKED_RING`](crate::wire::platform::MODE_PACKED_RING) before DRIVER_OK, and the
//!   remote reads the mode when it sees DRIVER_OK. Both lay the packed rings in the vrings'
//!   areas at 0x4000 and 0x8000: the 256 descriptors of 16 bytes fill the 4 KiB of the split
//!   descriptor table, the 4-byte event structures sit where the available ring (0x5000) and
//!   used ring (0x6000) start.

use crate::mapped_file::{MapError, MappedFile};
use crate::mem::SharedMemory;
use crate::rpmsg::{Config, Rpmsg};
use crate::transport::{
    BufferConfig, DeviceRings, DeviceTransport, DriverLayout, DriverTransport, Environment,
    RingFormat, Transport,
};
use crate::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_STARTED,
    VIRTIO_ID_RPMSG, VIRTIO_RPMSG_F_NS,
};
use crate::vring::VringLayout;
use crate::wire::Endian;
use crate::wire::platform::{
    BODY_LEN as PLATFORM_BODY_LEN, F_PACKED_RING, FEATURES_AT as PLATFORM_FEATURES_AT,
    MAGIC as PLATFORM_MAGIC, MAGIC_AT as PLATFORM_MAGIC_AT, MODE_AT as PLATFORM_MODE_AT,
    RSC_VAMP_PLATFORM, VERSION as PLATFORM_VERSION, VERSION_AT as PLATFORM_VERSION_AT,
};
use crate::wire::resource_table::{
    RSC_VDEV, Resource, ResourceTable, ResourceTableBuilder, VDEV_GFEATURES_AT, VDEV_STATUS_AT,
    VdevVringSpec,
};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// OpenAMP's shared file name (libmetal opens it under /dev/shm).
pub const DEFAULT_SHM_PATH: &str = "/dev/shm/openamp.shm";
/// OpenAMP's kick socket.
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/openamp.event.0";
/// Size of the shared file.
pub const SHM_SIZE: usize = 0x80000;
/// Where the resource table lives.
pub const RSC_TABLE_ADDR: u64 = 0;
/// vq 0.
pub const VRING0_ADDR: u32 = 0x4000;
/// vq 1.
pub const VRING1_ADDR: u32 = 0x8000;
/// Entries per vring.
pub const VRING_NUM: u32 = 256;
/// Vring alignment.
pub const VRING_ALIGN: u32 = 0x1000;
/// Start of the rpmsg buffer pool.
pub const SHARED_BUF_ADDR: u64 = 0x10000;
/// Size of the rpmsg buffer pool.
pub const SHARED_BUF_SIZE: u64 = 0x40000;
/// Resource table bytes read by the host (ample for a few entries).
const RSC_TABLE_MAX: usize = 0x1000;

/// Where the two processes meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativePaths {
    /// The shared file.
    pub shm: PathBuf,
    /// The kick socket.
    pub socket: PathBuf,
}

impl Default for NativePaths {
    fn default() -> Self {
        NativePaths {
            shm: DEFAULT_SHM_PATH.into(),
            socket: DEFAULT_SOCKET_PATH.into(),
        }
    }
}

/// Why a native link could not come up.
#[derive(Debug)]
#[non_exhaustive]
pub enum NativeError {
    /// A system call failed.
    Io(&'static str, io::Error),
    /// The resource table in the shared file is unusable.
    ResourceTable(&'static str),
    /// The ring or pool layout is impossible.
    Link(crate::transport::LinkError),
    /// The peer did not show up in time.
    Timeout(&'static str),
    /// The peer closed the socket.
    PeerGone,
}

impl core::fmt::Display for NativeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NativeError::Io(what, e) => write!(f, "{what}: {e}"),
            NativeError::ResourceTable(why) => write!(f, "resource table: {why}"),
            NativeError::Link(e) => write!(f, "link: {e}"),
            NativeError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            NativeError::PeerGone => write!(f, "peer closed the kick socket"),
        }
    }
}

impl std::error::Error for NativeError {}

impl From<MapError> for NativeError {
    fn from(e: MapError) -> Self {
        NativeError::Io(e.what, e.source)
    }
}

impl From<crate::transport::LinkError> for NativeError {
    fn from(e: crate::transport::LinkError) -> Self {
        NativeError::Link(e)
    }
}

/// Longest blocking read in one step of [`SocketEnv`]'s wait. A wait longer than this reads
/// in steps of it (an idle wait of a second wakes ten times, microseconds of CPU each) and
/// bounds its last part with `poll`, so no wait outlasts its timeout.
const WAIT_SLICE_US: u64 = 100_000;

/// Kicks as single bytes over a UNIX stream socket.
///
/// The socket stays in blocking mode with a receive timeout of 100 ms: a wait is one blocking
/// read that returns with the kick, so a wake-up costs one system call (a `poll` before the
/// read would double it, and each is microseconds under a hypervisor). Sends and the reads
/// that must not block say so per call (`MSG_DONTWAIT`).
#[derive(Debug)]
pub struct SocketEnv {
    stream: UnixStream,
    start: Instant,
    peer_gone: bool,
    /// Kicks sent.
    pub kicks_sent: u64,
    /// Kick bytes received.
    pub kicks_received: u64,
}

impl SocketEnv {
    fn new(stream: UnixStream) -> Result<Self, NativeError> {
        stream
            .set_nonblocking(false)
            .map_err(|e| NativeError::Io("socket mode", e))?;
        stream
            .set_read_timeout(Some(Duration::from_micros(WAIT_SLICE_US)))
            .map_err(|e| NativeError::Io("socket receive timeout", e))?;
        Ok(SocketEnv {
            stream,
            start: Instant::now(),
            peer_gone: false,
            kicks_sent: 0,
            kicks_received: 0,
        })
    }

    /// Whether the peer closed its end.
    pub fn peer_gone(&self) -> bool {
        self.peer_gone
    }

    /// Blocks until the peer kicks or `timeout` passes; returns whether it kicked.
    pub fn wait_for_kick(&mut self, timeout: Duration) -> bool {
        Environment::wait(self, timeout.as_micros() as u64)
    }

    /// Reads the kicks that are queued, up to 64 (more stay queued and wake the next wait at
    /// once, which costs nothing but a look at the rings); returns how many there were. With
    /// `block`, waits for the first one up to [`WAIT_SLICE_US`]. End of stream or a broken
    /// connection: the peer is gone.
    fn take_kicks(&mut self, block: bool) -> u64 {
        let mut buf = [0u8; 64];
        let flags = if block { 0 } else { libc::MSG_DONTWAIT };
        // SAFETY: `buf` is valid for writes of its length for the duration of the call.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
            )
        };
        match n {
            0 => self.peer_gone = true,
            1.. => self.kicks_received += n as u64,
            _ => match io::Error::last_os_error().kind() {
                // Nothing queued (or the receive timeout passed), or a signal came first:
                // the caller looks at the clock and decides.
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
                _ => self.peer_gone = true,
            },
        }
        n.max(0) as u64
    }
}

impl Environment for SocketEnv {
    fn notify(&mut self, _queue: u16) {
        // OpenAMP's machine ignores the notify id: any byte means "look at your rings".
        let byte = 1u8;
        loop {
            // SAFETY: `byte` is valid for reads of one byte for the duration of the call.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    (&byte as *const u8).cast(),
                    1,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n == 1 {
                self.kicks_sent += 1;
                return;
            }
            match io::Error::last_os_error().kind() {
                // Nothing was sent: send it again.
                io::ErrorKind::Interrupted => {}
                // A full socket already holds kicks the peer has not read: one more adds
                // nothing.
                io::ErrorKind::WouldBlock => return,
                _ => {
                    self.peer_gone = true;
                    return;
                }
            }
        }
    }

    fn wait(&mut self, timeout_us: u64) -> bool {
        let start = Instant::now();
        loop {
            if self.peer_gone {
                return false;
            }
            let left = timeout_us.saturating_sub(start.elapsed().as_micros() as u64);
            if left < WAIT_SLICE_US {
                // The last part of the wait: poll bounds it (rounded up to a millisecond),
                // then the queued kicks are read without blocking.
                let mut pfd = libc::pollfd {
                    fd: self.stream.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = left.div_ceil(1000) as i32;
                // SAFETY: `pfd` is a valid pollfd for the duration of the call; count 1 matches.
                let r = unsafe { libc::poll(&mut pfd, 1, ms) };
                return r > 0 && self.take_kicks(false) > 0;
            }
            if self.take_kicks(true) > 0 {
                return true;
            }
        }
    }

    fn now_us(&mut self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn peer_gone(&mut self) -> bool {
        self.peer_gone
    }
}

/// The engine of the host (driver) side of a native link.
pub type HostRpmsg = Rpmsg<DriverTransport<Arc<MappedFile>, SocketEnv>>;
/// The engine of the remote (device) side of a native link.
pub type RemoteRpmsg = Rpmsg<DeviceTransport<Arc<MappedFile>, SocketEnv>>;

/// Features vamp's native remote declares in its platform entry.
pub const REMOTE_PLATFORM_FEATURES: u32 = F_PACKED_RING;

/// Writes OpenAMP's native-machine resource table into `shm` at 0 (status and features 0),
/// followed by the vamp platform entry declaring [`REMOTE_PLATFORM_FEATURES`] (mode 0).
pub fn write_resource_table(shm: &MappedFile) -> Result<usize, NativeError> {
    write_table(shm, Some(REMOTE_PLATFORM_FEATURES))
}

/// The table with the platform entry declaring `platform` features, or none (OpenAMP's own
/// table, byte for byte).
fn write_table(shm: &MappedFile, platform: Option<u32>) -> Result<usize, NativeError> {
    let mut table = [0u8; 256];
    let bad = |_| NativeError::ResourceTable("cannot build the table");
    let entries = 1 + usize::from(platform.is_some());
    let mut b = ResourceTableBuilder::new(&mut table, Endian::NATIVE, entries).map_err(bad)?;
    let ring = |da, notifyid| VdevVringSpec {
        da,
        align: VRING_ALIGN,
        num: VRING_NUM,
        notifyid,
    };
    b.add_vdev(
        VIRTIO_ID_RPMSG,
        0,
        // A vdev entry carries the low 32 feature bits.
        VIRTIO_RPMSG_F_NS as u32,
        &[],
        &[ring(VRING0_ADDR, 1), ring(VRING1_ADDR, 2)],
    )
    .map_err(bad)?;
    if let Some(features) = platform {
        let mut body = [0u8; PLATFORM_BODY_LEN];
        for (at, word) in [
            (PLATFORM_MAGIC_AT, PLATFORM_MAGIC),
            (PLATFORM_VERSION_AT, PLATFORM_VERSION),
            (PLATFORM_FEATURES_AT, features),
        ] {
            body[at..at + 4].copy_from_slice(&word.to_le_bytes());
        }
        b.add_vendor(RSC_VAMP_PLATFORM, &body).map_err(bad)?;
    }
    let len = b.finish().map_err(bad)?;
    shm.write(RSC_TABLE_ADDR, &table[..len])
        .map_err(|_| NativeError::ResourceTable("does not fit"))?;
    Ok(len)
}

/// What the host found in the table.
#[derive(Debug, Clone, Copy)]
struct VdevInfo {
    offset: u64,
    dfeatures: u32,
    gfeatures: u32,
    status: u8,
    rings: [VringLayout; 2],
    platform: Option<PlatformInfo>,
}

/// The remote's vamp platform entry, as the table showed it.
#[derive(Debug, Clone, Copy)]
struct PlatformInfo {
    /// Offset of the entry's body from the start of the table.
    body: u64,
    /// What the remote declared.
    features: u32,
    /// What the host wrote.
    mode: u32,
}

impl PlatformInfo {
    /// The entry at `index` if it is a vamp platform entry of a version this side knows
    /// (anything else is left alone: a peer with no such entry runs split rings).
    fn parse(table: &ResourceTable<&[u8]>, index: usize) -> Option<Self> {
        let Ok(Resource::Vendor { offset, body, .. }) = table.entry(index) else {
            return None;
        };
        let word = |at: usize| Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?));
        if body.len() < PLATFORM_BODY_LEN
            || word(PLATFORM_MAGIC_AT)? != PLATFORM_MAGIC
            || word(PLATFORM_VERSION_AT)? != PLATFORM_VERSION
        {
            return None;
        }
        Some(PlatformInfo {
            // The body starts after the entry's type word.
            body: offset as u64 + 4,
            features: word(PLATFORM_FEATURES_AT)?,
            mode: word(PLATFORM_MODE_AT)?,
        })
    }
}

fn read_vdev(shm: &MappedFile) -> Result<VdevInfo, NativeError> {
    // The peer may write the table while we look: parse a private copy.
    let mut copy = std::vec![0u8; RSC_TABLE_MAX];
    shm.read(RSC_TABLE_ADDR, &mut copy)
        .map_err(|_| NativeError::ResourceTable("outside the file"))?;
    let table = ResourceTable::new_checked(&copy[..], Endian::NATIVE)
        .map_err(|_| NativeError::ResourceTable("malformed"))?;
    let index = table
        .find(RSC_VDEV, 0)
        .ok_or(NativeError::ResourceTable("no vdev entry"))?;
    let vdev = table
        .vdev(index)
        .map_err(|_| NativeError::ResourceTable("bad vdev entry"))?;
    if vdev.id() != VIRTIO_ID_RPMSG || vdev.num_of_vrings() < 2 {
        return Err(NativeError::ResourceTable(
            "vdev is not an rpmsg device with two vrings",
        ));
    }
    let ring = |i| -> Result<VringLayout, NativeError> {
        let v = vdev
            .vring(i)
            .ok_or(NativeError::ResourceTable("missing vring"))?;
        let num =
            u16::try_from(v.num).map_err(|_| NativeError::ResourceTable("vring too large"))?;
        VringLayout::legacy(v.da as u64, num, v.align as u64)
            .map_err(|_| NativeError::ResourceTable("impossible vring layout"))
    };
    Ok(VdevInfo {
        offset: table
            .offset(index)
            .ok_or(NativeError::ResourceTable("no offset"))? as u64,
        dfeatures: vdev.dfeatures(),
        gfeatures: vdev.gfeatures(),
        status: vdev.status(),
        rings: [ring(0)?, ring(1)?],
        platform: table
            .find(RSC_VAMP_PLATFORM, 0)
            .and_then(|i| PlatformInfo::parse(&table, i)),
    })
}

/// The host's choice: `wanted` if the remote's platform entry says it can, else split rings.
/// Writes the mode into the entry (before DRIVER_OK), so the remote sees the same choice.
fn choose_ring_format(
    shm: &MappedFile,
    info: &VdevInfo,
    wanted: RingFormat,
) -> Result<RingFormat, NativeError> {
    let Some(platform) = info.platform else {
        return Ok(RingFormat::Split);
    };
    let format = match wanted {
        RingFormat::Packed if platform.features & F_PACKED_RING != 0 => RingFormat::Packed,
        _ => RingFormat::Split,
    };
    shm.write(
        RSC_TABLE_ADDR + platform.body + PLATFORM_MODE_AT as u64,
        &format.platform_mode().to_le_bytes(),
    )
    .map_err(|_| NativeError::ResourceTable("platform entry outside the file"))?;
    Ok(format)
}

fn set_status(shm: &MappedFile, vdev: u64, status: u8) -> Result<(), NativeError> {
    crate::mem::write_barrier();
    shm.write(RSC_TABLE_ADDR + vdev + VDEV_STATUS_AT as u64, &[status])
        .map_err(|_| NativeError::ResourceTable("status outside the file"))
}

/// The format the remote runs: packed only if its own entry declared packed rings and the host
/// chose them.
fn remote_ring_format(info: &VdevInfo) -> RingFormat {
    match info.platform {
        Some(p) if p.features & F_PACKED_RING != 0 => RingFormat::from_platform_mode(p.mode),
        _ => RingFormat::Split,
    }
}

/// Starts the remote (device) side: writes the resource table, waits for the host to connect
/// and to set DRIVER_OK, then attaches to the rings. `timeout` bounds the whole wait.
pub fn start_remote(
    paths: &NativePaths,
    timeout: Option<Duration>,
    mut on_listening: impl FnMut(),
) -> Result<RemoteRpmsg, NativeError> {
    let shm = Arc::new(MappedFile::open(&paths.shm, SHM_SIZE)?);
    write_resource_table(&shm)?;
    let _ = std::fs::remove_file(&paths.socket);
    let listener = UnixListener::bind(&paths.socket)
        .map_err(|e| NativeError::Io("listen on kick socket", e))?;
    on_listening();
    let deadline = timeout.map(|t| Instant::now() + t);
    listener
        .set_nonblocking(true)
        .map_err(|e| NativeError::Io("socket mode", e))?;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if deadline.is_some_and(|d| Instant::now() > d) {
                    return Err(NativeError::Timeout("the host to connect"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(NativeError::Io("accept on kick socket", e)),
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(&paths.socket);
    let mut env = SocketEnv::new(stream)?;
    // Wait for DRIVER_OK, as OpenAMP's device role does.
    loop {
        if read_vdev(&shm)?.status & STATUS_DRIVER_OK != 0 {
            break;
        }
        if env.peer_gone() {
            return Err(NativeError::PeerGone);
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(NativeError::Timeout("the host to set DRIVER_OK"));
        }
        env.wait(10_000);
    }
    crate::mem::read_barrier();
    // Read again after the barrier: the host wrote its mode before DRIVER_OK, but the copy
    // above may have taken the mode's bytes before the status byte.
    let info = read_vdev(&shm)?;
    let format = remote_ring_format(&info);
    let features = info.gfeatures & info.dfeatures;
    let t = DeviceTransport::attach(
        shm,
        env,
        DeviceRings::fresh(info.rings[0], info.rings[1], format),
        Endian::NATIVE,
        false,
        BufferConfig::default().r2h_buf_size,
    )?;
    let config = Config {
        name_service: u64::from(features) & VIRTIO_RPMSG_F_NS != 0,
        ..Config::default()
    };
    let mut rpmsg = Rpmsg::new(t, config);
    // No kick for every receive buffer the host posts back on vq 0: the engine asks for them
    // only while a send waits for one, as OpenAMP's device role does (it marks vq 0
    // VRING_USED_F_NO_NOTIFY). Left on, each echo cost the host a second kick and system call.
    rpmsg.transport_mut().want_tx_notifications(false)?;
    Ok(rpmsg)
}

/// Starts the host (driver) side: connects (retrying until `timeout`), reads the remote's
/// resource table, negotiates features, lays out the rings and buffers and sets DRIVER_OK.
/// The rings are split rings, as every OpenAMP peer expects.
pub fn start_host(paths: &NativePaths, timeout: Duration) -> Result<HostRpmsg, NativeError> {
    start_host_with_rings(paths, timeout, RingFormat::Split)
}

/// [`start_host`] asking for rings of `wanted` format: packed rings if the remote's platform
/// entry declares them (a vamp remote), else split rings (an OpenAMP remote, or an older vamp).
/// `transport().ring_format()` says which the link runs.
pub fn start_host_with_rings(
    paths: &NativePaths,
    timeout: Duration,
    wanted: RingFormat,
) -> Result<HostRpmsg, NativeError> {
    start_host_with(paths, timeout, wanted, |t| t)
}

/// [`start_host`] with a driver that picks and posts transmit buffers as OpenAMP's driver
/// role does ([`crate::testing`]), to test a remote against OpenAMP's rule.
#[cfg(feature = "testing")]
pub fn start_openamp_style_host(
    paths: &NativePaths,
    timeout: Duration,
) -> Result<HostRpmsg, NativeError> {
    start_host_with(
        paths,
        timeout,
        RingFormat::Split,
        crate::testing::openamp_style,
    )
}

/// [`start_host`] with the driver transport wrapped by `wrap` before the engine starts.
fn start_host_with<T: Transport>(
    paths: &NativePaths,
    timeout: Duration,
    wanted: RingFormat,
    wrap: impl FnOnce(DriverTransport<Arc<MappedFile>, SocketEnv>) -> T,
) -> Result<Rpmsg<T>, NativeError> {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match UnixStream::connect(&paths.socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(NativeError::Io("connect to kick socket", e));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let env = SocketEnv::new(stream)?;
    let shm = Arc::new(MappedFile::open(&paths.shm, SHM_SIZE)?);
    let info = read_vdev(&shm)?;
    // The virtio handshake, in the resource table.
    set_status(&shm, info.offset, 0)?;
    set_status(&shm, info.offset, STATUS_ACKNOWLEDGE | STATUS_DRIVER)?;
    let features = info.dfeatures & VIRTIO_RPMSG_F_NS as u32;
    shm.write(
        RSC_TABLE_ADDR + info.offset + VDEV_GFEATURES_AT as u64,
        &features.to_ne_bytes(),
    )
    .map_err(|_| NativeError::ResourceTable("features outside the file"))?;
    set_status(
        &shm,
        info.offset,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    )?;
    let format = choose_ring_format(&shm, &info, wanted)?;
    let layout = DriverLayout {
        rx_ring: info.rings[0],
        tx_ring: info.rings[1],
        pool_addr: SHARED_BUF_ADDR,
        pool_len: SHARED_BUF_SIZE,
        buffers: BufferConfig::default(),
    };
    let t = DriverTransport::with_format(shm.clone(), env, layout, Endian::NATIVE, false, format)?;
    set_status(&shm, info.offset, STATUS_STARTED)?;
    let config = Config {
        name_service: u64::from(features) & VIRTIO_RPMSG_F_NS != 0,
        ..Config::default()
    };
    let mut rpmsg = Rpmsg::new(wrap(t), config);
    // Tell the remote its receive buffers are posted.
    rpmsg.transport_mut().flush()?;
    Ok(rpmsg)
}

/// Paths unique to this process, for runs that must not meet OpenAMP's defaults.
pub fn private_paths(tag: &str) -> NativePaths {
    let id = std::process::id();
    NativePaths {
        shm: std::format!("/dev/shm/vamp-{tag}-{id}.shm").into(),
        socket: std::env::temp_dir().join(std::format!("vamp-{tag}-{id}.sock")),
    }
}

/// Removes the shared file and socket of a run.
pub fn cleanup(paths: &NativePaths) {
    let _ = std::fs::remove_file(&paths.shm);
    let _ = std::fs::remove_file(&paths.socket);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::resource_table::Resource;

    fn temp_paths(tag: &str) -> NativePaths {
        let dir = std::env::temp_dir();
        let id = std::process::id();
        NativePaths {
            shm: dir.join(std::format!("vamp-unit-{tag}-{id}.shm")),
            socket: dir.join(std::format!("vamp-unit-{tag}-{id}.sock")),
        }
    }

    #[test]
    fn resource_table_has_openamps_layout() {
        let paths = temp_paths("rsc");
        let shm = MappedFile::open(&paths.shm, SHM_SIZE).unwrap();
        // OpenAMP's own table: header 16 + one offset 4, then the vdev entry: 28 + 2 vrings
        // of 20.
        assert_eq!(write_table(&shm, None).unwrap(), 20 + 28 + 40);
        assert!(read_vdev(&shm).unwrap().platform.is_none());
        // vamp's: one more offset, the same vdev entry, then the platform entry (type + body).
        let len = write_resource_table(&shm).unwrap();
        assert_eq!(len, 24 + 28 + 40 + 4 + PLATFORM_BODY_LEN);
        let mut copy = std::vec![0u8; len];
        shm.read(0, &mut copy).unwrap();
        let table = ResourceTable::new_checked(&copy[..], Endian::NATIVE).unwrap();
        assert_eq!(table.offset(0), Some(24));
        assert_eq!(table.offset(1), Some(24 + 68));
        let Resource::Vendor { rtype, .. } = table.entry(1).unwrap() else {
            panic!("not a vendor entry")
        };
        assert_eq!(rtype, RSC_VAMP_PLATFORM);
        let Resource::Vdev(v) = table.entry(0).unwrap() else {
            panic!("not a vdev")
        };
        assert_eq!((v.id(), v.dfeatures(), v.status()), (7, 1, 0));
        let rings: std::vec::Vec<_> = v
            .vrings()
            .map(|r| (r.da, r.align, r.num, r.notifyid))
            .collect();
        assert_eq!(rings, [(0x4000, 0x1000, 256, 1), (0x8000, 0x1000, 256, 2)]);
        let info = read_vdev(&shm).unwrap();
        assert_eq!(info.offset, 24);
        assert_eq!(info.rings[1].used, 0xa000);
        let platform = info.platform.unwrap();
        assert_eq!((platform.features, platform.mode), (F_PACKED_RING, 0));
        // Rings and pool do not overlap each other or the table.
        assert!(RSC_TABLE_ADDR + len as u64 <= u64::from(VRING0_ADDR));
        assert!(info.rings[0].used + info.rings[0].used_bytes() <= 0x8000);
        assert!(info.rings[1].used + info.rings[1].used_bytes() <= SHARED_BUF_ADDR);
        assert!(SHARED_BUF_ADDR + SHARED_BUF_SIZE <= SHM_SIZE as u64);
        // Packed rings in the same areas stay inside each ring's split footprint.
        for ring in info.rings {
            let packed = crate::packed::PackedLayout::in_areas_of(&ring).unwrap();
            assert_eq!(packed.desc_bytes(), 16 * u64::from(VRING_NUM));
            assert!(packed.desc + packed.desc_bytes() <= ring.avail);
            assert!(packed.device_event + 4 <= ring.used + ring.used_bytes());
        }
        drop(shm);
        cleanup(&paths);
    }

    #[test]
    fn host_picks_packed_rings_only_when_the_remote_declares_them() {
        let paths = temp_paths("choose");
        let shm = MappedFile::open(&paths.shm, SHM_SIZE).unwrap();
        // An OpenAMP remote's table (no platform entry): split, whatever the host wants.
        write_table(&shm, None).unwrap();
        let info = read_vdev(&shm).unwrap();
        assert_eq!(
            choose_ring_format(&shm, &info, RingFormat::Packed).unwrap(),
            RingFormat::Split
        );
        assert_eq!(
            remote_ring_format(&read_vdev(&shm).unwrap()),
            RingFormat::Split
        );
        // A remote whose entry does not declare packed rings (an older vamp): split.
        write_table(&shm, Some(0)).unwrap();
        let info = read_vdev(&shm).unwrap();
        assert_eq!(
            choose_ring_format(&shm, &info, RingFormat::Packed).unwrap(),
            RingFormat::Split
        );
        assert_eq!(read_vdev(&shm).unwrap().platform.unwrap().mode, 0);
        // vamp's remote: what the host asks for, and the remote reads the same.
        for wanted in [RingFormat::Packed, RingFormat::Split] {
            write_resource_table(&shm).unwrap();
            let info = read_vdev(&shm).unwrap();
            assert_eq!(choose_ring_format(&shm, &info, wanted).unwrap(), wanted);
            assert_eq!(remote_ring_format(&read_vdev(&shm).unwrap()), wanted);
        }
        // A mode the remote never declared a feature for counts for nothing on its side.
        write_table(&shm, Some(0)).unwrap();
        let info = read_vdev(&shm).unwrap();
        let mode_at = RSC_TABLE_ADDR + info.platform.unwrap().body + PLATFORM_MODE_AT as u64;
        shm.write(mode_at, &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(
            remote_ring_format(&read_vdev(&shm).unwrap()),
            RingFormat::Split
        );
        drop(shm);
        cleanup(&paths);
    }

    /// Both sides of the link in one process, packed rings asked for: both run them, and
    /// echoes go through.
    #[test]
    fn both_sides_run_packed_rings_when_the_host_asks() {
        use crate::apps::{ECHO_CHANNEL, EnvWaiter, ping, serve_echo_on};
        for wanted in [RingFormat::Packed, RingFormat::Split] {
            let paths = temp_paths(&std::format!("rings-{wanted}"));
            let remote_paths = paths.clone();
            let (format_tx, format_rx) = std::sync::mpsc::channel();
            let remote = std::thread::spawn(move || {
                let mut rpmsg =
                    start_remote(&remote_paths, Some(Duration::from_secs(60)), || {}).unwrap();
                format_tx.send(rpmsg.transport().ring_format()).unwrap();
                serve_echo_on(&mut rpmsg, &mut EnvWaiter, &[ECHO_CHANNEL], "r").map(|e| e.echoed)
            });
            let mut host = start_host_with_rings(&paths, Duration::from_secs(60), wanted).unwrap();
            assert_eq!(host.transport().ring_format(), wanted);
            let remote_format = format_rx.recv_timeout(Duration::from_secs(60));
            if remote_format != Ok(wanted) {
                // Let the remote's thread end: its echo loop stops when the host goes.
                drop(host);
                let _ = remote.join();
                cleanup(&paths);
                panic!("the remote runs {remote_format:?}, the host {wanted}");
            }
            let summary = ping(
                &mut host,
                &mut EnvWaiter,
                ECHO_CHANNEL,
                300,
                Duration::from_secs(60),
                "h",
            )
            .unwrap();
            let echoed = remote.join().unwrap();
            cleanup(&paths);
            assert!(summary.all_matched(), "{summary}");
            assert_eq!(echoed.unwrap(), 300);
        }
    }

    #[test]
    fn host_refuses_a_garbage_table() {
        let paths = temp_paths("garbage");
        let shm = MappedFile::open(&paths.shm, SHM_SIZE).unwrap();
        shm.write(0, &[0xff; 64]).unwrap();
        assert!(matches!(
            read_vdev(&shm),
            Err(NativeError::ResourceTable(_))
        ));
        // A valid table whose vring does not fit in the file.
        write_resource_table(&shm).unwrap();
        shm.write(20 + 28, &0x7_f000u32.to_ne_bytes()).unwrap();
        let err = read_vdev(&shm).and_then(|info| {
            VringLayout::check(&info.rings[0], &shm)
                .map_err(|_| NativeError::ResourceTable("ring outside the file"))
        });
        assert!(err.is_err());
        drop(shm);
        cleanup(&paths);
    }

    /// Both ends of a kick socket, each as a [`SocketEnv`].
    fn env_pair() -> (SocketEnv, SocketEnv) {
        let (a, b) = UnixStream::pair().unwrap();
        (SocketEnv::new(a).unwrap(), SocketEnv::new(b).unwrap())
    }

    #[test]
    fn a_wait_ends_with_the_kick_and_takes_every_queued_byte() {
        let (mut a, mut b) = env_pair();
        // Nothing queued: a zero timeout looks and returns.
        assert!(!b.wait_for_kick(Duration::ZERO));
        a.notify(0);
        a.notify(1);
        assert_eq!(a.kicks_sent, 2);
        // Queued kicks end a long wait at once, both taken by one read.
        let t = Instant::now();
        assert!(b.wait_for_kick(Duration::from_secs(60)));
        assert!(t.elapsed() < Duration::from_secs(30));
        assert_eq!(b.kicks_received, 2);
        // A kick sent while the other side blocks in its read wakes it.
        let kicker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            a.notify(0);
            a
        });
        let t = Instant::now();
        assert!(b.wait_for_kick(Duration::from_secs(60)));
        assert!(t.elapsed() < Duration::from_secs(30));
        assert_eq!(b.kicks_received, 3);
        let a = kicker.join().unwrap();
        assert!(!a.peer_gone() && !b.peer_gone());
    }

    #[test]
    fn a_wait_without_a_kick_lasts_its_whole_timeout() {
        let (_a, mut b) = env_pair();
        // Longer than one blocking read: the wait reads in steps, then polls the rest.
        for ms in [5, WAIT_SLICE_US / 1000 + 50, 2 * WAIT_SLICE_US / 1000 + 1] {
            let t = Instant::now();
            assert!(!b.wait_for_kick(Duration::from_millis(ms)));
            let took = t.elapsed();
            assert!(
                took >= Duration::from_millis(ms),
                "{ms} ms wait took {took:?}"
            );
            assert!(took < Duration::from_secs(30), "{ms} ms wait took {took:?}");
        }
        assert!(!b.peer_gone());
    }

    #[test]
    fn a_wait_ends_when_the_peer_closes() {
        let (a, mut b) = env_pair();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(a);
        });
        let t = Instant::now();
        assert!(!b.wait_for_kick(Duration::from_secs(60)));
        assert!(t.elapsed() < Duration::from_secs(30));
        assert!(b.peer_gone());
        closer.join().unwrap();
        // Gone stays gone: no more waiting, and a kick goes nowhere.
        assert!(!b.wait_for_kick(Duration::from_secs(60)));
        b.notify(0);
        assert_eq!(b.kicks_sent, 0);
    }

    #[test]
    fn shared_file_is_bounds_checked() {
        let paths = temp_paths("bounds");
        let shm = MappedFile::open(&paths.shm, 4096).unwrap();
        assert!(shm.write(4095, &[1]).is_ok());
        assert!(shm.write(4095, &[1, 2]).is_err());
        assert!(shm.read(u64::MAX - 1, &mut [0; 4]).is_err());
        drop(shm);
        cleanup(&paths);
    }
}
