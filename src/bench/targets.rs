//! The speed targets of issue 5 (judged on split rings, the rows every link has) and of issue
//! 15 (packed rings, the polling hub, no lock shared by disjoint guests): each compares vamp's
//! figures with the floor they are named against and says met, not met or not measured.

use super::report::{LinkRow, Report, ScaleRow, cpu_ratio, fmt_ns, fmt_ratio, scale_ratio};
use vamp_rpmsg::transport::RingFormat;

fn full_ring(r: &Report, kind: &str, guests: usize, size: usize) -> Option<f64> {
    full_ring_on(r, RingFormat::Split, kind, guests, size)
}

fn full_ring_on(
    r: &Report,
    ring: RingFormat,
    kind: &str,
    guests: usize,
    size: usize,
) -> Option<f64> {
    r.full_rings
        .iter()
        .find(|f| f.kind == kind && f.ring == ring && f.guests == guests && f.size == size)
        .and_then(|f| f.ns.as_ref().ok().copied())
}

/// The highest count on split rings.
fn last_split(rows: &[ScaleRow]) -> Option<&ScaleRow> {
    rows.iter().rev().find(|row| row.ring == RingFormat::Split)
}

pub(super) fn link<'a>(
    r: &'a Report,
    key: &str,
    mode: &str,
    size: usize,
    two_cpus: bool,
) -> Option<&'a LinkRow> {
    link_on(r, RingFormat::Split, key, mode, size, two_cpus)
}

fn link_on<'a>(
    r: &'a Report,
    ring: RingFormat,
    key: &str,
    mode: &str,
    size: usize,
    two_cpus: bool,
) -> Option<&'a LinkRow> {
    r.links.iter().find(|l| {
        l.key == key
            && l.mode == mode
            && l.ring == ring
            && l.size == size
            && (l.placement.starts_with("CPUs ") == two_cpus || key != "native")
    })
}

pub(super) fn evaluate_targets(r: &mut Report) {
    let mut t: Vec<(String, String, String)> = Vec::new();
    let verdict = |ok: bool| if ok { "met" } else { "not met" }.to_string();
    // Round trip with notifications.
    let mut lines = Vec::new();
    let mut ok = true;
    for (key, two) in [
        ("native", true),
        ("native", false),
        ("hub_echo", true),
        ("kvm", true),
    ] {
        if let Some(l) = link(r, key, "notify", 16, two)
            && let Some(x) = l.lat_ratio()
        {
            ok &= x <= 1.3;
            lines.push(format!("{} ({}) {x:.2}x", l.label, l.placement));
        }
    }
    t.push((
        "round trip <= 1.3x eventfd/futex floor (notifications, 16 B p50)".into(),
        verdict(ok && !lines.is_empty()),
        lines.join("; "),
    ));
    // Busy-poll.
    let mut lines = Vec::new();
    let mut ok = true;
    for key in ["native", "hub_echo", "guest_hub_guest", "kvm"] {
        if let Some(l) = link(r, key, "busy-poll", 16, true)
            && let Some(x) = l.lat_ratio()
        {
            ok &= x <= 3.0;
            lines.push(format!("{} {x:.2}x", l.label));
        }
    }
    t.push((
        "round trip <= 3x spin floor (busy-poll, 16 B p50)".into(),
        verdict(ok && !lines.is_empty()),
        lines.join("; "),
    ));
    // Hub forwarding.
    let f16 = full_ring(r, "forward", 2, 16);
    let f496 = full_ring(r, "forward", 2, 496);
    t.push((
        "hub forwarding <= 200 ns/message with full rings".into(),
        verdict(f16.is_some_and(|v| v <= 200.0) && f496.is_some_and(|v| v <= 200.0)),
        format!(
            "guest to guest {} (16 B), {} (496 B); 64 guests {} / {}",
            f16.map_or("-".into(), fmt_ns),
            f496.map_or("-".into(), fmt_ns),
            full_ring(r, "forward", 64, 16).map_or("-".into(), fmt_ns),
            full_ring(r, "forward", 64, 496).map_or("-".into(), fmt_ns),
        ),
    ));
    // 496 B throughput vs copying.
    let mut lines = Vec::new();
    let mut ok = true;
    let copy496 = r.copies.iter().find(|c| c.0 == 496).map(|c| c.1);
    for key in ["native", "hub_echo", "guest_hub_guest", "kvm"] {
        let small = link(r, key, "notify", 16, true).and_then(|l| l.fig.as_ref().ok());
        let big = link(r, key, "notify", 496, true).and_then(|l| l.fig.as_ref().ok());
        if let (Some(s), Some(b)) = (small, big) {
            let extra = b.tput.ns_per_msg - s.tput.ns_per_msg;
            let grow = b.tput.ns_per_msg / s.tput.ns_per_msg;
            ok &= grow <= 1.25;
            lines.push(format!(
                "{key}: {} -> {} per message ({grow:.2}x)",
                fmt_ns(s.tput.ns_per_msg),
                fmt_ns(b.tput.ns_per_msg)
            ));
            let _ = extra;
        }
    }
    if let Some(c) = copy496 {
        lines.push(format!("one engine copy of 496 B: {}", fmt_ns(c)));
    }
    t.push((
        "496 B throughput bounded by notifications, not copying (per-message cost 496 B vs 16 B <= 1.25x)"
            .into(),
        verdict(ok && lines.len() > 1),
        lines.join("; "),
    ));
    // Scale.
    let g64 = last_split(&r.guests).and_then(|row| cpu_ratio(&r.guests, row));
    let fr = match (full_ring(r, "echo", 1, 16), full_ring(r, "echo", 64, 16)) {
        (Some(a), Some(b)) => Some(b / a),
        _ => None,
    };
    t.push((
        "64 guests within 10% of 1 per message".into(),
        verdict(g64.is_some_and(|x| x <= 1.1) && fr.is_some_and(|x| x <= 1.1)),
        format!(
            "CPU per message, all echoing with notifications: {}; hub cost with full rings: {}",
            fmt_ratio(g64),
            fmt_ratio(fr)
        ),
    ));
    let e10k = last_split(&r.endpoints).and_then(|row| scale_ratio(&r.endpoints, row));
    t.push((
        "10 000 endpoints within 10% of 1 per message".into(),
        verdict(e10k.is_some_and(|x| x <= 1.1)),
        format!("native link, busy-poll: {}", fmt_ratio(e10k)),
    ));
    let start = r.start.as_ref().and_then(|s| s.as_ref().ok());
    t.push((
        "remote start <= 5 ms (VM creation to first announcement)".into(),
        match start {
            Some(s) => verdict(s.total_ns <= 5e6),
            None => "not measured".into(),
        },
        start.map_or_else(
            || {
                r.start
                    .as_ref()
                    .and_then(|s| s.as_ref().err().cloned())
                    .unwrap_or_default()
            },
            |s| {
                format!(
                    "median {} (min {})",
                    fmt_ns(s.total_ns),
                    fmt_ns(s.min_total_ns)
                )
            },
        ),
    ));
    r.targets = t.into_iter().map(|(a, b, c)| (5, a, b, c)).collect();
    let packed = packed_targets(r);
    r.targets
        .extend(packed.into_iter().map(|(a, b, c)| (15, a, b, c)));
}

/// Issue 15's targets.
fn packed_targets(r: &Report) -> Vec<(String, String, String)> {
    let mut t = Vec::new();
    let verdict = |ok: bool, any: bool| {
        if !any {
            "not measured"
        } else if ok {
            "met"
        } else {
            "not met"
        }
        .to_string()
    };
    // Busy-poll round trips on packed rings, each against its own bound.
    let (mut ok, mut lines) = (true, Vec::new());
    for (key, bound) in [
        ("native", 3.0),
        ("kvm", 3.0),
        ("hub_echo", 4.0),
        ("guest_hub_guest", 6.0),
    ] {
        if let Some(l) = link_on(r, RingFormat::Packed, key, "busy-poll", 16, true)
            && let Some(x) = l.lat_ratio()
        {
            ok &= x <= bound;
            lines.push(format!("{} {x:.2}x (<= {bound}x)", l.label));
        }
    }
    t.push((
        "busy-poll round trip on packed rings: native and KVM <= 3x, guest -> hub <= 4x, guest -> hub -> guest <= 6x the spin floor (16 B p50)".into(),
        verdict(ok, !lines.is_empty()),
        lines.join("; "),
    ));
    // Notify round trips across CPUs stay at the eventfd floor, on both formats.
    let (mut ok, mut lines) = (true, Vec::new());
    for ring in [RingFormat::Split, RingFormat::Packed] {
        for key in ["native", "hub_echo", "guest_hub_guest", "kvm"] {
            if let Some(l) = link_on(r, ring, key, "notify", 16, true)
                && let Some(x) = l.lat_ratio()
            {
                ok &= x <= 1.3;
                lines.push(format!("{key} {} {x:.2}x", ring.name()));
            }
        }
    }
    t.push((
        "notify round trip across CPUs <= 1.3x the eventfd floor, split and packed (16 B p50)"
            .into(),
        verdict(ok, !lines.is_empty()),
        lines.join("; "),
    ));
    // The hub's own cost with full rings.
    let (mut ok, mut lines) = (true, Vec::new());
    for ring in [RingFormat::Split, RingFormat::Packed] {
        for size in [16, 496] {
            if let Some(ns) = full_ring_on(r, ring, "forward", 2, size) {
                ok &= ns <= 150.0;
                lines.push(format!("{} {size} B {}", ring.name(), fmt_ns(ns)));
            }
        }
    }
    t.push((
        "hub forwarding <= 150 ns/message with full rings (guest to guest, split and packed)"
            .into(),
        verdict(ok, !lines.is_empty()),
        lines.join("; "),
    ));
    // 64 guests: CPU per message, and no lock wait between guests that share nothing.
    let g64 = last_split(&r.guests);
    let ratio = g64.and_then(|row| cpu_ratio(&r.guests, row));
    let waited = g64.and_then(|row| row.locks.as_ref());
    t.push((
        "64 guests' CPU per message within 10% of one guest's, no lock wait between disjoint guests".into(),
        verdict(
            ratio.is_some_and(|x| x <= 1.1) && waited.is_some_and(|l| l.waited == 0),
            ratio.is_some() && waited.is_some(),
        ),
        format!(
            "CPU per message {}; hub locks taken {}, waited {}",
            fmt_ratio(ratio),
            waited.map_or("-".into(), |l| l.taken.to_string()),
            waited.map_or("-".into(), |l| l.waited.to_string()),
        ),
    ));
    t
}
