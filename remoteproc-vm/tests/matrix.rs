//! The matrix multiply firmware (OpenAMP's demo protocol) in a KVM micro-VM: two 6x6 matrices
//! `{ u32 size; u32 elements[6][6] }` in one message, their product back (skipped without
//! /dev/kvm).

use std::time::{Duration, Instant};
use vamp_remoteproc::image::ImageSource;
use vamp_remoteproc::kvm::{KvmOptions, KvmRemote, kvm_available};
use vamp_remoteproc::remoteproc::Remoteproc;
use vamp_rpmsg::rpmsg::{Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::{BufferConfig, Transport};
use vamp_rpmsg::wire::ADDR_ANY;

const N: usize = 6;

fn encode(size: u32, m: &[[u32; N]; N]) -> Vec<u8> {
    let mut out = size.to_ne_bytes().to_vec();
    for row in m {
        for e in row {
            out.extend_from_slice(&e.to_ne_bytes());
        }
    }
    out
}

#[derive(Default)]
struct Host {
    channel: Option<u32>,
    replies: Vec<Vec<u8>>,
}

impl<T: Transport> Handler<T> for Host {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        self.replies.push(rpmsg.payload(msg).unwrap());
    }
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, e: NsEvent<'_>) {
        if let NsEvent::Created {
            name: b"rpmsg-openamp-demo-channel",
            addr,
            ..
        } = e
        {
            self.channel = Some(addr);
        }
    }
}

#[test]
fn matrix_remote_multiplies() {
    if let Err(why) = kvm_available() {
        eprintln!("skipped: matrix_remote_multiplies: {why}");
        return;
    }
    let mut rp = Remoteproc::new(KvmRemote::new(KvmOptions::default()).unwrap());
    rp.load_source(ImageSource::Static(
        vamp_remoteproc::images::builtin("matrix").unwrap(),
    ))
    .unwrap();
    rp.start().unwrap();
    let mut host = rp.create_virtio(0, BufferConfig::default()).unwrap();
    let mut h = Host::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.channel.is_none() {
        host.poll(&mut h).unwrap();
        assert!(
            Instant::now() < deadline,
            "the matrix channel was never announced"
        );
        host.transport_mut().environment().wait(10_000);
    }
    let ept = host
        .create_ept(b"rpmsg-openamp-demo-channel", ADDR_ANY, h.channel.unwrap())
        .unwrap();
    for round in 0..50u32 {
        let size = 1 + round % N as u32;
        let mut a = [[0u32; N]; N];
        let mut b = [[0u32; N]; N];
        for i in 0..N {
            for j in 0..N {
                a[i][j] = (i as u32 * 7 + j as u32 + round) % 13;
                b[i][j] = (j as u32 * 5 + i as u32 * 3 + round) % 11;
            }
        }
        let mut want = [[0u32; N]; N];
        for i in 0..size as usize {
            for j in 0..size as usize {
                want[i][j] = (0..size as usize).map(|k| a[i][k] * b[k][j]).sum();
            }
        }
        let mut msg = encode(size, &a);
        msg.extend(encode(size, &b));
        host.send(ept, &msg).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.replies.is_empty() {
            host.poll(&mut h).unwrap();
            assert!(Instant::now() < deadline, "no product for round {round}");
            host.transport_mut().environment().wait(10_000);
        }
        assert_eq!(h.replies.remove(0), encode(size, &want), "round {round}");
    }
    // A message that is not two matrices gets no answer; the remote keeps working.
    host.send(ept, b"garbage").unwrap();
    host.send(ept, &0xEF56_A55Au32.to_ne_bytes()).unwrap();
    drop(host);
    rp.shutdown().unwrap();
}
