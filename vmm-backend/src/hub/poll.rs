//! What the hub offers a thread that polls a guest's rings instead of waiting for its kicks
//! (`vhost-user-rpmsg --poll`, crate::vhost_user::poll): turning the guest's kicks off and
//! on, and a count that tells a round that found work from an idle one. The guest's
//! interrupts are not touched: they follow the guest's own suppression, as without polling.
//! Like every public call of a hub, these take topology indices (a part of a split hub
//! answers only for its own links).

use super::{Hub, LinkId, LinkTransport};
use vamp_rpmsg::vring::VringLayout;

impl Hub {
    /// Asks guest `id` not to kick (`on`: the hub polls its rings) or to kick again (`off`),
    /// on its current link; a new link starts with kicks on. Returns whether the link is up
    /// and now in that state. Writing the request into the guest's rings can fail only if
    /// they left its memory: its link breaks, as for any ring protocol error. Turning kicks
    /// back on does not look at the rings: the caller serves them once afterwards, so that
    /// nothing the guest made available before it saw the change waits for a kick.
    pub fn suppress_kicks(&mut self, id: LinkId, on: bool) -> bool {
        let id = self.slot_of(id);
        let Some(link) = self.slots.get_mut(id).and_then(|s| s.link.as_mut()) else {
            return false;
        };
        if link.kicks_suppressed == on {
            return true;
        }
        // A remote's link (the hub is the driver) has no kicks of the peer's to suppress.
        let LinkTransport::Device(transport) = link.engine.transport_mut() else {
            return false;
        };
        match transport.set_kick_suppression(on) {
            Ok(()) => {
                link.kicks_suppressed = on;
                true
            }
            Err(e) => {
                self.break_link(id, &e);
                false
            }
        }
    }

    /// Whether guest `id`'s link is up on `rings` (a poll thread serves only the rings a
    /// kick brought up: rings it was given earlier may have been replaced since).
    pub fn is_up_on(&self, id: LinkId, rings: &[VringLayout; 2]) -> bool {
        self.link(self.slot_of(id))
            .is_some_and(|l| &l.rings == rings)
    }

    /// Events (messages, announcements, dropped input) taken from guest `id`'s rings so far,
    /// over all its links: a poll round that leaves it unchanged found no work.
    pub fn events_taken(&self, id: LinkId) -> u64 {
        self.slots.get(self.slot_of(id)).map_or(0, |s| s.taken)
    }
}
