//! A seccomp-bpf sandbox for the backend's threads that touch guest memory.
//!
//! Guests write the rings and buffers the hub reads, so a bug in that path is the one a
//! hostile guest would try to exploit. The threads that run it are confined, each on itself,
//! to the few system calls that path makes ([`allowed_syscalls`]); anything else (opening a
//! file, a socket, `execve`, `ptrace`, mapping memory executable...) is refused.
//!
//! # Which threads
//!
//! Every thread that reads what a guest, its VMM or a remote writes runs under a filter of
//! its own kind (the lists: [`allowed_syscalls`]; `tests/sandbox.rs` checks /proc for each):
//!
//! | thread (name in /proc) | untrusted input | kind |
//! | --- | --- | --- |
//! | `vring_worker` (rust-vmm's, one per connection) | the guest's rings and buffers, other guests' rings | [`ThreadKind::Worker`] |
//! | `vamp-vu-<guest>` (the daemon's request thread) | the VMM's vhost-user messages, fds, memory tables | [`ThreadKind::Request`] |
//! | `vhost-user-ctl` ([`crate::vhost_user::control`]) | the VMM's messages (device status, backend channel) | [`ThreadKind::Control`] |
//! | `vamp-hub-clock` | every guest's rings (timeouts return held buffers) | [`ThreadKind::Clock`] |
//! | `vamp-hub-poll` ([`crate::vhost_user::poll`]) | polled guests' rings, other guests' rings | [`ThreadKind::Poll`] |
//! | `vamp-remote-rings` ([`crate::remote`]) | a remote's rings, other guests' rings | [`ThreadKind::RemoteRings`] |
//! | `vamp-ring-work` (short-lived) | other guests' rings (withdrawals, held buffers) | [`ThreadKind::RingWork`] |
//! | `vamp-status` ([`crate::control`]) | local clients' requests; the names guests announced | [`ThreadKind::Status`] |
//!
//! - **vring workers**: vhost-user-backend gives a backend no hook on its worker threads other
//!   than `handle_event`, so the filter is installed at the first event a worker handles
//!   ([`enter`], guarded by a thread-local flag), before any guest memory is read. Before that
//!   the worker has only waited on its epoll set.
//! - **request thread**: rust-vmm's daemon starts it when it connects; the connecting is done
//!   by a short-lived thread (`vamp-vhost-start`) that installs the filter first, so the
//!   request thread inherits it before it reads the first message.
//! - **ring work**: stopping or attaching a link writes into other guests' rings. A confined
//!   thread does it in place; the unconfined threads below hand it to a short-lived
//!   `vamp-ring-work` thread ([`crate::hub::SharedHub::run_ring_work`]) that installs this filter.
//!
//! Outside the sandbox, reading nothing a guest, VMM or remote writes: the main thread
//! (configuration), `vamp-accept` (accepts a guest's connections and starts their threads),
//! `vamp-signals`, `vamp-remote` (a remote's lifecycle: the KVM calls no list could hold; it
//! parses the remote's resource table through the engine's checked views when it attaches; for
//! a core behind sysfs it runs the bridge of crate::remote::bridge, opening and ioctl-ing the
//! kernel's `/dev/rpmsg*`, and reads only rings the hub writes and the core's bytes, copied),
//! and remoteproc-vm's `remote-vcpu` (KVM_RUN; the exits' values) and `remote-watchdog`
//! (compares the heartbeat word).
//!
//! # SIGBUS on guest memory
//!
//! A VMM can shrink the file behind its guest's memory; the next access raises SIGBUS in any
//! thread. The handler ([`crate::guest_memory::install_fault_handler`], installed before any
//! filter) needs only calls every thread here is allowed: `mmap` of anonymous, non-executable
//! memory (`MAP_FIXED` over the lost region), `rt_sigreturn`, and, for a fault outside guest
//! memory, `write` and `exit_group`: a refused call can never make the fault repeat.
//!
//! # What a refused call does
//!
//! With [`Violation::Refuse`] (the default) a refused call fails with `EPERM` and a line on
//! standard error names it (`sandbox: refused system call NN (name)`); the process serves on.
//! The hub runs many guests: killing it for a call that a library update started making
//! would cut every guest off, while an attacker who got code running gains nothing from a
//! refused call that fails. [`Violation::Kill`] kills the whole process instead (the kernel's
//! `SECCOMP_RET_KILL_PROCESS`, a SIGSYS core dump), for those who prefer a dead hub to one
//! that keeps running after an intrusion attempt.
//!
//! The refusal is a `SECCOMP_RET_TRAP`: the kernel skips the call and raises SIGSYS in the
//! thread; the handler installed here writes the line (async-signal-safe: one `write(2)` of a
//! buffer on its stack), counts it ([`refusals`]) and sets the call's return value to
//! `-EPERM`.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Once;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

/// Which kind of thread a filter is for: each gets only the calls it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThreadKind {
    /// A vhost-user-backend vring worker: waits on epoll, reads kick eventfds, writes call
    /// eventfds, runs the hub.
    Worker,
    /// The hub's clock: sleeps, ticks the hub.
    Clock,
    /// The poll thread (`vamp-hub-poll`, `crate::vhost_user::poll`): spins on polled guests'
    /// rings and runs the hub for them, yields its CPU now and then, waits on a condition
    /// variable while no guest is polled. Only the common calls.
    Poll,
    /// A short-lived thread that stops or attaches a link for an unconfined thread (a
    /// disconnect seen by the accept thread, a remote's start or end seen by its lifecycle
    /// thread): it walks other guests' rings (withdrawals, returned buffers, announcements)
    /// and exits. Only the common calls.
    RingWork,
    /// The vhost-user request thread of a connection (rust-vmm's daemon thread, named after
    /// the guest): reads the frontend's messages and the descriptors they carry, maps the
    /// memory table's regions, registers kick eventfds with the workers. The filter goes on
    /// the short-lived thread that connects the daemon and starts it, so the request thread
    /// inherits it from its first instruction.
    Request,
    /// The control thread of a connection (`vhost-user-ctl`, `crate::vhost_user::control`): relays
    /// the frontend's messages to the request thread, reads the device status it sets and
    /// the backend channel it opens.
    Control,
    /// A remote's ring thread (`vamp-remote-rings`, `crate::remote`): waits on the remote's
    /// doorbell and runs the hub for its link. Only the common calls.
    RemoteRings,
    /// The status socket's thread (`vamp-status`, `crate::control`): accepts local clients,
    /// reads their request line, copies the hub's counters and names (guest bytes) and
    /// writes them out.
    Status,
}

/// What happens when a sandboxed thread makes a call outside its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// The call fails with `EPERM`; a line on standard error names it; the process goes on.
    Refuse,
    /// The kernel kills the process (SIGSYS).
    Kill,
}

/// Whether the threads that touch guest memory are sandboxed, process-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// No filter is installed.
    Off,
    /// Each such thread installs its filter before it first touches guest memory.
    On(Violation),
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// This CPU architecture has no filter here (x86_64 and aarch64 have).
    #[error("no seccomp filter for the {0} architecture")]
    UnsupportedArch(&'static str),
    /// seccompiler refused the filter (a bug in the rules).
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused it (no seccomp support, or already confined by a stricter filter).
    #[error("installing the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler: {0}")]
    Signal(std::io::Error),
    /// The thread that tries the sandbox could not run.
    #[error("trying the sandbox on a thread: {0}")]
    Probe(std::io::Error),
}

const POLICY_OFF: u8 = 0;
const POLICY_REFUSE: u8 = 1;
const POLICY_KILL: u8 = 2;

static POLICY: AtomicU8 = AtomicU8::new(POLICY_REFUSE);
static INSTALLS: AtomicU64 = AtomicU64::new(0);
static REFUSALS: AtomicU64 = AtomicU64::new(0);
static LAST_REFUSED: AtomicI64 = AtomicI64::new(-1);
static FAILED: Once = Once::new();

thread_local! {
    static CONFINED: Cell<bool> = const { Cell::new(false) };
}

/// Sets the process-wide policy (on, refusing, by default). Threads already confined stay so.
pub fn set_policy(policy: Policy) {
    let v = match policy {
        Policy::Off => POLICY_OFF,
        Policy::On(Violation::Refuse) => POLICY_REFUSE,
        Policy::On(Violation::Kill) => POLICY_KILL,
    };
    POLICY.store(v, Ordering::SeqCst);
}

/// The process-wide policy.
pub fn policy() -> Policy {
    match POLICY.load(Ordering::SeqCst) {
        POLICY_OFF => Policy::Off,
        POLICY_KILL => Policy::On(Violation::Kill),
        _ => Policy::On(Violation::Refuse),
    }
}

/// Confines the calling thread as a `kind` thread if the policy says so and it is not confined
/// yet. Cheap after the first call (a thread-local flag). A failure is logged once per
/// process and the thread goes on unconfined: [`check`] at start-up is where a missing
/// sandbox stops the program.
pub fn enter(kind: ThreadKind) {
    if CONFINED.get() {
        return;
    }
    let violation = match policy() {
        Policy::Off => return,
        Policy::On(v) => v,
    };
    if let Err(e) = install(kind, violation) {
        FAILED.call_once(|| log::error!("sandbox: {e}; this thread runs unconfined"));
    }
}

/// Whether the calling thread is confined: it installed a filter ([`enter`]), or it inherited
/// one (the daemon's request thread, started by a confined thread).
pub fn is_confined() -> bool {
    // A thread that installed its own filter knows without asking the kernel (and the
    // workers' and clock's lists have no prctl to ask with).
    // SAFETY: PR_GET_SECCOMP takes no pointer; it returns the calling thread's mode.
    CONFINED.get() || unsafe { libc::prctl(libc::PR_GET_SECCOMP) } == 2
}

/// Threads confined since the process started.
pub fn installs() -> u64 {
    INSTALLS.load(Ordering::SeqCst)
}

/// Calls refused (with [`Violation::Refuse`]) since the process started.
pub fn refusals() -> u64 {
    REFUSALS.load(Ordering::SeqCst)
}

/// The number of the last refused call, if any.
pub fn last_refused() -> Option<i64> {
    let nr = LAST_REFUSED.load(Ordering::SeqCst);
    (nr >= 0).then_some(nr)
}

/// Builds both filters and installs one on a short-lived thread: whether the sandbox can work
/// here at all (a kernel without seccomp, an unsupported architecture). Call at start-up.
pub fn check(violation: Violation) -> Result<(), SandboxError> {
    filter(ThreadKind::Worker, violation)?;
    filter(ThreadKind::Clock, violation)?;
    filter(ThreadKind::Poll, violation)?;
    filter(ThreadKind::RingWork, violation)?;
    filter(ThreadKind::Request, violation)?;
    filter(ThreadKind::Control, violation)?;
    filter(ThreadKind::RemoteRings, violation)?;
    filter(ThreadKind::Status, violation)?;
    std::thread::Builder::new()
        .name("vamp-sandbox-check".into())
        .spawn(move || install(ThreadKind::Clock, violation))
        .map_err(SandboxError::Probe)?
        .join()
        .map_err(|_| SandboxError::Probe(std::io::Error::other("it panicked")))?
}

/// Installs the `kind` filter on the calling thread, whatever the policy. It cannot be
/// removed: the thread keeps it until it exits.
pub fn install(kind: ThreadKind, violation: Violation) -> Result<(), SandboxError> {
    // Built before the filter goes in: this also makes the thread's allocator arena, whose
    // set-up reads /sys (not allowed afterwards).
    let program = filter(kind, violation)?;
    fix_arena_limit();
    if violation == Violation::Refuse {
        install_sigsys_handler()?;
    }
    seccompiler::apply_filter(&program)?;
    CONFINED.set(true);
    INSTALLS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Fixes glibc's limit on malloc arenas while the process may still read files. Left to
/// itself, glibc counts the CPUs from /sys (or /proc) the first time a thread needs a new
/// arena, which may be a confined thread (a new request thread inherits its filter before its
/// first allocation): that read would be refused. The limit set is glibc's own default on
/// 64-bit systems, eight arenas per CPU.
fn fix_arena_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(target_env = "gnu")]
        {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let limit = libc::c_int::try_from(cpus.saturating_mul(8)).unwrap_or(libc::c_int::MAX);
            // SAFETY: mallopt only sets a malloc tunable; it takes no pointers.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, limit) };
        }
    });
}

/// The system calls a `kind` thread may make, by name, with why.
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<(&'static str, &'static str)> {
    rules(kind).into_iter().map(|r| (r.name, r.why)).collect()
}

/// One allowed call: its number, name, why it is needed and what it is limited to.
struct Allowed {
    nr: i64,
    name: &'static str,
    why: &'static str,
    only: Only,
}

#[derive(Clone, Copy)]
enum Only {
    /// Any arguments.
    Any,
    /// Anonymous memory that is not executable (mmap: prot, flags).
    AnonNoExec,
    /// Not executable (mprotect: prot).
    NoExec,
    /// Signals to this process only (tgkill: tgid).
    ThisProcess,
    /// Reading a descriptor's flags (fcntl: F_GETFD).
    GetFd,
    /// Unix-domain sockets only (socket: domain).
    UnixSockets,
    /// Naming the calling thread and asking whether it is confined (prctl: PR_SET_NAME,
    /// PR_GET_SECCOMP), nothing else.
    NameOrSeccompMode,
    /// Duplicating a descriptor and reading or setting its flags, reading a file's seals
    /// (fcntl: F_GETFD, F_DUPFD_CLOEXEC, F_GETFL, F_SETFL, F_GET_SEALS), nothing else.
    FdFlags,
}

macro_rules! allow {
    ($name:ident, $only:expr, $why:expr) => {
        Allowed {
            nr: libc::$name as i64,
            name: &stringify!($name)[4..],
            why: $why,
            only: $only,
        }
    };
}

fn rules(kind: ThreadKind) -> Vec<Allowed> {
    use Only::*;
    let mut rules = vec![
        // Locks and thread joins (std's Mutex, Condvar, RwLock; the hub's lock).
        allow!(SYS_futex, Any, "locks, condition variables, thread joins"),
        allow!(
            SYS_sched_yield,
            Any,
            "lock back-off; the poll thread giving its CPU to others"
        ),
        // The allocator (glibc malloc: arenas grow with mprotect, big blocks are mapped).
        allow!(
            SYS_mmap,
            AnonNoExec,
            "allocator: anonymous, never executable"
        ),
        allow!(
            SYS_mprotect,
            NoExec,
            "allocator arenas grow; never executable"
        ),
        allow!(
            SYS_munmap,
            Any,
            "allocator; dropping a replaced memory table"
        ),
        allow!(SYS_mremap, Any, "allocator: growing a large block"),
        allow!(SYS_madvise, Any, "allocator; thread exit frees its stack"),
        allow!(SYS_brk, Any, "allocator: main arena"),
        // Notifications and logs.
        allow!(
            SYS_write,
            Any,
            "call eventfds (interrupts to guests); log lines"
        ),
        allow!(
            SYS_close,
            Any,
            "dropping eventfds and memory tables no longer used"
        ),
        allow!(
            SYS_fcntl,
            GetFd,
            "debug builds check a descriptor is open before closing it"
        ),
        // Time: normally the vDSO, the system call when the clock source has none.
        allow!(SYS_clock_gettime, Any, "time, when the vDSO cannot"),
        allow!(SYS_gettimeofday, Any, "time, when the vDSO cannot"),
        allow!(SYS_getrandom, Any, "hash-map seeds of a new thread"),
        // Thread exit and signals (glibc blocks signals and frees its stack on the way out;
        // Rust removes its alternate signal stack).
        allow!(SYS_rt_sigprocmask, Any, "thread exit blocks signals"),
        allow!(SYS_sigaltstack, Any, "thread exit removes its signal stack"),
        allow!(
            SYS_rt_sigreturn,
            Any,
            "return from a signal handler (SIGSYS)"
        ),
        allow!(
            SYS_restart_syscall,
            Any,
            "a call interrupted by a signal resumes"
        ),
        allow!(SYS_exit, Any, "thread exit"),
        allow!(SYS_exit_group, Any, "process exit"),
        // abort() on a fatal error signals its own process.
        allow!(SYS_getpid, Any, "abort(): its own process"),
        allow!(SYS_gettid, Any, "abort(): its own thread"),
        allow!(
            SYS_tgkill,
            ThisProcess,
            "abort(): signals to this process only"
        ),
    ];
    match kind {
        ThreadKind::Worker => {
            #[cfg(target_arch = "x86_64")]
            rules.push(allow!(SYS_epoll_wait, Any, "waiting for kicks"));
            rules.push(allow!(SYS_epoll_pwait, Any, "waiting for kicks"));
            rules.push(allow!(SYS_read, Any, "kick eventfds"));
        }
        ThreadKind::Clock => {
            #[cfg(target_arch = "x86_64")]
            rules.push(allow!(SYS_nanosleep, Any, "sleeping between ticks"));
            rules.push(allow!(SYS_clock_nanosleep, Any, "sleeping between ticks"));
        }
        // Locks, the allocator, call eventfds, log lines and thread exit: all common.
        ThreadKind::RingWork => {}
        // The same, and sched_yield (common): it spins, never sleeps on a descriptor.
        ThreadKind::Poll => {}
        ThreadKind::RemoteRings => {
            #[cfg(target_arch = "x86_64")]
            rules.push(allow!(
                SYS_poll,
                Any,
                "waiting for the remote's kick (an eventfd)"
            ));
            rules.push(allow!(
                SYS_ppoll,
                Any,
                "waiting for the remote's kick (an eventfd)"
            ));
            rules.push(allow!(SYS_read, Any, "the remote's kick eventfd"));
        }
        ThreadKind::Status => {
            #[cfg(target_arch = "x86_64")]
            rules.push(allow!(SYS_accept, Any, "a status client"));
            rules.push(allow!(SYS_accept4, Any, "a status client"));
            rules.push(allow!(SYS_read, Any, "a client's request line"));
            rules.push(allow!(SYS_recvfrom, Any, "a client's request line"));
            rules.push(allow!(SYS_sendto, Any, "the answer"));
            rules.push(allow!(
                SYS_setsockopt,
                Any,
                "read and write timeouts of a client's connection"
            ));
            #[cfg(target_arch = "x86_64")]
            rules.push(allow!(SYS_nanosleep, Any, "backing off a failed accept"));
            rules.push(allow!(
                SYS_clock_nanosleep,
                Any,
                "backing off a failed accept"
            ));
        }
        ThreadKind::Request => {
            rules.push(allow!(
                SYS_recvmsg,
                Any,
                "the frontend's messages and their descriptors"
            ));
            rules.push(allow!(SYS_sendmsg, Any, "replies to the frontend"));
            rules.push(allow!(
                SYS_recvfrom,
                Any,
                "the frontend's messages (plain reads)"
            ));
            rules.push(allow!(
                SYS_shutdown,
                Any,
                "ending the connection when the thread ends"
            ));
            rules.push(allow!(
                SYS_setsockopt,
                Any,
                "socket options of the connection"
            ));
            rules.push(allow!(
                SYS_sendto,
                Any,
                "replies to the frontend (plain writes)"
            ));
            rules.push(allow!(SYS_read, Any, "eventfds"));
            rules.push(allow!(
                SYS_mmap,
                NoExec,
                "mapping the memory table's regions (shared files); never executable"
            ));
            // glibc's fstat is this call on both x86-64 and aarch64 (found on an arm64 host).
            rules.push(allow!(SYS_fstat, Any, "a region's file size (check_table)"));
            rules.push(allow!(
                SYS_newfstatat,
                Any,
                "a region's file size (check_table)"
            ));
            rules.push(allow!(SYS_statx, Any, "a region's file size (check_table)"));
            rules.push(allow!(
                SYS_epoll_ctl,
                Any,
                "kick eventfds into the workers' epoll sets"
            ));
            rules.push(allow!(
                SYS_socket,
                UnixSockets,
                "the daemon connects to the control thread's private socket"
            ));
            rules.push(allow!(
                SYS_connect,
                Any,
                "the daemon connects to the control thread"
            ));
            rules.push(allow!(
                SYS_fcntl,
                FdFlags,
                "the daemon duplicates its connection; a region's seals (check_table)"
            ));
            rules.extend(spawn_rules());
        }
        ThreadKind::Control => {
            rules.push(allow!(
                SYS_recvmsg,
                Any,
                "messages and descriptors from both ends"
            ));
            rules.push(allow!(
                SYS_sendmsg,
                Any,
                "relaying messages and descriptors"
            ));
            rules.push(allow!(
                SYS_recvfrom,
                Any,
                "messages from both ends (plain reads)"
            ));
            rules.push(allow!(SYS_sendto, Any, "relaying messages (plain writes)"));
            rules.push(allow!(SYS_read, Any, "the reset notice (an eventfd)"));
            #[cfg(target_arch = "x86_64")]
            rules.push(allow!(SYS_poll, Any, "waiting on both ends"));
            rules.push(allow!(SYS_ppoll, Any, "waiting on both ends"));
            rules.push(allow!(SYS_shutdown, Any, "ending the relay"));
            rules.push(allow!(
                SYS_setsockopt,
                Any,
                "write timeouts on the backend channel"
            ));
            rules.push(allow!(
                SYS_fcntl,
                FdFlags,
                "duplicating descriptors it relays; blocking mode"
            ));
        }
    }
    // Built for Xen (the `xen` feature), vm-memory maps guest memory through Xen's devices:
    // /dev/xen/privcmd for a foreign mapping (the whole region, when a memory table arrives, on
    // the request thread) and /dev/xen/gntdev for grants (around each access, on whichever
    // thread makes it). Read from vm-memory's Xen mapping code, not found by running: untested
    // on a Xen host (README, "Xen dom0").
    #[cfg(feature = "xen")]
    {
        rules.push(allow!(SYS_openat, Any, "Xen: opening privcmd and gntdev"));
        rules.push(allow!(
            SYS_ioctl,
            Any,
            "Xen: foreign and grant mapping ioctls"
        ));
        rules.push(allow!(
            SYS_mmap,
            NoExec,
            "Xen: mapping guest memory through privcmd or gntdev; never executable"
        ));
    }
    rules
}

/// What starting the daemon's request thread takes (its stack is anonymous memory, common),
/// and asking the kernel whether a thread is confined (`prctl(PR_GET_SECCOMP)`).
fn spawn_rules() -> Vec<Allowed> {
    use Only::*;
    vec![
        allow!(SYS_clone3, Any, "starting the daemon's request thread"),
        allow!(SYS_clone, Any, "starting a thread, where clone3 is missing"),
        allow!(SYS_set_robust_list, Any, "a new thread's lock list"),
        allow!(SYS_rseq, Any, "a new thread's restartable sequences"),
        allow!(
            SYS_prctl,
            NameOrSeccompMode,
            "a new thread's name; whether this thread is confined"
        ),
        allow!(SYS_sched_getaffinity, Any, "a new thread's CPU set (glibc)"),
    ]
}

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

/// The BPF program for `kind` threads.
pub fn filter(kind: ThreadKind, violation: Violation) -> Result<BpfProgram, SandboxError> {
    let arch = std::env::consts::ARCH;
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return Err(SandboxError::UnsupportedArch(arch));
    }
    let target = TargetArch::try_from(arch).map_err(|_| SandboxError::UnsupportedArch(arch))?;
    let exec = libc::PROT_EXEC as u64;
    let anon = libc::MAP_ANONYMOUS as u64;
    let pid = std::process::id() as u64;
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for r in rules(kind) {
        let cmd = |c: i32| condition(1, SeccompCmpOp::Eq, c as u64);
        // Each inner list is one rule (its conditions all hold); any one rule allows the call.
        let rules: Vec<Vec<SeccompCondition>> = match r.only {
            Only::Any => vec![],
            Only::AnonNoExec => vec![vec![
                condition(2, SeccompCmpOp::MaskedEq(exec), 0)?,
                condition(3, SeccompCmpOp::MaskedEq(anon), anon)?,
            ]],
            Only::NoExec => vec![vec![condition(2, SeccompCmpOp::MaskedEq(exec), 0)?]],
            Only::ThisProcess => vec![vec![condition(0, SeccompCmpOp::Eq, pid)?]],
            Only::GetFd => vec![vec![cmd(libc::F_GETFD)?]],
            Only::UnixSockets => vec![vec![condition(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?]],
            Only::NameOrSeccompMode => vec![
                vec![condition(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?],
                vec![condition(0, SeccompCmpOp::Eq, libc::PR_GET_SECCOMP as u64)?],
            ],
            Only::FdFlags => vec![
                vec![cmd(libc::F_GETFD)?],
                vec![cmd(libc::F_DUPFD_CLOEXEC)?],
                vec![cmd(libc::F_GETFL)?],
                vec![cmd(libc::F_SETFL)?],
                vec![cmd(libc::F_GET_SEALS)?],
            ],
        };
        let rule = rules
            .into_iter()
            .map(SeccompRule::new)
            .collect::<Result<Vec<_>, _>>()?;
        map.insert(r.nr, rule);
    }
    let refused = match violation {
        Violation::Refuse => SeccompAction::Trap,
        Violation::Kill => SeccompAction::KillProcess,
    };
    let filter = SeccompFilter::new(map, refused, SeccompAction::Allow, target)?;
    Ok(filter.try_into()?)
}

// ---------------------------------------------------------------------------------------
// SIGSYS: the refusal.

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: i32 = 1;

/// The start of a Linux `siginfo_t` for SIGSYS on a 64-bit architecture: the three ints, the
/// padding that aligns the union, then the union's `_sigsys` member.
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

const _: () = assert!(std::mem::size_of::<SigsysInfo>() <= std::mem::size_of::<libc::siginfo_t>());

fn install_sigsys_handler() -> Result<(), SandboxError> {
    static HANDLER: Once = Once::new();
    let mut result = Ok(());
    HANDLER.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler has the
        // SA_SIGINFO signature and only does async-signal-safe things (atomics, write(2),
        // editing the saved registers it is handed).
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            result = Err(SandboxError::Signal(std::io::Error::last_os_error()));
        }
    });
    result
}

extern "C" fn on_sigsys(
    _signo: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    if info.is_null() || context.is_null() {
        return;
    }
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo_t, whose SIGSYS layout
    // on 64-bit Linux starts as `SigsysInfo` (checked smaller than siginfo_t above).
    let sys = unsafe { &*(info as *const SigsysInfo) };
    if sys.code != SYS_SECCOMP {
        // Sent by someone with kill(2): nothing was refused.
        return;
    }
    let nr = i64::from(sys.syscall);
    REFUSALS.fetch_add(1, Ordering::SeqCst);
    LAST_REFUSED.store(nr, Ordering::SeqCst);
    let mut line = Line::default();
    line.push(b"vhost-user-rpmsg: sandbox: refused system call ");
    line.push_number(nr);
    line.push(b" (");
    line.push(syscall_name(nr).as_bytes());
    line.push(b"): it fails with EPERM\n");
    // SAFETY: write(2) of a buffer on this stack; async-signal-safe, and allowed by every
    // filter installed here.
    unsafe { libc::write(2, line.buf.as_ptr().cast(), line.len) };
    set_return_value(context, -i64::from(libc::EPERM));
}

/// Makes the refused call return `value` once the handler returns.
fn set_return_value(context: *mut libc::c_void, value: i64) {
    let uc = context as *mut libc::ucontext_t;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `context` is the ucontext_t the kernel passed to this SA_SIGINFO handler; the
    // registers in it are restored when the handler returns, RAX holding the call's result.
    unsafe {
        (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = value;
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above; on aarch64 the call's result is in x0.
    unsafe {
        (*uc).uc_mcontext.regs[0] = value as u64;
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = (uc, value);
}

/// A line built without allocating (in a signal handler).
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; 160],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut v = n.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// Names of the calls a confined thread might be tricked into (and of the allowed ones).
fn syscall_name(nr: i64) -> &'static str {
    macro_rules! names {
        ($($name:ident),* $(,)?) => {
            $(if nr == libc::$name as i64 {
                return &stringify!($name)[4..];
            })*
        };
    }
    #[cfg(target_arch = "x86_64")]
    names!(
        SYS_open,
        SYS_fork,
        SYS_vfork,
        SYS_stat,
        SYS_access,
        SYS_newfstatat
    );
    names!(
        SYS_openat,
        SYS_socket,
        SYS_connect,
        SYS_bind,
        SYS_listen,
        SYS_accept4,
        SYS_sendmsg,
        SYS_recvmsg,
        SYS_sendto,
        SYS_recvfrom,
        SYS_execve,
        SYS_execveat,
        SYS_clone,
        SYS_clone3,
        SYS_ptrace,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_kill,
        SYS_ioctl,
        SYS_prctl,
        SYS_seccomp,
        SYS_fcntl,
        SYS_dup,
        SYS_dup3,
        SYS_pipe2,
        SYS_memfd_create,
        SYS_unlinkat,
        SYS_mkdirat,
        SYS_chdir,
        SYS_fchmod,
        SYS_setuid,
        SYS_setgid,
        SYS_mount,
        SYS_pread64,
        SYS_pwrite64,
        SYS_readv,
        SYS_writev,
        SYS_lseek,
        SYS_fstat,
        SYS_statx,
        SYS_epoll_ctl,
        SYS_eventfd2,
        SYS_getppid,
        SYS_getuid,
        SYS_uname,
        SYS_sched_setaffinity,
        SYS_sched_getaffinity,
        SYS_rseq,
        SYS_set_robust_list,
        SYS_mmap,
        SYS_mprotect,
        SYS_tgkill,
        SYS_epoll_create1,
    );
    "unknown name"
}
