//! Guest RAM from the vhost-user memory table (vm-memory), as the engine sees it, and the checks
//! a table must pass before the hub reads through it.
//!
//! The VMM owns the files behind its regions. A region larger than its file (or a file shrunk
//! later) maps pages that raise SIGBUS when touched, so [`check_table`] refuses, at
//! SET_MEM_TABLE, any region that is not a regular file (memfd, shm, hugetlbfs file) covering
//! `mmap_offset + size`, and a table mapping more than [`max_mapped`] bytes in all. Whether the
//! file is sealed against shrinking (`F_SEAL_SHRINK`, QEMU's `memory-backend-memfd` sets it
//! unless `seal=off`) is logged at debug level: an unsealed file is accepted, and a file that
//! shrinks after the check is not defended against here.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub use vamp_rpmsg::guest_ram::{GuestMemoryMap, GuestRam};

/// Default bound on the bytes one guest's memory table may map: 64 GiB, well above any guest
/// the hub serves today, far below the address space a hostile table could claim (seven 16 TiB
/// regions were accepted before this bound).
pub const DEFAULT_MAX_MAPPED: u64 = 64 << 30;

static MAX_MAPPED: AtomicU64 = AtomicU64::new(DEFAULT_MAX_MAPPED);

/// Sets the bound on the bytes one guest's memory table may map (process-wide; main sets it
/// once from `--max-guest-memory`).
pub fn set_max_mapped(bytes: u64) {
    MAX_MAPPED.store(bytes, Ordering::Relaxed);
}

/// The bound on the bytes one guest's memory table may map.
pub fn max_mapped() -> u64 {
    MAX_MAPPED.load(Ordering::Relaxed)
}

/// Why a memory table was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// A region with no file behind it (vhost-user always sends one).
    NoFile { region: usize },
    /// `fstat` of a region's file failed (errno).
    Stat { region: usize, errno: i32 },
    /// A region's file is not a regular file (a device, pipe, socket...).
    NotRegularFile { region: usize, mode: u32 },
    /// A region reaches past the end of its file: touching that part would raise SIGBUS.
    PastEndOfFile {
        region: usize,
        offset: u64,
        size: u64,
        file_size: u64,
    },
    /// The table maps more than the per-guest bound in all.
    TooLarge { total: u64, max: u64 },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::NoFile { region } => write!(f, "region {region} has no file"),
            TableError::Stat { region, errno } => {
                write!(f, "region {region}: fstat failed (errno {errno})")
            }
            TableError::NotRegularFile { region, mode } => {
                write!(f, "region {region}: not a regular file (mode {mode:#o})")
            }
            TableError::PastEndOfFile {
                region,
                offset,
                size,
                file_size,
            } => write!(
                f,
                "region {region}: offset {offset:#x} + size {size:#x} is past the end of its \
                 file ({file_size:#x} bytes)"
            ),
            TableError::TooLarge { total, max } => write!(
                f,
                "the table maps {total:#x} bytes, more than the bound of {max:#x} per guest \
                 (--max-guest-memory)"
            ),
        }
    }
}

impl std::error::Error for TableError {}

/// Checks every region of a memory table against its file and the table against `max` bytes.
pub fn check_table(mem: &GuestMemoryMmap, max: u64) -> Result<(), TableError> {
    let mut total: u64 = 0;
    for (region, r) in mem.iter().enumerate() {
        let size = r.len();
        total = total.saturating_add(size);
        if total > max {
            return Err(TableError::TooLarge { total, max });
        }
        let file_offset = r.file_offset().ok_or(TableError::NoFile { region })?;
        let fd = file_offset.file().as_raw_fd();
        // SAFETY: `stat` is a plain out-parameter; `fd` is open for as long as the region.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; fstat writes only into `stat`.
        if unsafe { libc::fstat(fd, &mut stat) } != 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return Err(TableError::Stat { region, errno });
        }
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(TableError::NotRegularFile {
                region,
                mode: stat.st_mode,
            });
        }
        let offset = file_offset.start();
        let file_size = u64::try_from(stat.st_size).unwrap_or(0);
        if offset.checked_add(size).is_none_or(|end| end > file_size) {
            return Err(TableError::PastEndOfFile {
                region,
                offset,
                size,
                file_size,
            });
        }
        // SAFETY: F_GET_SEALS takes no argument and only reads the file's seals.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        log::debug!(
            "memory region {region}: {size:#x} bytes at file offset {offset:#x}, {}",
            if seals >= 0 && seals & libc::F_SEAL_SHRINK != 0 {
                "sealed against shrinking"
            } else {
                "not sealed against shrinking"
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::FromRawFd;
    use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap, MmapRegion};

    fn memfd(len: u64) -> File {
        // SAFETY: a fresh memfd, owned by the File below and nothing else.
        let fd = unsafe { libc::memfd_create(c"guest-memory-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len).unwrap();
        file
    }

    fn table(regions: &[(File, u64, u64)]) -> GuestMemoryMmap {
        let mut guest = 0;
        let regions = regions
            .iter()
            .map(|(file, offset, size)| {
                let fo = FileOffset::new(file.try_clone().unwrap(), *offset);
                let map = MmapRegion::from_file(fo, *size as usize).unwrap();
                let r = GuestRegionMmap::new(map, GuestAddress(guest)).unwrap();
                guest += size;
                r
            })
            .collect();
        GuestMemoryMmap::from_regions(regions).unwrap()
    }

    #[test]
    fn a_region_within_its_file_is_accepted() {
        let mem = table(&[
            (memfd(1 << 20), 0, 1 << 20),
            (memfd(2 << 20), 1 << 20, 1 << 20),
        ]);
        assert_eq!(check_table(&mem, DEFAULT_MAX_MAPPED), Ok(()));
    }

    #[test]
    fn a_region_past_the_end_of_its_file_is_refused() {
        let mem = table(&[(memfd(1 << 20), 4096, 1 << 20)]);
        assert!(matches!(
            check_table(&mem, DEFAULT_MAX_MAPPED),
            Err(TableError::PastEndOfFile { region: 0, .. })
        ));
    }

    #[test]
    fn a_table_over_the_bound_is_refused() {
        let mem = table(&[(memfd(1 << 20), 0, 1 << 20), (memfd(1 << 20), 0, 1 << 20)]);
        assert!(matches!(
            check_table(&mem, 1 << 20),
            Err(TableError::TooLarge { .. })
        ));
    }
}
