//! The rpmsg header that precedes every message: a view ([`RpmsgHeader`]) over a buffer's
//! bytes, with the payload the header's `len` announces, and [`encode_header`] for the 16
//! bytes alone.

use super::view::Field;
use super::{Endian, WireError, check_len};

/// Length of the rpmsg header that precedes every payload.
pub const HEADER_LEN: usize = 16;

mod field {
    use super::Field;

    pub const SRC: Field<u32> = Field::at(0);
    pub const DST: Field<u32> = Field::at(4);
    pub const RESERVED: Field<u32> = Field::at(8);
    pub const LEN: Field<u16> = Field::at(12);
    pub const FLAGS: Field<u16> = Field::at(14);
}

/// A view of an rpmsg message: `u32 src, u32 dst, u32 reserved, u16 len, u16 flags`, then
/// `len` payload bytes.
///
/// The payload length comes from `len`, never from the buffer or descriptor length: OpenAMP
/// reports the whole buffer as used, Linux 16 + payload.
///
/// ```
/// use vamp_rpmsg::wire::{Endian, HEADER_LEN, RpmsgHeader, WireError, encode_header};
///
/// // A message from 0x400 to 53 carrying "hi".
/// let mut buf = [0u8; HEADER_LEN + 2];
/// buf[..HEADER_LEN].copy_from_slice(&encode_header(Endian::Little, 0x400, 53, 2));
/// buf[HEADER_LEN..].copy_from_slice(b"hi");
/// let msg = RpmsgHeader::new_checked(&buf[..], Endian::Little).unwrap();
/// assert_eq!((msg.src(), msg.dst(), msg.payload()), (0x400, 53, &b"hi"[..]));
///
/// // A header whose `len` claims more than the buffer holds is refused, not read past.
/// let lying = encode_header(Endian::Little, 0x400, 53, 100);
/// assert!(matches!(
///     RpmsgHeader::new_checked(&lying[..], Endian::Little),
///     Err(WireError::Truncated { .. })
/// ));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RpmsgHeader<T: AsRef<[u8]>> {
    buffer: T,
    endian: Endian,
}

impl<T: AsRef<[u8]>> RpmsgHeader<T> {
    /// Wraps `buffer` without checks: header fields past the end of a short buffer read as 0,
    /// but the payload accessors may panic. Prefer [`new_checked`](Self::new_checked).
    pub const fn new_unchecked(buffer: T, endian: Endian) -> Self {
        RpmsgHeader { buffer, endian }
    }

    /// Wraps `buffer` after checking that it holds the header and the `len` payload bytes.
    pub fn new_checked(buffer: T, endian: Endian) -> Result<Self, WireError> {
        let view = Self::new_unchecked(buffer, endian);
        view.check()?;
        Ok(view)
    }

    /// Gives back the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Checks that the buffer holds the header and the payload `len` announces.
    pub fn check(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        check_len(buf, HEADER_LEN)?;
        check_len(buf, HEADER_LEN + self.len() as usize)
    }

    /// Source address.
    pub fn src(&self) -> u32 {
        field::SRC.get(self.buffer.as_ref(), self.endian)
    }

    /// Destination address.
    pub fn dst(&self) -> u32 {
        field::DST.get(self.buffer.as_ref(), self.endian)
    }

    /// Reserved word (senders write 0).
    pub fn reserved(&self) -> u32 {
        field::RESERVED.get(self.buffer.as_ref(), self.endian)
    }

    /// Payload length.
    pub fn len(&self) -> u16 {
        field::LEN.get(self.buffer.as_ref(), self.endian)
    }

    /// Flags (senders write 0).
    pub fn flags(&self) -> u16 {
        field::FLAGS.get(self.buffer.as_ref(), self.endian)
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload: `len` bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RpmsgHeader<T> {
    /// Sets the source address.
    pub fn set_src(&mut self, v: u32) {
        field::SRC.set(self.buffer.as_mut(), self.endian, v)
    }

    /// Sets the destination address.
    pub fn set_dst(&mut self, v: u32) {
        field::DST.set(self.buffer.as_mut(), self.endian, v)
    }

    /// Sets the payload length.
    pub fn set_len(&mut self, v: u16) {
        field::LEN.set(self.buffer.as_mut(), self.endian, v)
    }

    /// Writes a whole header (reserved and flags 0) into the first 16 bytes.
    pub fn emit(&mut self, src: u32, dst: u32, len: u16) {
        self.set_src(src);
        self.set_dst(dst);
        field::RESERVED.set(self.buffer.as_mut(), self.endian, 0);
        self.set_len(len);
        field::FLAGS.set(self.buffer.as_mut(), self.endian, 0);
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..HEADER_LEN + len]
    }
}

/// Encodes a header into 16 bytes.
pub fn encode_header(endian: Endian, src: u32, dst: u32, len: u16) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    RpmsgHeader::new_unchecked(&mut out[..], endian).emit(src, dst, len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_linux_layout() {
        // src 0x400, dst 0x35, reserved 0, len 3, flags 0, then "abc" (little-endian).
        let bytes = [
            0x00, 0x04, 0, 0, 0x35, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, b'a', b'b', b'c', 0xee,
        ];
        let h = RpmsgHeader::new_checked(&bytes[..], Endian::Little).unwrap();
        assert_eq!((h.src(), h.dst(), h.len(), h.flags()), (0x400, 0x35, 3, 0));
        assert_eq!(h.payload(), b"abc");
    }

    #[test]
    fn rejects_short_buffers() {
        assert_eq!(
            RpmsgHeader::new_checked(&[0u8; 15][..], Endian::Little).unwrap_err(),
            WireError::Truncated {
                needed: 16,
                available: 15
            }
        );
        let mut b = [0u8; 20];
        b[12] = 5; // len 5 but only 4 payload bytes
        assert_eq!(
            RpmsgHeader::new_checked(&b[..], Endian::Little).unwrap_err(),
            WireError::Truncated {
                needed: 21,
                available: 20
            }
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64), big: bool) {
            let e = if big { Endian::Big } else { Endian::Little };
            if let Ok(h) = RpmsgHeader::new_checked(&bytes[..], e) {
                prop_assert!(HEADER_LEN + h.payload().len() <= bytes.len());
                prop_assert_eq!(h.payload().len(), h.len() as usize);
            }
        }

        #[test]
        fn emit_then_parse_round_trips(src: u32, dst: u32, payload in proptest::collection::vec(any::<u8>(), 0..100), big: bool) {
            let e = if big { Endian::Big } else { Endian::Little };
            let mut buf = alloc::vec![0u8; HEADER_LEN + payload.len()];
            buf[..HEADER_LEN].copy_from_slice(&encode_header(e, src, dst, payload.len() as u16));
            buf[HEADER_LEN..].copy_from_slice(&payload);
            let h = RpmsgHeader::new_checked(&buf[..], e).unwrap();
            prop_assert_eq!((h.src(), h.dst(), h.reserved(), h.flags()), (src, dst, 0, 0));
            prop_assert_eq!(h.payload(), &payload[..]);
        }
    }
}
