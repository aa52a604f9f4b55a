//! The attack suite: one hostile guest against the hub while well-behaved guests talk.
//!
//! Every test is named `attack_*` (`cargo test attack` runs the suite alone) and follows one
//! pattern:
//!
//! - an in-process hub serves four guests: alice and bob are a *traffic pair* on a thread of
//!   their own (bob sends sequence-numbered requests to alice's "a-svc" and alice echoes them;
//!   bob checks that every echo comes back exactly once, in order and intact), carol is a
//!   helper the test drives by hand, and the attacker is a native guest whose rings, memory
//!   and vhost-user connection the test forges;
//! - the hub must log a clear line about the attack (a capturing logger records every line)
//!   and count it ([`Hub::stats`]);
//! - the attacker is isolated: a malformed chain is returned used with length 0 and counted,
//!   the link goes on; a broken ring protocol (where virtio says the device needs a reset)
//!   marks the link broken until the guest resets the device;
//! - the good traffic kept flowing: nothing lost, nothing duplicated, order kept, and at
//!   least 2000 more round trips within 10 s after the attack.
//!
//! `VAMP_ATTACK_LOG=1 cargo test attack` prints the hub's log as the tests run.

mod common;

use common::traffic::{ALICE, BOB, CAROL, EVIL, Traffic, TrafficOptions, cast_toml, seq_payload};
use common::{Guest, Inbox, RXQ, TXQ, WAIT, pump, wait_until};
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{Ordering, fence};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};
use vamp_rpmsg::mapped_file::MappedFile;
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::rpmsg::{EptId, Error as RpmsgError};
use vamp_rpmsg::transport::Transport;
use vamp_rpmsg::vring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VringLayout,
};
use vamp_rpmsg::wire::{ADDR_ANY, Endian, HEADER_LEN, NS_ADDR, encode_header};
use vamp_vmm_backend::frontend::{NativeGuest, shared_file_region};
use vamp_vmm_backend::hub::{LinkStats, MAX_NAMES_PER_LINK, MAX_REPLY_PROXIES_PER_SOURCE};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

/// Round trips the traffic pair must complete after each attack, within [`WAIT`].
const AFTER_ATTACK: u64 = 2000;
/// How long the hub lets messages wait for a guest that takes none, in these tests.
const PENDING_TIMEOUT: Duration = Duration::from_millis(300);

/// alice offers "a-svc" to bob (and to the attacker, for the attacks that need to reach a
/// good guest); carol offers "c-svc" to the attacker; the attacker's "m-svc" is offered to
/// alice, and any name of it to carol. Every guest sees the hub's "echo".
const ROUTES: &str = r#"
[[remote]]
name = "{evil}-remote"
image = "echo"
[[service]]
type = "echo"
name = "echo"
[[channel]]
from = "alice"
to = ["bob", "{evil}"]
names = ["a-svc"]
[[channel]]
from = "carol"
to = ["{evil}"]
names = ["c-svc"]
[[channel]]
from = "{evil}"
to = ["alice"]
names = ["m-svc"]
[[channel]]
from = "{evil}"
to = ["carol"]
[[channel]]
from = "{evil}-remote"
to = ["carol"]
"#;

// ---------------------------------------------------------------------------------------
// The log: every line the hub (and the crates under it) writes, for the tests to check.

struct Capture(Mutex<Vec<String>>);

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        if std::env::var_os("VAMP_ATTACK_LOG").is_some() {
            eprintln!("{line}");
        }
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    fn flush(&self) {}
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if log::set_logger(&CAPTURE).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    });
}

/// Log lines that contain every one of `needles`.
fn log_lines(needles: &[&str]) -> Vec<String> {
    let lines = CAPTURE.0.lock().unwrap_or_else(|p| p.into_inner());
    lines
        .iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .cloned()
        .collect()
}

/// Waits for a log line that contains every one of `needles` (the hub logs from its own
/// threads) and returns it.
fn expect_log(needles: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(line) = log_lines(needles).pop() {
            return line;
        }
        if Instant::now() > deadline {
            let context = log_lines(&needles[..1]);
            let tail = &context[context.len().saturating_sub(20)..];
            panic!(
                "no log line with {needles:?}; lines with {:?}:\n{}",
                needles[0],
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// The hub.

/// The hub of [`ROUTES`], and the attacker's name in it.
struct TestHub {
    base: common::TestHub,
    evil: String,
}

impl TestHub {
    /// A hub for the cast and [`ROUTES`] with the attacker called `evil`, on threads of its own.
    fn start(evil: &str) -> Self {
        init_logs();
        let topology = cast_toml(evil) + &ROUTES.replace("{evil}", evil);
        let base = common::TestHub::start_with("attack", &topology, |hub| {
            hub.set_pending_timeout(PENDING_TIMEOUT)
        });
        TestHub {
            base,
            evil: evil.to_string(),
        }
    }
}

impl std::ops::Deref for TestHub {
    type Target = common::TestHub;

    fn deref(&self) -> &common::TestHub {
        &self.base
    }
}

/// Sends numbered messages (from `first`) until backpressure holds for 50 ms; returns how
/// many went out.
fn flood(g: &mut NativeGuest, ept: EptId, first: u32) -> u32 {
    let mut n = 0u32;
    let mut blocked_since = None;
    loop {
        match g.rpmsg().trysend(ept, &(first + n).to_le_bytes()) {
            Ok(_) => {
                n += 1;
                blocked_since = None;
            }
            Err(RpmsgError::NoBuffer) => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(50) {
                    return n;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("{e}"),
        }
        assert!(n < 10_000, "no backpressure");
    }
}

// ---------------------------------------------------------------------------------------
// The attacker.

/// First descriptor index the forging helpers use: the engine of a guest that sends fewer
/// than 200 messages itself never posts these.
const FORGE_FIRST: u16 = 200;
/// Guest memory the forging helpers write messages into: past the buffer pool.
const SCRATCH_START: u64 = 1 << 20;
const SCRATCH_END: u64 = 7 << 20;

/// The attacker: a native guest, plus raw access to its rings.
///
/// Once a test forges chains on vq 1 it must not send through the engine again (the engine's
/// own copy of the available index would go backwards); receiving stays fine.
struct Evil {
    g: NativeGuest,
    inbox: Inbox,
    /// The echo service's address in the attacker's link.
    echo: u32,
    /// An endpoint of the attacker bound to the echo service.
    ept: EptId,
    addr: u32,
    next_desc: u16,
    next_scratch: u64,
}

impl Evil {
    fn connect(hub: &TestHub) -> Self {
        let mut g = hub.connect(EVIL);
        let mut inbox = Inbox::default();
        let (echo, ept, addr) = Self::ready(&mut g, &mut inbox);
        Evil {
            g,
            inbox,
            echo,
            ept,
            addr,
            next_desc: FORGE_FIRST,
            next_scratch: SCRATCH_START,
        }
    }

    /// Waits for the echo service's announcement and binds an endpoint to it.
    fn ready(g: &mut NativeGuest, inbox: &mut Inbox) -> (u32, EptId, u32) {
        pump(g, inbox, "the echo service at the attacker", |i| {
            i.announced("echo").is_some()
        });
        let echo = inbox.announced("echo").unwrap();
        let ept = g.rpmsg().create_ept(b"", ADDR_ANY, echo).unwrap();
        let addr = g.rpmsg().endpoint(ept).unwrap().addr();
        (echo, ept, addr)
    }

    /// Resets the device (fresh rings and engine) and waits until the hub serves it again.
    fn reset(&mut self) {
        self.g.reset().unwrap();
        self.inbox = Inbox::default();
        (self.echo, self.ept, self.addr) = Self::ready(&mut self.g, &mut self.inbox);
        self.next_desc = FORGE_FIRST;
    }

    fn pump(&mut self, what: &str, done: impl Fn(&Inbox) -> bool) {
        pump(&mut self.g, &mut self.inbox, what, done)
    }

    fn mem(&self) -> &MappedFile {
        self.g.memory()
    }

    fn tx(&self) -> VringLayout {
        self.g.layout().tx_ring
    }

    fn rx(&self) -> VringLayout {
        self.g.layout().rx_ring
    }

    fn put_desc(&self, ring: VringLayout, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = ring.desc + 16 * u64::from(i);
        let m = self.mem();
        m.store_u64(at, addr.to_le()).unwrap();
        m.store_u32(at + 8, len.to_le()).unwrap();
        m.store_u16(at + 12, flags.to_le()).unwrap();
        m.store_u16(at + 14, next.to_le()).unwrap();
    }

    fn avail_idx(&self, ring: VringLayout) -> u16 {
        u16::from_le(self.mem().load_u16(ring.avail + 2).unwrap())
    }

    fn set_avail_idx(&self, ring: VringLayout, idx: u16) {
        fence(Ordering::SeqCst);
        self.mem().store_u16(ring.avail + 2, idx.to_le()).unwrap();
    }

    fn avail_entry(&self, ring: VringLayout, slot: u16) -> u16 {
        let at = ring.avail + 4 + 2 * u64::from(slot % ring.size);
        u16::from_le(self.mem().load_u16(at).unwrap())
    }

    /// Publishes `heads` on the available ring after the driver's current index.
    fn publish(&self, ring: VringLayout, heads: &[u16]) {
        let mut idx = self.avail_idx(ring);
        for &head in heads {
            let at = ring.avail + 4 + 2 * u64::from(idx % ring.size);
            self.mem().store_u16(at, head.to_le()).unwrap();
            idx = idx.wrapping_add(1);
        }
        self.set_avail_idx(ring, idx);
    }

    fn used_idx(&self, ring: VringLayout) -> u16 {
        u16::from_le(self.mem().load_u16(ring.used + 2).unwrap())
    }

    fn used_elem(&self, ring: VringLayout, slot: u16) -> (u32, u32) {
        let at = ring.used + 4 + 8 * u64::from(slot % ring.size);
        let id = u32::from_le(self.mem().load_u32(at).unwrap());
        let len = u32::from_le(self.mem().load_u32(at + 4).unwrap());
        (id, len)
    }

    fn kick(&mut self, queue: u16) {
        self.g.rpmsg().transport_mut().environment().notify(queue);
    }

    fn take_desc(&mut self) -> u16 {
        let d = self.next_desc;
        self.next_desc = if d + 1 >= self.tx().size {
            FORGE_FIRST
        } else {
            d + 1
        };
        d
    }

    fn scratch(&mut self, len: u64) -> u64 {
        let len = len.next_multiple_of(64);
        if self.next_scratch + len > SCRATCH_END {
            self.next_scratch = SCRATCH_START;
        }
        let at = self.next_scratch;
        self.next_scratch += len;
        at
    }

    /// Writes an rpmsg message whose header claims `claimed` payload bytes; returns where.
    fn message(&mut self, src: u32, dst: u32, claimed: u16, payload: &[u8]) -> u64 {
        let at = self.scratch((HEADER_LEN + payload.len()) as u64);
        let header = encode_header(Endian::Little, src, dst, claimed);
        self.mem().write(at, &header).unwrap();
        self.mem().write(at + HEADER_LEN as u64, payload).unwrap();
        at
    }

    /// Publishes one single-descriptor chain on vq 1 and kicks; returns its head.
    fn send_desc(&mut self, addr: u64, len: u32, flags: u16) -> u16 {
        let d = self.take_desc();
        self.put_desc(self.tx(), d, addr, len, flags, 0);
        self.publish(self.tx(), &[d]);
        self.kick(TXQ);
        d
    }

    /// Waits until the hub returned `n` more chains on vq 1 than `from`; returns their used
    /// elements (id, length).
    fn wait_tx_used(&self, from: u16, n: u16) -> Vec<(u32, u32)> {
        let tx = self.tx();
        wait_until("the hub to return the forged chains", || {
            self.used_idx(tx).wrapping_sub(from) >= n
        });
        (0..n)
            .map(|k| self.used_elem(tx, from.wrapping_add(k)))
            .collect()
    }

    /// A well-formed request to the echo service, forged on the ring; waits for its echo.
    /// Shows that the hub still serves the attacker.
    fn forged_roundtrip(&mut self, tag: u32) {
        let payload = tag.to_le_bytes();
        let at = self.message(self.addr, self.echo, 4, &payload);
        self.send_desc(at, (HEADER_LEN + 4) as u32, 0);
        self.expect_echo(tag);
    }

    /// A request to the echo service through the engine; waits for its echo.
    fn roundtrip(&mut self, tag: u32) {
        self.g.rpmsg().send(self.ept, &tag.to_le_bytes()).unwrap();
        self.expect_echo(tag);
    }

    fn expect_echo(&mut self, tag: u32) {
        let want = tag.to_le_bytes().to_vec();
        self.pump("the attacker's echo", |i| {
            i.messages.iter().any(|m| m.3 == want)
        });
        self.inbox.messages.retain(|m| m.3 != want);
    }

    /// Makes the receive buffer at slot `slot` of the available ring `len` bytes long.
    fn resize_rx_buffer(&self, slot: u16, len: u32) {
        let rx = self.rx();
        let head = self.avail_entry(rx, slot);
        let addr = self.mem().load_u64(rx.desc + 16 * u64::from(head)).unwrap();
        self.put_desc(rx, head, u64::from_le(addr), len, VRING_DESC_F_WRITE, 0);
    }

    /// A memory table entry mapping `memory` where the attacker's memory is mapped.
    fn region_over(&self, memory: &MappedFile) -> VhostUserMemoryRegionInfo {
        shared_file_region(
            0,
            memory.size() as u64,
            self.mem().host_address(),
            0,
            memory.fd(),
        )
    }

    /// Sends `data` from `src` to `dst` through the engine, whatever the addresses are.
    fn send_raw(&mut self, src: u32, dst: u32, data: &[u8]) {
        self.g
            .rpmsg()
            .send_offchannel_raw(src, dst, data, true)
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The traffic pair.

/// bob's requests are up to 200 bytes; no attack withdraws a-svc from bob.
const TRAFFIC: TrafficOptions = TrafficOptions {
    max_len: 200,
    withdrawal_fails: true,
};

// ---------------------------------------------------------------------------------------
// The scene of every attack.

struct Scene {
    hub: TestHub,
    traffic: Traffic,
    evil: Evil,
    /// alice may lose messages she sends to the attacker (where the attack makes her).
    alice_may_drop: bool,
}

impl Scene {
    /// A hub, the traffic pair flowing, and the attacker connected and served.
    fn new(evil: &str) -> Self {
        let hub = TestHub::start(evil);
        let mut traffic = Traffic::start(&hub.sockets, TRAFFIC);
        traffic.expect_more(100, "before the attack");
        let evil = Evil::connect(&hub);
        Scene {
            hub,
            traffic,
            evil,
            alice_may_drop: false,
        }
    }

    fn stats(&self, id: usize) -> LinkStats {
        self.hub.stats(id)
    }

    /// Connects carol, has her offer "c-svc" and waits until the attacker sees it; returns
    /// carol and c-svc's address in the attacker's link.
    fn carol_offering_c_svc(&mut self) -> (Guest, u32) {
        let mut carol = Guest::connect_served(&self.hub, CAROL);
        carol
            .g
            .rpmsg()
            .create_ept(b"c-svc", ADDR_ANY, ADDR_ANY)
            .unwrap();
        self.evil
            .pump("c-svc at the attacker", |i| i.announced("c-svc").is_some());
        let c_svc = self.evil.inbox.announced("c-svc").unwrap();
        (carol, c_svc)
    }

    /// The attacker's connection ended (vhost-user refused a request): a new one is served.
    fn reconnect_evil(&mut self) {
        let hub = &self.hub;
        wait_until("the attacker's link to go down", || !hub.is_up(EVIL));
        self.evil = Evil::connect(&self.hub);
    }

    /// The attacker's link is still up and served.
    fn assert_evil_served(&mut self, tag: u32) {
        assert!(self.hub.is_up(EVIL), "the attacker's link is still up");
        assert!(!self.hub.is_broken(EVIL));
        self.evil.forged_roundtrip(tag);
    }

    /// The attacker broke the ring protocol: its link is marked broken (it would need
    /// NEEDS_RESET), kicks are ignored, and a device reset brings it back.
    fn assert_evil_broken_until_reset(&mut self, errors_before: u64) {
        let hub = &self.hub;
        wait_until("the attacker's link to be marked broken", || {
            hub.is_broken(EVIL)
        });
        assert!(!hub.is_up(EVIL));
        assert_eq!(hub.stats(EVIL).protocol_errors, errors_before + 1);
        expect_log(&[&hub.evil, "broke the virtio ring protocol"]);
        // The frontend is told, as virtio says: DEVICE_NEEDS_RESET and a config-change notice.
        assert!(
            self.evil.g.wait_config_change(WAIT).unwrap(),
            "a config-change notice"
        );
        assert!(
            self.evil.g.needs_reset().unwrap(),
            "DEVICE_NEEDS_RESET in the status"
        );
        // Kicks on the broken rings are ignored.
        self.evil.kick(TXQ);
        self.evil.kick(RXQ);
        std::thread::sleep(Duration::from_millis(20));
        assert!(self.hub.is_broken(EVIL) && !self.hub.is_up(EVIL));
        let ups = self.stats(EVIL).ups;
        self.evil.reset();
        assert!(self.hub.is_up(EVIL) && !self.hub.is_broken(EVIL));
        assert!(!self.evil.g.needs_reset().unwrap(), "the reset cleared it");
        assert_eq!(self.stats(EVIL).ups, ups + 1);
        self.evil.roundtrip(0x5e7);
    }

    /// The end of every attack: the traffic pair goes on (2000 more round trips within 10 s),
    /// and lost, duplicated or reordered nothing; the good guests broke no rule.
    fn finish(mut self) {
        let rate = self.traffic.expect_more(AFTER_ATTACK, "after the attack");
        let total = self.traffic.finish();
        for id in [ALICE, BOB] {
            let s = self.hub.stats(id);
            assert_eq!(s.protocol_errors, 0, "guest {id}: {s:?}");
            assert_eq!(s.bad_chains, 0, "guest {id}: {s:?}");
        }
        let bob = self.hub.stats(BOB);
        assert_eq!(bob.dropped, 0, "bob lost nothing: {bob:?}");
        assert_eq!(bob.forwarded, total, "the hub forwarded each request once");
        if !self.alice_may_drop {
            assert_eq!(self.hub.stats(ALICE).dropped, 0);
        }
        eprintln!(
            "{}: {total} round trips verified, {rate:.0}/s after the attack",
            self.hub.evil
        );
    }
}

// ---------------------------------------------------------------------------------------
// Malformed descriptor chains: returned used with length 0, counted, the link goes on.

#[test]
fn attack_descriptor_loops() {
    let mut s = Scene::new("mallory-loops");
    let tx = s.evil.tx();
    let used = s.evil.used_idx(tx);
    let buf = s.evil.scratch(64);
    let (a, b, c) = (s.evil.take_desc(), s.evil.take_desc(), s.evil.take_desc());
    // One descriptor chained to itself, and a cycle of two.
    s.evil.put_desc(tx, a, buf, 64, VRING_DESC_F_NEXT, a);
    s.evil.put_desc(tx, b, buf, 64, VRING_DESC_F_NEXT, c);
    s.evil.put_desc(tx, c, buf, 64, VRING_DESC_F_NEXT, b);
    s.evil.publish(tx, &[a, b]);
    s.evil.kick(TXQ);
    let returned = s.evil.wait_tx_used(used, 2);
    assert_eq!(returned, [(a.into(), 0), (b.into(), 0)], "returned unused");
    expect_log(&["mallory-loops", "malformed descriptor chain", "looping"]);
    assert_eq!(s.stats(EVIL).bad_chains, 2);
    s.assert_evil_served(1);
    s.finish();
}

#[test]
fn attack_descriptors_outside_guest_memory() {
    let mut s = Scene::new("mallory-outside");
    let tx = s.evil.tx();
    let size = s.evil.mem().size() as u64;
    let used = s.evil.used_idx(tx);
    let bad = [
        (0xdead_0000_0000u64, 512u32),
        (size, 16),
        (u64::MAX - 7, 16),
        (u64::MAX, 1),
    ];
    let heads: Vec<u16> = bad
        .iter()
        .map(|&(addr, len)| s.evil.send_desc(addr, len, 0))
        .collect();
    let returned = s.evil.wait_tx_used(used, heads.len() as u16);
    let want: Vec<(u32, u32)> = heads.iter().map(|&h| (h.into(), 0)).collect();
    assert_eq!(returned, want);
    expect_log(&[
        "mallory-outside",
        "malformed descriptor chain",
        "outside shared memory",
    ]);
    assert_eq!(s.stats(EVIL).bad_chains, bad.len() as u64);
    s.assert_evil_served(2);
    s.finish();
}

#[test]
fn attack_lengths_beyond_buffers() {
    let mut s = Scene::new("mallory-lengths");
    let tx = s.evil.tx();
    let size = s.evil.mem().size() as u64;
    let used = s.evil.used_idx(tx);
    // Runs off the end of memory; 4 GiB long; a chain whose second part runs off the end.
    let msg = s.evil.message(s.evil.addr, s.evil.echo, 4, b"long");
    let a = s.evil.send_desc(size - 64, 512, 0);
    let b = s.evil.send_desc(msg, u32::MAX, 0);
    let (c, d) = (s.evil.take_desc(), s.evil.take_desc());
    s.evil.put_desc(tx, c, msg, 20, VRING_DESC_F_NEXT, d);
    s.evil.put_desc(tx, d, size - 16, 4096, 0, 0);
    s.evil.publish(tx, &[c]);
    s.evil.kick(TXQ);
    let returned = s.evil.wait_tx_used(used, 3);
    assert_eq!(returned, [(a.into(), 0), (b.into(), 0), (c.into(), 0)]);
    expect_log(&["mallory-lengths", "malformed descriptor chain"]);
    assert_eq!(s.stats(EVIL).bad_chains, 3);
    // A descriptor longer than its message but inside memory is fine: the header's length
    // decides what is copied.
    let msg = s
        .evil
        .message(s.evil.addr, s.evil.echo, 4, &7u32.to_le_bytes());
    s.evil.send_desc(msg, 1 << 20, 0);
    s.evil.expect_echo(7);
    s.assert_evil_served(3);
    s.finish();
}

#[test]
fn attack_zero_length_buffers() {
    let mut s = Scene::new("mallory-zero");
    let tx = s.evil.tx();
    let used = s.evil.used_idx(tx);
    let msg = s.evil.message(s.evil.addr, s.evil.echo, 0, b"");
    // A zero-length descriptor alone, and at the end of a chain.
    let a = s.evil.send_desc(msg, 0, 0);
    let (b, c) = (s.evil.take_desc(), s.evil.take_desc());
    s.evil.put_desc(tx, b, msg, 16, VRING_DESC_F_NEXT, c);
    s.evil.put_desc(tx, c, msg, 0, 0, 0);
    s.evil.publish(tx, &[b]);
    s.evil.kick(TXQ);
    assert_eq!(s.evil.wait_tx_used(used, 2), [(a.into(), 0), (b.into(), 0)]);
    expect_log(&["mallory-zero", "malformed descriptor chain", "zero-length"]);
    // Receive buffers (vq 0) of length zero: the next three the hub would fill.
    let rx = s.evil.rx();
    let next = s.evil.used_idx(rx);
    for k in 0..3 {
        s.evil.resize_rx_buffer(next + k, 0);
    }
    // The hub skips them (returned with length 0) and echoes into the next good one.
    s.assert_evil_served(4);
    assert_eq!(s.stats(EVIL).bad_chains, 5);
    s.finish();
}

#[test]
fn attack_receive_buffers_smaller_than_a_message() {
    let mut s = Scene::new("mallory-tiny");
    let rx = s.evil.rx();
    let next = s.evil.used_idx(rx);
    // The next receive buffers the hub would fill: 8 bytes, less than a header, and 40,
    // less than a name-service message.
    for (k, len) in [8u32, 8, 40].into_iter().enumerate() {
        s.evil.resize_rx_buffer(next + k as u16, len);
    }
    // The hub must not keep them as spares that every later send trips over.
    s.assert_evil_served(5);
    s.assert_evil_served(6);
    expect_log(&["mallory-tiny", "malformed descriptor chain"]);
    assert_eq!(s.stats(EVIL).bad_chains, 3);
    // Name-service announcements still reach the attacker: carol offers c-svc.
    let (_carol, _) = s.carol_offering_c_svc();
    s.finish();
}

#[test]
fn attack_chains_mixing_readable_and_writable_descriptors() {
    let mut s = Scene::new("mallory-mixed");
    let tx = s.evil.tx();
    let used = s.evil.used_idx(tx);
    let msg = s.evil.message(s.evil.addr, s.evil.echo, 4, b"mix!");
    // Readable header, then a writable payload; and a chain writable throughout, which has
    // no place on the queue the device reads.
    let (a, b) = (s.evil.take_desc(), s.evil.take_desc());
    s.evil.put_desc(tx, a, msg, 16, VRING_DESC_F_NEXT, b);
    s.evil.put_desc(tx, b, msg + 16, 4, VRING_DESC_F_WRITE, 0);
    s.evil.publish(tx, &[a]);
    let c = s.evil.send_desc(msg, 20, VRING_DESC_F_WRITE);
    assert_eq!(s.evil.wait_tx_used(used, 2), [(a.into(), 0), (c.into(), 0)]);
    expect_log(&["mallory-mixed", "malformed descriptor chain", "direction"]);
    assert_eq!(s.stats(EVIL).bad_chains, 2);
    s.assert_evil_served(7);
    s.finish();
}

#[test]
fn attack_indirect_descriptors() {
    let mut s = Scene::new("mallory-indirect");
    let tx = s.evil.tx();
    let used = s.evil.used_idx(tx);
    // A well-formed indirect table holding one good descriptor: never negotiated, refused.
    let msg = s.evil.message(s.evil.addr, s.evil.echo, 4, b"ind!");
    let table = s.evil.scratch(16);
    let m = s.evil.mem();
    m.store_u64(table, msg.to_le()).unwrap();
    m.store_u32(table + 8, 20u32.to_le()).unwrap();
    m.store_u32(table + 12, 0).unwrap();
    let a = s.evil.send_desc(table, 16, VRING_DESC_F_INDIRECT);
    assert_eq!(s.evil.wait_tx_used(used, 1), [(a.into(), 0)]);
    expect_log(&["mallory-indirect", "malformed descriptor chain", "indirect"]);
    assert_eq!(s.stats(EVIL).bad_chains, 1);
    assert!(s.evil.inbox.messages.is_empty());
    s.assert_evil_served(8);
    s.finish();
}

// ---------------------------------------------------------------------------------------
// Lying headers and payload claims: the buffer is returned, the message dropped and counted.

#[test]
fn attack_header_length_larger_than_the_buffer() {
    let mut s = Scene::new("mallory-header");
    let tx = s.evil.tx();
    let used = s.evil.used_idx(tx);
    let (src, echo) = (s.evil.addr, s.evil.echo);
    // (descriptor length, header's claim): 400 bytes in 32; 1 in a bare header; a buffer
    // shorter than a header; 65535 in 512.
    let cases = [(32u32, 400u16), (16, 1), (8, 0), (512, u16::MAX)];
    for (len, claimed) in cases {
        let at = s.evil.message(src, echo, claimed, &[0xAA; 16]);
        s.evil.send_desc(at, len, 0);
    }
    s.evil.wait_tx_used(used, cases.len() as u16);
    wait_until("the drops to be counted", || s.hub.stats(EVIL).dropped == 4);
    expect_log(&["mallory-header", "Malformed", "dropped"]);
    assert_eq!(s.stats(EVIL).served, 0, "nothing reached the echo service");
    assert!(s.evil.inbox.messages.is_empty());
    s.assert_evil_served(9);
    s.finish();
}

#[test]
fn attack_oversized_payload_claims() {
    let mut s = Scene::new("mallory-oversize");
    let (src, echo) = (s.evil.addr, s.evil.echo);
    // 60000 payload bytes in a 64 KiB buffer: a true claim, but bigger than any receive
    // buffer (512 bytes); to the echo service and to alice's a-svc.
    s.evil
        .pump("a-svc at the attacker", |i| i.announced("a-svc").is_some());
    let a_svc = s.evil.inbox.announced("a-svc").unwrap();
    for dst in [echo, a_svc, echo] {
        let at = s.evil.message(src, dst, 60000, &vec![0x5A; 60000]);
        s.evil.send_desc(at, (HEADER_LEN + 60000) as u32, 0);
    }
    wait_until("the drops to be counted", || s.hub.stats(EVIL).dropped == 3);
    expect_log(&["mallory-oversize", "not delivered", "60000 bytes"]);
    // Refused, never truncated: nothing arrived anywhere.
    assert!(s.evil.inbox.messages.is_empty());
    s.assert_evil_served(10);
    s.finish();
}

// ---------------------------------------------------------------------------------------
// Ring protocol errors: the link is broken until the guest resets the device.

#[test]
fn attack_head_index_out_of_range() {
    let mut s = Scene::new("mallory-head");
    let tx = s.evil.tx();
    s.evil.publish(tx, &[tx.size + 44]);
    s.evil.kick(TXQ);
    s.assert_evil_broken_until_reset(0);
    // A `next` out of range is the chain's fault only: returned, the link goes on.
    let used = s.evil.used_idx(tx);
    let msg = s.evil.message(s.evil.addr, s.evil.echo, 4, b"next");
    let a = s.evil.take_desc();
    s.evil.put_desc(tx, a, msg, 20, VRING_DESC_F_NEXT, 0xFFFF);
    s.evil.publish(tx, &[a]);
    s.evil.kick(TXQ);
    assert_eq!(s.evil.wait_tx_used(used, 1), [(a.into(), 0)]);
    expect_log(&["mallory-head", "malformed descriptor chain", "out of range"]);
    s.assert_evil_served(11);
    s.finish();
}

#[test]
fn attack_avail_index_jumps_and_rewinds() {
    let mut s = Scene::new("mallory-jump");
    let tx = s.evil.tx();
    // More chains announced than the ring holds.
    let idx = s.evil.avail_idx(tx);
    s.evil.set_avail_idx(tx, idx.wrapping_add(tx.size + 1));
    s.evil.kick(TXQ);
    s.assert_evil_broken_until_reset(0);
    expect_log(&["mallory-jump", "available index jumped"]);
    // The index going backwards is a jump of almost 65536.
    s.evil.roundtrip(12);
    let idx = s.evil.avail_idx(tx);
    s.evil.set_avail_idx(tx, idx.wrapping_sub(1));
    s.evil.kick(TXQ);
    s.assert_evil_broken_until_reset(1);
    // The same on the receive queue, noticed when the hub next sends to the attacker.
    let rx = s.evil.rx();
    let idx = s.evil.avail_idx(rx);
    s.evil.set_avail_idx(rx, idx.wrapping_add(1000));
    s.evil.kick(RXQ);
    let ept = s.evil.ept;
    s.evil.g.rpmsg().send(ept, b"echo me").unwrap();
    s.assert_evil_broken_until_reset(2);
    s.finish();
}

#[test]
fn attack_used_ring_scribbled() {
    let mut s = Scene::new("mallory-used");
    // The used rings are the device's: the hub never reads them back, so garbage there
    // (indices, ids, lengths, the avail_event word) changes nothing for it.
    for ring in [s.evil.tx(), s.evil.rx()] {
        s.evil
            .mem()
            .fill(ring.used, ring.used_bytes() as usize, 0xEE)
            .unwrap();
    }
    let tx = s.evil.tx();
    let before = s.evil.used_idx(tx);
    assert_eq!(before, 0xEEEE);
    let msg = s
        .evil
        .message(s.evil.addr, s.evil.echo, 4, &13u32.to_le_bytes());
    let head = s.evil.send_desc(msg, 20, 0);
    // The hub writes its next used entry where it left off and its own index over the junk.
    wait_until("the hub's used index", || s.evil.used_idx(tx) != 0xEEEE);
    let at = s.evil.used_idx(tx).wrapping_sub(1);
    // A consumed buffer comes back with its readable length (rpmsg-compat: OpenAMP drivers
    // size recycled buffers by it).
    assert_eq!(s.evil.used_elem(tx, at), (head.into(), 20));
    assert_eq!(s.stats(EVIL).protocol_errors, 0);
    assert!(s.hub.is_up(EVIL));
    s.finish();
}

#[test]
fn attack_rings_placed_outside_memory() {
    let mut s = Scene::new("mallory-rings");
    let tx = s.evil.tx();
    let config = |desc: u64, avail: u64, used: u64| VringConfigData {
        queue_max_size: tx.size,
        queue_size: tx.size,
        flags: 0,
        desc_table_addr: desc,
        used_ring_addr: used,
        avail_ring_addr: avail,
        log_addr: None,
    };
    // Outside the memory table altogether: the vhost-user layer refuses the request and
    // ends the connection.
    let base = s.evil.mem().host_address();
    let f = s.evil.g.frontend_mut();
    let outside = config(0x10, base + tx.avail, base + tx.used);
    assert!(f.set_vring_addr(1, &outside).is_err());
    expect_log(&[
        "mallory-rings",
        "connection ended",
        "Missing memory mapping",
    ]);
    s.reconnect_evil();
    // Starting inside but running past the end: the hub cannot attach to the ring.
    let base = s.evil.mem().host_address();
    let size = s.evil.mem().size() as u64;
    let past_the_end = config(base + size - 0x100, base + tx.avail, base + tx.used);
    s.evil
        .g
        .frontend_mut()
        .set_vring_addr(1, &past_the_end)
        .unwrap();
    s.evil.kick(TXQ);
    wait_until("the rings to be refused", || s.hub.is_broken(EVIL));
    expect_log(&["mallory-rings", "cannot attach to its rings"]);
    assert_eq!(s.stats(EVIL).protocol_errors, 1);
    s.evil.reset();
    s.evil.roundtrip(14);
    s.finish();
}

#[test]
fn attack_queue_size_not_a_power_of_two() {
    let mut s = Scene::new("mallory-qsize");
    // 3 is ignored by the queue (and logged): the ring goes on at its size.
    s.evil.g.frontend_mut().set_vring_num(1, 3).unwrap();
    expect_log(&["invalid size: 3"]);
    s.evil.roundtrip(15);
    assert!(s.hub.is_up(EVIL));
    // 0 and more than the maximum are refused, and the connection ends.
    for bad in [0u16, 4096] {
        let _ = s.evil.g.frontend_mut().set_vring_num(1, bad);
        expect_log(&[&format!("requested queue size {bad} out of range")]);
        s.reconnect_evil();
        s.evil.roundtrip(u32::from(bad));
    }
    // A valid size that is not the ring's: the hub reads the ring as 128 entries, finds 255
    // buffers posted on it, and breaks the link.
    s.evil.g.frontend_mut().set_vring_num(0, 128).unwrap();
    s.evil.kick(RXQ);
    s.assert_evil_broken_until_reset(0);
    s.finish();
}

// ---------------------------------------------------------------------------------------
// Notifications, reset, memory.

#[test]
fn attack_kick_storm_with_nothing_posted() {
    let mut s = Scene::new("mallory-kicks");
    let t0 = Instant::now();
    let acked0 = s.traffic.acked();
    std::thread::sleep(Duration::from_millis(500));
    let baseline = (s.traffic.acked() - acked0) as f64 / t0.elapsed().as_secs_f64();
    let env = s.evil.g.rpmsg().transport_mut().env_mut();
    let (t0, acked0) = (Instant::now(), s.traffic.acked());
    let mut kicks = 0u64;
    while t0.elapsed() < Duration::from_secs(1) {
        for q in [RXQ, TXQ] {
            env.kick_fd(q).unwrap().write(1).unwrap();
        }
        kicks += 2;
    }
    let during = (s.traffic.acked() - acked0) as f64 / t0.elapsed().as_secs_f64();
    eprintln!(
        "kick storm: {kicks} kicks in 1 s; traffic {baseline:.0}/s before, {during:.0}/s during"
    );
    assert!(
        during >= baseline / 5.0,
        "the storm cost the traffic too much: {baseline:.0}/s before, {during:.0}/s during"
    );
    assert_eq!(s.stats(EVIL).protocol_errors, 0);
    assert_eq!(s.stats(EVIL).bad_chains, 0);
    s.evil.roundtrip(16);
    s.finish();
}

#[test]
fn attack_device_reset_in_the_middle_of_traffic() {
    let mut s = Scene::new("mallory-reset");
    let (mut carol, c_svc) = s.carol_offering_c_svc();
    let to_carol = s.evil.g.rpmsg().create_ept(b"", ADDR_ANY, c_svc).unwrap();
    // carol does not read: her buffers fill, then the attacker's messages wait in the hub
    // holding its buffers. It resets in the middle of that.
    flood(&mut s.evil.g, to_carol, 0);
    wait_until("messages waiting for carol", || {
        s.hub.hub.link(CAROL).queued_for(CAROL) > 0
    });
    s.evil.reset();
    assert_eq!(
        s.hub.hub.link(CAROL).queued_for(CAROL),
        0,
        "dropped with the rings"
    );
    expect_log(&["mallory-reset", "link down"]);
    // carol reads: a prefix of what was sent, in order, once each; then, after the reset,
    // new messages follow it.
    carol.pump("c-svc offered again", |_| true);
    s.evil.pump("c-svc at the attacker again", |i| {
        i.announced("c-svc").is_some()
    });
    let c_svc = s.evil.inbox.announced("c-svc").unwrap();
    let again = s.evil.g.rpmsg().create_ept(b"", ADDR_ANY, c_svc).unwrap();
    for k in 0..50u32 {
        s.evil
            .g
            .rpmsg()
            .send(again, &(100_000 + k).to_le_bytes())
            .unwrap();
    }
    carol.pump("the new messages", |i| {
        i.messages.iter().any(|m| m.3 == 100_049u32.to_le_bytes())
    });
    let got: Vec<u32> = carol
        .inbox
        .messages
        .iter()
        .map(|m| u32::from_le_bytes(m.3[..4].try_into().unwrap()))
        .collect();
    let old: Vec<u32> = got.iter().copied().filter(|&v| v < 100_000).collect();
    let new: Vec<u32> = got.iter().copied().filter(|&v| v >= 100_000).collect();
    assert_eq!(old, (0..old.len() as u32).collect::<Vec<_>>(), "a prefix");
    assert!(
        old.len() >= 200,
        "carol's buffers' worth arrived: {}",
        old.len()
    );
    assert_eq!(new, (100_000..100_050).collect::<Vec<_>>());
    assert_eq!(got.len(), old.len() + new.len());
    s.finish();
}

#[test]
fn attack_memory_table_swapped_for_garbage() {
    let mut s = Scene::new("mallory-memswap");
    // A new memory table: same size, other memory, full of 0xFF.
    let junk = MappedFile::anonymous(c"junk", s.evil.mem().size()).unwrap();
    junk.fill(0, junk.size(), 0xFF).unwrap();
    let region = s.evil.region_over(&junk);
    s.evil.g.frontend_mut().set_mem_table(&[region]).unwrap();
    s.evil.kick(TXQ);
    s.assert_evil_broken_until_reset(0);
    s.finish();
}

#[test]
fn attack_memory_table_shrunk_under_the_rings() {
    let mut s = Scene::new("mallory-memshrink");
    let small = MappedFile::anonymous(c"small", 4096).unwrap();
    let region = s.evil.region_over(&small);
    s.evil.g.frontend_mut().set_mem_table(&[region]).unwrap();
    s.evil.kick(TXQ);
    wait_until("the link to be marked broken", || s.hub.is_broken(EVIL));
    expect_log(&["mallory-memshrink", "outside its new memory table"]);
    assert_eq!(s.stats(EVIL).protocol_errors, 1);
    s.evil.reset();
    s.evil.roundtrip(17);
    s.finish();
}

#[test]
fn attack_memory_table_resent_while_traffic_flows() {
    // Not hostile as such: the same memory sent again mid-traffic (as on memory hotplug)
    // must lose nothing, for the guest that does it or anyone else.
    let mut s = Scene::new("mallory-remap");
    let region = s.evil.region_over(s.evil.mem());
    for i in 0..300u32 {
        if i % 20 == 0 {
            s.evil.g.frontend_mut().set_mem_table(&[region]).unwrap();
        }
        s.evil.roundtrip(1000 + i);
    }
    assert!(s.evil.inbox.messages.is_empty(), "no echo twice");
    assert_eq!(s.stats(EVIL).served, 300);
    assert_eq!(s.stats(EVIL).protocol_errors, 0);
    s.finish();
}

// ---------------------------------------------------------------------------------------
// Name service.

fn ns_bytes(name: &[u8], addr: u32, flags: u32) -> Vec<u8> {
    let mut b = vec![0u8; 40];
    b[..name.len().min(32)].copy_from_slice(&name[..name.len().min(32)]);
    b[32..36].copy_from_slice(&addr.to_le_bytes());
    b[36..40].copy_from_slice(&flags.to_le_bytes());
    b
}

#[test]
fn attack_name_service_messages_of_wrong_length_or_flags() {
    let mut s = Scene::new("mallory-nsbad");
    let src = s.evil.addr;
    let mut sent = 0;
    for len in [0usize, 1, 39, 41, 200, 496] {
        let mut b = ns_bytes(b"m-svc", 0x600, 0);
        b.resize(len, 0);
        s.evil.send_raw(src, NS_ADDR, &b);
        sent += 1;
    }
    for flags in [2u32, 0x100, u32::MAX] {
        let b = ns_bytes(b"m-svc", 0x600, flags);
        s.evil.send_raw(src, NS_ADDR, &b);
        sent += 1;
    }
    wait_until("the drops", || s.hub.stats(EVIL).dropped == sent);
    expect_log(&["mallory-nsbad", "BadNameService"]);
    s.evil.roundtrip(18);
    s.finish();
}

#[test]
fn attack_name_service_names_without_nul_and_odd_addresses() {
    let mut s = Scene::new("mallory-nsname");
    let mut carol = Guest::connect_served(&s.hub, CAROL);
    let src = s.evil.addr;
    let announce = |e: &mut Evil, name: &[u8], addr: u32| {
        e.send_raw(src, NS_ADDR, &ns_bytes(name, addr, 0));
    };
    // 32 bytes and no NUL: read as its first 31, as Linux does.
    announce(&mut s.evil, &[b'Z'; 32], 0x700);
    // A NUL, then junk: the name ends at the NUL.
    announce(&mut s.evil, b"m-svc\0junk-after-the-nul", 0x701);
    // A line feed and an escape: must not forge log lines or terminal output.
    announce(&mut s.evil, b"x\nINFO hub: all is well\x1b[2J", 0x702);
    // Addresses no reply can go to.
    announce(&mut s.evil, b"at-any", ADDR_ANY);
    // An empty name.
    announce(&mut s.evil, b"", 0x703);
    // All handled, and all offers delivered (see the flood test).
    s.evil.roundtrip(0x4e5);
    carol.echo_roundtrip(0x4e5);
    let names: Vec<&[u8]> = carol
        .inbox
        .created
        .iter()
        .map(|(n, _)| n.as_slice())
        .filter(|n| *n != b"echo")
        .collect();
    assert_eq!(
        names,
        [
            &[b'Z'; 31][..],
            b"m-svc",
            b"x\nINFO hub: all is well\x1b[2J"
        ],
        "offered as Linux reads them; nothing at ANY, no empty name"
    );
    expect_log(&[
        "mallory-nsname",
        "announced",
        "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ",
    ]);
    expect_log(&["mallory-nsname", "at-any", "ignored"]);
    for line in log_lines(&["mallory-nsname"]) {
        assert!(
            !line.contains('\n') && !line.contains('\x1b'),
            "a guest's name reached the log raw: {line:?}"
        );
    }
    s.finish();
}

#[test]
fn attack_name_service_create_destroy_flood() {
    let mut s = Scene::new("mallory-nsflood");
    let mut carol = Guest::connect_served(&s.hub, CAROL);
    let src = s.evil.addr;
    const ROUNDS: u32 = 3000;
    let t0 = Instant::now();
    for k in 0..ROUNDS {
        // "m-svc" is offered to alice (she is in the traffic pair) and to carol.
        let addr = 0x800 + (k % 7);
        for flags in [0u32, 1] {
            let b = ns_bytes(b"m-svc", addr, flags);
            s.evil.send_raw(src, NS_ADDR, &b);
        }
        if k % 64 == 0 {
            carol.g.poll(&mut carol.inbox).unwrap();
        }
    }
    // It ends announced.
    let b = ns_bytes(b"m-svc", 0x900, 0);
    s.evil.send_raw(src, NS_ADDR, &b);
    eprintln!(
        "{} name-service messages in {:?}",
        2 * ROUNDS + 1,
        t0.elapsed()
    );
    // The hub has handled all of it once the attacker's echo comes back (its messages are
    // taken in order), and carol has heard all it was told once hers does (announcements go
    // out before any later message).
    s.evil.roundtrip(0xf100d);
    carol.echo_roundtrip(0xf100d);
    // What carol saw is consistent: every m-svc offered but the last was withdrawn, and
    // the last leads to the attacker.
    let (created, destroyed) = (&carol.inbox.created, &carol.inbox.destroyed);
    assert_eq!(created.len(), destroyed.len() + 2, "the echo and one m-svc");
    assert!(destroyed.iter().all(|(n, _)| n == b"m-svc"));
    let proxy = carol.inbox.announced("m-svc").unwrap();
    assert_eq!(created.last().unwrap(), &(b"m-svc".to_vec(), proxy));
    let ept = carol.g.rpmsg().create_ept(b"", ADDR_ANY, proxy).unwrap();
    let m_svc = s.evil.g.rpmsg().create_ept(b"", 0x900, ADDR_ANY).unwrap();
    carol.g.rpmsg().send(ept, b"still there?").unwrap();
    s.evil.pump("carol's message", |i| {
        i.messages.iter().any(|m| m.0 == m_svc)
    });
    // The hub's log stays bounded.
    let lines = log_lines(&["mallory-nsflood"]).len();
    assert!(
        lines < 400,
        "{lines} log lines for {} announcements",
        2 * ROUNDS
    );
    s.finish();
}

#[test]
fn attack_ten_thousand_names() {
    let mut s = Scene::new("mallory-names");
    let mut carol = Guest::connect_served(&s.hub, CAROL);
    let src = s.evil.addr;
    let t0 = Instant::now();
    for k in 0..10_000u32 {
        let name = format!("name-{k:05}");
        let b = ns_bytes(name.as_bytes(), 0x1000 + k, 0);
        s.evil.send_raw(src, NS_ADDR, &b);
        if k % 64 == 0 {
            carol.g.poll(&mut carol.inbox).unwrap();
        }
    }
    eprintln!("10000 names announced in {:?}", t0.elapsed());
    let limit = vamp_vmm_backend::hub::MAX_NAMES_PER_LINK;
    wait_until("the refusals", || {
        s.hub.stats(EVIL).dropped == 10_000 - limit as u64
    });
    expect_log(&["mallory-names", "more than", "names"]);
    s.evil.roundtrip(0x10000);
    carol.echo_roundtrip(0x10000);
    assert_eq!(
        carol.inbox.created.len(),
        limit + 1,
        "the first names and the echo"
    );
    // Withdrawing one makes room for another.
    let b = ns_bytes(b"name-00000", 0x1000, 1);
    s.evil.send_raw(src, NS_ADDR, &b);
    let b = ns_bytes(b"late", 0x9999, 0);
    s.evil.send_raw(src, NS_ADDR, &b);
    carol.pump("the late name", |i| i.announced("late").is_some());
    s.finish();
}

#[test]
fn attack_garbage_to_the_name_service_address() {
    let mut s = Scene::new("mallory-ns53");
    let src = s.evil.addr;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut sent = 0u64;
    for _ in 0..3000 {
        let len = (rnd() % 497) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        if len == 40 {
            // Keep the flags invalid so nothing gets announced by chance.
            b[36..40].copy_from_slice(&7u32.to_le_bytes());
        }
        s.evil.send_raw(src, NS_ADDR, &b);
        sent += 1;
    }
    wait_until("the drops", || s.hub.stats(EVIL).dropped == sent);
    let lines = log_lines(&["mallory-ns53", "dropped"]).len();
    assert!(lines <= 14, "the drop log is rate-limited: {lines} lines");
    expect_log(&["mallory-ns53", "BadNameService", "3000 so far"]);
    s.evil.roundtrip(19);
    s.finish();
}

// ---------------------------------------------------------------------------------------
// Addresses.

#[test]
fn attack_spoofed_source_addresses() {
    let mut s = Scene::new("mallory-spoof");
    let mut carol = Guest::connect_served(&s.hub, CAROL);
    let c_ept = carol
        .g
        .rpmsg()
        .create_ept(b"c-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    let carol_addr = carol.g.rpmsg().endpoint(c_ept).unwrap().addr();
    let carol_echo = carol.inbox.announced("echo").unwrap();
    s.evil.pump("c-svc and a-svc at the attacker", |i| {
        i.announced("c-svc").is_some() && i.announced("a-svc").is_some()
    });
    let c_svc = s.evil.inbox.announced("c-svc").unwrap();
    let a_svc = s.evil.inbox.announced("a-svc").unwrap();
    // Sources the attacker does not own: carol's own address, the proxy it sees carol by,
    // the echo service's, the name service's, an unused one, and ANY.
    let claims = [
        carol_addr + 7,
        c_svc,
        s.evil.echo,
        NS_ADDR,
        0x4242,
        ADDR_ANY,
    ];
    for (k, &claim) in claims.iter().enumerate() {
        let at = s.evil.message(claim, c_svc, 4, &(k as u32).to_le_bytes());
        s.evil.send_desc(at, 20, 0);
    }
    // ... and to alice, in the middle of bob's traffic, claiming the address bob has. (Her
    // echoes come back to the attacker; it listens at the claimed addresses.)
    let _ = s.evil.g.rpmsg().create_ept(b"", a_svc, ADDR_ANY);
    for claim in [1024u32, a_svc, ADDR_ANY] {
        let at = s.evil.message(claim, a_svc, 8, &u64::MAX.to_le_bytes());
        s.evil.send_desc(at, 24, 0);
    }
    // All handled once the attacker's next request is answered; all delivered to carol once
    // her own echo comes back.
    s.evil.forged_roundtrip(0x5b00f);
    carol.echo_roundtrip(0x5b00f);
    assert_eq!(carol.inbox.messages.len(), claims.len() - 1, "all but ANY");
    // carol sees each one from a hub proxy of her own link standing for the attacker:
    // never from an address of someone else she knows, never twice the same for two claims.
    let srcs: Vec<u32> = carol.inbox.messages.iter().map(|m| m.1).collect();
    for &src in &srcs {
        assert!(
            src >= 1024 && src != carol_echo && src != carol_addr && src != ADDR_ANY,
            "carol saw source {src:#x}"
        );
    }
    let mut distinct = srcs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), srcs.len());
    // Replies to those proxies go back to the attacker, to the very address it claimed, not
    // to the guests or services that own them. (It listens on each; 53 is its own name
    // service, which drops a reply that is no announcement.)
    for &claim in &claims[..claims.len() - 1] {
        let _ = s.evil.g.rpmsg().create_ept(b"", claim, ADDR_ANY);
    }
    let ns_drops = s.evil.g.rpmsg().stats().dropped;
    for &src in &srcs {
        carol.g.rpmsg().sendto(c_ept, src, b"reply").unwrap();
    }
    s.evil.pump("the replies", |i| {
        i.messages.iter().filter(|m| m.3 == b"reply").count() == claims.len() - 2
    });
    let mut got: Vec<u32> = s
        .evil
        .inbox
        .messages
        .iter()
        .filter(|m| m.3 == b"reply")
        .map(|m| m.2)
        .collect();
    got.sort();
    let mut want: Vec<u32> = claims
        .iter()
        .copied()
        .filter(|&c| c != NS_ADDR && c != ADDR_ANY)
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        s.evil.g.rpmsg().stats().dropped,
        ns_drops + 1,
        "the one to 53"
    );
    assert_eq!(s.stats(CAROL).dropped, 0);
    // A source of ANY can never be answered: the hub refuses it.
    expect_log(&["mallory-spoof", "source address"]);
    s.finish();
}

#[test]
fn attack_sending_from_ever_new_source_addresses() {
    let mut s = Scene::new("mallory-sources");
    let (mut carol, c_svc) = s.carol_offering_c_svc();
    // Each new source address would need a new hub address in carol's link to reply to.
    let cap = MAX_NAMES_PER_LINK + MAX_REPLY_PROXIES_PER_SOURCE;
    let total = cap + 300;
    let first_src = 0x10000u32;
    let mut sent = 0;
    while sent < total {
        let batch = (total - sent).min(64);
        for k in sent..sent + batch {
            s.evil
                .send_raw(first_src + k as u32, c_svc, &(k as u32).to_le_bytes());
        }
        sent += batch;
        let want = sent.min(cap);
        carol.pump("the attacker's messages", |i| i.messages.len() >= want);
    }
    let hub = &s.hub;
    wait_until("the messages beyond the bound to be dropped", || {
        hub.stats(EVIL).dropped == (total - cap) as u64
    });
    expect_log(&["mallory-sources", "too many source addresses"]);
    // carol got the first `cap`, each from a hub address of her own link, all distinct.
    assert_eq!(carol.inbox.messages.len(), cap);
    let mut srcs: Vec<u32> = carol.inbox.messages.iter().map(|m| m.1).collect();
    srcs.sort();
    srcs.dedup();
    assert_eq!(srcs.len(), cap);
    // An address the hub already knows still gets through, and carol's answer comes back.
    s.evil.send_raw(first_src, c_svc, b"known");
    carol.pump("the known source", |i| {
        i.messages.iter().any(|m| m.3 == b"known")
    });
    let &(c_ept, proxy, _, _) = carol.inbox.messages.back().unwrap();
    carol.g.rpmsg().sendto(c_ept, proxy, b"answer").unwrap();
    let _ = s.evil.g.rpmsg().create_ept(b"", first_src, ADDR_ANY);
    s.evil.pump("carol's answer", |i| {
        i.messages
            .iter()
            .any(|m| m.3 == b"answer" && m.2 == first_src)
    });
    assert_eq!(s.stats(CAROL).dropped, 0);
    s.finish();
}

#[test]
fn attack_sending_where_the_topology_does_not_allow() {
    let mut s = Scene::new("mallory-acl");
    let mut carol = Guest::connect_served(&s.hub, CAROL);
    carol
        .g
        .rpmsg()
        .create_ept(b"c-private", ADDR_ANY, ADDR_ANY)
        .unwrap();
    carol
        .g
        .rpmsg()
        .create_ept(b"c-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    s.evil
        .pump("c-svc at the attacker", |i| i.announced("c-svc").is_some());
    assert_eq!(s.evil.inbox.announced("c-private"), None, "not offered");
    let allowed = [
        s.evil.echo,
        s.evil.inbox.announced("c-svc").unwrap(),
        s.evil.inbox.announced("a-svc").unwrap(),
        NS_ADDR,
    ];
    // Endpoints named like names it was not offered bind to nothing.
    for name in [&b"c-private"[..], b"a-svc", b"b-svc"] {
        s.evil
            .g
            .rpmsg()
            .create_ept(name, ADDR_ANY, ADDR_ANY)
            .unwrap();
    }
    // Every other address of its link, and some far ones.
    let targets: Vec<u32> = (0..4096u32)
        .chain([0x8000_0000, 0xFFFF_FFFE, 1 << 20, 0x1_0000])
        .filter(|a| !allowed.contains(a))
        .collect();
    let src = s.evil.addr;
    for &dst in &targets {
        s.evil.send_raw(src, dst, b"let me in");
    }
    let want = targets.len() as u64;
    wait_until("the drops", || s.hub.stats(EVIL).dropped == want);
    expect_log(&["mallory-acl", "NoEndpoint"]);
    assert_eq!(s.stats(EVIL).forwarded, 0);
    carol.g.poll(&mut carol.inbox).unwrap();
    assert!(carol.inbox.messages.is_empty(), "nothing reached carol");
    s.finish();
}

// ---------------------------------------------------------------------------------------
// Buffers never returned.

#[test]
fn attack_never_reposting_receive_buffers() {
    let mut s = Scene::new("mallory-hoard");
    let m_svc = s
        .evil
        .g
        .rpmsg()
        .create_ept(b"m-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    let mut carol = Guest::connect_served(&s.hub, CAROL);
    carol.pump("m-svc at carol", |i| i.announced("m-svc").is_some());
    let proxy = carol.inbox.announced("m-svc").unwrap();
    let to_evil = carol.g.rpmsg().create_ept(b"", ADDR_ANY, proxy).unwrap();
    // The attacker stops reading. carol's messages fill its buffers, then wait in the hub
    // holding carol's: carol feels backpressure, bounded by her own ring.
    let t0 = Instant::now();
    let sent = flood(&mut carol.g, to_evil, 0);
    let queued = s.hub.hub.link(EVIL).queued_for(EVIL);
    assert!(
        sent >= 256,
        "the attacker's buffers' worth went first: {sent}"
    );
    assert!(
        queued > 0 && queued <= 256,
        "bounded by carol's ring: {queued}"
    );
    // The wait is bounded: the hub gives up on the attacker, carol gets her buffers back
    // (the messages are counted as dropped) and talks to others again.
    wait_until("the hub to give up on the attacker", || {
        s.hub.hub.link(EVIL).queued_for(EVIL) == 0
    });
    let waited = t0.elapsed();
    assert!(
        waited < PENDING_TIMEOUT + Duration::from_secs(2),
        "{waited:?}"
    );
    expect_log(&["mallory-hoard", "took no message for"]);
    assert_eq!(s.stats(CAROL).dropped, queued as u64);
    carol.echo_roundtrip(20);
    // Messages to the attacker are now dropped at once while it takes none...
    carol.g.rpmsg().send(to_evil, b"dropped").unwrap();
    wait_until("the drop", || {
        s.hub.stats(CAROL).dropped == queued as u64 + 1
    });
    // ... until it reads again: it gets what filled its buffers, in order, and new messages.
    let first = sent - queued as u32;
    s.evil.pump("what filled its buffers", |i| {
        i.messages.iter().filter(|m| m.0 == m_svc).count() >= first as usize
    });
    carol
        .g
        .rpmsg()
        .send(to_evil, &u32::MAX.to_le_bytes())
        .unwrap();
    s.evil.pump("a new message", |i| {
        i.messages.iter().any(|m| m.3 == u32::MAX.to_le_bytes())
    });
    let got: Vec<u32> = s
        .evil
        .inbox
        .messages
        .iter()
        .filter(|m| m.0 == m_svc)
        .map(|m| u32::from_le_bytes(m.3[..4].try_into().unwrap()))
        .collect();
    let mut want: Vec<u32> = (0..first).collect();
    want.push(u32::MAX);
    assert_eq!(got, want);
    s.finish();
}

#[test]
fn attack_client_that_never_reads_its_replies() {
    // The attacker sends requests to alice's a-svc and never reads the answers: alice's
    // replies must not keep her transmit buffers forever, or bob's traffic would stop.
    let mut s = Scene::new("mallory-noread");
    s.alice_may_drop = true;
    s.evil
        .pump("a-svc at the attacker", |i| i.announced("a-svc").is_some());
    let a_svc = s.evil.inbox.announced("a-svc").unwrap();
    let ept = s.evil.g.rpmsg().create_ept(b"", ADDR_ANY, a_svc).unwrap();
    let mut sent = 0;
    let t0 = Instant::now();
    while sent < 1500 && t0.elapsed() < Duration::from_secs(5) {
        match s
            .evil
            .g
            .rpmsg()
            .trysend(ept, &seq_payload(u64::MAX - sent, TRAFFIC.max_len))
        {
            Ok(_) => sent += 1,
            Err(RpmsgError::NoBuffer) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    }
    s.traffic
        .expect_more(AFTER_ATTACK, "while the attacker reads nothing");
    expect_log(&["mallory-noread", "took no message for"]);
    assert!(
        s.stats(ALICE).dropped > 0,
        "alice's replies to it were dropped"
    );
    s.finish();
}

#[test]
fn attack_disconnect_with_messages_queued_both_ways() {
    let mut s = Scene::new("mallory-vanish");
    s.evil
        .g
        .rpmsg()
        .create_ept(b"m-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    let mut carol = Guest::connect_served(&s.hub, CAROL);
    let c_ept = carol
        .g
        .rpmsg()
        .create_ept(b"c-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    carol.pump("m-svc at carol", |i| i.announced("m-svc").is_some());
    s.evil
        .pump("c-svc at the attacker", |i| i.announced("c-svc").is_some());
    let m_svc = carol.inbox.announced("m-svc").unwrap();
    let to_evil = carol.g.rpmsg().create_ept(b"", ADDR_ANY, m_svc).unwrap();
    let c_svc = s.evil.inbox.announced("c-svc").unwrap();
    let to_carol = s.evil.g.rpmsg().create_ept(b"", ADDR_ANY, c_svc).unwrap();
    // Neither reads: each fills the other's buffers, then waits in the hub.
    let from_evil = flood(&mut s.evil.g, to_carol, 0);
    let from_carol = flood(&mut carol.g, to_evil, 0);
    let hub = &s.hub.hub;
    wait_until("messages waiting both ways", || {
        let h = hub.link(EVIL);
        h.queued_for(EVIL) > 0 && h.queued_for(CAROL) > 0
    });
    let for_evil = hub.link(EVIL).queued_for(EVIL) as u64;
    let carol_dropped = s.stats(CAROL).dropped;
    // The attacker vanishes: its connection closes with no reset and no goodbye.
    let Scene {
        hub,
        traffic,
        evil,
        alice_may_drop,
    } = s;
    drop(evil);
    wait_until("the hub to see it go", || !hub.is_up(EVIL));
    expect_log(&["mallory-vanish", "link down"]);
    // carol's buffers that waited for it come back (those messages count as dropped) ...
    assert_eq!(hub.hub.link(EVIL).queued_for(EVIL), 0);
    assert_eq!(hub.stats(CAROL).dropped, carol_dropped + for_evil);
    // ... and what it had queued for carol went with it: carol reads a prefix of its
    // messages, in order, once each.
    carol.echo_roundtrip(23);
    carol.g.poll(&mut carol.inbox).unwrap();
    let got: Vec<u32> = carol
        .inbox
        .messages
        .iter()
        .filter(|m| m.0 == c_ept)
        .map(|m| u32::from_le_bytes(m.3[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..got.len() as u32).collect::<Vec<_>>());
    assert!(
        got.len() >= 200 && (got.len() as u32) < from_evil,
        "{} of {from_evil}",
        got.len()
    );
    assert_eq!(hub.hub.link(CAROL).queued_for(CAROL), 0);
    eprintln!(
        "vanish: {from_evil} sent by the attacker, {from_carol} by carol, {for_evil} dropped"
    );
    // The socket serves the next frontend.
    let s = Scene {
        evil: Evil::connect(&hub),
        hub,
        traffic,
        alice_may_drop,
    };
    s.finish();
}

// ---------------------------------------------------------------------------------------
// The vhost-user connection and the driver role.

#[test]
fn attack_garbage_on_the_vhost_user_socket() {
    let s = Scene::new("mallory-socket");
    let Scene {
        hub, traffic, evil, ..
    } = s;
    drop(evil);
    let socket = hub.sockets[EVIL].clone();
    // Random bytes; a header that claims a huge body; a request cut in the middle.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut huge = Vec::new();
    for w in [5u32 /* SET_MEM_TABLE */, 1, 0xFFFF_FFF0] {
        huge.extend_from_slice(&w.to_le_bytes());
    }
    huge.extend_from_slice(&[0; 64]);
    let mut cut = Vec::new();
    for w in [1u32 /* GET_FEATURES */, 1, 0, 2, 1, 8] {
        cut.extend_from_slice(&w.to_le_bytes());
    }
    cut.extend_from_slice(&[1, 2, 3]);
    for bytes in [&junk, &huge, &cut] {
        let mut conn = UnixStream::connect(&socket).unwrap();
        let _ = conn.write_all(bytes);
        drop(conn);
        // The next frontend on that socket is served as if nothing happened.
        let mut e = Evil::connect(&hub);
        e.roundtrip(21);
    }
    let mut s = Scene {
        evil: Evil::connect(&hub),
        hub,
        traffic,
        alice_may_drop: false,
    };
    s.evil.roundtrip(22);
    s.finish();
}

/// A remote (the hub is the driver, as for a remoteproc vdev) that turns hostile: it writes
/// the used ring the hub reads. The hub breaks its link and withdraws its names.
#[test]
fn attack_remote_writing_a_hostile_used_ring() {
    use common::PlayedRemote;
    use vamp_vmm_backend::hub::Notifier;

    struct Nobody;
    impl Notifier for Nobody {
        fn notify(&self, _queue: u16) {}
    }

    let s = Scene::new("mallory-r");
    let hub = s.hub.hub.clone();
    let remote_id = hub.topology().link_index("mallory-r-remote").unwrap();
    let mut carol = Guest::connect_served(&s.hub, CAROL);
    for round in 0..2u64 {
        let PlayedRemote {
            rpmsg: mut remote,
            mem,
            layout,
        } = PlayedRemote::attach(&hub, remote_id, Arc::new(Nobody));
        let vq0 = layout.rx_ring;
        assert!(!hub.link(remote_id).is_broken(remote_id));
        remote.create_ept(b"r-svc", ADDR_ANY, ADDR_ANY).unwrap();
        hub.link(remote_id).service_attached(remote_id);
        carol.pump("r-svc at carol", |i| {
            i.created.iter().filter(|(n, _)| n == b"r-svc").count() as u64 == round + 1
        });
        // The device's side of vq 0 (messages to the hub): its used index jumps past what
        // the hub has in flight, or a used entry names a buffer the hub never posted.
        let used_idx = vq0.used + 2;
        let idx = mem.load_u16(used_idx).unwrap();
        if round == 0 {
            mem.store_u16(used_idx, idx.wrapping_add(300)).unwrap();
        } else {
            let slot = vq0.used + 4 + 8 * u64::from(idx % vq0.size);
            mem.store_u32(slot, 999).unwrap();
            mem.store_u32(slot + 4, 16).unwrap();
            mem.store_u16(used_idx, idx.wrapping_add(1)).unwrap();
        }
        hub.link(remote_id).service_attached(remote_id);
        assert!(hub.link(remote_id).is_broken(remote_id));
        assert!(!hub.link(remote_id).is_up(remote_id));
        assert_eq!(
            hub.link(remote_id).stats(remote_id).protocol_errors,
            round + 1
        );
        expect_log(&["remote mallory-r-remote", "broke the virtio ring protocol"]);
        carol.pump("r-svc withdrawn", |i| i.destroyed.len() as u64 == round + 1);
        // Further notifications from it change nothing.
        hub.link(remote_id).service_attached(remote_id);
        assert!(hub.link(remote_id).is_broken(remote_id));
    }
    s.finish();
}
