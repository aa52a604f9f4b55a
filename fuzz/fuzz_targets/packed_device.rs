//! The device role of a packed virtqueue over ring memory the fuzzer writes: descriptors,
//! flags, ids, lengths, addresses and the driver's event structure are all hostile, and the
//! driver keeps writing while the device works.
//!
//! Drives a `PackedDeviceQueue` directly. Every chain it hands out has 1 to MAX_SEGMENTS
//! non-empty segments inside memory and an id below the queue size that is not already at
//! the device; a malformed chain that was consumed names such an id too, and it can always be
//! marked used; a fatal error consumes nothing (the position stays); every other error is an
//! error, never a panic or a loop (libFuzzer's timeout catches a loop).
//!
//! Input: a flags byte (bit 0 EVENT_IDX, bit 2 big-endian), the ring (size 1 to 64, three
//! addresses), the resume position, a count of op bytes, the op bytes, then the memory image
//! (8 KiB; what is missing is zero).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use vamp_fuzz::{Bytes, Flags};
use vamp_rpmsg::mem::{HeapMemory, SharedMemory};
use vamp_rpmsg::packed::{PackedDeviceQueue, PackedLayout};
use vamp_rpmsg::vring::{MAX_SEGMENTS, PopError};

const MEM: u64 = 8192;

/// A ring layout, mostly inside memory.
fn layout(b: &mut Bytes) -> Option<PackedLayout> {
    let size = 1 + u16::from(b.u8() % 64);
    let mut addr = |align: u64| (u64::from(b.u16()) % (MEM + 512)) & !(align - 1);
    let (desc, driver_event, device_event) = (addr(16), addr(4), addr(4));
    PackedLayout::new(size, desc, driver_event, device_event).ok()
}

/// The driver writes somewhere while the device works: mostly descriptor flags and ids.
fn poke(mem: &HeapMemory, ops: &mut Bytes) {
    let at = u64::from(ops.u16()) % MEM;
    match ops.u8() % 3 {
        0 => {
            let _ = mem.store_u16(at & !1, ops.u16());
        }
        1 => {
            let _ = mem.store_u32(at & !3, ops.u32());
        }
        _ => {
            let n = usize::from(ops.u8() % 32);
            let _ = mem.write(at, ops.take(n));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let flags = Flags(b.u8());
    let Some(ring) = layout(&mut b) else {
        return;
    };
    let start = b.u16();
    let n = usize::from(b.u8()) * 2;
    let mut ops = Bytes(b.take(n));
    let image = b.take(MEM as usize);

    let mem = HeapMemory::new(MEM as usize, 0);
    mem.write(0, image).expect("image fits");
    let Ok(mut q) = PackedDeviceQueue::new(&mem, ring, flags.endian(), flags.event_idx(), start)
    else {
        return;
    };
    // Ids at the device, in the order taken.
    let mut taken: Vec<u16> = Vec::new();
    let mut held = BTreeSet::new();
    while !ops.is_empty() {
        match ops.u8() % 6 {
            0 => {
                let before = q.next_avail();
                match q.pop(&mem) {
                    Ok(Some(chain)) => {
                        assert!(chain.head < ring.size);
                        let segments = chain.segments();
                        assert!(!segments.is_empty() && segments.len() <= MAX_SEGMENTS);
                        for s in segments {
                            assert!(s.len > 0);
                            assert!(mem.region(s.addr, s.len as usize).is_some());
                        }
                        assert!(
                            held.insert(chain.head),
                            "id {} handed out twice",
                            chain.head
                        );
                        taken.push(chain.head);
                    }
                    Ok(None) => assert_eq!(q.next_avail(), before),
                    Err(PopError { head: Some(id), .. }) => {
                        assert!(id < ring.size);
                        assert!(!held.contains(&id), "malformed chain under held id {id}");
                        q.push_used(&mem, id, 0)
                            .expect("a consumed chain goes back");
                    }
                    Err(PopError { head: None, .. }) => assert_eq!(q.next_avail(), before),
                }
            }
            1 => {
                if !taken.is_empty() {
                    let i = usize::from(ops.u8()) % taken.len();
                    let id = taken.remove(i);
                    held.remove(&id);
                    q.push_used(&mem, id, ops.u32())
                        .expect("a held id goes back");
                    assert!(q.push_used(&mem, id, 0).is_err(), "returned twice");
                }
            }
            2 => poke(&mem, &mut ops),
            3 => {
                let _ = (q.should_notify(&mem), q.has_avail(&mem), q.next_avail());
            }
            4 => {
                // Any id the device does not hold is refused.
                let id = ops.u16();
                if !held.contains(&id) {
                    assert!(q.push_used(&mem, id, ops.u32()).is_err());
                }
            }
            _ => {
                let _ = match ops.u8() % 3 {
                    0 => q.enable_kicks(&mem).map(|_| ()),
                    1 => q.disable_kicks(&mem),
                    _ => q.set_kick_suppression(&mem, ops.u8() & 1 == 0),
                };
            }
        }
    }
});
