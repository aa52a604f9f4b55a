//! Scale: per-message cost with 1, 8 and 64 guests on one hub, with 1, 100 and 10 000 endpoints
//! in one link, the hub's own cost per message with full rings, and the hub's memory per guest.
//! The guest and full-ring figures are taken on split and on packed rings.

use super::clients::{Sink, Tput, find_name, median, message, rerr, throughput, try_send, warmup};
use super::hub::{connect_guest, start_vhost_hub, topology};
use super::in_memory::{DirectGuest, KickEnv, call_notifier, direct_hub};
use super::native_link::NativeSession;
use super::peer::{Peer, arg};
use super::sys::{cpu_time_ns, new_eventfd, pin, read_status, temp_dir};
use super::{Cpus, ECHO_NAME, PEER_NAME, Plan, Res};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use vamp_rpmsg::rpmsg::{Config, Rpmsg};
use vamp_rpmsg::transport::{DeviceRings, DriverTransport, RingFormat, Transport};
use vamp_rpmsg::wire::{ADDR_ANY, Endian};
use vamp_vmm_backend::hub::SharedHub;
use vamp_vmm_backend::hub::{Hub, LinkStats, Notifier, POLL_BUDGET};
use vamp_vmm_backend::vhost_user::serve_guest;

/// Endpoint counts of the endpoint scale.
pub(super) const ENDPOINT_COUNTS: [u32; 3] = [1, 100, 10_000];
/// Rounds over every endpoint count, in alternating order, so that a change in the machine's
/// other load does not land on one count only.
const ENDPOINT_ROUNDS: usize = 3;

/// Per-message cost with 1, 100 and 10 000 endpoints on each side of a native link
/// (busy-poll, windowed, messages spread round-robin): medians over rounds.
pub(super) fn endpoint_scale(plan: &Plan, cpus: Cpus) -> [Res<Tput>; 3] {
    let mut per_count: [Vec<Res<Tput>>; 3] = Default::default();
    for round in 0..ENDPOINT_ROUNDS {
        for k in 0..ENDPOINT_COUNTS.len() {
            let k = if round % 2 == 0 {
                k
            } else {
                ENDPOINT_COUNTS.len() - 1 - k
            };
            let run = || -> Res<Tput> {
                let mut session = NativeSession::start(cpus.b, true, ENDPOINT_COUNTS[k])?;
                let targets = session.targets.clone();
                let n = plan.endpoint_msgs / ENDPOINT_ROUNDS;
                let t = throughput(&mut session.rpmsg, &targets, 16, n, plan.window, true);
                session.finish()?;
                t
            };
            per_count[k].push(run());
        }
    }
    per_count.map(|runs| {
        let mut ok = Vec::new();
        for r in runs {
            ok.push(r?);
        }
        let ns = median(ok.iter().map(|t| t.ns_per_msg).collect());
        Ok(Tput {
            ns_per_msg: ns,
            size: 16,
            n: ok.iter().map(|t| t.n).sum(),
        })
    })
}

/// Per-message cost with `guests` guests all echoing through the hub at once (16 bytes,
/// windowed, notifications, every guest on `ring` rings): the wall time of all of them over
/// the messages of all of them, and the CPU time of this process (guests and hub) per message.
pub(super) fn guest_scale(
    plan: &Plan,
    cpus: Cpus,
    guests: usize,
    ring: RingFormat,
) -> Res<(Tput, f64, LockCounts)> {
    let hub = start_vhost_hub(guests, false, cpus.b)?;
    let per_guest = (plan.scale_msgs / guests).max(plan.window);
    let window = 16;
    let ready = Arc::new(Barrier::new(guests + 1));
    let done = Arc::new(Barrier::new(guests + 1));
    let threads: Vec<_> = hub
        .sockets
        .iter()
        .map(|socket| {
            let (socket, ready, done) = (socket.clone(), ready.clone(), done.clone());
            std::thread::spawn(move || -> Res<usize> {
                pin(cpus.a);
                let setup = (|| {
                    let mut g = connect_guest(&socket, ring)?;
                    let addr = find_name(g.rpmsg(), ECHO_NAME, false)?;
                    let ept = g.rpmsg().create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
                    throughput(g.rpmsg(), &[(ept, addr)], 16, window, window, false)?;
                    Ok::<_, String>((g, (ept, addr)))
                })();
                ready.wait();
                // Every guest stays connected until all are done: a disconnect costs the hub.
                let mut guest = None;
                let result = match setup {
                    Ok((g, target)) => {
                        let g = guest.insert(g);
                        throughput(g.rpmsg(), &[target], 16, per_guest, window, false)
                    }
                    Err(e) => Err(e),
                };
                done.wait();
                drop(guest);
                result.map(|t| t.n + warmup(per_guest, window))
            })
        })
        .collect();
    ready.wait();
    let (start, cpu0, locks0) = (Instant::now(), cpu_time_ns(), hub.hub.lock_counts());
    done.wait();
    let (took, cpu, locks1) = (start.elapsed(), cpu_time_ns() - cpu0, hub.hub.lock_counts());
    // Each guest's throughput() runs a warm-up before its timed bursts; the wall time covers
    // both, so both count.
    let mut total = 0;
    for t in threads {
        total += t.join().map_err(|_| "guest thread panicked")??;
    }
    Ok((
        Tput {
            ns_per_msg: took.as_nanos() as f64 / total as f64,
            size: 16,
            n: total,
        },
        cpu / total as f64,
        LockCounts {
            taken: locks1.0 - locks0.0,
            waited: locks1.1 - locks0.1,
        },
    ))
}

/// How often the hub's locks (one per group of connected guests: here one per guest) were taken
/// while guests echoed, and how often a thread found one held by another and had to wait.
#[derive(Debug, Clone, Copy)]
pub(super) struct LockCounts {
    pub(super) taken: u64,
    pub(super) waited: u64,
}

/// A guest of the full-ring rows on `ring` rings. `DirectGuest::new` sets up split rings; a
/// packed guest's rings are set up again, packed, in the same areas of the same memory (the
/// hub has not seen the split ones: it is first served after this).
fn full_ring_guest(id: usize, ring: RingFormat) -> Res<DirectGuest> {
    let mut g = DirectGuest::new(id, false)?;
    if ring == RingFormat::Split {
        return Ok(g);
    }
    let layout = *g.rpmsg.transport().layout();
    let env = KickEnv {
        fd: new_eventfd(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        start: Instant::now(),
        kicks: 0,
    };
    let t = DriverTransport::with_format(g.ram.clone(), env, layout, Endian::Little, true, ring)
        .map_err(|e| e.to_string())?;
    g.rpmsg = Rpmsg::new(t, Config::default());
    g.rpmsg.transport_mut().flush().map_err(|e| e.to_string())?;
    let fresh = DeviceRings::fresh(g.info.rings[0], g.info.rings[1], ring);
    g.info.format = fresh.format;
    g.info.next_avail = fresh.next_avail;
    Ok(g)
}

/// The hub's own cost per message with full rings, on one thread: every sender fills its
/// transmit ring (256 messages), then the hub serves each sender once (timed), then the
/// receivers drain (not timed). Echo: every guest sends to the hub's echo; forward: guest
/// 2k sends to guest 2k+1. Every guest's rings are of `ring` format. Interrupts are real
/// eventfd writes, batched by EVENT_IDX.
pub(super) fn hub_full_rings(
    plan: &Plan,
    guests: usize,
    forward: bool,
    size: usize,
    ring: RingFormat,
) -> Res<f64> {
    let (hub, _dir) = direct_hub(guests, forward)?;
    let notifier: Arc<dyn Notifier> = call_notifier()?;
    let mut gs: Vec<DirectGuest> = (0..guests)
        .map(|i| full_ring_guest(i, ring))
        .collect::<Res<_>>()?;
    for g in &gs {
        g.serve(&hub, &notifier);
    }
    let senders: Vec<usize> = if forward {
        for g in gs.iter_mut().skip(1).step_by(2) {
            g.rpmsg
                .create_ept(PEER_NAME.as_bytes(), ADDR_ANY, ADDR_ANY)
                .map_err(rerr)?;
        }
        for g in gs.iter().skip(1).step_by(2) {
            g.serve(&hub, &notifier);
        }
        (0..guests).step_by(2).collect()
    } else {
        (0..guests).collect()
    };
    let name = if forward { PEER_NAME } else { ECHO_NAME };
    let mut targets = vec![None; guests];
    for &i in &senders {
        let addr = find_name(&mut gs[i].rpmsg, name, false)?;
        let ept = gs[i].rpmsg.create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
        targets[i] = Some((ept, addr));
    }
    let receivers: Vec<usize> = if forward {
        (1..guests).step_by(2).collect()
    } else {
        senders.clone()
    };
    let mut buf = message(size);
    let mut sink = Sink::new();
    // The hub's own announcements (its echo service) still sit in the receivers' rings.
    for &i in &receivers {
        gs[i].rpmsg.poll(&mut sink).map_err(rerr)?;
    }
    let rounds = (plan.full_ring_msgs / (256 * senders.len())).max(3);
    let (mut hub_time, mut msgs) = (Duration::ZERO, 0usize);
    for round in 0..rounds + 1 {
        let mut filled = 0;
        for &i in &senders {
            let target = targets[i].ok_or("no target")?;
            for _ in 0..256 {
                if !try_send(&mut gs[i].rpmsg, target, &mut buf, size, 1)? {
                    break;
                }
                filled += 1;
            }
        }
        // A service call takes at most the hub's per-poll budget from one guest: round-robin
        // over the senders until every ring is drained, as the hub's own resume does.
        let passes = 256usize.div_ceil(POLL_BUDGET) + 1;
        let start = Instant::now();
        for _ in 0..passes {
            for &i in &senders {
                gs[i].serve(&hub, &notifier);
            }
        }
        let took = start.elapsed();
        let before = sink.got;
        for &i in &receivers {
            gs[i].rpmsg.poll(&mut sink).map_err(rerr)?;
        }
        if sink.got - before != filled as u64 {
            return Err(format!(
                "{filled} messages sent, {} delivered",
                sink.got - before
            ));
        }
        // Round 0 warms up (first use of every buffer).
        if round > 0 {
            hub_time += took;
            msgs += filled;
        }
    }
    Ok(hub_time.as_nanos() as f64 / msgs.max(1) as f64)
}

/// The hub's counting work per message, alone: [`LinkStats::count_delivered`], the call
/// `forward.rs` makes for every message it delivers, timed in a loop of `calls` on counters
/// kept in memory (as a guest's slot keeps them). Nanoseconds per call, loop included: an upper
/// bound, to set against the full-ring rows' cost per message.
pub(super) fn counter_cost(calls: usize) -> f64 {
    use std::hint::black_box;
    let mut stats = LinkStats::default();
    let start = Instant::now();
    for _ in 0..calls {
        black_box(&mut stats).count_delivered(black_box(true), black_box(16));
    }
    let took = start.elapsed();
    black_box(&stats);
    took.as_nanos() as f64 / calls.max(1) as f64
}

/// `vamp bench-peer hub-full-rings GUESTS echo|forward SIZE MSGS [split|packed]`: the
/// full-ring hub measurement alone (split rings unless told), for profiling it
/// (`valgrind --tool=callgrind`, `perf record`).
pub(super) fn peer_hub_full_rings(args: &[String]) -> Res<()> {
    let guests: usize = arg(args, 0, "guest count")?;
    let forward = match args.get(1).map(String::as_str) {
        Some("echo") => false,
        Some("forward") => true,
        _ => return Err("bench-peer hub-full-rings: say echo or forward".into()),
    };
    let size: usize = arg(args, 2, "message size")?;
    let msgs: usize = arg(args, 3, "message count")?;
    let ring = match args.get(4) {
        None => RingFormat::Split,
        Some(name) => RingFormat::from_name(name).ok_or_else(|| {
            format!("bench-peer hub-full-rings: rings are split or packed, not {name:?}")
        })?,
    };
    let plan = Plan {
        full_ring_msgs: msgs,
        ..Plan::counts(true)
    };
    let ns = hub_full_rings(&plan, guests, forward, size, ring)?;
    println!("{ns:.1} ns per message");
    Ok(())
}

pub(super) fn peer_hub_guest(args: &[String]) -> Res<()> {
    let socket: PathBuf = arg(args, 0, "socket")?;
    let mut g = connect_guest(&socket, RingFormat::Split)?;
    let addr = find_name(g.rpmsg(), ECHO_NAME, false)?;
    let ept = g.rpmsg().create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
    // Enough traffic to use every buffer of both rings.
    throughput(g.rpmsg(), &[(ept, addr)], 496, 1024, 200, false)?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    Ok(())
}

pub(super) fn peer_hub_memory(args: &[String]) -> Res<()> {
    let guests: usize = arg(args, 0, "guest count")?;
    let dir = temp_dir("mem")?;
    // One guest more than measured: the first one pays the one-time costs (code paged in,
    // allocator arenas, the hub itself) before the baseline is taken.
    let t = topology(guests + 1, false, &dir.0)?;
    let sockets: Vec<PathBuf> = t.guests.iter().map(|g| g.socket.clone()).collect();
    let hub = SharedHub::new(Hub::new(t));
    for (id, socket) in sockets.iter().enumerate() {
        let (hub, socket) = (hub.clone(), socket.clone());
        std::thread::spawn(move || serve_guest(hub, id, &socket));
    }
    let mut peers = Vec::new();
    let mut before = [0; 3];
    for (i, socket) in sockets.iter().enumerate() {
        let mut p = Peer::spawn(&["hub-guest".into(), socket.display().to_string()])?;
        if i == 0 {
            let line = p.line()?;
            if line != "ready" {
                return Err(format!("guest said {line:?}"));
            }
            before = read_status();
        }
        peers.push(p);
    }
    for p in peers.iter_mut().skip(1) {
        let line = p.line()?;
        if line != "ready" {
            return Err(format!("guest said {line:?}"));
        }
    }
    let after = read_status();
    let per = |i: usize| after[i].saturating_sub(before[i]) as f64 / guests as f64;
    println!("memory {} {} {}", per(0), per(1), per(2));
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for p in peers {
        p.finish()?;
    }
    Ok(())
}

/// Hub memory per guest: (RSS, private anonymous, shared guest pages) KiB per guest.
pub(super) fn hub_memory(plan: &Plan) -> Res<[f64; 3]> {
    let mut p = Peer::spawn(&["hub-memory".into(), plan.memory_guests.to_string()])?;
    let line = p.line()?;
    p.finish()?;
    let v: Vec<f64> = line
        .strip_prefix("memory ")
        .ok_or_else(|| format!("unexpected answer {line:?}"))?
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [rss, anon, shmem] => Ok([rss, anon, shmem]),
        _ => Err(format!("unexpected answer {line:?}")),
    }
}
