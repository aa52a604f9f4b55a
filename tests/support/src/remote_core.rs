//! The firmware image the test remote core (`tests/remote-core/vamp_test_rproc.c`) boots,
//! written at test time by `vamp-test-firmware` (the repo holds no binaries).
//!
//! An ELF32 little-endian ARM executable: one `PT_LOAD` segment at device address 0 (the
//! core's 64 KiB SRAM) that starts with the resource table, and a `.resource_table` section
//! naming it. The table, built with the engine's `ResourceTableBuilder`, declares in order:
//! - carveout "vamp-shm": 64 KiB at any address (the kernel's remoteproc core allocates it);
//! - trace "trace0" at device address [`TRACE_DA`], 4 KiB (inside the segment's zero-filled
//!   tail);
//! - vdev id 7 (rpmsg) with the name-service feature and two 256-entry vrings at any address,
//!   their notify ids left to the kernel.

use crate::elf::{Elf, Seg};
use vamp_rpmsg::virtio::{VIRTIO_ID_RPMSG, VIRTIO_RPMSG_F_NS};
use vamp_rpmsg::wire::Endian;
use vamp_rpmsg::wire::resource_table::{FW_RSC_ADDR_ANY, ResourceTableBuilder, VdevVringSpec};

/// The shared-memory carveout the kernel allocates for the vrings and buffers.
const SHM_LEN: u32 = 0x1_0000;
/// The trace buffer: inside the segment's zero-filled tail, where the module's SRAM is.
pub const TRACE_DA: u32 = 0x8000;
/// Bytes of the trace buffer.
pub const TRACE_LEN: u32 = 0x1000;
/// `EM_ARM`.
const EM_ARM: u16 = 40;
/// `PF_R | PF_W | PF_X`: the SRAM holds code and data.
const PF_RWX: u32 = 7;

fn resource_table() -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let mut b = ResourceTableBuilder::new(&mut buf, Endian::Little, 3).expect("3 entries fit");
    b.add_carveout(FW_RSC_ADDR_ANY, 0, SHM_LEN, 0, b"vamp-shm")
        .expect("carveout fits");
    b.add_trace(TRACE_DA, TRACE_LEN, b"trace0")
        .expect("trace fits");
    let ring = VdevVringSpec {
        da: FW_RSC_ADDR_ANY,
        align: 0x1000,
        num: 256,
        notifyid: FW_RSC_ADDR_ANY,
    };
    b.add_vdev(
        VIRTIO_ID_RPMSG,
        FW_RSC_ADDR_ANY,
        u32::try_from(VIRTIO_RPMSG_F_NS).expect("a low feature bit"),
        &[],
        &[ring, ring],
    )
    .expect("vdev fits");
    let len = b.finish().expect("a complete table");
    buf.truncate(len);
    buf
}

/// The image's bytes.
pub fn firmware() -> Vec<u8> {
    let table = resource_table();
    let mut elf = Elf::new(false, false);
    elf.machine = EM_ARM;
    elf.entry = 0;
    elf.segs.push(Seg {
        flags: PF_RWX,
        ..Seg::new(0, table.clone(), u64::from(TRACE_DA + TRACE_LEN))
    });
    elf.rsc = Some((0, 0, table.len() as u64));
    elf.build().bytes
}
