//! End-to-end tests of `vhost-user-rpmsg` with unmodified upstream Linux guests: QEMU 11's
//! generic vhost-user device (`vhost-user-test-device-pci`, virtio ID 7) in front of the
//! backend, a guest kernel with the upstream virtio_rpmsg_bus / rpmsg_char / rpmsg_ctrl
//! drivers, and `vamp-guest-agent` (tests/guest-agent) driving `/dev/rpmsg_ctrlN` and
//! `/dev/rpmsgN` inside the guest.
//!
//! Each test makes a private temp dir (sockets, topology, initramfs, logs), starts the backend
//! (log: `backend.log`, `RUST_LOG=info`), builds an initramfs per guest with a generated `/init`
//! plus the agent, boots the guest(s) through `tests/provision/qemu` and waits for the marker
//! lines `/init` prints on the serial console (`console-<guest>.log`). On failure the
//! assertion message carries the tail of every guest console and of the backend log, and the
//! temp dir is kept.
//!
//! # Running them by hand
//!
//! As root (provisioning uses debootstrap and chroot; the QEMU wrapper uses `unshare` and
//! `chroot`), from the repository root:
//!
//! ```sh
//! tests/provision/all.sh          # QEMU 11 root, guest kernel, busybox, guest agent (cached)
//! VAMP_QEMU_TESTS=1 cargo test --release -p vamp-vmm-backend --test qemu_guests -- --nocapture
//! ```
//!
//! Without `VAMP_QEMU_TESTS=1` every test prints `skipped: ...` and passes (`tests/run`
//! provisions and sets it). With it, a missing kernel, agent or QEMU is a failure.
//! `VAMP_CACHE` (default `/var/cache/vamp`) says where provisioning put things;
//! `VAMP_QEMU_KEEP=1` keeps the temp dirs of passing tests too. The tests run one at a time
//! (a static mutex): the machine has 2 cores and TCG guests are CPU-bound.

mod common;

use common::{
    Env, Proc, TempDir, backend_log_problem, console_lines, count_lines, kernel_trouble, log_tail,
    qemu_tests_enabled, read_lossy, rest_of_line, spawn_backend, test_dir,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Serializes the QEMU tests of this binary.
static QEMU_LOCK: Mutex<()> = Mutex::new(());

/// Generous bounds: a TCG guest boots to /init in 1-2 s, a whole run takes a few seconds.
const BOOT_AND_SETUP: Duration = Duration::from_secs(40);
const STEP: Duration = Duration::from_secs(40);
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// The gate of every test: None (after saying why) when QEMU tests are not enabled here.
fn setup(test: &str) -> Option<(MutexGuard<'static, ()>, Env)> {
    if !qemu_tests_enabled(test) {
        return None;
    }
    // A failed test poisons the lock; the next one still runs.
    let guard = QEMU_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    Some((guard, Env::find()))
}

/// One QEMU guest; `label` names its console log and its markers.
#[derive(Debug)]
struct Guest {
    label: String,
    marker: String,
    console: PathBuf,
    qemu: Proc,
}

/// A test run: its dir, the backend and the guests (also the ones already killed, for logs).
/// Fields drop in order: guests first, then the backend, then the dir.
#[derive(Debug)]
struct Harness {
    test: &'static str,
    short: &'static str,
    env: Env,
    guests: Vec<Guest>,
    backend: Option<Proc>,
    dir: TempDir,
    t0: Instant,
    /// Guests get packed virtqueues: the device's `packed=on`.
    packed: bool,
}

impl Harness {
    fn new(test: &'static str, short: &'static str, env: Env) -> Harness {
        Harness {
            test,
            short,
            env,
            guests: Vec::new(),
            backend: None,
            dir: test_dir(&format!("qemu-{test}")),
            t0: Instant::now(),
            packed: false,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn backend_log(&self) -> String {
        read_lossy(&self.path("backend.log"))
    }

    fn note(&self, what: &str) {
        eprintln!(
            "{}: {what} (t={:.1}s)",
            self.test,
            self.t0.elapsed().as_secs_f64()
        );
    }

    /// Fails the test with `msg`, every guest's console tail and the backend log tail.
    fn fail(&self, msg: &str) -> ! {
        let mut report = format!("{}: {msg}\n", self.test);
        for g in &self.guests {
            let what = format!("console of guest {}", g.label);
            report.push_str(&log_tail(&what, &g.console, 50));
        }
        report.push_str(&log_tail("backend log", &self.path("backend.log"), 40));
        panic!("{report}");
    }

    /// Starts the backend with `args` (stdout and stderr to backend.log) and waits until it
    /// listens on every socket.
    fn start_backend(&mut self, args: &[String], sockets: &[PathBuf]) {
        self.backend = Some(spawn_backend(args, &self.path("backend.log")));
        let deadline = Instant::now() + SOCKET_WAIT;
        while !sockets.iter().all(|s| s.exists()) {
            if let Some(status) = self.backend.as_mut().and_then(Proc::exited) {
                self.fail(&format!("the backend exited ({status}) before listening"));
            }
            if Instant::now() > deadline {
                self.fail("the backend did not create its sockets within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.note(&format!("backend listening: {}", args.join(" ")));
    }

    /// Asserts the backend still runs.
    fn assert_backend_alive(&mut self) {
        if let Some(status) = self.backend.as_mut().and_then(Proc::exited) {
            self.fail(&format!("the backend died ({status})"));
        }
    }

    fn marker(&self, label: &str) -> String {
        format!("VAMP-QT/{}/{label}", self.short)
    }

    /// Builds one initramfs per guest (label, /init body), all at once: `/init` is
    /// `init_script(marker, body)`, plus the agent.
    fn prepare_guests(&mut self, guests: &[(&str, &str)]) {
        let builds: Vec<(String, Child)> = guests
            .iter()
            .map(|(label, body)| {
                let init = self.path(&format!("init-{label}.sh"));
                fs::write(&init, init_script(&self.marker(label), body)).expect("write init");
                let initrd = self.path(&format!("initrd-{label}.gz"));
                let child = self
                    .env
                    .initramfs_command(&initrd, &init)
                    .spawn()
                    .unwrap_or_else(|e| panic!("run {}: {e}", self.env.initramfs_sh.display()));
                (label.to_string(), child)
            })
            .collect();
        let mut failures = Vec::new();
        for (label, child) in builds {
            let out = child.wait_with_output().expect("wait for initramfs.sh");
            if !out.status.success() {
                failures.push(format!(
                    "initramfs.sh for {label} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        if !failures.is_empty() {
            self.fail(&failures.join("\n"));
        }
        self.note(&format!("{} initramfs built", guests.len()));
    }

    /// Boots guest `label` (prepared with `prepare_guests`) on `socket`. Returns its index.
    fn start_guest(&mut self, label: &str, socket: &Path) -> usize {
        let marker = self.marker(label);
        let initrd = self.path(&format!("initrd-{label}.gz"));
        assert!(initrd.exists(), "guest {label} was not prepared");
        let console = self.path(&format!("console-{label}.log"));
        let child = self
            .env
            .qemu_command(
                qemu_args(&self.env.kernel, &initrd, socket, self.packed),
                &console,
            )
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.env.qemu.display()));
        self.guests.push(Guest {
            label: label.to_string(),
            marker,
            console,
            qemu: Proc { child },
        });
        self.note(&format!("guest {label} started on {}", socket.display()));
        self.guests.len() - 1
    }

    /// Waits until guest `g` prints `"<marker> <what>"`; returns the rest of that line.
    /// Fails early when the guest reports FAIL or QEMU exits.
    fn wait_for(&mut self, g: usize, what: &str, timeout: Duration) -> String {
        let needle = format!("{} {what}", self.guests[g].marker);
        let fail_needle = format!("{} FAIL", self.guests[g].marker);
        let deadline = Instant::now() + timeout;
        loop {
            let text = console_lines(&self.guests[g].console);
            if let Some(rest) = rest_of_line(&text, &needle) {
                return rest;
            }
            let label = self.guests[g].label.clone();
            if let Some(line) = text.lines().find(|l| l.contains(&fail_needle)) {
                // Let /init print what it sees (agent list, dmesg) and power off first.
                let until = Instant::now() + Duration::from_secs(3);
                while self.guests[g].qemu.exited().is_none() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                self.fail(&format!(
                    "guest {label} failed while we waited for {what:?}: {}",
                    line.trim_end_matches('\r')
                ));
            }
            if let Some(status) = self.guests[g].qemu.exited() {
                self.fail(&format!(
                    "QEMU of guest {label} exited ({status}) before printing {what:?}"
                ));
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "guest {label} did not print {what:?} within {} s",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `"<marker> RESULT <label>: "` and checks the agent's line contains `want`.
    fn result(&mut self, g: usize, label: &str, want: &str, timeout: Duration) -> String {
        let line = self.wait_for(g, &format!("RESULT {label}:"), timeout);
        if !line.contains(want) {
            let guest = self.guests[g].label.clone();
            self.fail(&format!(
                "guest {guest}: {label} printed {line:?}, expected it to contain {want:?}"
            ));
        }
        self.note(&format!("{}: {label}: {line}", self.guests[g].label));
        line
    }

    /// Waits until QEMU of guest `g` exits by itself (`reboot -f` with `-no-reboot`).
    fn wait_exit(&mut self, g: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.guests[g].qemu.exited() {
                if !status.success() {
                    let label = self.guests[g].label.clone();
                    self.fail(&format!("QEMU of guest {label} exited with {status}"));
                }
                return;
            }
            if Instant::now() > deadline {
                let label = self.guests[g].label.clone();
                self.fail(&format!("guest {label} did not power off after PASS"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the backend log has at least `n` lines containing `needle`.
    fn wait_backend_log(&mut self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while count_lines(&self.backend_log(), needle) < n {
            self.assert_backend_alive();
            if Instant::now() > deadline {
                self.fail(&format!(
                    "the backend log does not show {needle:?} {n} time(s) within {} s",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// No kernel BUG, WARNING or panic on any guest console.
    fn assert_guest_kernels_clean(&self) {
        for g in &self.guests {
            if let Some(bad) = kernel_trouble(&g.console) {
                self.fail(&format!(
                    "guest {}: the kernel logged {bad:?} (see its console)",
                    g.label
                ));
            }
        }
    }

    /// No ERROR line and no dropped message in the backend log.
    fn assert_backend_log_clean(&self) {
        let log = self.backend_log();
        if let Some(line) = backend_log_problem(&log) {
            self.fail(&format!("the backend log reports a problem: {line}"));
        }
    }
}

/// QEMU's arguments for one guest: the device line of tests/provision/README.md; with
/// `packed`, the device's virtio property `packed=on` (QEMU 11's generic vhost-user device
/// takes it, default off), so the guest is offered VIRTIO_F_RING_PACKED.
fn qemu_args(kernel: &Path, initrd: &Path, socket: &Path, packed: bool) -> Vec<String> {
    let mut device =
        "vhost-user-test-device-pci,chardev=c0,virtio-id=7,num_vqs=2,vq_size=256".to_string();
    if packed {
        device.push_str(",packed=on");
    }
    let devices = vec![
        "-chardev".to_string(),
        format!("socket,id=c0,path={}", socket.display()),
        "-device".to_string(),
        device,
    ];
    common::qemu_args(kernel, initrd, devices)
}

/// A guest's /init: mounts, helpers, then `body`. Every line it prints for the test starts
/// with `marker`: `BOOTED`, `RESULT <label>: <agent's result line>`, `PASS`, `FAIL: <why>`.
fn init_script(marker: &str, body: &str) -> String {
    format!(
        r#"#!/bin/sh
# /init of a vamp QEMU test guest, generated by vmm-backend/tests/qemu_guests.rs.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
A=/bin/vamp-guest-agent
M="{marker}"
# fail WHY: report, show what the guest sees, power off.
fail() {{
    echo "$M FAIL: $*"
    $A list
    dmesg | grep -i rpmsg | tail -n 20
    reboot -f
    while :; do sleep 1; done
}}
# run LABEL CMD...: run an agent command, print its result line, fail if it failed.
run() {{
    label=$1
    shift
    out=$("$@")
    rc=$?
    echo "$M RESULT $label: $out"
    [ $rc -eq 0 ] || fail "$label: exit status $rc"
}}
# idle: stay up (the test kills QEMU), so a peer still talking to us loses nothing.
idle() {{
    while :; do sleep 1; done
}}
echo "$M BOOTED"
{body}
"#
    )
}

/// Topology of the two-guest tests: alice and bob see each other's "rpmsg-raw".
fn two_guest_topology(dir: &Path, echo: Option<&str>) -> String {
    let mut t = format!(
        r#"# Written by vmm-backend/tests/qemu_guests.rs.
[[guest]]
name = "alice"
socket = "{alice}"

[[guest]]
name = "bob"
socket = "{bob}"

[[channel]]
from = "alice"
to = ["bob"]
names = ["rpmsg-raw"]

[[channel]]
from = "bob"
to = ["alice"]
names = ["rpmsg-raw"]
"#,
        alice = dir.join("alice.sock").display(),
        bob = dir.join("bob.sock").display(),
    );
    if let Some(name) = echo {
        t.push_str(&format!(
            "\n[[service]]\ntype = \"echo\"\nname = \"{name}\"\n"
        ));
    }
    t
}

/// How a guest takes part in a channel exchange, in /init shell.
///
/// Linux's side (drivers/rpmsg in 6.12), which shapes this:
/// - `RPMSG_CREATE_DEV_IOCTL` on /dev/rpmsg_ctrl0 makes an rpmsg channel device. With a fixed
///   src, virtio_rpmsg_bus sets `announce` and, once a driver binds, sends a name-service
///   create for (name, src) to the remote: the hub. Named "rpmsg-raw", rpmsg_char binds it and
///   makes a /dev/rpmsgN whose endpoint is src and whose dst is -1 (any).
/// - The hub offers that name to the peer guest at a proxy address; the peer's rpmsg_ns
///   creates channel "rpmsg-raw" (src -1 in its sysfs name, dst = the proxy) and rpmsg_char
///   gives it a /dev/rpmsgM. Writing there reaches our src through the hub.
/// - rpmsg_char writes always go to the device's dst, so our own device (dst -1) cannot send:
///   `write` fails with EINVAL. And what the peer sends arrives at our src, i.e. on our own
///   device, not on the device of the peer's channel.
///
/// So each guest sends on the peer's channel (`--dev`) and receives on its own (`--rx-dev`):
/// one device per direction, both through the configured channels.
fn channel_setup(src: &str) -> String {
    format!(
        r#"own=$($A create-dev --ctrl /dev/rpmsg_ctrl0 --name rpmsg-raw --src {src}) || fail "$own"
echo "$M own channel $own"
peer=$($A wait-dev --name rpmsg-raw --announced --timeout-ms 30000) || fail "$peer"
echo "$M peer channel $peer"
"#
    )
}

/// (a) The hub's echo as seen by Linux: rpmsg_char's /dev/rpmsgN for the announced
/// "rpmsg-raw", and an endpoint made through /dev/rpmsg_ctrl0 for another announced echo.
#[test]
fn qemu_guest_echo_through_dev_rpmsg() {
    echo_through_dev_rpmsg("qemu_guest_echo_through_dev_rpmsg", "echo", false);
}

/// (a) on packed virtqueues: QEMU's device gets `packed=on`, the backend offers
/// VIRTIO_F_RING_PACKED (its default; (a) itself runs with `--no-packed` and checks the guest
/// got split rings), Linux's virtio core acks it (checked in the guest: bit 34 of
/// /sys/bus/virtio/devices/virtio0/features) and the same echoes pass.
#[test]
fn qemu_guest_echo_on_packed_rings() {
    echo_through_dev_rpmsg("qemu_guest_echo_on_packed_rings", "packed", true);
}

/// The echo test (a), on split rings or (`packed`) packed ones.
fn echo_through_dev_rpmsg(test: &'static str, short: &'static str, packed: bool) {
    let Some((_lock, env)) = setup(test) else {
        return;
    };
    let mut h = Harness::new(test, short, env);
    h.packed = packed;
    let socket = h.path("rpmsg.sock");
    let mut args: Vec<String> = vec![
        "--socket-path".into(),
        socket.display().to_string(),
        "--echo".into(),
        "rpmsg-raw".into(),
        "--echo".into(),
        "rpmsg-client-sample".into(),
    ];
    if !packed {
        // QEMU 11's generic vhost-user device acks VIRTIO_F_RING_PACKED whenever the backend
        // offers it, whatever its own `packed` property says: split rings need the backend's
        // switch.
        args.push("--no-packed".into());
    }
    h.start_backend(&args, std::slice::from_ref(&socket));
    // 1. rpmsg_char binds the announced "rpmsg-raw": /dev/rpmsgN (dst = the hub's echo).
    // 2. "rpmsg-client-sample" has no driver in this kernel: its channel only shows in sysfs
    //    (virtio0.rpmsg-client-sample.-1.<dst>), so an endpoint is made by hand through
    //    /dev/rpmsg_ctrl0 with that dst.
    // The features the guest's virtio core negotiated, one character per bit from bit 0:
    // bit 34 is VIRTIO_F_RING_PACKED.
    let features = r#"f=$(cat /sys/bus/virtio/devices/virtio0/features) || fail "no virtio0 features"
echo "$M features $f packed $(echo "$f" | cut -c35)"
"#;
    let echo = r#"dev=$($A wait-dev --name rpmsg-raw --announced --timeout-ms 30000) || fail "$dev"
echo "$M raw device $dev"
run raw $A echo-client --dev "$dev" --count 1000 --min 1 --max 496
dst=$($A wait-channel --name rpmsg-client-sample --timeout-ms 30000) || fail "$dst"
ls /sys/bus/rpmsg/devices | grep -q "^virtio0\.rpmsg-client-sample\.-1\.$(printf %d "$dst")\$" \
    || fail "no sysfs channel virtio0.rpmsg-client-sample.-1.<dst> for dst $dst"
echo "$M sample dst $dst"
ept=$($A create-ept --ctrl /dev/rpmsg_ctrl0 --name vamp-qt-sample --dst "$dst") || fail "$ept"
echo "$M created endpoint $ept"
run ctrl $A echo-client --dev "$ept" --count 200 --min 1 --max 496 --tag 77
echo "$M PASS"
reboot -f
"#;
    let body = format!("{features}{echo}");
    h.prepare_guests(&[("g0", &body)]);
    let g = h.start_guest("g0", &socket);
    h.wait_for(g, "BOOTED", BOOT_AND_SETUP);
    let features = h.wait_for(g, "features", BOOT_AND_SETUP);
    let want = if packed { "1" } else { "0" };
    if features.split_whitespace().collect::<Vec<_>>().get(1..) != Some(&["packed", want][..]) {
        h.fail(&format!(
            "the guest's negotiated features should have VIRTIO_F_RING_PACKED = {want}: {features}"
        ));
    }
    h.note(&format!("guest features {features}"));
    let dev = h.wait_for(g, "raw device", BOOT_AND_SETUP);
    h.note(&format!("hub echo bound by rpmsg_char as {dev}"));
    h.result(g, "raw", "echo-client: 1000/1000 ok", STEP);
    let dst = h.wait_for(g, "sample dst", STEP);
    h.note(&format!("rpmsg-client-sample at {dst} (from sysfs)"));
    h.result(g, "ctrl", "echo-client: 200/200 ok", STEP);
    h.wait_for(g, "PASS", STEP);
    h.wait_exit(g, STEP);
    h.assert_backend_alive();
    h.assert_guest_kernels_clean();
    h.assert_backend_log_clean();
    let log = h.backend_log();
    if count_lines(&log, "guest0: link up") != 1 {
        h.fail("the backend log should show guest0's link up exactly once");
    }
    h.note("done");
}

/// (b) Two guests, alice and bob, exchange 1000 messages each way through the configured
/// channels, both with rpmsg_char devices (see `channel_setup` for how Linux shapes this).
#[test]
fn qemu_two_guests_exchange_through_a_channel() {
    let test = "qemu_two_guests_exchange_through_a_channel";
    let Some((_lock, env)) = setup(test) else {
        return;
    };
    let mut h = Harness::new(test, "pair", env);
    let topology = h.path("topology.toml");
    fs::write(&topology, two_guest_topology(h.dir.path(), None)).expect("write topology");
    let (alice_sock, bob_sock) = (h.path("alice.sock"), h.path("bob.sock"));
    h.start_backend(
        &["--config".into(), topology.display().to_string()],
        &[alice_sock.clone(), bob_sock.clone()],
    );
    // Distinct tags per direction: each side checks it receives the other's stream.
    let body = |src: &str, tag: u8, expect: u8| {
        format!(
            "{}run peer $A peer --dev \"$peer\" --rx-dev \"$own\" --send 1000 --expect 1000 \
             --min 1 --max 496 --tag {tag} --expect-tag {expect} --timeout-ms 20000\n\
             echo \"$M PASS\"\nidle\n",
            channel_setup(src)
        )
    };
    h.prepare_guests(&[
        ("alice", &body("0x2000", 0xA1, 0xB0)),
        ("bob", &body("0x3000", 0xB0, 0xA1)),
    ]);
    let a = h.start_guest("alice", &alice_sock);
    let b = h.start_guest("bob", &bob_sock);
    for g in [a, b] {
        h.wait_for(g, "own channel", BOOT_AND_SETUP);
        h.wait_for(g, "peer channel", BOOT_AND_SETUP);
    }
    for g in [a, b] {
        h.result(
            g,
            "peer",
            "peer: sent 1000/1000, received 1000/1000 ok",
            STEP,
        );
        h.wait_for(g, "PASS", STEP);
    }
    h.assert_backend_alive();
    h.assert_guest_kernels_clean();
    h.assert_backend_log_clean();
    let log = h.backend_log();
    for (who, src) in [("alice", "0x2000"), ("bob", "0x3000")] {
        let line = format!("{who}: announced \"rpmsg-raw\" at {src}");
        if count_lines(&log, &line) != 1 {
            h.fail(&format!("the backend log should show {line:?} once"));
        }
    }
    h.note("done");
}

/// (c) bob's guest is killed and restarted while alice runs a long echo through the hub:
/// alice loses nothing, sees bob's channel withdrawn and offered again, and the restarted bob
/// sees alice's channel again and exchanges messages with her.
#[test]
fn qemu_guest_restart_costs_the_survivor_nothing() {
    let test = "qemu_guest_restart_costs_the_survivor_nothing";
    let Some((_lock, env)) = setup(test) else {
        return;
    };
    let mut h = Harness::new(test, "restart", env);
    let topology = h.path("topology.toml");
    let echo = "rpmsg-client-sample";
    fs::write(&topology, two_guest_topology(h.dir.path(), Some(echo))).expect("write topology");
    let (alice_sock, bob_sock) = (h.path("alice.sock"), h.path("bob.sock"));
    h.start_backend(
        &["--config".into(), topology.display().to_string()],
        &[alice_sock.clone(), bob_sock.clone()],
    );

    // alice, the survivor: a first exchange with bob, then an echo that runs (every reply
    // checked byte for byte, at least 3000) until bob's channel has been withdrawn and offered
    // again (the guest sees both), then an exchange with the restarted bob.
    let alice_body = format!(
        r#"{setup}run peer1 $A peer --dev "$peer" --rx-dev "$own" --send 200 --expect 200 --tag 1 --expect-tag 2 --timeout-ms 20000
dst=$($A wait-channel --name {echo} --timeout-ms 30000) || fail "$dst"
echo "$M ECHO-START at $dst"
$A echo-client --ctrl /dev/rpmsg_ctrl0 --name vamp-qt-survivor --dst "$dst" --count 3000 --min 1 --max 496 --until-file /tmp/bob-is-back >/tmp/echo.out &
echo_pid=$!
gone=$($A wait-gone --dev "$peer" --timeout-ms 60000) || fail "bob's channel was not withdrawn: $gone"
echo "$M BOB-GONE $gone"
peer=$($A wait-dev --name rpmsg-raw --announced --timeout-ms 60000) || fail "$peer"
echo "$M BOB-BACK $peer"
: >/tmp/bob-is-back
wait $echo_pid
rc=$?
echo "$M RESULT echo: $(cat /tmp/echo.out)"
[ $rc -eq 0 ] || fail "echo: exit status $rc"
run peer2 $A peer --dev "$peer" --rx-dev "$own" --send 200 --expect 200 --tag 3 --expect-tag 4 --timeout-ms 20000
echo "$M PASS"
idle
"#,
        setup = channel_setup("0x2000"),
    );
    let bob_body = |tag: u8, expect: u8| {
        format!(
            "{}run peer $A peer --dev \"$peer\" --rx-dev \"$own\" --send 200 --expect 200 \
             --tag {tag} --expect-tag {expect} --timeout-ms 20000\necho \"$M PASS\"\nidle\n",
            channel_setup("0x3000")
        )
    };

    h.prepare_guests(&[
        ("alice", &alice_body),
        ("bob1", &bob_body(2, 1)),
        ("bob2", &bob_body(4, 3)),
    ]);
    let a = h.start_guest("alice", &alice_sock);
    let b1 = h.start_guest("bob1", &bob_sock);
    h.result(
        a,
        "peer1",
        "peer: sent 200/200, received 200/200 ok",
        BOOT_AND_SETUP,
    );
    h.result(
        b1,
        "peer",
        "peer: sent 200/200, received 200/200 ok",
        BOOT_AND_SETUP,
    );
    h.wait_for(b1, "PASS", STEP);
    h.wait_for(a, "ECHO-START", STEP);
    // Let the echo get going, then pull the plug on bob and start him again at once.
    std::thread::sleep(Duration::from_millis(500));
    h.guests[b1].qemu.kill();
    h.note("bob1 killed (SIGKILL)");
    // The new QEMU connects at once: the backend must finish with the old connection (link
    // down, bob's name withdrawn from alice) and then accept this one on the same socket.
    let b2 = h.start_guest("bob2", &bob_sock);
    h.wait_backend_log("bob: link down", 1, STEP);
    let gone = h.wait_for(a, "BOB-GONE", STEP);
    h.note(&format!("alice: {gone}"));
    h.wait_for(b2, "peer channel", BOOT_AND_SETUP);
    let back = h.wait_for(a, "BOB-BACK", STEP);
    h.note(&format!("alice: bob's channel is back as {back}"));
    let echo_line = h.result(a, "echo", "ok, rtt", STEP);
    let n: u32 = echo_line
        .strip_prefix("echo-client: ")
        .and_then(|r| r.split_once('/'))
        .and_then(|(n, rest)| {
            rest.starts_with(&format!("{n} ok"))
                .then(|| n.parse().ok())
                .flatten()
        })
        .unwrap_or_else(|| h.fail(&format!("cannot parse the echo summary {echo_line:?}")));
    if n < 3000 {
        h.fail(&format!(
            "alice's echo did only {n} round trips, expected >= 3000"
        ));
    }
    h.result(a, "peer2", "peer: sent 200/200, received 200/200 ok", STEP);
    h.result(b2, "peer", "peer: sent 200/200, received 200/200 ok", STEP);
    h.wait_for(a, "PASS", STEP);
    h.wait_for(b2, "PASS", STEP);

    h.assert_backend_alive();
    h.assert_guest_kernels_clean();
    let log = h.backend_log();
    let checks = [
        (
            "bob: link up",
            2,
            "bob's link up twice (first boot, restart)",
        ),
        ("bob: link down", 1, "bob's link down once (the kill)"),
        ("alice: link up", 1, "alice's link up once"),
        ("alice: link down", 0, "alice's link never down"),
        (
            "bob: announced \"rpmsg-raw\" at 0x3000",
            2,
            "bob's name announced twice",
        ),
        (
            "alice: announced \"rpmsg-raw\" at 0x2000",
            1,
            "alice's name announced once",
        ),
    ];
    for (needle, want, what) in checks {
        let got = count_lines(&log, needle);
        if got != want {
            h.fail(&format!(
                "backend log: expected {what}: {needle:?} {want} time(s), found {got}"
            ));
        }
    }
    if let Some(line) = log.lines().find(|l| l.contains(" ERROR ")) {
        h.fail(&format!("the backend log reports an error: {line}"));
    }
    h.note(&format!(
        "done: alice's echo did {n} round trips across bob's restart"
    ));
}
