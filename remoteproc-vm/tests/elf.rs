//! ELF loading: both classes and byte orders, all three stores, and every way an image can be
//! broken.

mod common;

use common::*;
use proptest::prelude::*;
use std::io;
use vamp_remoteproc::elf::{self, ElfClass, ElfError, LoadOptions, STREAM_WINDOW};
use vamp_remoteproc::image::{FileImage, ImageStore, MemoryImage, StreamImage};
use vamp_rpmsg::mem::{HeapMemory, SharedMemory};
use vamp_rpmsg::wire::Endian;

const MEM: usize = 1 << 20;

fn dirty_memory() -> HeapMemory {
    let m = HeapMemory::new(MEM, 0);
    m.fill(0, MEM, 0xAA).unwrap();
    m
}

fn read(m: &HeapMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    m.read(addr, &mut v).unwrap();
    v
}

/// Checks a loaded `image_with_table` image.
fn check_loaded(m: &HeapMemory, table: Option<&[u8]>) {
    assert_eq!(read(m, CODE, 0x300), pattern(0x300, 7), "code copied");
    assert!(
        read(m, CODE + 0x300, 0xd00).iter().all(|&b| b == 0),
        "bss zeroed"
    );
    assert_eq!(read(m, CODE + 0x1000, 4), [0xAA; 4], "nothing past memsz");
    let tlen = table.map_or(0, <[u8]>::len);
    if let Some(t) = table {
        assert_eq!(read(m, DATA, t.len()), t);
    }
    assert_eq!(read(m, DATA + tlen as u64, 0x40), pattern(0x40, 3));
    let rest = 0x2000 - tlen - 0x40;
    assert!(
        read(m, DATA + tlen as u64 + 0x40, rest)
            .iter()
            .all(|&b| b == 0)
    );
}

#[test]
fn elf32_and_elf64_in_both_byte_orders_load() {
    for class64 in [false, true] {
        for big in [false, true] {
            let endian = if big { Endian::Big } else { Endian::Little };
            let table = firmware_table(endian);
            let built = image_with_table(class64, big, Some(&table)).build();
            let info = elf::inspect(&mut MemoryImage::new(&built.bytes)).unwrap();
            assert_eq!(
                info.class,
                if class64 {
                    ElfClass::Elf64
                } else {
                    ElfClass::Elf32
                }
            );
            assert_eq!(info.endian, endian);
            assert_eq!(info.machine, if class64 { 62 } else { 40 });
            assert_eq!(info.entry, CODE);
            assert_eq!(info.segments.len(), 2);
            assert_eq!(
                (
                    info.segments[1].paddr,
                    info.segments[1].memsz,
                    info.segments[1].flags_str()
                ),
                (DATA, 0x2000, "RW-".to_string())
            );
            let rt = info.resource_table.unwrap();
            assert_eq!(
                (rt.addr, rt.section_addr, rt.size),
                (DATA, DATA, table.len() as u64)
            );
            assert_eq!(rt.file_offset, built.seg_offsets[1]);

            let m = dirty_memory();
            let loaded = elf::load(&mut MemoryImage::new(&built.bytes), &m).unwrap();
            assert_eq!(loaded.entry(), CODE);
            assert_eq!(loaded.resource_table(), Some(rt));
            assert_eq!(loaded.copied, 0x300 + table.len() as u64 + 0x40);
            assert_eq!(
                loaded.zeroed,
                0x1000 - 0x300 + 0x2000 - table.len() as u64 - 0x40
            );
            check_loaded(&m, Some(&table));
        }
    }
}

#[test]
fn all_three_stores_load_the_same() {
    let table = firmware_table(Endian::NATIVE);
    for layout in [Layout::Usual, Layout::SectionsFirst] {
        for class64 in [false, true] {
            let mut e = image_with_table(class64, Endian::NATIVE == Endian::Big, Some(&table));
            e.layout = layout;
            let bytes = e.build().bytes;
            let dir = TempDir::new("elf");
            let path = dir.path().join("fw.elf");
            std::fs::write(&path, &bytes).unwrap();
            let stores: Vec<(&str, Box<dyn ImageStore>)> = vec![
                ("file", Box::new(FileImage::open(&path).unwrap())),
                ("memory", Box::new(MemoryImage::new(bytes.clone()))),
                (
                    "stream",
                    Box::new(StreamImage::new(io::Cursor::new(bytes.clone()))),
                ),
                (
                    "stream+len",
                    Box::new(StreamImage::with_len(&bytes[..], bytes.len() as u64)),
                ),
            ];
            for (what, mut store) in stores {
                let m = dirty_memory();
                let loaded = elf::load(&mut *store, &m).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(loaded.resource_table().unwrap().addr, DATA, "{what}");
                check_loaded(&m, Some(&table));
            }
        }
    }
}

/// Records the largest piece and every offset asked for.
struct Watch<S> {
    inner: S,
    largest: usize,
    offsets: Vec<u64>,
}

impl<S: ImageStore> ImageStore for Watch<S> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.largest = self.largest.max(buf.len());
        self.offsets.push(offset);
        self.inner.read_at(offset, buf)
    }
    fn len(&self) -> Option<u64> {
        self.inner.len()
    }
    fn sequential(&self) -> bool {
        self.inner.sequential()
    }
}

#[test]
fn images_are_read_in_pieces_and_streams_in_order() {
    let table = firmware_table(Endian::NATIVE);
    let mut e = image_with_table(true, Endian::NATIVE == Endian::Big, Some(&table));
    e.segs[0] = Seg::new(CODE, pattern(0x8000, 1), 0x9000);
    let bytes = e.build().bytes;
    for sequential in [false, true] {
        let inner: Box<dyn ImageStore> = if sequential {
            Box::new(StreamImage::new(&bytes[..]))
        } else {
            Box::new(MemoryImage::new(&bytes[..]))
        };
        let mut w = Watch {
            inner,
            largest: 0,
            offsets: Vec::new(),
        };
        let m = dirty_memory();
        let opts = LoadOptions { chunk_size: 1000 };
        elf::load_with(&mut w, &m, &opts, |_| Ok(())).unwrap();
        assert_eq!(read(&m, CODE, 0x8000), pattern(0x8000, 1));
        // Pieces of at most the chunk size (the section headers, 4 x 64 bytes, are one read).
        assert!(w.largest <= 1000, "largest read {}", w.largest);
        if sequential {
            assert!(
                w.offsets.windows(2).all(|p| p[0] <= p[1]),
                "{:?}",
                w.offsets
            );
        }
    }
}

#[test]
fn a_stream_cannot_go_far_back() {
    // Program headers after 576 KiB of segment data: a stream cannot come back for it.
    let mut e = Elf::new(true, false);
    e.segs.push(Seg::new(
        CODE,
        pattern(2 * STREAM_WINDOW + 0x10000, 1),
        0xa0000,
    ));
    e.layout = Layout::ProgramHeadersLast;
    let bytes = e.build().bytes;
    let m = HeapMemory::new(MEM, 0);
    let err = elf::load(&mut StreamImage::new(&bytes[..]), &m).unwrap_err();
    assert!(matches!(err, ElfError::Backwards { .. }), "{err}");
    assert!(err.to_string().contains("seekable"), "{err}");
    // A seekable store has no problem with it.
    elf::load(&mut MemoryImage::new(&bytes), &m).unwrap();
}

#[test]
fn images_without_resource_table_load() {
    for class64 in [false, true] {
        let bytes = image_with_table(class64, false, None).build().bytes;
        let m = dirty_memory();
        let loaded = elf::load(&mut MemoryImage::new(&bytes), &m).unwrap();
        assert_eq!(loaded.resource_table(), None);
        check_loaded(&m, None);
        assert_eq!(
            elf::inspect(&mut StreamImage::new(&bytes[..]))
                .unwrap()
                .resource_table,
            None
        );
    }
}

#[test]
fn truncated_images_fail_clearly_at_every_length() {
    let table = firmware_table(Endian::Little);
    for layout in [Layout::Usual, Layout::SectionsFirst] {
        for class64 in [false, true] {
            let mut e = image_with_table(class64, false, Some(&table));
            e.layout = layout;
            let built = e.build();
            let full = built.bytes.len();
            for cut in 0..full {
                let bytes = &built.bytes[..cut];
                let m = HeapMemory::new(MEM, 0);
                for (what, res) in [
                    ("memory", elf::load(&mut MemoryImage::new(bytes), &m)),
                    ("stream", elf::load(&mut StreamImage::new(bytes), &m)),
                ] {
                    let err = match res {
                        Err(e) => e,
                        Ok(_) => panic!("{what}: {cut} of {full} bytes loaded"),
                    };
                    let ok = matches!(
                        err,
                        ElfError::NotElf
                            | ElfError::Truncated { .. }
                            | ElfError::SegmentTruncated { .. }
                            | ElfError::ResourceTableTruncated { .. }
                    );
                    assert!(ok, "{what} cut at {cut}: {err}");
                    // Cut inside segment data with every header intact: named as such.
                    let seg1_end = built.seg_offsets[1] as usize + table.len() + 0x40;
                    if layout == Layout::SectionsFirst
                        && cut > built.seg_offsets[0] as usize
                        && cut < seg1_end
                    {
                        assert!(
                            matches!(err, ElfError::SegmentTruncated { .. }),
                            "{what} cut at {cut}: {err}"
                        );
                    }
                }
                assert!(
                    elf::inspect(&mut MemoryImage::new(bytes)).is_err()
                        || layout == Layout::SectionsFirst
                );
            }
        }
    }
}

#[test]
fn segment_past_the_end_is_reported_before_anything_is_written() {
    let mut built = image_with_table(false, false, None).build();
    let len = built.bytes.len() as u64;
    built.set_ph(1, Ph::Filesz, 0x1000);
    built.set_ph(1, Ph::Memsz, 0x1000);
    let m = dirty_memory();
    let err = elf::load(&mut MemoryImage::new(&built.bytes), &m).unwrap_err();
    match err {
        ElfError::SegmentTruncated {
            index, file_len, ..
        } => {
            assert_eq!((index, file_len), (1, Some(len)));
        }
        e => panic!("{e}"),
    }
    assert_eq!(read(&m, CODE, 4), [0xAA; 4], "nothing written");
}

#[test]
fn bad_segments_are_refused() {
    let base = || image_with_table(true, false, None).build();
    let m = dirty_memory();
    let load = |b: &Built| elf::load(&mut MemoryImage::new(&b.bytes), &m);

    let mut b = base();
    b.set_ph(0, Ph::Filesz, 0x2000);
    assert!(matches!(
        load(&b),
        Err(ElfError::FileszExceedsMemsz {
            index: 0,
            filesz: 0x2000,
            memsz: 0x1000
        })
    ));

    let mut b = base();
    b.set_ph(1, Ph::Paddr, CODE + 0xfff);
    let err = load(&b).unwrap_err();
    assert!(
        matches!(
            err,
            ElfError::Overlap {
                first: 0,
                second: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("overlap"));

    let mut b = base();
    b.set_ph(1, Ph::Paddr, MEM as u64 - 0x100);
    let err = load(&b).unwrap_err();
    assert!(
        matches!(err, ElfError::OutsideMemory { index: 1, .. }),
        "{err}"
    );

    // The backend (here: `prepare`) refuses a segment.
    let b = base();
    let err = elf::load_with(
        &mut MemoryImage::new(&b.bytes),
        &m,
        &LoadOptions::default(),
        |s| {
            if s.paddr == DATA {
                Err("not in the remote's memory map".into())
            } else {
                Ok(())
            }
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not in the remote's memory map"),
        "{err}"
    );
    assert_eq!(
        read(&m, CODE, 4),
        [0xAA; 4],
        "nothing written before every check passed"
    );

    // Huge sizes and addresses: errors, no overflow.
    for (field, v) in [
        (Ph::Memsz, u64::MAX),
        (Ph::Paddr, u64::MAX - 0x10),
        (Ph::Offset, u64::MAX - 4),
        (Ph::Filesz, u64::MAX),
    ] {
        let mut b = base();
        b.set_ph(0, field, v);
        assert!(load(&b).is_err(), "{field:?} = {v:#x}");
    }
    let mut b = image_with_table(false, false, None).build();
    b.set_ph(0, Ph::Paddr, 0xffff_f800);
    let err = load(&b).unwrap_err();
    assert!(
        matches!(err, ElfError::AddressOverflow { bits: 32, .. }),
        "{err}"
    );
}

#[test]
fn resource_table_must_be_loaded_and_whole() {
    let table = firmware_table(Endian::Little);
    let m = HeapMemory::new(MEM, 0);
    // Pointing into the section names: not a loaded segment's bytes.
    let mut b = image_with_table(true, false, Some(&table)).build();
    let names_at = b.seg_offsets[1] + table.len() as u64 + 0x40;
    b.set_rsc_section(names_at, 16);
    let err = elf::load(&mut MemoryImage::new(&b.bytes), &m).unwrap_err();
    assert!(
        matches!(err, ElfError::ResourceTableNotLoaded { .. }),
        "{err}"
    );
    assert!(elf::inspect(&mut MemoryImage::new(&b.bytes)).is_err());
    // Running past the end of the image.
    let mut b = image_with_table(true, false, Some(&table)).build();
    let off = b.seg_offsets[1];
    b.set_rsc_section(off, 1 << 40);
    let err = elf::load(&mut MemoryImage::new(&b.bytes), &m).unwrap_err();
    assert!(
        matches!(err, ElfError::ResourceTableTruncated { .. }),
        "{err}"
    );
    // Too small for a header.
    b.set_rsc_section(off, 8);
    let err = elf::load(&mut MemoryImage::new(&b.bytes), &m).unwrap_err();
    assert!(
        matches!(err, ElfError::ResourceTableTruncated { .. }),
        "{err}"
    );
    // Straddling the end of the segment's file bytes.
    b.set_rsc_section(off + table.len() as u64, 0x100);
    let err = elf::load(&mut MemoryImage::new(&b.bytes), &m).unwrap_err();
    assert!(
        matches!(err, ElfError::ResourceTableNotLoaded { .. }),
        "{err}"
    );
}

#[test]
fn not_elf_and_no_segments() {
    let m = HeapMemory::new(MEM, 0);
    let err = elf::load(&mut MemoryImage::new(&b"#!/bin/sh\necho hi\n"[..]), &m).unwrap_err();
    assert!(matches!(err, ElfError::NotElf));
    assert_eq!(err.to_string(), "not an ELF image (no \\x7fELF magic)");
    let mut e = Elf::new(false, false);
    e.other_phdrs.push(4);
    let bytes = e.build().bytes;
    assert!(matches!(
        elf::load(&mut MemoryImage::new(&bytes), &m),
        Err(ElfError::NoLoadableSegments)
    ));
    let info = elf::inspect(&mut MemoryImage::new(&bytes)).unwrap();
    assert_eq!((info.program_headers, info.segments.len()), (1, 0));
    // A wrong program header size.
    let mut b = image_with_table(false, false, None).build();
    b.set_u16(42, 33);
    let err = elf::load(&mut MemoryImage::new(&b.bytes), &m).unwrap_err();
    assert!(err.to_string().contains("e_phentsize"), "{err}");
}

#[test]
fn empty_segments_are_skipped() {
    let mut e = image_with_table(false, false, None);
    e.segs.push(Seg::new(CODE, vec![], 0));
    let m = dirty_memory();
    let loaded = elf::load(&mut MemoryImage::new(&e.build().bytes), &m).unwrap();
    assert_eq!(loaded.info.segments.len(), 3);
    check_loaded(&m, None);
}

fn mutated_image() -> impl Strategy<Value = Vec<u8>> {
    let table = firmware_table(Endian::Little);
    let base = image_with_table(false, false, Some(&table)).build().bytes;
    let len = base.len();
    proptest::collection::vec((0..len, any::<u8>()), 1..12).prop_map(move |edits| {
        let mut b = base.clone();
        for (at, v) in edits {
            b[at] = v;
        }
        b
    })
}

fn exercise(bytes: &[u8]) {
    let m = HeapMemory::new(256 << 10, 0);
    let _ = elf::inspect(&mut MemoryImage::new(bytes));
    let _ = elf::inspect(&mut StreamImage::new(bytes));
    let _ = elf::load(&mut MemoryImage::new(bytes), &m);
    let _ = elf::load(&mut StreamImage::new(bytes), &m);
    let _ = vamp_remoteproc::inspect::inspect(&mut MemoryImage::new(bytes));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&bytes);
        let mut with_magic = b"\x7fELF\x01\x01\x01".to_vec();
        with_magic.extend_from_slice(&bytes);
        exercise(&with_magic);
        with_magic[4] = 2;
        exercise(&with_magic);
    }

    #[test]
    fn mutated_images_never_panic(bytes in mutated_image()) {
        exercise(&bytes);
    }
}
