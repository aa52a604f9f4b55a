//! The KVM backend: a remote's ELF runs as a micro-VM with one vCPU.
//!
//! This module is the architecture-neutral part: the VM and its memory slot, the kick
//! ioeventfd, the doorbell, the vCPU thread's run loop, the watchdog, the platform entry and
//! the [`RemoteBackend`] lifecycle. How the vCPU starts and how the firmware reaches the host
//! (its "ports") is per architecture, behind the same small interface (the `arch` module:
//! `probe`, `KICK_ADDRESS`, `Cpu` for the vCPU setup, `Exits` for what its exits mean):
//!
//! - `x86_64`: 64-bit mode at CPL3, I/O ports (see its module docs);
//! - `aarch64`: EL1h with the MMU off, MMIO stores, PSCI `SYSTEM_OFF` (see its module docs).
//!
//! What every architecture shares (see `images/src/lib.rs`):
//!
//! - RAM from 0 to the configured size; the host keeps 0..1 MiB ([`HOST_RESERVED`]) for its
//!   own structures and allocates rings, buffer pools and trace buffers from the top of RAM
//!   downwards.
//! - The RAM size in the first argument register at entry.
//! - Four platform registers: kick (an ioeventfd: no exit to user space), wait, console, exit.
//! - A fault, an access outside RAM, or no sign of life for the watchdog period stops the VM
//!   and the remote is reported crashed.
//!
//! # The platform entry: how the firmware waits
//!
//! A firmware that declares the vamp platform entry in its resource table (a vendor entry,
//! [`RSC_VAMP_PLATFORM`], laid out below) is told by the host, at load and again at start,
//! how to wait for work; the host handles the entry as Linux's remoteproc drivers handle their
//! vendor resources, and the firmware reads it once the vdev is up (DRIVER_OK):
//!
//! - **notify** (the default): the firmware keeps polling its rings for
//!   [`KvmOptions::wait_spin`] after its last message, with the host's kicks off, then turns
//!   them on and sleeps on the wait port. This is KVM's halt-polling done by the firmware: a
//!   wait costs an exit to this process and a new `KVM_RUN` (about 30 us on a software
//!   hypervisor, where loading and putting the vCPU traps to the outer hypervisor), so a
//!   message that comes within the window is taken without one.
//! - **busy-poll** ([`KvmOptions::busy_poll`]): the firmware turns its engine's busy-poll mode
//!   on and spins on its rings: no wait-port exits and no kicks at all. The host's engine must
//!   busy-poll too (`DriverTransport::set_busy_poll`), as no notification will come. Without
//!   exits the watchdog has no sign of life but the entry's heartbeat, which the firmware
//!   counts up while it spins.
//!
//! The entry also chooses the rings' format: with [`KvmOptions::ring_format`] packed and a
//! firmware that declares [`PLATFORM_F_PACKED_RING`], the host sets
//! [`PLATFORM_MODE_PACKED_RING`] and both sides lay packed virtqueues in the vrings' areas
//! (`RemoteBackend::ring_format` tells the host's driver). A firmware that does not declare
//! the feature gets split rings, as does every remote by default.
//!
//! The entry's layout is defined once, for the firmware and the host, in
//! [`vamp_rpmsg::wire::platform`].

use crate::backend::{BackendError, Doorbell, Exit, RemoteBackend};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, NoDatamatch, VcpuExit, VcpuFd, VmFd};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vamp_rpmsg::futex::{futex_wait, futex_wake};
use vamp_rpmsg::guest_ram::GuestRam;
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::transport::RingFormat;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

// The architecture's side: `probe`, `KICK_ADDRESS`, `Cpu` (vCPU setup) and `Exits` (what its
// platform's exits mean), the same names on every architecture.
#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
use aarch64 as arch;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as arch;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the KVM backend supports x86_64 and aarch64 hosts");

/// Below this the host keeps its own structures; firmware loads above it.
pub const HOST_RESERVED: u64 = 0x10_0000;
/// Default RAM of a remote.
pub const DEFAULT_MEMORY: u64 = 16 << 20;
/// Default watchdog: a remote that neither waits nor kicks for this long is declared hung.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(5);
/// Default spin window of a notify-mode firmware before it waits (see the module docs).
pub const DEFAULT_WAIT_SPIN: Duration = Duration::from_micros(50);
/// Longest spin window the host asks for.
pub const MAX_WAIT_SPIN: Duration = Duration::from_millis(10);

// The vamp platform entry's format, shared with the firmware (`vamp_rpmsg::wire::platform`),
// under the names this module has always given it.
pub use vamp_rpmsg::wire::platform::{
    BODY_LEN as PLATFORM_BODY_LEN, F_BUSY_POLL as PLATFORM_F_BUSY_POLL,
    F_PACKED_RING as PLATFORM_F_PACKED_RING, F_WAIT_SPIN as PLATFORM_F_WAIT_SPIN,
    MAGIC as PLATFORM_MAGIC, MODE_BUSY_POLL as PLATFORM_MODE_BUSY_POLL,
    MODE_PACKED_RING as PLATFORM_MODE_PACKED_RING, RSC_VAMP_PLATFORM, VERSION as PLATFORM_VERSION,
};
use vamp_rpmsg::wire::platform::{
    FEATURES_AT as PLATFORM_AT_FEATURES, HEARTBEAT_AT as PLATFORM_AT_HEARTBEAT,
    MAGIC_AT as PLATFORM_AT_MAGIC, MODE_AT as PLATFORM_AT_MODE, SPIN_US_AT as PLATFORM_AT_SPIN_US,
    TSC_KHZ_AT as PLATFORM_AT_TSC_KHZ, VERSION_AT as PLATFORM_AT_VERSION,
};

/// Options of a KVM remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmOptions {
    /// Bytes of RAM (a multiple of 2 MiB, at most 1 GiB).
    pub memory: u64,
    /// How long the remote may go without waiting or kicking (or, busy-polling, without
    /// counting up its heartbeat) before it counts as hung.
    pub watchdog: Duration,
    /// Busy-poll mode (off by default): the firmware spins on its rings and never waits or
    /// kicks; the host's engine must spin too. Needs a firmware with the platform entry (see
    /// the module docs): [`start`](RemoteBackend::start) fails otherwise.
    pub busy_poll: bool,
    /// In notify mode, how long the firmware keeps polling its rings after its last message
    /// before it sleeps on the wait port (zero: at once; at most [`MAX_WAIT_SPIN`]).
    pub wait_spin: Duration,
    /// The rings' format to ask for (split by default). Packed rings need a firmware whose
    /// platform entry declares them ([`PLATFORM_F_PACKED_RING`]); any other runs split rings
    /// (see the module docs). [`RemoteBackend::ring_format`] says which the remote runs.
    pub ring_format: RingFormat,
}

impl Default for KvmOptions {
    fn default() -> Self {
        KvmOptions {
            memory: DEFAULT_MEMORY,
            watchdog: DEFAULT_WATCHDOG,
            busy_poll: false,
            wait_spin: DEFAULT_WAIT_SPIN,
            ring_format: RingFormat::Split,
        }
    }
}

/// Where the firmware's platform entry is, and what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformEntry {
    /// Device address of the entry's body.
    pub da: u64,
    /// The features the firmware declared (`PLATFORM_F_*`).
    pub features: u32,
}

/// Counters of one KVM remote, from its creation: how often each side was notified and how
/// often the vCPU left the guest. Take two and subtract to count a stretch of work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmStats {
    /// Exits of the vCPU to this process (`KVM_RUN` returning): wait, console and exit-port
    /// writes, and signals.
    pub vmm_exits: u64,
    /// Writes to the wait port.
    pub wait_exits: u64,
    /// Waits in which the vCPU thread went to sleep (nothing had rung since the last wait).
    pub sleeps: u64,
    /// Host notifications ([`Doorbell::ring`]).
    pub rings: u64,
    /// Rings that had to wake the sleeping vCPU thread.
    pub wakeups: u64,
    /// Notifications the host took from the doorbell ([`Doorbell::wait`]): the remote's kicks,
    /// and one when it stops.
    pub kicks_taken: u64,
    /// KVM's count of the vCPU's exits of every kind: port I/O (kicks, handled in the kernel
    /// by the ioeventfd, included), but also every host interrupt and preemption while the
    /// guest runs. `None` where the kernel has no binary statistics (before Linux 5.14).
    pub kvm_exits: Option<u64>,
}

/// Whether KVM can be used here: `Err` says why not.
pub fn kvm_available() -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm not usable: {e}"))?;
    arch::probe(&kvm)
}

/// What a vCPU exit means to the run loop, once the architecture has decoded it.
#[derive(Debug)]
enum Event {
    /// A kick that did not go through the ioeventfd.
    Kick,
    /// The firmware has nothing to do (the wait register).
    Wait,
    /// A console byte.
    Console(u8),
    /// The remote stopped: exited, faulted, or broke the platform's rules.
    Stop(Exit),
    /// Nothing for the host to do: run on.
    Resume,
}

/// The value of a little-endian register write of 1 to 4 bytes (more are cut to the low 4).
fn le_value(data: &[u8]) -> u32 {
    data.iter()
        .take(4)
        .rev()
        .fold(0u32, |v, &b| (v << 8) | b as u32)
}

/// The host-to-remote doorbell is a futex word: nothing new (and the vCPU thread is not asleep),
const BELL_IDLE: u32 = 0;
/// the host rang since the remote last waited,
const BELL_RUNG: u32 = 1;
/// or the vCPU thread sleeps on the word (only a ring that sees this makes a system call).
const BELL_SLEEPING: u32 = 2;

/// Longest sleep of a wait: the firmware looks at its rings at least this often.
const WAIT_TIMEOUT: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct Counters {
    vmm_exits: AtomicU64,
    wait_exits: AtomicU64,
    sleeps: AtomicU64,
    rings: AtomicU64,
    wakeups: AtomicU64,
    kicks_taken: AtomicU64,
}

/// State shared by the host, the vCPU thread and the watchdog.
#[derive(Debug)]
struct Shared {
    /// The doorbell word (`BELL_*`).
    bell: AtomicU32,
    /// The host wants the vCPU to stop.
    stop: AtomicBool,
    /// Written by the firmware's kick (ioeventfd) and by the vCPU thread when it stops.
    from_remote: EventFd,
    exit: Mutex<Option<Exit>>,
    running: AtomicBool,
    /// The vCPU thread has left its loop.
    vcpu_done: AtomicBool,
    console: Mutex<Vec<u8>>,
    /// Microseconds since `epoch` of the remote's last sign of life.
    heartbeat_us: AtomicU64,
    epoch: Instant,
    /// Device address of the firmware's heartbeat word in its platform entry (0: none).
    heartbeat_at: AtomicU64,
    counters: Counters,
}

impl Shared {
    fn new(from_remote: EventFd) -> Self {
        Shared {
            bell: AtomicU32::new(BELL_IDLE),
            stop: AtomicBool::new(false),
            from_remote,
            exit: Mutex::new(None),
            running: AtomicBool::new(false),
            vcpu_done: AtomicBool::new(false),
            console: Mutex::new(Vec::new()),
            heartbeat_us: AtomicU64::new(0),
            epoch: Instant::now(),
            heartbeat_at: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    /// Rings the doorbell: the vCPU's next wait returns at once, and a sleeping one wakes.
    /// Returns whether the vCPU thread had to be woken.
    fn wake_vcpu(&self) -> bool {
        // A plain load first: while the remote is busy the word stays RUNG, and a ring costs
        // no write to a line the vCPU thread also uses.
        if self.bell.load(Ordering::Acquire) == BELL_RUNG {
            return false;
        }
        if self.bell.swap(BELL_RUNG, Ordering::AcqRel) == BELL_SLEEPING {
            futex_wake(&self.bell, 1);
            return true;
        }
        false
    }

    /// The wait port: returns at once if the host rang since the last wait (or wants the vCPU
    /// to stop), else sleeps until it does, at most [`WAIT_TIMEOUT`].
    fn wait_for_ring(&self) {
        if self.bell.swap(BELL_IDLE, Ordering::AcqRel) == BELL_RUNG
            || self.stop.load(Ordering::SeqCst)
        {
            return;
        }
        // A ring between the swap and here turns the word RUNG and this fails: no sleep.
        if self
            .bell
            .compare_exchange(
                BELL_IDLE,
                BELL_SLEEPING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.counters.sleeps.fetch_add(1, Ordering::Relaxed);
            futex_wait(&self.bell, BELL_SLEEPING, WAIT_TIMEOUT);
        }
        // Woken, timed out or interrupted: whatever rang is taken (the firmware looks at its
        // rings next).
        self.bell.store(BELL_IDLE, Ordering::Release);
    }

    fn alive(&self) {
        self.heartbeat_us
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn finish(&self, exit: Exit) {
        let mut slot = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
        }
        self.running.store(false, Ordering::SeqCst);
        // Wake whoever waits for the remote.
        let _ = self.from_remote.write(1);
    }

    /// Asks the vCPU thread to stop and wakes it if it sleeps on the wait port.
    fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake_vcpu();
    }
}

/// The doorbell of a KVM remote.
#[derive(Debug, Clone)]
pub struct KvmDoorbell(Arc<Shared>);

impl Doorbell for KvmDoorbell {
    fn stopped(&self) -> bool {
        self.0.vcpu_done.load(Ordering::SeqCst)
    }

    fn ring(&self, _notifyid: u32) {
        self.0.counters.rings.fetch_add(1, Ordering::Relaxed);
        if self.0.wake_vcpu() {
            self.0.counters.wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn wait(&self, timeout: Duration) -> bool {
        // A kick may be there already: one read, no poll.
        if self.take_kicks() {
            return true;
        }
        if timeout.is_zero() {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: self.0.from_remote.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Round up: a wait of 100 us must not become a poll that returns at once.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is a valid pollfd for the call; count 1 matches.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) } > 0;
        ready && self.take_kicks()
    }
}

impl KvmDoorbell {
    /// Takes what the remote signalled (non-blocking); whether there was anything.
    fn take_kicks(&self) -> bool {
        match self.0.from_remote.read() {
            Ok(n) => {
                self.0.counters.kicks_taken.fetch_add(n, Ordering::Relaxed);
                self.0.alive();
                true
            }
            Err(_) => false,
        }
    }
}

/// KVM's binary statistics of the vCPU (`KVM_GET_STATS_FD`, Linux 5.14 and later): where the
/// `exits` counter is in its file. (Its `io_exits` is no help: kvm_pvm does not count port I/O
/// there.)
#[derive(Debug)]
struct VcpuStats {
    file: File,
    exits: u64,
}

/// `KVM_GET_STATS_FD`: `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xae << 8 | 0xce;

impl VcpuStats {
    fn open(vcpu: &VcpuFd) -> Option<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file descriptor (or -1)
        // on a live vCPU descriptor; nothing of ours is written.
        let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD as _) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; 24];
        file.read_exact_at(&mut header, 0).ok()?;
        let word = |b: &[u8], i: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
        };
        let name_size = word(&header, 4)? as usize;
        let count = word(&header, 8)? as usize;
        let desc_at = u64::from(word(&header, 16)?);
        let data_at = u64::from(word(&header, 20)?);
        // Descriptors: flags u32, exponent i16, size u16, offset u32, bucket u32, name.
        let desc_len = 16 + name_size;
        if name_size > 4096 || count > 4096 {
            return None;
        }
        let mut descs = vec![0u8; desc_len * count];
        file.read_exact_at(&mut descs, desc_at).ok()?;
        let find = |wanted: &str| {
            descs.chunks_exact(desc_len).find_map(|d| {
                let name = d[16..].split(|&b| b == 0).next()?;
                (name == wanted.as_bytes()).then(|| data_at + u64::from(word(d, 8).unwrap_or(0)))
            })
        };
        let exits = find("exits")?;
        Some(VcpuStats { file, exits })
    }

    fn exits(&self) -> Option<u64> {
        let mut v = [0u8; 8];
        self.file.read_exact_at(&mut v, self.exits).ok()?;
        Some(u64::from_ne_bytes(v))
    }
}

/// A remote running as a KVM micro-VM.
pub struct KvmRemote {
    _kvm: Kvm,
    _vm: VmFd,
    vcpu: Option<VcpuFd>,
    ram: GuestRam,
    memory: u64,
    watchdog: Duration,
    /// Allocations grow down from the top of RAM to this floor.
    alloc_top: u64,
    busy_poll: bool,
    wait_spin: Duration,
    /// The rings' format asked for.
    wanted_rings: RingFormat,
    /// The rings' format agreed at the last start (what the running firmware runs).
    rings: RingFormat,
    /// The architecture's vCPU state (clock, how to reset the vCPU).
    cpu: arch::Cpu,
    /// The loaded firmware's platform entry.
    platform: Option<PlatformEntry>,
    stats: Option<VcpuStats>,
    shared: Arc<Shared>,
    vcpu_thread: Option<JoinHandle<VcpuFd>>,
    watchdog_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KvmRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmRemote")
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

fn io(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BackendError {
    move |e| BackendError::Io {
        what,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

impl KvmRemote {
    /// Creates the VM with its memory and vCPU (not started).
    pub fn new(options: KvmOptions) -> Result<Self, BackendError> {
        let memory = options.memory;
        if !(2 * HOST_RESERVED..=1 << 30).contains(&memory) || !memory.is_multiple_of(2 << 20) {
            return Err(BackendError::Other(format!(
                "remote memory must be a multiple of 2 MiB between 2 MiB and 1 GiB, not {memory:#x}"
            )));
        }
        let kvm = Kvm::new().map_err(io("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(io("create VM"))?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), memory as usize)])
            .map_err(|e| BackendError::Other(format!("allocate remote memory: {e}")))?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| BackendError::Other(format!("remote memory: {e}")))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: memory,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `memory` bytes owned by `mem`, which the
        // GuestRam below keeps alive for as long as the VM (both live in `self`).
        unsafe { vm.set_user_memory_region(region) }.map_err(io("set VM memory"))?;
        let ram = GuestRam::new(mem);
        let from_remote = EventFd::new(EFD_NONBLOCK).map_err(|e| BackendError::Io {
            what: "eventfd",
            source: e,
        })?;
        vm.register_ioevent(&from_remote, &arch::KICK_ADDRESS, NoDatamatch)
            .map_err(io("register the kick ioeventfd"))?;
        let vcpu = vm.create_vcpu(0).map_err(io("create vCPU"))?;
        let cpu = arch::Cpu::new(&kvm, &vm, &vcpu)?;
        let stats = VcpuStats::open(&vcpu);
        let shared = Arc::new(Shared::new(from_remote));
        Ok(KvmRemote {
            _kvm: kvm,
            _vm: vm,
            vcpu: Some(vcpu),
            ram,
            memory,
            watchdog: options.watchdog,
            alloc_top: memory,
            busy_poll: options.busy_poll,
            wait_spin: options.wait_spin.min(MAX_WAIT_SPIN),
            wanted_rings: options.ring_format,
            rings: RingFormat::Split,
            cpu,
            platform: None,
            stats,
            shared,
            vcpu_thread: None,
            watchdog_thread: None,
        })
    }

    /// Bytes of RAM.
    pub fn memory_size(&self) -> u64 {
        self.memory
    }

    /// Chooses busy-poll or notify mode (see [`KvmOptions::busy_poll`]) for the next start.
    pub fn set_busy_poll(&mut self, on: bool) {
        self.busy_poll = on;
    }

    /// Whether the remote is (or will be started) in busy-poll mode.
    pub fn busy_poll(&self) -> bool {
        self.busy_poll
    }

    /// Chooses the rings' format to ask for (see [`KvmOptions::ring_format`]) at the next start.
    pub fn set_ring_format(&mut self, format: RingFormat) {
        self.wanted_rings = format;
    }

    /// The loaded firmware's platform entry, if it has one.
    pub fn platform(&self) -> Option<PlatformEntry> {
        self.platform
    }

    /// The counters so far.
    pub fn stats(&self) -> KvmStats {
        let c = &self.shared.counters;
        KvmStats {
            vmm_exits: c.vmm_exits.load(Ordering::Relaxed),
            wait_exits: c.wait_exits.load(Ordering::Relaxed),
            sleeps: c.sleeps.load(Ordering::Relaxed),
            rings: c.rings.load(Ordering::Relaxed),
            wakeups: c.wakeups.load(Ordering::Relaxed),
            kicks_taken: c.kicks_taken.load(Ordering::Relaxed),
            kvm_exits: self.stats.as_ref().and_then(VcpuStats::exits),
        }
    }

    /// The rings' format for a firmware that declared `features`: the one asked for if it can
    /// run it, else split rings.
    fn rings_for(&self, features: u32) -> RingFormat {
        match self.wanted_rings {
            RingFormat::Packed if features & PLATFORM_F_PACKED_RING != 0 => RingFormat::Packed,
            _ => RingFormat::Split,
        }
    }

    /// The host's words of the platform entry for a firmware that declared `features`: mode,
    /// spin window, TSC frequency.
    fn platform_words(&self, features: u32) -> [(usize, u32); 3] {
        let wait = if self.busy_poll {
            PLATFORM_MODE_BUSY_POLL
        } else {
            0
        };
        let mode = wait | self.rings_for(features).platform_mode();
        let spin_us = self.wait_spin.as_micros().min(u128::from(u32::MAX)) as u32;
        [
            (PLATFORM_AT_MODE, mode),
            (PLATFORM_AT_SPIN_US, spin_us),
            (PLATFORM_AT_TSC_KHZ, self.cpu.clock_khz()),
        ]
    }
}

/// Signal used to pull the vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

extern "C" fn ignore_signal(_: i32) {}

fn install_kick_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that does nothing (async-signal-safe); SA_RESTART is off
        // so KVM_RUN returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

fn run_vcpu(mut vcpu: VcpuFd, shared: Arc<Shared>) -> VcpuFd {
    let mut exits = arch::Exits::new();
    shared.alive();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let ran = vcpu.run();
        shared.counters.vmm_exits.fetch_add(1, Ordering::Relaxed);
        let event = match ran {
            Ok(exit) => match exits.decode(exit) {
                Ok(event) => event,
                Err(VcpuExit::MmioRead(addr, _)) | Err(VcpuExit::MmioWrite(addr, _)) => {
                    Event::Stop(Exit::Crashed(format!("access outside RAM at {addr:#x}")))
                }
                Err(VcpuExit::InternalError) => Event::Stop(Exit::Crashed(
                    "KVM internal error (the hypervisor could not run an instruction)".into(),
                )),
                Err(VcpuExit::FailEntry(reason, _)) => Event::Stop(Exit::Crashed(format!(
                    "KVM could not enter the guest (reason {reason:#x})"
                ))),
                Err(VcpuExit::Intr) => Event::Resume,
                Err(other) => Event::Stop(Exit::Crashed(format!("unexpected VM exit {other:?}"))),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Event::Resume,
            Err(e) => Event::Stop(Exit::Crashed(format!("KVM_RUN failed: {e}"))),
        };
        let exit = match event {
            Event::Wait => {
                shared.alive();
                shared.counters.wait_exits.fetch_add(1, Ordering::Relaxed);
                shared.wait_for_ring();
                None
            }
            Event::Console(byte) => {
                shared.alive();
                // Bounded: a remote printing faster than the host reads loses bytes, never
                // grows this process.
                crate::console::push_bounded(
                    &mut shared.console.lock().unwrap_or_else(|p| p.into_inner()),
                    &[byte],
                );
                None
            }
            Event::Kick => {
                let _ = shared.from_remote.write(1);
                None
            }
            Event::Resume => None,
            Event::Stop(exit) => Some(exit),
        };
        if let Some(exit) = exit {
            shared.finish(exit);
            shared.vcpu_done.store(true, Ordering::SeqCst);
            return vcpu;
        }
    }
    shared.finish(Exit::Crashed("stopped by the host".into()));
    shared.vcpu_done.store(true, Ordering::SeqCst);
    vcpu
}

/// Watches a running vCPU: a remote that neither waits nor kicks (nor, busy-polling, counts up
/// its heartbeat) for `watchdog` is hung; a hung remote or a stop request pulls the vCPU thread
/// out of KVM_RUN with a signal.
fn watch(shared: &Shared, ram: &GuestRam, watchdog: Duration, vcpu_thread: libc::pthread_t) {
    let mut last_beat = None;
    while !shared.vcpu_done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
        // The firmware's heartbeat (untrusted: only ever compared with its last value).
        let at = shared.heartbeat_at.load(Ordering::Relaxed);
        if at != 0 {
            let mut word = [0u8; 4];
            let beat = ram.read(at, &mut word).ok().map(|()| word);
            if beat.is_some() && beat != last_beat {
                if last_beat.is_some() {
                    shared.alive();
                }
                last_beat = beat;
            }
        }
        let idle_us = (shared.epoch.elapsed().as_micros() as u64)
            .saturating_sub(shared.heartbeat_us.load(Ordering::Relaxed));
        let stopping = shared.stop.load(Ordering::SeqCst);
        if idle_us > watchdog.as_micros() as u64 && !stopping {
            // Record the verdict before asking the vCPU to stop: its own "stopped by the host"
            // must not replace it.
            shared.finish(Exit::Crashed(format!(
                "watchdog: no sign of life for {} ms",
                idle_us / 1000
            )));
            shared.request_stop();
        } else if !stopping {
            continue;
        }
        // The vCPU may be between two KVM_RUN calls when a signal lands: repeat until it is out.
        while !shared.vcpu_done.load(Ordering::SeqCst) {
            // SAFETY: signals a thread we started and have not joined (the owner joins it only
            // after this thread ends); the handler does nothing.
            unsafe { libc::pthread_kill(vcpu_thread, kick_signal()) };
            shared.wake_vcpu();
            std::thread::sleep(Duration::from_millis(2));
        }
        return;
    }
}

impl RemoteBackend for KvmRemote {
    type Memory = GuestRam;

    fn memory(&self) -> &GuestRam {
        &self.ram
    }

    fn map(&mut self, da: u64, len: u64) -> Result<u64, BackendError> {
        let end = da
            .checked_add(len)
            .ok_or(BackendError::NoMemory { da, len })?;
        if da < HOST_RESERVED || end > self.alloc_top {
            return Err(BackendError::NoMemory { da, len });
        }
        Ok(da)
    }

    fn alloc(&mut self, len: u64, align: u64) -> Result<u64, BackendError> {
        let align = align.max(8);
        if !align.is_power_of_two() {
            return Err(BackendError::Other(format!(
                "alignment {align:#x} is not a power of two"
            )));
        }
        let start = self
            .alloc_top
            .checked_sub(len)
            .map(|a| a & !(align - 1))
            .filter(|&a| a >= HOST_RESERVED)
            .ok_or(BackendError::OutOfMemory { len })?;
        self.alloc_top = start;
        Ok(start)
    }

    /// Handles the vamp platform entry ([`RSC_VAMP_PLATFORM`]): checks what the firmware
    /// declared and writes the host's words (mode, spin window, TSC frequency) into the body,
    /// which goes back to remote memory with the table. Other vendor types are unsupported.
    fn vendor_resource_at(
        &mut self,
        rtype: u32,
        da: u64,
        body: &mut [u8],
    ) -> Result<(), BackendError> {
        if rtype != RSC_VAMP_PLATFORM {
            return Err(BackendError::Unsupported(format!(
                "vendor resource type {rtype}"
            )));
        }
        let word = |b: &[u8], at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
        };
        if word(body, PLATFORM_AT_MAGIC) != Some(PLATFORM_MAGIC) {
            return Err(BackendError::Unsupported(format!(
                "vendor resource type {rtype} is not a vamp platform entry (no magic)"
            )));
        }
        let version = word(body, PLATFORM_AT_VERSION).unwrap_or(0);
        if version != PLATFORM_VERSION || body.len() < PLATFORM_BODY_LEN {
            return Err(BackendError::Unsupported(format!(
                "vamp platform entry version {version} of {} bytes (this host knows version \
                 {PLATFORM_VERSION}, {PLATFORM_BODY_LEN} bytes)",
                body.len()
            )));
        }
        let features = word(body, PLATFORM_AT_FEATURES).unwrap_or(0);
        for (at, value) in self.platform_words(features) {
            body[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        body[PLATFORM_AT_HEARTBEAT..PLATFORM_AT_HEARTBEAT + 4].fill(0);
        self.platform = Some(PlatformEntry { da, features });
        Ok(())
    }

    fn start(&mut self, entry: u64) -> Result<(), BackendError> {
        if self.vcpu.is_none() {
            return Err(BackendError::Other("the remote is already running".into()));
        }
        let can_poll = self
            .platform
            .is_some_and(|p| p.features & PLATFORM_F_BUSY_POLL != 0);
        if self.busy_poll && !can_poll {
            return Err(BackendError::Unsupported(
                "busy-poll mode needs a firmware whose vamp platform entry says it can busy-poll"
                    .into(),
            ));
        }
        // The mode may have changed since the load: write the host's words again.
        self.rings = self
            .platform
            .map_or(RingFormat::Split, |p| self.rings_for(p.features));
        if let Some(p) = self.platform {
            for (at, value) in self.platform_words(p.features) {
                self.ram
                    .write(p.da + at as u64, &value.to_le_bytes())
                    .map_err(|e| BackendError::Other(format!("platform entry: {e}")))?;
            }
        }
        let Some(vcpu) = self.vcpu.take() else {
            return Err(BackendError::Other("the remote is already running".into()));
        };
        if let Err(e) = self.cpu.reset(&vcpu, &self.ram, self.memory, entry) {
            self.vcpu = Some(vcpu);
            return Err(e);
        }
        install_kick_handler();
        *self.shared.exit.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.shared.stop.store(false, Ordering::SeqCst);
        self.shared.bell.store(BELL_IDLE, Ordering::SeqCst);
        self.shared.heartbeat_at.store(
            self.platform
                .map_or(0, |p| p.da + PLATFORM_AT_HEARTBEAT as u64),
            Ordering::SeqCst,
        );
        self.shared.running.store(true, Ordering::SeqCst);
        self.shared.vcpu_done.store(false, Ordering::SeqCst);
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("remote-vcpu".into())
            .spawn(move || run_vcpu(vcpu, shared))
            .map_err(|e| BackendError::Io {
                what: "start the vCPU thread",
                source: e,
            })?;
        let pthread = {
            use std::os::unix::thread::JoinHandleExt;
            thread.as_pthread_t()
        };
        self.vcpu_thread = Some(thread);
        // The watchdog: a remote that neither waits nor kicks for the watchdog period is hung;
        // a stop request pulls the vCPU out of KVM_RUN the same way.
        let shared = self.shared.clone();
        let watchdog = self.watchdog;
        let ram = self.ram.clone();
        self.watchdog_thread = Some(
            std::thread::Builder::new()
                .name("remote-watchdog".into())
                .spawn(move || watch(&shared, &ram, watchdog, pthread))
                .map_err(|e| BackendError::Io {
                    what: "start the watchdog",
                    source: e,
                })?,
        );
        Ok(())
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        self.shared.request_stop();
        if let Some(t) = self.watchdog_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.vcpu_thread.take() {
            match t.join() {
                Ok(vcpu) => self.vcpu = Some(vcpu),
                Err(_) => return Err(BackendError::Other("the vCPU thread panicked".into())),
            }
        }
        self.alloc_top = self.memory;
        // The next load handles the resource table (and any platform entry) again.
        self.platform = None;
        self.rings = RingFormat::Split;
        self.shared.heartbeat_at.store(0, Ordering::SeqCst);
        Ok(())
    }

    fn doorbell(&self) -> Arc<dyn Doorbell> {
        Arc::new(KvmDoorbell(self.shared.clone()))
    }

    /// The format agreed at the last start: packed only if asked for and the firmware's
    /// platform entry declared it.
    fn ring_format(&self) -> RingFormat {
        self.rings
    }

    fn poll_exit(&mut self) -> Option<Exit> {
        if !self.shared.vcpu_done.load(Ordering::SeqCst) {
            return None;
        }
        self.shared
            .exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn take_console(&mut self) -> Vec<u8> {
        std::mem::take(
            &mut *self
                .shared
                .console
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }
}

impl Drop for KvmRemote {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether KVM can run a remote of this architecture here; says why not if not.
    pub(super) fn kvm_or_skip(test: &str) -> bool {
        match kvm_available() {
            Ok(()) => true,
            Err(why) => {
                eprintln!("skipped: {test}: {why}");
                false
            }
        }
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(EventFd::new(EFD_NONBLOCK).unwrap()))
    }

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let s = shared();
        assert!(!s.wake_vcpu(), "nobody sleeps: no wake-up");
        assert!(!s.wake_vcpu(), "rung twice: still none");
        s.wait_for_ring();
        assert_eq!(s.counters.sleeps.load(Ordering::SeqCst), 0);
        assert_eq!(s.bell.load(Ordering::SeqCst), BELL_IDLE);
        s.request_stop();
        s.wait_for_ring();
        assert_eq!(
            s.counters.sleeps.load(Ordering::SeqCst),
            0,
            "stopping: no sleep"
        );
    }

    #[test]
    fn a_ring_wakes_a_sleeping_vcpu() {
        let s = shared();
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || {
                // Until one wait is ended by a ring, not by its timeout.
                while s.counters.wakeups.load(Ordering::SeqCst) == 0 {
                    s.wait_for_ring();
                }
            })
        };
        loop {
            while s.bell.load(Ordering::SeqCst) != BELL_SLEEPING {
                std::thread::yield_now();
            }
            // The wait may time out between the load and the ring: then try again.
            if s.wake_vcpu() {
                s.counters.wakeups.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        waiter.join().unwrap();
        assert!(s.counters.sleeps.load(Ordering::SeqCst) >= 1);
        assert_eq!(s.bell.load(Ordering::SeqCst), BELL_IDLE);
    }
}
