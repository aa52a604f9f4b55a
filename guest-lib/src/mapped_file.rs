//! A file mapped shared into this process and used as [`SharedMemory`]: the memory of a native
//! link (a named file both processes map) and of a native vhost-user guest (a memfd whose
//! descriptor travels to the backend).
//!
//! The mapping lives exactly as long as the [`MappedFile`]; addresses are offsets into the file
//! (address 0 is the file's first byte). Every access goes through the [`RawMemory`] over the
//! mapping: checked and volatile, never a Rust reference, since the other party writes the file
//! at the same time.

use crate::mem::{RawMemory, SharedMemory};
use core::ffi::CStr;
use core::ptr::NonNull;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// A system call for a mapped file failed.
#[derive(Debug)]
pub struct MapError {
    /// What was being done.
    pub what: &'static str,
    /// The error.
    pub source: io::Error,
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for MapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A file mapped shared, readable and writable, from its first byte.
#[derive(Debug)]
pub struct MappedFile {
    raw: RawMemory,
    fd: OwnedFd,
}

impl MappedFile {
    /// Opens (creating it if needed) the file at `path`, grows it to `size` bytes if it is
    /// shorter, and maps its first `size` bytes. The file is never truncated: a peer that
    /// mapped it already keeps its contents.
    pub fn open(path: &Path, size: usize) -> Result<Self, MapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| MapError {
                what: "open shared file",
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| MapError {
                what: "stat shared file",
                source,
            })?
            .len();
        if len < size as u64 {
            file.set_len(size as u64).map_err(|source| MapError {
                what: "size shared file",
                source,
            })?;
        }
        Self::map(file.into(), size, "map shared file")
    }

    /// Creates `size` bytes of zeroed memory in a new memfd named `name` (close-on-exec) and
    /// maps them. Its descriptor ([`fd`](Self::fd)) can be sent to another process to share it.
    pub fn anonymous(name: &CStr, size: usize) -> Result<Self, MapError> {
        let fail = |what| move |source| MapError { what, source };
        // SAFETY: `name` is a NUL-terminated string that outlives the call; the call has no
        // other inputs.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(fail("memfd_create")(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        File::from(fd.try_clone().map_err(fail("dup memfd"))?)
            .set_len(size as u64)
            .map_err(fail("size memfd"))?;
        Self::map(fd, size, "mmap memfd")
    }

    /// Maps the first `size` bytes of the file `fd`: the other end of a file shared with
    /// [`anonymous`](Self::anonymous), e.g. a descriptor a child process inherited. A file
    /// shorter than `size` is refused (bytes past its end could not be accessed).
    pub fn from_fd(fd: OwnedFd, size: usize) -> Result<Self, MapError> {
        Self::map(fd, size, "mmap shared file")
    }

    /// Maps the first `size` bytes of `fd`, which holds at least that many.
    fn map(fd: OwnedFd, size: usize, what: &'static str) -> Result<Self, MapError> {
        if size == 0 {
            return Err(MapError {
                what,
                source: io::Error::new(io::ErrorKind::InvalidInput, "an empty mapping"),
            });
        }
        let file = File::from(fd);
        let len = file
            .metadata()
            .map_err(|source| MapError { what, source })?
            .len();
        if len < size as u64 {
            return Err(MapError {
                what,
                source: io::Error::new(io::ErrorKind::InvalidInput, "the file is shorter"),
            });
        }
        let fd = OwnedFd::from(file);
        // SAFETY: a fresh shared mapping of a file we own, at an address the kernel picks; it
        // aliases no memory of ours, and the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MapError {
                what,
                source: io::Error::last_os_error(),
            });
        }
        let Some(ptr) = NonNull::new(ptr.cast::<u8>()) else {
            return Err(MapError {
                what,
                source: io::Error::other("null mapping"),
            });
        };
        // SAFETY: the mapping is `size` readable and writable bytes and stays mapped until
        // `Drop` unmaps it, when the RawMemory (owned by self) goes too.
        let raw = unsafe { RawMemory::new(ptr, size, 0) };
        Ok(MappedFile { raw, fd })
    }

    /// Size of the mapping in bytes.
    pub fn size(&self) -> usize {
        self.raw.len()
    }

    /// Where the file is mapped in this process (the "frontend virtual address" of offset 0,
    /// as vhost-user messages carry it).
    pub fn host_address(&self) -> u64 {
        self.region(0, 0).map_or(0, |p| p.as_ptr() as u64)
    }

    /// The file's descriptor (for a memfd, what `SET_MEM_TABLE` sends).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for MappedFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if let Some(p) = self.raw.region(0, self.raw.len()) {
            // SAFETY: unmaps exactly the mapping made in `map`; we are dropping its only owner,
            // so nothing can use it afterwards.
            unsafe { libc::munmap(p.as_ptr().cast(), self.raw.len()) };
        }
    }
}

// SAFETY: delegates to the RawMemory over our mapping, which lives as long as `self`.
unsafe impl SharedMemory for MappedFile {
    #[inline]
    fn region(&self, addr: u64, len: usize) -> Option<NonNull<u8>> {
        self.raw.region(addr, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anonymous_file_is_zeroed_and_shared_through_its_descriptor() {
        let a = MappedFile::anonymous(c"vamp-test", 1 << 16).unwrap();
        assert_eq!(a.size(), 1 << 16);
        assert_ne!(a.host_address(), 0);
        let mut buf = [0xAAu8; 8];
        a.read(0x100, &mut buf).unwrap();
        assert_eq!(buf, [0; 8]);
        // A second mapping of the same descriptor sees the first one's writes.
        let fd = a.as_fd().try_clone_to_owned().unwrap();
        let b = MappedFile::from_fd(fd, 1 << 16).unwrap();
        a.write(0x100, b"written").unwrap();
        let mut seen = [0u8; 7];
        b.read(0x100, &mut seen).unwrap();
        assert_eq!(&seen, b"written");
        assert!(a.read((1 << 16) - 4, &mut buf).is_err(), "past the end");
    }

    #[test]
    fn a_mapping_is_bounds_checked_at_its_end() {
        let mem = MappedFile::anonymous(c"vamp-test", 1 << 16).unwrap();
        assert!(mem.fd() >= 0);
        mem.write(0xfff0, &[7; 16]).unwrap();
        assert!(mem.write(0xfff1, &[7; 16]).is_err());
        let mut b = [0u8; 2];
        mem.read(0xfffe, &mut b).unwrap();
        assert_eq!(b, [7, 7]);
    }

    #[test]
    fn a_named_file_keeps_its_contents_and_grows_to_the_size() {
        let path = std::env::temp_dir().join(std::format!("vamp-mapped-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let a = MappedFile::open(&path, 4096).unwrap();
            a.write(8, b"kept").unwrap();
        }
        let b = MappedFile::open(&path, 8192).unwrap();
        let mut seen = [0u8; 4];
        b.read(8, &mut seen).unwrap();
        assert_eq!(&seen, b"kept");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_empty_mapping_or_one_past_the_file_is_an_error() {
        let e = MappedFile::anonymous(c"vamp-test", 0).unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::InvalidInput);
        let a = MappedFile::anonymous(c"vamp-test", 4096).unwrap();
        let fd = a.as_fd().try_clone_to_owned().unwrap();
        let e = MappedFile::from_fd(fd, 8192).unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::InvalidInput);
    }
}
