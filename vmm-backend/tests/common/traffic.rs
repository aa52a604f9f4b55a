//! The traffic pair of the attack suites: bob sends sequence-numbered requests to alice's
//! "a-svc" and alice echoes them; bob checks that every echo comes back exactly once, in
//! order and intact. The pair runs on a thread of its own while a test attacks the hub, and
//! the test asks how far it got ([`Traffic::expect_more`]) and whether it ended well
//! ([`Traffic::finish`]).

use super::WAIT;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vamp_rpmsg::rpmsg::{EptId, Error as RpmsgError, Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::Transport;
use vamp_rpmsg::wire::ADDR_ANY;
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest};

/// The cast of the attack suites, by link id: alice and bob are the traffic pair, carol a
/// helper the test drives by hand, and the attacker comes last.
pub const ALICE: usize = 0;
pub const BOB: usize = 1;
pub const CAROL: usize = 2;
pub const EVIL: usize = 3;

/// The cast's `[[guest]]` sections, the attacker named `evil`, in link-id order.
pub fn cast_toml(evil: &str) -> String {
    super::guests_toml(&["alice", "bob", "carol", evil])
}

/// Requests bob may have in flight.
const WINDOW: u64 = 32;
/// The traffic thread gives up when no echo came back for this long.
const STALL: Duration = Duration::from_secs(30);

/// What a traffic pair sends and what it counts as a failure.
#[derive(Debug, Clone, Copy)]
pub struct TrafficOptions {
    /// The longest request, in bytes (at least 9: the sequence number and one filler byte).
    pub max_len: usize,
    /// Whether a-svc being withdrawn from bob fails the traffic (where no test step
    /// withdraws it on purpose).
    pub withdrawal_fails: bool,
}

/// Request `seq`: its number, then filler derived from it (9 to `max_len` bytes in all).
pub fn seq_payload(seq: u64, max_len: usize) -> Vec<u8> {
    let len = 9 + (seq % (max_len as u64 - 8)) as usize;
    let mut v = seq.to_le_bytes().to_vec();
    v.extend((8..len).map(|k| (seq as u8).wrapping_mul(31) ^ k as u8));
    v
}

/// alice: echoes every message to its sender, in order; what cannot go out yet waits.
#[derive(Default)]
struct EchoServer {
    backlog: VecDeque<(EptId, u32, Vec<u8>)>,
}

impl<T: Transport> Handler<T> for EchoServer {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        if let Ok(data) = rpmsg.payload(msg) {
            self.backlog.push_back((msg.ept, msg.src, data));
        }
    }
}

impl EchoServer {
    fn flush<T: Transport>(&mut self, rpmsg: &mut Rpmsg<T>) -> Result<(), String> {
        while let Some((ept, dst, data)) = self.backlog.front() {
            match rpmsg.trysendto(*ept, *dst, data) {
                Ok(_) => {
                    self.backlog.pop_front();
                }
                Err(RpmsgError::NoBuffer) => return Ok(()),
                Err(e) => return Err(format!("alice could not echo: {e}")),
            }
        }
        Ok(())
    }
}

/// bob: checks that echoes come from a-svc, once each, in order, intact.
struct SeqChecker {
    options: TrafficOptions,
    svc: Option<u32>,
    next: u64,
    error: Option<String>,
}

impl<T: Transport> Handler<T> for SeqChecker {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        let data = rpmsg.payload(msg).unwrap_or_default();
        if self.error.is_some() {
            return;
        }
        if Some(msg.src) != self.svc {
            self.error = Some(format!(
                "bob got a message from {:#x}, which is not a-svc",
                msg.src
            ));
            return;
        }
        if data == seq_payload(self.next, self.options.max_len) {
            self.next += 1;
            return;
        }
        let seq = data
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
        self.error = Some(match seq {
            Some(s) if s < self.next => format!("echo {s} duplicated (expected {})", self.next),
            Some(s) if s > self.next => format!("echoes {}..{s} lost", self.next),
            _ => format!("echo {} corrupted: {data:?}", self.next),
        });
    }

    fn on_name_service(&mut self, _: &mut Rpmsg<T>, e: NsEvent<'_>) {
        match e {
            NsEvent::Created { name, addr, .. } if name == b"a-svc" => self.svc = Some(addr),
            NsEvent::Destroyed { name, .. }
                if name == b"a-svc" && self.options.withdrawal_fails =>
            {
                self.error = Some("a-svc was withdrawn from bob".into());
            }
            _ => {}
        }
    }
}

/// The pair's loop: connects both, then keeps [`WINDOW`] requests in flight until `stop`,
/// publishing the echoes checked so far in `acked`. Returns how many round trips completed.
fn run(
    alice: PathBuf,
    bob: PathBuf,
    options: TrafficOptions,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Result<u64, String> {
    let fail = |what: &'static str| move |e: &dyn std::fmt::Display| format!("{what}: {e}");
    let mut alice = NativeGuest::connect(&alice, GuestOptions::default())
        .map_err(|e| fail("alice connects")(&e))?;
    let mut bob = NativeGuest::connect(&bob, GuestOptions::default())
        .map_err(|e| fail("bob connects")(&e))?;
    alice
        .rpmsg()
        .create_ept(b"a-svc", ADDR_ANY, ADDR_ANY)
        .map_err(|e| fail("alice's a-svc")(&e))?;
    let mut server = EchoServer::default();
    let mut checker = SeqChecker {
        options,
        svc: None,
        next: 0,
        error: None,
    };
    let deadline = Instant::now() + WAIT;
    let svc = loop {
        alice
            .poll(&mut server)
            .map_err(|e| fail("alice polls")(&e))?;
        bob.poll(&mut checker).map_err(|e| fail("bob polls")(&e))?;
        if let Some(svc) = checker.svc {
            break svc;
        }
        if Instant::now() > deadline {
            return Err("a-svc was never offered to bob".into());
        }
        bob.wait(Duration::from_millis(5));
    };
    let ept = bob
        .rpmsg()
        .create_ept(b"", ADDR_ANY, svc)
        .map_err(|e| fail("bob's endpoint")(&e))?;
    let mut sent = 0u64;
    let mut last_progress = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && checker.next == sent {
            return Ok(sent);
        }
        while !stopping && sent < checker.next + WINDOW {
            match bob
                .rpmsg()
                .trysend(ept, &seq_payload(sent, options.max_len))
            {
                Ok(_) => sent += 1,
                Err(RpmsgError::NoBuffer) => break,
                Err(e) => return Err(format!("bob sends {sent}: {e}")),
            }
        }
        let before = checker.next;
        alice
            .poll(&mut server)
            .map_err(|e| fail("alice polls")(&e))?;
        server.flush(alice.rpmsg())?;
        bob.poll(&mut checker).map_err(|e| fail("bob polls")(&e))?;
        if let Some(e) = checker.error.take() {
            return Err(e);
        }
        acked.store(checker.next, Ordering::Relaxed);
        if checker.next > before {
            last_progress = Instant::now();
        } else {
            if last_progress.elapsed() > STALL {
                return Err(format!(
                    "stalled: {} of {sent} echoes back, none for {STALL:?}",
                    checker.next
                ));
            }
            alice.wait(Duration::from_micros(300));
            bob.wait(Duration::from_micros(300));
        }
    }
}

/// The traffic pair's thread.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<u64, String>>>,
}

impl Traffic {
    /// Starts the pair on the sockets of [`ALICE`] and [`BOB`] among `sockets`.
    pub fn start(sockets: &[PathBuf], options: TrafficOptions) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (a, b) = (sockets[ALICE].clone(), sockets[BOB].clone());
        let (s, k) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || run(a, b, options, s, k));
        Traffic {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    /// Round trips completed so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Fails the test if the traffic ended (it only ends on an error before [`finish`]).
    ///
    /// [`finish`]: Traffic::finish
    pub fn check_alive(&mut self, when: &str) {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let result = self.thread.take().unwrap().join();
            panic!("the good traffic ended {when}: {result:?}");
        }
    }

    /// Waits until `n` more round trips complete; fails after [`WAIT`]. Returns the rate.
    pub fn expect_more(&mut self, n: u64, when: &str) -> f64 {
        self.expect_more_while(n, when, || std::thread::sleep(Duration::from_millis(2)))
    }

    /// [`expect_more`](Traffic::expect_more), running `side` (the attack's own loop) while it
    /// waits.
    pub fn expect_more_while(&mut self, n: u64, when: &str, mut side: impl FnMut()) -> f64 {
        let (start, t0) = (self.acked(), Instant::now());
        while self.acked() < start + n {
            self.check_alive(when);
            assert!(
                t0.elapsed() < WAIT,
                "the good traffic slowed down {when}: {} of {n} round trips in {WAIT:?}",
                self.acked() - start
            );
            side();
        }
        n as f64 / t0.elapsed().as_secs_f64()
    }

    /// Stops the traffic once every request sent came back; returns how many did.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().unwrap().join() {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("the good traffic failed: {e}"),
            Err(_) => panic!("the traffic thread panicked"),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
