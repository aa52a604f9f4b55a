//! A core behind the kernel's remoteproc (dom0's R5) in the hub, through its bridge
//! (vamp_vmm_backend::remote::bridge), against a fake kernel: channels listed as the kernel
//! lists them, each endpoint one end of a socket pair whose other end the fake core echoes
//! on (one message per packet, hang-up when the core goes away). A guest echoes through the
//! hub to the core byte for byte, loses the channel when the core crashes and gets it back
//! when it recovers; a guest the topology does not offer the channel never reaches it. The
//! same bridge against the real kernel: tests/provision/dom0-hub-smoke.sh.

mod common;

use common::{Inbox, TestHub, bind_announced, check_echo, pump, sized_payload, wait_until};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vamp_remoteproc::sysfs::{AnnouncedChannel, SysfsRemote};
use vamp_vmm_backend::remote::bridge::{
    BridgeStatus, KernelChannels, KernelEndpoint, MAX_ENDPOINTS_PER_CHANNEL, run_bridge,
    start_or_adopt,
};

/// What the fake core announces and the endpoints opened on it.
#[derive(Default)]
struct FakeState {
    channels: Vec<AnnouncedChannel>,
    /// The core's ends of the endpoints opened, with the channel each is on.
    peers: Vec<(String, Arc<OwnedFd>)>,
    opened: usize,
    /// The kernel has no transmit buffer: sends fail with EAGAIN, as on a non-blocking
    /// endpoint.
    out_of_buffers: bool,
}

/// A fake kernel with a core that echoes on every channel.
#[derive(Clone, Default)]
struct FakeKernel(Arc<Mutex<FakeState>>);

impl FakeKernel {
    fn with_channels(names: &[(&str, u32)]) -> Self {
        let k = FakeKernel::default();
        k.set_channels(names);
        k
    }

    fn set_channels(&self, names: &[(&str, u32)]) {
        self.0.lock().unwrap().channels = names
            .iter()
            .map(|(n, dst)| AnnouncedChannel {
                name: n.to_string(),
                dst: *dst,
            })
            .collect();
    }

    /// The core goes away: its channels vanish and every endpoint hangs up.
    fn crash(&self) {
        let mut s = self.0.lock().unwrap();
        s.channels.clear();
        for (_, peer) in s.peers.drain(..) {
            // SAFETY: shutdown on a descriptor kept alive by the Arc.
            unsafe { libc::shutdown(peer.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    fn out_of_buffers(&self, on: bool) {
        self.0.lock().unwrap().out_of_buffers = on;
    }

    fn opened(&self) -> usize {
        self.0.lock().unwrap().opened
    }
}

impl KernelChannels for FakeKernel {
    fn channels(&mut self) -> Result<Vec<AnnouncedChannel>, String> {
        Ok(self.0.lock().unwrap().channels.clone())
    }

    fn open(&mut self, name: &str, dst: u32) -> Result<Box<dyn KernelEndpoint>, String> {
        let mut s = self.0.lock().unwrap();
        if !s.channels.iter().any(|c| c.name == name && c.dst == dst) {
            return Err(format!("no channel {name:?} at {dst:#x}"));
        }
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into the live array.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "socketpair: {}", io::Error::last_os_error());
        // SAFETY: both descriptors are fresh and owned by nobody else.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let theirs = Arc::new(theirs);
        s.peers.push((name.to_string(), theirs.clone()));
        s.opened += 1;
        std::thread::spawn(move || echo(&theirs));
        Ok(Box::new(FakeEndpoint(ours, self.clone())))
    }
}

/// What the fake core answers [`FLOOD`] with: this many messages.
const FLOOD_COUNT: u32 = 1000;
const FLOOD: &[u8] = b"flood";

/// Message `i` of a flood.
fn flood_payload(i: u32) -> Vec<u8> {
    let mut m = i.to_le_bytes().to_vec();
    m.resize(4 + (i as usize % 100), i as u8);
    m
}

/// The fake core's side of one endpoint: every packet back (a [`FLOOD`] is answered with
/// [`FLOOD_COUNT`] messages), until the pair is shut down.
fn echo(fd: &OwnedFd) {
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: reads at most buf.len() bytes into the live buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        if &buf[..n as usize] == FLOOD {
            for i in 0..FLOOD_COUNT {
                let m = flood_payload(i);
                // SAFETY: writes m.len() bytes from the live vector (blocking: the socket
                // holds what the bridge has not taken, as the kernel's queue would).
                unsafe { libc::write(fd.as_raw_fd(), m.as_ptr().cast(), m.len()) };
            }
            continue;
        }
        // SAFETY: writes the n bytes just read from the live buffer.
        unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), n as usize) };
    }
}

struct FakeEndpoint(OwnedFd, FakeKernel);

impl KernelEndpoint for FakeEndpoint {
    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        if self.1.0.lock().unwrap().out_of_buffers {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // SAFETY: writes msg.len() bytes from the live slice.
        let n = unsafe { libc::write(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 512];
        // SAFETY: reads at most buf.len() bytes into the live buffer.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the core is gone",
            ));
        }
        buf.truncate(n as usize);
        Ok(Some(buf))
    }
}

const TOPOLOGY: &str = r#"
[[guest]]
name = "domu"
socket = "{dir}/domu.sock"
[[guest]]
name = "other"
socket = "{dir}/other.sock"
[[remote]]
name = "r5-0"
image = "/lib/firmware/vamp-r5-echo.elf"
backend = "sysfs"
sysfs_path = "/sys/class/remoteproc/remoteproc0"
recovery = "restart"
[[channel]]
from = "r5-0"
to = ["domu"]
names = ["rpmsg-client-sample"]
"#;

const CHANNELS: [(&str, u32); 2] = [
    ("rpmsg-client-sample", 0x400),
    ("rpmsg-openamp-demo-channel", 0x401),
];

/// The hub, and a bridge thread for its remote on `kernel`.
struct Setup {
    hub: TestHub,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<BridgeStatus>>,
    bridge: Option<std::thread::JoinHandle<()>>,
}

impl Setup {
    fn start(kernel: &FakeKernel) -> Setup {
        let hub = TestHub::start("hub-sysfs", TOPOLOGY);
        let id = hub.hub.topology().link_index("r5-0").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(BridgeStatus::default()));
        let (shared, mut kernel, theirs, st) = (
            hub.hub.clone(),
            kernel.clone(),
            stop.clone(),
            status.clone(),
        );
        let bridge = std::thread::spawn(move || {
            run_bridge(&shared, id, "r5-0", &mut kernel, &theirs, &st).unwrap();
        });
        Setup {
            hub,
            stop,
            status,
            bridge: Some(bridge),
        }
    }

    fn status(&self) -> BridgeStatus {
        self.status.lock().unwrap().clone()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(b) = self.bridge.take() {
            let _ = b.join();
        }
    }
}

#[test]
fn a_guest_echoes_through_the_hub_to_a_core_behind_the_kernel() {
    let kernel = FakeKernel::with_channels(&CHANNELS);
    let setup = Setup::start(&kernel);
    let mut domu = setup.hub.connect(0);
    let mut inbox = Inbox::default();
    let (ept, addr) = bind_announced(&mut domu, &mut inbox, "rpmsg-client-sample");
    for i in 0..1000 {
        check_echo(&mut domu, &mut inbox, ept, addr, &sized_payload(i));
    }
    // One kernel endpoint for the one sender.
    assert_eq!(kernel.opened(), 1);
    assert_eq!(setup.status().endpoints, 1);
    // Only the channel the topology names was offered.
    assert_eq!(inbox.announced("rpmsg-openamp-demo-channel"), None);
    assert_eq!(
        setup.status().channels,
        ["rpmsg-client-sample", "rpmsg-openamp-demo-channel"]
    );
}

#[test]
fn a_guest_not_offered_the_channel_cannot_reach_the_core() {
    let kernel = FakeKernel::with_channels(&CHANNELS);
    let setup = Setup::start(&kernel);
    let mut domu = setup.hub.connect(0);
    let mut other = setup.hub.connect(1);
    let (mut inbox, mut other_inbox) = (Inbox::default(), Inbox::default());
    let (_, addr) = bind_announced(&mut domu, &mut inbox, "rpmsg-client-sample");
    // `other` sends to every address domu was offered, and around: nothing reaches the core.
    let ept = other
        .rpmsg()
        .create_ept(
            b"probe",
            vamp_rpmsg::wire::ADDR_ANY,
            vamp_rpmsg::wire::ADDR_ANY,
        )
        .unwrap();
    for dst in (0x400..0x440).chain([addr, 53, 0x401]) {
        let _ = other.rpmsg().sendto(ept, dst, b"let me in");
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        other.poll(&mut other_inbox).unwrap();
        other.wait(Duration::from_millis(20));
    }
    assert_eq!(kernel.opened(), 0, "the core was reached");
    assert!(other_inbox.messages.is_empty());
    assert!(
        other_inbox.created.is_empty(),
        "offered {:?}",
        other_inbox.created
    );
}

#[test]
fn a_crash_withdraws_the_channel_and_recovery_brings_it_back() {
    let kernel = FakeKernel::with_channels(&CHANNELS);
    let setup = Setup::start(&kernel);
    let mut domu = setup.hub.connect(0);
    let mut inbox = Inbox::default();
    for round in 0..3u32 {
        pump(&mut domu, &mut inbox, "the channel announced", |i| {
            i.created.len() > round as usize
        });
        let (ept, addr) = bind_announced(&mut domu, &mut inbox, "rpmsg-client-sample");
        for i in 0..20 {
            check_echo(&mut domu, &mut inbox, ept, addr, &sized_payload(i + round));
        }
        // The core crashes; with the kernel's recovery it is back at once, under the same
        // names and addresses: the endpoint's hang-up is what tells.
        kernel.crash();
        kernel.set_channels(&CHANNELS);
        pump(&mut domu, &mut inbox, "the channel withdrawn", |i| {
            i.destroyed.len() > round as usize
        });
        domu.rpmsg().destroy_ept(ept).unwrap();
    }
    pump(&mut domu, &mut inbox, "the channel back", |i| {
        i.created.len() > 3
    });
    let (ept, addr) = bind_announced(&mut domu, &mut inbox, "rpmsg-client-sample");
    check_echo(&mut domu, &mut inbox, ept, addr, b"after three crashes");
    assert!(setup.status().withdrawals >= 3, "{:?}", setup.status());
}

#[test]
fn a_core_stopped_for_good_withdraws_its_channels() {
    let kernel = FakeKernel::with_channels(&CHANNELS);
    let setup = Setup::start(&kernel);
    let mut domu = setup.hub.connect(0);
    let mut inbox = Inbox::default();
    bind_announced(&mut domu, &mut inbox, "rpmsg-client-sample");
    // No endpoint open: the listing alone tells.
    kernel.crash();
    pump(&mut domu, &mut inbox, "the channel withdrawn", |i| {
        !i.destroyed.is_empty()
    });
    wait_until("both channels withdrawn", || {
        setup.status().channels.is_empty()
    });
}

#[test]
fn senders_beyond_the_endpoint_bound_take_the_place_of_the_least_recent() {
    let kernel = FakeKernel::with_channels(&CHANNELS);
    let setup = Setup::start(&kernel);
    let mut domu = setup.hub.connect(0);
    let mut inbox = Inbox::default();
    let (first, addr) = bind_announced(&mut domu, &mut inbox, "rpmsg-client-sample");
    let senders = MAX_ENDPOINTS_PER_CHANNEL + 6;
    let mut epts = vec![first];
    for _ in 1..senders {
        let ept = domu
            .rpmsg()
            .create_ept(b"rpmsg-client-sample", vamp_rpmsg::wire::ADDR_ANY, addr)
            .unwrap();
        epts.push(ept);
    }
    // Each sender gets its own answers, through an endpoint of its own.
    for (i, ept) in epts.iter().enumerate() {
        check_echo(&mut domu, &mut inbox, *ept, addr, &sized_payload(i as u32));
    }
    assert_eq!(kernel.opened(), senders);
    wait_until("the bound kept", || {
        setup.status().endpoints == MAX_ENDPOINTS_PER_CHANNEL
    });
    // The first sender's endpoint was the least recent: it gets a new one, and still its echo.
    check_echo(&mut domu, &mut inbox, first, addr, b"first again");
    assert_eq!(kernel.opened(), senders + 1);
}

/// A fake sysfs tree with core `remoteproc0` running, laid out as Linux 6.12 lays it out
/// (remoteproc-vm/tests/sysfs.rs has the whole tree): returns the core's class path and the
/// sysfs root.
fn fake_sysfs(dir: &Path) -> (PathBuf, PathBuf) {
    let sys = dir.join("sys");
    let core = sys.join("devices/platform/r5ss/remoteproc/remoteproc0");
    fs::create_dir_all(&core).unwrap();
    fs::write(core.join("state"), "running\n").unwrap();
    fs::write(core.join("name"), "r5f_0\n").unwrap();
    fs::create_dir_all(sys.join("class/remoteproc")).unwrap();
    let class = sys.join("class/remoteproc/remoteproc0");
    symlink(&core, &class).unwrap();
    fs::create_dir_all(sys.join("bus/rpmsg/devices")).unwrap();
    (class, sys)
}

/// An rpmsg bus device of the core (`<core>/rproc-virtio.0.auto/virtio0/<dir>`), linked from
/// /sys/bus/rpmsg/devices.
fn fake_channel(sys: &Path, dir: &str, name: &str, src: &str, dst: &str) {
    let chan = sys.join(format!(
        "devices/platform/r5ss/remoteproc/remoteproc0/rproc-virtio.0.auto/virtio0/{dir}"
    ));
    fs::create_dir_all(&chan).unwrap();
    fs::write(chan.join("name"), format!("{name}\n")).unwrap();
    fs::write(chan.join("src"), format!("{src}\n")).unwrap();
    fs::write(chan.join("dst"), format!("{dst}\n")).unwrap();
    symlink(&chan, sys.join("bus/rpmsg/devices").join(dir)).unwrap();
}

#[test]
fn the_bridge_offers_the_channels_a_sysfs_tree_lists_and_adopts_a_running_core() {
    let hub = TestHub::start("hub-sysfs-tree", TOPOLOGY);
    let (class, sys) = fake_sysfs(hub.dir.path());
    fake_channel(&sys, "virtio0.rpmsg_ns.53.53", "rpmsg_ns", "0x35", "0x35");
    fake_channel(
        &sys,
        "virtio0.rpmsg_ctrl.0.0",
        "rpmsg_ctrl",
        "0xffffffff",
        "0xffffffff",
    );
    fake_channel(
        &sys,
        "virtio0.rpmsg-client-sample.-1.1024",
        "rpmsg-client-sample",
        "0xffffffff",
        "0x400",
    );
    let mut core = SysfsRemote::at(&class)
        .with_sysfs_root(&sys)
        .with_dev_dir(hub.dir.path().join("dev"));
    let spec = hub.hub.topology().remotes[0].clone();
    // Running already: adopted, nothing written.
    start_or_adopt(&mut core, &spec).unwrap();
    assert_eq!(
        fs::read_to_string(class.join("state")).unwrap(),
        "running\n"
    );
    let id = hub.hub.topology().link_index("r5-0").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(Mutex::new(BridgeStatus::default()));
    let (shared, theirs, st) = (hub.hub.clone(), stop.clone(), status.clone());
    let bridge = std::thread::spawn(move || {
        run_bridge(&shared, id, "r5-0", &mut core, &theirs, &st).unwrap();
    });
    let mut domu = hub.connect(0);
    let mut inbox = Inbox::default();
    bind_announced(&mut domu, &mut inbox, "rpmsg-client-sample");
    // The kernel's own devices (name service, control) are not the core's channels.
    assert_eq!(status.lock().unwrap().channels, ["rpmsg-client-sample"]);
    // The channel leaves the bus (the core stopped): withdrawn from domu.
    fs::remove_file(sys.join("bus/rpmsg/devices/virtio0.rpmsg-client-sample.-1.1024")).unwrap();
    pump(&mut domu, &mut inbox, "the channel withdrawn", |i| {
        !i.destroyed.is_empty()
    });
    stop.store(true, Ordering::Release);
    bridge.join().unwrap();
}

#[test]
fn a_core_out_of_buffers_costs_no_message_and_keeps_its_channel() {
    let kernel = FakeKernel::with_channels(&CHANNELS);
    let setup = Setup::start(&kernel);
    let mut domu = setup.hub.connect(0);
    let mut inbox = Inbox::default();
    let (ept, addr) = bind_announced(&mut domu, &mut inbox, "rpmsg-client-sample");
    check_echo(&mut domu, &mut inbox, ept, addr, b"before");
    kernel.out_of_buffers(true);
    for i in 0..50 {
        domu.rpmsg().send(ept, &sized_payload(i)).unwrap();
    }
    // The bridge meets the full kernel (nothing can come back meanwhile).
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        domu.poll(&mut inbox).unwrap();
        domu.wait(Duration::from_millis(20));
    }
    assert!(inbox.messages.is_empty());
    assert!(
        inbox.destroyed.is_empty(),
        "withdrawn: {:?}",
        inbox.destroyed
    );
    kernel.out_of_buffers(false);
    pump(&mut domu, &mut inbox, "50 echoes", |i| {
        i.messages.len() == 50
    });
    for i in 0..50 {
        let (to, from, _, data) = inbox.messages.pop_front().unwrap();
        assert_eq!((to, from), (ept, addr));
        assert_eq!(data, sized_payload(i), "echo {i}");
    }
    assert_eq!(setup.status().withdrawals, 0);
}

#[test]
fn a_core_flooding_a_slow_guest_loses_nothing() {
    let kernel = FakeKernel::with_channels(&CHANNELS);
    let setup = Setup::start(&kernel);
    let mut domu = setup.hub.connect(0);
    let mut inbox = Inbox::default();
    let (ept, addr) = bind_announced(&mut domu, &mut inbox, "rpmsg-client-sample");
    domu.rpmsg().send(ept, FLOOD).unwrap();
    // The guest takes nothing for a while (well within the hub's pending timeout): the
    // guest's ring, the hub's queue and the bridge's backlog fill; the rest waits in the kernel.
    std::thread::sleep(Duration::from_secs(1));
    pump(&mut domu, &mut inbox, "the whole flood", |i| {
        i.messages.len() == FLOOD_COUNT as usize
    });
    for i in 0..FLOOD_COUNT {
        let (to, from, _, data) = inbox.messages.pop_front().unwrap();
        assert_eq!((to, from), (ept, addr));
        assert_eq!(data, flood_payload(i), "message {i} of the flood");
    }
}
