//! The rpmsg proxy (OpenAMP's "retarget" RPC): a bare-metal remote performs file I/O and
//! console output on the host, one message per system call.
//!
//! Every message, request and reply alike, is a 16-byte header followed by `data_len` bytes:
//!
//! | offset | field | type |
//! | --- | --- | --- |
//! | 0 | `id` | u32: [`OPEN_SYSCALL_ID`] .. [`TERM_SYSCALL_ID`] |
//! | 4 | `int_field1` | i32 |
//! | 8 | `int_field2` | i32 |
//! | 12 | `data_len` | u32 |
//! | 16 | data | `data_len` bytes |
//!
//! What the integer fields carry, per call (as OpenAMP's `rpmsg_retarget.c` fills them):
//!
//! | call | `int_field1` | `int_field2` | data |
//! | --- | --- | --- | --- |
//! | open | flags ([`O_CREAT`]...: Linux's values) | mode | the path, NUL-terminated |
//! | close | fd | 0 | none |
//! | write | fd | byte count | the bytes (for fd 1 OpenAMP adds a NUL, counted in `data_len` only) |
//! | read | fd | bytes wanted | none |
//! | term | 0 | 0 | none: the remote is done, no reply |
//!
//! The host answers each call but term with one message whose `int_field1` is the result: a
//! file descriptor, a byte count, 0, or a negative errno; a read's reply carries the bytes
//! read as data. OpenAMP's current host (`rpc_demod`) puts the request's id in the reply and
//! its remote library checks for it; older proxies answered with [`ACK_STATUS_ID`]. Readers
//! should accept both ([`Syscall::is_reply_to`]).
//!
//! Fields are in the link's byte order: native (little-endian on the platforms vamp runs),
//! as the structure is copied raw in OpenAMP.

use super::view::Field;
use super::{Endian, WireError, check_len};

/// Bytes of the header before the data.
pub const SYSCALL_HEADER_LEN: usize = 16;

/// Open a file.
pub const OPEN_SYSCALL_ID: u32 = 1;
/// Close a file descriptor.
pub const CLOSE_SYSCALL_ID: u32 = 2;
/// Write to a file descriptor.
pub const WRITE_SYSCALL_ID: u32 = 3;
/// Read from a file descriptor.
pub const READ_SYSCALL_ID: u32 = 4;
/// A reply (older proxies; current OpenAMP replies with the request's id).
pub const ACK_STATUS_ID: u32 = 5;
/// The remote is done with the proxy.
pub const TERM_SYSCALL_ID: u32 = 6;

/// Open flags on the wire: Linux's values (OpenAMP's demo redefines them to these).
pub const O_RDONLY: i32 = 0o0;
/// Open for writing only.
pub const O_WRONLY: i32 = 0o1;
/// Open for reading and writing.
pub const O_RDWR: i32 = 0o2;
/// The access-mode bits of the flags.
pub const O_ACCMODE: i32 = 0o3;
/// Create the file if it does not exist.
pub const O_CREAT: i32 = 0o100;
/// With [`O_CREAT`]: fail if it exists.
pub const O_EXCL: i32 = 0o200;
/// Truncate to length 0.
pub const O_TRUNC: i32 = 0o1000;
/// Every write goes to the end.
pub const O_APPEND: i32 = 0o2000;

mod field {
    use super::Field;

    pub const ID: Field<u32> = Field::at(0);
    pub const INT_FIELD1: Field<u32> = Field::at(4);
    pub const INT_FIELD2: Field<u32> = Field::at(8);
    pub const DATA_LEN: Field<u32> = Field::at(12);
}

/// One proxy message: the header's fields and its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall<'a> {
    /// The call (or reply) id; unknown values are kept for the reader to refuse.
    pub id: u32,
    /// First argument, or the result in a reply.
    pub int_field1: i32,
    /// Second argument.
    pub int_field2: i32,
    /// The data (`data_len` bytes).
    pub data: &'a [u8],
}

impl<'a> Syscall<'a> {
    /// A message without data.
    pub const fn new(id: u32, int_field1: i32, int_field2: i32) -> Self {
        Syscall {
            id,
            int_field1,
            int_field2,
            data: &[],
        }
    }

    /// A message with data.
    pub const fn with_data(id: u32, int_field1: i32, int_field2: i32, data: &'a [u8]) -> Self {
        Syscall {
            id,
            int_field1,
            int_field2,
            data,
        }
    }

    /// Parses a message. The buffer must hold the header and `data_len` bytes after it;
    /// bytes past the data are ignored (the data is what `data_len` says).
    pub fn parse(buf: &'a [u8], endian: Endian) -> Result<Self, WireError> {
        check_len(buf, SYSCALL_HEADER_LEN)?;
        let data_len = field::DATA_LEN.get(buf, endian) as usize;
        let end = SYSCALL_HEADER_LEN
            .checked_add(data_len)
            .ok_or(WireError::Malformed("proxy data_len overflows"))?;
        check_len(buf, end)?;
        Ok(Syscall {
            id: field::ID.get(buf, endian),
            int_field1: field::INT_FIELD1.get(buf, endian) as i32,
            int_field2: field::INT_FIELD2.get(buf, endian) as i32,
            data: &buf[SYSCALL_HEADER_LEN..end],
        })
    }

    /// Bytes the encoded message takes.
    pub fn encoded_len(&self) -> usize {
        SYSCALL_HEADER_LEN.saturating_add(self.data.len())
    }

    /// Encodes the message at the start of `buf`; returns the bytes written. A message that
    /// does not fit (or data longer than a u32 counts) is refused, never cut.
    pub fn encode(&self, buf: &mut [u8], endian: Endian) -> Result<usize, WireError> {
        let len = self.encoded_len();
        let data_len = u32::try_from(self.data.len()).map_err(|_| WireError::TooLarge {
            len: self.data.len(),
            max: u32::MAX as usize,
        })?;
        if len > buf.len() {
            return Err(WireError::TooLarge {
                len,
                max: buf.len(),
            });
        }
        field::ID.set(buf, endian, self.id);
        field::INT_FIELD1.set(buf, endian, self.int_field1 as u32);
        field::INT_FIELD2.set(buf, endian, self.int_field2 as u32);
        field::DATA_LEN.set(buf, endian, data_len);
        buf[SYSCALL_HEADER_LEN..len].copy_from_slice(self.data);
        Ok(len)
    }

    /// Whether this message is the host's reply to a request with id `request`: the same id
    /// (current OpenAMP) or [`ACK_STATUS_ID`] (older proxies).
    pub fn is_reply_to(&self, request: u32) -> bool {
        self.id == request || self.id == ACK_STATUS_ID
    }

    /// The path an open request carries: its data up to the first NUL. `None` if the data has
    /// no NUL (a path must be terminated, as OpenAMP sends it).
    pub fn path(&self) -> Option<&'a [u8]> {
        let nul = self.data.iter().position(|&b| b == 0)?;
        Some(&self.data[..nul])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_matches_openamp() {
        let mut buf = [0u8; 32];
        let n = Syscall::with_data(OPEN_SYSCALL_ID, O_CREAT | O_WRONLY, 0o600, b"f.txt\0")
            .encode(&mut buf, Endian::Little)
            .unwrap();
        assert_eq!(n, 22);
        assert_eq!(&buf[..4], &[1, 0, 0, 0]);
        assert_eq!(&buf[4..8], &[0o101, 0, 0, 0]);
        assert_eq!(&buf[8..12], &0o600u32.to_le_bytes());
        assert_eq!(&buf[12..16], &[6, 0, 0, 0]);
        assert_eq!(&buf[16..22], b"f.txt\0");
        let m = Syscall::parse(&buf[..n], Endian::Little).unwrap();
        assert_eq!(m.path(), Some(&b"f.txt"[..]));
        // A negative result survives the trip.
        let mut r = [0u8; 16];
        Syscall::new(READ_SYSCALL_ID, -9, 0)
            .encode(&mut r, Endian::Little)
            .unwrap();
        assert_eq!(&r[4..8], &(-9i32).to_le_bytes());
        assert_eq!(Syscall::parse(&r, Endian::Little).unwrap().int_field1, -9);
    }

    #[test]
    fn short_and_lying_lengths_are_errors() {
        assert_eq!(
            Syscall::parse(&[0u8; 15], Endian::Little),
            Err(WireError::Truncated {
                needed: 16,
                available: 15
            })
        );
        let mut buf = [0u8; 20];
        buf[12] = 5; // data_len 5, only 4 bytes follow
        assert_eq!(
            Syscall::parse(&buf, Endian::Little),
            Err(WireError::Truncated {
                needed: 21,
                available: 20
            })
        );
        buf[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Syscall::parse(&buf, Endian::Little).is_err());
        // Trailing bytes beyond data_len are not data.
        buf[12..16].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(Syscall::parse(&buf, Endian::Little).unwrap().data.len(), 2);
        // Encoding refuses a buffer that is too small.
        assert_eq!(
            Syscall::with_data(WRITE_SYSCALL_ID, 1, 3, b"abc")
                .encode(&mut [0u8; 18], Endian::Little),
            Err(WireError::TooLarge { len: 19, max: 18 })
        );
    }

    #[test]
    fn replies_and_paths() {
        let m = Syscall::new(ACK_STATUS_ID, 3, 0);
        assert!(m.is_reply_to(OPEN_SYSCALL_ID));
        assert!(Syscall::new(OPEN_SYSCALL_ID, 3, 0).is_reply_to(OPEN_SYSCALL_ID));
        assert!(!Syscall::new(READ_SYSCALL_ID, 3, 0).is_reply_to(OPEN_SYSCALL_ID));
        assert_eq!(Syscall::with_data(1, 0, 0, b"abc").path(), None);
        assert_eq!(
            Syscall::with_data(1, 0, 0, b"a\0bc").path(),
            Some(&b"a"[..])
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80), big: bool) {
            let e = if big { Endian::Big } else { Endian::Little };
            if let Ok(m) = Syscall::parse(&bytes, e) {
                prop_assert!(SYSCALL_HEADER_LEN + m.data.len() <= bytes.len());
                let _ = m.path();
            }
        }

        #[test]
        fn encode_then_parse_round_trips(
            id: u32, f1: i32, f2: i32,
            data in proptest::collection::vec(any::<u8>(), 0..600),
            room in 0usize..700,
            big: bool,
        ) {
            let e = if big { Endian::Big } else { Endian::Little };
            let m = Syscall::with_data(id, f1, f2, &data);
            let mut buf = alloc::vec![0u8; room];
            match m.encode(&mut buf, e) {
                Ok(n) => {
                    prop_assert_eq!(n, SYSCALL_HEADER_LEN + data.len());
                    prop_assert_eq!(Syscall::parse(&buf[..n], e).unwrap(), m);
                    prop_assert_eq!(Syscall::parse(&buf, e).unwrap(), m);
                }
                Err(_) => prop_assert!(room < SYSCALL_HEADER_LEN + data.len()),
            }
        }
    }
}
