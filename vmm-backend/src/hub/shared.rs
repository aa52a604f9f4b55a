//! The hub shared between its threads: [`SharedHub`], the one owner of the hub's locks. It is
//! the one way to take them ([`SharedHub::link`]), to serve a guest's kick
//! ([`SharedHub::service`]), to have work on other guests' rings done from a confined thread
//! ([`SharedHub::run_ring_work`]), and to start the clock ([`SharedHub::spawn_clock`]). The
//! vhost-user side, the remotes, the demo and the bench all reach the hub through it.
//!
//! # Locks
//!
//! The hub is split into parts that share nothing ([`Hub::split`]): one per group of links the
//! topology's channels connect, since a message, a name or a held buffer can only ever pass
//! along a channel (a host service answers on its caller's own link). Each part has a lock of
//! its own, so guests of different parts (two disjoint pairs, or guests that only talk to host
//! services) never wait for each other, whatever CPUs they run on. Guests of one part still
//! share its lock.
//!
//! Lock order, deadlock-free by construction: a thread holds at most one part's lock at a time.
//! Every call here takes one, does its work and lets go before it takes another (the clock, the
//! status and the invariant check visit the parts one after the other), and nothing called
//! under a part's lock takes another lock of the hub (a [`Notifier`](super::Notifier) only
//! signals).

use super::{Hub, HubStatus, LinkId, RingsInfo};
use crate::config::Topology;
use crate::guest_memory::{GuestRam, take_faults};
use crate::sandbox::{self, ThreadKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::Duration;

/// The hub and its locks, shared by every thread that serves a guest or a remote. Clones share
/// the one hub.
#[derive(Clone)]
pub struct SharedHub(Arc<Parts>);

/// The parts of one hub, each behind its own lock.
struct Parts {
    topology: Arc<Topology>,
    parts: Vec<Mutex<Hub>>,
    /// The part serving each link, by topology index.
    part_of: Vec<usize>,
    /// Someone calls [`Hub::tick`] on every part periodically.
    clock_claimed: AtomicBool,
}

impl std::fmt::Debug for SharedHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedHub({} parts)", self.0.parts.len())
    }
}

impl SharedHub {
    /// Shares `hub` between threads, split into parts with a lock each ([`Hub::split`]; a hub
    /// in use already stays one part).
    pub fn new(hub: Hub) -> Self {
        let topology = hub.topology.clone();
        let parts = hub.split();
        let links = topology.guests.len() + topology.remotes.len();
        let mut part_of = vec![0; links];
        for (index, part) in parts.iter().enumerate() {
            for &id in part.members() {
                part_of[id] = index;
            }
        }
        SharedHub(Arc::new(Parts {
            topology,
            parts: parts.into_iter().map(Mutex::new).collect(),
            part_of,
            clock_claimed: AtomicBool::new(false),
        }))
    }

    /// The topology (fixed for the hub's life: no lock needed).
    pub fn topology(&self) -> &Topology {
        &self.0.topology
    }

    /// Locks the part of the hub that serves link `id` (an index out of range gets a part that
    /// serves no such link: its calls find nothing), surviving a panic in another guest's
    /// thread: the hub's state is kept consistent between calls, so a poisoned lock only means
    /// that thread died. Counts whether the lock had to wait ([`Hub::lock_counts`]). Hold it
    /// only for calls about links of that part (see the lock order above).
    pub fn link(&self, id: LinkId) -> MutexGuard<'_, Hub> {
        lock(self.part(id))
    }

    fn part(&self, id: LinkId) -> &Mutex<Hub> {
        let index = self.0.part_of.get(id).copied().unwrap_or(0);
        &self.0.parts[index]
    }

    /// Serves a kick of guest `id` ([`Hub::service`]) under its part's lock alone: the entry
    /// point for whatever learns that a guest's rings have news (its kick eventfd, a poll).
    /// Memory that vanished under any thread since (this one or another) then costs its own
    /// guest its link (see crate::guest_memory), under that guest's part's lock.
    pub fn service(
        &self,
        id: LinkId,
        mem: &GuestRam,
        info: RingsInfo,
        notifier: &Arc<dyn super::Notifier>,
    ) -> Option<[u16; 2]> {
        self.serve_with(id, |part| part.service(id, mem, info, notifier))
    }

    /// Runs `serve` (a service of guest `id`'s rings and what goes with it: a poll round's
    /// kick suppression) under the lock of `id`'s part, then breaks the links whose memory
    /// vanished meanwhile, each under its own part's lock: [`service`](Self::service) for
    /// callers that need more than the service itself in the same critical section.
    pub fn serve_with<R>(&self, id: LinkId, serve: impl FnOnce(&mut Hub) -> R) -> R {
        let mut part = self.link(id);
        let result = serve(&mut part);
        let mut elsewhere = Vec::new();
        for owner in take_faults() {
            if part.members().binary_search(&owner).is_ok() {
                part.break_memory_fault(owner);
            } else {
                elsewhere.push(owner);
            }
        }
        drop(part);
        for owner in elsewhere {
            self.link(owner).break_memory_fault(owner);
        }
        result
    }

    /// Runs `work` on the part serving link `id` from a confined thread and returns its
    /// result: here if the calling thread is confined already (the request, control and
    /// remote-ring threads), else on a thread of its own (`vamp-ring-work`) confined as
    /// [`ThreadKind::RingWork`]. For the events that make the hub write into other guests'
    /// rings (a disconnect seen by the accept thread, a remote's start or end seen by its
    /// lifecycle thread; see crate::sandbox). If no thread can be made, the work runs here,
    /// logged.
    pub fn run_ring_work<R: Send + 'static, W: FnOnce(&mut Hub) -> R + Send + 'static>(
        &self,
        id: LinkId,
        work: W,
    ) -> R {
        if sandbox::is_confined() {
            return work(&mut self.link(id));
        }
        let shared = self.clone();
        let slot = Arc::new(Mutex::new(Some(work)));
        let theirs = slot.clone();
        let take = |slot: &Mutex<Option<_>>| slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        let spawned = std::thread::Builder::new()
            .name("vamp-ring-work".into())
            .spawn(move || {
                sandbox::enter(ThreadKind::RingWork);
                take(&theirs).map(|work: W| work(&mut shared.link(id)))
            });
        match spawned.map(|t| t.join()) {
            Ok(Ok(Some(result))) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Ok(Ok(None)) | Err(_) => {
                log::error!("cannot start a ring-work thread: the work runs unconfined");
                let work = take(&slot).expect("not taken: the thread never ran it");
                work(&mut self.link(id))
            }
        }
    }

    /// Returns `true` once: the caller is to start the clock ([`spawn_clock`](Self::spawn_clock);
    /// `serve_guest` does, for the first guest served).
    pub fn claim_clock(&self) -> bool {
        !self.0.clock_claimed.swap(true, Ordering::AcqRel)
    }

    /// Calls [`Hub::tick`] on every part every [`TICK`], one part at a time, on a thread of
    /// its own, until the hub is dropped. The hub is otherwise driven by kicks alone, and a
    /// guest whose sends are blocked does not kick: without a clock, a stuck receiver would
    /// hold its senders' buffers until some other event.
    pub fn spawn_clock(&self) {
        let hub: Weak<Parts> = Arc::downgrade(&self.0);
        let clock = move || {
            sandbox::enter(ThreadKind::Clock);
            while let Some(hub) = hub.upgrade() {
                for part in &hub.parts {
                    lock(part).tick();
                }
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

    /// [`Hub::status`] of the whole hub: each part's copy is consistent (taken under its lock;
    /// parts share nothing), the links in topology order and the lock counts summed.
    pub fn status(&self) -> HubStatus {
        let mut links: Vec<_> = Vec::new();
        let (mut taken, mut waited) = (0, 0);
        for part in &self.0.parts {
            let part = lock(part);
            let status = part.status();
            taken += status.lock_taken;
            waited += status.lock_waited;
            links.extend(part.members().iter().copied().zip(status.links));
        }
        links.sort_by_key(|(id, _)| *id);
        HubStatus {
            links: links.into_iter().map(|(_, l)| l).collect(),
            lock_taken: taken,
            lock_waited: waited,
        }
    }

    /// [`Hub::check_invariants`] of every part.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        self.0
            .parts
            .iter()
            .try_for_each(|part| lock(part).check_invariants())
    }

    /// How often the hub's locks were taken, and how often that had to wait for another
    /// thread, summed over the parts ([`Hub::lock_counts`]). Only threads serving links of one
    /// part (or the clock and status requests, which visit every part) can wait for each other:
    /// a wait is never between guests of different parts.
    pub fn lock_counts(&self) -> (u64, u64) {
        self.0.parts.iter().fold((0, 0), |(t, w), part| {
            let (pt, pw) = lock(part).lock_counts();
            (t + pt, w + pw)
        })
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
    // Counted inside the part, under its lock: no shared counter of its own on the hot path.
    guard.count_lock(waited);
    guard
}

/// The work of stopping guest `id`'s link, for [`SharedHub::run_ring_work`] (on `id`).
pub fn stop(id: LinkId, reason: impl Into<String>) -> impl FnOnce(&mut Hub) -> Option<[u16; 2]> {
    let reason = reason.into();
    move |hub| hub.stop(id, &reason)
}

/// How often the hub's clock ticks (see [`Hub::tick`]).
pub const TICK: Duration = Duration::from_millis(100);
