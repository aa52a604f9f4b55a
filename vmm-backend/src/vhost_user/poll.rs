//! Polling mode (`vhost-user-rpmsg --poll`, or `poll = true` for a guest in the topology):
//! instead of waiting for a guest's kicks, the hub asks the guest not to kick and spins on
//! its rings from a thread of its own, until the guest has been quiet for its quiet period.
//!
//! One poll thread per process (`vamp-hub-poll`, confined as [`ThreadKind::Poll`]) serves
//! every polled guest in turn, one hub service call each per round, so that however many
//! guests poll, one CPU spins, and no guest waits for another's turn longer than one bounded
//! call ([`POLL_BUDGET`](crate::hub::POLL_BUDGET) messages). For each guest:
//!
//! 1. A kick (handled on the guest's vring worker, which serves the rings as always) starts
//!    polling: the next round asks the guest not to kick (split rings: VRING_USED_F_NO_NOTIFY,
//!    or with EVENT_IDX an `avail_event` out of reach; packed rings: DISABLE in the device
//!    event structure) and serves its rings.
//! 2. Each round serves the rings through the same call a kick makes
//!    (`device::serve_rings`); a round that takes something restarts
//!    the quiet period.
//! 3. After the quiet period with nothing taken, kicks are enabled again and then the rings
//!    are served once more (enable, then check, as virtio requires: whatever the guest made
//!    available before it saw kicks enabled is found by that check, whatever after it is
//!    kicked for). Work found there keeps the guest polled; otherwise it waits for its next
//!    kick, back at 1.
//!
//! The hub's interrupts to the guest are untouched: they follow the guest's own suppression.
//! The poll thread never brings a link up (a kick does) and leaves a guest whose link went
//! down until its next kick. Polling a guest pauses (`Job::pause`) before its rings are
//! stopped or reset, until its next kick, and its job is withdrawn (`Job::withdraw`) when its
//! connection goes: once either returns, no round is under way, and after a withdrawal the
//! poll thread never touches the guest again. A flooding guest keeps being polled, each round bounded, the
//! hub's lock released between rounds; the thread that wants a job's state (a kick, a stop)
//! gets it before the next round of that job (`Job::wanted`).

use super::device::{Kicks, record, serve_rings};
use crate::guest_memory::GuestRam;
use crate::hub::{LinkId, Notifier, RingsInfo, SharedHub};
use crate::sandbox::{self, ThreadKind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use vhost_user_backend::VringRwLock;

/// Quiet period of a polled guest unless its topology entry or `--poll-quiet-ms` says
/// otherwise: long enough that a guest exchanging messages every few milliseconds stays
/// polled (no kick at all), short enough that an idle guest stops costing a spinning CPU
/// within a tenth of a second.
pub const DEFAULT_QUIET: Duration = Duration::from_millis(100);

/// Longest quiet period a topology may ask for (a minute).
pub const MAX_QUIET_MS: u64 = 60_000;

/// Consecutive rounds that took nothing after which the poll thread yields its CPU once:
/// other threads on the same CPU (a guest's own busy-polling thread, the hub's workers) run
/// within a few rounds instead of at the scheduler's next time slice. With the hub and a
/// busy-polling echo guest on one CPU, `vamp bench` measured guest -> hub -> guest at 4.5 us
/// (p50) with 4, 20 us with 64; alone on its CPU the poll thread loses nothing measurable.
const YIELD_EVERY: u32 = 4;

/// What a polled guest's rings are served with: set at its kicks.
struct Rings {
    ram: GuestRam,
    info: RingsInfo,
    vrings: Vec<VringRwLock>,
    notifier: Arc<dyn Notifier>,
}

/// Where a polled guest stands.
struct JobState {
    hub: SharedHub,
    id: LinkId,
    quiet: Duration,
    rings: Option<Rings>,
    /// Spinning on the rings (else waiting for a kick).
    polling: bool,
    /// When a round last took something, and the hub's count of events taken then.
    last_work: Instant,
    taken: u64,
    /// Withdrawn: never served again.
    gone: bool,
}

/// One polled guest's connection, shared by its backend (which kicks and withdraws it) and
/// the poll thread.
pub(super) struct Job {
    /// Threads waiting for `state` (a kick, a stop): while any is, the poll thread leaves the
    /// job alone, so that it cannot keep the lock from them by taking it round after round.
    wanted: AtomicUsize,
    state: Mutex<JobState>,
}

impl Job {
    /// A job for guest `id` of `hub`, registered with the poll thread, waiting for a kick.
    pub(super) fn register(hub: SharedHub, id: LinkId, quiet: Duration) -> Arc<Job> {
        let job = Arc::new(Job {
            wanted: AtomicUsize::new(0),
            state: Mutex::new(JobState {
                hub,
                id,
                quiet,
                rings: None,
                polling: false,
                last_work: Instant::now(),
                taken: 0,
                gone: false,
            }),
        });
        let poller = poller();
        let mut jobs = relock(&poller.jobs);
        jobs.list.push(job.clone());
        jobs.generation += 1;
        job
    }

    /// The state, ahead of the poll thread.
    fn state(&self) -> MutexGuard<'_, JobState> {
        self.wanted.fetch_add(1, Ordering::SeqCst);
        let state = relock(&self.state);
        self.wanted.fetch_sub(1, Ordering::SeqCst);
        state
    }

    /// The guest kicked (its rings were just served): poll them from now on, with `ram` and
    /// the rings as they stand.
    pub(super) fn kicked(
        &self,
        ram: &GuestRam,
        info: RingsInfo,
        vrings: &[VringRwLock],
        notifier: &Arc<dyn Notifier>,
    ) {
        {
            let mut state = self.state();
            if state.gone {
                return;
            }
            state.rings = Some(Rings {
                ram: ram.clone(),
                info,
                vrings: vrings.to_vec(),
                notifier: notifier.clone(),
            });
            if !state.polling {
                state.polling = true;
                state.last_work = Instant::now();
                let taken = state.hub.link(state.id).events_taken(state.id);
                state.taken = taken;
            }
        }
        let poller = poller();
        relock(&poller.jobs).wake = true;
        poller.wake.notify_one();
    }

    /// The guest's memory table changed: rounds from now on read `ram`.
    pub(super) fn set_memory(&self, ram: &GuestRam) {
        if let Some(rings) = self.state().rings.as_mut() {
            rings.ram = ram.clone();
        }
    }

    /// Stops polling the guest until its next kick (its rings are about to be stopped or
    /// reset, or its memory table was refused). Once this returns, no round is under way.
    pub(super) fn pause(&self) {
        let mut state = self.state();
        state.polling = false;
        state.rings = None;
    }

    /// Withdraws the job for good (the connection is going). Once this returns, the poll
    /// thread is not serving it and never will.
    pub(super) fn withdraw(self: &Arc<Self>) {
        {
            let mut state = self.state();
            state.gone = true;
            state.polling = false;
            state.rings = None;
        }
        let poller = poller();
        let mut jobs = relock(&poller.jobs);
        jobs.list.retain(|j| !Arc::ptr_eq(j, self));
        jobs.generation += 1;
    }

    /// One round of the poll thread on this job, if it is polling and nobody waits for it.
    fn round(&self) -> Round {
        if self.wanted.load(Ordering::SeqCst) > 0 {
            // Its kick or stop goes first; polled again next round.
            return Round::Quiet;
        }
        let Ok(mut state) = self.state.try_lock() else {
            return Round::Quiet;
        };
        if state.gone || !state.polling {
            return Round::Off;
        }
        let state = &mut *state;
        let Some(rings) = state.rings.as_ref() else {
            state.polling = false;
            return Round::Off;
        };
        let serve = |kicks| {
            let served = serve_rings(
                &state.hub,
                state.id,
                &rings.ram,
                rings.info,
                &rings.notifier,
                kicks,
            );
            if let Some(at) = served.as_ref().and_then(|s| s.at) {
                record(&rings.vrings, at);
            }
            served
        };
        // The link went down (stopped, broken): a kick brings it up and polling back.
        let Some(served) = serve(Kicks::Suppress) else {
            state.polling = false;
            return Round::Off;
        };
        let now = Instant::now();
        if served.taken != state.taken {
            state.taken = served.taken;
            state.last_work = now;
            return Round::Worked;
        }
        if now.duration_since(state.last_work) < state.quiet {
            return Round::Quiet;
        }
        // Quiet: kicks on, then one more look.
        let again = serve(Kicks::Enable);
        match again {
            Some(s) if s.taken != state.taken => {
                state.taken = s.taken;
                state.last_work = now;
                Round::Worked
            }
            _ => {
                state.polling = false;
                Round::Off
            }
        }
    }
}

/// What one round did for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Not polling (waits for a kick).
    Off,
    /// Polling; nothing taken this round.
    Quiet,
    /// Polling; something taken.
    Worked,
}

/// The registered jobs, and the poll thread's wake-up.
struct Jobs {
    list: Vec<Arc<Job>>,
    /// Changes whenever `list` does (the thread copies the list only then).
    generation: u64,
    /// A kick since the thread last looked.
    wake: bool,
}

/// The process's poll thread and its jobs.
struct Poller {
    jobs: Mutex<Jobs>,
    wake: Condvar,
}

/// The process's poller, its thread started at the first call.
fn poller() -> &'static Poller {
    static POLLER: OnceLock<Poller> = OnceLock::new();
    let mut fresh = false;
    let poller = POLLER.get_or_init(|| {
        fresh = true;
        Poller {
            jobs: Mutex::new(Jobs {
                list: Vec::new(),
                generation: 0,
                wake: false,
            }),
            wake: Condvar::new(),
        }
    });
    if fresh {
        let spawned = std::thread::Builder::new()
            .name("vamp-hub-poll".into())
            .spawn(move || run(poller));
        if let Err(e) = spawned {
            log::error!(
                "cannot start the poll thread: {e}; polled guests are served at their kicks"
            );
        }
    }
    poller
}

/// The poll thread: rounds over the polling jobs; asleep while none polls.
fn run(poller: &'static Poller) {
    // Before any guest's rings are read.
    sandbox::enter(ThreadKind::Poll);
    let mut jobs: Vec<Arc<Job>> = Vec::new();
    let mut seen = u64::MAX;
    let mut idle_rounds = 0u32;
    loop {
        {
            let mut shared = relock(&poller.jobs);
            if shared.generation != seen {
                seen = shared.generation;
                jobs.clone_from(&shared.list);
            }
            shared.wake = false;
        }
        let mut polling = false;
        let mut taken = false;
        for job in &jobs {
            let round = job.round();
            polling |= round != Round::Off;
            taken |= round == Round::Worked;
        }
        if !polling {
            let mut shared = relock(&poller.jobs);
            while !shared.wake && shared.generation == seen {
                shared = poller.wake.wait(shared).unwrap_or_else(|p| p.into_inner());
            }
            continue;
        }
        idle_rounds = if taken { 0 } else { idle_rounds + 1 };
        if idle_rounds >= YIELD_EVERY {
            idle_rounds = 0;
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
