//! `vamp bench`: vamp's round trips, throughput and scaling, side by side with this machine's
//! floors, measured in one run.
//!
//! - **Floors**: eventfd, futex and spin ping-pong between two processes, a windowed echo over
//!   a plain shared-memory ring (no rpmsg), `memcpy`. Each is measured with the CPU placement of
//!   the vamp figures it is compared with: the two sides pinned to two different CPUs, and for
//!   eventfd and futex also both on one CPU.
//! - **Links**, each with notifications (the default) and in busy-poll mode (opt-in: neither side
//!   notifies, both spin on the rings), at 16 and 496 bytes: round-trip p50/p99 and windowed
//!   throughput. The native two-process link (a copy of this program is the remote), a guest
//!   (vamp's own vhost-user frontend) to the hub's echo, guest to hub to guest, and the host to
//!   a KVM remote running the echo firmware. The hub's busy-poll rows run `vhost-user-rpmsg
//!   --poll` itself in a process of its own, on split and on packed rings.
//! - **Scale**: per-message cost with 1, 8 and 64 guests on one hub, with 1, 100 and 10 000
//!   endpoints in one link, and the hub's own cost per message with full rings.
//! - **Rings**: every link, full-ring and scale row names the virtqueue format it ran on, split
//!   or packed. The guests' rows with notifications, the full-ring cost and the guest scale are
//!   measured on both (a packed guest is vamp's frontend acking VIRTIO_F_RING_PACKED).
//! - **Memory** of the hub per connected guest, and **start time** of a KVM remote (from
//!   creating the VM to the first name-service announcement).
//!
//! Every vamp figure comes with its ratio to the floor it is compared with, named in the
//! output; `--json FILE` writes every figure with its unit.

mod clients;
mod floors;
mod hub;
mod in_memory;
mod json;
mod kvm;
mod native_link;
mod peer;
mod polled_hub;
mod report;
mod scale;
mod sys;
mod targets;

use clients::{Fig, Lat};
use floors::{
    Floor, clock_overhead, engine_copy, floor_eventfd, floor_memcpy, floor_pingpong, floor_ring,
};
use hub::{guest_to_guest_notify, hub_echo_notify};
use kvm::{kvm_packed_rows, kvm_rows};
use native_link::native_rows;
pub use peer::run_peer;
pub use polled_hub::HUB_COMMAND;
use polled_hub::{guest_to_guest_busy, hub_echo_busy};
use report::{FullRingRow, LinkMode, Report, ScaleRow, load_average, machine_facts, render};
use scale::{
    ENDPOINT_COUNTS, counter_cost, endpoint_scale, guest_scale, hub_full_rings, hub_memory,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use sys::{allowed_cpus, pin};
use targets::evaluate_targets;
use vamp_rpmsg::transport::RingFormat;

/// What `vamp bench` was asked for.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// Fewer samples (a smoke run of well under 20 s).
    pub quick: bool,
    /// Where to write every figure as JSON.
    pub json: Option<PathBuf>,
}

type Res<T> = Result<T, String>;

/// The name of the hub's echo service in the bench topologies.
const ECHO_NAME: &str = "vamp-bench-echo";
/// The name an echoing guest announces for guest-to-guest rows.
const PEER_NAME: &str = "vamp-bench-peer";
/// The channel the echo firmware answers on (OpenAMP's echo demo).
const FIRMWARE_CHANNEL: &str = "rpmsg-openamp-demo-channel";
/// First of the fixed addresses of the native remote's unannounced echo endpoints.
const ENDPOINT_BASE: u32 = 0x1_0000;
/// Message sizes of every link row: the smallest useful and the largest a 512-byte buffer takes.
const SIZES: [usize; 2] = [16, 496];
/// Slots of the shared-memory ring floor (as many as a vring has entries).
const RING_SLOTS: u32 = 256;
/// Bytes per slot of the ring floor (an rpmsg buffer).
const SLOT_BYTES: usize = 512;
/// The virtqueue formats the hub's guest rows, full-ring rows and guest scale are measured on.
const RINGS: [RingFormat; 2] = [RingFormat::Split, RingFormat::Packed];
/// Bound on any single wait of the bench, so that a broken peer fails a row, not the run.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Sample counts.
#[derive(Debug, Clone, Copy)]
struct Plan {
    floor_iters: usize,
    lat_iters: usize,
    tput_msgs: usize,
    window: usize,
    scale_msgs: usize,
    endpoint_msgs: usize,
    full_ring_msgs: usize,
    memory_guests: usize,
    start_runs: usize,
    memcpy_iters: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let plan = Self::counts(quick);
        if cfg!(debug_assertions) && quick {
            // An unoptimized build measures nothing worth reading: its quick run only checks
            // that everything runs (the smoke test), with a tenth of the samples.
            plan.scaled(10)
        } else {
            plan
        }
    }

    fn scaled(self, by: usize) -> Self {
        Plan {
            floor_iters: self.floor_iters / by,
            lat_iters: self.lat_iters / by,
            tput_msgs: self.tput_msgs / by,
            scale_msgs: self.scale_msgs / by,
            endpoint_msgs: self.endpoint_msgs / by,
            full_ring_msgs: self.full_ring_msgs / by,
            memcpy_iters: self.memcpy_iters / by,
            ..self
        }
    }

    fn counts(quick: bool) -> Self {
        if quick {
            Plan {
                floor_iters: 5_000,
                lat_iters: 3_000,
                tput_msgs: 40_000,
                window: 64,
                scale_msgs: 40_000,
                endpoint_msgs: 200_000,
                full_ring_msgs: 200_000,
                memory_guests: 4,
                start_runs: 3,
                memcpy_iters: 1_000_000,
            }
        } else {
            Plan {
                floor_iters: 40_000,
                lat_iters: 30_000,
                tput_msgs: 600_000,
                window: 64,
                scale_msgs: 600_000,
                endpoint_msgs: 3_000_000,
                full_ring_msgs: 1_000_000,
                memory_guests: 16,
                start_runs: 20,
                memcpy_iters: 10_000_000,
            }
        }
    }
}

/// The two CPUs the bench places its parties on.
#[derive(Debug, Clone, Copy)]
struct Cpus {
    /// The measuring side (host, guest, pinger).
    a: usize,
    /// The other side (remote, hub, echo).
    b: usize,
}

/// Why busy-poll figures are missing on a machine that gives us one CPU: two spinners on one
/// CPU measure the scheduler's time slice.
const ONE_CPU: &str = "not measured: busy-polling needs two CPUs (this process may use one)";

fn busy_only(two_cpus: bool, f: impl FnOnce() -> [Res<Fig>; 2]) -> [Res<Fig>; 2] {
    if two_cpus {
        f()
    } else {
        [Err(ONE_CPU.into()), Err(ONE_CPU.into())]
    }
}

/// Runs every measurement, prints the table and writes the JSON. Returns whether every
/// figure was measured (or is missing for a reason of this machine, said in its place).
pub fn run(opts: &BenchOptions) -> Result<bool, String> {
    let plan = Plan::new(opts.quick);
    let allowed = allowed_cpus();
    let cpus = Cpus {
        a: allowed[0],
        b: *allowed.get(1).unwrap_or(&allowed[0]),
    };
    let two_cpus = allowed.len() >= 2;
    let started = Instant::now();
    pin(cpus.a);
    let mut r = Report {
        machine: machine_facts(&allowed),
        clock_ns: clock_overhead(),
        ..Default::default()
    };
    let two = format!("CPUs {},{}", cpus.a, cpus.b);
    let one = format!("CPU {}", cpus.a);
    eprintln!(
        "vamp bench{}: measuring (A = CPU {}, B = CPU {})...",
        if opts.quick { " --quick" } else { "" },
        cpus.a,
        cpus.b
    );

    // Floors.
    let mut floor = |key: &'static str, label: String, f: &mut dyn FnMut() -> Res<Lat>| {
        let (lat, error) = match f() {
            Ok(l) => (Some(l), None),
            Err(e) => (None, Some(e)),
        };
        r.floors.push(Floor {
            key,
            label,
            lat,
            per_op_ns: None,
            error,
        });
    };
    let n = plan.floor_iters;
    floor(
        "eventfd_rtt_2cpu",
        format!("eventfd ping-pong, 2 processes, {two}"),
        &mut || floor_eventfd(n, cpus.a, cpus.b),
    );
    floor(
        "eventfd_rtt_1cpu",
        format!("eventfd ping-pong, 2 processes, {one}"),
        &mut || floor_eventfd(n, cpus.a, cpus.a),
    );
    floor(
        "futex_rtt_2cpu",
        format!("futex ping-pong, 2 processes, {two}"),
        &mut || floor_pingpong(n, cpus.a, cpus.b, false),
    );
    floor(
        "futex_rtt_1cpu",
        format!("futex ping-pong, 2 processes, {one}"),
        &mut || floor_pingpong(n, cpus.a, cpus.a, false),
    );
    floor(
        "spin_rtt_2cpu",
        format!("spin ping-pong on a cache line, 2 processes, {two}"),
        &mut || {
            if two_cpus {
                floor_pingpong(n * 10, cpus.a, cpus.b, true)
            } else {
                Err(ONE_CPU.into())
            }
        },
    );
    for (key, size) in [("ring_echo_16b_2cpu", 16), ("ring_echo_496b_2cpu", 496)] {
        let ring = if two_cpus {
            floor_ring(plan.tput_msgs * 3, plan.window, size, cpus.a, cpus.b)
        } else {
            Err(ONE_CPU.into())
        };
        let (per_op_ns, error) = match ring {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        r.floors.push(Floor {
            key,
            label: format!(
                "windowed echo over a shared ring, {size} B, window {}, busy-poll, {two}",
                plan.window
            ),
            lat: None,
            per_op_ns,
            error,
        });
    }
    for (key, size) in [
        ("memcpy_16b", 16),
        ("memcpy_496b", 496),
        ("memcpy_512b", 512),
    ] {
        r.floors.push(Floor {
            key,
            label: format!("memcpy {size} B (cache-hot)"),
            lat: None,
            per_op_ns: Some(floor_memcpy(size, plan.memcpy_iters)),
            error: None,
        });
    }
    for size in [16, 496, 512] {
        let m = floor_memcpy(size, plan.memcpy_iters);
        r.copies
            .push((size, engine_copy(size, plan.memcpy_iters), m));
    }
    eprintln!("  floors done ({:.1} s)", started.elapsed().as_secs_f64());

    // Links.
    let nf2 = r.notify_floor(true).map(|(k, v)| (k, v, 1.0));
    let nf1 = r.notify_floor(false).map(|(k, v)| (k, v, 1.0));
    let nf2x2 = r.notify_floor(true).map(|(k, v)| (k, v, 2.0));
    let spin = r.floor("spin_rtt_2cpu").map(|v| ("spin_rtt_2cpu", v, 1.0));

    let figs = native_rows(&plan, cpus.b, false, RingFormat::Split);
    r.push_links(
        "native",
        "native link (2 processes)",
        LinkMode::notify(RingFormat::Split),
        &two,
        figs,
        nf2,
    );
    let figs = native_rows(&plan, cpus.a, false, RingFormat::Split);
    r.push_links(
        "native",
        "native link (2 processes)",
        LinkMode::notify(RingFormat::Split),
        &one,
        figs,
        nf1,
    );
    let figs = busy_only(two_cpus, || {
        native_rows(&plan, cpus.b, true, RingFormat::Split)
    });
    r.push_links(
        "native",
        "native link (2 processes)",
        LinkMode::busy_poll(RingFormat::Split),
        &two,
        figs,
        spin,
    );
    // Packed rings between vamp's two processes (the host asks, the remote's platform entry
    // says it can).
    let figs = native_rows(&plan, cpus.b, false, RingFormat::Packed);
    r.push_links(
        "native",
        "native link (2 processes)",
        LinkMode::notify(RingFormat::Packed),
        &two,
        figs,
        nf2,
    );
    let figs = busy_only(two_cpus, || {
        native_rows(&plan, cpus.b, true, RingFormat::Packed)
    });
    r.push_links(
        "native",
        "native link (2 processes)",
        LinkMode::busy_poll(RingFormat::Packed),
        &two,
        figs,
        spin,
    );
    eprintln!(
        "  native link done ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    let hub_place = format!("guest CPU {}, hub CPU {}", cpus.a, cpus.b);
    for ring in RINGS {
        let figs = hub_echo_notify(&plan, cpus, ring);
        r.push_links(
            "hub_echo",
            "guest -> hub echo",
            LinkMode::notify(ring),
            &hub_place,
            figs,
            nf2,
        );
    }
    for ring in RINGS {
        let figs = busy_only(two_cpus, || hub_echo_busy(&plan, cpus, ring));
        r.push_links(
            "hub_echo",
            "guest -> hub echo (vhost-user-rpmsg --poll)",
            LinkMode::busy_poll(ring),
            &hub_place,
            figs,
            spin,
        );
    }
    let g2g_place = format!("guests CPU {}, hub CPU {}", cpus.a, cpus.b);
    for ring in RINGS {
        let figs = guest_to_guest_notify(&plan, cpus, ring);
        r.push_links(
            "guest_hub_guest",
            "guest -> hub -> guest",
            LinkMode::notify(ring),
            &g2g_place,
            figs,
            nf2x2,
        );
    }
    let g2g_busy = format!("guest CPU {}, hub + echo guest CPU {}", cpus.a, cpus.b);
    for ring in RINGS {
        let figs = busy_only(two_cpus, || guest_to_guest_busy(&plan, cpus, ring));
        r.push_links(
            "guest_hub_guest",
            "guest -> hub -> guest (vhost-user-rpmsg --poll)",
            LinkMode::busy_poll(ring),
            &g2g_busy,
            figs,
            spin,
        );
    }
    eprintln!(
        "  hub links done ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    let kvm_place = format!("host CPU {}, vCPU CPU {}", cpus.a, cpus.b);
    let (figs, busy_figs, start) = kvm_rows(&plan, cpus, two_cpus);
    r.push_links(
        "kvm",
        "host -> KVM remote (echo firmware)",
        LinkMode::notify(RingFormat::Split),
        &kvm_place,
        figs,
        nf2,
    );
    r.push_links(
        "kvm",
        "host -> KVM remote (echo firmware)",
        LinkMode::busy_poll(RingFormat::Split),
        &kvm_place,
        busy_figs,
        spin,
    );
    let (figs, busy_figs) = kvm_packed_rows(&plan, cpus, two_cpus);
    r.push_links(
        "kvm",
        "host -> KVM remote (echo firmware)",
        LinkMode::notify(RingFormat::Packed),
        &kvm_place,
        figs,
        nf2,
    );
    r.push_links(
        "kvm",
        "host -> KVM remote (echo firmware)",
        LinkMode::busy_poll(RingFormat::Packed),
        &kvm_place,
        busy_figs,
        spin,
    );
    r.start = Some(start);
    eprintln!(
        "  KVM remote done ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    // Scale.
    for ring in RINGS {
        for guests in [1, 8, 64] {
            for forward in [false, true] {
                if forward && guests == 1 {
                    continue;
                }
                let guests = if forward && guests == 8 { 2 } else { guests };
                for size in SIZES {
                    r.full_rings.push(FullRingRow {
                        kind: if forward { "forward" } else { "echo" },
                        ring,
                        guests,
                        size,
                        ns: hub_full_rings(&plan, guests, forward, size, ring),
                    });
                }
            }
        }
    }
    // The counters' share of the full-ring cost: as many calls as the rows' messages, 10x.
    r.counters_ns = Some(counter_cost(plan.full_ring_msgs * 10));
    for ring in RINGS {
        for guests in [1, 8, 64] {
            let fig = guest_scale(&plan, cpus, guests, ring);
            r.guests.push(ScaleRow {
                count: guests,
                ring,
                cpu_ns: fig.as_ref().ok().map(|f| f.1),
                locks: fig.as_ref().ok().map(|f| f.2),
                fig: fig.map(|f| f.0),
            });
        }
    }
    eprintln!(
        "  guest scale done ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let endpoints = if two_cpus {
        endpoint_scale(&plan, cpus)
    } else {
        [(); 3].map(|()| Err(ONE_CPU.to_string()))
    };
    for (count, fig) in ENDPOINT_COUNTS.into_iter().zip(endpoints) {
        r.endpoints.push(ScaleRow {
            count: count as usize,
            ring: RingFormat::Split,
            fig,
            cpu_ns: None,
            locks: None,
        });
    }
    r.memory = Some(hub_memory(&plan));
    eprintln!(
        "  scale and memory done ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    r.machine
        .push(("load_average_at_end".into(), load_average()));
    evaluate_targets(&mut r);
    let text = render(&r, &plan, cpus, opts.quick, started.elapsed());
    print!("{text}");
    if let Some(path) = &opts.json {
        let out = json::to_json(&r, &plan, cpus, opts.quick, started.elapsed())?;
        std::fs::write(path, out).map_err(|e| format!("write {}: {e}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    // A figure may be missing only for a reason of this machine ("not measured: ..."), never
    // because something failed.
    let fine = |e: &String| e.starts_with("not measured:");
    let all = r.floors.iter().all(|f| f.error.as_ref().is_none_or(fine))
        && r.links
            .iter()
            .all(|l| l.fig.as_ref().err().is_none_or(fine))
        && r.guests.iter().all(|s| s.fig.is_ok())
        && r.endpoints
            .iter()
            .all(|s| s.fig.as_ref().err().is_none_or(fine))
        && r.full_rings.iter().all(|f| f.ns.is_ok())
        && matches!(r.memory, Some(Ok(_)))
        && r.start
            .as_ref()
            .is_some_and(|s| s.as_ref().err().is_none_or(fine));
    Ok(all)
}
