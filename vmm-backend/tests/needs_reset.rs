//! DEVICE_NEEDS_RESET: a guest that breaks the ring protocol is told so through vhost-user
//! (the device status with VHOST_USER_PROTOCOL_F_STATUS, a configuration-change notice on the
//! backend channel), resets, and is served again.
//!
//! The guests are vamp's own frontend (`NativeGuest`) against the hub's `serve_guest`
//! threads, as a driver that reads the status would be.

mod common;

use common::{Guest, Inbox, RXQ, TXQ, TestHub, WAIT, jump_avail, kick};
use std::time::{Duration, Instant};
use vamp_rpmsg::virtio::{STATUS_NEEDS_RESET, STATUS_STARTED};
use vamp_rpmsg::wire::ADDR_ANY;
use vhost::vhost_user::message::VhostUserProtocolFeatures;

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

/// The device status of `g`'s frontend.
fn device_status(g: &mut Guest) -> u8 {
    g.g.status().unwrap().expect("the backend offers F_STATUS")
}

#[test]
fn a_broken_ring_sets_needs_reset_and_a_reset_clears_it() {
    let hub = TestHub::start("reset", TOPOLOGY);
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
    assert_eq!(device_status(&mut g), STATUS_STARTED);
    assert!(!g.g.needs_reset().unwrap());
    g.echo_roundtrip(1);
    assert_eq!(g.g.config_changes().unwrap(), 0);

    for round in 1..=2u64 {
        // More chains announced on the transmit ring than it holds.
        let tx = g.g.layout().tx_ring;
        jump_avail(&g.g, tx, tx.size + 1);
        kick(&mut g.g, TXQ);
        assert!(
            g.g.wait_config_change(WAIT).unwrap(),
            "round {round}: no configuration-change notice"
        );
        assert_eq!(g.g.config_changes().unwrap(), round, "one notice per break");
        assert!(hub.is_broken(G));
        assert!(g.g.needs_reset().unwrap());
        assert_eq!(device_status(&mut g), STATUS_STARTED | STATUS_NEEDS_RESET);
        // The device stays in that state: kicks change nothing.
        kick(&mut g.g, TXQ);
        kick(&mut g.g, RXQ);
        std::thread::sleep(Duration::from_millis(50));
        assert!(g.g.needs_reset().unwrap());
        // The driver's answer: reset. Then it is served again.
        g.g.reset().unwrap();
        g.inbox = Inbox::default();
        assert!(!g.g.needs_reset().unwrap());
        assert_eq!(device_status(&mut g), STATUS_STARTED);
        g.echo_roundtrip(100 + round as u32);
        assert_eq!(
            g.g.config_changes().unwrap(),
            round,
            "no notice without a break"
        );
    }
}

#[test]
fn a_ring_broken_under_another_guests_message_is_reported_too() {
    let hub = TestHub::start("reset", TOPOLOGY);
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
    jump_avail(&g.g, rx, 1000);
    h.g.rpmsg().send(to_g, b"for g").unwrap();
    let deadline = Instant::now() + WAIT;
    while !hub.is_broken(G) {
        assert!(Instant::now() < deadline, "g's link never broke");
        h.g.poll(&mut h.inbox).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        g.g.wait_config_change(WAIT).unwrap(),
        "no configuration-change notice"
    );
    assert!(g.g.needs_reset().unwrap());
    assert_eq!(device_status(&mut h), STATUS_STARTED, "h is not affected");
    h.echo_roundtrip(7);
    g.g.reset().unwrap();
    g.inbox = Inbox::default();
    assert!(!g.g.needs_reset().unwrap());
    g.echo_roundtrip(8);
    assert_eq!(g.g.config_changes().unwrap(), 1);
}
