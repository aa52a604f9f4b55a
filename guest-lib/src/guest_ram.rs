//! Guest RAM as the engine sees it, through rust-vmm's vm-memory: a vhost-user memory table
//! or a KVM guest's memory.

use crate::mem::SharedMemory;
use core::ptr::NonNull;
use std::sync::Arc;
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};

/// The memory map a vhost-user backend holds for one guest.
pub type GuestMemoryMap = GuestMemoryAtomic<GuestMemoryMmap>;

/// A snapshot of one guest's memory table. Cloning is cheap; the mappings stay valid while
/// any clone lives, even after the guest sends a new table.
#[derive(Debug, Clone)]
pub struct GuestRam(Arc<GuestMemoryMmap>);

impl GuestRam {
    /// Takes the current table.
    pub fn snapshot(map: &GuestMemoryMap) -> Self {
        GuestRam(map.memory().into_inner())
    }

    /// Whether two snapshots are the same memory table.
    pub fn same_as(&self, other: &GuestRam) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Wraps a memory map directly.
    pub fn new(mem: GuestMemoryMmap) -> Self {
        GuestRam(Arc::new(mem))
    }
}

// SAFETY: `get_slice` only returns slices that lie wholly inside one region of the mapping;
// the mapping is kept alive by the Arc for as long as `self` (and so any borrow of it) lives.
unsafe impl SharedMemory for GuestRam {
    fn region(&self, addr: u64, len: usize) -> Option<NonNull<u8>> {
        if len == 0 {
            // vm-memory refuses empty slices at a region's end; an empty range still needs an
            // address inside memory.
            return self
                .0
                .get_slice(GuestAddress(addr), 1)
                .ok()
                .and_then(|s| NonNull::new(s.ptr_guard_mut().as_ptr()));
        }
        let slice = self.0.get_slice(GuestAddress(addr), len).ok()?;
        NonNull::new(slice.ptr_guard_mut().as_ptr())
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
}
