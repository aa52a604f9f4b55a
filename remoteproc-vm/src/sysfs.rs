//! Physical cores behind Linux's remoteproc sysfs, as dom0 drives the ZynqMP R5s.
//!
//! The kernel does the loading, resource handling and virtio itself; from user space a core
//! is a directory (`/sys/class/remoteproc/remoteprocN`). What it does, as Linux 6.12 does it
//! (seen in a QEMU guest against a test core: tests/provision/remote-core-smoke.sh):
//!
//! - `firmware`: the file name the next start loads, looked up in the kernel's firmware
//!   search path (`/lib/firmware`, its `updates/` and per-release directories); a name may
//!   hold subdirectories. Refused with `EBUSY` unless the core is offline, `EINVAL` if empty.
//! - `state`: reads `offline`, `suspended`, `running`, `crashed`, `attached`, `detached` or
//!   `invalid` (older kernels also had `deleted`). Writing `start` boots an offline core (or
//!   attaches a detached one); a missing firmware file fails it with `ENOENT`. The kernel does
//!   NOT refuse `start` on a core that is already up (running, crashed, suspended): it counts
//!   another user and succeeds without doing anything, and the next `stop` then only drops
//!   that count, leaving the core running. So [`SysfsRemote::start`] refuses those states
//!   itself. `stop` shuts down a running, attached or crashed core (a crashed one without
//!   recovering it) and is refused with `EINVAL` otherwise.
//! - `recovery` (sysfs since Linux 5.13, and in debugfs): reads `enabled` or `disabled`;
//!   writing `enabled`/`disabled` sets what a crash does, `recover` restarts a crashed core
//!   (and does nothing, successfully, on one that is not crashed). With recovery enabled a
//!   crash is followed at once by a stop and a reboot from the same firmware: the state reads
//!   `crashed` only for that moment. With it disabled the core stays `crashed`.
//! - `name`: the core's name.
//! - debugfs (`/sys/kernel/debug/remoteproc/remoteprocN`): `trace0`, `trace1`... (the
//!   remote's trace buffers, read up to the first NUL; present only while the core is up)
//!   and `crash` (write a crash type, e.g. `1` for a watchdog, to report a crash: how
//!   recovery is tested without a faulting core).
//!
//! The rpmsg side then goes through the kernel's rpmsg char devices: see
//! [`find_rpmsg_devices`].
//!
//! Every path is configurable, so tests run against a fake tree in a temporary directory.

pub use crate::remoteproc::{LifecycleError, ManagedRemote, RemoteState};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use vamp_rpmsg::wire::ADDR_ANY;

/// Where Linux lists remoteproc devices.
pub const DEFAULT_CLASS_DIR: &str = "/sys/class/remoteproc";
/// Where the kernel looks for firmware.
pub const DEFAULT_FIRMWARE_DIR: &str = "/lib/firmware";
/// remoteproc's debugfs directory.
pub const DEFAULT_DEBUGFS_DIR: &str = "/sys/kernel/debug/remoteproc";
/// The sysfs mount.
pub const DEFAULT_SYSFS_ROOT: &str = "/sys";
/// Device nodes.
pub const DEFAULT_DEV_DIR: &str = "/dev";

const EBUSY: i32 = 16;
const EINVAL: i32 = 22;

/// Maps a sysfs `state` string to a [`RemoteState`].
pub fn state_from_sysfs(s: &str) -> RemoteState {
    match s.trim() {
        "offline" => RemoteState::Offline,
        "suspended" => RemoteState::Suspended,
        "running" | "attached" => RemoteState::Running,
        "crashed" => RemoteState::Crashed,
        "detached" => RemoteState::Detached,
        _ => RemoteState::Invalid,
    }
}

/// A core managed through Linux's remoteproc sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsRemote {
    root: PathBuf,
    firmware_dir: PathBuf,
    debugfs: PathBuf,
    sysfs_root: PathBuf,
    dev_dir: PathBuf,
}

impl SysfsRemote {
    /// `remoteproc<index>` at the default paths.
    pub fn new(index: u32) -> Self {
        Self::at(Path::new(DEFAULT_CLASS_DIR).join(format!("remoteproc{index}")))
    }

    /// The core whose sysfs directory is `root`; its debugfs directory is
    /// `/sys/kernel/debug/remoteproc/<root's last component>`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let debugfs = Path::new(DEFAULT_DEBUGFS_DIR).join(root.file_name().unwrap_or_default());
        SysfsRemote {
            root,
            firmware_dir: DEFAULT_FIRMWARE_DIR.into(),
            debugfs,
            sysfs_root: DEFAULT_SYSFS_ROOT.into(),
            dev_dir: DEFAULT_DEV_DIR.into(),
        }
    }

    /// Uses another firmware directory.
    pub fn with_firmware_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.firmware_dir = dir.into();
        self
    }

    /// Uses another debugfs directory (of this core).
    pub fn with_debugfs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.debugfs = dir.into();
        self
    }

    /// Uses another sysfs mount (for [`rpmsg_devices`](Self::rpmsg_devices)).
    pub fn with_sysfs_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.sysfs_root = dir.into();
        self
    }

    /// Uses another device directory (for [`rpmsg_devices`](Self::rpmsg_devices)).
    pub fn with_dev_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dev_dir = dir.into();
        self
    }

    /// The sysfs directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The firmware directory.
    pub fn firmware_dir(&self) -> &Path {
        &self.firmware_dir
    }

    /// The debugfs directory.
    pub fn debugfs(&self) -> &Path {
        &self.debugfs
    }

    fn sysfs_error(what: &'static str, path: PathBuf) -> impl FnOnce(io::Error) -> LifecycleError {
        move |source| LifecycleError::Sysfs { what, path, source }
    }

    fn read_file(what: &'static str, path: PathBuf) -> Result<String, LifecycleError> {
        read_attribute(&path).map_err(Self::sysfs_error(what, path))
    }

    fn attr(&self, name: &str) -> Result<String, LifecycleError> {
        Ok(Self::read_file("read", self.root.join(name))?
            .trim_end()
            .to_string())
    }

    /// Writes `value` to attribute `name`; the kernel's refusals (`EBUSY`, `EINVAL`) become
    /// [`LifecycleError::IllegalTransition`]s for `op`.
    fn write_attr(&self, op: &'static str, name: &str, value: &str) -> Result<(), LifecycleError> {
        let path = self.root.join(name);
        match fs::write(&path, value) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(EBUSY | EINVAL)) => {
                Err(LifecycleError::IllegalTransition {
                    op,
                    state: SysfsRemote::state(self).unwrap_or(RemoteState::Invalid),
                })
            }
            Err(e) => Err(Self::sysfs_error("write", path)(e)),
        }
    }

    /// The `state` attribute as the kernel wrote it.
    pub fn raw_state(&self) -> Result<String, LifecycleError> {
        self.attr("state")
    }

    /// The state (see [`state_from_sysfs`]).
    pub fn state(&self) -> Result<RemoteState, LifecycleError> {
        Ok(state_from_sysfs(&self.raw_state()?))
    }

    /// The `name` attribute (Linux's name of the core, e.g. `r5f_0`).
    pub fn name(&self) -> Result<String, LifecycleError> {
        self.attr("name")
    }

    /// The firmware file name the next start loads.
    pub fn firmware(&self) -> Result<String, LifecycleError> {
        self.attr("firmware")
    }

    /// Installs the ELF at `path` as the core's firmware and writes its name to `firmware`.
    /// A file already inside the firmware directory is used where it is, by its path relative
    /// to that directory (the kernel takes subdirectories); any other is copied there under
    /// its file name first. Only while offline, as the kernel allows. Returns the installed
    /// path.
    pub fn set_firmware(&mut self, path: &Path) -> Result<PathBuf, LifecycleError> {
        let state = SysfsRemote::state(self)?;
        if state != RemoteState::Offline {
            return Err(LifecycleError::IllegalTransition {
                op: "set_firmware",
                state,
            });
        }
        let unusable = |why: &str| LifecycleError::Sysfs {
            what: "use as firmware",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, why.to_string()),
        };
        let source =
            fs::canonicalize(path).map_err(Self::sysfs_error("open firmware", path.into()))?;
        let inside = fs::canonicalize(&self.firmware_dir)
            .ok()
            .and_then(|dir| source.strip_prefix(dir).ok().map(Path::to_path_buf));
        let (name, dest) = match inside {
            Some(relative) => (relative.clone(), self.firmware_dir.join(relative)),
            None => {
                let file_name = path.file_name().ok_or_else(|| unusable("no file name"))?;
                fs::create_dir_all(&self.firmware_dir)
                    .map_err(Self::sysfs_error("create", self.firmware_dir.clone()))?;
                let dest = self.firmware_dir.join(file_name);
                // Copy under a temporary name, then rename: the kernel never sees half a file.
                let tmp = self.firmware_dir.join(format!(
                    ".{}.vamp-{}",
                    file_name.to_string_lossy(),
                    std::process::id()
                ));
                fs::copy(path, &tmp).map_err(Self::sysfs_error("copy firmware to", tmp.clone()))?;
                if let Err(e) = fs::rename(&tmp, &dest) {
                    let _ = fs::remove_file(&tmp);
                    return Err(Self::sysfs_error("install firmware as", dest)(e));
                }
                (PathBuf::from(file_name), dest)
            }
        };
        // The kernel ends the name at the first newline and refuses `..` components.
        let name = name
            .to_str()
            .filter(|n| !n.is_empty() && !n.contains('\n'))
            .ok_or_else(|| unusable("the file name is not one line of UTF-8"))?
            .to_string();
        self.write_attr("set_firmware", "firmware", &name)?;
        Ok(dest)
    }

    /// Boots an offline core, or attaches a detached one (writes `start` to `state`).
    /// Refused in every other state, although the kernel would take it (see the module
    /// docs: it would only count another user, and the next stop would do nothing).
    pub fn start(&mut self) -> Result<(), LifecycleError> {
        let state = SysfsRemote::state(self)?;
        if !matches!(state, RemoteState::Offline | RemoteState::Detached) {
            return Err(LifecycleError::IllegalTransition { op: "start", state });
        }
        self.write_attr("start", "state", "start")
    }

    /// Shuts the core down (writes `stop` to `state`): a running one, or a crashed one the
    /// kernel did not recover (it is then offline, not restarted). Refused otherwise, as the
    /// kernel refuses it (`EINVAL`).
    pub fn stop(&mut self) -> Result<(), LifecycleError> {
        let state = SysfsRemote::state(self)?;
        if !matches!(state, RemoteState::Running | RemoteState::Crashed) {
            return Err(LifecycleError::IllegalTransition { op: "stop", state });
        }
        self.write_attr("stop", "state", "stop")
    }

    /// The `recovery` file: in sysfs where the kernel has it (5.13 on), else in debugfs.
    fn recovery_path(&self) -> PathBuf {
        let in_sysfs = self.root.join("recovery");
        if in_sysfs.exists() {
            in_sysfs
        } else {
            self.debugfs.join("recovery")
        }
    }

    /// Whether the kernel recovers the core by itself after a crash (`recovery` reads
    /// `enabled`).
    pub fn recovery_enabled(&self) -> Result<bool, LifecycleError> {
        let path = self.recovery_path();
        let text = Self::read_file("read", path.clone())?;
        match text.trim() {
            "enabled" => Ok(true),
            "disabled" => Ok(false),
            other => Err(LifecycleError::Sysfs {
                what: "read",
                path,
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{other:?} is neither \"enabled\" nor \"disabled\""),
                ),
            }),
        }
    }

    /// Sets whether the kernel recovers the core by itself after a crash (writes `enabled`
    /// or `disabled` to `recovery`). Enabling it on a crashed core recovers it at once.
    pub fn set_recovery(&mut self, enabled: bool) -> Result<(), LifecycleError> {
        let path = self.recovery_path();
        let value = if enabled { "enabled" } else { "disabled" };
        fs::write(&path, value).map_err(Self::sysfs_error("write", path))
    }

    /// Recovers a crashed core (writes `recover` to `recovery`): the kernel stops it, loads
    /// the firmware again and boots it. Refused unless crashed (the kernel would do nothing).
    pub fn recover(&mut self) -> Result<(), LifecycleError> {
        let state = SysfsRemote::state(self)?;
        if state != RemoteState::Crashed {
            return Err(LifecycleError::IllegalTransition {
                op: "recover",
                state,
            });
        }
        let path = self.recovery_path();
        fs::write(&path, "recover").map_err(Self::sysfs_error("write", path))
    }

    /// Reports a crash of type `kind` (debugfs `crash`; the kernel's types: 0 MMU fault,
    /// 1 watchdog, 2 fatal error), as the core's driver would: the kernel marks it crashed
    /// and, with recovery enabled, restarts it. Only while it runs (the kernel ignores a
    /// crash of an offline core).
    pub fn report_crash(&mut self, kind: u32) -> Result<(), LifecycleError> {
        let state = SysfsRemote::state(self)?;
        if state != RemoteState::Running {
            return Err(LifecycleError::IllegalTransition { op: "crash", state });
        }
        let path = self.debugfs.join("crash");
        fs::write(&path, kind.to_string()).map_err(Self::sysfs_error("write", path))
    }

    /// Trace buffer `n` (debugfs `trace<n>`), up to its first NUL. The kernel has the file
    /// only while the core is up: on an offline core this says so rather than "no such file".
    pub fn trace(&self, n: u32) -> Result<String, LifecycleError> {
        // Bounded: the buffer's size is the firmware's word.
        let path = self.debugfs.join(format!("trace{n}"));
        let mut bytes = Vec::new();
        let read = fs::File::open(&path).and_then(|f| {
            let mut bounded = io::Read::take(f, crate::console::MAX_TRACE_READ as u64);
            io::Read::read_to_end(&mut bounded, &mut bytes)
        });
        if let Err(e) = read {
            if e.kind() == io::ErrorKind::NotFound {
                let state = SysfsRemote::state(self)?;
                if !matches!(state, RemoteState::Running | RemoteState::Crashed) {
                    return Err(LifecycleError::IllegalTransition {
                        op: "read the trace of",
                        state,
                    });
                }
            }
            return Err(Self::sysfs_error("read", path)(e));
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(match text.find('\0') {
            Some(nul) => text[..nul].to_string(),
            None => text,
        })
    }

    /// The kernel's rpmsg char devices on this core (see [`find_rpmsg_devices`]).
    pub fn rpmsg_devices(&self) -> Result<Vec<RpmsgDevice>, LifecycleError> {
        find_rpmsg_devices(&self.sysfs_root, &self.root, &self.dev_dir).map_err(|e| {
            LifecycleError::Sysfs {
                what: "list rpmsg devices under",
                path: self.sysfs_root.join("class/rpmsg"),
                source: e,
            }
        })
    }
}

impl ManagedRemote for SysfsRemote {
    fn name(&self) -> String {
        SysfsRemote::name(self).unwrap_or_else(|_| {
            self.root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
    }

    fn state(&mut self) -> RemoteState {
        SysfsRemote::state(self).unwrap_or(RemoteState::Invalid)
    }

    fn start(&mut self) -> Result<(), LifecycleError> {
        SysfsRemote::start(self)
    }

    fn stop(&mut self) -> Result<(), LifecycleError> {
        SysfsRemote::stop(self)
    }

    fn trace(&mut self) -> Result<String, LifecycleError> {
        SysfsRemote::trace(self, 0)
    }
}

/// Which kind of rpmsg char device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RpmsgDeviceKind {
    /// `/dev/rpmsg_ctrlN`: creates endpoint devices (`RPMSG_CREATE_EPT_IOCTL`).
    Control,
    /// `/dev/rpmsgN`: one endpoint; write sends, read receives.
    Endpoint,
}

/// One of the kernel's rpmsg char devices.
///
/// Where Linux 6.12 puts them (seen in the QEMU guest): the control device under the
/// `rpmsg_ctrl` channel, `<virtio>/<virtio>.rpmsg_ctrl.0.0/rpmsg/rpmsg_ctrl0`; an endpoint
/// made through it under the control device, `.../rpmsg/rpmsg_ctrl0/rpmsg0`, with its own
/// `name`, `src` and `dst` (decimal, `-1` for any); an endpoint on an `rpmsg-raw` channel
/// directly under that channel's `rpmsg/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpmsgDevice {
    /// Name under `/sys/class/rpmsg` (`rpmsg0`, `rpmsg_ctrl0`).
    pub name: String,
    /// Its device node.
    pub dev_path: PathBuf,
    /// Control or endpoint device.
    pub kind: RpmsgDeviceKind,
    /// The name of the rpmsg channel (bus device) it sits on (`rpmsg_ctrl`, `rpmsg-raw`...).
    pub channel: Option<String>,
    /// An endpoint's own name (what `RPMSG_CREATE_EPT_IOCTL` was given).
    pub endpoint: Option<String>,
    /// Local address: the endpoint's own, else the channel's.
    pub src: Option<u32>,
    /// Remote address: the endpoint's own, else the channel's.
    pub dst: Option<u32>,
}

/// Reads an address as sysfs prints it: `0x` hex (channels), decimal, or `-1` for
/// [`ADDR_ANY`] (endpoint devices print `%d`).
fn parse_addr(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s
            .parse::<u32>()
            .ok()
            .or_else(|| s.parse::<i32>().ok().map(|v| v as u32)),
    }
}

fn trailing_number(name: &str) -> u64 {
    let digits: String = name
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

/// The most a sysfs attribute holds: one page, 64 KiB on the largest pages Linux uses.
pub const MAX_ATTRIBUTE: u64 = 64 << 10;

/// Reads an attribute file, refusing one larger than [`MAX_ATTRIBUTE`]: a configured path is
/// untrusted, and what lies there (a symlink to `/dev/zero`, a huge file) must not cost
/// unbounded memory or time.
fn read_attribute(path: &Path) -> io::Result<String> {
    let mut bytes = Vec::new();
    let file = fs::File::open(path)?;
    io::Read::read_to_end(&mut io::Read::take(file, MAX_ATTRIBUTE + 1), &mut bytes)?;
    if bytes.len() as u64 > MAX_ATTRIBUTE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {MAX_ATTRIBUTE} bytes: not a sysfs attribute"),
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn read_trimmed(path: &Path) -> Option<String> {
    read_attribute(path).ok().map(|s| s.trim().to_string())
}

/// The rpmsg channel (bus device) a char device at sysfs path `real` belongs to: the
/// directory above the nearest `rpmsg` class directory on the way up.
fn channel_dir_of(real: &Path) -> Option<&Path> {
    real.ancestors()
        .skip(1)
        .find(|d| d.file_name().is_some_and(|n| n == "rpmsg"))
        .and_then(Path::parent)
}

/// The entries of the sysfs directory `dir` (a class or bus listing of links) whose real path
/// lies under the remoteproc device `remoteproc`: each entry's name and real path. A missing
/// `dir` (no rpmsg at all yet) lists nothing.
fn entries_under(dir: &Path, remoteproc: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let core = fs::canonicalize(remoteproc)?;
    let mut under = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Ok(real) = fs::canonicalize(entry.path())
            && real.starts_with(&core)
        {
            under.push((entry.file_name().to_string_lossy().into_owned(), real));
        }
    }
    Ok(under)
}

/// Lists the rpmsg char devices (`/sys/class/rpmsg/*`) that belong to the remoteproc device
/// `remoteproc` (its sysfs directory, e.g. `/sys/class/remoteproc/remoteproc0`): those whose
/// real sysfs path lies under the remoteproc device's. `sysfs_root` is the sysfs mount
/// (`/sys`), `dev_dir` where the nodes are (`/dev`; the name comes from `DEVNAME` in the
/// device's `uevent` when present). Sorted: control devices first, then by number.
pub fn find_rpmsg_devices(
    sysfs_root: &Path,
    remoteproc: &Path,
    dev_dir: &Path,
) -> io::Result<Vec<RpmsgDevice>> {
    let mut found = Vec::new();
    for (name, real) in entries_under(&sysfs_root.join("class/rpmsg"), remoteproc)? {
        let kind = if name.starts_with("rpmsg_ctrl") {
            RpmsgDeviceKind::Control
        } else {
            RpmsgDeviceKind::Endpoint
        };
        let devname = read_trimmed(&real.join("uevent"))
            .and_then(|u| {
                u.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
            })
            .unwrap_or_else(|| name.clone());
        let channel_dir = channel_dir_of(&real);
        let own = |attr: &str| read_trimmed(&real.join(attr));
        let channel_attr = |attr: &str| channel_dir.and_then(|d| read_trimmed(&d.join(attr)));
        let addr = |attr: &str| {
            own(attr)
                .or_else(|| channel_attr(attr))
                .as_deref()
                .and_then(parse_addr)
        };
        found.push(RpmsgDevice {
            dev_path: dev_dir.join(devname),
            kind,
            channel: channel_attr("name"),
            endpoint: own("name"),
            src: addr("src"),
            dst: addr("dst"),
            name,
        });
    }
    found.sort_by_key(|d| (d.kind, trailing_number(&d.name), d.name.clone()));
    Ok(found)
}

/// A channel the remote announced (name service): Linux made an rpmsg device for it with
/// source [`ADDR_ANY`] and the remote's address as destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncedChannel {
    /// Its name.
    pub name: String,
    /// The remote's address of it.
    pub dst: u32,
}

/// The channels the remote behind `remoteproc` announced: rpmsg bus devices
/// (`/sys/bus/rpmsg/devices/*`) under the remoteproc device whose `src` is any and whose
/// `dst` is not (the kernel's own `rpmsg_ctrl` and `rpmsg_ns` have fixed addresses). Sorted
/// by name.
pub fn find_announced_channels(
    sysfs_root: &Path,
    remoteproc: &Path,
) -> io::Result<Vec<AnnouncedChannel>> {
    let mut found = Vec::new();
    for (_, real) in entries_under(&sysfs_root.join("bus/rpmsg/devices"), remoteproc)? {
        let attr = |a: &str| read_trimmed(&real.join(a));
        let (Some(name), Some(src), Some(dst)) = (
            attr("name"),
            attr("src").as_deref().and_then(parse_addr),
            attr("dst").as_deref().and_then(parse_addr),
        ) else {
            continue;
        };
        if src == ADDR_ANY && dst != ADDR_ANY {
            found.push(AnnouncedChannel { name, dst });
        }
    }
    found.sort_by(|a, b| (&a.name, a.dst).cmp(&(&b.name, b.dst)));
    Ok(found)
}

/// The buffers Linux's virtio rpmsg uses, each message's header included.
const LINUX_RPMSG_BUFFER: usize = 512;
/// The largest message through a kernel endpoint: a buffer less the rpmsg header.
pub const MAX_KERNEL_MESSAGE: usize = LINUX_RPMSG_BUFFER - vamp_rpmsg::wire::HEADER_LEN;

/// `struct rpmsg_endpoint_info` of the kernel's rpmsg uapi.
#[repr(C)]
struct EndpointInfo {
    name: [u8; 32],
    src: u32,
    dst: u32,
}

/// `_IOW(0xb5, 1, struct rpmsg_endpoint_info)`: creates an endpoint device, on `rpmsg_ctrlN`.
const RPMSG_CREATE_EPT_IOCTL: libc::c_ulong =
    (1 << 30) | ((std::mem::size_of::<EndpointInfo>() as libc::c_ulong) << 16) | (0xb5 << 8) | 1;
/// `_IO(0xb5, 2)`: destroys the endpoint, on its `rpmsgN`.
const RPMSG_DESTROY_EPT_IOCTL: libc::c_ulong = (0xb5 << 8) | 2;

/// How long the device node of a new endpoint may take to appear.
const ENDPOINT_APPEAR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An endpoint the kernel made for us on one of the core's channels (`/dev/rpmsgN`): what
/// is written goes to the remote's address, what the remote sends to ours is read. Destroyed
/// (`RPMSG_DESTROY_EPT_IOCTL`) when dropped: the kernel keeps it after a plain close.
#[derive(Debug)]
pub struct RpmsgEndpoint {
    file: fs::File,
    dev_path: PathBuf,
}

impl RpmsgEndpoint {
    /// Its device node.
    pub fn dev_path(&self) -> &Path {
        &self.dev_path
    }

    /// Sends one message (at most [`MAX_KERNEL_MESSAGE`] bytes; the kernel refuses more).
    pub fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        if msg.len() > MAX_KERNEL_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes: more than a kernel rpmsg message holds ({MAX_KERNEL_MESSAGE})",
                    msg.len()
                ),
            ));
        }
        let n = io::Write::write(&mut self.file, msg)?;
        if n != msg.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the kernel took {n} of {} bytes", msg.len()),
            ));
        }
        Ok(())
    }

    /// Receives one message, waiting up to `timeout`; `None` if none came. A read returns
    /// exactly one message.
    pub fn recv(&mut self, timeout: std::time::Duration) -> io::Result<Option<Vec<u8>>> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, owned here, for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            return Ok(None);
        }
        if pfd.revents & libc::POLLIN == 0 {
            // POLLHUP/POLLERR: the channel went away (the core stopped or crashed).
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("{}: the endpoint is gone", self.dev_path.display()),
            ));
        }
        let mut buf = vec![0u8; LINUX_RPMSG_BUFFER];
        let n = io::Read::read(&mut self.file, &mut buf)?;
        buf.truncate(n);
        Ok(Some(buf))
    }
}

impl RpmsgEndpoint {
    /// Makes sends fail with [`io::ErrorKind::WouldBlock`] when the kernel has no transmit
    /// buffer (its `rpmsg_trysend`) instead of waiting for one, up to 15 s, in the kernel.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this struct owns; no pointer is passed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl std::os::fd::AsRawFd for RpmsgEndpoint {
    /// The endpoint's descriptor, to poll with others: readable when a message waits,
    /// `POLLHUP` once the channel is gone.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for RpmsgEndpoint {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: an ioctl without argument on a descriptor this struct owns.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), RPMSG_DESTROY_EPT_IOCTL as _) };
        if r < 0 {
            log::debug!(
                "{}: RPMSG_DESTROY_EPT_IOCTL: {}",
                self.dev_path.display(),
                io::Error::last_os_error()
            );
        }
    }
}

impl SysfsRemote {
    /// The channels the core announced (see [`find_announced_channels`]).
    pub fn announced_channels(&self) -> Result<Vec<AnnouncedChannel>, LifecycleError> {
        find_announced_channels(&self.sysfs_root, &self.root).map_err(|e| LifecycleError::Sysfs {
            what: "list rpmsg channels under",
            path: self.sysfs_root.join("bus/rpmsg/devices"),
            source: e,
        })
    }

    /// Opens an endpoint to the core's address `dst` named `name` (usually an announced
    /// channel's: see [`announced_channels`](Self::announced_channels)), through the core's
    /// `rpmsg_ctrl` device (`RPMSG_CREATE_EPT_IOCTL`, our address chosen by the kernel).
    pub fn open_endpoint(&self, name: &str, dst: u32) -> Result<RpmsgEndpoint, LifecycleError> {
        use std::os::fd::AsRawFd;
        let fail = |what: &'static str, path: PathBuf| Self::sysfs_error(what, path);
        let bytes = name.as_bytes();
        let mut info = EndpointInfo {
            name: [0; 32],
            src: ADDR_ANY,
            dst,
        };
        // The kernel reads the name up to its first NUL, at most 31 bytes.
        if bytes.is_empty() || bytes.len() >= info.name.len() || bytes.contains(&0) {
            return Err(LifecycleError::Sysfs {
                what: "name an endpoint",
                path: PathBuf::from(name),
                source: io::Error::new(io::ErrorKind::InvalidInput, "1 to 31 bytes, no NUL"),
            });
        }
        info.name[..bytes.len()].copy_from_slice(bytes);
        let devices = self.rpmsg_devices()?;
        let ctrl = devices
            .iter()
            .find(|d| d.kind == RpmsgDeviceKind::Control)
            .ok_or_else(|| LifecycleError::Sysfs {
                what: "find the rpmsg_ctrl device of",
                path: self.root.clone(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "none (is the core running, and the kernel built with RPMSG_CTRL?)",
                ),
            })?;
        let before: Vec<String> = devices.iter().map(|d| d.name.clone()).collect();
        let ctrl_file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&ctrl.dev_path)
            .map_err(fail("open", ctrl.dev_path.clone()))?;
        // SAFETY: the kernel reads size_of::<EndpointInfo>() bytes from &info, a live
        // #[repr(C)] struct laid out as struct rpmsg_endpoint_info.
        let r = unsafe {
            libc::ioctl(
                ctrl_file.as_raw_fd(),
                RPMSG_CREATE_EPT_IOCTL as _,
                &info as *const EndpointInfo,
            )
        };
        if r < 0 {
            return Err(fail("RPMSG_CREATE_EPT_IOCTL on", ctrl.dev_path.clone())(
                io::Error::last_os_error(),
            ));
        }
        // The ioctl does not say which rpmsgN it made: the new one with our name and dst.
        let deadline = std::time::Instant::now() + ENDPOINT_APPEAR_TIMEOUT;
        loop {
            let new = self.rpmsg_devices()?.into_iter().find(|d| {
                d.kind == RpmsgDeviceKind::Endpoint
                    && !before.contains(&d.name)
                    && d.endpoint.as_deref() == Some(name)
                    && d.dst == Some(dst)
            });
            if let Some(dev) = new {
                match fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&dev.dev_path)
                {
                    Ok(file) => {
                        return Ok(RpmsgEndpoint {
                            file,
                            dev_path: dev.dev_path,
                        });
                    }
                    // The node comes a moment after the sysfs entry.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(fail("open", dev.dev_path)(e)),
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(fail(
                    "find the endpoint device made through",
                    ctrl.dev_path.clone(),
                )(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no new /dev/rpmsgN appeared",
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_state_maps() {
        let cases = [
            ("offline\n", RemoteState::Offline),
            ("suspended", RemoteState::Suspended),
            ("running\n", RemoteState::Running),
            ("crashed\n", RemoteState::Crashed),
            ("deleted", RemoteState::Invalid),
            ("attached\n", RemoteState::Running),
            ("detached\n", RemoteState::Detached),
            ("invalid\n", RemoteState::Invalid),
            ("", RemoteState::Invalid),
            ("start", RemoteState::Invalid),
        ];
        for (s, want) in cases {
            assert_eq!(state_from_sysfs(s), want, "{s:?}");
        }
    }

    #[test]
    fn addresses_parse_as_sysfs_prints_them() {
        assert_eq!(parse_addr("0x400\n"), Some(1024));
        assert_eq!(parse_addr("0xffffffff"), Some(u32::MAX));
        assert_eq!(parse_addr("53"), Some(53));
        assert_eq!(parse_addr("zz"), None);
        // Endpoint devices print %d: any is -1.
        assert_eq!(parse_addr("-1\n"), Some(ADDR_ANY));
        assert_eq!(parse_addr("1024"), Some(0x400));
        assert_eq!(parse_addr("-2147483649"), None);
        assert_eq!(trailing_number("rpmsg_ctrl12"), 12);
    }

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // _IOW(0xb5, 1, 40 bytes) and _IO(0xb5, 2), as <linux/rpmsg.h> makes them.
        assert_eq!(std::mem::size_of::<EndpointInfo>(), 40);
        assert_eq!(RPMSG_CREATE_EPT_IOCTL, 0x4028_b501);
        assert_eq!(RPMSG_DESTROY_EPT_IOCTL, 0xb502);
        assert_eq!(MAX_KERNEL_MESSAGE, 496);
    }

    #[test]
    fn default_paths_follow_linux() {
        let r = SysfsRemote::new(1);
        assert_eq!(r.root(), Path::new("/sys/class/remoteproc/remoteproc1"));
        assert_eq!(
            r.debugfs(),
            Path::new("/sys/kernel/debug/remoteproc/remoteproc1")
        );
        assert_eq!(r.firmware_dir(), Path::new("/lib/firmware"));
    }
}
