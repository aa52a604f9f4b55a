//! The hub in a few lines: `vhost-user-rpmsg`'s hub on threads of this process with its
//! built-in echo service, and one guest, played by vamp's own vhost-user frontend, that finds the
//! service by name and pings it.
//!
//! ```sh
//! cargo run -p vamp-vmm-backend --example hub_echo
//! ```

use std::time::Duration;
use vamp_rpmsg::apps::{EnvWaiter, ping};
use vamp_vmm_backend::config::Topology;
use vamp_vmm_backend::frontend::{GuestOptions, NativeGuest};
use vamp_vmm_backend::hub::{Hub, SharedHub};
use vamp_vmm_backend::vhost_user::serve_guest;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("vamp-hub-echo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("alice.sock");
    // One guest and the echo service, offered under Linux's sample-client name.
    let topology = Topology::parse(&format!(
        "[[guest]]\nname = \"alice\"\nsocket = \"{}\"\n\
         [[service]]\ntype = \"echo\"\nname = \"rpmsg-client-sample\"\n",
        socket.display()
    ))?;
    let hub = SharedHub::new(Hub::new(topology));
    {
        let (hub, socket) = (hub.clone(), socket.clone());
        // Serves the guest's vhost-user socket (link 0) for as long as the process runs.
        std::thread::spawn(move || serve_guest(hub, 0, &socket));
    }
    // A vhost-user frontend in the driver role, as QEMU and Linux's virtio_rpmsg_bus would be.
    let mut guest = NativeGuest::connect(&socket, GuestOptions::default())?;
    let summary = ping(
        guest.rpmsg(),
        &mut EnvWaiter,
        "rpmsg-client-sample",
        100,
        Duration::from_secs(10),
        "alice",
    )?;
    println!(
        "{}/{} echoes matched; the hub served {} messages",
        summary.matched,
        summary.sent,
        hub.link(0).stats(0).served
    );
    std::fs::remove_dir_all(&dir)?;
    if summary.matched == summary.sent {
        Ok(())
    } else {
        Err("echoes lost".into())
    }
}
