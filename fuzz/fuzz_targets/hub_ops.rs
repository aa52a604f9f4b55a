//! The hub as a state machine: three in-memory guests (vamp's driver engine on plain mapped
//! memory, served by direct `Hub::service` calls as `vamp bench` does) connect, announce and
//! withdraw names, send from any address to any address, read or leave their buffers
//! unposted, reset, disconnect and change their memory table, in the order the input says.
//! After every step the hub's invariants hold (`Hub::check_invariants`: route tables that
//! agree with each other and with each link's engine, nothing beyond its bound, no name
//! offered that its guest does not announce or the topology does not offer, every held buffer
//! accounted for); at the end, once the guests read and the hub gives up on what still waits,
//! every transmit buffer of every guest came back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use vamp_fuzz::{Bytes, env};
use vamp_rpmsg::guest_ram::GuestRam;
use vamp_rpmsg::rpmsg::{Config, Handler, NsEvent, Received, Rpmsg};
use vamp_rpmsg::testing::TestEnv;
use vamp_rpmsg::transport::{DriverLayout, DriverTransport, Transport};
use vamp_rpmsg::wire::{ADDR_ANY, Endian, NS_ADDR, NameServiceMsg, NsFlags};
use vamp_vmm_backend::config::Topology;
use vamp_vmm_backend::frontend::GuestOptions;
use vamp_vmm_backend::hub::{Hub, Notifier, RingsInfo};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const GUESTS: usize = 3;

/// g0's names go to g1 and g2; g1 offers n0 and n1 to g0; g2 offers n0, n2 and n3 to both.
/// The guests g0..g2 come first (see [`topology`]).
const ROUTES: &str = r#"
[[service]]
type = "echo"
name = "echo"
[[channel]]
from = "g0"
to = ["g1", "g2"]
[[channel]]
from = "g1"
to = ["g0"]
names = ["n0", "n1"]
[[channel]]
from = "g2"
to = ["g0", "g1"]
names = ["n0", "n2", "n3"]
"#;

/// [`GUESTS`] guests named g0, g1... (their sockets are never opened: the target serves them
/// in memory), then [`ROUTES`].
fn topology() -> String {
    let guests: String = (0..GUESTS)
        .map(|i| format!("[[guest]]\nname = \"g{i}\"\nsocket = \"/nonexistent/g{i}.sock\"\n"))
        .collect();
    guests + ROUTES
}

/// Names guests announce (one the topology offers nowhere, one empty).
const NAMES: [&[u8]; 6] = [b"n0", b"n1", b"n2", b"n3", b"echo", b""];

/// Waiting messages one sender may have per receiver here: small, so the cap is reached.
const SHARE: usize = 3;
/// Rings of 8: 8 transmit buffers per guest, so backpressure comes quickly.
const QUEUE: u16 = 8;
const MEM: usize = 0x10000;

/// Steps run by this process, reported every million (libFuzzer counts inputs).
static STEPS: AtomicU64 = AtomicU64::new(0);

struct Quiet;

impl Notifier for Quiet {
    fn notify(&self, _queue: u16) {}
}

/// What a guest learned: the hub addresses announced to it, in order.
#[derive(Default)]
struct Learned {
    addrs: Vec<u32>,
}

impl<T: Transport> Handler<T> for Learned {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        let _ = rpmsg.payload(msg);
    }

    fn on_name_service(&mut self, _: &mut Rpmsg<T>, e: NsEvent<'_>) {
        if let NsEvent::Created { addr, .. } = e {
            if self.addrs.len() >= 16 {
                self.addrs.remove(0);
            }
            self.addrs.push(addr);
        }
    }
}

struct Guest {
    mem: GuestMemoryMmap,
    ram: GuestRam,
    rpmsg: Rpmsg<DriverTransport<GuestRam, TestEnv>>,
    info: RingsInfo,
    learned: Learned,
}

impl Guest {
    fn new(layout: DriverLayout, event_idx: bool) -> Guest {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).expect("mmap");
        let ram = GuestRam::new(mem.clone());
        let t = DriverTransport::new(ram.clone(), env(), layout, Endian::Little, event_idx)
            .expect("driver layout");
        let config = Config {
            send_timeout_us: 0,
            ..Config::default()
        };
        Guest {
            mem,
            ram,
            rpmsg: Rpmsg::new(t, config),
            info: RingsInfo {
                rings: [layout.rx_ring, layout.tx_ring],
                next_avail: [0, 0],
                format: vamp_rpmsg::transport::RingFormat::Split,
                event_idx,
                name_service: true,
            },
            learned: Learned::default(),
        }
    }
}

struct World {
    hub: Hub,
    guests: Vec<Option<Guest>>,
    layout: DriverLayout,
    notifier: Arc<dyn Notifier>,
}

impl World {
    fn kick(&mut self, g: usize) {
        if let Some(guest) = &self.guests[g] {
            self.hub.service(g, &guest.ram, guest.info, &self.notifier);
        }
    }

    /// The guest reads what came (reposting its buffers) and kicks.
    fn read(&mut self, g: usize) {
        if let Some(guest) = self.guests[g].as_mut() {
            let _ = guest.rpmsg.poll(&mut guest.learned);
        }
        self.kick(g);
    }

    /// The hub gives up on every message that waits (as its clock would after the timeout).
    fn give_up(&mut self) {
        self.hub.set_pending_timeout(Duration::ZERO);
        self.hub.tick();
        self.hub.set_pending_timeout(Duration::from_secs(3600));
    }

    fn address(&self, g: usize, input: &mut Bytes<'_>) -> u32 {
        let learned = self.guests[g]
            .as_ref()
            .map_or(&[][..], |x| &x.learned.addrs[..]);
        match input.u8() % 8 {
            0..=2 if !learned.is_empty() => learned[input.u8() as usize % learned.len()],
            3 => ADDR_ANY,
            4 => NS_ADDR,
            5 => input.u32(),
            _ => 0x400 + u32::from(input.u8() % 24),
        }
    }

    fn step(&mut self, input: &mut Bytes<'_>) {
        let op = input.u8();
        let g = usize::from(input.u8()) % GUESTS;
        match op % 12 {
            0 => {
                // Connect (or the VMM sets up rings again after a stop).
                if self.guests[g].is_none() {
                    self.guests[g] = Some(Guest::new(self.layout, op & 0x80 != 0));
                }
                self.kick(g);
            }
            1 => {
                // Disconnect.
                self.hub.stop(g, "fuzz: disconnect");
                self.guests[g] = None;
            }
            2 => {
                // Device reset: the rings stop, a fresh driver starts on the same memory.
                self.hub.stop(g, "fuzz: reset");
                if self.guests[g].is_some() {
                    self.guests[g] = Some(Guest::new(self.layout, op & 0x80 != 0));
                }
                self.kick(g);
            }
            3..=5 => {
                // A message from any address to any address.
                let src = self.address(g, input);
                let dst = self.address(g, input);
                let len = usize::from(input.u8() % 64);
                let payload = input.take(len).to_vec();
                if let Some(guest) = self.guests[g].as_mut() {
                    let _ = guest.rpmsg.send_offchannel_raw(src, dst, &payload, false);
                }
                self.kick(g);
            }
            6 | 7 => {
                // A name-service announcement or withdrawal at any address.
                let name = NAMES[usize::from(input.u8()) % NAMES.len()];
                let addr = self.address(g, input);
                let flags = if op & 1 == 0 {
                    NsFlags::Create
                } else {
                    NsFlags::Destroy
                };
                let msg = NameServiceMsg::new(name, addr, flags).encode(Endian::Little);
                let src = self.address(g, input);
                if let Some(guest) = self.guests[g].as_mut() {
                    let _ = guest.rpmsg.send_offchannel_raw(src, NS_ADDR, &msg, false);
                }
                self.kick(g);
            }
            8 => self.read(g),
            9 => {
                // A new memory table: the same memory, or one without the rings (the link
                // breaks until the guest resets).
                if let Some(guest) = self.guests[g].as_mut() {
                    guest.ram = if op & 0x80 == 0 {
                        GuestRam::new(guest.mem.clone())
                    } else {
                        let small =
                            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)])
                                .expect("mmap");
                        GuestRam::new(small)
                    };
                }
                self.kick(g);
            }
            10 => self.hub.tick(),
            _ => self.give_up(),
        }
        if let Err(e) = self.hub.check_invariants() {
            panic!("invariant broken after op {op} on g{g}: {e}");
        }
        let n = STEPS.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(1_000_000) {
            eprintln!("hub_ops: {n} steps");
        }
    }

    /// Everyone reads, the hub gives up on what still waits; then every guest whose link is
    /// up has all its transmit buffers back.
    fn drain_and_check(&mut self) {
        for _ in 0..2 {
            for _ in 0..4 {
                for g in 0..GUESTS {
                    self.read(g);
                }
            }
            self.give_up();
        }
        if let Err(e) = self.hub.check_invariants() {
            panic!("invariant broken after draining: {e}");
        }
        for g in 0..GUESTS {
            assert_eq!(self.hub.queued_for(g), 0, "g{g}: messages still wait");
            if !self.hub.is_up(g) {
                continue;
            }
            let Some(guest) = self.guests[g].as_mut() else {
                continue;
            };
            // Every buffer came back: as many sends as the guest has buffers go out at once.
            for k in 0..u32::from(QUEUE) {
                if let Err(e) = guest.rpmsg.send_offchannel_raw(0x400, 0x7000, &[0], false) {
                    panic!("g{g}: transmit buffer {k} of {QUEUE} never came back: {e}");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let topology = Topology::parse(&topology()).expect("the target's topology");
    let mut hub = Hub::new(topology);
    hub.set_pending_timeout(Duration::from_secs(3600));
    hub.set_max_queued_per_sender(SHARE);
    let opts = GuestOptions {
        mem_size: MEM,
        queue_size: QUEUE,
        ..GuestOptions::default()
    };
    let mut world = World {
        hub,
        guests: (0..GUESTS).map(|_| None).collect(),
        layout: opts.driver_layout().expect("layout"),
        notifier: Arc::new(Quiet),
    };
    let mut input = Bytes(data);
    while !input.is_empty() {
        world.step(&mut input);
    }
    world.drain_and_check();
});
