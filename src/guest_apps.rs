//! The echo demo's programs as native guests of the vhost-user hub: vamp's own vhost-user
//! frontend plays a guest with the driver role, no QEMU needed.

use std::path::Path;
use std::time::Duration;
use vamp_rpmsg::apps::EnvWaiter;
use vamp_rpmsg::apps::{AppError, EchoService, PingSummary, ping, serve_echo};
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest};

fn connect(socket: &Path, tag: &str) -> Result<NativeGuest, AppError> {
    let opts = GuestOptions {
        connect_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let guest = NativeGuest::connect(socket, opts).map_err(|e| AppError::Link(e.to_string()))?;
    println!(
        "[{tag}] pid {}: connected to the hub on {}",
        std::process::id(),
        socket.display()
    );
    Ok(guest)
}

/// A guest that offers an echo under `name` until told to stop.
pub fn run_offer(socket: &Path, name: &str, tag: &str) -> Result<EchoService, AppError> {
    let mut guest = connect(socket, tag)?;
    serve_echo(guest.rpmsg(), &mut EnvWaiter, name, tag)
}

/// A guest that finds `name` through the hub and pings it `count` times.
pub fn run_ping(
    socket: &Path,
    name: &str,
    count: u32,
    timeout: Duration,
    tag: &str,
) -> Result<PingSummary, AppError> {
    let mut guest = connect(socket, tag)?;
    ping(guest.rpmsg(), &mut EnvWaiter, name, count, timeout, tag)
}
