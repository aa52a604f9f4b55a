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
