//! Image stores: where an ELF image comes from, handed out in pieces so that an image is never
//! held whole (OpenAMP's `image_store_ops`).
//!
//! - [`FileImage`]: a file, read at any offset (`pread`).
//! - [`MemoryImage`]: bytes already in memory (a built-in image, a test's buffer).
//! - [`StreamImage`]: anything [`Read`] (a pipe, a socket, a decompressor), forward only: an
//!   offset behind the current position is an error, so the loader reads in increasing offset
//!   order (see [`crate::elf`]).
//!
//! [`ImageSource`] names an image that can be opened again, which is what recovery needs to
//! reload a crashed remote.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A readable image, handed out in pieces.
pub trait ImageStore {
    /// Fills `buf` with the bytes at `offset`. Fails with [`io::ErrorKind::UnexpectedEof`] if
    /// the image ends first, and for a [sequential](Self::sequential) store with
    /// [`io::ErrorKind::InvalidInput`] if `offset` lies behind bytes already handed out.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Length in bytes, if known up front (a stream may not know it).
    fn len(&self) -> Option<u64>;

    /// Whether the store can only move forward.
    fn sequential(&self) -> bool;

    /// Whether the image is known to be empty.
    fn is_empty(&self) -> Option<bool> {
        self.len().map(|l| l == 0)
    }
}

/// Makes a pointer to a store (`$ptr`, generic over the store `S`) a store: every call goes
/// to the store it points at.
macro_rules! forward_to_pointee {
    ($($ptr:ty),*) => {
        $(
            impl<S: ImageStore + ?Sized> ImageStore for $ptr {
                fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
                    (**self).read_at(offset, buf)
                }

                fn len(&self) -> Option<u64> {
                    (**self).len()
                }

                fn sequential(&self) -> bool {
                    (**self).sequential()
                }
            }
        )*
    };
}

forward_to_pointee!(&mut S, Box<S>);

fn eof(offset: u64, want: usize, len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "{want} bytes at offset {offset:#x} run past the end of the image ({len:#x} bytes)"
        ),
    )
}

/// An image in a file, read at any offset.
#[derive(Debug)]
pub struct FileImage {
    file: File,
    len: u64,
    path: Option<PathBuf>,
}

impl FileImage {
    /// Opens the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = File::open(path)?;
        let mut image = Self::from_file(file)?;
        image.path = Some(path.to_path_buf());
        Ok(image)
    }

    /// Wraps an open file (its length is taken now).
    pub fn from_file(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(FileImage {
            file,
            len,
            path: None,
        })
    }

    /// The path it was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl ImageStore for FileImage {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(eof(offset, buf.len(), self.len));
        }
        self.file.read_exact_at(buf, offset)
    }

    fn len(&self) -> Option<u64> {
        Some(self.len)
    }

    fn sequential(&self) -> bool {
        false
    }
}

/// An image already in memory: `&[u8]`, `Vec<u8>`, `Arc<[u8]>`...
#[derive(Debug, Clone)]
pub struct MemoryImage<T: AsRef<[u8]>> {
    bytes: T,
}

impl<T: AsRef<[u8]>> MemoryImage<T> {
    /// Wraps `bytes`.
    pub fn new(bytes: T) -> Self {
        MemoryImage { bytes }
    }

    /// The wrapped bytes.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }
}

impl<T: AsRef<[u8]>> ImageStore for MemoryImage<T> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let bytes = self.bytes.as_ref();
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| bytes.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| eof(offset, buf.len(), bytes.len() as u64))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn len(&self) -> Option<u64> {
        Some(self.bytes.as_ref().len() as u64)
    }

    fn sequential(&self) -> bool {
        false
    }
}

/// A forward-only image: reading an offset behind the current position is an error.
#[derive(Debug)]
pub struct StreamImage<R: Read> {
    reader: R,
    pos: u64,
    len: Option<u64>,
}

impl<R: Read> StreamImage<R> {
    /// Wraps `reader`, length unknown.
    pub fn new(reader: R) -> Self {
        StreamImage {
            reader,
            pos: 0,
            len: None,
        }
    }

    /// Wraps `reader` whose total length is known (lets the loader report truncation before
    /// it copies anything).
    pub fn with_len(reader: R, len: u64) -> Self {
        StreamImage {
            reader,
            pos: 0,
            len: Some(len),
        }
    }

    /// Offset of the next byte the stream will hand out.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Gives back the reader.
    pub fn into_inner(self) -> R {
        self.reader
    }
}

impl<R: Read> ImageStore for StreamImage<R> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset < self.pos {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "forward-only image: offset {offset:#x} lies behind the position {:#x}",
                    self.pos
                ),
            ));
        }
        let skip = offset - self.pos;
        if skip > 0 {
            let skipped = io::copy(&mut (&mut self.reader).take(skip), &mut io::sink())?;
            self.pos += skipped;
            if skipped < skip {
                return Err(eof(offset, buf.len(), self.pos));
            }
        }
        let mut done = 0;
        while done < buf.len() {
            match self.reader.read(&mut buf[done..]) {
                Ok(0) => {
                    self.pos += done as u64;
                    return Err(eof(offset, buf.len(), self.pos));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.pos += done as u64;
                    return Err(e);
                }
            }
        }
        self.pos += done as u64;
        Ok(())
    }

    fn len(&self) -> Option<u64> {
        self.len
    }

    fn sequential(&self) -> bool {
        true
    }
}

/// An image that can be opened again and again: what a remote is (re)loaded from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ImageSource {
    /// A file.
    File(PathBuf),
    /// Bytes owned in memory.
    Bytes(Arc<[u8]>),
    /// Bytes built into the program (see `crate::images`).
    Static(&'static [u8]),
}

impl ImageSource {
    /// Opens a fresh store over the image.
    pub fn open(&self) -> io::Result<Box<dyn ImageStore + Send>> {
        Ok(match self {
            ImageSource::File(path) => Box::new(FileImage::open(path)?),
            ImageSource::Bytes(bytes) => Box::new(MemoryImage::new(bytes.clone())),
            ImageSource::Static(bytes) => Box::new(MemoryImage::new(*bytes)),
        })
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            ImageSource::File(path) => path.display().to_string(),
            ImageSource::Bytes(b) => format!("{} bytes in memory", b.len()),
            ImageSource::Static(b) => format!("{} built-in bytes", b.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Vec<u8> {
        (0..=255u8).cycle().take(1000).collect()
    }

    #[test]
    fn memory_image_reads_anywhere_and_checks_bounds() {
        let d = data();
        let mut m = MemoryImage::new(&d[..]);
        let mut buf = [0u8; 10];
        m.read_at(500, &mut buf).unwrap();
        assert_eq!(&buf[..], &d[500..510]);
        m.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[..], &d[..10]);
        assert_eq!(
            m.read_at(995, &mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert!(m.read_at(u64::MAX, &mut buf).is_err());
        assert_eq!(
            (m.len(), m.sequential(), m.is_empty()),
            (Some(1000), false, Some(false))
        );
    }

    #[test]
    fn stream_image_is_forward_only() {
        let d = data();
        let mut s = StreamImage::new(&d[..]);
        let mut buf = [0u8; 4];
        s.read_at(10, &mut buf).unwrap();
        assert_eq!(&buf[..], &d[10..14]);
        assert_eq!(s.position(), 14);
        s.read_at(14, &mut buf).unwrap();
        assert_eq!(&buf[..], &d[14..18]);
        let err = s.read_at(0, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("forward-only"));
        s.read_at(996, &mut buf).unwrap();
        assert_eq!(
            s.read_at(1000, &mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert!(s.sequential());
        assert_eq!(s.len(), None);
    }

    #[test]
    fn file_image_reads_at_offsets() {
        let d = data();
        let path = std::env::temp_dir().join(format!("vamp-image-{}.bin", std::process::id()));
        std::fs::write(&path, &d).unwrap();
        let mut f = FileImage::open(&path).unwrap();
        let mut buf = [0u8; 8];
        f.read_at(992, &mut buf).unwrap();
        assert_eq!(&buf[..], &d[992..]);
        f.read_at(3, &mut buf).unwrap();
        assert_eq!(&buf[..], &d[3..11]);
        assert!(f.read_at(993, &mut buf).is_err());
        assert_eq!(f.path(), Some(path.as_path()));
        let src = ImageSource::File(path.clone());
        let mut again = src.open().unwrap();
        again.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[..], &d[..8]);
        std::fs::remove_file(&path).unwrap();
    }
}
