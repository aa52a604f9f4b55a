//! Guest RAM as the engine sees it, through rust-vmm's vm-memory: a vhost-user memory table
//! or a KVM guest's memory.
//!
//! Two kinds of region. Most are mapped for as long as the table lives (a shared file, a Xen
//! foreign mapping): the engine gets raw addresses into them, checked, and uses them for the
//! table's life. A Xen grant mapping made per access (vm-memory's `xen` feature, a region
//! without advance mapping) exists only while vm-memory's guard for one access lives: such a
//! region never hands out an address ([`SharedMemory::region`] says no), and every copy, load
//! and store in it goes through vm-memory's own accessors, which map and unmap around the one
//! access. The engine's rings need addresses, so rings placed in such a region are refused
//! (the ring check fails); message buffers there work.

use crate::mem::{MemError, SharedMemory, volatile_copy};
use core::ptr::NonNull;
use core::sync::atomic::Ordering;
use std::sync::Arc;
use std::vec::Vec;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
};

/// The memory map a vhost-user backend holds for one guest.
pub type GuestMemoryMap = GuestMemoryAtomic<GuestMemoryMmap>;

/// A snapshot of one guest's memory table. Cloning is cheap; the mappings stay valid while
/// any clone lives, even after the guest sends a new table.
#[derive(Debug, Clone)]
pub struct GuestRam(Arc<Snapshot>);

/// The table and, for the engine's hot path, where each region is mapped: the engine checks an
/// address for every ring index and descriptor it touches, and vm-memory's general lookup
/// (`get_slice`: a search plus a volatile slice with its bitmap) cost more than half of the
/// hub's time per message. A short scan of this flat list does the same check.
#[derive(Debug)]
struct Snapshot {
    map: Arc<GuestMemoryMmap>,
    regions: Vec<MappedRegion>,
}

/// One region of the table: guest addresses `start..start + len` are mapped at `host`.
#[derive(Debug)]
struct MappedRegion {
    start: u64,
    len: u64,
    /// Where the region is mapped for the table's life; `None` for a region mapped per access
    /// (see the module docs), reached only through vm-memory's accessors.
    host: Option<NonNull<u8>>,
}

// SAFETY: `host` points into a mapping owned by `map` (an `Arc<GuestMemoryMmap>`, which is Send
// and Sync); the pointer is only used for volatile accesses checked against `len`, exactly as
// the mapping itself allows from any thread.
unsafe impl Send for Snapshot {}
// SAFETY: as for Send: shared use only ever makes bounds-checked volatile accesses.
unsafe impl Sync for Snapshot {}

impl GuestRam {
    /// Takes the current table.
    pub fn snapshot(map: &GuestMemoryMap) -> Self {
        Self::from_map(map.memory().into_inner())
    }

    /// Whether two snapshots are the same memory table.
    pub fn same_as(&self, other: &GuestRam) -> bool {
        Arc::ptr_eq(&self.0.map, &other.0.map)
    }

    /// Wraps a memory map directly.
    pub fn new(mem: GuestMemoryMmap) -> Self {
        Self::from_map(Arc::new(mem))
    }

    fn from_map(map: Arc<GuestMemoryMmap>) -> Self {
        Self::classify(map, stable_host_address)
    }

    /// Builds the flat list with `host` deciding each region's kind.
    fn classify(
        map: Arc<GuestMemoryMmap>,
        host: impl Fn(&GuestRegionMmap) -> Option<NonNull<u8>>,
    ) -> Self {
        let regions = map
            .iter()
            .map(|r| MappedRegion {
                start: r.start_addr().raw_value(),
                len: r.len(),
                host: host(r),
            })
            .collect();
        GuestRam(Arc::new(Snapshot { map, regions }))
    }

    /// Where `len` bytes at `addr` are: in which region, at which offset, or `None` if they
    /// are not wholly inside one region. An empty range still needs an address inside memory,
    /// so it is checked as one byte.
    #[inline]
    fn locate(&self, addr: u64, len: usize) -> Option<(&MappedRegion, u64)> {
        let want = len.max(1) as u64;
        for r in &self.0.regions {
            let Some(offset) = addr.checked_sub(r.start) else {
                continue;
            };
            if offset >= r.len {
                continue;
            }
            // Crossing the region's end: regions are mapped separately.
            return (want <= r.len - offset).then_some((r, offset));
        }
        None
    }

    /// Where `len` bytes at `addr` are, for a copy: one lookup decides both whether they are
    /// inside memory and how to reach them (the copies of every message header and payload
    /// go through here: two lookups each were 4 % of the hub's instructions per message).
    #[inline]
    fn place(&self, addr: u64, len: usize) -> Place<'_> {
        match self.locate(addr, len) {
            Some((r, offset)) => match r.host {
                // SAFETY: `locate` checked `offset + max(len, 1) <= r.len`: inside the mapping.
                Some(host) => Place::Mapped(unsafe { host.add(offset as usize) }),
                None => self.per_access(r, offset),
            },
            None => Place::Outside,
        }
    }

    /// The vm-memory region behind `r`, a region mapped per access.
    #[cold]
    fn per_access(&self, r: &MappedRegion, offset: u64) -> Place<'_> {
        match self.0.map.find_region(GuestAddress(r.start)) {
            Some(region) => Place::PerAccess(region, MemoryRegionAddress(offset)),
            None => Place::Outside,
        }
    }

    /// Whether `len` bytes at `addr` lie in a region mapped per access.
    fn is_per_access(&self, addr: u64, len: usize) -> bool {
        self.locate(addr, len)
            .is_some_and(|(r, _)| r.host.is_none())
    }
}

/// Where a range of guest memory is, as [`GuestRam::place`] found it.
enum Place<'a> {
    /// Mapped for the table's life, at this host address.
    Mapped(NonNull<u8>),
    /// In a region mapped per access, at this offset: reached through vm-memory only.
    PerAccess(&'a GuestRegionMmap, MemoryRegionAddress),
    /// Not wholly inside one region.
    Outside,
}

/// Where vm-memory keeps `region` mapped for its whole life, or `None` if it maps it only
/// around each access (a Xen grant mapping without advance mapping: its host address is null,
/// and what a guard hands out is unmapped when the guard goes).
fn stable_host_address(region: &GuestRegionMmap) -> Option<NonNull<u8>> {
    #[cfg(feature = "xen")]
    if !vm_memory::MmapXenFlags::from_bits_truncate(region.xen_mmap_flags()).mmap_in_advance() {
        return None;
    }
    region
        .get_host_address(MemoryRegionAddress(0))
        .ok()
        .and_then(NonNull::new)
}

/// The engine's view of the regions mapped for the table's life only: the default accessors of
/// [`SharedMemory`] over [`GuestRam::region`].
struct Stable<'a>(&'a GuestRam);

// SAFETY: `region` is GuestRam's, whose guarantee is stated on its impl below.
unsafe impl SharedMemory for Stable<'_> {
    #[inline]
    fn region(&self, addr: u64, len: usize) -> Option<NonNull<u8>> {
        self.0.region(addr, len)
    }
}

/// What a failed access through vm-memory's accessors reports.
fn refused(addr: u64, len: usize) -> impl FnOnce(vm_memory::GuestMemoryError) -> MemError {
    move |_| MemError { addr, len }
}

// SAFETY: a pointer is returned only for a range that lies wholly inside one region mapped for
// the table's life: `start`, `len` and `host` come from the region itself, and
// `addr - start + len <= region len` is checked without overflow. The mapping is kept alive by
// the Arc for as long as `self` (and so any borrow of it) lives. A region mapped per access
// never gives a pointer: its accesses go through vm-memory, inside one guard each.
unsafe impl SharedMemory for GuestRam {
    // Always inlined: each ring part and buffer of a message checks its range here.
    #[inline(always)]
    fn region(&self, addr: u64, len: usize) -> Option<NonNull<u8>> {
        let (r, offset) = self.locate(addr, len)?;
        // SAFETY: `offset + max(len, 1) <= r.len`, so the result stays inside the mapping.
        r.host.map(|host| unsafe { host.add(offset as usize) })
    }

    #[inline]
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        match self.place(addr, buf.len()) {
            Place::Mapped(p) => {
                // SAFETY: `place` found `buf.len()` bytes at `p` inside a mapping that lives as
                // long as `self`; `buf` is ours alone, so the ranges do not overlap. The peer
                // may write concurrently: bytes are copied out, never referenced.
                unsafe { volatile_copy(p.as_ptr(), buf.as_mut_ptr(), buf.len()) };
                Ok(())
            }
            Place::PerAccess(r, at) => r.read_slice(buf, at).map_err(refused(addr, buf.len())),
            Place::Outside => Err(MemError {
                addr,
                len: buf.len(),
            }),
        }
    }

    #[inline]
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), MemError> {
        match self.place(addr, buf.len()) {
            Place::Mapped(p) => {
                // SAFETY: as for `read`; `buf` is a distinct Rust slice.
                unsafe { volatile_copy(buf.as_ptr(), p.as_ptr(), buf.len()) };
                Ok(())
            }
            Place::PerAccess(r, at) => r.write_slice(buf, at).map_err(refused(addr, buf.len())),
            Place::Outside => Err(MemError {
                addr,
                len: buf.len(),
            }),
        }
    }

    fn fill(&self, addr: u64, len: usize, byte: u8) -> Result<(), MemError> {
        if !self.is_per_access(addr, len) {
            return Stable(self).fill(addr, len, byte);
        }
        let chunk = [byte; 256];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len());
            self.write(addr + done as u64, &chunk[..n])?;
            done += n;
        }
        Ok(())
    }

    fn load_u16(&self, addr: u64) -> Result<u16, MemError> {
        match self.place(addr, 2) {
            Place::PerAccess(r, at) => r.load(at, Ordering::Relaxed).map_err(refused(addr, 2)),
            _ => Stable(self).load_u16(addr),
        }
    }

    fn load_u32(&self, addr: u64) -> Result<u32, MemError> {
        match self.place(addr, 4) {
            Place::PerAccess(r, at) => r.load(at, Ordering::Relaxed).map_err(refused(addr, 4)),
            _ => Stable(self).load_u32(addr),
        }
    }

    fn load_u64(&self, addr: u64) -> Result<u64, MemError> {
        match self.place(addr, 8) {
            Place::PerAccess(r, at) => r.load(at, Ordering::Relaxed).map_err(refused(addr, 8)),
            _ => Stable(self).load_u64(addr),
        }
    }

    fn store_u16(&self, addr: u64, v: u16) -> Result<(), MemError> {
        match self.place(addr, 2) {
            Place::PerAccess(r, at) => r.store(v, at, Ordering::Relaxed).map_err(refused(addr, 2)),
            _ => Stable(self).store_u16(addr, v),
        }
    }

    fn store_u32(&self, addr: u64, v: u32) -> Result<(), MemError> {
        match self.place(addr, 4) {
            Place::PerAccess(r, at) => r.store(v, at, Ordering::Relaxed).map_err(refused(addr, 4)),
            _ => Stable(self).store_u32(addr, v),
        }
    }

    fn store_u64(&self, addr: u64, v: u64) -> Result<(), MemError> {
        match self.place(addr, 8) {
            Place::PerAccess(r, at) => r.store(v, at, Ordering::Relaxed).map_err(refused(addr, 8)),
            _ => Stable(self).store_u64(addr, v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn accesses_stay_inside_regions() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x10000), 0x1000),
        ])
        .unwrap();
        let ram = GuestRam::new(mem);
        ram.write(0xff0, &[1; 16]).unwrap();
        assert!(
            ram.write(0xff8, &[1; 16]).is_err(),
            "crosses the end of a region"
        );
        assert!(ram.read(0x5000, &mut [0; 4]).is_err(), "a hole");
        ram.store_u32(0x10000, 7).unwrap();
        assert_eq!(ram.load_u32(0x10000).unwrap(), 7);
        assert!(ram.read(u64::MAX - 2, &mut [0; 8]).is_err());
    }

    #[test]
    fn adjacent_regions_are_mapped_separately() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        let ram = GuestRam::new(mem);
        // Each region on its own is fine, up to its last byte.
        ram.write(0xffc, &[1; 4]).unwrap();
        ram.write(0x1000, &[2; 4]).unwrap();
        ram.write(0x1ffc, &[3; 4]).unwrap();
        // A range over the boundary would span two mappings: refused.
        assert!(ram.region(0xffe, 4).is_none());
        // An empty range still needs an address inside memory.
        assert!(ram.region(0x1fff, 0).is_some());
        assert!(ram.region(0x2000, 0).is_none());
        assert!(ram.region(u64::MAX, 1).is_none());
        let mut back = [0u8; 4];
        ram.read(0x1000, &mut back).unwrap();
        assert_eq!(back, [2; 4]);
        // Snapshots of one map are the same table; another map is not.
        assert!(ram.same_as(&ram.clone()));
        let other = GuestRam::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap(),
        );
        assert!(!ram.same_as(&other));
    }

    /// Two regions, the second (at 0x10000) mapped per access, as a Xen grant region without
    /// advance mapping is: its host address is not handed out.
    fn with_per_access_region() -> GuestRam {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x2000),
            (GuestAddress(0x10000), 0x2000),
        ])
        .unwrap();
        GuestRam::classify(Arc::new(mem), |r| {
            if r.start_addr() == GuestAddress(0x10000) {
                None
            } else {
                stable_host_address(r)
            }
        })
    }

    #[test]
    fn a_region_mapped_per_access_never_gives_an_address() {
        let ram = with_per_access_region();
        // The fast path keeps its addresses; the per-access region gives none, not even for an
        // access vm-memory could map (an address that outlived its guard would dangle).
        assert!(ram.region(0x100, 8).is_some());
        assert!(ram.region(0x10000, 8).is_none());
        assert!(ram.region(0x10000, 0).is_none());
        // Everything else works there, through vm-memory, bounds-checked as anywhere.
        ram.write(0x10ff0, b"sixteen bytes!!!").unwrap();
        let mut back = [0u8; 16];
        ram.read(0x10ff0, &mut back).unwrap();
        assert_eq!(&back, b"sixteen bytes!!!");
        ram.store_u16(0x10002, 0xbeef).unwrap();
        ram.store_u32(0x10004, 0xdead_beef).unwrap();
        ram.store_u64(0x10008, u64::MAX - 1).unwrap();
        assert_eq!(ram.load_u16(0x10002).unwrap(), 0xbeef);
        assert_eq!(ram.load_u32(0x10004).unwrap(), 0xdead_beef);
        assert_eq!(ram.load_u64(0x10008).unwrap(), u64::MAX - 1);
        ram.fill(0x10100, 1000, 0x5a).unwrap();
        let mut filled = [0u8; 1000];
        ram.read(0x10100, &mut filled).unwrap();
        assert!(filled.iter().all(|&b| b == 0x5a));
        assert!(
            ram.write(0x11ff8, &[0; 16]).is_err(),
            "crosses the region's end"
        );
        assert!(ram.load_u64(0x11ffc).is_err(), "crosses the region's end");
        assert!(ram.load_u32(0x10002).is_err(), "misaligned");
        assert!(
            ram.fill(0x11f00, 0x200, 0).is_err(),
            "crosses the region's end"
        );
        // The hub's copy between two memories goes through a bounce buffer for it.
        let payload: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        ram.write(0x200, &payload).unwrap();
        crate::mem::copy_between(&ram, 0x200, &ram, 0x10800, payload.len()).unwrap();
        crate::mem::copy_between(&ram, 0x10800, &ram, 0x1000, payload.len()).unwrap();
        let mut copied = vec![0u8; payload.len()];
        ram.read(0x1000, &mut copied).unwrap();
        assert_eq!(copied, payload);
        assert!(crate::mem::copy_between(&ram, 0x200, &ram, 0x11c00, 0x500).is_err());
        assert!(crate::mem::copy_between(&ram, 0x11ffc, &ram, 0x200, 0).is_ok());
        assert!(crate::mem::copy_between(&ram, 0x12000, &ram, 0x200, 0).is_err());
    }

    #[test]
    fn rings_in_a_region_mapped_per_access_are_refused() {
        let ram = with_per_access_region();
        let ring = |at| crate::vring::VringLayout::legacy(at, 16, 4096).unwrap();
        assert!(ring(0).check(&ram).is_ok());
        assert!(ring(0x10000).check(&ram).is_err());
    }

    #[test]
    fn plain_regions_keep_their_addresses() {
        // A shared file or anonymous memory (with the `xen` feature: vm-memory's plain Unix
        // mapping) is mapped for the table's life: the engine's fast path.
        let ram = GuestRam::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap(),
        );
        assert!(ram.region(0, 0x1000).is_some());
    }

    proptest::proptest! {
        /// Every access, in either kind of region, succeeds exactly when it lies wholly inside
        /// one region, and reads back what was written.
        #[test]
        fn every_access_is_bounds_checked(addr in 0u64..0x13000, len in 0usize..0x900, byte: u8) {
            let ram = with_per_access_region();
            let inside = [(0u64, 0x2000u64), (0x10000, 0x2000)]
                .iter()
                .any(|&(start, size)| addr >= start && addr + (len.max(1) as u64) <= start + size);
            let data = vec![byte; len];
            proptest::prop_assert_eq!(ram.write(addr, &data).is_ok(), inside);
            let mut back = vec![0u8; len];
            proptest::prop_assert_eq!(ram.read(addr, &mut back).is_ok(), inside);
            if inside {
                proptest::prop_assert_eq!(back, data);
            }
        }
    }
}
