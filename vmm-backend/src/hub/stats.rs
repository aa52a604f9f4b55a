//! What the hub counts and how it logs: each guest's [`LinkStats`], and [`Reports`], the one
//! rate limit every log line a guest can cause goes through (a guest can send garbage,
//! announce, reconnect or break at line rate: none of that may flood the log).

use super::link::{LinkTransport, Slot};

/// Counters of one guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Messages from this guest delivered to another guest.
    pub forwarded: u64,
    /// Messages from this guest answered by a host service.
    pub served: u64,
    /// Messages from this guest that could not be delivered (see the log for why).
    pub dropped: u64,
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

impl Slot {
    /// Counts a message from this guest that could not be delivered, and logs why
    /// (rate-limited).
    pub(super) fn report_drop(&mut self, what: std::fmt::Arguments<'_>) {
        self.stats.dropped += 1;
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
