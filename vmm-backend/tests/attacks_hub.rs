//! Attacks on the hub's fairness and route tables (issue 10): a guest that orphans reply
//! proxies by announcing and withdrawing names at addresses it sends from, a receiver that
//! takes one message now and then to keep its senders' buffers, a sender that floods one
//! receiver, and a guest that reposts its ring as fast as the hub reads it.
//!
//! Each test runs an in-process hub (`serve_guest` threads, vamp's own vhost-user frontend)
//! and checks that the well-behaved guests' traffic goes on, what the hub counted, and the
//! hub's own invariants ([`Hub::check_invariants`]) at the end.
//!
//! [`Hub::check_invariants`]: vamp_vmm_backend::hub::Hub::check_invariants

mod common;

use common::traffic::{ALICE, BOB, CAROL, EVIL, Traffic, TrafficOptions, cast_toml};
use common::{Guest, TestHub, WAIT, await_echo, wait_until};
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};
use vamp_rpmsg::rpmsg::{Error as RpmsgError, Handler, HeldRx, Received, Rpmsg};
use vamp_rpmsg::transport::Transport;
use vamp_rpmsg::wire::{ADDR_ANY, Endian, NS_ADDR, NameServiceMsg, NsFlags};
use vamp_vmm_backend::hub::POLL_BUDGET;

/// alice offers "a-svc" to everyone, carol "c-svc" to bob and the attacker; any name of the
/// attacker is offered to carol. Every guest sees the hub's "echo".
const ROUTES: &str = r#"
[[service]]
type = "echo"
name = "echo"
[[channel]]
from = "alice"
to = ["bob", "carol", "mallory"]
names = ["a-svc"]
[[channel]]
from = "carol"
to = ["bob", "mallory"]
names = ["c-svc"]
[[channel]]
from = "mallory"
to = ["carol"]
"#;

/// The cast (the attacker is mallory) and [`ROUTES`].
fn topology() -> String {
    cast_toml("mallory") + ROUTES
}

/// A hub for [`topology`] letting messages wait `pending_timeout` for a receiver's buffers.
fn start(tag: &str, pending_timeout: Duration) -> TestHub {
    TestHub::start_with(tag, &topology(), |hub| {
        hub.set_pending_timeout(pending_timeout)
    })
}

fn check_invariants(hub: &TestHub) {
    if let Err(e) = hub.hub.check_invariants() {
        panic!("hub invariant broken: {e}");
    }
}

/// A name-service message (create or destroy of `name` at `addr`), as a guest sends it.
fn ns_message(name: &[u8], addr: u32, flags: NsFlags) -> [u8; 40] {
    NameServiceMsg::new(name, addr, flags).encode(Endian::Little)
}

/// Carol offering "c-svc"; returns her and c-svc's address in `peer`'s link.
fn carol_offering_c_svc(hub: &TestHub, peer: &mut Guest) -> (Guest, u32) {
    let mut carol = Guest::connect_served(hub, CAROL);
    carol
        .g
        .rpmsg()
        .create_ept(b"c-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    peer.pump("c-svc offered", |i| i.announced("c-svc").is_some());
    let c_svc = peer.inbox.announced("c-svc").unwrap();
    (carol, c_svc)
}

// ---------------------------------------------------------------------------------------
// A traffic pair: bob sends numbered requests to alice's a-svc, alice echoes them; bob
// checks that each comes back once, in order, intact.

/// bob's requests are up to 100 bytes; a-svc may come and go (the attacks here do not
/// touch it, but the checks are on the hub's counters).
const TRAFFIC: TrafficOptions = TrafficOptions {
    max_len: 100,
    withdrawal_fails: false,
};

/// The end of a test with a traffic pair: it lost, duplicated or reordered nothing.
fn finish_traffic(hub: &TestHub, traffic: Traffic) {
    let total = traffic.finish();
    for id in [ALICE, BOB] {
        let s = hub.stats(id);
        assert_eq!(
            (s.dropped, s.protocol_errors, s.bad_chains),
            (0, 0, 0),
            "guest {id}: {s:?}"
        );
    }
    assert_eq!(
        hub.stats(BOB).forwarded,
        total,
        "each request forwarded once"
    );
}

// ---------------------------------------------------------------------------------------
// The attacks.

#[test]
fn attack_reply_proxy_via_announce_withdraw_cycles() {
    // The attacker sends from X (the hub makes a reply proxy for it in carol's link), then
    // announces and withdraws a name at X; and again. One proxy per (carol, attacker, X),
    // whatever the order: the announced name is the reply proxy, and withdrawing it leaves
    // nothing behind.
    const CYCLES: u32 = 20_000;
    const X: u32 = 0x5000;
    let hub = start("proxy-cycles", Duration::from_secs(30));
    let mut evil = Guest::connect_served(&hub, EVIL);
    let (mut carol, c_svc) = carol_offering_c_svc(&hub, &mut evil);
    let base = hub.hub.link(CAROL).endpoints_in(CAROL);
    let mut sources = BTreeSet::new();
    let mut announced_at = BTreeSet::new();
    let mut received = 0u32;
    for k in 0..CYCLES {
        let rpmsg = evil.g.rpmsg();
        rpmsg
            .send_offchannel_raw(X, c_svc, &k.to_le_bytes(), true)
            .unwrap();
        let name = format!("m-{}", k % 7);
        let create = ns_message(name.as_bytes(), X, NsFlags::Create);
        rpmsg
            .send_offchannel_raw(X, NS_ADDR, &create, true)
            .unwrap();
        let destroy = ns_message(name.as_bytes(), X, NsFlags::Destroy);
        rpmsg
            .send_offchannel_raw(X, NS_ADDR, &destroy, true)
            .unwrap();
        if k % 64 == 63 || k == CYCLES - 1 {
            // carol reads as she goes: each message from the attacker, in order.
            carol.pump("the attacker's messages", |i| {
                received + i.messages.len() as u32 > k
            });
            for (_, src, _, data) in carol.inbox.messages.drain(..) {
                assert_eq!(data, received.to_le_bytes());
                received += 1;
                sources.insert(src);
            }
            // (What she was offered stays in her inbox: "echo" is used at the end.)
            carol.inbox.created.retain(|(n, a)| {
                let attackers = n.starts_with(b"m-");
                if attackers {
                    announced_at.insert(*a);
                }
                !attackers
            });
            carol.inbox.destroyed.clear();
            let h = hub.hub.link(CAROL);
            assert!(
                h.proxies_for(CAROL, EVIL) <= 1,
                "cycle {k}: {} proxies for the attacker in carol's link",
                h.proxies_for(CAROL, EVIL)
            );
            assert!(
                h.endpoints_in(CAROL) <= base + 1,
                "cycle {k}: {} endpoints in carol's link (from {base})",
                h.endpoints_in(CAROL)
            );
        }
    }
    assert_eq!(received, CYCLES);
    assert_eq!(
        sources.len(),
        1,
        "one hub address stands for the attacker's X: {} seen",
        sources.len()
    );
    assert!(
        announced_at.is_subset(&sources),
        "names announced at X were offered at its reply proxy: {announced_at:?} vs {sources:?}"
    );
    check_invariants(&hub);
    assert_eq!(hub.stats(EVIL).dropped, 0);
    // Its reconnect clears what it left in carol's link.
    let ups = hub.stats(EVIL).ups;
    evil.g.reset().unwrap();
    evil.inbox = Default::default();
    evil.pump("the echo service after the reset", |i| {
        i.announced("echo").is_some()
    });
    wait_until("the attacker's new link", || hub.stats(EVIL).ups > ups);
    {
        let h = hub.hub.link(CAROL);
        assert_eq!(h.proxies_for(CAROL, EVIL), 0);
        assert_eq!(h.endpoints_in(CAROL), base);
    }
    check_invariants(&hub);
    carol.echo_roundtrip(7);
    assert_eq!(hub.stats(CAROL).dropped, 0);
}

/// Holds every message it gets (its buffers stay with it) until told to release one.
#[derive(Default)]
struct Holder {
    held: VecDeque<HeldRx>,
    seen: u64,
}

impl<T: Transport> Handler<T> for Holder {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        self.held.push_back(rpmsg.hold_rx(msg));
        self.seen += 1;
    }
}

#[test]
fn attack_slow_receiver_pins_sender() {
    // The attacker takes one message every (timeout - 100 ms): before, each delivery reset
    // the pending clock, so carol's buffers stayed pinned for as long as it kept that up.
    // Now the oldest waiting message must go out within the timeout.
    let timeout = Duration::from_millis(400);
    let hub = start("slow-receiver", timeout);
    let mut alice = Guest::connect_served(&hub, ALICE);
    alice.inbox.echo = true;
    alice
        .g
        .rpmsg()
        .create_ept(b"a-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    let mut evil = Guest::connect_served(&hub, EVIL);
    evil.g
        .rpmsg()
        .create_ept(b"m-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    let mut carol = Guest::connect_served(&hub, CAROL);
    carol.pump("m-svc and a-svc at carol", |i| {
        i.announced("m-svc").is_some() && i.announced("a-svc").is_some()
    });
    let m_svc = carol.inbox.announced("m-svc").unwrap();
    let a_svc = carol.inbox.announced("a-svc").unwrap();
    let to_evil = carol.g.rpmsg().create_ept(b"", ADDR_ANY, m_svc).unwrap();
    let to_alice = carol.g.rpmsg().create_ept(b"", ADDR_ANY, a_svc).unwrap();
    // carol fills the attacker's buffers, then her own ring waits in the hub.
    let mut holder = Holder::default();
    let mut sent = 0u32;
    let mut blocked_since = None;
    loop {
        match carol.g.rpmsg().trysend(to_evil, &sent.to_le_bytes()) {
            Ok(_) => {
                sent += 1;
                blocked_since = None;
            }
            Err(RpmsgError::NoBuffer) => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(50) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("{e}"),
        }
        assert!(sent < 10_000, "no backpressure");
    }
    evil.g.poll(&mut holder).unwrap();
    let queued = hub.hub.link(EVIL).queued_for(EVIL);
    assert!(queued > 0, "carol's messages wait for the attacker");
    // The attacker takes one message now and then, never letting the pending clock expire
    // by the old rule; the hub gives up on it all the same, and carol gets her buffers back.
    let pace = timeout - Duration::from_millis(100);
    let deadline = Instant::now() + WAIT;
    while hub.hub.link(EVIL).queued_for(EVIL) > 0 {
        assert!(
            Instant::now() < deadline,
            "carol's buffers still pinned after {WAIT:?}: {} message(s) wait for the attacker, \
             which took {} so far",
            hub.hub.link(EVIL).queued_for(EVIL),
            holder.seen
        );
        std::thread::sleep(pace);
        if let Some(h) = holder.held.pop_front() {
            evil.g.rpmsg().release_rx(h).unwrap();
        }
        evil.g.poll(&mut holder).unwrap();
    }
    assert!(hub.stats(CAROL).dropped > 0, "what waited was dropped");
    // carol reaches alice again.
    carol.inbox.messages.clear();
    carol.g.rpmsg().send(to_alice, b"still here").unwrap();
    await_echo(
        &mut carol.g,
        &mut carol.inbox,
        &mut alice.g,
        &mut alice.inbox,
        "carol's message to alice came back",
    );
    assert_eq!(carol.inbox.messages[0].3, b"still here");
    carol.echo_roundtrip(9);
    check_invariants(&hub);
    assert_eq!(hub.stats(ALICE).dropped, 0);
}

#[test]
fn attack_sender_floods_one_receiver() {
    // The attacker floods carol, who reads nothing for now: at most its share of her queue
    // waits (64 here: a native guest's 256 transmit buffers would meet the default cap of
    // MAX_QUEUED_PER_SENDER exactly), the rest is dropped against it, its buffers come back
    // (its other traffic flows), and bob's share is untouched.
    const TOTAL: u32 = 1500;
    const SHARE: usize = 64;
    let hub = TestHub::start_with("sender-flood", &topology(), |hub| {
        hub.set_pending_timeout(Duration::from_secs(60));
        hub.set_max_queued_per_sender(SHARE);
    });
    let mut evil = Guest::connect_served(&hub, EVIL);
    let (mut carol, c_svc) = carol_offering_c_svc(&hub, &mut evil);
    let mut bob = Guest::connect_served(&hub, BOB);
    bob.pump("c-svc at bob", |i| i.announced("c-svc").is_some());
    let bob_c_svc = bob.inbox.announced("c-svc").unwrap();
    let to_carol = evil.g.rpmsg().create_ept(b"", ADDR_ANY, c_svc).unwrap();
    let mut sent = 0u32;
    let mut blocked_since = None;
    while sent < TOTAL {
        match evil.g.rpmsg().trysend(to_carol, &sent.to_le_bytes()) {
            Ok(_) => {
                sent += 1;
                blocked_since = None;
            }
            Err(RpmsgError::NoBuffer) => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    }
    let queued = hub.hub.link(CAROL).queued_for(CAROL);
    assert!(
        queued <= SHARE,
        "{queued} of the attacker's messages wait for carol (its share is {SHARE})"
    );
    assert_eq!(sent, TOTAL, "the attacker's buffers came back");
    // carol's 256 buffers took the first ones, its share the next ones; the rest were dropped.
    let kept = 256 + SHARE as u32;
    wait_until("the attacker's drops", || {
        hub.stats(EVIL).dropped == u64::from(TOTAL - kept)
    });
    // Its other traffic flows meanwhile.
    evil.echo_roundtrip(3);
    // bob's message for carol waits in his own share: not dropped.
    let bob_ept = bob.g.rpmsg().create_ept(b"", ADDR_ANY, bob_c_svc).unwrap();
    bob.g.rpmsg().send(bob_ept, b"from bob").unwrap();
    wait_until("bob's message to wait for carol", || {
        hub.hub.link(CAROL).queued_for(CAROL) == SHARE + 1
    });
    check_invariants(&hub);
    // carol reads: the first `kept` of the attacker's, in order, then bob's.
    carol.pump("everything kept for carol", |i| {
        i.messages.len() > kept as usize
    });
    let got: Vec<Vec<u8>> = carol.inbox.messages.iter().map(|m| m.3.clone()).collect();
    let mut want: Vec<Vec<u8>> = (0..kept).map(|k| k.to_le_bytes().to_vec()).collect();
    want.push(b"from bob".to_vec());
    assert_eq!(got, want);
    assert_eq!(hub.stats(BOB).dropped, 0);
    assert_eq!(hub.stats(CAROL).dropped, 0);
    check_invariants(&hub);
}

#[test]
fn attack_busy_guest_cannot_hold_hub() {
    /// A native guest's transmit buffers (half of Linux's 512).
    const RING: u32 = 256;
    let hub = start("busy-guest", Duration::from_secs(5));
    let mut traffic = Traffic::start(&hub.sockets, TRAFFIC);
    traffic.expect_more_while(100, "before the attack", || {
        std::thread::sleep(Duration::from_millis(2))
    });
    let mut evil = Guest::connect_served(&hub, EVIL);
    let nowhere = 0x7777_0000;
    // A whole ring of RING messages, published at once (the hub is kept busy meanwhile),
    // then one kick and no more: the hub takes them POLL_BUDGET at a time and finishes the
    // work by itself.
    let dropped = hub.stats(EVIL).dropped;
    let spent = hub.stats(EVIL).budget_spent;
    {
        let _busy = hub.hub.link(EVIL);
        for k in 0..RING {
            evil.g
                .rpmsg()
                .send_offchannel_raw(0x400 + k, nowhere, &k.to_le_bytes(), false)
                .unwrap();
        }
    }
    wait_until(
        "the hub to take the whole ring without another kick",
        || hub.stats(EVIL).dropped == dropped + u64::from(RING),
    );
    let polls = hub.stats(EVIL).budget_spent - spent;
    assert!(
        polls >= (RING as usize / POLL_BUDGET - 1) as u64,
        "{RING} messages taken in polls of at most {POLL_BUDGET}: {polls} poll(s) spent their budget"
    );
    // Now the attacker reposts as fast as the hub reads; the traffic pair goes on.
    let mut flooded = 0u64;
    traffic.expect_more_while(2000, "while the attacker reposts its ring", || {
        for _ in 0..64 {
            match evil
                .g
                .rpmsg()
                .send_offchannel_raw(0x400, nowhere, b"busy", false)
            {
                Ok(_) => flooded += 1,
                Err(RpmsgError::NoBuffer) => break,
                Err(e) => panic!("{e}"),
            }
        }
    });
    assert!(
        flooded > u64::from(RING),
        "the attacker kept the hub busy: {flooded}"
    );
    wait_until("every flooded message taken", || {
        hub.stats(EVIL).dropped == dropped + u64::from(RING) + flooded
    });
    check_invariants(&hub);
    finish_traffic(&hub, traffic);
}
