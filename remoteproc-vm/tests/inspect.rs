//! The human-readable dump shows every field.

mod common;

use common::*;
use vamp_remoteproc::image::{MemoryImage, StreamImage};
use vamp_remoteproc::inspect::inspect;
use vamp_rpmsg::wire::Endian;
use vamp_rpmsg::wire::resource_table::{FW_RSC_ADDR_ANY, ResourceTableBuilder, VdevVringSpec};

fn full_table(endian: Endian) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let mut b = ResourceTableBuilder::new(&mut buf, endian, 5).unwrap();
    b.add_carveout(FW_RSC_ADDR_ANY, FW_RSC_ADDR_ANY, 0x40000, 0, b"vdev0buffer")
        .unwrap();
    b.add_devmem(0x5000_0000, 0xff00_0000, 0x1000, 3, b"uart0")
        .unwrap();
    let ring = |da, notifyid| VdevVringSpec {
        da,
        align: 0x1000,
        num: 256,
        notifyid,
    };
    b.add_vdev(
        7,
        2,
        1,
        &[0xab, 0xcd],
        &[ring(FW_RSC_ADDR_ANY, 0), ring(0x3000_0000, 1)],
    )
    .unwrap();
    b.add_trace(0x2000_0000, 0x1000, b"trace0").unwrap();
    b.add_vendor(128, &[1, 2, 3, 4]).unwrap();
    let len = b.finish().unwrap();
    buf.truncate(len);
    buf
}

#[test]
fn every_field_is_shown() {
    for (class64, big) in [(false, false), (false, true), (true, false)] {
        let e = if big { Endian::Big } else { Endian::Little };
        let bytes = image_with_table(class64, big, Some(&full_table(e)))
            .build()
            .bytes;
        let text = inspect(&mut MemoryImage::new(&bytes)).unwrap();
        let want = [
            if class64 { "ELF64" } else { "ELF32" },
            if big { "big-endian" } else { "little-endian" },
            if class64 {
                "machine x86-64 (62)"
            } else {
                "machine ARM (40)"
            },
            "entry 0x10000",
            "2 loadable segments",
            "segment  0: offset 0x",
            "paddr 0x00010000",
            "filesz 0x300 memsz 0x1000 flags R-X",
            "flags RW-",
            "resource table: 0x",
            "version 1, 5 entries, reserved [0, 0]",
            "carveout \"vdev0buffer\" da any pa any len 0x40000 flags 0x0 reserved 0",
            "devmem \"uart0\" da 0x50000000 pa 0xff000000 len 0x1000 flags 0x3 reserved 0",
            "vdev id 7 (rpmsg) notifyid 2 dfeatures 0x1 (F_NS) gfeatures 0x0 config_len 2 \
             status 0x0 (reset) num_of_vrings 2 reserved [0, 0]",
            "vring 0: da any align 0x1000 num 256 notifyid 0 reserved 0x0",
            "vring 1: da 0x30000000 align 0x1000 num 256 notifyid 1",
            "config: ab cd",
            "trace \"trace0\" da 0x20000000 len 0x1000 reserved 0",
            "vendor type 128 (128..=512), 4 body bytes: 01 02 03 04",
        ];
        for w in want {
            assert!(text.contains(w), "missing {w:?} in\n{text}");
        }
    }
}

#[test]
fn no_table_and_streams() {
    let bytes = image_with_table(false, false, None).build().bytes;
    let text = inspect(&mut MemoryImage::new(&bytes)).unwrap();
    assert!(text.contains("no resource table"), "{text}");
    // From a stream the table, read before the section headers, is still within the
    // look-back window of a small image.
    let table = full_table(Endian::Little);
    let bytes = image_with_table(true, false, Some(&table)).build().bytes;
    let text = inspect(&mut StreamImage::new(&bytes[..])).unwrap();
    assert!(text.contains("vdev id 7"), "{text}");
    assert!(inspect(&mut MemoryImage::new(&b"nope"[..])).is_err());
}

#[test]
fn a_malformed_table_is_described() {
    let mut table = full_table(Endian::Little);
    table[0] = 9;
    let bytes = image_with_table(true, false, Some(&table)).build().bytes;
    let text = inspect(&mut MemoryImage::new(&bytes)).unwrap();
    assert!(text.contains("version 9"), "{text}");
    assert!(text.contains("MALFORMED"), "{text}");
}

#[test]
fn the_built_in_firmware_is_described() {
    let Some(bytes) = vamp_remoteproc::images::builtin("echo") else {
        return;
    };
    let text = inspect(&mut MemoryImage::new(bytes)).unwrap();
    for w in [
        "ELF64",
        "x86-64",
        "carveout \"vdev0buffer\"",
        "vdev id 7 (rpmsg)",
        "trace \"trace0\"",
    ] {
        assert!(text.contains(w), "missing {w:?} in\n{text}");
    }
}

/// The QEMU smokes' test remote core boots `vamp-test-firmware`'s image: it must carry what
/// the kernel module's core expects (an ELF32 ARM segment at 0, the table at its start).
#[test]
fn the_test_core_firmware_carries_its_resource_table() {
    let text = inspect(&mut MemoryImage::new(
        vamp_test_support::remote_core::firmware(),
    ))
    .unwrap();
    for want in [
        "ELF32 little-endian, machine ARM (40)",
        "segment  0: offset",
        "paddr 0x00000000",
        "memsz 0x9000 flags RWX",
        "resource table: 0xc8 bytes at 0x0",
        "carveout \"vamp-shm\" da any pa 0x0 len 0x10000",
        "trace \"trace0\" da 0x8000 len 0x1000",
        "vdev id 7 (rpmsg) notifyid any dfeatures 0x1 (F_NS)",
        "vring 1: da any align 0x1000 num 256 notifyid any",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}
