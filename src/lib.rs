//! vamp's front door: the `demo`, `native` and `bench` commands, composing the
//! RPMsg engine ([`vamp_rpmsg`]) with its transports.

pub mod bench;
pub mod demo;
pub mod guest_apps;
pub mod native_apps;
