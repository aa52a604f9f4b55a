//! What tests of the engine and of everything built on it share, in one place:
//!
//! - [`TestEnv`]: a dummy [`Environment`] that counts notifications and keeps a fake clock;
//! - [`Loopback`]: an in-memory link between two engines (a driver and a device over one
//!   [`HeapMemory`]), laid out as a vdev with two rings and a buffer pool;
//! - [`Recorder`]: a handler that records everything delivered, and may echo or hold;
//! - test doubles of how other rpmsg stacks behave on the wire (below), so vamp's roles are
//!   tested against the rules those stacks follow and not only against vamp itself.
//!
//! Compiled for the engine's own unit tests, and for other crates with the `testing` feature.
//!
//! # OpenAMP's driver-role transmit rule
//!
//! A model written from reading open-amp's `rpmsg_virtio_get_tx_buffer` and
//! `rpmsg_virtio_send_offchannel_nocopy`, not a copy of them. OpenAMP's driver (host/master):
//! - takes a buffer given back unused first, then one recycled from vq 1's used ring, and a
//!   fresh pool buffer only when the used ring is empty;
//! - takes a recycled buffer's size from the used element's length;
//! - posts each transmit descriptor with the whole buffer's size, not the message's.
//!
//! So a device that returns driver-to-device buffers with a used length smaller than the
//! buffer (0, say) leaves such a driver without room: OpenAMP computes a negative room and
//! sends a bogus length; this double refuses the send with
//! [`TooLarge`](crate::rpmsg::Error::TooLarge), which a test sees just as well.
//! Linux's driver ignores the used length of its transmit buffers.
//!
//! The rule lives in [`DriverTransport`] behind
//! [`set_openamp_tx_rule`](DriverTransport::set_openamp_tx_rule), so a driver embedded in
//! another type (a native guest of the hub, say) can follow it too.

use crate::mem::HeapMemory;
use crate::rpmsg::{Config, Dropped, EptId, Handler, HeldRx, NsEvent, Received, Rpmsg};
use crate::transport::{
    BufferConfig, DeviceRings, DeviceTransport, DriverLayout, DriverTransport, Environment,
    RingFormat, Transport,
};
use crate::vring::VringLayout;
use crate::wire::Endian;
use alloc::rc::Rc;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::Cell;

/// A driver transport that follows OpenAMP's driver-role transmit rule (see the module).
#[cfg(feature = "testing")]
pub type OpenAmpStyleDriver<M, E> = DriverTransport<M, E>;

/// Turns `transport` into an [`OpenAmpStyleDriver`].
#[cfg(feature = "testing")]
pub fn openamp_style<M: crate::mem::SharedMemory, E: Environment>(
    mut transport: DriverTransport<M, E>,
) -> OpenAmpStyleDriver<M, E> {
    transport.set_openamp_tx_rule(true);
    transport
}

/// A dummy environment: counts notifications per queue (0 and 1) and keeps a fake clock.
/// Waiting advances the clock by the whole timeout (nothing ever wakes it early), and every
/// reading by `tick_us` (0 unless made [`ticking`](Self::ticking)). Clones share the counts
/// and the clock, so a test keeps one while the engine owns the other.
#[derive(Debug, Clone, Default)]
pub struct TestEnv {
    /// Notifications sent on vq 0 and vq 1.
    pub kicks: Rc<Cell<[u32; 2]>>,
    /// The fake clock, in microseconds.
    pub clock: Rc<Cell<u64>>,
    tick_us: u64,
}

impl TestEnv {
    /// An environment whose clock also moves `tick_us` at every reading, so that anything
    /// bounded in time ends even when nothing waits.
    pub fn ticking(tick_us: u64) -> Self {
        TestEnv {
            tick_us,
            ..Self::default()
        }
    }
}

impl Environment for TestEnv {
    fn notify(&mut self, queue: u16) {
        let mut kicks = self.kicks.get();
        if let Some(k) = kicks.get_mut(usize::from(queue)) {
            *k += 1;
        }
        self.kicks.set(kicks);
    }

    fn wait(&mut self, timeout_us: u64) -> bool {
        self.clock.set(self.clock.get() + timeout_us);
        false
    }

    fn now_us(&mut self) -> u64 {
        self.clock.set(self.clock.get() + self.tick_us);
        self.clock.get()
    }
}

/// The driver (host) side of a [`Loopback`] link.
pub type LoopbackDriver = DriverTransport<Arc<HeapMemory>, TestEnv>;
/// The device (remote) side of a [`Loopback`] link.
pub type LoopbackDevice = DeviceTransport<Arc<HeapMemory>, TestEnv>;

/// An in-memory link between two engines: vamp's driver and device roles on one
/// [`HeapMemory`] of [`MEM_LEN`](Self::MEM_LEN) bytes, vq 0 at 0x4000, vq 1 at 0x8000 (rings
/// of up to 256 entries, split or packed) and the buffer pool from 0x10000 to the end.
#[derive(Debug, Clone, Copy)]
pub struct Loopback {
    /// Entries per ring (a power of two, at most 256).
    pub ring: u16,
    /// Buffer sizes in each direction.
    pub buffers: BufferConfig,
    /// Whether the rings use EVENT_IDX.
    pub event_idx: bool,
    /// The link's byte order.
    pub endian: Endian,
    /// The rings' format (packed rings go in the same areas as split ones).
    pub format: RingFormat,
}

impl Default for Loopback {
    /// Split rings of 256 with EVENT_IDX, default buffers, little-endian.
    fn default() -> Self {
        Loopback {
            ring: 256,
            buffers: BufferConfig::default(),
            event_idx: true,
            endian: Endian::Little,
            format: RingFormat::Split,
        }
    }
}

impl Loopback {
    /// Bytes of the shared memory.
    pub const MEM_LEN: usize = 0x80000;
    /// Where vq 0 (device to driver) lies.
    pub const VQ0: u64 = 0x4000;
    /// Where vq 1 (driver to device) lies.
    pub const VQ1: u64 = 0x8000;
    /// Where the buffer pool starts.
    pub const POOL: u64 = 0x10000;

    /// Where the rings and the pool lie.
    pub fn layout(&self) -> DriverLayout {
        DriverLayout {
            rx_ring: VringLayout::legacy(Self::VQ0, self.ring, 0x1000).expect("ring layout"),
            tx_ring: VringLayout::legacy(Self::VQ1, self.ring, 0x1000).expect("ring layout"),
            pool_addr: Self::POOL,
            pool_len: Self::MEM_LEN as u64 - Self::POOL,
            buffers: self.buffers,
        }
    }

    /// Both transports on fresh memory, with the environment each notifies through.
    pub fn transports(&self) -> (LoopbackDriver, LoopbackDevice, TestEnv, TestEnv) {
        let mem = Arc::new(HeapMemory::new(Self::MEM_LEN, 0));
        let (driver_env, device_env) = (TestEnv::default(), TestEnv::default());
        let layout = self.layout();
        let driver = DriverTransport::with_format(
            mem.clone(),
            driver_env.clone(),
            layout,
            self.endian,
            self.event_idx,
            self.format,
        )
        .expect("driver transport");
        let device = DeviceTransport::attach(
            mem,
            device_env.clone(),
            DeviceRings::fresh(layout.rx_ring, layout.tx_ring, self.format),
            self.endian,
            self.event_idx,
            self.buffers.r2h_buf_size,
        )
        .expect("device transport");
        (driver, device, driver_env, device_env)
    }

    /// An engine on each side (the same `config` for both).
    pub fn engines(
        &self,
        config: Config,
    ) -> (
        Rpmsg<LoopbackDriver>,
        Rpmsg<LoopbackDevice>,
        TestEnv,
        TestEnv,
    ) {
        let (driver, device, driver_env, device_env) = self.transports();
        (
            Rpmsg::new(driver, config),
            Rpmsg::new(device, config),
            driver_env,
            device_env,
        )
    }
}

/// A handler that records everything delivered: messages (endpoint, source, payload),
/// name-service events (name, address, created, bound or unbound endpoint) and drops. With
/// `echo` it sends every message back to its source; with `hold` it keeps the buffers.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Messages as (receiving endpoint, source address, payload).
    pub messages: Vec<(EptId, u32, Vec<u8>)>,
    /// Name-service events as (name, address, created (else destroyed), endpoint).
    pub ns: Vec<(Vec<u8>, u32, bool, Option<EptId>)>,
    /// Messages the engine dropped, and why.
    pub dropped: Vec<Dropped>,
    /// Echo every message to its source (a failed echo fails the test).
    pub echo: bool,
    /// Hold every received buffer (in `held`) instead of giving it back.
    pub hold: bool,
    /// The buffers held.
    pub held: Vec<HeldRx>,
}

impl Recorder {
    /// A recorder that echoes every message to its source.
    pub fn echoing() -> Self {
        Recorder {
            echo: true,
            ..Self::default()
        }
    }

    /// The address `name` was last announced at, unless it was withdrawn since.
    pub fn announced(&self, name: &[u8]) -> Option<u32> {
        let (_, addr, created, _) = self.ns.iter().rev().find(|(n, ..)| n == name)?;
        created.then_some(*addr)
    }
}

impl<T: Transport> Handler<T> for Recorder {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        let data = rpmsg.payload(msg).expect("payload of a delivered message");
        if self.echo {
            rpmsg.sendto(msg.ept, msg.src, &data).expect("echo");
        }
        if self.hold {
            self.held.push(rpmsg.hold_rx(msg));
        }
        self.messages.push((msg.ept, msg.src, data));
    }

    fn on_name_service(&mut self, _: &mut Rpmsg<T>, e: NsEvent<'_>) {
        match e {
            NsEvent::Created { name, addr, bound } => {
                self.ns.push((name.to_vec(), addr, true, bound))
            }
            NsEvent::Destroyed {
                name,
                addr,
                unbound,
            } => self.ns.push((name.to_vec(), addr, false, unbound)),
        }
    }

    fn on_dropped(&mut self, why: Dropped) {
        self.dropped.push(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ADDR_ANY;

    #[test]
    fn loopback_engines_talk_and_the_recorder_sees_it() {
        for format in [RingFormat::Split, RingFormat::Packed] {
            loopback_engines_talk_over(format);
        }
    }

    fn loopback_engines_talk_over(format: RingFormat) {
        let (mut host, mut remote, host_env, _) = Loopback {
            format,
            ..Loopback::default()
        }
        .engines(Config::default());
        assert_eq!(host.transport().ring_format(), format);
        assert_eq!(remote.transport().ring_format(), format);
        let svc = remote.create_ept(b"svc", ADDR_ANY, ADDR_ANY).unwrap();
        let mut seen = Recorder::default();
        host.poll(&mut seen).unwrap();
        let addr = seen.announced(b"svc").expect("announced");
        let ept = host.create_ept(b"svc", ADDR_ANY, addr).unwrap();
        host.send(ept, b"ping").unwrap();
        assert!(host_env.kicks.get()[1] > 0, "the host kicked vq 1");
        let mut echo = Recorder::echoing();
        remote.poll(&mut echo).unwrap();
        assert_eq!(echo.messages.len(), 1);
        host.poll(&mut seen).unwrap();
        assert_eq!(seen.messages.last().map(|m| &m.2[..]), Some(&b"ping"[..]));
        remote.destroy_ept(svc).unwrap();
        host.poll(&mut seen).unwrap();
        assert_eq!(seen.announced(b"svc"), None, "withdrawn");
    }

    #[test]
    fn a_ticking_clock_moves_at_every_reading() {
        let mut env = TestEnv::ticking(1000);
        assert_eq!(env.now_us(), 1000);
        assert!(!env.wait(500));
        assert_eq!(env.now_us(), 2500);
        assert_eq!(TestEnv::default().now_us(), 0);
    }
}
