//! An echo over an in-memory link, with only the engine's public API: a host (virtio driver
//! role) and a remote (device role) share one block of memory laid out as a vdev (two split
//! vrings and a buffer pool). The remote announces "echo", the host finds it through the name
//! service, sends three messages and checks every answer.
//!
//! Run: `cargo run -p vamp-rpmsg --example loopback_echo`
//!
//! Both engines run in one thread here, so nobody waits: each side polls after the other has
//! acted. A real transport plugs in an [`Environment`] that kicks the peer and sleeps until
//! kicked (an eventfd, an interrupt, a futex).

use std::sync::Arc;
use vamp_rpmsg::mem::HeapMemory;
use vamp_rpmsg::rpmsg::{Config, Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::{
    BufferConfig, DeviceTransport, DriverLayout, DriverTransport, Environment, Transport,
};
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::{ADDR_ANY, Endian};

/// Bytes of the shared memory: rings at 0x4000 and 0x8000, the buffer pool from 0x10000.
const MEM_LEN: usize = 0x80000;
/// Entries per ring.
const RING: u16 = 64;

/// The single-threaded environment: notifications are not needed (each side polls), and the
/// clock only bounds blocking sends, which never block here.
#[derive(Debug, Default)]
struct Polled {
    now_us: u64,
}

impl Environment for Polled {
    fn notify(&mut self, _queue: u16) {}

    fn now_us(&mut self) -> u64 {
        self.now_us += 1;
        self.now_us
    }
}

/// The remote's handler: sends every message back to where it came from.
struct Echo;

impl<T: Transport> Handler<T> for Echo {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        match rpmsg.payload(msg) {
            Ok(data) => {
                if let Err(e) = rpmsg.sendto(msg.ept, msg.src, &data) {
                    eprintln!("remote: echo failed: {e}");
                }
            }
            Err(e) => eprintln!("remote: unreadable message: {e}"),
        }
    }
}

/// The host's handler: remembers where "echo" was announced and what came back.
#[derive(Default)]
struct Client {
    echo_at: Option<u32>,
    answers: Vec<Vec<u8>>,
}

impl<T: Transport> Handler<T> for Client {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        if let Ok(data) = rpmsg.payload(msg) {
            self.answers.push(data);
        }
    }

    fn on_name_service(&mut self, _: &mut Rpmsg<T>, event: NsEvent<'_>) {
        if let NsEvent::Created { name, addr, .. } = event
            && name == b"echo"
        {
            self.echo_at = Some(addr);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mem = Arc::new(HeapMemory::new(MEM_LEN, 0));
    let buffers = BufferConfig::default();
    let layout = DriverLayout {
        rx_ring: VringLayout::legacy(0x4000, RING, 0x1000)?,
        tx_ring: VringLayout::legacy(0x8000, RING, 0x1000)?,
        pool_addr: 0x10000,
        pool_len: (MEM_LEN - 0x10000) as u64,
        buffers,
    };
    // The driver lays out the rings and posts its receive buffers; the device uses them.
    let driver =
        DriverTransport::new(mem.clone(), Polled::default(), layout, Endian::Little, true)?;
    let device = DeviceTransport::new(
        mem,
        Polled::default(),
        layout.rx_ring,
        layout.tx_ring,
        Endian::Little,
        true,
        buffers.r2h_buf_size,
    )?;
    let mut host = Rpmsg::new(driver, Config::default());
    let mut remote = Rpmsg::new(device, Config::default());

    // A named endpoint on the remote is announced to the host.
    remote.create_ept(b"echo", ADDR_ANY, ADDR_ANY)?;
    let mut client = Client::default();
    host.poll(&mut client)?;
    let addr = client
        .echo_at
        .ok_or("the host saw no announcement of \"echo\"")?;
    println!("host: \"echo\" announced at {addr:#x}");

    let ept = host.create_ept(b"echo", ADDR_ANY, addr)?;
    for request in [&b"hello"[..], b"from the host", &[0xa5; 400]] {
        host.send(ept, request)?;
        remote.poll(&mut Echo)?;
        host.poll(&mut client)?;
        let answer = client.answers.pop().ok_or("no echo")?;
        if answer != request {
            return Err("the echo differs from the request".into());
        }
        println!("host: {} bytes echoed", answer.len());
    }
    println!("all echoes matched");
    Ok(())
}
