//! Launching `vhost-user-rpmsg` as a supervisor would: vhost-device's socket naming
//! (`-s PATH -c N`), a zero count refused, a socket that cannot be made ending the process with
//! its path named, a listening socket passed in by descriptor (`--socket-fd`), and `READY=1` on
//! `$NOTIFY_SOCKET` only once every socket listens; the example systemd units in configs/ verify.

mod common;

use common::{Guest, TempDir, WAIT, read_lossy};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use vamp_test_support::{Proc, wait_for_paths};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vhost-user-rpmsg"));
    c.env("RUST_LOG", "info").env_remove("NOTIFY_SOCKET");
    c
}

/// Starts `cmd` with its output in `log`.
fn start(mut cmd: Command, log: &Path) -> Proc {
    let file = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    Proc { child }
}

/// A notification socket bound at a path in `dir`, as a supervisor would offer.
fn notify_socket(dir: &TempDir) -> (UnixDatagram, PathBuf) {
    let path = dir.join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    (socket, path)
}

/// The next datagram on `socket` (failing the test after [`WAIT`]).
fn next_notification(socket: &UnixDatagram, log: &Path) -> String {
    let mut buf = [0u8; 256];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification ({e}); log:\n{}", read_lossy(log)));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn socket_count_appends_the_index_to_every_socket_as_vhost_device_does() {
    let dir = TempDir::new("vamp-launch-names");
    let base = dir.join("g.sock");
    for (count, expected) in [
        (None, vec![base.clone()]),
        (Some(1), vec![dir.join("g.sock0")]),
        (
            Some(3),
            vec![
                dir.join("g.sock0"),
                dir.join("g.sock1"),
                dir.join("g.sock2"),
            ],
        ),
    ] {
        let (notify, notify_path) = notify_socket(&dir);
        let log = dir.join("backend.log");
        let mut cmd = bin();
        cmd.arg("-s").arg(&base).args(["--echo", "echo"]);
        if let Some(n) = count {
            cmd.args(["-c", &n.to_string()]);
        }
        cmd.env("NOTIFY_SOCKET", &notify_path);
        let mut backend = start(cmd, &log);
        assert_eq!(next_notification(&notify, &log), "READY=1\n");
        let missing: Vec<_> = expected.iter().filter(|p| !p.exists()).collect();
        assert!(missing.is_empty(), "READY=1 before {missing:?} existed");
        // READY=1 came after every socket was listening: each serves a guest now.
        for socket in &expected {
            Guest::served_on(socket).echo_roundtrip(7);
        }
        let others: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("g.sock") && !expected.contains(p))
            .collect();
        assert!(others.is_empty(), "count {count:?}: also made {others:?}");
        backend.signal(libc::SIGTERM);
        assert!(backend.wait_exit(WAIT).is_some_and(|s| s.success()));
        drop(notify);
        std::fs::remove_file(&notify_path).unwrap();
    }
}

#[test]
fn a_status_socket_on_a_guest_socket_is_refused() {
    let dir = TempDir::new("vamp-launch-ctl-clash");
    let out = bin()
        .arg("-s")
        .arg(dir.join("g.sock"))
        .arg("--control-socket")
        .arg(dir.join("g.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("also a guest's socket"), "{err}");
    assert!(
        !dir.join("g.sock").exists(),
        "the guest's socket left behind"
    );
}

#[test]
fn socket_count_zero_is_refused() {
    let dir = TempDir::new("vamp-launch-zero");
    let out = bin()
        .arg("-s")
        .arg(dir.join("g.sock"))
        .args(["-c", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--socket-count 0"), "{err}");
    assert!(!dir.join("g.sock").exists() && !dir.join("g.sock0").exists());
}

#[test]
fn a_guest_socket_that_cannot_be_made_ends_the_process_naming_it() {
    let dir = TempDir::new("vamp-launch-bad-socket");
    let good = dir.join("alice.sock");
    let bad = dir.join("missing-dir/bob.sock");
    let cfg = dir.join("hub.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[guest]]\nname = \"alice\"\nsocket = \"{}\"\n[[guest]]\nname = \"bob\"\nsocket = \"{}\"\n",
            good.display(),
            bad.display()
        ),
    )
    .unwrap();
    let (notify, notify_path) = notify_socket(&dir);
    notify
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let log = dir.join("backend.log");
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path);
    let mut backend = start(cmd, &log);
    let status = backend.wait_exit(WAIT);
    let text = read_lossy(&log);
    assert!(
        status.is_some_and(|s| !s.success()),
        "the hub went on without bob's socket ({status:?}):\n{text}"
    );
    assert!(
        text.contains(&format!("cannot listen on {}", bad.display())),
        "{text}"
    );
    assert!(!good.exists(), "alice's socket left behind");
    let mut buf = [0u8; 64];
    assert!(notify.recv(&mut buf).is_err(), "READY=1 sent anyway");
}

#[test]
fn a_listening_socket_passed_by_descriptor_is_served_and_others_are_refused() {
    let dir = TempDir::new("vamp-launch-fd");
    let path = dir.join("passed.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    // An abstract notify socket this time (systemd uses a path; both are allowed).
    let name = format!("vamp-launch-notify-{}", std::process::id());
    let abstract_notify = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let s = UnixDatagram::bind_addr(&addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    };
    let log = dir.join("backend.log");
    let mut cmd = bin();
    cmd.args(["--socket-fd", &fd.to_string(), "--echo", "echo"])
        .env("NOTIFY_SOCKET", format!("@{name}"));
    // SAFETY: runs in the child between fork and exec and only calls fcntl (async-signal
    // safe) to let the listener's descriptor survive the exec, as a supervisor's would.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut backend = start(cmd, &log);
    drop(listener);
    assert_eq!(next_notification(&abstract_notify, &log), "READY=1\n");
    Guest::served_on(&path).echo_roundtrip(3);
    backend.signal(libc::SIGTERM);
    assert!(backend.wait_exit(WAIT).is_some_and(|s| s.success()));
    assert!(
        path.exists(),
        "the supervisor's socket is its own to remove"
    );

    // Not a socket, and a socket that does not listen: refused, saying why.
    let out = bin()
        .args(["--socket-fd", "0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("file descriptor 0 is not a socket"), "{err}");
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let afd = a.as_raw_fd();
    let mut cmd = bin();
    cmd.args(["--socket-fd", &afd.to_string()]);
    // SAFETY: as above, fcntl only, in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(afd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not listening"), "{err}");
    wait_for_paths(&[path], "the passed socket", WAIT);
}

#[test]
fn the_example_systemd_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no systemd-analyze");
        return;
    }
    let dir = TempDir::new("vamp-launch-units");
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&configs).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if !(name.ends_with(".service") || name.ends_with(".socket")) {
            continue;
        }
        // The units name the installed binary; verify them against this build's.
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "/usr/local/bin/vhost-user-rpmsg",
            env!("CARGO_BIN_EXE_vhost-user-rpmsg"),
        );
        std::fs::write(dir.join(&name), text).unwrap();
        units.push(dir.join(&name));
    }
    assert!(units.len() >= 3, "configs/ holds the units: {units:?}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
