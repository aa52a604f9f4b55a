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
    /// with `firmware`, `state`, `name`; debugfs `trace0` and `recovery`; /lib/firmware.
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
        }
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
    /// An rpmsg char device `name` on a channel of core `n`.
    fn rpmsg_dev(&self, n: u32, channel_dir: &str, channel: &str, src: &str, name: &str) {
        let chan = self
            .device(n)
            .join(format!("remoteproc{n}#vdev0buffer/virtio{n}/{channel_dir}"));
        let dev = chan.join("rpmsg").join(name);
        fs::create_dir_all(&dev).unwrap();
        fs::write(chan.join("name"), format!("{channel}\n")).unwrap();
        fs::write(chan.join("src"), format!("{src}\n")).unwrap();
        fs::write(chan.join("dst"), "0xffffffff\n").unwrap();
        fs::write(
            dev.join("uevent"),
            format!("MAJOR=240\nMINOR=0\nDEVNAME={name}\n"),
        )
        .unwrap();
        let class = self.sys().join("class/rpmsg");
        fs::create_dir_all(&class).unwrap();
        symlink(&dev, class.join(name)).unwrap();
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

    // A crashed core is not stopped but recovered, through debugfs.
    tree.kernel_sets(0, "crashed");
    assert_eq!(r.state().unwrap(), RemoteState::Crashed);
    assert!(r.stop().is_err());
    assert!(r.set_firmware(&elf).is_err());
    r.recover().unwrap();
    assert_eq!(
        fs::read_to_string(tree.debugfs(0).join("recovery")).unwrap(),
        "recover"
    );
    tree.kernel_sets(0, "running");
    assert!(r.recover().is_err());
    // The other core is untouched.
    assert_eq!(tree.attr(1, "state"), "offline\n");
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
    tree.rpmsg_dev(
        0,
        "virtio0.rpmsg-raw.-1.1024",
        "rpmsg-raw",
        "0x400",
        "rpmsg1",
    );
    tree.rpmsg_dev(
        0,
        "virtio0.rpmsg_ctrl.0.0",
        "rpmsg_ctrl",
        "0x0",
        "rpmsg_ctrl0",
    );
    tree.rpmsg_dev(
        0,
        "virtio0.rpmsg-raw.-1.1025",
        "rpmsg-raw",
        "0x401",
        "rpmsg10",
    );
    tree.rpmsg_dev(
        1,
        "virtio1.rpmsg-raw.-1.1024",
        "rpmsg-raw",
        "0x400",
        "rpmsg2",
    );
    let devs = tree.remote(0).rpmsg_devices().unwrap();
    let got: Vec<_> = devs
        .iter()
        .map(|d| (d.name.as_str(), d.kind, d.channel.as_deref(), d.src, d.dst))
        .collect();
    assert_eq!(
        got,
        [
            (
                "rpmsg_ctrl0",
                RpmsgDeviceKind::Control,
                Some("rpmsg_ctrl"),
                Some(0),
                Some(u32::MAX)
            ),
            (
                "rpmsg1",
                RpmsgDeviceKind::Endpoint,
                Some("rpmsg-raw"),
                Some(1024),
                Some(u32::MAX)
            ),
            (
                "rpmsg10",
                RpmsgDeviceKind::Endpoint,
                Some("rpmsg-raw"),
                Some(1025),
                Some(u32::MAX)
            ),
        ]
    );
    assert_eq!(devs[1].dev_path, tree.root().join("dev/rpmsg1"));
    let other = tree.remote(1).rpmsg_devices().unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].name, "rpmsg2");
}
