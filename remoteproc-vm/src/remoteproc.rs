//! The lifecycle core: OpenAMP's `remoteproc` over a [`RemoteBackend`].
//!
//! # States
//!
//! | [`RemoteState`] | OpenAMP (`enum remoteproc_state`) | Linux sysfs `state` |
//! | --- | --- | --- |
//! | `Offline` | `RPROC_OFFLINE`, `RPROC_CONFIGURED` (configured, nothing loaded) | `offline` |
//! | `Ready` | `RPROC_READY` (loaded, resources handled, not running) | `offline` (Linux loads and boots in one step) |
//! | `Running` | `RPROC_RUNNING` | `running`, `attached` |
//! | `Stopped` | `RPROC_STOPPED` | `offline` (after `stop`) |
//! | `Crashed` | `RPROC_ERROR` | `crashed` |
//! | `Suspended` | `RPROC_SUSPENDED` | `suspended` (sysfs only) |
//! | `Detached` | - | `detached` (sysfs only: running, not managed) |
//! | `Invalid` | - | `invalid`, `deleted`, unreadable (sysfs only) |
//!
//! # Transitions
//!
//! | operation | allowed in | goes to |
//! | --- | --- | --- |
//! | [`config`](Remoteproc::config) | Offline | Offline |
//! | [`load`](Remoteproc::load), [`load_source`](Remoteproc::load_source) | Offline, Ready, Stopped | Ready |
//! | [`set_rsc_table`](Remoteproc::set_rsc_table) | Ready | Ready |
//! | [`start`](Remoteproc::start) | Ready | Running |
//! | [`create_virtio`](Remoteproc::create_virtio) | Running | Running |
//! | [`stop`](Remoteproc::stop) | Ready, Running, Crashed | Stopped |
//! | [`poll`](Remoteproc::poll) (the remote exits / crashes) | Running | Stopped / Crashed |
//! | [`recover`](Remoteproc::recover) | Crashed | Running (stop, reload, start) |
//! | [`shutdown`](Remoteproc::shutdown) | any (no-op when Offline) | Offline |
//! | [`remove`](Remoteproc::remove) | Offline | (gone; the backend is given back) |
//! | [`mmap`](Remoteproc::mmap), [`poll`](Remoteproc::poll), [`trace`](Remoteproc::trace) | any | unchanged |
//!
//! Anything else is a [`LifecycleError::IllegalTransition`] naming the operation and the
//! state, and changes nothing.
//!
//! # What the backend sees
//!
//! A load calls [`map`](RemoteBackend::map) once per loadable segment (`p_paddr`, `p_memsz`)
//! before writing any byte through [`memory`](RemoteBackend::memory), then handles the
//! resource table (see [`crate::rsc`]: `map` for fixed carveouts and devmem, then `alloc` for
//! everything the host places). A reload first calls [`stop`](RemoteBackend::stop), which
//! must release every allocation (and must work on a backend that is not running); so does
//! [`shutdown`](Remoteproc::shutdown) of a loaded remote.

use crate::backend::{BackendError, Doorbell, Exit, RemoteBackend};
use crate::elf::{self, ElfError, LoadOptions, LoadedImage};
use crate::image::{ImageSource, ImageStore};
use crate::rsc::{self, ResourceSetup, RscError};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vamp_rpmsg::apps::{AppError, Waiter};
use vamp_rpmsg::mem::{MemError, SharedMemory, write_barrier};
use vamp_rpmsg::rpmsg::{Config, Rpmsg};
use vamp_rpmsg::transport::{
    BufferConfig, DriverLayout, DriverTransport, Environment, LinkError, Transport,
};
use vamp_rpmsg::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FAILED, STATUS_FEATURES_OK, STATUS_STARTED,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RPMSG_F_NS,
};
use vamp_rpmsg::wire::Endian;

/// Alignment of a buffer pool the host allocates.
pub const POOL_ALIGN: u64 = 4096;
/// The states an image may be loaded in: offline, ready (the loaded image is replaced) or
/// stopped.
const LOADABLE: [RemoteState; 3] = [
    RemoteState::Offline,
    RemoteState::Ready,
    RemoteState::Stopped,
];

/// Where a remote is in its life. See the [module documentation](self) for the mapping to
/// OpenAMP and Linux.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemoteState {
    /// Nothing loaded (OpenAMP `RPROC_OFFLINE`/`RPROC_CONFIGURED`; sysfs `offline`).
    Offline,
    /// Loaded, resources handled, not running (`RPROC_READY`).
    Ready,
    /// Running (`RPROC_RUNNING`; sysfs `running` or `attached`).
    Running,
    /// Stopped after running (`RPROC_STOPPED`); load again to restart.
    Stopped,
    /// Crashed or hung (`RPROC_ERROR`; sysfs `crashed`).
    Crashed,
    /// Suspended (sysfs `suspended`; never reached by [`Remoteproc`]).
    Suspended,
    /// Running on its own, not managed (sysfs `detached`; never reached by [`Remoteproc`]).
    Detached,
    /// Unknown (sysfs `invalid`, `deleted` or unreadable; never reached by [`Remoteproc`]).
    Invalid,
}

impl fmt::Display for RemoteState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RemoteState::Offline => "offline",
            RemoteState::Ready => "ready",
            RemoteState::Running => "running",
            RemoteState::Stopped => "stopped",
            RemoteState::Crashed => "crashed",
            RemoteState::Suspended => "suspended",
            RemoteState::Detached => "detached",
            RemoteState::Invalid => "invalid",
        })
    }
}

fn hint(op: &str, state: RemoteState) -> &'static str {
    match (op, state) {
        ("start", RemoteState::Offline | RemoteState::Stopped) => " (load an image first)",
        ("start" | "load" | "set_firmware", RemoteState::Running) => " (stop it first)",
        ("load" | "start", RemoteState::Crashed) => " (stop or recover it first)",
        ("stop", RemoteState::Crashed) => " (use recover)",
        ("create_virtio", RemoteState::Ready) => " (start it first)",
        ("create_virtio", _) => " (load and start it first)",
        ("remove", _) => " (shut it down first)",
        _ => "",
    }
}

/// Why a lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The operation is not allowed in the current state; nothing changed.
    #[error("cannot {op} a remote that is {state}{}", hint(op, *state))]
    IllegalTransition {
        /// The operation.
        op: &'static str,
        /// The state it was refused in.
        state: RemoteState,
    },
    /// The image could not be read or loaded.
    #[error("image: {0}")]
    Elf(#[from] ElfError),
    /// The resource table could not be handled.
    #[error("resource table: {0}")]
    Resources(#[from] RscError),
    /// The backend failed.
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    /// The image could not be opened.
    #[error("opening image {what}: {source}")]
    Image {
        /// Which image.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No resource table, or no vdev with that index in it.
    #[error("the loaded image has no vdev {0}")]
    NoVdev(usize),
    /// The vdev is not an rpmsg device with two vrings.
    #[error("vdev {index} is virtio device {id} with {vrings} vrings, not rpmsg (7) with 2")]
    NotRpmsg {
        /// Vdev index.
        index: usize,
        /// Its virtio id.
        id: u32,
        /// Its vring count.
        vrings: usize,
    },
    /// A virtio device already runs on that vdev.
    #[error("vdev {0} already has a virtio device (remove_virtio it first)")]
    VdevBusy(usize),
    /// The buffer pool carveout is too small.
    #[error(
        "vdev {index}: the buffer pool needs {needed:#x} bytes, carveout \"{name}\" has {have:#x}"
    )]
    PoolTooSmall {
        /// Vdev index.
        index: usize,
        /// Carveout name.
        name: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes there.
        have: u64,
    },
    /// The rings or buffers could not be set up.
    #[error("vdev {index}: {source}")]
    Link {
        /// Vdev index.
        index: usize,
        /// Why.
        #[source]
        source: LinkError,
    },
    /// Remote memory could not be accessed.
    #[error("remote memory: {0}")]
    Memory(#[from] MemError),
    /// Recovery needs an image to reload: load with [`Remoteproc::load_source`].
    #[error("no image to reload (load the remote with load_source to make it recoverable)")]
    NoImageSource,
    /// No trace buffer with that index.
    #[error("the remote has no trace buffer {0}")]
    NoTrace(usize),
    /// An address cannot be mapped.
    #[error("mmap: {0}")]
    Mmap(String),
    /// A sysfs or debugfs file could not be used.
    #[error("{what} {}: {source}", path.display())]
    Sysfs {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Settings of a [`Remoteproc`] (OpenAMP's `remoteproc_config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RprocConfig {
    /// Name, for messages and [`ManagedRemote::name`].
    pub name: String,
    /// Bytes copied from the image at a time.
    pub chunk_size: usize,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX when the remote offers it (bit 29).
    pub event_idx: bool,
    /// Byte order of the resource table; `None`: the ELF's.
    pub table_endian: Option<Endian>,
}

impl Default for RprocConfig {
    fn default() -> Self {
        RprocConfig {
            name: "remoteproc".into(),
            chunk_size: elf::DEFAULT_CHUNK,
            event_idx: true,
            table_endian: None,
        }
    }
}

/// What [`Remoteproc::poll`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteEvent {
    /// Nothing new.
    Idle,
    /// The remote stopped on its own with this code; it is now [`RemoteState::Stopped`].
    Exited(u32),
    /// The remote crashed; it is now [`RemoteState::Crashed`].
    Crashed(String),
}

/// A [`Waiter`] for the host's engine on a remote's vdev: waits on the remote's doorbell,
/// hands what the remote wrote to its console to `console`, and fails once the remote stopped
/// (exited or crashed), so that nothing waits out its timeout for a remote that is gone.
pub struct RemoteWaiter<'a, B: RemoteBackend, C: FnMut(&[u8])> {
    /// The remote.
    pub rp: &'a mut Remoteproc<B>,
    /// Where its console output goes.
    pub console: C,
}

impl<B: RemoteBackend, M: SharedMemory, C: FnMut(&[u8])> Waiter<DriverTransport<M, RemoteEnv>>
    for RemoteWaiter<'_, B, C>
{
    fn wait(&mut self, rpmsg: &mut RemoteRpmsg<M>, timeout: Duration) -> Result<(), AppError> {
        rpmsg
            .transport_mut()
            .environment()
            .wait(timeout.as_micros().min(u64::MAX as u128) as u64);
        let console = self.rp.take_console();
        if !console.is_empty() {
            (self.console)(&console);
        }
        match self.rp.poll() {
            RemoteEvent::Idle => Ok(()),
            RemoteEvent::Exited(code) => Err(AppError::Link(format!(
                "the remote exited with code {code}"
            ))),
            RemoteEvent::Crashed(why) => Err(AppError::Link(format!("the remote crashed: {why}"))),
        }
    }
}

impl<B: RemoteBackend, C: FnMut(&[u8])> fmt::Debug for RemoteWaiter<'_, B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteWaiter")
            .field("rp", &self.rp)
            .finish_non_exhaustive()
    }
}

/// A range of remote memory the host mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Device address.
    pub da: u64,
    /// Physical address.
    pub pa: u64,
    /// Length.
    pub len: u64,
}

impl Mapping {
    fn contains_da(&self, da: u64, len: u64) -> bool {
        da >= self.da && da.checked_add(len).is_some_and(|e| e <= self.da + self.len)
    }

    fn contains_pa(&self, pa: u64, len: u64) -> bool {
        pa >= self.pa && pa.checked_add(len).is_some_and(|e| e <= self.pa + self.len)
    }
}

/// The [`Environment`] of an rpmsg device on a remote: kicks ring the backend's
/// [`Doorbell`] with the vring's notify id, waits wait on it.
pub struct RemoteEnv {
    doorbell: Arc<dyn Doorbell>,
    notifyids: [u32; 2],
    epoch: Instant,
    kicks: u64,
}

impl RemoteEnv {
    /// An environment ringing `doorbell` with `notifyids[queue]`.
    pub fn new(doorbell: Arc<dyn Doorbell>, notifyids: [u32; 2]) -> Self {
        RemoteEnv {
            doorbell,
            notifyids,
            epoch: Instant::now(),
            kicks: 0,
        }
    }

    /// Notify ids of vq 0 and vq 1.
    pub fn notifyids(&self) -> [u32; 2] {
        self.notifyids
    }

    /// Kicks sent so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// The doorbell.
    pub fn doorbell(&self) -> &Arc<dyn Doorbell> {
        &self.doorbell
    }
}

impl fmt::Debug for RemoteEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteEnv")
            .field("notifyids", &self.notifyids)
            .field("kicks", &self.kicks)
            .finish_non_exhaustive()
    }
}

impl Environment for RemoteEnv {
    fn notify(&mut self, queue: u16) {
        self.kicks += 1;
        self.doorbell.ring(self.notifyids[usize::from(queue & 1)]);
    }

    fn wait(&mut self, timeout_us: u64) -> bool {
        self.doorbell.wait(Duration::from_micros(timeout_us))
    }

    fn now_us(&mut self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn peer_gone(&mut self) -> bool {
        self.doorbell.stopped()
    }
}

/// The host's rpmsg engine on a remote's vdev (driver role).
pub type RemoteRpmsg<M> = Rpmsg<DriverTransport<M, RemoteEnv>>;

/// A remote managed from here: the common face of [`Remoteproc`] and
/// [`SysfsRemote`](crate::sysfs::SysfsRemote).
pub trait ManagedRemote {
    /// The remote's name.
    fn name(&self) -> String;
    /// Its current state (checking for news first).
    fn state(&mut self) -> RemoteState;
    /// Boots it. Like writing `start` to sysfs, this loads the image first when a
    /// [`Remoteproc`] is offline or stopped and knows its image.
    fn start(&mut self) -> Result<(), LifecycleError>;
    /// Stops it.
    fn stop(&mut self) -> Result<(), LifecycleError>;
    /// The text in its first trace buffer.
    fn trace(&mut self) -> Result<String, LifecycleError>;
}

/// A remote processor: OpenAMP's `struct remoteproc`.
pub struct Remoteproc<B: RemoteBackend> {
    backend: B,
    state: RemoteState,
    config: RprocConfig,
    image: Option<LoadedImage>,
    resources: Option<ResourceSetup>,
    source: Option<ImageSource>,
    mappings: Vec<Mapping>,
    vdev_in_use: Vec<bool>,
    pools: Vec<Option<(u64, u64)>>,
    restarts: u32,
    last_exit: Option<Exit>,
}

impl<B: RemoteBackend> fmt::Debug for Remoteproc<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remoteproc")
            .field("name", &self.config.name)
            .field("state", &self.state)
            .field("entry", &self.image.as_ref().map(|i| i.entry()))
            .field("restarts", &self.restarts)
            .finish_non_exhaustive()
    }
}

/// [`Remoteproc::remove`] refused: the remote is not offline. Holds it, untouched.
pub struct Refused<B: RemoteBackend> {
    /// The remote, as it was.
    pub remoteproc: Remoteproc<B>,
    /// Why.
    pub error: LifecycleError,
}

impl<B: RemoteBackend> fmt::Debug for Refused<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("remoteproc", &self.remoteproc)
            .field("error", &self.error)
            .finish()
    }
}

impl<B: RemoteBackend> Remoteproc<B> {
    /// Takes charge of a backend (OpenAMP's `remoteproc_init`): [`RemoteState::Offline`].
    pub fn new(backend: B) -> Self {
        Remoteproc {
            backend,
            state: RemoteState::Offline,
            config: RprocConfig::default(),
            image: None,
            resources: None,
            source: None,
            mappings: Vec::new(),
            vdev_in_use: Vec::new(),
            pools: Vec::new(),
            restarts: 0,
            last_exit: None,
        }
    }

    fn check(&self, op: &'static str, allowed: &[RemoteState]) -> Result<(), LifecycleError> {
        if allowed.contains(&self.state) {
            Ok(())
        } else {
            Err(LifecycleError::IllegalTransition {
                op,
                state: self.state,
            })
        }
    }

    /// Changes the settings (OpenAMP's `remoteproc_config`); only while offline.
    pub fn config(&mut self, config: RprocConfig) -> Result<(), LifecycleError> {
        self.check("config", &[RemoteState::Offline])?;
        self.config = config;
        Ok(())
    }

    /// The settings.
    pub fn settings(&self) -> &RprocConfig {
        &self.config
    }

    /// The current state (without checking the backend: see [`poll`](Self::poll)).
    pub fn state(&self) -> RemoteState {
        self.state
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably. Driving its lifecycle directly bypasses the state machine.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The remote's memory.
    pub fn memory(&self) -> &B::Memory {
        self.backend.memory()
    }

    /// The loaded image, if any.
    pub fn image(&self) -> Option<&LoadedImage> {
        self.image.as_ref()
    }

    /// The boot address of the loaded image.
    pub fn entry(&self) -> Option<u64> {
        self.image.as_ref().map(|i| i.entry())
    }

    /// The handled resource table, if the image has one.
    pub fn resources(&self) -> Option<&ResourceSetup> {
        self.resources.as_ref()
    }

    /// The image source [`recover`](Self::recover) reloads, if any.
    pub fn source(&self) -> Option<&ImageSource> {
        self.source.as_ref()
    }

    /// Ranges mapped so far (segments, fixed carveouts, [`mmap`](Self::mmap)).
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// Successful recoveries so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// How the remote last stopped on its own.
    pub fn last_exit(&self) -> Option<&Exit> {
        self.last_exit.as_ref()
    }

    /// Waits up to `timeout` for a running remote to stop on its own, and says how it
    /// stopped, also when an earlier [`poll`](Self::poll) (a waiter's, say) already took the
    /// event: then it comes from [`last_exit`](Self::last_exit). [`RemoteEvent::Idle`]: it is
    /// still running.
    pub fn wait_stopped(&mut self, timeout: Duration) -> RemoteEvent {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state != RemoteState::Running {
                return match &self.last_exit {
                    Some(Exit::Exited(code)) => RemoteEvent::Exited(*code),
                    Some(Exit::Crashed(why)) => RemoteEvent::Crashed(why.clone()),
                    None => RemoteEvent::Idle,
                };
            }
            let event = self.poll();
            if event != RemoteEvent::Idle || Instant::now() >= deadline {
                return event;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The doorbell between host and remote.
    pub fn doorbell(&self) -> Arc<dyn Doorbell> {
        self.backend.doorbell()
    }

    /// Console output the backend captured since the last call.
    pub fn take_console(&mut self) -> Vec<u8> {
        self.backend.take_console()
    }

    fn release(&mut self) {
        self.image = None;
        self.resources = None;
        self.mappings.clear();
        self.vdev_in_use.clear();
        self.pools.clear();
    }

    /// Loads an image (OpenAMP's `remoteproc_load`): copies its segments into remote memory,
    /// handles its resource table and writes the updated table back. Allowed when offline,
    /// ready (replacing the loaded image) or stopped. The remote cannot be
    /// [`recover`](Self::recover)ed: use [`load_source`](Self::load_source) for that.
    ///
    /// On failure the remote is offline.
    pub fn load<S: ImageStore + ?Sized>(
        &mut self,
        store: &mut S,
    ) -> Result<&LoadedImage, LifecycleError> {
        self.check("load", &LOADABLE)?;
        self.source = None;
        self.load_inner(store)
    }

    /// Loads the image `source` names and remembers it, so that [`recover`](Self::recover)
    /// (and [`ManagedRemote::start`]) can load it again.
    pub fn load_source(&mut self, source: ImageSource) -> Result<&LoadedImage, LifecycleError> {
        self.check("load", &LOADABLE)?;
        let mut store = source.open().map_err(|e| LifecycleError::Image {
            what: source.describe(),
            source: e,
        })?;
        self.source = Some(source);
        self.load_inner(&mut *store)
    }

    fn load_inner<S: ImageStore + ?Sized>(
        &mut self,
        store: &mut S,
    ) -> Result<&LoadedImage, LifecycleError> {
        if self.state == RemoteState::Ready {
            // Release what the previous load allocated.
            self.backend.stop()?;
        }
        self.release();
        self.state = RemoteState::Offline;
        match self.load_and_handle(store) {
            Ok(()) => {
                self.state = RemoteState::Ready;
                Ok(self.image.as_ref().expect("set by load_and_handle"))
            }
            Err(e) => {
                if let Err(stop) = self.backend.stop() {
                    crate::ratelog::warn_limited!(
                        "{}: releasing after a failed load: {stop}",
                        self.config.name
                    );
                }
                self.release();
                Err(e)
            }
        }
    }

    fn load_and_handle<S: ImageStore + ?Sized>(
        &mut self,
        store: &mut S,
    ) -> Result<(), LifecycleError> {
        let mem = self.backend.memory().clone();
        let options = LoadOptions {
            chunk_size: self.config.chunk_size,
        };
        let backend = &mut self.backend;
        let mappings = &mut self.mappings;
        let loaded = elf::load_with(store, &mem, &options, |seg| {
            let pa = backend
                .map(seg.paddr, seg.memsz)
                .map_err(|e| format!("the backend refused: {e}"))?;
            mappings.push(Mapping {
                da: seg.paddr,
                pa,
                len: seg.memsz,
            });
            Ok(())
        })?;
        if let Some(t) = loaded.resource_table() {
            let endian = self.config.table_endian.unwrap_or(loaded.info.endian);
            let setup = rsc::handle_resources(&mut self.backend, t.addr, t.size, endian)?;
            self.adopt(setup);
        }
        self.image = Some(loaded);
        Ok(())
    }

    fn adopt(&mut self, setup: ResourceSetup) {
        for c in setup.carveouts.iter().chain(&setup.devmems) {
            if c.mapped {
                self.mappings.push(Mapping {
                    da: c.da,
                    pa: c.pa,
                    len: c.len,
                });
            }
        }
        self.vdev_in_use = vec![false; setup.vdevs.len()];
        self.pools = vec![None; setup.vdevs.len()];
        self.resources = Some(setup);
    }

    /// Uses the resource table of `len` bytes at device address `da` (OpenAMP's
    /// `remoteproc_set_rsc_table`): for an image whose table is not in a `.resource_table`
    /// section. Handles it like a loaded table (replacing the previous one). Only when ready.
    pub fn set_rsc_table(&mut self, da: u64, len: u64) -> Result<&ResourceSetup, LifecycleError> {
        self.check("set_rsc_table", &[RemoteState::Ready])?;
        let endian = self
            .config
            .table_endian
            .or(self.image.as_ref().map(|i| i.info.endian))
            .unwrap_or(Endian::NATIVE);
        let setup = rsc::handle_resources(&mut self.backend, da, len, endian)?;
        self.adopt(setup);
        Ok(self.resources.as_ref().expect("just set"))
    }

    /// Makes `len` bytes usable and translates between device and physical addresses
    /// (OpenAMP's `remoteproc_mmap`): a range already mapped is translated, else the backend
    /// maps the device address. Allowed in every state.
    pub fn mmap(
        &mut self,
        pa: Option<u64>,
        da: Option<u64>,
        len: u64,
    ) -> Result<Mapping, LifecycleError> {
        if let Some(m) = self.mappings.iter().find(|m| match (da, pa) {
            (Some(da), _) => m.contains_da(da, len),
            (None, Some(pa)) => m.contains_pa(pa, len),
            (None, None) => false,
        }) {
            return Ok(match da {
                Some(da) => Mapping {
                    da,
                    pa: m.pa + (da - m.da),
                    len,
                },
                None => {
                    let pa = pa.unwrap_or(m.pa);
                    Mapping {
                        da: m.da + (pa - m.pa),
                        pa,
                        len,
                    }
                }
            });
        }
        let Some(da) = da else {
            return Err(LifecycleError::Mmap(match pa {
                Some(pa) => format!("{pa:#x} is not mapped and the backend maps by device address"),
                None => "neither a physical nor a device address given".into(),
            }));
        };
        let pa = self.backend.map(da, len)?;
        let m = Mapping { da, pa, len };
        self.mappings.push(m);
        Ok(m)
    }

    /// Starts the remote at the image's entry (OpenAMP's `remoteproc_start`); only when ready.
    pub fn start(&mut self) -> Result<(), LifecycleError> {
        self.check("start", &[RemoteState::Ready])?;
        let entry = self.entry().unwrap_or(0);
        self.backend.start(entry)?;
        self.last_exit = None;
        self.state = RemoteState::Running;
        Ok(())
    }

    /// Stops the remote (OpenAMP's `remoteproc_stop`): from running, crashed or ready. Its
    /// virtio devices are gone; load again to restart it.
    pub fn stop(&mut self) -> Result<(), LifecycleError> {
        self.check(
            "stop",
            &[
                RemoteState::Ready,
                RemoteState::Running,
                RemoteState::Crashed,
            ],
        )?;
        self.backend.stop()?;
        self.after_stop();
        Ok(())
    }

    fn after_stop(&mut self) {
        self.state = RemoteState::Stopped;
        self.vdev_in_use.iter_mut().for_each(|u| *u = false);
        // The backend released its allocations.
        self.pools.iter_mut().for_each(|p| *p = None);
    }

    /// Stops the remote if needed and releases everything (OpenAMP's `remoteproc_shutdown`):
    /// back to offline. Does nothing when already offline.
    pub fn shutdown(&mut self) -> Result<(), LifecycleError> {
        if self.state == RemoteState::Offline {
            return Ok(());
        }
        if self.state != RemoteState::Stopped {
            self.backend.stop()?;
        }
        self.release();
        self.source = None;
        self.state = RemoteState::Offline;
        Ok(())
    }

    /// Gives the backend back (OpenAMP's `remoteproc_remove`); only when offline. Otherwise
    /// the remote comes back untouched in the error.
    pub fn remove(self) -> Result<B, Box<Refused<B>>> {
        if self.state != RemoteState::Offline {
            let error = LifecycleError::IllegalTransition {
                op: "remove",
                state: self.state,
            };
            return Err(Box::new(Refused {
                remoteproc: self,
                error,
            }));
        }
        Ok(self.backend)
    }

    /// Brings up the rpmsg device on vdev `vdev` in the driver role (OpenAMP's
    /// `remoteproc_create_virtio` + `rpmsg_init_vdev` on the host): resets the vdev status,
    /// sets ACKNOWLEDGE | DRIVER, writes gfeatures = dfeatures & (F_NS | EVENT_IDX if
    /// configured), sets FEATURES_OK, lays the buffer pool out (the carveout named
    /// `vdev<N>buffer` if the table has one, else `pool_bytes` allocated from the backend),
    /// posts the receive buffers on vq 0 (in the rings' format the backend agreed with the remote,
    /// [`RemoteBackend::ring_format`]), sets DRIVER_OK and kicks. Only when running.
    pub fn create_virtio(
        &mut self,
        vdev: usize,
        buffers: BufferConfig,
    ) -> Result<RemoteRpmsg<B::Memory>, LifecycleError> {
        self.create_virtio_with(vdev, buffers, RemoteEnv::new)
    }

    /// [`create_virtio`](Self::create_virtio) with an environment of the caller's: `make_env`
    /// gets the backend's doorbell and the notify ids of vq 0 and vq 1 (the hub, for one,
    /// routes the notifications through its own environment).
    pub fn create_virtio_with<E: Environment>(
        &mut self,
        vdev: usize,
        buffers: BufferConfig,
        make_env: impl FnOnce(Arc<dyn Doorbell>, [u32; 2]) -> E,
    ) -> Result<Rpmsg<DriverTransport<B::Memory, E>>, LifecycleError> {
        self.check("create_virtio", &[RemoteState::Running])?;
        let res = self
            .resources
            .as_ref()
            .ok_or(LifecycleError::NoVdev(vdev))?;
        let v = res.vdev(vdev).ok_or(LifecycleError::NoVdev(vdev))?.clone();
        if !v.is_rpmsg() || v.vrings.len() < 2 {
            return Err(LifecycleError::NotRpmsg {
                index: vdev,
                id: v.id,
                vrings: v.vrings.len(),
            });
        }
        if self.vdev_in_use.get(vdev).copied().unwrap_or(false) {
            return Err(LifecycleError::VdevBusy(vdev));
        }
        let table_endian = res.endian;
        let pool_name = format!("vdev{vdev}buffer");
        let pool_carveout = res.carveout_named(&pool_name).map(|c| (c.da, c.len));
        let link = |source| LifecycleError::Link {
            index: vdev,
            source,
        };
        let ring = |i: usize| v.vrings[i].layout().map_err(|e| link(LinkError::Vring(e)));
        let mut layout = DriverLayout {
            rx_ring: ring(0)?,
            tx_ring: ring(1)?,
            pool_addr: 0,
            pool_len: 0,
            buffers,
        };
        let needed = layout.pool_bytes();
        let (pool_addr, pool_len) = match pool_carveout {
            Some((da, len)) if len >= needed => (da, len),
            Some((_, len)) => {
                return Err(LifecycleError::PoolTooSmall {
                    index: vdev,
                    name: pool_name,
                    needed,
                    have: len,
                });
            }
            None => match self.pools.get(vdev).copied().flatten() {
                Some((addr, len)) if len >= needed => (addr, len),
                _ => {
                    let addr = self.backend.alloc(needed, POOL_ALIGN)?;
                    if let Some(p) = self.pools.get_mut(vdev) {
                        *p = Some((addr, needed));
                    }
                    (addr, needed)
                }
            },
        };
        layout.pool_addr = pool_addr;
        layout.pool_len = pool_len;

        let mem = self.backend.memory().clone();
        let set_status = |s: u8| -> Result<(), LifecycleError> {
            write_barrier();
            mem.write(v.status_addr(), &[s])?;
            Ok(())
        };
        set_status(0)?;
        set_status(STATUS_ACKNOWLEDGE)?;
        set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)?;
        let mut wanted = VIRTIO_RPMSG_F_NS;
        if self.config.event_idx {
            wanted |= VIRTIO_RING_F_EVENT_IDX;
        }
        // A vdev entry carries the low 32 feature bits.
        let features = u64::from(v.dfeatures) & wanted;
        mem.write(v.gfeatures_addr(), &table_endian.u32_bytes(features as u32))?;
        set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)?;
        let env = make_env(
            self.backend.doorbell(),
            [v.vrings[0].notifyid, v.vrings[1].notifyid],
        );
        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
        let format = self.backend.ring_format();
        let transport = match DriverTransport::with_format(
            mem.clone(),
            env,
            layout,
            Endian::NATIVE,
            event_idx,
            format,
        ) {
            Ok(t) => t,
            Err(e) => {
                let _ = set_status(STATUS_FAILED);
                return Err(link(e));
            }
        };
        set_status(STATUS_STARTED)?;
        let config = Config {
            name_service: features & VIRTIO_RPMSG_F_NS != 0,
            ..Config::default()
        };
        let mut rpmsg = Rpmsg::new(transport, config);
        // Tell the remote its receive buffers are posted.
        rpmsg.transport_mut().flush().map_err(link)?;
        if let Some(u) = self.vdev_in_use.get_mut(vdev) {
            *u = true;
        }
        Ok(rpmsg)
    }

    /// Frees vdev `vdev` for a new [`create_virtio`](Self::create_virtio) (OpenAMP's
    /// `remoteproc_remove_virtio`); the engine from the previous one must be dropped.
    pub fn remove_virtio(&mut self, vdev: usize) -> Result<(), LifecycleError> {
        let u = self
            .vdev_in_use
            .get_mut(vdev)
            .ok_or(LifecycleError::NoVdev(vdev))?;
        *u = false;
        Ok(())
    }

    /// Checks whether a running remote stopped on its own ([`RemoteBackend::poll_exit`]).
    /// An exit makes it [`Stopped`](RemoteState::Stopped) (the backend is stopped), a crash
    /// [`Crashed`](RemoteState::Crashed) (left for [`stop`](Self::stop) or
    /// [`recover`](Self::recover), so its memory can still be read). Never blocks.
    pub fn poll(&mut self) -> RemoteEvent {
        if self.state != RemoteState::Running {
            return RemoteEvent::Idle;
        }
        match self.backend.poll_exit() {
            None => RemoteEvent::Idle,
            Some(Exit::Exited(code)) => {
                if let Err(e) = self.backend.stop() {
                    crate::ratelog::warn_limited!(
                        "{}: stopping after exit {code}: {e}",
                        self.config.name
                    );
                }
                self.after_stop();
                self.last_exit = Some(Exit::Exited(code));
                RemoteEvent::Exited(code)
            }
            Some(Exit::Crashed(why)) => {
                self.state = RemoteState::Crashed;
                self.last_exit = Some(Exit::Crashed(why.clone()));
                RemoteEvent::Crashed(why)
            }
        }
    }

    /// Restarts a crashed remote: stop, reload the image it was loaded from
    /// ([`load_source`](Self::load_source)), start. Whether to recover is the caller's
    /// policy. Its virtio devices must be created again.
    pub fn recover(&mut self) -> Result<(), LifecycleError> {
        self.check("recover", &[RemoteState::Crashed])?;
        let source = self.source.clone().ok_or(LifecycleError::NoImageSource)?;
        self.stop()?;
        self.load_source(source)?;
        self.start()?;
        self.restarts += 1;
        Ok(())
    }

    /// The text in trace buffer `n`, up to its first NUL.
    pub fn trace(&self, n: usize) -> Result<String, LifecycleError> {
        let t = self
            .resources
            .as_ref()
            .and_then(|r| r.traces.get(n))
            .ok_or(LifecycleError::NoTrace(n))?;
        Ok(t.read_trace(self.backend.memory())?)
    }
}

impl<B: RemoteBackend> ManagedRemote for Remoteproc<B> {
    fn name(&self) -> String {
        self.config.name.clone()
    }

    fn state(&mut self) -> RemoteState {
        self.poll();
        self.state
    }

    fn start(&mut self) -> Result<(), LifecycleError> {
        if matches!(self.state, RemoteState::Offline | RemoteState::Stopped)
            && let Some(source) = self.source.clone()
        {
            self.load_source(source)?;
        }
        Remoteproc::start(self)
    }

    fn stop(&mut self) -> Result<(), LifecycleError> {
        Remoteproc::stop(self)
    }

    fn trace(&mut self) -> Result<String, LifecycleError> {
        Remoteproc::trace(self, 0)
    }
}
