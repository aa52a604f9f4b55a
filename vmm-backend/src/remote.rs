//! Remotes in the hub: ELF firmware run as KVM micro-VMs by remoteproc-vm, whose rpmsg device
//! (the vdev of their resource table) the hub drives in the driver role. Their announced names
//! are offered to guests as the topology says, like any guest's; a crash withdraws them, and
//! recovery (per the topology) brings the remote and its channels back. Cores behind the
//! kernel's remoteproc (`backend = "sysfs"`, dom0's R5s) are reached through [`bridge`].

pub mod bridge;

use crate::config::RemoteSpec;
use crate::hub::{LinkEnv, LinkId, Notifier};
use crate::hub::{SharedHub, stop};
use crate::sandbox::{self, ThreadKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use vamp_remoteproc::backend::Doorbell;
use vamp_remoteproc::config::BackendSpec;
use vamp_remoteproc::image::ImageSource;
use vamp_remoteproc::kvm::{KvmOptions, KvmRemote};
use vamp_remoteproc::remoteproc::{RemoteEvent, Remoteproc};
use vamp_rpmsg::transport::BufferConfig;

/// Rings a remote's doorbell with the notify id of the queue.
struct DoorbellNotifier {
    doorbell: Arc<dyn Doorbell>,
    notifyids: [u32; 2],
}

impl Notifier for DoorbellNotifier {
    fn notify(&self, queue: u16) {
        self.doorbell.ring(self.notifyids[usize::from(queue & 1)]);
    }
}

/// Why a remote could not be run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The image could not be found.
    #[error("remote {remote}: {why}")]
    Image {
        /// The remote.
        remote: String,
        /// Why.
        why: String,
    },
    /// Starting or driving it failed.
    #[error("remote {remote}: {source}")]
    Lifecycle {
        /// The remote.
        remote: String,
        /// Why.
        source: vamp_remoteproc::remoteproc::LifecycleError,
    },
    /// The bridge to a core behind the kernel could not be set up (its memory, rings or
    /// eventfd).
    #[error("remote {remote}: bridge: {why}")]
    Bridge {
        /// The remote.
        remote: String,
        /// Why.
        why: String,
    },
    /// The spec asks for a backend this hub cannot serve (a newer configuration).
    #[error("remote {remote}: {why}")]
    Unsupported {
        /// The remote.
        remote: String,
        /// What it asked for.
        why: String,
    },
    /// The micro-VM could not be created.
    #[error("remote {remote}: {source}")]
    Backend {
        /// The remote.
        remote: String,
        /// Why.
        source: vamp_remoteproc::backend::BackendError,
    },
}

/// The image a spec names: a built-in image or an ELF file.
pub fn image_source(spec: &RemoteSpec) -> Result<ImageSource, RemoteError> {
    spec.image
        .source(&spec.name, vamp_remoteproc::images::builtin)
        .map_err(|e| RemoteError::Image {
            remote: spec.name.clone(),
            why: e.to_string(),
        })
}

fn bring_up(
    hub: &SharedHub,
    id: LinkId,
    rp: &mut Remoteproc<KvmRemote>,
    name: &str,
) -> Result<RingServer, RemoteError> {
    let lifecycle = |source| RemoteError::Lifecycle {
        remote: name.to_string(),
        source,
    };
    let rpmsg = rp
        .create_virtio_with(0, BufferConfig::default(), |doorbell, notifyids| {
            LinkEnv::new(Arc::new(DoorbellNotifier {
                doorbell,
                notifyids,
            }))
        })
        .map_err(lifecycle)?;
    let (transport, config) = rpmsg.into_parts();
    // Attaching flushes the hub's announcements into the remote's rings: ring work.
    hub.run_ring_work(id, move |hub| {
        hub.attach(id, transport, config.name_service)
    });
    Ok(RingServer::start(hub.clone(), id, rp.doorbell(), name))
}

/// The thread that serves a remote's rings (`vamp-remote-rings`), confined as
/// [`ThreadKind::RemoteRings`]: it waits on the remote's doorbell and runs the hub for the
/// remote's link, reading what the firmware wrote. The remote's lifecycle thread, which makes
/// the KVM calls no sandbox list could hold, never touches the rings itself.
struct RingServer {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RingServer {
    fn start(hub: SharedHub, id: LinkId, doorbell: Arc<dyn Doorbell>, name: &str) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let theirs = done.clone();
        let serve = move || {
            sandbox::enter(ThreadKind::RemoteRings);
            while !theirs.load(Ordering::Acquire) {
                doorbell.wait(Duration::from_millis(100));
                hub.link(id).service_attached(id);
                if doorbell.stopped() {
                    // Nothing more will come (a wait would return at once): the lifecycle
                    // thread sees the end and stops the link.
                    break;
                }
            }
        };
        let thread = std::thread::Builder::new()
            .name("vamp-remote-rings".into())
            .spawn(serve)
            .map_err(|e| log::error!("remote {name}: cannot start its ring thread: {e}"))
            .ok();
        RingServer { done, thread }
    }

    /// Ends the thread and waits for it: no more reads of the remote's rings after this.
    fn stop(self) {
        drop(self);
    }
}

impl Drop for RingServer {
    // However the lifecycle thread leaves (an error, a panic), the ring thread ends with it.
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often a remote's lifecycle thread looks for an exit or a crash and relays its console.
const LIFECYCLE_POLL: Duration = Duration::from_millis(50);

/// Runs remote `id` of the hub's topology: starts it, attaches its rpmsg device to the hub,
/// serves its notifications, and applies its recovery policy when it crashes. Returns when
/// it stopped for good.
pub fn serve_remote(hub: SharedHub, id: LinkId, spec: RemoteSpec) -> Result<(), RemoteError> {
    let name = spec.name.clone();
    let backend = |source| RemoteError::Backend {
        remote: name.clone(),
        source,
    };
    let lifecycle = |source| RemoteError::Lifecycle {
        remote: name.clone(),
        source,
    };
    let (memory, ring_format) = match &spec.backend {
        BackendSpec::Kvm { memory, ring } => (*memory, *ring),
        BackendSpec::Sysfs { path } => {
            let path = path.clone();
            return bridge::serve_sysfs_remote(hub, id, spec, &path);
        }
        other => {
            return Err(RemoteError::Unsupported {
                remote: name,
                why: format!("backend {other:?} is not served by the hub"),
            });
        }
    };
    let options = KvmOptions {
        memory,
        ring_format,
        ..Default::default()
    };
    let mut rp = Remoteproc::new(KvmRemote::new(options).map_err(backend)?);
    rp.load_source(image_source(&spec)?).map_err(lifecycle)?;
    rp.start().map_err(lifecycle)?;
    log::info!("remote {name}: started ({:?})", spec.image);
    hub.link(id).note_remote(id, "running", 0);
    let mut rings = bring_up(&hub, id, &mut rp, &name)?;
    let max_restarts = spec.recovery.max_restarts();
    loop {
        std::thread::sleep(LIFECYCLE_POLL);
        for line in String::from_utf8_lossy(&rp.take_console()).lines() {
            log::info!("remote {name} console: {line}");
        }
        match rp.poll() {
            RemoteEvent::Idle => {}
            RemoteEvent::Exited(code) => {
                rings.stop();
                hub.run_ring_work(id, stop(id, format!("the remote exited with code {code}")));
                log::info!("remote {name}: exited with code {code}");
                hub.link(id)
                    .note_remote(id, "exited", u64::from(rp.restarts()));
                return Ok(());
            }
            RemoteEvent::Crashed(why) => {
                rings.stop();
                hub.run_ring_work(id, stop(id, "the remote crashed"));
                log::error!("remote {name}: crashed: {why}");
                if rp.restarts() >= max_restarts {
                    log::error!(
                        "remote {name}: left crashed (recovery {:?}, {} restarts)",
                        spec.recovery,
                        rp.restarts()
                    );
                    hub.link(id)
                        .note_remote(id, "crashed", u64::from(rp.restarts()));
                    return Ok(());
                }
                rp.recover().map_err(lifecycle)?;
                log::warn!(
                    "remote {name}: restarted ({} of {max_restarts})",
                    rp.restarts()
                );
                rings = bring_up(&hub, id, &mut rp, &name)?;
                hub.link(id)
                    .note_remote(id, "running", u64::from(rp.restarts()));
            }
            // News this hub does not act on (from a newer vamp-remoteproc): said, and the
            // remote keeps running.
            other => log::warn!("remote {name}: {other:?} not handled"),
        }
    }
}
