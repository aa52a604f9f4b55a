//! Remotes (KVM micro-VMs running vamp's firmware) in the hub: a native guest reaches a
//! remote's channel by name, and a crashed remote comes back with its channel.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vamp_rpmsg::apps::{Waiter, ping};
use vamp_rpmsg::rpmsg::{Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::Transport;
use vamp_rpmsg::wire::ADDR_ANY;
use vamp_vmm_backend::backend::{lock_hub, serve_guest};
use vamp_vmm_backend::config::Topology;
use vamp_vmm_backend::frontend::{GuestOptions, GuestTransport, NativeGuest};
use vamp_vmm_backend::hub::Hub;
use vamp_vmm_backend::remote::serve_remote;

fn kvm_or_skip(test: &str) -> bool {
    match vamp_remoteproc::kvm::kvm_available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("skipped: {test}: {why}");
            false
        }
    }
}

fn start(toml: &str) -> (Arc<Mutex<Hub>>, PathBuf) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vamp-hub-remote-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topology = Topology::parse(&toml.replace("{dir}", dir.to_str().unwrap())).unwrap();
    let guests = topology.guests.clone();
    let remotes = topology.remotes.clone();
    let hub = Arc::new(Mutex::new(Hub::new(topology)));
    for (id, g) in guests.iter().enumerate() {
        let (hub, socket) = (hub.clone(), g.socket.clone());
        std::thread::spawn(move || serve_guest(hub, id, &socket));
    }
    for (i, spec) in remotes.into_iter().enumerate() {
        let hub = hub.clone();
        let id = guests.len() + i;
        std::thread::spawn(move || serve_remote(hub, id, spec));
    }
    (hub, dir.join("alice.sock"))
}

struct CallWaiter;
impl Waiter<GuestTransport> for CallWaiter {
    fn wait(
        &mut self,
        rpmsg: &mut Rpmsg<GuestTransport>,
        timeout: Duration,
    ) -> Result<(), vamp_rpmsg::apps::AppError> {
        rpmsg.transport_mut().env_mut().wait_for_call(timeout);
        Ok(())
    }
}

#[test]
fn a_guest_pings_a_kvm_remote_through_the_hub() {
    if !kvm_or_skip("a_guest_pings_a_kvm_remote_through_the_hub") {
        return;
    }
    let (hub, socket) = start(
        r#"
[[guest]]
name = "alice"
socket = "{dir}/alice.sock"
[[remote]]
name = "r5"
image = "echo"
[[channel]]
from = "r5"
to = ["alice"]
"#,
    );
    let mut alice = NativeGuest::connect(&socket, GuestOptions::default()).unwrap();
    let summary = ping(
        alice.rpmsg(),
        &mut CallWaiter,
        "rpmsg-openamp-demo-channel",
        1000,
        Duration::from_secs(20),
        "alice",
    )
    .unwrap();
    assert!(summary.all_matched(), "{summary}");
    let remote = lock_hub(&hub).topology().link_index("r5").unwrap();
    assert!(lock_hub(&hub).stats(remote).forwarded >= 1000);
}

#[derive(Default)]
struct Watch {
    created: Vec<u32>,
    destroyed: Vec<u32>,
    replies: Vec<Vec<u8>>,
}

impl<T: Transport> Handler<T> for Watch {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        self.replies.push(rpmsg.payload(msg).unwrap());
    }
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, e: NsEvent<'_>) {
        match e {
            NsEvent::Created { name, addr, .. } if name == b"vamp-fault" => self.created.push(addr),
            NsEvent::Destroyed { name, addr, .. } if name == b"vamp-fault" => {
                self.destroyed.push(addr)
            }
            _ => {}
        }
    }
}

fn pump(g: &mut NativeGuest, w: &mut Watch, what: &str, done: impl Fn(&Watch) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(w) {
        g.poll(w).unwrap();
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        g.wait(Duration::from_millis(20));
    }
}

#[test]
fn a_crashed_remote_is_restarted_and_its_channel_comes_back() {
    if !kvm_or_skip("a_crashed_remote_is_restarted_and_its_channel_comes_back") {
        return;
    }
    let (hub, socket) = start(
        r#"
[[guest]]
name = "alice"
socket = "{dir}/alice.sock"
[[remote]]
name = "flaky"
image = "fault"
recovery = "restart"
[[channel]]
from = "flaky"
to = ["alice"]
"#,
    );
    let mut alice = NativeGuest::connect(&socket, GuestOptions::default()).unwrap();
    let mut w = Watch::default();
    for round in 0..3 {
        pump(&mut alice, &mut w, "vamp-fault announced", |w| {
            w.created.len() > round
        });
        let addr = *w.created.last().unwrap();
        let ept = alice.rpmsg().create_ept(b"", ADDR_ANY, addr).unwrap();
        for i in 0..20u32 {
            alice.rpmsg().send(ept, &i.to_le_bytes()).unwrap();
            pump(&mut alice, &mut w, "an echo", |w| !w.replies.is_empty());
            assert_eq!(w.replies.remove(0), i.to_le_bytes(), "round {round}");
        }
        // Crash it: the hub withdraws its channel, then the restart brings it back.
        alice.rpmsg().send(ept, b"crash").unwrap();
        pump(&mut alice, &mut w, "the channel withdrawn", |w| {
            w.destroyed.len() > round
        });
        alice.rpmsg().destroy_ept(ept).unwrap();
    }
    pump(
        &mut alice,
        &mut w,
        "the channel back after the third crash",
        |w| w.created.len() > 3,
    );
    let remote = lock_hub(&hub).topology().link_index("flaky").unwrap();
    assert!(lock_hub(&hub).stats(remote).ups >= 4);
}
