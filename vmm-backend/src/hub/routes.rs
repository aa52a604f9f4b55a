//! The address tables: where each hub address in a link leads ([`Routes`]), the proxies that
//! stand for another guest's addresses ([`Proxies`]), and how announcements make and remove
//! them: offering a name to the guests the topology lets see it, withdrawing it, and the reply
//! proxy a sender gets in its receiver's link. Each (receiver, sender, sender's address) has
//! at most one proxy, whatever the order of sends and announcements.

use super::Hub;
use super::link::{LinkId, Slot};
use super::stats::{DropReason, Reports};
use std::collections::BTreeMap;
use vamp_rpmsg::rpmsg::{Error as RpmsgError, NsEvent};
use vamp_rpmsg::wire::{ADDR_ANY, NS_ADDR, RESERVED_ADDRESSES};

/// Names one link may have announced at a time. Further announcements are refused (logged,
/// counted as dropped): a guest announcing without end would otherwise grow the hub and flood
/// every guest its names are offered to.
pub const MAX_NAMES_PER_LINK: usize = 1024;

/// Addresses of one guest that another guest's link may know it by: its announced names
/// ([`MAX_NAMES_PER_LINK`]) plus this many source addresses it sent from. Messages from further
/// new source addresses are dropped (logged): without a bound, a guest sending from ever new
/// addresses would make the hub create endpoints in the receiver's link without end. Linux and
/// OpenAMP hand out the lowest free address, so a real guest uses few.
pub const MAX_REPLY_PROXIES_PER_SOURCE: usize = 4096;
pub(super) const MAX_PROXIES_PER_SOURCE: usize = MAX_NAMES_PER_LINK + MAX_REPLY_PROXIES_PER_SOURCE;

/// Where a hub address leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// A host service, by its index in the topology.
    Service(usize),
    /// An address in another guest's link.
    Guest { link: LinkId, addr: u32 },
}

/// Where each hub address of one link leads. The hub's engine allocates every one of these
/// addresses itself (services, announced proxies, reply proxies: all `ADDR_ANY`, so the lowest
/// free from 1024 up), which keeps them dense: a vector indexed by address serves the lookup
/// every message needs without hashing.
#[derive(Debug, Default)]
pub(super) struct Routes(Vec<Option<Target>>);

impl Routes {
    fn index(addr: u32) -> Option<usize> {
        addr.checked_sub(RESERVED_ADDRESSES).map(|i| i as usize)
    }

    pub(super) fn get(&self, addr: u32) -> Option<Target> {
        self.0.get(Self::index(addr)?).copied().flatten()
    }

    pub(super) fn insert(&mut self, addr: u32, target: Target) {
        let Some(i) = Self::index(addr) else {
            // The engine never hands out a reserved address for ADDR_ANY.
            log::error!("hub address {addr:#x} is reserved: route to {target:?} not kept");
            return;
        };
        if i >= self.0.len() {
            self.0.resize(i + 1, None);
        }
        self.0[i] = Some(target);
    }

    fn remove(&mut self, addr: u32) {
        if let Some(slot) = Self::index(addr).and_then(|i| self.0.get_mut(i)) {
            *slot = None;
        }
        while self.0.last() == Some(&None) {
            self.0.pop();
        }
    }

    /// Every route, by hub address.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, Target)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (RESERVED_ADDRESSES + i as u32, t)))
    }
}

/// A hub address in a receiver's link that stands for one address of one sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Proxy {
    /// The hub address, in the receiver's link.
    pub(super) addr: u32,
    /// Announced to the receiver under a name the sender announced at that address (else a
    /// reply proxy only: the source the receiver sees on the sender's messages).
    pub(super) offered: bool,
}

/// The proxies in one receiver's link, grouped by sender: (sender, sender's address) maps to
/// one hub address, and a sender's link going down finds its own proxies without a scan.
///
/// Looked up for every forwarded message (the reply proxy of its source), so without hashing:
/// senders are the hub's dense link indices (a vector), and a sender's addresses an ordered map
/// (a handful of comparisons for the few addresses a real guest sends from; logarithmic for
/// the most a hostile one can make, with no worst case a chosen set of addresses can provoke).
/// Two SipHash lookups were 12 % of the hub's instructions per forwarded message.
#[derive(Debug, Default)]
pub(super) struct Proxies(Vec<BTreeMap<u32, Proxy>>);

impl Proxies {
    pub(super) fn get(&self, from: LinkId, addr: u32) -> Option<Proxy> {
        self.0.get(from)?.get(&addr).copied()
    }

    /// Proxies for `from`'s addresses.
    pub(super) fn count_from(&self, from: LinkId) -> usize {
        self.0.get(from).map_or(0, BTreeMap::len)
    }

    fn insert(&mut self, from: LinkId, addr: u32, proxy: Proxy) {
        if from >= self.0.len() {
            self.0.resize_with(from + 1, BTreeMap::new);
        }
        self.0[from].insert(addr, proxy);
    }

    fn remove(&mut self, from: LinkId, addr: u32) -> Option<Proxy> {
        self.0.get_mut(from)?.remove(&addr)
    }

    /// Takes every proxy of `from`: (sender's address, proxy).
    pub(super) fn take_from(&mut self, from: LinkId) -> BTreeMap<u32, Proxy> {
        self.0.get_mut(from).map(std::mem::take).unwrap_or_default()
    }

    /// Every sender's proxies (senders with none left out).
    pub(super) fn by_sender(&self) -> impl Iterator<Item = (LinkId, &BTreeMap<u32, Proxy>)> {
        self.0.iter().enumerate().filter(|(_, p)| !p.is_empty())
    }
}

impl Hub {
    /// A name-service event from guest `me`: offers the name to the guests the topology lets
    /// see it, or withdraws it from all.
    pub(super) fn name_service(&mut self, me: LinkId, event: NsEvent<'_>) {
        let my_name = self.slots[me].name.clone();
        match event {
            NsEvent::Created { name, addr, .. } => {
                // Names are the guest's bytes: logged escaped ({:?}), so a name cannot forge
                // log lines or drive a terminal.
                let shown = String::from_utf8_lossy(name);
                if name.is_empty() || addr == ADDR_ANY || addr == NS_ADDR {
                    // Nothing could be offered under it, or no message could reach it.
                    self.slots[me].report_drop(DropReason::Limit, format_args!(
                        "announcement of {shown:?} at {addr:#x} ignored: not a usable name and address"
                    ));
                    return;
                }
                let slot = &mut self.slots[me];
                let Some(link) = slot.link.as_mut() else {
                    return;
                };
                if !link.announced.iter().any(|(n, a)| n == name && *a == addr) {
                    if link.announced.len() >= MAX_NAMES_PER_LINK {
                        slot.report_drop(DropReason::Limit, format_args!(
                            "announces more than {MAX_NAMES_PER_LINK} names: {shown:?} at {addr:#x} ignored"
                        ));
                        return;
                    }
                    link.announced.push((name.to_vec(), addr));
                }
                if slot.ns_reports.worth_logging(Reports::FIRST_NAME_SERVICE) {
                    log::info!(
                        "guest {my_name}: announced {shown:?} at {addr:#x} ({} name-service event(s))",
                        slot.ns_reports.count()
                    );
                }
                for other in 0..self.slots.len() {
                    if other != me
                        && self
                            .topology
                            .offers(&my_name, name, &self.slots[other].name)
                    {
                        offer(&mut self.slots, me, name, addr, other);
                    }
                }
            }
            NsEvent::Destroyed { name, addr, .. } => {
                let slot = &mut self.slots[me];
                let Some(link) = slot.link.as_mut() else {
                    return;
                };
                link.announced.retain(|(n, a)| !(n == name && *a == addr));
                if slot.ns_reports.worth_logging(Reports::FIRST_NAME_SERVICE) {
                    log::info!(
                        "guest {my_name}: withdrew {:?} at {addr:#x} ({} name-service event(s))",
                        String::from_utf8_lossy(name),
                        slot.ns_reports.count()
                    );
                }
                for other in 0..self.slots.len() {
                    if other != me {
                        withdraw(&mut self.slots, me, addr, other);
                    }
                }
            }
        }
    }

    /// Offers guest `id`, whose link just came up, every name the others announced that the
    /// topology lets it see.
    pub(super) fn offer_all_to(&mut self, id: LinkId) {
        let name = &self.slots[id].name;
        let offers: Vec<(LinkId, Vec<u8>, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(other, _)| other != id)
            .filter_map(|(other, s)| s.link.as_ref().map(|l| (other, s, l)))
            .flat_map(|(other, s, l)| {
                l.announced
                    .iter()
                    .filter(|(n, _)| self.topology.offers(&s.name, n, name))
                    .map(move |(n, addr)| (other, n.clone(), *addr))
            })
            .collect();
        for (other, n, addr) in offers {
            offer(&mut self.slots, other, &n, addr, id);
        }
    }

    /// The hub address in link `to` that stands for (`from`, `addr`), made on first use.
    pub(super) fn reply_proxy(
        &mut self,
        to: LinkId,
        from: LinkId,
        addr: u32,
    ) -> Result<u32, &'static str> {
        let link = self.slots[to]
            .link
            .as_mut()
            .ok_or("the destination is not connected")?;
        if let Some(p) = link.reverse.get(from, addr) {
            return Ok(p.addr);
        }
        if link.reverse.count_from(from) >= MAX_PROXIES_PER_SOURCE {
            return Err("the sender uses too many source addresses towards it");
        }
        let engine = &mut link.engine;
        let ept = engine
            .create_ept(b"", ADDR_ANY, ADDR_ANY)
            .map_err(|_| "no address left in the destination's link")?;
        let proxy = engine
            .endpoint(ept)
            .ok_or("no address left in the destination's link")?
            .addr();
        link.nat.insert(proxy, Target::Guest { link: from, addr });
        link.reverse.insert(
            from,
            addr,
            Proxy {
                addr: proxy,
                offered: false,
            },
        );
        Ok(proxy)
    }

    /// Removes from every other link what guest `id`'s link left there: its proxies (found
    /// through the per-sender indexes, so this costs time in proportion to the dead link's own
    /// state).
    pub(super) fn remove_proxies_of(&mut self, id: LinkId) {
        for other in 0..self.slots.len() {
            let slot = &mut self.slots[other];
            let Some(l) = slot.link.as_mut() else {
                continue;
            };
            for (_, proxy) in l.reverse.take_from(id) {
                remove_proxy(slot, proxy);
            }
        }
    }
}

/// Makes `from`'s name (announced at `addr`) visible in `to`'s link: announces the proxy of
/// (`from`, `addr`) there, the reply proxy it already has if it sent from that address.
fn offer(slots: &mut [Slot], from: LinkId, name: &[u8], addr: u32, to: LinkId) {
    let shown = String::from_utf8_lossy(name);
    let Some(link) = slots[to].link.as_mut() else {
        return;
    };
    let engine = &mut link.engine;
    let offered = match link.reverse.get(from, addr) {
        Some(proxy) if proxy.offered => return,
        Some(proxy) => engine
            .endpoint_by_addr(proxy.addr)
            .ok_or(RpmsgError::InvalidEndpoint)
            .and_then(|ept| engine.announce_as(ept, name))
            .map(|()| proxy.addr),
        None if link.reverse.count_from(from) >= MAX_PROXIES_PER_SOURCE => {
            Err(RpmsgError::NoAddress)
        }
        None => engine
            .create_ept_announcing(name, ADDR_ANY, ADDR_ANY, true)
            .and_then(|ept| {
                engine
                    .endpoint(ept)
                    .map(|e| e.addr())
                    .ok_or(RpmsgError::InvalidEndpoint)
            }),
    };
    match offered {
        Ok(proxy) => {
            link.nat.insert(proxy, Target::Guest { link: from, addr });
            link.reverse.insert(
                from,
                addr,
                Proxy {
                    addr: proxy,
                    offered: true,
                },
            );
            log::debug!(
                "{} -> {}: {shown:?} at {addr:#x} offered as {proxy:#x}",
                slots[from].name,
                slots[to].name,
            );
        }
        Err(e) => {
            // The announcing guest can repeat this at line rate: rate-limited on its count.
            let to_name = slots[to].name.clone();
            let slot = &mut slots[from];
            if slot.error_reports.worth_logging(Reports::FIRST) {
                log::warn!(
                    "guest {}: cannot offer {shown:?} to {to_name}: {e}",
                    slot.name
                );
            }
        }
    }
}

/// Removes `to`'s proxy for (`from`, `addr`), announcing its destruction if it was announced.
fn withdraw(slots: &mut [Slot], from: LinkId, addr: u32, to: LinkId) {
    let Some(proxy) = slots[to]
        .link
        .as_mut()
        .and_then(|l| l.reverse.remove(from, addr))
    else {
        return;
    };
    remove_proxy(&mut slots[to], proxy);
}

/// Removes `proxy`, already out of the slot's link's `reverse`, from its routes and engine.
fn remove_proxy(slot: &mut Slot, proxy: Proxy) {
    let Some(link) = slot.link.as_mut() else {
        return;
    };
    link.nat.remove(proxy.addr);
    if let Some(ept) = link.engine.endpoint_by_addr(proxy.addr)
        && let Err(e) = link.engine.destroy_ept(ept)
        && slot.error_reports.worth_logging(Reports::FIRST)
    {
        log::warn!("guest {}: withdrawing {:#x}: {e}", slot.name, proxy.addr);
    }
}
