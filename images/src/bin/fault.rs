//! A remote that fails on command, for crash detection and recovery: it echoes on
//! "vamp-fault" like the echo remote, and
//! - `crash` makes it touch memory no page maps (a fault: the VM stops, the host sees a crash);
//! - `hang` makes it spin without ever waiting (the host's watchdog fires);
//! - `exit` makes it stop with exit code 3.
#![no_std]
#![no_main]

use vamp_firmware::{FirmwareEnv, FirmwareRpmsg, connect, firmware_main, println, trace};
use vamp_rpmsg::mem::RawMemory;
use vamp_rpmsg::rpmsg::{Handler, Received};
use vamp_rpmsg::transport::DeviceTransport;
use vamp_rpmsg::wire::ADDR_ANY;

vamp_firmware::resource_table!();
firmware_main!(main);

struct Faulty;

impl Handler<DeviceTransport<RawMemory, FirmwareEnv>> for Faulty {
    fn on_message(&mut self, rpmsg: &mut FirmwareRpmsg, msg: &mut Received) {
        let mut buf = [0u8; 512];
        let len = (msg.len as usize).min(buf.len());
        if rpmsg.read_payload(msg, 0, &mut buf[..len]).is_err() {
            return;
        }
        match &buf[..len] {
            b"crash" => {
                println!("fault: crashing as asked");
                // SAFETY: deliberately not safe: no page maps 3 GiB, so this faults and the
                // VM stops. It is what this image is for.
                unsafe { (0xC000_0000 as *mut u64).write_volatile(1) };
            }
            b"hang" => {
                println!("fault: hanging as asked");
                loop {
                    core::hint::spin_loop();
                }
            }
            b"exit" => vamp_firmware::exit(3),
            data => {
                if let Err(e) = rpmsg.sendto(msg.ept, msg.src, data) {
                    println!("fault: echo failed: {e}");
                }
            }
        }
    }
}

fn main() -> u32 {
    let table = RESOURCE_TABLE_REF();
    trace(table, "fault: waiting for the host");
    let mut rpmsg = connect(table);
    if let Err(e) = rpmsg.create_ept(b"vamp-fault", ADDR_ANY, ADDR_ANY) {
        println!("fault: {e}");
        return 1;
    }
    match vamp_firmware::serve(table, &mut rpmsg, &mut Faulty, |_| false) {
        Ok(()) => 0,
        Err(e) => {
            println!("fault: link failed: {e}");
            1
        }
    }
}
