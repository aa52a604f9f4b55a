//! The virtio facts of an rpmsg device, defined once: its device ID, its two queues, the
//! feature bits vamp negotiates and the device status bits.
//!
//! Every side imports them from here: the engine, the hub (vhost-user backend), the native
//! frontend, the remoteproc host, the native link and the firmware. Feature bits are 64-bit
//! masks, as virtio 1.x negotiates them; a resource table's vdev entry carries only the low 32
//! bits (`dfeatures`, `gfeatures`), so code reading one widens the word with `u64::from`.

/// virtio device ID of an rpmsg device.
pub const VIRTIO_ID_RPMSG: u32 = 7;

/// An rpmsg device has two queues: [`RX_QUEUE`] and [`TX_QUEUE`].
pub const NUM_QUEUES: usize = 2;
/// vq 0: the queue the driver receives on (the device transmits on).
pub const RX_QUEUE: u16 = 0;
/// vq 1: the queue the driver transmits on (the device receives on).
pub const TX_QUEUE: u16 = 1;

/// Feature bit 0: the rpmsg name service (the only rpmsg-specific feature).
pub const VIRTIO_RPMSG_F_NS: u64 = 1 << 0;
/// Feature bit 29: event-index notification suppression (the split ring's event indices, the
/// packed ring's descriptor mode of its event structures).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Feature bit 32: virtio 1.x (little-endian rings and fields).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit 34: packed virtqueues (virtio 1.1) instead of split ones.
pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;

/// Device status bit: the driver noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 0x01;
/// Device status bit: the driver knows how to drive the device.
pub const STATUS_DRIVER: u8 = 0x02;
/// Device status bit: the driver is ready; a device waits for it before it uses the rings.
pub const STATUS_DRIVER_OK: u8 = 0x04;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 0x08;
/// Device status bit (DEVICE_NEEDS_RESET): the device hit an error it cannot recover from and
/// the driver must reset it. The device sets it; a driver never does.
pub const STATUS_NEEDS_RESET: u8 = 0x40;
/// Device status bit: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;
/// The status of a device whose driver finished bring-up: every step up to DRIVER_OK.
pub const STATUS_STARTED: u8 =
    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
