//! The platform under the firmware, one file per architecture (see the crate docs). Each
//! provides the same items: `_start` (which calls `crate::rust_start` with the RAM size),
//! `STACK_LEN`, `HEAP_LEN`, `TRACE_DA`, `DEFAULT_CLOCK_KHZ`, and `kick`, `wait`, `console`,
//! `exit`, `crash` and `ticks`.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

#[cfg(target_arch = "arm")]
mod arm;
#[cfg(target_arch = "arm")]
pub use arm::*;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
compile_error!("vamp firmware has platforms for x86_64, aarch64 and arm (Cortex-R5) only");
