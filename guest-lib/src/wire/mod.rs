//! Wire formats, in one style, smoltcp's:
//!
//! - A **view** over bytes that are read or edited in place (`Foo<T: AsRef<[u8]>>`):
//!   [`RpmsgHeader`] and the resource table's [`ResourceTable`](resource_table::ResourceTable),
//!   [`Carveout`](resource_table::Carveout), [`Vdev`](resource_table::Vdev) and the rest. Each
//!   has a checked constructor (`new_checked`) that validates lengths once, so the accessors
//!   afterwards cannot go out of bounds; field offsets live in the file's private `mod field`,
//!   and every accessor is written out (`pub fn da(&self) -> u32`).
//! - A **parsed form** with `parse` and `encode` where a whole message is handled at once:
//!   [`NameServiceMsg`], [`proxy::Syscall`].
//! - The [`platform`] entry is a layout of byte offsets: both sides access it by address in
//!   memory the other writes, never as a local buffer.
//!
//! Malformed input gives a [`WireError`], never a panic. Multi-byte fields are read in the
//! [`Endian`] the link negotiated: legacy virtio (remoteproc) is native-endian,
//! VIRTIO_F_VERSION_1 is little-endian.

mod endian;
mod header;
mod name_service;
pub mod platform;
pub mod proxy;
pub mod resource_table;
mod view;

pub use endian::Endian;
pub use header::{HEADER_LEN, RpmsgHeader, encode_header};
pub use name_service::{NS_ADDR, NS_MSG_LEN, NS_NAME_LEN, NameServiceMsg, NsFlags};

/// Address meaning "any"/"unassigned" (`RPMSG_ADDR_ANY`).
pub const ADDR_ANY: u32 = 0xFFFF_FFFF;
/// Addresses below this are reserved for fixed services; dynamic allocation starts here.
pub const RESERVED_ADDRESSES: u32 = 1024;

/// Why bytes could not be read as a wire structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The buffer is shorter than the structure (or than a length field inside it claims).
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A field holds a value the format does not allow.
    Malformed(&'static str),
    /// A payload is larger than the buffer that must carry it.
    TooLarge {
        /// Bytes asked for.
        len: usize,
        /// Bytes that fit.
        max: usize,
    },
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::Truncated { needed, available } => {
                write!(f, "truncated: need {needed} bytes, have {available}")
            }
            WireError::Malformed(what) => write!(f, "malformed: {what}"),
            WireError::TooLarge { len, max } => write!(f, "too large: {len} bytes, at most {max}"),
        }
    }
}

impl core::error::Error for WireError {}

/// Checks that `buf` holds at least `needed` bytes.
pub(crate) fn check_len(buf: &[u8], needed: usize) -> Result<(), WireError> {
    if buf.len() < needed {
        Err(WireError::Truncated {
            needed,
            available: buf.len(),
        })
    } else {
        Ok(())
    }
}
