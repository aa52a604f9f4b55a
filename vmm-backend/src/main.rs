//! `vhost-user-rpmsg`: a vhost-user virtio-rpmsg device (virtio ID 7) that hosts services
//! and routes rpmsg between the guests it serves.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use vamp_vmm_backend::config::Topology;
use vamp_vmm_backend::guest_memory::{DEFAULT_MAX_MAPPED, set_max_mapped};
use vamp_vmm_backend::hub::{Hub, SharedHub};
use vamp_vmm_backend::sandbox::{self, Policy, Violation};
use vamp_vmm_backend::vhost_user::serve_guest;

#[derive(Parser, Debug)]
#[command(
    name = "vhost-user-rpmsg",
    version,
    about = "vhost-user virtio-rpmsg device and inter-guest hub"
)]
struct Args {
    /// vhost-user socket to listen on (with --socket-count N: PATH0 .. PATH{N-1}).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    socket_path: Option<PathBuf>,
    /// Number of guests, one socket each; they all see each other's names.
    #[arg(long, default_value_t = 1, requires = "socket_path")]
    socket_count: usize,
    /// Topology file (guests, services, channels); see configs/.
    #[arg(long)]
    config: Option<PathBuf>,
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

fn topology(args: &Args) -> Result<Topology, vamp_vmm_backend::config::ConfigError> {
    match (&args.config, &args.socket_path) {
        (Some(path), _) => {
            let mut t = Topology::load(path)?;
            t.add_echo(&args.echo);
            t.validate()?;
            Ok(t)
        }
        (None, Some(path)) => {
            let sockets = if args.socket_count <= 1 {
                vec![path.clone()]
            } else {
                (0..args.socket_count)
                    .map(|i| PathBuf::from(format!("{}{i}", path.display())))
                    .collect()
            };
            Topology::all_to_all(sockets, &args.echo)
        }
        (None, None) => unreachable!("clap requires one of them"),
    }
}

/// Blocks SIGINT and SIGTERM in every thread and returns a thread that exits the process
/// cleanly (sockets removed) when one arrives.
fn handle_signals(sockets: Vec<PathBuf>) {
    // SAFETY: plain libc signal-mask calls on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let signals = std::thread::Builder::new().name("vamp-signals".into());
    let _ = signals.spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised before use and `sig` is a valid out-pointer.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigwait(&set, &mut sig);
        }
        log::info!("signal {sig}: shutting down");
        for s in &sockets {
            let _ = std::fs::remove_file(s);
        }
        std::process::exit(0);
    });
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let topology = match topology(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vhost-user-rpmsg: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before any thread starts or is sandboxed: the handler is process-wide.
    if let Err(e) = vamp_vmm_backend::guest_memory::install_fault_handler() {
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
    let sockets: Vec<PathBuf> = topology.guests.iter().map(|g| g.socket.clone()).collect();
    handle_signals(sockets.clone());
    let guest_count = topology.guests.len();
    let topology_remotes = topology.remotes.clone();
    let hub = SharedHub::new(Hub::new(topology));
    let mut threads: Vec<std::thread::JoinHandle<Result<(), String>>> = Vec::new();
    for (index, spec) in topology_remotes.into_iter().enumerate() {
        let hub = hub.clone();
        let id = guest_count + index;
        // The remote's lifecycle (KVM calls, outside the sandbox); its rings are served by
        // a confined thread of its own (crate::remote).
        let lifecycle = std::thread::Builder::new().name("vamp-remote".into());
        threads.push(spawn_named(lifecycle, move || {
            vamp_vmm_backend::remote::serve_remote(hub, id, spec).map_err(|e| e.to_string())
        }));
    }
    for (id, socket) in sockets.into_iter().enumerate() {
        let hub = hub.clone();
        // Accepts the guest's frontend connections (outside the sandbox: it touches no guest
        // memory and reads nothing the frontend sends; see crate::sandbox).
        let accept = std::thread::Builder::new().name("vamp-accept".into());
        threads.push(spawn_named(accept, move || {
            serve_guest(hub, id, &socket).map_err(|e| e.to_string())
        }));
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
