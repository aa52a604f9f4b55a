//! `vamp-guest-agent`: runs inside the Linux test guest and drives the upstream rpmsg
//! user-space interface (`/dev/rpmsg_ctrlN` + `/dev/rpmsgN`, drivers/rpmsg/rpmsg_char.c and
//! rpmsg_ctrl.c). Each subcommand prints one result line and exits 0 only on success.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use vamp_guest_agent::ioctl::{
    EndpointInfo, RPMSG_CREATE_DEV_IOCTL, RPMSG_CREATE_EPT_IOCTL, RPMSG_DESTROY_EPT_IOCTL,
};
use vamp_guest_agent::{MAX_PAYLOAD, Opts, RPMSG_ADDR_ANY, clock, parse_addr, pattern, stats};

const CLASS_DIR: &str = "/sys/class/rpmsg";
const BUS_DIR: &str = "/sys/bus/rpmsg/devices";
/// The only channel name rpmsg_char binds to (its id_table): such channels get a /dev/rpmsgN.
const RPMSG_RAW: &str = "rpmsg-raw";
const USAGE: &str = "\
usage: vamp-guest-agent COMMAND [OPTIONS]

Endpoint options (echo-client, peer, send, recv):
  --dev /dev/rpmsgN                       use an existing endpoint device, or
  --ctrl /dev/rpmsg_ctrlN --name NAME --dst ADDR [--src ADDR] [--keep]
                                          create one with RPMSG_CREATE_EPT_IOCTL (destroyed
                                          with RPMSG_DESTROY_EPT_IOCTL at exit unless --keep)
  ADDR: decimal, 0x hex or 'any'

Commands:
  echo-client ENDPOINT [--count N] [--min 1] [--max 496] [--tag T] [--timeout-ms 5000]
       [--until-file PATH]
      send N messages (sizes cycle min..max, sequence number + pattern), check each echo
      byte for byte; prints 'echo-client: N/N ok, rtt p50=..us max=..us'. With --until-file,
      N is a minimum: it goes on (same checks) until PATH exists
  peer ENDPOINT --send N --expect M [--min 1] [--max 496] [--tag T] [--expect-tag U]
       [--timeout-ms 10000] [--interval-us 0] [--rx-dev /dev/rpmsgM]
      send N messages and receive M concurrently (two threads); received messages must come
      in sequence order with the peer's pattern (the peer's --tag must equal our --expect-tag).
      --rx-dev: receive on that device instead of ENDPOINT (e.g. our own announced channel,
      while ENDPOINT is the channel the peer announced)
  wait-dev --name NAME [--src ADDR] [--dst ADDR] [--announced] [--timeout-ms 10000]
      wait for a /dev/rpmsgN whose sysfs name (or whose channel's name) is NAME; prints its path.
      --announced: only one whose channel the remote announced (name service), not one of ours
  wait-gone --dev /dev/rpmsgN [--timeout-ms 10000]
      wait until that endpoint device is gone (e.g. its channel was withdrawn)
  wait-channel --name NAME [--src ADDR] [--dst ADDR] [--gone] [--timeout-ms 10000]
      wait for an rpmsg channel NAME in /sys/bus/rpmsg/devices (a name-service announcement
      of the remote makes one, with src -1); prints its dst address (0x hex).
      --gone: wait until no such channel is left instead (withdrawn, or its device removed)
  create-ept --ctrl /dev/rpmsg_ctrlN --name NAME --dst ADDR [--src ADDR]
      create an endpoint device and leave it; prints its path
  create-dev --ctrl /dev/rpmsg_ctrlN --name NAME --src ADDR [--dst any] [--timeout-ms 5000]
      create a channel with RPMSG_CREATE_DEV_IOCTL; with a fixed --src Linux announces NAME at
      src to the remote. Named rpmsg-raw, rpmsg_char binds it: prints its /dev/rpmsgN (which
      receives what the remote sends to src); otherwise prints its sysfs directory
  send ENDPOINT --text STRING | --hex HEX      send one message
  recv ENDPOINT [--count 1] [--timeout-ms 5000] print received messages
  list
      print the rpmsg devices, channels and virtio devices found in sysfs
";

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "echo-client" => echo_client(rest),
        "peer" => peer(rest),
        "wait-dev" => wait_dev(rest),
        "create-ept" => create_ept_cmd(rest),
        "create-dev" => create_dev_cmd(rest),
        "wait-channel" => wait_channel(rest),
        "wait-gone" => wait_gone(rest),
        "send" => send_cmd(rest),
        "recv" => recv_cmd(rest),
        "list" => list(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown command {other:?} (try --help)")),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{cmd}: FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}

fn errno_msg(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

fn read_attr(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

/// One endpoint device in /sys/class/rpmsg (rpmsgN, not rpmsg_ctrlN).
#[derive(Debug, Clone)]
struct EptDev {
    node: String,
    name: String,
    src: Option<u32>,
    dst: Option<u32>,
    channel: Option<String>,
    /// Its channel was made by a name-service announcement of the remote: Linux's rpmsg_ns
    /// creates such channels with src -1, so the channel's sysfs name ends in ".-1.<dst>".
    /// (The endpoint's own src then reads as the address Linux allocated.)
    announced: bool,
}

impl EptDev {
    fn dev_path(&self) -> PathBuf {
        Path::new("/dev").join(&self.node)
    }
}

fn scan_eptdevs() -> Vec<EptDev> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(CLASS_DIR) else {
        return out;
    };
    for e in rd.flatten() {
        let node = e.file_name().to_string_lossy().into_owned();
        let Some(num) = node.strip_prefix("rpmsg") else {
            continue;
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = e.path();
        let Some(name) = read_attr(&dir.join("name")) else {
            continue;
        };
        let src = read_attr(&dir.join("src")).and_then(|s| parse_addr(&s).ok());
        let dst = read_attr(&dir.join("dst")).and_then(|s| parse_addr(&s).ok());
        let channel = read_attr(&dir.join("device/name"));
        let announced = dst.is_some_and(|d| d != RPMSG_ADDR_ANY)
            && fs::read_link(dir.join("device")).ok().is_some_and(|l| {
                l.file_name().is_some_and(|f| {
                    f.to_string_lossy()
                        .ends_with(&format!(".-1.{}", dst.unwrap_or(0) as i32))
                })
            });
        out.push(EptDev {
            node,
            name,
            src,
            dst,
            channel,
            announced,
        });
    }
    out.sort_by_key(|d| d.node[5..].parse::<u32>().unwrap_or(u32::MAX));
    out
}

/// An open endpoint device.
struct Endpoint {
    file: File,
    path: PathBuf,
    created: bool,
}

impl Endpoint {
    fn open(path: &Path) -> Res<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        Ok(Endpoint {
            file,
            path: path.to_path_buf(),
            created: false,
        })
    }

    /// Sends one message (one write = one rpmsg message).
    fn send(&self, msg: &[u8]) -> Res<()> {
        // SAFETY: msg is a valid buffer of msg.len() bytes for the duration of the call.
        let n = unsafe { libc::write(self.file.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        if n < 0 {
            return Err(errno_msg(&format!(
                "write {} bytes to {}",
                msg.len(),
                self.path.display()
            )));
        }
        if n as usize != msg.len() {
            return Err(format!("short write: {n} of {} bytes", msg.len()));
        }
        Ok(())
    }

    /// Receives one message, waiting at most `timeout`.
    fn recv(&self, timeout: Duration) -> Res<Vec<u8>> {
        let fd = self.file.as_raw_fd();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: pfd is one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll {}: {err}", self.path.display()));
            }
            if r == 0 {
                return Err(format!(
                    "timeout: nothing received within {} ms",
                    timeout.as_millis()
                ));
            }
            if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
                && pfd.revents & libc::POLLIN == 0
            {
                return Err(format!(
                    "{}: endpoint gone (poll revents {:#x})",
                    self.path.display(),
                    pfd.revents
                ));
            }
            let mut buf = vec![0u8; 4096];
            // SAFETY: buf is a valid writable buffer of buf.len() bytes.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if matches!(
                    err.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) {
                    continue;
                }
                return Err(format!("read {}: {err}", self.path.display()));
            }
            buf.truncate(n as usize);
            return Ok(buf);
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if self.created {
            // SAFETY: plain ioctl without an argument on our own open fd.
            let r = unsafe { libc::ioctl(self.file.as_raw_fd(), RPMSG_DESTROY_EPT_IOCTL as _) };
            if r < 0 {
                eprintln!(
                    "warning: {}",
                    errno_msg(&format!(
                        "RPMSG_DESTROY_EPT_IOCTL on {}",
                        self.path.display()
                    ))
                );
            }
        }
    }
}

/// Creates an endpoint device through /dev/rpmsg_ctrlN and returns its /dev path.
fn create_ept(ctrl: &str, name: &str, src: u32, dst: u32) -> Res<PathBuf> {
    let info = EndpointInfo::new(name, src, dst)?;
    let before: BTreeSet<String> = scan_eptdevs().into_iter().map(|d| d.node).collect();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(ctrl)
        .map_err(|e| format!("open {ctrl}: {e}"))?;
    // SAFETY: the kernel reads sizeof(struct rpmsg_endpoint_info) bytes from &info, which is
    // a live #[repr(C)] struct of exactly that layout.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            RPMSG_CREATE_EPT_IOCTL as _,
            &info as *const EndpointInfo,
        )
    };
    if r < 0 {
        return Err(errno_msg(&format!(
            "RPMSG_CREATE_EPT_IOCTL on {ctrl} (name {name:?} src {src:#x} dst {dst:#x})"
        )));
    }
    // The ioctl does not say which rpmsgN it made: find the new one with our name/src/dst.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = scan_eptdevs().into_iter().find(|d| {
            !before.contains(&d.node) && d.name == name && d.src == Some(src) && d.dst == Some(dst)
        });
        if let Some(d) = found
            && d.dev_path().exists()
        {
            return Ok(d.dev_path());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "RPMSG_CREATE_EPT_IOCTL succeeded but no new /dev/rpmsgN named {name:?} appeared"
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Which endpoint to use: --dev PATH, or --ctrl/--name/--dst/--src (created at open).
enum EndpointSpec {
    Dev(String),
    Create {
        ctrl: String,
        name: String,
        src: u32,
        dst: u32,
        keep: bool,
    },
}

impl EndpointSpec {
    /// Takes the endpoint options out of `o` (call `o.finish()` afterwards, before `open`).
    fn from_opts(o: &mut Opts) -> Res<Self> {
        let keep = o.flag("keep");
        if let Some(dev) = o.get("dev") {
            return Ok(EndpointSpec::Dev(dev));
        }
        let Some(ctrl) = o.get("ctrl") else {
            return Err("give --dev PATH or --ctrl PATH --name NAME --dst ADDR".into());
        };
        let name = o.get("name").ok_or("--ctrl needs --name")?;
        let dst = o.addr("dst")?.ok_or("--ctrl needs --dst")?;
        let src = o.addr("src")?.unwrap_or(RPMSG_ADDR_ANY);
        EndpointInfo::new(&name, src, dst)?;
        Ok(EndpointSpec::Create {
            ctrl,
            name,
            src,
            dst,
            keep,
        })
    }

    fn open(&self) -> Res<Endpoint> {
        match self {
            EndpointSpec::Dev(dev) => Endpoint::open(Path::new(dev)),
            EndpointSpec::Create {
                ctrl,
                name,
                src,
                dst,
                keep,
            } => {
                let path = create_ept(ctrl, name, *src, *dst)?;
                let mut ep = Endpoint::open(&path)?;
                ep.created = !keep;
                Ok(ep)
            }
        }
    }
}

fn size_range(o: &mut Opts) -> Res<(usize, usize)> {
    let min: usize = o.num("min", 1)?;
    let max: usize = o.num("max", MAX_PAYLOAD)?;
    if min == 0 || min > max || max > MAX_PAYLOAD {
        return Err(format!(
            "need 1 <= --min ({min}) <= --max ({max}) <= {MAX_PAYLOAD}"
        ));
    }
    Ok((min, max))
}

fn echo_client(args: &[String]) -> Res<String> {
    let mut o = Opts::parse(args, &["keep"])?;
    let count: u32 = o.num("count", 100)?;
    let (min, max) = size_range(&mut o)?;
    let tag: u8 = o.num("tag", 0xEC)?;
    let timeout = Duration::from_millis(o.num("timeout-ms", 5000)?);
    let until = o.get("until-file").map(PathBuf::from);
    let spec = EndpointSpec::from_opts(&mut o)?;
    o.finish()?;
    let ep = spec.open()?;

    let mut rtts = Vec::with_capacity(count as usize);
    let t_all = Instant::now();
    let c_all = clock::ticks();
    let mut k: u32 = 0;
    loop {
        if k >= count {
            // With --until-file, --count is a minimum: look for the file every 16 messages.
            match &until {
                Some(p) if !k.is_multiple_of(16) || !p.exists() => {}
                _ => break,
            }
        }
        let len = pattern::size_for(u64::from(k), min, max);
        let msg = pattern::make(k, tag, len);
        let c0 = clock::ticks();
        ep.send(&msg)
            .map_err(|e| format!("{k}/{count} ok, then send failed: {e}"))?;
        let reply = ep
            .recv(timeout)
            .map_err(|e| format!("{k}/{count} ok, then no echo for message {k}: {e}"))?;
        rtts.push(clock::ticks().wrapping_sub(c0));
        pattern::verify(&reply, k, tag, len)
            .map_err(|e| format!("{k}/{count} ok, then bad echo: {e}"))?;
        k += 1;
    }
    let count = k;
    let total = t_all.elapsed();
    let total_ticks = clock::ticks().wrapping_sub(c_all);
    // Round-trip times in TSC ticks, converted with the rate seen over the whole run.
    let us = |t: Option<u64>| clock::ticks_to_us(t.unwrap_or(0), total_ticks, total.as_nanos());
    let p50 = us(stats::percentile(&mut rtts, 50));
    let pmax = us(stats::percentile(&mut rtts, 100));
    Ok(format!(
        "echo-client: {count}/{count} ok, rtt p50={p50}us max={pmax}us (dev {}, sizes {min}..{max}, {} ms total)",
        ep.path.display(),
        total.as_millis()
    ))
}

fn peer(args: &[String]) -> Res<String> {
    let mut o = Opts::parse(args, &["keep"])?;
    let send_n: u32 = o.num("send", 100)?;
    let expect_n: u32 = o.num("expect", 100)?;
    let (min, max) = size_range(&mut o)?;
    let tag: u8 = o.num("tag", 0)?;
    let expect_tag: u8 = o.num("expect-tag", 0)?;
    let timeout = Duration::from_millis(o.num("timeout-ms", 10_000)?);
    let interval = Duration::from_micros(o.num("interval-us", 0)?);
    let rx_dev = o.get("rx-dev");
    let spec = EndpointSpec::from_opts(&mut o)?;
    o.finish()?;
    let ep = spec.open()?;
    let rx_ep = rx_dev.map(|d| Endpoint::open(Path::new(&d))).transpose()?;
    let rx = rx_ep.as_ref().unwrap_or(&ep);

    let failed = AtomicBool::new(false);
    let t0 = Instant::now();
    let (sent, received) = thread::scope(|s| {
        let sender = s.spawn(|| -> Res<u32> {
            for k in 0..send_n {
                if failed.load(Ordering::Relaxed) {
                    return Err(format!("sent {k}/{send_n}, stopped: the receiver failed"));
                }
                let msg = pattern::make(k, tag, pattern::size_for(u64::from(k), min, max));
                ep.send(&msg)
                    .map_err(|e| format!("sent {k}/{send_n}, then: {e}"))?;
                if !interval.is_zero() {
                    thread::sleep(interval);
                }
            }
            Ok(send_n)
        });
        let receiver = s.spawn(|| -> Res<u32> {
            for j in 0..expect_n {
                let len = pattern::size_for(u64::from(j), min, max);
                let r = rx
                    .recv(timeout)
                    .and_then(|m| pattern::verify(&m, j, expect_tag, len))
                    .map_err(|e| format!("received {j}/{expect_n} ok, then: {e}"));
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                    return r.map(|_| j);
                }
            }
            Ok(expect_n)
        });
        (
            sender.join().expect("sender thread panicked"),
            receiver.join().expect("receiver thread panicked"),
        )
    });
    let ms = t0.elapsed().as_millis().max(1);
    match (sent, received) {
        (Ok(s), Ok(r)) => Ok(format!(
            "peer: sent {s}/{send_n}, received {r}/{expect_n} ok in {ms} ms ({} msg/s, dev {}{})",
            (u128::from(s) + u128::from(r)) * 1000 / ms,
            ep.path.display(),
            rx_ep
                .as_ref()
                .map_or_else(String::new, |r| format!(", rx-dev {}", r.path.display()))
        )),
        (s, r) => {
            let mut why = Vec::new();
            if let Err(e) = s {
                why.push(format!("send: {e}"));
            }
            if let Err(e) = r {
                why.push(format!("receive: {e}"));
            }
            Err(why.join("; "))
        }
    }
}

fn wait_dev(args: &[String]) -> Res<String> {
    let mut o = Opts::parse(args, &["announced"])?;
    let name = o.get("name").ok_or("wait-dev needs --name")?;
    let src = o.addr("src")?;
    let dst = o.addr("dst")?;
    let announced = o.flag("announced");
    let timeout = Duration::from_millis(o.num("timeout-ms", 10_000)?);
    o.finish()?;
    let t0 = Instant::now();
    loop {
        let hit = scan_eptdevs().into_iter().find(|d| {
            (d.name == name || d.channel.as_deref() == Some(name.as_str()))
                && src.is_none_or(|a| d.src == Some(a))
                && dst.is_none_or(|a| d.dst == Some(a))
                && (!announced || d.announced)
                && d.dev_path().exists()
        });
        if let Some(d) = hit {
            return Ok(d.dev_path().display().to_string());
        }
        if t0.elapsed() >= timeout {
            let seen: Vec<String> = scan_eptdevs()
                .iter()
                .map(|d| format!("{}={}", d.node, d.name))
                .collect();
            return Err(format!(
                "no /dev/rpmsgN named {name:?} within {} ms (seen: [{}])",
                timeout.as_millis(),
                seen.join(", ")
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn create_ept_cmd(args: &[String]) -> Res<String> {
    let mut o = Opts::parse(args, &[])?;
    let ctrl = o.get("ctrl").ok_or("create-ept needs --ctrl")?;
    let name = o.get("name").ok_or("create-ept needs --name")?;
    let dst = o.addr("dst")?.ok_or("create-ept needs --dst")?;
    let src = o.addr("src")?.unwrap_or(RPMSG_ADDR_ANY);
    o.finish()?;
    Ok(create_ept(&ctrl, &name, src, dst)?.display().to_string())
}

/// Creates a channel device through /dev/rpmsg_ctrlN (RPMSG_CREATE_DEV_IOCTL).
fn create_dev_cmd(args: &[String]) -> Res<String> {
    let mut o = Opts::parse(args, &[])?;
    let ctrl = o.get("ctrl").ok_or("create-dev needs --ctrl")?;
    let name = o.get("name").ok_or("create-dev needs --name")?;
    let src = o
        .addr("src")?
        .ok_or("create-dev needs --src (a fixed one is announced)")?;
    let dst = o.addr("dst")?.unwrap_or(RPMSG_ADDR_ANY);
    let timeout = Duration::from_millis(o.num("timeout-ms", 5000)?);
    o.finish()?;
    let info = EndpointInfo::new(&name, src, dst)?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&ctrl)
        .map_err(|e| format!("open {ctrl}: {e}"))?;
    // SAFETY: the kernel reads sizeof(struct rpmsg_endpoint_info) bytes from &info, which is
    // a live #[repr(C)] struct of exactly that layout.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            RPMSG_CREATE_DEV_IOCTL as _,
            &info as *const EndpointInfo,
        )
    };
    if r < 0 {
        return Err(errno_msg(&format!(
            "RPMSG_CREATE_DEV_IOCTL on {ctrl} (name {name:?} src {src:#x} dst {dst:#x})"
        )));
    }
    // Linux refuses a second channel with the same name, src and dst: these find ours.
    let t0 = Instant::now();
    loop {
        if name == RPMSG_RAW {
            let found = scan_eptdevs()
                .into_iter()
                .find(|d| d.name == name && d.src == Some(src) && d.dst == Some(dst));
            if let Some(d) = found
                && d.dev_path().exists()
            {
                return Ok(d.dev_path().display().to_string());
            }
        } else if let Some(c) = scan_channels()
            .into_iter()
            .find(|c| c.name == name && c.src == Some(src) && c.dst == Some(dst))
        {
            return Ok(c.path.display().to_string());
        }
        if t0.elapsed() >= timeout {
            return Err(format!(
                "RPMSG_CREATE_DEV_IOCTL succeeded but no {} for {name:?} appeared within {} ms",
                if name == RPMSG_RAW {
                    "/dev/rpmsgN"
                } else {
                    "channel"
                },
                timeout.as_millis()
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// One rpmsg channel device in /sys/bus/rpmsg/devices.
#[derive(Debug, Clone)]
struct Channel {
    path: PathBuf,
    name: String,
    src: Option<u32>,
    dst: Option<u32>,
}

fn scan_channels() -> Vec<Channel> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(BUS_DIR) else {
        return out;
    };
    for e in rd.flatten() {
        let path = e.path();
        let Some(name) = read_attr(&path.join("name")) else {
            continue;
        };
        let src = read_attr(&path.join("src")).and_then(|s| parse_addr(&s).ok());
        let dst = read_attr(&path.join("dst")).and_then(|s| parse_addr(&s).ok());
        out.push(Channel {
            path,
            name,
            src,
            dst,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn wait_channel(args: &[String]) -> Res<String> {
    let mut o = Opts::parse(args, &["gone"])?;
    let name = o.get("name").ok_or("wait-channel needs --name")?;
    let src = o.addr("src")?;
    let dst = o.addr("dst")?;
    let gone = o.flag("gone");
    let timeout = Duration::from_millis(o.num("timeout-ms", 10_000)?);
    o.finish()?;
    let t0 = Instant::now();
    loop {
        let hit = scan_channels().into_iter().find(|c| {
            c.name == name
                && src.is_none_or(|a| c.src == Some(a))
                && dst.is_none_or(|a| c.dst == Some(a))
        });
        if gone {
            match hit {
                None => {
                    return Ok(format!(
                        "wait-channel: no channel {name:?} after {} ms",
                        t0.elapsed().as_millis()
                    ));
                }
                Some(c) if t0.elapsed() >= timeout => {
                    return Err(format!(
                        "channel {} still there after {} ms",
                        c.path.display(),
                        timeout.as_millis()
                    ));
                }
                Some(_) => {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        if let Some(c) = hit {
            let dst = c
                .dst
                .ok_or_else(|| format!("{}: unreadable dst", c.path.display()))?;
            return Ok(format!("{dst:#x}"));
        }
        if t0.elapsed() >= timeout {
            let seen: Vec<String> = scan_channels()
                .iter()
                .map(|c| {
                    c.path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            return Err(format!(
                "no channel named {name:?} within {} ms (seen: [{}])",
                timeout.as_millis(),
                seen.join(", ")
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn wait_gone(args: &[String]) -> Res<String> {
    let mut o = Opts::parse(args, &[])?;
    let dev = o.get("dev").ok_or("wait-gone needs --dev")?;
    let timeout = Duration::from_millis(o.num("timeout-ms", 10_000)?);
    o.finish()?;
    let node = Path::new(&dev)
        .file_name()
        .ok_or_else(|| format!("bad device path {dev:?}"))?
        .to_owned();
    let class = Path::new(CLASS_DIR).join(&node);
    let t0 = Instant::now();
    while Path::new(&dev).exists() || class.exists() {
        if t0.elapsed() >= timeout {
            return Err(format!(
                "{dev} still there after {} ms",
                timeout.as_millis()
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(format!(
        "wait-gone: {dev} gone after {} ms",
        t0.elapsed().as_millis()
    ))
}

fn parse_hex(s: &str) -> Res<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        return Err("--hex needs an even number of digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("--hex: {e}")))
        .collect()
}

fn send_cmd(args: &[String]) -> Res<String> {
    let mut o = Opts::parse(args, &["keep"])?;
    let msg = match (o.get("text"), o.get("hex")) {
        (Some(t), None) => t.into_bytes(),
        (None, Some(h)) => parse_hex(&h)?,
        _ => return Err("send needs exactly one of --text, --hex".into()),
    };
    let spec = EndpointSpec::from_opts(&mut o)?;
    o.finish()?;
    let ep = spec.open()?;
    ep.send(&msg)?;
    Ok(format!(
        "send: {} bytes to {}",
        msg.len(),
        ep.path.display()
    ))
}

fn recv_cmd(args: &[String]) -> Res<String> {
    let mut o = Opts::parse(args, &["keep"])?;
    let count: u32 = o.num("count", 1)?;
    let timeout = Duration::from_millis(o.num("timeout-ms", 5000)?);
    let spec = EndpointSpec::from_opts(&mut o)?;
    o.finish()?;
    let ep = spec.open()?;
    let mut out = io::stdout().lock();
    for k in 0..count {
        let m = ep
            .recv(timeout)
            .map_err(|e| format!("received {k}/{count}, then: {e}"))?;
        let text = if m.iter().all(|&b| (0x20..0x7f).contains(&b)) {
            format!("{:?}", String::from_utf8_lossy(&m))
        } else {
            m.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let _ = writeln!(out, "recv[{k}] {} bytes: {text}", m.len());
    }
    Ok(format!(
        "recv: {count}/{count} messages from {}",
        ep.path.display()
    ))
}

fn list(args: &[String]) -> Res<String> {
    Opts::parse(args, &[])?.finish()?;
    let mut out = io::stdout().lock();
    let mut n_ctrl = 0;
    let _ = writeln!(out, "{CLASS_DIR}:");
    if let Ok(rd) = fs::read_dir(CLASS_DIR) {
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names.iter().filter(|n| n.starts_with("rpmsg_ctrl")) {
            n_ctrl += 1;
            let exists = Path::new("/dev").join(n).exists();
            let _ = writeln!(
                out,
                "  {n:<12} ctrl /dev/{n}{}",
                if exists { "" } else { " (no node)" }
            );
        }
    }
    let epts = scan_eptdevs();
    for d in &epts {
        let show = |a: Option<u32>| {
            a.map_or_else(
                || "?".to_string(),
                |v| {
                    if v == RPMSG_ADDR_ANY {
                        "any".into()
                    } else {
                        v.to_string()
                    }
                },
            )
        };
        let _ = writeln!(
            out,
            "  {:<12} name={} src={} dst={} {}{}{}",
            d.node,
            d.name,
            show(d.src),
            show(d.dst),
            d.dev_path().display(),
            d.channel
                .as_ref()
                .map_or_else(String::new, |c| format!(" channel={c}")),
            if d.announced { " (announced)" } else { "" }
        );
    }
    let mut n_chan = 0;
    let _ = writeln!(out, "{BUS_DIR}:");
    if let Ok(rd) = fs::read_dir(BUS_DIR) {
        let mut v: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        v.sort();
        for p in v {
            n_chan += 1;
            let driver = fs::read_link(p.join("driver"))
                .ok()
                .and_then(|l| l.file_name().map(|f| f.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "  {} name={} src={} dst={} driver={driver}",
                p.file_name().unwrap_or_default().to_string_lossy(),
                read_attr(&p.join("name")).unwrap_or_default(),
                read_attr(&p.join("src")).unwrap_or_default(),
                read_attr(&p.join("dst")).unwrap_or_default(),
            );
        }
    }
    let _ = writeln!(out, "/sys/bus/virtio/devices:");
    if let Ok(rd) = fs::read_dir("/sys/bus/virtio/devices") {
        let mut v: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        v.sort();
        for p in v {
            let driver = fs::read_link(p.join("driver"))
                .ok()
                .and_then(|l| l.file_name().map(|f| f.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "  {} device={} vendor={} features={} driver={driver}",
                p.file_name().unwrap_or_default().to_string_lossy(),
                read_attr(&p.join("device")).unwrap_or_default(),
                read_attr(&p.join("vendor")).unwrap_or_default(),
                read_attr(&p.join("features")).unwrap_or_default(),
            );
        }
    }
    Ok(format!(
        "list: {n_ctrl} ctrl, {} endpoint devices, {n_chan} channels",
        epts.len()
    ))
}
