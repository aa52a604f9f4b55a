//! The two ends of every link's echo: the measuring client (round trips and windowed
//! throughput over any `Transport`, with their percentiles) and the echo server handler the
//! remotes and echoing guests run.

use super::{Plan, Res, SIZES, SLOT_BYTES, STEP_TIMEOUT};
use std::time::{Duration, Instant};
use vamp_rpmsg::apps::SHUTDOWN_MSG;
use vamp_rpmsg::rpmsg::{EptId, Error as RpmsgError, Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::Transport;

/// Latency percentiles of a set of samples.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lat {
    pub(super) p50_ns: f64,
    pub(super) p99_ns: f64,
    pub(super) n: usize,
}

pub(super) fn lat_from(mut v: Vec<u64>) -> Lat {
    v.sort_unstable();
    let at = |p: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            v[((v.len() - 1) as f64 * p).round() as usize] as f64
        }
    };
    Lat {
        p50_ns: at(0.5),
        p99_ns: at(0.99),
        n: v.len(),
    }
}

/// A windowed throughput: echoed messages per second.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tput {
    pub(super) ns_per_msg: f64,
    pub(super) size: usize,
    pub(super) n: usize,
}

impl Tput {
    pub(super) fn msgs_per_s(&self) -> f64 {
        1e9 / self.ns_per_msg
    }
    pub(super) fn mb_per_s(&self) -> f64 {
        self.msgs_per_s() * self.size as f64 / 1e6
    }
}

/// Counts echoes and checks they come back in order and intact.
#[derive(Debug)]
pub(super) struct Sink {
    pub(super) got: u64,
    pub(super) next_seq: u32,
    pub(super) bad: u64,
    pub(super) buf: [u8; SLOT_BYTES],
}

impl Sink {
    pub(super) fn new() -> Self {
        Sink {
            got: 0,
            next_seq: 1,
            bad: 0,
            buf: [0; SLOT_BYTES],
        }
    }
}

impl<T: Transport> Handler<T> for Sink {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        self.got += 1;
        let len = (msg.len as usize).min(SLOT_BYTES);
        if len < 4 || rpmsg.read_payload(msg, 0, &mut self.buf[..len]).is_err() {
            self.bad += 1;
            return;
        }
        let seq = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if seq != self.next_seq || self.buf[len - 1] != fill_byte(len) {
            self.bad += 1;
        }
        self.next_seq = seq.wrapping_add(1);
    }
}

fn fill_byte(len: usize) -> u8 {
    (len as u8) ^ 0xa5
}

/// Finds a name announced to us.
#[derive(Debug)]
struct Finder<'a> {
    pub(super) name: &'a str,
    pub(super) addr: Option<u32>,
}

impl<T: Transport> Handler<T> for Finder<'_> {
    fn on_message(&mut self, _: &mut Rpmsg<T>, _: &mut Received) {}
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, event: NsEvent<'_>) {
        if let NsEvent::Created { name, addr, .. } = event
            && name == self.name.as_bytes()
        {
            self.addr = Some(addr);
        }
    }
}

pub(super) fn rerr(e: RpmsgError) -> String {
    format!("rpmsg: {e}")
}

/// Waits for the peer (notifications) or spins once (busy-poll).
fn idle<T: Transport>(rpmsg: &mut Rpmsg<T>, busy: bool) {
    if busy {
        std::hint::spin_loop();
    } else {
        rpmsg.transport_mut().environment().wait(100_000);
    }
}

pub(super) fn find_name<T: Transport>(rpmsg: &mut Rpmsg<T>, name: &str, busy: bool) -> Res<u32> {
    let mut finder = Finder { name, addr: None };
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        rpmsg.poll(&mut finder).map_err(rerr)?;
        if let Some(a) = finder.addr {
            return Ok(a);
        }
        if Instant::now() > deadline {
            return Err(format!("\"{name}\" was never announced"));
        }
        idle(rpmsg, busy);
    }
}

/// The client's message buffer: sequence number first, then a pattern that depends on the
/// length (so a truncated echo is seen).
pub(super) fn message(size: usize) -> [u8; SLOT_BYTES] {
    let mut buf = [0u8; SLOT_BYTES];
    for (i, b) in buf.iter_mut().enumerate().take(size) {
        *b = i as u8;
    }
    if size > 0 {
        buf[size - 1] = fill_byte(size);
    }
    buf
}

pub(super) fn try_send<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    (ept, dst): (EptId, u32),
    buf: &mut [u8; SLOT_BYTES],
    size: usize,
    seq: u32,
) -> Res<bool> {
    buf[..4].copy_from_slice(&seq.to_le_bytes());
    match rpmsg.trysendto(ept, dst, &buf[..size]) {
        Ok(_) => Ok(true),
        Err(RpmsgError::NoBuffer) => Ok(false),
        Err(e) => Err(rerr(e)),
    }
}

/// `n` round trips of `size` bytes, one message at a time.
fn round_trips<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    target: (EptId, u32),
    size: usize,
    n: usize,
    busy: bool,
) -> Res<Lat> {
    let mut sink = Sink::new();
    let mut buf = message(size);
    let warm = n / 10 + 10;
    let mut v = Vec::with_capacity(n);
    let deadline = Instant::now() + STEP_TIMEOUT;
    for i in 0..warm + n {
        let seq = i as u32 + 1;
        let t0 = Instant::now();
        while !try_send(rpmsg, target, &mut buf, size, seq)? {
            rpmsg.poll(&mut sink).map_err(rerr)?;
            idle(rpmsg, busy);
        }
        let before = sink.got;
        loop {
            rpmsg.poll(&mut sink).map_err(rerr)?;
            if sink.got > before {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("no echo after {i} round trips"));
            }
            idle(rpmsg, busy);
        }
        if i >= warm {
            v.push(t0.elapsed().as_nanos() as u64);
        }
    }
    if sink.bad > 0 {
        return Err(format!("{} of {} echoes were wrong", sink.bad, sink.got));
    }
    Ok(lat_from(v))
}

/// `n` messages of `size` bytes with up to `window` in flight, spread over `targets`.
pub(super) fn throughput<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    targets: &[(EptId, u32)],
    size: usize,
    n: usize,
    window: usize,
    busy: bool,
) -> Res<Tput> {
    let mut sink = Sink::new();
    let mut buf = message(size);
    let mut seq = 1u32;
    let mut burst = |rpmsg: &mut Rpmsg<T>, sink: &mut Sink, n: usize| -> Res<Duration> {
        let start = Instant::now();
        let end = sink.got + n as u64;
        let mut sent = 0usize;
        while sink.got < end {
            let mut progressed = false;
            while sent < n && (sent as u64) < n as u64 - (end - sink.got) + window as u64 {
                let target = targets[seq as usize % targets.len()];
                if !try_send(rpmsg, target, &mut buf, size, seq)? {
                    break;
                }
                seq += 1;
                sent += 1;
                progressed = true;
            }
            if rpmsg.poll(sink).map_err(rerr)? > 0 {
                progressed = true;
            }
            if !progressed {
                if start.elapsed() > STEP_TIMEOUT {
                    return Err(format!(
                        "stalled after {} of {n} echoes",
                        n as u64 - (end - sink.got)
                    ));
                }
                idle(rpmsg, busy);
            }
        }
        Ok(start.elapsed())
    };
    burst(rpmsg, &mut sink, warmup(n, window))?;
    // The median of several bursts: this machine's other load does not make the figure.
    let each = (n / BURSTS).max(1);
    let mut per_msg = Vec::with_capacity(BURSTS);
    for _ in 0..BURSTS {
        per_msg.push(burst(rpmsg, &mut sink, each)?.as_nanos() as f64 / each as f64);
    }
    if sink.bad > 0 {
        return Err(format!("{} of {} echoes were wrong", sink.bad, sink.got));
    }
    Ok(Tput {
        ns_per_msg: median(per_msg),
        size,
        n: each * BURSTS,
    })
}

/// Bursts a throughput figure is the median of.
pub(super) const BURSTS: usize = 5;

/// Messages a throughput run sends before the timed bursts.
pub(super) fn warmup(n: usize, window: usize) -> usize {
    (n / 10).max(window)
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Round trips and throughput at every size.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fig {
    pub(super) lat: Lat,
    pub(super) tput: Tput,
}

pub(super) fn measure<T: Transport>(
    rpmsg: &mut Rpmsg<T>,
    target: (EptId, u32),
    busy: bool,
    plan: &Plan,
) -> [Res<Fig>; 2] {
    SIZES.map(|size| {
        let lat = round_trips(rpmsg, target, size, plan.lat_iters, busy)?;
        let tput = throughput(rpmsg, &[target], size, plan.tput_msgs, plan.window, busy)?;
        Ok(Fig { lat, tput })
    })
}

/// Echoes every message to its sender from the endpoint it reached; stops on OpenAMP's
/// shutdown word.
#[derive(Debug)]
pub(super) struct Echo {
    pub(super) shutdown: bool,
    pub(super) failed: u64,
    pub(super) buf: [u8; SLOT_BYTES],
}

impl Echo {
    pub(super) fn new() -> Self {
        Echo {
            shutdown: false,
            failed: 0,
            buf: [0; SLOT_BYTES],
        }
    }
}

impl<T: Transport> Handler<T> for Echo {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        let len = (msg.len as usize).min(SLOT_BYTES);
        if rpmsg.read_payload(msg, 0, &mut self.buf[..len]).is_err() {
            self.failed += 1;
            return;
        }
        if len >= 4 && self.buf[..4] == SHUTDOWN_MSG.to_ne_bytes() {
            self.shutdown = true;
            return;
        }
        if rpmsg.sendto(msg.ept, msg.src, &self.buf[..len]).is_err() {
            self.failed += 1;
        }
    }
}
