//! Shared test helpers: an ELF writer, a backend over heap memory, the remote's side of an
//! rpmsg link played in a thread, and the host's side: waiting for a channel, binding to it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vamp_remoteproc::backend::{BackendError, Doorbell, Exit, RemoteBackend};
use vamp_remoteproc::remoteproc::{RemoteRpmsg, Remoteproc};
use vamp_rpmsg::mem::{HeapMemory, SharedMemory};
use vamp_rpmsg::rpmsg::{Config, EptId, Rpmsg};
use vamp_rpmsg::testing::Recorder;
use vamp_rpmsg::transport::{BufferConfig, DeviceTransport, Environment, Transport};
use vamp_rpmsg::virtio::{STATUS_DRIVER_OK, VIRTIO_ID_RPMSG};
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::resource_table::{
    FW_RSC_ADDR_ANY, RSC_VDEV, ResourceTable, ResourceTableBuilder, VdevVringSpec,
};
use vamp_rpmsg::wire::{ADDR_ANY, Endian};

// ---------------------------------------------------------------------------------------------
// ELF writer

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

/// A code pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

pub const CODE: u64 = 0x10000;
pub const DATA: u64 = 0x20000;
pub const CHANNEL: &[u8] = b"rpmsg-openamp-demo-channel";

/// The resource table the echo firmware carries: a "vdev0buffer" carveout, one rpmsg vdev
/// with its vrings left to the host, a trace buffer.
pub fn firmware_table(endian: Endian) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let mut b = ResourceTableBuilder::new(&mut buf, endian, 3).unwrap();
    b.add_carveout(FW_RSC_ADDR_ANY, FW_RSC_ADDR_ANY, 0x40000, 0, b"vdev0buffer")
        .unwrap();
    let ring = |notifyid| VdevVringSpec {
        da: FW_RSC_ADDR_ANY,
        align: 0x1000,
        num: 256,
        notifyid,
    };
    b.add_vdev(VIRTIO_ID_RPMSG, 2, 1, &[], &[ring(0), ring(1)])
        .unwrap();
    b.add_trace(FW_RSC_ADDR_ANY, 0x1000, b"trace0").unwrap();
    let len = b.finish().unwrap();
    buf.truncate(len);
    buf
}

/// An image with a code segment (bss after it) and a data segment that starts with `table`.
pub fn image_with_table(class64: bool, big: bool, table: Option<&[u8]>) -> Elf {
    let mut e = Elf::new(class64, big);
    e.segs.push(Seg::new(CODE, pattern(0x300, 7), 0x1000));
    let mut data = table.map(<[u8]>::to_vec).unwrap_or_default();
    data.extend(pattern(0x40, 3));
    e.segs.push(Seg {
        flags: 6,
        ..Seg::new(DATA, data, 0x2000)
    });
    if let Some(t) = table {
        e.rsc = Some((1, 0, t.len() as u64));
    }
    e
}

/// The standard echo image.
pub fn echo_image(class64: bool) -> Vec<u8> {
    let e = Endian::NATIVE;
    let t = firmware_table(e);
    image_with_table(class64, e == Endian::Big, Some(&t))
        .build()
        .bytes
}

// ---------------------------------------------------------------------------------------------
// Backend

/// A call the test backend saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Map(u64, u64),
    Alloc(u64, u64, u64),
    Vendor(u32, Vec<u8>),
    Start(u64),
    Stop,
}

#[derive(Debug, Default)]
pub struct Bells {
    host_pending: bool,
    remote_pending: bool,
    pub rung: Vec<u32>,
}

/// Kicks both ways.
#[derive(Debug, Default)]
pub struct TestDoorbell {
    pub bells: Mutex<Bells>,
    cv: Condvar,
}

impl TestDoorbell {
    /// The remote notifies the host.
    pub fn remote_notify(&self) {
        self.bells.lock().unwrap().host_pending = true;
        self.cv.notify_all();
    }

    /// The remote waits for the host.
    pub fn remote_wait(&self, timeout: Duration) -> bool {
        self.take(timeout, |b| &mut b.remote_pending)
    }

    /// Waits up to `timeout` for the bell `pending` picks to ring; clears it.
    fn take(&self, timeout: Duration, pending: fn(&mut Bells) -> &mut bool) -> bool {
        let g = self.bells.lock().unwrap();
        let (mut g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |b| !*pending(b))
            .unwrap();
        std::mem::take(pending(&mut g))
    }

    pub fn rung(&self) -> Vec<u32> {
        self.bells.lock().unwrap().rung.clone()
    }
}

impl Doorbell for TestDoorbell {
    fn ring(&self, notifyid: u32) {
        let mut b = self.bells.lock().unwrap();
        b.remote_pending = true;
        b.rung.push(notifyid);
        self.cv.notify_all();
    }

    fn wait(&self, timeout: Duration) -> bool {
        self.take(timeout, |b| &mut b.host_pending)
    }
}

/// What a test scripts and observes.
#[derive(Debug, Default)]
pub struct Control {
    pub calls: Mutex<Vec<Call>>,
    pub exits: Mutex<VecDeque<Exit>>,
    pub fail_start: AtomicBool,
    /// `map` of this device address says Unsupported.
    pub unsupported_map: AtomicU64,
}

impl Control {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    pub fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }
    pub fn crash(&self, why: &str) {
        self.exits
            .lock()
            .unwrap()
            .push_back(Exit::Crashed(why.into()));
    }
    pub fn exit(&self, code: u32) {
        self.exits.lock().unwrap().push_back(Exit::Exited(code));
    }
}

/// Memory `0..size`, allocations bumped up from `alloc_base` (released at stop).
pub struct TestBackend {
    pub mem: Arc<HeapMemory>,
    pub bell: Arc<TestDoorbell>,
    pub control: Arc<Control>,
    alloc_base: u64,
    alloc_next: u64,
    running: bool,
}

pub const MEM_SIZE: usize = 4 << 20;
pub const ALLOC_BASE: u64 = 0x100000;

impl TestBackend {
    pub fn new() -> Self {
        Self::with_memory(MEM_SIZE, ALLOC_BASE)
    }

    pub fn with_memory(size: usize, alloc_base: u64) -> Self {
        TestBackend {
            mem: Arc::new(HeapMemory::new(size, 0)),
            bell: Arc::new(TestDoorbell::default()),
            control: Arc::new(Control::default()),
            alloc_base,
            alloc_next: alloc_base,
            running: false,
        }
    }

    fn log(&self, c: Call) {
        self.control.calls.lock().unwrap().push(c);
    }

    pub fn running(&self) -> bool {
        self.running
    }
}

impl RemoteBackend for TestBackend {
    type Memory = Arc<HeapMemory>;

    fn memory(&self) -> &Arc<HeapMemory> {
        &self.mem
    }

    fn map(&mut self, da: u64, len: u64) -> Result<u64, BackendError> {
        self.log(Call::Map(da, len));
        if self.control.unsupported_map.load(Ordering::SeqCst) == da && da != 0 {
            return Err(BackendError::Unsupported("no IOMMU".into()));
        }
        let fits = usize::try_from(len)
            .ok()
            .and_then(|n| self.mem.region(da, n))
            .is_some();
        if fits {
            Ok(da)
        } else {
            Err(BackendError::NoMemory { da, len })
        }
    }

    fn alloc(&mut self, len: u64, align: u64) -> Result<u64, BackendError> {
        let da = self.alloc_next.next_multiple_of(align.max(1));
        let end = da + len;
        if end > self.mem.word_count() as u64 * 8 {
            return Err(BackendError::OutOfMemory { len });
        }
        self.alloc_next = end;
        self.log(Call::Alloc(len, align, da));
        Ok(da)
    }

    fn vendor_resource(&mut self, rtype: u32, body: &[u8]) -> Result<(), BackendError> {
        self.log(Call::Vendor(rtype, body.to_vec()));
        if rtype == 200 {
            Ok(())
        } else {
            Err(BackendError::Unsupported(format!("vendor type {rtype}")))
        }
    }

    fn start(&mut self, entry: u64) -> Result<(), BackendError> {
        if self.control.fail_start.load(Ordering::SeqCst) {
            return Err(BackendError::Other("scripted start failure".into()));
        }
        self.log(Call::Start(entry));
        self.running = true;
        Ok(())
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        self.log(Call::Stop);
        self.running = false;
        self.alloc_next = self.alloc_base;
        Ok(())
    }

    fn doorbell(&self) -> Arc<dyn Doorbell> {
        self.bell.clone()
    }

    fn poll_exit(&mut self) -> Option<Exit> {
        if !self.running {
            return None;
        }
        let e = self.control.exits.lock().unwrap().pop_front();
        if e.is_some() {
            self.running = false;
        }
        e
    }
}

// ---------------------------------------------------------------------------------------------
// The remote's side

/// The remote's environment: kicks and waits on the test doorbell.
#[derive(Debug)]
pub struct RemoteSideEnv {
    bell: Arc<TestDoorbell>,
    start: Instant,
}

impl Environment for RemoteSideEnv {
    fn notify(&mut self, _queue: u16) {
        self.bell.remote_notify();
    }
    fn wait(&mut self, timeout_us: u64) -> bool {
        self.bell.remote_wait(Duration::from_micros(timeout_us))
    }
    fn now_us(&mut self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// A remote running the echo demo in a thread.
pub struct FakeRemote {
    pub stop: Arc<AtomicBool>,
    pub handle: Option<JoinHandle<Result<u64, String>>>,
}

impl FakeRemote {
    /// Waits for DRIVER_OK on vdev 0 of the table at `table_addr`, attaches to its rings,
    /// announces the demo channel and echoes until stopped.
    pub fn spawn(
        mem: Arc<HeapMemory>,
        bell: Arc<TestDoorbell>,
        table_addr: u64,
        table_len: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || run_remote(mem, bell, table_addr, table_len, &s));
        FakeRemote {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops it; returns how many messages it echoed.
    pub fn finish(mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for FakeRemote {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run_remote(
    mem: Arc<HeapMemory>,
    bell: Arc<TestDoorbell>,
    table_addr: u64,
    table_len: usize,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (rings, gfeatures) = loop {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            return Err("no DRIVER_OK".into());
        }
        let mut copy = vec![0u8; table_len];
        mem.read(table_addr, &mut copy).map_err(|e| e.to_string())?;
        let t = ResourceTable::new_checked(&copy[..], Endian::NATIVE).map_err(|e| e.to_string())?;
        let i = t.find(RSC_VDEV, 0).ok_or("no vdev")?;
        let v = t.vdev(i).map_err(|e| e.to_string())?;
        if v.status() & STATUS_DRIVER_OK != 0 {
            let ring = |i| {
                let r = v.vring(i).unwrap();
                VringLayout::legacy(r.da as u64, r.num as u16, r.align as u64).unwrap()
            };
            break ([ring(0), ring(1)], v.gfeatures());
        }
        bell.remote_wait(Duration::from_millis(5));
    };
    vamp_rpmsg::mem::read_barrier();
    let env = RemoteSideEnv {
        bell: bell.clone(),
        start: Instant::now(),
    };
    let t = DeviceTransport::new(
        mem,
        env,
        rings[0],
        rings[1],
        Endian::NATIVE,
        gfeatures & (1 << 29) != 0,
        512,
    )
    .map_err(|e| e.to_string())?;
    let mut remote = Rpmsg::new(
        t,
        Config {
            name_service: gfeatures & 1 != 0,
            ..Config::default()
        },
    );
    remote
        .create_ept(CHANNEL, ADDR_ANY, ADDR_ANY)
        .map_err(|e| e.to_string())?;
    let mut echo = Recorder::echoing();
    while !stop.load(Ordering::SeqCst) {
        echo.messages.clear();
        remote.poll(&mut echo).map_err(|e| e.to_string())?;
        bell.remote_wait(Duration::from_millis(10));
    }
    Ok(remote.stats().sent.saturating_sub(1))
}

/// Waits for the remote: on the doorbell, or only a yield when busy-polling (no notification
/// will come).
pub fn idle<M: SharedMemory>(host: &mut RemoteRpmsg<M>) {
    if host.transport().busy_poll() {
        std::thread::yield_now();
    } else {
        host.transport_mut().environment().wait(10_000);
    }
}

/// Polls `host` until `channel` is announced, before `deadline`; returns its address.
pub fn wait_announced<M: SharedMemory>(
    host: &mut RemoteRpmsg<M>,
    h: &mut Recorder,
    channel: &[u8],
    deadline: Instant,
) -> Result<u32, String> {
    loop {
        host.poll(h).map_err(|e| e.to_string())?;
        if let Some(addr) = h.announced(channel) {
            return Ok(addr);
        }
        if Instant::now() > deadline {
            let name = String::from_utf8_lossy(channel);
            return Err(format!("no announcement of {name}"));
        }
        idle(host);
    }
}

/// Brings up vdev 0 of the running `rp` in the driver role (busy-polling if `busy_poll`),
/// waits for `channel` (10 s) and binds an endpoint of that name to it.
pub fn connect<B: RemoteBackend>(
    rp: &mut Remoteproc<B>,
    busy_poll: bool,
    channel: &[u8],
) -> (RemoteRpmsg<B::Memory>, Recorder, EptId) {
    let mut host = rp.create_virtio(0, BufferConfig::default()).unwrap();
    if busy_poll {
        host.transport_mut().set_busy_poll(true).unwrap();
    }
    let mut h = Recorder::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = wait_announced(&mut host, &mut h, channel, deadline).unwrap();
    let ept = host.create_ept(channel, ADDR_ANY, addr).unwrap();
    (host, h, ept)
}

/// Waits for the demo channel, binds to it and exchanges `count` echoes.
pub fn host_echo(rpmsg: &mut RemoteRpmsg<Arc<HeapMemory>>, count: usize) -> Result<(), String> {
    let mut h = Recorder::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = wait_announced(rpmsg, &mut h, CHANNEL, deadline)?;
    let ept = rpmsg
        .create_ept(CHANNEL, ADDR_ANY, addr)
        .map_err(|e| e.to_string())?;
    for i in 0..count {
        let msg: Vec<u8> = (0..(i % 400 + 1)).map(|b| (b as u8) ^ (i as u8)).collect();
        rpmsg.send(ept, &msg).map_err(|e| e.to_string())?;
        loop {
            rpmsg.poll(&mut h).map_err(|e| e.to_string())?;
            if let Some((_, src, got)) = h.messages.pop() {
                if src != addr || got != msg {
                    return Err(format!("message {i}: bad echo from {src}"));
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("message {i}: no echo"));
            }
            idle(rpmsg);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Files

// The tests that write files use it.
#[allow(unused_imports)]
pub use vamp_test_support::TempDir;
