//! A human-readable dump of an image: ELF class, machine, entry, loadable segments, and every
//! field of every resource table entry (what `remoteproc-vm inspect IMAGE` prints).

use crate::elf::{self, ElfError, ElfInfo};
use crate::image::ImageStore;
use std::fmt::Write;
use vamp_rpmsg::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET, VIRTIO_ID_RPMSG,
};
use vamp_rpmsg::wire::Endian;
use vamp_rpmsg::wire::resource_table::{
    FW_RSC_ADDR_ANY, RSC_VENDOR_END, RSC_VENDOR_START, Resource, ResourceTable,
};

/// Describes the image in `store`. Fails only if its ELF headers are unusable; a table that
/// does not parse is described as such.
pub fn inspect<S: ImageStore + ?Sized>(store: &mut S) -> Result<String, ElfError> {
    let (info, table) = elf::inspect_with_table(store)?;
    let mut out = describe_info(&info);
    if let (Some(loc), Some(bytes)) = (info.resource_table, table) {
        match bytes {
            Ok(bytes) => out.push_str(&describe_table(&bytes, info.endian)),
            Err(e) => {
                let _ = writeln!(
                    out,
                    "  (the table's {:#x} bytes at file offset {:#x} cannot be read: {e})",
                    loc.size, loc.file_offset
                );
            }
        }
    }
    Ok(out)
}

fn endian_name(e: Endian) -> &'static str {
    match e {
        Endian::Little => "little-endian",
        Endian::Big => "big-endian",
    }
}

fn file_type_name(t: u16) -> &'static str {
    match t {
        0 => "NONE",
        1 => "REL",
        2 => "EXEC",
        3 => "DYN",
        4 => "CORE",
        _ => "other",
    }
}

/// Describes the ELF headers: class, byte order, machine, entry, segments, table location.
pub fn describe_info(info: &ElfInfo) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} {}, machine {} ({}), type {} ({}), entry {:#x}",
        info.class,
        endian_name(info.endian),
        info.machine_name(),
        info.machine,
        file_type_name(info.file_type),
        info.file_type,
        info.entry
    );
    let _ = writeln!(
        o,
        "{} program headers, {} loadable segments, {} sections",
        info.program_headers,
        info.segments.len(),
        info.sections
    );
    for s in &info.segments {
        let _ = writeln!(
            o,
            "  segment {:>2}: offset {:#010x} paddr {:#010x} vaddr {:#010x} filesz {:#x} \
             memsz {:#x} flags {} align {:#x}{}",
            s.index,
            s.offset,
            s.paddr,
            s.vaddr,
            s.filesz,
            s.memsz,
            s.flags_str(),
            s.align,
            if s.is_loaded() {
                ""
            } else {
                " (empty, skipped)"
            }
        );
    }
    match &info.resource_table {
        None => {
            let _ = writeln!(o, "no resource table (no .resource_table section)");
        }
        Some(t) => {
            let _ = writeln!(
                o,
                "resource table: {:#x} bytes at {:#x} (section address {:#x}, file offset {:#x})",
                t.size, t.addr, t.section_addr, t.file_offset
            );
        }
    }
    o
}

fn addr(a: u32) -> String {
    if a == FW_RSC_ADDR_ANY {
        "any".into()
    } else {
        format!("{a:#x}")
    }
}

fn notify_id(i: u32) -> String {
    if i == FW_RSC_ADDR_ANY {
        "any".into()
    } else {
        i.to_string()
    }
}

fn name(n: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(n))
}

fn status_names(s: u8) -> String {
    let bits = [
        (STATUS_ACKNOWLEDGE, "ACKNOWLEDGE"),
        (STATUS_DRIVER, "DRIVER"),
        (STATUS_DRIVER_OK, "DRIVER_OK"),
        (STATUS_FEATURES_OK, "FEATURES_OK"),
        (STATUS_NEEDS_RESET, "NEEDS_RESET"),
        (STATUS_FAILED, "FAILED"),
    ];
    let names: Vec<&str> = bits
        .iter()
        .filter(|(b, _)| s & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "reset".into()
    } else {
        names.join("|")
    }
}

fn hex_bytes(b: &[u8], max: usize) -> String {
    let mut s: Vec<String> = b.iter().take(max).map(|x| format!("{x:02x}")).collect();
    if b.len() > max {
        s.push("...".into());
    }
    s.join(" ")
}

/// Describes a carveout or devmem entry `$m` (two view types with one layout) as `$kind`
/// followed by every field.
macro_rules! memory_entry {
    ($kind:literal, $m:expr) => {{
        let m = &$m;
        format!(
            concat!($kind, " {} da {} pa {} len {:#x} flags {:#x} reserved {}"),
            name(m.name()),
            addr(m.da()),
            addr(m.pa()),
            m.len(),
            m.flags(),
            m.reserved()
        )
    }};
}

/// Describes a resource table, every field of every entry.
pub fn describe_table(bytes: &[u8], endian: Endian) -> String {
    let mut o = String::new();
    let table = ResourceTable::new_unchecked(bytes, endian);
    let _ = writeln!(
        o,
        "  version {}, {} entries, reserved {:?}, {} bytes used",
        table.version(),
        table.num_entries(),
        table.reserved(),
        table.table_len()
    );
    if let Err(e) = table.check() {
        let _ = writeln!(o, "  MALFORMED: {e}");
    }
    for (i, entry) in table.entries().enumerate() {
        let at = table.offset(i).unwrap_or(0);
        let e = match entry {
            Ok(e) => e,
            Err(err) => {
                let _ = writeln!(o, "  [{i}] at {at:#x}: unreadable: {err}");
                break;
            }
        };
        match e {
            Resource::Carveout(c) => {
                let _ = writeln!(o, "  [{i}] at {at:#x}: {}", memory_entry!("carveout", c));
            }
            Resource::Devmem(d) => {
                let _ = writeln!(o, "  [{i}] at {at:#x}: {}", memory_entry!("devmem", d));
            }
            Resource::Trace(t) => {
                let _ = writeln!(
                    o,
                    "  [{i}] at {at:#x}: trace {} da {} len {:#x} reserved {}",
                    name(t.name()),
                    addr(t.da()),
                    t.len(),
                    t.reserved()
                );
            }
            Resource::Vdev(v) => {
                let id = if v.id() == VIRTIO_ID_RPMSG {
                    " (rpmsg)"
                } else {
                    ""
                };
                let ns = if v.dfeatures() & 1 != 0 {
                    " (F_NS)"
                } else {
                    ""
                };
                let _ = writeln!(
                    o,
                    "  [{i}] at {at:#x}: vdev id {}{id} notifyid {} dfeatures {:#x}{ns} \
                     gfeatures {:#x} config_len {} status {:#x} ({}) num_of_vrings {} reserved {:?}",
                    v.id(),
                    notify_id(v.notifyid()),
                    v.dfeatures(),
                    v.gfeatures(),
                    v.config_len(),
                    v.status(),
                    status_names(v.status()),
                    v.num_of_vrings(),
                    v.reserved()
                );
                for (r, ring) in v.vrings().enumerate() {
                    let _ = writeln!(
                        o,
                        "        vring {r}: da {} align {:#x} num {} notifyid {} reserved {:#x}",
                        addr(ring.da),
                        ring.align,
                        ring.num,
                        notify_id(ring.notifyid),
                        ring.reserved
                    );
                }
                if !v.config().is_empty() {
                    let _ = writeln!(o, "        config: {}", hex_bytes(v.config(), 64));
                }
            }
            Resource::Vendor { rtype, body, .. } => {
                let _ = writeln!(
                    o,
                    "  [{i}] at {at:#x}: vendor type {rtype} ({RSC_VENDOR_START}..={RSC_VENDOR_END}), \
                     {} body bytes: {}",
                    body.len(),
                    hex_bytes(body, 32)
                );
            }
            Resource::Unknown { rtype, .. } => {
                let _ = writeln!(o, "  [{i}] at {at:#x}: unknown type {rtype}");
            }
            // An entry type the engine learned after this printer was written.
            _ => {
                let _ = writeln!(o, "  [{i}] at {at:#x}: type {}", e.rtype());
            }
        }
    }
    o
}
