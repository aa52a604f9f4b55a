//! Echo remote: answers every message on "rpmsg-openamp-demo-channel" (OpenAMP's echo demo)
//! and "rpmsg-client-sample" (Linux's samples/rpmsg client) with the same bytes. Stops on
//! OpenAMP's shutdown word (0xEF56A55A) or when the host withdraws the channel.
#![no_std]
#![no_main]

use vamp_firmware::{FirmwareRpmsg, connect, firmware_main, println, trace};
use vamp_rpmsg::rpmsg::{EptId, Error, Handler, NsEvent, Received};
use vamp_rpmsg::transport::{DeviceTransport, RingFormat};
use vamp_rpmsg::wire::ADDR_ANY;

vamp_firmware::resource_table!();
firmware_main!(main);

const SHUTDOWN_MSG: u32 = 0xEF56_A55A;

struct Echo {
    channels: [Option<EptId>; 2],
    shutdown: bool,
    echoed: u64,
}

impl Handler<DeviceTransport<vamp_rpmsg::mem::RawMemory, vamp_firmware::FirmwareEnv>> for Echo {
    fn on_message(&mut self, rpmsg: &mut FirmwareRpmsg, msg: &mut Received) {
        let mut buf = [0u8; 512];
        let len = (msg.len as usize).min(buf.len());
        if rpmsg.read_payload(msg, 0, &mut buf[..len]).is_err() {
            return;
        }
        if len >= 4 && buf[..4] == SHUTDOWN_MSG.to_ne_bytes() {
            self.shutdown = true;
            return;
        }
        // Blocking send: waits (bounded) for the host to post a buffer.
        match rpmsg.sendto(msg.ept, msg.src, &buf[..len]) {
            Ok(_) => self.echoed += 1,
            Err(Error::Timeout) => println!("echo: no buffer from the host in time"),
            Err(e) => println!("echo: {e}"),
        }
    }

    fn on_name_service(&mut self, _: &mut FirmwareRpmsg, event: NsEvent<'_>) {
        if let NsEvent::Destroyed {
            unbound: Some(id), ..
        } = event
            && self.channels.contains(&Some(id))
        {
            self.shutdown = true;
        }
    }
}

fn main() -> u32 {
    let table = RESOURCE_TABLE_REF();
    trace(table, "echo: waiting for the host");
    let mut rpmsg = connect(table);
    // Which rings the host's choice gave (the platform entry's mode): tests read it back.
    trace(
        table,
        match rpmsg.transport().ring_format() {
            RingFormat::Split => "echo: split rings",
            RingFormat::Packed => "echo: packed rings",
        },
    );
    let mut echo = Echo {
        channels: [None, None],
        shutdown: false,
        echoed: 0,
    };
    for (i, name) in [&b"rpmsg-openamp-demo-channel"[..], b"rpmsg-client-sample"]
        .into_iter()
        .enumerate()
    {
        match rpmsg.create_ept(name, ADDR_ANY, ADDR_ANY) {
            Ok(id) => echo.channels[i] = Some(id),
            Err(e) => println!("echo: cannot create an endpoint: {e}"),
        }
    }
    trace(table, "echo: channels announced");
    if let Err(e) = vamp_firmware::serve(table, &mut rpmsg, &mut echo, |e| e.shutdown) {
        println!("echo: link failed: {e}");
        return 1;
    }
    for id in echo.channels.into_iter().flatten() {
        let _ = rpmsg.destroy_ept(id);
    }
    trace(table, "echo: shutdown");
    0
}
