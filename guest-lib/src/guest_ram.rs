//! Guest RAM as the engine sees it, through rust-vmm's vm-memory: a vhost-user memory table
//! or a KVM guest's memory.

use crate::mem::SharedMemory;
use core::ptr::NonNull;
use std::sync::Arc;
use std::vec::Vec;
use vm_memory::{
    Address, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
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
    /// `None` where vm-memory gives no plain host address (then its own lookup is used).
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
        let regions = map
            .iter()
            .map(|r| MappedRegion {
                start: r.start_addr().raw_value(),
                len: r.len(),
                host: r
                    .get_host_address(MemoryRegionAddress(0))
                    .ok()
                    .and_then(NonNull::new),
            })
            .collect();
        GuestRam(Arc::new(Snapshot { map, regions }))
    }

    /// vm-memory's own lookup, for regions without a plain host address.
    #[cold]
    #[inline(never)]
    fn region_by_lookup(&self, addr: u64, len: usize) -> Option<NonNull<u8>> {
        let slice = self.0.map.get_slice(GuestAddress(addr), len).ok()?;
        NonNull::new(slice.ptr_guard_mut().as_ptr())
    }
}

// SAFETY: a pointer is returned only for a range that lies wholly inside one region: `start`,
// `len` and `host` come from the region itself, and `addr - start + len <= region len` is
// checked without overflow. The mapping is kept alive by the Arc for as long as `self` (and so
// any borrow of it) lives. vm-memory's `get_slice`, the fallback, gives the same guarantee.
unsafe impl SharedMemory for GuestRam {
    #[inline]
    fn region(&self, addr: u64, len: usize) -> Option<NonNull<u8>> {
        // vm-memory refuses empty slices at a region's end; an empty range still needs an
        // address inside memory, so it is checked as one byte.
        let want = len.max(1) as u64;
        for r in &self.0.regions {
            let Some(offset) = addr.checked_sub(r.start) else {
                continue;
            };
            if offset >= r.len {
                continue;
            }
            if want > r.len - offset {
                // Crosses the region's end: regions are mapped separately.
                return None;
            }
            return match r.host {
                // SAFETY: `offset + want <= r.len`, so the result stays inside the mapping.
                Some(host) => Some(unsafe { host.add(offset as usize) }),
                None => self.region_by_lookup(addr, len.max(1)),
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
