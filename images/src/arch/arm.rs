//! The ZynqMP Cortex-R5 platform (ARMv7-R, `armv7r-none-eabihf`): start-up from the R5's
//! reset vector in the tightly coupled memory, the inter-processor interrupt (IPI) block for
//! kicks, and the PMU cycle counter as the clock.
//!
//! Here the firmware is a real R5 program, but only two things are exercised off a board: it
//! builds, and Linux's remoteproc core loads it and handles its resource table (the test core
//! of tests/remote-core). The register addresses are the ZynqMP's (its TRM, UG1085): what
//! they do on silicon only a board can show. What the platform is:
//!
//! - **Memory**: the image is linked at address 0, the TCM of an R5 pair in lockstep (256 KiB:
//!   ATCM and BTCM back to back), where the core starts; the trace buffer has a fixed place at
//!   its top ([`TRACE_DA`]), because
//!   Linux's remoteproc wants a trace entry's address filled in. The rings and the buffer pool
//!   are in DDR, where Linux's remoteproc allocates them; the R5 sees the low 2 GiB of DDR at
//!   the addresses Linux's device addresses name ([`RAM_SIZE`]).
//! - **Kick**: a store to the trigger register of RPU0's IPI channel with the APU's bit. The
//!   notify id is not carried: Linux's zynqmp_r5 driver looks at both rings on every IPI.
//! - **Wait**: polls RPU0's IPI status for the APU's bit (and clears it), for a bounded spin;
//!   no interrupt controller is set up (the R5 is dedicated to its firmware).
//! - **Console**: none (an R5 has no host to catch port writes): the trace buffer is the log.
//! - **Exit and crash**: the core parks in `wfi`; Linux's remoteproc sees it through its own
//!   means (a watchdog, the core's state).

/// Bytes of the boot stack.
pub const STACK_LEN: usize = 8 * 1024;
/// Bytes of the heap.
pub const HEAP_LEN: usize = 32 * 1024;
/// Where the trace buffer is: the last 4 KiB of the TCM (`link-r5.ld` keeps the image below
/// it).
pub const TRACE_DA: u32 = 0x3_f000;
/// The memory the rings may be in, from address 0: the low 2 GiB of DDR.
pub const RAM_SIZE: usize = 0x8000_0000;
/// The clock's frequency (kHz) when the host gives none: an R5 at 500 MHz.
pub const DEFAULT_CLOCK_KHZ: u32 = 500_000;

/// RPU0's IPI channel (channel 1) in the ZynqMP's IPI block.
const IPI_RPU0: usize = 0xff31_0000;
/// Its trigger register: a bit per destination channel.
const IPI_TRIGGER: usize = IPI_RPU0;
/// Its interrupt status register: a bit per source channel; writing one clears it.
const IPI_STATUS: usize = IPI_RPU0 + 0x10;
/// The APU's channel (channel 0), as a bit in those registers.
const IPI_APU_BIT: u32 = 1;
/// Status reads per wait before the engine looks at its rings again.
const WAIT_POLLS: u32 = 10_000;

/// Tells the host that a ring has news (both rings share the one IPI).
#[inline(always)]
pub fn kick(_id: u32) {
    // SAFETY: a store to the IPI block's trigger register, a device register outside RAM.
    unsafe { (IPI_TRIGGER as *mut u32).write_volatile(IPI_APU_BIT) };
}

/// Waits (bounded) for the host's IPI, and acknowledges it.
pub fn wait() {
    for _ in 0..WAIT_POLLS {
        // SAFETY: loads and stores of the IPI block's status register, outside RAM.
        unsafe {
            let status = (IPI_STATUS as *const u32).read_volatile();
            if status & IPI_APU_BIT != 0 {
                (IPI_STATUS as *mut u32).write_volatile(IPI_APU_BIT);
                return;
            }
        }
        core::hint::spin_loop();
    }
}

/// Console output: an R5 has none (see the module docs); the trace buffer is its log.
#[inline(always)]
pub fn console(_byte: u8) {}

/// Parks the core: nothing on an R5 takes an exit code.
pub fn exit(_code: u32) -> ! {
    loop {
        // SAFETY: waits for an interrupt; none is enabled, so it parks the core.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
    }
}

/// Stops as crashed: an undefined instruction, whose vector parks the core.
pub fn crash() -> ! {
    loop {
        // SAFETY: deliberately faults; nothing after it runs.
        unsafe { core::arch::asm!("udf #0", options(nomem, nostack)) };
    }
}

/// The PMU cycle counter (32 bits), widened to 64 by counting its wraps; the engine reads
/// the clock far more often than once per wrap (seconds at R5 speeds).
pub fn ticks() -> u64 {
    use core::sync::atomic::{AtomicU32, Ordering};
    static LAST: AtomicU32 = AtomicU32::new(0);
    static WRAPS: AtomicU32 = AtomicU32::new(0);
    let now: u32;
    // SAFETY: reads PMCCNTR, which start-up enabled; no memory is touched.
    unsafe {
        core::arch::asm!("mrc p15, 0, {}, c9, c13, 0", out(reg) now, options(nomem, nostack))
    };
    if now < LAST.swap(now, Ordering::Relaxed) {
        WRAPS.fetch_add(1, Ordering::Relaxed);
    }
    u64::from(WRAPS.load(Ordering::Relaxed)) << 32 | u64::from(now)
}

// The exception vectors, at address 0 (the R5 starts at its reset vector with low vectors):
// reset goes to `_start`; every other exception parks the core, as `crash` does.
core::arch::global_asm!(
    ".section .vectors, \"ax\"",
    ".arm",
    ".global vamp_vectors",
    "vamp_vectors:",
    "b _start",
    "b vamp_park",
    "b vamp_park",
    "b vamp_park",
    "b vamp_park",
    "b vamp_park",
    "b vamp_park",
    "b vamp_park",
    "vamp_park:",
    "wfi",
    "b vamp_park",
);

/// The entry point: the FPU and the cycle counter on, the stack, then the firmware.
///
/// # Safety
///
/// Only the reset vector jumps here, once.
#[unsafe(naked)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
pub unsafe extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        // The FPU: full access to coprocessors 10 and 11 (CPACR), then FPEXC.EN.
        "mrc p15, 0, r0, c1, c0, 2",
        "orr r0, r0, #0xf00000",
        "mcr p15, 0, r0, c1, c0, 2",
        "isb",
        "mov r0, #0x40000000",
        "vmsr fpexc, r0",
        // The PMU: counters enabled and reset (PMCR.E, .C), the cycle counter on (PMCNTENSET).
        "mrc p15, 0, r0, c9, c12, 0",
        "orr r0, r0, #5",
        "mcr p15, 0, r0, c9, c12, 0",
        "mov r0, #0x80000000",
        "mcr p15, 0, r0, c9, c12, 1",
        "movw r0, #:lower16:FIRMWARE_STACK",
        "movt r0, #:upper16:FIRMWARE_STACK",
        "add sp, r0, #{len}",
        "movw r0, #:lower16:{ram}",
        "movt r0, #:upper16:{ram}",
        "bl {rust_start}",
        "udf #0",
        len = const STACK_LEN,
        ram = const RAM_SIZE,
        rust_start = sym crate::rust_start,
    )
}
