//! `vamp bench`: vamp's round trips, throughput and scaling, side by side with this machine's
//! floors, measured in one run.
//!
//! - **Floors**: eventfd, futex and spin ping-pong between two processes, a windowed echo over
//!   a plain shared-memory ring (no rpmsg), `memcpy`. Each is measured with the CPU placement of
//!   the vamp figures it is compared with: the two sides pinned to two different CPUs, and for
//!   eventfd and futex also both on one CPU.
//! - **Links**, each with notifications (the default) and in busy-poll mode (opt-in: neither side
//!   notifies, both spin on the rings), at 16 and 496 bytes: round-trip p50/p99 and windowed
//!   throughput. The native two-process link (a copy of this program is the remote), a guest
//!   (vamp's own vhost-user frontend) to the hub's echo, guest to hub to guest, and the host to
//!   a KVM remote running the echo firmware.
//! - **Scale**: per-message cost with 1, 8 and 64 guests on one hub, with 1, 100 and 10 000
//!   endpoints in one link, and the hub's own cost per message with full rings.
//! - **Memory** of the hub per connected guest, and **start time** of a KVM remote (from
//!   creating the VM to the first name-service announcement).
//!
//! Every vamp figure comes with its ratio to the floor it is compared with, named in the
//! output; `--json FILE` writes every figure with its unit.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};
use vamp_rpmsg::apps::SHUTDOWN_MSG;
use vamp_rpmsg::guest_ram::GuestRam;
use vamp_rpmsg::mem::HeapMemory;
use vamp_rpmsg::native::{self, NativePaths};
use vamp_rpmsg::rpmsg::{Config, EptId, Error as RpmsgError, Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::{BufferConfig, DriverTransport, Environment, Transport};
use vamp_rpmsg::wire::{ADDR_ANY, Endian};
use vamp_vmm_backend::backend::{lock_hub, serve_guest};
use vamp_vmm_backend::config::{ChannelSpec, GuestSpec, ServiceKind, ServiceSpec, Topology};
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest};
use vamp_vmm_backend::hub::{Hub, Notifier, POLL_BUDGET, RingsInfo};

/// What `vamp bench` was asked for.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// Fewer samples (a smoke run of well under 20 s).
    pub quick: bool,
    /// Where to write every figure as JSON.
    pub json: Option<PathBuf>,
}

type Res<T> = Result<T, String>;

/// The name of the hub's echo service in the bench topologies.
const ECHO_NAME: &str = "vamp-bench-echo";
/// The name an echoing guest announces for guest-to-guest rows.
const PEER_NAME: &str = "vamp-bench-peer";
/// The channel the echo firmware answers on (OpenAMP's echo demo).
const FIRMWARE_CHANNEL: &str = "rpmsg-openamp-demo-channel";
/// First of the fixed addresses of the native remote's unannounced echo endpoints.
const ENDPOINT_BASE: u32 = 0x1_0000;
/// Message sizes of every link row: the smallest useful and the largest a 512-byte buffer takes.
const SIZES: [usize; 2] = [16, 496];
/// Slots of the shared-memory ring floor (as many as a vring has entries).
const RING_SLOTS: u32 = 256;
/// Bytes per slot of the ring floor (an rpmsg buffer).
const SLOT_BYTES: usize = 512;
/// Bound on any single wait of the bench, so that a broken peer fails a row, not the run.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Sample counts.
#[derive(Debug, Clone, Copy)]
struct Plan {
    floor_iters: usize,
    lat_iters: usize,
    tput_msgs: usize,
    window: usize,
    scale_msgs: usize,
    endpoint_msgs: usize,
    full_ring_msgs: usize,
    memory_guests: usize,
    start_runs: usize,
    memcpy_iters: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let plan = Self::counts(quick);
        if cfg!(debug_assertions) && quick {
            // An unoptimized build measures nothing worth reading: its quick run only checks
            // that everything runs (the smoke test), with a tenth of the samples.
            plan.scaled(10)
        } else {
            plan
        }
    }

    fn scaled(self, by: usize) -> Self {
        Plan {
            floor_iters: self.floor_iters / by,
            lat_iters: self.lat_iters / by,
            tput_msgs: self.tput_msgs / by,
            scale_msgs: self.scale_msgs / by,
            endpoint_msgs: self.endpoint_msgs / by,
            full_ring_msgs: self.full_ring_msgs / by,
            memcpy_iters: self.memcpy_iters / by,
            ..self
        }
    }

    fn counts(quick: bool) -> Self {
        if quick {
            Plan {
                floor_iters: 5_000,
                lat_iters: 3_000,
                tput_msgs: 40_000,
                window: 64,
                scale_msgs: 40_000,
                endpoint_msgs: 200_000,
                full_ring_msgs: 200_000,
                memory_guests: 4,
                start_runs: 3,
                memcpy_iters: 1_000_000,
            }
        } else {
            Plan {
                floor_iters: 40_000,
                lat_iters: 30_000,
                tput_msgs: 600_000,
                window: 64,
                scale_msgs: 600_000,
                endpoint_msgs: 3_000_000,
                full_ring_msgs: 1_000_000,
                memory_guests: 16,
                start_runs: 20,
                memcpy_iters: 10_000_000,
            }
        }
    }
}

// ----- small helpers ----------------------------------------------------------------------

/// The two CPUs the bench places its parties on.
#[derive(Debug, Clone, Copy)]
struct Cpus {
    /// The measuring side (host, guest, pinger).
    a: usize,
    /// The other side (remote, hub, echo).
    b: usize,
}

fn allowed_cpus() -> Vec<usize> {
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
fn pin(cpu: usize) {
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

/// Latency percentiles of a set of samples.
#[derive(Debug, Clone, Copy)]
struct Lat {
    p50_ns: f64,
    p99_ns: f64,
    n: usize,
}

fn lat_from(mut v: Vec<u64>) -> Lat {
    v.sort_unstable();
    let at = |p: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            v[((v.len() - 1) as f64 * p).round() as usize] as f64
        }
    };
    Lat {
        p50_ns: at(0.5),
        p99_ns: at(0.99),
        n: v.len(),
    }
}

/// A windowed throughput: echoed messages per second.
#[derive(Debug, Clone, Copy)]
struct Tput {
    ns_per_msg: f64,
    size: usize,
    n: usize,
}

impl Tput {
    fn msgs_per_s(&self) -> f64 {
        1e9 / self.ns_per_msg
    }
    fn mb_per_s(&self) -> f64 {
        self.msgs_per_s() * self.size as f64 / 1e6
    }
}

fn fmt_ns(ns: f64) -> String {
    if !ns.is_finite() {
        "-".into()
    } else if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 100_000.0 {
        format!("{:.1} us", ns / 1e3)
    } else if ns < 10_000_000.0 {
        format!("{:.0} us", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r.is_finite() => format!("{r:.2}x"),
        _ => "-".into(),
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else {
        format!("{:.0} k", r / 1e3)
    }
}

/// CPU time this process has used (all threads, user and system), in ns.
fn cpu_time_ns() -> f64 {
    // SAFETY: rusage is plain data; the call fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to our rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 * 1e9 + tv.tv_usec as f64 * 1e3;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn read_status() -> [u64; 3] {
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

fn temp_dir(tag: &str) -> Res<TempDir> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vamp-bench-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(TempDir(dir))
}

/// A directory removed when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ----- JSON ---------------------------------------------------------------------------------

/// Just enough JSON to write the figures.
#[derive(Debug, Clone)]
enum J {
    Num(f64),
    Str(String),
    Null,
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

fn obj<const N: usize>(pairs: [(&str, J); N]) -> J {
    J::Obj(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn num(v: f64) -> J {
    if v.is_finite() { J::Num(v) } else { J::Null }
}

fn opt_num(v: Option<f64>) -> J {
    v.map_or(J::Null, num)
}

fn s(v: impl Into<String>) -> J {
    J::Str(v.into())
}

impl J {
    fn write(&self, out: &mut String, indent: usize) {
        let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n));
        match self {
            J::Num(v) => {
                if v.fract() == 0.0 && v.abs() < 1e15 {
                    out.push_str(&format!("{}", *v as i64));
                } else {
                    out.push_str(&format!("{v:.4}"));
                }
            }
            J::Str(text) => {
                out.push('"');
                for c in text.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            J::Null => out.push_str("null"),
            J::Arr(items) => {
                if items.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    pad(out, indent + 2);
                    item.write(out, indent + 2);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                pad(out, indent);
                out.push(']');
            }
            J::Obj(fields) => {
                if fields.is_empty() {
                    out.push_str("{}");
                    return;
                }
                out.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    pad(out, indent + 2);
                    J::Str(k.clone()).write(out, indent + 2);
                    out.push_str(": ");
                    v.write(out, indent + 2);
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                pad(out, indent);
                out.push('}');
            }
        }
    }
}

// ----- shared memory, futexes and eventfds for the floors -----------------------------------

/// A memfd mapped shared; its descriptor is inherited by the peer processes we spawn.
#[derive(Debug)]
struct Shm {
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
    fn create(len: usize) -> Res<Self> {
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

    fn map(fd: i32, len: usize) -> Res<Self> {
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

    fn word(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len);
        // SAFETY: in bounds and 4-byte aligned (checked above; the mapping is page aligned);
        // the mapping lives as long as `self`, and every party accesses the word atomically.
        unsafe { &*self.ptr.add(off).cast::<AtomicU32>() }
    }

    fn slot(&self, off: usize, len: usize) -> *mut u8 {
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

fn futex_wait(word: &AtomicU32, seen: u32) {
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

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`; wakes at most one waiter.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

fn efd_write(fd: i32, v: u64) {
    // SAFETY: writes the 8 bytes of `v` to an eventfd we own.
    unsafe { libc::write(fd, (&v as *const u64).cast(), 8) };
}

fn efd_read(fd: i32) -> u64 {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into `v` from an eventfd we own.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    v
}

fn new_eventfd(flags: i32) -> Res<i32> {
    // SAFETY: plain system call; the result is checked.
    let fd = unsafe { libc::eventfd(0, flags) };
    if fd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    Ok(fd)
}

fn close_fd(fd: i32) {
    // SAFETY: closes a descriptor this process owns and no longer uses.
    unsafe { libc::close(fd) };
}

// Offsets in the floors' shared memory: every word on its own pair of cache lines.
const PING: usize = 0;
const PONG: usize = 128;
const A_HEAD: usize = 256;
const A_TAIL: usize = 384;
const B_HEAD: usize = 512;
const B_TAIL: usize = 640;
const STOP: usize = 768;
const RING_A: usize = 4096;
const RING_B: usize = RING_A + RING_SLOTS as usize * SLOT_BYTES;
const FLOOR_SHM: usize = RING_B + RING_SLOTS as usize * SLOT_BYTES;
/// The ping value that ends a ping-pong peer.
const PING_STOP: u32 = u32::MAX;

// ----- peer processes ---------------------------------------------------------------------

/// A copy of this program, started with the hidden `bench-peer` command.
#[derive(Debug)]
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Peer {
    fn spawn(args: &[String]) -> Res<Peer> {
        let exe = std::env::current_exe().map_err(|e| format!("find own binary: {e}"))?;
        let mut child = Command::new(exe)
            .arg("bench-peer")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start a peer process: {e}"))?;
        Ok(Peer {
            stdin: child.stdin.take(),
            stdout: child.stdout.take().map(BufReader::new),
            child,
        })
    }

    /// The next line the peer prints.
    fn line(&mut self) -> Res<String> {
        let mut line = String::new();
        let out = self.stdout.as_mut().ok_or("peer has no output")?;
        match out.read_line(&mut line) {
            Ok(0) => Err("the peer process ended early".into()),
            Ok(_) => Ok(line.trim().to_string()),
            Err(e) => Err(format!("read from the peer: {e}")),
        }
    }

    /// Closes its input (which tells a waiting peer to stop) and waits for it to exit.
    fn finish(mut self) -> Res<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("peer process failed: {status}")),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => return Err("peer process did not stop".into()),
                Err(e) => return Err(format!("wait for the peer: {e}")),
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Res<T> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("bench-peer: bad or missing {what}"))
}

/// Runs the other side of one measurement (`vamp bench-peer KIND ARGS...`, started by `vamp
/// bench` itself).
pub fn run_peer(args: &[String]) -> Result<(), String> {
    // SAFETY: plain prctl: this process is killed if the bench that started it dies.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let kind = args.first().map(String::as_str).unwrap_or("");
    let rest = args.get(1..).unwrap_or(&[]);
    match kind {
        "eventfd" => peer_eventfd(rest),
        "futex" | "spin" => peer_pingpong(rest, kind == "spin"),
        "ring" => peer_ring(rest),
        "native" => peer_native(rest),
        "hub-memory" => peer_hub_memory(rest),
        "hub-guest" => peer_hub_guest(rest),
        "hub-full-rings" => peer_hub_full_rings(rest),
        "native-rows" => peer_native_rows(rest),
        "hub-echo-busy" => {
            let allowed = allowed_cpus();
            pin(allowed[0]);
            let cpus = Cpus {
                a: allowed[0],
                b: *allowed.last().unwrap_or(&0),
            };
            for (fig, size) in hub_echo_busy(&Plan::new(false), cpus)
                .into_iter()
                .zip(SIZES)
            {
                let f = fig?;
                println!(
                    "{size} B: rtt p50 {:.0} ns; {:.0} ns per message windowed",
                    f.lat.p50_ns, f.tput.ns_per_msg
                );
            }
            Ok(())
        }
        other => Err(format!("bench-peer: unknown kind {other:?}")),
    }
}

fn peer_eventfd(args: &[String]) -> Res<()> {
    let (ping, pong, cpu): (i32, i32, usize) = (
        arg(args, 0, "fd")?,
        arg(args, 1, "fd")?,
        arg(args, 2, "cpu")?,
    );
    pin(cpu);
    loop {
        if efd_read(ping) >= 2 {
            return Ok(());
        }
        efd_write(pong, 1);
    }
}

fn peer_pingpong(args: &[String], spin: bool) -> Res<()> {
    let (fd, cpu): (i32, usize) = (arg(args, 0, "fd")?, arg(args, 1, "cpu")?);
    pin(cpu);
    let shm = Shm::map(fd, FLOOR_SHM)?;
    let (ping, pong) = (shm.word(PING), shm.word(PONG));
    let mut last = 0;
    loop {
        let v = ping.load(Ordering::Acquire);
        if v == last {
            if spin {
                std::hint::spin_loop();
            } else {
                futex_wait(ping, last);
            }
            continue;
        }
        if v == PING_STOP {
            return Ok(());
        }
        last = v;
        pong.store(v, Ordering::Release);
        if !spin {
            futex_wake(pong);
        }
    }
}

/// Echoes records from ring A into ring B, copying each once, until told to stop.
fn peer_ring(args: &[String]) -> Res<()> {
    let (fd, cpu, size): (i32, usize, usize) = (
        arg(args, 0, "fd")?,
        arg(args, 1, "cpu")?,
        arg(args, 2, "size")?,
    );
    pin(cpu);
    let shm = Shm::map(fd, FLOOR_SHM)?;
    let (a_head, a_tail) = (shm.word(A_HEAD), shm.word(A_TAIL));
    let (b_head, b_tail) = (shm.word(B_HEAD), shm.word(B_TAIL));
    let stop = shm.word(STOP);
    let size = size.min(SLOT_BYTES);
    let (mut tail, mut head) = (0u32, 0u32);
    loop {
        let avail = a_head.load(Ordering::Acquire);
        if avail == tail || head.wrapping_sub(b_tail.load(Ordering::Acquire)) >= RING_SLOTS {
            if stop.load(Ordering::Acquire) != 0 {
                return Ok(());
            }
            std::hint::spin_loop();
            continue;
        }
        let from = shm.slot(RING_A + (tail % RING_SLOTS) as usize * SLOT_BYTES, size);
        let to = shm.slot(RING_B + (head % RING_SLOTS) as usize * SLOT_BYTES, size);
        // SAFETY: both slots lie in the mapping; slot `tail` of A belongs to us until we
        // advance A's tail, slot `head` of B until we advance B's head (the indices are
        // published with release and read with acquire on both sides).
        unsafe { std::ptr::copy_nonoverlapping(from, to, size) };
        head = head.wrapping_add(1);
        b_head.store(head, Ordering::Release);
        tail = tail.wrapping_add(1);
        a_tail.store(tail, Ordering::Release);
    }
}

// ----- floors -------------------------------------------------------------------------------

/// One floor figure.
#[derive(Debug, Clone)]
struct Floor {
    key: &'static str,
    label: String,
    /// Round-trip latency, or `None` for per-operation figures.
    lat: Option<Lat>,
    /// Cost per operation (per message for the ring, per copy for memcpy).
    per_op_ns: Option<f64>,
    error: Option<String>,
}

impl Floor {
    fn value_ns(&self) -> Option<f64> {
        self.lat.map(|l| l.p50_ns).or(self.per_op_ns)
    }
}

fn floor_eventfd(iters: usize, me: usize, peer: usize) -> Res<Lat> {
    let ping = new_eventfd(0)?;
    let pong = new_eventfd(0)?;
    let result = (|| {
        let p = Peer::spawn(&[
            "eventfd".into(),
            ping.to_string(),
            pong.to_string(),
            peer.to_string(),
        ])?;
        pin(me);
        let warm = iters / 10 + 10;
        let mut v = Vec::with_capacity(iters);
        for i in 0..warm + iters {
            let t0 = Instant::now();
            efd_write(ping, 1);
            efd_read(pong);
            if i >= warm {
                v.push(t0.elapsed().as_nanos() as u64);
            }
        }
        efd_write(ping, 2);
        p.finish()?;
        Ok(lat_from(v))
    })();
    close_fd(ping);
    close_fd(pong);
    result
}

fn floor_pingpong(iters: usize, me: usize, peer: usize, spin: bool) -> Res<Lat> {
    let shm = Shm::create(FLOOR_SHM)?;
    let kind = if spin { "spin" } else { "futex" };
    let p = Peer::spawn(&[kind.into(), shm.fd.to_string(), peer.to_string()])?;
    pin(me);
    let (ping, pong) = (shm.word(PING), shm.word(PONG));
    let warm = iters / 10 + 10;
    let mut v = Vec::with_capacity(iters);
    let deadline = Instant::now() + STEP_TIMEOUT;
    for i in 0..(warm + iters) as u32 {
        let seq = i + 1;
        let t0 = Instant::now();
        ping.store(seq, Ordering::Release);
        if !spin {
            futex_wake(ping);
        }
        loop {
            let got = pong.load(Ordering::Acquire);
            if got == seq {
                break;
            }
            if spin {
                std::hint::spin_loop();
                if Instant::now() > deadline {
                    return Err("spin peer does not answer".into());
                }
            } else {
                futex_wait(pong, got);
            }
        }
        if i as usize >= warm {
            v.push(t0.elapsed().as_nanos() as u64);
        }
    }
    ping.store(PING_STOP, Ordering::Release);
    futex_wake(ping);
    p.finish()?;
    Ok(lat_from(v))
}

/// The windowed echo over a plain shared ring: the best any echo can do with the same window
/// and copies (the sender writes the record, the peer copies it into the reply ring, the
/// sender reads it back), busy-polling on two CPUs.
fn floor_ring(msgs: usize, window: usize, size: usize, me: usize, peer: usize) -> Res<f64> {
    let shm = Shm::create(FLOOR_SHM)?;
    let p = Peer::spawn(&[
        "ring".into(),
        shm.fd.to_string(),
        peer.to_string(),
        size.to_string(),
    ])?;
    pin(me);
    let (a_head, a_tail) = (shm.word(A_HEAD), shm.word(A_TAIL));
    let (b_head, b_tail) = (shm.word(B_HEAD), shm.word(B_TAIL));
    let window = window.min(RING_SLOTS as usize) as u32;
    let payload = [0x5au8; SLOT_BYTES];
    let mut back = [0u8; SLOT_BYTES];
    let (mut sent, mut recv) = (0u32, 0u32);
    let mut run = |n: u32| -> Res<Duration> {
        let start = Instant::now();
        let end = recv + n;
        let first = sent;
        while recv < end {
            let mut progressed = false;
            while sent - first < n
                && sent.wrapping_sub(recv) < window
                && sent.wrapping_sub(a_tail.load(Ordering::Acquire)) < RING_SLOTS
            {
                let to = shm.slot(RING_A + (sent % RING_SLOTS) as usize * SLOT_BYTES, size);
                // SAFETY: the slot lies in the mapping and is ours: the peer has consumed it
                // (A's tail is past it), and it is published only by the store below.
                unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), to, size) };
                sent = sent.wrapping_add(1);
                a_head.store(sent, Ordering::Release);
                progressed = true;
            }
            let published = b_head.load(Ordering::Acquire);
            while recv != published {
                let from = shm.slot(RING_B + (recv % RING_SLOTS) as usize * SLOT_BYTES, size);
                // SAFETY: the slot lies in the mapping; the peer published it (B's head is past
                // it) and does not touch it until we advance B's tail.
                unsafe { std::ptr::copy_nonoverlapping(from, back.as_mut_ptr(), size) };
                recv = recv.wrapping_add(1);
                b_tail.store(recv, Ordering::Release);
                progressed = true;
            }
            if !progressed {
                std::hint::spin_loop();
                if start.elapsed() > STEP_TIMEOUT {
                    return Err("ring peer does not answer".into());
                }
            }
        }
        Ok(start.elapsed())
    };
    run((msgs / 10).max(100) as u32)?;
    let each = (msgs / BURSTS).max(1);
    let mut per_msg = Vec::with_capacity(BURSTS);
    for _ in 0..BURSTS {
        per_msg.push(run(each as u32)?.as_nanos() as f64 / each as f64);
    }
    std::hint::black_box(&back);
    shm.word(STOP).store(1, Ordering::Release);
    p.finish()?;
    Ok(median(per_msg))
}

/// ns per `memcpy` of `size` bytes between two cache-hot buffers.
fn floor_memcpy(size: usize, iters: usize) -> f64 {
    let src = vec![0x3cu8; 4096];
    let mut dst = vec![0u8; 4096];
    assert!(size <= 1024);
    let (from, to) = (src.as_ptr(), dst.as_mut_ptr());
    let start = Instant::now();
    for i in 0..iters {
        let off = (i % 4) * 64;
        // SAFETY: `off + size` stays inside both 4096-byte buffers, which do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(from.add(off), to.add(off), std::hint::black_box(size))
        };
        std::hint::black_box(to);
    }
    let took = start.elapsed();
    std::hint::black_box(&mut dst);
    took.as_nanos() as f64 / iters as f64
}

/// ns per copy of `size` bytes the way the engine copies a message between two memories
/// (bounds-checked volatile copy, `mem::copy_between`).
fn engine_copy(size: usize, iters: usize) -> f64 {
    let from = HeapMemory::new(4096, 0);
    let to = HeapMemory::new(4096, 0);
    let start = Instant::now();
    for i in 0..iters {
        let off = (i % 4) as u64 * 64;
        let _ = vamp_rpmsg::mem::copy_between(&from, off, &to, off, std::hint::black_box(size));
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

fn clock_overhead() -> f64 {
    let n = 100_000;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(Instant::now());
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

// ----- the client side of every link ---------------------------------------------------------

/// Counts echoes and checks they come back in order and intact.
#[derive(Debug)]
struct Sink {
    got: u64,
    next_seq: u32,
    bad: u64,
    buf: [u8; SLOT_BYTES],
}

impl Sink {
    fn new() -> Self {
        Sink {
            got: 0,
            next_seq: 1,
            bad: 0,
            buf: [0; SLOT_BYTES],
        }
    }
}

impl<T: Transport> Handler<T> for Sink {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        self.got += 1;
        let len = (msg.len as usize).min(SLOT_BYTES);
        if len < 4 || rpmsg.read_payload(msg, 0, &mut self.buf[..len]).is_err() {
            self.bad += 1;
            return;
        }
        let seq = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if seq != self.next_seq || self.buf[len - 1] != fill_byte(len) {
            self.bad += 1;
        }
        self.next_seq = seq.wrapping_add(1);
    }
}

fn fill_byte(len: usize) -> u8 {
    (len as u8) ^ 0xa5
}

/// Finds a name announced to us.
#[derive(Debug)]
struct Finder<'a> {
    name: &'a str,
    addr: Option<u32>,
}

impl<T: Transport> Handler<T> for Finder<'_> {
    fn on_message(&mut self, _: &mut Rpmsg<T>, _: &mut Received) {}
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, event: NsEvent<'_>) {
        if let NsEvent::Created { name, addr, .. } = event
            && name == self.name.as_bytes()
        {
            self.addr = Some(addr);
        }
    }
}

fn rerr(e: RpmsgError) -> String {
    format!("rpmsg: {e}")
}

/// Waits for the peer (notifications) or spins once (busy-poll).
fn idle<T: Transport>(rpmsg: &mut Rpmsg<T>, busy: bool) {
    if busy {
        std::hint::spin_loop();
    } else {
        rpmsg.transport_mut().environment().wait(100_000);
    }
}

fn find_name<T: Transport>(rpmsg: &mut Rpmsg<T>, name: &str, busy: bool) -> Res<u32> {
    let mut finder = Finder { name, addr: None };
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        rpmsg.poll(&mut finder).map_err(rerr)?;
        if let Some(a) = finder.addr {
            return Ok(a);
        }
        if Instant::now() > deadline {
            return Err(format!("\"{name}\" was never announced"));
        }
        idle(rpmsg, busy);
    }
}

/// The client's message buffer: sequence number first, then a pattern that depends on the
/// length (so a truncated echo is seen).
fn message(size: usize) -> [u8; SLOT_BYTES] {
    let mut buf = [0u8; SLOT_BYTES];
    for (i, b) in buf.iter_mut().enumerate().take(size) {
        *b = i as u8;
    }
    if size > 0 {
        buf[size - 1] = fill_byte(size);
    }
    buf
}

fn try_send<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    (ept, dst): (EptId, u32),
    buf: &mut [u8; SLOT_BYTES],
    size: usize,
    seq: u32,
) -> Res<bool> {
    buf[..4].copy_from_slice(&seq.to_le_bytes());
    match rpmsg.trysendto(ept, dst, &buf[..size]) {
        Ok(_) => Ok(true),
        Err(RpmsgError::NoBuffer) => Ok(false),
        Err(e) => Err(rerr(e)),
    }
}

/// `n` round trips of `size` bytes, one message at a time.
fn round_trips<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    target: (EptId, u32),
    size: usize,
    n: usize,
    busy: bool,
) -> Res<Lat> {
    let mut sink = Sink::new();
    let mut buf = message(size);
    let warm = n / 10 + 10;
    let mut v = Vec::with_capacity(n);
    let deadline = Instant::now() + STEP_TIMEOUT;
    for i in 0..warm + n {
        let seq = i as u32 + 1;
        let t0 = Instant::now();
        while !try_send(rpmsg, target, &mut buf, size, seq)? {
            rpmsg.poll(&mut sink).map_err(rerr)?;
            idle(rpmsg, busy);
        }
        let before = sink.got;
        loop {
            rpmsg.poll(&mut sink).map_err(rerr)?;
            if sink.got > before {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("no echo after {i} round trips"));
            }
            idle(rpmsg, busy);
        }
        if i >= warm {
            v.push(t0.elapsed().as_nanos() as u64);
        }
    }
    if sink.bad > 0 {
        return Err(format!("{} of {} echoes were wrong", sink.bad, sink.got));
    }
    Ok(lat_from(v))
}

/// `n` messages of `size` bytes with up to `window` in flight, spread over `targets`.
fn throughput<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    targets: &[(EptId, u32)],
    size: usize,
    n: usize,
    window: usize,
    busy: bool,
) -> Res<Tput> {
    let mut sink = Sink::new();
    let mut buf = message(size);
    let mut seq = 1u32;
    let mut burst = |rpmsg: &mut Rpmsg<T>, sink: &mut Sink, n: usize| -> Res<Duration> {
        let start = Instant::now();
        let end = sink.got + n as u64;
        let mut sent = 0usize;
        while sink.got < end {
            let mut progressed = false;
            while sent < n && (sent as u64) < n as u64 - (end - sink.got) + window as u64 {
                let target = targets[seq as usize % targets.len()];
                if !try_send(rpmsg, target, &mut buf, size, seq)? {
                    break;
                }
                seq += 1;
                sent += 1;
                progressed = true;
            }
            if rpmsg.poll(sink).map_err(rerr)? > 0 {
                progressed = true;
            }
            if !progressed {
                if start.elapsed() > STEP_TIMEOUT {
                    return Err(format!(
                        "stalled after {} of {n} echoes",
                        n as u64 - (end - sink.got)
                    ));
                }
                idle(rpmsg, busy);
            }
        }
        Ok(start.elapsed())
    };
    burst(rpmsg, &mut sink, warmup(n, window))?;
    // The median of several bursts: this machine's other load does not make the figure.
    let each = (n / BURSTS).max(1);
    let mut per_msg = Vec::with_capacity(BURSTS);
    for _ in 0..BURSTS {
        per_msg.push(burst(rpmsg, &mut sink, each)?.as_nanos() as f64 / each as f64);
    }
    if sink.bad > 0 {
        return Err(format!("{} of {} echoes were wrong", sink.bad, sink.got));
    }
    Ok(Tput {
        ns_per_msg: median(per_msg),
        size,
        n: each * BURSTS,
    })
}

/// Bursts a throughput figure is the median of.
const BURSTS: usize = 5;

/// Messages a throughput run sends before the timed bursts.
fn warmup(n: usize, window: usize) -> usize {
    (n / 10).max(window)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Round trips and throughput at every size.
#[derive(Debug, Clone, Copy)]
struct Fig {
    lat: Lat,
    tput: Tput,
}

fn measure<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    target: (EptId, u32),
    busy: bool,
    plan: &Plan,
) -> [Res<Fig>; 2] {
    SIZES.map(|size| {
        let lat = round_trips(rpmsg, target, size, plan.lat_iters, busy)?;
        let tput = throughput(rpmsg, &[target], size, plan.tput_msgs, plan.window, busy)?;
        Ok(Fig { lat, tput })
    })
}

// ----- echo servers -------------------------------------------------------------------------

/// Echoes every message to its sender from the endpoint it reached; stops on OpenAMP's
/// shutdown word.
#[derive(Debug)]
struct Echo {
    shutdown: bool,
    failed: u64,
    buf: [u8; SLOT_BYTES],
}

impl Echo {
    fn new() -> Self {
        Echo {
            shutdown: false,
            failed: 0,
            buf: [0; SLOT_BYTES],
        }
    }
}

impl<T: Transport> Handler<T> for Echo {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        let len = (msg.len as usize).min(SLOT_BYTES);
        if rpmsg.read_payload(msg, 0, &mut self.buf[..len]).is_err() {
            self.failed += 1;
            return;
        }
        if len >= 4 && self.buf[..4] == SHUTDOWN_MSG.to_ne_bytes() {
            self.shutdown = true;
            return;
        }
        if rpmsg.sendto(msg.ept, msg.src, &self.buf[..len]).is_err() {
            self.failed += 1;
        }
    }
}

/// The remote of a native link: echoes on `ENDPOINT_BASE..+endpoints` until the shutdown word.
fn peer_native(args: &[String]) -> Res<()> {
    let shm: PathBuf = arg(args, 0, "shm path")?;
    let socket: PathBuf = arg(args, 1, "socket path")?;
    let cpu: usize = arg(args, 2, "cpu")?;
    let busy = arg::<u8>(args, 3, "busy flag")? != 0;
    let endpoints: u32 = arg(args, 4, "endpoint count")?;
    pin(cpu);
    let paths = NativePaths { shm, socket };
    let mut rpmsg = native::start_remote(&paths, Some(STEP_TIMEOUT), || {})
        .map_err(|e| format!("native remote: {e}"))?;
    if busy {
        rpmsg
            .transport_mut()
            .set_busy_poll(true)
            .map_err(|e| e.to_string())?;
    }
    for i in 0..endpoints {
        rpmsg
            .create_ept(b"", ENDPOINT_BASE + i, ADDR_ANY)
            .map_err(rerr)?;
    }
    // Announced last: when the host hears it, every endpoint exists.
    rpmsg
        .create_ept(ECHO_NAME.as_bytes(), ADDR_ANY, ADDR_ANY)
        .map_err(rerr)?;
    let mut echo = Echo::new();
    loop {
        let n = rpmsg.poll(&mut echo).map_err(rerr)?;
        if echo.shutdown {
            break;
        }
        if n == 0 {
            if busy {
                std::hint::spin_loop();
            } else {
                let env = rpmsg.transport_mut().env_mut();
                if env.peer_gone() {
                    break;
                }
                env.wait_for_kick(Duration::from_millis(200));
            }
        }
    }
    if echo.failed > 0 {
        return Err(format!("{} echoes failed", echo.failed));
    }
    Ok(())
}

/// A native link with its remote in another process; the host side is this thread.
struct NativeSession {
    rpmsg: native::HostRpmsg,
    peer: Peer,
    paths: NativePaths,
    targets: Vec<(EptId, u32)>,
    busy: bool,
}

impl NativeSession {
    fn start(remote_cpu: usize, busy: bool, endpoints: u32) -> Res<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let paths = native::private_paths(&format!("bench{}", N.fetch_add(1, Ordering::Relaxed)));
        let peer = Peer::spawn(&[
            "native".into(),
            paths.shm.display().to_string(),
            paths.socket.display().to_string(),
            remote_cpu.to_string(),
            u8::from(busy).to_string(),
            endpoints.to_string(),
        ])?;
        let mut rpmsg =
            native::start_host(&paths, STEP_TIMEOUT).map_err(|e| format!("native host: {e}"))?;
        if busy {
            rpmsg
                .transport_mut()
                .set_busy_poll(true)
                .map_err(|e| e.to_string())?;
        }
        find_name(&mut rpmsg, ECHO_NAME, busy)?;
        let mut targets = Vec::with_capacity(endpoints as usize);
        for i in 0..endpoints {
            let ept = rpmsg
                .create_ept(b"", ADDR_ANY, ENDPOINT_BASE + i)
                .map_err(rerr)?;
            targets.push((ept, ENDPOINT_BASE + i));
        }
        Ok(NativeSession {
            rpmsg,
            peer,
            paths,
            targets,
            busy,
        })
    }

    fn finish(mut self) -> Res<()> {
        let (ept, dst) = self.targets[0];
        let sent = self.rpmsg.sendto(ept, dst, &SHUTDOWN_MSG.to_ne_bytes());
        let done = self.peer.finish();
        native::cleanup(&self.paths);
        sent.map_err(rerr)?;
        done
    }
}

fn native_rows(plan: &Plan, remote_cpu: usize, busy: bool) -> [Res<Fig>; 2] {
    let mut session = match NativeSession::start(remote_cpu, busy, 1) {
        Ok(s) => s,
        Err(e) => return [Err(e.clone()), Err(e)],
    };
    let target = session.targets[0];
    let busy = session.busy;
    let kicks = |s: &mut NativeSession| s.rpmsg.transport_mut().env_mut().kicks_sent;
    let before = kicks(&mut session);
    let mut figs = measure(&mut session.rpmsg, target, busy, plan);
    if busy {
        figs = check_quiet(figs, kicks(&mut session) - before);
    }
    if let Err(e) = session.finish() {
        return [Err(e.clone()), Err(e)];
    }
    figs
}

/// `vamp bench-peer native-rows notify|busy [same-cpu]`: the native link's rows alone (this
/// process on CPU 0, the remote on CPU 1 or also on 0), for profiling the engine.
fn peer_native_rows(args: &[String]) -> Res<()> {
    let busy = match args.first().map(String::as_str) {
        Some("notify") => false,
        Some("busy") => true,
        _ => return Err("bench-peer native-rows: say notify or busy".into()),
    };
    let allowed = allowed_cpus();
    pin(allowed[0]);
    let remote_cpu = match args.get(1).map(String::as_str) {
        Some("same-cpu") => allowed[0],
        _ => *allowed.last().unwrap_or(&0),
    };
    let plan = Plan::new(false);
    for (fig, size) in native_rows(&plan, remote_cpu, busy).into_iter().zip(SIZES) {
        let f = fig?;
        println!(
            "{size} B: rtt p50 {:.0} ns, p99 {:.0} ns; {:.0} ns per message windowed",
            f.lat.p50_ns, f.lat.p99_ns, f.tput.ns_per_msg
        );
    }
    Ok(())
}

/// Endpoint counts of the endpoint scale.
const ENDPOINT_COUNTS: [u32; 3] = [1, 100, 10_000];
/// Rounds over every endpoint count, in alternating order, so that a change in the machine's
/// other load does not land on one count only.
const ENDPOINT_ROUNDS: usize = 3;

/// Per-message cost with 1, 100 and 10 000 endpoints on each side of a native link
/// (busy-poll, windowed, messages spread round-robin): medians over rounds.
fn endpoint_scale(plan: &Plan, cpus: Cpus) -> [Res<Tput>; 3] {
    let mut per_count: [Vec<Res<Tput>>; 3] = Default::default();
    for round in 0..ENDPOINT_ROUNDS {
        for k in 0..ENDPOINT_COUNTS.len() {
            let k = if round % 2 == 0 {
                k
            } else {
                ENDPOINT_COUNTS.len() - 1 - k
            };
            let run = || -> Res<Tput> {
                let mut session = NativeSession::start(cpus.b, true, ENDPOINT_COUNTS[k])?;
                let targets = session.targets.clone();
                let n = plan.endpoint_msgs / ENDPOINT_ROUNDS;
                let t = throughput(&mut session.rpmsg, &targets, 16, n, plan.window, true);
                session.finish()?;
                t
            };
            per_count[k].push(run());
        }
    }
    per_count.map(|runs| {
        let mut ok = Vec::new();
        for r in runs {
            ok.push(r?);
        }
        let ns = median(ok.iter().map(|t| t.ns_per_msg).collect());
        Ok(Tput {
            ns_per_msg: ns,
            size: 16,
            n: ok.iter().map(|t| t.n).sum(),
        })
    })
}

// ----- the hub over vhost-user ----------------------------------------------------------------

fn topology(guests: usize, pairs: bool, socket_dir: &Path) -> Res<Topology> {
    let name = |i: usize| format!("g{i}");
    let mut channels = Vec::new();
    if pairs {
        for k in 0..guests / 2 {
            channels.push(ChannelSpec {
                from: name(2 * k + 1),
                to: vec![name(2 * k)],
                names: Some(vec![PEER_NAME.into()]),
            });
        }
    }
    let t = Topology {
        guests: (0..guests)
            .map(|i| GuestSpec {
                name: name(i),
                socket: socket_dir.join(format!("g{i}.sock")),
            })
            .collect(),
        remotes: Vec::new(),
        services: vec![ServiceSpec {
            kind: ServiceKind::Echo,
            name: ECHO_NAME.into(),
            guests: None,
        }],
        channels,
    };
    t.validate().map_err(|e| e.to_string())?;
    Ok(t)
}

/// A hub serving guests on vhost-user sockets from threads pinned to one CPU. The threads
/// serve until the process ends (the hub has no stop call); the sockets go with the dir.
struct VhostHub {
    hub: Arc<Mutex<Hub>>,
    sockets: Vec<PathBuf>,
    _dir: TempDir,
}

fn start_vhost_hub(guests: usize, pairs: bool, cpu: usize) -> Res<VhostHub> {
    let dir = temp_dir("hub")?;
    let t = topology(guests, pairs, &dir.0)?;
    let sockets: Vec<PathBuf> = t.guests.iter().map(|g| g.socket.clone()).collect();
    let hub = Arc::new(Mutex::new(Hub::new(t)));
    for (id, socket) in sockets.iter().enumerate() {
        let (hub, socket) = (hub.clone(), socket.clone());
        std::thread::spawn(move || {
            pin(cpu);
            serve_guest(hub, id, &socket)
        });
    }
    Ok(VhostHub {
        hub,
        sockets,
        _dir: dir,
    })
}

fn connect_guest(socket: &Path) -> Res<NativeGuest> {
    let opts = GuestOptions {
        connect_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    NativeGuest::connect(socket, opts).map_err(|e| format!("native guest: {e}"))
}

fn hub_echo_notify(plan: &Plan, cpus: Cpus) -> [Res<Fig>; 2] {
    let run = || -> Res<[Res<Fig>; 2]> {
        let hub = start_vhost_hub(1, false, cpus.b)?;
        let mut g = connect_guest(&hub.sockets[0])?;
        let addr = find_name(g.rpmsg(), ECHO_NAME, false)?;
        let ept = g.rpmsg().create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
        Ok(measure(g.rpmsg(), (ept, addr), false, plan))
    };
    run().unwrap_or_else(|e| [Err(e.clone()), Err(e)])
}

/// Runs an echo guest in a thread until `stop`.
fn echo_guest_thread(
    socket: PathBuf,
    cpu: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Res<()>> {
    std::thread::spawn(move || {
        pin(cpu);
        let mut g = connect_guest(&socket)?;
        g.rpmsg()
            .create_ept(PEER_NAME.as_bytes(), ADDR_ANY, ADDR_ANY)
            .map_err(rerr)?;
        let mut echo = Echo::new();
        while !stop.load(Ordering::Relaxed) && !echo.shutdown {
            if g.poll(&mut echo).map_err(rerr)? == 0 {
                g.wait(Duration::from_millis(50));
            }
        }
        Ok(())
    })
}

fn guest_to_guest_notify(plan: &Plan, cpus: Cpus) -> [Res<Fig>; 2] {
    let run = || -> Res<[Res<Fig>; 2]> {
        let hub = start_vhost_hub(2, true, cpus.b)?;
        let stop = Arc::new(AtomicBool::new(false));
        let echo = echo_guest_thread(hub.sockets[1].clone(), cpus.a, stop.clone());
        let mut g = connect_guest(&hub.sockets[0])?;
        let figs = match find_name(g.rpmsg(), PEER_NAME, false) {
            Ok(addr) => {
                let ept = g.rpmsg().create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
                measure(g.rpmsg(), (ept, addr), false, plan)
            }
            Err(e) => [Err(e.clone()), Err(e)],
        };
        stop.store(true, Ordering::Relaxed);
        echo.join().map_err(|_| "echo guest panicked")??;
        Ok(figs)
    };
    run().unwrap_or_else(|e| [Err(e.clone()), Err(e)])
}

/// Per-message cost with `guests` guests all echoing through the hub at once (16 bytes,
/// windowed, notifications): the wall time of all of them over the messages of all of them,
/// and the CPU time of this process (guests and hub) per message.
fn guest_scale(plan: &Plan, cpus: Cpus, guests: usize) -> Res<(Tput, f64, LockCounts)> {
    let hub = start_vhost_hub(guests, false, cpus.b)?;
    let per_guest = (plan.scale_msgs / guests).max(plan.window);
    let window = 16;
    let ready = Arc::new(Barrier::new(guests + 1));
    let done = Arc::new(Barrier::new(guests + 1));
    let threads: Vec<_> = hub
        .sockets
        .iter()
        .map(|socket| {
            let (socket, ready, done) = (socket.clone(), ready.clone(), done.clone());
            std::thread::spawn(move || -> Res<usize> {
                pin(cpus.a);
                let setup = (|| {
                    let mut g = connect_guest(&socket)?;
                    let addr = find_name(g.rpmsg(), ECHO_NAME, false)?;
                    let ept = g.rpmsg().create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
                    throughput(g.rpmsg(), &[(ept, addr)], 16, window, window, false)?;
                    Ok::<_, String>((g, (ept, addr)))
                })();
                ready.wait();
                // Every guest stays connected until all are done: a disconnect costs the hub.
                let mut guest = None;
                let result = match setup {
                    Ok((g, target)) => {
                        let g = guest.insert(g);
                        throughput(g.rpmsg(), &[target], 16, per_guest, window, false)
                    }
                    Err(e) => Err(e),
                };
                done.wait();
                drop(guest);
                result.map(|t| t.n + warmup(per_guest, window))
            })
        })
        .collect();
    ready.wait();
    let (start, cpu0, locks0) = (
        Instant::now(),
        cpu_time_ns(),
        lock_hub(&hub.hub).lock_counts(),
    );
    done.wait();
    let (took, cpu, locks1) = (
        start.elapsed(),
        cpu_time_ns() - cpu0,
        lock_hub(&hub.hub).lock_counts(),
    );
    // Each guest's throughput() runs a warm-up before its timed bursts; the wall time covers
    // both, so both count.
    let mut total = 0;
    for t in threads {
        total += t.join().map_err(|_| "guest thread panicked")??;
    }
    Ok((
        Tput {
            ns_per_msg: took.as_nanos() as f64 / total as f64,
            size: 16,
            n: total,
        },
        cpu / total as f64,
        LockCounts {
            taken: locks1.0 - locks0.0,
            waited: locks1.1 - locks0.1,
        },
    ))
}

/// How often the hub's lock, which all guests share, was taken while guests echoed, and how
/// often a thread found it held by another and had to wait.
#[derive(Debug, Clone, Copy)]
struct LockCounts {
    taken: u64,
    waited: u64,
}

// ----- guests driven in memory, for the hub's busy-poll rows and its own cost -------------------

/// An Environment counting kicks and writing them to an eventfd (the cost a kick has).
#[derive(Debug)]
struct KickEnv {
    fd: i32,
    start: Instant,
    kicks: u64,
}

impl Environment for KickEnv {
    fn notify(&mut self, _queue: u16) {
        self.kicks += 1;
        efd_write(self.fd, 1);
    }
    fn now_us(&mut self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

impl Drop for KickEnv {
    fn drop(&mut self) {
        close_fd(self.fd);
    }
}

/// Interrupts from the hub: one eventfd write each, as vhost-user's call eventfd.
struct CallNotifier {
    fd: i32,
    count: AtomicU64,
}

impl Notifier for CallNotifier {
    fn notify(&self, _queue: u16) {
        self.count.fetch_add(1, Ordering::Relaxed);
        efd_write(self.fd, 1);
    }
}

impl Drop for CallNotifier {
    fn drop(&mut self) {
        close_fd(self.fd);
    }
}

type DirectRpmsg = Rpmsg<DriverTransport<GuestRam, KickEnv>>;

/// A guest whose rings the hub serves by direct calls (no vhost-user socket, no kick
/// eventfd watched): its memory, rings and engine are those of a native guest.
struct DirectGuest {
    id: usize,
    rpmsg: DirectRpmsg,
    ram: GuestRam,
    info: RingsInfo,
}

impl DirectGuest {
    fn new(id: usize, busy: bool) -> Res<Self> {
        let opts = GuestOptions {
            mem_size: 1 << 20,
            ..Default::default()
        };
        let layout = opts.driver_layout().map_err(|e| e.to_string())?;
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
            vm_memory::GuestAddress(0),
            opts.mem_size,
        )])
        .map_err(|e| format!("guest memory: {e}"))?;
        let ram = GuestRam::new(mem);
        let env = KickEnv {
            fd: new_eventfd(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            start: Instant::now(),
            kicks: 0,
        };
        let t = DriverTransport::new(ram.clone(), env, layout, Endian::Little, true)
            .map_err(|e| e.to_string())?;
        let mut rpmsg = Rpmsg::new(t, Config::default());
        if busy {
            rpmsg
                .transport_mut()
                .set_busy_poll(true)
                .map_err(|e| e.to_string())?;
        }
        rpmsg.transport_mut().flush().map_err(|e| e.to_string())?;
        Ok(DirectGuest {
            id,
            rpmsg,
            ram,
            info: RingsInfo {
                rings: [layout.rx_ring, layout.tx_ring],
                next_avail: [0, 0],
                event_idx: true,
                name_service: true,
            },
        })
    }

    fn serve(&self, hub: &Mutex<Hub>, notifier: &Arc<dyn Notifier>) {
        lock_hub(hub).service(self.id, &self.ram, self.info, notifier);
    }

    fn kicks(&mut self) -> u64 {
        self.rpmsg.transport_mut().env_mut().kicks
    }
}

fn call_notifier() -> Res<Arc<CallNotifier>> {
    Ok(Arc::new(CallNotifier {
        fd: new_eventfd(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        count: AtomicU64::new(0),
    }))
}

/// Busy-poll rows must not notify at all: `notified` is what was sent in either direction
/// while measuring.
fn check_quiet(figs: [Res<Fig>; 2], notified: u64) -> [Res<Fig>; 2] {
    if notified == 0 {
        return figs;
    }
    let e = format!("busy-poll mode still sent {notified} notifications");
    [Err(e.clone()), Err(e)]
}

fn direct_hub(guests: usize, pairs: bool) -> Res<(Arc<Mutex<Hub>>, TempDir)> {
    let dir = temp_dir("direct")?;
    let t = topology(guests, pairs, &dir.0)?;
    Ok((Arc::new(Mutex::new(Hub::new(t))), dir))
}

/// A thread on `cpu` that serves the given guests' rings in a loop until `stop`; `extra`
/// runs in the same loop (an echo guest sharing the CPU).
/// Returns, when stopped, the kicks the extra guest sent.
fn hub_poller(
    hub: Arc<Mutex<Hub>>,
    served: Vec<(usize, GuestRam, RingsInfo)>,
    mut extra: Option<DirectGuest>,
    cpu: usize,
    stop: Arc<AtomicBool>,
    notifier: Arc<dyn Notifier>,
) -> std::thread::JoinHandle<Res<u64>> {
    std::thread::spawn(move || {
        pin(cpu);
        let mut echo = Echo::new();
        let kicks0 = extra.as_mut().map_or(0, DirectGuest::kicks);
        while !stop.load(Ordering::Relaxed) {
            for (id, ram, info) in &served {
                lock_hub(&hub).service(*id, ram, *info, &notifier);
            }
            if let Some(g) = extra.as_mut() {
                g.rpmsg.poll(&mut echo).map_err(rerr)?;
            }
        }
        Ok(extra.as_mut().map_or(0, DirectGuest::kicks) - kicks0)
    })
}

fn hub_echo_busy(plan: &Plan, cpus: Cpus) -> [Res<Fig>; 2] {
    let run = || -> Res<[Res<Fig>; 2]> {
        let (hub, _dir) = direct_hub(1, false)?;
        let calls = call_notifier()?;
        let notifier: Arc<dyn Notifier> = calls.clone();
        let mut g = DirectGuest::new(0, true)?;
        g.serve(&hub, &notifier);
        let addr = find_name(&mut g.rpmsg, ECHO_NAME, true)?;
        let ept = g.rpmsg.create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let before = g.kicks() + calls.count.load(Ordering::Relaxed);
        let poller = hub_poller(
            hub.clone(),
            vec![(0, g.ram.clone(), g.info)],
            None,
            cpus.b,
            stop.clone(),
            notifier,
        );
        let figs = measure(&mut g.rpmsg, (ept, addr), true, plan);
        stop.store(true, Ordering::Relaxed);
        poller.join().map_err(|_| "hub poller panicked")??;
        let after = g.kicks() + calls.count.load(Ordering::Relaxed);
        Ok(check_quiet(figs, after - before))
    };
    run().unwrap_or_else(|e| [Err(e.clone()), Err(e)])
}

fn guest_to_guest_busy(plan: &Plan, cpus: Cpus) -> [Res<Fig>; 2] {
    let run = || -> Res<[Res<Fig>; 2]> {
        let (hub, _dir) = direct_hub(2, true)?;
        let calls = call_notifier()?;
        let notifier: Arc<dyn Notifier> = calls.clone();
        let mut a = DirectGuest::new(0, true)?;
        let mut b = DirectGuest::new(1, true)?;
        a.serve(&hub, &notifier);
        b.serve(&hub, &notifier);
        b.rpmsg
            .create_ept(PEER_NAME.as_bytes(), ADDR_ANY, ADDR_ANY)
            .map_err(rerr)?;
        b.serve(&hub, &notifier);
        let addr = find_name(&mut a.rpmsg, PEER_NAME, true)?;
        let ept = a.rpmsg.create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = vec![(0, a.ram.clone(), a.info), (1, b.ram.clone(), b.info)];
        let before = a.kicks() + calls.count.load(Ordering::Relaxed);
        let poller = hub_poller(hub.clone(), served, Some(b), cpus.b, stop.clone(), notifier);
        let figs = measure(&mut a.rpmsg, (ept, addr), true, plan);
        stop.store(true, Ordering::Relaxed);
        let b_kicks = poller.join().map_err(|_| "hub poller panicked")??;
        let after = a.kicks() + calls.count.load(Ordering::Relaxed) + b_kicks;
        Ok(check_quiet(figs, after - before))
    };
    run().unwrap_or_else(|e| [Err(e.clone()), Err(e)])
}

/// The hub's own cost per message with full rings, on one thread: every sender fills its
/// transmit ring (256 messages), then the hub serves each sender once (timed), then the
/// receivers drain (not timed). Echo: every guest sends to the hub's echo; forward: guest
/// 2k sends to guest 2k+1. Interrupts are real eventfd writes, batched by EVENT_IDX.
fn hub_full_rings(plan: &Plan, guests: usize, forward: bool, size: usize) -> Res<f64> {
    let (hub, _dir) = direct_hub(guests, forward)?;
    let notifier: Arc<dyn Notifier> = call_notifier()?;
    let mut gs: Vec<DirectGuest> = (0..guests)
        .map(|i| DirectGuest::new(i, false))
        .collect::<Res<_>>()?;
    for g in &gs {
        g.serve(&hub, &notifier);
    }
    let senders: Vec<usize> = if forward {
        for g in gs.iter_mut().skip(1).step_by(2) {
            g.rpmsg
                .create_ept(PEER_NAME.as_bytes(), ADDR_ANY, ADDR_ANY)
                .map_err(rerr)?;
        }
        for g in gs.iter().skip(1).step_by(2) {
            g.serve(&hub, &notifier);
        }
        (0..guests).step_by(2).collect()
    } else {
        (0..guests).collect()
    };
    let name = if forward { PEER_NAME } else { ECHO_NAME };
    let mut targets = vec![None; guests];
    for &i in &senders {
        let addr = find_name(&mut gs[i].rpmsg, name, false)?;
        let ept = gs[i].rpmsg.create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
        targets[i] = Some((ept, addr));
    }
    let receivers: Vec<usize> = if forward {
        (1..guests).step_by(2).collect()
    } else {
        senders.clone()
    };
    let mut buf = message(size);
    let mut sink = Sink::new();
    // The hub's own announcements (its echo service) still sit in the receivers' rings.
    for &i in &receivers {
        gs[i].rpmsg.poll(&mut sink).map_err(rerr)?;
    }
    let rounds = (plan.full_ring_msgs / (256 * senders.len())).max(3);
    let (mut hub_time, mut msgs) = (Duration::ZERO, 0usize);
    for round in 0..rounds + 1 {
        let mut filled = 0;
        for &i in &senders {
            let target = targets[i].ok_or("no target")?;
            for _ in 0..256 {
                if !try_send(&mut gs[i].rpmsg, target, &mut buf, size, 1)? {
                    break;
                }
                filled += 1;
            }
        }
        // A service call takes at most the hub's per-poll budget from one guest: round-robin
        // over the senders until every ring is drained, as the hub's own resume does.
        let passes = 256usize.div_ceil(POLL_BUDGET) + 1;
        let start = Instant::now();
        for _ in 0..passes {
            for &i in &senders {
                gs[i].serve(&hub, &notifier);
            }
        }
        let took = start.elapsed();
        let before = sink.got;
        for &i in &receivers {
            gs[i].rpmsg.poll(&mut sink).map_err(rerr)?;
        }
        if sink.got - before != filled as u64 {
            return Err(format!(
                "{filled} messages sent, {} delivered",
                sink.got - before
            ));
        }
        // Round 0 warms up (first use of every buffer).
        if round > 0 {
            hub_time += took;
            msgs += filled;
        }
    }
    Ok(hub_time.as_nanos() as f64 / msgs.max(1) as f64)
}

/// `vamp bench-peer hub-full-rings GUESTS echo|forward SIZE MSGS`: the full-ring hub
/// measurement alone, for profiling it (`valgrind --tool=callgrind`, `perf record`).
fn peer_hub_full_rings(args: &[String]) -> Res<()> {
    let guests: usize = arg(args, 0, "guest count")?;
    let forward = match args.get(1).map(String::as_str) {
        Some("echo") => false,
        Some("forward") => true,
        _ => return Err("bench-peer hub-full-rings: say echo or forward".into()),
    };
    let size: usize = arg(args, 2, "message size")?;
    let msgs: usize = arg(args, 3, "message count")?;
    let plan = Plan {
        full_ring_msgs: msgs,
        ..Plan::counts(true)
    };
    let ns = hub_full_rings(&plan, guests, forward, size)?;
    println!("{ns:.1} ns per message");
    Ok(())
}

// ----- hub memory per guest (in a child process, so nothing else is in its heap) -------------

fn peer_hub_guest(args: &[String]) -> Res<()> {
    let socket: PathBuf = arg(args, 0, "socket")?;
    let mut g = connect_guest(&socket)?;
    let addr = find_name(g.rpmsg(), ECHO_NAME, false)?;
    let ept = g.rpmsg().create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
    // Enough traffic to use every buffer of both rings.
    throughput(g.rpmsg(), &[(ept, addr)], 496, 1024, 200, false)?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    Ok(())
}

fn peer_hub_memory(args: &[String]) -> Res<()> {
    let guests: usize = arg(args, 0, "guest count")?;
    let dir = temp_dir("mem")?;
    // One guest more than measured: the first one pays the one-time costs (code paged in,
    // allocator arenas, the hub itself) before the baseline is taken.
    let t = topology(guests + 1, false, &dir.0)?;
    let sockets: Vec<PathBuf> = t.guests.iter().map(|g| g.socket.clone()).collect();
    let hub = Arc::new(Mutex::new(Hub::new(t)));
    for (id, socket) in sockets.iter().enumerate() {
        let (hub, socket) = (hub.clone(), socket.clone());
        std::thread::spawn(move || serve_guest(hub, id, &socket));
    }
    let mut peers = Vec::new();
    let mut before = [0; 3];
    for (i, socket) in sockets.iter().enumerate() {
        let mut p = Peer::spawn(&["hub-guest".into(), socket.display().to_string()])?;
        if i == 0 {
            let line = p.line()?;
            if line != "ready" {
                return Err(format!("guest said {line:?}"));
            }
            before = read_status();
        }
        peers.push(p);
    }
    for p in peers.iter_mut().skip(1) {
        let line = p.line()?;
        if line != "ready" {
            return Err(format!("guest said {line:?}"));
        }
    }
    let after = read_status();
    let per = |i: usize| after[i].saturating_sub(before[i]) as f64 / guests as f64;
    println!("memory {} {} {}", per(0), per(1), per(2));
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for p in peers {
        p.finish()?;
    }
    Ok(())
}

/// Hub memory per guest: (RSS, private anonymous, shared guest pages) KiB per guest.
fn hub_memory(plan: &Plan) -> Res<[f64; 3]> {
    let mut p = Peer::spawn(&["hub-memory".into(), plan.memory_guests.to_string()])?;
    let line = p.line()?;
    p.finish()?;
    let v: Vec<f64> = line
        .strip_prefix("memory ")
        .ok_or_else(|| format!("unexpected answer {line:?}"))?
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [rss, anon, shmem] => Ok([rss, anon, shmem]),
        _ => Err(format!("unexpected answer {line:?}")),
    }
}

// ----- KVM remote ---------------------------------------------------------------------------

mod kvm {
    use super::*;
    use vamp_remoteproc::image::MemoryImage;
    use vamp_remoteproc::kvm::{KvmOptions, KvmRemote};
    use vamp_remoteproc::remoteproc::{RemoteRpmsg, Remoteproc};

    /// A running echo remote and the host's engine on its vdev.
    pub(super) struct Remote {
        pub rp: Remoteproc<KvmRemote>,
        pub rpmsg: RemoteRpmsg<GuestRam>,
        /// VM, memory and vCPU created.
        pub created: Duration,
        /// Image loaded and resources handled.
        pub loaded: Duration,
        /// First name-service announcement received.
        pub announced: Duration,
        /// Where the echo channel is.
        pub addr: u32,
    }

    /// Boots the echo firmware with its vCPU on `vcpu_cpu`, in busy-poll mode (both sides)
    /// if `busy`; times every step from `KvmRemote::new` to the first announcement.
    pub(super) fn boot(vcpu_cpu: usize, my_cpu: usize, busy: bool) -> Res<Remote> {
        let image = vamp_remoteproc::images::builtin("echo").ok_or("no built-in echo image")?;
        let t0 = Instant::now();
        let options = KvmOptions {
            busy_poll: busy,
            ..KvmOptions::default()
        };
        let backend = KvmRemote::new(options).map_err(|e| e.to_string())?;
        let created = t0.elapsed();
        let mut rp = Remoteproc::new(backend);
        rp.load(&mut MemoryImage::new(image))
            .map_err(|e| e.to_string())?;
        let loaded = t0.elapsed();
        // The vCPU (and watchdog) threads inherit the affinity of the thread that starts them.
        pin(vcpu_cpu);
        let started = rp.start();
        pin(my_cpu);
        started.map_err(|e| e.to_string())?;
        let mut rpmsg = rp
            .create_virtio(0, BufferConfig::default())
            .map_err(|e| e.to_string())?;
        if busy {
            rpmsg
                .transport_mut()
                .set_busy_poll(true)
                .map_err(|e| format!("busy-poll mode: {e}"))?;
        }
        let addr = find_name(&mut rpmsg, FIRMWARE_CHANNEL, busy)?;
        let announced = t0.elapsed();
        Ok(Remote {
            rp,
            rpmsg,
            created,
            loaded,
            announced,
            addr,
        })
    }

    impl Remote {
        /// Notifications in either direction so far: the host's rings, the remote's kicks
        /// (taken from the doorbell here: the busy host never waits for them) and its waits.
        pub(super) fn notifications(&mut self) -> u64 {
            self.rp.doorbell().wait(Duration::ZERO);
            let s = self.rp.backend().stats();
            s.rings + s.kicks_taken + s.wait_exits
        }

        pub(super) fn stop(mut self, ept: Option<EptId>) {
            if let Some(ept) = ept {
                let _ = self
                    .rpmsg
                    .sendto(ept, self.addr, &SHUTDOWN_MSG.to_ne_bytes());
            }
            drop(self.rpmsg);
            if let Err(e) = self.rp.shutdown() {
                log::warn!("stopping the KVM remote: {e}");
            }
        }
    }
}

/// Notify figures, busy-poll figures, start time.
type KvmRows = ([Res<Fig>; 2], [Res<Fig>; 2], Res<StartFig>);

/// The KVM rows: notify (on the first of the start-time runs), busy-poll (one more remote, in
/// busy-poll mode from its start; only with two CPUs) and the start time.
fn kvm_rows(plan: &Plan, cpus: Cpus, two_cpus: bool) -> KvmRows {
    let fail = |e: String| -> KvmRows {
        (
            [Err(e.clone()), Err(e.clone())],
            [Err(e.clone()), Err(e.clone())],
            Err(e),
        )
    };
    if let Err(e) = vamp_remoteproc::kvm::kvm_available() {
        return fail(format!("not measured: no KVM here ({e})"));
    }
    let mut starts = Vec::new();
    let mut figs = None;
    for run in 0..plan.start_runs.max(1) {
        let remote = match kvm::boot(cpus.b, cpus.a, false) {
            Ok(r) => r,
            Err(e) => return fail(format!("KVM remote: {e}")),
        };
        starts.push((remote.created, remote.loaded, remote.announced));
        if run == 0 {
            figs = Some(kvm_measure(remote, false, plan));
        } else {
            remote.stop(None);
        }
    }
    let busy_figs = busy_only(two_cpus, || match kvm::boot(cpus.b, cpus.a, true) {
        Ok(remote) => kvm_measure(remote, true, plan),
        Err(e) => {
            let e = format!("KVM remote (busy-poll): {e}");
            [Err(e.clone()), Err(e)]
        }
    });
    let med = |f: &dyn Fn(&(Duration, Duration, Duration)) -> Duration| {
        let mut v: Vec<f64> = starts.iter().map(|s| f(s).as_nanos() as f64).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let start = StartFig {
        vm_ns: med(&|s| s.0),
        load_ns: med(&|s| s.1 - s.0),
        announce_ns: med(&|s| s.2 - s.1),
        total_ns: med(&|s| s.2),
        min_total_ns: starts
            .iter()
            .map(|s| s.2.as_nanos() as f64)
            .fold(f64::INFINITY, f64::min),
        runs: starts.len(),
    };
    (
        figs.unwrap_or_else(|| [Err("not run".into()), Err("not run".into())]),
        busy_figs,
        Ok(start),
    )
}

/// Round trips and throughput to a booted echo remote, then stops it. Busy-poll rows must not
/// notify at all, in either direction.
fn kvm_measure(mut remote: kvm::Remote, busy: bool, plan: &Plan) -> [Res<Fig>; 2] {
    let addr = remote.addr;
    match remote
        .rpmsg
        .create_ept(FIRMWARE_CHANNEL.as_bytes(), ADDR_ANY, addr)
    {
        Ok(ept) => {
            let before = remote.notifications();
            let figs = measure(&mut remote.rpmsg, (ept, addr), busy, plan);
            let notified = remote.notifications() - before;
            remote.stop(Some(ept));
            if busy {
                check_quiet(figs, notified)
            } else {
                figs
            }
        }
        Err(e) => {
            remote.stop(None);
            [Err(rerr(e)), Err(rerr(e))]
        }
    }
}

/// Remote start time, medians over runs.
#[derive(Debug, Clone, Copy)]
struct StartFig {
    vm_ns: f64,
    load_ns: f64,
    announce_ns: f64,
    total_ns: f64,
    min_total_ns: f64,
    runs: usize,
}

// ----- the report ---------------------------------------------------------------------------

/// One row of the link table.
#[derive(Debug)]
struct LinkRow {
    key: &'static str,
    label: &'static str,
    mode: &'static str,
    placement: String,
    size: usize,
    fig: Res<Fig>,
    lat_floor: Option<(&'static str, f64, f64)>,
    tput_floor: Option<(&'static str, f64)>,
}

impl LinkRow {
    fn lat_ratio(&self) -> Option<f64> {
        let (_, floor, mult) = self.lat_floor?;
        Some(self.fig.as_ref().ok()?.lat.p50_ns / (floor * mult))
    }
    fn tput_ratio(&self) -> Option<f64> {
        let (_, floor) = self.tput_floor?;
        Some(self.fig.as_ref().ok()?.tput.ns_per_msg / floor)
    }
}

/// A scale figure: per-message cost at some count, compared with count 1.
#[derive(Debug)]
struct ScaleRow {
    count: usize,
    fig: Res<Tput>,
    /// CPU time of this process per message, where that is the cost that matters.
    cpu_ns: Option<f64>,
    /// The hub's lock while guests echoed (guest rows only).
    locks: Option<LockCounts>,
}

#[derive(Debug)]
struct FullRingRow {
    kind: &'static str,
    guests: usize,
    size: usize,
    ns: Res<f64>,
}

#[derive(Debug, Default)]
struct Report {
    machine: Vec<(String, String)>,
    floors: Vec<Floor>,
    copies: Vec<(usize, f64, f64)>,
    links: Vec<LinkRow>,
    full_rings: Vec<FullRingRow>,
    guests: Vec<ScaleRow>,
    endpoints: Vec<ScaleRow>,
    memory: Option<Res<[f64; 3]>>,
    start: Option<Res<StartFig>>,
    targets: Vec<(String, String, String)>,
    clock_ns: f64,
}

impl Report {
    fn floor(&self, key: &str) -> Option<f64> {
        self.floors
            .iter()
            .find(|f| f.key == key)
            .and_then(Floor::value_ns)
    }

    /// The better of eventfd and futex ping-pong in one placement.
    fn notify_floor(&self, two_cpus: bool) -> Option<(&'static str, f64)> {
        let (e, f) = if two_cpus {
            ("eventfd_rtt_2cpu", "futex_rtt_2cpu")
        } else {
            ("eventfd_rtt_1cpu", "futex_rtt_1cpu")
        };
        match (self.floor(e), self.floor(f)) {
            (Some(a), Some(b)) if b < a => Some((f, b)),
            (Some(a), _) => Some((e, a)),
            (None, Some(b)) => Some((f, b)),
            (None, None) => None,
        }
    }

    fn push_links(
        &mut self,
        key: &'static str,
        label: &'static str,
        busy: bool,
        placement: &str,
        figs: [Res<Fig>; 2],
        lat_floor: Option<(&'static str, f64, f64)>,
    ) {
        for (size, fig) in SIZES.into_iter().zip(figs) {
            let ring = if size == 16 {
                "ring_echo_16b_2cpu"
            } else {
                "ring_echo_496b_2cpu"
            };
            self.links.push(LinkRow {
                key,
                label,
                mode: if busy { "busy-poll" } else { "notify" },
                placement: placement.into(),
                size,
                fig,
                lat_floor,
                tput_floor: self.floor(ring).map(|f| (ring, f)),
            });
        }
    }
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows in every figure.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine_facts(cpus: &[usize]) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let hypervisor = cpuinfo.contains(" hypervisor");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
        "kvm_pvm (software hypervisor: guest CPL0 emulated, CPL3 native)"
    } else if Path::new("/sys/module/kvm_intel").exists() {
        "kvm_intel"
    } else if Path::new("/sys/module/kvm_amd").exists() {
        "kvm_amd"
    } else if Path::new("/dev/kvm").exists() {
        "present"
    } else {
        "absent"
    };
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let build = if cfg!(debug_assertions) {
        "debug (unoptimized: figures not meaningful)"
    } else {
        "release"
    };
    vec![
        ("build".into(), build.into()),
        ("cpus".into(), cpus.len().to_string()),
        ("cpu_model".into(), model),
        (
            "virtualized".into(),
            if hypervisor { "yes (vCPUs)" } else { "no" }.into(),
        ),
        ("kernel".into(), kernel),
        ("kvm".into(), kvm.into()),
        (
            "memory_gib".into(),
            format!("{:.0}", mem_kib as f64 / 1048576.0),
        ),
        ("load_average_at_start".into(), load_average()),
    ]
}

/// Why busy-poll figures are missing on a machine that gives us one CPU: two spinners on one
/// CPU measure the scheduler's time slice.
const ONE_CPU: &str = "not measured: busy-polling needs two CPUs (this process may use one)";

fn busy_only(two_cpus: bool, f: impl FnOnce() -> [Res<Fig>; 2]) -> [Res<Fig>; 2] {
    if two_cpus {
        f()
    } else {
        [Err(ONE_CPU.into()), Err(ONE_CPU.into())]
    }
}

/// Runs every measurement, prints the table and writes the JSON. Returns whether every
/// figure was measured (or is missing for a reason of this machine, said in its place).
pub fn run(opts: &BenchOptions) -> Result<bool, String> {
    let plan = Plan::new(opts.quick);
    let allowed = allowed_cpus();
    let cpus = Cpus {
        a: allowed[0],
        b: *allowed.get(1).unwrap_or(&allowed[0]),
    };
    let two_cpus = allowed.len() >= 2;
    let started = Instant::now();
    pin(cpus.a);
    let mut r = Report {
        machine: machine_facts(&allowed),
        clock_ns: clock_overhead(),
        ..Default::default()
    };
    let two = format!("CPUs {},{}", cpus.a, cpus.b);
    let one = format!("CPU {}", cpus.a);
    eprintln!(
        "vamp bench{}: measuring (A = CPU {}, B = CPU {})...",
        if opts.quick { " --quick" } else { "" },
        cpus.a,
        cpus.b
    );

    // Floors.
    let mut floor = |key: &'static str, label: String, f: &mut dyn FnMut() -> Res<Lat>| {
        let (lat, error) = match f() {
            Ok(l) => (Some(l), None),
            Err(e) => (None, Some(e)),
        };
        r.floors.push(Floor {
            key,
            label,
            lat,
            per_op_ns: None,
            error,
        });
    };
    let n = plan.floor_iters;
    floor(
        "eventfd_rtt_2cpu",
        format!("eventfd ping-pong, 2 processes, {two}"),
        &mut || floor_eventfd(n, cpus.a, cpus.b),
    );
    floor(
        "eventfd_rtt_1cpu",
        format!("eventfd ping-pong, 2 processes, {one}"),
        &mut || floor_eventfd(n, cpus.a, cpus.a),
    );
    floor(
        "futex_rtt_2cpu",
        format!("futex ping-pong, 2 processes, {two}"),
        &mut || floor_pingpong(n, cpus.a, cpus.b, false),
    );
    floor(
        "futex_rtt_1cpu",
        format!("futex ping-pong, 2 processes, {one}"),
        &mut || floor_pingpong(n, cpus.a, cpus.a, false),
    );
    floor(
        "spin_rtt_2cpu",
        format!("spin ping-pong on a cache line, 2 processes, {two}"),
        &mut || {
            if two_cpus {
                floor_pingpong(n * 10, cpus.a, cpus.b, true)
            } else {
                Err(ONE_CPU.into())
            }
        },
    );
    for (key, size) in [("ring_echo_16b_2cpu", 16), ("ring_echo_496b_2cpu", 496)] {
        let ring = if two_cpus {
            floor_ring(plan.tput_msgs * 3, plan.window, size, cpus.a, cpus.b)
        } else {
            Err(ONE_CPU.into())
        };
        let (per_op_ns, error) = match ring {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        r.floors.push(Floor {
            key,
            label: format!(
                "windowed echo over a shared ring, {size} B, window {}, busy-poll, {two}",
                plan.window
            ),
            lat: None,
            per_op_ns,
            error,
        });
    }
    for (key, size) in [
        ("memcpy_16b", 16),
        ("memcpy_496b", 496),
        ("memcpy_512b", 512),
    ] {
        r.floors.push(Floor {
            key,
            label: format!("memcpy {size} B (cache-hot)"),
            lat: None,
            per_op_ns: Some(floor_memcpy(size, plan.memcpy_iters)),
            error: None,
        });
    }
    for size in [16, 496, 512] {
        let m = floor_memcpy(size, plan.memcpy_iters);
        r.copies
            .push((size, engine_copy(size, plan.memcpy_iters), m));
    }
    eprintln!("  floors done ({:.1} s)", started.elapsed().as_secs_f64());

    // Links.
    let nf2 = r.notify_floor(true).map(|(k, v)| (k, v, 1.0));
    let nf1 = r.notify_floor(false).map(|(k, v)| (k, v, 1.0));
    let nf2x2 = r.notify_floor(true).map(|(k, v)| (k, v, 2.0));
    let spin = r.floor("spin_rtt_2cpu").map(|v| ("spin_rtt_2cpu", v, 1.0));

    let figs = native_rows(&plan, cpus.b, false);
    r.push_links(
        "native",
        "native link (2 processes)",
        false,
        &two,
        figs,
        nf2,
    );
    let figs = native_rows(&plan, cpus.a, false);
    r.push_links(
        "native",
        "native link (2 processes)",
        false,
        &one,
        figs,
        nf1,
    );
    let figs = busy_only(two_cpus, || native_rows(&plan, cpus.b, true));
    r.push_links(
        "native",
        "native link (2 processes)",
        true,
        &two,
        figs,
        spin,
    );
    eprintln!(
        "  native link done ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    let hub_place = format!("guest CPU {}, hub CPU {}", cpus.a, cpus.b);
    let figs = hub_echo_notify(&plan, cpus);
    r.push_links(
        "hub_echo",
        "guest -> hub echo",
        false,
        &hub_place,
        figs,
        nf2,
    );
    let figs = busy_only(two_cpus, || hub_echo_busy(&plan, cpus));
    r.push_links(
        "hub_echo",
        "guest -> hub echo",
        true,
        &hub_place,
        figs,
        spin,
    );
    let g2g_place = format!("guests CPU {}, hub CPU {}", cpus.a, cpus.b);
    let figs = guest_to_guest_notify(&plan, cpus);
    r.push_links(
        "guest_hub_guest",
        "guest -> hub -> guest",
        false,
        &g2g_place,
        figs,
        nf2x2,
    );
    let g2g_busy = format!("guest CPU {}, hub + echo guest CPU {}", cpus.a, cpus.b);
    let figs = busy_only(two_cpus, || guest_to_guest_busy(&plan, cpus));
    r.push_links(
        "guest_hub_guest",
        "guest -> hub -> guest",
        true,
        &g2g_busy,
        figs,
        spin,
    );
    eprintln!(
        "  hub links done ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    let kvm_place = format!("host CPU {}, vCPU CPU {}", cpus.a, cpus.b);
    let (figs, busy_figs, start) = kvm_rows(&plan, cpus, two_cpus);
    r.push_links(
        "kvm",
        "host -> KVM remote (echo firmware)",
        false,
        &kvm_place,
        figs,
        nf2,
    );
    r.push_links(
        "kvm",
        "host -> KVM remote (echo firmware)",
        true,
        &kvm_place,
        busy_figs,
        spin,
    );
    r.start = Some(start);
    eprintln!(
        "  KVM remote done ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    // Scale.
    for guests in [1, 8, 64] {
        for forward in [false, true] {
            if forward && guests == 1 {
                continue;
            }
            let guests = if forward && guests == 8 { 2 } else { guests };
            for size in SIZES {
                r.full_rings.push(FullRingRow {
                    kind: if forward { "forward" } else { "echo" },
                    guests,
                    size,
                    ns: hub_full_rings(&plan, guests, forward, size),
                });
            }
        }
    }
    for guests in [1, 8, 64] {
        let fig = guest_scale(&plan, cpus, guests);
        r.guests.push(ScaleRow {
            count: guests,
            cpu_ns: fig.as_ref().ok().map(|f| f.1),
            locks: fig.as_ref().ok().map(|f| f.2),
            fig: fig.map(|f| f.0),
        });
    }
    eprintln!(
        "  guest scale done ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let endpoints = if two_cpus {
        endpoint_scale(&plan, cpus)
    } else {
        [(); 3].map(|()| Err(ONE_CPU.to_string()))
    };
    for (count, fig) in ENDPOINT_COUNTS.into_iter().zip(endpoints) {
        r.endpoints.push(ScaleRow {
            count: count as usize,
            fig,
            cpu_ns: None,
            locks: None,
        });
    }
    r.memory = Some(hub_memory(&plan));
    eprintln!(
        "  scale and memory done ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    r.machine
        .push(("load_average_at_end".into(), load_average()));
    evaluate_targets(&mut r);
    let text = render(&r, &plan, cpus, opts.quick, started.elapsed());
    print!("{text}");
    if let Some(path) = &opts.json {
        let mut out = String::new();
        to_json(&r, &plan, cpus, opts.quick, started.elapsed()).write(&mut out, 0);
        out.push('\n');
        std::fs::write(path, out).map_err(|e| format!("write {}: {e}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    // A figure may be missing only for a reason of this machine ("not measured: ..."), never
    // because something failed.
    let fine = |e: &String| e.starts_with("not measured:");
    let all = r.floors.iter().all(|f| f.error.as_ref().is_none_or(fine))
        && r.links
            .iter()
            .all(|l| l.fig.as_ref().err().is_none_or(fine))
        && r.guests.iter().all(|s| s.fig.is_ok())
        && r.endpoints
            .iter()
            .all(|s| s.fig.as_ref().err().is_none_or(fine))
        && r.full_rings.iter().all(|f| f.ns.is_ok())
        && matches!(r.memory, Some(Ok(_)))
        && r.start
            .as_ref()
            .is_some_and(|s| s.as_ref().err().is_none_or(fine));
    Ok(all)
}

fn scale_ratio(rows: &[ScaleRow], row: &ScaleRow) -> Option<f64> {
    let base = rows.first()?.fig.as_ref().ok()?.ns_per_msg;
    Some(row.fig.as_ref().ok()?.ns_per_msg / base)
}

fn cpu_ratio(rows: &[ScaleRow], row: &ScaleRow) -> Option<f64> {
    Some(row.cpu_ns? / rows.first()?.cpu_ns?)
}

fn full_ring(r: &Report, kind: &str, guests: usize, size: usize) -> Option<f64> {
    r.full_rings
        .iter()
        .find(|f| f.kind == kind && f.guests == guests && f.size == size)
        .and_then(|f| f.ns.as_ref().ok().copied())
}

fn link<'a>(
    r: &'a Report,
    key: &str,
    mode: &str,
    size: usize,
    two_cpus: bool,
) -> Option<&'a LinkRow> {
    r.links.iter().find(|l| {
        l.key == key
            && l.mode == mode
            && l.size == size
            && (l.placement.starts_with("CPUs ") == two_cpus || key != "native")
    })
}

fn evaluate_targets(r: &mut Report) {
    let mut t = Vec::new();
    let verdict = |ok: bool| if ok { "met" } else { "not met" }.to_string();
    // Round trip with notifications.
    let mut lines = Vec::new();
    let mut ok = true;
    for (key, two) in [
        ("native", true),
        ("native", false),
        ("hub_echo", true),
        ("kvm", true),
    ] {
        if let Some(l) = link(r, key, "notify", 16, two)
            && let Some(x) = l.lat_ratio()
        {
            ok &= x <= 1.3;
            lines.push(format!("{} ({}) {x:.2}x", l.label, l.placement));
        }
    }
    t.push((
        "round trip <= 1.3x eventfd/futex floor (notifications, 16 B p50)".into(),
        verdict(ok && !lines.is_empty()),
        lines.join("; "),
    ));
    // Busy-poll.
    let mut lines = Vec::new();
    let mut ok = true;
    for key in ["native", "hub_echo", "guest_hub_guest", "kvm"] {
        if let Some(l) = link(r, key, "busy-poll", 16, true)
            && let Some(x) = l.lat_ratio()
        {
            ok &= x <= 3.0;
            lines.push(format!("{} {x:.2}x", l.label));
        }
    }
    t.push((
        "round trip <= 3x spin floor (busy-poll, 16 B p50)".into(),
        verdict(ok && !lines.is_empty()),
        lines.join("; "),
    ));
    // Hub forwarding.
    let f16 = full_ring(r, "forward", 2, 16);
    let f496 = full_ring(r, "forward", 2, 496);
    t.push((
        "hub forwarding <= 200 ns/message with full rings".into(),
        verdict(f16.is_some_and(|v| v <= 200.0) && f496.is_some_and(|v| v <= 200.0)),
        format!(
            "guest to guest {} (16 B), {} (496 B); 64 guests {} / {}",
            f16.map_or("-".into(), fmt_ns),
            f496.map_or("-".into(), fmt_ns),
            full_ring(r, "forward", 64, 16).map_or("-".into(), fmt_ns),
            full_ring(r, "forward", 64, 496).map_or("-".into(), fmt_ns),
        ),
    ));
    // 496 B throughput vs copying.
    let mut lines = Vec::new();
    let mut ok = true;
    let copy496 = r.copies.iter().find(|c| c.0 == 496).map(|c| c.1);
    for key in ["native", "hub_echo", "guest_hub_guest", "kvm"] {
        let small = link(r, key, "notify", 16, true).and_then(|l| l.fig.as_ref().ok());
        let big = link(r, key, "notify", 496, true).and_then(|l| l.fig.as_ref().ok());
        if let (Some(s), Some(b)) = (small, big) {
            let extra = b.tput.ns_per_msg - s.tput.ns_per_msg;
            let grow = b.tput.ns_per_msg / s.tput.ns_per_msg;
            ok &= grow <= 1.25;
            lines.push(format!(
                "{key}: {} -> {} per message ({grow:.2}x)",
                fmt_ns(s.tput.ns_per_msg),
                fmt_ns(b.tput.ns_per_msg)
            ));
            let _ = extra;
        }
    }
    if let Some(c) = copy496 {
        lines.push(format!("one engine copy of 496 B: {}", fmt_ns(c)));
    }
    t.push((
        "496 B throughput bounded by notifications, not copying (per-message cost 496 B vs 16 B <= 1.25x)"
            .into(),
        verdict(ok && lines.len() > 1),
        lines.join("; "),
    ));
    // Scale.
    let g64 = r.guests.last().and_then(|row| cpu_ratio(&r.guests, row));
    let fr = match (full_ring(r, "echo", 1, 16), full_ring(r, "echo", 64, 16)) {
        (Some(a), Some(b)) => Some(b / a),
        _ => None,
    };
    t.push((
        "64 guests within 10% of 1 per message".into(),
        verdict(g64.is_some_and(|x| x <= 1.1) && fr.is_some_and(|x| x <= 1.1)),
        format!(
            "CPU per message, all echoing with notifications: {}; hub cost with full rings: {}",
            fmt_ratio(g64),
            fmt_ratio(fr)
        ),
    ));
    let e10k = r
        .endpoints
        .last()
        .and_then(|row| scale_ratio(&r.endpoints, row));
    t.push((
        "10 000 endpoints within 10% of 1 per message".into(),
        verdict(e10k.is_some_and(|x| x <= 1.1)),
        format!("native link, busy-poll: {}", fmt_ratio(e10k)),
    ));
    let start = r.start.as_ref().and_then(|s| s.as_ref().ok());
    t.push((
        "remote start <= 5 ms (VM creation to first announcement)".into(),
        match start {
            Some(s) => verdict(s.total_ns <= 5e6),
            None => "not measured".into(),
        },
        start.map_or_else(
            || {
                r.start
                    .as_ref()
                    .and_then(|s| s.as_ref().err().cloned())
                    .unwrap_or_default()
            },
            |s| {
                format!(
                    "median {} (min {})",
                    fmt_ns(s.total_ns),
                    fmt_ns(s.min_total_ns)
                )
            },
        ),
    ));
    r.targets = t;
}

fn render(r: &Report, plan: &Plan, cpus: Cpus, quick: bool, took: Duration) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nvamp bench{} ({:.0} s)",
        if quick { " --quick" } else { "" },
        took.as_secs_f64()
    );
    let facts: Vec<String> = r.machine.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let _ = writeln!(o, "machine: {}", facts.join(", "));
    let _ = writeln!(
        o,
        "placement: the measuring side on CPU {}, its peer on CPU {} unless a row says otherwise; \
         clock read {:.0} ns (inside every figure)",
        cpus.a, cpus.b, r.clock_ns
    );
    let _ = writeln!(
        o,
        "\nfloors                                                                  p50 / per op      p99"
    );
    for f in &r.floors {
        match (&f.lat, f.per_op_ns, &f.error) {
            (_, _, Some(e)) => {
                let _ = writeln!(o, "  {:<70} failed: {e}", f.label);
            }
            (Some(l), _, _) => {
                let _ = writeln!(
                    o,
                    "  {:<70} {:>10} {:>10}",
                    f.label,
                    fmt_ns(l.p50_ns),
                    fmt_ns(l.p99_ns)
                );
            }
            (None, Some(v), _) => {
                let _ = writeln!(o, "  {:<70} {:>10}", f.label, fmt_ns(v));
            }
            _ => {}
        }
    }
    for (size, engine, memcpy) in &r.copies {
        let _ = writeln!(
            o,
            "  {:<70} {:>10}   ({:.1}x memcpy)",
            format!("vamp: engine copy of {size} B between memories (volatile, checked)"),
            fmt_ns(*engine),
            engine / memcpy
        );
    }
    let _ = writeln!(
        o,
        "\nlinks: round trip p50/p99 (one message at a time) and echoed messages per second with {} \
         in flight; x floor = p50 / latency floor, ns per message / ring-echo floor",
        plan.window
    );
    let _ = writeln!(
        o,
        "  {:<37} {:<9} {:<31} {:>5} {:>9} {:>9} {:>7} {:>9} {:>8} {:>7}",
        "link",
        "mode",
        "placement",
        "size",
        "rtt p50",
        "rtt p99",
        "x floor",
        "msgs/s",
        "MB/s",
        "x floor"
    );
    for l in &r.links {
        match &l.fig {
            Ok(f) => {
                let _ = writeln!(
                    o,
                    "  {:<37} {:<9} {:<31} {:>3} B {:>9} {:>9} {:>7} {:>9} {:>8.1} {:>7}",
                    l.label,
                    l.mode,
                    l.placement,
                    l.size,
                    fmt_ns(f.lat.p50_ns),
                    fmt_ns(f.lat.p99_ns),
                    fmt_ratio(l.lat_ratio()),
                    fmt_rate(f.tput.msgs_per_s()),
                    f.tput.mb_per_s(),
                    fmt_ratio(l.tput_ratio())
                );
            }
            Err(e) => {
                let e = if e.starts_with("not measured") {
                    e.clone()
                } else {
                    format!("not measured: {e}")
                };
                let _ = writeln!(
                    o,
                    "  {:<37} {:<9} {:<31} {:>3} B {e}",
                    l.label, l.mode, l.placement, l.size
                );
            }
        }
    }
    let mut floors_used: Vec<String> = Vec::new();
    for l in &r.links {
        if let Some((k, v, m)) = l.lat_floor {
            let s = if m == 1.0 {
                format!("{} = {k} ({})", l.label, fmt_ns(v))
            } else {
                format!("{} = {m:.0} x {k} ({})", l.label, fmt_ns(v * m))
            };
            if l.mode == "notify" && !floors_used.contains(&s) {
                floors_used.push(s);
            }
        }
    }
    let _ = writeln!(
        o,
        "  latency floors: notify rows: {}; busy-poll rows: spin_rtt_2cpu",
        floors_used.join("; ")
    );

    let _ = writeln!(
        o,
        "\nhub cost per message with full rings (one thread: every sender fills 256 messages, the hub serves each once; x floor = / memcpy of the payload)"
    );
    for f in &r.full_rings {
        let floor = r.floor(if f.size == 16 {
            "memcpy_16b"
        } else {
            "memcpy_496b"
        });
        let what = if f.kind == "echo" {
            format!("{} guest(s) -> hub echo", f.guests)
        } else {
            format!("{} guests, {} pair(s) forwarding", f.guests, f.guests / 2)
        };
        match &f.ns {
            Ok(v) => {
                let _ = writeln!(
                    o,
                    "  {:<45} {:>3} B {:>10} {:>9}",
                    what,
                    f.size,
                    fmt_ns(*v),
                    fmt_ratio(floor.map(|m| v / m))
                );
            }
            Err(e) => {
                let _ = writeln!(o, "  {:<45} {:>3} B not measured: {e}", what, f.size);
            }
        }
    }
    let _ = writeln!(o, "\nscale: per-message cost (x = / the count-1 figure)");
    for (title, rows) in [
        (
            "guests echoing through one hub at once (vhost-user, notifications, 16 B, window 16 each)",
            &r.guests,
        ),
        (
            "endpoints per side of one native link (busy-poll, 16 B, messages round-robin; median of 3 rounds)",
            &r.endpoints,
        ),
    ] {
        let _ = writeln!(o, "  {title}");
        for row in rows {
            match &row.fig {
                Ok(t) => {
                    let mut cpu = row.cpu_ns.map_or(String::new(), |c| {
                        format!(
                            "; CPU {} per message {:>7}",
                            fmt_ns(c),
                            fmt_ratio(cpu_ratio(rows, row))
                        )
                    });
                    if let Some(l) = row.locks {
                        let _ = write!(
                            cpu,
                            "; hub lock taken {} times, {:.1}% of them waited",
                            l.taken,
                            100.0 * l.waited as f64 / l.taken.max(1) as f64
                        );
                    }
                    let _ = writeln!(
                        o,
                        "    {:>6}: wall {:>8} per message ({} msgs/s) {:>7}{cpu}",
                        row.count,
                        fmt_ns(t.ns_per_msg),
                        fmt_rate(t.msgs_per_s()),
                        fmt_ratio(scale_ratio(rows, row))
                    );
                }
                Err(e) => {
                    let _ = writeln!(o, "    {:>6}: not measured: {e}", row.count);
                }
            }
        }
    }
    let _ = writeln!(
        o,
        "\nhub memory per connected guest ({} guest processes, each after traffic through every buffer)",
        plan.memory_guests
    );
    match &r.memory {
        Some(Ok([rss, anon, shmem])) => {
            let _ = writeln!(
                o,
                "  RSS {rss:.0} KiB per guest: {anon:.0} KiB private (hub state, threads), {shmem:.0} KiB of guest memory mapped"
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(o, "  not measured: {e}");
        }
        None => {}
    }
    let _ = writeln!(
        o,
        "\nremote start (KVM, echo firmware; KvmRemote::new to the first name-service announcement)"
    );
    match &r.start {
        Some(Ok(s)) => {
            let _ = writeln!(
                o,
                "  {} runs: median {}, min {}; x floor {} (floor: creating the VM); median steps: VM {}, load {}, start to announcement {}",
                s.runs,
                fmt_ns(s.total_ns),
                fmt_ns(s.min_total_ns),
                fmt_ratio(Some(s.total_ns / s.vm_ns)),
                fmt_ns(s.vm_ns),
                fmt_ns(s.load_ns),
                fmt_ns(s.announce_ns)
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(o, "  not measured: {e}");
        }
        None => {}
    }
    let _ = writeln!(o, "\ntargets (issue 5)");
    for (what, verdict, detail) in &r.targets {
        let _ = writeln!(o, "  [{verdict}] {what}: {detail}");
    }
    o
}

fn lat_json(l: &Lat) -> J {
    obj([
        ("p50_us", num(l.p50_ns / 1e3)),
        ("p99_us", num(l.p99_ns / 1e3)),
        ("samples", num(l.n as f64)),
    ])
}

fn err_json(e: &str) -> J {
    s(if e.starts_with("not measured") {
        e.to_string()
    } else {
        format!("not measured: {e}")
    })
}

fn to_json(r: &Report, plan: &Plan, cpus: Cpus, quick: bool, took: Duration) -> J {
    let machine = J::Obj(
        r.machine
            .iter()
            .map(|(k, v)| (k.clone(), s(v.clone())))
            .chain([
                ("cpu_a".into(), num(cpus.a as f64)),
                ("cpu_b".into(), num(cpus.b as f64)),
                ("clock_read_ns".into(), num(r.clock_ns)),
            ])
            .collect(),
    );
    let floors = J::Obj(
        r.floors
            .iter()
            .map(|f| {
                let v = match (&f.lat, f.per_op_ns, &f.error) {
                    (_, _, Some(e)) => obj([("label", s(f.label.clone())), ("error", err_json(e))]),
                    (Some(l), _, _) => obj([("label", s(f.label.clone())), ("rtt", lat_json(l))]),
                    (None, Some(v), _) => {
                        obj([("label", s(f.label.clone())), ("ns_per_op", num(v))])
                    }
                    _ => J::Null,
                };
                (f.key.to_string(), v)
            })
            .collect(),
    );
    let copies = J::Arr(
        r.copies
            .iter()
            .map(|(size, engine, memcpy)| {
                obj([
                    ("size_bytes", num(*size as f64)),
                    ("engine_copy_ns", num(*engine)),
                    ("memcpy_ns", num(*memcpy)),
                    ("ratio_to_memcpy", num(engine / memcpy)),
                ])
            })
            .collect(),
    );
    let links = J::Arr(
        r.links
            .iter()
            .map(|l| {
                let mut fields = vec![
                    ("link".to_string(), s(l.key)),
                    ("label".into(), s(l.label)),
                    ("mode".into(), s(l.mode)),
                    ("placement".into(), s(l.placement.clone())),
                    ("size_bytes".into(), num(l.size as f64)),
                ];
                match &l.fig {
                    Ok(f) => fields.extend([
                        ("rtt".to_string(), lat_json(&f.lat)),
                        ("msgs_per_s".into(), num(f.tput.msgs_per_s())),
                        ("mb_per_s".into(), num(f.tput.mb_per_s())),
                        ("ns_per_msg".into(), num(f.tput.ns_per_msg)),
                        ("window".into(), num(plan.window as f64)),
                        ("messages".into(), num(f.tput.n as f64)),
                        (
                            "latency_floor".into(),
                            l.lat_floor.map_or(J::Null, |(k, v, m)| {
                                obj([
                                    ("floor", s(k)),
                                    ("multiple", num(m)),
                                    ("p50_us", num(v * m / 1e3)),
                                ])
                            }),
                        ),
                        ("latency_ratio".into(), opt_num(l.lat_ratio())),
                        (
                            "throughput_floor".into(),
                            l.tput_floor.map_or(J::Null, |(k, v)| {
                                obj([("floor", s(k)), ("ns_per_msg", num(v))])
                            }),
                        ),
                        ("throughput_ratio".into(), opt_num(l.tput_ratio())),
                    ]),
                    Err(e) => fields.push(("error".into(), err_json(e))),
                }
                J::Obj(fields)
            })
            .collect(),
    );
    let full = J::Arr(
        r.full_rings
            .iter()
            .map(|f| {
                let floor_key = if f.size == 16 {
                    "memcpy_16b"
                } else {
                    "memcpy_496b"
                };
                let floor = r.floor(floor_key);
                match &f.ns {
                    Ok(v) => obj([
                        ("kind", s(f.kind)),
                        ("guests", num(f.guests as f64)),
                        ("size_bytes", num(f.size as f64)),
                        ("hub_ns_per_msg", num(*v)),
                        ("floor", s(floor_key)),
                        ("ratio", opt_num(floor.map(|m| v / m))),
                    ]),
                    Err(e) => obj([
                        ("kind", s(f.kind)),
                        ("guests", num(f.guests as f64)),
                        ("size_bytes", num(f.size as f64)),
                        ("error", err_json(e)),
                    ]),
                }
            })
            .collect(),
    );
    let scale = |rows: &[ScaleRow], what: &str| {
        J::Arr(
            rows.iter()
                .map(|row| match &row.fig {
                    Ok(t) => obj([
                        (what, num(row.count as f64)),
                        ("ns_per_msg", num(t.ns_per_msg)),
                        ("msgs_per_s", num(t.msgs_per_s())),
                        ("messages", num(t.n as f64)),
                        ("ratio_to_1", opt_num(scale_ratio(rows, row))),
                        ("cpu_ns_per_msg", opt_num(row.cpu_ns)),
                        ("cpu_ratio_to_1", opt_num(cpu_ratio(rows, row))),
                        ("hub_lock_taken", opt_num(row.locks.map(|l| l.taken as f64))),
                        (
                            "hub_lock_waited",
                            opt_num(row.locks.map(|l| l.waited as f64)),
                        ),
                    ]),
                    Err(e) => obj([(what, num(row.count as f64)), ("error", err_json(e))]),
                })
                .collect(),
        )
    };
    let memory = match &r.memory {
        Some(Ok([rss, anon, shmem])) => obj([
            ("guests", num(plan.memory_guests as f64)),
            ("rss_kib_per_guest", num(*rss)),
            ("private_anon_kib_per_guest", num(*anon)),
            ("guest_memory_mapped_kib_per_guest", num(*shmem)),
            ("floor", J::Null),
        ]),
        Some(Err(e)) => obj([("error", err_json(e))]),
        None => J::Null,
    };
    let start = match &r.start {
        Some(Ok(st)) => obj([
            ("runs", num(st.runs as f64)),
            ("total_ms", num(st.total_ns / 1e6)),
            ("min_total_ms", num(st.min_total_ns / 1e6)),
            ("vm_create_ms", num(st.vm_ns / 1e6)),
            ("load_ms", num(st.load_ns / 1e6)),
            ("start_to_announcement_ms", num(st.announce_ns / 1e6)),
            (
                "floor",
                s("vm_create_ms (KvmRemote::new: VM, memory, vCPU)"),
            ),
            ("ratio", num(st.total_ns / st.vm_ns)),
        ]),
        Some(Err(e)) => obj([("error", err_json(e))]),
        None => J::Null,
    };
    let targets = J::Arr(
        r.targets
            .iter()
            .map(|(what, verdict, detail)| {
                obj([
                    ("target", s(what.clone())),
                    ("status", s(verdict.clone())),
                    ("figures", s(detail.clone())),
                ])
            })
            .collect(),
    );
    obj([
        ("vamp_bench", num(1.0)),
        ("quick", s(if quick { "yes" } else { "no" })),
        ("seconds", num(took.as_secs_f64())),
        (
            "units",
            s(
                "*_us microseconds, *_ns nanoseconds, *_ms milliseconds, *_kib KiB, msgs_per_s \
               echoed messages per second, mb_per_s payload megabytes (1e6) per second one way, \
               ratios are vamp / floor (1.0 = at the floor)",
            ),
        ),
        ("machine", machine),
        ("floors", floors),
        ("engine_copy", copies),
        ("links", links),
        ("hub_full_rings", full),
        ("scale_guests", scale(&r.guests, "guests")),
        ("scale_endpoints", scale(&r.endpoints, "endpoints")),
        ("hub_memory", memory),
        ("remote_start", start),
        ("targets", targets),
    ])
}
