//! The arm64 KVM remote platform: start-up at EL1 (FP on, the MMU on with an identity map),
//! the MMIO platform registers, and the generic timer.
//!
//! The host (`remoteproc-vm`, `kvm/aarch64.rs`) starts the firmware at EL1h with the MMU and
//! caches off, `x0` = RAM size, at the ELF entry, and handles exceptions itself (its vector
//! table in the reserved first MiB reports any fault as a crash). The firmware talks to the
//! host with 32-bit stores to the platform's MMIO window (`AARCH64_*_MMIO` in guest-lib's
//! `wire::platform`): kick, wait, console, exit, in the order of the x86 ports.
//!
//! Why the firmware turns its MMU on before anything else: with it off every data access is
//! Device memory, which is not cached. The host reads and writes the rings through its own,
//! cached mapping, so the two would not see each other's stores; exclusive loads and stores
//! (the allocator's lock) are not defined on Device memory; and an unaligned access faults.
//! One level-1 table of 1 GiB blocks does: RAM (the first GiB) as Normal write-back memory,
//! inner shareable, as the host maps it; the next GiB, the MMIO window, as Device-nGnRE and
//! never executable; everything above unmapped, so a stray access faults (a crash).

use vamp_rpmsg::wire::platform::{
    AARCH64_CONSOLE_MMIO, AARCH64_EXIT_MMIO, AARCH64_KICK_MMIO, AARCH64_MMIO_BASE,
    AARCH64_WAIT_MMIO,
};

/// Bytes of the boot stack.
pub const STACK_LEN: usize = 64 * 1024;
/// Bytes of the heap.
pub const HEAP_LEN: usize = 256 * 1024;
/// The trace buffer goes wherever the host places it.
pub const TRACE_DA: u32 = vamp_rpmsg::wire::resource_table::FW_RSC_ADDR_ANY;
/// The clock's frequency (kHz) until the host gives it: 1 GHz.
pub const DEFAULT_CLOCK_KHZ: u32 = 1_000_000;

/// Stores `value` to the platform register at `address` (one `str`: KVM decodes it as an MMIO
/// exit, which a store pair or a write-back form would not give it).
#[inline(always)]
fn store(address: u64, value: u32) {
    // SAFETY: the address is one of the platform's registers, mapped as Device memory; the
    // store exits to the host and touches no RAM.
    unsafe {
        core::arch::asm!("str {v:w}, [{a}]", v = in(reg) value, a = in(reg) address, options(nostack, preserves_flags))
    };
}

/// Tells the host that the ring with notify id `id` has news.
#[inline(always)]
pub fn kick(id: u32) {
    store(AARCH64_KICK_MMIO, id);
}

/// Sleeps until the host notifies us (or a short timeout).
#[inline(always)]
pub fn wait() {
    store(AARCH64_WAIT_MMIO, 0);
}

/// One byte of console output.
#[inline(always)]
pub fn console(byte: u8) {
    store(AARCH64_CONSOLE_MMIO, u32::from(byte));
}

/// Stops the remote with `code`.
pub fn exit(code: u32) -> ! {
    loop {
        store(AARCH64_EXIT_MMIO, code);
    }
}

/// Stops the remote as crashed: an undefined instruction, taken to the host's vector.
pub fn crash() -> ! {
    loop {
        // SAFETY: deliberately faults; nothing after it runs.
        unsafe { core::arch::asm!("udf #0", options(nomem, nostack)) };
    }
}

/// The clock the host gave the frequency of (the platform entry's clock field): the generic
/// timer's virtual count.
#[inline(always)]
pub fn ticks() -> u64 {
    let count: u64;
    // SAFETY: reads a counter register; no memory is touched.
    unsafe { core::arch::asm!("mrs {}, cntvct_el0", out(reg) count, options(nomem, nostack)) };
    count
}

/// MAIR_EL1: attribute 0 Normal write-back (read and write allocate), attribute 1
/// Device-nGnRE.
const MAIR: u64 = 0x04 << 8 | 0xff;
/// A level-1 block descriptor: valid block (0b01), access flag.
const BLOCK: u64 = 0b01 | 1 << 10;
/// RAM: attribute 0 (an index of zero: no bits), inner shareable (as the host maps it), EL1
/// read-write.
const RAM_BLOCK: u64 = BLOCK | 0b11 << 8;
/// The MMIO window: attribute 1, never executable at EL1 or EL0.
const DEVICE_BLOCK: u64 = BLOCK | 1 << 2 | 1 << 53 | 1 << 54;
/// TCR_EL1: a 32-bit address space (T0SZ = 32, so the walk starts at level 1 with four
/// entries), 4 KiB granule, walks cached and inner shareable, TTBR1 walks disabled (EPD1), a
/// 32-bit physical address size.
const TCR: u64 = 32 | 0b01 << 8 | 0b01 << 10 | 0b11 << 12 | 1 << 23;
/// SCTLR_EL1: MMU, data and instruction caches on, on top of the bits ARMv8.0 reserves as one;
/// no alignment check, little-endian, WXN off.
const SCTLR: u64 = 1 | 1 << 2 | 1 << 12 | 0x30d0_0800;

/// The identity map (see the module docs): four 1 GiB blocks, of which the first two are valid.
#[repr(C, align(4096))]
struct TranslationTable([u64; 4]);

#[unsafe(no_mangle)]
static TRANSLATION_TABLE: TranslationTable =
    TranslationTable([RAM_BLOCK, AARCH64_MMIO_BASE | DEVICE_BLOCK, 0, 0]);

// The MMIO window must be the second GiB, as the table maps it.
const _: () = assert!(AARCH64_MMIO_BASE == 1 << 30);

/// The entry point: FP on, the MMU on, the stack, then the firmware.
///
/// # Safety
///
/// Only the host jumps here, once, at EL1 with the MMU off and `x0` = RAM size.
#[unsafe(naked)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
pub unsafe extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "mov x19, x0",
        // FP and SIMD at EL1 (CPACR_EL1.FPEN): LLVM copies memory with SIMD registers.
        "movz x1, #0x30, lsl #16",
        "msr cpacr_el1, x1",
        "movz x1, #{mair}",
        "msr mair_el1, x1",
        "movz x1, #{tcr_lo}",
        "movk x1, #{tcr_hi}, lsl #16",
        "msr tcr_el1, x1",
        "adrp x1, {table}",
        "add x1, x1, :lo12:{table}",
        "msr ttbr0_el1, x1",
        "isb",
        "tlbi vmalle1",
        "dsb nsh",
        "isb",
        "movz x1, #{sctlr_lo}",
        "movk x1, #{sctlr_hi}, lsl #16",
        "msr sctlr_el1, x1",
        "isb",
        "adrp x1, FIRMWARE_STACK",
        "add x1, x1, :lo12:FIRMWARE_STACK",
        "movz x2, #{len_lo}",
        "movk x2, #{len_hi}, lsl #16",
        "add sp, x1, x2",
        "mov x0, x19",
        "bl {rust_start}",
        "udf #0",
        mair = const MAIR,
        tcr_lo = const TCR & 0xffff,
        tcr_hi = const TCR >> 16,
        sctlr_lo = const SCTLR & 0xffff,
        sctlr_hi = const SCTLR >> 16,
        len_lo = const STACK_LEN & 0xffff,
        len_hi = const STACK_LEN >> 16,
        table = sym TRANSLATION_TABLE,
        rust_start = sym crate::rust_start,
    )
}
