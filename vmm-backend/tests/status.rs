//! The status socket of a running `vhost-user-rpmsg`: known traffic from native guests
//! (messages forwarded between two guests, served by the echo service, and dropped for
//! leading nowhere) shows exactly in `vhost-user-rpmsg status` as a table, as JSON and as
//! Prometheus metrics; a KVM remote that crashed shows its restart; the socket's thread is
//! confined; a client that never sends its request holds up neither the hub nor, beyond its
//! bound, the next client.

mod common;

use common::{Inbox, TempDir, WAIT, await_echo, pump, read_lossy, sized_payload, spawn_backend};
use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vamp_rpmsg::wire::ADDR_ANY;
use vamp_test_support::{Proc, wait_for_paths};
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-rpmsg");

/// alice's names are offered to bob; both see the hub's "echo".
fn topology(dir: &TempDir) -> String {
    format!(
        r#"control_socket = "{dir}/hub.ctl"
[[guest]]
name = "alice"
socket = "{dir}/alice.sock"
[[guest]]
name = "bob"
socket = "{dir}/bob.sock"
[[service]]
type = "echo"
name = "echo"
[[channel]]
from = "alice"
to = ["bob"]
"#,
        dir = dir.path().display()
    )
}

fn start_hub(dir: &TempDir) -> (Proc, PathBuf) {
    let cfg = dir.join("hub.toml");
    std::fs::write(&cfg, topology(dir)).unwrap();
    let log = dir.join("hub.log");
    let hub = spawn_backend(&["--config".into(), cfg.display().to_string()], &log);
    wait_for_paths(
        &[
            dir.join("alice.sock"),
            dir.join("bob.sock"),
            dir.join("hub.ctl"),
        ],
        "the hub's sockets",
        WAIT,
    );
    (hub, log)
}

/// `vhost-user-rpmsg status --control-socket CTL ARGS`'s standard output.
fn status(ctl: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("status")
        .arg("--control-socket")
        .arg(ctl)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status_json(ctl: &Path) -> Value {
    serde_json::from_str(&status(ctl, &["--json"])).unwrap()
}

/// The link named `name` in a JSON status.
fn link<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no link {name} in {status}"))
}

/// Counters as the JSON shows them: forwarded, served, bytes, and drops by reason.
fn stats(forwarded: u64, served: u64, bytes: u64, no_route: u64) -> Value {
    json!({
        "forwarded": forwarded,
        "served": served,
        "bytes": bytes,
        "dropped": no_route,
        "dropped_by": {
            "malformed": 0, "no_route": no_route, "limit": 0, "receiver_gone": 0,
            "receiver_stalled": 0, "queue_full": 0, "delivery_failed": 0
        },
        "queued": 0,
        "ups": 1,
        "protocol_errors": 0,
        "bad_chains": 0,
        "budget_spent": 0
    })
}

#[test]
fn status_json_table_and_metrics_show_exactly_the_traffic_sent() {
    let dir = TempDir::new("vamp-status");
    let (mut hub, log) = start_hub(&dir);
    let ctl = dir.join("hub.ctl");

    let connect = |name: &str| {
        NativeGuest::connect(&dir.join(format!("{name}.sock")), GuestOptions::default()).unwrap()
    };
    let (mut alice, mut bob) = (connect("alice"), connect("bob"));
    let (mut ai, mut bi) = (Inbox::echoing(), Inbox::default());
    alice
        .rpmsg()
        .create_ept(b"a-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    pump(&mut alice, &mut ai, "echo offered to alice", |i| {
        i.announced("echo").is_some()
    });
    pump(&mut bob, &mut bi, "a-svc and echo offered to bob", |i| {
        i.announced("a-svc").is_some() && i.announced("echo").is_some()
    });

    // bob -> alice's a-svc, 5 messages of 1..=5 bytes, each echoed back by alice: 15 bytes
    // forwarded each way.
    let to_alice = bob
        .rpmsg()
        .create_ept(b"", ADDR_ANY, bi.announced("a-svc").unwrap())
        .unwrap();
    let mut forwarded_bytes = 0;
    for i in 0..5 {
        let msg = sized_payload(i);
        forwarded_bytes += msg.len() as u64;
        bob.rpmsg().send(to_alice, &msg).unwrap();
        await_echo(&mut bob, &mut bi, &mut alice, &mut ai, "alice's echo lost");
        assert_eq!(bi.messages.pop_front().unwrap().3, msg);
    }
    // bob -> the hub's echo: 3 messages of 10 bytes, served.
    let to_echo = bob
        .rpmsg()
        .create_ept(b"", ADDR_ANY, bi.announced("echo").unwrap())
        .unwrap();
    for _ in 0..3 {
        bob.rpmsg().send(to_echo, &[7u8; 10]).unwrap();
        pump(&mut bob, &mut bi, "an echo", |i| !i.messages.is_empty());
        bi.messages.pop_front();
    }
    // bob -> an address the hub never gave him: 2 messages dropped, no route.
    let lost = bob.rpmsg().create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    for _ in 0..2 {
        bob.rpmsg().sendto(lost, 0x7777, b"nowhere").unwrap();
    }
    let deadline = Instant::now() + WAIT;
    let json = loop {
        bob.poll(&mut bi).unwrap();
        let json = status_json(&ctl);
        if link(&json, "bob")["stats"]["dropped"] == 2 {
            break json;
        }
        assert!(Instant::now() < deadline, "drops never counted: {json}");
        std::thread::sleep(Duration::from_millis(20));
    };

    let alice_json = link(&json, "alice");
    let bob_json = link(&json, "bob");
    assert_eq!(alice_json["stats"], stats(5, 0, forwarded_bytes, 0));
    assert_eq!(bob_json["stats"], stats(5, 3, forwarded_bytes + 30, 2));
    assert_eq!(alice_json["state"], "up");
    assert_eq!(alice_json["kind"], "guest");
    assert_eq!(alice_json["announced"], json!(["a-svc"]));
    assert_eq!(alice_json["offered"], json!(["echo"]));
    assert_eq!(bob_json["announced"], json!([]));
    assert_eq!(bob_json["offered"], json!(["a-svc", "echo"]));
    assert_eq!(bob_json["reconnects"], 0);
    assert_eq!(bob_json["queued_now"], 0);
    assert_eq!(bob_json["broken_why"], Value::Null);
    assert_eq!(bob_json["remote"], Value::Null);

    let metrics = status(&ctl, &["--metrics"]);
    for (line, value) in [
        (
            r#"vamp_hub_messages_forwarded_total{link="alice",kind="guest"}"#,
            5,
        ),
        (
            r#"vamp_hub_messages_forwarded_total{link="bob",kind="guest"}"#,
            5,
        ),
        (
            r#"vamp_hub_messages_served_total{link="alice",kind="guest"}"#,
            0,
        ),
        (
            r#"vamp_hub_messages_served_total{link="bob",kind="guest"}"#,
            3,
        ),
        (
            r#"vamp_hub_payload_bytes_total{link="alice",kind="guest"}"#,
            forwarded_bytes,
        ),
        (
            r#"vamp_hub_payload_bytes_total{link="bob",kind="guest"}"#,
            forwarded_bytes + 30,
        ),
        (
            r#"vamp_hub_messages_dropped_total{link="bob",kind="guest",reason="no_route"}"#,
            2,
        ),
        (
            r#"vamp_hub_messages_dropped_total{link="bob",kind="guest",reason="queue_full"}"#,
            0,
        ),
        (
            r#"vamp_hub_messages_dropped_total{link="alice",kind="guest",reason="no_route"}"#,
            0,
        ),
        (r#"vamp_hub_link_up{link="bob",kind="guest"}"#, 1),
        (r#"vamp_hub_link_ups_total{link="bob",kind="guest"}"#, 1),
        (r#"vamp_hub_names_offered{link="bob",kind="guest"}"#, 2),
        (r#"vamp_hub_names_announced{link="alice",kind="guest"}"#, 1),
    ] {
        let want = format!("{line} {value}");
        assert!(
            metrics.lines().any(|l| l == want),
            "no line {want:?} in:\n{metrics}"
        );
    }
    // Every sample line is `name{labels} value`, every family has HELP and TYPE.
    for l in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = l.rsplit_once(' ').unwrap();
        value
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("{l:?}: {e}"));
        let family = l.split(['{', ' ']).next().unwrap();
        assert!(metrics.contains(&format!("# TYPE {family} ")), "{family}");
    }

    let table = status(&ctl, &[]);
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("bob "))
        .unwrap_or_else(|| panic!("no row for bob:\n{table}"))
        .split_whitespace()
        .collect();
    let bytes = (forwarded_bytes + 30).to_string();
    assert_eq!(
        row,
        [
            "bob", "guest", "up", "5", "3", &bytes, "2", "0", "0", "0", "0"
        ],
        "{table}"
    );
    assert!(table.contains("dropped:   no_route 2"), "{table}");
    assert!(table.contains("offered:   \"a-svc\", \"echo\""), "{table}");

    let text = read_lossy(&log);
    assert!(!text.contains("refused system call"), "{text}");
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(WAIT).is_some_and(|s| s.success()));
    assert!(!ctl.exists(), "the status socket left behind");
}

/// The thread named `name` of process `pid` runs under a seccomp filter.
fn confined(pid: u32, name: &str) -> Option<bool> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let task = task.ok()?.path();
        let comm = std::fs::read_to_string(task.join("comm")).ok()?;
        if comm.trim_end() == name {
            let status = std::fs::read_to_string(task.join("status")).ok()?;
            return Some(status.lines().any(|l| l == "Seccomp:\t2"));
        }
    }
    None
}

#[test]
fn a_silent_or_flooding_client_holds_up_neither_the_hub_nor_other_clients_and_the_thread_is_confined()
 {
    let dir = TempDir::new("vamp-status-slow");
    let (mut hub, log) = start_hub(&dir);
    let ctl = dir.join("hub.ctl");
    assert_eq!(confined(hub.pid(), "vamp-status"), Some(true));

    // A client that connects and says nothing, and one that floods.
    let _silent = UnixStream::connect(&ctl).unwrap();
    let mut flood = UnixStream::connect(&ctl).unwrap();
    let _ = flood.write_all(&[b'x'; 4096]);
    // The guests are served meanwhile.
    let mut alice = NativeGuest::connect(&dir.join("alice.sock"), GuestOptions::default()).unwrap();
    let mut ai = Inbox::default();
    pump(&mut alice, &mut ai, "echo offered to alice", |i| {
        i.announced("echo").is_some()
    });
    let ept = alice
        .rpmsg()
        .create_ept(b"", ADDR_ANY, ai.announced("echo").unwrap())
        .unwrap();
    alice.rpmsg().send(ept, b"still served").unwrap();
    pump(&mut alice, &mut ai, "an echo", |i| !i.messages.is_empty());
    // And the next client gets its answer once the others' bounds ran out.
    let json = status_json(&ctl);
    assert_eq!(link(&json, "alice")["stats"]["served"], 1);

    // A request the hub does not know is answered with an error, and the command fails.
    let out = Command::new(BIN)
        .args(["status", "--control-socket"])
        .arg(dir.join("nothing-here.ctl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing-here.ctl"));
    let mut odd = UnixStream::connect(&ctl).unwrap();
    odd.write_all(b"shutdown\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut odd, &mut answer).unwrap();
    assert!(answer.starts_with("error: unknown request"), "{answer}");

    let text = read_lossy(&log);
    assert!(!text.contains("refused system call"), "{text}");
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(WAIT).is_some_and(|s| s.success()));
}

#[test]
fn a_remote_shows_its_state_restarts_and_reconnects() {
    if let Err(why) = vamp_remoteproc::kvm::kvm_available() {
        eprintln!("skipped: no KVM: {why}");
        return;
    }
    let dir = TempDir::new("vamp-status-remote");
    let cfg = dir.join("hub.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"control_socket = "{d}/hub.ctl"
[[guest]]
name = "alice"
socket = "{d}/alice.sock"
[[remote]]
name = "flaky"
image = "fault"
recovery = "restart"
[[channel]]
from = "flaky"
to = ["alice"]
"#,
            d = dir.path().display()
        ),
    )
    .unwrap();
    let log = dir.join("hub.log");
    let mut hub = spawn_backend(&["--config".into(), cfg.display().to_string()], &log);
    let ctl = dir.join("hub.ctl");
    wait_for_paths(&[dir.join("alice.sock"), ctl.clone()], "the sockets", WAIT);

    let mut alice = NativeGuest::connect(&dir.join("alice.sock"), GuestOptions::default()).unwrap();
    let mut ai = Inbox::default();
    pump(&mut alice, &mut ai, "vamp-fault offered", |i| {
        i.announced("vamp-fault").is_some()
    });
    let ept = alice
        .rpmsg()
        .create_ept(b"", ADDR_ANY, ai.announced("vamp-fault").unwrap())
        .unwrap();
    alice.rpmsg().send(ept, b"crash").unwrap();
    pump(
        &mut alice,
        &mut ai,
        "vamp-fault withdrawn and offered again",
        |i| {
            !i.destroyed.is_empty()
                && i.created.iter().filter(|(n, _)| n == b"vamp-fault").count() > 1
        },
    );
    let deadline = Instant::now() + WAIT * 2;
    let json = loop {
        let json = status_json(&ctl);
        if link(&json, "flaky")["remote"]["restarts"] == 1 {
            break json;
        }
        assert!(
            Instant::now() < deadline,
            "no restart shown: {json}\n{}",
            read_lossy(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let flaky = link(&json, "flaky");
    assert_eq!(flaky["kind"], "remote");
    assert_eq!(flaky["remote"], json!({"state": "running", "restarts": 1}));
    assert_eq!(flaky["state"], "up");
    assert_eq!(flaky["reconnects"], 1);
    assert_eq!(flaky["announced"], json!(["vamp-fault"]));
    assert_eq!(link(&json, "alice")["offered"], json!(["vamp-fault"]));
    let metrics = status(&ctl, &["--metrics"]);
    for want in [
        r#"vamp_hub_remote_restarts_total{link="flaky",kind="remote"} 1"#,
        r#"vamp_hub_remote_running{link="flaky",kind="remote"} 1"#,
        r#"vamp_hub_link_ups_total{link="flaky",kind="remote"} 2"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == want),
            "no {want:?} in:\n{metrics}"
        );
    }
    assert!(!metrics.contains(r#"vamp_hub_remote_running{link="alice""#));
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(WAIT).is_some_and(|s| s.success()));
}
