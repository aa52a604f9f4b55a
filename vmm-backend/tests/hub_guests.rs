//! The hub with native guests (vamp's own vhost-user frontend playing each guest with the
//! driver role): routing, name offering, ACLs, backpressure, reconnects and hostile rings,
//! all in plain `cargo test`, no QEMU.

mod common;

use common::{
    ALICE_AND_R5, ECHO_SOLO, Inbox, PlayedRemote, TXQ, TestHub, WAIT, await_echo, bind_announced,
    bob_binds_alices_service, check_echo, echo_through_alice, guests_toml, kick, pump,
    sized_payload,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::rpmsg::Error as RpmsgError;
use vamp_rpmsg::wire::ADDR_ANY;

#[test]
fn echo_service_answers_every_size() {
    let hub = TestHub::start("hub", ECHO_SOLO);
    let mut g = hub.connect(0);
    assert_ne!(g.negotiated_features() & 1, 0, "F_NS negotiated");
    let mut inbox = Inbox::default();
    let (ept, addr) = bind_announced(&mut g, &mut inbox, "rpmsg-client-sample");
    for i in 0..1000 {
        check_echo(&mut g, &mut inbox, ept, addr, &sized_payload(i));
    }
    assert_eq!(hub.hub.link(0).stats(0).served, 1000);
    // Oversize is refused by the guest's own engine, never truncated.
    assert_eq!(
        g.rpmsg().trysend(ept, &[0; 497]),
        Err(RpmsgError::TooLarge { len: 497, max: 496 })
    );
}

const PAIR_ROUTES: &str = r#"
[[service]]
type = "echo"
name = "echo"
[[channel]]
from = "alice"
to = ["bob"]
[[channel]]
from = "carol"
to = ["alice"]
names = ["c-svc"]
"#;

/// alice, bob and carol, with [`PAIR_ROUTES`].
fn pair() -> String {
    guests_toml(&["alice", "bob", "carol"]) + PAIR_ROUTES
}

#[test]
fn guests_reach_each_other_by_name_with_translated_addresses() {
    let hub = TestHub::start("hub", &pair());
    let (mut alice, mut bob) = (hub.connect(0), hub.connect(1));
    let (mut ai, mut bi) = (Inbox::echoing(), Inbox::default());
    // alice offers a service; bob sees it under a hub address of his own link.
    let (svc, bound) = bob_binds_alices_service(&mut alice, &mut ai, &mut bob, &mut bi);
    echo_through_alice(&mut bob, &mut bi, &mut alice, &mut ai, bound, 1000);
    // alice saw bob only through a hub address in her own link, never bob's own address.
    let seen_by_alice = alice.rpmsg().endpoint(svc).unwrap().dest();
    let bob_addr = bob.rpmsg().endpoint(bound.0).unwrap().addr();
    assert_ne!(seen_by_alice, ADDR_ANY);
    assert_ne!(seen_by_alice, bob_addr);
    assert_eq!(hub.hub.link(1).stats(1).forwarded, 1000);
    assert_eq!(hub.hub.link(0).stats(0).forwarded, 1000);
}

#[test]
fn names_are_offered_only_where_the_topology_says() {
    let hub = TestHub::start("hub", &pair());
    let (mut alice, mut bob, mut carol) = (hub.connect(0), hub.connect(1), hub.connect(2));
    let (mut ai, mut bi, mut ci) = (Inbox::default(), Inbox::default(), Inbox::default());
    alice
        .rpmsg()
        .create_ept(b"a-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    carol
        .rpmsg()
        .create_ept(b"c-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    carol
        .rpmsg()
        .create_ept(b"c-private", ADDR_ANY, ADDR_ANY)
        .unwrap();
    pump(&mut bob, &mut bi, "a-svc at bob", |i| {
        i.announced("a-svc").is_some()
    });
    pump(&mut alice, &mut ai, "c-svc at alice", |i| {
        i.announced("c-svc").is_some()
    });
    pump(&mut carol, &mut ci, "the echo at carol", |i| {
        i.announced("echo").is_some()
    });
    // Let every announcement settle, then check who saw what.
    for _ in 0..20 {
        alice.poll(&mut ai).unwrap();
        bob.poll(&mut bi).unwrap();
        carol.poll(&mut ci).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let names = |i: &Inbox| {
        let mut v: Vec<String> = i
            .created
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&ai),
        ["c-svc", "echo"],
        "alice: carol's c-svc only, not c-private"
    );
    assert_eq!(names(&bi), ["a-svc", "echo"]);
    assert_eq!(names(&ci), ["echo"], "nobody offers anything to carol");
}

#[test]
fn addresses_not_offered_lead_nowhere() {
    let hub = TestHub::start("hub", &pair());
    let (mut alice, mut carol) = (hub.connect(0), hub.connect(2));
    let (mut ai, mut ci) = (Inbox::default(), Inbox::default());
    alice
        .rpmsg()
        .create_ept(b"a-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    pump(&mut carol, &mut ci, "carol's link", |i| {
        i.announced("echo").is_some()
    });
    pump(&mut alice, &mut ai, "alice's link", |i| {
        i.announced("echo").is_some()
    });
    // carol guesses addresses in her link: every hub address she was not given is refused.
    let ept = carol.rpmsg().create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    let echo = ci.announced("echo").unwrap();
    for guess in (0..2048u32).filter(|&a| a != echo && a != 53) {
        carol.rpmsg().sendto(ept, guess, b"let me in").unwrap();
        if guess % 200 == 0 {
            carol.poll(&mut ci).unwrap();
        }
    }
    let deadline = Instant::now() + WAIT;
    while hub.hub.link(2).stats(2).dropped < 2046 {
        assert!(Instant::now() < deadline, "{:?}", hub.hub.link(2).stats(2));
        std::thread::sleep(Duration::from_millis(10));
    }
    alice.poll(&mut ai).unwrap();
    assert!(ai.messages.is_empty(), "nothing reached alice");
    assert_eq!(hub.hub.link(2).stats(2).forwarded, 0);
}

#[test]
fn a_full_receiver_delays_only_itself_and_loses_nothing() {
    let hub = TestHub::start("hub", &pair());
    let (mut alice, mut bob) = (hub.connect(0), hub.connect(1));
    let (mut ai, mut bi) = (Inbox::default(), Inbox::default());
    let sink = alice
        .rpmsg()
        .create_ept(b"a-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    pump(&mut bob, &mut bi, "a-svc at bob", |i| {
        i.announced("a-svc").is_some()
    });
    let proxy = bi.announced("a-svc").unwrap();
    let to_alice = bob.rpmsg().create_ept(b"", ADDR_ANY, proxy).unwrap();
    // alice does not read: her 256 receive buffers fill, the rest waits in the hub holding
    // bob's buffers, and bob feels backpressure (his 256 transmit buffers run out).
    let mut sent = 0u32;
    loop {
        match bob.rpmsg().trysend(to_alice, &sent.to_le_bytes()) {
            Ok(_) => sent += 1,
            Err(RpmsgError::NoBuffer) => {
                // Give the hub time to take what bob posted; stop once nothing moves.
                std::thread::sleep(Duration::from_millis(20));
                if bob.rpmsg().trysend(to_alice, &sent.to_le_bytes()).is_err() {
                    break;
                }
                sent += 1;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(sent < 10_000, "no backpressure");
    }
    assert!(
        sent >= 256,
        "alice's ring took at least her buffers' worth: {sent}"
    );
    assert!(
        hub.hub.link(0).queued_for(0) > 0,
        "the rest waits in the hub"
    );
    // Meanwhile bob still reaches the echo: a full receiver delays only itself... except
    // that bob has no transmit buffer left: backpressure is his, by design. Use a third
    // guest to show the hub itself is not blocked.
    let mut carol = hub.connect(2);
    let mut ci = Inbox::default();
    pump(&mut carol, &mut ci, "echo at carol", |i| {
        i.announced("echo").is_some()
    });
    let echo = ci.announced("echo").unwrap();
    let e = carol.rpmsg().create_ept(b"", ADDR_ANY, echo).unwrap();
    for i in 0..100u32 {
        carol.rpmsg().send(e, &i.to_le_bytes()).unwrap();
        pump(&mut carol, &mut ci, "carol's echo", |i| {
            !i.messages.is_empty()
        });
        assert_eq!(ci.messages.pop_front().unwrap().3, i.to_le_bytes());
    }
    // alice reads at last: every message arrives once, in order.
    let mut got = 0u32;
    let deadline = Instant::now() + WAIT;
    while got < sent {
        alice.poll(&mut ai).unwrap();
        bob.poll(&mut bi).unwrap();
        while let Some((to, _, _, data)) = ai.messages.pop_front() {
            assert_eq!(to, sink);
            assert_eq!(data, got.to_le_bytes(), "in order, none lost or duplicated");
            got += 1;
        }
        assert!(Instant::now() < deadline, "only {got} of {sent} arrived");
        alice.wait(Duration::from_millis(5));
    }
    assert_eq!(hub.hub.link(0).queued_for(0), 0);
    assert_eq!(hub.hub.link(1).stats(1).dropped, 0);
}

#[test]
fn disconnect_withdraws_names_and_reconnect_brings_them_back() {
    let hub = TestHub::start("hub", &pair());
    let (mut alice, mut bob) = (hub.connect(0), hub.connect(1));
    let (mut ai, mut bi) = (Inbox::echoing(), Inbox::default());
    alice
        .rpmsg()
        .create_ept(b"a-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    pump(&mut alice, &mut ai, "alice up", |_| true);
    pump(&mut bob, &mut bi, "a-svc at bob", |i| {
        i.announced("a-svc").is_some()
    });
    let first = bi.announced("a-svc").unwrap();
    alice.disconnect();
    pump(&mut bob, &mut bi, "a-svc withdrawn", |i| {
        i.destroyed
            .iter()
            .any(|(n, a)| n == b"a-svc" && *a == first)
    });
    // A new alice on the same socket: the hub serves her again.
    for round in 0..3 {
        let mut alice = hub.connect(0);
        let mut ai = Inbox::echoing();
        alice
            .rpmsg()
            .create_ept(b"a-svc", ADDR_ANY, ADDR_ANY)
            .unwrap();
        let before = bi.created.len();
        pump(&mut alice, &mut ai, "alice up again", |_| true);
        pump(&mut bob, &mut bi, "a-svc again", |i| {
            i.created.len() > before
        });
        let proxy = bi.announced("a-svc").unwrap();
        let ept = bob.rpmsg().create_ept(b"", ADDR_ANY, proxy).unwrap();
        for i in 0..50u32 {
            bob.rpmsg().send(ept, &i.to_le_bytes()).unwrap();
            let lost = format!("round {round}: echo {i} lost");
            await_echo(&mut bob, &mut bi, &mut alice, &mut ai, &lost);
            assert_eq!(bi.messages.pop_front().unwrap().3, i.to_le_bytes());
        }
        bob.rpmsg().destroy_ept(ept).unwrap();
        alice.disconnect();
        pump(&mut bob, &mut bi, "withdrawn again", |i| {
            i.destroyed.iter().any(|(_, a)| *a == proxy)
        });
    }
    assert!(hub.hub.link(0).stats(0).ups >= 4);
}

#[test]
fn a_device_reset_withdraws_and_reannounces() {
    let hub = TestHub::start("hub", &pair());
    let (mut alice, mut bob) = (hub.connect(0), hub.connect(1));
    let (mut ai, mut bi) = (Inbox::default(), Inbox::default());
    alice
        .rpmsg()
        .create_ept(b"a-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    pump(&mut bob, &mut bi, "a-svc at bob", |i| {
        i.announced("a-svc").is_some()
    });
    alice.reset().unwrap();
    pump(&mut bob, &mut bi, "a-svc withdrawn on reset", |i| {
        !i.destroyed.is_empty()
    });
    alice
        .rpmsg()
        .create_ept(b"a-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    pump(&mut alice, &mut ai, "the echo again at alice", |i| {
        i.announced("echo").is_some()
    });
    pump(&mut bob, &mut bi, "a-svc re-announced", |i| {
        i.created.iter().filter(|(n, _)| n == b"a-svc").count() == 2
    });
}

#[test]
fn descriptors_outside_memory_cost_other_guests_nothing() {
    let hub = TestHub::start("hub", &pair());
    let (mut alice, mut carol) = (hub.connect(0), hub.connect(2));
    let (mut ai, mut ci) = (Inbox::default(), Inbox::default());
    pump(&mut carol, &mut ci, "echo at carol", |i| {
        i.announced("echo").is_some()
    });
    pump(&mut alice, &mut ai, "echo at alice", |i| {
        i.announced("echo").is_some()
    });
    let echo = ci.announced("echo").unwrap();
    let e = carol.rpmsg().create_ept(b"", ADDR_ANY, echo).unwrap();
    // alice forges transmit descriptors that point outside her memory, past her ring's own
    // bookkeeping: the hub must refuse them and keep serving carol.
    let layout = alice.layout();
    let mem = alice.memory().clone();
    let ring = layout.tx_ring;
    let avail_idx_addr = ring.avail + 2;
    for k in 0..8u64 {
        let idx = u16::from_le(mem.load_u16(avail_idx_addr).unwrap());
        let desc = 200 + k as u16; // descriptors alice's engine has not used yet
        let d = ring.desc + 16 * desc as u64;
        mem.store_u64(d, (0xdead_0000_0000u64 + k * 0x1000).to_le())
            .unwrap();
        mem.store_u32(d + 8, 512u32.to_le()).unwrap();
        mem.store_u16(d + 12, 0).unwrap();
        mem.store_u16(ring.avail + 4 + 2 * (idx % ring.size) as u64, desc.to_le())
            .unwrap();
        mem.store_u16(avail_idx_addr, idx.wrapping_add(1).to_le())
            .unwrap();
        kick(&mut alice, TXQ);
        carol.rpmsg().send(e, &k.to_le_bytes()).unwrap();
        pump(&mut carol, &mut ci, "carol's echo", |i| {
            !i.messages.is_empty()
        });
        assert_eq!(ci.messages.pop_front().unwrap().3, k.to_le_bytes());
    }
    // The bad chains came back to alice used with length 0, and the hub still serves her.
    // (alice's kicks are served on her own thread: give it time under load.)
    let deadline = Instant::now() + WAIT;
    loop {
        let used_idx = u16::from_le(mem.load_u16(ring.used + 2).unwrap());
        if used_idx >= 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bad chains not returned: used idx {used_idx}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(hub.hub.link(0).is_up(0));
}

/// A remote link (the hub is the driver, as for a remoteproc vdev), played in the test by the
/// device role of the engine on the same memory; a native guest reaches its service by name.
#[test]
fn a_remote_link_is_routed_like_a_guest() {
    use vamp_vmm_backend::hub::Notifier;

    struct Flag(std::sync::atomic::AtomicU32);
    impl Notifier for Flag {
        fn notify(&self, _queue: u16) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let hub = TestHub::start("hub", ALICE_AND_R5);
    let remote_id = hub.hub.topology().link_index("r5").unwrap();
    let kicks = Arc::new(Flag(Default::default()));
    let mut remote = PlayedRemote::attach(&hub.hub, remote_id, kicks.clone()).rpmsg;
    remote.create_ept(b"r-svc", ADDR_ANY, ADDR_ANY).unwrap();
    hub.hub.link(remote_id).service_attached(remote_id);

    let mut alice = hub.connect(0);
    let mut ai = Inbox::default();
    pump(&mut alice, &mut ai, "r-svc at alice", |i| {
        i.announced("r-svc").is_some()
    });
    let proxy = ai.announced("r-svc").unwrap();
    let ept = alice.rpmsg().create_ept(b"", ADDR_ANY, proxy).unwrap();
    let mut ri = Inbox::echoing();
    for i in 0..300u32 {
        let msg = sized_payload(i);
        alice.rpmsg().send(ept, &msg).unwrap();
        let deadline = Instant::now() + WAIT;
        while ai.messages.is_empty() {
            // The remote side: take what the hub sent, echo it, and "kick" the hub.
            remote.poll(&mut ri).unwrap();
            hub.hub.link(remote_id).service_attached(remote_id);
            alice.poll(&mut ai).unwrap();
            assert!(Instant::now() < deadline, "echo {i} lost");
        }
        let (to, from, _, data) = ai.messages.pop_front().unwrap();
        assert_eq!((to, from, data), (ept, proxy, msg));
    }
    assert!(
        kicks.0.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the hub notified the remote"
    );
    assert_eq!(hub.hub.link(remote_id).stats(remote_id).forwarded, 300);
}
