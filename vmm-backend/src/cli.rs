//! The command line of `vhost-user-rpmsg`, a vhost-user virtio-rpmsg device (virtio ID 7)
//! that hosts services and routes rpmsg between the guests it serves: [`run`] is the whole
//! program (the binary's `main` calls it; so does `vamp bench`, through a hidden `vamp
//! vhost-user-rpmsg` command, to measure the hub as users run it).

use crate::config::{Topology, check_quiet_ms};
use crate::control::{self, ControlSocket, Request};
use crate::guest_memory::{DEFAULT_MAX_MAPPED, set_max_mapped};
use crate::hub::{Hub, SharedHub};
use crate::sandbox::{self, Policy, Violation};
use crate::service;
use crate::vhost_user::{serve_listener, set_offer_packed};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vhost::vhost_user::Listener;

#[derive(Parser, Debug)]
#[command(
    name = "vhost-user-rpmsg",
    version,
    about = "vhost-user virtio-rpmsg device and inter-guest hub",
    after_help = "Socket names follow rust-vmm's vhost-device backends: with -c/--socket-count N the \
                  index is appended to PATH for every guest, N = 1 included (-s /run/rpmsg.sock -c 2 \
                  listens on /run/rpmsg.sock0 and /run/rpmsg.sock1); without -c PATH is used as given. \
                  READY=1 goes to $NOTIFY_SOCKET (systemd Type=notify) once every socket listens.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// vhost-user socket to listen on. With -c/--socket-count N: PATH0 .. PATH{N-1}, the index
    /// always appended (as vhost-device's backends do); without it: PATH itself.
    #[arg(short = 's', long, value_name = "PATH", conflicts_with_all = ["config", "socket_fd"])]
    socket_path: Option<PathBuf>,
    /// Number of guests, one socket each (at least 1); they all see each other's names.
    #[arg(short = 'c', long, value_name = "N", requires = "socket_path")]
    socket_count: Option<usize>,
    /// A listening AF_UNIX socket passed in by a supervisor (systemd socket activation passes
    /// them from 3 on): one guest per descriptor (repeatable: guest0, guest1, ...).
    #[arg(long, value_name = "FD", conflicts_with = "config")]
    socket_fd: Vec<RawFd>,
    /// Topology file (guests, services, channels); see configs/.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Answer `vhost-user-rpmsg status` (table, JSON, Prometheus metrics) on this socket,
    /// owner-only; overrides `control_socket` of --config.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Host echo service announced to every guest under NAME (repeatable).
    #[arg(long = "echo", value_name = "NAME")]
    echo: Vec<String>,
    /// Serve without the seccomp sandbox of the threads that touch guest memory.
    #[arg(long)]
    no_sandbox: bool,
    /// What a sandboxed thread's forbidden system call does: `refuse` (it fails with EPERM
    /// and is logged; the default) or `kill` (the whole process dies with SIGSYS).
    #[arg(long, value_name = "ACTION", default_value = "refuse", value_parser = ["refuse", "kill"], conflicts_with = "no_sandbox")]
    sandbox_violation: String,
    /// Most bytes one guest's memory table may map, in MiB; a larger table is refused at
    /// SET_MEM_TABLE. Default 65536 (64 GiB).
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MAX_MAPPED >> 20)]
    max_guest_memory: u64,
    /// Do not offer packed virtqueues (VIRTIO_F_RING_PACKED): every guest gets split rings.
    /// Without it a guest whose VMM acks the feature (QEMU: the device's `packed=on`) runs its
    /// link over packed rings.
    #[arg(long)]
    no_packed: bool,
    /// Poll every guest's rings from a spinning thread, the guests' kicks turned off, instead
    /// of waiting for their kicks (`poll = true` in --config does it per guest). After the
    /// quiet period without traffic the guest's kicks come back on, and its next kick resumes
    /// polling. The hub's interrupts follow the guest's own suppression either way. One
    /// thread polls all polled guests: it keeps one CPU busy while any guest is polled.
    #[arg(long)]
    poll: bool,
    /// Quiet period of polling in milliseconds (1 to 60000; default 100): how long a polled
    /// guest may send nothing before the hub goes back to waiting for its kicks. A guest's
    /// `poll_quiet_ms` in --config overrides it.
    #[arg(long, value_name = "MS", value_parser = parse_quiet_ms)]
    poll_quiet_ms: Option<u64>,
}

fn parse_quiet_ms(s: &str) -> Result<u64, String> {
    let ms: u64 = s.parse().map_err(|e| format!("{e}"))?;
    check_quiet_ms(ms)?;
    Ok(ms)
}

/// What else the binary does than serve.
#[derive(Subcommand, Debug)]
enum Action {
    /// Print a running hub's guests, links, names, counters and remotes.
    Status {
        /// The hub's status socket (its --control-socket).
        #[arg(long, value_name = "PATH")]
        control_socket: PathBuf,
        /// As JSON.
        #[arg(long, conflicts_with = "metrics")]
        json: bool,
        /// As a Prometheus text exposition.
        #[arg(long)]
        metrics: bool,
    },
}

/// How long `status` waits for the hub's answer.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `vhost-user-rpmsg status`: asks the hub and prints its answer.
fn status(path: &Path, json: bool, metrics: bool) -> ExitCode {
    let request = match (json, metrics) {
        (true, _) => Request::Json,
        (_, true) => Request::Metrics,
        _ => Request::Status,
    };
    match control::query(path, request, STATUS_TIMEOUT) {
        Ok(answer) => {
            print!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "vhost-user-rpmsg status: asking the hub on {}: {e}",
                path.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// The socket paths `-s PATH -c N` stands for: vhost-device's rule, the index appended to
/// the file name for each of the N guests whenever a count is given; PATH alone without one.
fn socket_paths(path: &Path, count: Option<usize>) -> Result<Vec<PathBuf>, String> {
    let Some(count) = count else {
        return Ok(vec![path.to_path_buf()]);
    };
    if count == 0 {
        return Err("--socket-count 0: there must be at least one socket".into());
    }
    if path.file_name().is_none() {
        return Err(format!(
            "--socket-path {}: names a directory, not a socket file to append the index to",
            path.display()
        ));
    }
    Ok((0..count)
        .map(|i| {
            let mut name = path.as_os_str().to_os_string();
            name.push(i.to_string());
            PathBuf::from(name)
        })
        .collect())
}

/// The sandbox policy the arguments ask for, checked to work on this machine.
fn sandbox_policy(args: &Args) -> Result<Policy, String> {
    if args.no_sandbox {
        return Ok(Policy::Off);
    }
    let violation = match args.sandbox_violation.as_str() {
        "kill" => Violation::Kill,
        _ => Violation::Refuse,
    };
    sandbox::check(violation)
        .map_err(|e| format!("{e} (--no-sandbox serves without the sandbox)"))?;
    Ok(Policy::On(violation))
}

fn topology(args: &Args) -> Result<Topology, String> {
    let mut t = configured_topology(args)?;
    t.set_polling(args.poll, args.poll_quiet_ms);
    Ok(t)
}

fn configured_topology(args: &Args) -> Result<Topology, String> {
    if let Some(path) = &args.config {
        let mut t = Topology::load(path).map_err(|e| e.to_string())?;
        t.add_echo(&args.echo);
        t.validate().map_err(|e| e.to_string())?;
        return Ok(t);
    }
    let sockets = match &args.socket_path {
        Some(path) => socket_paths(path, args.socket_count)?,
        // Names for the log and the status only: these guests' sockets are the descriptors.
        None if !args.socket_fd.is_empty() => args
            .socket_fd
            .iter()
            .map(|fd| PathBuf::from(format!("fd {fd}")))
            .collect(),
        None => return Err("one of --socket-path, --socket-fd or --config is needed".into()),
    };
    Topology::all_to_all(sockets, &args.echo).map_err(|e| e.to_string())
}

/// Every guest's listening socket, made (or adopted) before any guest is served, so that the
/// process either listens on all of them or exits naming the one it could not make.
fn listen_all(args: &Args, topology: &Topology) -> Result<Vec<Listener>, String> {
    if !args.socket_fd.is_empty() {
        let mut seen = std::collections::HashSet::new();
        return args
            .socket_fd
            .iter()
            .map(|&fd| {
                if !seen.insert(fd) {
                    return Err(format!("--socket-fd {fd} is given twice"));
                }
                service::adopt_listener(fd)
                    .map(Listener::from)
                    .map_err(|e| format!("--socket-fd: {e}"))
            })
            .collect();
    }
    topology
        .guests
        .iter()
        .map(|g| {
            Listener::new(&g.socket, true).map_err(|e| {
                format!(
                    "guest {}: cannot listen on {}: {e}",
                    g.name,
                    g.socket.display()
                )
            })
        })
        .collect()
}

/// SIGINT and SIGTERM, which the hub handles on a thread of its own ([`handle_signals`]).
fn stop_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set calls on a local set, initialised before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts from here on. Called
/// before any socket exists: a signal that arrives once a socket can be seen waits for
/// [`handle_signals`] instead of killing the process with its sockets left behind.
fn block_stop_signals() {
    let set = stop_signals();
    // SAFETY: sets this thread's mask from an initialised set; no old mask is asked for.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Starts the thread that exits the process cleanly (`sockets` removed) when SIGINT or SIGTERM
/// arrives (blocked everywhere by [`block_stop_signals`]; one pending since is taken here).
fn handle_signals(sockets: Vec<PathBuf>) {
    let signals = std::thread::Builder::new().name("vamp-signals".into());
    let _ = signals.spawn(move || {
        let set = stop_signals();
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised and `sig` is a valid out-pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        log::info!("signal {sig}: shutting down");
        for s in &sockets {
            let _ = std::fs::remove_file(s);
        }
        std::process::exit(0);
    });
}

/// Runs `vhost-user-rpmsg` with the command line `args` (the program's name first, as
/// [`std::env::args_os`] gives it) until it is told to stop; returns its exit status. Starts
/// the log (`RUST_LOG`, `info` by default) unless the caller has one already.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // A caller's logger (the `vamp` binary's) stays.
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .try_init();
    let args = Args::parse_from(args);
    if let Some(Action::Status {
        control_socket,
        json,
        metrics,
    }) = &args.action
    {
        return status(control_socket, *json, *metrics);
    }
    let topology = match topology(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vhost-user-rpmsg: {e}");
            return ExitCode::FAILURE;
        }
    };
    block_stop_signals();
    // Before anything is started: a socket that cannot be made ends the process here.
    let listeners = match listen_all(&args, &topology) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vhost-user-rpmsg: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before any thread starts or is sandboxed: the handler is process-wide.
    if let Err(e) = crate::guest_memory::install_fault_handler() {
        eprintln!("vhost-user-rpmsg: installing the SIGBUS handler: {e}");
        return ExitCode::FAILURE;
    }
    match sandbox_policy(&args) {
        Ok(policy) => {
            sandbox::set_policy(policy);
            match policy {
                Policy::Off => log::warn!("sandbox off: the vring workers run unconfined"),
                Policy::On(v) => log::info!(
                    "sandbox on: the threads that read guest, VMM or remote input are confined by seccomp \
                     (forbidden calls: {})",
                    if v == Violation::Kill {
                        "kill the process"
                    } else {
                        "fail with EPERM"
                    }
                ),
            }
        }
        Err(e) => {
            eprintln!("vhost-user-rpmsg: sandbox: {e}");
            return ExitCode::FAILURE;
        }
    }
    set_max_mapped(args.max_guest_memory.saturating_mul(1 << 20));
    set_offer_packed(!args.no_packed);
    let control = match args
        .control_socket
        .as_ref()
        .or(topology.control_socket.as_ref())
    {
        // Binding replaces a stale socket file: never a guest's, made above.
        Some(path) if topology.guests.iter().any(|g| &g.socket == path) => {
            eprintln!(
                "vhost-user-rpmsg: the status socket {} is also a guest's socket",
                path.display()
            );
            return ExitCode::FAILURE;
        }
        Some(path) => match ControlSocket::bind(path) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!(
                    "vhost-user-rpmsg: cannot listen on the status socket {}: {e}",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    // The paths this process made, removed at exit (a passed-in socket is its supervisor's).
    let mut owned: Vec<PathBuf> = if args.socket_fd.is_empty() {
        topology.guests.iter().map(|g| g.socket.clone()).collect()
    } else {
        Vec::new()
    };
    owned.extend(control.as_ref().map(|c| c.path().to_path_buf()));
    handle_signals(owned);
    let guest_count = topology.guests.len();
    let socket_names: Vec<String> = topology
        .guests
        .iter()
        .map(|g| g.socket.display().to_string())
        .collect();
    let topology_remotes = topology.remotes.clone();
    let hub = SharedHub::new(Hub::new(topology));
    if let Some(control) = control {
        let path = control.path().display().to_string();
        if let Err(e) = control.spawn(hub.clone()) {
            eprintln!("vhost-user-rpmsg: cannot start the status thread: {e}");
            return ExitCode::FAILURE;
        }
        log::info!("status on {path} (vhost-user-rpmsg status --control-socket {path})");
    }
    let mut threads: Vec<std::thread::JoinHandle<Result<(), String>>> = Vec::new();
    for (index, spec) in topology_remotes.into_iter().enumerate() {
        let hub = hub.clone();
        let id = guest_count + index;
        // The remote's lifecycle (KVM calls, outside the sandbox); its rings are served by
        // a confined thread of its own (crate::remote).
        let lifecycle = std::thread::Builder::new().name("vamp-remote".into());
        threads.push(spawn_named(lifecycle, move || {
            crate::remote::serve_remote(hub, id, spec).map_err(|e| e.to_string())
        }));
    }
    for (id, (listener, socket)) in listeners.into_iter().zip(socket_names).enumerate() {
        let hub = hub.clone();
        // Accepts the guest's frontend connections (outside the sandbox: it touches no guest
        // memory and reads nothing the frontend sends; see crate::sandbox).
        let accept = std::thread::Builder::new().name("vamp-accept".into());
        threads.push(spawn_named(accept, move || {
            serve_listener(hub, id, listener, &socket).map_err(|e| e.to_string())
        }));
    }
    // Every socket listens (made above, before any thread): frontends may connect now.
    log::info!("ready: {guest_count} guest socket(s) listening");
    match service::notify_ready() {
        Ok(true) => log::info!("told the supervisor: READY=1"),
        Ok(false) => {}
        Err(e) => log::warn!("cannot notify ${}: {e}", service::NOTIFY_SOCKET),
    }
    let mut failed = false;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("vhost-user-rpmsg: {e}");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Starts a named thread of the hub at start-up, or ends the process saying why.
fn spawn_named<F>(
    builder: std::thread::Builder,
    f: F,
) -> std::thread::JoinHandle<Result<(), String>>
where
    F: FnOnce() -> Result<(), String> + Send + 'static,
{
    builder.spawn(f).unwrap_or_else(|e| {
        eprintln!("vhost-user-rpmsg: cannot start a thread: {e}");
        std::process::exit(1)
    })
}
