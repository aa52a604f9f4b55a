//! Resource tables from arbitrary bytes, in both byte orders.
//!
//! Every method of the view is panic-free on any bytes, checked or not. A table that passes
//! `check` yields every entry; all fields of every entry are read. Such a table, rebuilt
//! entry by entry with the builder, parses back to the same fields. The setters never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vamp_rpmsg::wire::Endian;
use vamp_rpmsg::wire::resource_table::{
    RSC_CARVEOUT, RSC_NAME_MAX, RSC_TRACE, RSC_VDEV, Resource, ResourceTable, ResourceTableBuilder,
    TABLE_HEADER_LEN, VdevVringSpec,
};

/// Entries looked at per table (the offset array can list a thousand in 4 KiB).
const MAX_ENTRIES: usize = 256;
/// Largest rebuilt table (vendor bodies of overlapping entries add up).
const MAX_REBUILT: usize = 1 << 20;

/// The fields of one entry that a rebuilt table must reproduce.
#[derive(Debug, PartialEq, Eq)]
enum Fields {
    Memory(u32, [u32; 4], Vec<u8>),
    Trace([u32; 2], Vec<u8>),
    Vdev([u32; 3], Vec<VdevVringSpec>, Vec<u8>),
    Vendor(u32, Vec<u8>),
    Unknown,
}

/// Reads every field of a carveout or devmem `$m` (two view types with one layout); gives
/// what a rebuild must keep.
macro_rules! memory_fields {
    ($rtype:expr, $m:expr) => {{
        let m = &$m;
        let _ = (m.rtype(), m.reserved(), m.is_empty());
        Fields::Memory(
            $rtype,
            [m.da(), m.pa(), m.len(), m.flags()],
            m.name().to_vec(),
        )
    }};
}

/// Reads every field of `entry` (and formats it); returns what a rebuild must keep.
fn fields(entry: &Resource<&[u8]>) -> Fields {
    let _ = format!("{entry:?}");
    let rtype = entry.rtype();
    match entry {
        Resource::Carveout(c) => memory_fields!(rtype, c),
        Resource::Devmem(d) => memory_fields!(rtype, d),
        Resource::Trace(t) => {
            let _ = (t.rtype(), t.reserved(), t.is_empty());
            Fields::Trace([t.da(), t.len()], t.name().to_vec())
        }
        Resource::Vdev(v) => {
            let _ = (
                v.rtype(),
                v.gfeatures(),
                v.status(),
                v.reserved(),
                v.entry_len(),
            );
            let n = v.num_of_vrings() as usize;
            assert_eq!(v.vrings().count(), n);
            assert!(v.vring(n).is_none());
            let vrings = v
                .vrings()
                .map(|r| VdevVringSpec {
                    da: r.da,
                    align: r.align,
                    num: r.num,
                    notifyid: r.notifyid,
                })
                .collect();
            assert_eq!(v.config().len(), v.config_len() as usize);
            Fields::Vdev(
                [v.id(), v.notifyid(), v.dfeatures()],
                vrings,
                v.config().to_vec(),
            )
        }
        Resource::Vendor { rtype, body, .. } => Fields::Vendor(*rtype, body.to_vec()),
        // Unknown types, and entry kinds the engine may add (`Resource` is non-exhaustive).
        _ => Fields::Unknown,
    }
}

fn rebuild(parsed: &[Fields], endian: Endian) -> Option<Vec<u8>> {
    // Only what the builder can write: names of at most 31 bytes, no unknown types.
    let mut len = TABLE_HEADER_LEN + 4 * parsed.len();
    for f in parsed {
        len += match f {
            Fields::Memory(_, _, name) | Fields::Trace(_, name) if name.len() > RSC_NAME_MAX => {
                return None;
            }
            Fields::Memory(..) => 56,
            Fields::Trace(..) => 48,
            Fields::Vdev(_, vrings, config) => {
                (28 + 20 * vrings.len() + config.len()).next_multiple_of(4)
            }
            Fields::Vendor(_, body) => (4 + body.len()).next_multiple_of(4),
            Fields::Unknown => return None,
        };
    }
    if len > MAX_REBUILT {
        return None;
    }
    let mut buf = vec![0xA5u8; len];
    let mut b = ResourceTableBuilder::new(&mut buf, endian, parsed.len()).expect("room");
    for f in parsed {
        match f {
            Fields::Memory(RSC_CARVEOUT, [da, pa, len, flags], name) => {
                b.add_carveout(*da, *pa, *len, *flags, name)
            }
            Fields::Memory(_, [da, pa, len, flags], name) => {
                b.add_devmem(*da, *pa, *len, *flags, name)
            }
            Fields::Trace([da, len], name) => b.add_trace(*da, *len, name),
            Fields::Vdev([id, notifyid, dfeatures], vrings, config) => {
                b.add_vdev(*id, *notifyid, *dfeatures, config, vrings)
            }
            Fields::Vendor(rtype, body) => b.add_vendor(*rtype, body),
            Fields::Unknown => unreachable!(),
        }
        .expect("the builder takes what the parser read");
    }
    let written = b.finish().expect("every entry added");
    assert_eq!(written, len);
    Some(buf)
}

fn exercise(data: &[u8], endian: Endian) {
    let t = ResourceTable::new_unchecked(data, endian);
    let _ = (t.version(), t.num_entries(), t.reserved(), t.endian());
    let _ = (t.table_len(), t.as_bytes().len(), format!("{t:?}").len());
    for i in 0..t.num_entries().min(MAX_ENTRIES) {
        let _ = t.offset(i);
        let _ = t.entry(i).map(|e| fields(&e));
        let _ = (t.carveout(i).is_ok(), t.vdev(i).is_ok());
    }
    for rtype in [RSC_CARVEOUT, RSC_TRACE, RSC_VDEV, 128] {
        let _ = t.find(rtype, 0);
    }
    let _ = t.validate_known();
    let checked = t.check().is_ok();
    let mut parsed = Vec::new();
    for (i, e) in t.entries().enumerate().take(MAX_ENTRIES) {
        match e {
            Ok(e) => parsed.push(fields(&e)),
            Err(_) => assert!(!checked, "entry {i} of a checked table failed"),
        }
    }
    // The setters, on a copy.
    let mut copy = data.to_vec();
    let mut m = ResourceTable::new_unchecked(&mut copy[..], endian);
    for i in 0..m.num_entries().min(8) {
        if let Ok(mut c) = m.carveout_mut(i) {
            c.set_da(1);
            c.set_pa(2);
        }
        if let Ok(mut d) = m.devmem_mut(i) {
            d.set_pa(3);
        }
        if let Ok(mut v) = m.vdev_mut(i) {
            v.set_notifyid(4);
            v.set_gfeatures(5);
            v.set_status(6);
            let n = v.num_of_vrings() as usize;
            for r in 0..=n {
                assert_eq!(v.set_vring_da(r, 7).is_ok(), r < n);
                assert_eq!(v.set_vring_notifyid(r, 8).is_ok(), r < n);
            }
            v.config_mut().fill(9);
        }
        let _ = m.entry_mut(i);
    }
    if !checked || parsed.len() != t.num_entries() {
        return;
    }
    let Some(rebuilt) = rebuild(&parsed, endian) else {
        return;
    };
    let r = ResourceTable::new_checked(&rebuilt[..], endian).expect("a built table checks");
    assert_eq!(r.num_entries(), parsed.len());
    for (i, (e, want)) in r.entries().zip(&parsed).enumerate() {
        let got = fields(&e.expect("entry of a built table"));
        match (got, want) {
            // A vendor body runs to the next entry: the rebuilt one has the padding too.
            (Fields::Vendor(rt, body), Fields::Vendor(want_rt, want_body)) => {
                assert_eq!(rt, *want_rt);
                assert!(body.starts_with(want_body), "vendor entry {i}");
                assert!(body[want_body.len()..].iter().all(|&b| b == 0));
            }
            (got, want) => assert_eq!(&got, want, "entry {i}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data, Endian::Little);
    exercise(data, Endian::Big);
});
