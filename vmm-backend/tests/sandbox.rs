//! The seccomp sandbox of the threads that touch guest memory (vamp_vmm_backend::sandbox).
//!
//! - a thread under the filter can make the calls on its list and is refused the others, in
//!   the way chosen: `EPERM` plus a count and a log line (`Refuse`), or the process killed by
//!   SIGSYS (`Kill`, in a child process);
//! - the hub serves real traffic with its workers and clock confined (checked from outside,
//!   in /proc: `Seccomp: 2`), in this process and in the `vhost-user-rpmsg` binary, with
//!   nothing refused; `--no-sandbox` leaves them unconfined.
//!
//! The tests share process-wide counters and the policy: they run one at a time.

mod common;

use common::{Inbox, TXQ, TempDir, TestHub, WAIT, await_echo, jump_avail, kick, pump};
use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vamp_rpmsg::wire::ADDR_ANY;
use vamp_test_support::wait_for_paths;
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest};
use vamp_vmm_backend::sandbox::{self, Policy, ThreadKind, Violation};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno(rc: libc::c_long) -> i32 {
    if rc >= 0 {
        return 0;
    }
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

type Seen = Vec<(&'static str, i32)>;

/// Runs `body` on a thread confined as `kind` (refusing); returns what it saw once the
/// thread has exited (so thread exit works under the filter too).
fn run_confined(kind: ThreadKind, body: impl FnOnce() -> Seen + Send + 'static) -> Seen {
    std::thread::spawn(move || {
        assert!(!sandbox::is_confined());
        sandbox::install(kind, Violation::Refuse).unwrap();
        assert!(sandbox::is_confined());
        body()
    })
    .join()
    .expect("the confined thread ran to its end and exited")
}

#[test]
fn a_confined_worker_is_refused_what_is_not_on_its_list_and_keeps_the_rest() {
    let _serial = serial();
    let refused_before = sandbox::refusals();
    // Made before the filter goes in, as vhost-user-backend makes a worker's eventfds.
    let kick = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let results = run_confined(ThreadKind::Worker, move || {
        let mut seen = Vec::new();
        // Allowed: eventfd traffic (kicks and interrupts), memory, locks, time, closing.
        seen.push((
            "write eventfd",
            kick.write(3)
                .err()
                .map_or(0, |e| e.raw_os_error().unwrap_or(-1)),
        ));
        seen.push((
            "read eventfd",
            kick.read()
                .map_or_else(|e| e.raw_os_error().unwrap_or(-1), |n| (n != 3) as i32),
        ));
        let v: Vec<u8> = vec![7; 4 << 20]; // a big block: mmap, then munmap
        seen.push(("big allocation", i32::from(v[12345] != 7)));
        drop(v);
        let m = Mutex::new(1);
        *m.lock().unwrap() += 1;
        let _ = Instant::now();
        drop(kick);
        // Refused: new descriptors, files, sockets, programs, executable memory, signals to
        // other processes.
        // SAFETY: plain system calls with valid or null pointers; only their results are
        // looked at.
        unsafe {
            let rc = libc::syscall(libc::SYS_eventfd2, 0, 0);
            seen.push(("eventfd2", errno(rc)));
            let rc = libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                c"/etc/passwd".as_ptr(),
                libc::O_RDONLY,
            );
            seen.push(("openat", errno(rc)));
            let rc = libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0);
            seen.push(("socket", errno(rc)));
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null::<libc::c_char>()];
            let rc = libc::syscall(
                libc::SYS_execve,
                c"/bin/true".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
            );
            seen.push(("execve", errno(rc)));
            let rc = libc::syscall(
                libc::SYS_mmap,
                std::ptr::null_mut::<libc::c_void>(),
                4096usize,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            seen.push(("mmap PROT_EXEC", errno(rc)));
            let rc = libc::syscall(libc::SYS_tgkill, 1, 1, 0);
            seen.push(("tgkill pid 1", errno(rc)));
        }
        seen
    });
    let refused_now = sandbox::refusals() - refused_before;
    let expect = |call: &str, want: i32| {
        let got = results.iter().find(|(c, _)| *c == call).map(|(_, e)| *e);
        assert_eq!(got, Some(want), "{call}: {results:?}");
    };
    for call in ["write eventfd", "read eventfd", "big allocation"] {
        expect(call, 0);
    }
    let refused = [
        "eventfd2",
        "openat",
        "socket",
        "execve",
        "mmap PROT_EXEC",
        "tgkill pid 1",
    ];
    for call in refused {
        expect(call, libc::EPERM);
    }
    assert_eq!(
        refused_now,
        refused.len() as u64,
        "each refusal counted once, nothing else refused: {results:?}"
    );
    assert_eq!(sandbox::last_refused(), Some(libc::SYS_tgkill));
}

#[test]
fn a_confined_clock_may_sleep_but_not_wait_on_epoll() {
    let _serial = serial();
    let before = sandbox::refusals();
    let results = run_confined(ThreadKind::Clock, || {
        std::thread::sleep(Duration::from_millis(5));
        // SAFETY: epoll_create1 takes no pointers.
        let rc = unsafe { libc::syscall(libc::SYS_epoll_create1, 0) };
        vec![("epoll_create1", errno(rc))]
    });
    assert_eq!(results, [("epoll_create1", libc::EPERM)]);
    assert_eq!(sandbox::refusals() - before, 1);
}

#[test]
fn a_confined_poll_thread_may_yield_and_wait_but_not_sleep_on_descriptors() {
    let _serial = serial();
    let before = sandbox::refusals();
    let kick = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let results = run_confined(ThreadKind::Poll, move || {
        let mut seen = Vec::new();
        // Allowed: giving the CPU away, a condition variable's wait, an interrupt (a call
        // eventfd write).
        std::thread::yield_now();
        let pair = (Mutex::new(false), std::sync::Condvar::new());
        let (guard, _) = pair
            .1
            .wait_timeout(pair.0.lock().unwrap(), Duration::from_millis(2))
            .unwrap();
        drop(guard);
        seen.push((
            "write eventfd",
            kick.write(1)
                .err()
                .map_or(0, |e| e.raw_os_error().unwrap_or(-1)),
        ));
        // Refused: reading a descriptor (it never waits on one), sleeping, new descriptors.
        let mut word = 0u64;
        // SAFETY: read(2) into a live local u64; epoll_create1 and nanosleep with valid or
        // null pointers; only their results are looked at.
        unsafe {
            let rc = libc::syscall(
                libc::SYS_read,
                kick.as_raw_fd(),
                (&raw mut word).cast::<libc::c_void>(),
                8usize,
            );
            seen.push(("read", errno(rc)));
            let rc = libc::syscall(libc::SYS_epoll_create1, 0);
            seen.push(("epoll_create1", errno(rc)));
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1000,
            };
            let rc = libc::syscall(
                libc::SYS_nanosleep,
                &raw const ts,
                std::ptr::null_mut::<libc::timespec>(),
            );
            seen.push(("nanosleep", errno(rc)));
        }
        seen
    });
    assert_eq!(
        results,
        [
            ("write eventfd", 0),
            ("read", libc::EPERM),
            ("epoll_create1", libc::EPERM),
            ("nanosleep", libc::EPERM)
        ]
    );
    assert_eq!(sandbox::refusals() - before, 3);
}

#[test]
fn the_binary_confines_its_poll_thread_and_refuses_nothing_legitimate() {
    let _serial = serial();
    let dir = TempDir::new("sandbox-poll");
    // A short quiet period: the traffic below backs off to kicks and resumes polling often.
    let (backend, sockets) = Backend::start(dir.path(), &["--poll", "--poll-quiet-ms", "5"]);
    let mut a = NativeGuest::connect(&sockets[0], GuestOptions::default())
        .unwrap_or_else(|e| panic!("{e:?}\n{}", backend.log()));
    let mut ai = Inbox::default();
    pump(&mut a, &mut ai, "echo", |i| i.announced("echo").is_some());
    let pid = backend.child.id();
    let deadline = Instant::now() + WAIT;
    loop {
        let modes = seccomp_modes(pid, "vamp-hub-poll");
        if modes == [2] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "one confined poll thread: {modes:?}\n{}",
            backend.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(a);
    traffic(&sockets);
    let log = backend.log();
    assert!(!log.contains("refused system call"), "{log}");
    assert_eq!(seccomp_modes(pid, "vamp-hub-poll"), [2], "{log}");
}

/// Not a test on its own: the child process of the next test (it kills itself).
#[test]
#[ignore = "run by with_kill_a_forbidden_call_kills_the_whole_process in a child process"]
fn kill_child() {
    if std::env::var_os("VAMP_SANDBOX_KILL_CHILD").is_none() {
        return;
    }
    std::thread::spawn(|| {
        sandbox::install(ThreadKind::Worker, Violation::Kill).unwrap();
        // SAFETY: socket takes no pointers.
        unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
        eprintln!("still alive after a forbidden call");
    })
    .join()
    .unwrap();
    std::process::exit(0);
}

#[test]
fn with_kill_a_forbidden_call_kills_the_whole_process() {
    let _serial = serial();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill_child", "--ignored", "--nocapture"])
        .env("VAMP_SANDBOX_KILL_CHILD", "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("still alive"));
}

// ---------------------------------------------------------------------------------------
// Real traffic.

/// Seccomp modes (0 none, 2 filter) of this process's threads named `name`.
fn seccomp_modes(pid: u32, name: &str) -> Vec<u32> {
    let mut modes = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return modes;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(mode) = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .and_then(|v| v.trim().parse().ok())
        {
            modes.push(mode);
        }
    }
    modes
}

/// Traffic through a hub serving `sockets[0]` and `sockets[1]` (with an echo service "echo"
/// and the second guest's "b-svc" offered to the first): echoes of every size, forwarding
/// both ways, a ring broken and reset, a reconnect.
fn traffic(sockets: &[PathBuf]) {
    let opts = GuestOptions::default();
    let mut a = NativeGuest::connect(&sockets[0], opts).unwrap();
    let mut b = NativeGuest::connect(&sockets[1], opts).unwrap();
    let (mut ai, mut bi) = (Inbox::default(), Inbox::echoing());
    b.rpmsg().create_ept(b"b-svc", ADDR_ANY, ADDR_ANY).unwrap();
    pump(&mut b, &mut bi, "b's link", |_| true);
    pump(&mut a, &mut ai, "echo and b-svc", |i| {
        i.announced("echo").is_some() && i.announced("b-svc").is_some()
    });
    let echo = a
        .rpmsg()
        .create_ept(b"", ADDR_ANY, ai.announced("echo").unwrap())
        .unwrap();
    let to_b = a
        .rpmsg()
        .create_ept(b"", ADDR_ANY, ai.announced("b-svc").unwrap())
        .unwrap();
    for i in 0..600u32 {
        let msg: Vec<u8> = (0..1 + i as usize % 496)
            .map(|k| (k as u32 ^ i) as u8)
            .collect();
        let ept = if i % 2 == 0 { echo } else { to_b };
        a.rpmsg().send(ept, &msg).unwrap();
        let lost = format!("message {i} never came back");
        await_echo(&mut a, &mut ai, &mut b, &mut bi, &lost);
        assert_eq!(ai.messages.pop_front().unwrap().3, msg);
    }
    // A ring protocol violation (logged by the worker), then a reset.
    let tx = a.layout().tx_ring;
    jump_avail(&a, tx, tx.size + 1);
    kick(&mut a, TXQ);
    assert!(a.wait_config_change(WAIT).unwrap());
    a.reset().unwrap();
    // And a reconnect.
    drop(a);
    let mut a = NativeGuest::connect(&sockets[0], opts).unwrap();
    let mut ai = Inbox::default();
    pump(&mut a, &mut ai, "echo after reconnecting", |i| {
        i.announced("echo").is_some()
    });
    let echo = a
        .rpmsg()
        .create_ept(b"", ADDR_ANY, ai.announced("echo").unwrap())
        .unwrap();
    a.rpmsg().send(echo, b"again").unwrap();
    pump(&mut a, &mut ai, "the last echo", |i| !i.messages.is_empty());
}

const TOPOLOGY: &str = r#"
[[guest]]
name = "a"
socket = "{dir}/a.sock"
[[guest]]
name = "b"
socket = "{dir}/b.sock"
[[service]]
type = "echo"
name = "echo"
[[channel]]
from = "b"
to = ["a"]
names = ["b-svc"]
"#;

#[test]
fn the_hub_serves_traffic_with_its_workers_and_clock_confined() {
    let _serial = serial();
    assert_eq!(
        sandbox::policy(),
        Policy::On(Violation::Refuse),
        "on by default"
    );
    let (installs, refusals) = (sandbox::installs(), sandbox::refusals());
    let hub = TestHub::start("sandbox-lib", TOPOLOGY);
    // Connected guests keep their workers: look at them mid-traffic.
    let opts = GuestOptions::default();
    let mut a = NativeGuest::connect(&hub.sockets[0], opts).unwrap();
    let mut ai = Inbox::default();
    pump(&mut a, &mut ai, "echo", |i| i.announced("echo").is_some());
    // The worker confined itself at its first event, the clock when it started (which, on a
    // loaded machine, may be a moment after the hub started).
    let pid = std::process::id();
    let deadline = Instant::now() + WAIT;
    loop {
        let workers = seccomp_modes(pid, "vring_worker");
        let clock = seccomp_modes(pid, "vamp-hub-clock");
        if workers.contains(&2) && clock.contains(&2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a's vring worker and the hub's clock confined: workers {workers:?}, clock {clock:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(a);
    traffic(&hub.sockets);
    assert!(
        sandbox::installs() >= installs + 3,
        "workers and the clock installed their filters"
    );
    assert_eq!(
        sandbox::refusals(),
        refusals,
        "nothing legitimate was refused"
    );
    assert!(hub.stats(0).served >= 300);
}

// ---------------------------------------------------------------------------------------
// The binary.

struct Backend {
    child: Child,
    log: PathBuf,
}

impl Backend {
    fn start(dir: &Path, extra: &[&str]) -> (Backend, Vec<PathBuf>) {
        let base = dir.join("g.sock");
        let sockets: Vec<PathBuf> = (0..2)
            .map(|i| PathBuf::from(format!("{}{i}", base.display())))
            .collect();
        let mut args = vec!["--socket-path".to_string(), base.display().to_string()];
        args.extend(["--socket-count", "2", "--echo", "echo"].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        (Backend::run(dir, &args, &sockets), sockets)
    }

    /// Runs the binary with `args` and waits for `sockets` to appear.
    fn run(dir: &Path, args: &[String], sockets: &[PathBuf]) -> Backend {
        let log = dir.join("backend.log");
        let child = Command::new(env!("CARGO_BIN_EXE_vhost-user-rpmsg"))
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for_paths(sockets, "the backend's sockets", WAIT);
        Backend { child, log }
    }

    fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two guests of the binary (the second offers nothing by name, so "b-svc" is reached
/// through the all-to-all topology), the same traffic as in process.
fn binary_traffic(extra: &[&str]) -> (Vec<u32>, String) {
    let dir = TempDir::new(&format!("sandbox-bin{}", extra.len()));
    let (backend, sockets) = Backend::start(dir.path(), extra);
    let opts = GuestOptions::default();
    let mut a = NativeGuest::connect(&sockets[0], opts)
        .unwrap_or_else(|e| panic!("{e:?}\n{}", backend.log()));
    let mut ai = Inbox::default();
    pump(&mut a, &mut ai, "echo", |i| i.announced("echo").is_some());
    let modes = seccomp_modes(backend.child.id(), "vring_worker");
    drop(a);
    traffic(&sockets);
    let log = backend.log();
    if std::env::var_os("SHOWLOG").is_some() {
        eprintln!("{log}");
    }
    (modes, log)
}

#[test]
fn the_binary_confines_its_workers_and_refuses_nothing_legitimate() {
    let _serial = serial();
    let (modes, log) = binary_traffic(&[]);
    assert!(
        modes.contains(&2),
        "a confined vring worker: {modes:?}\n{log}"
    );
    assert!(log.contains("sandbox on"), "{log}");
    assert!(!log.contains("refused system call"), "{log}");
    assert!(
        log.contains("DEVICE_NEEDS_RESET"),
        "the break was reported: {log}"
    );
}

#[test]
fn the_binary_without_sandbox_leaves_them_unconfined() {
    let _serial = serial();
    let (modes, log) = binary_traffic(&["--no-sandbox"]);
    assert!(!modes.is_empty(), "{log}");
    assert!(modes.iter().all(|&m| m == 0), "{modes:?}\n{log}");
    assert!(log.contains("sandbox off"), "{log}");
}

#[test]
fn bad_sandbox_arguments_are_refused_with_reasons() {
    let bin = env!("CARGO_BIN_EXE_vhost-user-rpmsg");
    let out = Command::new(bin)
        .args([
            "--socket-path",
            "/nonexistent/x.sock",
            "--sandbox-violation",
            "maybe",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("possible values: refuse, kill"), "{err}");
    let out = Command::new(bin)
        .args(["--socket-path", "/nonexistent/x.sock", "--no-sandbox"])
        .args(["--sandbox-violation", "kill"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn a_disconnect_stops_the_link_on_a_confined_thread() {
    let _serial = serial();
    assert_eq!(sandbox::policy(), Policy::On(Violation::Refuse));
    let refusals = sandbox::refusals();
    // The helper itself: the work runs confined, whoever asks.
    let direct = vamp_vmm_backend::hub::SharedHub::new(vamp_vmm_backend::hub::Hub::new(
        vamp_vmm_backend::config::Topology::all_to_all(vec![PathBuf::from("/unused")], &[])
            .unwrap(),
    ));
    assert!(!sandbox::is_confined());
    assert!(direct.run_ring_work(0, |_| { sandbox::is_confined() }));
    // A disconnect seen by the accept thread (outside the sandbox) makes a confined thread
    // stop the link: withdrawing its names writes into the other guests' rings.
    let hub = TestHub::start("sandbox-ring-work", TOPOLOGY);
    let mut a = NativeGuest::connect(&hub.sockets[0], GuestOptions::default()).unwrap();
    let mut ai = Inbox::default();
    pump(&mut a, &mut ai, "echo", |i| i.announced("echo").is_some());
    let deadline = Instant::now() + WAIT;
    while !hub.is_up(0) {
        assert!(Instant::now() < deadline, "a's link never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let installs = sandbox::installs();
    a.disconnect();
    while hub.is_up(0) {
        assert!(Instant::now() < deadline, "a's link never went down");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        sandbox::installs() > installs,
        "the link was stopped by a thread that confined itself"
    );
    assert_eq!(sandbox::refusals(), refusals, "nothing legitimate refused");
}

/// Each thread of process `pid`: its name (as /proc shows it, at most 15 bytes), whether it is
/// the main thread, and its seccomp mode (0 none, 2 filter).
fn threads_of(pid: u32) -> Vec<(String, bool, u32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let tid: u32 = task.file_name().to_string_lossy().parse().unwrap();
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        threads.push((comm.trim_end().to_string(), tid == pid, mode));
    }
    threads
}

/// The hub's threads that may run outside the sandbox, and why: they read nothing a guest, a
/// VMM or a remote writes (see vamp_vmm_backend::sandbox).
const UNCONFINED: [&str; 6] = [
    // Accepts connections, starts a connection's threads, hands a disconnect to ring work.
    "vamp-accept",
    // A remote's lifecycle: KVM calls; its rings are served by "vamp-remote-rings". For a
    // core behind sysfs also its bridge: sysfs writes, open/ioctl/read/write on the kernel's
    // /dev/rpmsg_ctrlN and /dev/rpmsgN (crate::remote::bridge).
    "vamp-remote",
    // Waits for SIGINT/SIGTERM.
    "vamp-signals",
    // remoteproc-vm's KVM threads: the vCPU (KVM_RUN and the exits' values: kick, console
    // byte, exit code) and the watchdog (compares the platform entry's heartbeat word).
    "remote-vcpu",
    "remote-watchdog",
    // Not ours: the kernel's KVM worker (kvm-nx-lpage-recovery) shows among a KVM user's
    // threads.
    "kvm-nx-lpage-re",
];

#[test]
fn attack_threads_outside_sandbox() {
    let _serial = serial();
    let dir = TempDir::new("sandbox-threads");
    let sockets = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    let mut toml = TOPOLOGY.replace("{dir}", &dir.path().display().to_string());
    let with_remote = vamp_remoteproc::kvm::kvm_available().is_ok();
    if with_remote {
        toml.push_str("[[remote]]\nname = \"r\"\nimage = \"echo\"\n");
    } else {
        eprintln!("no KVM here: the remote's ring thread is not checked");
    }
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, toml).unwrap();
    let backend = Backend::run(
        dir.path(),
        &["--config".to_string(), config.display().to_string()],
        &sockets,
    );
    // A guest with its memory table set, its rings up and traffic: every connection thread
    // exists and has read what its VMM sent.
    let mut a = NativeGuest::connect(&sockets[0], GuestOptions::default())
        .unwrap_or_else(|e| panic!("{e:?}\n{}", backend.log()));
    let mut ai = Inbox::default();
    pump(&mut a, &mut ai, "echo", |i| i.announced("echo").is_some());
    // And b: a worker confines itself at its first event, before it reads any guest memory.
    let mut b = NativeGuest::connect(&sockets[1], GuestOptions::default()).unwrap();
    let mut bi = Inbox::default();
    pump(&mut b, &mut bi, "echo", |i| i.announced("echo").is_some());
    let mut expected = vec![
        "vring_worker",
        "vhost-user-ctl",
        "vamp-vu-a",
        "vamp-hub-clock",
    ];
    if with_remote {
        expected.push("vamp-remote-rin");
    }
    let deadline = Instant::now() + WAIT;
    let threads = loop {
        let threads = threads_of(backend.child.id());
        if expected
            .iter()
            .all(|name| threads.iter().any(|(comm, _, _)| comm == name))
        {
            break threads;
        }
        assert!(
            Instant::now() < deadline,
            "threads {expected:?} never all ran: {threads:?}\n{}",
            backend.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for (comm, main, mode) in &threads {
        if *main || UNCONFINED.contains(&comm.as_str()) {
            continue;
        }
        assert_eq!(
            *mode, 2,
            "thread {comm:?} runs outside the sandbox: {threads:?}"
        );
    }
    // Everything a connection does, under the filters: a reset, a disconnect, a reconnect.
    drop(a);
    drop(b);
    traffic(&sockets);
    let log = backend.log();
    assert!(!log.contains("refused system call"), "{log}");
}
