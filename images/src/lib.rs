//! The runtime of vamp's remote firmware: start-up, the platform's ports, a heap, the
//! resource table layout, and the rpmsg link to the host in the device role.
//!
//! # Platforms
//!
//! One firmware source, three platforms, each in its own file under `arch/` (start-up, how to
//! kick, wait, print, stop and crash, and the clock):
//!
//! - `x86_64`: the vamp KVM remote on an x86-64 host (64-bit mode at CPL3, I/O ports).
//! - `aarch64`: the vamp KVM remote on an arm64 host (EL1, MMIO registers; the firmware maps
//!   its memory first).
//! - `arm`: a ZynqMP Cortex-R5 behind Linux's remoteproc (the echo image only).
//!
//! # How the firmware waits
//!
//! The standard resource table carries the vamp platform entry (a vendor entry, type
//! [`RSC_VAMP_PLATFORM`]; its layout is defined once for both sides, in guest-lib's
//! `wire::platform`). The host writes into it, before the firmware starts, how the
//! firmware is to wait for work, and [`serve`] does so:
//!
//! - **notify**: after its last message the firmware keeps polling its rings, with the host's
//!   kicks off, for the spin window the host chose; then it turns kicks on, looks once more,
//!   and sleeps on the wait port. A wait costs an exit to the host's VMM and a new `KVM_RUN`,
//!   which a message that comes within the window does not pay.
//! - **busy-poll**: the engine's busy-poll mode: the firmware spins on its rings, never
//!   waits and never kicks, and counts up the entry's heartbeat so that the host's watchdog
//!   still sees it alive.
//!
//! The entry also declares that the firmware can run packed virtqueues: a host that asks for
//! them sets the packed-ring mode bit, and [`connect`] lays both rings out packed in the areas
//! the host placed (split rings otherwise, and with any host that does not know the entry).
#![no_std]

extern crate alloc;

use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use vamp_rpmsg::mem::RawMemory;
use vamp_rpmsg::rpmsg::{Config, Error, Handler, Rpmsg};
use vamp_rpmsg::transport::{DeviceRings, DeviceTransport, Environment, RingFormat, Transport};
use vamp_rpmsg::virtio::{STATUS_DRIVER_OK, VIRTIO_ID_RPMSG, VIRTIO_RPMSG_F_NS};
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::Endian;
use vamp_rpmsg::wire::resource_table::{VDEV_GFEATURES_AT, VDEV_STATUS_AT};

mod arch;
pub use arch::exit;

/// The console: `write!(Console, ...)`.
#[derive(Debug, Clone, Copy)]
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        s.bytes().for_each(arch::console);
        Ok(())
    }
}

/// Prints to the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::Console, $($arg)*);
    }};
}

/// Bytes of the trace buffer.
pub const TRACE_LEN: usize = 4096;

static TRACE_POS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Appends a line to the trace buffer the host placed (Linux's remoteproc trace entry:
/// NUL-terminated text the host reads), wrapping to the start when full.
pub fn trace(table: &ResourceTable, line: &str) {
    let (da, len) = table.trace_area();
    let len = len.min(TRACE_LEN as u32) as usize;
    if da == 0xffff_ffff || len < 2 || (da as u64 + len as u64) > ram_size() as u64 || da < 4096 {
        return;
    }
    let base = da as usize as *mut u8;
    for b in line.bytes().chain(core::iter::once(b'\n')) {
        let mut pos = TRACE_POS.load(core::sync::atomic::Ordering::Relaxed);
        if pos >= len - 1 {
            pos = 0;
        }
        // SAFETY: `pos + 1 < len` and the host placed `len` bytes at `da` inside RAM, which is
        // identity-mapped; single-threaded firmware.
        unsafe {
            base.add(pos).write_volatile(b);
            base.add(pos + 1).write_volatile(0);
        }
        TRACE_POS.store(pos + 1, core::sync::atomic::Ordering::Relaxed);
    }
}

// ----- start-up ------------------------------------------------------------------------------

#[repr(C, align(16))]
struct Stack([u8; arch::STACK_LEN]);

// Named in each platform's `_start`.
#[unsafe(no_mangle)]
static mut FIRMWARE_STACK: Stack = Stack([0; arch::STACK_LEN]);

static RAM_SIZE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Bytes of RAM the host gave us (from address 0).
pub fn ram_size() -> usize {
    RAM_SIZE.load(core::sync::atomic::Ordering::Relaxed)
}

unsafe extern "Rust" {
    /// The firmware's main function, defined by each image with [`firmware_main!`].
    safe fn vamp_firmware_main() -> u32;
}

/// Declares the firmware's main function (returns the exit code).
#[macro_export]
macro_rules! firmware_main {
    ($main:path) => {
        #[unsafe(no_mangle)]
        fn vamp_firmware_main() -> u32 {
            $main()
        }
    };
}

/// Where each platform's `_start` goes once it has a stack, with the RAM size.
extern "C" fn rust_start(ram_size: usize) -> ! {
    RAM_SIZE.store(ram_size, core::sync::atomic::Ordering::Relaxed);
    heap::init();
    let code = vamp_firmware_main();
    exit(code)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(Console, "firmware panic: {info}");
    // The host reports the fault as a crash (with the message above on the console).
    arch::crash()
}

mod heap {
    use linked_list_allocator::LockedHeap;

    use super::arch::HEAP_LEN;

    #[repr(C, align(4096))]
    struct Arena([u8; HEAP_LEN]);

    static mut ARENA: Arena = Arena([0; HEAP_LEN]);

    #[global_allocator]
    static ALLOCATOR: LockedHeap = LockedHeap::empty();

    pub fn init() {
        // SAFETY: called once at start-up, before any allocation; the arena is ours alone.
        unsafe {
            ALLOCATOR
                .lock()
                .init((&raw mut ARENA).cast::<u8>(), HEAP_LEN)
        };
    }
}

// ----- resource table ------------------------------------------------------------------------

/// Entries of the standard resource table.
const RSC_ENTRIES: usize = 4;
/// Offset (in words) of the carveout entry, after the header and its entry offsets.
const CARVEOUT_AT: usize = 4 + RSC_ENTRIES;
/// Offset (in words) of the vdev entry.
const VDEV_AT: usize = CARVEOUT_AT + 14;
/// Offset (in words) of the trace entry.
const TRACE_AT: usize = VDEV_AT + 7 + 10;
/// Offset (in words) of the platform entry (its type word).
const PLATFORM_AT: usize = TRACE_AT + 12;
/// Words of the standard rpmsg resource table below.
pub const RSC_WORDS: usize = PLATFORM_AT + 1 + platform_entry::BODY_LEN / 4;

use vamp_rpmsg::wire::platform as platform_entry;
pub use vamp_rpmsg::wire::platform::{
    F_BUSY_POLL as PLATFORM_F_BUSY_POLL, F_PACKED_RING as PLATFORM_F_PACKED_RING,
    F_WAIT_SPIN as PLATFORM_F_WAIT_SPIN, MAGIC as PLATFORM_MAGIC,
    MODE_BUSY_POLL as PLATFORM_MODE_BUSY_POLL, RSC_VAMP_PLATFORM, VERSION as PLATFORM_VERSION,
};
// Words of the platform entry's body (after the type word), from the shared byte offsets.
const PLATFORM_FEATURES: usize = platform_entry::FEATURES_AT / 4;
const PLATFORM_MODE: usize = platform_entry::MODE_AT / 4;
const PLATFORM_SPIN_US: usize = platform_entry::SPIN_US_AT / 4;
const PLATFORM_TSC_KHZ: usize = platform_entry::TSC_KHZ_AT / 4;
const PLATFORM_HEARTBEAT: usize = platform_entry::HEARTBEAT_AT / 4;

/// The resource table: one rpmsg vdev whose rings the host places (FW_RSC_ADDR_ANY), a
/// carveout for the host's buffer pool, the trace buffer, and the vamp platform entry. The
/// host writes addresses, the vdev status and the platform words into it while the firmware
/// runs, hence the interior mutability.
#[repr(C, align(8))]
pub struct ResourceTable(core::cell::UnsafeCell<[u32; RSC_WORDS]>);

// SAFETY: every access is a volatile load or store of one aligned word; the host writes the
// words it owns, the firmware (single-threaded) only the heartbeat.
unsafe impl Sync for ResourceTable {}

/// Vring entries per ring.
pub const VRING_NUM: u32 = 256;
/// Vring alignment.
pub const VRING_ALIGN: u32 = 0x1000;
/// Notify ids of vq 0 and vq 1.
pub const NOTIFY_IDS: [u32; 2] = [0, 1];

const fn name_words(name: &[u8]) -> [u32; 8] {
    let mut w = [0u32; 8];
    let mut i = 0;
    while i < name.len() && i < 31 {
        w[i / 4] |= (name[i] as u32) << (8 * (i % 4));
        i += 1;
    }
    w
}

impl Default for ResourceTable {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceTable {
    /// The standard table. Every address is left to the host (FW_RSC_ADDR_ANY): the rings,
    /// the buffer pool and the trace buffer; the firmware reads back where they went.
    pub const fn new() -> Self {
        const ANY: u32 = 0xffff_ffff;
        let mut w = [0u32; RSC_WORDS];
        // Header: ver 1, entries, reserved, offsets.
        w[0] = 1;
        w[1] = RSC_ENTRIES as u32;
        w[4] = (CARVEOUT_AT * 4) as u32;
        w[5] = (VDEV_AT * 4) as u32;
        w[6] = (TRACE_AT * 4) as u32;
        w[7] = (PLATFORM_AT * 4) as u32;
        // Carveout: type 0, da ANY, pa ANY, len, flags, reserved, name.
        let c = CARVEOUT_AT;
        w[c] = 0;
        w[c + 1] = ANY;
        w[c + 2] = ANY;
        w[c + 3] = 0x40000;
        let n = name_words(b"vdev0buffer");
        let mut i = 0;
        while i < 8 {
            w[c + 6 + i] = n[i];
            i += 1;
        }
        // Vdev: type 3, id, notifyid, dfeatures (the low 32 bits: F_NS), gfeatures, config_len,
        // status/nvrings.
        let v = VDEV_AT;
        w[v] = 3;
        w[v + 1] = VIRTIO_ID_RPMSG;
        w[v + 2] = 2;
        w[v + 3] = VIRTIO_RPMSG_F_NS as u32;
        w[v + 6] = 2 << 8; // status 0, num_of_vrings 2
        let mut r = 0;
        while r < 2 {
            let at = v + 7 + 5 * r;
            w[at] = ANY;
            w[at + 1] = VRING_ALIGN;
            w[at + 2] = VRING_NUM;
            w[at + 3] = NOTIFY_IDS[r];
            r += 1;
        }
        // Trace: type 2, da, len, reserved, name.
        let t = TRACE_AT;
        w[t] = 2;
        w[t + 1] = arch::TRACE_DA;
        w[t + 2] = TRACE_LEN as u32;
        let n = name_words(b"trace0");
        let mut i = 0;
        while i < 8 {
            w[t + 4 + i] = n[i];
            i += 1;
        }
        // Platform: type, magic, version, features; the host's words and the heartbeat 0.
        let p = PLATFORM_AT;
        w[p] = RSC_VAMP_PLATFORM;
        w[p + 1 + platform_entry::MAGIC_AT / 4] = PLATFORM_MAGIC;
        w[p + 1 + platform_entry::VERSION_AT / 4] = PLATFORM_VERSION;
        // Packed rings only where the engine was built with them (not for the R5: see
        // Cargo.toml).
        let packed = if vamp_rpmsg::transport::PACKED_RINGS {
            PLATFORM_F_PACKED_RING
        } else {
            0
        };
        w[p + 1 + PLATFORM_FEATURES] = PLATFORM_F_BUSY_POLL | PLATFORM_F_WAIT_SPIN | packed;
        ResourceTable(core::cell::UnsafeCell::new(w))
    }

    fn word(&self, i: usize) -> u32 {
        // SAFETY: `i` is below RSC_WORDS at every call site; the host may write the word
        // concurrently, so it is read with a volatile load.
        unsafe { self.0.get().cast::<u32>().add(i).read_volatile() }
    }

    /// The vdev status the host wrote.
    pub fn vdev_status(&self) -> u8 {
        // The status byte is the low byte of its (little-endian) word.
        (self.word(VDEV_AT + VDEV_STATUS_AT / 4) & 0xff) as u8
    }

    /// Features the host accepted.
    pub fn vdev_gfeatures(&self) -> u32 {
        self.word(VDEV_AT + VDEV_GFEATURES_AT / 4)
    }

    /// Where the host placed the trace buffer, and its length.
    pub fn trace_area(&self) -> (u32, u32) {
        let t = TRACE_AT;
        (self.word(t + 1), self.word(t + 2))
    }

    /// Where the host placed vring `i`.
    pub fn vring(&self, i: usize) -> (u32, u32, u32) {
        let at = VDEV_AT + 7 + 5 * i;
        (self.word(at), self.word(at + 1), self.word(at + 2))
    }

    fn platform(&self, i: usize) -> u32 {
        u32::from_le(self.word(PLATFORM_AT + 1 + i))
    }

    /// Whether the host asked for busy-poll mode.
    pub fn busy_poll(&self) -> bool {
        self.platform(PLATFORM_MODE) & PLATFORM_MODE_BUSY_POLL != 0
    }

    /// The rings' format the host chose (packed only because this firmware declares
    /// [`PLATFORM_F_PACKED_RING`] when its engine has them; split by default and with any host
    /// that does not know it).
    pub fn ring_format(&self) -> RingFormat {
        RingFormat::from_platform_mode(self.platform(PLATFORM_MODE))
    }

    /// How long (microseconds) to keep polling after the last message before waiting, in
    /// notify mode.
    pub fn wait_spin_us(&self) -> u32 {
        self.platform(PLATFORM_SPIN_US)
    }

    /// The frequency of the platform's clock (the TSC, the generic timer) the host gave, in
    /// kHz (0: unknown).
    pub fn clock_khz(&self) -> u32 {
        self.platform(PLATFORM_TSC_KHZ)
    }

    /// Counts the platform entry's heartbeat up: a sign of life the host's watchdog reads.
    pub fn beat(&self) {
        let at = PLATFORM_AT + 1 + PLATFORM_HEARTBEAT;
        let next = u32::from_le(self.word(at)).wrapping_add(1);
        // SAFETY: `at` is below RSC_WORDS; the heartbeat word is the firmware's to write (the
        // host only reads it), and the table is ours for the whole run.
        unsafe {
            self.0
                .get()
                .cast::<u32>()
                .add(at)
                .write_volatile(next.to_le())
        };
    }
}

/// Places the standard resource table in the `.resource_table` section.
#[macro_export]
macro_rules! resource_table {
    () => {
        #[unsafe(link_section = ".resource_table")]
        #[unsafe(no_mangle)]
        #[used]
        pub static RESOURCE_TABLE: $crate::ResourceTable = $crate::ResourceTable::new();

        /// The image's resource table.
        #[allow(non_snake_case)]
        pub fn RESOURCE_TABLE_REF() -> &'static $crate::ResourceTable {
            &RESOURCE_TABLE
        }
    };
}

// ----- the rpmsg link --------------------------------------------------------------------------

/// The firmware's side of the platform.
#[derive(Debug, Default)]
pub struct FirmwareEnv;

/// Clock ticks per millisecond (the host's figure; the platform's guess until it is known).
static CLOCK_KHZ: AtomicU32 = AtomicU32::new(arch::DEFAULT_CLOCK_KHZ);
/// The table [`connect`] was given: where the heartbeat is.
static TABLE: AtomicPtr<ResourceTable> = AtomicPtr::new(core::ptr::null_mut());

/// Counts the heartbeat up, once [`connect`] knows the table.
fn beat() {
    let table = TABLE.load(Ordering::Relaxed);
    if !table.is_null() {
        // SAFETY: the pointer came from the `&'static ResourceTable` given to `connect`.
        unsafe { (*table).beat() };
    }
}

impl Environment for FirmwareEnv {
    fn notify(&mut self, queue: u16) {
        arch::kick(NOTIFY_IDS[queue as usize & 1]);
    }

    fn wait(&mut self, _timeout_us: u64) -> bool {
        arch::wait();
        true
    }

    fn now_us(&mut self) -> u64 {
        // The engine reads the clock while it waits for a buffer (in busy-poll mode, spinning,
        // with no exit the host would see): a sign of life.
        beat();
        let (t, khz) = (arch::ticks(), u64::from(CLOCK_KHZ.load(Ordering::Relaxed)));
        // In two steps: `t * 1000` would overflow after some months of host uptime.
        t / khz * 1000 + t % khz * 1000 / khz
    }
}

/// The engine of the firmware's one rpmsg device.
pub type FirmwareRpmsg = Rpmsg<DeviceTransport<RawMemory, FirmwareEnv>>;

/// All of RAM, identity-mapped.
pub fn ram() -> RawMemory {
    let size = ram_size();
    // SAFETY: RAM 0..size is identity-mapped for the whole run (each platform's start-up). Address 0 is
    // never dereferenced by the engine (it checks ranges against real ring addresses); we
    // start the region at 4096 to keep a NonNull base.
    unsafe { RawMemory::new(NonNull::new_unchecked(4096 as *mut u8), size - 4096, 4096) }
}

/// Waits for the host to bring the vdev up (DRIVER_OK), then attaches to its rings in the mode
/// the host chose (see [`serve`]).
pub fn connect(table: &'static ResourceTable) -> FirmwareRpmsg {
    while table.vdev_status() & STATUS_DRIVER_OK == 0 {
        arch::wait();
    }
    if table.clock_khz() != 0 {
        CLOCK_KHZ.store(table.clock_khz(), Ordering::Relaxed);
    }
    TABLE.store(
        (table as *const ResourceTable).cast_mut(),
        Ordering::Relaxed,
    );
    let mem = ram();
    let ring = |i| {
        let (da, align, num) = table.vring(i);
        VringLayout::legacy(da as u64, num as u16, align as u64)
    };
    let (Ok(vq0), Ok(vq1)) = (ring(0), ring(1)) else {
        println!("firmware: the host placed the vrings impossibly");
        exit(2)
    };
    if vq0.check(&mem).is_err() || vq1.check(&mem).is_err() {
        println!("firmware: vrings outside RAM");
        exit(2);
    }
    let rings = DeviceRings::fresh(vq0, vq1, table.ring_format());
    let attached = DeviceTransport::attach(mem, FirmwareEnv, rings, Endian::NATIVE, false, 512)
        .and_then(|mut t| {
            if table.busy_poll() {
                t.set_busy_poll(true)?;
            } else {
                // No kicks for buffers the host posts on vq 0 while there are buffers: the
                // engine asks for them when it runs out (as Linux asks for transmit
                // interrupts only while a sender waits).
                t.want_tx_notifications(false)?;
            }
            Ok(t)
        });
    let transport = match attached {
        Ok(t) => t,
        Err(e) => {
            println!("firmware: cannot attach to the rings: {e}");
            exit(2)
        }
    };
    let config = Config {
        name_service: u64::from(table.vdev_gfeatures()) & VIRTIO_RPMSG_F_NS != 0,
        ..Config::default()
    };
    Rpmsg::new(transport, config)
}

/// The firmware's event loop: handles what arrives until `done` says so, waiting as the host
/// chose (see the crate docs: busy-poll, or notify with a spin window before each wait).
pub fn serve<H: Handler<DeviceTransport<RawMemory, FirmwareEnv>>>(
    table: &ResourceTable,
    rpmsg: &mut FirmwareRpmsg,
    handler: &mut H,
    mut done: impl FnMut(&H) -> bool,
) -> Result<(), Error> {
    let busy = rpmsg.transport().busy_poll();
    let window =
        u64::from(table.wait_spin_us()) * u64::from(CLOCK_KHZ.load(Ordering::Relaxed)) / 1000;
    // When the last message came (clock ticks), while the window is open; None: closed.
    let mut last_work: Option<u64> = None;
    // Whether the host's kicks for new messages (vq 1) are on: they are after `connect`.
    let mut kicks = true;
    loop {
        let handled = rpmsg.poll(handler)?;
        if done(handler) {
            break;
        }
        if handled > 0 {
            if !busy && window > 0 {
                last_work = Some(arch::ticks());
            }
            continue;
        }
        if busy {
            table.beat();
            core::hint::spin_loop();
            continue;
        }
        if let Some(t) = last_work {
            if arch::ticks().wrapping_sub(t) < window {
                if kicks {
                    // Polling: the host need not ring.
                    rpmsg.transport_mut().want_rx_notifications(false)?;
                    kicks = false;
                }
                core::hint::spin_loop();
                continue;
            }
            last_work = None;
        }
        if !kicks {
            kicks = true;
            // Kicks on again, then one more look: a message may have come in between.
            if rpmsg.transport_mut().want_rx_notifications(true)? {
                continue;
            }
        }
        arch::wait();
    }
    Ok(())
}
