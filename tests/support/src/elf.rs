//! An ELF writer for tests: images of either class and byte order, one `PT_LOAD` per segment,
//! an optional `.resource_table` section, three layouts of the header tables, and handles to
//! corrupt a written image's fields (the loader tests' hostile images). Also what
//! `vamp-test-firmware` writes the test remote core's firmware with.

use vamp_rpmsg::wire::Endian;

/// One segment to write.
#[derive(Debug, Clone)]
pub struct Seg {
    pub paddr: u64,
    pub vaddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
    pub flags: u32,
}

impl Seg {
    pub fn new(paddr: u64, data: Vec<u8>, memsz: u64) -> Self {
        Seg {
            paddr,
            vaddr: paddr,
            data,
            memsz,
            flags: 5,
        }
    }
}

/// Where the header tables go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Header, program headers, segments, section names, section headers (what linkers do).
    Usual,
    /// Header, program headers, section headers, section names, segments.
    SectionsFirst,
    /// Header, segments, section names, section headers, program headers last.
    ProgramHeadersLast,
}

/// An ELF image to write.
#[derive(Debug, Clone)]
pub struct Elf {
    pub class64: bool,
    pub big: bool,
    pub machine: u16,
    pub entry: u64,
    pub segs: Vec<Seg>,
    /// `.resource_table`: segment index, offset in it, size.
    pub rsc: Option<(usize, u64, u64)>,
    pub layout: Layout,
    /// Program headers of other types (PT_NOTE...) appended.
    pub other_phdrs: Vec<u32>,
}

impl Elf {
    pub fn new(class64: bool, big: bool) -> Self {
        Elf {
            class64,
            big,
            machine: if class64 { 62 } else { 40 },
            entry: 0x10000,
            segs: Vec::new(),
            rsc: None,
            layout: Layout::Usual,
            other_phdrs: Vec::new(),
        }
    }

    pub fn endian(&self) -> Endian {
        if self.big {
            Endian::Big
        } else {
            Endian::Little
        }
    }

    pub fn build(&self) -> Built {
        let w = Writer {
            class64: self.class64,
            big: self.big,
        };
        let ehsize = if self.class64 { 64 } else { 52 };
        let phent = if self.class64 { 56 } else { 32 };
        let shent = if self.class64 { 64 } else { 40 };
        let phnum = self.segs.len() + self.other_phdrs.len();
        // Section names.
        let mut names = vec![0u8];
        let mut name = |s: &str| {
            let at = names.len() as u32;
            names.extend_from_slice(s.as_bytes());
            names.push(0);
            at
        };
        let seg_names: Vec<u32> = (0..self.segs.len())
            .map(|i| name(&format!(".seg{i}")))
            .collect();
        let rsc_name = name(".resource_table");
        let strtab_name = name(".shstrtab");
        let shnum = 1 + self.segs.len() + usize::from(self.rsc.is_some()) + 1;

        let mut out = vec![0u8; ehsize];
        let align = |out: &mut Vec<u8>| {
            while !out.len().is_multiple_of(16) {
                out.push(0)
            }
        };
        let mut seg_offsets = vec![0u64; self.segs.len()];
        let put_segments = |out: &mut Vec<u8>, seg_offsets: &mut Vec<u64>| {
            for (i, s) in self.segs.iter().enumerate() {
                align(out);
                seg_offsets[i] = out.len() as u64;
                out.extend_from_slice(&s.data);
            }
        };
        // Each returns where it put its part.
        let put_phdrs = |out: &mut Vec<u8>| {
            let at = out.len() as u64;
            out.resize(out.len() + phnum * phent, 0);
            at
        };
        let put_shdrs = |out: &mut Vec<u8>| {
            let at = out.len() as u64;
            out.resize(out.len() + shnum * shent, 0);
            at
        };
        let put_names = |out: &mut Vec<u8>| {
            let at = out.len() as u64;
            out.extend_from_slice(&names);
            at
        };
        let (phoff, shoff, strtab_off) = match self.layout {
            Layout::Usual => {
                let phoff = put_phdrs(&mut out);
                put_segments(&mut out, &mut seg_offsets);
                let strtab_off = put_names(&mut out);
                align(&mut out);
                (phoff, put_shdrs(&mut out), strtab_off)
            }
            Layout::SectionsFirst => {
                let phoff = put_phdrs(&mut out);
                align(&mut out);
                let shoff = put_shdrs(&mut out);
                let strtab_off = put_names(&mut out);
                put_segments(&mut out, &mut seg_offsets);
                (phoff, shoff, strtab_off)
            }
            Layout::ProgramHeadersLast => {
                put_segments(&mut out, &mut seg_offsets);
                let strtab_off = put_names(&mut out);
                align(&mut out);
                let shoff = put_shdrs(&mut out);
                align(&mut out);
                (put_phdrs(&mut out), shoff, strtab_off)
            }
        };
        // ELF header.
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = if self.class64 { 2 } else { 1 };
        out[5] = if self.big { 2 } else { 1 };
        out[6] = 1;
        w.u16(&mut out, 16, 2); // ET_EXEC
        w.u16(&mut out, 18, self.machine);
        w.u32(&mut out, 20, 1);
        let mut at = 24;
        at = w.word(&mut out, at, self.entry);
        at = w.word(&mut out, at, phoff);
        at = w.word(&mut out, at, shoff);
        w.u32(&mut out, at, 0);
        at += 4;
        for v in [ehsize, phent, phnum, shent, shnum, shnum - 1] {
            w.u16(&mut out, at, v as u16);
            at += 2;
        }
        // Program headers.
        for (i, s) in self.segs.iter().enumerate() {
            w.phdr(
                &mut out,
                phoff as usize + i * phent,
                1,
                s.flags,
                [
                    seg_offsets[i],
                    s.vaddr,
                    s.paddr,
                    s.data.len() as u64,
                    s.memsz,
                    16,
                ],
            );
        }
        for (j, &t) in self.other_phdrs.iter().enumerate() {
            w.phdr(
                &mut out,
                phoff as usize + (self.segs.len() + j) * phent,
                t,
                4,
                [0, 0, 0, 0, 0, 4],
            );
        }
        // Section headers: null, one per segment, the table, the names.
        let mut k = 1;
        for (i, s) in self.segs.iter().enumerate() {
            w.shdr(
                &mut out,
                shoff as usize + k * shent,
                seg_names[i],
                1,
                [s.vaddr, seg_offsets[i], s.data.len() as u64],
            );
            k += 1;
        }
        if let Some((seg, off, size)) = self.rsc {
            let s = &self.segs[seg];
            w.shdr(
                &mut out,
                shoff as usize + k * shent,
                rsc_name,
                1,
                [s.vaddr + off, seg_offsets[seg] + off, size],
            );
            k += 1;
        }
        w.shdr(
            &mut out,
            shoff as usize + k * shent,
            strtab_name,
            3,
            [0, strtab_off, names.len() as u64],
        );
        Built {
            bytes: out,
            phoff,
            shoff,
            seg_offsets,
            w,
            rsc_shdr: self
                .rsc
                .map(|_| shoff as usize + (1 + self.segs.len()) * shent),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Writer {
    class64: bool,
    big: bool,
}

impl Writer {
    /// Writes the big- or the little-endian bytes of a value, as the image is.
    fn put<const N: usize>(&self, b: &mut [u8], at: usize, be: [u8; N], le: [u8; N]) {
        b[at..at + N].copy_from_slice(if self.big { &be } else { &le });
    }
    fn u16(&self, b: &mut [u8], at: usize, v: u16) {
        self.put(b, at, v.to_be_bytes(), v.to_le_bytes());
    }
    fn u32(&self, b: &mut [u8], at: usize, v: u32) {
        self.put(b, at, v.to_be_bytes(), v.to_le_bytes());
    }
    fn u64(&self, b: &mut [u8], at: usize, v: u64) {
        self.put(b, at, v.to_be_bytes(), v.to_le_bytes());
    }
    /// Writes an address-sized word; returns the next offset.
    fn word(&self, b: &mut [u8], at: usize, v: u64) -> usize {
        if self.class64 {
            self.u64(b, at, v);
            at + 8
        } else {
            self.u32(b, at, v as u32);
            at + 4
        }
    }
    /// `vals`: offset, vaddr, paddr, filesz, memsz, align.
    fn phdr(&self, b: &mut [u8], at: usize, ptype: u32, flags: u32, vals: [u64; 6]) {
        self.u32(b, at, ptype);
        if self.class64 {
            self.u32(b, at + 4, flags);
            for (i, v) in vals.iter().enumerate() {
                self.u64(b, at + 8 + 8 * i, *v);
            }
        } else {
            for (i, v) in vals[..5].iter().enumerate() {
                self.u32(b, at + 4 + 4 * i, *v as u32);
            }
            self.u32(b, at + 24, flags);
            self.u32(b, at + 28, vals[5] as u32);
        }
    }
    /// `vals`: addr, offset, size.
    fn shdr(&self, b: &mut [u8], at: usize, name: u32, shtype: u32, vals: [u64; 3]) {
        self.u32(b, at, name);
        self.u32(b, at + 4, shtype);
        if self.class64 {
            self.u64(b, at + 16, vals[0]);
            self.u64(b, at + 24, vals[1]);
            self.u64(b, at + 32, vals[2]);
        } else {
            self.u32(b, at + 12, vals[0] as u32);
            self.u32(b, at + 16, vals[1] as u32);
            self.u32(b, at + 20, vals[2] as u32);
        }
    }
}

/// Program header fields that tests corrupt.
#[derive(Debug, Clone, Copy)]
pub enum Ph {
    Offset,
    Vaddr,
    Paddr,
    Filesz,
    Memsz,
}

/// A written image, with what is needed to corrupt it.
#[derive(Debug, Clone)]
pub struct Built {
    pub bytes: Vec<u8>,
    pub phoff: u64,
    pub shoff: u64,
    pub seg_offsets: Vec<u64>,
    w: Writer,
    rsc_shdr: Option<usize>,
}

impl Built {
    pub fn set_ph(&mut self, seg: usize, field: Ph, v: u64) {
        let (ent, idx) = if self.w.class64 { (56, 8) } else { (32, 4) };
        let n = match field {
            Ph::Offset => 0,
            Ph::Vaddr => 1,
            Ph::Paddr => 2,
            Ph::Filesz => 3,
            Ph::Memsz => 4,
        };
        let at = self.phoff as usize + seg * ent + idx + n * (idx);
        if self.w.class64 {
            self.w.u64(&mut self.bytes, at, v);
        } else {
            self.w.u32(&mut self.bytes, at, v as u32);
        }
    }

    /// Sets the resource table section's file offset and size.
    pub fn set_rsc_section(&mut self, offset: u64, size: u64) {
        let at = self.rsc_shdr.expect("image has a resource table");
        if self.w.class64 {
            self.w.u64(&mut self.bytes, at + 24, offset);
            self.w.u64(&mut self.bytes, at + 32, size);
        } else {
            self.w.u32(&mut self.bytes, at + 16, offset as u32);
            self.w.u32(&mut self.bytes, at + 20, size as u32);
        }
    }

    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.w.u16(&mut self.bytes, at, v);
    }
}
