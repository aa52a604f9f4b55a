//! remoteproc-vm's ELF loader on arbitrary images: inspecting (from memory and from a
//! forward-only stream) and loading into a remote memory never panic; whatever loads lies
//! inside that memory, and the two ways of reading agree.
//!
//! The remote memory covers 0x100000..0x180000, where vamp's firmware (images/) links, so
//! stripped firmware ELFs make good seeds (tests/run.d/fuzz.sh adds them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use std::sync::OnceLock;
use vamp_remoteproc::elf::{self, LoadOptions};
use vamp_remoteproc::image::{MemoryImage, StreamImage};
use vamp_rpmsg::mem::{HeapMemory, SharedMemory};
use vamp_rpmsg::wire::resource_table::ResourceTable;

const BASE: u64 = 0x10_0000;
const LEN: usize = 0x8_0000;

/// One remote memory for every run (what earlier runs left in it does not matter).
fn memory() -> &'static HeapMemory {
    static MEM: OnceLock<HeapMemory> = OnceLock::new();
    MEM.get_or_init(|| HeapMemory::new(LEN, BASE))
}

fuzz_target!(|data: &[u8]| {
    let from_memory = elf::inspect(&mut MemoryImage::new(data));
    let from_stream = elf::inspect(&mut StreamImage::new(Cursor::new(data)));
    if let (Ok(a), Ok(b)) = (&from_memory, &from_stream) {
        assert_eq!(a, b, "memory and stream read the same headers");
    }
    if let Ok((info, table)) = elf::inspect_with_table(&mut MemoryImage::new(data)) {
        let _ = (format!("{info:?}"), info.machine_name());
        for s in &info.segments {
            let _ = (s.flags_str(), s.is_loaded());
        }
        if let Some(Ok(bytes)) = table {
            let _ = ResourceTable::new_unchecked(&bytes[..], info.endian).check();
        }
    }
    let mem = memory();
    let options = LoadOptions {
        chunk_size: 1 + data.len() % 8192,
    };
    let loaded = elf::load_with(&mut MemoryImage::new(data), mem, &options, |s| {
        let inside = s.paddr >= BASE
            && s.paddr
                .checked_add(s.memsz)
                .is_some_and(|end| end <= BASE + LEN as u64);
        if inside {
            Ok(())
        } else {
            Err("outside".into())
        }
    });
    if let Ok(image) = &loaded {
        let _ = (image.entry(), image.resource_table());
        for s in image.info.segments.iter().filter(|s| s.is_loaded()) {
            assert!(mem.region(s.paddr, s.memsz as usize).is_some());
        }
    }
    let streamed = elf::load(&mut StreamImage::new(Cursor::new(data)), mem);
    if let (Ok(a), Ok(b)) = (&loaded, &streamed) {
        assert_eq!(a.info, b.info);
    }
});
