//! `vamp demo`: the main job, with nothing installed beyond Rust.
//!
//! Two processes, one in each virtio role, over OpenAMP's native-Linux link: this process
//! starts a copy of itself as the echo remote (device role), then acts as the host (driver
//! role): it finds the remote's channel by name service and exchanges messages with it.

use crate::native_apps::{AppError, run_ping_host};
use std::process::{Command, Stdio};
use std::time::Duration;
use vamp_rpmsg::native;

/// Runs the demo with `count` messages. Returns whether every echo matched and the remote
/// stopped cleanly.
pub fn run(count: u32) -> Result<bool, AppError> {
    let paths = native::private_paths("demo");
    println!("vamp demo: two processes, one RPMsg link (OpenAMP native-Linux layout)");
    println!("  shared memory: {}", paths.shm.display());
    println!("  kick socket:   {}", paths.socket.display());
    let exe = std::env::current_exe().map_err(|e| native::NativeError::Io("find own binary", e))?;
    let mut remote = Command::new(exe)
        .args(["native", "--role", "remote", "--timeout", "30"])
        .arg("--shm")
        .arg(&paths.shm)
        .arg("--socket")
        .arg(&paths.socket)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| native::NativeError::Io("start the remote process", e))?;
    let result = run_ping_host(&paths, Duration::from_secs(30), count, "host");
    if result.is_err() {
        let _ = remote.kill();
    }
    let status = remote
        .wait()
        .map_err(|e| native::NativeError::Io("wait for the remote", e))?;
    native::cleanup(&paths);
    let summary = result?;
    println!(
        "summary: {} messages of 1..496 bytes, {} matched; round trip p50 {} us, p99 {} us; remote exited {}",
        summary.sent,
        summary.matched,
        summary.percentile(0.5),
        summary.percentile(0.99),
        status
    );
    Ok(summary.all_matched() && status.success())
}
