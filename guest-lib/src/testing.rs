//! Test doubles of how other rpmsg stacks behave on the wire, so vamp's roles are tested
//! against the rules those stacks follow and not only against vamp itself.
//!
//! These are models written from reading the other stacks, not copies of them.

use crate::mem::SharedMemory;
use crate::transport::{Buffer, DriverTransport, Environment, LinkError, Transport};
use crate::wire::Endian;

/// A driver (host/master) that picks transmit buffers as OpenAMP's driver role does
/// (open-amp `rpmsg_virtio_get_tx_buffer`): a buffer given back unused first, then one
/// recycled from vq 1's used ring, and a fresh pool buffer only when the used ring is
/// empty. A recycled buffer's size is the used element's length, so a device that returns
/// driver-to-device buffers with used.len smaller than the buffer (0, say) leaves this
/// driver unable to send (OpenAMP itself would compute a negative room and send a bogus
/// length; this double refuses the send instead, which a test sees just as well).
///
/// Like OpenAMP's driver it posts each transmit descriptor with the whole buffer's size
/// (Linux posts the message's length), so a device that returns the chain's readable
/// length gives this driver its buffers back whole. Everything else is
/// [`DriverTransport`]'s.
#[derive(Debug)]
pub struct OpenAmpStyleDriver<M: SharedMemory, E: Environment> {
    inner: DriverTransport<M, E>,
}

impl<M: SharedMemory, E: Environment> OpenAmpStyleDriver<M, E> {
    /// Wraps a driver transport set up as usual.
    pub fn new(inner: DriverTransport<M, E>) -> Self {
        OpenAmpStyleDriver { inner }
    }

    /// The wrapped driver transport.
    pub fn inner_mut(&mut self) -> &mut DriverTransport<M, E> {
        &mut self.inner
    }

    /// The environment.
    pub fn env_mut(&mut self) -> &mut E {
        self.inner.env_mut()
    }
}

impl<M: SharedMemory, E: Environment> Transport for OpenAmpStyleDriver<M, E> {
    type Memory = M;

    fn memory(&self) -> &M {
        self.inner.memory()
    }

    fn endian(&self) -> Endian {
        self.inner.endian()
    }

    fn tx_buffer_size(&self) -> Option<u32> {
        self.inner.tx_buffer_size()
    }

    fn rx_buffer_size(&self) -> Option<u32> {
        self.inner.rx_buffer_size()
    }

    fn take_tx(&mut self) -> Result<Option<Buffer>, LinkError> {
        self.inner.take_tx_recycling_used_first()
    }

    fn send_tx(&mut self, buf: Buffer, len: u32) -> Result<(), LinkError> {
        // OpenAMP's driver posts a transmit descriptor with the whole buffer's size, not the
        // message's (the header's len says how much is message).
        let whole = self.inner.tx_buffer_size().unwrap_or(len).max(len);
        self.inner.send_tx(buf, whole)
    }

    fn release_tx(&mut self, buf: Buffer) {
        self.inner.release_tx(buf)
    }

    fn take_rx(&mut self) -> Result<Option<Buffer>, LinkError> {
        self.inner.take_rx()
    }

    fn release_rx(&mut self, buf: Buffer) -> Result<(), LinkError> {
        self.inner.release_rx(buf)
    }

    fn flush(&mut self) -> Result<(), LinkError> {
        self.inner.flush()
    }

    fn want_tx_notifications(&mut self, on: bool) -> Result<bool, LinkError> {
        self.inner.want_tx_notifications(on)
    }

    fn environment(&mut self) -> &mut dyn Environment {
        self.inner.environment()
    }

    fn busy_poll(&self) -> bool {
        self.inner.busy_poll()
    }
}
