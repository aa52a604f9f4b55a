//! `vamp bench --quick` runs end to end and writes every figure: a smoke test of the benchmark
//! harness (it checks that every figure is there, never how fast anything is).

use serde_json::Value;
use std::process::Command;

/// Lookups that fail the test with the path that was missing.
trait Lookup {
    fn get_or_fail(&self, key: &str) -> &Value;
    fn arr(&self) -> &[Value];
    fn has(&self, key: &str) -> bool;
    /// A positive figure.
    fn figure(&self, what: &str) -> f64;
    /// Either the figures are there, or the reason they are not.
    fn measured(&self, what: &str) -> bool;
    /// The row's virtqueue format: "split" or "packed".
    fn ring(&self) -> &str;
}

impl Lookup for Value {
    fn get_or_fail(&self, key: &str) -> &Value {
        self.as_object()
            .and_then(|m| m.get(key))
            .unwrap_or_else(|| panic!("no {key:?} in {self:?}"))
    }

    fn arr(&self) -> &[Value] {
        self.as_array()
            .unwrap_or_else(|| panic!("not an array: {self:?}"))
    }

    fn has(&self, key: &str) -> bool {
        self.as_object().is_some_and(|m| m.contains_key(key))
    }

    fn figure(&self, what: &str) -> f64 {
        match self.as_f64() {
            Some(v) if v > 0.0 && v.is_finite() => v,
            _ => panic!("{what}: not a positive number: {self:?}"),
        }
    }

    fn ring(&self) -> &str {
        match self.get_or_fail("ring").as_str() {
            Some(r @ ("split" | "packed")) => r,
            r => panic!("ring is neither split nor packed: {r:?} in {self:?}"),
        }
    }

    fn measured(&self, what: &str) -> bool {
        if self.has("error") {
            let Some(e) = self.get_or_fail("error").as_str() else {
                panic!("{what}: error is not a string")
            };
            assert!(
                e.starts_with("not measured: ") && e.len() > 20,
                "{what}: {e}"
            );
            false
        } else {
            true
        }
    }
}

/// The links (and modes) measured on packed rings as well as split ones.
const PACKED_LINKS: [(&str, &str); 8] = [
    ("native", "notify"),
    ("native", "busy-poll"),
    ("hub_echo", "notify"),
    ("hub_echo", "busy-poll"),
    ("guest_hub_guest", "notify"),
    ("guest_hub_guest", "busy-poll"),
    ("kvm", "notify"),
    ("kvm", "busy-poll"),
];

/// A link row's figures and their ratios to a named floor, or why it was not measured.
fn check_link_rows(rows: &[&Value], what: &str) {
    for row in rows {
        if !row.measured(what) {
            continue;
        }
        row.get_or_fail("rtt").get_or_fail("p50_us").figure(what);
        row.get_or_fail("rtt").get_or_fail("p99_us").figure(what);
        row.get_or_fail("msgs_per_s").figure(what);
        row.get_or_fail("mb_per_s").figure(what);
        row.get_or_fail("latency_ratio").figure(what);
        assert!(row.get_or_fail("latency_floor").has("floor"), "{what}");
        // The throughput floor spins on two CPUs: on one it is missing, and so is the ratio
        // to it.
        if !row.get_or_fail("throughput_floor").is_null() {
            assert!(row.get_or_fail("throughput_floor").has("floor"), "{what}");
            row.get_or_fail("throughput_ratio").figure(what);
        }
    }
}

#[test]
fn quick_bench_writes_every_figure() {
    let dir = std::env::temp_dir().join(format!("vamp-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_vamp"))
        .args(["bench", "--quick", "--json"])
        .arg(&json_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vamp bench --quick failed:\n{stdout}\n{stderr}"
    );
    for section in [
        "floors",
        "links",
        "hub cost per message",
        "scale",
        "hub memory",
        "targets",
    ] {
        assert!(
            stdout.contains(section),
            "no {section} in the table:\n{stdout}"
        );
    }
    // Packed rows stand beside the split ones in the table.
    for link in ["guest -> hub echo ", "guest -> hub -> guest "] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(link) && l.contains(" packed ")),
            "no packed row for {link} in the table:\n{stdout}"
        );
    }
    let text = std::fs::read_to_string(&json_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let j: Value = serde_json::from_str(&text).expect("the figures are JSON");

    // Machine and floors.
    for key in ["cpus", "cpu_model", "kernel", "kvm", "clock_read_ns"] {
        assert!(j.get_or_fail("machine").has(key), "machine.{key}");
    }
    // Spinning floors need two CPUs; the others are always measured.
    let floors = j.get_or_fail("floors");
    for key in [
        "eventfd_rtt_2cpu",
        "eventfd_rtt_1cpu",
        "futex_rtt_2cpu",
        "futex_rtt_1cpu",
        "spin_rtt_2cpu",
    ] {
        let floor = floors.get_or_fail(key);
        if key.starts_with("spin") && !floor.measured(key) {
            continue;
        }
        floor.get_or_fail("rtt").get_or_fail("p50_us").figure(key);
        floor.get_or_fail("rtt").get_or_fail("p99_us").figure(key);
    }
    for key in [
        "ring_echo_16b_2cpu",
        "ring_echo_496b_2cpu",
        "memcpy_16b",
        "memcpy_496b",
        "memcpy_512b",
    ] {
        let floor = floors.get_or_fail(key);
        if key.starts_with("ring") && !floor.measured(key) {
            continue;
        }
        floor.get_or_fail("ns_per_op").figure(key);
    }
    assert_eq!(j.get_or_fail("engine_copy").arr().len(), 3);

    // Every link in both modes at both sizes on split rings, and those of PACKED_LINKS on
    // packed rings too; each row has its figures and their ratios to a named floor, or says
    // why it was not measured.
    let links = j.get_or_fail("links").arr();
    for link in ["native", "hub_echo", "guest_hub_guest", "kvm"] {
        for mode in ["notify", "busy-poll"] {
            for size in [16.0, 496.0] {
                for ring in ["split", "packed"] {
                    if ring == "packed" && !PACKED_LINKS.contains(&(link, mode)) {
                        continue;
                    }
                    let rows: Vec<&Value> = links
                        .iter()
                        .filter(|r| {
                            r.get_or_fail("link") == link
                                && r.get_or_fail("mode") == mode
                                && r.get_or_fail("size_bytes") == size
                                && r.ring() == ring
                        })
                        .collect();
                    let what = format!("{link} {mode} {ring} {size}");
                    assert!(!rows.is_empty(), "no row for {what}");
                    check_link_rows(&rows, &what);
                }
            }
        }
    }
    // The native link and the hub with notifications run everywhere: they are always
    // measured (busy-poll needs two CPUs, the KVM remote needs KVM).
    for row in links {
        let Some(link) = row.get_or_fail("link").as_str() else {
            panic!("link is not a string: {row:?}")
        };
        if link != "kvm" && row.get_or_fail("mode") == "notify" {
            assert!(row.measured(link), "{row:?}");
        }
    }

    // Scale, memory, start time, targets. The hub's full-ring cost and the guest scale are
    // measured on both ring formats, the endpoint scale (a native link) on split rings.
    let full = j.get_or_fail("hub_full_rings").arr();
    for ring in ["split", "packed"] {
        assert_eq!(
            full.iter().filter(|r| r.ring() == ring).count(),
            10,
            "{ring}: echo with 1, 8, 64 guests and forwarding with 2, 64, at 2 sizes"
        );
    }
    assert_eq!(full.len(), 20);
    for row in full {
        assert!(row.measured("hub_full_rings"));
        row.get_or_fail("hub_ns_per_msg").figure("hub_full_rings");
        row.get_or_fail("ratio").figure("hub_full_rings");
    }
    // The counters' cost per message and its share of the hub's (next to the full-ring rows).
    let counters = j.get_or_fail("hub_counters");
    counters.get_or_fail("ns_per_msg").figure("hub_counters");
    counters
        .get_or_fail("share_of_forward_16b_split")
        .figure("hub_counters");
    assert!(
        stdout.contains("counters (LinkStats::count_delivered"),
        "no counters line in the report:\n{stdout}"
    );
    for (key, counts, rings) in [
        ("scale_guests", [1.0, 8.0, 64.0], &["split", "packed"][..]),
        ("scale_endpoints", [1.0, 100.0, 10_000.0], &["split"][..]),
    ] {
        let all = j.get_or_fail(key).arr();
        let what = if key == "scale_guests" {
            "guests"
        } else {
            "endpoints"
        };
        for &ring in rings {
            let rows: Vec<&Value> = all.iter().filter(|r| r.ring() == ring).collect();
            assert_eq!(rows.len(), 3, "{key} {ring}");
            for (row, count) in rows.into_iter().zip(counts) {
                assert_eq!(row.get_or_fail(what), &count);
                if key == "scale_guests" || row.measured(key) {
                    row.get_or_fail("ns_per_msg").figure(key);
                    row.get_or_fail("ratio_to_1").figure(key);
                }
            }
        }
    }
    for row in j.get_or_fail("scale_guests").arr() {
        row.get_or_fail("cpu_ns_per_msg").figure("scale_guests");
        row.get_or_fail("cpu_ratio_to_1").figure("scale_guests");
    }
    let memory = j.get_or_fail("hub_memory");
    assert!(memory.measured("hub_memory"));
    memory.get_or_fail("rss_kib_per_guest").figure("hub_memory");
    let start = j.get_or_fail("remote_start");
    if start.measured("remote_start") {
        for key in [
            "total_ms",
            "vm_create_ms",
            "load_ms",
            "start_to_announcement_ms",
            "ratio",
        ] {
            start.get_or_fail(key).figure(key);
        }
    }
    let targets = j.get_or_fail("targets").arr();
    let of_issue = |n: u64| {
        targets
            .iter()
            .filter(|t| t.get("issue").and_then(Value::as_u64) == Some(n))
            .count()
    };
    assert_eq!(of_issue(5), 7, "every target of issue 5");
    assert_eq!(
        of_issue(15),
        4,
        "every speed target of issue 15 that vamp bench measures"
    );
    assert_eq!(targets.len(), 11);
    for t in targets {
        assert!(t.has("target") && t.has("status") && t.has("figures"));
    }
}
