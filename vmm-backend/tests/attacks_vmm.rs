//! Attacks by a guest's VMM on the memory behind its regions, run against the real
//! `vhost-user-rpmsg` binary with its default sandbox.
//!
//! - a VMM that truncates its memory file after SET_MEM_TABLE and kicks: the hub's access to
//!   the lost pages is survived (SIGBUS recovered), only that guest's link breaks
//!   (DEVICE_NEEDS_RESET), two well-behaved guests keep exchanging messages, the log stays
//!   small; with the default sandbox and with `--no-sandbox`;
//! - a memory table whose regions reach past the end of their file (one region twice its
//!   file, seven 16 TiB regions over an 8 MiB file) is refused at SET_MEM_TABLE with an error
//!   the frontend sees; the process lives and two well-behaved guests keep exchanging messages
//!   before and after.

mod common;

use common::{Guest, TXQ, TempDir, WAIT, count_lines, kick, read_lossy, spawn_backend};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::time::Instant;
use vamp_test_support::wait_for_paths;
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest, shared_file_region};
use vhost::VhostBackend;
use vhost::VhostUserMemoryRegionInfo;

/// The binary serving three guests (`g.sock0..2`) with a host "echo" service.
fn start_backend(dir: &TempDir, extra: &[&str]) -> (common::Proc, Vec<PathBuf>, PathBuf) {
    let base = dir.path().join("g.sock");
    let log = dir.path().join("backend.log");
    let mut args = vec![
        "--socket-path".to_string(),
        base.display().to_string(),
        "--socket-count".to_string(),
        "3".to_string(),
        "--echo".to_string(),
        "echo".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let backend = spawn_backend(&args, &log);
    let sockets: Vec<PathBuf> = (0..3)
        .map(|i| PathBuf::from(format!("{}{i}", base.display())))
        .collect();
    wait_for_paths(&sockets, "the backend's sockets", WAIT);
    (backend, sockets, log)
}

/// A memfd of `len` bytes, as a VMM would back its RAM with.
fn memfd(len: u64) -> File {
    // SAFETY: a fresh memfd, owned by the File below and nothing else.
    let fd = unsafe { libc::memfd_create(c"attacker-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).unwrap();
    file
}

/// `count` regions of `size` bytes each, one after the other, all at offset 0 of `file`.
fn regions(file: &File, count: u64, size: u64) -> Vec<VhostUserMemoryRegionInfo> {
    (0..count)
        .map(|i| {
            shared_file_region(
                i * size,
                size,
                0x1000_0000_0000 + i * size,
                0,
                file.as_raw_fd(),
            )
        })
        .collect()
}

#[test]
fn attack_memory_table_larger_than_file() {
    let dir = TempDir::new("attack-mem-table");
    let (mut backend, sockets, log) = start_backend(&dir, &[]);
    let mut a = Guest::served_on(&sockets[0]);
    let mut b = Guest::served_on(&sockets[1]);
    a.echo_roundtrip(1);
    b.echo_roundtrip(2);

    let mut attacker = NativeGuest::connect(&sockets[2], GuestOptions::default()).unwrap();
    assert!(
        attacker
            .protocol_features()
            .contains(vhost::vhost_user::message::VhostUserProtocolFeatures::REPLY_ACK),
        "the refusal is seen through REPLY_ACK"
    );
    const MIB: u64 = 1 << 20;
    const TIB: u64 = 1 << 40;
    let file = memfd(8 * MIB);
    let tables = [
        ("16 MiB over an 8 MiB file", regions(&file, 1, 16 * MIB)),
        (
            "seven 16 TiB regions over an 8 MiB file",
            regions(&file, 7, 16 * TIB),
        ),
    ];
    for (what, table) in &tables {
        let result = attacker.frontend_mut().set_mem_table(table);
        assert!(result.is_err(), "{what}: accepted\n{}", read_lossy(&log));
        assert!(backend.exited().is_none(), "{what}: the backend died");
        a.echo_roundtrip(3);
        b.echo_roundtrip(4);
        // vhost-user-backend ends a connection whose request failed: the VMM reconnects.
        drop(attacker);
        attacker = NativeGuest::connect(&sockets[2], GuestOptions::default()).unwrap();
    }
    // The attacker's guest, with a table that fits its file, is served again.
    drop(attacker);
    let mut c = Guest::served_on(&sockets[2]);
    c.echo_roundtrip(5);
    a.echo_roundtrip(6);
    b.echo_roundtrip(7);
    let text = read_lossy(&log);
    assert!(
        count_lines(&text, "memory table refused") >= 1,
        "the refusal is logged: {text}"
    );
    assert!(text.contains("past the end of its file"), "{text}");
    assert!(text.contains("more than the bound"), "{text}");
    assert!(backend.exited().is_none(), "the backend died: {text}");
}

fn shrink_memory_file(extra: &[&str]) {
    let dir = TempDir::new(&format!("attack-shrink{}", extra.len()));
    let (mut backend, sockets, log) = start_backend(&dir, extra);
    let mut a = Guest::served_on(&sockets[0]);
    let mut b = Guest::served_on(&sockets[1]);
    a.echo_roundtrip(1);
    b.echo_roundtrip(2);

    let mut attacker = Guest::served_on(&sockets[2]);
    attacker.echo_roundtrip(3);
    let fd = attacker.g.memory().fd();
    let size = attacker.g.memory().size() as libc::off_t;
    // SAFETY: truncating the attacker's own memfd; the test touches that memory no more
    // until the file has its size back.
    assert_eq!(unsafe { libc::ftruncate(fd, 0) }, 0);
    kick(&mut attacker.g, TXQ);
    let deadline = Instant::now() + WAIT;
    loop {
        a.echo_roundtrip(4);
        b.echo_roundtrip(5);
        assert!(
            backend.exited().is_none(),
            "the backend died: {}",
            read_lossy(&log)
        );
        if attacker.g.needs_reset().unwrap_or(false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the attacker's link was never broken: {}",
            read_lossy(&log)
        );
        kick(&mut attacker.g, TXQ);
    }
    // SAFETY: as above: the file gets its size back (zeros) before the test drops the guest.
    assert_eq!(unsafe { libc::ftruncate(fd, size) }, 0);
    for tag in 6..20 {
        a.echo_roundtrip(tag);
        b.echo_roundtrip(tag);
    }
    assert!(backend.exited().is_none(), "the backend died");
    let text = read_lossy(&log);
    assert!(text.contains("its memory vanished"), "{text}");
    let lines = text.lines().count();
    assert!(lines < 500, "the log grew to {lines} lines");
}

#[test]
fn attack_vmm_shrinks_memory_file() {
    shrink_memory_file(&[]);
}

#[test]
fn attack_vmm_shrinks_memory_file_without_sandbox() {
    shrink_memory_file(&["--no-sandbox"]);
}
