//! Resource table handling: every entry type, both byte orders, and bad tables.

mod common;

use common::*;
use std::sync::atomic::Ordering;
use vamp_remoteproc::backend::RemoteBackend;
use vamp_remoteproc::rsc::{RscError, handle_resources};
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::virtio::VIRTIO_ID_RPMSG;
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::Endian;
use vamp_rpmsg::wire::resource_table::{
    FW_RSC_ADDR_ANY, Resource, ResourceTable, ResourceTableBuilder, VdevVringSpec,
};

const TABLE: u64 = 0x8000;
const ANY: u32 = FW_RSC_ADDR_ANY;

fn build(endian: Endian, n: usize, add: impl FnOnce(&mut ResourceTableBuilder<'_>)) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let mut b = ResourceTableBuilder::new(&mut buf, endian, n).unwrap();
    add(&mut b);
    let len = b.finish().unwrap();
    buf.truncate(len);
    buf
}

fn place(backend: &TestBackend, table: &[u8]) {
    backend.memory().write(TABLE, table).unwrap();
}

fn reread(backend: &TestBackend, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    backend.memory().read(TABLE, &mut v).unwrap();
    v
}

/// Every kind of entry, in both byte orders.
#[test]
fn every_entry_type_is_handled() {
    for endian in [Endian::Little, Endian::Big] {
        let table = build(endian, 8, |b| {
            b.add_carveout(ANY, ANY, 0x3000, 0, b"dyn").unwrap();
            b.add_carveout(0x40000, ANY, 0x1000, 7, b"fixed").unwrap();
            b.add_devmem(0x50000, 0xf000_0000, 0x100, 0, b"uart")
                .unwrap();
            b.add_trace(ANY, 0x800, b"trace0").unwrap();
            b.add_trace(0x60000, 0x100, b"trace1").unwrap();
            let ring = |da, notifyid| VdevVringSpec {
                da,
                align: 0x1000,
                num: 16,
                notifyid,
            };
            b.add_vdev(
                VIRTIO_ID_RPMSG,
                ANY,
                1,
                &[9, 9, 9, 9],
                &[ring(ANY, ANY), ring(0x70000, 3)],
            )
            .unwrap();
            b.add_vendor(200, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
            b.add_vendor(300, &[0xee; 4]).unwrap();
        });
        let mut backend = TestBackend::new();
        // Something the remote left in the memory the host hands out.
        backend.memory().fill(ALLOC_BASE, 0x10000, 0x5a).unwrap();
        place(&backend, &table);
        let setup = handle_resources(&mut backend, TABLE, table.len() as u64, endian).unwrap();
        let calls = backend.control.calls();
        let ring_bytes = VringLayout::legacy_bytes(16, 0x1000);
        // Fixed addresses and vendor entries first, then allocations, each in table order.
        assert_eq!(
            calls,
            [
                Call::Map(0x40000, 0x1000),
                Call::Map(0x50000, 0x100),
                Call::Vendor(200, vec![1, 2, 3, 4, 5, 6, 7, 8]),
                Call::Vendor(300, vec![0xee; 4]),
                Call::Alloc(0x3000, 4096, ALLOC_BASE),
                Call::Alloc(0x800, 8, ALLOC_BASE + 0x3000),
                Call::Alloc(ring_bytes, 0x1000, ALLOC_BASE + 0x4000),
            ]
        );
        assert!(backend.memory().region(ALLOC_BASE, 0x3800).is_some());
        let mut alloc = vec![0u8; 0x3800];
        backend.memory().read(ALLOC_BASE, &mut alloc).unwrap();
        assert!(alloc.iter().all(|&b| b == 0), "allocations are zeroed");

        let names: Vec<_> = setup.carveouts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["dyn", "fixed"], "table order");
        let dynamic = &setup.carveouts[0];
        assert_eq!(
            (dynamic.da, dynamic.pa, dynamic.allocated),
            (ALLOC_BASE, ALLOC_BASE, true)
        );
        let fixed = setup.carveout_named("fixed").unwrap();
        assert_eq!(
            (fixed.da, fixed.pa, fixed.flags, fixed.allocated),
            (0x40000, 0x40000, 7, false)
        );
        assert_eq!(setup.devmems[0].pa, 0xf000_0000, "a given pa stays");
        assert_eq!(
            setup
                .traces
                .iter()
                .map(|t| (t.name.as_str(), t.da, t.len))
                .collect::<Vec<_>>(),
            [
                ("trace0", ALLOC_BASE + 0x3000, 0x800),
                ("trace1", 0x60000, 0x100)
            ]
        );
        let v = &setup.vdevs[0];
        assert_eq!(
            (v.index, v.vdev_index, v.dfeatures, v.config_len),
            (5, 0, 1, 4)
        );
        assert_eq!(v.vrings[0].da, ALLOC_BASE + 0x4000);
        assert!(v.vrings[0].allocated && !v.vrings[1].allocated);
        assert_eq!(v.vrings[1].da, 0x70000, "fixed vrings are used as given");
        // Lowest notify ids not in the table: vring 0 gets 0, the vdev 1 (3 is taken).
        assert_eq!(
            (v.vrings[0].notifyid, v.vrings[1].notifyid, v.notifyid),
            (0, 3, 1)
        );
        assert_eq!(
            setup
                .vendor
                .iter()
                .map(|x| (x.rtype, x.handled))
                .collect::<Vec<_>>(),
            [(200, true), (300, false)]
        );

        // The remote's copy has the host's choices.
        let copy = reread(&backend, table.len());
        assert_eq!(copy, setup.table);
        let t = ResourceTable::new_checked(&copy[..], endian).unwrap();
        let Resource::Carveout(c) = t.entry(0).unwrap() else {
            panic!()
        };
        assert_eq!((c.da(), c.pa()), (ALLOC_BASE as u32, ALLOC_BASE as u32));
        let Resource::Carveout(c) = t.entry(1).unwrap() else {
            panic!()
        };
        assert_eq!((c.da(), c.pa()), (0x40000, 0x40000));
        let Resource::Trace(tr) = t.entry(3).unwrap() else {
            panic!()
        };
        assert_eq!(tr.da() as u64, ALLOC_BASE + 0x3000);
        let Resource::Vdev(vd) = t.entry(5).unwrap() else {
            panic!()
        };
        assert_eq!(vd.notifyid(), 1);
        assert_eq!(
            vd.vrings().map(|r| (r.da, r.notifyid)).collect::<Vec<_>>(),
            [((ALLOC_BASE + 0x4000) as u32, 0), (0x70000, 3)]
        );
        assert_eq!(vd.config(), &[9, 9, 9, 9]);

        // Trace buffers read up to the first NUL, as Linux's debugfs does.
        backend.memory().write(0x60000, b"boot ok\n\0old").unwrap();
        assert_eq!(
            setup.traces[1].read_trace(backend.memory()).unwrap(),
            "boot ok\n"
        );
    }
}

#[test]
fn devmem_without_support_is_skipped() {
    let table = build(Endian::Little, 1, |b| {
        b.add_devmem(0x50000, ANY, 0x100, 0, b"gic").unwrap();
    });
    let mut backend = TestBackend::new();
    backend
        .control
        .unsupported_map
        .store(0x50000, Ordering::SeqCst);
    place(&backend, &table);
    let setup = handle_resources(&mut backend, TABLE, table.len() as u64, Endian::Little).unwrap();
    assert!(!setup.devmems[0].mapped);
}

fn expect(table: &[u8], check: impl Fn(&RscError) -> bool) {
    let mut backend = TestBackend::new();
    place(&backend, table);
    let err =
        handle_resources(&mut backend, TABLE, table.len() as u64, Endian::Little).unwrap_err();
    assert!(check(&err), "{err}");
    // Nothing was written back.
    assert_eq!(reread(&backend, table.len()), table);
}

#[test]
fn bad_tables_are_refused() {
    // Version 2.
    let mut t = build(Endian::Little, 0, |_| {});
    t[0] = 2;
    expect(&t, |e| matches!(e, RscError::Malformed(_)));
    // An entry of unknown type.
    let mut t = build(Endian::Little, 1, |b| {
        b.add_trace(0x60000, 0x10, b"t").unwrap();
    });
    t[20] = 50;
    expect(&t, |e| e.to_string().contains("unknown type"));
    // Offsets past the end.
    let mut t = build(Endian::Little, 1, |b| {
        b.add_trace(0x60000, 0x10, b"t").unwrap();
    });
    t[16] = 0xf0;
    expect(&t, |e| matches!(e, RscError::Malformed(_)));
    // A vring whose size is not a power of two.
    let t = build(Endian::Little, 1, |b| {
        let ring = VdevVringSpec {
            da: ANY,
            align: 0x1000,
            num: 3,
            notifyid: 0,
        };
        b.add_vdev(VIRTIO_ID_RPMSG, 0, 1, &[], &[ring]).unwrap();
    });
    expect(&t, |e| e.to_string().contains("power of two"));
    // A fixed vring outside memory.
    let t = build(Endian::Little, 1, |b| {
        let ring = VdevVringSpec {
            da: 0xffff_0000,
            align: 0x1000,
            num: 16,
            notifyid: 0,
        };
        b.add_vdev(VIRTIO_ID_RPMSG, 0, 1, &[], &[ring]).unwrap();
    });
    expect(&t, |e| matches!(e, RscError::NotInMemory { .. }));
    // Empty carveout, devmem without address, a carveout the backend cannot place.
    let t = build(Endian::Little, 1, |b| {
        b.add_carveout(ANY, ANY, 0, 0, b"none").unwrap();
    });
    expect(&t, |e| e.to_string().contains("empty"));
    let t = build(Endian::Little, 1, |b| {
        b.add_devmem(ANY, 0x1000, 0x10, 0, b"x").unwrap();
    });
    expect(&t, |e| e.to_string().contains("no device address"));
    let t = build(Endian::Little, 1, |b| {
        b.add_carveout(0xfff0_0000, ANY, 0x1000, 0, b"far").unwrap();
    });
    expect(&t, |e| {
        matches!(e, RscError::Backend { index: 0, .. }) && e.to_string().contains("\"far\"")
    });
    let t = build(Endian::Little, 1, |b| {
        b.add_carveout(ANY, ANY, 0x1000_0000, 0, b"huge").unwrap();
    });
    expect(&t, |e| e.to_string().contains("cannot allocate"));
    // A fixed trace outside memory.
    let t = build(Endian::Little, 1, |b| {
        b.add_trace(0xffff_0000, 0x100, b"t").unwrap();
    });
    expect(&t, |e| matches!(e, RscError::NotInMemory { .. }));
}

#[test]
fn table_location_is_checked() {
    let mut backend = TestBackend::new();
    let err = handle_resources(&mut backend, MEM_SIZE as u64 - 8, 64, Endian::Little).unwrap_err();
    assert!(matches!(err, RscError::OutsideMemory { .. }), "{err}");
    let err = handle_resources(&mut backend, 0, 8, Endian::Little).unwrap_err();
    assert!(matches!(err, RscError::BadSize { .. }), "{err}");
    let err = handle_resources(&mut backend, 0, 1 << 30, Endian::Little).unwrap_err();
    assert!(matches!(err, RscError::BadSize { .. }), "{err}");
}
