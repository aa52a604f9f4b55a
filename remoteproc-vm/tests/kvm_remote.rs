//! The lifecycle over the KVM backend with the built-in firmware (skipped without /dev/kvm):
//! load, start, rpmsg echo through the vdev, crash, recover, exit.

use std::time::{Duration, Instant};
use vamp_remoteproc::image::ImageSource;
use vamp_remoteproc::kvm::{KvmOptions, KvmRemote, kvm_available};
use vamp_remoteproc::remoteproc::{RemoteEvent, RemoteRpmsg, RemoteState, Remoteproc};
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::rpmsg::{EptId, Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::{BufferConfig, Transport};
use vamp_rpmsg::wire::ADDR_ANY;

#[derive(Default)]
struct Host {
    announced: Vec<(Vec<u8>, u32)>,
    messages: Vec<Vec<u8>>,
}

impl<T: Transport> Handler<T> for Host {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        self.messages.push(rpmsg.payload(msg).unwrap());
    }
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, e: NsEvent<'_>) {
        if let NsEvent::Created { name, addr, .. } = e {
            self.announced.push((name.to_vec(), addr));
        }
    }
}

fn remote(image: &str) -> Option<Remoteproc<KvmRemote>> {
    if let Err(e) = kvm_available() {
        eprintln!("skipped: {e}");
        return None;
    }
    let bytes = vamp_remoteproc::images::builtin(image)?;
    let mut rp = Remoteproc::new(KvmRemote::new(KvmOptions::default()).unwrap());
    rp.load_source(ImageSource::Static(bytes)).unwrap();
    Some(rp)
}

/// Waits for `channel`, binds to it.
fn bind<M: SharedMemory>(host: &mut RemoteRpmsg<M>, h: &mut Host, channel: &[u8]) -> EptId {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        host.poll(h).unwrap();
        if let Some((_, addr)) = h.announced.iter().find(|(n, _)| n == channel) {
            return host.create_ept(channel, ADDR_ANY, *addr).unwrap();
        }
        assert!(Instant::now() < deadline, "{channel:?} never announced");
        host.transport_mut().environment().wait(10_000);
    }
}

fn echo<M: SharedMemory>(host: &mut RemoteRpmsg<M>, h: &mut Host, ept: EptId, count: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..count {
        let msg = format!("echo {i}").into_bytes();
        host.send(ept, &msg).unwrap();
        while h.messages.is_empty() {
            assert!(Instant::now() < deadline, "no echo of message {i}");
            host.poll(h).unwrap();
            if h.messages.is_empty() {
                host.transport_mut().environment().wait(10_000);
            }
        }
        assert_eq!(h.messages.pop().unwrap(), msg);
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
    let mut host = rp.create_virtio(0, BufferConfig::default()).unwrap();
    let mut h = Host::default();
    let ept = bind(&mut host, &mut h, b"rpmsg-openamp-demo-channel");
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
    let mut host = rp.create_virtio(0, BufferConfig::default()).unwrap();
    let mut h = Host::default();
    let ept = bind(&mut host, &mut h, b"vamp-fault");
    echo(&mut host, &mut h, ept, 10);
    host.send(ept, b"crash").unwrap();
    assert!(matches!(wait_event(&mut rp), RemoteEvent::Crashed(_)));
    assert_eq!(rp.state(), RemoteState::Crashed);
    drop(host);

    rp.recover().unwrap();
    assert_eq!((rp.state(), rp.restarts()), (RemoteState::Running, 1));
    let mut host = rp.create_virtio(0, BufferConfig::default()).unwrap();
    let mut h = Host::default();
    let ept = bind(&mut host, &mut h, b"vamp-fault");
    echo(&mut host, &mut h, ept, 10);
    host.send(ept, b"exit").unwrap();
    assert_eq!(wait_event(&mut rp), RemoteEvent::Exited(3));
    assert_eq!(rp.state(), RemoteState::Stopped);
}
