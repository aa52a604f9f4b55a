//! The hub driven directly by in-memory guests (vamp's driver engine on mapped memory, served
//! by `Hub::service` calls), for what the end-to-end tests cannot see: which links a kick
//! touches.

use super::*;
use crate::frontend::GuestOptions;
use vamp_rpmsg::rpmsg::{Handler, NsEvent, Received};
use vamp_rpmsg::transport::{DriverTransport, Environment};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const TOPOLOGY: &str = r#"
[[guest]]
name = "alice"
socket = "/nonexistent/alice.sock"
[[guest]]
name = "carol"
socket = "/nonexistent/carol.sock"
[[service]]
type = "echo"
name = "echo"
"#;
const ALICE: LinkId = 0;
const CAROL: LinkId = 1;
const QUEUE: u16 = 16;

struct Quiet;

impl Notifier for Quiet {
    fn notify(&self, _: u16) {}
}

impl Environment for Quiet {
    fn notify(&mut self, _: u16) {}
    fn now_us(&mut self) -> u64 {
        0
    }
}

/// Learns where the hub's echo service is; reads nothing else.
#[derive(Default)]
struct EchoAddress(Option<u32>);

impl<T: Transport> Handler<T> for EchoAddress {
    fn on_message(&mut self, _: &mut Rpmsg<T>, _: &mut Received) {}
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, event: NsEvent<'_>) {
        if let NsEvent::Created {
            name: b"echo",
            addr,
            ..
        } = event
        {
            self.0 = Some(addr);
        }
    }
}

struct Guest {
    ram: GuestRam,
    rpmsg: Rpmsg<DriverTransport<GuestRam, Quiet>>,
    info: RingsInfo,
}

impl Guest {
    fn new() -> Guest {
        let opts = GuestOptions {
            mem_size: 1 << 20,
            queue_size: QUEUE,
            ..GuestOptions::default()
        };
        let layout = opts.driver_layout().unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let ram = GuestRam::new(mem);
        let t = DriverTransport::new(ram.clone(), Quiet, layout, Endian::Little, false).unwrap();
        Guest {
            ram,
            rpmsg: Rpmsg::new(t, Config::default()),
            info: RingsInfo {
                rings: [layout.rx_ring, layout.tx_ring],
                next_avail: [0, 0],
                format: vamp_rpmsg::transport::RingFormat::Split,
                event_idx: false,
                name_service: true,
            },
        }
    }

    fn kick(&self, hub: &mut Hub, id: LinkId) {
        let notifier: Arc<dyn Notifier> = Arc::new(Quiet);
        hub.service(id, &self.ram, self.info, &notifier);
    }
}

/// A kick is served in time proportional to the links it involves: guest carol's kick does
/// not look at what waits for guest alice, even when the pending timeout has passed for it.
/// The clock ([`Hub::tick`]) does.
#[test]
fn a_kick_touches_only_the_links_it_involves() {
    let mut hub = Hub::new(Topology::parse(TOPOLOGY).unwrap());
    let (mut alice, carol) = (Guest::new(), Guest::new());
    alice.kick(&mut hub, ALICE);
    carol.kick(&mut hub, CAROL);
    let mut learned = EchoAddress::default();
    alice.rpmsg.poll(&mut learned).unwrap();
    let echo = learned.0.expect("the hub announced its echo service");
    let ept = alice.rpmsg.create_ept(b"", ADDR_ANY, echo).unwrap();
    // Alice sends to the echo and reads nothing: once her receive buffers are full, the echoes
    // wait for her, holding her transmit buffers.
    for _ in 0..4 {
        while alice.rpmsg.trysend(ept, b"ping").is_ok() {}
        alice.kick(&mut hub, ALICE);
    }
    let waiting = hub.queued_for(ALICE);
    assert!(waiting > 0, "echoes wait for alice's buffers");
    hub.check_invariants().unwrap();

    hub.set_pending_timeout(Duration::ZERO);
    carol.kick(&mut hub, CAROL);
    assert_eq!(
        hub.queued_for(ALICE),
        waiting,
        "carol's kick left alice alone"
    );
    let dropped = hub.stats(ALICE).dropped;
    hub.tick();
    assert_eq!(hub.queued_for(ALICE), 0, "the clock gave up on alice");
    assert_eq!(hub.stats(ALICE).dropped, dropped + waiting as u64);
    hub.check_invariants().unwrap();
}

const PAIRS: &str = r#"
[[guest]]
name = "a"
socket = "/nonexistent/a.sock"
[[guest]]
name = "b"
socket = "/nonexistent/b.sock"
[[guest]]
name = "c"
socket = "/nonexistent/c.sock"
[[guest]]
name = "d"
socket = "/nonexistent/d.sock"
[[guest]]
name = "e"
socket = "/nonexistent/e.sock"
[[service]]
type = "echo"
name = "echo"
[[channel]]
from = "b"
to = ["a"]
names = ["peer"]
[[channel]]
from = "d"
to = ["c"]
names = ["peer"]
"#;
const A: LinkId = 0;
const B: LinkId = 1;
const C: LinkId = 2;
const D: LinkId = 3;
const E: LinkId = 4;
/// Messages each exchange sends.
const ROUNDS: usize = 40;

/// What a guest heard: the names announced to it, and how many messages it got.
#[derive(Default)]
struct Heard {
    names: Vec<(Vec<u8>, u32)>,
    messages: usize,
}

impl<T: Transport> Handler<T> for Heard {
    fn on_message(&mut self, _: &mut Rpmsg<T>, _: &mut Received) {
        self.messages += 1;
    }
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, event: NsEvent<'_>) {
        if let NsEvent::Created { name, addr, .. } = event {
            self.names.push((name.to_vec(), addr));
        }
    }
}

impl Heard {
    fn address_of(&self, name: &[u8]) -> u32 {
        let found = self.names.iter().find(|(n, _)| n == name);
        found.expect("the name was announced").1
    }
}

impl Guest {
    /// Has the shared hub serve this guest's rings, through the entry a kick uses.
    fn serve(&self, hub: &SharedHub, id: LinkId) {
        let notifier: Arc<dyn Notifier> = Arc::new(Quiet);
        hub.service(id, &self.ram, self.info, &notifier);
    }
}

/// Guest `from` sends [`ROUNDS`] messages to the name "peer" that guest `to` announces, through
/// `hub`; returns how many `to` got.
fn pair_exchange(hub: &SharedHub, from: LinkId, to: LinkId) -> usize {
    let (mut sender, mut receiver) = (Guest::new(), Guest::new());
    sender.serve(hub, from);
    receiver.serve(hub, to);
    receiver
        .rpmsg
        .create_ept(b"peer", ADDR_ANY, ADDR_ANY)
        .unwrap();
    receiver.serve(hub, to);
    let mut heard = Heard::default();
    sender.rpmsg.poll(&mut heard).unwrap();
    let peer = heard.address_of(b"peer");
    let ept = sender.rpmsg.create_ept(b"", ADDR_ANY, peer).unwrap();
    let mut got = Heard::default();
    for _ in 0..ROUNDS {
        sender.rpmsg.trysend(ept, b"hello").unwrap();
        sender.serve(hub, from);
        receiver.rpmsg.poll(&mut got).unwrap();
        receiver.serve(hub, to);
        sender.rpmsg.poll(&mut heard).unwrap();
    }
    got.messages
}

/// Guest `id` sends [`ROUNDS`] messages to the hub's echo service; returns the echoes it got.
fn echo_exchange(hub: &SharedHub, id: LinkId) -> usize {
    let mut guest = Guest::new();
    guest.serve(hub, id);
    let mut heard = Heard::default();
    guest.rpmsg.poll(&mut heard).unwrap();
    let echo = heard.address_of(b"echo");
    let ept = guest.rpmsg.create_ept(b"", ADDR_ANY, echo).unwrap();
    for _ in 0..ROUNDS {
        guest.rpmsg.trysend(ept, b"ping").unwrap();
        guest.serve(hub, id);
        guest.rpmsg.poll(&mut heard).unwrap();
    }
    heard.messages
}

/// The hub splits along the topology's channels: a channel's guests share a part, a guest that
/// only talks to host services has one of its own.
#[test]
fn the_hub_splits_along_the_channels() {
    let parts = Hub::new(Topology::parse(PAIRS).unwrap()).split();
    let members: Vec<&[LinkId]> = parts.iter().map(Hub::members).collect();
    assert_eq!(members, [&[A, B][..], &[C, D], &[E]]);
    // A part knows nothing of the others' links.
    assert!(!parts[0].is_up(C) && parts[0].stats(C) == LinkStats::default());

    // A hub in use stays whole: its links' state would not follow them into parts.
    let mut hub = Hub::new(Topology::parse(PAIRS).unwrap());
    Guest::new().kick(&mut hub, C);
    assert_eq!(hub.split().len(), 1);
}

/// Guests of disjoint pairs, and a guest talking to a host service, never wait for each other:
/// with pair (a, b)'s lock held all along, pair (c, d) forwards and guest e's echoes come
/// back, and no lock of the hub ever had to wait. With one lock shared by all guests, the
/// other thread would block until the timeout.
#[test]
fn disjoint_pairs_never_wait_for_each_other() {
    let hub = SharedHub::new(Hub::new(Topology::parse(PAIRS).unwrap()));
    assert_eq!(pair_exchange(&hub, A, B), ROUNDS, "pair (a, b) forwards");
    let busy = hub.link(A);
    let (done, finished) = std::sync::mpsc::channel();
    let theirs = hub.clone();
    std::thread::spawn(move || {
        let forwarded = pair_exchange(&theirs, C, D);
        let echoed = echo_exchange(&theirs, E);
        let _ = done.send((forwarded, echoed));
    });
    let got = finished
        .recv_timeout(Duration::from_secs(120))
        .expect("pair (c, d) and guest e were served while pair (a, b)'s lock was held");
    assert_eq!(got, (ROUNDS, ROUNDS));
    drop(busy);
    let (taken, waited) = hub.lock_counts();
    assert!(taken > 0);
    assert_eq!(waited, 0, "no thread waited for another's lock");
    hub.check_invariants().unwrap();
    // The status gathers the parts' links back in topology order.
    let status = hub.status();
    let links: Vec<(&str, &str)> = status
        .links
        .iter()
        .map(|l| (l.name.as_str(), l.state))
        .collect();
    let up = "up";
    assert_eq!(
        links,
        [("a", up), ("b", up), ("c", up), ("d", up), ("e", up)]
    );
    assert_eq!(status.links[A].stats.forwarded, ROUNDS as u64);
    assert_eq!(status.links[C].stats.forwarded, ROUNDS as u64);
    assert_eq!(status.links[E].stats.served, ROUNDS as u64);
}
