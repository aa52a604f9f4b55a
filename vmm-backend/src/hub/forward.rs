//! Forwarding: one round of a sender's events, each message copied into its receiver's ring
//! or queued for it. [`Hub::process`] takes events from sender A's engine (the pull API:
//! nothing calls back into the hub); for a message it looks up where A's destination address
//! leads and hands it to [`Hub::deliver`], which borrows A's link and receiver B's link at
//! once (two disjoint slots; one when a service answers on A's own link) and copies the
//! payload from A's memory into a buffer of B's. A receiver without a free buffer gets the
//! message in its [`PendingQueue`], holding A's buffer, within A's per-sender share; the
//! queue goes out in order ([`Hub::drain`]) when B posts buffers, or is given up on after the
//! pending timeout.

use super::Hub;
use super::link::{LinkEngine, LinkId, links_mut, release_held};
use super::routes::Target;
use super::stats::{DropReason, Reports};
use crate::config::ServiceKind;
use crate::guest_memory::GuestRam;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use vamp_rpmsg::rpmsg::{Dropped, Error as RpmsgError, Event, HeldRx, PayloadRef, Received};
use vamp_rpmsg::transport::LinkError;
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::ADDR_ANY;

/// How long a message may wait for a guest's buffers before the hub gives up on that guest
/// (see [`Hub::set_pending_timeout`]).
pub const DEFAULT_PENDING_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages one sender may have waiting for one receiver's buffers, by default (see
/// [`Hub::set_max_queued_per_sender`]). Further messages from it to that receiver are dropped
/// (counted against the sender, logged rate-limited) rather than left in its ring: its
/// buffers come back, so its traffic to everyone else keeps flowing, and no sender can fill a
/// receiver's queue for the others. Linux and vamp's own driver have at most 256 transmit
/// buffers (half of Linux's 512), so a well-behaved guest meets its own ring's backpressure
/// first; only a VMM with a larger ring and forged descriptors reaches the cap.
pub const MAX_QUEUED_PER_SENDER: usize = 256;

/// Messages the hub takes from one link per service call: a guest that reposts its ring as
/// fast as the hub reads it cannot hold the hub (and its lock) for the others. The rest wait
/// for the next call, which the hub asks for itself
/// ([`Notifier::resume`](super::Notifier::resume)) or its clock makes.
pub const POLL_BUDGET: usize = 64;

/// A message for a guest that had no free buffer, holding its sender's buffer.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) from: LinkId,
    pub(super) from_incarnation: u64,
    held: HeldRx,
    src: u32,
    dst: u32,
    /// When it started to wait: the pending timeout is judged on each message's own wait.
    since: Instant,
}

/// The messages waiting for one guest's buffers, in order, with how many each sender has
/// among them (bounded by [`Hub::set_max_queued_per_sender`]).
#[derive(Debug, Default)]
pub(super) struct PendingQueue {
    queue: VecDeque<Pending>,
    per_sender: HashMap<LinkId, usize>,
}

impl PendingQueue {
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn front(&self) -> Option<&Pending> {
        self.queue.front()
    }

    /// Messages of `from` waiting here.
    pub(super) fn count_from(&self, from: LinkId) -> usize {
        self.per_sender.get(&from).copied().unwrap_or(0)
    }

    /// How many messages each sender has waiting here.
    pub(super) fn per_sender(&self) -> &HashMap<LinkId, usize> {
        &self.per_sender
    }

    fn push_back(&mut self, p: Pending) {
        *self.per_sender.entry(p.from).or_default() += 1;
        self.queue.push_back(p);
    }

    fn pop_front(&mut self) -> Option<Pending> {
        let p = self.queue.pop_front()?;
        if let Some(c) = self.per_sender.get_mut(&p.from) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.per_sender.remove(&p.from);
            }
        }
        Some(p)
    }

    /// Forgets the messages of `from` (its link went down: their buffers went with its rings).
    /// Costs nothing when it has none here.
    fn forget_from(&mut self, from: LinkId) {
        if self.per_sender.remove(&from).is_some() {
            self.queue.retain(|p| p.from != from);
        }
    }

    /// Takes every message.
    pub(super) fn take_all(&mut self) -> VecDeque<Pending> {
        self.per_sender.clear();
        std::mem::take(&mut self.queue)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.queue.iter()
    }
}

/// Copies a payload from the sender's memory into the receiver's ring, unless messages wait
/// for the receiver already (they go first: `NoBuffer`, as when its ring is full).
fn try_send(
    into: &mut LinkEngine,
    waiting: &PendingQueue,
    from_mem: &GuestRam,
    src: u32,
    dst: u32,
    payload: &PayloadRef,
) -> Result<usize, RpmsgError> {
    if !waiting.is_empty() {
        return Err(RpmsgError::NoBuffer);
    }
    into.send_copy_from(src, dst, from_mem, payload, false)
}

impl Hub {
    /// Serves link `id`: one round of at most [`POLL_BUDGET`] of its events, each message
    /// forwarded or answered, then what waits for it. `rings` are the rings the round is for:
    /// an error on the link is its guest's only if they are still its rings.
    pub(super) fn process(&mut self, id: LinkId, rings: [VringLayout; 2]) {
        self.expire(id);
        let Some(link) = self.slots[id].link.as_mut() else {
            return;
        };
        // The receivers this round sends into: each makes one notification decision, at the
        // round's end, for everything copied into it (a batch; see `Rpmsg::begin_batch`).
        let mut receivers = std::mem::take(&mut self.receivers);
        let result = link.engine.begin_poll().and_then(|()| {
            let mut taken = 0;
            let polled = loop {
                if taken >= POLL_BUDGET {
                    break Ok(());
                }
                // The link goes down within the round if its own ring breaks.
                let Some(link) = self.slots[id].link.as_mut() else {
                    break Ok(());
                };
                match link.engine.next_event() {
                    Ok(Some(event)) => {
                        taken += 1;
                        if let Err(e) = self.handle(id, event, &mut receivers) {
                            break Err(e);
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            let ended = self.slots[id]
                .link
                .as_mut()
                .map_or(Ok(()), |l| l.engine.end_poll());
            polled.and(ended).map(|()| taken)
        });
        for to in receivers.drain(..) {
            self.end_batch(to);
            self.slots[to].account_bad_chains();
        }
        // Kept for the next round: no allocation per kick.
        self.receivers = receivers;
        self.slots[id].account_bad_chains();
        match result {
            Ok(taken) => {
                let more = taken >= POLL_BUDGET;
                if let Some(link) = self.slots[id].link.as_mut() {
                    link.more = more;
                }
                self.slots[id].stats.budget_spent += u64::from(more);
                self.slots[id].taken += taken as u64;
                if more && let Some(n) = &self.slots[id].notifier {
                    // Without it, the next tick serves the rest.
                    n.0.resume();
                }
            }
            Err(RpmsgError::Link(e)) => {
                if self.slots[id]
                    .link
                    .as_ref()
                    .is_some_and(|l| l.rings == rings)
                {
                    self.break_link(id, &e);
                }
                return;
            }
            Err(e) => {
                // Not a ring error, but it can repeat at every kick: rate-limited.
                let slot = &mut self.slots[id];
                if slot.error_reports.worth_logging(Reports::FIRST) {
                    log::warn!(
                        "{} {}: {e} ({} so far)",
                        slot.kind,
                        slot.name,
                        slot.error_reports.count()
                    );
                }
            }
        }
        self.drain(id);
        self.slots[id].account_bad_chains();
    }

    /// One event from guest `me`'s engine. Fails when giving its buffer back does: a ring
    /// error of `me`'s.
    fn handle(
        &mut self,
        me: LinkId,
        event: Event,
        receivers: &mut Vec<LinkId>,
    ) -> Result<(), RpmsgError> {
        match event {
            Event::Message(mut msg) => {
                self.route(me, &mut msg, receivers);
                match self.slots[me].link.as_mut() {
                    Some(link) => link.engine.finish_rx(msg),
                    // Its ring broke while a service answered on it: the buffer went with it.
                    None => Ok(()),
                }
            }
            Event::NameService(ns) => {
                self.name_service(me, ns.event());
                Ok(())
            }
            Event::Dropped(why) => {
                // An address of no endpoint in its link is one the hub never gave it.
                let reason = match why {
                    Dropped::NoEndpoint { .. } => DropReason::NoRoute,
                    _ => DropReason::Malformed,
                };
                self.slots[me].report_drop(reason, format_args!("{why:?}"));
                Ok(())
            }
        }
    }

    /// Forwards a message from guest `me` where its destination address leads.
    fn route(&mut self, me: LinkId, msg: &mut Received, receivers: &mut Vec<LinkId>) {
        if msg.src == ADDR_ANY {
            // No reply could ever reach it, and the receiver's answers would be dropped
            // against the receiver's count: refuse it here, against the sender's.
            self.slots[me].report_drop(
                DropReason::NoRoute,
                format_args!("message to {:#x} with source address ANY", msg.dst),
            );
            return;
        }
        let Some(target) = self.slots[me]
            .link
            .as_ref()
            .and_then(|l| l.nat.get(msg.dst))
        else {
            self.slots[me].report_drop(
                DropReason::NoRoute,
                format_args!("message to {:#x}, which leads nowhere", msg.dst),
            );
            return;
        };
        match target {
            Target::Service(index) => match self.topology.services[index].kind {
                ServiceKind::Echo => {
                    let len = u64::from(msg.len);
                    if self.deliver(me, me, msg, msg.dst, msg.src, receivers) {
                        self.slots[me].stats.count_delivered(false, len);
                    }
                }
            },
            Target::Guest { link: to, addr } => {
                let src = match self.reply_proxy(to, me, msg.src) {
                    Ok(src) => src,
                    Err(why) => {
                        let name = self.slots[to].name.clone();
                        self.slots[me].report_drop(
                            DropReason::Limit,
                            format_args!(
                                "message from {:#x} for guest {name} not delivered: {why}",
                                msg.src
                            ),
                        );
                        return;
                    }
                };
                let len = u64::from(msg.len);
                if self.deliver(me, to, msg, src, addr, receivers) {
                    self.slots[me].stats.count_delivered(true, len);
                }
            }
        }
    }

    /// Copies `msg` (in guest `me`'s memory) into link `to` as `src` -> `dst`, or queues it
    /// there holding `me`'s buffer. Whether it was delivered or queued (else dropped, against
    /// `me`).
    fn deliver(
        &mut self,
        me: LinkId,
        to: LinkId,
        msg: &mut Received,
        src: u32,
        dst: u32,
        receivers: &mut Vec<LinkId>,
    ) -> bool {
        // The receiver's oldest waiting message may have waited too long already.
        self.expire(to);
        let payload = msg.payload_ref();
        let sent = match links_mut(&mut self.slots, me, to) {
            None => {
                self.slots[me].report_drop(
                    DropReason::ReceiverGone,
                    format_args!("destination guest {to} is gone"),
                );
                return false;
            }
            // A service answers on the sender's own link, inside its round's batch.
            Some((link, None)) => try_send(
                &mut link.engine,
                &link.pending,
                &link.mem,
                src,
                dst,
                &payload,
            ),
            Some((from, Some(into))) => {
                if !receivers.contains(&to) {
                    into.engine.begin_batch();
                    receivers.push(to);
                }
                try_send(
                    &mut into.engine,
                    &into.pending,
                    &from.mem,
                    src,
                    dst,
                    &payload,
                )
            }
        };
        let cap = self.max_queued_per_sender;
        let into = self.slots[to].link.as_mut().expect("checked above");
        match sent {
            Ok(_) => {
                // It takes messages again.
                into.stalled = false;
                true
            }
            Err(RpmsgError::NoBuffer) if into.stalled => {
                let name = self.slots[to].name.clone();
                self.slots[me].report_drop(
                    DropReason::ReceiverStalled,
                    format_args!("message for guest {name} not delivered: it takes no messages"),
                );
                false
            }
            Err(RpmsgError::NoBuffer) if into.pending.count_from(me) >= cap => {
                // Its share of the receiver's queue is full: dropped, so that its buffer
                // comes back and its traffic to the others keeps flowing.
                let name = self.slots[to].name.clone();
                self.slots[me].report_drop(
                    DropReason::QueueFull,
                    format_args!(
                    "message for guest {name} not delivered: {cap} of its messages already wait for it"
                ));
                false
            }
            Err(RpmsgError::NoBuffer) => {
                let Some(from) = self.slots[me].link.as_mut() else {
                    return false;
                };
                let pending = Pending {
                    from: me,
                    from_incarnation: from.incarnation,
                    held: from.engine.hold_rx(msg),
                    src,
                    dst,
                    since: Instant::now(),
                };
                let slot = &mut self.slots[to];
                if let Some(into) = slot.link.as_mut() {
                    into.pending.push_back(pending);
                }
                slot.stats.queued += 1;
                true
            }
            Err(e) => {
                let name = self.slots[to].name.clone();
                self.slots[me].report_drop(
                    DropReason::DeliveryFailed,
                    format_args!("message for guest {name} not delivered: {e}"),
                );
                if let RpmsgError::Link(e @ LinkError::Vring(_)) = e {
                    // Its receive ring is broken (a ring error is always the receiver's):
                    // the link goes down instead of failing every message sent to it.
                    self.break_link(to, &e);
                }
                false
            }
        }
    }

    /// Closes the batch of sends into link `id` (see `Rpmsg::begin_batch`).
    fn end_batch(&mut self, id: LinkId) {
        let slot = &mut self.slots[id];
        let Some(link) = slot.link.as_mut() else {
            return;
        };
        match link.engine.end_batch() {
            Ok(()) => {}
            Err(RpmsgError::Link(e @ LinkError::Vring(_))) => self.break_link(id, &e),
            Err(e) => {
                if slot.error_reports.worth_logging(Reports::FIRST) {
                    log::warn!("{} {}: notifying it failed: {e}", slot.kind, slot.name);
                }
            }
        }
    }

    /// Sends what waits for guest `id`, in order, while it has buffers; one notification
    /// decision for all of it.
    pub(super) fn drain(&mut self, id: LinkId) {
        let Some(link) = self.slots[id].link.as_mut() else {
            return;
        };
        link.engine.begin_batch();
        self.drain_batched(id);
        self.end_batch(id);
    }

    fn drain_batched(&mut self, id: LinkId) {
        loop {
            let Some(p) = self.slots[id].link.as_ref().and_then(|l| l.pending.front()) else {
                return;
            };
            let (from, incarnation) = (p.from, p.from_incarnation);
            let sender_live = from == id
                || self.slots[from]
                    .link
                    .as_ref()
                    .is_some_and(|l| l.incarnation == incarnation);
            let sent = match links_mut(&mut self.slots, id, from) {
                Some((link, sender)) if sender_live => {
                    let p = link.pending.front().expect("checked above");
                    let from_mem = sender.map_or(&link.mem, |s| &s.mem);
                    link.engine
                        .send_copy_from(p.src, p.dst, from_mem, &p.held.payload_ref(), false)
                }
                _ => {
                    // The sender went away; its buffer went with it.
                    if let Some(link) = self.slots[id].link.as_mut() {
                        link.pending.pop_front();
                    }
                    continue;
                }
            };
            if sent == Err(RpmsgError::NoBuffer) {
                return;
            }
            let slot = &mut self.slots[id];
            let Some(p) = slot.link.as_mut().and_then(|l| l.pending.pop_front()) else {
                return;
            };
            if let Err(e) = sent {
                if slot.error_reports.worth_logging(Reports::FIRST) {
                    log::warn!(
                        "guest {}: a queued message could not be delivered: {e}",
                        slot.name
                    );
                }
                self.slots[p.from]
                    .stats
                    .count_drop(DropReason::DeliveryFailed);
            }
            release_held(&mut self.slots, p.from, p.from_incarnation, p.held);
            if let Err(RpmsgError::Link(e @ LinkError::Vring(_))) = sent {
                self.break_link(id, &e);
                return;
            }
        }
    }

    /// Gives up on guest `id` if the oldest message waiting for it (the queue is in arrival
    /// order) has waited the pending timeout. Inlined: it runs for every message, and nothing
    /// waits in the usual case.
    #[inline(always)]
    pub(super) fn expire(&mut self, id: LinkId) {
        let waiting = self.slots[id]
            .link
            .as_ref()
            .is_some_and(|l| !l.pending.is_empty());
        if waiting {
            self.expire_oldest(id);
        }
    }

    fn expire_oldest(&mut self, id: LinkId) {
        let Some(oldest) = self.slots[id].link.as_ref().and_then(|l| l.pending.front()) else {
            return;
        };
        let waited = oldest.since.elapsed();
        if waited >= self.pending_timeout {
            self.give_up_on(id, waited);
        }
    }

    /// Drops what waits for guest `id`, which took nothing for `waited`.
    fn give_up_on(&mut self, id: LinkId, waited: Duration) {
        let Some(link) = self.slots[id].link.as_mut() else {
            return;
        };
        link.stalled = true;
        let pending = link.pending.take_all();
        let dropped = pending.len();
        for p in pending {
            self.slots[p.from]
                .stats
                .count_drop(DropReason::ReceiverStalled);
            release_held(&mut self.slots, p.from, p.from_incarnation, p.held);
        }
        let slot = &mut self.slots[id];
        if slot.error_reports.worth_logging(Reports::FIRST) {
            log::warn!(
                "{} {}: took no message for {waited:.1?}: {dropped} message(s) waiting for it dropped, \
                 their senders' buffers returned; messages for it are dropped while it takes none",
                slot.kind,
                slot.name
            );
        }
    }

    /// Guest `id`'s link went down: messages of it waiting elsewhere hold buffers of rings
    /// that no longer exist, and the senders of those that waited for it get theirs back.
    pub(super) fn drop_pending_of(&mut self, id: LinkId, waiting_for_it: VecDeque<Pending>) {
        for slot in &mut self.slots {
            if let Some(l) = slot.link.as_mut() {
                l.pending.forget_from(id);
            }
        }
        let dropped = waiting_for_it.len();
        for p in waiting_for_it {
            if p.from != id {
                release_held(&mut self.slots, p.from, p.from_incarnation, p.held);
                self.slots[p.from]
                    .stats
                    .count_drop(DropReason::ReceiverGone);
            }
        }
        let slot = &mut self.slots[id];
        if dropped > 0 && slot.error_reports.worth_logging(Reports::FIRST) {
            log::warn!(
                "guest {}: {dropped} message(s) for it were dropped: it went away before posting buffers",
                slot.name
            );
        }
    }
}
