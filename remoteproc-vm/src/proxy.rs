//! The host side of OpenAMP's rpmsg proxy ("retarget"): a bare-metal remote opens, reads,
//! writes and closes files on the host and prints on its console, one rpmsg message per call
//! (the format is in `vamp_rpmsg::wire::proxy`). OpenAMP's `rpc_demod` hands every call
//! straight to the host's libc; this server confines it:
//!
//! - **Files** only under a root directory the user names; without one every open fails with
//!   `-EACCES`. Absolute paths and `..` are refused (`-EACCES`); the path is walked one
//!   component at a time with `openat(O_NOFOLLOW)` from the root, so a symbolic link anywhere
//!   in it fails (`-ELOOP` or `-ENOTDIR`) instead of leading out of the root. The last
//!   component is looked at with `O_PATH` first: only regular files (or a name to create, then
//!   with `O_EXCL`) are opened, never a device node, and a FIFO is never waited on (the open is
//!   non-blocking and the type checked again on the open file). Quotas: bytes written into files
//!   and files created ([`DEFAULT_MAX_BYTES_WRITTEN`], [`DEFAULT_MAX_FILES_CREATED`],
//!   [`ProxyServer::set_quota`]); beyond them the call fails with `-EDQUOT`. Flags are limited to access mode, create, exclusive, truncate and append, and
//!   a created file's mode to read/write bits. (A hard link or a bind mount inside the root
//!   that leads elsewhere is the root owner's doing and is followed.)
//! - **Descriptors**: 0, 1 and 2 are the console: reading fd 0 (the host's stdin) is refused
//!   (`-EBADF`), fd 1 and 2 go, escaped ([`crate::console::escape`]), to the server's output and error sinks (the host's stdout and
//!   stderr unless given others); closing them does nothing. Files get 3 and up, at most
//!   [`MAX_OPEN_FILES`] at once (`-EMFILE` beyond).
//! - **Bad requests** get a reply with a negative errno: a short message or a `data_len`
//!   beyond it `-EINVAL`, an unknown call `-ENOSYS`, a bad descriptor `-EBADF`, a count that is
//!   negative or beyond the data `-EINVAL`. Nothing a remote sends makes the server panic.
//! - **Terminate** (`TERM`) gets no reply and ends the run ([`ProxyServer::terminated`]).
//!
//! Replies carry the request's id, as OpenAMP's current `rpc_demod` does (its remote library
//! checks for it); [`ProxyServer::set_ack_status_replies`] switches to the older
//! `ACK_STATUS` id. A read returns at most [`MAX_READ`] bytes, what fits in one 512-byte
//! rpmsg buffer.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use vamp_rpmsg::apps::{AppError, Waiter};
use vamp_rpmsg::rpmsg::{EptId, Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::Transport;
use vamp_rpmsg::wire::proxy::{
    ACK_STATUS_ID, CLOSE_SYSCALL_ID, O_ACCMODE, O_APPEND, O_CREAT, O_EXCL, O_TRUNC,
    OPEN_SYSCALL_ID, READ_SYSCALL_ID, SYSCALL_HEADER_LEN, Syscall, TERM_SYSCALL_ID,
    WRITE_SYSCALL_ID,
};
use vamp_rpmsg::wire::{ADDR_ANY, Endian, HEADER_LEN};

/// The channel OpenAMP's rpc_demo remote announces.
pub const PROXY_CHANNEL: &str = "rpmsg-openamp-demo-channel";
/// Files a remote may hold open at once.
pub const MAX_OPEN_FILES: usize = 16;
/// The first descriptor a file gets (0, 1 and 2 are the console).
pub const FIRST_FILE_FD: i32 = 3;
/// Bytes a read returns at most: what fits in one 512-byte rpmsg buffer with the headers.
pub const MAX_READ: usize = 512 - HEADER_LEN - SYSCALL_HEADER_LEN;
/// Bytes of a path at most (Linux's NAME_MAX is per component; this bounds the whole path).
pub const MAX_PATH: usize = 4095;

/// Bytes a remote may write into files under the root over the server's life, by default
/// (see [`ProxyServer::set_quota`]); beyond it writes fail with `-EDQUOT`.
pub const DEFAULT_MAX_BYTES_WRITTEN: u64 = 64 * 1024 * 1024;
/// Files a remote may create under the root over the server's life, by default; beyond it an
/// open that would create fails with `-EDQUOT`.
pub const DEFAULT_MAX_FILES_CREATED: u64 = 256;

/// Flags a remote may pass to open.
const ALLOWED_FLAGS: i32 = O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_APPEND;

/// Serves one remote's proxy calls. See the module docs for what it allows.
pub struct ProxyServer {
    root: Option<OwnedFd>,
    files: Vec<Option<File>>,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
    ack_status: bool,
    terminated: bool,
    calls: u64,
    failed: u64,
    bytes_written: u64,
    files_created: u64,
    max_bytes_written: u64,
    max_files_created: u64,
}

impl std::fmt::Debug for ProxyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyServer")
            .field("root", &self.root)
            .field("open_files", &self.open_files())
            .field("terminated", &self.terminated)
            .field("calls", &self.calls)
            .field("failed", &self.failed)
            .finish()
    }
}

fn errno(e: &io::Error) -> i32 {
    -e.raw_os_error().unwrap_or(libc::EIO)
}

impl ProxyServer {
    /// A server for files under `root` (none: no file access), printing the remote's fd 1
    /// and 2 on this process's stdout and stderr.
    pub fn new(root: Option<&Path>) -> io::Result<Self> {
        Self::with_output(root, Box::new(io::stdout()), Box::new(io::stderr()))
    }

    /// A server whose console output goes to `stdout` (fd 1) and `stderr` (fd 2).
    pub fn with_output(
        root: Option<&Path>,
        stdout: Box<dyn Write + Send>,
        stderr: Box<dyn Write + Send>,
    ) -> io::Result<Self> {
        let root = match root {
            Some(dir) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(dir)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
                Some(OwnedFd::from(file))
            }
            None => None,
        };
        Ok(ProxyServer {
            root,
            files: (0..MAX_OPEN_FILES).map(|_| None).collect(),
            stdout,
            stderr,
            ack_status: false,
            terminated: false,
            calls: 0,
            failed: 0,
            bytes_written: 0,
            files_created: 0,
            max_bytes_written: DEFAULT_MAX_BYTES_WRITTEN,
            max_files_created: DEFAULT_MAX_FILES_CREATED,
        })
    }

    /// Sets the quotas on the root: bytes written into files and files created, over the
    /// server's life (defaults [`DEFAULT_MAX_BYTES_WRITTEN`], [`DEFAULT_MAX_FILES_CREATED`]).
    pub fn set_quota(&mut self, max_bytes_written: u64, max_files_created: u64) {
        self.max_bytes_written = max_bytes_written;
        self.max_files_created = max_files_created;
    }

    /// Replies with `ACK_STATUS` as id (older proxies) instead of the request's id.
    pub fn set_ack_status_replies(&mut self, on: bool) {
        self.ack_status = on;
    }

    /// Whether the remote sent the terminate call.
    pub fn terminated(&self) -> bool {
        self.terminated
    }

    /// Files open now.
    pub fn open_files(&self) -> usize {
        self.files.iter().filter(|f| f.is_some()).count()
    }

    /// Calls served, and how many of them failed (negative result).
    pub fn calls(&self) -> (u64, u64) {
        (self.calls, self.failed)
    }

    /// Serves one message; returns the reply to send (none for terminate).
    pub fn handle(&mut self, request: &[u8]) -> Option<Vec<u8>> {
        self.calls += 1;
        let (id, result, data) = match Syscall::parse(request, Endian::NATIVE) {
            Err(_) => {
                // Answer a known call as itself, anything else as a status.
                let id = request
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(|b| Endian::NATIVE.u32(b))
                    .filter(|id| (OPEN_SYSCALL_ID..=READ_SYSCALL_ID).contains(id))
                    .unwrap_or(ACK_STATUS_ID);
                (id, -libc::EINVAL, Vec::new())
            }
            Ok(call) => match call.id {
                OPEN_SYSCALL_ID => (call.id, self.open(&call), Vec::new()),
                CLOSE_SYSCALL_ID => (call.id, self.close(call.int_field1), Vec::new()),
                WRITE_SYSCALL_ID => (call.id, self.write(&call), Vec::new()),
                READ_SYSCALL_ID => {
                    let (n, data) = self.read(call.int_field1, call.int_field2);
                    (call.id, n, data)
                }
                TERM_SYSCALL_ID => {
                    self.terminated = true;
                    return None;
                }
                _ => (ACK_STATUS_ID, -libc::ENOSYS, Vec::new()),
            },
        };
        if result < 0 {
            self.failed += 1;
        }
        let id = if self.ack_status { ACK_STATUS_ID } else { id };
        let reply = Syscall::with_data(id, result, 0, &data);
        let mut out = vec![0u8; reply.encoded_len()];
        // The buffer is exactly the encoded length: encoding cannot fail.
        let _ = reply.encode(&mut out, Endian::NATIVE);
        Some(out)
    }

    fn file(&mut self, fd: i32) -> Option<&mut File> {
        let slot = usize::try_from(fd.checked_sub(FIRST_FILE_FD)?).ok()?;
        self.files.get_mut(slot)?.as_mut()
    }

    fn open(&mut self, call: &Syscall<'_>) -> i32 {
        let Some(root) = &self.root else {
            return -libc::EACCES;
        };
        let flags = call.int_field1;
        if flags & !ALLOWED_FLAGS != 0 || flags & O_ACCMODE == O_ACCMODE {
            return -libc::EINVAL;
        }
        let Some(path) = call.path() else {
            return -libc::EINVAL;
        };
        if path.len() > MAX_PATH {
            return -libc::ENAMETOOLONG;
        }
        if path.first() == Some(&b'/') {
            return -libc::EACCES;
        }
        let parts: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
            .collect();
        if parts.iter().any(|p| *p == b"..") {
            return -libc::EACCES;
        }
        let Some((last, dirs)) = parts.split_last() else {
            return -libc::ENOENT;
        };
        let Some(slot) = self.files.iter().position(Option::is_none) else {
            return -libc::EMFILE;
        };
        // Walk down from the root, never following a link.
        let mut dir: Option<OwnedFd> = None;
        for part in dirs {
            let at = dir.as_ref().unwrap_or(root).as_raw_fd();
            match openat(
                at,
                part,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0,
            ) {
                Ok(fd) => dir = Some(fd),
                Err(e) => return e,
            }
        }
        let at = dir.as_ref().unwrap_or(root).as_raw_fd();
        // Look before opening: a device node is never opened (opening one can have effects)
        // and a FIFO never waited on; only regular files (or a name to create) go on.
        let exists = match openat(
            at,
            last,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        ) {
            Ok(fd) => {
                match File::from(fd).metadata() {
                    Ok(m) if m.is_file() => {}
                    Ok(m) if m.is_dir() => return -libc::EISDIR,
                    // O_PATH with O_NOFOLLOW gives the link itself: refused as an open would.
                    Ok(m) if m.is_symlink() => return -libc::ELOOP,
                    Ok(_) => return -libc::EACCES,
                    Err(e) => return errno(&e),
                }
                true
            }
            Err(e) if e == -libc::ENOENT => false,
            Err(e) => return e,
        };
        let mut flags = flags & ALLOWED_FLAGS;
        if !exists && flags & O_CREAT != 0 {
            if self.files_created >= self.max_files_created {
                return -libc::EDQUOT;
            }
            // Created here and now, or not at all: nothing planted in between is opened.
            flags |= O_EXCL;
        }
        // Non-blocking and no-follow still, and the type checked again on the open file.
        let host_flags =
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
        let mode = (call.int_field2 & 0o666) as libc::mode_t;
        let fd = match openat(at, last, host_flags, mode) {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        let file = File::from(fd);
        match file.metadata() {
            Ok(m) if m.is_file() => {}
            Ok(m) if m.is_dir() => return -libc::EISDIR,
            Ok(_) => return -libc::EACCES,
            Err(e) => return errno(&e),
        }
        if !exists && flags & O_CREAT != 0 {
            self.files_created += 1;
        }
        self.files[slot] = Some(file);
        FIRST_FILE_FD + slot as i32
    }

    fn close(&mut self, fd: i32) -> i32 {
        if (0..FIRST_FILE_FD).contains(&fd) {
            // The console stays open.
            return 0;
        }
        let slot = fd
            .checked_sub(FIRST_FILE_FD)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| self.files.get_mut(s));
        match slot {
            Some(f @ Some(_)) => {
                *f = None;
                0
            }
            _ => -libc::EBADF,
        }
    }

    fn write(&mut self, call: &Syscall<'_>) -> i32 {
        let Ok(count) = usize::try_from(call.int_field2) else {
            return -libc::EINVAL;
        };
        let Some(data) = call.data.get(..count) else {
            return -libc::EINVAL;
        };
        let result = match call.int_field1 {
            1 => self
                .stdout
                .write_all(crate::console::escape(data).as_bytes())
                .and_then(|()| self.stdout.flush()),
            2 => self
                .stderr
                .write_all(crate::console::escape(data).as_bytes())
                .and_then(|()| self.stderr.flush()),
            fd => {
                let total = self.bytes_written.saturating_add(count as u64);
                if total > self.max_bytes_written {
                    return -libc::EDQUOT;
                }
                match self.file(fd) {
                    Some(f) => f.write_all(data).map(|()| self.bytes_written = total),
                    None => return -libc::EBADF,
                }
            }
        };
        match result {
            Ok(()) => count as i32,
            Err(e) => errno(&e),
        }
    }

    fn read(&mut self, fd: i32, count: i32) -> (i32, Vec<u8>) {
        let Ok(count) = usize::try_from(count) else {
            return (-libc::EINVAL, Vec::new());
        };
        let Some(file) = self.file(fd) else {
            // fd 0 too: the host's stdin is not the remote's.
            return (-libc::EBADF, Vec::new());
        };
        let mut buf = vec![0u8; count.min(MAX_READ)];
        let mut got = 0;
        while got < buf.len() {
            match file.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if got == 0 => return (errno(&e), Vec::new()),
                Err(_) => break,
            }
        }
        buf.truncate(got);
        (got as i32, buf)
    }
}

/// `openat(2)` of one path component; a negative errno on failure.
fn openat(dir: i32, name: &[u8], flags: i32, mode: libc::mode_t) -> Result<OwnedFd, i32> {
    let name = CString::new(name).map_err(|_| -libc::EINVAL)?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call and `dir` is an open
    // directory descriptor the caller owns; openat only reads them.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags, libc::c_uint::from(mode)) };
    if fd < 0 {
        return Err(errno(&io::Error::last_os_error()));
    }
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The rpmsg side: binds to the remote's proxy channel when it is announced (and announces
/// the host's endpoint back, so that the remote learns where to send), then answers every
/// message on it with the [`ProxyServer`].
#[derive(Debug)]
pub struct ProxyService {
    /// The server.
    pub server: ProxyServer,
    channel: Vec<u8>,
    ept: Option<EptId>,
    /// The remote's address, once announced.
    pub remote: Option<u32>,
    /// Whether the remote withdrew the channel.
    pub withdrawn: bool,
    /// Replies that could not be sent.
    pub send_errors: u64,
}

impl ProxyService {
    /// Serves [`PROXY_CHANNEL`] with `server`.
    pub fn new(server: ProxyServer) -> Self {
        Self::on_channel(server, PROXY_CHANNEL)
    }

    /// Serves the channel `name` with `server`.
    pub fn on_channel(server: ProxyServer, name: &str) -> Self {
        ProxyService {
            server,
            channel: name.as_bytes().to_vec(),
            ept: None,
            remote: None,
            withdrawn: false,
            send_errors: 0,
        }
    }
}

impl<T: Transport> Handler<T> for ProxyService {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        if Some(msg.ept) != self.ept || self.server.terminated() {
            return;
        }
        let Ok(request) = rpmsg.payload(msg) else {
            return;
        };
        if let Some(reply) = self.server.handle(&request)
            && let Err(e) = rpmsg.sendto(msg.ept, msg.src, &reply)
        {
            self.send_errors += 1;
            crate::ratelog::warn_limited!("proxy: reply to {:#x} failed: {e}", msg.src);
        }
    }

    fn on_name_service(&mut self, rpmsg: &mut Rpmsg<T>, event: NsEvent<'_>) {
        match event {
            NsEvent::Created { name, addr, bound } if name == self.channel => {
                self.remote = Some(addr);
                self.withdrawn = false;
                self.ept = match bound {
                    Some(id) => Some(id),
                    None => {
                        match rpmsg.create_ept_announcing(&self.channel, ADDR_ANY, addr, true) {
                            Ok(id) => Some(id),
                            Err(e) => {
                                crate::ratelog::warn_limited!(
                                    "proxy: cannot bind to the channel: {e}"
                                );
                                None
                            }
                        }
                    }
                };
            }
            NsEvent::Destroyed { name, .. } if name == self.channel => self.withdrawn = true,
            _ => {}
        }
    }
}

/// Serves the proxy until the remote terminates it. Fails if the channel is not announced
/// within `timeout`, if the remote withdraws it before terminating, or if `waiter` fails
/// (the remote stopped).
pub fn serve<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    waiter: &mut impl Waiter<T>,
    service: &mut ProxyService,
    timeout: Duration,
) -> Result<(), AppError> {
    let deadline = Instant::now() + timeout;
    loop {
        rpmsg.poll(service)?;
        if service.server.terminated() {
            return Ok(());
        }
        if service.withdrawn {
            return Err(AppError::PeerGone);
        }
        if service.remote.is_none() && Instant::now() > deadline {
            return Err(AppError::Timeout("the proxy channel"));
        }
        if let Err(e) = waiter.wait(rpmsg, Duration::from_millis(200)) {
            // The remote may stop right after its terminate call: serve what it left first.
            rpmsg.poll(service)?;
            if service.server.terminated() {
                return Ok(());
            }
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vamp_test_support::{SharedOutput, TempDir};

    fn server(root: Option<&Path>) -> (ProxyServer, SharedOutput, SharedOutput) {
        let (out, err) = (SharedOutput::default(), SharedOutput::default());
        let s =
            ProxyServer::with_output(root, Box::new(out.clone()), Box::new(err.clone())).unwrap();
        (s, out, err)
    }

    fn call(s: &mut ProxyServer, c: Syscall<'_>) -> (u32, i32, Vec<u8>) {
        let mut buf = vec![0u8; c.encoded_len()];
        c.encode(&mut buf, Endian::NATIVE).unwrap();
        let reply = s.handle(&buf).expect("a reply");
        let r = Syscall::parse(&reply, Endian::NATIVE).unwrap();
        (r.id, r.int_field1, r.data.to_vec())
    }

    fn open(s: &mut ProxyServer, path: &str, flags: i32) -> i32 {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        call(s, Syscall::with_data(OPEN_SYSCALL_ID, flags, 0o644, &p)).1
    }

    const WR: i32 = vamp_rpmsg::wire::proxy::O_WRONLY | O_CREAT | O_TRUNC;

    #[test]
    fn files_round_trip_and_console_goes_to_the_sinks() {
        let dir = TempDir::new("proxy-rt");
        let (mut s, out, err) = server(Some(dir.path()));
        let fd = open(&mut s, "a.txt", WR);
        assert_eq!(fd, FIRST_FILE_FD);
        assert_eq!(
            call(
                &mut s,
                Syscall::with_data(WRITE_SYSCALL_ID, fd, 5, b"hello")
            ),
            (WRITE_SYSCALL_ID, 5, vec![])
        );
        assert_eq!(call(&mut s, Syscall::new(CLOSE_SYSCALL_ID, fd, 0)).1, 0);
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"hello");
        let fd = open(&mut s, "./a.txt", 0);
        assert_eq!(
            call(&mut s, Syscall::new(READ_SYSCALL_ID, fd, 3)),
            (READ_SYSCALL_ID, 3, b"hel".to_vec())
        );
        assert_eq!(
            call(&mut s, Syscall::new(READ_SYSCALL_ID, fd, 100)).2,
            b"lo"
        );
        assert_eq!(call(&mut s, Syscall::new(READ_SYSCALL_ID, fd, 100)).1, 0);
        // OpenAMP's stdout writes carry a NUL beyond the count: not printed.
        assert_eq!(
            call(
                &mut s,
                Syscall::with_data(WRITE_SYSCALL_ID, 1, 3, b"hi\n\0")
            )
            .1,
            3
        );
        call(&mut s, Syscall::with_data(WRITE_SYSCALL_ID, 2, 4, b"oops"));
        assert_eq!(&*out.bytes(), b"hi\n");
        assert_eq!(&*err.bytes(), b"oops");
        // ACK_STATUS replies when asked for.
        s.set_ack_status_replies(true);
        assert_eq!(
            call(&mut s, Syscall::new(CLOSE_SYSCALL_ID, fd, 0)),
            (ACK_STATUS_ID, 0, vec![])
        );
        assert_eq!(s.open_files(), 0);
        // Terminate: no reply, and the server says so.
        let mut t = [0u8; 16];
        Syscall::new(TERM_SYSCALL_ID, 0, 0)
            .encode(&mut t, Endian::NATIVE)
            .unwrap();
        assert!(s.handle(&t).is_none());
        assert!(s.terminated());
    }

    #[test]
    fn path_escapes_are_refused() {
        let dir = TempDir::new("proxy-esc");
        let outside = TempDir::new("proxy-esc-outside");
        std::fs::write(outside.join("secret"), b"x").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), dir.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.join("dirlink")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.join("sub/up")).unwrap();
        let (mut s, _, _) = server(Some(dir.path()));
        let abs = outside.join("secret").display().to_string();
        assert_eq!(open(&mut s, &abs, 0), -libc::EACCES);
        assert_eq!(open(&mut s, "../x", WR), -libc::EACCES);
        assert_eq!(open(&mut s, "sub/../../x", WR), -libc::EACCES);
        assert_eq!(open(&mut s, "link", 0), -libc::ELOOP);
        assert_eq!(open(&mut s, "link", WR), -libc::ELOOP);
        assert!(open(&mut s, "dirlink/secret", 0) < 0);
        assert!(open(&mut s, "sub/up/secret", 0) < 0);
        assert!(open(&mut s, "dirlink/new", WR) < 0);
        assert!(!outside.join("new").exists());
        assert_eq!(open(&mut s, "", 0), -libc::ENOENT);
        assert_eq!(open(&mut s, "sub", 0), -libc::EISDIR);
        assert_eq!(
            open(&mut s, &"a".repeat(MAX_PATH + 1), 0),
            -libc::ENAMETOOLONG
        );
        // Flags beyond the allowed ones, and access mode 3.
        assert_eq!(open(&mut s, "f", WR | libc::O_DIRECTORY), -libc::EINVAL);
        assert_eq!(open(&mut s, "f", 3), -libc::EINVAL);
        // A path without its NUL.
        assert_eq!(
            call(&mut s, Syscall::with_data(OPEN_SYSCALL_ID, 0, 0, b"f")).1,
            -libc::EINVAL
        );
        // Inside the root, subdirectories work; the file never became executable.
        let fd = open(&mut s, "sub/ok", WR);
        assert!(fd >= FIRST_FILE_FD, "{fd}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("sub/ok"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0);
        assert_eq!(s.calls().1, 14);
    }

    #[test]
    fn without_a_root_there_is_no_file_access_but_a_console() {
        let (mut s, out, _) = server(None);
        assert_eq!(open(&mut s, "a.txt", WR), -libc::EACCES);
        assert_eq!(
            call(&mut s, Syscall::with_data(WRITE_SYSCALL_ID, 1, 2, b"ok")).1,
            2
        );
        assert_eq!(&*out.bytes(), b"ok");
        // stdin is not the remote's; console descriptors stay open.
        assert_eq!(
            call(&mut s, Syscall::new(READ_SYSCALL_ID, 0, 10)).1,
            -libc::EBADF
        );
        assert_eq!(call(&mut s, Syscall::new(CLOSE_SYSCALL_ID, 1, 0)).1, 0);
        assert_eq!(
            call(&mut s, Syscall::with_data(WRITE_SYSCALL_ID, 1, 1, b"!")).1,
            1
        );
    }

    #[test]
    fn the_fd_table_is_bounded() {
        let dir = TempDir::new("proxy-fds");
        let (mut s, _, _) = server(Some(dir.path()));
        let fds: Vec<i32> = (0..MAX_OPEN_FILES)
            .map(|i| open(&mut s, &format!("f{i}"), WR))
            .collect();
        assert_eq!(fds, (3..3 + MAX_OPEN_FILES as i32).collect::<Vec<_>>());
        assert_eq!(open(&mut s, "one-more", WR), -libc::EMFILE);
        assert!(!dir.join("one-more").exists());
        // Closing one frees its slot, the lowest free is reused.
        assert_eq!(call(&mut s, Syscall::new(CLOSE_SYSCALL_ID, 7, 0)).1, 0);
        assert_eq!(open(&mut s, "again", WR), 7);
    }

    #[test]
    fn bad_requests_get_errors() {
        let dir = TempDir::new("proxy-bad");
        let (mut s, _, _) = server(Some(dir.path()));
        // Unknown ids, including a reply id sent as a request.
        for id in [0, ACK_STATUS_ID, 7, u32::MAX] {
            assert_eq!(
                call(&mut s, Syscall::new(id, 1, 1)),
                (ACK_STATUS_ID, -libc::ENOSYS, vec![])
            );
        }
        // Short messages and lying lengths.
        let r = s.handle(&[]).unwrap();
        assert_eq!(
            Syscall::parse(&r, Endian::NATIVE).unwrap(),
            Syscall::new(ACK_STATUS_ID, -libc::EINVAL, 0)
        );
        let mut lying = [0u8; 20];
        lying[..4].copy_from_slice(&WRITE_SYSCALL_ID.to_ne_bytes());
        lying[12..16].copy_from_slice(&100u32.to_ne_bytes());
        let r = s.handle(&lying).unwrap();
        assert_eq!(
            Syscall::parse(&r, Endian::NATIVE).unwrap(),
            Syscall::new(WRITE_SYSCALL_ID, -libc::EINVAL, 0)
        );
        // Bad descriptors and counts.
        for fd in [-1, 3, 18, 19, i32::MAX, i32::MIN] {
            assert_eq!(
                call(&mut s, Syscall::new(READ_SYSCALL_ID, fd, 1)).1,
                -libc::EBADF
            );
            assert_eq!(
                call(&mut s, Syscall::new(CLOSE_SYSCALL_ID, fd, 0)).1,
                -libc::EBADF
            );
            assert_eq!(
                call(&mut s, Syscall::with_data(WRITE_SYSCALL_ID, fd, 1, b"x")).1,
                -libc::EBADF
            );
        }
        assert_eq!(
            call(&mut s, Syscall::with_data(WRITE_SYSCALL_ID, 1, 5, b"abc")).1,
            -libc::EINVAL
        );
        assert_eq!(
            call(&mut s, Syscall::with_data(WRITE_SYSCALL_ID, 1, -1, b"abc")).1,
            -libc::EINVAL
        );
        let fd = open(&mut s, "r", WR);
        assert_eq!(
            call(&mut s, Syscall::new(READ_SYSCALL_ID, fd, -5)).1,
            -libc::EINVAL
        );
        // Reading a write-only file: the host's error.
        assert_eq!(
            call(&mut s, Syscall::new(READ_SYSCALL_ID, fd, 5)).1,
            -libc::EBADF
        );
        // A huge read is capped to one buffer.
        std::fs::write(dir.join("big"), vec![7u8; 2000]).unwrap();
        let fd = open(&mut s, "big", 0);
        let (_, n, data) = call(&mut s, Syscall::new(READ_SYSCALL_ID, fd, i32::MAX));
        assert_eq!((n as usize, data.len()), (MAX_READ, MAX_READ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_messages_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let (mut s, _, _) = server(None);
            if let Some(reply) = s.handle(&bytes) {
                let r = Syscall::parse(&reply, Endian::NATIVE).unwrap();
                proptest::prop_assert!(r.data.len() <= MAX_READ);
            }
        }
    }
}
