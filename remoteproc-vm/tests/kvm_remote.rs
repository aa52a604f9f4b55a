//! The lifecycle over the KVM backend with the built-in firmware (skipped without /dev/kvm):
//! load, start, rpmsg echo through the vdev, crash, recover, exit; how the firmware waits
//! (busy-poll, the spin window of notify mode) and what that costs in exits.

mod common;

use common::{connect, idle};
use std::time::{Duration, Instant};
use vamp_remoteproc::backend::RemoteBackend;
use vamp_remoteproc::image::ImageSource;
use vamp_remoteproc::kvm::{
    KvmOptions, KvmRemote, KvmStats, PLATFORM_F_BUSY_POLL, PLATFORM_F_PACKED_RING,
    PLATFORM_F_WAIT_SPIN, PLATFORM_MAGIC, PLATFORM_MODE_PACKED_RING, PLATFORM_VERSION,
    kvm_available,
};
use vamp_remoteproc::remoteproc::{RemoteEvent, RemoteRpmsg, RemoteState, Remoteproc};
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::rpmsg::EptId;
use vamp_rpmsg::testing::Recorder;
use vamp_rpmsg::transport::RingFormat;
use vamp_rpmsg::wire::platform::{FEATURES_AT, MODE_AT};

/// The echo firmware's channel.
const DEMO: &[u8] = b"rpmsg-openamp-demo-channel";

fn remote(image: &str) -> Option<Remoteproc<KvmRemote>> {
    remote_with(image, KvmOptions::default())
}

/// The tests that count exits or spin take turns: the spinning remotes of other tests would
/// compete for this machine's CPUs and stretch the gaps these tests count.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn remote_with(image: &str, options: KvmOptions) -> Option<Remoteproc<KvmRemote>> {
    if let Err(e) = kvm_available() {
        eprintln!("skipped: {e}");
        return None;
    }
    let bytes = vamp_remoteproc::images::builtin(image)?;
    let mut rp = Remoteproc::new(KvmRemote::new(options).unwrap());
    rp.load_source(ImageSource::Static(bytes)).unwrap();
    Some(rp)
}

/// The built-in `image` with its platform entry's features replaced by `features` (as an older
/// firmware would declare them), loaded into a new remote.
fn remote_declaring(
    image: &str,
    features: u32,
    options: KvmOptions,
) -> Option<Remoteproc<KvmRemote>> {
    if let Err(e) = kvm_available() {
        eprintln!("skipped: {e}");
        return None;
    }
    let mut bytes = vamp_remoteproc::images::builtin(image)?.to_vec();
    // The entry's body in the ELF: magic, version, then the features word.
    let head: Vec<u8> = [PLATFORM_MAGIC, PLATFORM_VERSION]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let at = bytes
        .windows(head.len())
        .position(|w| w == head)
        .expect("the image has a platform entry")
        + FEATURES_AT;
    bytes[at..at + 4].copy_from_slice(&features.to_le_bytes());
    let mut rp = Remoteproc::new(KvmRemote::new(options).unwrap());
    rp.load_source(ImageSource::Bytes(bytes.into())).unwrap();
    Some(rp)
}

fn echo<M: SharedMemory>(host: &mut RemoteRpmsg<M>, h: &mut Recorder, ept: EptId, count: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..count {
        let msg = format!("echo {i}").into_bytes();
        host.send(ept, &msg).unwrap();
        while h.messages.is_empty() {
            assert!(Instant::now() < deadline, "no echo of message {i}");
            host.poll(h).unwrap();
            if h.messages.is_empty() {
                idle(host);
            }
        }
        assert_eq!(h.messages.pop().unwrap().2, msg);
    }
}

fn wait_event(rp: &mut Remoteproc<KvmRemote>) -> RemoteEvent {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rp.poll() {
            RemoteEvent::Idle => {}
            e => return e,
        }
        assert!(Instant::now() < deadline, "the remote kept running");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn echo_firmware_in_a_micro_vm() {
    let Some(mut rp) = remote("echo") else { return };
    rp.start().unwrap();
    let (mut host, mut h, ept) = connect(&mut rp, false, DEMO);
    echo(&mut host, &mut h, ept, 100);
    assert!(rp.trace(0).unwrap().contains("echo:"), "{:?}", rp.trace(0));
    assert_eq!(rp.poll(), RemoteEvent::Idle);
    rp.shutdown().unwrap();
    assert_eq!(rp.state(), RemoteState::Offline);
}

#[test]
fn crash_recover_and_exit() {
    let Some(mut rp) = remote("fault") else {
        return;
    };
    rp.start().unwrap();
    let (mut host, mut h, ept) = connect(&mut rp, false, b"vamp-fault");
    echo(&mut host, &mut h, ept, 10);
    host.send(ept, b"crash").unwrap();
    assert!(matches!(wait_event(&mut rp), RemoteEvent::Crashed(_)));
    assert_eq!(rp.state(), RemoteState::Crashed);
    drop(host);

    rp.recover().unwrap();
    assert_eq!((rp.state(), rp.restarts()), (RemoteState::Running, 1));
    let (mut host, mut h, ept) = connect(&mut rp, false, b"vamp-fault");
    echo(&mut host, &mut h, ept, 10);
    host.send(ept, b"exit").unwrap();
    assert_eq!(wait_event(&mut rp), RemoteEvent::Exited(3));
    assert_eq!(rp.state(), RemoteState::Stopped);
}

/// Starts the echo firmware in busy-poll mode (both sides) and binds to its channel.
fn busy_echo_remote(
    options: KvmOptions,
) -> Option<(
    Remoteproc<KvmRemote>,
    RemoteRpmsg<vamp_rpmsg::guest_ram::GuestRam>,
    Recorder,
    EptId,
)> {
    let mut rp = remote_with(
        "echo",
        KvmOptions {
            busy_poll: true,
            ..options
        },
    )?;
    let platform = rp
        .backend()
        .platform()
        .expect("the echo firmware has a platform entry");
    assert_ne!(platform.features & PLATFORM_F_BUSY_POLL, 0);
    rp.start().unwrap();
    let (host, h, ept) = connect(&mut rp, true, DEMO);
    Some((rp, host, h, ept))
}

/// The backend's figures before and after `n` echoes (sent after 10 that warm up).
fn stats_around_echoes<M: SharedMemory>(
    rp: &Remoteproc<KvmRemote>,
    host: &mut RemoteRpmsg<M>,
    h: &mut Recorder,
    ept: EptId,
    n: u32,
) -> (KvmStats, KvmStats) {
    echo(host, h, ept, 10);
    let before = rp.backend().stats();
    echo(host, h, ept, n);
    (before, rp.backend().stats())
}

fn delta(before: &KvmStats, after: &KvmStats) -> [u64; 5] {
    [
        after.vmm_exits - before.vmm_exits,
        after.wait_exits - before.wait_exits,
        after.rings - before.rings,
        after.kicks_taken - before.kicks_taken,
        after.sleeps - before.sleeps,
    ]
}

/// Busy-poll mode, chosen by the host before start (written into the firmware's platform
/// entry): the echo firmware spins on its rings, and a thousand echoes cost no exit to the
/// VMM, no wait, no kick from the remote and no ring from the host.
#[test]
fn busy_poll_echoes_without_exits() {
    let _turn = one_at_a_time();
    const N: u32 = 2000;
    let Some((mut rp, mut host, mut h, ept)) = busy_echo_remote(KvmOptions::default()) else {
        return;
    };
    echo(&mut host, &mut h, ept, 10);
    let doorbell = rp.doorbell();
    // Whatever the start-up signalled (announcements are sent before the firmware polls).
    doorbell.wait(Duration::ZERO);
    let before = rp.backend().stats();
    let host_kicks = host.transport_mut().env_mut().kicks();
    echo(&mut host, &mut h, ept, N);
    // A kick from the remote would be waiting in the doorbell: the busy host never took one.
    let kicked = doorbell.wait(Duration::ZERO);
    let after = rp.backend().stats();
    let [vmm_exits, waits, rings, kicks, _] = delta(&before, &after);
    assert_eq!(
        (vmm_exits, waits, rings, kicks, kicked),
        (0, 0, 0, 0, false),
        "exits to the VMM, waits, host rings, remote kicks while busy-polling: {after:?}"
    );
    assert_eq!(host.transport_mut().env_mut().kicks(), host_kicks);
    // (KVM's own exit count is no help here: it also counts every host interrupt and
    // preemption of the spinning vCPU, hundreds or thousands on a busy machine.)
    assert_eq!(rp.poll(), RemoteEvent::Idle);
    rp.shutdown().unwrap();
}

/// The same firmware in notify mode does exit: the host rings for every message and the
/// firmware kicks for every echo. What makes the test above able to fail.
#[test]
fn notify_mode_rings_and_kicks() {
    let _turn = one_at_a_time();
    const N: u32 = 200;
    let Some(mut rp) = remote_with(
        "echo",
        KvmOptions {
            wait_spin: Duration::ZERO,
            ..Default::default()
        },
    ) else {
        return;
    };
    rp.start().unwrap();
    let (mut host, mut h, ept) = connect(&mut rp, false, DEMO);
    let (before, after) = stats_around_echoes(&rp, &mut host, &mut h, ept, N);
    let [_, _, rings, kicks, _] = delta(&before, &after);
    assert!(rings >= u64::from(N), "{rings} rings for {N} messages");
    assert!(
        kicks >= u64::from(N) / 2,
        "{kicks} kicks taken for {N} echoes"
    );
    // Every kick is an exit (handled in the kernel, by the ioeventfd).
    if let (Some(a), Some(b)) = (before.kvm_exits, after.kvm_exits) {
        assert!(b - a >= kicks, "{} KVM exits for {kicks} kicks", b - a);
    }
    rp.shutdown().unwrap();
}

/// Notify mode with a spin window: while the host answers within the window, the firmware
/// takes each message without sleeping on the wait port (and the host need not ring).
#[test]
fn notify_mode_spins_before_it_waits() {
    let _turn = one_at_a_time();
    const N: u32 = 200;
    let Some(mut rp) = remote_with(
        "echo",
        KvmOptions {
            wait_spin: Duration::from_millis(10),
            ..Default::default()
        },
    ) else {
        return;
    };
    let platform = rp.backend().platform().expect("platform entry");
    assert_ne!(platform.features & PLATFORM_F_WAIT_SPIN, 0);
    rp.start().unwrap();
    let (mut host, mut h, ept) = connect(&mut rp, false, DEMO);
    let (before, after) = stats_around_echoes(&rp, &mut host, &mut h, ept, N);
    let [_, waits, _, kicks, _] = delta(&before, &after);
    // The host sleeps for every echo, so the firmware still kicks each one.
    assert!(
        kicks >= u64::from(N) / 2,
        "{kicks} kicks taken for {N} echoes"
    );
    // Without the window it waits after nearly every echo; with it, only when the host took
    // longer than 10 ms (descheduled on a busy machine).
    assert!(
        waits < u64::from(N) / 2,
        "{waits} waits for {N} echoes within a 10 ms window"
    );
    rp.shutdown().unwrap();
}

/// A busy-polling remote never exits, yet its heartbeat keeps the watchdog content while it
/// idles; a handler that hangs (no heartbeat) is still caught.
#[test]
fn busy_poll_heartbeat_and_watchdog() {
    let _turn = one_at_a_time();
    let options = KvmOptions {
        watchdog: Duration::from_millis(300),
        ..Default::default()
    };
    let Some((mut rp, mut host, mut h, ept)) = busy_echo_remote(options) else {
        return;
    };
    let exits = rp.backend().stats().vmm_exits;
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        rp.poll(),
        RemoteEvent::Idle,
        "console: {:?}",
        rp.take_console()
    );
    assert_eq!(
        rp.backend().stats().vmm_exits,
        exits,
        "the idle remote exited"
    );
    echo(&mut host, &mut h, ept, 10);
    rp.shutdown().unwrap();

    let Some(mut rp) = remote_with(
        "fault",
        KvmOptions {
            busy_poll: true,
            ..options
        },
    ) else {
        return;
    };
    rp.start().unwrap();
    let (mut host, mut h, ept) = connect(&mut rp, true, b"vamp-fault");
    echo(&mut host, &mut h, ept, 3);
    host.send(ept, b"hang").unwrap();
    match wait_event(&mut rp) {
        RemoteEvent::Crashed(why) => assert!(why.contains("watchdog"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// Busy-poll needs a firmware that says it can: a remote without the platform entry is not
/// started in that mode (it would sleep on its wait port while the host spins).
#[test]
fn busy_poll_needs_the_platform_entry() {
    if let Err(e) = kvm_available() {
        eprintln!("skipped: {e}");
        return;
    }
    let mut remote = KvmRemote::new(KvmOptions {
        busy_poll: true,
        ..Default::default()
    })
    .unwrap();
    // `jmp $`: no resource table at all.
    remote.memory().write(0x10_0000, &[0xeb, 0xfe]).unwrap();
    let err = remote.start(0x10_0000).unwrap_err();
    assert!(err.to_string().contains("busy-poll"), "{err}");
    remote.set_busy_poll(false);
    remote.start(0x10_0000).unwrap();
    remote.stop().unwrap();
}

/// Packed rings asked for by the host: the echo firmware declares them in its platform entry,
/// the host writes the mode, and both sides run them (the firmware's trace says which rings it
/// attached to), in notify and in busy-poll mode.
#[test]
fn echo_firmware_on_packed_rings() {
    for busy_poll in [false, true] {
        let _turn = busy_poll.then(one_at_a_time);
        let options = KvmOptions {
            ring_format: RingFormat::Packed,
            busy_poll,
            ..Default::default()
        };
        let Some(mut rp) = remote_with("echo", options) else {
            return;
        };
        let platform = rp.backend().platform().unwrap();
        assert_ne!(platform.features & PLATFORM_F_PACKED_RING, 0);
        rp.start().unwrap();
        assert_eq!(rp.backend().ring_format(), RingFormat::Packed);
        let mut mode = [0u8; 4];
        rp.memory()
            .read(platform.da + MODE_AT as u64, &mut mode)
            .unwrap();
        assert_ne!(u32::from_le_bytes(mode) & PLATFORM_MODE_PACKED_RING, 0);
        let (mut host, mut h, ept) = connect(&mut rp, busy_poll, DEMO);
        assert_eq!(host.transport().ring_format(), RingFormat::Packed);
        echo(&mut host, &mut h, ept, 500);
        let trace = rp.trace(0).unwrap();
        assert!(trace.contains("echo: packed rings"), "{trace}");
        assert_eq!(rp.poll(), RemoteEvent::Idle);
        drop(host);
        rp.shutdown().unwrap();
    }
}

/// A firmware that does not declare packed rings (an older one) gets split rings when the host
/// asks for packed ones, and echoes on them; so does every firmware by default.
#[test]
fn packed_rings_fall_back_to_split_for_a_firmware_without_them() {
    let asked = KvmOptions {
        ring_format: RingFormat::Packed,
        ..Default::default()
    };
    let older = PLATFORM_F_BUSY_POLL | PLATFORM_F_WAIT_SPIN;
    for (mut rp, what) in [
        (remote_declaring("echo", older, asked), "older firmware"),
        (
            remote_with("echo", KvmOptions::default()),
            "default options",
        ),
    ]
    .into_iter()
    .filter_map(|(rp, what)| Some((rp?, what)))
    {
        rp.start().unwrap();
        assert_eq!(rp.backend().ring_format(), RingFormat::Split, "{what}");
        let (mut host, mut h, ept) = connect(&mut rp, false, DEMO);
        assert_eq!(host.transport().ring_format(), RingFormat::Split, "{what}");
        echo(&mut host, &mut h, ept, 50);
        let trace = rp.trace(0).unwrap();
        assert!(trace.contains("echo: split rings"), "{what}: {trace}");
        drop(host);
        rp.shutdown().unwrap();
    }
}
