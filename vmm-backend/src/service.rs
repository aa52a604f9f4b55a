//! Running under a supervisor (systemd or alike): a listening socket passed in by file
//! descriptor ([`adopt_listener`]), and the readiness notification ([`notify_ready`]), the
//! `sd_notify` datagram protocol written out here rather than pulled in as a dependency: one
//! `READY=1` datagram to the socket named by `$NOTIFY_SOCKET` (a path, or an abstract name
//! when it starts with `@`).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};

/// The environment variable a supervisor names its notification socket in.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Why a passed-in descriptor cannot serve as a guest's socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptError {
    /// The number is not an open descriptor, or asking about it failed.
    #[error("file descriptor {fd}: {source}")]
    Query {
        /// The descriptor.
        fd: RawFd,
        /// Why.
        source: io::Error,
    },
    /// It is open but not what a vhost-user frontend can connect to.
    #[error(
        "file descriptor {fd} is {what}: a listening AF_UNIX stream socket is needed (bind and listen on it before passing it)"
    )]
    NotAListener {
        /// The descriptor.
        fd: RawFd,
        /// What it is instead.
        what: &'static str,
    },
}

/// Takes ownership of descriptor `fd`, inherited from a supervisor (systemd's socket activation
/// passes them from 3 on), after checking that it is a listening AF_UNIX stream socket. It is
/// made close-on-exec. The caller must not use `fd` otherwise: from here the listener owns it.
pub fn adopt_listener(fd: RawFd) -> Result<UnixListener, AdoptError> {
    let query = |source| AdoptError::Query { fd, source };
    let not = |what| Err(AdoptError::NotAListener { fd, what });
    // SAFETY: fstat on any integer is safe; it only writes the local `stat` it is given.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a valid out-pointer.
    if fd < 0 || unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(query(if fd < 0 {
            io::Error::from_raw_os_error(libc::EBADF)
        } else {
            io::Error::last_os_error()
        }));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return not("not a socket");
    }
    if sockopt(fd, libc::SO_DOMAIN).map_err(query)? != libc::AF_UNIX {
        return not("a socket of another family than AF_UNIX");
    }
    if sockopt(fd, libc::SO_TYPE).map_err(query)? != libc::SOCK_STREAM {
        return not("a datagram or packet socket");
    }
    if sockopt(fd, libc::SO_ACCEPTCONN).map_err(query)? == 0 {
        return not("a socket that is not listening");
    }
    // SAFETY: F_SETFD on a descriptor just checked to be open.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(query(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is an open listening AF_UNIX stream socket (checked above) that the caller
    // hands over: nothing else owns or closes it.
    Ok(unsafe { UnixListener::from_raw_fd(fd) })
}

/// An integer socket option of `fd` at SOL_SOCKET.
fn sockopt(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid out-pointers of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Tells the supervisor the service is ready (`READY=1`), if one asked (`$NOTIFY_SOCKET` set).
/// Returns whether a notification was sent. Call it once every socket the service offers is
/// listening: a supervisor starts what depends on the service as soon as it hears it.
pub fn notify_ready() -> io::Result<bool> {
    notify("READY=1\n")
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to `$NOTIFY_SOCKET`, if set.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else {
        return Ok(false);
    };
    let addr = notify_address(&target)?;
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the notification datagram was cut short",
        ));
    }
    Ok(true)
}

/// The address `$NOTIFY_SOCKET` names: `@name` an abstract socket, `/path` a path.
fn notify_address(target: &OsStr) -> io::Result<SocketAddr> {
    let bytes = target.as_bytes();
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(target),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{NOTIFY_SOCKET}={} is neither an absolute path nor an abstract name (@...)",
                target.to_string_lossy()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn notify_addresses() {
        assert!(notify_address(OsStr::new("@vamp-test")).is_ok());
        assert!(notify_address(OsStr::new("/run/systemd/notify")).is_ok());
        let err = notify_address(OsStr::new("relative")).unwrap_err();
        assert!(err.to_string().contains("neither"), "{err}");
    }

    #[test]
    fn only_listening_unix_stream_sockets_are_adopted() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = adopt_listener(file.as_raw_fd()).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");

        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = adopt_listener(a.as_raw_fd()).unwrap_err().to_string();
        assert!(err.contains("not listening"), "{err}");

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = adopt_listener(udp.as_raw_fd()).unwrap_err().to_string();
        assert!(err.contains("AF_UNIX"), "{err}");

        let (d, _e) = UnixDatagram::pair().unwrap();
        let err = adopt_listener(d.as_raw_fd()).unwrap_err().to_string();
        assert!(err.contains("datagram"), "{err}");

        let err = adopt_listener(-1).unwrap_err().to_string();
        assert!(err.contains("descriptor -1"), "{err}");

        let dir = std::env::temp_dir().join(format!("vamp-adopt-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixListener::bind(&dir).unwrap();
        let adopted = adopt_listener(listener.into_raw_fd()).unwrap();
        let _client = std::os::unix::net::UnixStream::connect(&dir).unwrap();
        assert!(adopted.accept().is_ok());
        let _ = std::fs::remove_file(&dir);
    }
}
