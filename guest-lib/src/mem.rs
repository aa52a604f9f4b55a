//! Shared memory that another party writes at the same time.
//!
//! Everything the engine reads or writes in rings and buffers goes through [`SharedMemory`]:
//! bounds-checked, by address in the link's address space (guest-physical for a VM, offsets
//! into a shared file, identity for firmware), with volatile accesses. No Rust reference is ever
//! formed into such memory, since the peer may change it under us.

use core::ptr::NonNull;
use core::sync::atomic::{Ordering, fence};

/// An access fell outside the memory, or could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemError {
    /// The address asked for.
    pub addr: u64,
    /// The length asked for.
    pub len: usize,
}

impl core::fmt::Display for MemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} bytes at {:#x} are outside shared memory",
            self.len, self.addr
        )
    }
}

impl core::error::Error for MemError {}

/// A range of memory shared with another party, addressed by the link's addresses.
///
/// # Safety
///
/// An implementation promises that a pointer returned by [`region`](Self::region) for
/// `(addr, len)` is valid for volatile reads and writes of `len` bytes for as long as the
/// implementing value is borrowed, and that it never returns a range some of which lies outside
/// memory it has mapped.
pub unsafe trait SharedMemory {
    /// Returns a pointer to `len` contiguous bytes at `addr`, or `None` if any of them lies
    /// outside the memory (or crosses a boundary between separately mapped regions).
    fn region(&self, addr: u64, len: usize) -> Option<NonNull<u8>>;

    /// Copies `buf.len()` bytes from `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let p = self.region(addr, buf.len()).ok_or(MemError {
            addr,
            len: buf.len(),
        })?;
        // SAFETY: `region` promises `buf.len()` readable bytes at `p`; `buf` is ours alone, so
        // the ranges cannot overlap. The peer may write concurrently: we copy bytes out and
        // never keep a reference, so a torn read yields wrong data, never unsoundness in our
        // own types (callers validate what they read).
        unsafe { volatile_copy(p.as_ptr(), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `buf` into memory at `addr`.
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), MemError> {
        let p = self.region(addr, buf.len()).ok_or(MemError {
            addr,
            len: buf.len(),
        })?;
        // SAFETY: `region` promises `buf.len()` writable bytes at `p`, and `buf` is a distinct
        // Rust slice, so the ranges do not overlap.
        unsafe { volatile_copy(buf.as_ptr(), p.as_ptr(), buf.len()) };
        Ok(())
    }

    /// Fills `len` bytes at `addr` with `byte`.
    fn fill(&self, addr: u64, len: usize, byte: u8) -> Result<(), MemError> {
        let p = self.region(addr, len).ok_or(MemError { addr, len })?;
        for i in 0..len {
            // SAFETY: `i < len` and `region` promises `len` writable bytes at `p`.
            unsafe { p.as_ptr().add(i).write_volatile(byte) };
        }
        Ok(())
    }

    /// Reads a naturally aligned u16 (raw, in memory order).
    fn load_u16(&self, addr: u64) -> Result<u16, MemError> {
        let p = self.aligned(addr, 2)?;
        // SAFETY: `aligned` checked the range and 2-byte alignment.
        Ok(unsafe { p.cast::<u16>().as_ptr().read_volatile() })
    }

    /// Reads a naturally aligned u32 (raw, in memory order).
    fn load_u32(&self, addr: u64) -> Result<u32, MemError> {
        let p = self.aligned(addr, 4)?;
        // SAFETY: `aligned` checked the range and 4-byte alignment.
        Ok(unsafe { p.cast::<u32>().as_ptr().read_volatile() })
    }

    /// Reads a naturally aligned u64 (raw, in memory order).
    fn load_u64(&self, addr: u64) -> Result<u64, MemError> {
        let p = self.aligned(addr, 8)?;
        // SAFETY: `aligned` checked the range and 8-byte alignment.
        Ok(unsafe { p.cast::<u64>().as_ptr().read_volatile() })
    }

    /// Writes a naturally aligned u16 (raw, in memory order).
    fn store_u16(&self, addr: u64, v: u16) -> Result<(), MemError> {
        let p = self.aligned(addr, 2)?;
        // SAFETY: `aligned` checked the range and 2-byte alignment.
        unsafe { p.cast::<u16>().as_ptr().write_volatile(v) };
        Ok(())
    }

    /// Writes a naturally aligned u32 (raw, in memory order).
    fn store_u32(&self, addr: u64, v: u32) -> Result<(), MemError> {
        let p = self.aligned(addr, 4)?;
        // SAFETY: `aligned` checked the range and 4-byte alignment.
        unsafe { p.cast::<u32>().as_ptr().write_volatile(v) };
        Ok(())
    }

    /// Writes a naturally aligned u64 (raw, in memory order).
    fn store_u64(&self, addr: u64, v: u64) -> Result<(), MemError> {
        let p = self.aligned(addr, 8)?;
        // SAFETY: `aligned` checked the range and 8-byte alignment.
        unsafe { p.cast::<u64>().as_ptr().write_volatile(v) };
        Ok(())
    }

    /// A checked, naturally aligned pointer to `size` bytes at `addr`.
    #[doc(hidden)]
    fn aligned(&self, addr: u64, size: usize) -> Result<NonNull<u8>, MemError> {
        let p = self
            .region(addr, size)
            .ok_or(MemError { addr, len: size })?;
        if !(p.as_ptr() as usize).is_multiple_of(size) {
            return Err(MemError { addr, len: size });
        }
        Ok(p)
    }
}

/// Copies between shared memories (or within one): the hub's single copy of a message from the
/// sender's buffer into the receiver's.
pub fn copy_between<A: SharedMemory + ?Sized, B: SharedMemory + ?Sized>(
    from: &A,
    from_addr: u64,
    to: &B,
    to_addr: u64,
    len: usize,
) -> Result<(), MemError> {
    let (Some(src), Some(dst)) = (from.region(from_addr, len), to.region(to_addr, len)) else {
        // A memory that gives no address for the range (outside it, or mapped only around each
        // access): through a bounce buffer and the memories' own accessors, which check it.
        return copy_through_buffer(from, from_addr, to, to_addr, len);
    };
    // SAFETY: both ranges were checked by their memories. They may overlap only if a peer
    // posted overlapping buffers; `volatile_copy` tolerates overlap (memmove, or forward
    // volatile accesses), so overlap yields wrong bytes, never undefined behaviour.
    unsafe { volatile_copy(src.as_ptr(), dst.as_ptr(), len) };
    Ok(())
}

/// [`copy_between`] for memories that give no address: one message buffer at a time.
#[cold]
fn copy_through_buffer<A: SharedMemory + ?Sized, B: SharedMemory + ?Sized>(
    from: &A,
    from_addr: u64,
    to: &B,
    to_addr: u64,
    len: usize,
) -> Result<(), MemError> {
    let whole = |addr| MemError { addr, len };
    let mut bounce = [0u8; 512];
    let mut done = 0;
    // At least once: an empty copy still needs both addresses inside memory.
    loop {
        let n = (len - done).min(bounce.len());
        let at = done as u64;
        let src = from_addr.checked_add(at).ok_or(whole(from_addr))?;
        let dst = to_addr.checked_add(at).ok_or(whole(to_addr))?;
        from.read(src, &mut bounce[..n])
            .map_err(|_| whole(from_addr))?;
        to.write(dst, &bounce[..n]).map_err(|_| whole(to_addr))?;
        done += n;
        if done >= len {
            return Ok(());
        }
    }
}

/// Copies of at most this many bytes go field-like, through volatile accesses; longer ones (a
/// message payload) go through `core::ptr::copy`, as vm-memory's own slice copies do.
const VOLATILE_COPY_MAX: usize = 16;

/// Copies `len` bytes between shared memory and our own (or between two shared memories).
///
/// Short copies use volatile word and byte accesses. Payload copies use `core::ptr::copy`
/// (memmove: a peer may post overlapping buffers): the compiler cannot elide or merge a copy
/// from or to memory it reached only through a raw pointer handed out by the mapping, and the
/// bytes are only ever copied, never read as Rust values in place. This is what vm-memory's
/// `VolatileSlice` copies do above 8 bytes, and it runs at `memcpy` speed (the byte-wise
/// volatile loop ran at 2.4x the time of `memcpy` for 496 bytes).
///
/// # Safety
///
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of writes.
pub(crate) unsafe fn volatile_copy(src: *const u8, dst: *mut u8, len: usize) {
    if len > VOLATILE_COPY_MAX {
        // SAFETY: the caller promises both ranges; `copy` allows them to overlap.
        unsafe { core::ptr::copy(src, dst, len) };
        return;
    }
    let mut i = 0;
    let word = core::mem::size_of::<usize>();
    if (src as usize) % word == (dst as usize) % word {
        while i < len && !(src as usize + i).is_multiple_of(word) {
            // SAFETY: `i < len`, within both ranges by the caller's promise.
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
            i += 1;
        }
        while i + word <= len {
            // SAFETY: `i + word <= len` keeps the word inside both ranges, and both pointers
            // are word-aligned here (same misalignment, advanced to a boundary).
            unsafe {
                let v = src.add(i).cast::<usize>().read_volatile();
                dst.add(i).cast::<usize>().write_volatile(v);
            }
            i += word;
        }
    }
    while i < len {
        // SAFETY: `i < len`, within both ranges by the caller's promise.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
}

/// Orders our earlier reads of shared memory before our later reads (acquire side of the
/// virtio index protocol: read an index, then the entries it publishes).
#[inline]
pub fn read_barrier() {
    fence(Ordering::Acquire);
}

/// Orders our earlier writes before our later writes (release side: fill entries, then
/// publish the index).
#[inline]
pub fn write_barrier() {
    fence(Ordering::Release);
}

/// Orders writes before reads: needed between publishing an index and reading the peer's
/// event index or flags, so neither side misses a notification.
#[inline]
pub fn full_barrier() {
    fence(Ordering::SeqCst);
}

/// Memory at a fixed host pointer, addressed from `base_addr`: firmware's identity-mapped RAM,
/// a mapped shared file, or a test's heap buffer.
#[derive(Debug)]
pub struct RawMemory {
    ptr: NonNull<u8>,
    len: usize,
    base_addr: u64,
}

// SAFETY: RawMemory is a pointer and a length; all accesses through it are volatile and the
// creator promised the range is valid shared memory for the value's lifetime.
unsafe impl Send for RawMemory {}
// SAFETY: as above; concurrent volatile access is the point of shared memory.
unsafe impl Sync for RawMemory {}

impl RawMemory {
    /// Wraps `len` bytes at `ptr`, addressed as `base_addr..base_addr + len`.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for volatile reads and writes of `len` bytes for the whole life of
    /// the returned value.
    pub unsafe fn new(ptr: NonNull<u8>, len: usize, base_addr: u64) -> Self {
        RawMemory {
            ptr,
            len,
            base_addr,
        }
    }

    /// The first address.
    pub fn base_addr(&self) -> u64 {
        self.base_addr
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the memory is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// SAFETY: `region` only returns ranges fully inside `ptr..ptr + len`, which the constructor's
// caller promised valid for the value's lifetime.
unsafe impl SharedMemory for RawMemory {
    #[inline]
    fn region(&self, addr: u64, len: usize) -> Option<NonNull<u8>> {
        let off = addr.checked_sub(self.base_addr)?;
        let end = off.checked_add(len as u64)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: `off + len <= self.len`, so the offset stays inside the allocation.
        Some(unsafe { self.ptr.add(off as usize) })
    }
}

/// Heap memory for tests and single-process use (both roles in one process).
#[derive(Debug)]
pub struct HeapMemory {
    // u64 words keep the base 8-byte aligned, as real ring memory is.
    words: alloc::boxed::Box<[core::cell::UnsafeCell<u64>]>,
    raw: RawMemory,
}

// SAFETY: all access goes through volatile operations on the UnsafeCell contents.
unsafe impl Sync for HeapMemory {}

impl HeapMemory {
    /// Allocates `len` zeroed bytes addressed from `base_addr`.
    pub fn new(len: usize, base_addr: u64) -> Self {
        let words: alloc::boxed::Box<[core::cell::UnsafeCell<u64>]> = (0..len.div_ceil(8))
            .map(|_| core::cell::UnsafeCell::new(0))
            .collect();
        let ptr = NonNull::new(words.as_ptr() as *mut u8).unwrap_or(NonNull::dangling());
        // SAFETY: the boxed slice lives as long as `self` (it moves with the box, not the
        // heap storage), holds at least `len` bytes, and is only accessed through `raw`.
        let raw = unsafe { RawMemory::new(ptr, len, base_addr) };
        HeapMemory { words, raw }
    }

    /// Number of 8-byte words backing the memory.
    pub fn word_count(&self) -> usize {
        self.words.len()
    }
}

// SAFETY: delegates to `RawMemory` over the owned allocation, which lives as long as `self`.
unsafe impl SharedMemory for HeapMemory {
    #[inline]
    fn region(&self, addr: u64, len: usize) -> Option<NonNull<u8>> {
        self.raw.region(addr, len)
    }
}

// SAFETY: forwarding to the referenced memory keeps its promise for the borrow's lifetime.
unsafe impl<M: SharedMemory + ?Sized> SharedMemory for &M {
    #[inline]
    fn region(&self, addr: u64, len: usize) -> Option<NonNull<u8>> {
        (**self).region(addr, len)
    }
}

// SAFETY: forwarding to the shared memory keeps its promise while the Arc lives.
unsafe impl<M: SharedMemory + ?Sized> SharedMemory for alloc::sync::Arc<M> {
    #[inline]
    fn region(&self, addr: u64, len: usize) -> Option<NonNull<u8>> {
        (**self).region(addr, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let m = HeapMemory::new(64, 0x1000);
        assert!(m.write(0x1000, &[1; 64]).is_ok());
        assert!(m.write(0x1001, &[1; 64]).is_err());
        assert!(m.write(0xfff, &[1]).is_err());
        assert!(m.read(u64::MAX, &mut [0; 2]).is_err());
        assert!(m.load_u32(0x1002).is_err(), "misaligned");
        m.store_u32(0x1004, 0xdead_beef).unwrap();
        assert_eq!(m.load_u32(0x1004).unwrap(), 0xdead_beef);
        let mut b = [0u8; 3];
        m.read(0x103d, &mut b).unwrap();
        assert_eq!(b, [1, 1, 1]);
    }

    #[test]
    fn copies_across_memories_at_any_alignment() {
        let a = HeapMemory::new(256, 0);
        let b = HeapMemory::new(256, 0x8000);
        let data: alloc::vec::Vec<u8> = (0..200u8).collect();
        for (s, d) in [(0, 0), (1, 3), (7, 0), (5, 5)] {
            a.write(s, &data).unwrap();
            copy_between(&a, s, &b, 0x8000 + d, 200).unwrap();
            let mut out = [0u8; 200];
            b.read(0x8000 + d, &mut out).unwrap();
            assert_eq!(&out[..], &data[..]);
        }
        assert!(copy_between(&a, 100, &b, 0x8000, 200).is_err());
    }
}
