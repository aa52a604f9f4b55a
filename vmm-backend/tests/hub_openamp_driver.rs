//! A native guest whose driver picks transmit buffers as OpenAMP's does (recycled from the
//! used ring first, sized by the used length), talking to the hub's echo service: the hub's
//! device role must return consumed buffers with their full length.

mod common;

use common::{ECHO_SOLO, Inbox, TestHub, bind_announced, check_echo, sized_payload};

#[test]
fn hub_echo_serves_an_openamp_style_driver() {
    let hub = TestHub::start("openamp-driver", ECHO_SOLO);
    let mut g = hub.connect(0);
    g.rpmsg().transport_mut().set_openamp_tx_rule(true);
    let mut inbox = Inbox::default();
    let (ept, addr) = bind_announced(&mut g, &mut inbox, "rpmsg-client-sample");
    // More than the 256 transmit buffers: most sends reuse one the hub returned.
    for i in 0..480u32 {
        check_echo(&mut g, &mut inbox, ept, addr, &sized_payload(i));
    }
}
