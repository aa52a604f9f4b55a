//! The operating-system pieces the bench measures with: CPU pinning, CPU time and memory
//! figures of this process, temporary directories, a shared memfd mapping, and thin futex and
//! eventfd wrappers.

use super::Res;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

pub(super) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data and all-zero is the empty set; the call writes at most
    // size_of::<cpu_set_t>() bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pid 0 is this thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return vec![0];
    }
    // SAFETY: CPU_ISSET only reads the set.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins the calling thread (and the threads it creates afterwards) to `cpu`.
pub(super) fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data and all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of the set; `cpu` is below CPU_SETSIZE (it came from
    // sched_getaffinity or the command line, checked below).
    unsafe { libc::CPU_SET(cpu.min(libc::CPU_SETSIZE as usize - 1), &mut set) };
    // SAFETY: the set is valid for the size given; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        log::warn!(
            "cannot pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// CPU time this process has used (all threads, user and system), in ns.
pub(super) fn cpu_time_ns() -> f64 {
    // SAFETY: rusage is plain data; the call fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to our rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 * 1e9 + tv.tv_usec as f64 * 1e3;
    t(ru.ru_utime) + t(ru.ru_stime)
}

pub(super) fn read_status() -> [u64; 3] {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    [field("VmRSS:"), field("RssAnon:"), field("RssShmem:")]
}

pub(super) fn temp_dir(tag: &str) -> Res<TempDir> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vamp-bench-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(TempDir(dir))
}

/// A directory removed when dropped.
#[derive(Debug)]
pub(super) struct TempDir(pub(super) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A memfd mapped shared; its descriptor is inherited by the peer processes we spawn.
#[derive(Debug)]
pub(super) struct Shm {
    ptr: *mut u8,
    len: usize,
    fd: i32,
}

// SAFETY: the mapping is plain shared memory; every access goes through atomics or raw copies
// whose ownership the ring protocol hands over with acquire/release indices.
unsafe impl Send for Shm {}
// SAFETY: as above.
unsafe impl Sync for Shm {}

impl Shm {
    pub(super) fn create(len: usize) -> Res<Self> {
        // SAFETY: a static NUL-terminated name; no CLOEXEC so that spawned peers inherit it.
        let fd = unsafe { libc::memfd_create(c"vamp-bench".as_ptr(), 0) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: plain system call on the descriptor we just made.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: closing our own descriptor.
            unsafe { libc::close(fd) };
            return Err(format!("ftruncate: {e}"));
        }
        Self::map(fd, len)
    }

    pub(super) fn map(fd: i32, len: usize) -> Res<Self> {
        // SAFETY: a fresh shared mapping of `fd`, at an address the kernel picks; the result
        // is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Shm {
            ptr: ptr.cast(),
            len,
            fd,
        })
    }

    /// The memfd, for a peer process to map (it is inherited across spawn).
    pub(super) fn fd(&self) -> i32 {
        self.fd
    }

    pub(super) fn word(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len);
        // SAFETY: in bounds and 4-byte aligned (checked above; the mapping is page aligned);
        // the mapping lives as long as `self`, and every party accesses the word atomically.
        unsafe { &*self.ptr.add(off).cast::<AtomicU32>() }
    }

    pub(super) fn slot(&self, off: usize, len: usize) -> *mut u8 {
        assert!(off + len <= self.len);
        // SAFETY: in bounds (checked above).
        unsafe { self.ptr.add(off) }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly our mapping and closes our descriptor; nothing borrows them
        // any more since we are dropping their only owner.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
            libc::close(self.fd);
        }
    }
}

pub(super) fn futex_wait(word: &AtomicU32, seen: u32) {
    // SAFETY: the futex word is a valid, aligned u32 for the call (shared: no PRIVATE flag, the
    // peer is another process); a null timeout waits until woken or the value differs.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

pub(super) fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`; wakes at most one waiter.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

pub(super) fn efd_write(fd: i32, v: u64) {
    // SAFETY: writes the 8 bytes of `v` to an eventfd we own.
    unsafe { libc::write(fd, (&v as *const u64).cast(), 8) };
}

pub(super) fn efd_read(fd: i32) -> u64 {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into `v` from an eventfd we own.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    v
}

pub(super) fn new_eventfd(flags: i32) -> Res<i32> {
    // SAFETY: plain system call; the result is checked.
    let fd = unsafe { libc::eventfd(0, flags) };
    if fd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    Ok(fd)
}

pub(super) fn close_fd(fd: i32) {
    // SAFETY: closes a descriptor this process owns and no longer uses.
    unsafe { libc::close(fd) };
}
