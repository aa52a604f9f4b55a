//! The matrix multiply firmware (OpenAMP's demo protocol) in a KVM micro-VM: two 6x6 matrices
//! `{ u32 size; u32 elements[6][6] }` in one message, their product back (skipped without
//! /dev/kvm).

mod common;

use common::{CHANNEL, connect, idle};
use std::time::{Duration, Instant};
use vamp_remoteproc::image::ImageSource;
use vamp_remoteproc::kvm::{KvmOptions, KvmRemote, kvm_available};
use vamp_remoteproc::remoteproc::Remoteproc;

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
    let (mut host, mut h, ept) = connect(&mut rp, false, CHANNEL);
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
        while h.messages.is_empty() {
            host.poll(&mut h).unwrap();
            assert!(Instant::now() < deadline, "no product for round {round}");
            idle(&mut host);
        }
        assert_eq!(h.messages.remove(0).2, encode(size, &want), "round {round}");
    }
    // A message that is not two matrices gets no answer; the remote keeps working.
    host.send(ept, b"garbage").unwrap();
    host.send(ept, &0xEF56_A55Au32.to_ne_bytes()).unwrap();
    drop(host);
    rp.shutdown().unwrap();
}
