//! vamp's vhost-user virtio-rpmsg device (`vhost-user-rpmsg`) and the hub that routes rpmsg
//! between the guests it serves.
//!
//! - [`config`]: the topology file (guests, host services, channels).
//! - [`hub`]: per-guest links, name offering and address translation between guests.
//! - [`backend`]: the vhost-user backend of one guest, on rust-vmm's vhost-user-backend.
//! - [`guest_memory`]: guest RAM from the vhost-user memory table, for the engine.
//! - [`control`]: the vhost-user control connection: device status, DEVICE_NEEDS_RESET.
//! - [`sandbox`]: the seccomp filter of the threads that touch guest memory.
//! - [`frontend`]: a vhost-user frontend that plays a guest with vamp's driver role (tests,
//!   the demo, and native guests without QEMU).

pub mod backend;
pub mod config;
pub mod control;
pub mod frontend;
pub mod guest_memory;
pub mod hub;
pub mod remote;
pub mod sandbox;
