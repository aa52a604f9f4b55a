//! What the fuzz targets share: reading an input front to back, the flags byte that sets up
//! an engine, and the environment and handler the engine runs with.

use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::rpmsg::{Config, Handler, HeldRx, Received, Rpmsg};
use vamp_rpmsg::testing::TestEnv;
use vamp_rpmsg::transport::Transport;
use vamp_rpmsg::wire::{ADDR_ANY, Endian};

/// Bytes of the input, read front to back; missing ones read as zero.
#[derive(Debug)]
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// The next four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// The next `n` bytes, or as many as are left.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The flags byte of an engine target's input: bit 0 EVENT_IDX, bit 1 the name service, bit 2
/// big-endian, bit 3 binding an endpoint to the source of its first message.
#[derive(Debug, Clone, Copy)]
pub struct Flags(pub u8);

impl Flags {
    /// Whether the rings use EVENT_IDX.
    pub fn event_idx(self) -> bool {
        self.0 & 1 != 0
    }

    /// The link's byte order.
    pub fn endian(self) -> Endian {
        if self.0 & 4 == 0 {
            Endian::Little
        } else {
            Endian::Big
        }
    }

    /// The engine's configuration (sends never wait).
    pub fn config(self) -> Config {
        Config {
            name_service: self.0 & 2 != 0,
            send_timeout_us: 0,
            bind_on_first_message: self.0 & 8 != 0,
        }
    }
}

/// The environment every engine target runs with: its kicks are only counted and its clock
/// moves 1 ms a reading, so that anything bounded in time ends.
pub fn env() -> TestEnv {
    TestEnv::ticking(1000)
}

/// Echoes messages whose first byte is odd, holds the others (up to 8 at a time).
#[derive(Debug, Default)]
pub struct Echo {
    /// The buffers held.
    pub held: Vec<HeldRx>,
}

impl Echo {
    /// Hands every held buffer back to the engine.
    pub fn release_all<T: Transport>(&mut self, rpmsg: &mut Rpmsg<T>) {
        for held in self.held.drain(..) {
            let _ = rpmsg.release_rx(held);
        }
    }
}

impl<T: Transport> Handler<T> for Echo {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        let data = rpmsg.payload(msg).unwrap_or_default();
        if data.first().is_some_and(|b| b & 1 == 1) {
            let _ = rpmsg.trysendto(msg.ept, msg.src, &data);
        } else if self.held.len() < 8 {
            self.held.push(rpmsg.hold_rx(msg));
        }
    }
}

/// The driver writes somewhere in the first `mem_len` bytes of `mem` while the device works:
/// a u16, a u32 or up to 31 bytes, as `ops` says (the device-side targets' hostile peer).
pub fn poke<M: SharedMemory>(mem: &M, mem_len: u64, ops: &mut Bytes) {
    let at = u64::from(ops.u16()) % mem_len;
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

/// Runs the device-side engine over `ops` while the hostile driver pokes `mem` (the first
/// `mem_len` bytes): polls with [`Echo`], sends raw and zero-copy, releases held buffers,
/// flushes, and `own_op` (the one op a target adds: endpoint churn, busy-poll...). After every
/// op the engine's count of held buffers must match what the handler holds; at the end every
/// held buffer is handed back.
pub fn drive_device_engine<T: Transport, M: SharedMemory>(
    rpmsg: &mut Rpmsg<T>,
    mem: &M,
    mem_len: u64,
    ops: &mut Bytes,
    mut own_op: impl FnMut(&mut Rpmsg<T>, &mut Bytes),
) {
    let _ = rpmsg.create_ept(b"fuzz", 1024, ADDR_ANY);
    let _ = rpmsg.create_ept(b"", 1025, 1024);
    let mut echo = Echo::default();
    while !ops.is_empty() {
        match ops.u8() % 7 {
            0 => {
                let _ = rpmsg.poll(&mut echo);
            }
            1 => poke(mem, mem_len, ops),
            2 => echo.release_all(rpmsg),
            3 => {
                let dst = ops.u32();
                let n = usize::from(ops.u16() % 600);
                let _ = rpmsg.send_offchannel_raw(1024, dst, &vec![0x5a; n], false);
            }
            4 => {
                if let Ok(tx) = rpmsg.get_tx_payload_buffer(false) {
                    let n = usize::from(ops.u16() % 600);
                    let _ = tx.payload_address();
                    let _ = rpmsg.write_tx_payload(&tx, 0, &vec![0xa5; n.min(tx.capacity())]);
                    if ops.u8() & 1 == 0 {
                        let _ = rpmsg.send_offchannel_nocopy(1024, ops.u32(), tx, n);
                    } else {
                        rpmsg.release_tx_buffer(tx);
                    }
                }
            }
            5 => own_op(rpmsg, ops),
            _ => {
                let _ = rpmsg.flush_announcements();
                let _ = rpmsg.transport_mut().flush();
            }
        }
        assert_eq!(rpmsg.held_rx_count(), echo.held.len());
    }
    echo.release_all(rpmsg);
}
