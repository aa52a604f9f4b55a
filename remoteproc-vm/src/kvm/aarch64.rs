//! The aarch64 side of the KVM backend: a bare-metal remote on one vCPU at EL1h.
//!
//! Why EL1 and not EL0 (the x86 side runs CPL3 because a software hypervisor emulates guest
//! kernel mode): arm64 KVM runs guest EL1 on the hardware, so EL1 costs nothing and spares the
//! firmware an exception level of its own. Not yet measured on an arm64 host (see README,
//! "Building for arm64 / ZynqMP"). What the firmware sees:
//!
//! - `pc` = the ELF entry, `x0` = RAM size, `sp` (SP_EL1) = [`HOST_RESERVED`]: the reserved
//!   first MiB below the image is its boot stack; PSTATE = EL1h with D, A, I and F masked; the
//!   MMU and caches off, as the architecture resets them (a firmware that wants atomics or
//!   unaligned accesses turns its MMU on first: with it off, all data accesses are Device).
//! - The platform registers: 32-bit stores to an MMIO window right above the largest RAM,
//!   `AARCH64_MMIO_BASE` (guest-lib's `wire::platform`) + kick (an ioeventfd: no exit to user
//!   space), wait, console, exit, in the order and spacing of the x86 ports.
//! - PSCI 0.2 through `hvc`: `SYSTEM_OFF` ends the remote as exited (0), `SYSTEM_RESET` and
//!   a crash report as crashed.
//! - `VBAR_EL1` points at a vector table the host writes into the reserved MiB: every
//!   exception stores `ELR_EL1` and then `ESR_EL1` to the two fault registers, and the remote
//!   is reported crashed with both.

use super::{Event, HOST_RESERVED, io, le_value};
use crate::backend::{BackendError, Exit};
use kvm_bindings::{
    KVM_ARM_VCPU_PSCI_0_2, KVM_REG_ARM_CORE, KVM_REG_ARM64, KVM_REG_ARM64_SYSREG,
    KVM_REG_ARM64_SYSREG_CRM_SHIFT, KVM_REG_ARM64_SYSREG_CRN_SHIFT, KVM_REG_ARM64_SYSREG_OP0_SHIFT,
    KVM_REG_ARM64_SYSREG_OP1_SHIFT, KVM_REG_ARM64_SYSREG_OP2_SHIFT, KVM_REG_SIZE_U64,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, kvm_regs,
    kvm_vcpu_init, user_pt_regs,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use std::mem::offset_of;
use vamp_rpmsg::guest_ram::GuestRam;
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::wire::platform::{
    AARCH64_CONSOLE_MMIO, AARCH64_EXIT_MMIO, AARCH64_KICK_MMIO, AARCH64_MMIO_BASE,
    AARCH64_WAIT_MMIO,
};

// The firmware-visible registers are defined once, beside the x86 ports, in
// vamp_rpmsg::wire::platform; the fault registers below are the host's own (its vectors).
const MMIO_BASE: u64 = AARCH64_MMIO_BASE;
/// The host's exception vectors store `ESR_EL1` here (a crash).
const FAULT_MMIO: u64 = MMIO_BASE + 0x10;
/// ... after storing `ELR_EL1` here.
const FAULT_ADDRESS_MMIO: u64 = MMIO_BASE + 0x18;
/// End of the window: any access in it but the stores above is a crash.
const MMIO_END: u64 = MMIO_BASE + 0x20;

/// Where the host's exception vector table goes (`VBAR_EL1` needs 2 KiB alignment).
const VECTORS: u64 = 0x800;
/// Sixteen vectors (four exception kinds from four origins), 0x80 bytes apart.
const VECTOR_COUNT: u64 = 16;
const VECTOR_STRIDE: u64 = 0x80;

/// PSTATE at entry: EL1 with SP_EL1 (EL1h), debug, SError, IRQ and FIQ masked.
const PSTATE_EL1H_MASKED: u64 = 0x5 | 0xf << 6;

/// KVM answers the firmware's PSCI calls itself; `SYSTEM_OFF` comes back to us as this system
/// event.
const PSCI_OFF: u32 = KVM_SYSTEM_EVENT_SHUTDOWN;

pub(super) const KICK_ADDRESS: IoEventAddress = IoEventAddress::Mmio(AARCH64_KICK_MMIO);

/// Whether this host's KVM can run an arm64 vCPU (not, for one, an x86 /dev/kvm reached from an
/// arm64 binary under qemu-user).
pub(super) fn probe(kvm: &Kvm) -> Result<(), String> {
    let vm = kvm
        .create_vm()
        .map_err(|e| format!("KVM cannot create a VM: {e}"))?;
    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)
        .map_err(|e| format!("KVM offers no arm64 vCPU here (KVM_ARM_PREFERRED_TARGET: {e})"))
}

/// What the arm64 vCPU keeps between starts.
#[derive(Debug)]
pub(super) struct Cpu {
    /// The vCPU type and features: `KVM_ARM_VCPU_INIT` with it resets the vCPU for a start.
    init: kvm_vcpu_init,
    /// The generic timer's frequency in kHz (the host's, which the guest sees too).
    timer_khz: u32,
}

impl Cpu {
    /// Initialises the vCPU as the host's preferred type, with PSCI 0.2.
    pub(super) fn new(_kvm: &Kvm, vm: &VmFd, vcpu: &VcpuFd) -> Result<Self, BackendError> {
        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)
            .map_err(io("read the preferred vCPU target"))?;
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        vcpu.vcpu_init(&init).map_err(io("initialise the vCPU"))?;
        Ok(Cpu {
            init,
            timer_khz: timer_khz(),
        })
    }

    /// The firmware's clock in kHz (the generic timer's), or 0 if unknown.
    pub(super) fn clock_khz(&self) -> u32 {
        self.timer_khz
    }

    /// Resets the vCPU, writes the exception vectors and puts the vCPU at `entry`.
    pub(super) fn reset(
        &self,
        vcpu: &VcpuFd,
        ram: &GuestRam,
        memory: u64,
        entry: u64,
    ) -> Result<(), BackendError> {
        vcpu.vcpu_init(&self.init).map_err(io("reset the vCPU"))?;
        write_vectors(ram)?;
        let set = |id: u64, value: u64, what: &'static str| {
            vcpu.set_one_reg(id, &value.to_le_bytes())
                .map(|_| ())
                .map_err(io(what))
        };
        set(core_reg(PC), entry, "set PC")?;
        set(core_reg(PSTATE), PSTATE_EL1H_MASKED, "set PSTATE")?;
        set(core_reg(SP_EL1), HOST_RESERVED, "set SP_EL1")?;
        set(core_reg(X0), memory, "set X0")?;
        set(VBAR_EL1, VECTORS, "set VBAR_EL1")?;
        Ok(())
    }
}

/// Offsets of the core registers in `struct kvm_regs`.
const X0: usize = offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, regs);
const PC: usize = offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pc);
const PSTATE: usize = offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pstate);
const SP_EL1: usize = offset_of!(kvm_regs, sp_el1);

/// `KVM_SET_ONE_REG` id of a 64-bit core register: its offset in `kvm_regs`, in 32-bit words.
const fn core_reg(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset / 4) as u64
}

/// `KVM_SET_ONE_REG` id of a 64-bit system register by its encoding.
const fn sys_reg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG as u64
        | op0 << KVM_REG_ARM64_SYSREG_OP0_SHIFT
        | op1 << KVM_REG_ARM64_SYSREG_OP1_SHIFT
        | crn << KVM_REG_ARM64_SYSREG_CRN_SHIFT
        | crm << KVM_REG_ARM64_SYSREG_CRM_SHIFT
        | op2 << KVM_REG_ARM64_SYSREG_OP2_SHIFT
}

const VBAR_EL1: u64 = sys_reg(3, 0, 12, 0, 0);

/// The generic timer's frequency (CNTFRQ_EL0, which user space may read) in kHz.
fn timer_khz() -> u32 {
    let hz: u64;
    // SAFETY: reads a system register EL0 is always allowed to read; no memory is touched.
    unsafe { std::arch::asm!("mrs {}, cntfrq_el0", out(reg) hz, options(nomem, nostack)) };
    (hz / 1000).min(u64::from(u32::MAX)) as u32
}

/// `movz x<rd>, #(value >> 16), lsl #16` for a value whose other bits are zero.
const fn movz_high(rd: u32, value: u64) -> u32 {
    assert!(value & !0xffff_0000 == 0);
    0xd2a0_0000 | ((value >> 16) as u32) << 5 | rd
}

/// `str x<rt>, [x<rn>, #offset]` (64-bit store, offset a multiple of 8 below 32 KiB).
const fn str_x(rt: u32, rn: u32, offset: u64) -> u32 {
    assert!(offset.is_multiple_of(8) && offset < 0x8000);
    0xf900_0000 | ((offset / 8) as u32) << 10 | rn << 5 | rt
}

/// One exception vector: report the exception to the host through the fault registers.
const VECTOR: [u32; 6] = [
    0xd538_5200,                                 // mrs x0, esr_el1
    0xd538_4021,                                 // mrs x1, elr_el1
    movz_high(2, MMIO_BASE),                     // x2 = the MMIO window
    str_x(1, 2, FAULT_ADDRESS_MMIO - MMIO_BASE), // the faulting address
    str_x(0, 2, FAULT_MMIO - MMIO_BASE),         // the syndrome: the host stops here
    0x1400_0000,                                 // b . (never reached)
];

/// Clears the reserved MiB (the boot stack) and writes the vector table into it.
fn write_vectors(ram: &GuestRam) -> Result<(), BackendError> {
    let bad = |_| BackendError::Other("cannot write the exception vectors".into());
    ram.fill(0, HOST_RESERVED as usize, 0).map_err(bad)?;
    let code: Vec<u8> = VECTOR.iter().flat_map(|i| i.to_le_bytes()).collect();
    for v in 0..VECTOR_COUNT {
        ram.write(VECTORS + v * VECTOR_STRIDE, &code).map_err(bad)?;
    }
    Ok(())
}

/// Decodes the exits of the arm64 platform: MMIO stores to its window, PSCI system events.
/// Anything else goes back to the architecture-neutral run loop.
#[derive(Debug, Default)]
pub(super) struct Exits {
    /// `ELR_EL1` the exception vector stored, for the crash report that follows.
    fault_address: Option<u64>,
}

impl Exits {
    /// A decoder for a vCPU's run.
    pub(super) fn new() -> Self {
        Exits::default()
    }

    /// What `exit` means on this platform; an exit it does not own goes back unchanged.
    pub(super) fn decode<'a>(&mut self, exit: VcpuExit<'a>) -> Result<Event, VcpuExit<'a>> {
        Ok(match exit {
            VcpuExit::MmioWrite(addr, data) if (MMIO_BASE..MMIO_END).contains(&addr) => {
                let value = le_value(data);
                match addr {
                    AARCH64_WAIT_MMIO => Event::Wait,
                    AARCH64_CONSOLE_MMIO => Event::Console(value as u8),
                    AARCH64_EXIT_MMIO => Event::Stop(Exit::Exited(value)),
                    // Without the ioeventfd the kick exits here.
                    AARCH64_KICK_MMIO => Event::Kick,
                    FAULT_ADDRESS_MMIO => {
                        self.fault_address = Some(le_u64(data));
                        Event::Resume
                    }
                    FAULT_MMIO => {
                        let at = self
                            .fault_address
                            .map_or_else(|| "?".into(), |a| format!("{a:#x}"));
                        Event::Stop(Exit::Crashed(format!(
                            "the firmware faulted (exception syndrome {:#x} at {at})",
                            le_u64(data)
                        )))
                    }
                    _ => Event::Stop(Exit::Crashed(format!(
                        "write to unknown platform register {addr:#x}"
                    ))),
                }
            }
            VcpuExit::MmioRead(addr, _) if (MMIO_BASE..MMIO_END).contains(&addr) => Event::Stop(
                Exit::Crashed(format!("read from platform register {addr:#x}")),
            ),
            VcpuExit::SystemEvent(kind, _) => Event::Stop(match kind {
                PSCI_OFF => Exit::Exited(0),
                KVM_SYSTEM_EVENT_RESET => {
                    Exit::Crashed("the firmware asked for a reset (PSCI SYSTEM_RESET)".into())
                }
                KVM_SYSTEM_EVENT_CRASH => Exit::Crashed("the firmware reported a crash".into()),
                other => Exit::Crashed(format!("unexpected system event {other}")),
            }),
            other => return Err(other),
        })
    }
}

/// A little-endian store of up to 8 bytes as a u64.
fn le_u64(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .rev()
        .fold(0u64, |v, &b| (v << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::super::tests::kvm_or_skip;
    use super::super::{KvmOptions, KvmRemote};
    use super::*;
    use crate::backend::RemoteBackend;
    use std::time::{Duration, Instant};

    #[test]
    fn the_vector_encodings_are_the_assembler_s() {
        // As aarch64-linux-gnu-as encodes `mov x2, #0x40000000`, `str x1, [x2, #24]` and
        // `str x0, [x2, #16]`.
        assert_eq!(VECTOR[2], 0xd2a8_0002);
        assert_eq!(VECTOR[3], 0xf900_0c41);
        assert_eq!(VECTOR[4], 0xf900_0840);
        assert_eq!(core_reg(PC), 0x6030_0000_0010_0040);
        assert_eq!(VBAR_EL1, 0x6030_0000_0013_c600);
    }

    /// Writes `code` at 1 MiB and starts it; the first exit.
    fn run(code: &[u32], watchdog: Duration) -> Option<(Exit, Vec<u8>)> {
        let mut remote = KvmRemote::new(KvmOptions {
            watchdog,
            ..Default::default()
        })
        .unwrap();
        let bytes: Vec<u8> = code.iter().flat_map(|i| i.to_le_bytes()).collect();
        remote.memory().write(HOST_RESERVED, &bytes).unwrap();
        remote.start(HOST_RESERVED).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = remote.poll_exit() {
                return Some((e, remote.take_console()));
            }
            assert!(Instant::now() < deadline, "the remote never stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn console_then_psci_off_is_an_exit() {
        if !kvm_or_skip("console_then_psci_off_is_an_exit") {
            return;
        }
        let code = [
            movz_high(2, MMIO_BASE),
            0x5280_0d61, // mov w1, #'k'
            0xb900_0841, // str w1, [x2, #8]: console
            0x5280_0100, // mov w0, #0x8
            0x72b0_8000, // movk w0, #0x8400, lsl #16: PSCI SYSTEM_OFF
            0xd400_0002, // hvc #0
            0x1400_0000, // b .
        ];
        let (exit, console) = run(&code, Duration::from_secs(5)).unwrap();
        assert_eq!(exit, Exit::Exited(0));
        assert_eq!(console, b"k");
    }

    #[test]
    fn a_fault_is_a_crash() {
        if !kvm_or_skip("a_fault_is_a_crash") {
            return;
        }
        // udf #0: an undefined instruction, taken to the host's vector.
        let (exit, _) = run(&[0x0000_0000], Duration::from_secs(5)).unwrap();
        assert!(
            matches!(exit, Exit::Crashed(ref why) if why.contains("syndrome") && why.contains("0x100000")),
            "{exit:?}"
        );
    }

    #[test]
    fn a_silent_remote_trips_the_watchdog() {
        if !kvm_or_skip("a_silent_remote_trips_the_watchdog") {
            return;
        }
        let (exit, _) = run(&[0x1400_0000], Duration::from_millis(200)).unwrap(); // b .
        assert!(
            matches!(exit, Exit::Crashed(ref why) if why.contains("watchdog")),
            "{exit:?}"
        );
    }
}
