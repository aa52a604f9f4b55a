//! The vamp platform entry: a vendor resource-table entry through which the host tells a
//! firmware how to wait for work and which ring format to use, and the firmware shows a sign of
//! life while it busy-polls.
//!
//! One definition for both sides: vamp's firmware (`images/`) and the native link's remote
//! (`crate::native`) declare the entry and read the host's words; `remoteproc-vm`'s KVM backend
//! and the native link's host check what the remote declared and write them. The entry is
//! `[type = RSC_VAMP_PLATFORM][body]`; the body, in little-endian u32 words:
//!
//! | offset | written by | meaning |
//! | --- | --- | --- |
//! | [`MAGIC_AT`] (0) | firmware | [`MAGIC`] ("vamp") |
//! | [`VERSION_AT`] (4) | firmware | [`VERSION`] |
//! | [`FEATURES_AT`] (8) | firmware | features: [`F_BUSY_POLL`], [`F_WAIT_SPIN`], [`F_PACKED_RING`] |
//! | [`MODE_AT`] (12) | host | mode: [`MODE_BUSY_POLL`] (else notify), [`MODE_PACKED_RING`] (else split) |
//! | [`SPIN_US_AT`] (16) | host | spin window before a wait, microseconds |
//! | [`TSC_KHZ_AT`] (20) | host | TSC frequency in kHz (0: unknown), the firmware's clock |
//! | [`HEARTBEAT_AT`] (24) | firmware | heartbeat, counted up while it polls |
//! | 28 | - | reserved, 0 |
//!
//! Packed rings: the vdev entry's feature words are 32 bits wide, so VIRTIO_F_RING_PACKED (bit
//! 34) cannot be negotiated there. A remote that can run packed virtqueues declares
//! [`F_PACKED_RING`]; a host that wants them, and sees it declared, sets [`MODE_PACKED_RING`]
//! before DRIVER_OK, and both sides then lay packed rings in the vrings' areas (the descriptor
//! ring where the split descriptor table is, the driver and device event structures where the
//! available and used rings start: see `PackedLayout::in_areas_of`). The remote reads the mode
//! once it sees DRIVER_OK. A peer without the entry (OpenAMP, older vamp) gets split rings.
//!
//! Compatibility: version 1 grows by new bits in the feature and mode words only; a side that
//! does not know a bit leaves it 0 (the host sets a mode bit only for a feature the remote
//! declared), so the version changes only when the layout does.
//!
//! Everything the firmware writes is untrusted: the host reads the magic, version and features
//! once and the heartbeat only to compare it with its last value.
//!
//! Beside the entry, the platform's I/O ports: the firmware writes to them (`out`), and the
//! host's KVM backend turns each write into an event. Anything else the firmware does to leave
//! its RAM stops the VM.

/// Port the firmware writes a notify id to (out u32): the ring with this notify id has news.
/// The host serves it with an ioeventfd.
pub const KICK_PORT: u16 = 0x500;
/// Port the firmware writes to (out u32) when it has nothing to do: sleep until the host
/// notifies it (or a short timeout).
pub const WAIT_PORT: u16 = 0x504;
/// Console output port: one byte per write (out u8).
pub const CONSOLE_PORT: u16 = 0x508;
/// Exit port: the firmware stops with the exit code it writes (out u32).
pub const EXIT_PORT: u16 = 0x50c;

/// The same four operations on an arm64 host, where the firmware has no I/O ports: 32-bit
/// stores to an MMIO window right above the largest RAM a remote gets (1 GiB), in the order
/// and spacing of the ports. The host serves the kick with an ioeventfd; any other access in
/// the window stops the VM.
pub const AARCH64_MMIO_BASE: u64 = 1 << 30;
/// arm64: the firmware stores a notify id here (the x86 [`KICK_PORT`]).
pub const AARCH64_KICK_MMIO: u64 = AARCH64_MMIO_BASE;
/// arm64: the firmware stores here when it has nothing to do (the x86 [`WAIT_PORT`]).
pub const AARCH64_WAIT_MMIO: u64 = AARCH64_MMIO_BASE + 0x4;
/// arm64: console output, the low byte of a store (the x86 [`CONSOLE_PORT`]).
pub const AARCH64_CONSOLE_MMIO: u64 = AARCH64_MMIO_BASE + 0x8;
/// arm64: the stored value is the exit code (the x86 [`EXIT_PORT`]).
pub const AARCH64_EXIT_MMIO: u64 = AARCH64_MMIO_BASE + 0xc;

/// Resource entry type: the first vendor type (Linux's `RSC_VENDOR_START`).
pub const RSC_VAMP_PLATFORM: u32 = 128;
/// Bytes of the body (after the type word).
pub const BODY_LEN: usize = 32;
/// First word of the body: "vamp".
pub const MAGIC: u32 = u32::from_le_bytes(*b"vamp");
/// The layout version.
pub const VERSION: u32 = 1;
/// Feature: the firmware can busy-poll.
pub const F_BUSY_POLL: u32 = 1 << 0;
/// Feature: the firmware polls for the host's spin window before it waits.
pub const F_WAIT_SPIN: u32 = 1 << 1;
/// Feature: the remote can run packed virtqueues ([`MODE_PACKED_RING`]).
pub const F_PACKED_RING: u32 = 1 << 2;
/// Mode: busy-poll (no waits, no kicks).
pub const MODE_BUSY_POLL: u32 = 1 << 0;
/// Mode: both rings are packed virtqueues (the host sets it only if the remote declared
/// [`F_PACKED_RING`], before DRIVER_OK).
pub const MODE_PACKED_RING: u32 = 1 << 1;

/// Byte offset of the magic word in the body.
pub const MAGIC_AT: usize = 0;
/// Byte offset of the version.
pub const VERSION_AT: usize = 4;
/// Byte offset of the firmware's features.
pub const FEATURES_AT: usize = 8;
/// Byte offset of the host's mode.
pub const MODE_AT: usize = 12;
/// Byte offset of the host's spin window (microseconds).
pub const SPIN_US_AT: usize = 16;
/// Byte offset of the host's TSC frequency (kHz).
pub const TSC_KHZ_AT: usize = 20;
/// Byte offset of the firmware's heartbeat.
pub const HEARTBEAT_AT: usize = 24;
