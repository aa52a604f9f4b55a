//! The vhost-user control connection of a guest: device status and DEVICE_NEEDS_RESET.
//!
//! When a guest breaks the ring protocol the hub cuts its link until the device is reset
//! ([`Hub::is_broken`](crate::hub::Hub::is_broken)). virtio's answer is the DEVICE_NEEDS_RESET status bit (0x40) and a
//! configuration-change notification. vhost-user carries both: the device status with
//! `VHOST_USER_PROTOCOL_F_STATUS` (`SET_STATUS`/`GET_STATUS`), the notification as
//! `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` on the backend channel
//! (`VHOST_USER_PROTOCOL_F_BACKEND_REQ`, `SET_BACKEND_REQ_FD`). rust-vmm's vhost 0.18 and
//! vhost-user-backend 0.24 implement neither: their request handler refuses `SET_STATUS` and
//! `GET_STATUS` (and drops the connection), and their backend-channel sender has no
//! configuration-change message.
//!
//! So each frontend connection goes through this thread on its way to the daemon. It
//! forwards every message both ways unchanged (file descriptors included) except:
//!
//! - `GET_PROTOCOL_FEATURES`: STATUS and BACKEND_REQ are added to the daemon's answer, and
//!   removed again from `SET_PROTOCOL_FEATURES` before the daemon sees it;
//! - `SET_STATUS` and `GET_STATUS` are answered here: the status the frontend set, plus
//!   DEVICE_NEEDS_RESET while the hub holds the guest's link broken;
//! - `SET_BACKEND_REQ_FD`: the backend channel is kept here. When the guest's link breaks, a
//!   `CONFIG_CHANGE_MSG` goes out on it (once per break), asking for an acknowledgement when
//!   REPLY_ACK was negotiated; the answer is logged.
//!
//! The thread learns of a break at once: the hub tells the guest's notifier wherever it finds
//! one (in the guest's own kick, or while another guest's message was copied into it), and the
//! notifier wakes this thread ([`ResetNotice::wake`]). It also looks at the hub once a second,
//! which only matters if a wake-up were ever lost.
//!
//! What a frontend does with it is up to the frontend: vamp's own ([`crate::frontend`]) reads
//! the status and resets. QEMU 11 uses `GET_STATUS` only to add bits before a `SET_STATUS`
//! and never shows the backend's status to the guest, and its generic
//! `vhost-user-test-device` registers no configuration-change handler without a config space
//! (rpmsg has none): it refuses the message, and the guest is not told (README, Reliability).
//!
//! The control path only: kicks and interrupts go straight between the frontend and the
//! daemon's eventfds, never through here.

use crate::hub::LinkId;
use crate::hub::SharedHub;
use crate::sandbox::{self, ThreadKind};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use vamp_rpmsg::virtio::STATUS_NEEDS_RESET as VIRTIO_CONFIG_S_NEEDS_RESET;
use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures};
use vmm_sys_util::eventfd::{EFD_CLOEXEC, EFD_NONBLOCK, EventFd};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The backend channel's configuration-change message (`VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`).
pub const BACKEND_CONFIG_CHANGE_MSG: u32 = 2;

const HEADER: usize = 12;
/// The largest message body vhost-user allows (rust-vmm's limit too).
const MAX_BODY: usize = 0x1000;
/// File descriptors one message may carry (rust-vmm's limit).
const MAX_FDS: usize = 32;
const VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// How often the thread looks at the hub without being woken.
const LOOK: Duration = Duration::from_secs(1);

fn added_features() -> u64 {
    (VhostUserProtocolFeatures::STATUS | VhostUserProtocolFeatures::BACKEND_REQ).bits()
}

/// Wakes a guest's control thread to look at the hub now (the guest's link just broke).
#[derive(Debug)]
pub struct ResetNotice(EventFd);

impl ResetNotice {
    /// A notice (a non-blocking eventfd).
    pub fn new() -> io::Result<Self> {
        Ok(ResetNotice(EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?))
    }

    /// Wakes the control thread (one `write(2)`; never blocks).
    pub fn wake(&self) {
        let _ = self.0.write(1);
    }

    fn drain(&self) {
        let _ = self.0.read();
    }
}

/// A frontend connection relayed to the daemon by a control thread.
#[derive(Debug)]
pub struct Control {
    thread: Option<JoinHandle<()>>,
    frontend: UnixStream,
    daemon: UnixStream,
}

impl Control {
    /// Relays `frontend` (a connection accepted on the guest's socket) to a daemon: makes a
    /// private socket, lets `connect` connect the daemon to it (`VhostUserDaemon::start_client`),
    /// checks that the peer is this process, and starts the control thread.
    pub fn start(
        frontend: UnixStream,
        connect: impl FnOnce(&str) -> Result<(), vhost_user_backend::Error>,
        hub: SharedHub,
        id: LinkId,
        notice: Arc<ResetNotice>,
    ) -> io::Result<Control> {
        let daemon = connect_daemon(connect)?;
        let name = hub.topology().guests[id].name.clone();
        let proxy = Proxy {
            frontend: frontend.try_clone()?,
            daemon: daemon.try_clone()?,
            channel: None,
            notice,
            hub,
            id,
            name,
            acked: 0,
            status: 0,
            reported: None,
        };
        let thread = std::thread::Builder::new()
            .name("vhost-user-ctl".into())
            .spawn(move || {
                // Before the first byte from the frontend is read.
                sandbox::enter(ThreadKind::Control);
                proxy.run()
            })?;
        Ok(Control {
            thread: Some(thread),
            frontend,
            daemon,
        })
    }

    /// Ends the relay (both connections shut down) and waits for the thread.
    pub fn close(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        let _ = self.frontend.shutdown(std::net::Shutdown::Both);
        let _ = self.daemon.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Removes the private socket directory however the set-up ends.
struct PrivateDir(PathBuf);

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lets the daemon connect to a private socket and returns our end of that connection.
fn connect_daemon(
    connect: impl FnOnce(&str) -> Result<(), vhost_user_backend::Error>,
) -> io::Result<UnixStream> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vamp-ctl-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let dir = PrivateDir(dir);
    let path = dir.0.join("daemon.sock");
    let listener = UnixListener::bind(&path)?;
    let path_str = path
        .to_str()
        .ok_or_else(|| io::Error::other(format!("{} is not UTF-8", path.display())))?;
    // The connection waits in the listener's backlog: accept() below returns at once.
    connect(path_str).map_err(|e| io::Error::other(format!("daemon: {e}")))?;
    let (stream, _) = listener.accept()?;
    let pid = peer_pid(&stream)?;
    if pid != std::process::id() as libc::pid_t {
        return Err(io::Error::other(format!(
            "process {pid} connected to the private daemon socket"
        )));
    }
    Ok(stream)
}

fn peer_pid(stream: &UnixStream) -> io::Result<libc::pid_t> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the fd is open.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.pid)
}

/// One vhost-user message.
struct Message {
    request: u32,
    flags: u32,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn reply_u64(request: u32, value: u64) -> Message {
        Message {
            request,
            flags: VERSION | FLAG_REPLY,
            body: value.to_le_bytes().to_vec(),
            fds: Vec::new(),
        }
    }

    fn is_reply(&self) -> bool {
        self.flags & FLAG_REPLY != 0
    }

    fn needs_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }

    fn u64_body(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.body.as_slice().try_into().ok()?))
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one message; `None` at the end of the stream.
fn read_message(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER];
    let mut raw_fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: HEADER,
    }];
    let (got, nfds) = loop {
        // SAFETY: the iovec covers `header`, ours to overwrite with any bytes.
        match unsafe { sock.recv_with_fds(&mut iov, &mut raw_fds) } {
            Ok(r) => break r,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let fds: Vec<OwnedFd> = raw_fds[..nfds]
        .iter()
        // SAFETY: recvmsg just gave this process these descriptors; nothing else owns them.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if got == 0 {
        return Ok(None);
    }
    let mut reader = sock;
    if got < HEADER {
        match reader.read_exact(&mut header[got..]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    let (request, flags, size) = (word(0), word(4), word(8) as usize);
    if size > MAX_BODY {
        return Err(invalid(format!(
            "request {request} claims a body of {size} bytes (at most {MAX_BODY})"
        )));
    }
    let mut body = vec![0u8; size];
    match reader.read_exact(&mut body) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    Ok(Some(Message {
        request,
        flags,
        body,
        fds,
    }))
}

fn write_message(sock: &UnixStream, m: &Message) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(HEADER + m.body.len());
    bytes.extend_from_slice(&m.request.to_le_bytes());
    bytes.extend_from_slice(&m.flags.to_le_bytes());
    bytes.extend_from_slice(&(m.body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&m.body);
    let fds: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let sent = loop {
        match sock.send_with_fds(&[&bytes[..]], &fds) {
            Ok(n) => break n,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut writer = sock;
    writer.write_all(&bytes[sent..])
}

/// The control thread of one connection.
struct Proxy {
    frontend: UnixStream,
    daemon: UnixStream,
    /// The backend channel (`SET_BACKEND_REQ_FD`).
    channel: Option<UnixStream>,
    notice: Arc<ResetNotice>,
    hub: SharedHub,
    id: LinkId,
    name: String,
    /// Protocol features the frontend acknowledged.
    acked: u64,
    /// The device status the frontend set (without DEVICE_NEEDS_RESET, which is the device's).
    status: u8,
    /// The guest's protocol-error count when a break was last reported.
    reported: Option<u64>,
}

impl Proxy {
    fn run(mut self) {
        loop {
            let channel_fd = self.channel.as_ref().map_or(-1, |c| c.as_raw_fd());
            let mut fds = [
                pollfd(self.frontend.as_raw_fd()),
                pollfd(self.daemon.as_raw_fd()),
                pollfd(self.notice.0.as_raw_fd()),
                pollfd(channel_fd),
            ];
            // SAFETY: `fds` is an array of initialised pollfds of the length given.
            let rc = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    LOOK.as_millis() as i32,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::warn!("guest {}: control connection: poll: {e}", self.name);
                break;
            }
            if fds[0].revents != 0 {
                match self.relay_frontend() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        log::warn!("guest {}: vhost-user: {e}; closing", self.name);
                        break;
                    }
                }
            }
            if fds[1].revents != 0 {
                match self.relay_daemon() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        log::warn!("guest {}: vhost-user daemon: {e}; closing", self.name);
                        break;
                    }
                }
            }
            if fds[2].revents != 0 {
                self.notice.drain();
            }
            if fds[3].revents != 0 {
                self.read_channel();
            }
            self.look_at_hub();
        }
        // Both ends see the connection end: the daemon stops serving it, the frontend learns.
        let _ = self.frontend.shutdown(std::net::Shutdown::Both);
        let _ = self.daemon.shutdown(std::net::Shutdown::Both);
    }

    fn broken(&self) -> bool {
        self.hub.link(self.id).is_broken(self.id)
    }

    /// The status `GET_STATUS` reports.
    fn device_status(&self) -> u8 {
        if self.broken() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn reply_ack(&self, m: &Message) -> io::Result<()> {
        if m.needs_reply() && self.acked & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0 {
            write_message(&self.frontend, &Message::reply_u64(m.request, 0))?;
        }
        Ok(())
    }

    /// Handles one message from the frontend; `false` when it has gone.
    fn relay_frontend(&mut self) -> io::Result<bool> {
        let Some(mut m) = read_message(&self.frontend)? else {
            return Ok(false);
        };
        let request = m.request;
        if request == u32::from(FrontendReq::GET_STATUS) {
            let status = self.device_status();
            write_message(
                &self.frontend,
                &Message::reply_u64(request, u64::from(status)),
            )?;
        } else if request == u32::from(FrontendReq::SET_STATUS) {
            let value = m
                .u64_body()
                .ok_or_else(|| invalid(format!("SET_STATUS with a {}-byte body", m.body.len())))?;
            self.status = value as u8 & !VIRTIO_CONFIG_S_NEEDS_RESET;
            log::debug!("guest {}: device status {:#x}", self.name, self.status);
            self.reply_ack(&m)?;
        } else if request == u32::from(FrontendReq::SET_BACKEND_REQ_FD) {
            if m.fds.len() != 1 {
                return Err(invalid(format!(
                    "SET_BACKEND_REQ_FD with {} file descriptors",
                    m.fds.len()
                )));
            }
            let channel = UnixStream::from(m.fds.remove(0));
            // A frontend that stops reading its backend channel must not hold this thread.
            channel.set_write_timeout(Some(LOOK))?;
            self.channel = Some(channel);
            log::debug!("guest {}: backend channel set up", self.name);
            self.reply_ack(&m)?;
        } else {
            if request == u32::from(FrontendReq::SET_PROTOCOL_FEATURES) {
                let value = m.u64_body().ok_or_else(|| {
                    invalid(format!(
                        "SET_PROTOCOL_FEATURES with a {}-byte body",
                        m.body.len()
                    ))
                })?;
                self.acked = value;
                log::debug!("guest {}: protocol features {value:#x}", self.name);
                m.body = (value & !added_features()).to_le_bytes().to_vec();
            }
            write_message(&self.daemon, &m)?;
        }
        Ok(true)
    }

    /// Relays one message from the daemon; `false` when it has gone.
    fn relay_daemon(&mut self) -> io::Result<bool> {
        let Some(mut m) = read_message(&self.daemon)? else {
            return Ok(false);
        };
        if m.is_reply()
            && m.request == u32::from(FrontendReq::GET_PROTOCOL_FEATURES)
            && let Some(offered) = m.u64_body()
        {
            m.body = (offered | added_features()).to_le_bytes().to_vec();
        }
        write_message(&self.frontend, &m)?;
        Ok(true)
    }

    /// Reads the frontend's answer on the backend channel.
    fn read_channel(&mut self) {
        let Some(channel) = self.channel.as_ref() else {
            return;
        };
        match read_message(channel) {
            Ok(Some(m)) if m.is_reply() && m.request == BACKEND_CONFIG_CHANGE_MSG => {
                match m.u64_body() {
                    Some(0) => log::info!(
                        "guest {}: the frontend acknowledged the configuration change",
                        self.name
                    ),
                    other => log::warn!(
                        "guest {}: the frontend refused the configuration-change notice ({other:?}): \
                         it does not pass DEVICE_NEEDS_RESET on to the guest (QEMU's generic \
                         vhost-user device without a config space answers so)",
                        self.name
                    ),
                }
            }
            Ok(Some(m)) => log::warn!(
                "guest {}: unexpected request {} on the backend channel",
                self.name,
                m.request
            ),
            Ok(None) | Err(_) => {
                log::debug!("guest {}: backend channel closed", self.name);
                self.channel = None;
            }
        }
    }

    /// Sends a configuration-change notice once per break of the guest's link.
    fn look_at_hub(&mut self) {
        let (broken, errors) = {
            let hub = self.hub.link(self.id);
            (hub.is_broken(self.id), hub.stats(self.id).protocol_errors)
        };
        if !broken || self.reported == Some(errors) {
            return;
        }
        self.reported = Some(errors);
        let Some(channel) = self.channel.as_ref() else {
            log::warn!(
                "guest {}: needs a reset (DEVICE_NEEDS_RESET), but its frontend set up no \
                 backend channel to be told on",
                self.name
            );
            return;
        };
        let need_reply = self.acked & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
        let notice = Message {
            request: BACKEND_CONFIG_CHANGE_MSG,
            flags: VERSION | if need_reply { FLAG_NEED_REPLY } else { 0 },
            body: Vec::new(),
            fds: Vec::new(),
        };
        match write_message(channel, &notice) {
            Ok(()) => log::info!(
                "guest {}: device status DEVICE_NEEDS_RESET; configuration change sent to the frontend",
                self.name
            ),
            Err(e) => {
                log::warn!(
                    "guest {}: cannot send the configuration change: {e}",
                    self.name
                );
                self.channel = None;
            }
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}
