//! `vamp demo`: the main job, with nothing installed beyond Rust.
//!
//! 1. Two processes, one in each virtio role, over OpenAMP's native-Linux link: a copy of this
//!    program runs the echo remote (device role); this process is the host (driver role), finds
//!    the remote's channel by name service and exchanges messages with it.
//! 2. The vhost-user hub with two native guests (each a process playing a guest through vamp's
//!    own vhost-user frontend): one offers an echo under a name, the other finds the name
//!    through the hub, which translates addresses between them, and pings it. Then the hub's
//!    status socket answers what `vhost-user-rpmsg status` shows: the traffic just sent.
//! 3. Where /dev/kvm works: the echo firmware built from images/ runs as a KVM micro-VM; the
//!    hub drives its rpmsg device and a native guest pings it by name through the hub.

use crate::native_apps::{Protocol, run_ping_host};
use std::ffi::OsStr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use vamp_rpmsg::apps::{AppError, PingSummary};
use vamp_rpmsg::native;
use vamp_vmm_backend::config::Topology;
use vamp_vmm_backend::control::{self, ControlSocket, Request};
use vamp_vmm_backend::hub::{Hub, SharedHub};
use vamp_vmm_backend::vhost_user::serve_guest;

const HUB_SERVICE: &str = "vamp-demo-echo";

fn spawn_self<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Result<Child, AppError> {
    let exe =
        std::env::current_exe().map_err(|e| AppError::Link(format!("find own binary: {e}")))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| AppError::Link(format!("start a demo process: {e}")))
}

fn wait_child(child: &mut Child) -> Result<ExitStatus, AppError> {
    child
        .wait()
        .map_err(|e| AppError::Link(format!("wait for a demo process: {e}")))
}

fn native_part(count: u32) -> Result<(PingSummary, ExitStatus), AppError> {
    let paths = native::private_paths("demo");
    println!("1. native link: two processes, one RPMsg device (OpenAMP native-Linux layout)");
    println!(
        "   shared memory {}, kick socket {}",
        paths.shm.display(),
        paths.socket.display()
    );
    let mut remote = spawn_self([
        OsStr::new("native"),
        OsStr::new("--role"),
        OsStr::new("remote"),
        OsStr::new("--timeout"),
        OsStr::new("30"),
        OsStr::new("--shm"),
        paths.shm.as_os_str(),
        OsStr::new("--socket"),
        paths.socket.as_os_str(),
    ])?;
    let result = run_ping_host(
        &paths,
        Duration::from_secs(30),
        count,
        Protocol::Demo,
        "host",
    );
    if result.is_err() {
        let _ = remote.kill();
    }
    let status = wait_child(&mut remote)?;
    native::cleanup(&paths);
    Ok((result?, status))
}

fn hub_part(count: u32) -> Result<(PingSummary, ExitStatus), AppError> {
    let dir = std::env::temp_dir().join(format!("vamp-demo-hub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| AppError::Link(format!("temp dir: {e}")))?;
    let (alice, bob) = (dir.join("alice.sock"), dir.join("bob.sock"));
    let topology = Topology::parse(&format!(
        "[[guest]]\nname = \"alice\"\nsocket = \"{}\"\n[[guest]]\nname = \"bob\"\nsocket = \"{}\"\n\
         [[channel]]\nfrom = \"alice\"\nto = [\"bob\"]\n[[channel]]\nfrom = \"bob\"\nto = [\"alice\"]\n",
        alice.display(),
        bob.display()
    ))
    .map_err(|e| AppError::Link(e.to_string()))?;
    println!(
        "2. vhost-user hub: guests alice and bob, each a process with vamp's own vhost-user frontend"
    );
    println!("   sockets {} and {}", alice.display(), bob.display());
    let hub = SharedHub::new(Hub::new(topology));
    for (id, socket) in [alice.clone(), bob.clone()].into_iter().enumerate() {
        let hub = hub.clone();
        std::thread::spawn(move || serve_guest(hub, id, &socket));
    }
    let status_socket = dir.join("status.sock");
    let status_served = ControlSocket::bind(&status_socket).and_then(|s| s.spawn(hub.clone()));
    let mut offerer = spawn_self([
        OsStr::new("guest"),
        OsStr::new("--offer"),
        OsStr::new(HUB_SERVICE),
        OsStr::new("--tag"),
        OsStr::new("alice"),
        OsStr::new("--socket"),
        alice.as_os_str(),
    ])?;
    let count_arg = count.to_string();
    let mut pinger = spawn_self([
        OsStr::new("guest"),
        OsStr::new("--ping"),
        OsStr::new(HUB_SERVICE),
        OsStr::new("--count"),
        OsStr::new(&count_arg),
        OsStr::new("--tag"),
        OsStr::new("bob"),
        OsStr::new("--socket"),
        bob.as_os_str(),
    ])?;
    let ping_status = wait_child(&mut pinger)?;
    if !ping_status.success() {
        let _ = offerer.kill();
    }
    let offer_status = wait_child(&mut offerer)?;
    let stats = hub.link(1).stats(1);
    println!(
        "   hub: {} messages forwarded from bob to alice, {} dropped",
        stats.forwarded, stats.dropped
    );
    // What an operator sees: the status socket's answer, as `vhost-user-rpmsg status` prints it.
    let answer = status_served
        .and_then(|()| control::query(&status_socket, Request::Status, Duration::from_secs(5)));
    match answer {
        Ok(table) => {
            println!(
                "   vhost-user-rpmsg status --control-socket {}:",
                status_socket.display()
            );
            for line in table.lines() {
                println!("   | {line}");
            }
        }
        Err(e) => println!("   status socket: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    let summary = PingSummary {
        sent: count,
        matched: if ping_status.success() { count } else { 0 },
        ..Default::default()
    };
    Ok((
        summary,
        if ping_status.success() {
            offer_status
        } else {
            ping_status
        },
    ))
}

fn remote_part(count: u32) -> Result<Option<ExitStatus>, AppError> {
    if let Err(why) = vamp_remoteproc::kvm::kvm_available() {
        println!("3. KVM remote: skipped, {why}");
        return Ok(None);
    }
    let dir = std::env::temp_dir().join(format!("vamp-demo-kvm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| AppError::Link(format!("temp dir: {e}")))?;
    let carol = dir.join("carol.sock");
    let topology = Topology::parse(&format!(
        "[[guest]]\nname = \"carol\"\nsocket = \"{}\"\n\
         [[remote]]\nname = \"r5\"\nimage = \"echo\"\n\
         [[channel]]\nfrom = \"r5\"\nto = [\"carol\"]\n",
        carol.display()
    ))
    .map_err(|e| AppError::Link(e.to_string()))?;
    let remote_spec = topology.remotes[0].clone();
    println!(
        "3. KVM remote: the echo firmware (images/) as a micro-VM, reached by guest carol through the hub"
    );
    let hub = SharedHub::new(Hub::new(topology));
    {
        let (hub, socket) = (hub.clone(), carol.clone());
        std::thread::spawn(move || serve_guest(hub, 0, &socket));
    }
    {
        let hub = hub.clone();
        std::thread::spawn(move || {
            if let Err(e) = vamp_vmm_backend::remote::serve_remote(hub, 1, remote_spec) {
                eprintln!("   remote: {e}");
            }
        });
    }
    let count_arg = count.to_string();
    let mut pinger = spawn_self([
        OsStr::new("guest"),
        OsStr::new("--ping"),
        OsStr::new(vamp_rpmsg::apps::ECHO_CHANNEL),
        OsStr::new("--count"),
        OsStr::new(&count_arg),
        OsStr::new("--tag"),
        OsStr::new("carol"),
        OsStr::new("--socket"),
        carol.as_os_str(),
    ])?;
    let status = wait_child(&mut pinger)?;
    let stats = hub.link(1).stats(1);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "   hub: {} messages forwarded from the remote to carol",
        stats.forwarded
    );
    Ok(Some(status))
}

/// Runs the demo with `count` messages per part. Returns whether everything matched and every
/// process stopped cleanly.
pub fn run(count: u32) -> Result<bool, AppError> {
    println!(
        "vamp demo: RPMsg between processes, in both virtio roles, through the hub, and to a KVM remote\n"
    );
    let (native, native_status) = native_part(count)?;
    println!();
    let (hub, hub_status) = hub_part(count)?;
    println!();
    let remote_status = remote_part(count)?;
    println!();
    let remote_line = match remote_status {
        Some(s) if s.success() => format!("KVM remote {count}/{count} echoes through the hub"),
        Some(s) => format!("KVM remote FAILED ({s})"),
        None => "KVM remote skipped (no usable /dev/kvm)".to_string(),
    };
    println!(
        "summary: native link {}/{} echoes (1..496 bytes), round trip p50 {} us, p99 {} us, remote {}; \
         hub {}/{} echoes between two guests, guests {}; {remote_line}",
        native.matched,
        native.sent,
        native.percentile(0.5),
        native.percentile(0.99),
        native_status,
        hub.matched,
        hub.sent,
        hub_status
    );
    Ok(native.all_matched()
        && native_status.success()
        && hub.all_matched()
        && hub_status.success()
        && remote_status.is_none_or(|s| s.success()))
}
