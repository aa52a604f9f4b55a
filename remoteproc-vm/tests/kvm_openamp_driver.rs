//! The echo firmware in a KVM micro-VM, driven by a host that picks transmit buffers as
//! OpenAMP's driver role does (recycled from the used ring first, sized by the used length):
//! the firmware's device role must return consumed buffers with their full length.
//! Skipped without /dev/kvm.

mod common;

use common::idle;
use std::time::{Duration, Instant};
use vamp_remoteproc::image::ImageSource;
use vamp_remoteproc::kvm::{KvmOptions, KvmRemote, kvm_available};
use vamp_remoteproc::remoteproc::Remoteproc;
use vamp_rpmsg::testing::Recorder;
use vamp_rpmsg::transport::BufferConfig;
use vamp_rpmsg::wire::ADDR_ANY;

/// Messages exchanged per channel: more than the 256 transmit buffers, so most sends reuse
/// a buffer the firmware returned.
const COUNT: u32 = 480;

fn exchange_on(channel: &[u8]) {
    if let Err(e) = kvm_available() {
        eprintln!("skipped: {e}");
        return;
    }
    let bytes = vamp_remoteproc::images::builtin("echo").unwrap();
    let mut rp = Remoteproc::new(KvmRemote::new(KvmOptions::default()).unwrap());
    rp.load_source(ImageSource::Static(bytes)).unwrap();
    rp.start().unwrap();
    let mut host = rp.create_virtio(0, BufferConfig::default()).unwrap();
    host.transport_mut().set_openamp_tx_rule(true);
    let mut h = Recorder::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        host.poll(&mut h).unwrap();
        if let Some(addr) = h.announced(channel) {
            break addr;
        }
        assert!(Instant::now() < deadline, "no announcement");
        idle(&mut host);
    };
    let ept = host.create_ept(channel, ADDR_ANY, addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..COUNT {
        let msg: Vec<u8> = (0..(i % 480 + 1) as usize)
            .map(|b| (b as u8) ^ (i as u8))
            .collect();
        host.send(ept, &msg)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        while h.messages.is_empty() {
            assert!(Instant::now() < deadline, "no echo of message {i}");
            host.poll(&mut h).unwrap();
            if h.messages.is_empty() {
                idle(&mut host);
            }
        }
        let (_, src, got) = h.messages.pop().unwrap();
        assert_eq!((src, got), (addr, msg), "message {i}");
    }
    rp.shutdown().unwrap();
}

#[test]
fn echo_firmware_serves_an_openamp_style_driver_on_the_demo_channel() {
    exchange_on(b"rpmsg-openamp-demo-channel");
}

#[test]
fn echo_firmware_serves_an_openamp_style_driver_on_the_sample_channel() {
    exchange_on(b"rpmsg-client-sample");
}
