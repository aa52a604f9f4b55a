//! The figures as JSON (`vamp bench --json FILE`): a serde form of the report, one struct per
//! section, every figure with its unit in its name. A figure that could not be measured is
//! replaced by an `error` saying why ("not measured: ...").

use super::clients::Lat;
use super::report::{Report, ScaleRow, cpu_ratio, scale_ratio};
use super::{Cpus, Plan};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use std::time::Duration;

const UNITS: &str = "*_us microseconds, *_ns nanoseconds, *_ms milliseconds, *_kib KiB, \
                     msgs_per_s echoed messages per second, mb_per_s payload megabytes (1e6) per \
                     second one way, ratios are vamp / floor (1.0 = at the floor)";

/// The whole document, in the order it is written.
#[derive(serde::Serialize)]
struct Document<'a> {
    vamp_bench: u32,
    quick: &'static str,
    seconds: f64,
    units: &'static str,
    machine: OrderedMap<Value>,
    floors: OrderedMap<Option<FloorJson<'a>>>,
    engine_copy: Vec<CopyJson>,
    links: Vec<LinkJson<'a>>,
    hub_full_rings: Vec<FullRingJson>,
    hub_counters: Option<CountersJson>,
    scale_guests: Vec<ScaleJson>,
    scale_endpoints: Vec<ScaleJson>,
    hub_memory: Option<Measured<MemoryJson>>,
    remote_start: Option<Measured<StartJson>>,
    targets: Vec<TargetJson<'a>>,
}

/// An object whose keys are written in the order given (the machine facts, the floors).
struct OrderedMap<V>(Vec<(String, V)>);

impl<V: Serialize> Serialize for OrderedMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Figures, or the reason they are missing; flattened into the row that names them.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Measured<T> {
    Figures(T),
    Missing { error: String },
}

impl<T> Measured<T> {
    fn from<F>(fig: &Result<F, String>, figures: impl FnOnce(&F) -> T) -> Self {
        match fig {
            Ok(f) => Measured::Figures(figures(f)),
            Err(e) => Measured::Missing { error: why(e) },
        }
    }
}

/// Every missing figure says "not measured: ..." first.
fn why(e: &str) -> String {
    if e.starts_with("not measured") {
        e.to_string()
    } else {
        format!("not measured: {e}")
    }
}

#[derive(serde::Serialize)]
struct LatJson {
    p50_us: f64,
    p99_us: f64,
    samples: usize,
}

impl From<&Lat> for LatJson {
    fn from(l: &Lat) -> Self {
        LatJson {
            p50_us: l.p50_ns / 1e3,
            p99_us: l.p99_ns / 1e3,
            samples: l.n,
        }
    }
}

#[derive(serde::Serialize)]
struct FloorJson<'a> {
    label: &'a str,
    #[serde(flatten)]
    figure: FloorFigure,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum FloorFigure {
    Missing { error: String },
    RoundTrip { rtt: LatJson },
    PerOp { ns_per_op: f64 },
}

#[derive(serde::Serialize)]
struct CopyJson {
    size_bytes: usize,
    engine_copy_ns: f64,
    memcpy_ns: f64,
    ratio_to_memcpy: f64,
}

#[derive(serde::Serialize)]
struct LinkJson<'a> {
    link: &'a str,
    label: &'a str,
    mode: &'a str,
    /// "split" or "packed": the virtqueue format of the measured link.
    ring: &'static str,
    placement: &'a str,
    size_bytes: usize,
    #[serde(flatten)]
    figures: Measured<LinkFigures<'a>>,
}

#[derive(serde::Serialize)]
struct LinkFigures<'a> {
    rtt: LatJson,
    msgs_per_s: f64,
    mb_per_s: f64,
    ns_per_msg: f64,
    window: usize,
    messages: usize,
    latency_floor: Option<LatencyFloor<'a>>,
    latency_ratio: Option<f64>,
    throughput_floor: Option<ThroughputFloor<'a>>,
    throughput_ratio: Option<f64>,
}

#[derive(serde::Serialize)]
struct LatencyFloor<'a> {
    floor: &'a str,
    multiple: f64,
    p50_us: f64,
}

#[derive(serde::Serialize)]
struct ThroughputFloor<'a> {
    floor: &'a str,
    ns_per_msg: f64,
}

#[derive(serde::Serialize)]
struct FullRingJson {
    kind: &'static str,
    ring: &'static str,
    guests: usize,
    size_bytes: usize,
    #[serde(flatten)]
    figures: Measured<FullRingFigures>,
}

/// The hub's counter updates per message, timed alone, and their share of the hub's cost per
/// message forwarded between 2 guests (16 B, split rings).
#[derive(serde::Serialize)]
struct CountersJson {
    ns_per_msg: f64,
    share_of_forward_16b_split: Option<f64>,
}

#[derive(serde::Serialize)]
struct FullRingFigures {
    hub_ns_per_msg: f64,
    floor: &'static str,
    ratio: Option<f64>,
}

/// A scale row: its count under the name of what is counted ("guests", "endpoints").
#[derive(serde::Serialize)]
struct ScaleJson {
    #[serde(flatten)]
    count: OrderedMap<usize>,
    ring: &'static str,
    #[serde(flatten)]
    figures: Measured<ScaleFigures>,
}

#[derive(serde::Serialize)]
struct ScaleFigures {
    ns_per_msg: f64,
    msgs_per_s: f64,
    messages: usize,
    ratio_to_1: Option<f64>,
    cpu_ns_per_msg: Option<f64>,
    cpu_ratio_to_1: Option<f64>,
    hub_lock_taken: Option<u64>,
    hub_lock_waited: Option<u64>,
}

#[derive(serde::Serialize)]
struct MemoryJson {
    guests: usize,
    rss_kib_per_guest: f64,
    private_anon_kib_per_guest: f64,
    guest_memory_mapped_kib_per_guest: f64,
    /// No floor to compare with: written as null so that every section has the key.
    floor: Option<&'static str>,
}

#[derive(serde::Serialize)]
struct StartJson {
    runs: usize,
    total_ms: f64,
    min_total_ms: f64,
    vm_create_ms: f64,
    load_ms: f64,
    start_to_announcement_ms: f64,
    floor: &'static str,
    ratio: f64,
}

#[derive(serde::Serialize)]
struct TargetJson<'a> {
    /// The issue that set it (5: the first round; 15: packed rings and the polling hub).
    issue: u32,
    target: &'a str,
    status: &'a str,
    figures: &'a str,
}

fn scale_rows(rows: &[ScaleRow], what: &str) -> Vec<ScaleJson> {
    rows.iter()
        .map(|row| ScaleJson {
            count: OrderedMap(vec![(what.to_string(), row.count)]),
            ring: row.ring.name(),
            figures: Measured::from(&row.fig, |t| ScaleFigures {
                ns_per_msg: t.ns_per_msg,
                msgs_per_s: t.msgs_per_s(),
                messages: t.n,
                ratio_to_1: scale_ratio(rows, row),
                cpu_ns_per_msg: row.cpu_ns,
                cpu_ratio_to_1: cpu_ratio(rows, row),
                hub_lock_taken: row.locks.map(|l| l.taken),
                hub_lock_waited: row.locks.map(|l| l.waited),
            }),
        })
        .collect()
}

/// The report as pretty-printed JSON, ending in a newline. Non-finite figures are written as
/// null.
pub(super) fn to_json(
    r: &Report,
    plan: &Plan,
    cpus: Cpus,
    quick: bool,
    took: Duration,
) -> Result<String, String> {
    let machine = r
        .machine
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .chain([
            ("cpu_a".to_string(), Value::from(cpus.a)),
            ("cpu_b".to_string(), Value::from(cpus.b)),
            ("clock_read_ns".to_string(), Value::from(r.clock_ns)),
        ])
        .collect();
    let floors = r
        .floors
        .iter()
        .map(|f| {
            let figure = match (&f.lat, f.per_op_ns, &f.error) {
                (_, _, Some(e)) => Some(FloorFigure::Missing { error: why(e) }),
                (Some(l), _, _) => Some(FloorFigure::RoundTrip { rtt: l.into() }),
                (None, Some(v), _) => Some(FloorFigure::PerOp { ns_per_op: v }),
                (None, None, None) => None,
            };
            let floor = figure.map(|figure| FloorJson {
                label: &f.label,
                figure,
            });
            (f.key.to_string(), floor)
        })
        .collect();
    let engine_copy = r
        .copies
        .iter()
        .map(|&(size, engine, memcpy)| CopyJson {
            size_bytes: size,
            engine_copy_ns: engine,
            memcpy_ns: memcpy,
            ratio_to_memcpy: engine / memcpy,
        })
        .collect();
    let links = r
        .links
        .iter()
        .map(|l| LinkJson {
            link: l.key,
            label: l.label,
            mode: l.mode,
            ring: l.ring.name(),
            placement: &l.placement,
            size_bytes: l.size,
            figures: Measured::from(&l.fig, |f| LinkFigures {
                rtt: (&f.lat).into(),
                msgs_per_s: f.tput.msgs_per_s(),
                mb_per_s: f.tput.mb_per_s(),
                ns_per_msg: f.tput.ns_per_msg,
                window: plan.window,
                messages: f.tput.n,
                latency_floor: l.lat_floor.map(|(floor, v, multiple)| LatencyFloor {
                    floor,
                    multiple,
                    p50_us: v * multiple / 1e3,
                }),
                latency_ratio: l.lat_ratio(),
                throughput_floor: l
                    .tput_floor
                    .map(|(floor, ns_per_msg)| ThroughputFloor { floor, ns_per_msg }),
                throughput_ratio: l.tput_ratio(),
            }),
        })
        .collect();
    let hub_full_rings = r
        .full_rings
        .iter()
        .map(|f| {
            let floor = if f.size == 16 {
                "memcpy_16b"
            } else {
                "memcpy_496b"
            };
            FullRingJson {
                kind: f.kind,
                ring: f.ring.name(),
                guests: f.guests,
                size_bytes: f.size,
                figures: Measured::from(&f.ns, |&v| FullRingFigures {
                    hub_ns_per_msg: v,
                    floor,
                    ratio: r.floor(floor).map(|m| v / m),
                }),
            }
        })
        .collect();
    let hub_memory = r.memory.as_ref().map(|m| {
        Measured::from(m, |&[rss, anon, shmem]| MemoryJson {
            guests: plan.memory_guests,
            rss_kib_per_guest: rss,
            private_anon_kib_per_guest: anon,
            guest_memory_mapped_kib_per_guest: shmem,
            floor: None,
        })
    });
    let remote_start = r.start.as_ref().map(|st| {
        Measured::from(st, |st| StartJson {
            runs: st.runs,
            total_ms: st.total_ns / 1e6,
            min_total_ms: st.min_total_ns / 1e6,
            vm_create_ms: st.vm_ns / 1e6,
            load_ms: st.load_ns / 1e6,
            start_to_announcement_ms: st.announce_ns / 1e6,
            floor: "vm_create_ms (KvmRemote::new: VM, memory, vCPU)",
            ratio: st.total_ns / st.vm_ns,
        })
    });
    let targets = r
        .targets
        .iter()
        .map(|(issue, target, status, figures)| TargetJson {
            issue: *issue,
            target,
            status,
            figures,
        })
        .collect();
    let doc = Document {
        vamp_bench: 1,
        quick: if quick { "yes" } else { "no" },
        seconds: took.as_secs_f64(),
        units: UNITS,
        machine: OrderedMap(machine),
        floors: OrderedMap(floors),
        engine_copy,
        links,
        hub_full_rings,
        hub_counters: r.counters_ns.map(|ns_per_msg| CountersJson {
            ns_per_msg,
            share_of_forward_16b_split: r.counters_share(),
        }),
        scale_guests: scale_rows(&r.guests, "guests"),
        scale_endpoints: scale_rows(&r.endpoints, "endpoints"),
        hub_memory,
        remote_start,
        targets,
    };
    let mut text = serde_json::to_string_pretty(&doc).map_err(|e| format!("JSON: {e}"))?;
    text.push('\n');
    Ok(text)
}
