//! The `remoteproc-vm` command line.

use std::process::Command;
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_remoteproc-vm"))
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn run_echo_ping_exits_zero_only_when_all_matched() {
    if let Err(why) = vamp_remoteproc::kvm::kvm_available() {
        eprintln!("skipped: run_echo_ping_exits_zero_only_when_all_matched: {why}");
        return;
    }
    let out = bin()
        .args(["run", "echo", "--ping", "1000"])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("1000/1000 echoes matched"), "{t}");
    assert!(t.contains("on split rings"), "{t}");
    // Packed rings, asked of the firmware through the platform entry.
    let out = bin()
        .args(["run", "echo", "--ring", "packed", "--ping", "300"])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("on packed rings"), "{t}");
    assert!(t.contains("300/300 echoes matched"), "{t}");
    let out = bin()
        .args(["run", "echo", "--ring", "bent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("say split or packed"), "{}", text(&out));
    assert!(
        t.contains("name service: \"rpmsg-openamp-demo-channel\""),
        "{t}"
    );
    // The fault image has no echo channel: the ping fails clearly instead of hanging.
    let out = bin()
        .args(["run", "fault", "--ping", "1", "--timeout", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("timed out waiting for the echo channel"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_running_remote_answers_status_on_its_control_socket() {
    if let Err(why) = vamp_remoteproc::kvm::kvm_available() {
        eprintln!("skipped: a_running_remote_answers_status_on_its_control_socket: {why}");
        return;
    }
    let dir = vamp_test_support::TempDir::new("rpv-status");
    let socket = dir.join("status.sock");
    let log = std::fs::File::create(dir.join("run.log")).unwrap();
    let mut remote = vamp_test_support::Proc {
        child: bin()
            .args(["run", "echo", "--restarts", "2", "--control-socket"])
            .arg(&socket)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    };
    vamp_test_support::wait_for_paths(
        std::slice::from_ref(&socket),
        "the status socket",
        Duration::from_secs(30),
    );
    let status = |args: &[&str]| {
        let out = bin()
            .arg("status")
            .args(args)
            .arg("--control-socket")
            .arg(&socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The channels show once the firmware announced both.
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let v: serde_json::Value = serde_json::from_str(&status(&["--json"])).unwrap();
        let channels = v["remotes"][0]["channels"].as_array().unwrap().clone();
        if channels.len() == 2 && channels.contains(&"rpmsg-openamp-demo-channel".into()) {
            break v;
        }
        assert!(Instant::now() < deadline, "no channel in {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let r = &v["remotes"][0];
    assert_eq!(r["name"], "echo");
    assert_eq!(r["backend"], "kvm");
    assert_eq!(r["state"], "running");
    assert_eq!(
        (r["restarts"].clone(), r["max_restarts"].clone()),
        (0.into(), 2.into())
    );
    assert_eq!(r["crashes"], 0);
    let table = status(&[]);
    assert!(table.contains("running"), "{table}");
    assert!(table.contains("0/2"), "{table}");
    assert!(
        table.contains("echo: channels ") && table.contains("\"rpmsg-openamp-demo-channel\""),
        "{table}"
    );
    let metrics = status(&["--metrics"]);
    assert!(
        metrics.contains("vamp_remote_channels{remote=\"echo\",backend=\"kvm\"} 2"),
        "{metrics}"
    );
    // A second runner on the same socket is refused before it loads anything.
    let out = bin()
        .args(["run", "echo", "--control-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("--control-socket") && t.contains("listens"),
        "{t}"
    );
    assert!(!t.contains("loaded and started"), "{t}");
    remote.kill();
}

#[test]
fn inspect_shows_the_resource_table_of_every_image() {
    let out = bin().arg("images").output().unwrap();
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    assert_eq!(names, ["echo", "matrix", "fault", "proxy"]);
    for name in &names {
        let out = bin().args(["inspect", name]).output().unwrap();
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        for want in [
            "ELF64",
            "entry 0x100000",
            "carveout \"vdev0buffer\"",
            "vdev id 7 (rpmsg)",
            "vring 1:",
            "trace \"trace0\"",
        ] {
            assert!(t.contains(want), "{name}: missing {want:?} in\n{t}");
        }
    }
    let out = bin().args(["inspect", "no-such-image"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not a built-in image (echo, matrix, fault, proxy)"),
        "{}",
        text(&out)
    );
    let junk = std::env::temp_dir().join(format!("vamp-junk-{}.elf", std::process::id()));
    std::fs::write(&junk, b"not an elf at all").unwrap();
    let out = bin().arg("inspect").arg(&junk).output().unwrap();
    let _ = std::fs::remove_file(&junk);
    assert!(!out.status.success());
    assert!(text(&out).to_lowercase().contains("elf"), "{}", text(&out));
}

#[test]
fn configured_physical_cores_through_a_sysfs_tree() {
    let dir = std::env::temp_dir().join(format!("vamp-cli-sysfs-{}", std::process::id()));
    let core = dir.join("remoteproc0");
    std::fs::create_dir_all(&core).unwrap();
    std::fs::write(core.join("state"), "running\n").unwrap();
    std::fs::write(core.join("name"), "r5f_0\n").unwrap();
    std::fs::write(core.join("firmware"), "r5_0_echo.elf\n").unwrap();
    let cfg = dir.join("remotes.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[remote]]\nname = \"r5-0\"\nimage = \"/srv/r5.elf\"\nbackend = \"sysfs\"\nsysfs_path = \"{}\"\n\
             [[remote]]\nname = \"vm\"\nimage = \"echo\"\n",
            core.display()
        ),
    )
    .unwrap();
    let out = bin()
        .arg("status")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("r5-0\tsysfs\trunning"), "{t}");
    assert!(t.contains("vm\tkvm"), "{t}");
    // The same as JSON and as Prometheus text.
    let out = bin()
        .args(["status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(v["remotes"][0]["name"], "r5-0");
    assert_eq!(v["remotes"][0]["backend"], "sysfs");
    assert_eq!(v["remotes"][0]["state"], "running");
    assert_eq!(v["remotes"][0]["image"], "r5_0_echo.elf");
    assert_eq!(v["remotes"][1]["backend"], "kvm");
    let out = bin()
        .args(["status", "--metrics", "--config"])
        .arg(&cfg)
        .arg("r5-0")
        .output()
        .unwrap();
    let t = text(&out);
    assert!(
        t.contains("vamp_remote_running{remote=\"r5-0\",backend=\"sysfs\"} 1"),
        "{t}"
    );
    assert!(!t.contains("remote=\"vm\""), "{t}");
    // Stopping a running core writes "stop" to its state file, as the kernel expects.
    let out = bin()
        .args(["stop", "--config"])
        .arg(&cfg)
        .arg("r5-0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(core.join("state")).unwrap().trim(),
        "stop"
    );
    // A KVM remote cannot be stopped from another process: said clearly.
    let out = bin()
        .args(["stop", "--config"])
        .arg(&cfg)
        .arg("vm")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("lives in the process that runs it"),
        "{}",
        text(&out)
    );
    let out = bin()
        .args(["trace", "--config"])
        .arg(&cfg)
        .arg("nobody")
        .output()
        .unwrap();
    assert!(
        text(&out).contains("no remote called \"nobody\""),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
