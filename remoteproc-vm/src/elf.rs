//! ELF loading for remotes, as Linux's `remoteproc_elf_loader.c` and OpenAMP's `elf_loader.c`
//! do it: every `PT_LOAD` segment is copied to its physical address (`p_paddr`), memory beyond
//! the file bytes (`p_memsz > p_filesz`) is zeroed, `e_entry` is the boot address, and the
//! resource table is the section named `.resource_table`.
//!
//! Images come from an [`ImageStore`] in pieces (at most [`LoadOptions::chunk_size`] bytes at a
//! time), never whole. For a forward-only store the loader reads in increasing offset order:
//! the ELF header, the program headers, every segment in file-offset order, then the section
//! headers (which linkers put at the end of the file) and the section names. The last
//! [`STREAM_WINDOW`] bytes read are kept, so small look-backs (the section names just before
//! the section headers, a segment that starts with the ELF header) still work; anything
//! further back is a clear [`ElfError::Backwards`].
//!
//! Both ELF32 and ELF64, little- and big-endian, are read. Everything is validated before a
//! byte is written to remote memory: sizes, offsets and addresses are checked without
//! overflow, segments may not overlap, and every segment must lie in remote memory (the
//! memory and the backend's [`map`](crate::backend::RemoteBackend::map) both have a say).
//! Only for a forward-only store whose section headers come after the segments is the
//! resource table's location checked after the copy.

use crate::image::ImageStore;
use object::Endianness;
use object::elf;
use object::pod;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use std::fmt;
use std::io;
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::wire::Endian;

/// Name of the section that holds the resource table.
pub const RESOURCE_TABLE_SECTION: &[u8] = b".resource_table";
/// Default size of the pieces copied from the image to remote memory.
pub const DEFAULT_CHUNK: usize = 64 * 1024;
/// Bytes a forward-only store keeps behind its position for look-backs.
pub const STREAM_WINDOW: usize = 256 * 1024;
/// Smallest resource table: its header.
const MIN_TABLE: u64 = 16;
/// Most program or section headers read from a store of unknown length.
const MAX_HEADERS: u64 = 1 << 16;
/// Most section-name bytes read from a store of unknown length.
const MAX_NAMES: u64 = 16 << 20;
/// Zero-fill step.
const ZERO_CHUNK: u64 = 1 << 20;

/// 32- or 64-bit ELF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfClass {
    /// ELFCLASS32 (Cortex-R5, Cortex-M, 32-bit RISC-V).
    Elf32,
    /// ELFCLASS64.
    Elf64,
}

impl ElfClass {
    /// Address bits.
    pub fn bits(self) -> u32 {
        match self {
            ElfClass::Elf32 => 32,
            ElfClass::Elf64 => 64,
        }
    }

    fn max_addr(self) -> u128 {
        1u128 << self.bits()
    }
}

impl fmt::Display for ElfClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElfClass::Elf32 => "ELF32",
            ElfClass::Elf64 => "ELF64",
        })
    }
}

/// A loadable (`PT_LOAD`) segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index in the program header table.
    pub index: usize,
    /// File offset of its bytes.
    pub offset: u64,
    /// Physical address: where it is loaded (the remote's device address).
    pub paddr: u64,
    /// Virtual address (informational).
    pub vaddr: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zeroed).
    pub memsz: u64,
    /// `PF_*` flags.
    pub flags: u32,
    /// Alignment.
    pub align: u64,
}

impl Segment {
    /// Flags as `RWX` with `-` for the missing ones.
    pub fn flags_str(&self) -> String {
        let f = |bit: u32, c: char| if self.flags & bit != 0 { c } else { '-' };
        [f(4, 'R'), f(2, 'W'), f(1, 'X')].iter().collect()
    }

    /// Whether the loader copies it (Linux and OpenAMP skip segments with no memory size).
    pub fn is_loaded(&self) -> bool {
        self.memsz > 0
    }
}

/// Where the resource table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceTableLocation {
    /// Where it lands in remote memory (the containing segment's `p_paddr` plus its offset in
    /// the segment): where the host reads and updates it.
    pub addr: u64,
    /// The section's `sh_addr` (the address the remote links it at; equal to `addr` when the
    /// segment's virtual and physical addresses agree).
    pub section_addr: u64,
    /// Bytes.
    pub size: u64,
    /// File offset.
    pub file_offset: u64,
}

/// What an ELF image holds, from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// 32- or 64-bit.
    pub class: ElfClass,
    /// Byte order of the headers (and of the resource table, which the remote wrote).
    pub endian: Endian,
    /// `e_machine`.
    pub machine: u16,
    /// `e_type`.
    pub file_type: u16,
    /// `e_entry`: the boot address.
    pub entry: u64,
    /// The `PT_LOAD` segments, in program header order.
    pub segments: Vec<Segment>,
    /// Number of program headers of any type.
    pub program_headers: usize,
    /// Number of section headers.
    pub sections: usize,
    /// The `.resource_table` section, if the image has one.
    pub resource_table: Option<ResourceTableLocation>,
}

impl ElfInfo {
    /// A name for `e_machine`.
    pub fn machine_name(&self) -> &'static str {
        machine_name(self.machine)
    }
}

/// A name for an `e_machine` value.
pub fn machine_name(machine: u16) -> &'static str {
    match elf::Machine(machine) {
        elf::EM_NONE => "none",
        elf::EM_386 => "i386",
        elf::EM_ARM => "ARM",
        elf::EM_X86_64 => "x86-64",
        elf::EM_AARCH64 => "AArch64",
        elf::EM_RISCV => "RISC-V",
        elf::EM_PPC => "PowerPC",
        elf::EM_PPC64 => "PowerPC64",
        elf::EM_MIPS => "MIPS",
        elf::EM_XTENSA => "Xtensa",
        elf::EM_MICROBLAZE => "MicroBlaze",
        elf::EM_TRICORE => "TriCore",
        elf::EM_ARC_COMPACT => "ARC",
        elf::EM_LOONGARCH => "LoongArch",
        _ => "unknown",
    }
}

/// The result of [`load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// The image's headers.
    pub info: ElfInfo,
    /// Bytes copied from the image.
    pub copied: u64,
    /// Bytes zeroed beyond the file bytes.
    pub zeroed: u64,
}

impl LoadedImage {
    /// The boot address.
    pub fn entry(&self) -> u64 {
        self.info.entry
    }

    /// The resource table's location, if any.
    pub fn resource_table(&self) -> Option<ResourceTableLocation> {
        self.info.resource_table
    }
}

/// Why an image could not be read or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ElfError {
    /// No `\x7fELF` magic.
    #[error("not an ELF image (no \\x7fELF magic)")]
    NotElf,
    /// `EI_CLASS` is neither ELF32 nor ELF64.
    #[error("unsupported ELF class {0} (1 = ELF32, 2 = ELF64)")]
    UnsupportedClass(u8),
    /// `EI_DATA` is neither little- nor big-endian.
    #[error("unsupported ELF data encoding {0} (1 = little-endian, 2 = big-endian)")]
    UnsupportedEncoding(u8),
    /// A header field holds an impossible value.
    #[error("malformed ELF: {0}")]
    BadHeader(String),
    /// The image ends before a header or table it declares.
    #[error("truncated image: {what} needs {len:#x} bytes at offset {offset:#x}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// A forward-only store was asked for bytes it already passed.
    #[error(
        "forward-only image: {what} at offset {offset:#x} lies behind what was already read \
         (position {position:#x}); load it from a seekable store (a file or memory)"
    )]
    Backwards {
        /// What was being read.
        what: &'static str,
        /// Offset asked for.
        offset: u64,
        /// Where the stream is.
        position: u64,
    },
    /// The store failed.
    #[error("reading {what} at offset {offset:#x}: {source}")]
    Io {
        /// What was being read.
        what: &'static str,
        /// Offset.
        offset: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Nothing to load.
    #[error("no loadable (PT_LOAD) segment with a memory size")]
    NoLoadableSegments,
    /// `p_filesz > p_memsz`.
    #[error("segment {index}: file size {filesz:#x} exceeds memory size {memsz:#x}")]
    FileszExceedsMemsz {
        /// Program header index.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A segment's bytes run past the end of the image.
    #[error(
        "segment {index}: {filesz:#x} bytes at offset {offset:#x} run past the end of the image \
         ({}): truncated", file_len.map_or("length unknown".to_string(), |l| format!("{l:#x} bytes"))
    )]
    SegmentTruncated {
        /// Program header index.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        filesz: u64,
        /// Image length, if known.
        file_len: Option<u64>,
    },
    /// An address or offset plus a size wraps around.
    #[error(
        "segment {index}: {what} {start:#x} + {size:#x} overflows the {bits}-bit address space"
    )]
    AddressOverflow {
        /// Program header index.
        index: usize,
        /// Which range.
        what: &'static str,
        /// Start.
        start: u64,
        /// Size.
        size: u64,
        /// Address bits.
        bits: u32,
    },
    /// Two loadable segments share memory.
    #[error(
        "segments {first} and {second} overlap in memory: {first_start:#x}..{first_end:#x} and \
         {second_start:#x}..{second_end:#x}"
    )]
    Overlap {
        /// Program header index of the lower segment.
        first: usize,
        /// Its start.
        first_start: u64,
        /// Its end.
        first_end: u64,
        /// Program header index of the other.
        second: usize,
        /// Its start.
        second_start: u64,
        /// Its end.
        second_end: u64,
    },
    /// A segment does not lie in remote memory.
    #[error("segment {index}: {memsz:#x} bytes at {paddr:#x} are not remote memory: {reason}")]
    OutsideMemory {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        paddr: u64,
        /// `p_memsz`.
        memsz: u64,
        /// Who refused and why.
        reason: String,
    },
    /// The `.resource_table` section's bytes are not in any loaded segment.
    #[error(
        "the resource table ({size:#x} bytes at file offset {offset:#x}) is not inside any \
         loaded segment's file bytes"
    )]
    ResourceTableNotLoaded {
        /// `sh_offset`.
        offset: u64,
        /// `sh_size`.
        size: u64,
    },
    /// The `.resource_table` section runs past the end of the image or is too small.
    #[error("the resource table section ({size:#x} bytes at file offset {offset:#x}) is truncated")]
    ResourceTableTruncated {
        /// `sh_offset`.
        offset: u64,
        /// `sh_size`.
        size: u64,
    },
    /// A count is beyond what is read from a store of unknown length.
    #[error("too many {what}: {count}")]
    TooMany {
        /// What.
        what: &'static str,
        /// How many.
        count: u64,
    },
}

/// The resource table's bytes read from the image by [`inspect_with_table`]: `None` if the
/// image has no table, `Some(Err)` if they could not be read.
pub type TableBytes = Option<Result<Vec<u8>, ElfError>>;

/// How [`load_with`] copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Bytes read from the image and written to memory at a time.
    pub chunk_size: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            chunk_size: DEFAULT_CHUNK,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading pieces

/// Reads pieces from a store; for a forward-only store it skips ahead itself and keeps the
/// last [`STREAM_WINDOW`] bytes for look-backs.
struct Reader<'a, S: ImageStore + ?Sized> {
    store: &'a mut S,
    sequential: bool,
    len: Option<u64>,
    /// Sequential only: the next offset the store hands out.
    pos: u64,
    /// Sequential only: the bytes `window_start..pos`.
    window: Vec<u8>,
    window_start: u64,
}

impl<'a, S: ImageStore + ?Sized> Reader<'a, S> {
    fn new(store: &'a mut S) -> Self {
        let sequential = store.sequential();
        let len = store.len();
        Reader {
            store,
            sequential,
            len,
            pos: 0,
            window: Vec::new(),
            window_start: 0,
        }
    }

    fn io_error(e: io::Error, what: &'static str, offset: u64, len: u64) -> ElfError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ElfError::Truncated { what, offset, len }
        } else {
            ElfError::Io {
                what,
                offset,
                source: e,
            }
        }
    }

    fn read(&mut self, offset: u64, buf: &mut [u8], what: &'static str) -> Result<(), ElfError> {
        let want = buf.len() as u64;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(want).ok_or(ElfError::Truncated {
            what,
            offset,
            len: want,
        })?;
        if self.len.is_some_and(|l| end > l) {
            return Err(ElfError::Truncated {
                what,
                offset,
                len: want,
            });
        }
        if !self.sequential {
            return self
                .store
                .read_at(offset, buf)
                .map_err(|e| Self::io_error(e, what, offset, want));
        }
        let mut done = 0usize;
        if offset < self.pos {
            if offset < self.window_start {
                return Err(ElfError::Backwards {
                    what,
                    offset,
                    position: self.pos,
                });
            }
            let avail = (self.pos - offset).min(want) as usize;
            let from = (offset - self.window_start) as usize;
            buf[..avail].copy_from_slice(&self.window[from..from + avail]);
            done = avail;
        } else if offset > self.pos {
            self.skip_to(offset, what)?;
        }
        if done < buf.len() {
            let at = self.pos;
            self.store
                .read_at(at, &mut buf[done..])
                .map_err(|e| Self::io_error(e, what, offset, want))?;
            self.pos += (buf.len() - done) as u64;
            self.retain(done, buf);
        }
        Ok(())
    }

    fn skip_to(&mut self, target: u64, what: &'static str) -> Result<(), ElfError> {
        let mut chunk = vec![0u8; 64 * 1024];
        while self.pos < target {
            let n = (target - self.pos).min(chunk.len() as u64) as usize;
            let at = self.pos;
            self.store
                .read_at(at, &mut chunk[..n])
                .map_err(|e| Self::io_error(e, what, target, 0))?;
            self.pos += n as u64;
            self.retain(0, &chunk[..n]);
        }
        Ok(())
    }

    /// Keeps `bytes[from..]`, which the store just handed out and which end at `pos`.
    fn retain(&mut self, from: usize, bytes: &[u8]) {
        let bytes = &bytes[from..];
        if bytes.len() >= STREAM_WINDOW {
            self.window.clear();
            self.window
                .extend_from_slice(&bytes[bytes.len() - STREAM_WINDOW..]);
        } else {
            self.window.extend_from_slice(bytes);
        }
        if self.window.len() > 2 * STREAM_WINDOW {
            let drop = self.window.len() - STREAM_WINDOW;
            self.window.drain(..drop);
        }
        self.window_start = self.pos - self.window.len() as u64;
    }

    /// Reads `len` bytes at `offset` into a new vector.
    fn read_vec(&mut self, offset: u64, len: u64, what: &'static str) -> Result<Vec<u8>, ElfError> {
        if self
            .len
            .is_some_and(|l| offset.checked_add(len).is_none_or(|e| e > l))
        {
            return Err(ElfError::Truncated { what, offset, len });
        }
        let n = usize::try_from(len).map_err(|_| ElfError::TooMany { what, count: len })?;
        let mut v = vec![0u8; n];
        self.read(offset, &mut v, what)?;
        Ok(v)
    }
}

// ---------------------------------------------------------------------------------------------
// Headers

/// The file header's fields, class-independent.
#[derive(Debug, Clone, Copy)]
struct Header {
    class: ElfClass,
    endian: Endianness,
    machine: u16,
    file_type: u16,
    entry: u64,
    phoff: u64,
    phnum: u16,
    phentsize: u16,
    shoff: u64,
    shnum: u16,
    shentsize: u16,
    shstrndx: u16,
}

impl Header {
    fn phdr_size(&self) -> u64 {
        match self.class {
            ElfClass::Elf32 => size_of::<elf::ProgramHeader32<Endianness>>() as u64,
            ElfClass::Elf64 => size_of::<elf::ProgramHeader64<Endianness>>() as u64,
        }
    }

    fn shdr_size(&self) -> u64 {
        match self.class {
            ElfClass::Elf32 => size_of::<elf::SectionHeader32<Endianness>>() as u64,
            ElfClass::Elf64 => size_of::<elf::SectionHeader64<Endianness>>() as u64,
        }
    }

    fn wire_endian(&self) -> Endian {
        match self.endian {
            Endianness::Little => Endian::Little,
            Endianness::Big => Endian::Big,
        }
    }

    /// What [`inspect`] tells of an image with this header and what was read after it.
    fn info(
        &self,
        segments: Vec<Segment>,
        program_headers: usize,
        sections: &Sections,
        resource_table: Option<ResourceTableLocation>,
    ) -> ElfInfo {
        ElfInfo {
            class: self.class,
            endian: self.wire_endian(),
            machine: self.machine,
            file_type: self.file_type,
            entry: self.entry,
            segments,
            program_headers,
            sections: sections.headers.len(),
            resource_table,
        }
    }

    /// The first `count` section headers in `bytes`, read in this file's class and byte order.
    fn parse_sections(&self, bytes: &[u8], count: usize) -> Result<Vec<Section>, ElfError> {
        match self.class {
            ElfClass::Elf32 => {
                parse_sections::<elf::FileHeader32<Endianness>>(bytes, count, self.endian)
            }
            ElfClass::Elf64 => {
                parse_sections::<elf::FileHeader64<Endianness>>(bytes, count, self.endian)
            }
        }
    }
}

fn header_fields<H: FileHeader<Endian = Endianness>>(
    bytes: &[u8],
    class: ElfClass,
    endian: Endianness,
) -> Result<Header, ElfError> {
    let (h, _) = pod::from_bytes::<H>(bytes)
        .map_err(|_| ElfError::BadHeader("ELF header does not fit".into()))?;
    let e = endian;
    if h.e_version(e) != u32::from(elf::EV_CURRENT.0) {
        return Err(ElfError::BadHeader(format!(
            "e_version is {}, not 1",
            h.e_version(e)
        )));
    }
    Ok(Header {
        class,
        endian,
        machine: h.e_machine(e).0,
        file_type: h.e_type(e).0,
        entry: h.e_entry(e).into(),
        phoff: h.e_phoff(e).into(),
        phnum: h.e_phnum(e),
        phentsize: h.e_phentsize(e),
        shoff: h.e_shoff(e).into(),
        shnum: h.e_shnum(e),
        shentsize: h.e_shentsize(e),
        shstrndx: h.e_shstrndx(e).0,
    })
}

fn read_header<S: ImageStore + ?Sized>(r: &mut Reader<'_, S>) -> Result<Header, ElfError> {
    let mut ident = [0u8; 16];
    let avail = r.len.map_or(16, |l| l.min(16) as usize);
    r.read(0, &mut ident[..avail], "ELF identification")?;
    if avail < 4 || ident[..4] != elf::ELFMAG {
        return Err(ElfError::NotElf);
    }
    if avail < 16 {
        return Err(ElfError::Truncated {
            what: "ELF identification",
            offset: 0,
            len: 16,
        });
    }
    let class = match elf::FileClass(ident[4]) {
        elf::ELFCLASS32 => ElfClass::Elf32,
        elf::ELFCLASS64 => ElfClass::Elf64,
        c => return Err(ElfError::UnsupportedClass(c.0)),
    };
    let endian = match elf::DataEncoding(ident[5]) {
        elf::ELFDATA2LSB => Endianness::Little,
        elf::ELFDATA2MSB => Endianness::Big,
        d => return Err(ElfError::UnsupportedEncoding(d.0)),
    };
    if elf::FileVersion(ident[6]) != elf::EV_CURRENT {
        return Err(ElfError::BadHeader(format!(
            "EI_VERSION is {}, not 1",
            ident[6]
        )));
    }
    let size = match class {
        ElfClass::Elf32 => size_of::<elf::FileHeader32<Endianness>>(),
        ElfClass::Elf64 => size_of::<elf::FileHeader64<Endianness>>(),
    };
    let mut bytes = [0u8; 64];
    r.read(0, &mut bytes[..size], "ELF header")?;
    match class {
        ElfClass::Elf32 => {
            header_fields::<elf::FileHeader32<Endianness>>(&bytes[..size], class, endian)
        }
        ElfClass::Elf64 => {
            header_fields::<elf::FileHeader64<Endianness>>(&bytes[..size], class, endian)
        }
    }
}

/// A section header's fields, class-independent.
#[derive(Debug, Clone, Copy)]
struct Section {
    name: u32,
    sh_type: u32,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
}

/// The first `count` headers in `bytes`; `what` names them if they do not fit.
fn header_table<'a, T: pod::Pod>(
    bytes: &'a [u8],
    count: usize,
    what: &str,
) -> Result<&'a [T], ElfError> {
    pod::slice_from_bytes::<T>(bytes, count)
        .map(|(headers, _)| headers)
        .map_err(|_| ElfError::BadHeader(format!("{what} do not fit")))
}

fn parse_sections<H: FileHeader<Endian = Endianness>>(
    bytes: &[u8],
    count: usize,
    e: Endianness,
) -> Result<Vec<Section>, ElfError> {
    let shdrs = header_table::<H::SectionHeader>(bytes, count, "section headers")?;
    Ok(shdrs
        .iter()
        .map(|s| Section {
            name: s.sh_name(e),
            sh_type: s.sh_type(e).0,
            addr: s.sh_addr(e).into(),
            offset: s.sh_offset(e).into(),
            size: s.sh_size(e).into(),
            link: s.sh_link(e),
            info: s.sh_info(e),
        })
        .collect())
}

fn parse_segments<H: FileHeader<Endian = Endianness>>(
    bytes: &[u8],
    count: usize,
    e: Endianness,
) -> Result<Vec<Segment>, ElfError> {
    let phdrs = header_table::<H::ProgramHeader>(bytes, count, "program headers")?;
    Ok(phdrs
        .iter()
        .enumerate()
        .filter(|(_, p)| p.p_type(e) == elf::PT_LOAD)
        .map(|(index, p)| Segment {
            index,
            offset: p.p_offset(e).into(),
            paddr: p.p_paddr(e).into(),
            vaddr: p.p_vaddr(e).into(),
            filesz: p.p_filesz(e).into(),
            memsz: p.p_memsz(e).into(),
            flags: p.p_flags(e).0,
            align: p.p_align(e).into(),
        })
        .collect())
}

/// Section headers, once read.
#[derive(Debug, Default)]
struct Sections {
    headers: Vec<Section>,
    /// Index of the section-name table, if there is one.
    names: Option<usize>,
}

fn check_count<S: ImageStore + ?Sized>(
    r: &Reader<'_, S>,
    what: &'static str,
    count: u64,
) -> Result<(), ElfError> {
    if r.len.is_none() && count > MAX_HEADERS {
        return Err(ElfError::TooMany { what, count });
    }
    Ok(())
}

/// Reads section 0 (which holds the extended counts), if there are section headers.
fn read_section0<S: ImageStore + ?Sized>(
    r: &mut Reader<'_, S>,
    h: &Header,
) -> Result<Option<Section>, ElfError> {
    if h.shoff == 0 {
        return Ok(None);
    }
    if u64::from(h.shentsize) != h.shdr_size() {
        return Err(ElfError::BadHeader(format!(
            "e_shentsize is {}, not {}",
            h.shentsize,
            h.shdr_size()
        )));
    }
    let bytes = r.read_vec(h.shoff, h.shdr_size(), "section headers")?;
    Ok(h.parse_sections(&bytes, 1)?.first().copied())
}

fn read_segments<S: ImageStore + ?Sized>(
    r: &mut Reader<'_, S>,
    h: &Header,
    section0: Option<&Section>,
) -> Result<(Vec<Segment>, usize), ElfError> {
    let count = if h.phnum == elf::PN_XNUM {
        u64::from(
            section0
                .ok_or_else(|| {
                    ElfError::BadHeader("e_phnum is PN_XNUM but there is no section 0".into())
                })?
                .info,
        )
    } else {
        u64::from(h.phnum)
    };
    if h.phoff == 0 || count == 0 {
        return Ok((Vec::new(), 0));
    }
    if u64::from(h.phentsize) != h.phdr_size() {
        return Err(ElfError::BadHeader(format!(
            "e_phentsize is {}, not {}",
            h.phentsize,
            h.phdr_size()
        )));
    }
    check_count(r, "program headers", count)?;
    let bytes = r.read_vec(h.phoff, count * h.phdr_size(), "program headers")?;
    let n = count as usize;
    let segs = match h.class {
        ElfClass::Elf32 => parse_segments::<elf::FileHeader32<Endianness>>(&bytes, n, h.endian)?,
        ElfClass::Elf64 => parse_segments::<elf::FileHeader64<Endianness>>(&bytes, n, h.endian)?,
    };
    Ok((segs, n))
}

fn read_section_headers<S: ImageStore + ?Sized>(
    r: &mut Reader<'_, S>,
    h: &Header,
    section0: Option<Section>,
) -> Result<Sections, ElfError> {
    let Some(s0) = section0 else {
        return Ok(Sections::default());
    };
    let count = if h.shnum == 0 {
        s0.size
    } else {
        u64::from(h.shnum)
    };
    check_count(r, "section headers", count)?;
    let size = count.checked_mul(h.shdr_size()).ok_or(ElfError::TooMany {
        what: "section headers",
        count,
    })?;
    let bytes = r.read_vec(h.shoff, size, "section headers")?;
    let n = usize::try_from(count).map_err(|_| ElfError::TooMany {
        what: "section headers",
        count,
    })?;
    let headers = h.parse_sections(&bytes, n)?;
    let names = match elf::SymbolSection(h.shstrndx) {
        elf::SHN_UNDEF => None,
        elf::SHN_XINDEX => Some(s0.link as usize),
        i => Some(usize::from(i.0)),
    };
    if let Some(i) = names
        && i >= headers.len()
    {
        return Err(ElfError::BadHeader(format!(
            "section name table index {i} is not below the {} sections",
            headers.len()
        )));
    }
    Ok(Sections { headers, names })
}

/// Finds `.resource_table` by name; returns its section header.
fn find_table_section<S: ImageStore + ?Sized>(
    r: &mut Reader<'_, S>,
    sections: &Sections,
) -> Result<Option<Section>, ElfError> {
    let Some(strtab) = sections.names.and_then(|i| sections.headers.get(i)) else {
        return Ok(None);
    };
    if strtab.sh_type == elf::SHT_NOBITS.0 || strtab.size == 0 {
        return Ok(None);
    }
    if r.len.is_none() && strtab.size > MAX_NAMES {
        return Err(ElfError::TooMany {
            what: "section name bytes",
            count: strtab.size,
        });
    }
    let names = r.read_vec(strtab.offset, strtab.size, "section names")?;
    let name_of = |s: &Section| -> Option<&[u8]> {
        let rest = names.get(usize::try_from(s.name).ok()?..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(&rest[..end])
    };
    Ok(sections
        .headers
        .iter()
        .find(|s| name_of(s) == Some(RESOURCE_TABLE_SECTION))
        .copied())
}

/// Checks the resource table section against the image and the loaded segments.
fn locate_table(
    section: &Section,
    segments: &[Segment],
    file_len: Option<u64>,
) -> Result<ResourceTableLocation, ElfError> {
    let (offset, size) = (section.offset, section.size);
    if section.sh_type == elf::SHT_NOBITS.0 {
        return Err(ElfError::ResourceTableNotLoaded { offset, size });
    }
    let end = offset.checked_add(size);
    if size < MIN_TABLE || end.is_none() || file_len.is_some_and(|l| end.is_none_or(|e| e > l)) {
        return Err(ElfError::ResourceTableTruncated { offset, size });
    }
    let end = end.unwrap_or(u64::MAX);
    let seg = segments
        .iter()
        .filter(|s| s.is_loaded())
        .find(|s| s.offset <= offset && s.offset.checked_add(s.filesz).is_some_and(|se| end <= se))
        .ok_or(ElfError::ResourceTableNotLoaded { offset, size })?;
    // `inspect` does not validate segment addresses (`load` does): a segment whose physical
    // range wraps must not wrap the table's address too (found by fuzz/elf_loader).
    let into_segment = offset - seg.offset;
    let addr = seg
        .paddr
        .checked_add(into_segment)
        .filter(|a| a.checked_add(size).is_some())
        .ok_or(ElfError::AddressOverflow {
            index: seg.index,
            what: "resource table address",
            start: seg.paddr,
            size: into_segment.saturating_add(size),
            bits: 64,
        })?;
    Ok(ResourceTableLocation {
        addr,
        section_addr: section.addr,
        size,
        file_offset: offset,
    })
}

/// Checks every loadable segment; returns them sorted by file offset.
fn validate_segments(
    class: ElfClass,
    segments: &[Segment],
    file_len: Option<u64>,
) -> Result<Vec<Segment>, ElfError> {
    let mut loaded: Vec<Segment> = Vec::new();
    for s in segments.iter().filter(|s| s.is_loaded()) {
        if s.filesz > s.memsz {
            return Err(ElfError::FileszExceedsMemsz {
                index: s.index,
                filesz: s.filesz,
                memsz: s.memsz,
            });
        }
        let file_end = s
            .offset
            .checked_add(s.filesz)
            .ok_or(ElfError::AddressOverflow {
                index: s.index,
                what: "file offset",
                start: s.offset,
                size: s.filesz,
                bits: 64,
            })?;
        if u128::from(s.paddr) + u128::from(s.memsz) > class.max_addr() {
            return Err(ElfError::AddressOverflow {
                index: s.index,
                what: "physical address",
                start: s.paddr,
                size: s.memsz,
                bits: class.bits(),
            });
        }
        if let Some(len) = file_len
            && file_end > len
        {
            return Err(ElfError::SegmentTruncated {
                index: s.index,
                offset: s.offset,
                filesz: s.filesz,
                file_len,
            });
        }
        loaded.push(*s);
    }
    let mut by_addr = loaded.clone();
    by_addr.sort_by_key(|s| (s.paddr, s.index));
    for pair in by_addr.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        // paddr + memsz fits (checked above; u64 holds 2^64 - 1 at most, so compare in u128).
        let a_end = u128::from(a.paddr) + u128::from(a.memsz);
        if u128::from(b.paddr) < a_end {
            return Err(ElfError::Overlap {
                first: a.index,
                first_start: a.paddr,
                first_end: a.paddr.wrapping_add(a.memsz),
                second: b.index,
                second_start: b.paddr,
                second_end: b.paddr.wrapping_add(b.memsz),
            });
        }
    }
    loaded.sort_by_key(|s| (s.offset, s.index));
    Ok(loaded)
}

/// Reads the headers and finds the resource table: what [`inspect`] returns, plus (if asked
/// for) the table's bytes from the image.
fn read_info<S: ImageStore + ?Sized>(
    r: &mut Reader<'_, S>,
    want_table: bool,
) -> Result<(ElfInfo, TableBytes), ElfError> {
    let h = read_header(r)?;
    // A forward-only store reads the two header tables in file order.
    let sections_first = r.sequential && h.shoff != 0 && h.shoff < h.phoff;
    let (segments, program_headers, sections) = if sections_first {
        let s0 = read_section0(r, &h)?;
        let sections = read_section_headers(r, &h, s0)?;
        let (segs, n) = read_segments(r, &h, s0.as_ref())?;
        (segs, n, sections)
    } else {
        let s0 = if h.phnum == elf::PN_XNUM {
            read_section0(r, &h)?
        } else {
            None
        };
        let (segs, n) = read_segments(r, &h, s0.as_ref())?;
        let s0 = match s0 {
            Some(s) => Some(s),
            None => read_section0(r, &h)?,
        };
        (segs, n, read_section_headers(r, &h, s0)?)
    };
    let table = find_table_section(r, &sections)?;
    let resource_table = table
        .map(|t| locate_table(&t, &segments, r.len))
        .transpose()?;
    let bytes = match (want_table, resource_table) {
        (true, Some(t)) => Some(r.read_vec(t.file_offset, t.size, "resource table")),
        _ => None,
    };
    Ok((
        h.info(segments, program_headers, &sections, resource_table),
        bytes,
    ))
}

/// Reads an image's headers: class, machine, entry, loadable segments and where the resource
/// table is. Reads only headers and section names, never segment contents.
pub fn inspect<S: ImageStore + ?Sized>(store: &mut S) -> Result<ElfInfo, ElfError> {
    let mut r = Reader::new(store);
    read_info(&mut r, false).map(|(info, _)| info)
}

/// Like [`inspect`], and also reads the resource table's bytes from the image. The inner
/// result fails on its own (for instance for a forward-only store whose table lies before the
/// section headers, outside the look-back window).
pub fn inspect_with_table<S: ImageStore + ?Sized>(
    store: &mut S,
) -> Result<(ElfInfo, TableBytes), ElfError> {
    let mut r = Reader::new(store);
    read_info(&mut r, true)
}

/// Loads an image into `mem`: see [`load_with`].
pub fn load<S, M>(store: &mut S, mem: &M) -> Result<LoadedImage, ElfError>
where
    S: ImageStore + ?Sized,
    M: SharedMemory + ?Sized,
{
    load_with(store, mem, &LoadOptions::default(), |_| Ok(()))
}

/// Loads an image into `mem`: validates the headers, calls `prepare` for every loadable
/// segment (in program header order; an `Err` refuses the segment, e.g. the backend's
/// [`map`](crate::backend::RemoteBackend::map) said no), checks that every segment lies in
/// `mem`, then copies the segments in file-offset order in pieces of `options.chunk_size`
/// bytes and zeroes their memory beyond the file bytes.
pub fn load_with<S, M, F>(
    store: &mut S,
    mem: &M,
    options: &LoadOptions,
    mut prepare: F,
) -> Result<LoadedImage, ElfError>
where
    S: ImageStore + ?Sized,
    M: SharedMemory + ?Sized,
    F: FnMut(&Segment) -> Result<(), String>,
{
    let mut r = Reader::new(store);
    let h = read_header(&mut r)?;
    let s0 = if h.phnum == elf::PN_XNUM {
        read_section0(&mut r, &h)?
    } else {
        None
    };
    let (segments, program_headers) = read_segments(&mut r, &h, s0.as_ref())?;
    let loaded = validate_segments(h.class, &segments, r.len)?;
    if loaded.is_empty() {
        return Err(ElfError::NoLoadableSegments);
    }
    let first_data = loaded.first().map_or(u64::MAX, |s| s.offset);
    // Section headers: now if a seekable store or if they come before the segments, else
    // after the copy (a stream cannot come back to them).
    let shdr_end = u64::from(h.shnum)
        .checked_mul(h.shdr_size())
        .and_then(|n| n.checked_add(h.shoff));
    let sections_now = !r.sequential || (h.shoff != 0 && shdr_end.is_some_and(|e| e <= first_data));
    let mut sections = None;
    let mut table_section = None;
    let mut names_done = false;
    if sections_now {
        let s0 = match s0 {
            Some(s) => Some(s),
            None => read_section0(&mut r, &h)?,
        };
        let s = read_section_headers(&mut r, &h, s0)?;
        let strtab_end = s
            .names
            .and_then(|i| s.headers.get(i))
            .and_then(|t| t.offset.checked_add(t.size));
        if !r.sequential || strtab_end.is_none_or(|e| e <= first_data) {
            table_section = find_table_section(&mut r, &s)?;
            names_done = true;
        }
        sections = Some(s);
    }
    let mut resource_table = None;
    if names_done && let Some(t) = &table_section {
        resource_table = Some(locate_table(t, &segments, r.len)?);
    }
    for s in &loaded {
        prepare(s).map_err(|reason| ElfError::OutsideMemory {
            index: s.index,
            paddr: s.paddr,
            memsz: s.memsz,
            reason,
        })?;
        let fits = usize::try_from(s.memsz)
            .ok()
            .and_then(|n| mem.region(s.paddr, n))
            .is_some();
        if !fits {
            return Err(ElfError::OutsideMemory {
                index: s.index,
                paddr: s.paddr,
                memsz: s.memsz,
                reason: "outside the remote's memory".into(),
            });
        }
    }
    let chunk = options.chunk_size.max(1);
    let mut buf = vec![0u8; chunk.min(loaded.iter().map(|s| s.filesz).max().unwrap_or(0) as usize)];
    let (mut copied, mut zeroed) = (0u64, 0u64);
    for s in &loaded {
        let refused = |e: vamp_rpmsg::mem::MemError| ElfError::OutsideMemory {
            index: s.index,
            paddr: s.paddr,
            memsz: s.memsz,
            reason: e.to_string(),
        };
        let mut done = 0u64;
        while done < s.filesz {
            let n = (s.filesz - done).min(chunk as u64) as usize;
            r.read(s.offset + done, &mut buf[..n], "segment data")
                .map_err(|e| match e {
                    ElfError::Truncated { .. } => ElfError::SegmentTruncated {
                        index: s.index,
                        offset: s.offset,
                        filesz: s.filesz,
                        file_len: r.len,
                    },
                    e => e,
                })?;
            mem.write(s.paddr + done, &buf[..n]).map_err(refused)?;
            done += n as u64;
        }
        copied += s.filesz;
        let mut z = s.filesz;
        while z < s.memsz {
            let n = (s.memsz - z).min(ZERO_CHUNK);
            mem.fill(s.paddr + z, n as usize, 0).map_err(refused)?;
            z += n;
        }
        zeroed += s.memsz - s.filesz;
    }
    let sections = match sections {
        Some(s) => s,
        None => {
            let s0 = match s0 {
                Some(s) => Some(s),
                None => read_section0(&mut r, &h)?,
            };
            read_section_headers(&mut r, &h, s0)?
        }
    };
    if !names_done {
        table_section = find_table_section(&mut r, &sections)?;
        if let Some(t) = &table_section {
            resource_table = Some(locate_table(t, &segments, r.len)?);
        }
    }
    Ok(LoadedImage {
        info: h.info(segments, program_headers, &sections, resource_table),
        copied,
        zeroed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{MemoryImage, StreamImage};

    #[test]
    fn short_inputs_are_not_elf_or_truncated() {
        for bytes in [&b""[..], b"\x7f", b"\x7fEL", b"MZ\x90\x00", b"\x7fELF\x01"] {
            let err = inspect(&mut MemoryImage::new(bytes)).unwrap_err();
            assert!(
                matches!(err, ElfError::NotElf | ElfError::Truncated { .. }),
                "{bytes:?}: {err}"
            );
        }
        let mut ident = *b"\x7fELF\x03\x01\x01\0\0\0\0\0\0\0\0\0";
        assert!(matches!(
            inspect(&mut MemoryImage::new(&ident[..])),
            Err(ElfError::UnsupportedClass(3))
        ));
        ident[4] = 1;
        ident[5] = 9;
        assert!(matches!(
            inspect(&mut MemoryImage::new(&ident[..])),
            Err(ElfError::UnsupportedEncoding(9))
        ));
    }

    /// An ELF64 image with one loadable segment at physical `paddr` that holds, at file offset
    /// 0x80, a 16-byte `.resource_table`.
    fn table_in_segment_at(paddr: u64) -> Vec<u8> {
        let mut b = vec![0u8; 0xb0 + 3 * 64];
        let put = |b: &mut Vec<u8>, at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(&mut b, 0, b"\x7fELF\x02\x01\x01");
        put(&mut b, 16, &2u16.to_le_bytes()); // ET_EXEC
        put(&mut b, 18, &62u16.to_le_bytes()); // EM_X86_64
        put(&mut b, 20, &1u32.to_le_bytes());
        put(&mut b, 32, &64u64.to_le_bytes()); // e_phoff
        put(&mut b, 40, &0xb0u64.to_le_bytes()); // e_shoff
        for (at, v) in [(52, 64u16), (54, 56), (56, 1), (58, 64), (60, 3), (62, 2)] {
            put(&mut b, at, &v.to_le_bytes());
        }
        // PT_LOAD, R, file 0..0xb0 at `paddr`.
        put(&mut b, 64, &1u32.to_le_bytes());
        put(&mut b, 68, &4u32.to_le_bytes());
        for (at, v) in [(80, paddr), (88, paddr), (96, 0xb0), (104, 0xb0), (112, 1)] {
            put(&mut b, at, &u64::to_le_bytes(v));
        }
        put(&mut b, 0x80, &1u32.to_le_bytes()); // table: ver 1, no entries
        put(&mut b, 0x90, b"\0.resource_table\0.shstrtab\0");
        // Section 1: .resource_table (PROGBITS, ALLOC); section 2: .shstrtab.
        let sh = |i: usize| 0xb0 + 64 * i;
        for (i, name, kind, flags, offset, size) in [
            (1, 1u32, 1u32, 2u64, 0x80u64, 16u64),
            (2, 17, 3, 0, 0x90, 27),
        ] {
            put(&mut b, sh(i), &name.to_le_bytes());
            put(&mut b, sh(i) + 4, &kind.to_le_bytes());
            put(&mut b, sh(i) + 8, &flags.to_le_bytes());
            put(&mut b, sh(i) + 24, &offset.to_le_bytes());
            put(&mut b, sh(i) + 32, &size.to_le_bytes());
        }
        b
    }

    #[test]
    fn a_table_in_a_segment_that_wraps_the_address_space_is_refused() {
        // Regression (fuzz/elf_loader): the table's address overflowed (a panic in debug
        // builds, a wrapped address otherwise).
        let ok = inspect(&mut MemoryImage::new(table_in_segment_at(0x10_0000))).unwrap();
        assert_eq!(ok.resource_table.map(|t| t.addr), Some(0x10_0080));
        for paddr in [u64::MAX - 0x10, u64::MAX - 0x80 - 8] {
            let image = table_in_segment_at(paddr);
            for err in [
                inspect(&mut MemoryImage::new(&image[..])).unwrap_err(),
                inspect(&mut StreamImage::new(&image[..])).unwrap_err(),
            ] {
                assert!(
                    matches!(err, ElfError::AddressOverflow { index: 0, .. }),
                    "{paddr:#x}: {err}"
                );
            }
        }
    }

    #[test]
    fn reader_keeps_a_window_behind_a_stream() {
        let data: Vec<u8> = (0..3 * STREAM_WINDOW as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut s = StreamImage::new(&data[..]);
        let mut r = Reader::new(&mut s);
        let mut b = [0u8; 8];
        r.read(100, &mut b, "t").unwrap();
        r.read(96, &mut b, "t").unwrap();
        assert_eq!(&b[..], &data[96..104]);
        r.read(2 * STREAM_WINDOW as u64, &mut b, "t").unwrap();
        // Just behind the position: kept.
        r.read(2 * STREAM_WINDOW as u64 - 1000, &mut b, "t")
            .unwrap();
        assert_eq!(
            &b[..],
            &data[2 * STREAM_WINDOW - 1000..2 * STREAM_WINDOW - 992]
        );
        // Far behind: gone.
        assert!(matches!(
            r.read(10, &mut b, "t"),
            Err(ElfError::Backwards { offset: 10, .. })
        ));
        // Past the end.
        let end = data.len() as u64 - 4;
        assert!(matches!(
            r.read(end, &mut b, "t"),
            Err(ElfError::Truncated { .. })
        ));
    }
}
