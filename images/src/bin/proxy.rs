//! Proxy client remote (OpenAMP's rpc_demo): announces "rpmsg-openamp-demo-channel", waits for
//! the host to bind to it, then does its console output and file I/O on the host through the
//! rpmsg proxy (see `vamp_rpmsg::wire::proxy`): a greeting to fd 1; a file created, written
//! in several messages, closed, reopened read-only, read back in chunks and checked, closed;
//! "proxy: OK" (or what failed) to fd 1; then the terminate call, and exit 0 (1 on failure).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt::Write as _;
use vamp_firmware::{FirmwareRpmsg, connect, firmware_main, println, trace};
use vamp_rpmsg::rpmsg::{EptId, Handler, NsEvent, Received};
use vamp_rpmsg::transport::DeviceTransport;
use vamp_rpmsg::wire::proxy::{
    CLOSE_SYSCALL_ID, O_CREAT, O_RDONLY, O_TRUNC, O_WRONLY, OPEN_SYSCALL_ID, READ_SYSCALL_ID,
    SYSCALL_HEADER_LEN, Syscall, TERM_SYSCALL_ID, WRITE_SYSCALL_ID,
};
use vamp_rpmsg::wire::{ADDR_ANY, Endian, HEADER_LEN};

vamp_firmware::resource_table!();
firmware_main!(main);

/// OpenAMP's rpc_demo channel.
const CHANNEL: &[u8] = b"rpmsg-openamp-demo-channel";
/// The file the demo writes and reads back, under the host's proxy root.
const FILE: &[u8] = b"proxy-test.txt\0";
/// Payload bytes per proxy message: what fits in one 512-byte rpmsg buffer.
const MAX_DATA: usize = 512 - HEADER_LEN - SYSCALL_HEADER_LEN;
/// Bytes asked for per read: not a divisor of the file's length, so the last read is short.
const READ_CHUNK: usize = 300;

/// The proxy client: the channel, and the reply to the call in flight.
struct Client {
    ept: Option<EptId>,
    bound: bool,
    gone: bool,
    reply: Option<Vec<u8>>,
}

impl Handler<DeviceTransport<vamp_rpmsg::mem::RawMemory, vamp_firmware::FirmwareEnv>> for Client {
    fn on_message(&mut self, rpmsg: &mut FirmwareRpmsg, msg: &mut Received) {
        if Some(msg.ept) != self.ept {
            return;
        }
        let mut buf = alloc::vec![0u8; msg.len as usize];
        if rpmsg.read_payload(msg, 0, &mut buf).is_ok() {
            self.reply = Some(buf);
        }
    }

    fn on_name_service(&mut self, _: &mut FirmwareRpmsg, event: NsEvent<'_>) {
        match event {
            NsEvent::Created {
                bound: Some(id), ..
            } if Some(id) == self.ept => self.bound = true,
            NsEvent::Destroyed {
                unbound: Some(id), ..
            } if Some(id) == self.ept => self.gone = true,
            _ => {}
        }
    }
}

/// The link and the client, with one method per system call.
struct Proxy {
    rpmsg: FirmwareRpmsg,
    client: Client,
}

type CallResult = Result<(i32, Vec<u8>), &'static str>;

impl Proxy {
    fn wait(&mut self, done: fn(&Client) -> bool) -> Result<(), &'static str> {
        vamp_firmware::serve(
            RESOURCE_TABLE_REF(),
            &mut self.rpmsg,
            &mut self.client,
            |c| done(c) || c.gone,
        )
        .map_err(|_| "the rpmsg link failed")?;
        if self.client.gone {
            return Err("the host withdrew the channel");
        }
        Ok(())
    }

    /// Sends one call and waits for its reply: (result, data).
    fn call(&mut self, call: Syscall<'_>) -> CallResult {
        let ept = self.client.ept.ok_or("no endpoint")?;
        let mut buf = [0u8; 512 - HEADER_LEN];
        let n = call
            .encode(&mut buf, Endian::NATIVE)
            .map_err(|_| "call too large")?;
        self.client.reply = None;
        self.rpmsg.send(ept, &buf[..n]).map_err(|_| "cannot send")?;
        self.wait(|c| c.reply.is_some())?;
        let reply = self.client.reply.take().unwrap_or_default();
        let msg = Syscall::parse(&reply, Endian::NATIVE).map_err(|_| "malformed reply")?;
        if !msg.is_reply_to(call.id) {
            return Err("reply to another call");
        }
        Ok((msg.int_field1, msg.data.to_vec()))
    }

    fn open(&mut self, path: &[u8], flags: i32, mode: i32) -> Result<i32, &'static str> {
        match self.call(Syscall::with_data(OPEN_SYSCALL_ID, flags, mode, path))? {
            (fd, _) if fd >= 0 => Ok(fd),
            _ => Err("open failed on the host"),
        }
    }

    fn close(&mut self, fd: i32) -> Result<(), &'static str> {
        match self.call(Syscall::new(CLOSE_SYSCALL_ID, fd, 0))? {
            (0, _) => Ok(()),
            _ => Err("close failed on the host"),
        }
    }

    /// Writes all of `data`, one message per [`MAX_DATA`] bytes.
    fn write_all(&mut self, fd: i32, data: &[u8]) -> Result<(), &'static str> {
        for chunk in data.chunks(MAX_DATA) {
            let n = chunk.len() as i32;
            match self.call(Syscall::with_data(WRITE_SYSCALL_ID, fd, n, chunk))? {
                (w, _) if w == n => {}
                _ => return Err("short or failed write on the host"),
            }
        }
        Ok(())
    }

    /// Reads up to `len` bytes.
    fn read(&mut self, fd: i32, len: usize) -> Result<Vec<u8>, &'static str> {
        match self.call(Syscall::new(READ_SYSCALL_ID, fd, len as i32))? {
            (n, data) if n >= 0 && n as usize == data.len() && data.len() <= len => Ok(data),
            _ => Err("read failed on the host"),
        }
    }

    fn say(&mut self, line: &str) -> Result<(), &'static str> {
        self.write_all(1, line.as_bytes())
    }
}

/// The file's content: numbered lines, several rpmsg buffers long.
fn payload() -> Vec<u8> {
    let mut text = alloc::string::String::new();
    for i in 0..40 {
        let _ = writeln!(
            text,
            "proxy line {i:02}: written by the remote through rpmsg, {} bytes so far",
            text.len()
        );
    }
    text.into_bytes()
}

fn demo(p: &mut Proxy) -> Result<(), &'static str> {
    let want = payload();
    let fd = p.open(FILE, O_CREAT | O_WRONLY | O_TRUNC, 0o644)?;
    p.write_all(fd, &want)?;
    p.close(fd)?;
    let fd = p.open(FILE, O_RDONLY, 0)?;
    let mut got = Vec::new();
    loop {
        let chunk = p.read(fd, READ_CHUNK)?;
        if chunk.is_empty() {
            break;
        }
        got.extend_from_slice(&chunk);
        if got.len() > want.len() {
            break;
        }
    }
    p.close(fd)?;
    if got != want {
        return Err("the file read back differs from what was written");
    }
    // A closed descriptor is refused.
    if p.call(Syscall::new(CLOSE_SYSCALL_ID, fd, 0))?.0 >= 0 {
        return Err("closing a closed descriptor succeeded");
    }
    Ok(())
}

fn main() -> u32 {
    let table = RESOURCE_TABLE_REF();
    trace(table, "proxy: waiting for the host");
    let mut rpmsg = connect(table);
    let ept = match rpmsg.create_ept(CHANNEL, ADDR_ANY, ADDR_ANY) {
        Ok(id) => id,
        Err(e) => {
            println!("proxy: cannot create the endpoint: {e}");
            return 2;
        }
    };
    let mut p = Proxy {
        rpmsg,
        client: Client {
            ept: Some(ept),
            bound: false,
            gone: false,
            reply: None,
        },
    };
    trace(table, "proxy: channel announced");
    // As OpenAMP's rpmsg_rpc_init: wait for the host's endpoint.
    if let Err(e) = p.wait(|c| c.bound) {
        println!("proxy: {e}");
        return 2;
    }
    let result = p
        .say("proxy: hello from the remote\n")
        .and_then(|()| demo(&mut p));
    let code = match result {
        Ok(()) => p.say("proxy: OK\n").map(|()| 0),
        Err(why) => {
            println!("proxy: FAILED: {why}");
            let mut line = alloc::string::String::new();
            let _ = writeln!(line, "proxy: FAILED: {why}");
            p.say(&line).map(|()| 1)
        }
    };
    let code = code.unwrap_or_else(|e| {
        println!("proxy: {e}");
        1
    });
    // The terminate call has no reply.
    let mut buf = [0u8; SYSCALL_HEADER_LEN];
    if Syscall::new(TERM_SYSCALL_ID, 0, 0)
        .encode(&mut buf, Endian::NATIVE)
        .is_ok()
    {
        let _ = p.rpmsg.send(ept, &buf);
    }
    let _ = p.rpmsg.destroy_ept(ept);
    trace(table, "proxy: done");
    code
}
