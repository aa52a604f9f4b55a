//! The x86-64 KVM remote platform: start-up in 64-bit mode at CPL3, the I/O ports, the TSC, and
//! the C memory functions the host target's precompiled `core` expects.
//!
//! The host (`remoteproc-vm`) starts the firmware straight in 64-bit mode at CPL3 with all RAM
//! identity-mapped (virtual = physical = device address), `rdi` = RAM size, at the ELF entry.
//! The firmware talks to the host through I/O ports (allowed by the TSS I/O bitmap):
//!
//! | port | direction | meaning |
//! | --- | --- | --- |
//! | `KICK_PORT` | out u32 | notify the host: the ring with this notify id has news |
//! | `WAIT_PORT` | out u32 | sleep until the host notifies us (or a short timeout) |
//! | `CONSOLE_PORT` | out u8 | one byte of console output |
//! | `EXIT_PORT` | out u32 | stop with this exit code |
//!
//! Anything else (a fault, `hlt`, touching memory outside RAM) stops the VM and the host
//! reports the remote as crashed.

// The platform's ports, defined once for the firmware and the host.
use vamp_rpmsg::wire::platform::{CONSOLE_PORT, EXIT_PORT, KICK_PORT, WAIT_PORT};

/// Bytes of the boot stack.
pub const STACK_LEN: usize = 64 * 1024;
/// Bytes of the heap.
pub const HEAP_LEN: usize = 256 * 1024;
/// The trace buffer goes wherever the host places it.
pub const TRACE_DA: u32 = vamp_rpmsg::wire::resource_table::FW_RSC_ADDR_ANY;
/// The clock's frequency (kHz) until the host gives it: 1 GHz.
pub const DEFAULT_CLOCK_KHZ: u32 = 1_000_000;

/// Writes `value` to an I/O port.
#[inline(always)]
fn out32(port: u16, value: u32) {
    // SAFETY: an `out` to the platform's ports only exits to the host; it touches no memory.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    };
}

/// Tells the host that the ring with notify id `id` has news.
#[inline(always)]
pub fn kick(id: u32) {
    out32(KICK_PORT, id);
}

/// Sleeps until the host notifies us (or a short timeout).
#[inline(always)]
pub fn wait() {
    out32(WAIT_PORT, 0);
}

/// One byte of console output.
#[inline(always)]
pub fn console(byte: u8) {
    // SAFETY: as for `out32`.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") CONSOLE_PORT, in("al") byte, options(nostack, preserves_flags))
    };
}

/// Stops the remote with `code`.
pub fn exit(code: u32) -> ! {
    loop {
        out32(EXIT_PORT, code);
    }
}

/// Stops the remote as crashed: an invalid opcode with no IDT is a triple fault.
pub fn crash() -> ! {
    loop {
        // SAFETY: deliberately faults; nothing after it runs.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }
}

/// The clock the host gave the frequency of (the platform entry's clock field): the TSC.
#[inline(always)]
pub fn ticks() -> u64 {
    // SAFETY: rdtsc has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The entry point: set up the stack, then run the firmware.
///
/// # Safety
///
/// Only the host jumps here, once, with `rdi` = RAM size.
#[unsafe(naked)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
pub unsafe extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "lea rsp, [rip + FIRMWARE_STACK + {len}]",
        "xor ebp, ebp",
        "call {rust_start}",
        "ud2",
        len = const STACK_LEN,
        rust_start = sym crate::rust_start,
    )
}

// The precompiled `core` for this target expects libc's memory functions. `rep` string
// instructions keep LLVM from turning these loops back into calls to themselves.

/// # Safety
/// As C's memcpy.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller gives valid, non-overlapping ranges of `n` bytes.
    unsafe {
        core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// As C's memmove.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: copying forward is safe when dst is not inside (src, src + n).
        unsafe { memcpy(dst, src, n) }
    } else {
        // SAFETY: copy backwards with the direction flag set, then clear it again.
        unsafe {
            core::arch::asm!(
                "std", "rep movsb", "cld",
                inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                options(nostack)
            );
        }
        dst
    }
}

/// # Safety
/// As C's memset.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller gives a valid range of `n` bytes.
    unsafe {
        core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// As C's memcmp.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n`, inside both ranges the caller gave.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// As C's bcmp.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// The precompiled `alloc` refers to the unwinding personality; firmware aborts on panic and
/// never unwinds, so it is never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
