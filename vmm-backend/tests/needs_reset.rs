//! DEVICE_NEEDS_RESET: a guest that breaks the ring protocol is told so through vhost-user
//! (the device status with VHOST_USER_PROTOCOL_F_STATUS, a configuration-change notice on the
//! backend channel), resets, and is served again.
//!
//! The guests are vamp's own frontend ([`NativeGuest`]) against the hub's `serve_guest`
//! threads, as a driver that reads the status would be.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::rpmsg::{EptId, Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::Transport;
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::ADDR_ANY;
use vamp_vmm_backend::backend::{lock_hub, serve_guest};
use vamp_vmm_backend::config::Topology;
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest, status};
use vamp_vmm_backend::hub::Hub;
use vhost::vhost_user::message::VhostUserProtocolFeatures;

const WAIT: Duration = Duration::from_secs(10);
const RXQ: u16 = 0;
const TXQ: u16 = 1;

/// g offers "g-svc" to h; both see the hub's echo.
const TOPOLOGY: &str = r#"
[[guest]]
name = "g"
socket = "{dir}/g.sock"
[[guest]]
name = "h"
socket = "{dir}/h.sock"
[[service]]
type = "echo"
name = "echo"
[[channel]]
from = "g"
to = ["h"]
names = ["g-svc"]
"#;
const G: usize = 0;
const H: usize = 1;

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct TestHub {
    hub: Arc<Mutex<Hub>>,
    sockets: Vec<PathBuf>,
    _dir: TempDir,
}

fn start_hub() -> TestHub {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vamp-reset-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topology = Topology::parse(&TOPOLOGY.replace("{dir}", dir.to_str().unwrap())).unwrap();
    let sockets: Vec<PathBuf> = topology.guests.iter().map(|g| g.socket.clone()).collect();
    let hub = Arc::new(Mutex::new(Hub::new(topology)));
    for (id, socket) in sockets.iter().enumerate() {
        let (hub, socket) = (hub.clone(), socket.clone());
        std::thread::spawn(move || serve_guest(hub, id, &socket));
    }
    TestHub {
        hub,
        sockets,
        _dir: TempDir(dir),
    }
}

#[derive(Debug, Default)]
struct Inbox {
    messages: VecDeque<(EptId, u32, Vec<u8>)>,
    created: Vec<(Vec<u8>, u32)>,
}

impl<T: Transport> Handler<T> for Inbox {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        let data = rpmsg.payload(msg).unwrap();
        self.messages.push_back((msg.ept, msg.src, data));
    }
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, e: NsEvent<'_>) {
        if let NsEvent::Created { name, addr, .. } = e {
            self.created.push((name.to_vec(), addr));
        }
    }
}

impl Inbox {
    fn announced(&self, name: &str) -> Option<u32> {
        self.created
            .iter()
            .rev()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, a)| *a)
    }
}

/// A guest and its inbox.
struct Guest {
    g: NativeGuest,
    inbox: Inbox,
}

impl Guest {
    fn connect(hub: &TestHub, id: usize) -> Guest {
        let g = NativeGuest::connect(&hub.sockets[id], GuestOptions::default()).unwrap();
        Guest {
            g,
            inbox: Inbox::default(),
        }
    }

    fn pump(&mut self, what: &str, done: impl Fn(&Inbox) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.g.poll(&mut self.inbox).unwrap();
            if done(&self.inbox) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.inbox
            );
            self.g.wait(Duration::from_millis(20));
        }
    }

    /// One message to the hub's echo and back.
    fn echo(&mut self, tag: u32) {
        self.pump("the echo service", |i| i.announced("echo").is_some());
        let addr = self.inbox.announced("echo").unwrap();
        let ept = self.g.rpmsg().create_ept(b"", ADDR_ANY, addr).unwrap();
        self.g.rpmsg().send(ept, &tag.to_le_bytes()).unwrap();
        self.pump("the echo", |i| {
            i.messages.iter().any(|m| m.2 == tag.to_le_bytes())
        });
        self.inbox.messages.clear();
        self.g.rpmsg().destroy_ept(ept).unwrap();
    }

    fn kick(&mut self, queue: u16) {
        self.g.rpmsg().transport_mut().environment().notify(queue);
    }

    /// Moves the available index of `ring` `by` entries on, as a buggy or hostile driver
    /// would: more chains than the ring holds is a protocol violation.
    fn jump_avail(&self, ring: VringLayout, by: u16) {
        let mem = self.g.memory();
        let idx = u16::from_le(mem.load_u16(ring.avail + 2).unwrap());
        fence(Ordering::SeqCst);
        mem.store_u16(ring.avail + 2, idx.wrapping_add(by).to_le())
            .unwrap();
    }

    fn status(&mut self) -> u8 {
        self.g
            .status()
            .unwrap()
            .expect("the backend offers F_STATUS")
    }
}

fn broken(hub: &TestHub, id: usize) -> bool {
    lock_hub(&hub.hub).is_broken(id)
}

#[test]
fn a_broken_ring_sets_needs_reset_and_a_reset_clears_it() {
    let hub = start_hub();
    let mut g = Guest::connect(&hub, G);
    let negotiated = g.g.protocol_features();
    assert!(
        negotiated.contains(
            VhostUserProtocolFeatures::STATUS
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::REPLY_ACK
        ),
        "{negotiated:?}"
    );
    assert_eq!(g.status(), status::STARTED);
    assert!(!g.g.needs_reset().unwrap());
    g.echo(1);
    assert_eq!(g.g.config_changes().unwrap(), 0);

    for round in 1..=2u64 {
        // More chains announced on the transmit ring than it holds.
        let tx = g.g.layout().tx_ring;
        g.jump_avail(tx, tx.size + 1);
        g.kick(TXQ);
        assert!(
            g.g.wait_config_change(WAIT).unwrap(),
            "round {round}: no configuration-change notice"
        );
        assert_eq!(g.g.config_changes().unwrap(), round, "one notice per break");
        assert!(broken(&hub, G));
        assert!(g.g.needs_reset().unwrap());
        assert_eq!(g.status(), status::STARTED | status::DEVICE_NEEDS_RESET);
        // The device stays in that state: kicks change nothing.
        g.kick(TXQ);
        g.kick(RXQ);
        std::thread::sleep(Duration::from_millis(50));
        assert!(g.g.needs_reset().unwrap());
        // The driver's answer: reset. Then it is served again.
        g.g.reset().unwrap();
        g.inbox = Inbox::default();
        assert!(!g.g.needs_reset().unwrap());
        assert_eq!(g.status(), status::STARTED);
        g.echo(100 + round as u32);
        assert_eq!(
            g.g.config_changes().unwrap(),
            round,
            "no notice without a break"
        );
    }
}

#[test]
fn a_ring_broken_under_another_guests_message_is_reported_too() {
    let hub = start_hub();
    let (mut g, mut h) = (Guest::connect(&hub, G), Guest::connect(&hub, H));
    g.g.rpmsg()
        .create_ept(b"g-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    g.pump("g's link", |_| true);
    h.pump("g-svc offered to h", |i| i.announced("g-svc").is_some());
    let svc = h.inbox.announced("g-svc").unwrap();
    let to_g = h.g.rpmsg().create_ept(b"", ADDR_ANY, svc).unwrap();
    // g's receive ring claims far more buffers than it holds; g does not kick. The hub finds
    // out on h's thread, copying h's message into g's ring.
    let rx = g.g.layout().rx_ring;
    g.jump_avail(rx, 1000);
    h.g.rpmsg().send(to_g, b"for g").unwrap();
    let deadline = Instant::now() + WAIT;
    while !broken(&hub, G) {
        assert!(Instant::now() < deadline, "g's link never broke");
        h.g.poll(&mut h.inbox).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        g.g.wait_config_change(WAIT).unwrap(),
        "no configuration-change notice"
    );
    assert!(g.g.needs_reset().unwrap());
    assert_eq!(h.status(), status::STARTED, "h is not affected");
    h.echo(7);
    g.g.reset().unwrap();
    g.inbox = Inbox::default();
    assert!(!g.g.needs_reset().unwrap());
    g.echo(8);
    assert_eq!(g.g.config_changes().unwrap(), 1);
}
