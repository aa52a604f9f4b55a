//! Remotes (KVM micro-VMs running vamp's firmware) in the hub: a native guest reaches a
//! remote's channel by name, and a crashed remote comes back with its channel.

mod common;

use common::{ALICE_AND_R5, TestHub};
use std::time::{Duration, Instant};
use vamp_rpmsg::apps::EnvWaiter;
use vamp_rpmsg::apps::ping;
use vamp_rpmsg::rpmsg::{Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::Transport;
use vamp_rpmsg::wire::ADDR_ANY;
use vamp_vmm_backend::frontend::NativeGuest;
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

/// Starts a hub for `toml` (see [`TestHub::start`]) with a `serve_remote` thread per remote.
fn start(toml: &str) -> TestHub {
    let hub = TestHub::start("hub-remote", toml);
    let remotes = hub.hub.topology().remotes.clone();
    for (i, spec) in remotes.into_iter().enumerate() {
        let shared = hub.hub.clone();
        let id = hub.sockets.len() + i;
        std::thread::spawn(move || serve_remote(shared, id, spec));
    }
    hub
}

#[test]
fn a_guest_pings_a_kvm_remote_through_the_hub() {
    if !kvm_or_skip("a_guest_pings_a_kvm_remote_through_the_hub") {
        return;
    }
    // The remote on split rings (the default), then on packed rings asked of its firmware
    // through the platform entry (`ring = "packed"`): the hub's driver follows.
    let packed = ALICE_AND_R5.replace("image = \"echo\"", "image = \"echo\"\nring = \"packed\"");
    for (topology, rings) in [(ALICE_AND_R5, "split"), (packed.as_str(), "packed")] {
        let hub = start(topology);
        let mut alice = hub.connect(0);
        let summary = ping(
            alice.rpmsg(),
            &mut EnvWaiter,
            "rpmsg-openamp-demo-channel",
            1000,
            Duration::from_secs(20),
            "alice",
        )
        .unwrap();
        assert!(summary.all_matched(), "{summary}");
        let remote = hub.hub.topology().link_index("r5").unwrap();
        assert!(hub.hub.link(remote).stats(remote).forwarded >= 1000);
        let status = hub.hub.status();
        assert_eq!(status.links[remote].rings, Some(rings), "{status:?}");
        assert_eq!(status.links[0].rings, Some("split"), "alice: {status:?}");
    }
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
    let hub = start(
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
    let mut alice = hub.connect(0);
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
    let remote = hub.hub.topology().link_index("flaky").unwrap();
    assert!(hub.hub.link(remote).stats(remote).ups >= 4);
}

#[test]
fn a_remote_with_a_bad_resource_table_is_refused_and_the_guests_are_served() {
    if !kvm_or_skip("a_remote_with_a_bad_resource_table_is_refused_and_the_guests_are_served") {
        return;
    }
    // The echo firmware with its resource table claiming far more entries than it holds.
    let mut image = vamp_remoteproc::images::builtin("echo").unwrap().to_vec();
    let info = vamp_remoteproc::elf::inspect(&mut vamp_remoteproc::image::MemoryImage::new(
        image.as_slice(),
    ))
    .unwrap();
    let table = info.resource_table.expect("echo has a resource table");
    let num = table.file_offset as usize + 4;
    image[num..num + 4].copy_from_slice(&1000u32.to_le_bytes());
    let bad = std::env::temp_dir().join(format!("vamp-bad-table-{}.elf", std::process::id()));
    std::fs::write(&bad, &image).unwrap();
    let hub = TestHub::start(
        "hub-bad-remote",
        &format!(
            r#"
[[guest]]
name = "alice"
socket = "{{dir}}/alice.sock"
[[remote]]
name = "broken"
image = "{}"
recovery = "restart"
[[service]]
type = "echo"
name = "rpmsg-client-sample"
[[channel]]
from = "broken"
to = ["alice"]
"#,
            bad.display()
        ),
    );
    let spec = hub.hub.topology().remotes[0].clone();
    let id = hub.hub.topology().link_index("broken").unwrap();
    // Loading fails with an error that says what is wrong; no restart can help a bad image.
    let err = serve_remote(hub.hub.clone(), id, spec)
        .unwrap_err()
        .to_string();
    std::fs::remove_file(&bad).unwrap();
    eprintln!("refused as expected: {err}");
    assert!(
        err.contains("broken") && err.to_lowercase().contains("resource table"),
        "{err}"
    );
    assert!(!hub.hub.link(id).is_up(id));
    // The guest is served as before.
    let mut alice = hub.connect(0);
    let summary = ping(
        alice.rpmsg(),
        &mut EnvWaiter,
        "rpmsg-client-sample",
        100,
        Duration::from_secs(20),
        "alice",
    )
    .unwrap();
    assert!(summary.all_matched(), "{summary}");
}
