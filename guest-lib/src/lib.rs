//! vamp's RPMsg engine.
//!
//! One sans-IO core for every transport and both virtio roles:
//!
//! - [`wire`]: typed, bounds-checked views over the byte formats (rpmsg header, name-service
//!   message, resource table).
//! - [`mem`]: the shared-memory abstraction every ring and buffer access goes through. Memory
//!   another party writes is never turned into a Rust reference.
//! - [`vring`]: split virtqueues in the driver role (host/master) and the device role (remote).
//! - [`packed`]: packed virtqueues (virtio 1.1, VIRTIO_F_RING_PACKED) in both roles.
//! - [`transport`]: moving rpmsg buffers over two vrings, in either role.
//! - [`virtio`]: the rpmsg device's virtio facts: device ID, queues, feature and status bits.
//! - [`rpmsg`]: endpoints, addressing, name service, send/receive: the OpenAMP API.
//!
//! The crate is `no_std` and needs only `alloc` (a global allocator). The `std` feature adds
//! the Linux pieces: a std [`Environment`](transport::Environment), the native two-process
//! link laid out as OpenAMP's native-Linux machine, a file mapped as shared memory
//! (`mapped_file`) and futex waits (`futex`). The `testing` feature adds the `testing` module:
//! a dummy environment, an in-memory link between two engines, a recording handler, and test
//! doubles of other stacks' behaviour on the wire.
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod mem;
#[cfg(feature = "packed-rings")]
pub mod packed;
pub mod rpmsg;
pub mod transport;
pub mod virtio;
pub mod vring;
pub mod wire;

#[cfg(feature = "std")]
pub mod apps;
#[cfg(feature = "std")]
pub mod futex;
#[cfg(feature = "vm-memory")]
pub mod guest_ram;
#[cfg(feature = "std")]
pub mod mapped_file;
#[cfg(feature = "std")]
pub mod native;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
