//! Polling mode (vamp_vmm_backend::vhost_user::poll): a polled guest's messages go both ways
//! with no kick from it; after its quiet period the hub goes back to its kicks, and a kick
//! brings polling back; on split and packed rings, in the `vhost-user-rpmsg` binary
//! (`--poll`) and per guest in a topology (`poll = true`); a polled guest that breaks its ring
//! or floods costs the other polled guests nothing; a polled guest reconnects; the polling
//! binary stops cleanly on SIGTERM; malformed settings are refused.
//!
//! Kicks are counted where the guest makes them (its engine's environment): while the hub
//! polls, the guest's driver sees them suppressed and makes none. The checks wait for
//! conditions (a round trip without a kick, one with), never for a fixed time.

mod common;

use common::{Guest, TempDir, TestHub, WAIT, check_echo, jump_avail, spawn_backend};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use vamp_rpmsg::rpmsg::EptId;
use vamp_rpmsg::virtio::VIRTIO_F_RING_PACKED;
use vamp_rpmsg::wire::ADDR_ANY;
use vamp_test_support::{read_lossy, wait_for_paths};
use vamp_vmm_backend::config::Topology;
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest};

/// Quiet period of the binary tests: short, so that backing off is quick to see.
const QUIET_MS: u64 = 150;
/// Round trips that must all go without a kick once the hub polls.
const POLLED_ROUND_TRIPS: u32 = 200;
/// How long a phase of a test may take on a loaded machine.
const PHASE: Duration = Duration::from_secs(30);

fn kicks(g: &mut NativeGuest) -> u64 {
    g.rpmsg().transport_mut().env_mut().kicks_sent
}

/// A guest bound to the hub's "echo".
struct Pinger {
    guest: Guest,
    ept: EptId,
    echo: u32,
    sent: u32,
}

impl Pinger {
    fn new(mut guest: Guest) -> Pinger {
        let echo = guest
            .inbox
            .announced("echo")
            .expect("served: echo announced");
        let ept = guest.g.rpmsg().create_ept(b"", ADDR_ANY, echo).unwrap();
        Pinger {
            guest,
            ept,
            echo,
            sent: 0,
        }
    }

    /// One echo round trip; returns the kicks the guest made for it.
    fn round_trip(&mut self) -> u64 {
        self.sent += 1;
        let msg = format!("ping {}", self.sent);
        let before = kicks(&mut self.guest.g);
        check_echo(
            &mut self.guest.g,
            &mut self.guest.inbox,
            self.ept,
            self.echo,
            msg.as_bytes(),
        );
        kicks(&mut self.guest.g) - before
    }

    /// Round trips until one needs no kick (the hub polls now), then [`POLLED_ROUND_TRIPS`]
    /// more, which must need none either.
    fn expect_polled(&mut self, log: &dyn Fn() -> String) {
        let deadline = Instant::now() + PHASE;
        while self.round_trip() != 0 {
            assert!(
                Instant::now() < deadline,
                "every round trip kicked: the hub does not poll\n{}",
                log()
            );
        }
        let mut kicked = 0;
        for _ in 0..POLLED_ROUND_TRIPS {
            kicked += self.round_trip();
        }
        assert_eq!(kicked, 0, "kicks while the hub polls\n{}", log());
    }

    /// Waits, longer each time, until a round trip after a quiet spell needs a kick: the hub
    /// backed off to the guest's kicks.
    fn expect_back_off(&mut self, log: &dyn Fn() -> String) {
        let deadline = Instant::now() + PHASE;
        let mut pause = Duration::from_millis(2 * QUIET_MS);
        loop {
            std::thread::sleep(pause);
            if self.round_trip() > 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still polling after quiet spells of up to {pause:?}\n{}",
                log()
            );
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// The binary with `--poll`, one guest and the echo service; the guest's socket and the log.
fn polled_binary(dir: &TempDir, extra: &[&str]) -> (common::Proc, PathBuf, PathBuf) {
    let socket = dir.path().join("g.sock");
    let log = dir.path().join("backend.log");
    let mut args: Vec<String> = vec![
        "--socket-path".into(),
        socket.display().to_string(),
        "--echo".into(),
        "echo".into(),
        "--poll".into(),
        "--poll-quiet-ms".into(),
        QUIET_MS.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let backend = spawn_backend(&args, &log);
    wait_for_paths(std::slice::from_ref(&socket), "the backend's socket", WAIT);
    (backend, socket, log)
}

fn binary_polls_then_backs_off(packed: bool) {
    let dir = TempDir::new(if packed { "poll-packed" } else { "poll-split" });
    let extra: &[&str] = if packed { &[] } else { &["--no-packed"] };
    let (_backend, socket, log) = polled_binary(&dir, extra);
    let log = || read_lossy(&log);
    // The guest takes packed rings where offered: `--no-packed` withholds them.
    let opts = GuestOptions {
        packed: true,
        ..GuestOptions::default()
    };
    let mut guest = Guest {
        g: NativeGuest::connect(&socket, opts).unwrap(),
        inbox: Default::default(),
    };
    guest.pump("the echo service", |i| i.announced("echo").is_some());
    let mut p = Pinger::new(guest);
    assert_eq!(
        p.guest.g.negotiated_features() & VIRTIO_F_RING_PACKED != 0,
        packed,
        "ring format"
    );
    p.expect_polled(&log);
    p.expect_back_off(&log);
    // That kick brought polling back.
    p.expect_polled(&log);
    // And the guest's interrupts followed its own suppression throughout: every echo came
    // back while the guest waited for interrupts between polls.
}

#[test]
fn the_binary_polls_split_rings_without_kicks_and_backs_off_to_kicks() {
    binary_polls_then_backs_off(false);
}

#[test]
fn the_binary_polls_packed_rings_without_kicks_and_backs_off_to_kicks() {
    binary_polls_then_backs_off(true);
}

/// Two guests with the echo; `first` polled with the given quiet period (ms), the second not
/// or polled too.
fn two_guests(first_quiet_ms: u64, second_polled: bool) -> String {
    format!(
        r#"
[[guest]]
name = "first"
socket = "{{dir}}/first.sock"
poll = true
poll_quiet_ms = {first_quiet_ms}
[[guest]]
name = "second"
socket = "{{dir}}/second.sock"
poll = {second_polled}
[[service]]
type = "echo"
name = "echo"
"#
    )
}

#[test]
fn polling_is_per_guest_in_the_topology() {
    // A quiet period far longer than the test: the polled guest never backs off here.
    let hub = TestHub::start("poll-per-guest", &two_guests(60_000, false));
    let none = String::new;
    let mut polled = Pinger::new(Guest::connect_served(&hub, 0));
    let mut kicked = Pinger::new(Guest::connect_served(&hub, 1));
    polled.expect_polled(&none);
    let mut kicks = 0;
    for _ in 0..20 {
        kicks += kicked.round_trip();
    }
    assert!(
        kicks >= 20,
        "the guest without poll = true kicks for every message: {kicks} kicks"
    );
}

#[test]
fn a_polled_guest_that_breaks_its_ring_costs_the_other_polled_guest_nothing() {
    let hub = TestHub::start("poll-break", &two_guests(60_000, true));
    let none = String::new;
    let mut liar = Pinger::new(Guest::connect_served(&hub, 0));
    let mut honest = Pinger::new(Guest::connect_served(&hub, 1));
    liar.expect_polled(&none);
    honest.expect_polled(&none);
    // An available index more than the ring holds, and no kick: only the poll thread sees it.
    let tx = liar.guest.g.layout().tx_ring;
    jump_avail(&liar.guest.g, tx, tx.size + 1);
    assert!(
        liar.guest.g.wait_config_change(WAIT).unwrap(),
        "the poll thread found the break (DEVICE_NEEDS_RESET)"
    );
    assert!(hub.is_broken(0));
    // The poll thread lives on: the other guest's messages still go without kicks.
    let mut kicked = 0;
    for _ in 0..POLLED_ROUND_TRIPS {
        kicked += honest.round_trip();
    }
    assert_eq!(kicked, 0);
    // The liar resets and is polled again.
    liar.guest.g.reset().unwrap();
    drop(liar);
    let mut again = Pinger::new(Guest::connect_served(&hub, 0));
    again.expect_polled(&none);
}

#[test]
fn a_polled_guest_reconnects_and_is_polled_again() {
    let hub = TestHub::start("poll-reconnect", &two_guests(60_000, false));
    let none = String::new;
    for _ in 0..3 {
        let mut p = Pinger::new(Guest::connect_served(&hub, 0));
        p.expect_polled(&none);
        // Gone mid-poll: its job is withdrawn with its connection.
        drop(p);
        common::wait_until("the link down", || !hub.is_up(0));
    }
}

#[test]
fn malformed_poll_settings_are_refused() {
    let guest = |extra: &str| format!("[[guest]]\nname = \"g\"\nsocket = \"/s\"\n{extra}\n");
    for (extra, why) in [
        ("poll = \"yes\"", "invalid type"),
        ("poll = 1", "invalid type"),
        ("poll = true\npoll_quiet_ms = 0", "1 to 60000"),
        ("poll = true\npoll_quiet_ms = 60001", "1 to 60000"),
        ("poll = true\npoll_quiet_ms = -5", "invalid value"),
        ("poll = true\npoll_quiet_ms = \"100\"", "invalid type"),
        ("pol = true", "unknown field"),
    ] {
        let err = Topology::parse(&guest(extra)).expect_err(extra).to_string();
        assert!(err.contains(why), "{extra}: {err}");
    }
    let t = Topology::parse(&guest("poll = true\npoll_quiet_ms = 7")).unwrap();
    assert_eq!(t.guests[0].poll_quiet(), Some(Duration::from_millis(7)));
    let t = Topology::parse(&guest("")).unwrap();
    assert_eq!(t.guests[0].poll_quiet(), None, "not polled unless asked");
    // The binary refuses them before it listens.
    let dir = TempDir::new("poll-args");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, guest("poll = true\npoll_quiet_ms = 0")).unwrap();
    let bin = env!("CARGO_BIN_EXE_vhost-user-rpmsg");
    let socket = dir.path().join("s").display().to_string();
    for args in [
        vec!["--socket-path", &socket, "--poll", "--poll-quiet-ms", "0"],
        vec!["--socket-path", &socket, "--poll-quiet-ms", "soon"],
        vec!["--config", config.to_str().unwrap()],
    ] {
        let out = Command::new(bin).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(
            stderr.contains("quiet") || stderr.contains("invalid digit"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!dir.path().join("s").exists(), "nothing listened");
}

#[test]
fn a_flooding_polled_guest_does_not_stall_another() {
    let hub = TestHub::start("poll-flood", &two_guests(60_000, true));
    let none = String::new;
    let mut flooder = Pinger::new(Guest::connect_served(&hub, 0));
    let mut other = Pinger::new(Guest::connect_served(&hub, 1));
    flooder.expect_polled(&none);
    other.expect_polled(&none);
    // The flooder sends to the echo as fast as its buffers come back, on a thread of its own,
    // until told to stop.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (stopped, counted) = (stop.clone(), sent.clone());
    let flood = std::thread::spawn(move || {
        let p = &mut flooder;
        while !stopped.load(Ordering::Relaxed) {
            if p.guest.g.rpmsg().trysend(p.ept, &[0xf1; 496]).is_ok() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            p.guest.g.poll(&mut p.guest.inbox).unwrap();
            p.guest.inbox.messages.clear();
        }
    });
    common::wait_until("the flood under way", || {
        sent.load(Ordering::Relaxed) >= 1000
    });
    // Meanwhile the other guest's round trips all complete, with no kick, for as long as it
    // takes the flood to send another 1000 messages (at least POLLED_ROUND_TRIPS of them).
    let goal = sent.load(Ordering::Relaxed) + 1000;
    let deadline = Instant::now() + PHASE;
    let (mut kicked, mut round_trips) = (0, 0);
    while round_trips < POLLED_ROUND_TRIPS || sent.load(Ordering::Relaxed) < goal {
        kicked += other.round_trip();
        round_trips += 1;
        assert!(Instant::now() < deadline, "the flood stalled");
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    assert_eq!(kicked, 0, "{round_trips} round trips");
    assert!(hub.stats(0).served >= 2000);
}

#[test]
fn a_polling_hub_stops_cleanly_on_sigterm() {
    let dir = TempDir::new("poll-sigterm");
    let (mut backend, socket, log) = polled_binary(&dir, &[]);
    let log = || read_lossy(&log);
    let mut p = Pinger::new(Guest::served_on(&socket));
    p.expect_polled(&log);
    // SAFETY: kill(2) of the child this test started.
    unsafe { libc::kill(backend.child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = backend.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running\n{}", log());
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}\n{}", log());
    assert!(!socket.exists(), "its socket removed");
}
