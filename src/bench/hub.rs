//! The hub over vhost-user: a hub serving real sockets, guests connected through vamp's own
//! frontend, and the rows with notifications (guest to the hub's echo, guest to hub to guest),
//! on split or packed rings (the hub offers VIRTIO_F_RING_PACKED; a guest acks it or not).

use super::clients::{Echo, Fig, find_name, measure, rerr};
use super::sys::{TempDir, pin, temp_dir};
use super::{Cpus, ECHO_NAME, PEER_NAME, Plan, Res};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use vamp_rpmsg::transport::RingFormat;
use vamp_rpmsg::wire::ADDR_ANY;
use vamp_vmm_backend::config::{ChannelSpec, GuestSpec, ServiceKind, ServiceSpec, Topology};
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest};
use vamp_vmm_backend::hub::{Hub, SharedHub};
use vamp_vmm_backend::vhost_user::serve_guest;

pub(super) fn topology(guests: usize, pairs: bool, socket_dir: &Path) -> Res<Topology> {
    let name = |i: usize| format!("g{i}");
    let mut channels = Vec::new();
    if pairs {
        for k in 0..guests / 2 {
            channels.push(ChannelSpec {
                from: name(2 * k + 1),
                to: vec![name(2 * k)],
                names: Some(vec![PEER_NAME.into()]),
            });
        }
    }
    let t = Topology {
        control_socket: None,
        guests: (0..guests)
            .map(|i| GuestSpec::new(name(i), socket_dir.join(format!("g{i}.sock"))))
            .collect(),
        remotes: Vec::new(),
        services: vec![ServiceSpec {
            kind: ServiceKind::Echo,
            name: ECHO_NAME.into(),
            guests: None,
        }],
        channels,
    };
    t.validate().map_err(|e| e.to_string())?;
    Ok(t)
}

/// A hub serving guests on vhost-user sockets from threads pinned to one CPU. The threads
/// serve until the process ends (the hub has no stop call); the sockets go with the dir.
pub(super) struct VhostHub {
    pub(super) hub: SharedHub,
    pub(super) sockets: Vec<PathBuf>,
    pub(super) _dir: TempDir,
}

pub(super) fn start_vhost_hub(guests: usize, pairs: bool, cpu: usize) -> Res<VhostHub> {
    let dir = temp_dir("hub")?;
    let t = topology(guests, pairs, &dir.0)?;
    let sockets: Vec<PathBuf> = t.guests.iter().map(|g| g.socket.clone()).collect();
    let hub = SharedHub::new(Hub::new(t));
    for (id, socket) in sockets.iter().enumerate() {
        let (hub, socket) = (hub.clone(), socket.clone());
        std::thread::spawn(move || {
            pin(cpu);
            serve_guest(hub, id, &socket)
        });
    }
    Ok(VhostHub {
        hub,
        sockets,
        _dir: dir,
    })
}

/// A native guest on `socket` whose rings are of `ring` format: it acks packed rings when
/// `ring` is packed, and the format the link came up with is checked.
pub(super) fn connect_guest(socket: &Path, ring: RingFormat) -> Res<NativeGuest> {
    let opts = GuestOptions {
        connect_timeout: Duration::from_secs(10),
        packed: ring == RingFormat::Packed,
        ..Default::default()
    };
    let mut g = NativeGuest::connect(socket, opts).map_err(|e| format!("native guest: {e}"))?;
    let got = g.rpmsg().transport().ring_format();
    if got != ring {
        return Err(format!(
            "asked for {} rings, the link came up on {} rings (features offered {:#x})",
            ring.name(),
            got.name(),
            g.offered_features()
        ));
    }
    Ok(g)
}

pub(super) fn hub_echo_notify(plan: &Plan, cpus: Cpus, ring: RingFormat) -> [Res<Fig>; 2] {
    let run = || -> Res<[Res<Fig>; 2]> {
        let hub = start_vhost_hub(1, false, cpus.b)?;
        let mut g = connect_guest(&hub.sockets[0], ring)?;
        let addr = find_name(g.rpmsg(), ECHO_NAME, false)?;
        let ept = g.rpmsg().create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
        Ok(measure(g.rpmsg(), (ept, addr), false, plan))
    };
    run().unwrap_or_else(|e| [Err(e.clone()), Err(e)])
}

/// Runs an echo guest on `ring` rings in a thread until `stop`.
fn echo_guest_thread(
    socket: PathBuf,
    ring: RingFormat,
    cpu: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Res<()>> {
    std::thread::spawn(move || {
        pin(cpu);
        let mut g = connect_guest(&socket, ring)?;
        g.rpmsg()
            .create_ept(PEER_NAME.as_bytes(), ADDR_ANY, ADDR_ANY)
            .map_err(rerr)?;
        let mut echo = Echo::new();
        while !stop.load(Ordering::Relaxed) && !echo.shutdown {
            if g.poll(&mut echo).map_err(rerr)? == 0 {
                g.wait(Duration::from_millis(50));
            }
        }
        Ok(())
    })
}

/// Both guests on `ring` rings.
pub(super) fn guest_to_guest_notify(plan: &Plan, cpus: Cpus, ring: RingFormat) -> [Res<Fig>; 2] {
    let run = || -> Res<[Res<Fig>; 2]> {
        let hub = start_vhost_hub(2, true, cpus.b)?;
        let stop = Arc::new(AtomicBool::new(false));
        let echo = echo_guest_thread(hub.sockets[1].clone(), ring, cpus.a, stop.clone());
        let measured = (|| {
            let mut g = connect_guest(&hub.sockets[0], ring)?;
            let addr = find_name(g.rpmsg(), PEER_NAME, false)?;
            let ept = g.rpmsg().create_ept(b"", ADDR_ANY, addr).map_err(rerr)?;
            Ok(measure(g.rpmsg(), (ept, addr), false, plan))
        })();
        // The echo guest stops however the measuring side ended; its own failure (it never
        // came up) says more than the measuring side's wait for its name.
        stop.store(true, Ordering::Relaxed);
        echo.join().map_err(|_| "echo guest panicked")??;
        measured
    };
    run().unwrap_or_else(|e| [Err(e.clone()), Err(e)])
}
