//! Matrix multiply remote, as OpenAMP's demo: the host sends two matrices
//! `{ u32 size; u32 elements[6][6] }` in one message; the remote answers with their product.
//! Stops on OpenAMP's shutdown word or when the host withdraws the channel.
#![no_std]
#![no_main]

use vamp_firmware::{FirmwareEnv, FirmwareRpmsg, connect, firmware_main, println, trace};
use vamp_rpmsg::mem::RawMemory;
use vamp_rpmsg::rpmsg::{EptId, Handler, NsEvent, Received};
use vamp_rpmsg::transport::DeviceTransport;
use vamp_rpmsg::wire::ADDR_ANY;

vamp_firmware::resource_table!();
firmware_main!(main);

const SHUTDOWN_MSG: u32 = 0xEF56_A55A;
const MAX_SIZE: usize = 6;
const MATRIX_BYTES: usize = 4 + 4 * MAX_SIZE * MAX_SIZE;

struct Matrix {
    size: usize,
    elements: [[u32; MAX_SIZE]; MAX_SIZE],
}

impl Matrix {
    fn parse(b: &[u8]) -> Option<Matrix> {
        let word =
            |i: usize| u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        let size = word(0) as usize;
        if size > MAX_SIZE {
            return None;
        }
        let mut elements = [[0u32; MAX_SIZE]; MAX_SIZE];
        for (r, row) in elements.iter_mut().enumerate() {
            for (c, e) in row.iter_mut().enumerate() {
                *e = word(1 + r * MAX_SIZE + c);
            }
        }
        Some(Matrix { size, elements })
    }

    fn times(&self, other: &Matrix) -> Matrix {
        let n = self.size.min(other.size);
        let mut elements = [[0u32; MAX_SIZE]; MAX_SIZE];
        for (i, row) in elements.iter_mut().enumerate().take(n) {
            for (j, e) in row.iter_mut().enumerate().take(n) {
                *e = (0..n).fold(0u32, |acc, k| {
                    acc.wrapping_add(self.elements[i][k].wrapping_mul(other.elements[k][j]))
                });
            }
        }
        Matrix { size: n, elements }
    }

    fn encode(&self) -> [u8; MATRIX_BYTES] {
        let mut out = [0u8; MATRIX_BYTES];
        out[..4].copy_from_slice(&(self.size as u32).to_ne_bytes());
        for r in 0..MAX_SIZE {
            for c in 0..MAX_SIZE {
                let at = 4 + 4 * (r * MAX_SIZE + c);
                out[at..at + 4].copy_from_slice(&self.elements[r][c].to_ne_bytes());
            }
        }
        out
    }
}

struct Multiplier {
    channel: Option<EptId>,
    shutdown: bool,
}

impl Handler<DeviceTransport<RawMemory, FirmwareEnv>> for Multiplier {
    fn on_message(&mut self, rpmsg: &mut FirmwareRpmsg, msg: &mut Received) {
        let mut buf = [0u8; 2 * MATRIX_BYTES];
        let len = (msg.len as usize).min(buf.len());
        if rpmsg.read_payload(msg, 0, &mut buf[..len]).is_err() {
            return;
        }
        if len >= 4 && buf[..4] == SHUTDOWN_MSG.to_ne_bytes() {
            self.shutdown = true;
            return;
        }
        let product = match (len == 2 * MATRIX_BYTES)
            .then(|| Matrix::parse(&buf[..MATRIX_BYTES]).zip(Matrix::parse(&buf[MATRIX_BYTES..])))
            .flatten()
        {
            Some((a, b)) => a.times(&b),
            None => {
                println!(
                    "matrix: a message of {} bytes is not two 6x6 matrices",
                    msg.len
                );
                return;
            }
        };
        if let Err(e) = rpmsg.sendto(msg.ept, msg.src, &product.encode()) {
            println!("matrix: reply failed: {e}");
        }
    }

    fn on_name_service(&mut self, _: &mut FirmwareRpmsg, event: NsEvent<'_>) {
        if let NsEvent::Destroyed {
            unbound: Some(id), ..
        } = event
            && Some(id) == self.channel
        {
            self.shutdown = true;
        }
    }
}

fn main() -> u32 {
    let table = RESOURCE_TABLE_REF();
    trace(table, "matrix: waiting for the host");
    let mut rpmsg = connect(table);
    let mut m = Multiplier {
        channel: None,
        shutdown: false,
    };
    m.channel = rpmsg
        .create_ept(b"rpmsg-openamp-demo-channel", ADDR_ANY, ADDR_ANY)
        .ok();
    if let Err(e) = vamp_firmware::serve(table, &mut rpmsg, &mut m, |m| m.shutdown) {
        println!("matrix: link failed: {e}");
        return 1;
    }
    trace(table, "matrix: shutdown");
    0
}
