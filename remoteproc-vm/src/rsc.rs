//! Resource table handling after load (Linux's `rproc_handle_resources`, OpenAMP's
//! `handle_rsc_table`).
//!
//! The table is read from remote memory into a local copy (the remote may write it at any
//! time; nothing is parsed in place), validated, and every entry is handled:
//!
//! - **carveout**: a fixed device address is [`map`](RemoteBackend::map)ped; `da` =
//!   `FW_RSC_ADDR_ANY` is [`alloc`](RemoteBackend::alloc)ated (4 KiB aligned, zeroed) and the
//!   addresses are written back (`pa` = `da` unless the remote gave one).
//! - **devmem**: mapped (a backend that does not do devmem says
//!   [`Unsupported`](BackendError::Unsupported) and the entry is skipped with a warning, as
//!   Linux skips devmem without an IOMMU).
//! - **trace**: recorded as a [`TraceBuffer`]; one at `FW_RSC_ADDR_ANY` is allocated (zeroed).
//! - **vdev**: every vring at `FW_RSC_ADDR_ANY` gets `VringLayout::legacy_bytes(num, align)`
//!   bytes aligned to `align` (zeroed); fixed vrings are used as given (they must lie in
//!   memory). Notify ids of `FW_RSC_ADDR_ANY` get the lowest id not used in the table.
//! - **vendor** (128..=512): handed to [`RemoteBackend::vendor_resource_at`] (which may write
//!   into the body); `Unsupported` is skipped with a warning (as Linux does), other errors fail.
//!
//! Order: vendor entries, fixed carveouts and devmem first (table order), then every
//! allocation (table order), so a backend never sees a `map` after an `alloc` of the same
//! load. The updated copy is then written back to remote memory, where the remote reads the
//! addresses the host chose.

use crate::backend::{BackendError, RemoteBackend};
use vamp_rpmsg::mem::{MemError, SharedMemory};
use vamp_rpmsg::virtio::VIRTIO_ID_RPMSG;
use vamp_rpmsg::vring::{MAX_QUEUE_SIZE, VringError, VringLayout};
use vamp_rpmsg::wire::resource_table::{
    FW_RSC_ADDR_ANY, Resource, ResourceTable, TABLE_HEADER_LEN, TRACE_DA_AT, VDEV_GFEATURES_AT,
    VDEV_STATUS_AT,
};
use vamp_rpmsg::wire::{Endian, WireError};

/// Largest table read from remote memory.
pub const MAX_TABLE_LEN: u64 = 1 << 20;
/// Alignment of allocated carveouts.
pub const CARVEOUT_ALIGN: u64 = 4096;
/// Alignment of allocated trace buffers.
pub const TRACE_ALIGN: u64 = 8;

/// Why a resource table could not be handled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RscError {
    /// The table is not in remote memory.
    #[error("the resource table ({len:#x} bytes at {addr:#x}) is not in remote memory")]
    OutsideMemory {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The table is larger than [`MAX_TABLE_LEN`] or smaller than its header.
    #[error("resource table of {len:#x} bytes: it must hold a header (16) and at most {max:#x}")]
    BadSize {
        /// Length asked for.
        len: u64,
        /// Most accepted.
        max: u64,
    },
    /// The table does not parse (`ResourceTable::new_checked` + `validate_known`).
    #[error("malformed resource table: {0}")]
    Malformed(#[from] WireError),
    /// The backend refused an entry.
    #[error("resource entry {index} ({what}): {source}")]
    Backend {
        /// Entry index.
        index: usize,
        /// What was asked.
        what: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// An entry asks for something impossible.
    #[error("resource entry {index}: {why}")]
    BadEntry {
        /// Entry index.
        index: usize,
        /// Why.
        why: String,
    },
    /// An address chosen by the host does not fit the table's 32-bit fields.
    #[error("resource entry {index}: address {addr:#x} does not fit the table's 32-bit field")]
    AddressTooLarge {
        /// Entry index.
        index: usize,
        /// The address.
        addr: u64,
    },
    /// An entry's memory is not remote memory.
    #[error("resource entry {index}: {len:#x} bytes at {addr:#x} are not remote memory")]
    NotInMemory {
        /// Entry index.
        index: usize,
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
    },
}

/// A carveout or devmem entry after handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryResource {
    /// Entry index in the table.
    pub index: usize,
    /// Name.
    pub name: String,
    /// Device address.
    pub da: u64,
    /// Physical address (as the backend reported it).
    pub pa: u64,
    /// Length.
    pub len: u64,
    /// Flags.
    pub flags: u32,
    /// Whether the host allocated it (`FW_RSC_ADDR_ANY`) rather than mapping a fixed address.
    pub allocated: bool,
    /// Whether the backend mapped it (false for a devmem it does not support).
    pub mapped: bool,
}

/// A trace buffer the remote writes text into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceBuffer {
    /// Entry index in the table.
    pub index: usize,
    /// Name (`trace0`...).
    pub name: String,
    /// Device address.
    pub da: u64,
    /// Length.
    pub len: u32,
}

impl TraceBuffer {
    /// The text in the buffer: up to the first NUL (or the whole buffer), as Linux's debugfs
    /// `traceN` reads it. Invalid UTF-8 is replaced.
    pub fn read_trace<M: SharedMemory + ?Sized>(&self, mem: &M) -> Result<String, MemError> {
        // The length is the firmware's word: read at most MAX_TRACE_READ of it, in one read
        // into one buffer of that size.
        let len = (self.len as usize).min(crate::console::MAX_TRACE_READ);
        let mut out = vec![0u8; len];
        mem.read(self.da, &mut out)?;
        if let Some(nul) = out.iter().position(|&b| b == 0) {
            out.truncate(nul);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// One vring of a vdev after handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringSetup {
    /// Device address.
    pub da: u64,
    /// Alignment of the used ring.
    pub align: u64,
    /// Entries.
    pub num: u16,
    /// Notify id.
    pub notifyid: u32,
    /// Whether the host allocated it.
    pub allocated: bool,
}

impl VringSetup {
    /// The legacy layout of the ring.
    pub fn layout(&self) -> Result<VringLayout, VringError> {
        VringLayout::legacy(self.da, self.num, self.align)
    }

    /// Bytes the ring occupies.
    pub fn bytes(&self) -> u64 {
        VringLayout::legacy_bytes(self.num, self.align)
    }
}

/// What creating a virtio device over a vdev entry needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdevSetup {
    /// Entry index in the table.
    pub index: usize,
    /// Which vdev this is (0 for the first vdev entry).
    pub vdev_index: usize,
    /// Address of the entry (its `type` word) in remote memory.
    pub entry_addr: u64,
    /// Virtio device id (7 = rpmsg).
    pub id: u32,
    /// The device's notify id.
    pub notifyid: u32,
    /// Features the remote offers.
    pub dfeatures: u32,
    /// Config space length.
    pub config_len: u32,
    /// The vrings.
    pub vrings: Vec<VringSetup>,
}

impl VdevSetup {
    /// Whether it is an rpmsg device.
    pub fn is_rpmsg(&self) -> bool {
        self.id == VIRTIO_ID_RPMSG
    }

    /// Address of its `status` byte.
    pub fn status_addr(&self) -> u64 {
        self.entry_addr + VDEV_STATUS_AT as u64
    }

    /// Address of its `gfeatures` word.
    pub fn gfeatures_addr(&self) -> u64 {
        self.entry_addr + VDEV_GFEATURES_AT as u64
    }
}

/// A vendor entry after handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorResource {
    /// Entry index in the table.
    pub index: usize,
    /// Type (128..=512).
    pub rtype: u32,
    /// Body bytes handed to the backend.
    pub len: usize,
    /// Whether the backend handled it (false: skipped as unsupported).
    pub handled: bool,
}

/// A handled resource table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSetup {
    /// Where the table is in remote memory.
    pub table_addr: u64,
    /// Its length.
    pub table_len: usize,
    /// Its byte order.
    pub endian: Endian,
    /// The local copy, as written back.
    pub table: Vec<u8>,
    /// Carveouts, in table order.
    pub carveouts: Vec<MemoryResource>,
    /// Devmem entries, in table order.
    pub devmems: Vec<MemoryResource>,
    /// Trace buffers, in table order.
    pub traces: Vec<TraceBuffer>,
    /// Vdevs, in table order.
    pub vdevs: Vec<VdevSetup>,
    /// Vendor entries, in table order.
    pub vendor: Vec<VendorResource>,
}

impl ResourceSetup {
    /// The first carveout called `name`.
    pub fn carveout_named(&self, name: &str) -> Option<&MemoryResource> {
        self.carveouts.iter().find(|c| c.name == name)
    }

    /// The `n`th vdev.
    pub fn vdev(&self, n: usize) -> Option<&VdevSetup> {
        self.vdevs.get(n)
    }

    /// A view of the local copy.
    pub fn view(&self) -> ResourceTable<&[u8]> {
        ResourceTable::new_unchecked(&self.table[..], self.endian)
    }
}

fn name_string(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn fit32(index: usize, addr: u64) -> Result<u32, RscError> {
    u32::try_from(addr)
        .ok()
        .filter(|&a| a != FW_RSC_ADDR_ANY)
        .ok_or(RscError::AddressTooLarge { index, addr })
}

fn backend_err(index: usize, what: String) -> impl FnOnce(BackendError) -> RscError {
    move |source| RscError::Backend {
        index,
        what,
        source,
    }
}

fn zero<M: SharedMemory + ?Sized>(
    mem: &M,
    index: usize,
    addr: u64,
    len: u64,
) -> Result<(), RscError> {
    let not_mem = RscError::NotInMemory { index, addr, len };
    let n = usize::try_from(len).map_err(|_| RscError::NotInMemory { index, addr, len })?;
    mem.fill(addr, n, 0).map_err(|_| not_mem)
}

fn in_memory<M: SharedMemory + ?Sized>(
    mem: &M,
    index: usize,
    addr: u64,
    len: u64,
) -> Result<(), RscError> {
    let ok = usize::try_from(len)
        .ok()
        .and_then(|n| mem.region(addr, n))
        .is_some();
    if ok {
        Ok(())
    } else {
        Err(RscError::NotInMemory { index, addr, len })
    }
}

/// Reads the table at `table_addr` (`table_len` bytes) from the backend's memory, handles every
/// entry (see the module documentation) and writes the updated table back.
pub fn handle_resources<B: RemoteBackend + ?Sized>(
    backend: &mut B,
    table_addr: u64,
    table_len: u64,
    endian: Endian,
) -> Result<ResourceSetup, RscError> {
    if !(TABLE_HEADER_LEN as u64..=MAX_TABLE_LEN).contains(&table_len) {
        return Err(RscError::BadSize {
            len: table_len,
            max: MAX_TABLE_LEN,
        });
    }
    let mut table = vec![0u8; table_len as usize];
    backend
        .memory()
        .read(table_addr, &mut table)
        .map_err(|_| RscError::OutsideMemory {
            addr: table_addr,
            len: table_len,
        })?;
    {
        let view = ResourceTable::new_checked(&table[..], endian)?;
        view.validate_known()?;
        if view.reserved() != [0, 0] {
            crate::ratelog::warn_limited!(
                "resource table: reserved header words are {:?}, not zero (Linux refuses such a table)",
                view.reserved()
            );
        }
    }
    let mut setup = ResourceSetup {
        table_addr,
        table_len: table.len(),
        endian,
        table: Vec::new(),
        carveouts: Vec::new(),
        devmems: Vec::new(),
        traces: Vec::new(),
        vdevs: Vec::new(),
        vendor: Vec::new(),
    };
    let num = ResourceTable::new_unchecked(&table[..], endian).num_entries();
    let mut used_ids = used_notify_ids(&table, endian);

    // Pass 1: what sits at fixed addresses, and vendor entries, in table order.
    for index in 0..num {
        let mut t = ResourceTable::new_unchecked(&mut table[..], endian);
        match t.entry_mut(index)? {
            Resource::Carveout(mut c) if c.da() != FW_RSC_ADDR_ANY || c.pa() != FW_RSC_ADDR_ANY => {
                let name = name_string(c.name());
                let len = u64::from(c.len());
                if len == 0 {
                    return Err(RscError::BadEntry {
                        index,
                        why: format!("carveout \"{name}\" is empty"),
                    });
                }
                // A carveout with only a physical address sits there for the remote too.
                let da = if c.da() != FW_RSC_ADDR_ANY {
                    c.da()
                } else {
                    c.pa()
                };
                let pa = backend
                    .map(u64::from(da), len)
                    .map_err(backend_err(index, format!("map carveout \"{name}\"")))?;
                c.set_da(da);
                if c.pa() == FW_RSC_ADDR_ANY {
                    c.set_pa(fit32(index, pa)?);
                }
                setup.carveouts.push(MemoryResource {
                    index,
                    name,
                    da: u64::from(da),
                    pa: u64::from(c.pa()),
                    len,
                    flags: c.flags(),
                    allocated: false,
                    mapped: true,
                });
            }
            Resource::Devmem(mut d) => {
                let name = name_string(d.name());
                let len = u64::from(d.len());
                if d.da() == FW_RSC_ADDR_ANY {
                    return Err(RscError::BadEntry {
                        index,
                        why: format!("devmem \"{name}\" has no device address"),
                    });
                }
                let (pa, mapped) = match backend.map(u64::from(d.da()), len) {
                    Ok(pa) => (pa, true),
                    Err(BackendError::Unsupported(why)) => {
                        crate::ratelog::warn_limited!(
                            "resource entry {index}: devmem \"{name}\" skipped: {why}"
                        );
                        (u64::from(d.pa()), false)
                    }
                    Err(e) => return Err(backend_err(index, format!("map devmem \"{name}\""))(e)),
                };
                if mapped && d.pa() == FW_RSC_ADDR_ANY {
                    d.set_pa(fit32(index, pa)?);
                }
                setup.devmems.push(MemoryResource {
                    index,
                    name,
                    da: u64::from(d.da()),
                    pa: u64::from(d.pa()),
                    len,
                    flags: d.flags(),
                    allocated: false,
                    mapped,
                });
            }
            Resource::Vendor {
                rtype,
                offset,
                body,
            } => {
                let len = body.len();
                // The body starts after the type word.
                let da = table_addr + offset as u64 + 4;
                let handled = match backend.vendor_resource_at(rtype, da, body) {
                    Ok(()) => true,
                    Err(BackendError::Unsupported(why)) => {
                        crate::ratelog::warn_limited!(
                            "resource entry {index}: vendor type {rtype} skipped: {why}"
                        );
                        false
                    }
                    Err(e) => {
                        return Err(backend_err(index, format!("vendor resource type {rtype}"))(
                            e,
                        ));
                    }
                };
                setup.vendor.push(VendorResource {
                    index,
                    rtype,
                    len,
                    handled,
                });
            }
            _ => {}
        }
    }

    // Pass 2: everything the host places, in table order.
    let mut vdev_index = 0;
    for index in 0..num {
        let entry_offset = ResourceTable::new_unchecked(&table[..], endian)
            .offset(index)
            .unwrap_or(0);
        let mut patch = None;
        let mut t = ResourceTable::new_unchecked(&mut table[..], endian);
        match t.entry_mut(index)? {
            Resource::Carveout(mut c) if c.da() == FW_RSC_ADDR_ANY && c.pa() == FW_RSC_ADDR_ANY => {
                let name = name_string(c.name());
                let len = u64::from(c.len());
                if len == 0 {
                    return Err(RscError::BadEntry {
                        index,
                        why: format!("carveout \"{name}\" is empty"),
                    });
                }
                let da = backend
                    .alloc(len, CARVEOUT_ALIGN)
                    .map_err(backend_err(index, format!("allocate carveout \"{name}\"")))?;
                let da32 = fit32(index, da)?;
                zero(backend.memory(), index, da, len)?;
                c.set_da(da32);
                c.set_pa(da32);
                setup.carveouts.push(MemoryResource {
                    index,
                    name,
                    da,
                    pa: da,
                    len,
                    flags: c.flags(),
                    allocated: true,
                    mapped: true,
                });
            }
            Resource::Trace(tr) => {
                let name = name_string(tr.name());
                let len = tr.len();
                if len == 0 {
                    return Err(RscError::BadEntry {
                        index,
                        why: format!("trace \"{name}\" is empty"),
                    });
                }
                let da = if tr.da() == FW_RSC_ADDR_ANY {
                    let da = backend
                        .alloc(u64::from(len), TRACE_ALIGN)
                        .map_err(backend_err(index, format!("allocate trace \"{name}\"")))?;
                    let da32 = fit32(index, da)?;
                    zero(backend.memory(), index, da, u64::from(len))?;
                    patch = Some((entry_offset + TRACE_DA_AT, da32));
                    da
                } else {
                    let da = u64::from(tr.da());
                    in_memory(backend.memory(), index, da, u64::from(len))?;
                    da
                };
                setup.traces.push(TraceBuffer {
                    index,
                    name,
                    da,
                    len,
                });
            }
            Resource::Vdev(mut v) => {
                let mut vrings = Vec::new();
                for i in 0..usize::from(v.num_of_vrings()) {
                    let Some(ring) = v.vring(i) else { break };
                    let num = u16::try_from(ring.num)
                        .ok()
                        .filter(|n| n.is_power_of_two() && *n <= MAX_QUEUE_SIZE)
                        .ok_or_else(|| RscError::BadEntry {
                            index,
                            why: format!(
                                "vring {i} has {} entries (a power of two up to 32768 is needed)",
                                ring.num
                            ),
                        })?;
                    let align = u64::from(ring.align);
                    if !align.is_power_of_two() {
                        return Err(RscError::BadEntry {
                            index,
                            why: format!(
                                "vring {i} alignment {:#x} is not a power of two",
                                ring.align
                            ),
                        });
                    }
                    let bytes = VringLayout::legacy_bytes(num, align);
                    let (da, allocated) = if ring.da == FW_RSC_ADDR_ANY {
                        let da = backend
                            .alloc(bytes, align.max(16))
                            .map_err(backend_err(index, format!("allocate vring {i}")))?;
                        let da32 = fit32(index, da)?;
                        zero(backend.memory(), index, da, bytes)?;
                        v.set_vring_da(i, da32)?;
                        (da, true)
                    } else {
                        let da = u64::from(ring.da);
                        let layout = VringLayout::legacy(da, num, align).map_err(|e| {
                            RscError::BadEntry {
                                index,
                                why: format!("vring {i}: {e}"),
                            }
                        })?;
                        layout
                            .check(backend.memory())
                            .map_err(|_| RscError::NotInMemory {
                                index,
                                addr: da,
                                len: bytes,
                            })?;
                        (da, false)
                    };
                    let notifyid = if ring.notifyid == FW_RSC_ADDR_ANY {
                        let id = next_id(&mut used_ids);
                        v.set_vring_notifyid(i, id)?;
                        id
                    } else {
                        ring.notifyid
                    };
                    vrings.push(VringSetup {
                        da,
                        align,
                        num,
                        notifyid,
                        allocated,
                    });
                }
                let notifyid = if v.notifyid() == FW_RSC_ADDR_ANY {
                    let id = next_id(&mut used_ids);
                    v.set_notifyid(id);
                    id
                } else {
                    v.notifyid()
                };
                setup.vdevs.push(VdevSetup {
                    index,
                    vdev_index,
                    entry_addr: table_addr + entry_offset as u64,
                    id: v.id(),
                    notifyid,
                    dfeatures: v.dfeatures(),
                    config_len: v.config_len(),
                    vrings,
                });
                vdev_index += 1;
            }
            _ => {}
        }
        if let Some((at, v)) = patch
            && let Some(field) = at.checked_add(4).and_then(|end| table.get_mut(at..end))
        {
            field.copy_from_slice(&endian.u32_bytes(v));
        }
    }
    setup.carveouts.sort_by_key(|c| c.index);
    backend
        .memory()
        .write(table_addr, &table)
        .map_err(|_| RscError::OutsideMemory {
            addr: table_addr,
            len: table_len,
        })?;
    setup.table = table;
    Ok(setup)
}

/// Notify ids the table already uses (vdevs and their vrings).
fn used_notify_ids(table: &[u8], endian: Endian) -> Vec<u32> {
    let view = ResourceTable::new_unchecked(table, endian);
    let mut ids = Vec::new();
    for e in view.entries().flatten() {
        if let Resource::Vdev(v) = e {
            ids.push(v.notifyid());
            ids.extend(v.vrings().map(|r| r.notifyid));
        }
    }
    ids.retain(|&i| i != FW_RSC_ADDR_ANY);
    ids
}

/// The lowest id not in `used`; marks it used.
fn next_id(used: &mut Vec<u32>) -> u32 {
    let id = (0..).find(|i| !used.contains(i)).unwrap_or(0);
    used.push(id);
    id
}
