//! Test doubles of how other rpmsg stacks behave on the wire, so vamp's roles are tested
//! against the rules those stacks follow and not only against vamp itself.
//!
//! # OpenAMP's driver-role transmit rule
//!
//! A model written from reading open-amp's `rpmsg_virtio_get_tx_buffer` and
//! `rpmsg_virtio_send_offchannel_nocopy`, not a copy of them. OpenAMP's driver (host/master):
//! - takes a buffer given back unused first, then one recycled from vq 1's used ring, and a
//!   fresh pool buffer only when the used ring is empty;
//! - takes a recycled buffer's size from the used element's length;
//! - posts each transmit descriptor with the whole buffer's size, not the message's.
//!
//! So a device that returns driver-to-device buffers with a used length smaller than the
//! buffer (0, say) leaves such a driver without room: OpenAMP computes a negative room and
//! sends a bogus length; this double refuses the send with
//! [`TooLarge`](crate::rpmsg::Error::TooLarge), which a test sees just as well.
//! Linux's driver ignores the used length of its transmit buffers.
//!
//! The rule lives in [`DriverTransport`] behind
//! [`set_openamp_tx_rule`](DriverTransport::set_openamp_tx_rule), so a driver embedded in
//! another type (a native guest of the hub, say) can follow it too.

use crate::mem::SharedMemory;
use crate::transport::{DriverTransport, Environment};

/// A driver transport that follows OpenAMP's driver-role transmit rule (see the module).
pub type OpenAmpStyleDriver<M, E> = DriverTransport<M, E>;

/// Turns `transport` into an [`OpenAmpStyleDriver`].
pub fn openamp_style<M: SharedMemory, E: Environment>(
    mut transport: DriverTransport<M, E>,
) -> OpenAmpStyleDriver<M, E> {
    transport.set_openamp_tx_rule(true);
    transport
}
