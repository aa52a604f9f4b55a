//! The remoteproc resource table: what a remote processor's firmware asks of its host.
//!
//! Layout (every multi-byte field a packed `u32` in the link's [`Endian`]):
//!
//! ```text
//! header:  ver (= 1) | num | reserved[2] | offset[num]        16 + 4 * num bytes
//! entry:   type | body                                        at offset[i], from the table start
//!   carveout / devmem (type 0 / 1): da pa len flags reserved name[32]          56 bytes
//!   trace (type 2):                 da len reserved name[32]                   48 bytes
//!   vdev (type 3):  id notifyid dfeatures gfeatures config_len
//!                   u8 status, u8 num_of_vrings, u8 reserved[2]                28 bytes
//!                   then num_of_vrings x { da align num notifyid reserved }    20 bytes each
//!                   then config_len bytes of virtio config space
//!   vendor (type 128..=512):        body of a length only the vendor knows
//! ```
//!
//! [`ResourceTable`] is a checked view over a whole table, [`Resource`] one entry, and
//! [`ResourceTableBuilder`] writes a table into a caller's buffer.
//!
//! The peer may rewrite a table that lives in shared memory at any time, so copy it into a local
//! buffer first, parse and edit that copy, then copy back the first
//! [`table_len`](ResourceTable::table_len) bytes.
//!
//! Compatibility notes, from Linux `drivers/remoteproc` and OpenAMP `lib/remoteproc`:
//! - Both check the version and that the offset array fits; for each entry they need its type
//!   word to fit, and for a vdev its vrings and config space. Both reject nonzero header
//!   `reserved` words; this parser tolerates them (see [`ResourceTable::reserved`]).
//! - Both treat `128..=512` (inclusive) as the vendor range. Linux skips other unknown types
//!   with a warning; OpenAMP knows two more (4 `RSC_RPROC_MEM`, 5 `RSC_FW_CHKSUM`) that Linux
//!   does not. Here they are all [`Resource::Unknown`]; [`ResourceTable::validate_known`]
//!   refuses them.
//! - OpenAMP's vendor entries carry their total length in the word after the type; Linux hands
//!   its vendor hook everything up to the end of the table. [`Resource::Vendor`] gives the bytes
//!   up to the next entry (or the end of the buffer) and leaves the interpretation to the caller.
//! - The fifth word of a vring entry is `reserved` in OpenAMP and `pa` in newer Linux headers.

use core::fmt;
use core::iter::FusedIterator;

use super::view::{Field, Word, until_nul};
use super::{Endian, WireError, check_len};

/// Resource type: a physically contiguous memory region the host must allocate or map.
pub const RSC_CARVEOUT: u32 = 0;
/// Resource type: a memory-mapped peripheral the host must map into the remote's IOMMU.
pub const RSC_DEVMEM: u32 = 1;
/// Resource type: a trace (log) buffer the remote writes.
pub const RSC_TRACE: u32 = 2;
/// Resource type: a virtio device header (for rpmsg:
/// [`VIRTIO_ID_RPMSG`](crate::virtio::VIRTIO_ID_RPMSG)).
pub const RSC_VDEV: u32 = 3;
/// First vendor-specific resource type.
pub const RSC_VENDOR_START: u32 = 128;
/// Last vendor-specific resource type (inclusive, as Linux and OpenAMP test it).
pub const RSC_VENDOR_END: u32 = 512;

/// Address meaning "the host chooses" in `da`/`pa` fields; the host writes back what it chose.
pub const FW_RSC_ADDR_ANY: u32 = 0xFFFF_FFFF;
/// Bytes in the `name` field of carveout, devmem and trace entries.
pub const RSC_NAME_LEN: usize = 32;
/// The only resource table version there is.
pub const RSC_TABLE_VERSION: u32 = 1;

/// Bytes in the table header before the offset array (`ver`, `num`, `reserved[2]`).
pub const TABLE_HEADER_LEN: usize = 16;
/// Bytes in the `type` word that starts every entry.
pub const ENTRY_HEADER_LEN: usize = 4;
/// Bytes in a carveout entry, `type` included.
pub const CARVEOUT_LEN: usize = 56;
/// Bytes in a devmem entry, `type` included.
pub const DEVMEM_LEN: usize = 56;
/// Bytes in a trace entry, `type` included.
pub const TRACE_LEN: usize = 48;
/// Bytes in the fixed part of a vdev entry, `type` included (vrings and config follow).
pub const VDEV_LEN: usize = 28;
/// Bytes in one vring entry of a vdev.
pub const VRING_ENTRY_LEN: usize = 20;

/// Byte offset of a vdev's `gfeatures` from its `type` word. The host writes this field, a
/// vdev's `status` and an allocated trace buffer's `da` into the remote's own table after it
/// read a copy: by address in remote memory, not through a view, hence these three offsets.
pub const VDEV_GFEATURES_AT: usize = field::VDEV_GFEATURES.offset();
/// Byte offset of a vdev's `status` from its `type` word.
pub const VDEV_STATUS_AT: usize = field::VDEV_STATUS.offset();
/// Byte offset of a trace entry's `da` from its `type` word.
pub const TRACE_DA_AT: usize = field::TRACE_DA.offset();

/// Most bytes of a name the builder writes: one less than the field, so a NUL always ends it.
pub const RSC_NAME_MAX: usize = RSC_NAME_LEN - 1;

/// Whether `rtype` lies in the vendor range `128..=512`.
pub const fn is_vendor_type(rtype: u32) -> bool {
    rtype >= RSC_VENDOR_START && rtype <= RSC_VENDOR_END
}

/// Whether `rtype` is one of the four standard types (carveout, devmem, trace, vdev).
pub const fn is_standard_type(rtype: u32) -> bool {
    rtype <= RSC_VDEV
}

mod field {
    use super::Field;

    // Table header.
    pub const VER: Field<u32> = Field::at(0);
    pub const NUM: Field<u32> = Field::at(4);
    pub const RESERVED: [Field<u32>; 2] = [Field::at(8), Field::at(12)];
    pub const OFFSETS: usize = 16;
    // Every entry.
    pub const TYPE: Field<u32> = Field::at(0);
    // Carveout and devmem.
    pub const MEM_DA: Field<u32> = Field::at(4);
    pub const MEM_PA: Field<u32> = Field::at(8);
    pub const MEM_LEN: Field<u32> = Field::at(12);
    pub const MEM_FLAGS: Field<u32> = Field::at(16);
    pub const MEM_RESERVED: Field<u32> = Field::at(20);
    pub const MEM_NAME: usize = 24;
    // Trace.
    pub const TRACE_DA: Field<u32> = Field::at(4);
    pub const TRACE_LEN: Field<u32> = Field::at(8);
    pub const TRACE_RESERVED: Field<u32> = Field::at(12);
    pub const TRACE_NAME: usize = 16;
    // Vdev.
    pub const VDEV_ID: Field<u32> = Field::at(4);
    pub const VDEV_NOTIFYID: Field<u32> = Field::at(8);
    pub const VDEV_DFEATURES: Field<u32> = Field::at(12);
    pub const VDEV_GFEATURES: Field<u32> = Field::at(16);
    pub const VDEV_CONFIG_LEN: Field<u32> = Field::at(20);
    pub const VDEV_STATUS: Field<u8> = Field::at(24);
    pub const VDEV_NUM_VRINGS: Field<u8> = Field::at(25);
    pub const VDEV_RESERVED: [Field<u8>; 2] = [Field::at(26), Field::at(27)];
    pub const VDEV_VRINGS: usize = 28;
    // Vring entry, relative to its start.
    pub const VRING_DA: Field<u32> = Field::at(0);
    pub const VRING_ALIGN: Field<u32> = Field::at(4);
    pub const VRING_NUM: Field<u32> = Field::at(8);
    pub const VRING_NOTIFYID: Field<u32> = Field::at(12);
    pub const VRING_RESERVED: Field<u32> = Field::at(16);
}

// Fields are read and written through `Field`, which never panics: bytes that are missing
// read as 0 and writes to them are dropped. Checked views never reach those cases.

/// The name at `at`: its bytes up to the first NUL, at most [`RSC_NAME_LEN`].
fn name_at(buf: &[u8], at: usize) -> &[u8] {
    let rest = buf.get(at..).unwrap_or(&[]);
    until_nul(rest.get(..RSC_NAME_LEN).unwrap_or(rest))
}

fn to_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Slot `i` of the table's offset array, unless its offset overflows.
fn offset_slot(i: usize) -> Option<Field<u32>> {
    Some(Field::at(i.checked_mul(4)?.checked_add(field::OFFSETS)?))
}

/// Checks that an entry's bytes hold `len` bytes and that its `type` word is `rtype`; fails
/// with `Malformed(not)` if the type is another.
fn check_entry(
    buf: &[u8],
    endian: Endian,
    len: usize,
    rtype: u32,
    not: &'static str,
) -> Result<(), WireError> {
    check_len(buf, len)?;
    if field::TYPE.get(buf, endian) != rtype {
        return Err(WireError::Malformed(not));
    }
    Ok(())
}

/// Checks that `end` (computed in u64 so it cannot overflow) lies within `available` bytes.
fn end_within(available: usize, end: u64) -> Result<usize, WireError> {
    match usize::try_from(end) {
        Ok(e) if e <= available => Ok(e),
        Ok(e) => Err(WireError::Truncated {
            needed: e,
            available,
        }),
        Err(_) => Err(WireError::Truncated {
            needed: usize::MAX,
            available,
        }),
    }
}

/// Bytes a vdev entry covers, from its `type` word to the end of its config space.
fn vdev_extent(num_of_vrings: u8, config_len: u32) -> u64 {
    VDEV_LEN as u64 + u64::from(num_of_vrings) * VRING_ENTRY_LEN as u64 + u64::from(config_len)
}

/// Shows a name as text when it is UTF-8, as bytes otherwise.
struct NameDebug<'a>(&'a [u8]);

impl fmt::Debug for NameDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match core::str::from_utf8(self.0) {
            Ok(s) => fmt::Debug::fmt(s, f),
            Err(_) => fmt::Debug::fmt(self.0, f),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Carveout, devmem and trace

/// A memory entry: a carveout ([`RSC_CARVEOUT`]) or a devmem ([`RSC_DEVMEM`]), the two
/// entries that share one layout, `type, da, pa, len, flags, reserved, name[32]`. `RTYPE` is
/// the type the entry must have, one of the two (anything else does not compile); use it
/// through [`Carveout`] and [`Devmem`].
///
/// ```compile_fail
/// # use vamp_rpmsg::wire::{Endian, resource_table::{MemoryEntry, RSC_TRACE}};
/// let trace = MemoryEntry::<&[u8], RSC_TRACE>::new_unchecked(&[], Endian::Little);
/// ```
#[derive(Clone, Copy)]
pub struct MemoryEntry<T: AsRef<[u8]>, const RTYPE: u32> {
    buffer: T,
    endian: Endian,
}

/// A carveout entry ([`RSC_CARVEOUT`]).
///
/// The firmware asks for a contiguous region; with `da` or `pa` set to [`FW_RSC_ADDR_ANY`]
/// the host allocates it and writes the addresses back.
pub type Carveout<T> = MemoryEntry<T, RSC_CARVEOUT>;

/// A devmem entry ([`RSC_DEVMEM`]): the firmware asks the host to map the peripheral at `pa`
/// to `da` in its IOMMU.
pub type Devmem<T> = MemoryEntry<T, RSC_DEVMEM>;

impl<T: AsRef<[u8]>, const RTYPE: u32> MemoryEntry<T, RTYPE> {
    /// Wraps the entry's bytes (starting at its `type` word) without checks. Accessors never
    /// panic: fields past the end of a short buffer read as 0, the name as empty.
    pub const fn new_unchecked(buffer: T, endian: Endian) -> Self {
        const { assert!(RTYPE == RSC_CARVEOUT || RTYPE == RSC_DEVMEM) };
        MemoryEntry { buffer, endian }
    }

    /// Wraps the entry's bytes after [`check`](Self::check).
    pub fn new_checked(buffer: T, endian: Endian) -> Result<Self, WireError> {
        let view = Self::new_unchecked(buffer, endian);
        view.check()?;
        Ok(view)
    }

    /// Gives back the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// What the entry is called in messages and `Debug`.
    const WHAT: &'static str = if RTYPE == RSC_CARVEOUT {
        "Carveout"
    } else {
        "Devmem"
    };

    /// Checks that the buffer holds a whole entry and that its type is `RTYPE`.
    pub fn check(&self) -> Result<(), WireError> {
        let (len, not) = if RTYPE == RSC_CARVEOUT {
            (CARVEOUT_LEN, "resource entry is not a carveout")
        } else {
            (DEVMEM_LEN, "resource entry is not a devmem")
        };
        check_entry(self.buffer.as_ref(), self.endian, len, RTYPE, not)
    }

    /// The entry's `type` word.
    pub fn rtype(&self) -> u32 {
        field::TYPE.get(self.buffer.as_ref(), self.endian)
    }

    /// Device address (as the remote sees the region), or [`FW_RSC_ADDR_ANY`].
    pub fn da(&self) -> u32 {
        field::MEM_DA.get(self.buffer.as_ref(), self.endian)
    }

    /// Physical address, or [`FW_RSC_ADDR_ANY`].
    pub fn pa(&self) -> u32 {
        field::MEM_PA.get(self.buffer.as_ref(), self.endian)
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> u32 {
        field::MEM_LEN.get(self.buffer.as_ref(), self.endian)
    }

    /// Whether the region is empty (`len` is 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// IOMMU protection flags.
    pub fn flags(&self) -> u32 {
        field::MEM_FLAGS.get(self.buffer.as_ref(), self.endian)
    }

    /// Reserved word (firmware writes 0).
    pub fn reserved(&self) -> u32 {
        field::MEM_RESERVED.get(self.buffer.as_ref(), self.endian)
    }

    /// The name: bytes up to the first NUL, never more than [`RSC_NAME_LEN`].
    pub fn name(&self) -> &[u8] {
        name_at(self.buffer.as_ref(), field::MEM_NAME)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>, const RTYPE: u32> MemoryEntry<T, RTYPE> {
    /// Sets the device address (the host does, for a [`FW_RSC_ADDR_ANY`] request).
    pub fn set_da(&mut self, da: u32) {
        field::MEM_DA.set(self.buffer.as_mut(), self.endian, da)
    }

    /// Sets the physical address (the host does, once it allocated the region).
    pub fn set_pa(&mut self, pa: u32) {
        field::MEM_PA.set(self.buffer.as_mut(), self.endian, pa)
    }
}

impl<T: AsRef<[u8]>, const RTYPE: u32> fmt::Debug for MemoryEntry<T, RTYPE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(Self::WHAT)
            .field("da", &format_args!("{:#x}", self.da()))
            .field("pa", &format_args!("{:#x}", self.pa()))
            .field("len", &format_args!("{:#x}", self.len()))
            .field("flags", &format_args!("{:#x}", self.flags()))
            .field("reserved", &self.reserved())
            .field("name", &NameDebug(self.name()))
            .finish()
    }
}

/// A trace entry ([`RSC_TRACE`]): `type, da, len, reserved, name[32]`, a log buffer the
/// remote writes and the host may read.
#[derive(Clone, Copy)]
pub struct Trace<T: AsRef<[u8]>> {
    buffer: T,
    endian: Endian,
}

impl<T: AsRef<[u8]>> Trace<T> {
    /// Wraps the entry's bytes (starting at its `type` word) without checks. Accessors never
    /// panic: fields past the end of a short buffer read as 0, the name as empty.
    pub const fn new_unchecked(buffer: T, endian: Endian) -> Self {
        Trace { buffer, endian }
    }

    /// Wraps the entry's bytes after [`check`](Self::check).
    pub fn new_checked(buffer: T, endian: Endian) -> Result<Self, WireError> {
        let view = Self::new_unchecked(buffer, endian);
        view.check()?;
        Ok(view)
    }

    /// Gives back the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Checks that the buffer holds a whole entry and that its type is [`RSC_TRACE`].
    pub fn check(&self) -> Result<(), WireError> {
        let not = "resource entry is not a trace";
        check_entry(self.buffer.as_ref(), self.endian, TRACE_LEN, RSC_TRACE, not)
    }

    /// The entry's `type` word.
    pub fn rtype(&self) -> u32 {
        field::TYPE.get(self.buffer.as_ref(), self.endian)
    }

    /// The name: bytes up to the first NUL, never more than [`RSC_NAME_LEN`].
    pub fn name(&self) -> &[u8] {
        name_at(self.buffer.as_ref(), field::TRACE_NAME)
    }

    /// Device address of the trace buffer.
    pub fn da(&self) -> u32 {
        field::TRACE_DA.get(self.buffer.as_ref(), self.endian)
    }

    /// Length of the trace buffer in bytes.
    pub fn len(&self) -> u32 {
        field::TRACE_LEN.get(self.buffer.as_ref(), self.endian)
    }

    /// Reserved word (firmware writes 0).
    pub fn reserved(&self) -> u32 {
        field::TRACE_RESERVED.get(self.buffer.as_ref(), self.endian)
    }

    /// Whether the trace buffer is empty (`len` is 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: AsRef<[u8]>> fmt::Debug for Trace<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace")
            .field("da", &format_args!("{:#x}", self.da()))
            .field("len", &format_args!("{:#x}", self.len()))
            .field("reserved", &self.reserved())
            .field("name", &NameDebug(self.name()))
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Vdev

/// One vring of a vdev entry, as read from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VdevVring {
    /// Device address of the ring, or [`FW_RSC_ADDR_ANY`] for the host to allocate.
    pub da: u32,
    /// Alignment of the used ring within the vring (e.g. 0x1000).
    pub align: u32,
    /// Number of descriptors (a power of two).
    pub num: u32,
    /// Notify id the host and remote use to kick this ring.
    pub notifyid: u32,
    /// Fifth word: reserved in OpenAMP, `pa` in newer Linux.
    pub reserved: u32,
}

/// A vring for [`ResourceTableBuilder::add_vdev`]; the fifth word is written as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VdevVringSpec {
    /// Device address of the ring, or [`FW_RSC_ADDR_ANY`] for the host to allocate.
    pub da: u32,
    /// Alignment of the used ring within the vring (e.g. 0x1000).
    pub align: u32,
    /// Number of descriptors (a power of two).
    pub num: u32,
    /// Notify id used to kick this ring.
    pub notifyid: u32,
}

/// A vdev entry ([`RSC_VDEV`]): the virtio header of a device shared with the remote.
///
/// `type, id, notifyid, dfeatures, gfeatures, config_len, u8 status, u8 num_of_vrings,
/// u8 reserved[2]`, then `num_of_vrings` [vring entries](VdevVring), then `config_len`
/// bytes of config space. The host writes `gfeatures` (negotiated features), `status` and
/// any vring or notify id it allocates.
#[derive(Clone, Copy)]
pub struct Vdev<T: AsRef<[u8]>> {
    buffer: T,
    endian: Endian,
}

impl<T: AsRef<[u8]>> Vdev<T> {
    /// Wraps the entry's bytes (starting at its `type` word) without checks. Accessors never
    /// panic: fields past the end of a short buffer read as 0, vrings past it are absent and
    /// the config space is cut short.
    pub const fn new_unchecked(buffer: T, endian: Endian) -> Self {
        Vdev { buffer, endian }
    }

    /// Wraps the entry's bytes after [`check`](Self::check).
    pub fn new_checked(buffer: T, endian: Endian) -> Result<Self, WireError> {
        let view = Self::new_unchecked(buffer, endian);
        view.check()?;
        Ok(view)
    }

    /// Gives back the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Checks that the type is [`RSC_VDEV`] and that the buffer holds the fixed part, every
    /// vring and the whole config space.
    pub fn check(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        check_entry(
            buf,
            self.endian,
            VDEV_LEN,
            RSC_VDEV,
            "resource entry is not a vdev",
        )?;
        end_within(
            buf.len(),
            vdev_extent(self.num_of_vrings(), self.config_len()),
        )?;
        Ok(())
    }

    /// The entry's `type` word.
    pub fn rtype(&self) -> u32 {
        field::TYPE.get(self.buffer.as_ref(), self.endian)
    }

    /// Virtio device id ([`VIRTIO_ID_RPMSG`](crate::virtio::VIRTIO_ID_RPMSG) for rpmsg).
    pub fn id(&self) -> u32 {
        field::VDEV_ID.get(self.buffer.as_ref(), self.endian)
    }

    /// Notify id for status and feature changes of the whole device.
    pub fn notifyid(&self) -> u32 {
        field::VDEV_NOTIFYID.get(self.buffer.as_ref(), self.endian)
    }

    /// Device features the firmware offers (for rpmsg, bit 0 is `VIRTIO_RPMSG_F_NS`).
    pub fn dfeatures(&self) -> u32 {
        field::VDEV_DFEATURES.get(self.buffer.as_ref(), self.endian)
    }

    /// Features the host accepted (written by the host).
    pub fn gfeatures(&self) -> u32 {
        field::VDEV_GFEATURES.get(self.buffer.as_ref(), self.endian)
    }

    /// Length of the config space that follows the vrings.
    pub fn config_len(&self) -> u32 {
        field::VDEV_CONFIG_LEN.get(self.buffer.as_ref(), self.endian)
    }

    /// Virtio status (the `STATUS_*` bits of [`crate::virtio`], written by the host).
    pub fn status(&self) -> u8 {
        field::VDEV_STATUS.get(self.buffer.as_ref(), self.endian)
    }

    /// Number of vring entries that follow the fixed part.
    pub fn num_of_vrings(&self) -> u8 {
        field::VDEV_NUM_VRINGS.get(self.buffer.as_ref(), self.endian)
    }

    /// The two reserved bytes (firmware writes 0).
    pub fn reserved(&self) -> [u8; 2] {
        field::VDEV_RESERVED.map(|f| f.get(self.buffer.as_ref(), self.endian))
    }

    /// Where vring `i` starts, if `i < num_of_vrings` and the buffer holds it.
    fn vring_start(&self, i: usize) -> Result<usize, WireError> {
        if i >= usize::from(self.num_of_vrings()) {
            return Err(WireError::Malformed("vring index out of range"));
        }
        // i < 256, so this cannot overflow.
        let start = field::VDEV_VRINGS + i * VRING_ENTRY_LEN;
        check_len(self.buffer.as_ref(), start + VRING_ENTRY_LEN)?;
        Ok(start)
    }

    /// Vring `i`, or `None` if `i >= num_of_vrings` (or the buffer is cut short).
    pub fn vring(&self, i: usize) -> Option<VdevVring> {
        let at = self.vring_start(i).ok()?;
        let word = |f: Field<u32>| f.shifted(at).get(self.buffer.as_ref(), self.endian);
        Some(VdevVring {
            da: word(field::VRING_DA),
            align: word(field::VRING_ALIGN),
            num: word(field::VRING_NUM),
            notifyid: word(field::VRING_NOTIFYID),
            reserved: word(field::VRING_RESERVED),
        })
    }

    /// All vrings, in order.
    pub fn vrings(&self) -> impl Iterator<Item = VdevVring> {
        (0..usize::from(self.num_of_vrings())).map_while(|i| self.vring(i))
    }

    /// Byte range of the config space, cut to the buffer.
    fn config_range(&self) -> core::ops::Range<usize> {
        let len = self.buffer.as_ref().len();
        let start = field::VDEV_VRINGS + usize::from(self.num_of_vrings()) * VRING_ENTRY_LEN;
        let end = usize::try_from(vdev_extent(self.num_of_vrings(), self.config_len()))
            .unwrap_or(usize::MAX);
        start.min(len)..end.min(len)
    }

    /// The virtio config space: `config_len` bytes after the vrings.
    pub fn config(&self) -> &[u8] {
        self.buffer.as_ref().get(self.config_range()).unwrap_or(&[])
    }

    /// Bytes the entry covers: fixed part, vrings and config space.
    pub fn entry_len(&self) -> usize {
        usize::try_from(vdev_extent(self.num_of_vrings(), self.config_len())).unwrap_or(usize::MAX)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Vdev<T> {
    /// Sets the device's notify id.
    pub fn set_notifyid(&mut self, notifyid: u32) {
        field::VDEV_NOTIFYID.set(self.buffer.as_mut(), self.endian, notifyid)
    }

    /// Sets the negotiated features (the host's side of feature negotiation).
    pub fn set_gfeatures(&mut self, gfeatures: u32) {
        field::VDEV_GFEATURES.set(self.buffer.as_mut(), self.endian, gfeatures)
    }

    /// Sets the virtio status byte.
    pub fn set_status(&mut self, status: u8) {
        field::VDEV_STATUS.set(self.buffer.as_mut(), self.endian, status)
    }

    /// Writes `word` of vring `i`. Fails if there is no vring `i`.
    fn set_vring_word(&mut self, i: usize, word: Field<u32>, v: u32) -> Result<(), WireError> {
        let at = self.vring_start(i)?;
        word.shifted(at).set(self.buffer.as_mut(), self.endian, v);
        Ok(())
    }

    /// Sets the device address of vring `i`. Fails if there is no vring `i`.
    pub fn set_vring_da(&mut self, i: usize, da: u32) -> Result<(), WireError> {
        self.set_vring_word(i, field::VRING_DA, da)
    }

    /// Sets the notify id of vring `i`. Fails if there is no vring `i`.
    pub fn set_vring_notifyid(&mut self, i: usize, notifyid: u32) -> Result<(), WireError> {
        self.set_vring_word(i, field::VRING_NOTIFYID, notifyid)
    }

    /// The config space, writable.
    pub fn config_mut(&mut self) -> &mut [u8] {
        let range = self.config_range();
        self.buffer.as_mut().get_mut(range).unwrap_or(&mut [])
    }
}

impl<T: AsRef<[u8]>> fmt::Debug for Vdev<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Vrings<'a, T: AsRef<[u8]>>(&'a Vdev<T>);
        impl<T: AsRef<[u8]>> fmt::Debug for Vrings<'_, T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list().entries(self.0.vrings()).finish()
            }
        }
        f.debug_struct("Vdev")
            .field("id", &self.id())
            .field("notifyid", &self.notifyid())
            .field("dfeatures", &format_args!("{:#x}", self.dfeatures()))
            .field("gfeatures", &format_args!("{:#x}", self.gfeatures()))
            .field("config_len", &self.config_len())
            .field("status", &format_args!("{:#x}", self.status()))
            .field("num_of_vrings", &self.num_of_vrings())
            .field("reserved", &self.reserved())
            .field("vrings", &Vrings(self))
            .field("config", &self.config())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Resource

/// One entry of a resource table, as returned by [`ResourceTable::entry`] (`T = &[u8]`) and
/// [`ResourceTable::entry_mut`] (`T = &mut [u8]`).
///
/// The standard entries are views over the entry's bytes, starting at its `type` word.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum Resource<T: AsRef<[u8]>> {
    /// A carveout ([`RSC_CARVEOUT`]).
    Carveout(Carveout<T>),
    /// A devmem ([`RSC_DEVMEM`]).
    Devmem(Devmem<T>),
    /// A trace buffer ([`RSC_TRACE`]).
    Trace(Trace<T>),
    /// A virtio device ([`RSC_VDEV`]).
    Vdev(Vdev<T>),
    /// A vendor entry (type `128..=512`). Its length is the vendor's business, so `body` is
    /// everything after the `type` word up to the next entry's offset (the smallest one above
    /// this entry's), or to the end of the buffer if no entry follows. It may include padding.
    Vendor {
        /// The `type` word.
        rtype: u32,
        /// Offset of the entry (of its `type` word) from the start of the table.
        offset: usize,
        /// The bytes after the `type` word.
        body: T,
    },
    /// A type neither standard nor vendor (4..=127 or above 512). Linux skips these with a
    /// warning; [`ResourceTable::validate_known`] refuses them.
    Unknown {
        /// The `type` word.
        rtype: u32,
        /// Offset of the entry (of its `type` word) from the start of the table.
        offset: usize,
    },
}

impl<T: AsRef<[u8]>> Resource<T> {
    /// The entry's `type` word.
    pub fn rtype(&self) -> u32 {
        match self {
            Resource::Carveout(_) => RSC_CARVEOUT,
            Resource::Devmem(_) => RSC_DEVMEM,
            Resource::Trace(_) => RSC_TRACE,
            Resource::Vdev(_) => RSC_VDEV,
            Resource::Vendor { rtype, .. } | Resource::Unknown { rtype, .. } => *rtype,
        }
    }

    fn from_span(span: Span, bytes: T, endian: Endian) -> Self {
        match span.rtype {
            RSC_CARVEOUT => Resource::Carveout(Carveout::new_unchecked(bytes, endian)),
            RSC_DEVMEM => Resource::Devmem(Devmem::new_unchecked(bytes, endian)),
            RSC_TRACE => Resource::Trace(Trace::new_unchecked(bytes, endian)),
            RSC_VDEV => Resource::Vdev(Vdev::new_unchecked(bytes, endian)),
            rtype if is_vendor_type(rtype) => Resource::Vendor {
                rtype,
                offset: span.start,
                body: bytes,
            },
            rtype => Resource::Unknown {
                rtype,
                offset: span.start,
            },
        }
    }
}

impl<T: AsRef<[u8]>> fmt::Debug for Resource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Carveout(c) => f.debug_tuple("Carveout").field(c).finish(),
            Resource::Devmem(d) => f.debug_tuple("Devmem").field(d).finish(),
            Resource::Trace(t) => f.debug_tuple("Trace").field(t).finish(),
            Resource::Vdev(v) => f.debug_tuple("Vdev").field(v).finish(),
            Resource::Vendor {
                rtype,
                offset,
                body,
            } => f
                .debug_struct("Vendor")
                .field("rtype", rtype)
                .field("offset", offset)
                .field("body", &body.as_ref())
                .finish(),
            Resource::Unknown { rtype, offset } => f
                .debug_struct("Unknown")
                .field("rtype", rtype)
                .field("offset", offset)
                .finish(),
        }
    }
}

/// Where an entry lies in the table.
#[derive(Debug, Clone, Copy)]
struct Span {
    rtype: u32,
    start: usize,
    end: usize,
}

impl Span {
    /// The bytes [`Resource`] wraps: the whole entry, or a vendor entry's body.
    fn view_range(&self) -> core::ops::Range<usize> {
        if is_vendor_type(self.rtype) {
            self.start.saturating_add(ENTRY_HEADER_LEN)..self.end
        } else {
            self.start..self.end
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ResourceTable

/// A view of a whole resource table: header, offset array and entries.
///
/// Once [`new_checked`](Self::new_checked) succeeded every [`entry`](Self::entry) is `Ok`.
/// All methods are panic-free whatever the bytes, even on a view made with
/// [`new_unchecked`](Self::new_unchecked): header fields of a buffer too short to hold them
/// read as 0 and entries that do not fit give an error.
///
/// ```
/// use vamp_rpmsg::wire::Endian;
/// use vamp_rpmsg::wire::resource_table::{
///     FW_RSC_ADDR_ANY, Resource, ResourceTable, ResourceTableBuilder, VdevVringSpec,
/// };
///
/// // A table with one rpmsg vdev (virtio ID 7, name service offered) and two rings.
/// let mut buf = [0u8; 256];
/// let mut builder = ResourceTableBuilder::new(&mut buf, Endian::Little, 1).unwrap();
/// let ring = |notifyid| VdevVringSpec { da: FW_RSC_ADDR_ANY, align: 0x1000, num: 256, notifyid };
/// builder.add_vdev(7, 0, 1, &[], &[ring(0), ring(1)]).unwrap();
/// let len = builder.finish().unwrap();
///
/// let table = ResourceTable::new_checked(&buf[..len], Endian::Little).unwrap();
/// assert_eq!(table.num_entries(), 1);
/// match table.entry(0).unwrap() {
///     Resource::Vdev(vdev) => assert_eq!((vdev.id(), vdev.num_of_vrings()), (7, 2)),
///     _ => panic!("not a vdev"),
/// }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ResourceTable<T: AsRef<[u8]>> {
    buffer: T,
    endian: Endian,
}

impl<T: AsRef<[u8]>> ResourceTable<T> {
    /// Wraps `buffer` without checks.
    pub const fn new_unchecked(buffer: T, endian: Endian) -> Self {
        ResourceTable { buffer, endian }
    }

    /// Wraps `buffer` after [`check`](Self::check).
    pub fn new_checked(buffer: T, endian: Endian) -> Result<Self, WireError> {
        let view = Self::new_unchecked(buffer, endian);
        view.check()?;
        Ok(view)
    }

    /// Gives back the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Validates the table:
    /// - the 16-byte header is there and `ver` is 1 (nonzero `reserved` words are tolerated);
    /// - the `num` offsets fit in the buffer;
    /// - no entry starts inside the header or offset array;
    /// - every entry's `type` word and fixed-size body fit, and for a vdev its vrings and
    ///   config space.
    ///
    /// Entries of unknown type pass (see [`validate_known`](Self::validate_known)); overlapping
    /// entries and unaligned offsets pass too, as they do in Linux and OpenAMP.
    pub fn check(&self) -> Result<(), WireError> {
        self.layout().map(|_| ())
    }

    /// Like [`check`](Self::check), and also refuses entries of unknown type (neither
    /// standard nor vendor).
    pub fn validate_known(&self) -> Result<(), WireError> {
        self.check()?;
        for entry in self.entries() {
            if let Resource::Unknown { .. } = entry? {
                return Err(WireError::Malformed("resource entry of unknown type"));
            }
        }
        Ok(())
    }

    /// The byte order the table is read in.
    pub fn endian(&self) -> Endian {
        self.endian
    }

    /// The `ver` field (1 in a valid table).
    pub fn version(&self) -> u32 {
        field::VER.get(self.buffer.as_ref(), self.endian)
    }

    /// The `num` field: how many entries the offset array lists.
    pub fn num_entries(&self) -> usize {
        to_usize(field::NUM.get(self.buffer.as_ref(), self.endian))
    }

    /// The two reserved header words (firmware writes 0; Linux and OpenAMP refuse a table
    /// where they are not, this parser does not).
    pub fn reserved(&self) -> [u32; 2] {
        field::RESERVED.map(|f| f.get(self.buffer.as_ref(), self.endian))
    }

    /// Offset of entry `i` from the start of the table, or `None` if `i >= num` or the
    /// buffer does not hold that slot of the offset array.
    pub fn offset(&self, i: usize) -> Option<usize> {
        if i >= self.num_entries() {
            return None;
        }
        offset_slot(i)?
            .read(self.buffer.as_ref(), self.endian)
            .map(to_usize)
    }

    /// End of the offset array, checked against the buffer.
    fn header_end(&self) -> Result<usize, WireError> {
        let buf = self.buffer.as_ref();
        check_len(buf, TABLE_HEADER_LEN)?;
        let num = u64::from(field::NUM.get(buf, self.endian));
        // At most 16 + 4 * (2^32 - 1): no overflow in u64.
        end_within(buf.len(), TABLE_HEADER_LEN as u64 + 4 * num)
    }

    /// Locates entry `i`. `header_end` comes from [`header_end`](Self::header_end). A vendor
    /// entry's end is resolved (a scan of all offsets) only if `resolve_vendor`; otherwise it
    /// ends after its `type` word.
    fn span(&self, i: usize, header_end: usize, resolve_vendor: bool) -> Result<Span, WireError> {
        let buf = self.buffer.as_ref();
        let start = self
            .offset(i)
            .ok_or(WireError::Malformed("resource entry index out of range"))?;
        if start < header_end {
            return Err(WireError::Malformed(
                "resource entry starts inside the table header",
            ));
        }
        let start64 = start as u64;
        end_within(buf.len(), start64 + ENTRY_HEADER_LEN as u64)?;
        let rtype = field::TYPE.shifted(start).get(buf, self.endian);
        let fixed = match rtype {
            RSC_CARVEOUT => CARVEOUT_LEN,
            RSC_DEVMEM => DEVMEM_LEN,
            RSC_TRACE => TRACE_LEN,
            RSC_VDEV => VDEV_LEN,
            _ => ENTRY_HEADER_LEN,
        };
        let mut end = end_within(buf.len(), start64 + fixed as u64)?;
        let type_end = end;
        if rtype == RSC_VDEV {
            let num_of_vrings = field::VDEV_NUM_VRINGS.shifted(start).get(buf, self.endian);
            let config_len = field::VDEV_CONFIG_LEN.shifted(start).get(buf, self.endian);
            end = end_within(buf.len(), start64 + vdev_extent(num_of_vrings, config_len))?;
        } else if is_vendor_type(rtype) && resolve_vendor {
            // An entry that starts inside this one's type word leaves it an empty body.
            end = self
                .next_offset_after(start)
                .unwrap_or(buf.len())
                .min(buf.len())
                .max(type_end);
        }
        Ok(Span { rtype, start, end })
    }

    /// The smallest entry offset strictly above `start`.
    fn next_offset_after(&self, start: usize) -> Option<usize> {
        (0..self.num_entries())
            .map_while(|j| self.offset(j))
            .filter(|&o| o > start)
            .min()
    }

    /// Checks the whole table and returns its extent.
    fn layout(&self) -> Result<usize, WireError> {
        let len = self.buffer.as_ref().len();
        check_len(self.buffer.as_ref(), TABLE_HEADER_LEN)?;
        if self.version() != RSC_TABLE_VERSION {
            return Err(WireError::Malformed("resource table version is not 1"));
        }
        let header_end = self.header_end()?;
        let mut max_end = header_end;
        let mut max_start = None::<usize>;
        let mut last_vendor_start = None::<usize>;
        for i in 0..self.num_entries() {
            let span = self.span(i, header_end, false)?;
            if is_vendor_type(span.rtype) {
                last_vendor_start = last_vendor_start.max(Some(span.start));
            } else {
                max_end = max_end.max(span.end);
            }
            max_start = max_start.max(Some(span.start));
        }
        // A vendor entry ends at the next entry's offset, which lies within that entry and
        // so within `max_end`, unless no entry follows it: then it runs to the buffer's end.
        if last_vendor_start.is_some() && last_vendor_start >= max_start {
            max_end = len;
        }
        Ok(max_end)
    }

    /// Bytes the table covers: the header, the offset array and every entry (the largest end).
    ///
    /// A vendor entry that no other entry follows runs to the end of the buffer, and so does
    /// this length then. For a table that fails [`check`](Self::check) this is the buffer's
    /// length.
    pub fn table_len(&self) -> usize {
        self.layout().unwrap_or(self.buffer.as_ref().len())
    }

    /// The first [`table_len`](Self::table_len) bytes of the buffer.
    pub fn as_bytes(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        buf.get(..self.table_len()).unwrap_or(buf)
    }

    /// Entry `i`. Fails if `i >= num_entries()` or (for a table that was not checked) the
    /// entry does not fit.
    pub fn entry(&self, i: usize) -> Result<Resource<&[u8]>, WireError> {
        ResourceTable::new_unchecked(self.buffer.as_ref(), self.endian).entry_ref(i)
    }

    /// Iterates over all entries in offset-array order. After an error (only possible on a
    /// table that fails [`check`](Self::check)) the iterator ends.
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            table: ResourceTable::new_unchecked(self.buffer.as_ref(), self.endian),
            next: 0,
            done: false,
        }
    }

    /// Entry `i` as a carveout; fails if it is another type.
    pub fn carveout(&self, i: usize) -> Result<Carveout<&[u8]>, WireError> {
        match self.entry(i)? {
            Resource::Carveout(c) => Ok(c),
            _ => Err(WireError::Malformed("resource entry is not a carveout")),
        }
    }

    /// Entry `i` as a vdev; fails if it is another type.
    pub fn vdev(&self, i: usize) -> Result<Vdev<&[u8]>, WireError> {
        match self.entry(i)? {
            Resource::Vdev(v) => Ok(v),
            _ => Err(WireError::Malformed("resource entry is not a vdev")),
        }
    }

    /// Index of the `nth` (from 0) valid entry of type `rtype`, like OpenAMP's `find_rsc`.
    pub fn find(&self, rtype: u32, nth: usize) -> Option<usize> {
        self.entries()
            .enumerate()
            .filter_map(|(i, e)| e.ok().filter(|e| e.rtype() == rtype).map(|_| i))
            .nth(nth)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ResourceTable<T> {
    /// Entry `i`, writable (through the setters of [`Carveout`], [`Devmem`] and [`Vdev`], or a
    /// vendor body).
    pub fn entry_mut(&mut self, i: usize) -> Result<Resource<&mut [u8]>, WireError> {
        let span = self.span(i, self.header_end()?, true)?;
        let endian = self.endian;
        let buf = self.buffer.as_mut();
        let available = buf.len();
        let bytes = buf.get_mut(span.view_range()).ok_or(WireError::Truncated {
            needed: span.end,
            available,
        })?;
        Ok(Resource::from_span(span, bytes, endian))
    }

    /// Entry `i` as a writable carveout; fails if it is another type.
    pub fn carveout_mut(&mut self, i: usize) -> Result<Carveout<&mut [u8]>, WireError> {
        match self.entry_mut(i)? {
            Resource::Carveout(c) => Ok(c),
            _ => Err(WireError::Malformed("resource entry is not a carveout")),
        }
    }

    /// Entry `i` as a writable devmem; fails if it is another type.
    pub fn devmem_mut(&mut self, i: usize) -> Result<Devmem<&mut [u8]>, WireError> {
        match self.entry_mut(i)? {
            Resource::Devmem(d) => Ok(d),
            _ => Err(WireError::Malformed("resource entry is not a devmem")),
        }
    }

    /// Entry `i` as a writable vdev; fails if it is another type.
    pub fn vdev_mut(&mut self, i: usize) -> Result<Vdev<&mut [u8]>, WireError> {
        match self.entry_mut(i)? {
            Resource::Vdev(v) => Ok(v),
            _ => Err(WireError::Malformed("resource entry is not a vdev")),
        }
    }
}

/// Iterator over a table's entries, from [`ResourceTable::entries`].
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    table: ResourceTable<&'a [u8]>,
    next: usize,
    done: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Resource<&'a [u8]>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next >= self.table.num_entries() {
            return None;
        }
        let table: ResourceTable<&'a [u8]> = self.table;
        let item = table.entry_ref(self.next);
        self.next += 1;
        self.done = item.is_err();
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            (0, Some(0))
        } else {
            (0, Some(self.table.num_entries().saturating_sub(self.next)))
        }
    }
}

impl FusedIterator for Entries<'_> {}

impl<'a> ResourceTable<&'a [u8]> {
    /// Like [`entry`](ResourceTable::entry), borrowing from the underlying slice rather than
    /// from the view.
    fn entry_ref(self, i: usize) -> Result<Resource<&'a [u8]>, WireError> {
        let span = self.span(i, self.header_end()?, true)?;
        let available = self.buffer.len();
        let bytes = self
            .buffer
            .get(span.view_range())
            .ok_or(WireError::Truncated {
                needed: span.end,
                available,
            })?;
        Ok(Resource::from_span(span, bytes, self.endian))
    }
}

// ---------------------------------------------------------------------------------------------
// Builder

/// Writes a resource table into a caller's buffer, without allocating.
///
/// [`new`](Self::new) reserves the header and the offset array for a fixed number of entries;
/// each `add_*` appends one entry (4-byte aligned, padding zeroed) and fills its offset slot;
/// [`finish`](Self::finish) checks that every declared entry was added and returns the table's
/// length. Reserved fields, `gfeatures` and `status` are written as 0. A failed `add_*` changes
/// nothing.
#[derive(Debug)]
pub struct ResourceTableBuilder<'a> {
    buf: &'a mut [u8],
    endian: Endian,
    num: usize,
    added: usize,
    pos: usize,
}

impl<'a> ResourceTableBuilder<'a> {
    /// Starts a table of `num_entries` entries in `buf`, writing its header (`ver` 1) and a
    /// zeroed offset array. Fails with [`WireError::TooLarge`] if they do not fit.
    pub fn new(buf: &'a mut [u8], endian: Endian, num_entries: usize) -> Result<Self, WireError> {
        let max = buf.len();
        let num = u32::try_from(num_entries).map_err(|_| WireError::TooLarge {
            len: num_entries,
            max: u32::MAX as usize,
        })?;
        let header_end = num_entries
            .checked_mul(4)
            .and_then(|n| n.checked_add(TABLE_HEADER_LEN))
            .ok_or(WireError::TooLarge {
                len: usize::MAX,
                max,
            })?;
        let header = buf.get_mut(..header_end).ok_or(WireError::TooLarge {
            len: header_end,
            max,
        })?;
        header.fill(0);
        field::VER.set(header, endian, RSC_TABLE_VERSION);
        field::NUM.set(header, endian, num);
        Ok(ResourceTableBuilder {
            buf,
            endian,
            num: num_entries,
            added: 0,
            pos: header_end,
        })
    }

    /// Bytes written so far (header, offset array and the entries added).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Entries added so far.
    pub fn added(&self) -> usize {
        self.added
    }

    /// Reserves the next entry: `entry_len` bytes (from its `type` word), padded to 4, zeroed.
    /// Writes the type and the offset slot; returns the entry's offset.
    fn begin(&mut self, rtype: u32, entry_len: usize) -> Result<usize, WireError> {
        if self.added >= self.num {
            return Err(WireError::Malformed(
                "resource table already holds every declared entry",
            ));
        }
        let max = self.buf.len();
        let start = self.pos;
        let offset = u32::try_from(start).map_err(|_| WireError::TooLarge {
            len: start,
            max: u32::MAX as usize,
        })?;
        let end = entry_len
            .checked_next_multiple_of(4)
            .and_then(|n| start.checked_add(n))
            .ok_or(WireError::TooLarge {
                len: usize::MAX,
                max,
            })?;
        let entry = self
            .buf
            .get_mut(start..end)
            .ok_or(WireError::TooLarge { len: end, max })?;
        entry.fill(0);
        field::TYPE.set(entry, self.endian, rtype);
        if let Some(slot) = offset_slot(self.added) {
            slot.set(self.buf, self.endian, offset);
        }
        self.added += 1;
        self.pos = end;
        Ok(start)
    }

    /// Writes `field` of the entry (or vring) that starts at `at`.
    fn put<W: Word>(&mut self, at: usize, field: Field<W>, v: W) {
        field.shifted(at).set(self.buf, self.endian, v)
    }

    fn put_bytes(&mut self, at: usize, bytes: &[u8]) {
        if let Some(dst) = at
            .checked_add(bytes.len())
            .and_then(|end| self.buf.get_mut(at..end))
        {
            dst.copy_from_slice(bytes);
        }
    }

    fn check_name(name: &[u8]) -> Result<(), WireError> {
        if name.len() > RSC_NAME_MAX {
            return Err(WireError::TooLarge {
                len: name.len(),
                max: RSC_NAME_MAX,
            });
        }
        Ok(())
    }

    fn add_memory(
        &mut self,
        rtype: u32,
        (da, pa, len, flags): (u32, u32, u32, u32),
        name: &[u8],
    ) -> Result<usize, WireError> {
        Self::check_name(name)?;
        let at = self.begin(rtype, CARVEOUT_LEN)?;
        self.put(at, field::MEM_DA, da);
        self.put(at, field::MEM_PA, pa);
        self.put(at, field::MEM_LEN, len);
        self.put(at, field::MEM_FLAGS, flags);
        self.put_bytes(at + field::MEM_NAME, name);
        Ok(at)
    }

    /// Appends a carveout entry; returns its offset. `name` may hold at most
    /// [`RSC_NAME_MAX`] bytes (the field keeps a terminating NUL).
    pub fn add_carveout(
        &mut self,
        da: u32,
        pa: u32,
        len: u32,
        flags: u32,
        name: &[u8],
    ) -> Result<usize, WireError> {
        self.add_memory(RSC_CARVEOUT, (da, pa, len, flags), name)
    }

    /// Appends a devmem entry; returns its offset. `name` may hold at most
    /// [`RSC_NAME_MAX`] bytes.
    pub fn add_devmem(
        &mut self,
        da: u32,
        pa: u32,
        len: u32,
        flags: u32,
        name: &[u8],
    ) -> Result<usize, WireError> {
        self.add_memory(RSC_DEVMEM, (da, pa, len, flags), name)
    }

    /// Appends a trace entry; returns its offset. `name` may hold at most [`RSC_NAME_MAX`]
    /// bytes.
    pub fn add_trace(&mut self, da: u32, len: u32, name: &[u8]) -> Result<usize, WireError> {
        Self::check_name(name)?;
        let at = self.begin(RSC_TRACE, TRACE_LEN)?;
        self.put(at, field::TRACE_DA, da);
        self.put(at, field::TRACE_LEN, len);
        self.put_bytes(at + field::TRACE_NAME, name);
        Ok(at)
    }

    /// Appends a vdev entry with `vrings` (at most 255) and `config` as its config space
    /// (pass zeroes for a config the host fills); returns its offset. `gfeatures` and
    /// `status` start at 0.
    pub fn add_vdev(
        &mut self,
        id: u32,
        notifyid: u32,
        dfeatures: u32,
        config: &[u8],
        vrings: &[VdevVringSpec],
    ) -> Result<usize, WireError> {
        let num_of_vrings = u8::try_from(vrings.len()).map_err(|_| WireError::TooLarge {
            len: vrings.len(),
            max: usize::from(u8::MAX),
        })?;
        let config_len = u32::try_from(config.len()).map_err(|_| WireError::TooLarge {
            len: config.len(),
            max: u32::MAX as usize,
        })?;
        let entry_len = usize::try_from(vdev_extent(num_of_vrings, config_len)).map_err(|_| {
            WireError::TooLarge {
                len: usize::MAX,
                max: self.buf.len(),
            }
        })?;
        let at = self.begin(RSC_VDEV, entry_len)?;
        self.put(at, field::VDEV_ID, id);
        self.put(at, field::VDEV_NOTIFYID, notifyid);
        self.put(at, field::VDEV_DFEATURES, dfeatures);
        self.put(at, field::VDEV_CONFIG_LEN, config_len);
        self.put(at, field::VDEV_NUM_VRINGS, num_of_vrings);
        let mut ring = at + field::VDEV_VRINGS;
        for v in vrings {
            self.put(ring, field::VRING_DA, v.da);
            self.put(ring, field::VRING_ALIGN, v.align);
            self.put(ring, field::VRING_NUM, v.num);
            self.put(ring, field::VRING_NOTIFYID, v.notifyid);
            ring += VRING_ENTRY_LEN;
        }
        self.put_bytes(ring, config);
        Ok(at)
    }

    /// Appends a vendor entry: the `type` word, then `body`, padded with zeroes to 4 bytes;
    /// returns its offset. `rtype` must lie in `128..=512`. (OpenAMP's vendor handler expects
    /// the body to start with the entry's total length as a `u32`; that is up to the caller.)
    pub fn add_vendor(&mut self, rtype: u32, body: &[u8]) -> Result<usize, WireError> {
        if !is_vendor_type(rtype) {
            return Err(WireError::Malformed(
                "vendor resource type outside 128..=512",
            ));
        }
        let entry_len = body
            .len()
            .checked_add(ENTRY_HEADER_LEN)
            .ok_or(WireError::TooLarge {
                len: usize::MAX,
                max: self.buf.len(),
            })?;
        let at = self.begin(rtype, entry_len)?;
        self.put_bytes(at + ENTRY_HEADER_LEN, body);
        Ok(at)
    }

    /// Ends the table; returns its length in bytes (a multiple of 4). Fails if fewer entries
    /// were added than declared.
    pub fn finish(self) -> Result<usize, WireError> {
        if self.added < self.num {
            return Err(WireError::Malformed(
                "resource table has fewer entries than declared",
            ));
        }
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{
        STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_ID_RPMSG,
    };
    use alloc::format;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    const BOTH: [Endian; 2] = [Endian::Little, Endian::Big];

    /// Encodes `words` as consecutive u32s.
    fn words(e: Endian, words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|&w| e.u32_bytes(w)).collect()
    }

    /// A 32-byte name field holding `s`.
    fn name_field(s: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; RSC_NAME_LEN];
        f[..s.len()].copy_from_slice(s);
        f
    }

    /// Builds a table with one entry; returns the table bytes.
    fn single(
        e: Endian,
        add: impl FnOnce(&mut ResourceTableBuilder<'_>) -> Result<usize, WireError>,
    ) -> Vec<u8> {
        let mut buf = vec![0xA5u8; 512];
        let mut b = ResourceTableBuilder::new(&mut buf, e, 1).unwrap();
        assert_eq!(add(&mut b).unwrap(), 20);
        let len = b.finish().unwrap();
        buf.truncate(len);
        buf
    }

    const LINUX_VRINGS: [VdevVringSpec; 2] = [
        VdevVringSpec {
            da: 0x4000,
            align: 0x1000,
            num: 256,
            notifyid: 1,
        },
        VdevVringSpec {
            da: 0x8000,
            align: 0x1000,
            num: 256,
            notifyid: 2,
        },
    ];

    /// The table of OpenAMP's native-Linux machine: one rpmsg vdev with F_NS.
    fn linux_machine_table(e: Endian) -> Vec<u8> {
        single(e, |b| b.add_vdev(VIRTIO_ID_RPMSG, 0, 1, &[], &LINUX_VRINGS))
    }

    #[test]
    fn openamp_linux_machine_table_layout() {
        let bytes = linux_machine_table(Endian::Little);
        #[rustfmt::skip]
        let expected: [u8; 88] = [
            1, 0, 0, 0,  1, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,  // ver, num, reserved[2]
            20, 0, 0, 0,                                        // offset[0]
            3, 0, 0, 0,  7, 0, 0, 0,  0, 0, 0, 0,  1, 0, 0, 0,  // RSC_VDEV, id, notifyid, dfeatures
            0, 0, 0, 0,  0, 0, 0, 0,  0, 2, 0, 0,               // gfeatures, config_len, status..
            0, 0x40, 0, 0,  0, 0x10, 0, 0,  0, 1, 0, 0,  1, 0, 0, 0,  0, 0, 0, 0, // vring 0
            0, 0x80, 0, 0,  0, 0x10, 0, 0,  0, 1, 0, 0,  2, 0, 0, 0,  0, 0, 0, 0, // vring 1
        ];
        assert_eq!(bytes[..], expected[..]);
    }

    #[test]
    fn openamp_linux_machine_table_parses() {
        for e in BOTH {
            let mut bytes = linux_machine_table(e);
            // Room after the table does not change its extent.
            bytes.resize(0x400, 0);
            let t = ResourceTable::new_checked(&bytes[..], e).unwrap();
            assert_eq!(t.version(), 1);
            assert_eq!(t.num_entries(), 1);
            assert_eq!(t.reserved(), [0, 0]);
            assert_eq!(t.offset(0), Some(TABLE_HEADER_LEN + 4));
            assert_eq!(t.offset(1), None);
            assert_eq!(t.table_len(), 88);
            assert_eq!(t.as_bytes().len(), 88);
            t.validate_known().unwrap();
            let v = t.vdev(0).unwrap();
            assert_eq!(v.rtype(), RSC_VDEV);
            assert_eq!(v.id(), VIRTIO_ID_RPMSG);
            assert_eq!(v.notifyid(), 0);
            assert_eq!(v.dfeatures(), 1);
            assert_eq!(v.gfeatures(), 0);
            assert_eq!(v.config_len(), 0);
            assert_eq!(v.status(), 0);
            assert_eq!(v.num_of_vrings(), 2);
            assert_eq!(v.reserved(), [0, 0]);
            assert_eq!(v.entry_len(), VDEV_LEN + 2 * VRING_ENTRY_LEN);
            assert_eq!(
                v.vring(0),
                Some(VdevVring {
                    da: 0x4000,
                    align: 0x1000,
                    num: 256,
                    notifyid: 1,
                    reserved: 0
                })
            );
            assert_eq!(
                v.vring(1),
                Some(VdevVring {
                    da: 0x8000,
                    align: 0x1000,
                    num: 256,
                    notifyid: 2,
                    reserved: 0
                })
            );
            assert_eq!(v.vring(2), None);
            assert_eq!(v.vrings().count(), 2);
            assert!(v.config().is_empty());
            assert_eq!(t.find(RSC_VDEV, 0), Some(0));
            assert_eq!(t.find(RSC_VDEV, 1), None);
            assert_eq!(t.find(RSC_CARVEOUT, 0), None);
            assert!(t.carveout(0).is_err());
            assert!(t.entry(1).is_err());
            let all: Vec<_> = t.entries().collect();
            assert_eq!(all.len(), 1);
            let dbg = format!("{:?}", all[0].as_ref().unwrap());
            assert!(dbg.contains("Vdev") && dbg.contains("da: 16384"), "{dbg}");
        }
    }

    #[test]
    fn carveout_layout_is_byte_exact() {
        let bytes = single(Endian::Little, |b| {
            b.add_carveout(0x3ED0_0000, FW_RSC_ADDR_ANY, 0x4_0000, 0x11, b"text")
        });
        assert_eq!(bytes.len(), 20 + CARVEOUT_LEN);
        #[rustfmt::skip]
        let mut expected = vec![
            0, 0, 0, 0,                 // RSC_CARVEOUT
            0x00, 0x00, 0xD0, 0x3E,     // da
            0xFF, 0xFF, 0xFF, 0xFF,     // pa
            0x00, 0x00, 0x04, 0x00,     // len
            0x11, 0, 0, 0,              // flags
            0, 0, 0, 0,                 // reserved
        ];
        expected.extend_from_slice(&name_field(b"text"));
        assert_eq!(expected.len(), CARVEOUT_LEN);
        assert_eq!(bytes[20..], expected[..]);

        let t = ResourceTable::new_checked(&bytes[..], Endian::Little).unwrap();
        let Resource::Carveout(c) = t.entry(0).unwrap() else {
            panic!("not a carveout")
        };
        assert_eq!(
            (c.da(), c.pa(), c.len(), c.flags(), c.reserved()),
            (0x3ED0_0000, !0, 0x4_0000, 0x11, 0)
        );
        assert_eq!(c.name(), b"text");
        assert!(!c.is_empty());
        assert_eq!(t.table_len(), 76);
    }

    #[test]
    fn carveout_layout_big_endian() {
        let bytes = single(Endian::Big, |b| {
            b.add_carveout(0x1122_3344, 0x5566_7788, 0x10, 2, b"x")
        });
        assert_eq!(
            bytes[..20],
            [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20]
        );
        #[rustfmt::skip]
        let mut expected = vec![
            0, 0, 0, 0,
            0x11, 0x22, 0x33, 0x44,
            0x55, 0x66, 0x77, 0x88,
            0, 0, 0, 0x10,
            0, 0, 0, 2,
            0, 0, 0, 0,
        ];
        expected.extend_from_slice(&name_field(b"x"));
        assert_eq!(bytes[20..], expected[..]);
        let t = ResourceTable::new_checked(&bytes[..], Endian::Big).unwrap();
        let c = t.carveout(0).unwrap();
        assert_eq!(
            (c.da(), c.pa(), c.len(), c.flags()),
            (0x1122_3344, 0x5566_7788, 0x10, 2)
        );
        // The same bytes read little-endian have version 0x0100_0000.
        assert_eq!(
            ResourceTable::new_checked(&bytes[..], Endian::Little).unwrap_err(),
            WireError::Malformed("resource table version is not 1")
        );
    }

    #[test]
    fn devmem_layout_is_byte_exact() {
        for e in BOTH {
            let bytes = single(e, |b| {
                b.add_devmem(0xF000_0000, 0xFF00_0000, 0x1000, 7, b"uart")
            });
            let mut expected = words(e, &[RSC_DEVMEM, 0xF000_0000, 0xFF00_0000, 0x1000, 7, 0]);
            expected.extend_from_slice(&name_field(b"uart"));
            assert_eq!(expected.len(), DEVMEM_LEN);
            assert_eq!(bytes[20..], expected[..]);
            let t = ResourceTable::new_checked(&bytes[..], e).unwrap();
            let Resource::Devmem(d) = t.entry(0).unwrap() else {
                panic!("not a devmem")
            };
            assert_eq!(
                (d.rtype(), d.da(), d.pa(), d.len(), d.flags()),
                (1, 0xF000_0000, 0xFF00_0000, 0x1000, 7)
            );
            assert_eq!(d.name(), b"uart");
        }
    }

    #[test]
    fn trace_layout_is_byte_exact() {
        #[rustfmt::skip]
        let mut expected = vec![
            2, 0, 0, 0,          // RSC_TRACE
            0, 0x10, 0, 0,       // da
            0, 0x80, 0, 0,       // len
            0, 0, 0, 0,          // reserved
        ];
        expected.extend_from_slice(&name_field(b"trace0"));
        assert_eq!(expected.len(), TRACE_LEN);
        let bytes = single(Endian::Little, |b| b.add_trace(0x1000, 0x8000, b"trace0"));
        assert_eq!(bytes[20..], expected[..]);
        for e in BOTH {
            let bytes = single(e, |b| b.add_trace(0x1000, 0x8000, b"trace0"));
            let mut expected = words(e, &[RSC_TRACE, 0x1000, 0x8000, 0]);
            expected.extend_from_slice(&name_field(b"trace0"));
            assert_eq!(bytes[20..], expected[..]);
            let t = ResourceTable::new_checked(&bytes[..], e).unwrap();
            let Resource::Trace(tr) = t.entry(0).unwrap() else {
                panic!("not a trace")
            };
            assert_eq!(
                (tr.da(), tr.len(), tr.reserved(), tr.name()),
                (0x1000, 0x8000, 0, &b"trace0"[..])
            );
        }
    }

    #[test]
    fn vdev_with_config_layout_is_byte_exact() {
        for e in BOTH {
            let vr = [VdevVringSpec {
                da: FW_RSC_ADDR_ANY,
                align: 16,
                num: 8,
                notifyid: 3,
            }];
            let bytes = single(e, |b| {
                b.add_vdev(VIRTIO_ID_RPMSG, 9, 0b101, &[0xC1, 0xC2, 0xC3], &vr)
            });
            // 28 fixed + 20 vring + 3 config, padded to 52.
            assert_eq!(bytes.len(), 20 + 52);
            let mut expected = words(e, &[RSC_VDEV, 7, 9, 0b101, 0, 3]);
            expected.extend_from_slice(&[0, 1, 0, 0]); // status, num_of_vrings, reserved[2]
            expected.extend_from_slice(&words(e, &[!0, 16, 8, 3, 0]));
            expected.extend_from_slice(&[0xC1, 0xC2, 0xC3, 0]); // config, padding
            assert_eq!(bytes[20..], expected[..]);
            let t = ResourceTable::new_checked(&bytes[..], e).unwrap();
            assert_eq!(
                t.table_len(),
                71,
                "the padding after the config is not part of the entry"
            );
            let v = t.vdev(0).unwrap();
            assert_eq!(v.config(), [0xC1, 0xC2, 0xC3]);
            assert_eq!(v.vring(0).unwrap().da, FW_RSC_ADDR_ANY);
        }
    }

    #[test]
    fn vendor_layout_and_body() {
        for e in BOTH {
            let bytes = single(e, |b| {
                b.add_vendor(RSC_VENDOR_START, &[0xAA, 0xBB, 0xCC, 0xDD, 0xEE])
            });
            let mut expected = words(e, &[RSC_VENDOR_START]);
            expected.extend_from_slice(&[0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0, 0, 0]);
            assert_eq!(bytes[20..], expected[..]);
            let t = ResourceTable::new_checked(&bytes[..], e).unwrap();
            match t.entry(0).unwrap() {
                Resource::Vendor {
                    rtype,
                    offset,
                    body,
                } => {
                    assert_eq!((rtype, offset), (RSC_VENDOR_START, 20));
                    assert_eq!(body, [0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0, 0, 0]);
                }
                other => panic!("{other:?}"),
            }
            // The last vendor entry runs to the end of the buffer.
            let mut longer = bytes.clone();
            longer.extend_from_slice(&[1, 2, 3]);
            let t = ResourceTable::new_checked(&longer[..], e).unwrap();
            assert_eq!(t.table_len(), longer.len());
            let Resource::Vendor { body, .. } = t.entry(0).unwrap() else {
                panic!()
            };
            assert_eq!(body.len(), 11);
        }
    }

    #[test]
    fn vendor_body_ends_at_next_offset_in_any_order() {
        let e = Endian::Little;
        let mut buf = vec![0u8; 256];
        let mut b = ResourceTableBuilder::new(&mut buf, e, 3).unwrap();
        let o0 = b.add_vendor(RSC_VENDOR_END, &[1; 6]).unwrap();
        let o1 = b.add_trace(1, 2, b"t").unwrap();
        let o2 = b.add_vendor(200, &[2; 4]).unwrap();
        let len = b.finish().unwrap();
        assert_eq!((o0, o1, o2, len), (28, 40, 88, 96));
        // Swap the first two offsets: order in the array does not matter.
        buf[16..20].copy_from_slice(&40u32.to_le_bytes());
        buf[20..24].copy_from_slice(&28u32.to_le_bytes());
        let t = ResourceTable::new_checked(&buf[..len], e).unwrap();
        assert_eq!(t.table_len(), 96);
        let Resource::Vendor {
            rtype,
            offset,
            body,
        } = t.entry(1).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (rtype, offset, body),
            (RSC_VENDOR_END, 28, &[1, 1, 1, 1, 1, 1, 0, 0][..])
        );
        let Resource::Vendor {
            rtype,
            offset,
            body,
        } = t.entry(2).unwrap()
        else {
            panic!()
        };
        assert_eq!((rtype, offset, body), (200, 88, &[2; 4][..]));
        assert!(matches!(t.entry(0).unwrap(), Resource::Trace(_)));
        t.validate_known().unwrap();
    }

    /// A table with every kind of entry, the vendor one in the middle so that the table ends
    /// at a fixed-size entry.
    fn mixed_table(e: Endian) -> Vec<u8> {
        let mut buf = vec![0u8; 1024];
        let mut b = ResourceTableBuilder::new(&mut buf, e, 5).unwrap();
        b.add_carveout(FW_RSC_ADDR_ANY, FW_RSC_ADDR_ANY, 0x10_0000, 0, b"ddr")
            .unwrap();
        b.add_vendor(300, &[9; 10]).unwrap();
        b.add_trace(0x2000, 0x400, b"trace").unwrap();
        b.add_vdev(VIRTIO_ID_RPMSG, 4, 1, &[1, 2, 3, 4, 5], &LINUX_VRINGS)
            .unwrap();
        b.add_devmem(0xA000_0000, 0xA000_0000, 0x1000, 0, b"regs")
            .unwrap();
        let len = b.finish().unwrap();
        buf.truncate(len);
        buf
    }

    #[test]
    fn every_truncation_is_an_error() {
        for e in BOTH {
            let bytes = mixed_table(e);
            let full = ResourceTable::new_checked(&bytes[..], e).unwrap();
            assert_eq!(full.table_len(), bytes.len());
            assert_eq!(full.entries().filter(|r| r.is_ok()).count(), 5);
            for cut in 0..bytes.len() {
                let prefix = &bytes[..cut];
                assert!(
                    ResourceTable::new_checked(prefix, e).is_err(),
                    "prefix of {cut} bytes parsed"
                );
                // Unchecked use of the same prefix must not panic either.
                let t = ResourceTable::new_unchecked(prefix, e);
                for r in t.entries().flatten() {
                    let _ = format!("{r:?}");
                }
                let _ = (
                    t.table_len(),
                    t.as_bytes(),
                    t.validate_known(),
                    t.find(RSC_VDEV, 0),
                );
            }
        }
    }

    #[test]
    fn truncation_errors_say_what_is_missing() {
        let bytes = linux_machine_table(Endian::Little);
        let short = |n: usize| ResourceTable::new_checked(&bytes[..n], Endian::Little).unwrap_err();
        assert_eq!(
            short(15),
            WireError::Truncated {
                needed: 16,
                available: 15
            }
        );
        assert_eq!(
            short(19),
            WireError::Truncated {
                needed: 20,
                available: 19
            }
        );
        assert_eq!(
            short(23),
            WireError::Truncated {
                needed: 24,
                available: 23
            }
        );
        assert_eq!(
            short(47),
            WireError::Truncated {
                needed: 48,
                available: 47
            }
        );
        assert_eq!(
            short(87),
            WireError::Truncated {
                needed: 88,
                available: 87
            }
        );
    }

    fn patch(bytes: &mut [u8], at: usize, e: Endian, v: u32) {
        bytes[at..at + 4].copy_from_slice(&e.u32_bytes(v));
    }

    #[test]
    fn offsets_out_of_range_or_in_header() {
        for e in BOTH {
            let good = linux_machine_table(e);
            let with_offset = |off: u32| {
                let mut b = good.clone();
                patch(&mut b, 16, e, off);
                ResourceTable::new_checked(&b[..], e).map(|_| ())
            };
            assert!(with_offset(20).is_ok());
            for off in [0, 4, 16, 19] {
                assert_eq!(
                    with_offset(off),
                    Err(WireError::Malformed(
                        "resource entry starts inside the table header"
                    )),
                    "offset {off}"
                );
            }
            for off in [85, 86, 88, 1000, u32::MAX - 3, u32::MAX] {
                assert!(
                    matches!(with_offset(off), Err(WireError::Truncated { .. })),
                    "offset {off}"
                );
            }
        }
    }

    #[test]
    fn huge_num_is_truncated_not_overflow() {
        for e in BOTH {
            let mut b = linux_machine_table(e);
            patch(&mut b, 4, e, u32::MAX);
            let err = ResourceTable::new_checked(&b[..], e).unwrap_err();
            assert!(
                matches!(err, WireError::Truncated { available: 88, .. }),
                "{err:?}"
            );
            let t = ResourceTable::new_unchecked(&b[..], e);
            assert_eq!(t.num_entries(), u32::MAX as usize);
            assert_eq!(t.offset(0), Some(20));
            assert_eq!(t.offset(100), None);
            assert!(t.entry(0).is_err());
            assert_eq!(
                t.entries().count(),
                1,
                "the iterator stops at the first error"
            );
            assert_eq!(t.table_len(), 88);
            // num = 18 would need 16 + 72 = 88 bytes: the offsets then cover the entry.
            patch(&mut b, 4, e, 18);
            assert_eq!(
                ResourceTable::new_checked(&b[..], e).unwrap_err(),
                WireError::Malformed("resource entry starts inside the table header")
            );
        }
    }

    #[test]
    fn empty_table() {
        for e in BOTH {
            let mut buf = [0u8; 16];
            let len = ResourceTableBuilder::new(&mut buf, e, 0)
                .unwrap()
                .finish()
                .unwrap();
            assert_eq!(len, 16);
            let t = ResourceTable::new_checked(&buf[..], e).unwrap();
            assert_eq!(
                (t.num_entries(), t.table_len(), t.entries().count()),
                (0, 16, 0)
            );
        }
    }

    #[test]
    fn version_and_reserved() {
        for e in BOTH {
            let mut b = linux_machine_table(e);
            patch(&mut b, 8, e, 0xDEAD);
            patch(&mut b, 12, e, 1);
            let t = ResourceTable::new_checked(&b[..], e).unwrap();
            assert_eq!(t.reserved(), [0xDEAD, 1]);
            for ver in [0, 2, u32::MAX] {
                patch(&mut b, 0, e, ver);
                assert_eq!(
                    ResourceTable::new_checked(&b[..], e).unwrap_err(),
                    WireError::Malformed("resource table version is not 1")
                );
            }
        }
    }

    #[test]
    fn vdev_vrings_and_config_must_fit() {
        for e in BOTH {
            let good = linux_machine_table(e);
            // num_of_vrings is byte 25 of the entry at 20.
            let mut b = good.clone();
            b[45] = 3;
            assert_eq!(
                ResourceTable::new_checked(&b[..], e).unwrap_err(),
                WireError::Truncated {
                    needed: 108,
                    available: 88
                }
            );
            b[45] = 255;
            assert!(ResourceTable::new_checked(&b[..], e).is_err());
            b[45] = 1; // fewer vrings than there is room for is fine
            let t = ResourceTable::new_checked(&b[..], e).unwrap();
            assert_eq!(t.table_len(), 68);
            assert_eq!(t.vdev(0).unwrap().vrings().count(), 1);
            // config_len at byte 20 of the entry.
            let mut b = good.clone();
            patch(&mut b, 40, e, u32::MAX);
            assert!(matches!(
                ResourceTable::new_checked(&b[..], e).unwrap_err(),
                WireError::Truncated { available: 88, .. }
            ));
            patch(&mut b, 40, e, 1);
            assert!(ResourceTable::new_checked(&b[..], e).is_err());
            let mut longer = b.clone();
            longer.push(0x77);
            let t = ResourceTable::new_checked(&longer[..], e).unwrap();
            assert_eq!(t.vdev(0).unwrap().config(), [0x77]);
            assert_eq!(t.table_len(), 89);
        }
    }

    #[test]
    fn unknown_types_are_reported_not_rejected() {
        for e in BOTH {
            for rtype in [4, 5, 127, 513, 0x1000, u32::MAX] {
                let mut b = single(e, |b| b.add_vendor(RSC_VENDOR_START, &[0; 8]));
                patch(&mut b, 20, e, rtype);
                let t = ResourceTable::new_checked(&b[..], e).unwrap();
                match t.entry(0).unwrap() {
                    Resource::Unknown { rtype: r, offset } => assert_eq!((r, offset), (rtype, 20)),
                    other => panic!("{other:?}"),
                }
                assert_eq!(t.entry(0).unwrap().rtype(), rtype);
                assert_eq!(
                    t.table_len(),
                    24,
                    "an unknown entry covers only its type word"
                );
                assert_eq!(
                    t.validate_known(),
                    Err(WireError::Malformed("resource entry of unknown type"))
                );
            }
            for rtype in [RSC_VENDOR_START, 300, RSC_VENDOR_END] {
                let b = single(e, |b| b.add_vendor(rtype, &[]));
                let t = ResourceTable::new_checked(&b[..], e).unwrap();
                assert!(matches!(
                    t.entry(0).unwrap(),
                    Resource::Vendor { body: [], .. }
                ));
                t.validate_known().unwrap();
            }
        }
        assert!(is_vendor_type(128) && is_vendor_type(512) && !is_vendor_type(513));
        assert!(is_standard_type(3) && !is_standard_type(4));
    }

    #[test]
    fn entry_views_check_their_type_and_length() {
        let e = Endian::Little;
        let b = mixed_table(e);
        let t = ResourceTable::new_checked(&b[..], e).unwrap();
        let off = t.offset(0).unwrap();
        assert!(Carveout::new_checked(&b[off..off + CARVEOUT_LEN], e).is_ok());
        assert!(Carveout::new_checked(&b[off..off + CARVEOUT_LEN - 1], e).is_err());
        assert!(Devmem::new_checked(&b[off..off + CARVEOUT_LEN], e).is_err());
        assert!(Trace::new_checked(&b[off..off + TRACE_LEN], e).is_err());
        let off = t.offset(3).unwrap();
        let v = Vdev::new_checked(&b[off..], e).unwrap();
        assert_eq!(v.entry_len(), 28 + 40 + 5);
        assert!(Vdev::new_checked(&b[off..off + 72], e).is_err());
        assert!(Vdev::new_checked(&b[off..off + 73], e).is_ok());
        // Unchecked views over too few bytes read zeroes and never panic.
        let v = Vdev::new_unchecked(&b[off..off + 30], e);
        assert_eq!(
            (v.id(), v.num_of_vrings(), v.vring(0), v.config()),
            (7, 2, None, &[][..])
        );
        let c = Carveout::new_unchecked(&b[..3], e);
        assert_eq!((c.da(), c.name()), (0, &[][..]));
    }

    #[test]
    fn names_stop_at_nul_and_at_32_bytes() {
        let e = Endian::Little;
        let mut b = single(e, |b| b.add_trace(0, 0, b"abc"));
        assert_eq!(
            ResourceTable::new_checked(&b[..], e)
                .unwrap()
                .entry(0)
                .unwrap()
                .rtype(),
            2
        );
        // Fill the name field (bytes 16..48 of the entry at 20) without a NUL.
        b[36..68].fill(b'z');
        b.extend_from_slice(b"after");
        let t = ResourceTable::new_checked(&b[..], e).unwrap();
        let Resource::Trace(tr) = t.entry(0).unwrap() else {
            panic!()
        };
        assert_eq!(tr.name(), [b'z'; 32]);
        b[40] = 0;
        let t = ResourceTable::new_checked(&b[..], e).unwrap();
        let Resource::Trace(tr) = t.entry(0).unwrap() else {
            panic!()
        };
        assert_eq!(tr.name(), b"zzzz");
    }

    #[test]
    fn setters_round_trip() {
        for e in BOTH {
            let mut bytes = mixed_table(e);
            let len = bytes.len();
            let mut t = ResourceTable::new_checked(&mut bytes[..], e).unwrap();
            {
                let mut c = t.carveout_mut(0).unwrap();
                c.set_da(0x1000_0000);
                c.set_pa(0x8000_0000);
            }
            {
                let mut d = t.devmem_mut(4).unwrap();
                d.set_da(0xB000_0000);
            }
            {
                let mut v = t.vdev_mut(3).unwrap();
                v.set_status(
                    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
                );
                v.set_gfeatures(1);
                v.set_notifyid(6);
                v.set_vring_da(0, 0x2_0000).unwrap();
                v.set_vring_da(1, 0x3_0000).unwrap();
                v.set_vring_notifyid(0, 7).unwrap();
                v.set_vring_notifyid(1, 8).unwrap();
                assert_eq!(
                    v.set_vring_da(2, 1),
                    Err(WireError::Malformed("vring index out of range"))
                );
                assert!(v.set_vring_notifyid(usize::MAX, 1).is_err());
                v.config_mut().copy_from_slice(b"HELLO");
            }
            if let Resource::Vendor { body, .. } = t.entry_mut(1).unwrap() {
                body[0] = 0x42;
            } else {
                panic!("not a vendor entry");
            }
            assert!(t.vdev_mut(0).is_err());
            assert!(t.carveout_mut(3).is_err());
            assert!(t.devmem_mut(0).is_err());
            assert!(t.entry_mut(5).is_err());
            assert_eq!(t.table_len(), len);

            let t = ResourceTable::new_checked(&bytes[..], e).unwrap();
            let c = t.carveout(0).unwrap();
            assert_eq!(
                (c.da(), c.pa(), c.len(), c.name()),
                (0x1000_0000, 0x8000_0000, 0x10_0000, &b"ddr"[..])
            );
            let Resource::Devmem(d) = t.entry(4).unwrap() else {
                panic!()
            };
            assert_eq!((d.da(), d.pa()), (0xB000_0000, 0xA000_0000));
            let v = t.vdev(3).unwrap();
            assert_eq!(v.status(), 0x0F);
            assert_eq!((v.gfeatures(), v.dfeatures(), v.notifyid()), (1, 1, 6));
            let rings: Vec<_> = v
                .vrings()
                .map(|r| (r.da, r.notifyid, r.num, r.align))
                .collect();
            assert_eq!(
                rings,
                [(0x2_0000, 7, 256, 0x1000), (0x3_0000, 8, 256, 0x1000)]
            );
            assert_eq!(v.config(), b"HELLO");
            let Resource::Vendor { body, .. } = t.entry(1).unwrap() else {
                panic!()
            };
            assert_eq!(body[..2], [0x42, 9]);
            // The status byte sits at byte 24 of the vdev entry.
            let off = t.offset(3).unwrap();
            assert_eq!(bytes[off + 24], 0x0F);
            assert_eq!(bytes[off + 16..off + 20], e.u32_bytes(1));
        }
    }

    #[test]
    fn builder_errors() {
        let e = Endian::Little;
        let mut small = [0u8; 19];
        assert_eq!(
            ResourceTableBuilder::new(&mut small, e, 1).unwrap_err(),
            WireError::TooLarge { len: 20, max: 19 }
        );
        assert!(matches!(
            ResourceTableBuilder::new(&mut small, e, usize::MAX).unwrap_err(),
            WireError::TooLarge { .. }
        ));

        let mut buf = [0u8; 100];
        let mut b = ResourceTableBuilder::new(&mut buf, e, 2).unwrap();
        assert_eq!(b.position(), 24);
        assert_eq!(
            b.add_trace(0, 0, &[b'n'; 32]),
            Err(WireError::TooLarge {
                len: 32,
                max: RSC_NAME_MAX
            })
        );
        assert_eq!(
            b.add_vendor(127, &[]),
            Err(WireError::Malformed(
                "vendor resource type outside 128..=512"
            ))
        );
        assert!(b.add_vendor(513, &[]).is_err());
        // A carveout does not fit in the 76 bytes left: nothing changes.
        assert_eq!(
            b.add_vendor(128, &[0; 73]),
            Err(WireError::TooLarge { len: 104, max: 100 })
        );
        assert_eq!((b.position(), b.added()), (24, 0));
        let vr = [VdevVringSpec::default(); 256];
        assert_eq!(
            b.add_vdev(7, 0, 0, &[], &vr),
            Err(WireError::TooLarge { len: 256, max: 255 })
        );
        assert_eq!(b.add_trace(1, 2, &[b'n'; 31]), Ok(24));
        assert_eq!(b.position(), 72);
        assert_eq!(b.added(), 1);
        let mut b2 = b;
        assert_eq!(b2.add_vendor(128, &[1; 24]), Ok(72));
        assert_eq!(
            b2.add_vendor(128, &[]),
            Err(WireError::Malformed(
                "resource table already holds every declared entry"
            ))
        );
        assert_eq!(b2.finish(), Ok(100));

        let mut buf = [0u8; 100];
        let mut b = ResourceTableBuilder::new(&mut buf, e, 2).unwrap();
        b.add_vendor(128, &[]).unwrap();
        assert_eq!(
            b.finish(),
            Err(WireError::Malformed(
                "resource table has fewer entries than declared"
            ))
        );
    }

    #[test]
    fn resource_debug_is_readable() {
        let b = mixed_table(Endian::Little);
        let t = ResourceTable::new_checked(&b[..], Endian::Little).unwrap();
        let text: Vec<_> = t.entries().map(|r| format!("{:?}", r.unwrap())).collect();
        let want = [
            ["Carveout", "\"ddr\""],
            ["Vendor", "300"],
            ["Trace", "\"trace\""],
            ["Vdev", "notifyid: 2"],
            ["Devmem", "0xa0000000"],
        ];
        assert_eq!(text.len(), want.len());
        for (text, want) in text.iter().zip(want) {
            assert!(want.iter().all(|w| text.contains(w)), "{text}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Property tests

    /// Reads every field of an entry, including through Debug.
    fn touch<T: AsRef<[u8]>>(r: &Resource<T>) -> usize {
        let _ = format!("{r:?}");
        match r {
            Resource::Carveout(c) => {
                let _ = (
                    c.rtype(),
                    c.da(),
                    c.pa(),
                    c.len(),
                    c.flags(),
                    c.reserved(),
                    c.is_empty(),
                );
                assert!(c.name().len() <= RSC_NAME_LEN);
                c.name().len()
            }
            Resource::Devmem(d) => {
                let _ = (d.rtype(), d.da(), d.pa(), d.len(), d.flags(), d.reserved());
                assert!(d.name().len() <= RSC_NAME_LEN);
                d.name().len()
            }
            Resource::Trace(t) => {
                let _ = (t.rtype(), t.da(), t.len(), t.reserved(), t.is_empty());
                assert!(t.name().len() <= RSC_NAME_LEN);
                t.name().len()
            }
            Resource::Vdev(v) => {
                let _ = (
                    v.id(),
                    v.notifyid(),
                    v.dfeatures(),
                    v.gfeatures(),
                    v.status(),
                    v.reserved(),
                );
                let _ = (v.vring(0), v.vring(255), v.vring(usize::MAX), v.entry_len());
                v.vrings().count() + v.config().len() + v.config_len() as usize
            }
            Resource::Vendor {
                body,
                offset,
                rtype,
            } => body.as_ref().len() + offset + *rtype as usize,
            Resource::Unknown { offset, .. } => *offset,
        }
    }

    fn exercise(bytes: &[u8], e: Endian) {
        let t = ResourceTable::new_unchecked(bytes, e);
        let _ = (
            t.version(),
            t.num_entries(),
            t.reserved(),
            t.offset(0),
            t.offset(usize::MAX),
        );
        let _ = (
            t.table_len(),
            t.as_bytes(),
            t.validate_known(),
            t.find(RSC_VENDOR_START, 0),
        );
        for r in t.entries().flatten() {
            touch(&r);
        }
        for i in 0..4 {
            let _ = t.entry(i).map(|r| touch(&r));
        }
        let checked = ResourceTable::new_checked(bytes, e);
        if let Ok(t) = checked {
            let n = t.num_entries();
            assert!(t.table_len() <= bytes.len());
            assert!(t.table_len() >= TABLE_HEADER_LEN + 4 * n);
            let mut count = 0;
            for r in t.entries() {
                touch(&r.expect("a checked table has only valid entries"));
                count += 1;
            }
            assert_eq!(count, n);
            // The table's extent alone parses the same way.
            let again = ResourceTable::new_checked(t.as_bytes(), e).unwrap();
            assert_eq!(again.table_len(), t.table_len());
        }
        // Setters on a mutable copy never panic either.
        let mut copy = bytes.to_vec();
        let mut t = ResourceTable::new_unchecked(&mut copy[..], e);
        for i in 0..4 {
            match t.entry_mut(i) {
                Ok(Resource::Vdev(mut v)) => {
                    v.set_status(STATUS_DRIVER_OK);
                    v.set_gfeatures(1);
                    v.set_notifyid(1);
                    for j in 0..3 {
                        let _ = v.set_vring_da(j, 1);
                        let _ = v.set_vring_notifyid(j, 1);
                    }
                    v.config_mut().fill(0);
                }
                Ok(Resource::Carveout(mut c)) => {
                    c.set_da(1);
                    c.set_pa(2);
                }
                Ok(Resource::Devmem(mut d)) => d.set_pa(3),
                _ => {}
            }
        }
    }

    fn endian() -> impl Strategy<Value = Endian> {
        prop_oneof![Just(Endian::Little), Just(Endian::Big)]
    }

    #[derive(Debug, Clone)]
    enum Spec {
        Carveout(u32, u32, u32, u32, Vec<u8>),
        Devmem(u32, u32, u32, u32, Vec<u8>),
        Trace(u32, u32, Vec<u8>),
        Vdev(u32, u32, u32, Vec<u8>, Vec<VdevVringSpec>),
        Vendor(u32, Vec<u8>),
    }

    fn name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 0..=RSC_NAME_MAX)
    }

    fn spec() -> impl Strategy<Value = Spec> {
        let vring = (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(da, align, num, notifyid)| VdevVringSpec {
                da,
                align,
                num,
                notifyid,
            },
        );
        prop_oneof![
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                name()
            )
                .prop_map(|(a, b, c, d, n)| Spec::Carveout(a, b, c, d, n)),
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                name()
            )
                .prop_map(|(a, b, c, d, n)| Spec::Devmem(a, b, c, d, n)),
            (any::<u32>(), any::<u32>(), name()).prop_map(|(a, b, n)| Spec::Trace(a, b, n)),
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..24),
                proptest::collection::vec(vring, 0..4)
            )
                .prop_map(|(id, nid, f, cfg, vr)| Spec::Vdev(id, nid, f, cfg, vr)),
            (
                RSC_VENDOR_START..=RSC_VENDOR_END,
                proptest::collection::vec(any::<u8>(), 0..24)
            )
                .prop_map(|(t, body)| Spec::Vendor(t, body)),
        ]
    }

    fn build(specs: &[Spec], e: Endian) -> Vec<u8> {
        let mut buf = vec![0xEEu8; 4096];
        let mut b = ResourceTableBuilder::new(&mut buf, e, specs.len()).unwrap();
        for s in specs {
            let before = b.position();
            let off = match s {
                Spec::Carveout(da, pa, len, flags, n) => b.add_carveout(*da, *pa, *len, *flags, n),
                Spec::Devmem(da, pa, len, flags, n) => b.add_devmem(*da, *pa, *len, *flags, n),
                Spec::Trace(da, len, n) => b.add_trace(*da, *len, n),
                Spec::Vdev(id, nid, f, cfg, vr) => b.add_vdev(*id, *nid, *f, cfg, vr),
                Spec::Vendor(t, body) => b.add_vendor(*t, body),
            }
            .unwrap();
            assert_eq!(off, before);
            assert_eq!(off % 4, 0);
        }
        let len = b.finish().unwrap();
        buf.truncate(len);
        buf
    }

    fn round_trip(specs: &[Spec], e: Endian) -> Result<(), TestCaseError> {
        let bytes = build(specs, e);
        let t = ResourceTable::new_checked(&bytes[..], e).unwrap();
        t.validate_known().unwrap();
        prop_assert_eq!(t.num_entries(), specs.len());
        prop_assert!(t.table_len() <= bytes.len());
        prop_assert!(
            bytes.len() - t.table_len() < 4,
            "only padding follows the table"
        );
        let mut expected_off = TABLE_HEADER_LEN + 4 * specs.len();
        for (i, s) in specs.iter().enumerate() {
            prop_assert_eq!(t.offset(i), Some(expected_off));
            let r = t.entry(i).unwrap();
            let entry_len = match (s, r) {
                (Spec::Carveout(da, pa, len, flags, n), Resource::Carveout(c)) => {
                    prop_assert_eq!(
                        (c.da(), c.pa(), c.len(), c.flags(), c.reserved()),
                        (*da, *pa, *len, *flags, 0)
                    );
                    prop_assert_eq!(c.name(), &n[..]);
                    CARVEOUT_LEN
                }
                (Spec::Devmem(da, pa, len, flags, n), Resource::Devmem(d)) => {
                    prop_assert_eq!(
                        (d.da(), d.pa(), d.len(), d.flags(), d.reserved()),
                        (*da, *pa, *len, *flags, 0)
                    );
                    prop_assert_eq!(d.name(), &n[..]);
                    DEVMEM_LEN
                }
                (Spec::Trace(da, len, n), Resource::Trace(tr)) => {
                    prop_assert_eq!((tr.da(), tr.len(), tr.reserved()), (*da, *len, 0));
                    prop_assert_eq!(tr.name(), &n[..]);
                    TRACE_LEN
                }
                (Spec::Vdev(id, nid, f, cfg, vr), Resource::Vdev(v)) => {
                    prop_assert_eq!((v.id(), v.notifyid(), v.dfeatures()), (*id, *nid, *f));
                    prop_assert_eq!((v.gfeatures(), v.status(), v.reserved()), (0, 0, [0, 0]));
                    prop_assert_eq!(v.num_of_vrings() as usize, vr.len());
                    prop_assert_eq!(v.config_len() as usize, cfg.len());
                    prop_assert_eq!(v.config(), &cfg[..]);
                    let got: Vec<_> = v.vrings().collect();
                    let want: Vec<_> = vr
                        .iter()
                        .map(|s| VdevVring {
                            da: s.da,
                            align: s.align,
                            num: s.num,
                            notifyid: s.notifyid,
                            reserved: 0,
                        })
                        .collect();
                    prop_assert_eq!(got, want);
                    VDEV_LEN + VRING_ENTRY_LEN * vr.len() + cfg.len()
                }
                (
                    Spec::Vendor(rtype, body),
                    Resource::Vendor {
                        rtype: r,
                        offset,
                        body: got,
                    },
                ) => {
                    prop_assert_eq!((r, offset), (*rtype, expected_off));
                    prop_assert!(got.starts_with(body));
                    prop_assert!(got[body.len()..].iter().all(|&b| b == 0));
                    prop_assert!(got.len() - body.len() < 4);
                    ENTRY_HEADER_LEN + body.len()
                }
                (s, r) => {
                    prop_assert!(false, "{:?} parsed as {:?}", s, r);
                    0
                }
            };
            expected_off += entry_len.next_multiple_of(4);
        }
        prop_assert_eq!(expected_off, bytes.len());
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            e in endian(),
        ) {
            exercise(&bytes, e);
        }

        #[test]
        fn arbitrary_bytes_with_a_plausible_header_never_panic(
            num in 0u32..6,
            offsets in proptest::collection::vec(0u32..200, 6),
            types in proptest::collection::vec(
                prop_oneof![0u32..6, Just(128u32), Just(512u32), Just(513u32), any::<u32>()], 6),
            mut body in proptest::collection::vec(any::<u8>(), 0..200),
            e in endian(),
        ) {
            let mut bytes = words(e, &[1, num, 0, 0]);
            bytes.extend_from_slice(&words(e, &offsets[..num as usize]));
            let header = bytes.len();
            bytes.append(&mut body);
            for (i, &off) in offsets.iter().enumerate().take(num as usize) {
                let at = off as usize;
                if at >= header && at + 4 <= bytes.len() {
                    bytes[at..at + 4].copy_from_slice(&e.u32_bytes(types[i]));
                }
            }
            exercise(&bytes, e);
        }

        #[test]
        fn mutated_valid_tables_never_panic(
            specs in proptest::collection::vec(spec(), 0..6),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
            e in endian(),
        ) {
            let mut bytes = build(&specs, e);
            for (at, v) in edits {
                let len = bytes.len();
                bytes[at % len] = v;
            }
            let keep = cut % (bytes.len() + 1);
            exercise(&bytes, e);
            exercise(&bytes[..keep], e);
        }

        #[test]
        fn builder_parser_round_trip(
            specs in proptest::collection::vec(spec(), 0..8),
            e in endian(),
        ) {
            round_trip(&specs, e)?;
        }
    }
}
