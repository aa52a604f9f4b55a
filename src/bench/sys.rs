//! The operating-system pieces the bench measures with: CPU pinning, CPU time and memory
//! figures of this process, temporary directories, a shared memfd mapping, and thin eventfd
//! wrappers (futex waits are the engine's `vamp_rpmsg::futex`).

use super::Res;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use vamp_rpmsg::mapped_file::MappedFile;

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

/// A memfd mapped shared (the engine's [`MappedFile`]) whose descriptor the peer processes we
/// spawn inherit, seen as the futex words and message slots the floors use.
#[derive(Debug)]
pub(super) struct Shm(MappedFile);

impl Shm {
    pub(super) fn create(len: usize) -> Res<Self> {
        let file = MappedFile::anonymous(c"vamp-bench", len).map_err(|e| e.to_string())?;
        // The memfd is made close-on-exec; the peers we spawn must inherit it.
        // SAFETY: F_SETFD on a descriptor `file` owns; it changes only that descriptor's flags.
        if unsafe { libc::fcntl(file.fd(), libc::F_SETFD, 0) } != 0 {
            return Err(format!("fcntl: {}", std::io::Error::last_os_error()));
        }
        Ok(Shm(file))
    }

    /// Maps the memfd `fd` that this process inherited from the bench's parent.
    pub(super) fn map(fd: i32, len: usize) -> Res<Self> {
        // SAFETY: the parent passed us this descriptor on our command line; nothing else in
        // this process owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        MappedFile::from_fd(fd, len)
            .map(Shm)
            .map_err(|e| e.to_string())
    }

    /// The memfd, for a peer process to map (it is inherited across spawn).
    pub(super) fn fd(&self) -> i32 {
        self.0.fd()
    }

    pub(super) fn word(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.0.size());
        // SAFETY: in bounds and 4-byte aligned (checked above; the mapping is page aligned);
        // the mapping lives as long as `self`, and every party accesses the word atomically.
        unsafe { &*(self.0.host_address() as usize as *const AtomicU32).byte_add(off) }
    }

    pub(super) fn slot(&self, off: usize, len: usize) -> *mut u8 {
        assert!(off + len <= self.0.size());
        (self.0.host_address() as usize + off) as *mut u8
    }
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
