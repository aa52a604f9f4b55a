//! The hub on packed virtqueues (VIRTIO_F_RING_PACKED): native guests (vamp's own vhost-user
//! frontend) that ack the feature run their links over packed rings, beside guests on split
//! rings; hostile packed rings (a lying wrap counter, an out-of-range buffer id) cost only
//! their own guest its link.

mod common;

use common::{
    ECHO_SOLO, Inbox, TXQ, TestHub, bind_announced, bob_binds_alices_service, check_echo,
    echo_through_alice, guests_toml, kick, pump, sized_payload, wait_until,
};
use std::path::Path;
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::transport::RingFormat;
use vamp_rpmsg::virtio::VIRTIO_F_RING_PACKED;
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest};

/// A packed descriptor's fields (virtio 1.1, 2.8.13): address, length, buffer id, flags.
const DESC_BYTES: u64 = 16;
const DESC_LEN: u64 = 8;
const DESC_ID: u64 = 12;
const DESC_FLAGS: u64 = 14;
/// The AVAIL and USED flag bits of a packed descriptor.
const AVAIL: u16 = 1 << 7;
const USED: u16 = 1 << 15;

/// A native guest on `socket` that acks packed rings when offered (`packed`).
fn connect(socket: &Path, packed: bool) -> NativeGuest {
    let opts = GuestOptions {
        packed,
        ..GuestOptions::default()
    };
    NativeGuest::connect(socket, opts).unwrap()
}

fn ring_format(g: &mut NativeGuest) -> RingFormat {
    g.rpmsg().transport().ring_format()
}

#[test]
fn a_packed_guest_gets_every_echo() {
    let hub = TestHub::start("hub-packed", ECHO_SOLO);
    let mut g = connect(&hub.sockets[0], true);
    assert_ne!(
        g.offered_features() & VIRTIO_F_RING_PACKED,
        0,
        "packed offered"
    );
    assert_ne!(
        g.negotiated_features() & VIRTIO_F_RING_PACKED,
        0,
        "packed acked"
    );
    assert_eq!(ring_format(&mut g), RingFormat::Packed);
    let mut inbox = Inbox::default();
    let (ept, addr) = bind_announced(&mut g, &mut inbox, "rpmsg-client-sample");
    // 1000 messages: both rings (256 entries) wrap several times, their wrap counters flip.
    for i in 0..1000 {
        check_echo(&mut g, &mut inbox, ept, addr, &sized_payload(i));
    }
    assert_eq!(hub.stats(0).served, 1000);
    assert!(hub.is_up(0));
}

#[test]
fn a_guest_that_does_not_ack_packed_stays_on_split_rings() {
    let hub = TestHub::start("hub-packed", ECHO_SOLO);
    let mut g = connect(&hub.sockets[0], false);
    assert_ne!(
        g.offered_features() & VIRTIO_F_RING_PACKED,
        0,
        "packed offered"
    );
    assert_eq!(g.negotiated_features() & VIRTIO_F_RING_PACKED, 0);
    assert_eq!(ring_format(&mut g), RingFormat::Split);
    let mut inbox = Inbox::default();
    let (ept, addr) = bind_announced(&mut g, &mut inbox, "rpmsg-client-sample");
    for i in 0..300 {
        check_echo(&mut g, &mut inbox, ept, addr, &sized_payload(i));
    }
}

/// alice offers "a-svc" to bob; both have the hub's "echo".
fn pair() -> String {
    guests_toml(&["alice", "bob", "carol"])
        + r#"
[[service]]
type = "echo"
name = "echo"
[[channel]]
from = "alice"
to = ["bob"]
"#
}

/// bob on packed rings reaches alice on split rings (and back) through the hub: the hub
/// copies between the formats.
#[test]
fn packed_and_split_guests_reach_each_other() {
    let hub = TestHub::start("hub-packed", &pair());
    let mut alice = connect(&hub.sockets[0], false);
    let mut bob = connect(&hub.sockets[1], true);
    assert_eq!(ring_format(&mut alice), RingFormat::Split);
    assert_eq!(ring_format(&mut bob), RingFormat::Packed);
    let (mut ai, mut bi) = (Inbox::echoing(), Inbox::default());
    let (_, bound) = bob_binds_alices_service(&mut alice, &mut ai, &mut bob, &mut bi);
    echo_through_alice(&mut bob, &mut bi, &mut alice, &mut ai, bound, 1000);
    assert_eq!(hub.stats(1).forwarded, 1000);
    assert_eq!(hub.stats(0).forwarded, 1000);
}

/// The slot of `g`'s transmit ring (packed, first lap: no wrap yet) where its driver makes
/// the next chain available: the first descriptor not marked used in lap 1.
fn next_tx_slot(g: &NativeGuest) -> u64 {
    let ring = g.layout().tx_ring;
    let mem = g.memory();
    (0..u64::from(ring.size))
        .map(|k| ring.desc + DESC_BYTES * k)
        .find(|&d| u16::from_le(mem.load_u16(d + DESC_FLAGS).unwrap()) & (AVAIL | USED) == 0)
        .expect("transmit ring still in its first lap")
}

/// alice (packed) breaks her transmit ring with `forge` at her next slot; carol (packed)
/// keeps her echoes, alice's link alone goes down.
fn hostile_packed_ring_costs_only_its_guest(forge: impl Fn(&NativeGuest, u64)) {
    let hub = TestHub::start("hub-packed", &pair());
    let mut alice = connect(&hub.sockets[0], true);
    let mut carol = connect(&hub.sockets[2], true);
    let (mut ai, mut ci) = (Inbox::default(), Inbox::default());
    pump(&mut alice, &mut ai, "echo at alice", |i| {
        i.announced("echo").is_some()
    });
    let (ept, addr) = bind_announced(&mut carol, &mut ci, "echo");
    check_echo(&mut carol, &mut ci, ept, addr, b"before");
    assert!(hub.is_up(0));

    let slot = next_tx_slot(&alice);
    forge(&alice, slot);
    kick(&mut alice, TXQ);
    wait_until("alice's link broken", || hub.is_broken(0));
    assert!(hub.stats(0).protocol_errors >= 1);

    for i in 0..100 {
        check_echo(&mut carol, &mut ci, ept, addr, &sized_payload(i));
    }
    assert!(hub.is_up(2), "carol's link survives alice's ring");
}

#[test]
fn attack_packed_lying_wrap_counter_breaks_only_its_link() {
    // Marked used in the device's current lap where nothing was used: the driver lies about
    // its wrap counter.
    hostile_packed_ring_costs_only_its_guest(|g, d| {
        g.memory()
            .store_u16(d + DESC_FLAGS, (AVAIL | USED).to_le())
            .unwrap();
    });
}

#[test]
fn attack_packed_out_of_range_id_breaks_only_its_link() {
    // A well-formed readable buffer inside memory, made available in lap 1, with a buffer id
    // past the ring's size: it could never be returned.
    hostile_packed_ring_costs_only_its_guest(|g, d| {
        let mem = g.memory();
        let pool = g.layout().pool_addr;
        mem.store_u64(d, pool.to_le()).unwrap();
        mem.store_u32(d + DESC_LEN, 64u32.to_le()).unwrap();
        mem.store_u16(d + DESC_ID, 0xfff0u16.to_le()).unwrap();
        mem.store_u16(d + DESC_FLAGS, AVAIL.to_le()).unwrap();
    });
}

#[test]
fn attack_packed_chain_with_an_unpublished_tail_breaks_only_its_link() {
    // A head made available with NEXT, its tail never published (flags 0 in lap 1): the
    // driver lies about the tail's wrap counter; the hub must not walk into it as a chain.
    const NEXT: u16 = 1;
    hostile_packed_ring_costs_only_its_guest(|g, d| {
        let mem = g.memory();
        let ring = g.layout().tx_ring;
        let tail = ring.desc + (d - ring.desc + DESC_BYTES) % (DESC_BYTES * u64::from(ring.size));
        mem.store_u16(tail + DESC_FLAGS, 0).unwrap();
        mem.store_u64(d, g.layout().pool_addr.to_le()).unwrap();
        mem.store_u32(d + DESC_LEN, 64u32.to_le()).unwrap();
        mem.store_u16(d + DESC_ID, 0u16.to_le()).unwrap();
        mem.store_u16(d + DESC_FLAGS, (AVAIL | NEXT).to_le())
            .unwrap();
    });
}
