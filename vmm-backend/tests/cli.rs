//! The `vhost-user-rpmsg` command line: start-up, clean exit on signals, clear errors.

use std::process::Command;
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vhost-user-rpmsg"))
}

#[test]
fn sigterm_and_sigint_stop_it_cleanly_and_remove_its_sockets() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let base =
            std::env::temp_dir().join(format!("vamp-cli-{}-{signal}.sock", std::process::id()));
        let mut child = bin()
            .arg("--socket-path")
            .arg(&base)
            .args(["--socket-count", "2", "--echo", "rpmsg-client-sample"])
            .spawn()
            .unwrap();
        let sockets = [0, 1].map(|i| format!("{}{i}", base.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sockets.iter().all(|s| std::path::Path::new(s).exists()) {
            assert!(Instant::now() < deadline, "sockets never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: signals a child process we started and have not reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert!(status.success(), "signal {signal}: {status}");
        for s in &sockets {
            assert!(!std::path::Path::new(s).exists(), "{s} left behind");
        }
    }
}

#[test]
fn bad_arguments_and_configs_are_refused_with_reasons() {
    let out = bin().output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--socket-path"));

    let out = bin()
        .args(["--config", "/nonexistent/vamp.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/vamp.toml"));

    let dir = std::env::temp_dir().join(format!("vamp-cli-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "[[guest]]\nname = \"a\"\nsocket = \"/tmp/x\"\n[[channel]]\nfrom = \"b\"\nto = [\"a\"]\n",
    )
    .unwrap();
    let out = bin().arg("--config").arg(&cfg).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown guest \"b\""),
        "{out:?}"
    );
}
