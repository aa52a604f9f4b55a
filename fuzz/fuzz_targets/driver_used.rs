//! The driver role facing a hostile device that writes the used rings (and the buffers it
//! was given): a remote's firmware seen from the hub, or any virtio device.
//!
//! Part one drives a `DriverQueue`: `pop_used` only ever returns a token that is in flight,
//! once, and the in-flight and free counts always add up to the queue size; a bad used entry
//! or index is an error, never a panic. Part two runs the engine in the driver role
//! (`DriverTransport` under `Rpmsg`, as the hub drives a remote's vdev) while the device
//! completes buffers with arbitrary ids and lengths and writes arbitrary message bytes.
//!
//! Input: flags, queue size, buffer sizes, a count of op bytes, the op bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use vamp_fuzz::{Bytes, Echo, Flags, env};
use vamp_rpmsg::mem::{HeapMemory, SharedMemory};
use vamp_rpmsg::rpmsg::Rpmsg;
use vamp_rpmsg::transport::{BufferConfig, DriverLayout, DriverTransport};
use vamp_rpmsg::vring::{DriverQueue, VringLayout};
use vamp_rpmsg::wire::{ADDR_ANY, Endian};

const MEM: u64 = 64 << 10;

/// What a device does to a used ring: completes an entry (id, length) and publishes it, or
/// writes any of the ring's words.
fn device_writes(mem: &HeapMemory, ring: &VringLayout, endian: Endian, ops: &mut Bytes) {
    let idx_at = ring.used + 2;
    let idx = endian.from_raw_u16(mem.load_u16(idx_at).unwrap_or(0));
    match ops.u8() % 4 {
        0 | 1 => {
            let slot = ring.used + 4 + 8 * u64::from(idx % ring.size);
            let id = u32::from(ops.u8() % (ring.size as u8).max(1).saturating_add(2));
            let _ = mem.store_u32(slot, endian.to_raw_u32(id));
            let _ = mem.store_u32(slot + 4, endian.to_raw_u32(ops.u32() % 1024));
            let _ = mem.store_u16(idx_at, endian.to_raw_u16(idx.wrapping_add(1)));
        }
        2 => {
            let at = ring.used + u64::from(ops.u16()) % ring.used_bytes();
            let _ = mem.store_u16(at & !1, ops.u16());
        }
        _ => {
            let at = u64::from(ops.u16()) % MEM;
            let n = usize::from(ops.u8() % 64);
            let _ = mem.write(at, ops.take(n));
        }
    }
}

fn queue(ring: VringLayout, endian: Endian, event_idx: bool, ops: &[u8]) {
    let mem = HeapMemory::new(MEM as usize, 0);
    let mut q = DriverQueue::new(&mem, ring, endian, event_idx).expect("ring fits");
    let mut ops = Bytes(ops);
    let mut in_flight = BTreeSet::new();
    let mut next_token = 0u32;
    while !ops.is_empty() {
        match ops.u8() % 5 {
            0 => {
                let addr = 0x8000 + 64 * u64::from(next_token % 64);
                if q.add(&mem, addr, 64, ops.u8() & 1 == 0, next_token).is_ok() {
                    in_flight.insert(next_token);
                    next_token += 1;
                }
            }
            1 => match q.pop_used(&mem) {
                Ok(Some((token, _len))) => {
                    assert!(in_flight.remove(&token), "token {token} was not in flight");
                }
                Ok(None) => {}
                // The device broke the protocol: a driver resets it.
                Err(_) => return,
            },
            2 => device_writes(&mem, &ring, endian, &mut ops),
            3 => {
                let _ = (q.should_kick(&mem), q.has_used(&mem));
            }
            _ => {
                let _ = if ops.u8() & 1 == 0 {
                    q.enable_interrupts(&mem).map(|_| ())
                } else {
                    q.disable_interrupts(&mem)
                };
            }
        }
        assert_eq!(usize::from(q.in_flight()), in_flight.len());
        assert_eq!(q.free_count() + in_flight.len(), usize::from(ring.size));
    }
}

fn engine(layout: DriverLayout, flags: Flags, ops: &[u8]) {
    let mem = HeapMemory::new(MEM as usize, 0);
    let endian = flags.endian();
    let Ok(t) = DriverTransport::new(&mem, env(), layout, endian, flags.event_idx()) else {
        return;
    };
    let mut rpmsg = Rpmsg::new(t, flags.config());
    let _ = rpmsg.create_ept(b"fuzz", 1024, ADDR_ANY);
    let mut echo = Echo::default();
    let mut ops = Bytes(ops);
    while !ops.is_empty() {
        match ops.u8() % 6 {
            0 => {
                let _ = rpmsg.poll(&mut echo);
            }
            1 => device_writes(&mem, &layout.rx_ring, endian, &mut ops),
            2 => device_writes(&mem, &layout.tx_ring, endian, &mut ops),
            3 => echo.release_all(&mut rpmsg),
            4 => {
                let n = usize::from(ops.u16() % 600);
                let _ = rpmsg.send_offchannel_raw(1024, ops.u32(), &vec![0x33; n], false);
            }
            _ => {
                if let Ok(tx) = rpmsg.get_tx_payload_buffer(false) {
                    let n = usize::from(ops.u16()) % (tx.capacity() + 2);
                    let _ = rpmsg.send_offchannel_nocopy(1024, 77, tx, n);
                }
            }
        }
        assert_eq!(rpmsg.held_rx_count(), echo.held.len());
    }
    echo.release_all(&mut rpmsg);
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let flags = Flags(b.u8());
    let size = 1u16 << (b.u8() % 6);
    let sizes = [b.u8(), b.u8()].map(|s| 16 + 16 * u32::from(s % 32));
    let n = usize::from(b.u16() % 2048);
    let ops = b.take(n);
    let rx_ring = VringLayout::legacy(0x0, size, 64).expect("valid");
    let tx_ring = VringLayout::legacy(0x1000, size, 64).expect("valid");
    queue(tx_ring, flags.endian(), flags.event_idx(), ops);
    let layout = DriverLayout {
        rx_ring,
        tx_ring,
        pool_addr: 0x2000,
        pool_len: MEM - 0x2000,
        buffers: BufferConfig {
            h2r_buf_size: sizes[0],
            r2h_buf_size: sizes[1],
        },
    };
    engine(layout, flags, ops);
});
