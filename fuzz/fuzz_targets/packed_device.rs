//! The device role of a packed virtqueue over ring memory the fuzzer writes: descriptors,
//! flags, ids, lengths, addresses and the driver's event structure are all hostile, and the
//! driver keeps writing while the device works.
//!
//! Part one drives a `PackedDeviceQueue` directly. Every chain it hands out has 1 to
//! MAX_SEGMENTS non-empty segments inside memory and an id below the queue size that is not
//! already at the device; a malformed chain that was consumed names such an id too, and it can
//! always be marked used; a fatal error consumes nothing (the position stays); every other
//! error is an error, never a panic or a loop (libFuzzer's timeout catches a loop). Part two
//! runs the engine in the device role over packed rings (`DeviceTransport` under `Rpmsg`):
//! polls, echoes, held buffers, sends, zero copy and announcements.
//!
//! Input: a flags byte (`vamp_fuzz::Flags`), both rings (size 1 to 64, three addresses each),
//! where each resumes, a count of op bytes, the op bytes, then the memory image (8 KiB; what
//! is missing is zero).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use vamp_fuzz::{Bytes, Flags, drive_device_engine, env, poke};
use vamp_rpmsg::mem::{HeapMemory, SharedMemory};
use vamp_rpmsg::packed::{PackedDeviceQueue, PackedLayout};
use vamp_rpmsg::rpmsg::Rpmsg;
use vamp_rpmsg::transport::{DeviceRings, DeviceTransport, RingFormat};
use vamp_rpmsg::vring::{MAX_SEGMENTS, PopError, VringLayout};
use vamp_rpmsg::wire::Endian;

const MEM: u64 = 8192;

/// A ring's three areas, mostly inside memory.
fn layout(b: &mut Bytes) -> Option<PackedLayout> {
    let size = 1 + u16::from(b.u8() % 64);
    let mut addr = |align: u64| (u64::from(b.u16()) % (MEM + 512)) & !(align - 1);
    let (desc, driver_event, device_event) = (addr(16), addr(4), addr(4));
    PackedLayout::new(size, desc, driver_event, device_event).ok()
}

fn queue(
    image: &[u8],
    ring: PackedLayout,
    endian: Endian,
    event_idx: bool,
    start: u16,
    ops: &[u8],
) {
    let mem = HeapMemory::new(MEM as usize, 0);
    mem.write(0, image).expect("image fits");
    let Ok(mut q) = PackedDeviceQueue::new(&mem, ring, endian, event_idx, start) else {
        return;
    };
    let mut ops = Bytes(ops);
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
            2 => poke(&mem, MEM, &mut ops),
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
}

fn engine(image: &[u8], rings: DeviceRings, flags: Flags, ops: &[u8]) {
    let mem = HeapMemory::new(MEM as usize, 0);
    mem.write(0, image).expect("image fits");
    let (endian, event_idx) = (flags.endian(), flags.event_idx());
    let Ok(t) = DeviceTransport::attach(&mem, env(), rings, endian, event_idx, 512) else {
        return;
    };
    let mut rpmsg = Rpmsg::new(t, flags.config());
    // Busy-poll on and off is this target's own op.
    drive_device_engine(&mut rpmsg, &mem, MEM, &mut Bytes(ops), |rpmsg, ops| {
        let on = ops.u8() & 1 == 0;
        let _ = rpmsg.transport_mut().set_busy_poll(on);
    });
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let flags = Flags(b.u8());
    let (Some(vq0), Some(vq1)) = (layout(&mut b), layout(&mut b)) else {
        return;
    };
    let start = [b.u16(), b.u16()];
    let n = usize::from(b.u8()) * 2;
    let ops = b.take(n);
    let image = b.take(MEM as usize);
    queue(image, vq1, flags.endian(), flags.event_idx(), start[1], ops);
    // The transport takes the areas as a split layout (a power-of-two size).
    let areas = |l: PackedLayout| {
        VringLayout::new(
            l.size.next_power_of_two(),
            l.desc,
            l.driver_event,
            l.device_event,
        )
    };
    if let (Ok(a0), Ok(a1)) = (areas(vq0), areas(vq1)) {
        let rings = DeviceRings {
            areas: [a0, a1],
            next_avail: start,
            format: RingFormat::Packed,
        };
        engine(image, rings, flags, ops);
    }
});
