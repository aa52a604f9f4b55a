//! `remoteproc-vm`: remoteproc for ELF remotes, as KVM micro-VMs or physical cores.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vamp_remoteproc::config::{BackendSpec, Recovery, RemoteSpec, RemotesConfig};
use vamp_remoteproc::image::ImageSource;
use vamp_remoteproc::kvm::{DEFAULT_MEMORY, KvmOptions, KvmRemote};
use vamp_remoteproc::proxy::{self, ProxyServer, ProxyService};
use vamp_remoteproc::remoteproc::{
    ManagedRemote, RemoteEvent, RemoteRpmsg, RemoteState, RemoteWaiter, Remoteproc,
};
use vamp_remoteproc::status::{self, RemoteReport, SharedReport, Status};
use vamp_remoteproc::status_socket::{self, Request, StatusSocket};
use vamp_remoteproc::sysfs::SysfsRemote;
use vamp_rpmsg::apps::{ECHO_CHANNEL, PingSummary, ping, ping_payload};
use vamp_rpmsg::guest_ram::GuestRam;
use vamp_rpmsg::rpmsg::{Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::transport::{BufferConfig, RingFormat, Transport};

#[derive(Parser, Debug)]
#[command(
    name = "remoteproc-vm",
    version,
    about = "remoteproc for ELF remotes: KVM micro-VMs and physical cores"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Loads IMAGE (a path, or a built-in image: echo, matrix, fault, proxy) into a KVM
    /// micro-VM, starts it, brings up its rpmsg channels and runs until it stops (or Ctrl-C).
    /// The proxy image (or --proxy) is served OpenAMP's rpmsg proxy: its console writes go to
    /// stdout/stderr, its files to --proxy-root; the run ends when it terminates the proxy.
    Run {
        /// The ELF file or built-in image name.
        image: String,
        /// Send this many echo requests of sizes 1..496 through the echo channel, verify each,
        /// print a summary, stop the remote; exit 0 only if all matched.
        #[arg(long)]
        ping: Option<u32>,
        /// The channel --ping uses.
        #[arg(long, default_value = ECHO_CHANNEL)]
        channel: String,
        /// RAM of the micro-VM in MiB (a multiple of 2).
        #[arg(long, default_value_t = DEFAULT_MEMORY >> 20)]
        memory_mib: u64,
        /// The virtqueues to ask of the firmware (split or packed), through the vamp platform
        /// entry; a firmware that cannot run packed rings gets split ones.
        #[arg(long, default_value = "split", value_parser = parse_ring)]
        ring: RingFormat,
        /// Restart the remote when it crashes (at most this many times).
        #[arg(long, default_value_t = 0)]
        restarts: u32,
        /// Seconds to wait for the channel or an echo.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
        /// Serve OpenAMP's rpmsg proxy on "rpmsg-openamp-demo-channel" (on by default for the
        /// built-in proxy image, and with --proxy-root).
        #[arg(long)]
        proxy: bool,
        /// The directory the remote's proxy file I/O is confined to; without it, every open
        /// fails (console output still works).
        #[arg(long, value_name = "DIR")]
        proxy_root: Option<PathBuf>,
        /// Bytes the remote may write into files under --proxy-root in the run; beyond it its
        /// writes fail (-EDQUOT).
        #[arg(long, value_name = "BYTES", default_value_t = vamp_remoteproc::proxy::DEFAULT_MAX_BYTES_WRITTEN)]
        proxy_max_bytes: u64,
        /// Files the remote may create under --proxy-root in the run; beyond it such opens
        /// fail (-EDQUOT).
        #[arg(long, value_name = "FILES", default_value_t = vamp_remoteproc::proxy::DEFAULT_MAX_FILES_CREATED)]
        proxy_max_files: u64,
        /// Answer `remoteproc-vm status --control-socket PATH` on this AF_UNIX socket (made
        /// owner-only) while the remote runs: its state, restarts, crashes, channels, messages.
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
    },
    /// Prints IMAGE's segments and resource table.
    Inspect {
        /// The ELF file or built-in image name.
        image: String,
    },
    /// Lists the built-in images.
    Images,
    /// Status of remotes: the configured ones (see configs/remotes.toml; physical cores read
    /// from sysfs), or the one a running `remoteproc-vm run/start --control-socket PATH` runs.
    Status {
        /// The remotes file.
        #[arg(long, required_unless_present = "control_socket")]
        config: Option<PathBuf>,
        /// Ask the remoteproc-vm process serving this status socket instead.
        #[arg(long, value_name = "PATH", conflicts_with = "config")]
        control_socket: Option<PathBuf>,
        /// Print JSON.
        #[arg(long, conflicts_with = "metrics")]
        json: bool,
        /// Print the Prometheus text exposition.
        #[arg(long)]
        metrics: bool,
        /// One remote.
        name: Option<String>,
    },
    /// Starts a configured remote. A physical core is started through sysfs; a KVM remote runs
    /// in this process until it stops (or Ctrl-C), with its recovery policy.
    Start {
        /// The remotes file.
        #[arg(long)]
        config: PathBuf,
        /// The remote.
        name: String,
        /// For a KVM remote: answer `remoteproc-vm status --control-socket PATH` on this socket
        /// while it runs.
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
    },
    /// Stops a configured physical core.
    Stop {
        /// The remotes file.
        #[arg(long)]
        config: PathBuf,
        /// The remote.
        name: String,
    },
    /// Prints a configured physical core's trace buffer.
    Trace {
        /// The remotes file.
        #[arg(long)]
        config: PathBuf,
        /// The remote.
        name: String,
    },
    /// Recovers a crashed physical core (the kernel reloads and restarts it): for a core
    /// configured with recovery = "none", which the kernel leaves crashed.
    Recover {
        /// The remotes file.
        #[arg(long)]
        config: PathBuf,
        /// The remote.
        name: String,
    },
    /// Echo test through the kernel's rpmsg to a configured physical core: waits for its
    /// channel, opens an endpoint on it (rpmsg_ctrl, RPMSG_CREATE_EPT_IOCTL), sends COUNT
    /// messages of 1..496 bytes and checks each echo byte for byte; exit 0 only if all matched.
    Ping {
        /// The remotes file.
        #[arg(long)]
        config: PathBuf,
        /// The remote.
        name: String,
        /// The channel the core announced.
        #[arg(long, default_value = ECHO_CHANNEL)]
        channel: String,
        /// Messages to send.
        #[arg(long, default_value_t = 1000)]
        count: u32,
        /// Seconds to wait for the channel, and for each echo.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
    },
    /// Reports a crash of a running physical core through the kernel's debugfs, to test
    /// recovery: the kernel restarts it, or leaves it crashed with recovery = "none".
    Crash {
        /// The remotes file.
        #[arg(long)]
        config: PathBuf,
        /// The remote.
        name: String,
        /// The kernel's crash type: 0 MMU fault, 1 watchdog, 2 fatal error.
        #[arg(long, default_value_t = 1)]
        kind: u32,
    },
}

fn image_source(image: &str) -> Result<ImageSource, String> {
    if let Some(bytes) = vamp_remoteproc::images::builtin(image) {
        return Ok(ImageSource::Static(bytes));
    }
    let path = PathBuf::from(image);
    if path.exists() {
        return Ok(ImageSource::File(path));
    }
    let names: Vec<&str> = vamp_remoteproc::images::BUILTIN
        .iter()
        .map(|(n, _)| *n)
        .collect();
    Err(format!(
        "{image}: no such file, and not a built-in image ({})",
        names.join(", ")
    ))
}

fn print_console(rp: &mut Remoteproc<KvmRemote>) {
    print_console_bytes(&rp.take_console());
}

fn print_console_bytes(bytes: &[u8]) {
    for line in vamp_remoteproc::console::escaped_lines(bytes) {
        println!("[console] {line}");
    }
}

/// The waiter of a run: the remote's console is printed as it comes.
fn waiter(rp: &mut Remoteproc<KvmRemote>) -> RemoteWaiter<'_, KvmRemote, fn(&[u8])> {
    RemoteWaiter {
        rp,
        console: print_console_bytes,
    }
}

/// Prints announcements while a remote runs, and counts them in its report.
struct Announcements(SharedReport);

impl<T: Transport> Handler<T> for Announcements {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        let len = msg.len;
        let _ = rpmsg;
        self.0.lock().message(usize::from(len));
        println!(
            "message of {len} bytes from {:#x} to {:#x}",
            msg.src, msg.dst
        );
    }
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, event: NsEvent<'_>) {
        match event {
            NsEvent::Created { name, addr, .. } => {
                self.0.lock().channel(name, true);
                println!(
                    "channel \"{}\" announced at {addr:#x}",
                    vamp_remoteproc::console::escape(name)
                )
            }
            NsEvent::Destroyed { name, addr, .. } => {
                self.0.lock().channel(name, false);
                println!(
                    "channel \"{}\" at {addr:#x} withdrawn",
                    vamp_remoteproc::console::escape(name)
                )
            }
        }
    }
}

/// A `--ring` value.
fn parse_ring(name: &str) -> Result<RingFormat, String> {
    RingFormat::from_name(name).ok_or_else(|| format!("{name:?}: say split or packed"))
}

fn boot(image: &str, memory_mib: u64, ring: RingFormat) -> Result<Remoteproc<KvmRemote>, String> {
    vamp_remoteproc::kvm::kvm_available()?;
    let source = image_source(image)?;
    let options = KvmOptions {
        memory: memory_mib << 20,
        ring_format: ring,
        ..Default::default()
    };
    let mut rp = Remoteproc::new(KvmRemote::new(options).map_err(|e| e.to_string())?);
    let t0 = Instant::now();
    rp.load_source(source).map_err(|e| e.to_string())?;
    rp.start().map_err(|e| e.to_string())?;
    println!(
        "{image}: loaded and started in {} us, on {} rings",
        t0.elapsed().as_micros(),
        vamp_remoteproc::backend::RemoteBackend::ring_format(rp.backend())
    );
    Ok(rp)
}

/// What `run` serves the proxy with: `None`, no proxy; `Some((root, max_bytes, max_files))`,
/// files under `root` (none: console only) within those quotas.
type ProxyOption = Option<(Option<PathBuf>, u64, u64)>;

/// Serves the proxy until the remote terminates it, then waits for the remote to stop.
fn run_proxy(
    image: &str,
    rp: &mut Remoteproc<KvmRemote>,
    mut rpmsg: RemoteRpmsg<GuestRam>,
    server: ProxyServer,
    timeout: Duration,
) -> Result<bool, String> {
    let mut service = ProxyService::new(server);
    let result = proxy::serve(&mut rpmsg, &mut waiter(rp), &mut service, timeout);
    drop(rpmsg);
    let (calls, failed) = service.server.calls();
    // The proxy firmware exits after it terminates the proxy; give it a moment.
    let event = rp.wait_stopped(Duration::from_secs(2));
    print_console(rp);
    let _ = rp.shutdown();
    result.map_err(|e| format!("proxy: {e}"))?;
    println!("{image}: proxy terminated by the remote after {calls} calls ({failed} failed)");
    match event {
        RemoteEvent::Exited(code) => {
            println!("{image}: exited with code {code}");
            Ok(code == 0)
        }
        RemoteEvent::Crashed(why) => {
            println!("{image}: crashed: {why}");
            Ok(false)
        }
        RemoteEvent::Idle => Ok(true),
        other => Err(format!("{image}: {other:?}: not handled")),
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    image: &str,
    ping_count: Option<u32>,
    channel: &str,
    (memory_mib, ring): (u64, RingFormat),
    restarts: u32,
    timeout: u64,
    proxy: ProxyOption,
    control_socket: Option<&Path>,
) -> Result<bool, String> {
    // The status socket is bound before the remote is loaded: a path in use fails first.
    let report = SharedReport::new(RemoteReport {
        name: image.to_string(),
        backend: "kvm".into(),
        image: image.to_string(),
        max_restarts: restarts,
        ..Default::default()
    });
    report.lock().set_state(RemoteState::Offline);
    if let Some(path) = control_socket {
        serve_status(path, report.clone())?;
    }
    // The proxy's root is opened before the remote is loaded: a missing one fails first.
    let mut server = match &proxy {
        Some((root, max_bytes, max_files)) => {
            let mut server =
                ProxyServer::new(root.as_deref()).map_err(|e| format!("--proxy-root {e}"))?;
            server.set_quota(*max_bytes, *max_files);
            Some(server)
        }
        None => None,
    };
    let mut rp = boot(image, memory_mib, ring)?;
    report.lock().set_state(rp.state());
    let timeout = Duration::from_secs(timeout.max(1));
    loop {
        let mut rpmsg = rp
            .create_virtio(0, BufferConfig::default())
            .map_err(|e| e.to_string())?;
        if let (None, Some(server)) = (ping_count, server.take()) {
            return run_proxy(image, &mut rp, rpmsg, server, timeout);
        }
        if let Some(count) = ping_count {
            let result = ping(
                &mut rpmsg,
                &mut waiter(&mut rp),
                channel,
                count,
                timeout,
                "host",
            );
            drop(rpmsg);
            // The echo firmware stops on the shutdown word; give it a moment, then stop it.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && matches!(rp.poll(), RemoteEvent::Idle) {
                std::thread::sleep(Duration::from_millis(10));
            }
            print_console(&mut rp);
            let _ = rp.shutdown();
            return match result {
                Ok(summary) => Ok(summary.all_matched()),
                Err(e) => Err(e.to_string()),
            };
        }
        let mut printer = Announcements(report.clone());
        let event = loop {
            rpmsg.poll(&mut printer).map_err(|e| e.to_string())?;
            rpmsg.transport_mut().environment().wait(200_000);
            print_console(&mut rp);
            match rp.poll() {
                RemoteEvent::Idle => {}
                other => break other,
            }
        };
        drop(rpmsg);
        match event {
            RemoteEvent::Exited(code) => {
                report.lock().exited(code);
                println!("{image}: exited with code {code}");
                return Ok(code == 0);
            }
            RemoteEvent::Crashed(why) => {
                report.lock().crashed(&why.to_string());
                println!("{image}: crashed: {why}");
                if rp.restarts() >= restarts {
                    return Ok(false);
                }
                rp.recover().map_err(|e| e.to_string())?;
                let mut r = report.lock();
                r.restarts = rp.restarts();
                r.channels.clear();
                r.set_state(rp.state());
                drop(r);
                println!("{image}: restarted ({} of {restarts})", rp.restarts());
            }
            RemoteEvent::Idle => unreachable!("the loop only ends on news"),
            other => return Err(format!("{image}: {other:?}: not handled")),
        }
    }
}

/// How long `remoteproc-vm status --control-socket` waits for the whole answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// `remoteproc-vm status`: asks the process serving `control_socket`, or reports the remotes
/// of `config` (all, or `name`), rendered for `request`.
fn status_command(
    config: Option<&Path>,
    control_socket: Option<&Path>,
    request: Request,
    name: Option<String>,
) -> Result<bool, String> {
    let answer = match (control_socket, config) {
        (Some(path), _) => status_socket::query(path, request, STATUS_TIMEOUT)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        (None, Some(config)) => {
            let cfg = RemotesConfig::load(config).map_err(|e| e.to_string())?;
            let remotes: Vec<RemoteReport> = cfg
                .remotes
                .iter()
                .filter(|s| name.as_ref().is_none_or(|n| *n == s.name))
                .map(configured_report)
                .collect();
            if let Some(n) = name.as_ref().filter(|_| remotes.is_empty()) {
                return Err(format!("{}: no remote called {n:?}", config.display()));
            }
            if request != Request::Status {
                status::render(request, &Status { remotes })
            } else {
                // One tab-separated line per remote, for scripts: name, backend, state, image.
                let line = |r: &RemoteReport| match r.backend.as_str() {
                    "sysfs" => format!("{}\tsysfs\t{}\t{}\n", r.name, r.state, r.image),
                    _ => format!(
                        "{}\tkvm\t(runs in the process that starts it: ask it with --control-socket)\n",
                        r.name
                    ),
                };
                remotes.iter().map(line).collect()
            }
        }
        (None, None) => return Err("give --config FILE or --control-socket PATH".into()),
    };
    print!("{answer}");
    Ok(true)
}

/// Binds the status socket at `path` and answers it from `report` on a thread of its own.
fn serve_status(path: &Path, report: SharedReport) -> Result<(), String> {
    let socket = StatusSocket::bind(path)
        .map_err(|e| format!("--control-socket {}: {e}", path.display()))?;
    std::thread::Builder::new()
        .name("vamp-status".into())
        .spawn(move || socket.serve(|request| status::render(request, &report.status())))
        .map(drop)
        .map_err(|e| format!("status thread: {e}"))
}

/// What `remoteproc-vm status --config` knows of a configured remote without asking the
/// process that runs it: a physical core's state and firmware from sysfs.
fn configured_report(spec: &RemoteSpec) -> RemoteReport {
    let mut report = RemoteReport {
        name: spec.name.clone(),
        max_restarts: spec.recovery.max_restarts(),
        ..Default::default()
    };
    match sysfs_of(spec) {
        Ok(core) => {
            report.backend = "sysfs".into();
            // The kernel's own state string, and the firmware it loads.
            report.state = core
                .raw_state()
                .unwrap_or_else(|e| format!("unreadable ({e})"));
            report.image = core.firmware().unwrap_or_else(|_| "?".into());
        }
        Err(_) => {
            report.backend = "kvm".into();
            report.state = "elsewhere".into();
            report.image = spec.image.to_string();
        }
    }
    report
}

fn inspect(image: &str) -> Result<(), String> {
    let source = image_source(image)?;
    let mut store = source
        .open()
        .map_err(|e| format!("{}: {e}", source.describe()))?;
    let text =
        vamp_remoteproc::inspect::inspect(&mut *store).map_err(|e| format!("{image}: {e}"))?;
    print!("{text}");
    Ok(())
}

fn configured(config: &PathBuf, name: &str) -> Result<(RemotesConfig, RemoteSpec), String> {
    let cfg = RemotesConfig::load(config).map_err(|e| e.to_string())?;
    let spec = cfg
        .remote(name)
        .cloned()
        .ok_or_else(|| format!("{}: no remote called {name:?}", config.display()))?;
    Ok((cfg, spec))
}

fn sysfs_of(spec: &RemoteSpec) -> Result<SysfsRemote, String> {
    match &spec.backend {
        BackendSpec::Sysfs { path } => Ok(SysfsRemote::at(path.clone())),
        BackendSpec::Kvm { .. } => Err(format!(
            "{}: a KVM remote lives in the process that runs it (remoteproc-vm start, or a [[remote]] of vhost-user-rpmsg)",
            spec.name
        )),
        other => Err(format!("{}: {other:?} is not a physical core", spec.name)),
    }
}

/// Echoes `count` messages (vamp's ping payloads) through the kernel's rpmsg to `channel`
/// of a physical core, once the core announced it.
fn ping_core(
    core: &SysfsRemote,
    channel: &str,
    count: u32,
    timeout: Duration,
) -> Result<PingSummary, String> {
    let deadline = Instant::now() + timeout;
    let dst = loop {
        let announced = core.announced_channels().map_err(|e| e.to_string())?;
        if let Some(c) = announced.iter().find(|c| c.name == channel) {
            break c.dst;
        }
        if Instant::now() > deadline {
            let names: Vec<&str> = announced.iter().map(|c| c.name.as_str()).collect();
            return Err(format!(
                "no channel {channel:?} announced within {timeout:?} (announced: {names:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut ept = core
        .open_endpoint(channel, dst)
        .map_err(|e| e.to_string())?;
    println!(
        "\"{channel}\" at {dst:#x}: endpoint {}",
        ept.dev_path().display()
    );
    let mut summary = PingSummary::default();
    let t0 = Instant::now();
    for i in 0..count {
        let request = ping_payload(i);
        let sent = Instant::now();
        ept.send(&request)
            .map_err(|e| format!("message {i}: send: {e}"))?;
        summary.sent += 1;
        let reply = ept
            .recv(timeout)
            .map_err(|e| format!("message {i}: receive: {e}"))?
            .ok_or_else(|| format!("message {i}: no echo within {timeout:?}"))?;
        summary.rtt_us.push(sent.elapsed().as_micros() as u64);
        if reply == request {
            summary.matched += 1;
        } else {
            eprintln!(
                "message {i}: echo of {} bytes differs from the {} sent",
                reply.len(),
                request.len()
            );
        }
    }
    summary.elapsed = t0.elapsed();
    Ok(summary)
}

/// The kernel's state string of a physical core.
fn sysfs_state(core: &SysfsRemote) -> Result<String, String> {
    core.raw_state().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result: Result<bool, String> = match Cli::parse().command {
        Command::Run {
            image,
            ping,
            channel,
            memory_mib,
            ring,
            restarts,
            timeout,
            proxy,
            proxy_root,
            proxy_max_bytes,
            proxy_max_files,
            control_socket,
        } => {
            let proxy = (proxy || proxy_root.is_some() || image == "proxy").then_some((
                proxy_root,
                proxy_max_bytes,
                proxy_max_files,
            ));
            run(
                &image,
                ping,
                &channel,
                (memory_mib, ring),
                restarts,
                timeout,
                proxy,
                control_socket.as_deref(),
            )
        }
        Command::Inspect { image } => inspect(&image).map(|()| true),
        Command::Images => {
            for (name, bytes) in vamp_remoteproc::images::BUILTIN {
                println!("{name}\t{} bytes", bytes.len());
            }
            Ok(true)
        }
        Command::Status {
            config,
            control_socket,
            json,
            metrics,
            name,
        } => {
            let request = if json {
                Request::Json
            } else if metrics {
                Request::Metrics
            } else {
                Request::Status
            };
            status_command(config.as_deref(), control_socket.as_deref(), request, name)
        }
        Command::Start {
            config,
            name,
            control_socket,
        } => {
            configured(&config, &name).and_then(|(_, spec)| match &spec.backend {
                BackendSpec::Sysfs { .. } => {
                    let mut core = sysfs_of(&spec)?;
                    // Firmware and recovery policy only for a core start will take (a
                    // detached one is attached to, not loaded); otherwise start says why not.
                    let state = core.state().map_err(|e| e.to_string())?;
                    if state == RemoteState::Offline {
                        let image = spec
                            .image
                            .source(&spec.name, vamp_remoteproc::images::builtin)
                            .map_err(|e| e.to_string())?;
                        if let ImageSource::File(path) = image {
                            let installed = core.set_firmware(&path).map_err(|e| e.to_string())?;
                            println!("{}: firmware {}", spec.name, installed.display());
                        }
                    }
                    if matches!(state, RemoteState::Offline | RemoteState::Detached) {
                        // The kernel applies the policy; it has no restart limit of its own.
                        let recover = matches!(spec.recovery, Recovery::Restart { .. });
                        core.set_recovery(recover).map_err(|e| e.to_string())?;
                    }
                    ManagedRemote::start(&mut core).map_err(|e| e.to_string())?;
                    println!("{}: {}", spec.name, sysfs_state(&core)?);
                    Ok(true)
                }
                BackendSpec::Kvm { memory, ring } => {
                    let image = spec.image.to_string();
                    let restarts = spec.recovery.max_restarts();
                    let proxy = (image == "proxy").then_some((
                        None,
                        vamp_remoteproc::proxy::DEFAULT_MAX_BYTES_WRITTEN,
                        vamp_remoteproc::proxy::DEFAULT_MAX_FILES_CREATED,
                    ));
                    run(
                        &image,
                        None,
                        ECHO_CHANNEL,
                        (memory >> 20, *ring),
                        restarts,
                        20,
                        proxy,
                        control_socket.as_deref(),
                    )
                }
                other => Err(format!(
                    "{name}: {other:?} cannot be started by this program"
                )),
            })
        }
        Command::Stop { config, name } => configured(&config, &name).and_then(|(_, spec)| {
            let mut core = sysfs_of(&spec)?;
            ManagedRemote::stop(&mut core).map_err(|e| e.to_string())?;
            println!("{}: {}", spec.name, sysfs_state(&core)?);
            Ok(true)
        }),
        Command::Recover { config, name } => configured(&config, &name).and_then(|(_, spec)| {
            let mut core = sysfs_of(&spec)?;
            core.recover().map_err(|e| e.to_string())?;
            println!("{}: {}", spec.name, sysfs_state(&core)?);
            Ok(true)
        }),
        Command::Ping {
            config,
            name,
            channel,
            count,
            timeout,
        } => configured(&config, &name).and_then(|(_, spec)| {
            let core = sysfs_of(&spec)?;
            let summary = ping_core(&core, &channel, count, Duration::from_secs(timeout.max(1)))?;
            println!("{}: {summary}", spec.name);
            Ok(summary.all_matched())
        }),
        Command::Crash { config, name, kind } => {
            configured(&config, &name).and_then(|(_, spec)| {
                let mut core = sysfs_of(&spec)?;
                core.report_crash(kind).map_err(|e| e.to_string())?;
                // The kernel handles the crash in a work item: the state changes after this.
                println!("{}: crash of type {kind} reported", spec.name);
                Ok(true)
            })
        }
        Command::Trace { config, name } => configured(&config, &name).and_then(|(_, spec)| {
            let mut core = sysfs_of(&spec)?;
            print!(
                "{}",
                ManagedRemote::trace(&mut core).map_err(|e| e.to_string())?
            );
            Ok(true)
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("remoteproc-vm: {e}");
            ExitCode::FAILURE
        }
    }
}
