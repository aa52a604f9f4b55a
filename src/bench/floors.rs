//! The machine's floors: eventfd, futex and spin ping-pong between two processes, a windowed
//! echo over a plain shared-memory ring, `memcpy`, the engine's own copy and the clock read.
//! Both the measuring side and the peer side of each live here.

use super::clients::{BURSTS, Lat, lat_from, median};
use super::peer::{Peer, arg};
use super::sys::{Shm, close_fd, efd_read, efd_write, new_eventfd, pin};
use super::{RING_SLOTS, Res, SLOT_BYTES, STEP_TIMEOUT};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vamp_rpmsg::futex::{futex_wait, futex_wake};
use vamp_rpmsg::mem::HeapMemory;

// Offsets in the floors' shared memory: every word on its own pair of cache lines.
const PING: usize = 0;
const PONG: usize = 128;
const A_HEAD: usize = 256;
const A_TAIL: usize = 384;
const B_HEAD: usize = 512;
const B_TAIL: usize = 640;
const STOP: usize = 768;
const RING_A: usize = 4096;
const RING_B: usize = RING_A + RING_SLOTS as usize * SLOT_BYTES;
const FLOOR_SHM: usize = RING_B + RING_SLOTS as usize * SLOT_BYTES;
/// The ping value that ends a ping-pong peer.
const PING_STOP: u32 = u32::MAX;

pub(super) fn peer_eventfd(args: &[String]) -> Res<()> {
    let (ping, pong, cpu): (i32, i32, usize) = (
        arg(args, 0, "fd")?,
        arg(args, 1, "fd")?,
        arg(args, 2, "cpu")?,
    );
    pin(cpu);
    loop {
        if efd_read(ping) >= 2 {
            return Ok(());
        }
        efd_write(pong, 1);
    }
}

pub(super) fn peer_pingpong(args: &[String], spin: bool) -> Res<()> {
    let (fd, cpu): (i32, usize) = (arg(args, 0, "fd")?, arg(args, 1, "cpu")?);
    pin(cpu);
    let shm = Shm::map(fd, FLOOR_SHM)?;
    let (ping, pong) = (shm.word(PING), shm.word(PONG));
    let mut last = 0;
    loop {
        let v = ping.load(Ordering::Acquire);
        if v == last {
            if spin {
                std::hint::spin_loop();
            } else {
                futex_wait(ping, last, Duration::MAX);
            }
            continue;
        }
        if v == PING_STOP {
            return Ok(());
        }
        last = v;
        pong.store(v, Ordering::Release);
        if !spin {
            futex_wake(pong, 1);
        }
    }
}

/// Echoes records from ring A into ring B, copying each once, until told to stop.
pub(super) fn peer_ring(args: &[String]) -> Res<()> {
    let (fd, cpu, size): (i32, usize, usize) = (
        arg(args, 0, "fd")?,
        arg(args, 1, "cpu")?,
        arg(args, 2, "size")?,
    );
    pin(cpu);
    let shm = Shm::map(fd, FLOOR_SHM)?;
    let (a_head, a_tail) = (shm.word(A_HEAD), shm.word(A_TAIL));
    let (b_head, b_tail) = (shm.word(B_HEAD), shm.word(B_TAIL));
    let stop = shm.word(STOP);
    let size = size.min(SLOT_BYTES);
    let (mut tail, mut head) = (0u32, 0u32);
    loop {
        let avail = a_head.load(Ordering::Acquire);
        if avail == tail || head.wrapping_sub(b_tail.load(Ordering::Acquire)) >= RING_SLOTS {
            if stop.load(Ordering::Acquire) != 0 {
                return Ok(());
            }
            std::hint::spin_loop();
            continue;
        }
        let from = shm.slot(RING_A + (tail % RING_SLOTS) as usize * SLOT_BYTES, size);
        let to = shm.slot(RING_B + (head % RING_SLOTS) as usize * SLOT_BYTES, size);
        // SAFETY: both slots lie in the mapping; slot `tail` of A belongs to us until we
        // advance A's tail, slot `head` of B until we advance B's head (the indices are
        // published with release and read with acquire on both sides).
        unsafe { std::ptr::copy_nonoverlapping(from, to, size) };
        head = head.wrapping_add(1);
        b_head.store(head, Ordering::Release);
        tail = tail.wrapping_add(1);
        a_tail.store(tail, Ordering::Release);
    }
}

/// One floor figure.
#[derive(Debug, Clone)]
pub(super) struct Floor {
    pub(super) key: &'static str,
    pub(super) label: String,
    /// Round-trip latency, or `None` for per-operation figures.
    pub(super) lat: Option<Lat>,
    /// Cost per operation (per message for the ring, per copy for memcpy).
    pub(super) per_op_ns: Option<f64>,
    pub(super) error: Option<String>,
}

impl Floor {
    pub(super) fn value_ns(&self) -> Option<f64> {
        self.lat.map(|l| l.p50_ns).or(self.per_op_ns)
    }
}

pub(super) fn floor_eventfd(iters: usize, me: usize, peer: usize) -> Res<Lat> {
    let ping = new_eventfd(0)?;
    let pong = new_eventfd(0)?;
    let result = (|| {
        let p = Peer::spawn(&[
            "eventfd".into(),
            ping.to_string(),
            pong.to_string(),
            peer.to_string(),
        ])?;
        pin(me);
        let warm = iters / 10 + 10;
        let mut v = Vec::with_capacity(iters);
        for i in 0..warm + iters {
            let t0 = Instant::now();
            efd_write(ping, 1);
            efd_read(pong);
            if i >= warm {
                v.push(t0.elapsed().as_nanos() as u64);
            }
        }
        efd_write(ping, 2);
        p.finish()?;
        Ok(lat_from(v))
    })();
    close_fd(ping);
    close_fd(pong);
    result
}

pub(super) fn floor_pingpong(iters: usize, me: usize, peer: usize, spin: bool) -> Res<Lat> {
    let shm = Shm::create(FLOOR_SHM)?;
    let kind = if spin { "spin" } else { "futex" };
    let p = Peer::spawn(&[kind.into(), shm.fd().to_string(), peer.to_string()])?;
    pin(me);
    let (ping, pong) = (shm.word(PING), shm.word(PONG));
    let warm = iters / 10 + 10;
    let mut v = Vec::with_capacity(iters);
    let deadline = Instant::now() + STEP_TIMEOUT;
    for i in 0..(warm + iters) as u32 {
        let seq = i + 1;
        let t0 = Instant::now();
        ping.store(seq, Ordering::Release);
        if !spin {
            futex_wake(ping, 1);
        }
        loop {
            let got = pong.load(Ordering::Acquire);
            if got == seq {
                break;
            }
            if spin {
                std::hint::spin_loop();
                if Instant::now() > deadline {
                    return Err("spin peer does not answer".into());
                }
            } else {
                futex_wait(pong, got, Duration::MAX);
            }
        }
        if i as usize >= warm {
            v.push(t0.elapsed().as_nanos() as u64);
        }
    }
    ping.store(PING_STOP, Ordering::Release);
    futex_wake(ping, 1);
    p.finish()?;
    Ok(lat_from(v))
}

/// The windowed echo over a plain shared ring: the best any echo can do with the same window
/// and copies (the sender writes the record, the peer copies it into the reply ring, the
/// sender reads it back), busy-polling on two CPUs.
pub(super) fn floor_ring(
    msgs: usize,
    window: usize,
    size: usize,
    me: usize,
    peer: usize,
) -> Res<f64> {
    let shm = Shm::create(FLOOR_SHM)?;
    let p = Peer::spawn(&[
        "ring".into(),
        shm.fd().to_string(),
        peer.to_string(),
        size.to_string(),
    ])?;
    pin(me);
    let (a_head, a_tail) = (shm.word(A_HEAD), shm.word(A_TAIL));
    let (b_head, b_tail) = (shm.word(B_HEAD), shm.word(B_TAIL));
    let window = window.min(RING_SLOTS as usize) as u32;
    let payload = [0x5au8; SLOT_BYTES];
    let mut back = [0u8; SLOT_BYTES];
    let (mut sent, mut recv) = (0u32, 0u32);
    let mut run = |n: u32| -> Res<Duration> {
        let start = Instant::now();
        let end = recv + n;
        let first = sent;
        while recv < end {
            let mut progressed = false;
            while sent - first < n
                && sent.wrapping_sub(recv) < window
                && sent.wrapping_sub(a_tail.load(Ordering::Acquire)) < RING_SLOTS
            {
                let to = shm.slot(RING_A + (sent % RING_SLOTS) as usize * SLOT_BYTES, size);
                // SAFETY: the slot lies in the mapping and is ours: the peer has consumed it
                // (A's tail is past it), and it is published only by the store below.
                unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), to, size) };
                sent = sent.wrapping_add(1);
                a_head.store(sent, Ordering::Release);
                progressed = true;
            }
            let published = b_head.load(Ordering::Acquire);
            while recv != published {
                let from = shm.slot(RING_B + (recv % RING_SLOTS) as usize * SLOT_BYTES, size);
                // SAFETY: the slot lies in the mapping; the peer published it (B's head is past
                // it) and does not touch it until we advance B's tail.
                unsafe { std::ptr::copy_nonoverlapping(from, back.as_mut_ptr(), size) };
                recv = recv.wrapping_add(1);
                b_tail.store(recv, Ordering::Release);
                progressed = true;
            }
            if !progressed {
                std::hint::spin_loop();
                if start.elapsed() > STEP_TIMEOUT {
                    return Err("ring peer does not answer".into());
                }
            }
        }
        Ok(start.elapsed())
    };
    run((msgs / 10).max(100) as u32)?;
    let each = (msgs / BURSTS).max(1);
    let mut per_msg = Vec::with_capacity(BURSTS);
    for _ in 0..BURSTS {
        per_msg.push(run(each as u32)?.as_nanos() as f64 / each as f64);
    }
    std::hint::black_box(&back);
    shm.word(STOP).store(1, Ordering::Release);
    p.finish()?;
    Ok(median(per_msg))
}

/// ns per `memcpy` of `size` bytes between two cache-hot buffers.
pub(super) fn floor_memcpy(size: usize, iters: usize) -> f64 {
    let src = vec![0x3cu8; 4096];
    let mut dst = vec![0u8; 4096];
    assert!(size <= 1024);
    let (from, to) = (src.as_ptr(), dst.as_mut_ptr());
    let start = Instant::now();
    for i in 0..iters {
        let off = (i % 4) * 64;
        // SAFETY: `off + size` stays inside both 4096-byte buffers, which do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(from.add(off), to.add(off), std::hint::black_box(size))
        };
        std::hint::black_box(to);
    }
    let took = start.elapsed();
    std::hint::black_box(&mut dst);
    took.as_nanos() as f64 / iters as f64
}

/// ns per copy of `size` bytes the way the engine copies a message between two memories
/// (bounds-checked volatile copy, `mem::copy_between`).
pub(super) fn engine_copy(size: usize, iters: usize) -> f64 {
    let from = HeapMemory::new(4096, 0);
    let to = HeapMemory::new(4096, 0);
    let start = Instant::now();
    for i in 0..iters {
        let off = (i % 4) as u64 * 64;
        let _ = vamp_rpmsg::mem::copy_between(&from, off, &to, off, std::hint::black_box(size));
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

pub(super) fn clock_overhead() -> f64 {
    let n = 100_000;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(Instant::now());
    }
    start.elapsed().as_nanos() as f64 / n as f64
}
