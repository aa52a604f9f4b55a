//! The device role over guest memory the fuzzer writes: rings, descriptors, buffers and the
//! driver's indices are all hostile, and the driver keeps writing while the device works.
//!
//! Part one drives a `DeviceQueue` directly: every chain it hands out has 1 to MAX_SEGMENTS
//! non-empty segments inside memory and a head below the queue size; every error is an
//! error, never a panic. Part two runs the engine in the device role (`DeviceTransport`
//! under `Rpmsg`, as the hub and remote firmware do): polls, echoes, held buffers, sends,
//! zero-copy and announcements. Neither may panic or loop (libFuzzer's timeout catches a
//! loop).
//!
//! Input: a header (flags, both ring layouts, where each ring resumes), a count of op bytes,
//! the op bytes, then the memory image (8 KiB; what is missing is zero).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vamp_fuzz::{Bytes, Flags, drive_device_engine, env, poke};
use vamp_rpmsg::mem::{HeapMemory, SharedMemory};
use vamp_rpmsg::rpmsg::Rpmsg;
use vamp_rpmsg::transport::DeviceTransport;
use vamp_rpmsg::vring::{DeviceQueue, MAX_SEGMENTS, PopError, VringLayout};
use vamp_rpmsg::wire::{ADDR_ANY, Endian};

const MEM: u64 = 8192;

/// A ring layout, mostly inside memory (sizes 1 to 32).
fn layout(b: &mut Bytes) -> Option<VringLayout> {
    let size = 1u16 << (b.u8() % 6);
    let mut addr = |align: u64| (u64::from(b.u16()) % (MEM + 512)) & !(align - 1);
    let (desc, avail, used) = (addr(16), addr(2), addr(4));
    VringLayout::new(size, desc, avail, used).ok()
}

fn queue(image: &[u8], ring: VringLayout, endian: Endian, event_idx: bool, at: u16, ops: &[u8]) {
    let mem = HeapMemory::new(MEM as usize, 0);
    mem.write(0, image).expect("image fits");
    let Ok(mut q) = DeviceQueue::new(&mem, ring, endian, event_idx, at) else {
        return;
    };
    let mut ops = Bytes(ops);
    let mut taken = Vec::new();
    while !ops.is_empty() {
        match ops.u8() % 5 {
            0 => match q.pop(&mem) {
                Ok(Some(chain)) => {
                    assert!(chain.head < ring.size);
                    let segments = chain.segments();
                    assert!(!segments.is_empty() && segments.len() <= MAX_SEGMENTS);
                    for s in segments {
                        assert!(s.len > 0);
                        assert!(mem.region(s.addr, s.len as usize).is_some());
                    }
                    taken.push(chain.head);
                }
                Ok(None) => {}
                Err(PopError {
                    head: Some(head), ..
                }) => {
                    assert!(head < ring.size);
                    let _ = q.push_used(&mem, head, 0);
                }
                Err(PopError { head: None, .. }) => {}
            },
            1 => {
                if let Some(head) = taken.pop() {
                    let _ = q.push_used(&mem, head, ops.u32());
                }
            }
            2 => poke(&mem, MEM, &mut ops),
            3 => {
                let _ = (q.should_notify(&mem), q.has_avail(&mem), q.next_avail());
            }
            _ => {
                let _ = if ops.u8() & 1 == 0 {
                    q.enable_kicks(&mem).map(|_| ())
                } else {
                    q.disable_kicks(&mem)
                };
            }
        }
    }
}

fn engine(image: &[u8], rings: [VringLayout; 2], at: [u16; 2], flags: Flags, ops: &[u8]) {
    let mem = HeapMemory::new(MEM as usize, 0);
    mem.write(0, image).expect("image fits");
    let (endian, event_idx) = (flags.endian(), flags.event_idx());
    let Ok(t) = DeviceTransport::resume(&mem, env(), rings, at, endian, event_idx, 512) else {
        return;
    };
    let mut rpmsg = Rpmsg::new(t, flags.config());
    // Endpoint churn is this target's own op.
    drive_device_engine(&mut rpmsg, &mem, MEM, &mut Bytes(ops), |rpmsg, _| {
        if let Some(id) = rpmsg.endpoint_by_addr(1024) {
            let _ = rpmsg.destroy_ept(id);
        } else {
            let _ = rpmsg.create_ept(b"fuzz", 1024, ADDR_ANY);
        }
    });
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let flags = Flags(b.u8());
    let (Some(vq0), Some(vq1)) = (layout(&mut b), layout(&mut b)) else {
        return;
    };
    let at = [b.u16(), b.u16()];
    let n = usize::from(b.u8()) * 2;
    let ops = b.take(n);
    let image = b.take(MEM as usize);
    queue(image, vq1, flags.endian(), flags.event_idx(), at[1], ops);
    engine(image, [vq0, vq1], at, flags, ops);
});
