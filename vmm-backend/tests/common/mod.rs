//! Shared test helpers: an in-process hub serving native guests (vamp's own vhost-user
//! frontend), a handler that records what a guest receives, the loops that poll guests, a
//! remote link played by the engine's device role; and, for the QEMU tests, where
//! provisioning put everything, temp dirs kept on failure, child processes and their logs.
#![allow(dead_code)]

pub mod traffic;

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};
use vamp_rpmsg::guest_ram::GuestRam;
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::rpmsg::{Config, EptId, Error as RpmsgError, Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::testing::TestEnv;
use vamp_rpmsg::transport::{
    BufferConfig, DeviceTransport, DriverLayout, DriverTransport, Transport,
};
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::{ADDR_ANY, Endian};
use vamp_vmm_backend::config::Topology;
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest};
use vamp_vmm_backend::hub::SharedHub;
use vamp_vmm_backend::hub::{Hub, LinkEnv, LinkStats, Notifier};
use vamp_vmm_backend::vhost_user::serve_guest;
use vm_memory::{GuestAddress, GuestMemoryMmap};

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use vamp_test_support::{Proc, TempDir, count_lines, log_tail, read_lossy, rest_of_line, tail};

/// How long any one wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);
/// Queue numbers: vq 0 carries messages to the guest, vq 1 messages from it.
pub const RXQ: u16 = 0;
pub const TXQ: u16 = 1;

/// One guest, alice, and a remote, r5 (the echo image), whose names are offered to alice.
pub const ALICE_AND_R5: &str = r#"
[[guest]]
name = "alice"
socket = "{dir}/alice.sock"
[[remote]]
name = "r5"
image = "echo"
[[channel]]
from = "r5"
to = ["alice"]
"#;

/// Waits until `cond` holds, or fails the test after [`WAIT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------------
// The hub

/// A hub on threads of its own: one `serve_guest` thread per guest of its topology.
pub struct TestHub {
    pub hub: SharedHub,
    /// The guests' sockets, by link id.
    pub sockets: Vec<PathBuf>,
    pub dir: TempDir,
}

impl TestHub {
    /// Starts a hub for `toml`, with `{dir}` standing for a fresh temp dir named after `tag`.
    pub fn start(tag: &str, toml: &str) -> TestHub {
        Self::start_with(tag, toml, |_| {})
    }

    /// [`TestHub::start`], with `setup` applied to the hub before its threads start.
    pub fn start_with(tag: &str, toml: &str, setup: impl FnOnce(&mut Hub)) -> TestHub {
        let dir = TempDir::new(tag);
        let topology =
            Topology::parse(&toml.replace("{dir}", dir.path().to_str().unwrap())).unwrap();
        let sockets: Vec<PathBuf> = topology.guests.iter().map(|g| g.socket.clone()).collect();
        let mut hub = Hub::new(topology);
        setup(&mut hub);
        let hub = SharedHub::new(hub);
        for (id, socket) in sockets.iter().enumerate() {
            let (hub, socket) = (hub.clone(), socket.clone());
            std::thread::spawn(move || serve_guest(hub, id, &socket));
        }
        TestHub { hub, sockets, dir }
    }

    /// A native guest on the socket of guest `id`.
    pub fn connect(&self, id: usize) -> NativeGuest {
        NativeGuest::connect(&self.sockets[id], GuestOptions::default()).unwrap()
    }

    pub fn stats(&self, id: usize) -> LinkStats {
        self.hub.link(id).stats(id)
    }

    pub fn is_up(&self, id: usize) -> bool {
        self.hub.link(id).is_up(id)
    }

    pub fn is_broken(&self, id: usize) -> bool {
        self.hub.link(id).is_broken(id)
    }
}

// ---------------------------------------------------------------------------------------------
// Guests

/// Everything a guest receives: messages as (endpoint, source, destination, payload), and the
/// names announced and withdrawn. With `echo`, messages go back to their source instead.
#[derive(Debug, Default)]
pub struct Inbox {
    pub messages: VecDeque<(EptId, u32, u32, Vec<u8>)>,
    pub created: Vec<(Vec<u8>, u32)>,
    pub destroyed: Vec<(Vec<u8>, u32)>,
    pub echo: bool,
}

impl<T: Transport> Handler<T> for Inbox {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        let data = rpmsg.payload(msg).unwrap();
        if self.echo {
            rpmsg.sendto(msg.ept, msg.src, &data).unwrap();
        } else {
            self.messages.push_back((msg.ept, msg.src, msg.dst, data));
        }
    }

    fn on_name_service(&mut self, _: &mut Rpmsg<T>, e: NsEvent<'_>) {
        match e {
            NsEvent::Created { name, addr, .. } => self.created.push((name.to_vec(), addr)),
            NsEvent::Destroyed { name, addr, .. } => self.destroyed.push((name.to_vec(), addr)),
        }
    }
}

impl Inbox {
    /// An inbox that echoes every message to its sender.
    pub fn echoing() -> Inbox {
        Inbox {
            echo: true,
            ..Inbox::default()
        }
    }

    /// The address `name` was last announced at.
    pub fn announced(&self, name: &str) -> Option<u32> {
        self.created
            .iter()
            .rev()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, a)| *a)
    }
}

/// Polls `guest` until `done` holds, or fails after [`WAIT`].
pub fn pump(guest: &mut NativeGuest, inbox: &mut Inbox, what: &str, done: impl Fn(&Inbox) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        guest.poll(inbox).unwrap();
        if done(inbox) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {} message(s), last {:?}; created {:?}; destroyed {:?}",
            inbox.messages.len(),
            inbox.messages.back(),
            &inbox.created[inbox.created.len().saturating_sub(4)..],
            &inbox.destroyed[inbox.destroyed.len().saturating_sub(4)..],
        );
        guest.wait(Duration::from_millis(20));
    }
}

/// Polls `peer` (which echoes) and `guest` until a message is in `inbox`, the guest's; fails
/// with `lost` after [`WAIT`].
pub fn await_echo(
    guest: &mut NativeGuest,
    inbox: &mut Inbox,
    peer: &mut NativeGuest,
    peer_inbox: &mut Inbox,
    lost: &str,
) {
    let deadline = Instant::now() + WAIT;
    while inbox.messages.is_empty() {
        peer.poll(peer_inbox).unwrap();
        guest.poll(inbox).unwrap();
        assert!(Instant::now() < deadline, "{lost}");
        guest.wait(Duration::from_millis(1));
    }
}

/// `[[guest]]` sections for `names` in this order (so link ids follow it), each with its
/// socket at `{dir}/NAME.sock` ([`TestHub::start`] fills in `{dir}`).
pub fn guests_toml(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("[[guest]]\nname = \"{n}\"\nsocket = \"{{dir}}/{n}.sock\"\n"))
        .collect()
}

/// One guest, solo, and the hub's echo service under the name Linux's sample client uses.
pub const ECHO_SOLO: &str = r#"
[[guest]]
name = "solo"
socket = "{dir}/solo.sock"
[[service]]
type = "echo"
name = "rpmsg-client-sample"
"#;

/// Message `i` of a run that goes through every size from 1 to 496 bytes, each filled with
/// a pattern of its own.
pub fn sized_payload(i: u32) -> Vec<u8> {
    let size = 1 + (i as usize % 496);
    (0..size)
        .map(|k| (k as u32 ^ i.wrapping_mul(7)) as u8)
        .collect()
}

/// Waits until `name` is announced to `g`, then binds an endpoint of that name to it.
/// Returns the endpoint and the service's address.
pub fn bind_announced(g: &mut NativeGuest, inbox: &mut Inbox, name: &str) -> (EptId, u32) {
    pump(g, inbox, &format!("the {name} announcement"), |i| {
        i.announced(name).is_some()
    });
    let addr = inbox.announced(name).unwrap();
    let ept = g
        .rpmsg()
        .create_ept(name.as_bytes(), ADDR_ANY, addr)
        .unwrap();
    (ept, addr)
}

/// Sends `msg` on `ept` (waiting for a buffer) and checks that it comes back whole, from
/// `addr` to `ept`, before anything else.
pub fn check_echo(g: &mut NativeGuest, inbox: &mut Inbox, ept: EptId, addr: u32, msg: &[u8]) {
    g.rpmsg()
        .send(ept, msg)
        .unwrap_or_else(|e| panic!("send {} bytes: {e}", msg.len()));
    pump(g, inbox, "an echo", |i| !i.messages.is_empty());
    let (to, from, _, data) = inbox.messages.pop_front().unwrap();
    assert_eq!((to, from), (ept, addr));
    assert_eq!(data, msg, "echo of {} bytes", msg.len());
}

/// alice (echoing, as `ai` says) offers "a-svc"; once the hub offered it to bob, bob binds an
/// endpoint to it. Returns alice's endpoint, and bob's with the hub's proxy for "a-svc" in
/// bob's link.
pub fn bob_binds_alices_service(
    alice: &mut NativeGuest,
    ai: &mut Inbox,
    bob: &mut NativeGuest,
    bi: &mut Inbox,
) -> (EptId, (EptId, u32)) {
    let svc = alice
        .rpmsg()
        .create_ept(b"a-svc", ADDR_ANY, ADDR_ANY)
        .unwrap();
    pump(alice, ai, "alice's link", |_| true);
    pump(bob, bi, "a-svc offered to bob", |i| {
        i.announced("a-svc").is_some()
    });
    let proxy = bi.announced("a-svc").unwrap();
    let ept = bob.rpmsg().create_ept(b"a-svc", ADDR_ANY, proxy).unwrap();
    (svc, (ept, proxy))
}

/// bob sends `count` messages of every size ([`sized_payload`]) on `ept`; alice echoes each;
/// each must come back to `ept` from `proxy`, intact, before the next is sent.
pub fn echo_through_alice(
    bob: &mut NativeGuest,
    bi: &mut Inbox,
    alice: &mut NativeGuest,
    ai: &mut Inbox,
    (ept, proxy): (EptId, u32),
    count: u32,
) {
    for i in 0..count {
        let msg = sized_payload(i);
        bob.rpmsg().send(ept, &msg).unwrap();
        await_echo(bob, bi, alice, ai, &format!("echo {i} lost"));
        let (to, from, _, data) = bi.messages.pop_front().unwrap();
        assert_eq!((to, from, data), (ept, proxy, msg), "echo {i}");
    }
}

/// Notifies the hub on `queue` of `g`, as its driver would.
pub fn kick(g: &mut NativeGuest, queue: u16) {
    g.rpmsg().transport_mut().environment().notify(queue);
}

/// Moves the available index of `ring` of `g` `by` entries on, as a buggy or hostile driver
/// would: more chains than the ring holds is a protocol violation.
pub fn jump_avail(g: &NativeGuest, ring: VringLayout, by: u16) {
    let mem = g.memory();
    let idx = u16::from_le(mem.load_u16(ring.avail + 2).unwrap());
    fence(Ordering::SeqCst);
    mem.store_u16(ring.avail + 2, idx.wrapping_add(by).to_le())
        .unwrap();
}

/// A guest the test drives, with its inbox.
pub struct Guest {
    pub g: NativeGuest,
    pub inbox: Inbox,
}

impl Guest {
    pub fn connect(hub: &TestHub, id: usize) -> Guest {
        Guest {
            g: hub.connect(id),
            inbox: Inbox::default(),
        }
    }

    /// Connects guest `id` and waits until the hub serves it: its "echo" is announced.
    pub fn connect_served(hub: &TestHub, id: usize) -> Guest {
        Self::served(Self::connect(hub, id))
    }

    /// A native guest on `socket` (a hub in another process), once the hub serves it.
    pub fn served_on(socket: &Path) -> Guest {
        Self::served(Guest {
            g: NativeGuest::connect(socket, GuestOptions::default()).unwrap(),
            inbox: Inbox::default(),
        })
    }

    /// Waits until the hub serves `guest`: its "echo" is announced.
    fn served(mut guest: Guest) -> Guest {
        guest.pump("the echo service", |i| i.announced("echo").is_some());
        guest
    }

    pub fn pump(&mut self, what: &str, done: impl Fn(&Inbox) -> bool) {
        pump(&mut self.g, &mut self.inbox, what, done)
    }

    /// One round trip through the hub's "echo" (waiting for it to be announced first).
    pub fn echo_roundtrip(&mut self, tag: u32) {
        self.pump("the echo service", |i| i.announced("echo").is_some());
        let echo = self.inbox.announced("echo").unwrap();
        let ept = self.g.rpmsg().create_ept(b"", ADDR_ANY, echo).unwrap();
        let data = tag.to_le_bytes();
        let deadline = Instant::now() + WAIT;
        loop {
            match self.g.rpmsg().trysend(ept, &data) {
                Ok(_) => break,
                Err(RpmsgError::NoBuffer) => {
                    assert!(Instant::now() < deadline, "no transmit buffer came back");
                    self.g.poll(&mut self.inbox).unwrap();
                    self.g.wait(Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        }
        self.pump("an echo", |i| i.messages.iter().any(|m| m.0 == ept));
        let at = self.inbox.messages.iter().position(|m| m.0 == ept).unwrap();
        let (_, _, _, got) = self.inbox.messages.remove(at).unwrap();
        assert_eq!(got, data);
        self.g.rpmsg().destroy_ept(ept).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// A remote link played in the test

/// A remote link (the hub is the driver, as for a remoteproc vdev) played by the device role
/// of the engine on the same memory: 1 MiB, rings of 64 at 0x1000 (vq 0) and 0x4000 (vq 1).
/// The played remote's kicks are only counted: the test services the hub itself.
pub struct PlayedRemote {
    pub rpmsg: Rpmsg<DeviceTransport<GuestRam, TestEnv>>,
    pub mem: GuestRam,
    pub layout: DriverLayout,
}

impl PlayedRemote {
    /// Lays the link out and attaches the hub's side as link `id`, notifying `notifier`.
    pub fn attach(hub: &SharedHub, id: usize, notifier: Arc<dyn Notifier>) -> Self {
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mem = GuestRam::new(ram);
        let layout = DriverLayout {
            rx_ring: VringLayout::legacy(0x1000, 64, 0x1000).unwrap(),
            tx_ring: VringLayout::legacy(0x4000, 64, 0x1000).unwrap(),
            pool_addr: 0x10000,
            pool_len: 0x40000,
            buffers: BufferConfig::default(),
        };
        let env = LinkEnv::new(notifier);
        let driver = DriverTransport::new(mem.clone(), env, layout, Endian::NATIVE, false).unwrap();
        let device = DeviceTransport::new(
            mem.clone(),
            TestEnv::default(),
            layout.rx_ring,
            layout.tx_ring,
            Endian::NATIVE,
            false,
            512,
        )
        .unwrap();
        let rpmsg = Rpmsg::new(device, Config::default());
        hub.link(id).attach(id, driver, true);
        PlayedRemote { rpmsg, mem, layout }
    }
}

// ---------------------------------------------------------------------------------------------
// QEMU guests

/// The gate of every QEMU test: false (after saying why) when QEMU tests are not enabled here.
pub fn qemu_tests_enabled(test: &str) -> bool {
    if std::env::var("VAMP_QEMU_TESTS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "skipped: {test}: QEMU guests not provisioned here (tests/run provisions them and sets \
         VAMP_QEMU_TESTS=1)"
    );
    false
}

/// Where provisioning put everything (tests/provision/README.md).
#[derive(Debug)]
pub struct Env {
    pub repo: PathBuf,
    pub qemu: PathBuf,
    pub initramfs_sh: PathBuf,
    pub kernel: PathBuf,
    pub agent: PathBuf,
    pub backend: PathBuf,
}

impl Env {
    /// Finds the provisioned pieces; with VAMP_QEMU_TESTS=1 a missing one is a failure.
    pub fn find() -> Env {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("vmm-backend lives in the repository")
            .to_path_buf();
        let cache = PathBuf::from(
            std::env::var_os("VAMP_CACHE").unwrap_or_else(|| "/var/cache/vamp".into()),
        );
        let env = Env {
            qemu: repo.join("tests/provision/qemu"),
            initramfs_sh: repo.join("tests/provision/initramfs.sh"),
            kernel: cache.join("guest/bzImage"),
            agent: cache.join("guest/vamp-guest-agent"),
            backend: PathBuf::from(env!("CARGO_BIN_EXE_vhost-user-rpmsg")),
            repo,
        };
        let qemu_bin = cache.join("trixie-root/usr/bin/qemu-system-x86_64");
        let missing: Vec<String> = [
            (&env.qemu, "the QEMU wrapper"),
            (&qemu_bin, "QEMU 11 in the trixie root"),
            (&env.initramfs_sh, "the initramfs builder"),
            (&env.kernel, "the guest kernel"),
            (&env.agent, "the guest agent"),
            (&env.backend, "the backend binary"),
        ]
        .iter()
        .filter(|(p, _)| !p.exists())
        .map(|(p, what)| format!("{what} ({})", p.display()))
        .collect();
        assert!(
            missing.is_empty(),
            "VAMP_QEMU_TESTS=1 but the QEMU test environment is incomplete: missing {}. \
             Run tests/provision/all.sh (as root) first, or unset VAMP_QEMU_TESTS.",
            missing.join(", ")
        );
        env
    }

    /// The command that builds `initrd` from the /init script `init` plus the agent (its
    /// errors on a pipe).
    pub fn initramfs_command(&self, initrd: &Path, init: &Path) -> Command {
        let mut command = Command::new(&self.initramfs_sh);
        command
            .arg(initrd)
            .arg(init)
            .arg(&self.agent)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// The command that runs QEMU (through the wrapper) with `args`, its serial console and
    /// errors in a new file `console`, stdin empty.
    pub fn qemu_command(&self, args: Vec<String>, console: &Path) -> Command {
        let log = fs::File::create(console).expect("create console log");
        let mut command = Command::new(&self.qemu);
        command
            .args(args)
            .current_dir(&self.repo)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        command
    }
}

/// QEMU's arguments for a guest booting `kernel` with `initrd`: the machine of
/// tests/provision/README.md, `devices` (the chardev and the device) and the boot.
pub fn qemu_args(kernel: &Path, initrd: &Path, devices: Vec<String>) -> Vec<String> {
    [
        "-accel",
        "tcg",
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
        "-no-reboot",
        "-m",
        "256M",
        "-object",
        "memory-backend-memfd,id=mem,size=256M,share=on",
        "-numa",
        "node,memdev=mem",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(devices)
    .chain([
        "-kernel".to_string(),
        kernel.display().to_string(),
        "-initrd".to_string(),
        initrd.display().to_string(),
        "-append".to_string(),
        "console=ttyS0 panic=-1 tsc=reliable".to_string(),
    ])
    .collect()
}

/// A private temp dir for a QEMU test, kept when the test fails or VAMP_QEMU_KEEP=1 (its logs
/// and consoles are the report).
pub fn test_dir(name: &str) -> TempDir {
    TempDir::kept_on_failure(name, "VAMP_QEMU_KEEP")
}

/// Starts `vhost-user-rpmsg ARGS` (`RUST_LOG=info`) with its output in a new file `log`.
pub fn spawn_backend(args: &[String], log: &Path) -> Proc {
    let file = fs::File::create(log).expect("create backend log");
    let bin = env!("CARGO_BIN_EXE_vhost-user-rpmsg");
    let child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup log fd"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    Proc { child }
}

/// The whole lines of a serial console log so far (the console writes a line a few bytes at a
/// time).
pub fn console_lines(console: &Path) -> String {
    let mut text = read_lossy(console);
    text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
    text
}

/// The first sign of kernel trouble (BUG, WARNING, Oops or panic) on a guest console.
pub fn kernel_trouble(console: &Path) -> Option<&'static str> {
    let text = read_lossy(console);
    ["BUG:", "WARNING: CPU", "Kernel panic", "Oops"]
        .into_iter()
        .find(|bad| text.contains(bad))
}

/// The first ERROR line or dropped message of a backend log.
pub fn backend_log_problem(log: &str) -> Option<&str> {
    log.lines()
        .find(|l| l.contains(" ERROR ") || l.contains("dropped"))
}
