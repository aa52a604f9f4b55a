//! A send to a remote that died returns an error at once, never silence and never the whole
//! send timeout (skipped without /dev/kvm).

use std::time::{Duration, Instant};
use vamp_remoteproc::image::ImageSource;
use vamp_remoteproc::kvm::{KvmOptions, KvmRemote, kvm_available};
use vamp_remoteproc::remoteproc::{RemoteEvent, Remoteproc};
use vamp_rpmsg::rpmsg::{Error, Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::{BufferConfig, Transport};
use vamp_rpmsg::wire::ADDR_ANY;

#[derive(Default)]
struct Host {
    channel: Option<u32>,
}

impl<T: Transport> Handler<T> for Host {
    fn on_message(&mut self, _: &mut Rpmsg<T>, _: &mut Received) {}
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, e: NsEvent<'_>) {
        if let NsEvent::Created {
            name: b"vamp-fault",
            addr,
            ..
        } = e
        {
            self.channel = Some(addr);
        }
    }
}

#[test]
fn sends_to_a_crashed_remote_fail_at_once() {
    if let Err(why) = kvm_available() {
        eprintln!("skipped: sends_to_a_crashed_remote_fail_at_once: {why}");
        return;
    }
    let mut rp = Remoteproc::new(KvmRemote::new(KvmOptions::default()).unwrap());
    rp.load_source(ImageSource::Static(
        vamp_remoteproc::images::builtin("fault").unwrap(),
    ))
    .unwrap();
    rp.start().unwrap();
    let mut host = rp.create_virtio(0, BufferConfig::default()).unwrap();
    let mut h = Host::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.channel.is_none() {
        host.poll(&mut h).unwrap();
        assert!(Instant::now() < deadline, "vamp-fault never announced");
        host.transport_mut().environment().wait(10_000);
    }
    let ept = host.create_ept(b"", ADDR_ANY, h.channel.unwrap()).unwrap();
    host.send(ept, b"crash").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rp.poll() {
            RemoteEvent::Crashed(_) => break,
            RemoteEvent::Idle => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "the remote did not crash");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Fresh transmit buffers still go out (nobody will read them); once they are used up a
    // blocking send must fail at once with PeerGone, not wait out its 15 s bound.
    let t0 = Instant::now();
    let result = loop {
        match host.send(ept, b"anyone?") {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(result, Error::PeerGone);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(host.trysend(ept, b"x"), Err(Error::NoBuffer));
    drop(host);
    rp.stop().unwrap();
}
