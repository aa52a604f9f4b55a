//! The sysfs backend against a fake sysfs/debugfs tree laid out as Linux lays it out.

mod common;

use common::TempDir;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use vamp_remoteproc::remoteproc::{LifecycleError, ManagedRemote, RemoteState};
use vamp_remoteproc::sysfs::{RpmsgDeviceKind, SysfsRemote};

struct Tree {
    dir: TempDir,
}

impl Tree {
    /// /sys/class/remoteproc/remoteproc{0,1} -> /sys/devices/platform/r5ss/remoteproc/..., each
    /// with `firmware`, `state`, `name`; debugfs `trace0`, `recovery` and `crash`;
    /// /lib/firmware. Core 0 is on a current kernel (`recovery` in sysfs too, as 6.12 has
    /// it), core 1 on an older one (only debugfs has `recovery`).
    fn new() -> Tree {
        let dir = TempDir::new("sysfs");
        let t = Tree { dir };
        for n in 0..2 {
            let dev = t.device(n);
            fs::create_dir_all(&dev).unwrap();
            fs::write(dev.join("firmware"), "rproc-r5-fw\n").unwrap();
            fs::write(dev.join("state"), "offline\n").unwrap();
            fs::write(dev.join("name"), format!("r5f_{n}\n")).unwrap();
            fs::create_dir_all(t.sys().join("class/remoteproc")).unwrap();
            symlink(&dev, t.class(n)).unwrap();
            fs::create_dir_all(t.debugfs(n)).unwrap();
            fs::write(t.debugfs(n).join("trace0"), "").unwrap();
            fs::write(t.debugfs(n).join("recovery"), "enabled\n").unwrap();
            fs::write(t.debugfs(n).join("crash"), "").unwrap();
        }
        fs::write(t.device(0).join("recovery"), "enabled\n").unwrap();
        fs::create_dir_all(t.firmware()).unwrap();
        t
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn sys(&self) -> PathBuf {
        self.root().join("sys")
    }
    fn device(&self, n: u32) -> PathBuf {
        self.sys()
            .join(format!("devices/platform/r5ss/remoteproc/remoteproc{n}"))
    }
    fn class(&self, n: u32) -> PathBuf {
        self.sys().join(format!("class/remoteproc/remoteproc{n}"))
    }
    fn debugfs(&self, n: u32) -> PathBuf {
        self.root().join(format!("debug/remoteproc/remoteproc{n}"))
    }
    fn firmware(&self) -> PathBuf {
        self.root().join("firmware")
    }
    fn remote(&self, n: u32) -> SysfsRemote {
        SysfsRemote::at(self.class(n))
            .with_firmware_dir(self.firmware())
            .with_debugfs(self.debugfs(n))
            .with_sysfs_root(self.sys())
            .with_dev_dir(self.root().join("dev"))
    }
    /// What the kernel does after a write.
    fn kernel_sets(&self, n: u32, state: &str) {
        fs::write(self.device(n).join("state"), format!("{state}\n")).unwrap();
    }
    fn attr(&self, n: u32, name: &str) -> String {
        fs::read_to_string(self.device(n).join(name)).unwrap()
    }
    /// An rpmsg channel (bus device) of core `n`, as Linux 6.12 lays it out:
    /// `<core>/rproc-virtio.N.auto/virtioN/<dir>` with `name`, `src`, `dst` (0x hex), linked
    /// from /sys/bus/rpmsg/devices. Returns its directory.
    fn channel(&self, n: u32, dir: &str, name: &str, src: &str, dst: &str) -> PathBuf {
        let chan = self
            .device(n)
            .join(format!("rproc-virtio.{n}.auto/virtio{n}/{dir}"));
        fs::create_dir_all(&chan).unwrap();
        fs::write(chan.join("name"), format!("{name}\n")).unwrap();
        fs::write(chan.join("src"), format!("{src}\n")).unwrap();
        fs::write(chan.join("dst"), format!("{dst}\n")).unwrap();
        let bus = self.sys().join("bus/rpmsg/devices");
        fs::create_dir_all(&bus).unwrap();
        symlink(&chan, bus.join(dir)).unwrap();
        chan
    }
    /// A char device `name` in directory `parent` (a channel's `rpmsg/`, or a control
    /// device), linked from /sys/class/rpmsg; an endpoint device also has its own `name`,
    /// `src` and `dst` (decimal, -1 for any).
    fn char_dev(&self, parent: &Path, name: &str, own: Option<(&str, &str, &str)>) -> PathBuf {
        let dev = parent.join(name);
        fs::create_dir_all(&dev).unwrap();
        fs::write(
            dev.join("uevent"),
            format!("MAJOR=254\nMINOR=0\nDEVNAME={name}\n"),
        )
        .unwrap();
        if let Some((ept, src, dst)) = own {
            fs::write(dev.join("name"), format!("{ept}\n")).unwrap();
            fs::write(dev.join("src"), format!("{src}\n")).unwrap();
            fs::write(dev.join("dst"), format!("{dst}\n")).unwrap();
        }
        let class = self.sys().join("class/rpmsg");
        fs::create_dir_all(&class).unwrap();
        symlink(&dev, class.join(name)).unwrap();
        dev
    }
}

#[test]
fn firmware_start_stop_and_the_refusals() {
    let tree = Tree::new();
    let mut r = tree.remote(0);
    assert_eq!(r.name().unwrap(), "r5f_0");
    assert_eq!(r.state().unwrap(), RemoteState::Offline);
    assert_eq!(r.firmware().unwrap(), "rproc-r5-fw");

    // Install an ELF: copied under its file name, the name written to `firmware`.
    let elf = tree.root().join("build/echo_r5.elf");
    fs::create_dir_all(elf.parent().unwrap()).unwrap();
    fs::write(&elf, b"\x7fELF-r5-image").unwrap();
    let installed = r.set_firmware(&elf).unwrap();
    assert_eq!(installed, tree.firmware().join("echo_r5.elf"));
    assert_eq!(fs::read(&installed).unwrap(), b"\x7fELF-r5-image");
    assert_eq!(tree.attr(0, "firmware"), "echo_r5.elf");
    // Already in the firmware directory: not copied onto itself.
    r.set_firmware(&installed).unwrap();
    assert_eq!(fs::read(&installed).unwrap(), b"\x7fELF-r5-image");

    // Start writes "start"; the kernel then reports running.
    r.start().unwrap();
    assert_eq!(tree.attr(0, "state"), "start");
    tree.kernel_sets(0, "running");
    assert_eq!(r.state().unwrap(), RemoteState::Running);

    // Refused while running, as the kernel refuses (EBUSY).
    let err = r.set_firmware(&elf).unwrap_err();
    assert!(
        matches!(
            err,
            LifecycleError::IllegalTransition {
                op: "set_firmware",
                state: RemoteState::Running
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "cannot set_firmware a remote that is running (stop it first)"
    );
    assert_eq!(tree.attr(0, "firmware"), "echo_r5.elf", "unchanged");
    assert!(matches!(
        r.start(),
        Err(LifecycleError::IllegalTransition { op: "start", .. })
    ));
    // "attached" counts as running too.
    tree.kernel_sets(0, "attached");
    assert!(r.start().is_err());

    r.stop().unwrap();
    assert_eq!(tree.attr(0, "state"), "stop");
    tree.kernel_sets(0, "offline");
    assert!(matches!(
        r.stop(),
        Err(LifecycleError::IllegalTransition {
            op: "stop",
            state: RemoteState::Offline
        })
    ));

    // A crashed core (recovery disabled): recovered through sysfs `recovery` on this kernel.
    tree.kernel_sets(0, "crashed");
    assert_eq!(r.state().unwrap(), RemoteState::Crashed);
    assert!(r.set_firmware(&elf).is_err());
    r.recover().unwrap();
    assert_eq!(tree.attr(0, "recovery"), "recover");
    assert_eq!(
        fs::read_to_string(tree.debugfs(0).join("recovery")).unwrap(),
        "enabled\n",
        "debugfs untouched where sysfs has the file"
    );
    tree.kernel_sets(0, "running");
    let err = r.recover().unwrap_err();
    assert_eq!(err.to_string(), "cannot recover a remote that is running");
    // The other core is untouched.
    assert_eq!(tree.attr(1, "state"), "offline\n");
}

#[test]
fn crashed_core_is_stopped_not_started_as_the_kernel_does() {
    let tree = Tree::new();
    let mut r = tree.remote(0);
    tree.kernel_sets(0, "crashed");
    // The kernel takes "start" on a crashed core and does nothing but count a user (the
    // next stop would then do nothing either): refused here, naming the way out.
    let err = r.start().unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot start a remote that is crashed (stop or recover it first)"
    );
    assert_eq!(tree.attr(0, "state"), "crashed\n", "nothing written");
    // The kernel stops a crashed core (without recovering it): allowed.
    r.stop().unwrap();
    assert_eq!(tree.attr(0, "state"), "stop");
    // Suspended is up in the kernel's eyes too: start is refused there as well.
    tree.kernel_sets(0, "suspended");
    assert!(matches!(
        r.start(),
        Err(LifecycleError::IllegalTransition {
            op: "start",
            state: RemoteState::Suspended
        })
    ));
    // A detached core (running on its own) is attached to by "start".
    tree.kernel_sets(0, "detached");
    r.start().unwrap();
    assert_eq!(tree.attr(0, "state"), "start");
}

#[test]
fn recovery_policy_and_crash_reports() {
    let tree = Tree::new();
    let mut r = tree.remote(0);
    assert!(r.recovery_enabled().unwrap());
    r.set_recovery(false).unwrap();
    assert_eq!(tree.attr(0, "recovery"), "disabled");
    assert!(!r.recovery_enabled().unwrap());
    r.set_recovery(true).unwrap();
    assert_eq!(tree.attr(0, "recovery"), "enabled");
    fs::write(tree.device(0).join("recovery"), "sometimes\n").unwrap();
    let err = r.recovery_enabled().unwrap_err();
    assert!(err.to_string().contains("\"sometimes\""), "{err}");

    // A crash is reported through debugfs `crash`, as a number; only while running.
    let err = r.report_crash(1).unwrap_err();
    assert_eq!(err.to_string(), "cannot crash a remote that is offline");
    tree.kernel_sets(0, "running");
    r.report_crash(1).unwrap();
    assert_eq!(
        fs::read_to_string(tree.debugfs(0).join("crash")).unwrap(),
        "1"
    );
    // debugfs not mounted: the error names the file.
    fs::remove_dir_all(tree.debugfs(0)).unwrap();
    let err = r.report_crash(2).unwrap_err();
    assert!(matches!(err, LifecycleError::Sysfs { .. }), "{err}");
    assert!(err.to_string().contains("remoteproc0/crash"), "{err}");

    // An older kernel: `recovery` only in debugfs.
    let mut old = tree.remote(1);
    old.set_recovery(false).unwrap();
    assert_eq!(
        fs::read_to_string(tree.debugfs(1).join("recovery")).unwrap(),
        "disabled"
    );
    assert!(!old.recovery_enabled().unwrap());
    tree.kernel_sets(1, "crashed");
    old.recover().unwrap();
    assert_eq!(
        fs::read_to_string(tree.debugfs(1).join("recovery")).unwrap(),
        "recover"
    );
}

#[test]
fn firmware_inside_the_search_path_is_named_relative_to_it() {
    let tree = Tree::new();
    let mut r = tree.remote(0);
    // Already under the firmware directory, in a subdirectory: the kernel takes the relative
    // name, so nothing is copied.
    let sub = tree.firmware().join("xilinx/r5");
    fs::create_dir_all(&sub).unwrap();
    fs::write(sub.join("echo.elf"), b"\x7fELF").unwrap();
    let installed = r.set_firmware(&sub.join("echo.elf")).unwrap();
    assert_eq!(installed, sub.join("echo.elf"));
    assert_eq!(tree.attr(0, "firmware"), "xilinx/r5/echo.elf");
    assert!(!tree.firmware().join("echo.elf").exists(), "not copied");
    // A missing file is said to be missing; `firmware` is unchanged.
    let err = r.set_firmware(&tree.root().join("nope.elf")).unwrap_err();
    assert!(err.to_string().contains("nope.elf"), "{err}");
    assert_eq!(tree.attr(0, "firmware"), "xilinx/r5/echo.elf");
    // No firmware directory yet (a fresh root): made on first install.
    fs::remove_dir_all(tree.firmware()).unwrap();
    let elf = tree.root().join("r5.elf");
    fs::write(&elf, b"\x7fELF").unwrap();
    r.set_firmware(&elf).unwrap();
    assert_eq!(
        fs::read(tree.firmware().join("r5.elf")).unwrap(),
        b"\x7fELF"
    );
    assert_eq!(tree.attr(0, "firmware"), "r5.elf");
}

#[test]
fn every_kernel_state_maps_to_ours() {
    let tree = Tree::new();
    let r = tree.remote(0);
    for (kernel, ours) in [
        ("offline", RemoteState::Offline),
        ("suspended", RemoteState::Suspended),
        ("running", RemoteState::Running),
        ("crashed", RemoteState::Crashed),
        ("deleted", RemoteState::Invalid),
        ("invalid", RemoteState::Invalid),
        ("attached", RemoteState::Running),
        ("detached", RemoteState::Detached),
    ] {
        tree.kernel_sets(0, kernel);
        assert_eq!(r.state().unwrap(), ours, "{kernel}");
        assert_eq!(r.raw_state().unwrap(), kernel);
    }
}

#[test]
fn trace_reads_debugfs_up_to_the_first_nul() {
    let tree = Tree::new();
    let r = tree.remote(0);
    assert_eq!(r.trace(0).unwrap(), "");
    fs::write(
        tree.debugfs(0).join("trace0"),
        b"r5 up\nping 1\n\0\0\0stale",
    )
    .unwrap();
    assert_eq!(r.trace(0).unwrap(), "r5 up\nping 1\n");
    // The kernel removes the trace files when the core goes offline: said so.
    let err = r.trace(1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot read the trace of a remote that is offline"
    );
    // While up, a missing buffer is a missing file.
    tree.kernel_sets(0, "running");
    let err = r.trace(1).unwrap_err();
    assert!(matches!(err, LifecycleError::Sysfs { .. }), "{err}");
    assert!(err.to_string().contains("trace1"), "{err}");
}

#[test]
fn attack_huge_debugfs_trace_read_is_capped() {
    let tree = Tree::new();
    let r = tree.remote(0);
    let max = vamp_remoteproc::console::MAX_TRACE_READ;
    fs::write(tree.debugfs(0).join("trace0"), vec![b'A'; 4 * max]).unwrap();
    assert_eq!(r.trace(0).unwrap().len(), max);
}

#[test]
fn attack_endless_attribute_is_refused_not_read_to_the_end() {
    // A configured sysfs_path whose `state` is /dev/zero (endless) or a huge file: refused
    // after one page's worth, not read into memory until it runs out.
    let tree = Tree::new();
    let mut r = tree.remote(0);
    let state = tree.device(0).join("state");
    fs::remove_file(&state).unwrap();
    symlink("/dev/zero", &state).unwrap();
    let err = r.state().unwrap_err();
    assert!(err.to_string().contains("not a sysfs attribute"), "{err}");
    assert_eq!(ManagedRemote::state(&mut r), RemoteState::Invalid);
    assert!(r.start().is_err());
    fs::remove_file(&state).unwrap();
    let max = vamp_remoteproc::sysfs::MAX_ATTRIBUTE as usize;
    fs::write(&state, vec![b'x'; max + 1]).unwrap();
    assert!(r.raw_state().is_err());
    fs::write(&state, format!("running{}", " ".repeat(max - 7))).unwrap();
    assert_eq!(
        r.state().unwrap(),
        RemoteState::Running,
        "a full page is fine"
    );
}

#[test]
fn managed_remote_over_sysfs() {
    let tree = Tree::new();
    let mut r = tree.remote(1);
    let m: &mut dyn ManagedRemote = &mut r;
    assert_eq!(m.name(), "r5f_1");
    assert_eq!(m.state(), RemoteState::Offline);
    m.start().unwrap();
    tree.kernel_sets(1, "running");
    assert_eq!(m.state(), RemoteState::Running);
    fs::write(tree.debugfs(1).join("trace0"), "hello\0").unwrap();
    assert_eq!(m.trace().unwrap(), "hello");
    m.stop().unwrap();
    fs::remove_file(tree.device(1).join("state")).unwrap();
    assert_eq!(m.state(), RemoteState::Invalid, "unreadable");
    // Without a `name` file the directory name stands in.
    fs::remove_file(tree.device(1).join("name")).unwrap();
    assert_eq!(m.name(), "remoteproc1");
}

#[test]
fn rpmsg_char_devices_of_this_core() {
    let tree = Tree::new();
    assert!(
        tree.remote(0).rpmsg_devices().unwrap().is_empty(),
        "no class/rpmsg yet"
    );
    // Core 0: the control device, an endpoint made through it for the announced sample
    // channel, and an endpoint rpmsg_char made on an "rpmsg-raw" channel.
    let ctrl_chan = tree.channel(0, "virtio0.rpmsg_ctrl.0.0", "rpmsg_ctrl", "0x0", "0x0");
    let ctrl = tree.char_dev(&ctrl_chan.join("rpmsg"), "rpmsg_ctrl0", None);
    tree.char_dev(
        &ctrl,
        "rpmsg10",
        Some(("rpmsg-client-sample", "-1", "1024")),
    );
    let raw = tree.channel(
        0,
        "virtio0.rpmsg-raw.-1.1025",
        "rpmsg-raw",
        "0xffffffff",
        "0x401",
    );
    tree.char_dev(
        &raw.join("rpmsg"),
        "rpmsg1",
        Some(("rpmsg-raw", "1030", "1025")),
    );
    // Core 1 has its own.
    let other = tree.channel(1, "virtio1.rpmsg_ctrl.0.0", "rpmsg_ctrl", "0x0", "0x0");
    tree.char_dev(&other.join("rpmsg"), "rpmsg_ctrl1", None);

    let devs = tree.remote(0).rpmsg_devices().unwrap();
    let got: Vec<_> = devs
        .iter()
        .map(|d| {
            (
                d.name.as_str(),
                d.kind,
                d.channel.as_deref(),
                d.endpoint.as_deref(),
                d.src,
                d.dst,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "rpmsg_ctrl0",
                RpmsgDeviceKind::Control,
                Some("rpmsg_ctrl"),
                None,
                Some(0),
                Some(0)
            ),
            (
                "rpmsg1",
                RpmsgDeviceKind::Endpoint,
                Some("rpmsg-raw"),
                Some("rpmsg-raw"),
                Some(1030),
                Some(1025)
            ),
            (
                "rpmsg10",
                RpmsgDeviceKind::Endpoint,
                Some("rpmsg_ctrl"),
                Some("rpmsg-client-sample"),
                Some(u32::MAX),
                Some(1024)
            ),
        ]
    );
    assert_eq!(devs[1].dev_path, tree.root().join("dev/rpmsg1"));
    let other = tree.remote(1).rpmsg_devices().unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].name, "rpmsg_ctrl1");
}

#[test]
fn announced_channels_of_this_core() {
    let tree = Tree::new();
    assert!(tree.remote(0).announced_channels().unwrap().is_empty());
    // What the kernel's name service made for the test core, next to its own channels.
    tree.channel(
        0,
        "virtio0.rpmsg-openamp-demo-channel.-1.1025",
        "rpmsg-openamp-demo-channel",
        "0xffffffff",
        "0x401",
    );
    tree.channel(
        0,
        "virtio0.rpmsg-client-sample.-1.1024",
        "rpmsg-client-sample",
        "0xffffffff",
        "0x400",
    );
    tree.channel(0, "virtio0.rpmsg_ctrl.0.0", "rpmsg_ctrl", "0x0", "0x0");
    tree.channel(0, "virtio0.rpmsg_ns.53.53", "rpmsg_ns", "0x35", "0x35");
    tree.channel(
        1,
        "virtio1.rpmsg-client-sample.-1.1024",
        "rpmsg-client-sample",
        "0xffffffff",
        "0x400",
    );
    let got: Vec<_> = tree
        .remote(0)
        .announced_channels()
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.dst))
        .collect();
    assert_eq!(
        got,
        [
            ("rpmsg-client-sample".to_string(), 0x400),
            ("rpmsg-openamp-demo-channel".to_string(), 0x401),
        ]
    );
    assert_eq!(tree.remote(1).announced_channels().unwrap().len(), 1);
    // No control device: opening an endpoint says so.
    let err = tree
        .remote(0)
        .open_endpoint("rpmsg-client-sample", 0x400)
        .unwrap_err();
    assert!(err.to_string().contains("rpmsg_ctrl"), "{err}");
    // A name the kernel cannot take is refused before any ioctl.
    let long = "x".repeat(32);
    assert!(tree.remote(0).open_endpoint(&long, 0x400).is_err());
    assert!(tree.remote(0).open_endpoint("", 0x400).is_err());
}
