//! `vamp bench --quick` runs end to end and writes every figure: a smoke test of the benchmark
//! harness (it checks that every figure is there, never how fast anything is).

use std::collections::BTreeMap;
use std::process::Command;

/// Just enough JSON to read the bench's output.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) {
        self.ws();
        assert_eq!(
            self.s.get(self.i),
            Some(&c),
            "expected {:?} at {}",
            c as char,
            self.i
        );
        self.i += 1;
    }

    fn value(&mut self) -> Json {
        self.ws();
        match self.s[self.i] {
            b'{' => {
                self.i += 1;
                let mut m = BTreeMap::new();
                self.ws();
                if self.s[self.i] == b'}' {
                    self.i += 1;
                    return Json::Obj(m);
                }
                loop {
                    let Json::Str(k) = self.value() else {
                        panic!("object key at {}", self.i)
                    };
                    self.eat(b':');
                    let v = self.value();
                    m.insert(k, v);
                    self.ws();
                    self.i += 1;
                    match self.s[self.i - 1] {
                        b',' => continue,
                        b'}' => return Json::Obj(m),
                        c => panic!("unexpected {:?} at {}", c as char, self.i),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s[self.i] == b']' {
                    self.i += 1;
                    return Json::Arr(v);
                }
                loop {
                    v.push(self.value());
                    self.ws();
                    self.i += 1;
                    match self.s[self.i - 1] {
                        b',' => continue,
                        b']' => return Json::Arr(v),
                        c => panic!("unexpected {:?} at {}", c as char, self.i),
                    }
                }
            }
            b'"' => {
                self.i += 1;
                let mut out = String::new();
                loop {
                    let c = self.s[self.i];
                    self.i += 1;
                    match c {
                        b'"' => return Json::Str(out),
                        b'\\' => {
                            let e = self.s[self.i];
                            self.i += 1;
                            match e {
                                b'n' => out.push('\n'),
                                b'u' => {
                                    let hex = std::str::from_utf8(&self.s[self.i..self.i + 4]);
                                    let code = u32::from_str_radix(hex.unwrap(), 16).unwrap();
                                    out.push(char::from_u32(code).unwrap());
                                    self.i += 4;
                                }
                                other => out.push(other as char),
                            }
                        }
                        _ => {
                            // Copy a whole UTF-8 sequence.
                            let start = self.i - 1;
                            let mut end = self.i;
                            while end < self.s.len() && (self.s[end] & 0xc0) == 0x80 {
                                end += 1;
                            }
                            out.push_str(std::str::from_utf8(&self.s[start..end]).unwrap());
                            self.i = end;
                        }
                    }
                }
            }
            b't' => {
                self.i += 4;
                Json::Bool(true)
            }
            b'f' => {
                self.i += 5;
                Json::Bool(false)
            }
            b'n' => {
                self.i += 4;
                Json::Null
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len() && b"+-.eE0123456789".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                Json::Num(text.parse().unwrap_or_else(|_| panic!("number {text:?}")))
            }
        }
    }
}

fn parse(text: &str) -> Json {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value();
    p.ws();
    assert_eq!(p.i, text.len(), "trailing bytes after the JSON value");
    v
}

impl Json {
    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(m) => m
                .get(key)
                .unwrap_or_else(|| panic!("no {key:?} in {self:?}")),
            _ => panic!("{key:?} looked up in a non-object {self:?}"),
        }
    }

    fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(v) => v,
            _ => panic!("not an array: {self:?}"),
        }
    }

    fn has(&self, key: &str) -> bool {
        matches!(self, Json::Obj(m) if m.contains_key(key))
    }

    /// A positive figure.
    fn figure(&self, what: &str) -> f64 {
        match self {
            Json::Num(v) if *v > 0.0 && v.is_finite() => *v,
            _ => panic!("{what}: not a positive number: {self:?}"),
        }
    }

    /// Either the figures are there, or the reason they are not.
    fn measured(&self, what: &str) -> bool {
        if self.has("error") {
            let Json::Str(e) = self.get("error") else {
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
    let text = std::fs::read_to_string(&json_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let j = parse(&text);

    // Machine and floors.
    for key in ["cpus", "cpu_model", "kernel", "kvm", "clock_read_ns"] {
        assert!(j.get("machine").has(key), "machine.{key}");
    }
    // Spinning floors need two CPUs; the others are always measured.
    let floors = j.get("floors");
    for key in [
        "eventfd_rtt_2cpu",
        "eventfd_rtt_1cpu",
        "futex_rtt_2cpu",
        "futex_rtt_1cpu",
        "spin_rtt_2cpu",
    ] {
        let floor = floors.get(key);
        if key.starts_with("spin") && !floor.measured(key) {
            continue;
        }
        floor.get("rtt").get("p50_us").figure(key);
        floor.get("rtt").get("p99_us").figure(key);
    }
    for key in [
        "ring_echo_16b_2cpu",
        "ring_echo_496b_2cpu",
        "memcpy_16b",
        "memcpy_496b",
        "memcpy_512b",
    ] {
        let floor = floors.get(key);
        if key.starts_with("ring") && !floor.measured(key) {
            continue;
        }
        floor.get("ns_per_op").figure(key);
    }
    assert_eq!(j.get("engine_copy").arr().len(), 3);

    // Every link in both modes at both sizes; each row has its figures and their ratios to a
    // named floor, or says why it was not measured.
    let links = j.get("links").arr();
    for link in ["native", "hub_echo", "guest_hub_guest", "kvm"] {
        for mode in ["notify", "busy-poll"] {
            for size in [16.0, 496.0] {
                let rows: Vec<&Json> = links
                    .iter()
                    .filter(|r| {
                        r.get("link") == &Json::Str(link.into())
                            && r.get("mode") == &Json::Str(mode.into())
                            && r.get("size_bytes") == &Json::Num(size)
                    })
                    .collect();
                let what = format!("{link} {mode} {size}");
                assert!(!rows.is_empty(), "no row for {what}");
                for row in rows {
                    if !row.measured(&what) {
                        continue;
                    }
                    row.get("rtt").get("p50_us").figure(&what);
                    row.get("rtt").get("p99_us").figure(&what);
                    row.get("msgs_per_s").figure(&what);
                    row.get("mb_per_s").figure(&what);
                    row.get("latency_ratio").figure(&what);
                    assert!(row.get("latency_floor").has("floor"), "{what}");
                    // The throughput floor spins on two CPUs: on one it is missing, and so
                    // is the ratio to it.
                    if row.get("throughput_floor") != &Json::Null {
                        assert!(row.get("throughput_floor").has("floor"), "{what}");
                        row.get("throughput_ratio").figure(&what);
                    }
                }
            }
        }
    }
    // The native link and the hub with notifications run everywhere: they are always
    // measured (busy-poll needs two CPUs, the KVM remote needs KVM).
    for row in links {
        let Json::Str(link) = row.get("link") else {
            panic!()
        };
        if link != "kvm" && row.get("mode") == &Json::Str("notify".into()) {
            assert!(row.measured(link), "{row:?}");
        }
    }

    // Scale, memory, start time, targets.
    let full = j.get("hub_full_rings").arr();
    assert_eq!(
        full.len(),
        10,
        "echo with 1, 8, 64 guests and forwarding with 2, 64, at 2 sizes"
    );
    for row in full {
        assert!(row.measured("hub_full_rings"));
        row.get("hub_ns_per_msg").figure("hub_full_rings");
        row.get("ratio").figure("hub_full_rings");
    }
    for (key, counts) in [
        ("scale_guests", [1.0, 8.0, 64.0]),
        ("scale_endpoints", [1.0, 100.0, 10_000.0]),
    ] {
        let rows = j.get(key).arr();
        assert_eq!(rows.len(), 3, "{key}");
        let what = if key == "scale_guests" {
            "guests"
        } else {
            "endpoints"
        };
        for (row, count) in rows.iter().zip(counts) {
            assert_eq!(row.get(what), &Json::Num(count));
            if key == "scale_guests" || row.measured(key) {
                row.get("ns_per_msg").figure(key);
                row.get("ratio_to_1").figure(key);
            }
        }
    }
    for row in j.get("scale_guests").arr() {
        row.get("cpu_ns_per_msg").figure("scale_guests");
        row.get("cpu_ratio_to_1").figure("scale_guests");
    }
    let memory = j.get("hub_memory");
    assert!(memory.measured("hub_memory"));
    memory.get("rss_kib_per_guest").figure("hub_memory");
    let start = j.get("remote_start");
    if start.measured("remote_start") {
        for key in [
            "total_ms",
            "vm_create_ms",
            "load_ms",
            "start_to_announcement_ms",
            "ratio",
        ] {
            start.get(key).figure(key);
        }
    }
    let targets = j.get("targets").arr();
    assert_eq!(targets.len(), 7, "every target of issue 5");
    for t in targets {
        assert!(t.has("target") && t.has("status") && t.has("figures"));
    }
}
