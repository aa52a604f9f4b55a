//! The hub: routes rpmsg between guests and to host services.
//!
//! Every guest is one *link*: a virtio-rpmsg device in which the hub is the device (remote)
//! and the guest the driver. Each link has its own address space, as in Linux and OpenAMP, and
//! the hub keeps, per link, a table from the hub-side addresses in that link to where they lead
//! (a host service, or an address in another guest), like a NAT:
//!
//! 1. Guest B announces "foo" at b. If the topology lets guest A see B's "foo", the hub creates
//!    a proxy endpoint pA in A's link and announces "foo" at pA to A.
//! 2. A sends from a1 to pA. The hub finds (B, b), gives (A, a1) a reply proxy pB in B's link
//!    (created once, reused) and copies the message once, from A's buffer into one of B's, with
//!    src = pB and dst = b.
//! 3. B answers to pB; the hub maps it back to (A, a1) and delivers it with src = pA.
//! 4. B's name-service destroy, reset or disconnect withdraws "foo" from A (a name-service
//!    destroy at pA) and frees the proxies.
//!
//! A guest can only reach hub addresses in its own link, so it can never address a name its
//! topology does not offer, and never send as another guest: the source a receiver sees is
//! always the hub's proxy for the sender. A receiver without free buffers delays only traffic
//! to itself: messages for it wait in its queue, holding the sender's buffers (so the sender
//! feels backpressure, bounded by its own ring), and go out when it posts buffers again. The
//! wait is bounded in time too: a guest that takes no message for the pending timeout is
//! given up on (see [`Hub::set_pending_timeout`]), so one that never reads cannot keep the
//! buffers of the guests that talk to it, and with them all their other traffic.
//!
//! Sharing is fair: the clock of that timeout runs per message (the oldest waiting message
//! must go out within it, however many others the receiver took meanwhile); one sender may
//! have at most [`MAX_QUEUED_PER_SENDER`] messages (by default) waiting for one receiver,
//! further ones being dropped and counted against it, so that its buffers come back and its
//! traffic to everyone else keeps flowing; and one service call takes at most
//! [`POLL_BUDGET`] messages from a link (the rest on the next call, which the hub asks for
//! itself: see [`Notifier::resume`]).
//!
//! The route tables keep one hub address per (receiver, sender, sender's address), whatever
//! the order of sends and announcements: a reply proxy whose address is later announced
//! becomes the offered endpoint. Each receiver keeps its proxies grouped by sender, so a
//! guest's link going down costs time in proportion to what it left in the others.
//!
//! Guests that cannot reach each other share nothing: messages, names and held buffers only
//! ever pass along the topology's channels (a host service answers on its caller's own link),
//! so the hub splits into parts, one per group of links the channels connect
//! ([`Hub::split`]), each with a lock of its own ([`SharedHub`]; the lock order is in
//! `shared.rs`). Disjoint pairs, and guests that only talk to host services, never wait for
//! each other; the guests of one group share its part's lock.
//!
//! This file holds the [`Hub`] and the link lifecycle (up, down, broken; the service entry
//! points a kick, the clock and a remote's doorbell call). The rest, one concern a file:
//! `link.rs` the link adapter and per-guest state, `routes.rs` the address tables and
//! announcements, `forward.rs` moving messages between links, `stats.rs` counters and the log
//! rate limit, `shared.rs` the parts and their locks shared between threads.

mod forward;
mod link;
mod poll;
mod routes;
mod shared;
mod stats;
#[cfg(test)]
mod tests;

pub use forward::{DEFAULT_PENDING_TIMEOUT, MAX_QUEUED_PER_SENDER, POLL_BUDGET};
pub use link::{LinkEngine, LinkEnv, LinkId, LinkTransport, MAX_BUFFER, Notifier, RingsInfo};
pub use routes::{MAX_NAMES_PER_LINK, MAX_REPLY_PROXIES_PER_SOURCE};
pub use shared::{SharedHub, TICK, stop};
pub(crate) use stats::Reports;
pub use stats::{DropReason, HubStatus, LinkStats, LinkStatus, RemoteState};

use crate::config::Topology;
use crate::guest_memory::GuestRam;
use link::{Link, Slot, SlotNotifier};
use routes::{MAX_PROXIES_PER_SOURCE, Routes, Target};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use vamp_rpmsg::rpmsg::{Config, Rpmsg};
use vamp_rpmsg::transport::{DeviceRings, DeviceTransport, DriverTransport, LinkError, Transport};
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::{ADDR_ANY, Endian};

/// The hub: every guest's link and the routes between them, or (a *part*, see
/// [`split`](Self::split)) those of one group of links that the topology's channels connect,
/// the only links that can ever reach each other. Its public calls take a link's index in the
/// topology; a part answers for its own links only (for another link, as for an index out of
/// range: nothing, or zero).
#[derive(Debug)]
pub struct Hub {
    topology: Arc<Topology>,
    /// The topology index of each slot, in increasing order. Inside the hub a link is known by
    /// its slot's position (see [`slot_of`](Self::slot_of)).
    members: Vec<LinkId>,
    slots: Vec<Slot>,
    incarnations: u64,
    pending_timeout: Duration,
    /// Messages one sender may have waiting for one receiver.
    max_queued_per_sender: usize,
    /// Times [`SharedHub`] took this hub's lock, and found it held.
    locks: (u64, u64),
    /// The receivers of the current forwarding round (see `forward.rs`), kept between rounds
    /// so that a kick allocates nothing.
    receivers: Vec<LinkId>,
}

impl Hub {
    /// A hub for a topology; no guest is connected yet.
    pub fn new(topology: Topology) -> Self {
        let links = topology.guests.len() + topology.remotes.len();
        Self::part(Arc::new(topology), (0..links).collect())
    }

    /// A hub for the links `members` (topology indices, increasing) of `topology`.
    fn part(topology: Arc<Topology>, members: Vec<LinkId>) -> Self {
        let guests = topology.guests.iter().map(|g| ("guest", &g.name));
        let remotes = topology.remotes.iter().map(|r| ("remote", &r.name));
        let all: Vec<_> = guests.chain(remotes).collect();
        let slots = members
            .iter()
            .map(|&id| Slot {
                kind: all[id].0,
                name: all[id].1.clone(),
                ..Default::default()
            })
            .collect();
        Hub {
            topology,
            members,
            slots,
            incarnations: 0,
            pending_timeout: DEFAULT_PENDING_TIMEOUT,
            max_queued_per_sender: MAX_QUEUED_PER_SENDER,
            locks: (0, 0),
            receivers: Vec::new(),
        }
    }

    /// Splits a hub that serves no link yet into parts that share nothing: one per group of
    /// links the topology's channels connect (a channel joins its announcing guest and the
    /// guests that see its names; a host service answers on its caller's own link and joins
    /// nothing). No message, name or buffer can ever pass between two parts, so each can have
    /// a lock of its own ([`SharedHub`]). Each part keeps this hub's settings. A hub already
    /// in use stays whole.
    pub fn split(self) -> Vec<Hub> {
        let in_use = self.incarnations > 0
            || self
                .slots
                .iter()
                .any(|s| s.link.is_some() || s.broken.is_some() || s.remote.is_some());
        if in_use || self.members.len() < 2 {
            return vec![self];
        }
        let t = &self.topology;
        // Union-find over the links (here a hub of every link: slot = topology index), each
        // channel joining its ends; a group is named by its lowest link.
        fn root(group: &mut [LinkId], mut i: LinkId) -> LinkId {
            while group[i] != i {
                group[i] = group[group[i]];
                i = group[i];
            }
            i
        }
        let mut group: Vec<LinkId> = (0..self.members.len()).collect();
        for c in &t.channels {
            let Some(from) = t.link_index(&c.from) else {
                continue;
            };
            for to in c.to.iter().filter_map(|n| t.link_index(n)) {
                let (a, b) = (root(&mut group, from), root(&mut group, to));
                group[a.max(b)] = a.min(b);
            }
        }
        let mut parts: Vec<(LinkId, Vec<LinkId>)> = Vec::new();
        for id in 0..self.members.len() {
            let r = root(&mut group, id);
            match parts.iter_mut().find(|(g, _)| *g == r) {
                Some((_, members)) => members.push(id),
                None => parts.push((r, vec![id])),
            }
        }
        parts
            .into_iter()
            .map(|(_, members)| {
                let mut part = Hub::part(self.topology.clone(), members);
                part.pending_timeout = self.pending_timeout;
                part.max_queued_per_sender = self.max_queued_per_sender;
                part
            })
            .collect()
    }

    /// The topology indices of the links this hub serves, in increasing order.
    pub fn members(&self) -> &[LinkId] {
        &self.members
    }

    /// The slot of topology link `id`; out of range (every lookup finds nothing) when this
    /// hub does not serve it.
    fn slot_of(&self, id: LinkId) -> LinkId {
        self.members.binary_search(&id).unwrap_or(usize::MAX)
    }

    /// Sets how long a message may wait for a guest's buffers. When the oldest waiting message
    /// has waited that long, the hub gives up on the guest: what waits is dropped (counted
    /// against the senders, who get their buffers back), and messages for it are dropped
    /// instead of queued until it takes one again. Judged per message, not on "any delivery":
    /// a guest that takes one message now and then cannot keep the rest waiting for ever. A
    /// guest that keeps up with what is sent to it never hits it. Checked for every guest at
    /// every [`tick`](Self::tick), and for a guest when it kicks or is sent to.
    pub fn set_pending_timeout(&mut self, timeout: Duration) {
        self.pending_timeout = timeout;
    }

    /// Sets how many messages one sender may have waiting for one receiver's buffers (at
    /// least 1; [`MAX_QUEUED_PER_SENDER`] by default). Further ones are dropped against the
    /// sender, whose buffers come back: its traffic to the others keeps flowing.
    pub fn set_max_queued_per_sender(&mut self, n: usize) {
        self.max_queued_per_sender = n.max(1);
    }

    /// Housekeeping, to call every 100 ms or so (`serve_guest` does, on its clock thread): gives
    /// up on guests whose oldest waiting message waited the pending timeout, serves what a
    /// poll left for later (its budget ran out), and accounts malformed chains. The only work
    /// over all links: a kick touches only the links it involves.
    pub fn tick(&mut self) {
        for id in 0..self.slots.len() {
            self.expire(id);
            if let Some(link) = self.slots[id].link.as_ref()
                && link.more
            {
                let rings = link.rings;
                self.process(id, rings);
            }
            self.slots[id].account_bad_chains();
        }
    }

    /// Notes one taking of this hub's lock (by [`SharedHub`]), and whether it had to wait
    /// for another thread.
    pub fn count_lock(&mut self, waited: bool) {
        self.locks.0 += 1;
        self.locks.1 += u64::from(waited);
    }

    /// How often this hub's lock, which only its own links share, was taken through
    /// [`SharedHub`], and how often that had to wait for another thread (`vamp bench` reports
    /// it for its many-guest runs).
    pub fn lock_counts(&self) -> (u64, u64) {
        self.locks
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Counters of a guest.
    pub fn stats(&self, id: LinkId) -> LinkStats {
        let id = self.slot_of(id);
        self.slots.get(id).map(|s| s.stats).unwrap_or_default()
    }

    /// Whether a guest's link is up.
    pub fn is_up(&self, id: LinkId) -> bool {
        let id = self.slot_of(id);
        self.slots.get(id).is_some_and(|s| s.link.is_some())
    }

    /// Whether a guest broke the ring protocol on its current rings: its link is down and its
    /// kicks are ignored until it resets the device or sets up new rings (virtio's
    /// DEVICE_NEEDS_RESET: the guest's [`Notifier::needs_reset`] was told).
    pub fn is_broken(&self, id: LinkId) -> bool {
        let id = self.slot_of(id);
        self.slots.get(id).is_some_and(|s| s.broken.is_some())
    }

    /// Hub addresses in guest `to`'s link that stand for addresses of guest `from` (offered
    /// names and reply proxies): at most [`MAX_NAMES_PER_LINK`] +
    /// [`MAX_REPLY_PROXIES_PER_SOURCE`].
    pub fn proxies_for(&self, to: LinkId, from: LinkId) -> usize {
        let (to, from) = (self.slot_of(to), self.slot_of(from));
        self.link(to).map_or(0, |l| l.reverse.count_from(from))
    }

    /// Endpoints of the hub's engine in guest `id`'s link (services and proxies).
    pub fn endpoints_in(&self, id: LinkId) -> usize {
        self.link(self.slot_of(id))
            .map_or(0, |l| l.engine.endpoint_count())
    }

    /// Messages waiting for a guest's buffers.
    pub fn queued_for(&self, id: LinkId) -> usize {
        self.link(self.slot_of(id)).map_or(0, |l| l.pending.len())
    }

    fn link(&self, id: LinkId) -> Option<&Link> {
        self.slots.get(id)?.link.as_ref()
    }

    /// Checks the hub's invariants (for the stateful fuzz target and tests): the route tables
    /// agree with each other and with each link's engine (no orphaned proxy, none beyond its
    /// bound, none offered under a name its guest did not announce or the topology does not
    /// offer), and every buffer the hub holds is accounted for by a waiting message within
    /// its sender's share. Returns what is wrong.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        for (to, slot) in self.slots.iter().enumerate() {
            let Some(link) = slot.link.as_ref() else {
                continue;
            };
            let who = &slot.name;
            let engine = &link.engine;
            if link.announced.len() > MAX_NAMES_PER_LINK {
                return Err(format!("{who}: {} names announced", link.announced.len()));
            }
            // Every route has its endpoint; every guest route its proxy entry, and back.
            let mut routes = 0;
            for (addr, target) in link.nat.iter() {
                routes += 1;
                if engine.endpoint_by_addr(addr).is_none() {
                    return Err(format!(
                        "{who}: route {addr:#x} -> {target:?} without endpoint"
                    ));
                }
                if let Target::Guest {
                    link: from,
                    addr: a,
                } = target
                    && link.reverse.get(from, a).map(|p| p.addr) != Some(addr)
                {
                    return Err(format!(
                        "{who}: route {addr:#x} -> {target:?} not in reverse"
                    ));
                }
            }
            if engine.endpoint_count() != routes {
                return Err(format!(
                    "{who}: {} endpoints for {routes} routes (orphaned proxies)",
                    engine.endpoint_count()
                ));
            }
            for (from, proxies) in link.reverse.by_sender() {
                let sender = self.slots.get(from).ok_or("proxy for no link")?;
                let Some(from_link) = sender.link.as_ref() else {
                    return Err(format!(
                        "{who}: proxies for {}, whose link is down",
                        sender.name
                    ));
                };
                if from == to || proxies.is_empty() || proxies.len() > MAX_PROXIES_PER_SOURCE {
                    return Err(format!(
                        "{who}: {} proxies for {}",
                        proxies.len(),
                        sender.name
                    ));
                }
                for (&a, p) in proxies {
                    if link.nat.get(p.addr)
                        != Some(Target::Guest {
                            link: from,
                            addr: a,
                        })
                    {
                        return Err(format!(
                            "{who}: proxy {p:?} for ({from}, {a:#x}) has no route"
                        ));
                    }
                    let ept = engine
                        .endpoint_by_addr(p.addr)
                        .and_then(|e| engine.endpoint(e))
                        .ok_or_else(|| format!("{who}: proxy {p:?} without endpoint"))?;
                    if !p.offered {
                        continue;
                    }
                    let name = ept.name();
                    let announced = from_link
                        .announced
                        .iter()
                        .any(|(n, x)| n == name && *x == a);
                    if !announced || !self.topology.offers(&sender.name, name, who) {
                        return Err(format!(
                            "{who}: offered {:?} at {:#x} for {} at {a:#x}, which it does not announce or may not offer",
                            String::from_utf8_lossy(name),
                            p.addr,
                            sender.name
                        ));
                    }
                }
            }
            // Waiting messages: counted per sender, each within its share, each from a live
            // link of the incarnation that sent it.
            let mut per_sender: HashMap<LinkId, usize> = HashMap::new();
            for p in link.pending.iter() {
                *per_sender.entry(p.from).or_default() += 1;
                let live = self.slots[p.from]
                    .link
                    .as_ref()
                    .is_some_and(|l| l.incarnation == p.from_incarnation);
                if !live {
                    return Err(format!(
                        "{who}: a waiting message from a link that went down"
                    ));
                }
            }
            if &per_sender != link.pending.per_sender() {
                return Err(format!(
                    "{who}: per-sender counts {:?}, queue holds {per_sender:?}",
                    link.pending.per_sender()
                ));
            }
            if let Some((from, n)) = per_sender
                .iter()
                .find(|(_, n)| **n > self.max_queued_per_sender)
            {
                let from = &self.slots[*from].name;
                return Err(format!("{who}: {n} messages of {from} wait"));
            }
        }
        // Every buffer a link's engine holds is a message waiting somewhere.
        for (id, slot) in self.slots.iter().enumerate() {
            let Some(link) = slot.link.as_ref() else {
                continue;
            };
            let waiting: usize = self
                .slots
                .iter()
                .filter_map(|s| s.link.as_ref())
                .map(|l| l.pending.count_from(id))
                .sum();
            if link.engine.held_rx_count() != waiting {
                return Err(format!(
                    "{}: {} buffers held, {waiting} messages waiting",
                    slot.name,
                    link.engine.held_rx_count()
                ));
            }
        }
        Ok(())
    }

    // ----- the link lifecycle ----------------------------------------------------------

    /// Handles a kick from guest `id`: brings its link up if its rings are new, delivers what
    /// it sent and what waits for it. Returns where its rings stand, to record with the
    /// frontend (vhost-user's GET_VRING_BASE reports it). `mem` is the guest's current memory
    /// table, made once per table (a table the link does not use yet is switched to here).
    /// Touches only the links the kick involves (this guest's and those it sends to): the
    /// work over all links is the clock's ([`tick`](Self::tick)).
    pub fn service(
        &mut self,
        id: LinkId,
        mem: &GuestRam,
        info: RingsInfo,
        notifier: &Arc<dyn Notifier>,
    ) -> Option<[u16; 2]> {
        let id = self.slot_of(id);
        let slot = self.slots.get_mut(id)?;
        if slot.broken == Some(info.rings) {
            return None;
        }
        slot.broken = None;
        let rebuild = slot.link.as_ref().is_none_or(|l| l.rings != info.rings);
        if rebuild {
            self.link_down(id, "the guest set up new rings");
            self.slots[id].notifier = Some(SlotNotifier(notifier.clone()));
            if let Err(e) = self.link_up(id, mem, info, notifier) {
                let slot = &mut self.slots[id];
                if slot.link_reports.worth_logging(Reports::FIRST) {
                    log::error!("guest {}: cannot attach to its rings: {e}", slot.name);
                }
                self.slots[id].stats.protocol_errors += 1;
                self.mark_broken(id, info.rings, "cannot attach to its rings");
                return None;
            }
        } else if let Err(e) = self.update_memory(id, mem) {
            // Serving on from the old table would read memory the guest gave up: the
            // rings are gone, as much a protocol error as a ring outside memory at setup.
            let slot = &mut self.slots[id];
            if slot.link_reports.worth_logging(Reports::FIRST) {
                log::error!(
                    "guest {}: rings outside its new memory table ({e}); its link is down until it resets the device",
                    slot.name
                );
            }
            self.slots[id].stats.protocol_errors += 1;
            self.link_down(id, "rings outside the new memory table");
            self.mark_broken(id, info.rings, "rings outside its new memory table");
            return None;
        }
        self.process(id, info.rings);
        self.next_avail(id)
    }

    /// Switches guest `id`'s link to the memory table `mem`, if it is a new one (a pointer
    /// comparison: the caller makes a [`GuestRam`] once per table, not per kick).
    fn update_memory(&mut self, id: LinkId, mem: &GuestRam) -> Result<(), LinkError> {
        let Some(link) = self.slots[id].link.as_mut() else {
            return Ok(());
        };
        if link.mem.same_as(mem) {
            return Ok(());
        }
        link.mem = mem.clone();
        if let LinkTransport::Device(t) = link.engine.transport_mut() {
            t.set_memory(mem.clone())?;
        }
        Ok(())
    }

    /// Stops guest `id`'s link (its frontend stopped the rings, reset the device or went away):
    /// withdraws its names from the others and drops what waits for it. Returns where its rings
    /// stood.
    pub fn stop(&mut self, id: LinkId, reason: &str) -> Option<[u16; 2]> {
        let id = self.slot_of(id);
        let at = match self
            .slots
            .get_mut(id)
            .and_then(|s| s.link.as_mut())
            .and_then(|l| l.engine.transport_mut().resume_point())
        {
            Some(Ok(at)) => Some(at),
            Some(Err(held)) => {
                log::warn!(
                    "guest {}: its packed rings stopped with {held} buffer(s) still held; vhost-user's ring base cannot carry their used position, so no resume point is reported (rings started again from there break its link until it resets the device)",
                    self.slots[id].name
                );
                None
            }
            None => None,
        };
        self.link_down(id, reason);
        if let Some(slot) = self.slots.get_mut(id) {
            slot.broken = None;
        }
        at
    }

    /// Guest `id`'s memory vanished under the hub (its VMM shrank the file; the fault was
    /// survived in crate::guest_memory): its link goes down and stays down until it resets
    /// the device (DEVICE_NEEDS_RESET), as for a ring protocol error.
    /// Logged once per fault (a region faults once: it is zero memory from then on).
    pub fn break_memory_fault(&mut self, id: LinkId) {
        let id = self.slot_of(id);
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        log::error!(
            "{} {}: its memory vanished (the file behind it shrank); its link is down until it resets the device",
            slot.kind,
            slot.name
        );
        // The zeros read in its place may have broken the link already.
        let Some(rings) = slot.link.as_ref().map(|l| l.rings) else {
            return;
        };
        self.link_down(id, "guest memory vanished");
        self.mark_broken(id, rings, "its memory vanished");
    }

    fn next_avail(&self, id: LinkId) -> Option<[u16; 2]> {
        self.link(id)?.engine.transport().next_avail()
    }

    fn link_up(
        &mut self,
        id: LinkId,
        mem: &GuestRam,
        info: RingsInfo,
        notifier: &Arc<dyn Notifier>,
    ) -> Result<(), LinkError> {
        let env = LinkEnv::new(notifier.clone());
        let rings = DeviceRings {
            areas: info.rings,
            next_avail: info.next_avail,
            format: info.format,
        };
        let mut transport = DeviceTransport::attach(
            mem.clone(),
            env,
            rings,
            Endian::Little,
            info.event_idx,
            MAX_BUFFER,
        )?;
        transport.want_rx_notifications(true)?;
        transport.want_tx_notifications(true)?;
        let config = Config {
            name_service: info.name_service,
            ..Config::default()
        };
        self.install(
            id,
            LinkTransport::Device(transport),
            config,
            mem,
            info.rings,
        );
        Ok(())
    }

    /// Attaches a link on which the hub is the driver: a remote's vdev (see remoteproc-vm),
    /// whose rings and buffers the caller laid out. Any previous link of `id` goes down first.
    pub fn attach(
        &mut self,
        id: LinkId,
        transport: DriverTransport<GuestRam, LinkEnv>,
        name_service: bool,
    ) {
        let id = self.slot_of(id);
        if id >= self.slots.len() {
            log::error!("a remote's link attached to a hub that does not serve it: ignored");
            return;
        }
        self.link_down(id, "re-attached");
        // A fresh device: whatever the previous one broke is forgotten.
        if let Some(slot) = self.slots.get_mut(id) {
            slot.broken = None;
        }
        let mem = transport.memory().clone();
        let rings = [transport.layout().rx_ring, transport.layout().tx_ring];
        let config = Config {
            name_service,
            ..Config::default()
        };
        self.install(
            id,
            LinkTransport::Driver(Box::new(transport)),
            config,
            &mem,
            rings,
        );
        self.process(id, rings);
    }

    /// Handles a notification on an attached link (the remote kicked): delivers what it sent
    /// and what waits for it. Touches only the links involved, as [`service`](Self::service).
    pub fn service_attached(&mut self, id: LinkId) {
        let id = self.slot_of(id);
        let Some(rings) = self.link(id).map(|l| l.rings) else {
            return;
        };
        self.process(id, rings);
    }

    fn install(
        &mut self,
        id: LinkId,
        transport: LinkTransport,
        config: Config,
        mem: &GuestRam,
        rings: [VringLayout; 2],
    ) {
        self.incarnations += 1;
        let slot = &mut self.slots[id];
        slot.stats.ups += 1;
        if slot.link_reports.worth_logging(Reports::FIRST) {
            log::info!(
                "{} {}: link up (name service {}; {} link event(s))",
                slot.kind,
                slot.name,
                if config.name_service { "on" } else { "off" },
                slot.link_reports.count()
            );
        }
        let mut engine = Rpmsg::new(transport, config);
        let mut nat = Routes::default();
        // Host services this link may see.
        for (index, spec) in self.topology.services_for(&slot.name) {
            match engine.create_ept(spec.name.as_bytes(), ADDR_ANY, ADDR_ANY) {
                Ok(ept) => {
                    let addr = engine.endpoint(ept).map_or(ADDR_ANY, |e| e.addr());
                    nat.insert(addr, Target::Service(index));
                }
                // Its rings can refuse the announcement: rate-limited like the rest.
                Err(e) => {
                    if slot.error_reports.worth_logging(Reports::FIRST) {
                        log::error!("{}: cannot announce service {}: {e}", slot.name, spec.name);
                    }
                }
            }
        }
        slot.link = Some(Link {
            engine,
            mem: mem.clone(),
            rings,
            incarnation: self.incarnations,
            nat,
            reverse: Default::default(),
            announced: Vec::new(),
            pending: Default::default(),
            stalled: false,
            more: false,
            bad_chains_seen: 0,
            kicks_suppressed: false,
        });
        // Names the other links announced that this one may see.
        self.offer_all_to(id);
    }

    fn link_down(&mut self, id: LinkId, reason: &str) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let Some(mut link) = slot.link.take() else {
            return;
        };
        if slot.link_reports.worth_logging(Reports::FIRST) {
            log::info!(
                "{} {}: link down ({reason}); withdrawing {} name(s)",
                slot.kind,
                slot.name,
                link.announced.len()
            );
        }
        self.remove_proxies_of(id);
        self.drop_pending_of(id, link.pending.take_all());
    }

    /// Guest `id` broke the ring protocol: its link goes down, and stays down (its kicks
    /// ignored) until it sets up new rings, by a device reset or otherwise. Its notifier hears of it
    /// ([`Notifier::needs_reset`]): virtio's DEVICE_NEEDS_RESET.
    fn break_link(&mut self, id: LinkId, e: &LinkError) {
        let Some(rings) = self.link(id).map(|l| l.rings) else {
            return;
        };
        let slot = &mut self.slots[id];
        if slot.link_reports.worth_logging(Reports::FIRST) {
            log::error!(
                "{} {}: broke the virtio ring protocol ({e}); its link is down until it resets the device",
                slot.kind,
                slot.name
            );
        }
        slot.stats.protocol_errors += 1;
        self.link_down(id, "ring protocol error");
        self.mark_broken(id, rings, "broke the virtio ring protocol");
    }

    /// Marks guest `id`'s `rings` broken and tells its notifier (DEVICE_NEEDS_RESET).
    fn mark_broken(&mut self, id: LinkId, rings: [VringLayout; 2], why: &'static str) {
        let slot = &mut self.slots[id];
        slot.broken = Some(rings);
        slot.broken_why = why;
        if let Some(n) = &slot.notifier {
            n.0.needs_reset();
        }
    }
}
