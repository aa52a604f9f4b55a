//! The echo demo's two programs over the native-Linux link (OpenAMP's native machine): an
//! echo remote (device role) and a ping host (driver role), each speaking OpenAMP's echo
//! protocol, its sample protocol, or (the remote) both.

use std::time::Duration;
use vamp_rpmsg::apps::{
    AppError, ECHO_CHANNEL, EchoService, EnvWaiter, PingSummary, SAMPLE_CHANNEL, ping, ping_sample,
    serve_echo_on,
};
use vamp_rpmsg::native::{self, NativePaths};
use vamp_rpmsg::transport::RingFormat;

/// Which of OpenAMP's two echo protocols a program speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OpenAMP's echo demo: "rpmsg-openamp-demo-channel", ended by the shutdown word.
    Demo,
    /// OpenAMP's (and Linux's) rpmsg client sample: "rpmsg-client-sample", "hello world!"
    /// messages ended by "goodbye!", after which the echo side withdraws the channel.
    Sample,
}

impl Protocol {
    /// The channel the protocol runs on.
    pub fn channel(self) -> &'static str {
        match self {
            Protocol::Demo => ECHO_CHANNEL,
            Protocol::Sample => SAMPLE_CHANNEL,
        }
    }
}

/// Runs the echo remote on the channels of `protocols` until the host tells it to stop.
/// Prints what happens with `tag`.
pub fn run_echo_remote(
    paths: &NativePaths,
    timeout: Option<Duration>,
    protocols: &[Protocol],
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
    println!(
        "[{tag}] host set DRIVER_OK; {} rings",
        rpmsg.transport().ring_format()
    );
    let channels: Vec<&str> = protocols.iter().map(|p| p.channel()).collect();
    serve_echo_on(&mut rpmsg, &mut EnvWaiter, &channels, tag)
}

/// Connects as the host, waits for the protocol's channel, sends `count` requests, verifies
/// every echo, then ends the exchange as the protocol does. Split rings.
pub fn run_ping_host(
    paths: &NativePaths,
    timeout: Duration,
    count: u32,
    protocol: Protocol,
    tag: &str,
) -> Result<PingSummary, AppError> {
    run_ping_host_on(paths, timeout, count, protocol, RingFormat::Split, tag)
}

/// [`run_ping_host`] asking for rings of `rings` format (packed rings need a vamp remote; any
/// other gets split rings: the line after "connected" says which the link runs).
pub fn run_ping_host_on(
    paths: &NativePaths,
    timeout: Duration,
    count: u32,
    protocol: Protocol,
    rings: RingFormat,
    tag: &str,
) -> Result<PingSummary, AppError> {
    println!(
        "[{tag}] waiting up to {} s for a remote on {}",
        timeout.as_secs(),
        paths.socket.display()
    );
    let mut rpmsg = native::start_host_with_rings(paths, timeout, rings)?;
    println!(
        "[{tag}] connected; buffers posted, DRIVER_OK set; {} rings",
        rpmsg.transport().ring_format()
    );
    match protocol {
        Protocol::Demo => ping(
            &mut rpmsg,
            &mut EnvWaiter,
            ECHO_CHANNEL,
            count,
            timeout,
            tag,
        ),
        Protocol::Sample => ping_sample(&mut rpmsg, &mut EnvWaiter, count, timeout, tag),
    }
}
