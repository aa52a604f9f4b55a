//! The x86-64 side of the KVM backend: the vCPU starts straight in 64-bit mode at CPL3.
//!
//! The firmware runs at CPL3 (user mode) with all of RAM identity-mapped: on a software
//! hypervisor (this project's test machines) guest kernel-mode code is emulated and slow while
//! user-mode code runs natively; on VMX/SVM hosts both run natively, so the same setup serves
//! both. What the firmware sees:
//!
//! - page tables, GDT and TSS in the host's reserved first MiB;
//! - `rdi` = RAM size at entry; `rsp` is the firmware's business;
//! - I/O ports (allowed for CPL3 by the TSS I/O bitmap): kick (0x500, an ioeventfd: no exit to
//!   user space), wait (0x504), console (0x508), exit (0x50c);
//! - a fault (no IDT: a triple fault) or `hlt` ends the remote as crashed.

use super::{Event, HOST_RESERVED, io, le_value};
use crate::backend::{BackendError, Exit};
use kvm_bindings::{kvm_regs, kvm_segment};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use vamp_rpmsg::guest_ram::GuestRam;
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::wire::platform::{CONSOLE_PORT, EXIT_PORT, KICK_PORT, WAIT_PORT};

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

/// Where the firmware's kick lands (the kick ioeventfd is registered there).
pub(super) const KICK_ADDRESS: IoEventAddress = IoEventAddress::Pio(KICK_PORT as u64);

/// Whether this host's KVM can run an x86-64 remote: any /dev/kvm here can.
pub(super) fn probe(_kvm: &Kvm) -> Result<(), String> {
    Ok(())
}

/// What the x86-64 vCPU keeps between starts.
#[derive(Debug)]
pub(super) struct Cpu {
    /// TSC frequency of the vCPU in kHz (0: unknown), for the firmware's clock.
    tsc_khz: u32,
}

impl Cpu {
    /// Gives the new vCPU every CPUID feature KVM supports and reads its TSC frequency.
    pub(super) fn new(kvm: &Kvm, _vm: &VmFd, vcpu: &VcpuFd) -> Result<Self, BackendError> {
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(io("read supported CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(io("set CPUID"))?;
        let tsc_khz = vcpu.get_tsc_khz().unwrap_or(0);
        Ok(Cpu { tsc_khz })
    }

    /// The firmware's clock in kHz (the TSC's), or 0 if unknown.
    pub(super) fn clock_khz(&self) -> u32 {
        self.tsc_khz
    }

    /// Writes the platform tables and puts the vCPU at `entry`, as for a fresh start.
    pub(super) fn reset(
        &self,
        vcpu: &VcpuFd,
        ram: &GuestRam,
        memory: u64,
        entry: u64,
    ) -> Result<(), BackendError> {
        write_platform(ram, memory)?;
        setup_vcpu(vcpu, memory, entry)
    }
}

/// Decodes the exits of the x86-64 platform: port I/O, triple fault, `hlt`. Anything else
/// goes back to the architecture-neutral run loop.
#[derive(Debug)]
pub(super) struct Exits;

impl Exits {
    /// A decoder for a vCPU's run (the x86-64 platform needs no state).
    pub(super) fn new() -> Self {
        Exits
    }

    /// What `exit` means on this platform; an exit it does not own goes back unchanged.
    pub(super) fn decode<'a>(&mut self, exit: VcpuExit<'a>) -> Result<Event, VcpuExit<'a>> {
        Ok(match exit {
            VcpuExit::IoOut(port, data) => {
                let value = le_value(data);
                match port {
                    WAIT_PORT => Event::Wait,
                    CONSOLE_PORT => Event::Console(value as u8),
                    EXIT_PORT => Event::Stop(Exit::Exited(value)),
                    // Without the ioeventfd (it only matches some sizes) the kick exits here.
                    KICK_PORT => Event::Kick,
                    _ => Event::Stop(Exit::Crashed(format!(
                        "write to unknown I/O port {port:#x}"
                    ))),
                }
            }
            VcpuExit::IoIn(port, _) => {
                Event::Stop(Exit::Crashed(format!("read from I/O port {port:#x}")))
            }
            VcpuExit::Shutdown => Event::Stop(Exit::Crashed(
                "the firmware faulted (triple fault: no handler for an exception)".into(),
            )),
            VcpuExit::Hlt => Event::Stop(Exit::Crashed("the firmware halted".into())),
            other => return Err(other),
        })
    }
}

/// Writes the page tables, GDT and TSS below 1 MiB.
fn write_platform(m: &GuestRam, memory: u64) -> Result<(), BackendError> {
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
    for i in 0..(memory >> 21) {
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

/// Long mode at CPL3: user code and data segments, the TSS with its I/O bitmap, paging on.
fn setup_vcpu(vcpu: &VcpuFd, memory: u64, entry: u64) -> Result<(), BackendError> {
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
        rdi: memory,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(io("set regs"))?;
    Ok(())
}

fn tss_low(base: u64, limit: u64) -> u64 {
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, 64-bit available TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56)
}

#[cfg(test)]
mod tests {
    use super::super::tests::kvm_or_skip;
    use super::super::{KvmOptions, KvmRemote};
    use super::HOST_RESERVED;
    use crate::backend::{Exit, RemoteBackend};
    use object::read::elf::{FileHeader, ProgramHeader};
    use std::time::{Duration, Instant};
    use vamp_rpmsg::mem::SharedMemory;

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
