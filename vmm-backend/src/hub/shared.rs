//! The hub shared between its threads: [`SharedHub`], the one owner of the hub's lock. It is
//! the one way to take the lock ([`SharedHub::lock`]), to have work on other guests' rings done
//! from a confined thread ([`SharedHub::run_ring_work`]), and to start the clock
//! ([`SharedHub::spawn_clock`]). The vhost-user side, the remotes, the demo and the bench all
//! reach the hub through it.

use super::{Hub, LinkId};
use crate::sandbox::{self, ThreadKind};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::Duration;

/// The hub and its lock, shared by every thread that serves a guest or a remote. Clones share
/// the one hub.
#[derive(Clone)]
pub struct SharedHub(Arc<Mutex<Hub>>);

impl std::fmt::Debug for SharedHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedHub")
    }
}

impl SharedHub {
    /// Shares `hub` between threads.
    pub fn new(hub: Hub) -> Self {
        SharedHub(Arc::new(Mutex::new(hub)))
    }

    /// Locks the hub, surviving a panic in another guest's thread: the hub's state is kept
    /// consistent between calls, so a poisoned lock only means that thread died. Counts
    /// whether the lock had to wait (`Hub::lock_counts`).
    pub fn lock(&self) -> MutexGuard<'_, Hub> {
        lock(&self.0)
    }

    /// Runs `work` on the hub from a confined thread and returns its result: here if the
    /// calling thread is confined already (the request, control and remote-ring threads), else
    /// on a thread of its own (`vamp-ring-work`) confined as [`ThreadKind::RingWork`]. For the
    /// events that make the hub write into other guests' rings (a disconnect seen by the accept
    /// thread, a remote's start or end seen by its lifecycle thread; see crate::sandbox). If no
    /// thread can be made, the work runs here, logged.
    pub fn run_ring_work<R: Send + 'static, W: FnOnce(&mut Hub) -> R + Send + 'static>(
        &self,
        work: W,
    ) -> R {
        if sandbox::is_confined() {
            return work(&mut self.lock());
        }
        let shared = self.clone();
        let slot = Arc::new(Mutex::new(Some(work)));
        let theirs = slot.clone();
        let take = |slot: &Mutex<Option<_>>| slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        let spawned = std::thread::Builder::new()
            .name("vamp-ring-work".into())
            .spawn(move || {
                sandbox::enter(ThreadKind::RingWork);
                take(&theirs).map(|work: W| work(&mut shared.lock()))
            });
        match spawned.map(|t| t.join()) {
            Ok(Ok(Some(result))) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Ok(Ok(None)) | Err(_) => {
                log::error!("cannot start a ring-work thread: the work runs unconfined");
                let work = take(&slot).expect("not taken: the thread never ran it");
                work(&mut self.lock())
            }
        }
    }

    /// Calls [`Hub::tick`] every [`TICK`] on a thread of its own, until the hub is dropped. The
    /// hub is otherwise driven by kicks alone, and a guest whose sends are blocked does not
    /// kick: without a clock, a stuck receiver would hold its senders' buffers until some other
    /// event.
    pub fn spawn_clock(&self) {
        let hub: Weak<Mutex<Hub>> = Arc::downgrade(&self.0);
        let clock = move || {
            sandbox::enter(ThreadKind::Clock);
            while let Some(hub) = hub.upgrade() {
                lock(&hub).tick();
                drop(hub);
                std::thread::sleep(TICK);
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("vamp-hub-clock".into())
            .spawn(clock)
        {
            log::error!("cannot start the hub's clock: {e}; timeouts are checked at kicks only");
        }
    }
}

fn lock(hub: &Mutex<Hub>) -> MutexGuard<'_, Hub> {
    let (mut guard, waited) = match hub.try_lock() {
        Ok(guard) => (guard, false),
        Err(TryLockError::Poisoned(poisoned)) => (poisoned.into_inner(), false),
        Err(TryLockError::WouldBlock) => (
            hub.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            true,
        ),
    };
    // Counted inside the hub, under its lock: no shared counter of its own on the hot path.
    guard.count_lock(waited);
    guard
}

/// The work of stopping guest `id`'s link, for [`SharedHub::run_ring_work`].
pub fn stop(id: LinkId, reason: impl Into<String>) -> impl FnOnce(&mut Hub) -> Option<[u16; 2]> {
    let reason = reason.into();
    move |hub| hub.stop(id, &reason)
}

/// How often the hub's clock ticks (see [`Hub::tick`]).
pub const TICK: Duration = Duration::from_millis(100);
