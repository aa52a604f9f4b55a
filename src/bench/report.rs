//! The report: every figure of a run, the machine it ran on, and its rendering as the table
//! `vamp bench` prints.

use super::clients::{Fig, Tput};
use super::floors::Floor;
use super::kvm::StartFig;
use super::scale::LockCounts;
use super::{Cpus, Plan, Res, SIZES};
use std::path::Path;
use std::time::Duration;
use vamp_rpmsg::transport::RingFormat;

pub(super) fn fmt_ns(ns: f64) -> String {
    if !ns.is_finite() {
        "-".into()
    } else if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 100_000.0 {
        format!("{:.1} us", ns / 1e3)
    } else if ns < 10_000_000.0 {
        format!("{:.0} us", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

pub(super) fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r.is_finite() => format!("{r:.2}x"),
        _ => "-".into(),
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else {
        format!("{:.0} k", r / 1e3)
    }
}

/// How a link is measured: with notifications or busy-polling, on split or packed rings.
#[derive(Debug, Clone, Copy)]
pub(super) struct LinkMode {
    pub(super) busy: bool,
    pub(super) ring: RingFormat,
}

impl LinkMode {
    pub(super) const fn notify(ring: RingFormat) -> Self {
        LinkMode { busy: false, ring }
    }
    pub(super) const fn busy_poll(ring: RingFormat) -> Self {
        LinkMode { busy: true, ring }
    }
}

/// One row of the link table.
#[derive(Debug)]
pub(super) struct LinkRow {
    pub(super) key: &'static str,
    pub(super) label: &'static str,
    pub(super) mode: &'static str,
    /// The virtqueue format of the measured side's link.
    pub(super) ring: RingFormat,
    pub(super) placement: String,
    pub(super) size: usize,
    pub(super) fig: Res<Fig>,
    pub(super) lat_floor: Option<(&'static str, f64, f64)>,
    pub(super) tput_floor: Option<(&'static str, f64)>,
}

impl LinkRow {
    pub(super) fn lat_ratio(&self) -> Option<f64> {
        let (_, floor, mult) = self.lat_floor?;
        Some(self.fig.as_ref().ok()?.lat.p50_ns / (floor * mult))
    }
    pub(super) fn tput_ratio(&self) -> Option<f64> {
        let (_, floor) = self.tput_floor?;
        Some(self.fig.as_ref().ok()?.tput.ns_per_msg / floor)
    }
}

/// A scale figure: per-message cost at some count, compared with count 1 on the same rings.
#[derive(Debug)]
pub(super) struct ScaleRow {
    pub(super) count: usize,
    pub(super) ring: RingFormat,
    pub(super) fig: Res<Tput>,
    /// CPU time of this process per message, where that is the cost that matters.
    pub(super) cpu_ns: Option<f64>,
    /// The hub's lock while guests echoed (guest rows only).
    pub(super) locks: Option<LockCounts>,
}

#[derive(Debug)]
pub(super) struct FullRingRow {
    pub(super) kind: &'static str,
    /// The format of every guest's rings.
    pub(super) ring: RingFormat,
    pub(super) guests: usize,
    pub(super) size: usize,
    pub(super) ns: Res<f64>,
}

#[derive(Debug, Default)]
pub(super) struct Report {
    pub(super) machine: Vec<(String, String)>,
    pub(super) floors: Vec<Floor>,
    pub(super) copies: Vec<(usize, f64, f64)>,
    pub(super) links: Vec<LinkRow>,
    pub(super) full_rings: Vec<FullRingRow>,
    /// The hub's counter updates per message, timed alone (`scale::counter_cost`).
    pub(super) counters_ns: Option<f64>,
    pub(super) guests: Vec<ScaleRow>,
    pub(super) endpoints: Vec<ScaleRow>,
    pub(super) memory: Option<Res<[f64; 3]>>,
    pub(super) start: Option<Res<StartFig>>,
    /// The issues' speed targets: (issue, target, verdict, figures).
    pub(super) targets: Vec<(u32, String, String, String)>,
    pub(super) clock_ns: f64,
}

impl Report {
    /// The hub's cost per message forwarded between 2 guests, 16 B, split rings: what the
    /// counters' share is of.
    pub(super) fn forward_16b_split(&self) -> Option<f64> {
        self.full_rings
            .iter()
            .find(|f| {
                f.kind == "forward" && f.guests == 2 && f.size == 16 && f.ring == RingFormat::Split
            })
            .and_then(|f| f.ns.as_ref().ok().copied())
    }

    /// The counters' cost as a share of [`forward_16b_split`](Self::forward_16b_split).
    pub(super) fn counters_share(&self) -> Option<f64> {
        Some(self.counters_ns? / self.forward_16b_split()?)
    }

    pub(super) fn floor(&self, key: &str) -> Option<f64> {
        self.floors
            .iter()
            .find(|f| f.key == key)
            .and_then(Floor::value_ns)
    }

    /// The better of eventfd and futex ping-pong in one placement.
    pub(super) fn notify_floor(&self, two_cpus: bool) -> Option<(&'static str, f64)> {
        let (e, f) = if two_cpus {
            ("eventfd_rtt_2cpu", "futex_rtt_2cpu")
        } else {
            ("eventfd_rtt_1cpu", "futex_rtt_1cpu")
        };
        match (self.floor(e), self.floor(f)) {
            (Some(a), Some(b)) if b < a => Some((f, b)),
            (Some(a), _) => Some((e, a)),
            (None, Some(b)) => Some((f, b)),
            (None, None) => None,
        }
    }

    pub(super) fn push_links(
        &mut self,
        key: &'static str,
        label: &'static str,
        how: LinkMode,
        placement: &str,
        figs: [Res<Fig>; 2],
        lat_floor: Option<(&'static str, f64, f64)>,
    ) {
        for (size, fig) in SIZES.into_iter().zip(figs) {
            let ring_floor = if size == 16 {
                "ring_echo_16b_2cpu"
            } else {
                "ring_echo_496b_2cpu"
            };
            self.links.push(LinkRow {
                key,
                label,
                mode: if how.busy { "busy-poll" } else { "notify" },
                ring: how.ring,
                placement: placement.into(),
                size,
                fig,
                lat_floor,
                tput_floor: self.floor(ring_floor).map(|f| (ring_floor, f)),
            });
        }
    }
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows in every figure.
pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(super) fn machine_facts(cpus: &[usize]) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let hypervisor = cpuinfo.contains(" hypervisor");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
        "kvm_pvm (software hypervisor: guest CPL0 emulated, CPL3 native)"
    } else if Path::new("/sys/module/kvm_intel").exists() {
        "kvm_intel"
    } else if Path::new("/sys/module/kvm_amd").exists() {
        "kvm_amd"
    } else if Path::new("/dev/kvm").exists() {
        "present"
    } else {
        "absent"
    };
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let build = if cfg!(debug_assertions) {
        "debug (unoptimized: figures not meaningful)"
    } else {
        "release"
    };
    vec![
        ("build".into(), build.into()),
        ("cpus".into(), cpus.len().to_string()),
        ("cpu_model".into(), model),
        (
            "virtualized".into(),
            if hypervisor { "yes (vCPUs)" } else { "no" }.into(),
        ),
        ("kernel".into(), kernel),
        ("kvm".into(), kvm.into()),
        (
            "memory_gib".into(),
            format!("{:.0}", mem_kib as f64 / 1048576.0),
        ),
        ("load_average_at_start".into(), load_average()),
    ]
}

/// The count-1 row on the same rings as `row`.
fn scale_base<'a>(rows: &'a [ScaleRow], row: &ScaleRow) -> Option<&'a ScaleRow> {
    rows.iter().find(|b| b.ring == row.ring && b.count == 1)
}

pub(super) fn scale_ratio(rows: &[ScaleRow], row: &ScaleRow) -> Option<f64> {
    let base = scale_base(rows, row)?.fig.as_ref().ok()?.ns_per_msg;
    Some(row.fig.as_ref().ok()?.ns_per_msg / base)
}

pub(super) fn cpu_ratio(rows: &[ScaleRow], row: &ScaleRow) -> Option<f64> {
    Some(row.cpu_ns? / scale_base(rows, row)?.cpu_ns?)
}

pub(super) fn render(r: &Report, plan: &Plan, cpus: Cpus, quick: bool, took: Duration) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nvamp bench{} ({:.0} s)",
        if quick { " --quick" } else { "" },
        took.as_secs_f64()
    );
    let facts: Vec<String> = r.machine.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let _ = writeln!(o, "machine: {}", facts.join(", "));
    let _ = writeln!(
        o,
        "placement: the measuring side on CPU {}, its peer on CPU {} unless a row says otherwise; \
         clock read {:.0} ns (inside every figure)",
        cpus.a, cpus.b, r.clock_ns
    );
    let _ = writeln!(
        o,
        "\nfloors                                                                  p50 / per op      p99"
    );
    for f in &r.floors {
        match (&f.lat, f.per_op_ns, &f.error) {
            (_, _, Some(e)) => {
                let _ = writeln!(o, "  {:<70} failed: {e}", f.label);
            }
            (Some(l), _, _) => {
                let _ = writeln!(
                    o,
                    "  {:<70} {:>10} {:>10}",
                    f.label,
                    fmt_ns(l.p50_ns),
                    fmt_ns(l.p99_ns)
                );
            }
            (None, Some(v), _) => {
                let _ = writeln!(o, "  {:<70} {:>10}", f.label, fmt_ns(v));
            }
            _ => {}
        }
    }
    for (size, engine, memcpy) in &r.copies {
        let _ = writeln!(
            o,
            "  {:<70} {:>10}   ({:.1}x memcpy)",
            format!("vamp: engine copy of {size} B between memories (volatile, checked)"),
            fmt_ns(*engine),
            engine / memcpy
        );
    }
    let _ = writeln!(
        o,
        "\nlinks: round trip p50/p99 (one message at a time) and echoed messages per second with {} \
         in flight; x floor = p50 / latency floor, ns per message / ring-echo floor",
        plan.window
    );
    let _ = writeln!(
        o,
        "  {:<37} {:<9} {:<6} {:<31} {:>5} {:>9} {:>9} {:>7} {:>9} {:>8} {:>7}",
        "link",
        "mode",
        "rings",
        "placement",
        "size",
        "rtt p50",
        "rtt p99",
        "x floor",
        "msgs/s",
        "MB/s",
        "x floor"
    );
    for l in &r.links {
        match &l.fig {
            Ok(f) => {
                let _ = writeln!(
                    o,
                    "  {:<37} {:<9} {:<6} {:<31} {:>3} B {:>9} {:>9} {:>7} {:>9} {:>8.1} {:>7}",
                    l.label,
                    l.mode,
                    l.ring.name(),
                    l.placement,
                    l.size,
                    fmt_ns(f.lat.p50_ns),
                    fmt_ns(f.lat.p99_ns),
                    fmt_ratio(l.lat_ratio()),
                    fmt_rate(f.tput.msgs_per_s()),
                    f.tput.mb_per_s(),
                    fmt_ratio(l.tput_ratio())
                );
            }
            Err(e) => {
                let e = if e.starts_with("not measured") {
                    e.clone()
                } else {
                    format!("not measured: {e}")
                };
                let _ = writeln!(
                    o,
                    "  {:<37} {:<9} {:<6} {:<31} {:>3} B {e}",
                    l.label,
                    l.mode,
                    l.ring.name(),
                    l.placement,
                    l.size
                );
            }
        }
    }
    let mut floors_used: Vec<String> = Vec::new();
    for l in &r.links {
        if let Some((k, v, m)) = l.lat_floor {
            let s = if m == 1.0 {
                format!("{} = {k} ({})", l.label, fmt_ns(v))
            } else {
                format!("{} = {m:.0} x {k} ({})", l.label, fmt_ns(v * m))
            };
            if l.mode == "notify" && !floors_used.contains(&s) {
                floors_used.push(s);
            }
        }
    }
    let _ = writeln!(
        o,
        "  latency floors: notify rows: {}; busy-poll rows: spin_rtt_2cpu",
        floors_used.join("; ")
    );

    let _ = writeln!(
        o,
        "\nhub cost per message with full rings (one thread: every sender fills 256 messages, the hub serves each once; x floor = / memcpy of the payload)\n  {:<45} {:<6} {:>5} {:>10} {:>9}",
        "guests", "rings", "size", "hub", "x floor"
    );
    for f in &r.full_rings {
        let floor = r.floor(if f.size == 16 {
            "memcpy_16b"
        } else {
            "memcpy_496b"
        });
        let what = if f.kind == "echo" {
            format!("{} guest(s) -> hub echo", f.guests)
        } else {
            format!("{} guests, {} pair(s) forwarding", f.guests, f.guests / 2)
        };
        match &f.ns {
            Ok(v) => {
                let _ = writeln!(
                    o,
                    "  {:<45} {:<6} {:>3} B {:>10} {:>9}",
                    what,
                    f.ring.name(),
                    f.size,
                    fmt_ns(*v),
                    fmt_ratio(floor.map(|m| v / m))
                );
            }
            Err(e) => {
                let _ = writeln!(
                    o,
                    "  {:<45} {:<6} {:>3} B not measured: {e}",
                    what,
                    f.ring.name(),
                    f.size
                );
            }
        }
    }
    if let Some(ns) = r.counters_ns {
        let share = r
            .counters_share()
            .map_or("-".into(), |s| format!("{:.1} %", s * 100.0));
        let _ = writeln!(
            o,
            "  counters (LinkStats::count_delivered, the hub's per-message counting, timed alone): {} per message, {share} of 2 guests' forwarding, 16 B, split",
            fmt_ns(ns)
        );
    }
    let _ = writeln!(
        o,
        "\nscale: per-message cost (x = / the count-1 figure on the same rings)"
    );
    for (title, rows) in [
        (
            "guests echoing through one hub at once (vhost-user, notifications, 16 B, window 16 each)",
            &r.guests,
        ),
        (
            "endpoints per side of one native link (busy-poll, 16 B, messages round-robin; median of 3 rounds)",
            &r.endpoints,
        ),
    ] {
        let _ = writeln!(o, "  {title}");
        for row in rows {
            match &row.fig {
                Ok(t) => {
                    let mut cpu = row.cpu_ns.map_or(String::new(), |c| {
                        format!(
                            "; CPU {} per message {:>7}",
                            fmt_ns(c),
                            fmt_ratio(cpu_ratio(rows, row))
                        )
                    });
                    if let Some(l) = row.locks {
                        let _ = write!(
                            cpu,
                            "; hub lock taken {} times, {:.1}% of them waited",
                            l.taken,
                            100.0 * l.waited as f64 / l.taken.max(1) as f64
                        );
                    }
                    let _ = writeln!(
                        o,
                        "    {:>6} {:>6}: wall {:>8} per message ({} msgs/s) {:>7}{cpu}",
                        row.count,
                        row.ring.name(),
                        fmt_ns(t.ns_per_msg),
                        fmt_rate(t.msgs_per_s()),
                        fmt_ratio(scale_ratio(rows, row))
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        o,
                        "    {:>6} {:>6}: not measured: {e}",
                        row.count,
                        row.ring.name()
                    );
                }
            }
        }
    }
    let _ = writeln!(
        o,
        "\nhub memory per connected guest ({} guest processes, each after traffic through every buffer)",
        plan.memory_guests
    );
    match &r.memory {
        Some(Ok([rss, anon, shmem])) => {
            let _ = writeln!(
                o,
                "  RSS {rss:.0} KiB per guest: {anon:.0} KiB private (hub state, threads), {shmem:.0} KiB of guest memory mapped"
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(o, "  not measured: {e}");
        }
        None => {}
    }
    let _ = writeln!(
        o,
        "\nremote start (KVM, echo firmware; KvmRemote::new to the first name-service announcement)"
    );
    match &r.start {
        Some(Ok(s)) => {
            let _ = writeln!(
                o,
                "  {} runs: median {}, min {}; x floor {} (floor: creating the VM); median steps: VM {}, load {}, start to announcement {}",
                s.runs,
                fmt_ns(s.total_ns),
                fmt_ns(s.min_total_ns),
                fmt_ratio(Some(s.total_ns / s.vm_ns)),
                fmt_ns(s.vm_ns),
                fmt_ns(s.load_ns),
                fmt_ns(s.announce_ns)
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(o, "  not measured: {e}");
        }
        None => {}
    }
    let mut issue = 0;
    for (of, what, verdict, detail) in &r.targets {
        if *of != issue {
            issue = *of;
            let _ = writeln!(o, "\ntargets (issue {issue})");
        }
        let _ = writeln!(o, "  [{verdict}] {what}: {detail}");
    }
    o
}
