//! OpenAMP's echo demo on the engine, over any link (`std`): an echo service and a pinger that
//! finds the echo channel by name service, sends requests of every size, verifies each echo and
//! tells the echo side to stop. The native link, vhost-user guests and KVM remotes all use them.
//!
//! The echo service and [`ping_sample`] also speak OpenAMP's sample protocol
//! (openamp-system-reference's rpmsg-sample-echo / rpmsg-sample-ping, and Linux's
//! rpmsg_client_sample): channel [`SAMPLE_CHANNEL`], [`SAMPLE_COUNT`] messages, every one
//! [`SAMPLE_HELLO`] but the last, [`SAMPLE_BYE`]; the echo side withdraws the channel after
//! the exchange instead of waiting for a shutdown word.

use crate::rpmsg::{EptId, Error as RpmsgError, Handler, NsEvent, Received, Rpmsg};
use crate::transport::Transport;
use crate::wire::ADDR_ANY;
use std::string::{String, ToString};
use std::time::{Duration, Instant};
use std::vec::Vec;
use std::{eprintln, println};

/// The channel OpenAMP's echo demo announces.
pub const ECHO_CHANNEL: &str = "rpmsg-openamp-demo-channel";
/// The word that tells OpenAMP's echo remote to stop (first four payload bytes, native order).
pub const SHUTDOWN_MSG: u32 = 0xEF56_A55A;
/// The channel of OpenAMP's (and Linux's) rpmsg client sample.
pub const SAMPLE_CHANNEL: &str = "rpmsg-client-sample";
/// Every sample message but the last.
pub const SAMPLE_HELLO: &[u8] = b"hello world!";
/// The sample exchange's last message: the echo side withdraws its channel after echoing it.
pub const SAMPLE_BYE: &[u8] = b"goodbye!";
/// Messages in one sample exchange (OpenAMP's sample echo answers this many, then withdraws).
pub const SAMPLE_COUNT: u32 = 100;

/// Why a demo program stopped early.
#[derive(Debug)]
#[non_exhaustive]
pub enum AppError {
    /// The link could not be set up.
    Link(String),
    /// The engine failed.
    Rpmsg(RpmsgError),
    /// The peer did not do what the demo expects in time.
    Timeout(&'static str),
    /// The peer went away.
    PeerGone,
}

impl core::fmt::Display for AppError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AppError::Link(why) => write!(f, "link: {why}"),
            AppError::Rpmsg(e) => write!(f, "rpmsg: {e}"),
            AppError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            AppError::PeerGone => write!(f, "the peer closed the link"),
        }
    }
}

impl std::error::Error for AppError {}

impl From<RpmsgError> for AppError {
    fn from(e: RpmsgError) -> Self {
        AppError::Rpmsg(e)
    }
}

impl From<crate::native::NativeError> for AppError {
    fn from(e: crate::native::NativeError) -> Self {
        AppError::Link(e.to_string())
    }
}

/// What a program needs from its link besides the engine: blocking until the peer has news.
pub trait Waiter<T: Transport> {
    /// Blocks until the peer notifies us or `timeout` passes. `Err(PeerGone)` when the peer
    /// is gone for good.
    fn wait(&mut self, rpmsg: &mut Rpmsg<T>, timeout: Duration) -> Result<(), AppError>;
}

/// The [`Waiter`] built on the transport's
/// [`Environment`](crate::transport::Environment), for every link whose environment can block
/// (the native link, native guests of the hub): sleeps in its `wait` and reports a peer that
/// is gone.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvWaiter;

impl<T: Transport> Waiter<T> for EnvWaiter {
    fn wait(&mut self, rpmsg: &mut Rpmsg<T>, timeout: Duration) -> Result<(), AppError> {
        let env = rpmsg.transport_mut().environment();
        if env.peer_gone() {
            return Err(AppError::PeerGone);
        }
        env.wait(u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX));
        Ok(())
    }
}

/// Echoes every message back to its sender; stops on the shutdown word, after echoing
/// [`SAMPLE_BYE`] on the sample channel, or when the peer withdraws one of its channels.
#[derive(Debug, Default)]
pub struct EchoService {
    channels: Vec<EptId>,
    /// The endpoint of [`SAMPLE_CHANNEL`], if served.
    sample: Option<EptId>,
    /// Messages echoed.
    pub echoed: u64,
    /// Set when the peer asked us to stop.
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
        if Some(msg.ept) == self.sample && data == SAMPLE_BYE {
            self.shutdown = true;
        }
    }

    fn on_name_service(&mut self, _: &mut Rpmsg<T>, event: NsEvent<'_>) {
        if let NsEvent::Destroyed {
            unbound: Some(id), ..
        } = event
            && self.channels.contains(&id)
        {
            self.shutdown = true;
        }
    }
}

/// Announces `channel` and echoes until told to stop. Prints what happens with `tag`.
pub fn serve_echo<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    waiter: &mut impl Waiter<T>,
    channel: &str,
    tag: &str,
) -> Result<EchoService, AppError> {
    serve_echo_on(rpmsg, waiter, &[channel], tag)
}

/// Announces every one of `channels` and echoes on all of them until told to stop (see
/// [`EchoService`]), then withdraws them. Prints what happens with `tag`.
pub fn serve_echo_on<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    waiter: &mut impl Waiter<T>,
    channels: &[&str],
    tag: &str,
) -> Result<EchoService, AppError> {
    let mut echo = EchoService::default();
    for channel in channels {
        println!("[{tag}] announcing \"{channel}\"");
        let ept = rpmsg.create_ept(channel.as_bytes(), ADDR_ANY, ADDR_ANY)?;
        echo.channels.push(ept);
        if *channel == SAMPLE_CHANNEL {
            echo.sample = Some(ept);
        }
    }
    loop {
        rpmsg.poll(&mut echo)?;
        if echo.shutdown {
            break;
        }
        match waiter.wait(rpmsg, Duration::from_secs(1)) {
            Ok(()) => {}
            Err(AppError::PeerGone) => {
                println!("[{tag}] the peer went away after {} echoes", echo.echoed);
                return Err(AppError::PeerGone);
            }
            Err(e) => return Err(e),
        }
    }
    for ept in echo.channels.clone() {
        rpmsg.destroy_ept(ept)?;
    }
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

#[derive(Debug)]
struct PingClient<'a> {
    channel_name: &'a str,
    channel: Option<u32>,
    reply: Option<Vec<u8>>,
    unbound: bool,
}

impl<T: Transport> Handler<T> for PingClient<'_> {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        self.reply = rpmsg.payload(msg).ok();
    }
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, event: NsEvent<'_>) {
        match event {
            NsEvent::Created { name, addr, .. } if name == self.channel_name.as_bytes() => {
                self.channel = Some(addr);
                self.unbound = false;
            }
            NsEvent::Destroyed { name, .. } if name == self.channel_name.as_bytes() => {
                self.unbound = true
            }
            _ => {}
        }
    }
}

fn wait_until<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    waiter: &mut impl Waiter<T>,
    client: &mut PingClient<'_>,
    deadline: Instant,
    what: &'static str,
    done: impl Fn(&PingClient<'_>) -> bool,
) -> Result<(), AppError> {
    loop {
        rpmsg.poll(client)?;
        if done(client) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(AppError::Timeout(what));
        }
        waiter.wait(rpmsg, deadline - now)?;
    }
}

/// Waits (up to `timeout`) for a remote to announce `channel`, then binds a local endpoint to
/// it, as Linux's rpmsg bus does on an announcement: not announced back; the echo side learns
/// our address from the first message. Returns the client that keeps watching the channel, the
/// endpoint and the remote's address.
fn bind_announced<'a, T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    waiter: &mut impl Waiter<T>,
    channel: &'a str,
    what: &'static str,
    timeout: Duration,
    tag: &str,
) -> Result<(PingClient<'a>, EptId, u32), AppError> {
    let mut client = PingClient {
        channel_name: channel,
        channel: None,
        reply: None,
        unbound: false,
    };
    println!("[{tag}] waiting for a remote to announce \"{channel}\"");
    wait_until(
        rpmsg,
        waiter,
        &mut client,
        Instant::now() + timeout,
        what,
        |c| c.channel.is_some(),
    )?;
    let remote_addr = client.channel.unwrap_or(ADDR_ANY);
    let ept = rpmsg.create_ept(channel.as_bytes(), ADDR_ANY, remote_addr)?;
    Ok((client, ept, remote_addr))
}

/// Waits for `channel` to be announced, sends `count` requests of every size through it,
/// verifies every echo, then sends the shutdown word.
pub fn ping<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    waiter: &mut impl Waiter<T>,
    channel: &str,
    count: u32,
    timeout: Duration,
    tag: &str,
) -> Result<PingSummary, AppError> {
    let (mut client, ept, remote_addr) =
        bind_announced(rpmsg, waiter, channel, "the echo channel", timeout, tag)?;
    let local = rpmsg.endpoint(ept).map(|e| e.addr()).unwrap_or(ADDR_ANY);
    println!(
        "[{tag}] name service: \"{channel}\" at {remote_addr:#x}; our endpoint {local:#x}; sending {count} messages"
    );
    let mut summary = PingSummary {
        rtt_us: Vec::with_capacity(count as usize),
        ..Default::default()
    };
    let start = Instant::now();
    for i in 0..count {
        let msg = ping_payload(i);
        let t0 = Instant::now();
        rpmsg.send(ept, &msg)?;
        summary.sent += 1;
        client.reply = None;
        wait_until(rpmsg, waiter, &mut client, t0 + timeout, "an echo", |c| {
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

/// OpenAMP's sample ping: waits for [`SAMPLE_CHANNEL`], sends `count` messages
/// ([`SAMPLE_HELLO`], the last [`SAMPLE_BYE`]), verifies each echo, then waits (up to
/// `timeout`) for the echo side to withdraw the channel. OpenAMP's sample echo answers
/// [`SAMPLE_COUNT`] messages.
pub fn ping_sample<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    waiter: &mut impl Waiter<T>,
    count: u32,
    timeout: Duration,
    tag: &str,
) -> Result<PingSummary, AppError> {
    let (mut client, ept, remote_addr) = bind_announced(
        rpmsg,
        waiter,
        SAMPLE_CHANNEL,
        "the sample channel",
        timeout,
        tag,
    )?;
    println!(
        "[{tag}] name service: \"{SAMPLE_CHANNEL}\" at {remote_addr:#x}; sending {count} messages"
    );
    let mut summary = PingSummary {
        rtt_us: Vec::with_capacity(count as usize),
        ..Default::default()
    };
    let start = Instant::now();
    for i in 1..=count {
        let msg = if i == count { SAMPLE_BYE } else { SAMPLE_HELLO };
        let t0 = Instant::now();
        rpmsg.send(ept, msg)?;
        summary.sent += 1;
        client.reply = None;
        wait_until(rpmsg, waiter, &mut client, t0 + timeout, "an echo", |c| {
            c.reply.is_some() || c.unbound
        })?;
        summary.rtt_us.push(t0.elapsed().as_micros() as u64);
        if client.reply.as_deref() == Some(msg) {
            summary.matched += 1;
        } else {
            eprintln!("[{tag}] echo {i} did not match");
        }
        if client.unbound {
            break;
        }
    }
    summary.elapsed = start.elapsed();
    let withdrawn = wait_until(
        rpmsg,
        waiter,
        &mut client,
        Instant::now() + timeout,
        "the channel's withdrawal",
        |c| c.unbound,
    );
    rpmsg.destroy_ept(ept)?;
    println!("[{tag}] {summary}");
    match withdrawn {
        Ok(()) => println!("[{tag}] the remote withdrew \"{SAMPLE_CHANNEL}\""),
        Err(AppError::Timeout(_)) => {
            println!("[{tag}] the remote did not withdraw \"{SAMPLE_CHANNEL}\" in time")
        }
        Err(e) => return Err(e),
    }
    Ok(summary)
}
