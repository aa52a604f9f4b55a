//! What a remoteproc lifecycle needs from the thing that runs a remote: a KVM micro-VM
//! ([`crate::kvm`]), a physical core behind Linux's remoteproc sysfs (`sysfs`), or a
//! test double. OpenAMP's `remoteproc_ops`, in Rust.

use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::transport::RingFormat;

/// How a remote stopped running on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// It asked to stop (exit port or equivalent) with a code.
    Exited(u32),
    /// It faulted, hung past the watchdog, or the backend reports it crashed.
    Crashed(String),
}

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The address range is not memory the remote can use.
    #[error("{len:#x} bytes at device address {da:#x} are not remote memory")]
    NoMemory {
        /// Device address.
        da: u64,
        /// Length.
        len: u64,
    },
    /// No room left to allocate.
    #[error("cannot allocate {len:#x} bytes of remote memory")]
    OutOfMemory {
        /// Bytes asked for.
        len: u64,
    },
    /// The backend does not support this (e.g. a vendor resource it does not know).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A system call or device operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Anything else the backend reports.
    #[error("{0}")]
    Other(String),
}

/// Notifications between the host and a running remote.
pub trait Doorbell: Send + Sync {
    /// Tells the remote that the ring with `notifyid` has news.
    fn ring(&self, notifyid: u32);

    /// Waits up to `timeout` for the remote to notify the host (any ring), or to stop.
    /// Returns `true` if something arrived.
    fn wait(&self, timeout: std::time::Duration) -> bool;

    /// Whether the remote has stopped running (crashed or exited): nothing it owes the host
    /// will come any more. The default never knows.
    fn stopped(&self) -> bool {
        false
    }
}

/// The platform under one remote.
pub trait RemoteBackend {
    /// The remote's memory, addressed by device address (what the ELF and resource table
    /// use). For a VM this is guest-physical memory; for a physical core, what the host maps.
    type Memory: SharedMemory + Clone + Send + Sync + 'static;

    /// The remote's memory.
    fn memory(&self) -> &Self::Memory;

    /// Makes `len` bytes at device address `da` usable (a carveout or devmem with a fixed
    /// address). Returns the physical address the host sees for it.
    fn map(&mut self, da: u64, len: u64) -> Result<u64, BackendError>;

    /// Allocates `len` bytes aligned to `align` for a resource whose address the remote
    /// leaves to the host (FW_RSC_ADDR_ANY). Returns its device address.
    fn alloc(&mut self, len: u64, align: u64) -> Result<u64, BackendError>;

    /// Handles a vendor resource entry (type 128..=512) with its body bytes.
    fn vendor_resource(&mut self, rtype: u32, body: &[u8]) -> Result<(), BackendError> {
        let _ = body;
        Err(BackendError::Unsupported(format!(
            "vendor resource type {rtype}"
        )))
    }

    /// Handles a vendor resource entry whose body (the bytes after its type word, up to the
    /// next entry) lies at device address `da`. What the backend writes into `body` goes back
    /// to remote memory with the rest of the table: how a host tells a remote something at
    /// load time. The default hands the body to [`vendor_resource`](Self::vendor_resource).
    fn vendor_resource_at(
        &mut self,
        rtype: u32,
        da: u64,
        body: &mut [u8],
    ) -> Result<(), BackendError> {
        let _ = da;
        self.vendor_resource(rtype, body)
    }

    /// Starts the remote at `entry`.
    fn start(&mut self, entry: u64) -> Result<(), BackendError>;

    /// The virtqueue format the started remote runs its vdevs' rings in, which the host's
    /// driver must match. Split rings unless the backend agreed on another with the remote at
    /// load or start (the vdev entry's 32-bit feature words cannot carry VIRTIO_F_RING_PACKED).
    fn ring_format(&self) -> RingFormat {
        RingFormat::Split
    }

    /// Stops the remote (it may be started again after a new load).
    fn stop(&mut self) -> Result<(), BackendError>;

    /// The doorbell between host and remote, shared with the rpmsg engines on its vdevs.
    fn doorbell(&self) -> std::sync::Arc<dyn Doorbell>;

    /// Whether the remote stopped on its own since the last call (crash, exit), without
    /// blocking.
    fn poll_exit(&mut self) -> Option<Exit>;

    /// Text the remote printed on its console, if the backend captures one (drained).
    fn take_console(&mut self) -> Vec<u8> {
        Vec::new()
    }
}
