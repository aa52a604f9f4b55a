//! Guest RAM from the vhost-user memory table (vm-memory), as the engine sees it.

pub use vamp_rpmsg::guest_ram::{GuestMemoryMap, GuestRam};
