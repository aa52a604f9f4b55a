//! The vhost-user side of the hub: one socket per guest, one frontend connection at a time.
//!
//! - `mod.rs` (here): the connection's lifecycle: accept ([`serve_guest`]), start the
//!   daemon's request thread confined, withdraw the guest's link when its frontend goes.
//! - [`device`]: the guest's vhost-user device ([`RpmsgBackend`]), run by rust-vmm's daemon.
//! - [`control`]: the relay that adds device status and the backend channel.
//! - [`poll`]: polling mode: a thread that spins on polled guests' rings, their kicks off.
//!
//! The hub itself and its lock are in [`crate::hub`]; nothing here is imported back by it.

pub mod control;
pub mod device;
pub mod poll;

pub use device::{MAX_QUEUE_SIZE, RpmsgBackend, set_offer_packed};

use crate::hub::{LinkId, SharedHub, stop};
use crate::sandbox::{self, ThreadKind};
use control::{Control, ResetNotice};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Serves guest `id` on its socket until the process ends: one frontend connection at a time,
/// a fresh backend for each, the guest's link withdrawn whenever its frontend goes away.
///
/// The listening socket stays open across connections, so a frontend that reconnects (QEMU's
/// `reconnect=`) waits in its backlog instead of finding no socket.
pub fn serve_guest(
    hub: SharedHub,
    id: LinkId,
    socket: &Path,
) -> Result<(), vhost_user_backend::Error> {
    let listener =
        Listener::new(socket, true).map_err(vhost_user_backend::Error::CreateBackendListener)?;
    serve_listener(hub, id, listener, &socket.display().to_string())
}

/// [`serve_guest`] on a socket that is listening already: made by the caller (so that every
/// guest's socket exists before the process reports ready) or passed in by a supervisor.
/// `socket` names it in log lines.
pub fn serve_listener(
    hub: SharedHub,
    id: LinkId,
    listener: Listener,
    socket: &str,
) -> Result<(), vhost_user_backend::Error> {
    let name = hub.topology().guests[id].name.clone();
    if hub.claim_clock() {
        hub.spawn_clock();
    }
    let notice = Arc::new(ResetNotice::new().map_err(vhost_user_backend::Error::StartDaemon)?);
    loop {
        let mut backend = RpmsgBackend::new(hub.clone(), id);
        backend.set_reset_notice(notice.clone());
        let backend = Arc::new(RwLock::new(backend));
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(format!("vamp-vu-{name}"), backend, mem)?;
        log::info!("guest {name}: waiting for a frontend on {socket}");
        // The frontend talks to the daemon through a control thread, which adds device status
        // and the backend channel (crate::vhost_user::control).
        let mut control = None;
        let result = accept(&listener).and_then(|frontend| {
            let started = Control::start(
                frontend,
                |path| start_confined(&mut daemon, path),
                hub.clone(),
                id,
                notice.clone(),
            );
            control = Some(started.map_err(vhost_user_backend::Error::StartDaemon)?);
            daemon.wait()
        });
        // Dropping the daemon stops and joins its worker threads: only then can no late kick
        // of the old connection bring the link back up.
        drop(daemon);
        drop(control);
        hub.run_ring_work(id, stop(id, "the frontend disconnected"));
        match result {
            Ok(()) => log::info!("guest {name}: frontend disconnected"),
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => log::info!("guest {name}: frontend disconnected"),
            Err(e) => log::warn!("guest {name}: connection ended: {e}"),
        }
    }
}

/// Connects `daemon` to the control thread's private socket at `path` and starts its request
/// thread, from a short-lived thread confined as [`ThreadKind::Request`]: the request thread
/// inherits the filter, so it is confined before it reads the frontend's first message.
fn start_confined(
    daemon: &mut VhostUserDaemon<Arc<RwLock<RpmsgBackend>>>,
    path: &str,
) -> Result<(), vhost_user_backend::Error> {
    std::thread::scope(|scope| {
        let starter = std::thread::Builder::new()
            .name("vamp-vhost-start".into())
            .spawn_scoped(scope, || {
                sandbox::enter(ThreadKind::Request);
                daemon.start_client(path)
            })
            .map_err(vhost_user_backend::Error::StartDaemon)?;
        starter
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The next frontend connection on `listener`.
fn accept(
    listener: &Listener,
) -> Result<std::os::unix::net::UnixStream, vhost_user_backend::Error> {
    loop {
        match listener.accept() {
            Ok(Some(stream)) => return Ok(stream),
            Ok(None) => continue,
            Err(e) => {
                // Out of file descriptors or the like: do not spin.
                std::thread::sleep(Duration::from_millis(100));
                return Err(vhost_user_backend::Error::CreateBackendListener(e));
            }
        }
    }
}
