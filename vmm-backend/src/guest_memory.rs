//! Guest RAM from the vhost-user memory table (vm-memory), as the engine sees it, and the checks
//! a table must pass before the hub reads through it.
//!
//! The VMM owns the files behind its regions. A region larger than its file (or a file shrunk
//! later) maps pages that raise SIGBUS when touched, so [`check_table`] refuses, at
//! SET_MEM_TABLE, any region that is not a regular file (memfd, shm, hugetlbfs file) covering
//! `mmap_offset + size`, and a table mapping more than [`max_mapped`] bytes in all. Whether the
//! file is sealed against shrinking (`F_SEAL_SHRINK`, QEMU's `memory-backend-memfd` sets it
//! unless `seal=off`) is logged at debug level: an unsealed file is accepted, because a file that
//! shrinks after the check is survived (the SIGBUS recovery below).

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
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
#[non_exhaustive]
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
    /// The fault handler's registry of guest regions is full.
    TooManyRegions { max: usize },
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
            TableError::TooManyRegions { max } => write!(
                f,
                "more than {max} guest memory regions are mapped in all (every guest's tables)"
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

// ---------------------------------------------------------------------------------------------
// Surviving a memory file that shrinks after the check.
//
// A VMM can still truncate an unsealed file after SET_MEM_TABLE; the next access to the lost
// pages raises SIGBUS on whichever thread touches them (often another guest's worker, under
// the hub lock). [`install_fault_handler`] (main, once, before any sandbox) catches it: a fault
// inside a registered guest region gets anonymous zero pages mapped over the whole region with
// `MAP_FIXED` (so the access completes, reading zeros), the region is flagged, and the handler
// returns. The backends check the flags after servicing ([`take_faults`]) and break the owner's
// link (DEVICE_NEEDS_RESET): a vanished memory costs its own guest, nobody else. A fault anywhere
// else, or a failed mmap, writes one line to stderr and ends the process (`exit_group`): never
// a loop. The handler makes only `mmap` (anonymous, not executable), `write` and `exit_group`,
// all allowed to every sandboxed thread.

/// How many guest regions can be registered at once (every live table of every guest).
pub const FAULT_SLOTS: usize = 256;

struct FaultSlot {
    /// Owner link id + 1; 0 while free. Claimed first, released last.
    owner: AtomicUsize,
    start: AtomicUsize,
    /// 0 while being filled or emptied: the handler ignores such a slot.
    len: AtomicUsize,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE_SLOT: FaultSlot = FaultSlot {
    owner: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    faulted: AtomicBool::new(false),
};

static FAULT_SLOTS_TABLE: [FaultSlot; FAULT_SLOTS] = [FREE_SLOT; FAULT_SLOTS];
/// Set by the handler with a slot's flag: the backends' fast path is one load.
static ANY_FAULT: AtomicBool = AtomicBool::new(false);

/// The tables registered, each with its slots, released once its mappings are gone (a table
/// stays mapped while any snapshot of it lives, after it is replaced too).
static REGISTERED: Mutex<Vec<(Weak<GuestMemoryMmap>, Vec<usize>)>> = Mutex::new(Vec::new());

fn release(slots: &[usize]) {
    for &i in slots {
        let s = &FAULT_SLOTS_TABLE[i];
        s.len.store(0, Ordering::Release);
        s.start.store(0, Ordering::Release);
        s.faulted.store(false, Ordering::Release);
        s.owner.store(0, Ordering::Release);
    }
}

/// Registers the regions of guest `owner`'s table `mem` with the fault handler, for as long as
/// the table is mapped. Fails (registering nothing) when the slots are full.
pub fn register_table(owner: usize, mem: &Arc<GuestMemoryMmap>) -> Result<(), TableError> {
    let mut registered = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
    registered.retain(|(table, slots)| {
        let live = table.strong_count() > 0;
        if !live {
            release(slots);
        }
        live
    });
    if registered
        .iter()
        .any(|(t, _)| Weak::ptr_eq(t, &Arc::downgrade(mem)))
    {
        return Ok(());
    }
    let mut slots = Vec::new();
    for r in mem.iter() {
        let claimed = (0..FAULT_SLOTS).find(|&i| {
            FAULT_SLOTS_TABLE[i]
                .owner
                .compare_exchange(0, owner + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        let Some(i) = claimed else {
            release(&slots);
            return Err(TableError::TooManyRegions { max: FAULT_SLOTS });
        };
        let s = &FAULT_SLOTS_TABLE[i];
        s.start.store(r.as_ptr() as usize, Ordering::Release);
        s.len.store(r.len() as usize, Ordering::Release);
        slots.push(i);
    }
    registered.push((Arc::downgrade(mem), slots));
    Ok(())
}

/// The guests whose memory faulted since the last call (each once), flags cleared.
pub fn take_faults() -> Vec<usize> {
    if !ANY_FAULT.swap(false, Ordering::AcqRel) {
        return Vec::new();
    }
    let mut owners = Vec::new();
    for s in &FAULT_SLOTS_TABLE {
        if s.faulted.swap(false, Ordering::AcqRel) {
            let owner = s.owner.load(Ordering::Acquire);
            if owner != 0 && !owners.contains(&(owner - 1)) {
                owners.push(owner - 1);
            }
        }
    }
    owners
}

/// Writes `msg` to stderr with one `write` call (async-signal-safe).
fn signal_safe_message(msg: &[u8]) {
    // SAFETY: write(2) from a valid buffer; the result is ignored (nothing else can be done).
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; for SIGBUS it
    // carries the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &FAULT_SLOTS_TABLE {
        let len = s.len.load(Ordering::Acquire);
        let start = s.start.load(Ordering::Acquire);
        if len == 0 || addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: the range is a guest region this process mapped (registered while mapped);
        // replacing it with private zero pages changes only what guest memory reads as, which
        // the hub treats as untrusted data anyway.
        let mapped = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if mapped as usize != start {
            break;
        }
        s.faulted.store(true, Ordering::Release);
        ANY_FAULT.store(true, Ordering::Release);
        return;
    }
    signal_safe_message(
        b"vhost-user-rpmsg: SIGBUS outside guest memory (or its recovery failed): exiting\n",
    );
    // SAFETY: ends the process; nothing runs after it.
    unsafe {
        libc::syscall(libc::SYS_exit_group, 128 + libc::SIGBUS);
    }
}

/// Installs the SIGBUS handler that survives guest memory vanishing (see above). Call once at
/// startup, before any thread is sandboxed.
pub fn install_fault_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with our handler, SA_SIGINFO and an empty mask is valid.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::FromRawFd;
    use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap};

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
                // (from_range: the same plain mapping with and without the xen feature.)
                let r = GuestRegionMmap::from_range(GuestAddress(guest), *size as usize, Some(fo))
                    .unwrap();
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
