//! Remotes in the hub: ELF firmware run as KVM micro-VMs by remoteproc-vm, whose rpmsg device
//! (the vdev of their resource table) the hub drives in the driver role. Their announced names
//! are offered to guests as the topology says, like any guest's; a crash withdraws them, and
//! recovery (per the topology) brings the remote and its channels back.

use crate::backend::{lock_hub, run_ring_work, stop};
use crate::config::RemoteSpec;
use crate::hub::{Hub, LinkEnv, LinkId, Notifier};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vamp_remoteproc::backend::Doorbell;
use vamp_remoteproc::config::{BackendSpec, Recovery};
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
    hub: &Mutex<Hub>,
    id: LinkId,
    rp: &mut Remoteproc<KvmRemote>,
    name: &str,
) -> Result<(), RemoteError> {
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
    lock_hub(hub).attach(id, transport, config.name_service);
    Ok(())
}

/// Runs remote `id` of the hub's topology: starts it, attaches its rpmsg device to the hub,
/// serves its notifications, and applies its recovery policy when it crashes. Returns when
/// it stopped for good.
pub fn serve_remote(hub: Arc<Mutex<Hub>>, id: LinkId, spec: RemoteSpec) -> Result<(), RemoteError> {
    let name = spec.name.clone();
    let backend = |source| RemoteError::Backend {
        remote: name.clone(),
        source,
    };
    let lifecycle = |source| RemoteError::Lifecycle {
        remote: name.clone(),
        source,
    };
    let memory = match spec.backend {
        BackendSpec::Kvm { memory } => memory,
        BackendSpec::Sysfs { .. } => {
            return Err(RemoteError::Image {
                remote: name.clone(),
                why: "the hub runs KVM remotes only".into(),
            });
        }
    };
    let options = KvmOptions {
        memory,
        ..Default::default()
    };
    let mut rp = Remoteproc::new(KvmRemote::new(options).map_err(backend)?);
    rp.load_source(image_source(&spec)?).map_err(lifecycle)?;
    rp.start().map_err(lifecycle)?;
    log::info!("remote {name}: started ({:?})", spec.image);
    bring_up(&hub, id, &mut rp, &name)?;
    let doorbell = rp.doorbell();
    let max_restarts = match spec.recovery {
        Recovery::None => 0,
        Recovery::Restart { max_restarts } => max_restarts,
    };
    loop {
        doorbell.wait(Duration::from_millis(100));
        lock_hub(&hub).service_attached(id);
        for line in String::from_utf8_lossy(&rp.take_console()).lines() {
            log::info!("remote {name} console: {line}");
        }
        match rp.poll() {
            RemoteEvent::Idle => {}
            RemoteEvent::Exited(code) => {
                run_ring_work(
                    &hub,
                    stop(id, format!("the remote exited with code {code}")),
                );
                log::info!("remote {name}: exited with code {code}");
                return Ok(());
            }
            RemoteEvent::Crashed(why) => {
                run_ring_work(&hub, stop(id, "the remote crashed"));
                log::error!("remote {name}: crashed: {why}");
                if rp.restarts() >= max_restarts {
                    log::error!(
                        "remote {name}: left crashed (recovery {:?}, {} restarts)",
                        spec.recovery,
                        rp.restarts()
                    );
                    return Ok(());
                }
                rp.recover().map_err(lifecycle)?;
                log::warn!(
                    "remote {name}: restarted ({} of {max_restarts})",
                    rp.restarts()
                );
                bring_up(&hub, id, &mut rp, &name)?;
            }
        }
    }
}
