#!/usr/bin/env python3
"""Write the firmware image the test remote core (vamp_test_rproc.ko) boots.

An ELF32 little-endian ARM executable, generated at test time (the repo holds no binaries):
one PT_LOAD segment at device address 0 (the core's 64 KiB sram) that carries the resource
table, and a ".resource_table" section naming it. The table declares, in order:
  carveout "vamp-shm" (64 KiB, any address; the remoteproc core allocates it),
  trace "trace0" at da 0x8000, 4 KiB (inside the segment's zero-filled tail),
  vdev id 7 (rpmsg) with the name-service feature and two 256-entry vrings at any address.

usage: make-firmware.py OUTPUT
"""
import struct
import sys

ADDR_ANY = 0xFFFFFFFF
RSC_CARVEOUT, RSC_TRACE, RSC_VDEV = 0, 2, 3
VIRTIO_ID_RPMSG = 7
VIRTIO_RPMSG_F_NS = 0
TRACE_DA, TRACE_LEN = 0x8000, 0x1000
SEGMENT_MEMSZ = TRACE_DA + TRACE_LEN
TABLE_OFFSET = 0x100  # file offset of the segment (and the table at its start)


def name32(s):
    return s.encode().ljust(32, b"\0")


def resource_table():
    carveout = struct.pack("<I5I", RSC_CARVEOUT, ADDR_ANY, 0, 0x10000, 0, 0) + name32("vamp-shm")
    trace = struct.pack("<I3I", RSC_TRACE, TRACE_DA, TRACE_LEN, 0) + name32("trace0")
    vring = struct.pack("<5I", ADDR_ANY, 4096, 256, ADDR_ANY, 0)
    vdev = (
        struct.pack("<I5IBB2x", RSC_VDEV, VIRTIO_ID_RPMSG, ADDR_ANY, 1 << VIRTIO_RPMSG_F_NS, 0, 0, 0, 2)
        + vring
        + vring
    )
    entries = [carveout, trace, vdev]
    header_len = 16 + 4 * len(entries)
    offsets, body, off = [], b"", header_len
    for e in entries:
        offsets.append(off)
        body += e
        off += len(e)
    return struct.pack("<4I", 1, len(entries), 0, 0) + struct.pack(f"<{len(entries)}I", *offsets) + body


def image():
    table = resource_table()
    shstrtab = b"\0.resource_table\0.shstrtab\0"
    strtab_off = TABLE_OFFSET + len(table)
    shoff = (strtab_off + len(shstrtab) + 3) & ~3
    ehdr = (
        b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)  # ELFCLASS32, ELFDATA2LSB, EV_CURRENT
        + struct.pack("<HHIIIIIHHHHHH", 2, 40, 1, 0, 52, shoff, 0x05000000, 52, 32, 1, 40, 3, 2)
    )
    phdr = struct.pack("<8I", 1, TABLE_OFFSET, 0, 0, len(table), SEGMENT_MEMSZ, 7, 4)
    sh_null = bytes(40)
    sh_rsc = struct.pack("<10I", 1, 1, 3, 0, TABLE_OFFSET, len(table), 0, 0, 4, 0)
    sh_str = struct.pack("<10I", 17, 3, 0, 0, strtab_off, len(shstrtab), 0, 0, 1, 0)
    out = bytearray(ehdr + phdr)
    out += bytes(TABLE_OFFSET - len(out))
    out += table + shstrtab
    out += bytes(shoff - len(out))
    out += sh_null + sh_rsc + sh_str
    return bytes(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1], "wb") as f:
        f.write(image())
