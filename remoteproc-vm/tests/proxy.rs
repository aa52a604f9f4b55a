//! The rpmsg proxy end to end (KVM; skipped with the reason printed when /dev/kvm is
//! unusable): the built-in proxy firmware writes its console and a file through the host's
//! proxy server, reads the file back, checks it and terminates the proxy; in-process and
//! through the `remoteproc-vm run proxy` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vamp_remoteproc::image::ImageSource;
use vamp_remoteproc::kvm::{KvmOptions, KvmRemote, kvm_available};
use vamp_remoteproc::proxy::{self, ProxyServer, ProxyService};
use vamp_remoteproc::remoteproc::{RemoteEvent, RemoteWaiter, Remoteproc};
use vamp_rpmsg::apps::AppError;
use vamp_rpmsg::transport::BufferConfig;

/// What the firmware writes to proxy-test.txt (as images/src/bin/proxy.rs builds it).
fn expected_file() -> String {
    let mut text = String::new();
    for i in 0..40 {
        let so_far = text.len();
        text.push_str(&format!(
            "proxy line {i:02}: written by the remote through rpmsg, {so_far} bytes so far\n"
        ));
    }
    text
}

fn temp_root(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vamp-proxy-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Console output the test reads.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What one in-process run gave: the serve result, the service, the remote's fd 1, its
/// console port output, and how it stopped.
struct Run {
    result: Result<(), AppError>,
    service: ProxyService,
    out: Sink,
    console: String,
    event: RemoteEvent,
}

fn proxy_run(root: Option<&Path>) -> Option<Run> {
    if let Err(why) = kvm_available() {
        eprintln!("skipped: {why}");
        return None;
    }
    let bytes = vamp_remoteproc::images::builtin("proxy").expect("the proxy image is built in");
    let mut rp = Remoteproc::new(KvmRemote::new(KvmOptions::default()).unwrap());
    rp.load_source(ImageSource::Static(bytes)).unwrap();
    rp.start().unwrap();
    let mut rpmsg = rp.create_virtio(0, BufferConfig::default()).unwrap();
    let (out, err) = (Sink::default(), Sink::default());
    let server =
        ProxyServer::with_output(root, Box::new(out.clone()), Box::new(err.clone())).unwrap();
    let mut service = ProxyService::new(server);
    let mut console = Vec::new();
    let mut waiter = RemoteWaiter {
        rp: &mut rp,
        console: |bytes: &[u8]| console.extend_from_slice(bytes),
    };
    let result = proxy::serve(
        &mut rpmsg,
        &mut waiter,
        &mut service,
        Duration::from_secs(20),
    );
    drop(rpmsg);
    let event = rp.wait_stopped(Duration::from_secs(10));
    console.extend(rp.take_console());
    rp.shutdown().unwrap();
    assert_eq!(err.text(), "", "nothing on the remote's fd 2");
    Some(Run {
        result,
        service,
        out,
        console: String::from_utf8_lossy(&console).into_owned(),
        event,
    })
}

#[test]
fn proxy_firmware_writes_and_reads_back_a_file_on_the_host() {
    let root = temp_root("kvm");
    let Some(Run {
        result,
        service,
        out,
        console,
        event,
    }) = proxy_run(Some(&root))
    else {
        return;
    };
    result.unwrap();
    let text = out.text();
    assert!(text.starts_with("proxy: hello from the remote\n"), "{text}");
    assert!(text.ends_with("proxy: OK\n"), "{text} / console: {console}");
    // The run ended by the remote's terminate call, then its exit with code 0.
    assert!(service.server.terminated());
    assert_eq!(event, RemoteEvent::Exited(0), "console: {console}");
    // The file is on the host, under the root, written in several messages (> 512 bytes).
    let want = expected_file();
    assert!(want.len() > 2 * 512);
    assert_eq!(
        std::fs::read_to_string(root.join("proxy-test.txt")).unwrap(),
        want
    );
    assert_eq!(service.server.open_files(), 0, "every file closed");
    // greeting, 6 writes, open/write.../close, open, reads, close, the refused close, "OK".
    let (calls, failed) = service.server.calls();
    assert!(calls > 15, "{calls}");
    assert_eq!(failed, 1, "only the deliberate close of a closed fd fails");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn proxy_firmware_without_a_root_gets_no_file_access() {
    let Some(Run {
        result,
        service,
        out,
        event,
        ..
    }) = proxy_run(None)
    else {
        return;
    };
    result.unwrap();
    let text = out.text();
    assert!(text.starts_with("proxy: hello from the remote\n"), "{text}");
    assert!(
        text.contains("proxy: FAILED: open failed on the host"),
        "{text}"
    );
    assert!(service.server.terminated());
    assert_eq!(event, RemoteEvent::Exited(1));
}

fn cli_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn cli_run_proxy_with_a_root_exits_zero() {
    if let Err(why) = kvm_available() {
        eprintln!("skipped: cli_run_proxy_with_a_root_exits_zero: {why}");
        return;
    }
    let root = temp_root("cli");
    let bin = env!("CARGO_BIN_EXE_remoteproc-vm");
    let out = Command::new(bin)
        .args(["run", "proxy", "--proxy-root"])
        .arg(&root)
        .output()
        .unwrap();
    let t = cli_text(&out);
    assert!(out.status.success(), "{t}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "proxy: hello from the remote\n",
        "proxy: OK\n",
        "proxy terminated by the remote",
        "exited with code 0",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{t}");
    }
    assert_eq!(
        std::fs::read_to_string(root.join("proxy-test.txt")).unwrap(),
        expected_file()
    );
    // Without a root the firmware's open fails: it says so and exits 1.
    let out = Command::new(bin).args(["run", "proxy"]).output().unwrap();
    assert!(!out.status.success(), "{}", cli_text(&out));
    assert!(cli_text(&out).contains("proxy: FAILED: open failed on the host"));
    // A root that does not exist is refused before anything runs on it.
    let out = Command::new(bin)
        .args(["run", "proxy", "--proxy-root"])
        .arg(root.join("missing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        cli_text(&out).contains("--proxy-root"),
        "{}",
        cli_text(&out)
    );
    std::fs::remove_dir_all(&root).unwrap();
}
