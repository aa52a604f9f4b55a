//! A native guest whose driver picks transmit buffers as OpenAMP's does (recycled from the
//! used ring first, sized by the used length), talking to the hub's echo service: the hub's
//! device role must return consumed buffers with their full length.

mod common;

use common::{Inbox, TestHub, pump};
use vamp_rpmsg::wire::ADDR_ANY;

const ECHO: &str = r#"
[[guest]]
name = "openamp"
socket = "{dir}/openamp.sock"
[[service]]
type = "echo"
name = "rpmsg-client-sample"
"#;

#[test]
fn hub_echo_serves_an_openamp_style_driver() {
    let hub = TestHub::start("openamp-driver", ECHO);
    let mut g = hub.connect(0);
    g.rpmsg().transport_mut().set_openamp_tx_rule(true);
    let mut inbox = Inbox::default();
    pump(&mut g, &mut inbox, "the echo announcement", |i| {
        i.announced("rpmsg-client-sample").is_some()
    });
    let addr = inbox.announced("rpmsg-client-sample").unwrap();
    let ept = g
        .rpmsg()
        .create_ept(b"rpmsg-client-sample", ADDR_ANY, addr)
        .unwrap();
    // More than the 256 transmit buffers: most sends reuse one the hub returned.
    for i in 0..480u32 {
        let msg: Vec<u8> = (0..(1 + i as usize % 496))
            .map(|k| (k as u32 ^ i.wrapping_mul(13)) as u8)
            .collect();
        g.rpmsg()
            .send(ept, &msg)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        pump(&mut g, &mut inbox, "an echo", |i| !i.messages.is_empty());
        let (to, from, _, data) = inbox.messages.pop_front().unwrap();
        assert_eq!((to, from), (ept, addr));
        assert_eq!(data, msg, "echo {i}");
    }
}
