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
// ELF images

// Each test binary uses some of them.
#[allow(unused_imports)]
pub use vamp_test_support::elf::{Built, Elf, Layout, Ph, Seg};

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
