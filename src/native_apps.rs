//! The two programs of OpenAMP's echo demo, on vamp's engine: an echo remote (device role)
//! and a ping host (driver role), over the native-Linux link.

use std::time::{Duration, Instant};
use vamp_rpmsg::native::{self, HostRpmsg, NativeError, NativePaths, RemoteRpmsg};
use vamp_rpmsg::rpmsg::{EptId, Error as RpmsgError, Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::Transport;
use vamp_rpmsg::wire::ADDR_ANY;

/// The channel OpenAMP's echo demo announces.
pub const ECHO_CHANNEL: &str = "rpmsg-openamp-demo-channel";
/// The word that tells OpenAMP's echo remote to stop (first four payload bytes, native order).
pub const SHUTDOWN_MSG: u32 = 0xEF56_A55A;

/// Why a native program stopped early.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The link could not be set up.
    #[error("native link: {0}")]
    Link(#[from] NativeError),
    /// The engine failed.
    #[error("rpmsg: {0}")]
    Rpmsg(#[from] RpmsgError),
    /// The peer did not do what the demo expects in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The peer went away.
    #[error("the peer closed the link")]
    PeerGone,
}

/// Echoes every message on the channel back to its sender; stops on the shutdown word or
/// when the host withdraws the channel.
#[derive(Debug, Default)]
pub struct EchoService {
    channel: Option<EptId>,
    /// Messages echoed.
    pub echoed: u64,
    /// Set when the host asked us to stop.
    pub shutdown: bool,
    /// Echoes that failed to send.
    pub failed: u64,
}

impl<T: Transport> Handler<T> for EchoService {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        let Ok(data) = rpmsg.payload(msg) else { return };
        if data.len() >= 4 && data[..4] == SHUTDOWN_MSG.to_ne_bytes() {
            self.shutdown = true;
            return;
        }
        match rpmsg.sendto(msg.ept, msg.src, &data) {
            Ok(_) => self.echoed += 1,
            Err(e) => {
                self.failed += 1;
                log::warn!("echo to {:#x} failed: {e}", msg.src);
            }
        }
    }

    fn on_name_service(&mut self, _: &mut Rpmsg<T>, event: NsEvent<'_>) {
        if let NsEvent::Destroyed {
            unbound: Some(id), ..
        } = event
            && Some(id) == self.channel
        {
            self.shutdown = true;
        }
    }
}

/// Runs the echo remote until the host tells it to stop. Prints what happens with `tag`.
pub fn run_echo_remote(
    paths: &NativePaths,
    timeout: Option<Duration>,
    tag: &str,
) -> Result<EchoService, AppError> {
    let mut rpmsg: RemoteRpmsg = native::start_remote(paths, timeout, || {
        println!(
            "[{tag}] pid {}: resource table in {}, waiting for a host on {}",
            std::process::id(),
            paths.shm.display(),
            paths.socket.display()
        );
    })?;
    println!("[{tag}] host set DRIVER_OK; announcing \"{ECHO_CHANNEL}\"");
    let ept = rpmsg.create_ept(ECHO_CHANNEL.as_bytes(), ADDR_ANY, ADDR_ANY)?;
    let mut echo = EchoService {
        channel: Some(ept),
        ..Default::default()
    };
    loop {
        rpmsg.poll(&mut echo)?;
        if echo.shutdown {
            break;
        }
        let env = rpmsg.transport_mut().env_mut();
        if env.peer_gone() {
            println!("[{tag}] host went away after {} echoes", echo.echoed);
            return Err(AppError::PeerGone);
        }
        env.wait_for_kick(Duration::from_secs(1));
    }
    rpmsg.destroy_ept(ept)?;
    println!(
        "[{tag}] shutdown requested after {} echoes; stopping",
        echo.echoed
    );
    Ok(echo)
}

/// What a ping run measured.
#[derive(Debug, Clone, Default)]
pub struct PingSummary {
    /// Requests sent.
    pub sent: u32,
    /// Replies that matched their request byte for byte.
    pub matched: u32,
    /// Round-trip times in microseconds, in send order.
    pub rtt_us: Vec<u64>,
    /// Wall time of the whole exchange.
    pub elapsed: Duration,
}

impl PingSummary {
    /// Whether every request got its exact echo.
    pub fn all_matched(&self) -> bool {
        self.sent == self.matched
    }

    /// A percentile of the round-trip times, in microseconds.
    pub fn percentile(&self, p: f64) -> u64 {
        let mut v = self.rtt_us.clone();
        v.sort_unstable();
        if v.is_empty() {
            return 0;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

impl std::fmt::Display for PingSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{}/{} echoes matched, rtt p50={}us p99={}us max={}us, {:.0} round trips/s",
            self.matched,
            self.sent,
            self.percentile(0.5),
            self.percentile(0.99),
            self.rtt_us.iter().max().copied().unwrap_or(0),
            self.sent as f64 / secs,
        )
    }
}

/// The request `i` of a ping run: sizes cycle through 1..=496; the bytes depend on `i` so a
/// stale or misdelivered echo cannot match. It never starts with the shutdown word.
pub fn ping_payload(i: u32) -> Vec<u8> {
    let size = 1 + (i as usize % 496);
    let seq = i.to_le_bytes();
    (0..size)
        .map(|k| {
            if k < 4 {
                seq[k]
            } else {
                (k as u32).wrapping_mul(31).wrapping_add(i) as u8
            }
        })
        .collect()
}

#[derive(Debug, Default)]
struct PingClient {
    channel: Option<u32>,
    reply: Option<Vec<u8>>,
    unbound: bool,
}

impl<T: Transport> Handler<T> for PingClient {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        self.reply = rpmsg.payload(msg).ok();
    }
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, event: NsEvent<'_>) {
        match event {
            NsEvent::Created { name, addr, .. } if name == ECHO_CHANNEL.as_bytes() => {
                self.channel = Some(addr)
            }
            NsEvent::Destroyed { name, .. } if name == ECHO_CHANNEL.as_bytes() => {
                self.unbound = true
            }
            _ => {}
        }
    }
}

fn wait_until(
    rpmsg: &mut HostRpmsg,
    client: &mut PingClient,
    deadline: Instant,
    what: &'static str,
    done: impl Fn(&PingClient) -> bool,
) -> Result<(), AppError> {
    loop {
        rpmsg.poll(client)?;
        if done(client) {
            return Ok(());
        }
        let env = rpmsg.transport_mut().env_mut();
        if env.peer_gone() {
            return Err(AppError::PeerGone);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(AppError::Timeout(what));
        }
        env.wait_for_kick(deadline - now);
    }
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
    let mut client = PingClient::default();
    wait_until(
        &mut rpmsg,
        &mut client,
        Instant::now() + timeout,
        "the echo channel",
        |c| c.channel.is_some(),
    )?;
    let remote_addr = client.channel.unwrap_or(ADDR_ANY);
    // Like Linux's rpmsg bus on an announcement: a local endpoint bound to the channel,
    // not announced back; the remote learns our address from the first message.
    let ept = rpmsg.create_ept(ECHO_CHANNEL.as_bytes(), ADDR_ANY, remote_addr)?;
    let local = rpmsg.endpoint(ept).map(|e| e.addr()).unwrap_or(ADDR_ANY);
    println!(
        "[{tag}] name service: \"{ECHO_CHANNEL}\" at {remote_addr:#x}; our endpoint {local:#x}; sending {count} messages"
    );
    let mut summary = PingSummary {
        sent: 0,
        matched: 0,
        rtt_us: Vec::with_capacity(count as usize),
        elapsed: Duration::ZERO,
    };
    let start = Instant::now();
    for i in 0..count {
        let msg = ping_payload(i);
        let t0 = Instant::now();
        rpmsg.send(ept, &msg)?;
        summary.sent += 1;
        client.reply = None;
        wait_until(&mut rpmsg, &mut client, t0 + timeout, "an echo", |c| {
            c.reply.is_some() || c.unbound
        })?;
        summary.rtt_us.push(t0.elapsed().as_micros() as u64);
        if client.reply.as_deref() == Some(&msg[..]) {
            summary.matched += 1;
        } else {
            eprintln!("[{tag}] echo {i} did not match ({} bytes sent)", msg.len());
        }
        if client.unbound {
            break;
        }
    }
    summary.elapsed = start.elapsed();
    rpmsg.send(ept, &SHUTDOWN_MSG.to_ne_bytes())?;
    rpmsg.destroy_ept(ept)?;
    println!("[{tag}] {summary}");
    Ok(summary)
}
