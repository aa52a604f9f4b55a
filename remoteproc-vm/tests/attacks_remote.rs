//! Attacks from a hostile remote on the host that runs it: terminal escapes in its console,
//! device nodes and FIFOs under the proxy's root, filling the root, a resource table that
//! claims a huge trace buffer, and a proxy root that is checked only after the remote started.

use std::ffi::CString;
use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;
use vamp_remoteproc::console::{self, MAX_CONSOLE_LINE, MAX_TRACE_READ};
use vamp_remoteproc::proxy::ProxyServer;
use vamp_remoteproc::rsc::TraceBuffer;
use vamp_rpmsg::mem::{HeapMemory, SharedMemory};
use vamp_rpmsg::wire::Endian;
use vamp_rpmsg::wire::proxy::{
    CLOSE_SYSCALL_ID, O_CREAT, O_RDONLY, O_TRUNC, O_WRONLY, OPEN_SYSCALL_ID, Syscall,
    WRITE_SYSCALL_ID,
};
use vamp_test_support::{SharedOutput, TempDir};

fn server(root: Option<&Path>) -> (ProxyServer, SharedOutput) {
    let out = SharedOutput::default();
    let s = ProxyServer::with_output(root, Box::new(out.clone()), Box::new(out.clone())).unwrap();
    (s, out)
}

/// The result field of the reply to `c`.
fn call(s: &mut ProxyServer, c: Syscall<'_>) -> i32 {
    let mut buf = vec![0u8; c.encoded_len()];
    c.encode(&mut buf, Endian::NATIVE).unwrap();
    let reply = s.handle(&buf).expect("a reply");
    Syscall::parse(&reply, Endian::NATIVE).unwrap().int_field1
}

fn open(s: &mut ProxyServer, path: &str, flags: i32) -> i32 {
    let mut p = path.as_bytes().to_vec();
    p.push(0);
    call(s, Syscall::with_data(OPEN_SYSCALL_ID, flags, 0o644, &p))
}

fn write(s: &mut ProxyServer, fd: i32, data: &[u8]) -> i32 {
    call(
        s,
        Syscall::with_data(WRITE_SYSCALL_ID, fd, data.len() as i32, data),
    )
}

/// Terminal controls a remote could use on the operator's terminal.
const HOSTILE: &[u8] = b"\x1b[2J\x1b]0;owned\x07\x9b\xc2\x9b31m\xff\rok\n";

fn has_terminal_control(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
}

#[test]
fn attack_console_escapes_never_reach_the_terminal() {
    let lines = console::escaped_lines(HOSTILE);
    assert!(lines.iter().all(|l| !has_terminal_control(l)), "{lines:?}");
    assert!(lines[0].ends_with("ok"), "{lines:?}");
    let long = console::escaped_lines(&[b'\x1b'; 10 * MAX_CONSOLE_LINE]);
    assert!(
        long[0].chars().count() < 2 * MAX_CONSOLE_LINE,
        "line not bounded"
    );

    // The proxy's console (the remote's fd 1 and 2) is escaped the same way.
    let (mut s, out) = server(None);
    assert_eq!(write(&mut s, 1, HOSTILE), HOSTILE.len() as i32);
    assert_eq!(write(&mut s, 2, HOSTILE), HOSTILE.len() as i32);
    let printed = String::from_utf8(out.bytes()).expect("valid UTF-8");
    assert!(!has_terminal_control(&printed), "{printed:?}");
    assert!(printed.contains("ok\n"), "{printed:?}");
}

/// Runs `f` on another thread and fails if it does not finish in a generous time (a blocking
/// FIFO open would never finish).
fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the proxy blocked")
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
}

/// Counts opens of files in `dir` (inotify `IN_OPEN`): an `O_PATH` look is no open.
struct OpenWatch(std::os::fd::OwnedFd);

impl OpenWatch {
    fn new(dir: &Path) -> Self {
        // SAFETY: plain syscall, no pointers.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: inotify_init1 just returned this descriptor and nothing else owns it.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let c = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `fd` is an inotify descriptor and `c` a NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                c.as_ptr(),
                libc::IN_OPEN,
            )
        };
        assert!(wd >= 0);
        OpenWatch(fd)
    }

    /// Whether a file in the directory was opened since the watch began (the directory's own
    /// opens, events without a name, do not count).
    fn opened(&self) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let events = &buf[..usize::try_from(n).unwrap_or(0)];
        let mut at = 0;
        // Each event: wd, mask, cookie, name length (u32 each), then the name.
        while at + 16 <= events.len() {
            let len = u32::from_ne_bytes(events[at + 12..at + 16].try_into().unwrap()) as usize;
            if len > 0 {
                return true;
            }
            at += 16 + len;
        }
        false
    }
}

#[test]
fn attack_proxy_fifo_and_device_nodes_are_never_opened() {
    let root_dir = TempDir::new("attack-fifo");
    let root = root_dir.path();
    mkfifo(&root.join("fifo"));
    std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
    let watch = OpenWatch::new(root);
    let (s, _) = server(Some(root));
    let (results, opened) = promptly(move || {
        let mut s = s;
        let results = [
            open(&mut s, "fifo", O_RDONLY),
            open(&mut s, "fifo", O_WRONLY),
            open(&mut s, "fifo", O_WRONLY | O_CREAT | O_TRUNC),
            open(&mut s, "zero", O_RDONLY),
        ];
        (results, watch.opened())
    });
    assert!(results.iter().all(|&r| r < 0), "{results:?}");
    assert!(!opened, "the proxy opened a FIFO under its root");
    // A device node itself (not a link) under the root: refused without being opened.
    let c = CString::new(root.join("null").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0 {
        let watch = OpenWatch::new(root);
        let (mut s, _) = server(Some(root));
        assert_eq!(open(&mut s, "null", O_WRONLY), -libc::EACCES);
        assert!(!watch.opened(), "the proxy opened a device node");
    } else {
        eprintln!("skipped the mknod part: {}", io::Error::last_os_error());
    }
}

#[test]
fn attack_proxy_quotas_refuse_and_the_host_lives() {
    let root_dir = TempDir::new("attack-quota");
    let root = root_dir.path();
    let (mut s, _) = server(Some(root));
    s.set_quota(1000, 2);
    let fd = open(&mut s, "a", O_WRONLY | O_CREAT | O_TRUNC);
    assert!(fd >= 0);
    assert_eq!(write(&mut s, fd, &[b'x'; 400]), 400);
    assert_eq!(write(&mut s, fd, &[b'x'; 400]), 400);
    assert_eq!(write(&mut s, fd, &[b'x'; 400]), -libc::EDQUOT);
    assert_eq!(std::fs::metadata(root.join("a")).unwrap().len(), 800);
    assert_eq!(
        call(&mut s, Syscall::with_data(CLOSE_SYSCALL_ID, fd, 0, &[])),
        0
    );
    let fd = open(&mut s, "b", O_WRONLY | O_CREAT);
    assert!(fd >= 0);
    assert_eq!(open(&mut s, "c", O_WRONLY | O_CREAT), -libc::EDQUOT);
    assert!(!root.join("c").exists());
    // Reopening an existing file creates nothing: allowed.
    assert!(open(&mut s, "a", O_RDONLY) >= 0);
}

#[test]
fn attack_huge_trace_buffer_read_is_capped() {
    let mem = HeapMemory::new(64 << 20, 0);
    mem.fill(0, 64 << 20, b'A').unwrap();
    let trace = TraceBuffer {
        index: 0,
        name: "trace0".into(),
        da: 0,
        len: 64 << 20,
    };
    let text = trace.read_trace(&mem).unwrap();
    assert_eq!(text.len(), MAX_TRACE_READ);
}

#[test]
fn attack_missing_proxy_root_fails_before_the_remote_starts() {
    let dir = TempDir::new("attack-missing");
    let missing = dir.join("not-there");
    let out = Command::new(env!("CARGO_BIN_EXE_remoteproc-vm"))
        .args(["run", "proxy", "--proxy-root"])
        .arg(&missing)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--proxy-root"), "{stderr}");
    assert!(
        !stdout.contains("started"),
        "the remote ran first: {stdout}"
    );
}

#[test]
fn attack_proxy_quota_from_the_command_line() {
    if let Err(why) = vamp_remoteproc::kvm::kvm_available() {
        eprintln!("skipped: {why}");
        return;
    }
    let root_dir = TempDir::new("attack-cli-quota");
    let root = root_dir.path();
    let out = Command::new(env!("CARGO_BIN_EXE_remoteproc-vm"))
        .args(["run", "proxy", "--proxy-max-bytes", "100", "--proxy-root"])
        .arg(root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The firmware's file write is refused; it reports that, terminates the proxy and exits 1.
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("proxy: FAILED: short or failed write"),
        "{stdout}"
    );
    let written = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum::<u64>();
    assert!(written <= 100, "{written} bytes written");
}
