//! What the views of this module share, in the style of smoltcp's `wire` module: typed fields
//! at fixed offsets, read and written in the link's byte order, and macros that write a view's
//! struct, constructors and one accessor per field.
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

/// Implements [`Word`] for an integer wider than a byte with [`Endian`]'s readers and writers.
macro_rules! word {
    ($($ty:ident: $n:literal, $encode:ident;)*) => {
        $(
            impl Word for $ty {
                type Bytes = [u8; $n];

                fn decode(bytes: [u8; $n], endian: Endian) -> $ty {
                    endian.$ty(bytes)
                }

                fn encode(self, endian: Endian) -> [u8; $n] {
                    endian.$encode(self)
                }
            }
        )*
    };
}

word! {
    u16: 2, u16_bytes;
    u32: 4, u32_bytes;
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

/// Declares a view: a struct over a buffer `T` read in an [`Endian`], with `new_unchecked`,
/// `new_checked` (which runs the view's own `check`) and `into_inner`. The attributes of the
/// struct and the doc comments of the two constructors come from the invocation.
macro_rules! view {
    (
        $(#[$attr:meta])*
        pub struct $name:ident;
        $(#[$unchecked:meta])*
        fn new_unchecked;
        $(#[$checked:meta])*
        fn new_checked;
    ) => {
        $(#[$attr])*
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
            endian: $crate::wire::Endian,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            $(#[$unchecked])*
            pub const fn new_unchecked(buffer: T, endian: $crate::wire::Endian) -> Self {
                $name { buffer, endian }
            }

            $(#[$checked])*
            pub fn new_checked(
                buffer: T,
                endian: $crate::wire::Endian,
            ) -> Result<Self, $crate::wire::WireError> {
                let view = Self::new_unchecked(buffer, endian);
                view.check()?;
                Ok(view)
            }

            /// Gives back the wrapped buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }
    };
}

/// Writes a view's getters, one a line: `name: Type = FIELD;` reads the [`Field`] `FIELD`
/// from the view's buffer (in an `impl` of a `view!` struct).
macro_rules! getters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $field:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> $ty {
                $field.get(self.buffer.as_ref(), self.endian)
            }
        )*
    };
}

/// Writes a view's setters, one a line: `name(arg: Type) = FIELD;` writes `arg` into the
/// [`Field`] `FIELD` of the view's buffer.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident($arg:ident: $ty:ty) = $field:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&mut self, $arg: $ty) {
                $field.set(self.buffer.as_mut(), self.endian, $arg)
            }
        )*
    };
}

pub(crate) use {getters, setters, view};

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
