//! A send to a remote that died returns an error at once, never silence and never the whole
//! send timeout (skipped without /dev/kvm).

mod common;

use common::wait_announced;
use std::time::{Duration, Instant};
use vamp_remoteproc::image::ImageSource;
use vamp_remoteproc::kvm::{KvmOptions, KvmRemote, kvm_available};
use vamp_remoteproc::remoteproc::{RemoteEvent, Remoteproc};
use vamp_rpmsg::rpmsg::Error;
use vamp_rpmsg::testing::Recorder;
use vamp_rpmsg::transport::BufferConfig;
use vamp_rpmsg::wire::ADDR_ANY;

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
    let mut h = Recorder::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let channel = wait_announced(&mut host, &mut h, b"vamp-fault", deadline).unwrap();
    let ept = host.create_ept(b"", ADDR_ANY, channel).unwrap();
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
