//! The lifecycle without KVM: a test backend over heap memory, the remote's side played in a
//! thread with the engine in the device role.

mod common;

use common::*;
use std::sync::Arc;
use vamp_remoteproc::backend::Exit;
use vamp_remoteproc::image::{ImageSource, MemoryImage};
use vamp_remoteproc::remoteproc::{
    LifecycleError, ManagedRemote, RemoteEvent, RemoteState, Remoteproc, RprocConfig,
};
use vamp_rpmsg::mem::SharedMemory;
use vamp_rpmsg::transport::BufferConfig;
use vamp_rpmsg::virtio::VIRTIO_ID_RPMSG;
use vamp_rpmsg::vring::VringLayout;
use vamp_rpmsg::wire::Endian;
use vamp_rpmsg::wire::resource_table::{
    FW_RSC_ADDR_ANY, Resource, ResourceTable, ResourceTableBuilder, VdevVringSpec,
};

fn source(class64: bool) -> ImageSource {
    ImageSource::Bytes(echo_image(class64).into())
}

fn new_rp() -> (Remoteproc<TestBackend>, Arc<Control>) {
    let b = TestBackend::new();
    let c = b.control.clone();
    (Remoteproc::new(b), c)
}

fn table_len() -> usize {
    firmware_table(Endian::NATIVE).len()
}

fn memory_table(rp: &Remoteproc<TestBackend>) -> Vec<u8> {
    let mut t = vec![0u8; table_len()];
    rp.memory().read(DATA, &mut t).unwrap();
    t
}

#[test]
fn load_maps_segments_then_allocates_and_writes_the_table_back() {
    let (mut rp, control) = new_rp();
    let loaded = rp.load(&mut MemoryImage::new(echo_image(true))).unwrap();
    assert_eq!(loaded.entry(), CODE);
    assert_eq!(rp.state(), RemoteState::Ready);
    let ring = VringLayout::legacy_bytes(256, 0x1000);
    let pool = ALLOC_BASE;
    let vq0 = (pool + 0x40000).next_multiple_of(0x1000);
    let vq1 = (vq0 + ring).next_multiple_of(0x1000);
    let trace = (vq1 + ring).next_multiple_of(8);
    assert_eq!(
        control.calls(),
        [
            Call::Map(CODE, 0x1000),
            Call::Map(DATA, 0x2000),
            Call::Alloc(0x40000, 4096, pool),
            Call::Alloc(ring, 0x1000, vq0),
            Call::Alloc(ring, 0x1000, vq1),
            Call::Alloc(0x1000, 8, trace),
        ]
    );
    let res = rp.resources().unwrap();
    let c = res.carveout_named("vdev0buffer").unwrap();
    assert_eq!(
        (c.da, c.pa, c.len, c.allocated),
        (pool, pool, 0x40000, true)
    );
    let v = res.vdev(0).unwrap();
    assert_eq!((v.id, v.notifyid, v.dfeatures), (VIRTIO_ID_RPMSG, 2, 1));
    let rings: Vec<_> = v.vrings.iter().map(|r| (r.da, r.num, r.notifyid)).collect();
    assert_eq!(rings, [(vq0, 256, 0), (vq1, 256, 1)]);
    assert_eq!(res.traces[0].da, trace);
    // The remote reads the host's choices from its own copy of the table.
    let t = memory_table(&rp);
    let t = ResourceTable::new_checked(&t[..], Endian::NATIVE).unwrap();
    let Resource::Carveout(c) = t.entry(0).unwrap() else {
        panic!()
    };
    assert_eq!((c.da(), c.pa()), (pool as u32, pool as u32));
    let Resource::Vdev(v) = t.entry(1).unwrap() else {
        panic!()
    };
    assert_eq!(
        v.vrings().map(|r| r.da as u64).collect::<Vec<_>>(),
        [vq0, vq1]
    );
    assert_eq!(v.status(), 0);
    let Resource::Trace(tr) = t.entry(2).unwrap() else {
        panic!()
    };
    assert_eq!(tr.da() as u64, trace);
    assert_eq!(rp.mappings().len(), 2 + 1);
}

#[test]
fn echo_over_the_vdev_then_crash_and_recover() {
    let (mut rp, control) = new_rp();
    rp.load_source(source(true)).unwrap();
    rp.start().unwrap();
    assert_eq!(control.calls().last(), Some(&Call::Start(CODE)));
    let (mem, bell) = (rp.backend().mem.clone(), rp.backend().bell.clone());

    let mut host = rp.create_virtio(0, BufferConfig::default()).unwrap();
    let remote = FakeRemote::spawn(mem.clone(), bell.clone(), DATA, table_len());
    host_echo(&mut host, 100).unwrap();
    assert_eq!(remote.finish().unwrap(), 100);
    assert_eq!(host.stats().received, 100);

    // The remote crashes.
    control.crash("triple fault");
    assert_eq!(rp.poll(), RemoteEvent::Crashed("triple fault".into()));
    assert_eq!(rp.state(), RemoteState::Crashed);
    assert_eq!(rp.last_exit(), Some(&Exit::Crashed("triple fault".into())));
    assert_eq!(rp.poll(), RemoteEvent::Idle);
    drop(host);

    // The caller's policy says restart: stop, reload the same image, start.
    control.clear();
    rp.recover().unwrap();
    assert_eq!(rp.state(), RemoteState::Running);
    assert_eq!(rp.restarts(), 1);
    let calls = control.calls();
    assert_eq!(calls.first(), Some(&Call::Stop));
    assert_eq!(calls.get(1), Some(&Call::Map(CODE, 0x1000)));
    assert_eq!(calls.last(), Some(&Call::Start(CODE)));

    // The channel comes back.
    let mut host = rp.create_virtio(0, BufferConfig::default()).unwrap();
    let remote = FakeRemote::spawn(mem, bell, DATA, table_len());
    host_echo(&mut host, 100).unwrap();
    assert_eq!(remote.finish().unwrap(), 100);
}

#[test]
fn create_virtio_does_the_virtio_handshake() {
    let (mut rp, _control) = new_rp();
    rp.load(&mut MemoryImage::new(echo_image(false))).unwrap();
    rp.start().unwrap();
    let pool = rp
        .resources()
        .unwrap()
        .carveout_named("vdev0buffer")
        .unwrap()
        .da;
    let host = rp.create_virtio(0, BufferConfig::default()).unwrap();
    let t = memory_table(&rp);
    let t = ResourceTable::new_checked(&t[..], Endian::NATIVE).unwrap();
    let v = t.vdev(1).unwrap();
    assert_eq!(
        v.status(),
        0xf,
        "ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK"
    );
    assert_eq!(v.gfeatures(), 1, "F_NS");
    assert_eq!(host.transport().layout().pool_addr, pool);
    assert!(host.config().name_service);
    // Posting the receive buffers kicked vq 0 with its notify id.
    assert_eq!(rp.backend().bell.rung(), [0]);
    assert!(matches!(
        rp.create_virtio(0, BufferConfig::default()),
        Err(LifecycleError::VdevBusy(0))
    ));
    assert!(matches!(
        rp.create_virtio(1, BufferConfig::default()),
        Err(LifecycleError::NoVdev(1))
    ));
    drop(host);
    rp.remove_virtio(0).unwrap();
    rp.create_virtio(0, BufferConfig::default()).unwrap();
    // Bigger buffers do not fit the carveout.
    rp.remove_virtio(0).unwrap();
    let big = BufferConfig {
        h2r_buf_size: 4096,
        r2h_buf_size: 4096,
    };
    let err = rp.create_virtio(0, big).unwrap_err();
    assert!(matches!(err, LifecycleError::PoolTooSmall { .. }), "{err}");
    assert!(err.to_string().contains("vdev0buffer"), "{err}");
}

/// An image whose vdev offers EVENT_IDX and has no buffer carveout.
fn image_without_pool(dfeatures: u32) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let mut b = ResourceTableBuilder::new(&mut buf, Endian::NATIVE, 1).unwrap();
    let ring = |notifyid| VdevVringSpec {
        da: FW_RSC_ADDR_ANY,
        align: 0x1000,
        num: 64,
        notifyid,
    };
    b.add_vdev(
        VIRTIO_ID_RPMSG,
        FW_RSC_ADDR_ANY,
        dfeatures,
        &[],
        &[ring(5), ring(FW_RSC_ADDR_ANY)],
    )
    .unwrap();
    let len = b.finish().unwrap();
    image_with_table(true, Endian::NATIVE == Endian::Big, Some(&buf[..len]))
        .build()
        .bytes
}

#[test]
fn without_a_pool_carveout_the_pool_is_allocated() {
    for event_idx in [true, false] {
        let (mut rp, control) = new_rp();
        rp.config(RprocConfig {
            event_idx,
            ..RprocConfig::default()
        })
        .unwrap();
        rp.load(&mut MemoryImage::new(image_without_pool(1 | 1 << 29)))
            .unwrap();
        let v = rp.resources().unwrap().vdev(0).unwrap().clone();
        // Notify ids left to the host get the lowest unused ones.
        assert_eq!(v.vrings[1].notifyid, 0);
        assert_eq!(v.notifyid, 1);
        rp.start().unwrap();
        control.clear();
        let host = rp.create_virtio(0, BufferConfig::default()).unwrap();
        let needed = 128 * 512;
        let Call::Alloc(len, 4096, addr) = control.calls()[0] else {
            panic!("{:?}", control.calls())
        };
        assert_eq!(len, needed);
        assert_eq!(host.transport().layout().pool_addr, addr);
        let mut g = [0u8; 4];
        rp.memory().read(v.gfeatures_addr(), &mut g).unwrap();
        let want = if event_idx { 1 | 1 << 29 } else { 1 };
        assert_eq!(u32::from_ne_bytes(g), want);
        assert_eq!(rp.backend().bell.rung(), [5]);
        // A second device on the same vdev reuses the pool.
        drop(host);
        rp.remove_virtio(0).unwrap();
        control.clear();
        rp.create_virtio(0, BufferConfig::default()).unwrap();
        assert!(control.calls().is_empty());
    }
}

/// Puts `rp` in `state`.
fn reach(state: RemoteState) -> (Remoteproc<TestBackend>, Arc<Control>) {
    let (mut rp, control) = new_rp();
    if state != RemoteState::Offline {
        rp.load_source(source(true)).unwrap();
    }
    match state {
        RemoteState::Running => rp.start().unwrap(),
        RemoteState::Stopped => {
            rp.start().unwrap();
            rp.stop().unwrap();
        }
        RemoteState::Crashed => {
            rp.start().unwrap();
            control.crash("boom");
            assert!(matches!(rp.poll(), RemoteEvent::Crashed(_)));
        }
        _ => {}
    }
    assert_eq!(rp.state(), state);
    (rp, control)
}

const OPS: [&str; 8] = [
    "config",
    "load",
    "set_rsc_table",
    "start",
    "stop",
    "create_virtio",
    "recover",
    "shutdown",
];

fn apply(rp: &mut Remoteproc<TestBackend>, op: &str) -> Result<(), LifecycleError> {
    match op {
        "config" => rp.config(RprocConfig::default()),
        "load" => rp.load_source(source(true)).map(|_| ()),
        "set_rsc_table" => rp.set_rsc_table(DATA, table_len() as u64).map(|_| ()),
        "start" => rp.start(),
        "stop" => rp.stop(),
        "create_virtio" => rp.create_virtio(0, BufferConfig::default()).map(|_| ()),
        "recover" => rp.recover(),
        "shutdown" => rp.shutdown(),
        _ => unreachable!(),
    }
}

/// Where a legal `op` from `state` leads; `None` if it is illegal.
fn legal(op: &str, state: RemoteState) -> Option<RemoteState> {
    use RemoteState::*;
    match (op, state) {
        ("config", Offline) => Some(Offline),
        ("load", Offline | Ready | Stopped) => Some(Ready),
        ("set_rsc_table", Ready) => Some(Ready),
        ("start", Ready) => Some(Running),
        ("stop", Ready | Running | Crashed) => Some(Stopped),
        ("create_virtio", Running) => Some(Running),
        ("recover", Crashed) => Some(Running),
        ("shutdown", _) => Some(Offline),
        _ => None,
    }
}

#[test]
fn every_transition_legal_or_illegal() {
    use RemoteState::*;
    let mut illegal = 0;
    for state in [Offline, Ready, Running, Stopped, Crashed] {
        for op in OPS {
            let (mut rp, _) = reach(state);
            let result = apply(&mut rp, op);
            match legal(op, state) {
                Some(next) => {
                    result.unwrap_or_else(|e| panic!("{op} from {state}: {e}"));
                    assert_eq!(rp.state(), next, "{op} from {state}");
                }
                None => {
                    illegal += 1;
                    let err = result.expect_err(&format!("{op} from {state} must be refused"));
                    match &err {
                        LifecycleError::IllegalTransition { op: o, state: s } => {
                            assert_eq!((*o, *s), (op, state));
                        }
                        e => panic!("{op} from {state}: {e}"),
                    }
                    assert!(
                        err.to_string()
                            .starts_with(&format!("cannot {op} a remote that is {state}"))
                    );
                    assert_eq!(rp.state(), state, "{op} from {state} changed the state");
                }
            }
        }
        // remove: only offline.
        let (rp, _) = reach(state);
        match rp.remove() {
            Ok(_) => assert_eq!(state, Offline),
            Err(refused) => {
                assert_ne!(state, Offline);
                assert!(matches!(
                    refused.error,
                    LifecycleError::IllegalTransition { op: "remove", state: s } if s == state
                ));
                assert_eq!(refused.remoteproc.state(), state);
                illegal += 1;
            }
        }
    }
    assert_eq!(illegal, 28);
}

#[test]
fn illegal_transitions_read_well() {
    let (mut rp, _) = reach(RemoteState::Offline);
    assert_eq!(
        rp.start().unwrap_err().to_string(),
        "cannot start a remote that is offline (load an image first)"
    );
    assert_eq!(
        rp.stop().unwrap_err().to_string(),
        "cannot stop a remote that is offline"
    );
    assert_eq!(
        rp.create_virtio(0, BufferConfig::default())
            .unwrap_err()
            .to_string(),
        "cannot create_virtio a remote that is offline (load and start it first)"
    );
    let (mut rp, _) = reach(RemoteState::Running);
    assert_eq!(
        rp.load_source(source(true)).unwrap_err().to_string(),
        "cannot load a remote that is running (stop it first)"
    );
}

#[test]
fn an_exit_stops_the_remote() {
    let (mut rp, control) = reach(RemoteState::Running);
    assert_eq!(rp.poll(), RemoteEvent::Idle);
    control.exit(3);
    assert_eq!(rp.poll(), RemoteEvent::Exited(3));
    assert_eq!(rp.state(), RemoteState::Stopped);
    assert_eq!(control.calls().last(), Some(&Call::Stop));
    // Reload and start again.
    rp.load_source(source(true)).unwrap();
    rp.start().unwrap();
    assert_eq!(rp.state(), RemoteState::Running);
}

#[test]
fn recovery_needs_a_reloadable_image() {
    let (mut rp, control) = new_rp();
    rp.load(&mut MemoryImage::new(echo_image(true))).unwrap();
    rp.start().unwrap();
    control.crash("boom");
    rp.poll();
    assert!(matches!(rp.recover(), Err(LifecycleError::NoImageSource)));
    assert_eq!(rp.state(), RemoteState::Crashed);
}

#[test]
fn failures_leave_clear_states() {
    let (mut rp, control) = reach(RemoteState::Ready);
    control
        .fail_start
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(rp.start(), Err(LifecycleError::Backend(_))));
    assert_eq!(rp.state(), RemoteState::Ready);
    control.clear();
    // A bad image over a loaded one: the old one is gone, its allocations released.
    let err = rp.load(&mut MemoryImage::new(&b"garbage"[..])).unwrap_err();
    assert!(matches!(err, LifecycleError::Elf(_)), "{err}");
    assert_eq!(rp.state(), RemoteState::Offline);
    assert!(rp.image().is_none() && rp.resources().is_none());
    assert_eq!(control.calls(), [Call::Stop, Call::Stop]);
    // A segment outside the remote's memory is refused by the backend's map.
    let mut b = image_with_table(true, false, None).build();
    b.set_ph(1, Ph::Paddr, MEM_SIZE as u64);
    let err = rp.load(&mut MemoryImage::new(&b.bytes)).unwrap_err();
    assert!(err.to_string().contains("not remote memory"), "{err}");
    assert_eq!(rp.state(), RemoteState::Offline);
}

#[test]
fn mmap_translates_and_maps() {
    let (mut rp, control) = reach(RemoteState::Ready);
    control.clear();
    let m = rp.mmap(None, Some(CODE + 0x10), 0x10).unwrap();
    assert_eq!((m.da, m.pa), (CODE + 0x10, CODE + 0x10));
    let m = rp.mmap(Some(DATA + 4), None, 4).unwrap();
    assert_eq!(m.da, DATA + 4);
    assert!(control.calls().is_empty(), "already mapped");
    let m = rp.mmap(None, Some(0x300000), 0x1000).unwrap();
    assert_eq!(m.pa, 0x300000);
    assert_eq!(control.calls(), [Call::Map(0x300000, 0x1000)]);
    assert!(matches!(
        rp.mmap(Some(0x3f0000), None, 0x10),
        Err(LifecycleError::Mmap(_))
    ));
    assert!(matches!(
        rp.mmap(None, Some(MEM_SIZE as u64), 0x10),
        Err(LifecycleError::Backend(_))
    ));
}

#[test]
fn set_rsc_table_handles_a_table_placed_by_hand() {
    let (mut rp, _) = new_rp();
    rp.load(&mut MemoryImage::new(
        image_with_table(true, false, None).build().bytes,
    ))
    .unwrap();
    assert!(rp.resources().is_none());
    let table = firmware_table(Endian::NATIVE);
    rp.memory().write(0x30000, &table).unwrap();
    let setup = rp.set_rsc_table(0x30000, table.len() as u64).unwrap();
    assert_eq!(setup.vdevs.len(), 1);
    assert_eq!(setup.table_addr, 0x30000);
    rp.start().unwrap();
    let mut host = rp.create_virtio(0, BufferConfig::default()).unwrap();
    let remote = FakeRemote::spawn(
        rp.backend().mem.clone(),
        rp.backend().bell.clone(),
        0x30000,
        table.len(),
    );
    host_echo(&mut host, 10).unwrap();
    assert_eq!(remote.finish().unwrap(), 10);
}

#[test]
fn trace_reads_up_to_the_first_nul() {
    let (mut rp, _) = reach(RemoteState::Running);
    let da = rp.resources().unwrap().traces[0].da;
    assert_eq!(
        rp.trace(0).unwrap(),
        "",
        "allocated trace buffers start zeroed"
    );
    rp.memory()
        .write(da, b"hello from the remote\n\0stale")
        .unwrap();
    assert_eq!(rp.trace(0).unwrap(), "hello from the remote\n");
    assert_eq!(
        ManagedRemote::trace(&mut rp).unwrap(),
        "hello from the remote\n"
    );
    rp.memory().fill(da, 0x1000, b'x').unwrap();
    assert_eq!(
        rp.trace(0).unwrap().len(),
        0x1000,
        "no NUL: the whole buffer"
    );
    assert!(matches!(rp.trace(1), Err(LifecycleError::NoTrace(1))));
}

#[test]
fn shutdown_and_remove() {
    let (mut rp, control) = reach(RemoteState::Running);
    rp.shutdown().unwrap();
    assert_eq!(rp.state(), RemoteState::Offline);
    assert!(rp.image().is_none() && rp.source().is_none());
    assert_eq!(control.calls().last(), Some(&Call::Stop));
    rp.shutdown().unwrap();
    let backend = rp.remove().unwrap();
    assert!(!backend.running());
}

#[test]
fn managed_remote_boots_like_sysfs() {
    let (mut rp, control) = new_rp();
    rp.config(RprocConfig {
        name: "echo".into(),
        ..RprocConfig::default()
    })
    .unwrap();
    rp.load_source(source(false)).unwrap();
    let m: &mut dyn ManagedRemote = &mut rp;
    assert_eq!(m.name(), "echo");
    m.start().unwrap();
    assert_eq!(m.state(), RemoteState::Running);
    m.stop().unwrap();
    assert_eq!(m.state(), RemoteState::Stopped);
    control.clear();
    // Start from stopped reloads the image, as writing "start" to sysfs loads the firmware.
    m.start().unwrap();
    assert_eq!(m.state(), RemoteState::Running);
    assert_eq!(control.calls()[0], Call::Map(CODE, 0x1000));
    assert!(m.start().is_err());
    control.crash("boom");
    assert_eq!(m.state(), RemoteState::Crashed);
}

#[test]
fn the_built_in_echo_firmware_loads_without_kvm() {
    let Some(bytes) = vamp_remoteproc::images::builtin("echo") else {
        return;
    };
    let info = vamp_remoteproc::elf::inspect(&mut MemoryImage::new(bytes)).unwrap();
    let top = info
        .segments
        .iter()
        .map(|s| s.paddr + s.memsz)
        .max()
        .unwrap();
    let size = (top as usize + (2 << 20)).next_multiple_of(1 << 20);
    let mut rp = Remoteproc::new(TestBackend::with_memory(size, top.next_multiple_of(4096)));
    rp.load_source(ImageSource::Static(bytes)).unwrap();
    let res = rp.resources().expect("the firmware has a resource table");
    assert!(res.carveout_named("vdev0buffer").is_some());
    let v = res.vdev(0).unwrap();
    assert!(v.is_rpmsg() && v.vrings.iter().all(|r| r.allocated));
    assert_eq!(res.traces.len(), 1);
}
