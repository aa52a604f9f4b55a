//! The echo demo's two programs over the native-Linux link (OpenAMP's native machine): an
//! echo remote (device role) and a ping host (driver role).

use std::time::Duration;
use vamp_rpmsg::apps::{
    AppError, ECHO_CHANNEL, EchoService, PingSummary, Waiter, ping, serve_echo,
};
use vamp_rpmsg::native::{self, NativePaths, SocketEnv};
use vamp_rpmsg::rpmsg::Rpmsg;
use vamp_rpmsg::transport::{DeviceTransport, DriverTransport};

/// Waits for kick bytes on the native link's socket.
#[derive(Debug, Default)]
pub struct SocketWaiter;

macro_rules! socket_waiter {
    ($transport:ty) => {
        impl Waiter<$transport> for SocketWaiter {
            fn wait(
                &mut self,
                rpmsg: &mut Rpmsg<$transport>,
                timeout: Duration,
            ) -> Result<(), AppError> {
                let env: &mut SocketEnv = rpmsg.transport_mut().env_mut();
                if env.peer_gone() {
                    return Err(AppError::PeerGone);
                }
                env.wait_for_kick(timeout);
                Ok(())
            }
        }
    };
}

type Shm = std::sync::Arc<native::ShmFile>;
socket_waiter!(DeviceTransport<Shm, SocketEnv>);
socket_waiter!(DriverTransport<Shm, SocketEnv>);

/// Runs the echo remote until the host tells it to stop. Prints what happens with `tag`.
pub fn run_echo_remote(
    paths: &NativePaths,
    timeout: Option<Duration>,
    tag: &str,
) -> Result<EchoService, AppError> {
    let mut rpmsg = native::start_remote(paths, timeout, || {
        println!(
            "[{tag}] pid {}: resource table in {}, waiting for a host on {}",
            std::process::id(),
            paths.shm.display(),
            paths.socket.display()
        );
    })?;
    println!("[{tag}] host set DRIVER_OK");
    serve_echo(&mut rpmsg, &mut SocketWaiter, ECHO_CHANNEL, tag)
}

/// Connects as the host, waits for the echo channel, sends `count` requests, verifies every
/// echo, then tells the remote to stop.
pub fn run_ping_host(
    paths: &NativePaths,
    timeout: Duration,
    count: u32,
    tag: &str,
) -> Result<PingSummary, AppError> {
    let mut rpmsg = native::start_host(paths, timeout)?;
    println!("[{tag}] connected; buffers posted, DRIVER_OK set");
    ping(
        &mut rpmsg,
        &mut SocketWaiter,
        ECHO_CHANNEL,
        count,
        timeout,
        tag,
    )
}
