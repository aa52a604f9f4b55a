//! remoteproc in a few lines: the echo firmware built from images/ (embedded in this crate),
//! its resource table as the loader reads it, then, where /dev/kvm works, the remote booted as
//! a KVM micro-VM, its rpmsg device brought up in the driver role, and pinged by name.
//!
//! ```sh
//! cargo run -p vamp-remoteproc --example echo_remote
//! ```

use std::time::Duration;
use vamp_remoteproc::image::{ImageSource, MemoryImage};
use vamp_remoteproc::kvm::{KvmOptions, KvmRemote};
use vamp_remoteproc::remoteproc::{RemoteWaiter, Remoteproc};
use vamp_rpmsg::apps::{ECHO_CHANNEL, ping};
use vamp_rpmsg::transport::BufferConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let echo = vamp_remoteproc::images::builtin("echo").ok_or("no built-in echo image")?;
    print!(
        "{}",
        vamp_remoteproc::inspect::inspect(&mut MemoryImage::new(echo))?
    );
    if let Err(why) = vamp_remoteproc::kvm::kvm_available() {
        println!("no KVM remote: {why}");
        return Ok(());
    }
    let mut rp = Remoteproc::new(KvmRemote::new(KvmOptions::default())?);
    rp.load_source(ImageSource::Static(echo))?;
    rp.start()?;
    // The vdev of the resource table, with the host (us) in the driver role.
    let mut rpmsg = rp.create_virtio(0, BufferConfig::default())?;
    let mut waiter = RemoteWaiter {
        rp: &mut rp,
        console: |bytes: &[u8]| print!("{}", String::from_utf8_lossy(bytes)),
    };
    let summary = ping(
        &mut rpmsg,
        &mut waiter,
        ECHO_CHANNEL,
        100,
        Duration::from_secs(10),
        "host",
    )?;
    drop(rpmsg);
    rp.shutdown()?;
    println!("{}/{} echoes matched", summary.matched, summary.sent);
    if summary.matched == summary.sent {
        Ok(())
    } else {
        Err("echoes lost".into())
    }
}
