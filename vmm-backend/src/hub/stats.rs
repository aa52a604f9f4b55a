//! What the hub counts and how it logs: each guest's [`LinkStats`] (with drops by
//! [`DropReason`]), a consistent copy of all of it for operators ([`Hub::status`]: links,
//! names, counters, remotes), and [`Reports`], the one rate limit every log line a guest can
//! cause goes through (a guest can send garbage, announce, reconnect or break at line rate:
//! none of that may flood the log).
//!
//! The counters are plain integers in each guest's slot, bumped by the thread that holds the
//! hub's lock anyway: counting adds no lock and no atomic to the hot path. [`Hub::status`]
//! copies them out under that same lock, in time proportional to the links and names.

use super::link::{LinkTransport, Slot};
use super::{Hub, LinkId};
use serde::Serialize;

/// Why a message from a guest was not delivered: one counter each in
/// [`LinkStats::dropped_by`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The engine refused what the guest put in its ring: a short or lying header, a malformed
    /// name-service message.
    Malformed,
    /// Addressed where nothing leads (an address the hub never gave it, or one whose route
    /// is gone), or from source ANY.
    NoRoute,
    /// Refused by a bound: too many names announced, too many reply proxies, an announcement
    /// at an unusable name or address.
    Limit,
    /// The receiver's link went down (or was never up) before it took the message.
    ReceiverGone,
    /// The receiver took no message for the pending timeout: what waited for it, and what
    /// came while it took none, was dropped.
    ReceiverStalled,
    /// The sender's share of the receiver's queue was full.
    QueueFull,
    /// Copying into the receiver's ring failed (its ring broke, or the payload did not fit).
    DeliveryFailed,
}

impl DropReason {
    /// Every reason, in the order of [`LinkStats::dropped_by`].
    pub const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::NoRoute,
        DropReason::Limit,
        DropReason::ReceiverGone,
        DropReason::ReceiverStalled,
        DropReason::QueueFull,
        DropReason::DeliveryFailed,
    ];

    /// Its name in the status output and the metrics' `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoRoute => "no_route",
            DropReason::Limit => "limit",
            DropReason::ReceiverGone => "receiver_gone",
            DropReason::ReceiverStalled => "receiver_stalled",
            DropReason::QueueFull => "queue_full",
            DropReason::DeliveryFailed => "delivery_failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Messages from this guest delivered to another guest.
    pub forwarded: u64,
    /// Messages from this guest answered by a host service.
    pub served: u64,
    /// Payload bytes of the messages from this guest delivered or queued (forwarded and
    /// served).
    pub bytes: u64,
    /// Messages from this guest that could not be delivered (see the log for why): the sum of
    /// [`dropped_by`](Self::dropped_by).
    pub dropped: u64,
    /// [`dropped`](Self::dropped) by [`DropReason`], in the order of [`DropReason::ALL`]
    /// (serialized as an object keyed by [`DropReason::name`]).
    #[serde(serialize_with = "by_reason")]
    pub dropped_by: [u64; DropReason::ALL.len()],
    /// Messages for this guest that had to wait for its buffers.
    pub queued: u64,
    /// Times the link came up.
    pub ups: u64,
    /// Times the guest broke the ring protocol.
    pub protocol_errors: u64,
    /// Malformed descriptor chains from this guest (each returned used with length 0).
    pub bad_chains: u64,
    /// Polls of this guest's ring that took their whole
    /// [`POLL_BUDGET`](super::POLL_BUDGET) and left the rest for the next call.
    pub budget_spent: u64,
}

/// Reports of one kind from one source, for rate-limited logging: the first few are logged,
/// then every 1000th. Every log line a guest (or its VMM) can make the host write goes through
/// one of these.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Reports(u64);

impl Reports {
    /// Reports logged in full before the log thins out.
    pub(crate) const FIRST: u64 = 10;
    /// Name-service events of one link logged in full before the log thins out (a guest can
    /// announce and withdraw at line rate, but a few dozen names are normal).
    pub(crate) const FIRST_NAME_SERVICE: u64 = 100;

    /// Counts one report; whether it is logged: the first `first`, then every 1000th.
    pub(crate) fn worth_logging(&mut self, first: u64) -> bool {
        self.0 += 1;
        self.0 <= first || self.0.is_multiple_of(1000)
    }

    /// Reports so far.
    pub(crate) fn count(self) -> u64 {
        self.0
    }
}

/// `dropped_by` as `{"malformed": n, ...}`.
fn by_reason<S: serde::Serializer>(
    counts: &[u64; DropReason::ALL.len()],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(counts.len()))?;
    for (reason, n) in DropReason::ALL.iter().zip(counts) {
        map.serialize_entry(reason.name(), n)?;
    }
    map.end()
}

impl LinkStats {
    /// Messages from this guest dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.dropped_by[reason.index()]
    }

    /// Counts one message of `bytes` payload bytes from this guest, delivered or queued:
    /// to another guest (`to_guest`) or answered by a host service. The hub's whole counting
    /// work per message; public so that `vamp bench` can time this very code.
    #[inline]
    pub fn count_delivered(&mut self, to_guest: bool, bytes: u64) {
        if to_guest {
            self.forwarded += 1;
        } else {
            self.served += 1;
        }
        self.bytes += bytes;
    }

    /// Counts one message from this guest dropped for `reason`.
    pub(super) fn count_drop(&mut self, reason: DropReason) {
        self.dropped += 1;
        self.dropped_by[reason.index()] += 1;
    }
}

impl Slot {
    /// Counts a message from this guest that could not be delivered, and logs why
    /// (rate-limited).
    pub(super) fn report_drop(&mut self, reason: DropReason, what: std::fmt::Arguments<'_>) {
        self.stats.count_drop(reason);
        if self.drop_reports.worth_logging(Reports::FIRST) {
            log::warn!(
                "guest {}: {what} (dropped, {} so far)",
                self.name,
                self.stats.dropped
            );
        }
    }

    /// Counts (and logs, rate-limited) the malformed chains this link's transport returned
    /// since the last look.
    pub(super) fn account_bad_chains(&mut self) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let LinkTransport::Device(t) = link.engine.transport() else {
            return;
        };
        let (total, last) = (t.bad_chains(), t.last_bad_chain());
        let new = total.saturating_sub(link.bad_chains_seen);
        link.bad_chains_seen = total;
        if new == 0 {
            return;
        }
        self.stats.bad_chains += new;
        if self.bad_reports.worth_logging(Reports::FIRST) {
            let why = last.map(|e| e.to_string()).unwrap_or_default();
            log::warn!(
                "{} {}: {new} malformed descriptor chain(s) returned unused ({why}; {} so far)",
                self.kind,
                self.name,
                self.stats.bad_chains
            );
        }
    }
}

/// Where a remote's lifecycle stands, as its lifecycle thread last told the hub
/// ([`Hub::note_remote`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RemoteState {
    /// "running", "crashed" (left crashed: no restart left), "exited".
    pub state: &'static str,
    /// Times it was restarted after a crash.
    pub restarts: u64,
}

/// One guest or remote, as [`Hub::status`] saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    /// Its name in the topology.
    pub name: String,
    /// "guest" or "remote".
    pub kind: &'static str,
    /// "up", "down" (no rings yet, or its frontend went away) or "broken" (it broke the ring
    /// protocol; down until it resets the device).
    pub state: &'static str,
    /// Why it is broken, when it is.
    pub broken_why: Option<&'static str>,
    /// Its rings' format ("split" or "packed"), while up.
    pub rings: Option<&'static str>,
    /// Names it announced (its own endpoints), while up.
    pub announced: Vec<String>,
    /// Names the hub announced to it (host services and other guests' names its topology
    /// offers it), while up.
    pub offered: Vec<String>,
    /// Messages waiting for its buffers now.
    pub queued_now: usize,
    /// Times its link came up again after the first: reconnects, device resets and restarts.
    pub reconnects: u64,
    /// Its counters.
    pub stats: LinkStats,
    /// A remote's lifecycle (`None` for a guest).
    pub remote: Option<RemoteState>,
}

/// A consistent copy of what the hub knows, taken under its lock ([`Hub::status`]; for a hub
/// split into parts, [`SharedHub::status`](super::SharedHub::status)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubStatus {
    /// Every guest, then every remote, in topology order.
    pub links: Vec<LinkStatus>,
    /// Times the hub's locks (one per part, see [`Hub::split`]) were taken, and how many of
    /// those had to wait.
    pub lock_taken: u64,
    /// See [`lock_taken`](Self::lock_taken).
    pub lock_waited: u64,
}

/// A guest's bytes shown as text: lossy UTF-8, so the status output stays printable.
fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl Hub {
    /// A copy of every link's state, names and counters, for the control socket. Takes no
    /// lock of its own: the caller holds the hub's, as for any other call.
    pub fn status(&self) -> HubStatus {
        let links = self
            .slots
            .iter()
            .map(|slot| {
                let (announced, offered, queued_now) = match slot.link.as_ref() {
                    Some(link) => {
                        let announced = link.announced.iter().map(|(n, _)| shown(n)).collect();
                        let mut offered: Vec<String> = link
                            .nat
                            .iter()
                            .filter_map(|(addr, _)| link.engine.endpoint_by_addr(addr))
                            .filter_map(|ept| link.engine.endpoint(ept))
                            .filter(|e| !e.name().is_empty())
                            .map(|e| shown(e.name()))
                            .collect();
                        offered.sort();
                        (announced, offered, link.pending.len())
                    }
                    None => (Vec::new(), Vec::new(), 0),
                };
                let state = match (&slot.link, slot.broken) {
                    (Some(_), _) => "up",
                    (None, Some(_)) => "broken",
                    (None, None) => "down",
                };
                LinkStatus {
                    name: slot.name.clone(),
                    kind: slot.kind,
                    state,
                    broken_why: slot.broken.map(|_| slot.broken_why),
                    rings: slot
                        .link
                        .as_ref()
                        .map(|l| l.engine.transport().ring_format().name()),
                    announced,
                    offered,
                    queued_now,
                    reconnects: slot.stats.ups.saturating_sub(1),
                    stats: slot.stats,
                    remote: slot.remote,
                }
            })
            .collect();
        HubStatus {
            links,
            lock_taken: self.locks.0,
            lock_waited: self.locks.1,
        }
    }

    /// Records where remote `id`'s lifecycle stands (its lifecycle thread calls this at start,
    /// crash, restart and exit), for [`status`](Self::status).
    pub fn note_remote(&mut self, id: LinkId, state: &'static str, restarts: u64) {
        let id = self.slot_of(id);
        if let Some(slot) = self.slots.get_mut(id) {
            slot.remote = Some(RemoteState { state, restarts });
        }
    }
}
