//! The KVM backend: a remote's ELF runs as a micro-VM, started straight in 64-bit mode.
//!
//! The firmware runs at CPL3 (user mode) with all of RAM identity-mapped: on a software
//! hypervisor (this project's test machines) guest kernel-mode code is emulated and slow while
//! user-mode code runs natively; on VMX/SVM hosts both run natively, so the same setup serves
//! both. The platform the firmware sees (see `images/src/lib.rs`):
//!
//! - RAM from 0 to the configured size; the host keeps 0..1 MiB for page tables, GDT and TSS
//!   and allocates rings, buffer pools and trace buffers from the top of RAM downwards.
//! - `rdi` = RAM size at entry; `rsp` is the firmware's business.
//! - I/O ports (allowed for CPL3 by the TSS I/O bitmap): kick (0x500, an ioeventfd: no exit to
//!   user space), wait (0x504), console (0x508), exit (0x50c).
//! - A fault (no IDT: a triple fault), `hlt`, an access outside RAM, or no sign of life for
//!   the watchdog period stops the VM and the remote is reported crashed.

use crate::backend::{BackendError, Doorbell, Exit, RemoteBackend};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuExit, VcpuFd, VmFd};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vamp_rpmsg::guest_ram::GuestRam;
use vamp_rpmsg::mem::SharedMemory;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Port the firmware writes a notify id to (an ioeventfd).
pub const KICK_PORT: u16 = 0x500;
/// Port the firmware writes to when it has nothing to do.
pub const WAIT_PORT: u16 = 0x504;
/// Console output port.
pub const CONSOLE_PORT: u16 = 0x508;
/// Exit port.
pub const EXIT_PORT: u16 = 0x50c;
/// Below this the host keeps its own structures; firmware loads above it.
pub const HOST_RESERVED: u64 = 0x10_0000;
/// Default RAM of a remote.
pub const DEFAULT_MEMORY: u64 = 16 << 20;
/// Default watchdog: a remote that neither waits nor kicks for this long is declared hung.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(5);

const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const GDT: u64 = 0x5000;
const TSS: u64 = 0x6000;
const TSS_LEN: u64 = 0x68;
const IOPB_LEN: u64 = 0x2000 + 1;
const KERNEL_STACK_TOP: u64 = 0xf000;
const USER_CS: u16 = 0x33;
const USER_DS: u16 = 0x2b;
const TSS_SEL: u16 = 0x40;

/// Options of a KVM remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmOptions {
    /// Bytes of RAM (a multiple of 2 MiB, at most 1 GiB).
    pub memory: u64,
    /// How long the remote may go without waiting or kicking before it counts as hung.
    pub watchdog: Duration,
}

impl Default for KvmOptions {
    fn default() -> Self {
        KvmOptions {
            memory: DEFAULT_MEMORY,
            watchdog: DEFAULT_WATCHDOG,
        }
    }
}

/// Whether KVM can be used here: `Err` says why not.
pub fn kvm_available() -> Result<(), String> {
    Kvm::new()
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm not usable: {e}"))
}

#[derive(Debug, Default)]
struct RemoteSide {
    /// The host rang the doorbell since the remote last waited.
    pending: bool,
    /// The host wants the vCPU to stop.
    stop: bool,
}

/// State shared by the host, the vCPU thread and the watchdog.
#[derive(Debug)]
struct Shared {
    remote: Mutex<RemoteSide>,
    remote_cv: Condvar,
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
}

impl Shared {
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
}

/// The doorbell of a KVM remote.
#[derive(Debug, Clone)]
pub struct KvmDoorbell(Arc<Shared>);

impl Doorbell for KvmDoorbell {
    fn stopped(&self) -> bool {
        self.0.vcpu_done.load(Ordering::SeqCst)
    }

    fn ring(&self, _notifyid: u32) {
        let mut side = self.0.remote.lock().unwrap_or_else(|p| p.into_inner());
        side.pending = true;
        self.0.remote_cv.notify_all();
    }

    fn wait(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.0.from_remote.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is a valid pollfd for the call; count 1 matches.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) } > 0;
        if ready && self.0.from_remote.read().is_ok() {
            self.0.alive();
            return true;
        }
        false
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
        vm.register_ioevent(
            &from_remote,
            &IoEventAddress::Pio(KICK_PORT as u64),
            NoDatamatch,
        )
        .map_err(io("register the kick ioeventfd"))?;
        let vcpu = vm.create_vcpu(0).map_err(io("create vCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(io("read supported CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(io("set CPUID"))?;
        let shared = Arc::new(Shared {
            remote: Mutex::new(RemoteSide::default()),
            remote_cv: Condvar::new(),
            from_remote,
            exit: Mutex::new(None),
            running: AtomicBool::new(false),
            vcpu_done: AtomicBool::new(false),
            console: Mutex::new(Vec::new()),
            heartbeat_us: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        Ok(KvmRemote {
            _kvm: kvm,
            _vm: vm,
            vcpu: Some(vcpu),
            ram,
            memory,
            watchdog: options.watchdog,
            alloc_top: memory,
            shared,
            vcpu_thread: None,
            watchdog_thread: None,
        })
    }

    /// Bytes of RAM.
    pub fn memory_size(&self) -> u64 {
        self.memory
    }

    /// Writes the page tables, GDT and TSS below 1 MiB.
    fn write_platform(&self) -> Result<(), BackendError> {
        let m = &self.ram;
        let bad = |_| BackendError::Other("cannot write the platform tables".into());
        m.fill(0, HOST_RESERVED as usize, 0).map_err(bad)?;
        // Identity map the first GiB with 2 MiB pages, user-accessible and writable.
        const P: u64 = 1;
        const RW: u64 = 2;
        const US: u64 = 4;
        const PS: u64 = 0x80;
        m.store_u64(PML4, (PDPT | P | RW | US).to_le())
            .map_err(bad)?;
        m.store_u64(PDPT, (PD | P | RW | US).to_le()).map_err(bad)?;
        for i in 0..(self.memory >> 21) {
            m.store_u64(PD + 8 * i, ((i << 21) | P | RW | US | PS).to_le())
                .map_err(bad)?;
        }
        // GDT: null, kernel code 0x08, kernel data 0x10, user data 0x28 (0x2b), user code
        // 0x30 (0x33), TSS 0x40 (two slots).
        let gdt: [u64; 10] = [
            0,
            0x00af_9b00_0000_ffff,
            0x00cf_9300_0000_ffff,
            0,
            0,
            0x00cf_f300_0000_ffff,
            0x00af_fb00_0000_ffff,
            0,
            tss_low(TSS, TSS_LEN + IOPB_LEN - 1),
            TSS >> 32,
        ];
        for (i, d) in gdt.iter().enumerate() {
            m.store_u64(GDT + 8 * i as u64, d.to_le()).map_err(bad)?;
        }
        // TSS: rsp0 (never used: no interrupts) and the I/O bitmap right after it, every
        // port denied but the platform's.
        m.write(TSS + 4, &KERNEL_STACK_TOP.to_le_bytes())
            .map_err(bad)?;
        m.store_u16(TSS + 0x66, (TSS_LEN as u16).to_le())
            .map_err(bad)?;
        m.fill(TSS + TSS_LEN, IOPB_LEN as usize, 0xff)
            .map_err(bad)?;
        for port in KICK_PORT..=EXIT_PORT + 3 {
            let at = TSS + TSS_LEN + (port / 8) as u64;
            let mut b = [0u8];
            m.read(at, &mut b).map_err(bad)?;
            b[0] &= !(1 << (port % 8));
            m.write(at, &b).map_err(bad)?;
        }
        Ok(())
    }

    fn setup_vcpu(&self, vcpu: &VcpuFd, entry: u64) -> Result<(), BackendError> {
        let mut sregs = vcpu.get_sregs().map_err(io("read sregs"))?;
        let seg = |selector: u16, type_: u8, l: u8, db: u8| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 3,
            db,
            s: 1,
            l,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.cs = seg(USER_CS, 11, 1, 0);
        let data = seg(USER_DS, 3, 0, 1);
        sregs.ds = data;
        sregs.es = data;
        sregs.ss = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.tr = kvm_segment {
            base: TSS,
            limit: (TSS_LEN + IOPB_LEN - 1) as u32,
            selector: TSS_SEL,
            type_: 11,
            present: 1,
            dpl: 0,
            db: 0,
            s: 0,
            l: 0,
            g: 0,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.gdt.base = GDT;
        sregs.gdt.limit = (10 * 8 - 1) as u16;
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        sregs.cr3 = PML4;
        // PE | MP | ET | NE | WP | PG
        sregs.cr0 = 1 | 2 | 0x10 | 0x20 | 0x1_0000 | 0x8000_0000;
        // PAE | OSFXSR | OSXMMEXCPT: SSE works in the firmware.
        sregs.cr4 = 0x20 | 0x200 | 0x400;
        // LME | LMA
        sregs.efer = 0x100 | 0x400;
        vcpu.set_sregs(&sregs).map_err(io("set sregs"))?;
        let regs = kvm_regs {
            rip: entry,
            rdi: self.memory,
            rflags: 0x2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(io("set regs"))?;
        Ok(())
    }
}

fn tss_low(base: u64, limit: u64) -> u64 {
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, 64-bit available TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56)
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
    shared.alive();
    loop {
        if shared.remote.lock().unwrap_or_else(|p| p.into_inner()).stop {
            break;
        }
        let exit = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                let value = data.iter().rev().fold(0u32, |v, &b| (v << 8) | b as u32);
                match port {
                    WAIT_PORT => {
                        shared.alive();
                        let mut side = shared.remote.lock().unwrap_or_else(|p| p.into_inner());
                        if !side.pending && !side.stop {
                            side = shared
                                .remote_cv
                                .wait_timeout(side, Duration::from_millis(50))
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        side.pending = false;
                        None
                    }
                    CONSOLE_PORT => {
                        shared.alive();
                        shared
                            .console
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(value as u8);
                        None
                    }
                    EXIT_PORT => Some(Exit::Exited(value)),
                    KICK_PORT => {
                        // Without the ioeventfd (it only matches some sizes) the kick exits here.
                        let _ = shared.from_remote.write(1);
                        None
                    }
                    _ => Some(Exit::Crashed(format!(
                        "write to unknown I/O port {port:#x}"
                    ))),
                }
            }
            Ok(VcpuExit::IoIn(port, _)) => {
                Some(Exit::Crashed(format!("read from I/O port {port:#x}")))
            }
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => {
                Some(Exit::Crashed(format!("access outside RAM at {addr:#x}")))
            }
            Ok(VcpuExit::Shutdown) => Some(Exit::Crashed(
                "the firmware faulted (triple fault: no handler for an exception)".into(),
            )),
            Ok(VcpuExit::Hlt) => Some(Exit::Crashed("the firmware halted".into())),
            Ok(VcpuExit::InternalError) => Some(Exit::Crashed(
                "KVM internal error (the hypervisor could not run an instruction)".into(),
            )),
            Ok(VcpuExit::FailEntry(reason, _)) => Some(Exit::Crashed(format!(
                "KVM could not enter the guest (reason {reason:#x})"
            ))),
            Ok(VcpuExit::Intr) => None,
            Ok(other) => Some(Exit::Crashed(format!("unexpected VM exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(Exit::Crashed(format!("KVM_RUN failed: {e}"))),
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

/// Watches a running vCPU: a remote that neither waits nor kicks for `watchdog` is hung; a hung
/// remote or a stop request pulls the vCPU thread out of KVM_RUN with a signal.
fn watch(shared: &Shared, watchdog: Duration, vcpu_thread: libc::pthread_t) {
    while !shared.vcpu_done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
        let idle_us = (shared.epoch.elapsed().as_micros() as u64)
            .saturating_sub(shared.heartbeat_us.load(Ordering::Relaxed));
        let mut side = shared.remote.lock().unwrap_or_else(|p| p.into_inner());
        if idle_us > watchdog.as_micros() as u64 && !side.stop {
            // Record the verdict first: the vCPU thread's own "stopped" must not replace it.
            side.stop = true;
            drop(side);
            shared.finish(Exit::Crashed(format!(
                "watchdog: no sign of life for {} ms",
                idle_us / 1000
            )));
        } else if !side.stop {
            continue;
        } else {
            // The vCPU thread needs this lock to notice the stop: never hold it while waiting.
            drop(side);
        }
        // The vCPU may be between two KVM_RUN calls when a signal lands: repeat until it is out.
        while !shared.vcpu_done.load(Ordering::SeqCst) {
            // SAFETY: signals a thread we started and have not joined (the owner joins it only
            // after this thread ends); the handler does nothing.
            unsafe { libc::pthread_kill(vcpu_thread, kick_signal()) };
            shared.remote_cv.notify_all();
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

    fn start(&mut self, entry: u64) -> Result<(), BackendError> {
        let Some(vcpu) = self.vcpu.take() else {
            return Err(BackendError::Other("the remote is already running".into()));
        };
        if let Err(e) = self
            .write_platform()
            .and_then(|()| self.setup_vcpu(&vcpu, entry))
        {
            self.vcpu = Some(vcpu);
            return Err(e);
        }
        install_kick_handler();
        *self.shared.exit.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.shared.remote.lock().unwrap_or_else(|p| p.into_inner()) = RemoteSide::default();
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
        self.watchdog_thread = Some(
            std::thread::Builder::new()
                .name("remote-watchdog".into())
                .spawn(move || watch(&shared, watchdog, pthread))
                .map_err(|e| BackendError::Io {
                    what: "start the watchdog",
                    source: e,
                })?,
        );
        Ok(())
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        {
            let mut side = self.shared.remote.lock().unwrap_or_else(|p| p.into_inner());
            side.stop = true;
            self.shared.remote_cv.notify_all();
        }
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
        Ok(())
    }

    fn doorbell(&self) -> Arc<dyn Doorbell> {
        Arc::new(KvmDoorbell(self.shared.clone()))
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
    use object::read::elf::{FileHeader, ProgramHeader};

    fn kvm_or_skip(test: &str) -> bool {
        match kvm_available() {
            Ok(()) => true,
            Err(why) => {
                eprintln!("skipped: {test}: {why}");
                false
            }
        }
    }

    /// Copies the PT_LOAD segments of a built-in image (the full loader lives in `elf`).
    fn load_segments(remote: &KvmRemote, image: &[u8]) -> u64 {
        let header = object::elf::FileHeader64::<object::Endianness>::parse(image).unwrap();
        let endian = header.endian().unwrap();
        for ph in header.program_headers(endian, image).unwrap() {
            if ph.p_type(endian) == object::elf::PT_LOAD {
                let data = ph.data(endian, image).unwrap();
                remote.memory().write(ph.p_paddr(endian), data).unwrap();
            }
        }
        header.e_entry(endian)
    }

    #[test]
    fn firmware_runs_at_cpl3_and_waits() {
        if !kvm_or_skip("firmware_runs_at_cpl3_and_waits") {
            return;
        }
        let mut remote = KvmRemote::new(KvmOptions::default()).unwrap();
        let entry = load_segments(&remote, crate::images::builtin("echo").unwrap());
        remote.start(entry).unwrap();
        // The echo firmware waits for DRIVER_OK through the wait port: alive, not crashed.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            remote.poll_exit(),
            None,
            "console: {:?}",
            String::from_utf8_lossy(&remote.take_console())
        );
        remote.stop().unwrap();
        assert_eq!(
            remote.poll_exit(),
            Some(Exit::Crashed("stopped by the host".into()))
        );
    }

    /// Regression: the watchdog held the vCPU's lock while pulling it out of KVM_RUN, so a
    /// stop could hang forever.
    #[test]
    fn stop_always_returns() {
        if !kvm_or_skip("stop_always_returns") {
            return;
        }
        let mut remote = KvmRemote::new(KvmOptions::default()).unwrap();
        let image = crate::images::builtin("echo").unwrap();
        for round in 0..20 {
            let entry = load_segments(&remote, image);
            remote.start(entry).unwrap();
            std::thread::sleep(Duration::from_millis(round % 5));
            let t0 = Instant::now();
            remote.stop().unwrap();
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "round {round}: stop took {:?}",
                t0.elapsed()
            );
            assert!(remote.poll_exit().is_some());
        }
    }

    #[test]
    fn a_fault_is_a_crash() {
        if !kvm_or_skip("a_fault_is_a_crash") {
            return;
        }
        let mut remote = KvmRemote::new(KvmOptions::default()).unwrap();
        // Jump to an address no page table maps: a page fault with no IDT is a triple fault.
        remote.start(0x8000_0000).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let exit = loop {
            if let Some(e) = remote.poll_exit() {
                break e;
            }
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            matches!(exit, Exit::Crashed(ref why) if why.contains("fault") || why.contains("KVM")),
            "{exit:?}"
        );
    }

    #[test]
    fn a_silent_remote_trips_the_watchdog() {
        if !kvm_or_skip("a_silent_remote_trips_the_watchdog") {
            return;
        }
        let mut remote = KvmRemote::new(KvmOptions {
            watchdog: Duration::from_millis(200),
            ..Default::default()
        })
        .unwrap();
        // `jmp $` at 1 MiB: spins at CPL3 without a single exit.
        remote.memory().write(HOST_RESERVED, &[0xeb, 0xfe]).unwrap();
        remote.start(HOST_RESERVED).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let exit = loop {
            if let Some(e) = remote.poll_exit() {
                break e;
            }
            assert!(Instant::now() < deadline, "watchdog never fired");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            matches!(exit, Exit::Crashed(ref why) if why.contains("watchdog")),
            "{exit:?}"
        );
        remote.stop().unwrap();
    }
}
