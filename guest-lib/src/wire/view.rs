//! What the views of this module share, in the style of smoltcp's `wire` module: a typed
//! [`Field`] at a fixed offset, read and written in the link's byte order. Each view writes out
//! its own struct, constructors and one accessor per field (`pub fn da(&self) -> u32`), so a
//! reader finds every accessor where the view is defined.
//!
//! Field reads and writes never panic: a field that runs past the end of the bytes reads as 0
//! and a write to it is dropped. A view's `check` is what reports a short buffer; once it
//! passed, no field it covers is cut short.

use core::marker::PhantomData;

use super::Endian;

/// An integer a field holds (`u8`, `u16` or `u32`), stored in the link's [`Endian`].
pub(crate) trait Word: Copy + Default {
    /// The bytes it is stored in.
    type Bytes: AsRef<[u8]> + for<'a> TryFrom<&'a [u8]>;

    /// Decodes it from its bytes.
    fn decode(bytes: Self::Bytes, endian: Endian) -> Self;

    /// Encodes it into its bytes.
    fn encode(self, endian: Endian) -> Self::Bytes;
}

impl Word for u8 {
    type Bytes = [u8; 1];

    fn decode([b]: [u8; 1], _: Endian) -> u8 {
        b
    }

    fn encode(self, _: Endian) -> [u8; 1] {
        [self]
    }
}

impl Word for u16 {
    type Bytes = [u8; 2];

    fn decode(bytes: [u8; 2], endian: Endian) -> u16 {
        endian.u16(bytes)
    }

    fn encode(self, endian: Endian) -> [u8; 2] {
        endian.u16_bytes(self)
    }
}

impl Word for u32 {
    type Bytes = [u8; 4];

    fn decode(bytes: [u8; 4], endian: Endian) -> u32 {
        endian.u32(bytes)
    }

    fn encode(self, endian: Endian) -> [u8; 4] {
        endian.u32_bytes(self)
    }
}

/// A field of type `W` at a fixed byte offset of a wire structure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field<W> {
    at: usize,
    word: PhantomData<W>,
}

impl<W: Word> Field<W> {
    /// The field that starts `at` bytes into the structure.
    pub(crate) const fn at(at: usize) -> Self {
        Field {
            at,
            word: PhantomData,
        }
    }

    /// Where the field starts, in bytes from the start of the structure.
    pub(crate) const fn offset(self) -> usize {
        self.at
    }

    /// The same field in a structure that starts `by` bytes into the buffer (an entry in a
    /// table, a vring in a vdev). An offset past `usize::MAX` lies outside every buffer.
    pub(crate) const fn shifted(self, by: usize) -> Self {
        Field::at(self.at.saturating_add(by))
    }

    /// The field's value, or `None` if `buf` ends before the field does.
    #[inline]
    pub(crate) fn read(self, buf: &[u8], endian: Endian) -> Option<W> {
        let end = self.at.checked_add(size_of::<W::Bytes>())?;
        let bytes = W::Bytes::try_from(buf.get(self.at..end)?).ok()?;
        Some(W::decode(bytes, endian))
    }

    /// The field's value; 0 if `buf` ends before the field does.
    #[inline]
    pub(crate) fn get(self, buf: &[u8], endian: Endian) -> W {
        self.read(buf, endian).unwrap_or_default()
    }

    /// Writes the field; nothing if `buf` ends before the field does.
    #[inline]
    pub(crate) fn set(self, buf: &mut [u8], endian: Endian, v: W) {
        let dst = self
            .at
            .checked_add(size_of::<W::Bytes>())
            .and_then(|end| buf.get_mut(self.at..end));
        if let Some(dst) = dst {
            dst.copy_from_slice(v.encode(endian).as_ref());
        }
    }
}

/// The bytes of `field` before its first NUL (all of them if it has none).
pub(crate) fn until_nul(field: &[u8]) -> &[u8] {
    field.split(|&b| b == 0).next().unwrap_or(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_and_write_in_either_order_and_never_past_the_end() {
        let mut buf = [0u8; 6];
        Field::<u32>::at(1).set(&mut buf, Endian::Big, 0x0102_0304);
        Field::<u16>::at(4)
            .shifted(0)
            .set(&mut buf, Endian::Little, 0xAABB);
        assert_eq!(buf, [0, 1, 2, 3, 0xBB, 0xAA]);
        assert_eq!(Field::<u32>::at(0).get(&buf, Endian::Little), 0x0302_0100);
        assert_eq!(Field::<u8>::at(2).get(&buf, Endian::Big), 2);
        // Past the end: reads give 0 (or None) and writes are dropped.
        assert_eq!(Field::<u32>::at(3).read(&buf, Endian::Little), None);
        assert_eq!(Field::<u32>::at(3).get(&buf, Endian::Little), 0);
        assert_eq!(
            Field::<u16>::at(1)
                .shifted(usize::MAX)
                .get(&buf, Endian::Big),
            0
        );
        Field::<u16>::at(usize::MAX).set(&mut buf, Endian::Little, 1);
        Field::<u8>::at(6).set(&mut buf, Endian::Little, 1);
        assert_eq!(buf, [0, 1, 2, 3, 0xBB, 0xAA]);
    }

    #[test]
    fn until_nul_stops_at_the_first_nul() {
        assert_eq!(until_nul(b"ab\0cd\0"), b"ab");
        assert_eq!(until_nul(b"abc"), b"abc");
        assert_eq!(until_nul(b""), b"");
        assert_eq!(until_nul(b"\0x"), b"");
    }
}
