//! Pure parts of `vamp-guest-agent`: message patterns, the rpmsg ioctl ABI, argument and
//! sysfs value parsing, latency statistics. Everything here is unit-tested on the host;
//! `main.rs` does the I/O inside the guest.

/// Largest rpmsg payload with Linux's 512-byte buffers (512 - 16-byte header).
pub const MAX_PAYLOAD: usize = 496;

/// `RPMSG_ADDR_ANY`: let the kernel pick the local address.
pub const RPMSG_ADDR_ANY: u32 = 0xFFFF_FFFF;

/// The rpmsg user-space ABI of `include/uapi/linux/rpmsg.h`, computed here.
pub mod ioctl {
    /// Length of the `name` field of `struct rpmsg_endpoint_info`.
    pub const RPMSG_NAME_SIZE: usize = 32;

    /// `struct rpmsg_endpoint_info { char name[32]; __u32 src; __u32 dst; }`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EndpointInfo {
        /// NUL-terminated channel name.
        pub name: [u8; RPMSG_NAME_SIZE],
        /// Local address (`RPMSG_ADDR_ANY` for a dynamic one).
        pub src: u32,
        /// Remote address.
        pub dst: u32,
    }

    impl EndpointInfo {
        /// Builds the struct; fails if `name` does not fit with its NUL terminator.
        pub fn new(name: &str, src: u32, dst: u32) -> Result<Self, String> {
            let bytes = name.as_bytes();
            if bytes.len() >= RPMSG_NAME_SIZE {
                return Err(format!(
                    "name {name:?} is {} bytes: at most {} fit",
                    bytes.len(),
                    RPMSG_NAME_SIZE - 1
                ));
            }
            if bytes.contains(&0) {
                return Err(format!("name {name:?} contains a NUL byte"));
            }
            let mut info = EndpointInfo {
                name: [0; RPMSG_NAME_SIZE],
                src,
                dst,
            };
            info.name[..bytes.len()].copy_from_slice(bytes);
            Ok(info)
        }
    }

    // Linux's generic ioctl encoding (x86, arm, riscv...): nr 8 bits, type 8, size 14, dir 2.
    const IOC_NRSHIFT: u32 = 0;
    const IOC_TYPESHIFT: u32 = 8;
    const IOC_SIZESHIFT: u32 = 16;
    const IOC_DIRSHIFT: u32 = 30;
    const IOC_NONE: u32 = 0;
    const IOC_WRITE: u32 = 1;

    /// `_IOC(dir, type, nr, size)`.
    pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
        (dir << IOC_DIRSHIFT)
            | ((size as u32) << IOC_SIZESHIFT)
            | (ty << IOC_TYPESHIFT)
            | (nr << IOC_NRSHIFT)
    }

    /// The rpmsg ioctl type byte.
    pub const RPMSG_IOC_MAGIC: u32 = 0xb5;

    /// `_IOW(0xb5, 0x1, struct rpmsg_endpoint_info)`, on `/dev/rpmsg_ctrlN`.
    pub const RPMSG_CREATE_EPT_IOCTL: u32 = ioc(
        IOC_WRITE,
        RPMSG_IOC_MAGIC,
        0x1,
        core::mem::size_of::<EndpointInfo>(),
    );
    /// `_IO(0xb5, 0x2)`, on the `/dev/rpmsgN` fd of an endpoint made with CREATE_EPT.
    pub const RPMSG_DESTROY_EPT_IOCTL: u32 = ioc(IOC_NONE, RPMSG_IOC_MAGIC, 0x2, 0);
    /// `_IOW(0xb5, 0x3, struct rpmsg_endpoint_info)`, on `/dev/rpmsg_ctrlN`: creates an rpmsg
    /// channel device (Linux >= 5.18). With a fixed `src` Linux announces it to the remote
    /// (name-service create); named "rpmsg-raw", rpmsg_char binds it and makes a /dev/rpmsgN.
    pub const RPMSG_CREATE_DEV_IOCTL: u32 = ioc(
        IOC_WRITE,
        RPMSG_IOC_MAGIC,
        0x3,
        core::mem::size_of::<EndpointInfo>(),
    );
    /// `_IOW(0xb5, 0x4, struct rpmsg_endpoint_info)`, on `/dev/rpmsg_ctrlN`: releases a
    /// channel device made with CREATE_DEV.
    pub const RPMSG_RELEASE_DEV_IOCTL: u32 = ioc(
        IOC_WRITE,
        RPMSG_IOC_MAGIC,
        0x4,
        core::mem::size_of::<EndpointInfo>(),
    );
}

/// Test message layout: bytes 0..4 the sequence number (little-endian), byte 4 a stream tag,
/// the rest a pseudo-random pattern derived from (sequence, tag, offset). Shorter messages
/// carry a prefix of that layout: every byte is still a function of (seq, tag, offset), so a
/// byte-exact comparison catches shifted, truncated, swapped or stale payloads.
pub mod pattern {
    /// Byte `i` of message `seq` of the stream `tag`.
    pub fn byte_at(seq: u32, tag: u8, i: usize) -> u8 {
        match i {
            0..=3 => seq.to_le_bytes()[i],
            4 => tag,
            _ => {
                // A small integer hash (splitmix-like): cheap, position dependent, never constant.
                let mut x = (u64::from(seq) << 32)
                    ^ ((i as u64) << 8)
                    ^ u64::from(tag)
                    ^ 0x9E37_79B9_7F4A_7C15;
                x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (x ^ (x >> 31)) as u8
            }
        }
    }

    /// The whole message `seq` of length `len`.
    pub fn make(seq: u32, tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| byte_at(seq, tag, i)).collect()
    }

    /// Size of message `k` when sizes cycle through `min..=max`.
    pub fn size_for(k: u64, min: usize, max: usize) -> usize {
        debug_assert!(min <= max);
        min + (k % (max - min + 1) as u64) as usize
    }

    /// The sequence number a message claims, if it is long enough to carry it.
    pub fn seq_of(msg: &[u8]) -> Option<u32> {
        msg.get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Checks `got` against message `seq` of length `len`; describes the first difference.
    pub fn verify(got: &[u8], seq: u32, tag: u8, len: usize) -> Result<(), String> {
        if got.len() != len {
            let claimed = seq_of(got).map_or_else(|| "?".to_string(), |s| s.to_string());
            return Err(format!(
                "message {seq}: expected {len} bytes, got {} (it claims seq {claimed})",
                got.len()
            ));
        }
        for (i, &b) in got.iter().enumerate() {
            let want = byte_at(seq, tag, i);
            if b != want {
                let claimed = seq_of(got).map_or_else(|| "?".to_string(), |s| s.to_string());
                return Err(format!(
                    "message {seq} (len {len}): byte {i} is {b:#04x}, expected {want:#04x} (it claims seq {claimed})"
                ));
            }
        }
        Ok(())
    }
}

/// Round-trip statistics.
pub mod stats {
    /// The `p`-th percentile (0..=100, nearest rank) of `samples`; sorts them. None if empty.
    pub fn percentile(samples: &mut [u64], p: u32) -> Option<u64> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let p = p.min(100) as usize;
        // Nearest rank: ceil(p/100 * n), at least 1.
        let rank = (p * samples.len()).div_ceil(100).max(1);
        Some(samples[rank - 1])
    }
}

/// Cycle counter for round-trip times. Under QEMU TCG without ACPI the guest often has only
/// the jiffies clocksource (4 ms steps), so `std::time::Instant` cannot time one message. The TSC is fine
/// grained; its rate is calibrated against `std::time::Instant` over a whole run ([`ticks_to_us`]).
pub mod clock {
    /// A monotonic tick count: the TSC on x86_64, nanoseconds elsewhere.
    pub fn ticks() -> u64 {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: rdtsc has no preconditions; every x86_64 CPU has it.
            unsafe { core::arch::x86_64::_rdtsc() }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START
                .get_or_init(std::time::Instant::now)
                .elapsed()
                .as_nanos() as u64
        }
    }

    /// Converts `ticks` to microseconds, given that `total_ticks` took `total_ns`.
    pub fn ticks_to_us(ticks: u64, total_ticks: u64, total_ns: u128) -> u64 {
        if total_ticks == 0 {
            return 0;
        }
        (u128::from(ticks) * total_ns / u128::from(total_ticks) / 1000) as u64
    }
}

/// Parses an address: decimal, `0x` hex, `any`, or a sysfs value (`%d`, so ANY reads `-1`).
pub fn parse_addr(s: &str) -> Result<u32, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("any") {
        return Ok(RPMSG_ADDR_ANY);
    }
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u32::from_str_radix(hex, 16).map_err(|e| format!("bad address {s:?}: {e}"));
    }
    if let Some(neg) = t.strip_prefix('-') {
        let v: i64 = neg.parse().map_err(|e| format!("bad address {s:?}: {e}"))?;
        if v == 0 || v > i64::from(i32::MAX) + 1 {
            return Err(format!("bad address {s:?}"));
        }
        return Ok((-v) as i32 as u32);
    }
    t.parse::<u32>()
        .map_err(|e| format!("bad address {s:?}: {e}"))
}

/// `--key value` argument parsing: a flat list of options after the subcommand.
#[derive(Debug, Default)]
pub struct Opts {
    pairs: Vec<(String, String)>,
    used: Vec<bool>,
}

impl Opts {
    /// Parses `--key value` pairs (and `--key=value`); `flags` lists options that take no value.
    pub fn parse(args: &[String], flags: &[&str]) -> Result<Self, String> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(key) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            if let Some((k, v)) = key.split_once('=') {
                pairs.push((k.to_string(), v.to_string()));
            } else if flags.contains(&key) {
                pairs.push((key.to_string(), String::new()));
            } else {
                let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
                pairs.push((key.to_string(), v.clone()));
            }
        }
        let used = vec![false; pairs.len()];
        Ok(Opts { pairs, used })
    }

    /// The last value given for `key`.
    pub fn get(&mut self, key: &str) -> Option<String> {
        let mut found = None;
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if k == key {
                self.used[i] = true;
                found = Some(v.clone());
            }
        }
        found
    }

    /// Whether flag `key` was given.
    pub fn flag(&mut self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A parsed value, or `default` when absent.
    pub fn num<T: std::str::FromStr>(&mut self, key: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("--{key} {v:?}: {e}")),
        }
    }

    /// An address value (see [`parse_addr`]).
    pub fn addr(&mut self, key: &str) -> Result<Option<u32>, String> {
        self.get(key).map(|v| parse_addr(&v)).transpose()
    }

    /// Fails on options nobody asked for (typos).
    pub fn finish(&self) -> Result<(), String> {
        match self.pairs.iter().zip(&self.used).find(|(_, used)| !**used) {
            Some(((k, _), _)) => Err(format!("unknown option --{k}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_uapi() {
        // sizeof(struct rpmsg_endpoint_info) = 32 + 4 + 4.
        assert_eq!(core::mem::size_of::<ioctl::EndpointInfo>(), 40);
        // _IOW(0xb5, 1, 40) = 1 << 30 | 40 << 16 | 0xb5 << 8 | 1
        assert_eq!(ioctl::RPMSG_CREATE_EPT_IOCTL, 0x4028_b501);
        // _IO(0xb5, 2)
        assert_eq!(ioctl::RPMSG_DESTROY_EPT_IOCTL, 0x0000_b502);
        // _IOW(0xb5, 3, 40) and _IOW(0xb5, 4, 40)
        assert_eq!(ioctl::RPMSG_CREATE_DEV_IOCTL, 0x4028_b503);
        assert_eq!(ioctl::RPMSG_RELEASE_DEV_IOCTL, 0x4028_b504);
    }

    #[test]
    fn endpoint_info_layout() {
        let info = ioctl::EndpointInfo::new("rpmsg-raw", 0x400, 0x401).unwrap();
        assert_eq!(&info.name[..10], b"rpmsg-raw\0");
        assert!(info.name[9..].iter().all(|&b| b == 0));
        assert_eq!(info.src, 0x400);
        assert_eq!(info.dst, 0x401);
        assert!(ioctl::EndpointInfo::new(&"x".repeat(31), 1, 2).is_ok());
        assert!(ioctl::EndpointInfo::new(&"x".repeat(32), 1, 2).is_err());
        assert!(ioctl::EndpointInfo::new("a\0b", 1, 2).is_err());
    }

    #[test]
    fn pattern_roundtrip_all_sizes() {
        for seq in [0u32, 1, 2, 255, 256, 65_537, u32::MAX] {
            for len in 0..=MAX_PAYLOAD {
                let m = pattern::make(seq, 7, len);
                assert_eq!(m.len(), len);
                pattern::verify(&m, seq, 7, len).unwrap();
            }
        }
    }

    #[test]
    fn pattern_carries_seq_and_tag() {
        let m = pattern::make(0x0102_0304, 0xEC, 16);
        assert_eq!(&m[..5], &[4, 3, 2, 1, 0xEC]);
        assert_eq!(pattern::seq_of(&m), Some(0x0102_0304));
        assert_eq!(pattern::seq_of(&m[..3]), None);
    }

    #[test]
    fn pattern_detects_corruption() {
        let len = 100;
        let good = pattern::make(42, 1, len);
        // Every single-byte change is caught.
        for i in 0..len {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let err = pattern::verify(&bad, 42, 1, len).unwrap_err();
            assert!(err.contains(&format!("byte {i} ")), "{err}");
        }
        // Wrong length, wrong sequence number, wrong stream, shifted payload.
        assert!(pattern::verify(&good[..len - 1], 42, 1, len).is_err());
        assert!(pattern::verify(&good, 43, 1, len).is_err());
        assert!(pattern::verify(&good, 42, 2, len).is_err());
        let mut shifted = good.clone();
        shifted.rotate_left(1);
        assert!(pattern::verify(&shifted, 42, 1, len).is_err());
        // The pattern part differs between neighbouring messages (stale buffers are caught).
        let next = pattern::make(43, 1, len);
        assert_ne!(&good[5..], &next[5..]);
    }

    #[test]
    fn pattern_is_not_constant() {
        let m = pattern::make(0, 0, MAX_PAYLOAD);
        let distinct: std::collections::BTreeSet<u8> = m[5..].iter().copied().collect();
        assert!(
            distinct.len() > 100,
            "only {} distinct bytes",
            distinct.len()
        );
    }

    #[test]
    fn sizes_cycle_min_to_max() {
        let sizes: Vec<usize> = (0..7).map(|k| pattern::size_for(k, 1, 3)).collect();
        assert_eq!(sizes, [1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(pattern::size_for(495, 1, 496), 496);
        assert_eq!(pattern::size_for(496, 1, 496), 1);
        assert_eq!(pattern::size_for(10, 8, 8), 8);
    }

    #[test]
    fn percentiles() {
        assert_eq!(stats::percentile(&mut [], 50), None);
        assert_eq!(stats::percentile(&mut [5], 50), Some(5));
        assert_eq!(stats::percentile(&mut [3, 1, 2], 50), Some(2));
        assert_eq!(stats::percentile(&mut [4, 3, 2, 1], 50), Some(2));
        assert_eq!(stats::percentile(&mut [4, 3, 2, 1], 100), Some(4));
        assert_eq!(stats::percentile(&mut [4, 3, 2, 1], 0), Some(1));
    }

    #[test]
    fn tick_conversion() {
        // 3 GHz: 3000 ticks per microsecond.
        assert_eq!(clock::ticks_to_us(3_000, 3_000_000_000, 1_000_000_000), 1);
        assert_eq!(
            clock::ticks_to_us(4_500_000, 3_000_000_000, 1_000_000_000),
            1500
        );
        assert_eq!(clock::ticks_to_us(5, 0, 1_000), 0);
        let a = clock::ticks();
        let b = clock::ticks();
        assert!(b >= a);
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("1024"), Ok(1024));
        assert_eq!(parse_addr("0x400"), Ok(1024));
        assert_eq!(parse_addr("any"), Ok(RPMSG_ADDR_ANY));
        assert_eq!(parse_addr("-1\n"), Ok(RPMSG_ADDR_ANY)); // sysfs prints %d
        assert_eq!(parse_addr("4294967295"), Ok(RPMSG_ADDR_ANY));
        assert!(parse_addr("").is_err());
        assert!(parse_addr("0xfoo").is_err());
        assert!(parse_addr("-0").is_err());
    }

    #[test]
    fn options() {
        let args: Vec<String> = ["--dev", "/dev/rpmsg0", "--count=5", "--keep"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut o = Opts::parse(&args, &["keep"]).unwrap();
        assert_eq!(o.get("dev").as_deref(), Some("/dev/rpmsg0"));
        assert_eq!(o.num("count", 1u32), Ok(5));
        assert_eq!(o.num("min", 1usize), Ok(1));
        assert!(o.flag("keep"));
        o.finish().unwrap();

        let mut o = Opts::parse(&args, &["keep"]).unwrap();
        o.get("dev");
        assert!(o.finish().unwrap_err().contains("--count"));
        assert!(Opts::parse(&["--dev".to_string()], &[]).is_err());
        assert!(Opts::parse(&["stray".to_string()], &[]).is_err());
    }
}
