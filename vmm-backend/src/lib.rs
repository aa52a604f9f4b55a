//! vamp's vhost-user virtio-rpmsg device (`vhost-user-rpmsg`) and the hub that routes rpmsg
//! between the guests it serves.
//!
//! - [`cli`]: the `vhost-user-rpmsg` program, as a function ([`cli::run`]).
//! - [`config`]: the topology file (guests, host services, channels, the status socket).
//! - [`control`]: the status socket: guests, links, names, counters, remotes (table, JSON,
//!   Prometheus).
//! - [`hub`]: per-guest links, name offering and address translation between guests; the
//!   hub's lock and the threads that work on it.
//! - [`vhost_user`]: the vhost-user side: each guest's socket and connection, its device on
//!   rust-vmm's vhost-user-backend, and the control relay (device status, DEVICE_NEEDS_RESET).
//! - [`guest_memory`]: guest RAM from the vhost-user memory table, for the engine.
//! - [`remote`]: KVM remotes in the hub.
//! - [`sandbox`]: the seccomp filter of the threads that touch guest memory.
//! - [`service`]: running under a supervisor: passed-in sockets, the readiness notification.
//! - [`frontend`]: a vhost-user frontend that plays a guest with vamp's driver role (tests,
//!   the demo, and native guests without QEMU).

pub mod cli;
pub mod config;
pub mod control;
pub mod frontend;
pub mod guest_memory;
pub mod hub;
pub mod remote;
pub mod sandbox;
pub mod service;
pub mod vhost_user;
