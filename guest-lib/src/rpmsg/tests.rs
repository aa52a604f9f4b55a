//! Both roles in one process over one piece of memory, over split rings and again over packed
//! rings ([`every_scenario_runs_over_packed_rings`], and the proptests' `packed` input).

extern crate std;

use super::*;
use crate::mem::{HeapMemory, SharedMemory};
use crate::testing::{Loopback, LoopbackDevice, LoopbackDriver, Recorder, TestEnv};
use crate::transport::{
    BufferConfig, DeviceTransport, DriverLayout, RX_QUEUE, RingFormat, TX_QUEUE,
};
use alloc::rc::Rc;
use alloc::sync::Arc;
use alloc::vec;
use core::cell::RefCell;
use proptest::prelude::*;

type Host = Rpmsg<LoopbackDriver>;
type Remote = Rpmsg<LoopbackDevice>;

const VQ0: u64 = Loopback::VQ0;
const VQ1: u64 = Loopback::VQ1;
const POOL: u64 = Loopback::POOL;

fn layout(ring: u16, buffers: BufferConfig) -> DriverLayout {
    Loopback {
        ring,
        buffers,
        ..Loopback::default()
    }
    .layout()
}

std::thread_local! {
    /// The ring format [`pair_with`] links the engines with on this test's thread: split,
    /// unless the test runs the scenarios over packed rings.
    static FORMAT: core::cell::Cell<RingFormat> = const { core::cell::Cell::new(RingFormat::Split) };
}

fn pair_with(
    ring: u16,
    buffers: BufferConfig,
    event_idx: bool,
) -> (Host, Remote, TestEnv, TestEnv) {
    Loopback {
        ring,
        buffers,
        event_idx,
        endian: Endian::Little,
        format: FORMAT.with(|f| f.get()),
    }
    .engines(Config::default())
}

/// Every scenario of this module that links its engines through [`pair_with`] and does not
/// look at split-ring memory itself, again over packed rings: the engine does over packed
/// rings everything it does over split ones.
#[test]
fn every_scenario_runs_over_packed_rings() {
    FORMAT.with(|f| f.set(RingFormat::Packed));
    let (host, remote, _, _) = pair();
    assert_eq!(host.transport().ring_format(), RingFormat::Packed);
    assert_eq!(remote.transport().ring_format(), RingFormat::Packed);
    let scenarios: [(&str, fn()); 17] = [
        (
            "announce_bind_and_echo_both_ways",
            announce_bind_and_echo_both_ways,
        ),
        (
            "busy_poll_never_notifies_in_either_direction",
            busy_poll_never_notifies_in_either_direction,
        ),
        (
            "addresses_are_lowest_free_and_checked",
            addresses_are_lowest_free_and_checked,
        ),
        (
            "many_endpoints_lowest_free_after_churn",
            many_endpoints_lowest_free_after_churn,
        ),
        (
            "name_service_unbind_and_destroy",
            name_service_unbind_and_destroy,
        ),
        (
            "announcements_wait_for_buffers_and_are_never_lost",
            announcements_wait_for_buffers_and_are_never_lost,
        ),
        (
            "oversize_payloads_are_refused_not_truncated",
            oversize_payloads_are_refused_not_truncated,
        ),
        (
            "buffer_sizes_are_configurable_per_direction",
            buffer_sizes_are_configurable_per_direction,
        ),
        (
            "trysend_fails_at_once_and_send_times_out",
            trysend_fails_at_once_and_send_times_out,
        ),
        (
            "zero_copy_send_and_held_receive",
            zero_copy_send_and_held_receive,
        ),
        (
            "malformed_and_misaddressed_input_is_dropped_and_counted",
            malformed_and_misaddressed_input_is_dropped_and_counted,
        ),
        ("handle_misuse_is_refused", handle_misuse_is_refused),
        (
            "a_batch_notifies_once_at_its_end",
            a_batch_notifies_once_at_its_end,
        ),
        (
            "a_long_batch_decides_every_32_messages",
            a_long_batch_decides_every_32_messages,
        ),
        (
            "poll_budget_takes_at_most_its_budget_and_leaves_the_rest",
            poll_budget_takes_at_most_its_budget_and_leaves_the_rest,
        ),
        (
            "announce_as_names_an_existing_endpoint_once",
            announce_as_names_an_existing_endpoint_once,
        ),
        (
            "the_pull_api_returns_events_without_calling_back",
            the_pull_api_returns_events_without_calling_back,
        ),
    ];
    for (name, scenario) in scenarios {
        std::println!("over packed rings: {name}");
        scenario();
    }
    FORMAT.with(|f| f.set(RingFormat::Split));
}

fn pair() -> (Host, Remote, TestEnv, TestEnv) {
    pair_with(256, BufferConfig::default(), true)
}

const CHANNEL: &[u8] = b"rpmsg-openamp-demo-channel";

#[test]
fn announce_bind_and_echo_both_ways() {
    let (mut host, mut remote, hk, rk) = pair();
    // The remote announces its channel, as OpenAMP's echo demo does.
    let r_ept = remote.create_ept(CHANNEL, ADDR_ANY, ADDR_ANY).unwrap();
    assert_eq!(remote.endpoint(r_ept).unwrap().addr(), 1024);
    assert!(!remote.is_ept_ready(r_ept));
    assert_eq!(
        rk.kicks.get()[RX_QUEUE as usize],
        1,
        "remote interrupted the host once"
    );

    // The host hears the announcement and creates its side, like Linux's rpmsg bus would.
    let mut h = Recorder::default();
    assert_eq!(host.poll(&mut h).unwrap(), 1);
    assert_eq!(h.ns, vec![(CHANNEL.to_vec(), 1024, true, None)]);
    let h_ept = host.create_ept(CHANNEL, ADDR_ANY, 1024).unwrap();
    assert!(host.is_ept_ready(h_ept));
    assert_eq!(
        host.pending_announcements(),
        0,
        "bound channels are not announced back"
    );

    let mut r = Recorder {
        echo: true,
        ..Default::default()
    };
    for i in 0..600u32 {
        let msg: Vec<u8> = (0..(i % 496 + 1)).map(|b| (b as u8) ^ (i as u8)).collect();
        host.send(h_ept, &msg).unwrap();
        assert_eq!(remote.poll(&mut r).unwrap(), 1);
        assert_eq!(host.poll(&mut h).unwrap(), 1);
        assert_eq!(h.messages.last().unwrap(), &(h_ept, 1024, msg));
    }
    // The remote learned the host's address from the first message (OpenAMP's rule).
    assert_eq!(remote.endpoint(r_ept).unwrap().dest(), 1024);
    assert!(remote.is_ept_ready(r_ept));
    assert!(hk.kicks.get()[TX_QUEUE as usize] > 0);
    assert_eq!(host.stats().received, 600);
    assert_eq!(remote.stats().sent, 601, "600 echoes and one announcement");
}

#[test]
fn busy_poll_never_notifies_in_either_direction() {
    // Both sides busy-polling, and each side alone: the other side is asked through the rings
    // not to notify, so no notification at all goes either way.
    for event_idx in [false, true] {
        for (host_busy, remote_busy) in [(true, true), (true, false), (false, true)] {
            let (mut host, mut remote, hk, rk) = pair_with(8, BufferConfig::default(), event_idx);
            assert!(!host.transport().busy_poll() && !remote.transport().busy_poll());
            host.transport_mut().set_busy_poll(host_busy).unwrap();
            remote.transport_mut().set_busy_poll(remote_busy).unwrap();
            assert_eq!(host.transport().busy_poll(), host_busy);
            assert_eq!(remote.transport().busy_poll(), remote_busy);
            let r_ept = remote.create_ept(CHANNEL, ADDR_ANY, ADDR_ANY).unwrap();
            let mut h = Recorder::default();
            assert_eq!(
                host.poll(&mut h).unwrap(),
                1,
                "the announcement, found by polling"
            );
            let h_ept = host.create_ept(CHANNEL, ADDR_ANY, 1024).unwrap();
            let mut r = Recorder {
                echo: true,
                ..Default::default()
            };
            // Windows of up to 4 messages, past a wrap of the 16-bit ring indices.
            let mut sent = 0u32;
            while sent < 70_000 {
                let window = 1 + sent % 4;
                for k in 0..window {
                    host.send(h_ept, &(sent + k).to_le_bytes()).unwrap();
                }
                sent += window;
                assert_eq!(remote.poll(&mut r).unwrap(), window as usize);
                assert_eq!(host.poll(&mut h).unwrap(), window as usize);
                r.messages.clear();
            }
            assert_eq!(h.messages.len(), sent as usize);
            assert_eq!(h.messages.last().unwrap().2, (sent - 1).to_le_bytes());
            let none = [0, 0];
            assert_eq!(
                (hk.kicks.get(), rk.kicks.get()),
                (none, none),
                "event_idx {event_idx}, busy {host_busy}/{remote_busy}"
            );
            // Back to the default: notifications flow again.
            host.transport_mut().set_busy_poll(false).unwrap();
            remote.transport_mut().set_busy_poll(false).unwrap();
            host.send(h_ept, b"after").unwrap();
            assert!(
                hk.kicks.get()[TX_QUEUE as usize] > 0,
                "the host kicks again"
            );
            assert_eq!(remote.poll(&mut r).unwrap(), 1);
            assert!(
                rk.kicks.get()[RX_QUEUE as usize] > 0,
                "the remote interrupts again"
            );
            assert_eq!(remote.endpoint(r_ept).unwrap().dest(), 1024);
        }
    }
}

#[test]
fn addresses_are_lowest_free_and_checked() {
    let (mut host, _remote, _, _) = pair();
    let a = host.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    let b = host.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    let c = host.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    let addr = |h: &Host, id| h.endpoint(id).unwrap().addr();
    assert_eq!(
        (addr(&host, a), addr(&host, b), addr(&host, c)),
        (1024, 1025, 1026)
    );
    host.destroy_ept(b).unwrap();
    assert_eq!(host.endpoint(b), None, "stale handle");
    assert_eq!(host.destroy_ept(b), Err(Error::InvalidEndpoint));
    let d = host.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    assert_eq!(addr(&host, d), 1025, "lowest free address is reused");
    assert_ne!(d, b, "a new endpoint in an old slot has a new handle");
    assert_eq!(
        host.create_ept(b"", 1026, ADDR_ANY),
        Err(Error::AddressInUse(1026))
    );
    assert_eq!(
        host.create_ept(b"", NS_ADDR, ADDR_ANY),
        Err(Error::AddressInUse(NS_ADDR))
    );
    let fixed = host.create_ept(b"", 30, ADDR_ANY).unwrap();
    assert_eq!(addr(&host, fixed), 30);
    let high = host.create_ept(b"", 5000, ADDR_ANY).unwrap();
    assert_eq!(addr(&host, high), 5000);
    assert_eq!(
        host.create_ept(&[b'n'; 32], ADDR_ANY, ADDR_ANY),
        Err(Error::NameTooLong)
    );
    assert!(host.create_ept(&[b'n'; 31], ADDR_ANY, ADDR_ANY).is_ok());
    assert_eq!(host.endpoint_by_addr(5000), Some(high));
    assert_eq!(host.trysend(a, b"x"), Err(Error::NotReady));
    assert_eq!(
        host.send_offchannel_raw(ADDR_ANY, 1, b"x", false),
        Err(Error::InvalidAddress)
    );
}

#[test]
fn many_endpoints_lowest_free_after_churn() {
    let (mut host, _remote, _, _) = pair();
    let ids: Vec<EptId> = (0..10_000)
        .map(|_| host.create_ept(b"", ADDR_ANY, 7).unwrap())
        .collect();
    assert_eq!(host.endpoint(ids[9999]).unwrap().addr(), 1024 + 9999);
    for id in ids.iter().step_by(3) {
        host.destroy_ept(*id).unwrap();
    }
    let again = host.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    assert_eq!(host.endpoint(again).unwrap().addr(), 1024);
    assert_eq!(host.endpoint_count(), 10_000 - 3334 + 1);
}

#[test]
fn name_service_unbind_and_destroy() {
    let (mut host, mut remote, _, _) = pair();
    let (mut h, mut r) = (Recorder::default(), Recorder::default());
    // Both sides create the same name without destination: each announces, each binds.
    let r_ept = remote.create_ept(CHANNEL, ADDR_ANY, ADDR_ANY).unwrap();
    let h_ept = host.create_ept(CHANNEL, ADDR_ANY, ADDR_ANY).unwrap();
    host.poll(&mut h).unwrap();
    remote.poll(&mut r).unwrap();
    assert_eq!(h.ns, vec![(CHANNEL.to_vec(), 1024, true, Some(h_ept))]);
    assert_eq!(r.ns, vec![(CHANNEL.to_vec(), 1024, true, Some(r_ept))]);
    assert!(host.is_ept_ready(h_ept) && remote.is_ept_ready(r_ept));

    // The remote destroys its endpoint: the host's endpoint loses its destination.
    remote.destroy_ept(r_ept).unwrap();
    host.poll(&mut h).unwrap();
    assert_eq!(
        h.ns.last().unwrap(),
        &(CHANNEL.to_vec(), 1024, false, Some(h_ept))
    );
    assert!(!host.is_ept_ready(h_ept));
    assert_eq!(host.trysend(h_ept, b"late"), Err(Error::NotReady));
}

#[test]
fn announcements_wait_for_buffers_and_are_never_lost() {
    // A ring of 2: the remote gets only 2 host buffers to send in.
    let (mut host, mut remote, _, _) = pair_with(2, BufferConfig::default(), false);
    let ids: Vec<EptId> = (0..5)
        .map(|i| {
            remote
                .create_ept(alloc::format!("svc{i}").as_bytes(), ADDR_ANY, ADDR_ANY)
                .unwrap()
        })
        .collect();
    assert_eq!(remote.pending_announcements(), 3);
    // Withdrawn before it went out: the queued create is simply dropped.
    remote.destroy_ept(ids[4]).unwrap();
    assert_eq!(remote.pending_announcements(), 2);
    let mut h = Recorder::default();
    let mut r = Recorder::default();
    for _ in 0..3 {
        host.poll(&mut h).unwrap();
        remote.poll(&mut r).unwrap();
    }
    let names: Vec<Vec<u8>> = h.ns.iter().map(|n| n.0.clone()).collect();
    assert_eq!(
        names,
        vec![
            b"svc0".to_vec(),
            b"svc1".to_vec(),
            b"svc2".to_vec(),
            b"svc3".to_vec()
        ]
    );
    assert_eq!(remote.pending_announcements(), 0);
}

#[test]
fn oversize_payloads_are_refused_not_truncated() {
    let (mut host, mut remote, _, _) = pair();
    let h_ept = host.create_ept(b"", ADDR_ANY, 1024).unwrap();
    let r_ept = remote.create_ept(b"", ADDR_ANY, 1024).unwrap();
    assert_eq!(host.max_payload(), Some(496));
    assert_eq!(
        host.trysend(h_ept, &[0; 497]),
        Err(Error::TooLarge { len: 497, max: 496 })
    );
    assert_eq!(host.trysend(h_ept, &[0; 496]), Ok(496));
    // The device learns the size from the buffer the host posted.
    assert_eq!(
        remote.trysend(r_ept, &[0; 497]),
        Err(Error::TooLarge { len: 497, max: 496 })
    );
    assert_eq!(remote.trysendto(r_ept, 1025, &[1; 496]), Ok(496));
    let mut h = Recorder::default();
    host.create_ept(b"", 1024 + 1, ADDR_ANY).ok();
    host.poll(&mut h).unwrap();
    assert_eq!(h.messages[0].2.len(), 496);
    assert_eq!(h.messages[0].1, 1024);
    assert_eq!(
        host.trysendto(h_ept, 1024, &[0; 497]),
        Err(Error::TooLarge { len: 497, max: 496 })
    );
}

#[test]
fn buffer_sizes_are_configurable_per_direction() {
    let cfg = BufferConfig {
        h2r_buf_size: 128,
        r2h_buf_size: 1024,
    };
    let (mut host, mut remote, _, _) = pair_with(64, cfg, true);
    let h_ept = host.create_ept(b"", ADDR_ANY, 1024).unwrap();
    let r_ept = remote.create_ept(b"", ADDR_ANY, 1024).unwrap();
    assert_eq!(host.max_payload(), Some(112));
    assert_eq!(
        host.trysend(h_ept, &[0; 113]),
        Err(Error::TooLarge { len: 113, max: 112 })
    );
    assert_eq!(remote.trysend(r_ept, &[7; 1008]), Ok(1008));
    assert_eq!(
        remote.trysend(r_ept, &[7; 1009]),
        Err(Error::TooLarge {
            len: 1009,
            max: 1008
        })
    );
    let mut h = Recorder::default();
    host.poll(&mut h).unwrap();
    assert_eq!(h.messages[0].2, vec![7; 1008]);
    // Buffer layout: 64 receive buffers of 1024, then transmit buffers of 128.
    let l = host.transport().layout();
    assert_eq!(l.num_bufs(), 128);
    assert_eq!(l.pool_bytes(), 64 * 1024 + 64 * 128);
}

#[test]
fn trysend_fails_at_once_and_send_times_out() {
    let (mut host, mut remote, hk, _) = pair_with(4, BufferConfig::default(), true);
    let ept = host.create_ept(b"", ADDR_ANY, 1024).unwrap();
    remote.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    // 8 buffers, half of them for sending: 4 sends fill the ring, nobody consumes.
    for _ in 0..4 {
        host.trysend(ept, b"fill").unwrap();
    }
    assert_eq!(host.trysend(ept, b"more"), Err(Error::NoBuffer));
    host.set_send_timeout_us(250_000);
    let before = hk.clock.get();
    assert_eq!(host.send(ept, b"more"), Err(Error::Timeout));
    assert!(hk.clock.get() - before >= 250_000, "waited the whole bound");
    // Once the remote consumes, buffers come back and sends go through again.
    let mut r = Recorder::default();
    remote.poll(&mut r).unwrap();
    assert_eq!(r.messages.len(), 4);
    assert_eq!(host.send(ept, b"again"), Ok(5));
}

#[test]
fn zero_copy_send_and_held_receive() {
    let (mut host, mut remote, _, _) = pair();
    let r_ept = remote.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    let h_ept = host.create_ept(b"", ADDR_ANY, 1024).unwrap();

    let tx = host.get_tx_payload_buffer(false).unwrap();
    assert_eq!(tx.capacity(), 496);
    assert_eq!(
        tx.payload_address(),
        Some(POOL + 256 * 512 + 16),
        "first Linux sbuf"
    );
    host.write_tx_payload(&tx, 0, b"zero").unwrap();
    host.write_tx_payload(&tx, 4, b"-copy").unwrap();
    assert!(host.write_tx_payload(&tx, 495, b"xx").is_err());
    host.send_nocopy(h_ept, tx, 9).unwrap();
    // Borrow one and give it back unsent: the next borrow gets it again.
    let spare = host.get_tx_payload_buffer(false).unwrap();
    let addr = spare.payload_address();
    host.release_tx_buffer(spare);
    let again = host.get_tx_payload_buffer(true).unwrap();
    assert_eq!(again.payload_address(), addr);
    host.sendto_nocopy(h_ept, 1024, again, 0).unwrap();

    let mut r = Recorder {
        hold: true,
        ..Default::default()
    };
    assert_eq!(remote.poll(&mut r).unwrap(), 2);
    assert_eq!(r.messages[0].2, b"zero-copy");
    assert_eq!(r.messages[1].2, b"");
    assert_eq!(remote.held_rx_count(), 2);
    let held = r.held.remove(0);
    let mut out = [0u8; 4];
    remote.read_held(&held, 5, &mut out).unwrap();
    assert_eq!(&out, b"copy");
    assert!(
        remote.read_held(&held, 6, &mut out).is_err(),
        "past the payload"
    );
    remote.release_rx(held).unwrap();
    let held = r.held.remove(0);
    remote.release_rx(held).unwrap();
    assert_eq!(remote.held_rx_count(), 0);
    // Both buffers are back with the host: it reclaims them for sending.
    assert_eq!(remote.stats().received, 2);
    let _ = r_ept;
}

#[test]
fn malformed_and_misaddressed_input_is_dropped_and_counted() {
    let (mut host, mut remote, _, _) = pair();
    let h_ept = host.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    let mut h = Recorder::default();
    // To an address nobody has.
    remote
        .send_offchannel_raw(1024, 4242, b"lost", false)
        .unwrap();
    // A name-service message of the wrong length.
    remote
        .send_offchannel_raw(1024, NS_ADDR, &[0u8; 39], false)
        .unwrap();
    // A name-service message with bad flags.
    let mut ns = NameServiceMsg::new(b"x", 5, NsFlags::Create).encode(Endian::Little);
    ns[36] = 9;
    remote
        .send_offchannel_raw(1024, NS_ADDR, &ns, false)
        .unwrap();
    // A header whose len runs past the buffer: forge one in a remote transmit buffer.
    let tx = remote.get_tx_payload_buffer(false).unwrap();
    let hdr = encode_header(Endian::Little, 1, 1024, 600);
    tx.buf.write(remote.transport().memory(), 0, &hdr).unwrap();
    remote.transport_mut().send_tx(tx.buf, 512).unwrap();
    remote.transport_mut().flush().unwrap();

    assert_eq!(host.poll(&mut h).unwrap(), 4);
    assert_eq!(
        h.dropped,
        vec![
            Dropped::NoEndpoint {
                src: 1024,
                dst: 4242
            },
            Dropped::BadNameService,
            Dropped::BadNameService,
            Dropped::Malformed {
                buffer_len: 512,
                claimed: 600
            },
        ]
    );
    assert_eq!(host.stats().dropped, 4);
    assert!(h.messages.is_empty() && h.ns.is_empty());
    // The link still works and every buffer went back to the remote.
    remote
        .send_offchannel_raw(1024, 1024, b"fine", false)
        .unwrap();
    host.poll(&mut h).unwrap();
    assert_eq!(h.messages, vec![(h_ept, 1024, b"fine".to_vec())]);
}

/// The device side against rings written exactly as Linux's virtio_rpmsg_bus writes them:
/// 512-byte buffers in one block, desc i = buffer i, the receive half posted on vq 0 in order.
#[test]
fn device_role_on_linux_buffer_layout() {
    let mem = Arc::new(HeapMemory::new(0x80000, 0));
    let l = layout(256, BufferConfig::default());
    let w16 = |a: u64, v: u16| mem.store_u16(a, v.to_le()).unwrap();
    for i in 0..256u64 {
        // vq 0: rbufs[i], device-writable.
        let d = VQ0 + 16 * i;
        mem.store_u64(d, (POOL + 512 * i).to_le()).unwrap();
        mem.store_u32(d + 8, 512u32.to_le()).unwrap();
        w16(d + 12, 2);
        w16(l.rx_ring.avail + 4 + 2 * i, i as u16);
    }
    w16(l.rx_ring.avail + 2, 256);
    // Linux sends "hello world!" from 0x400 to 0x401 in sbufs[0] on vq 1.
    let sbuf = POOL + 256 * 512;
    mem.write(sbuf, &encode_header(Endian::Little, 0x400, 0x401, 12))
        .unwrap();
    mem.write(sbuf + 16, b"hello world!").unwrap();
    mem.store_u64(VQ1, sbuf.to_le()).unwrap();
    mem.store_u32(VQ1 + 8, 28u32.to_le()).unwrap();
    w16(l.tx_ring.avail + 4, 0);
    w16(l.tx_ring.avail + 2, 1);

    let env = TestEnv::default();
    let t = DeviceTransport::new(
        mem.clone(),
        env.clone(),
        l.rx_ring,
        l.tx_ring,
        Endian::Little,
        false,
        512,
    )
    .unwrap();
    let mut remote = Rpmsg::new(t, Config::default());
    let ept = remote
        .create_ept(b"rpmsg-client-sample", 0x401, ADDR_ANY)
        .unwrap();
    // The announcement went into rbufs[0]: used id 0, used len 16 + 40.
    assert_eq!(u16::from_le(mem.load_u16(l.rx_ring.used + 2).unwrap()), 1);
    assert_eq!(u32::from_le(mem.load_u32(l.rx_ring.used + 4).unwrap()), 0);
    assert_eq!(u32::from_le(mem.load_u32(l.rx_ring.used + 8).unwrap()), 56);
    let mut ns = [0u8; 56];
    mem.read(POOL, &mut ns).unwrap();
    assert_eq!(&ns[..16], &encode_header(Endian::Little, 0x401, 53, 40));
    assert_eq!(&ns[16..35], b"rpmsg-client-sample");
    assert_eq!(&ns[48..56], &[1, 4, 0, 0, 0, 0, 0, 0]);

    let mut r = Recorder {
        echo: true,
        ..Default::default()
    };
    assert_eq!(remote.poll(&mut r).unwrap(), 1);
    assert_eq!(r.messages, vec![(ept, 0x400, b"hello world!".to_vec())]);
    // The echo went into rbufs[1] and vq 1's buffer came back used (id 0).
    assert_eq!(u16::from_le(mem.load_u16(l.rx_ring.used + 2).unwrap()), 2);
    assert_eq!(u32::from_le(mem.load_u32(l.rx_ring.used + 12).unwrap()), 1);
    assert_eq!(u32::from_le(mem.load_u32(l.rx_ring.used + 16).unwrap()), 28);
    let mut echo = [0u8; 28];
    mem.read(POOL + 512, &mut echo).unwrap();
    assert_eq!(
        &echo[..16],
        &encode_header(Endian::Little, 0x401, 0x400, 12)
    );
    assert_eq!(&echo[16..], b"hello world!");
    assert_eq!(u16::from_le(mem.load_u16(l.tx_ring.used + 2).unwrap()), 1);
    assert_eq!(env.kicks.get(), [2, 1]);
}

/// Our driver role lays out memory as Linux does, so a device written for Linux works.
#[test]
fn driver_role_replays_linux_layout() {
    let (host, _remote, hk, _) = pair();
    let mem = host.transport().memory().clone();
    let l = *host.transport().layout();
    assert_eq!(l.num_bufs(), 512);
    for i in 0..256u64 {
        let d = VQ0 + 16 * i;
        assert_eq!(u64::from_le(mem.load_u64(d).unwrap()), POOL + 512 * i);
        assert_eq!(u32::from_le(mem.load_u32(d + 8).unwrap()), 512);
        assert_eq!(
            u16::from_le(mem.load_u16(d + 12).unwrap()),
            2,
            "device-writable"
        );
    }
    let ids: Vec<u16> = (0..256)
        .map(|i| u16::from_le(mem.load_u16(l.rx_ring.avail + 4 + 2 * i).unwrap()))
        .collect();
    assert_eq!(
        u16::from_le(mem.load_u16(l.rx_ring.avail + 2).unwrap()),
        256
    );
    assert_eq!(
        ids.iter()
            .collect::<alloc::collections::BTreeSet<_>>()
            .len(),
        256
    );
    // Not notified yet: the first flush kicks vq 0 once.
    assert_eq!(hk.kicks.get(), [0, 0]);
}

#[test]
fn handle_misuse_is_refused() {
    let (mut host, mut remote, _, _) = pair();
    let ept = remote.create_ept(b"", ADDR_ANY, 1024).unwrap();
    let h_ept = host.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    remote.trysend(ept, b"a").unwrap();
    let mut h = Recorder {
        hold: true,
        ..Default::default()
    };
    host.poll(&mut h).unwrap();
    let held = h.held.pop().unwrap();
    let copy = HeldRx {
        src: held.src,
        dst: held.dst,
        len: held.len,
        buf: held.buf,
    };
    host.release_rx(held).unwrap();
    assert_eq!(host.release_rx(copy), Err(Error::UnknownBuffer));
    host.destroy_ept(h_ept).unwrap();
    assert_eq!(host.trysend(h_ept, b"x"), Err(Error::InvalidEndpoint));
    assert_eq!(host.set_dest(h_ept, 5), Err(Error::InvalidEndpoint));
}

#[derive(Debug)]
struct Collect(Rc<RefCell<Vec<Vec<u8>>>>);
impl<T: Transport> Handler<T> for Collect {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        self.0.borrow_mut().push(rpmsg.payload(msg).unwrap());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random traffic both ways with random polling: everything arrives once, in order, intact.
    #[test]
    fn random_traffic_is_delivered_in_order(
        steps in proptest::collection::vec((0u8..4, 0usize..497), 1..200),
        ring_pow in 1u32..5,
        event_idx: bool,
        packed: bool,
    ) {
        FORMAT.with(|f| f.set(if packed { RingFormat::Packed } else { RingFormat::Split }));
        let (mut host, mut remote, _, _) = pair_with(1 << ring_pow, BufferConfig::default(), event_idx);
        let h_ept = host.create_ept(b"", ADDR_ANY, 1024).unwrap();
        let r_ept = remote.create_ept(b"", ADDR_ANY, 1024).unwrap();
        let (to_remote, to_host) = (Rc::new(RefCell::new(Vec::new())), Rc::new(RefCell::new(Vec::new())));
        let (mut hc, mut rc) = (Collect(to_host.clone()), Collect(to_remote.clone()));
        let (mut sent_h, mut sent_r) = (Vec::new(), Vec::new());
        for (n, (op, size)) in steps.into_iter().enumerate() {
            let msg: Vec<u8> = (0..size).map(|i| (i + n) as u8).collect();
            match op {
                0 => match host.trysend(h_ept, &msg) {
                    Ok(_) => sent_h.push(msg),
                    Err(e) => prop_assert_eq!(e, Error::NoBuffer),
                },
                1 => match remote.trysend(r_ept, &msg) {
                    Ok(_) => sent_r.push(msg),
                    Err(e) => prop_assert_eq!(e, Error::NoBuffer),
                },
                2 => { host.poll(&mut hc).unwrap(); }
                _ => { remote.poll(&mut rc).unwrap(); }
            }
        }
        host.poll(&mut hc).unwrap();
        remote.poll(&mut rc).unwrap();
        prop_assert_eq!(&*to_remote.borrow(), &sent_h);
        prop_assert_eq!(&*to_host.borrow(), &sent_r);
    }
}

#[test]
fn a_batch_notifies_once_at_its_end() {
    for event_idx in [false, true] {
        let (mut host, mut remote, hk, _) = pair_with(8, BufferConfig::default(), event_idx);
        remote.create_ept(CHANNEL, ADDR_ANY, ADDR_ANY).unwrap();
        let mut h = Recorder::default();
        host.poll(&mut h).unwrap();
        let h_ept = host.create_ept(CHANNEL, ADDR_ANY, 1024).unwrap();
        let kicks = |k: &TestEnv| k.kicks.get()[TX_QUEUE as usize];
        // Outside a batch the first send kicks at once.
        host.send(h_ept, b"alone").unwrap();
        assert_eq!(kicks(&hk), 1, "event_idx {event_idx}");
        let mut r = Recorder::default();
        assert_eq!(remote.poll(&mut r).unwrap(), 1);
        // Inside one, sends are published (the remote finds them by polling) but nobody is
        // kicked until the batch closes, and then once.
        host.begin_batch();
        for k in 0..3u8 {
            host.send(h_ept, &[k]).unwrap();
        }
        assert_eq!(kicks(&hk), 1, "event_idx {event_idx}");
        host.begin_batch();
        host.send(h_ept, b"nested").unwrap();
        host.end_batch().unwrap();
        assert_eq!(kicks(&hk), 1, "the outer batch is still open");
        host.end_batch().unwrap();
        assert_eq!(kicks(&hk), 2, "event_idx {event_idx}");
        assert_eq!(remote.poll(&mut r).unwrap(), 4);
        // A blocking send that finds no buffer kicks before it waits, batch or not: the
        // remote must hear of what is queued before it can give a buffer back.
        host.begin_batch();
        let mut sent = 0;
        while host.trysend(h_ept, b"fill").is_ok() {
            sent += 1;
        }
        assert!(sent > 0);
        assert_eq!(kicks(&hk), 2);
        assert_eq!(host.send(h_ept, b"one more"), Err(Error::Timeout));
        assert_eq!(kicks(&hk), 3, "event_idx {event_idx}");
        host.end_batch().unwrap();
        assert_eq!(remote.poll(&mut r).unwrap(), sent);
    }
}

#[test]
fn a_long_batch_decides_every_32_messages() {
    let (mut host, mut remote, hk, _) = pair_with(64, BufferConfig::default(), false);
    remote.create_ept(CHANNEL, ADDR_ANY, ADDR_ANY).unwrap();
    let mut h = Recorder::default();
    host.poll(&mut h).unwrap();
    let h_ept = host.create_ept(CHANNEL, ADDR_ANY, 1024).unwrap();
    let kicks = |k: &TestEnv| k.kicks.get()[TX_QUEUE as usize];
    host.begin_batch();
    for k in 0..31u8 {
        host.send(h_ept, &[k]).unwrap();
    }
    assert_eq!(kicks(&hk), 0);
    host.send(h_ept, b"32nd").unwrap();
    assert_eq!(kicks(&hk), 1, "the 32nd send decides");
    for k in 0..10u8 {
        host.send(h_ept, &[k]).unwrap();
    }
    assert_eq!(kicks(&hk), 1);
    host.end_batch().unwrap();
    assert_eq!(kicks(&hk), 2);
}

#[test]
fn poll_budget_takes_at_most_its_budget_and_leaves_the_rest() {
    let (mut host, mut remote, _hk, _rk) = pair();
    let r_ept = remote.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    let r_addr = remote.endpoint(r_ept).unwrap().addr();
    let h_ept = host.create_ept(b"", ADDR_ANY, r_addr).unwrap();
    for i in 0..10u32 {
        host.send(h_ept, &i.to_le_bytes()).unwrap();
    }
    let mut r = Recorder::default();
    assert_eq!(remote.poll_budget(&mut r, 4).unwrap(), 4);
    assert_eq!(r.messages.len(), 4);
    assert_eq!(remote.poll_budget(&mut r, 4).unwrap(), 4);
    assert_eq!(
        remote.poll_budget(&mut r, 4).unwrap(),
        2,
        "the rest, nothing lost"
    );
    assert_eq!(remote.poll_budget(&mut r, 4).unwrap(), 0);
    let got: Vec<u32> = r
        .messages
        .iter()
        .map(|m| u32::from_le_bytes(m.2[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>(), "in order");
}

#[test]
fn announce_as_names_an_existing_endpoint_once() {
    let (mut host, mut remote, _hk, _rk) = pair();
    let r_ept = remote.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    let addr = remote.endpoint(r_ept).unwrap().addr();
    let mut h = Recorder::default();
    host.poll(&mut h).unwrap();
    assert!(h.ns.is_empty(), "an unnamed endpoint is not announced");
    remote.announce_as(r_ept, b"late-name").unwrap();
    remote.announce_as(r_ept, b"other").unwrap();
    host.poll(&mut h).unwrap();
    assert_eq!(h.ns, vec![(b"late-name".to_vec(), addr, true, None)]);
    assert_eq!(remote.endpoint(r_ept).unwrap().name(), b"late-name");
    assert_eq!(remote.endpoints_named(b"late-name").count(), 1);
    assert_eq!(remote.endpoints_named(b"").count(), 0);
    assert_eq!(
        remote.announce_as(r_ept, &[b'x'; 40]),
        Err(Error::NameTooLong)
    );
    remote.destroy_ept(r_ept).unwrap();
    host.poll(&mut h).unwrap();
    assert_eq!(
        h.ns.last(),
        Some(&(b"late-name".to_vec(), addr, false, None))
    );
}

/// What a receiver saw, in order: the same record for the pull API and the callback layer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Message(EptId, u32, u32, Vec<u8>),
    NameService(Vec<u8>, u32, bool, Option<EptId>),
    Dropped(Dropped),
}

impl Seen {
    fn of_ns(e: NsEvent<'_>) -> Seen {
        match e {
            NsEvent::Created { name, addr, bound } => {
                Seen::NameService(name.to_vec(), addr, true, bound)
            }
            NsEvent::Destroyed {
                name,
                addr,
                unbound,
            } => Seen::NameService(name.to_vec(), addr, false, unbound),
        }
    }
}

/// Messages with an odd payload length are held (to be released later); the rest end with
/// their delivery.
fn keep(len: u16) -> bool {
    len % 2 == 1
}

/// The callback side of the comparison.
#[derive(Debug, Default)]
struct Log {
    seen: Vec<Seen>,
    held: Vec<HeldRx>,
}

impl<T: Transport> Handler<T> for Log {
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received) {
        let data = rpmsg.payload(msg).unwrap();
        self.seen
            .push(Seen::Message(msg.ept, msg.src, msg.dst, data));
        if keep(msg.len) {
            self.held.push(rpmsg.hold_rx(msg));
        }
    }
    fn on_name_service(&mut self, _: &mut Rpmsg<T>, e: NsEvent<'_>) {
        self.seen.push(Seen::of_ns(e));
    }
    fn on_dropped(&mut self, why: Dropped) {
        self.seen.push(Seen::Dropped(why));
    }
}

/// The pull side of the comparison: one round of at most `budget` events, recorded as [`Log`]
/// records them. Returns the buffers taken.
fn pull_round<T: Transport>(rpmsg: &mut Rpmsg<T>, log: &mut Log, budget: usize) -> usize {
    rpmsg.begin_poll().unwrap();
    let mut count = 0;
    while count < budget
        && let Some(event) = rpmsg.next_event().unwrap()
    {
        count += 1;
        match event {
            Event::Message(mut msg) => {
                let data = rpmsg.payload(&msg).unwrap();
                log.seen
                    .push(Seen::Message(msg.ept, msg.src, msg.dst, data));
                if keep(msg.len) {
                    log.held.push(rpmsg.hold_rx(&mut msg));
                }
                rpmsg.finish_rx(msg).unwrap();
            }
            Event::NameService(ns) => log.seen.push(Seen::of_ns(ns.event())),
            Event::Dropped(why) => log.seen.push(Seen::Dropped(why)),
        }
    }
    rpmsg.end_poll().unwrap();
    count
}

#[test]
fn the_pull_api_returns_events_without_calling_back() {
    // Without EVENT_IDX the remote asks for every notification: the round's batching shows.
    let (mut host, mut remote, hk, _) = pair_with(256, BufferConfig::default(), false);
    let h_ept = host.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
    let r_ept = remote.create_ept(CHANNEL, ADDR_ANY, ADDR_ANY).unwrap();
    let w_ept = host.create_ept(CHANNEL, ADDR_ANY, ADDR_ANY).unwrap();
    remote.sendto(r_ept, 1024, b"one").unwrap();
    remote.sendto(r_ept, 4242, b"lost").unwrap();
    remote.sendto(r_ept, 1024, b"four").unwrap();
    let kicks_before = hk.kicks.get();

    host.begin_poll().unwrap();
    // The announcement binds the waiting endpoint before the caller hears of it.
    let Some(Event::NameService(ns)) = host.next_event().unwrap() else {
        panic!("expected the announcement");
    };
    assert_eq!(
        ns.event(),
        NsEvent::Created {
            name: CHANNEL,
            addr: 1024,
            bound: Some(w_ept)
        }
    );
    assert_eq!(host.endpoint(w_ept).unwrap().dest(), 1024);
    let Some(Event::Message(mut first)) = host.next_event().unwrap() else {
        panic!("expected a message");
    };
    assert_eq!((first.ept, first.src, first.dst), (h_ept, 1024, 1024));
    assert_eq!(host.payload(&first).unwrap(), b"one");
    // Between events the caller uses the engine as it likes: here it replies and holds.
    host.sendto(h_ept, 1024, b"reply").unwrap();
    let held = host.hold_rx(&mut first);
    host.finish_rx(first).unwrap();
    assert_eq!(host.held_rx_count(), 1);
    assert!(matches!(
        host.next_event().unwrap(),
        Some(Event::Dropped(Dropped::NoEndpoint {
            src: 1024,
            dst: 4242
        }))
    ));
    let Some(Event::Message(second)) = host.next_event().unwrap() else {
        panic!("expected a message");
    };
    assert_eq!(host.payload(&second).unwrap(), b"four");
    host.finish_rx(second).unwrap();
    assert!(host.next_event().unwrap().is_none());
    assert_eq!(
        hk.kicks.get(),
        kicks_before,
        "nothing notified inside the round"
    );
    host.end_poll().unwrap();
    assert!(
        hk.kicks.get() != kicks_before,
        "the round's end notifies once for what it sent and returned"
    );
    assert_eq!(host.stats().received, 2);
    assert_eq!(host.stats().dropped, 1);
    let mut out = [0u8; 3];
    host.read_held(&held, 0, &mut out).unwrap();
    assert_eq!(&out, b"one");
    host.release_rx(held).unwrap();
    assert_eq!(host.held_rx_count(), 0);
    let mut r = Recorder::default();
    remote.poll(&mut r).unwrap();
    assert_eq!(r.messages, vec![(r_ept, 1024, b"reply".to_vec())]);
}

/// Two identical pairs, fed the same steps by their remotes.
struct Twins {
    pull: (Host, Remote, TestEnv, TestEnv),
    callback: (Host, Remote, TestEnv, TestEnv),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The pull API and the callback layer deliver the same events in the same order, with the
    /// same endpoint bindings, counters, held buffers and notifications, under random traffic,
    /// announcements, misaddressed and malformed input, budgets and held buffers.
    #[test]
    fn pull_and_callbacks_deliver_the_same_sequence(
        steps in proptest::collection::vec((0u8..7, 0usize..497), 1..150),
        ring_pow in 1u32..5,
        event_idx: bool,
        packed: bool,
    ) {
        FORMAT.with(|f| f.set(if packed { RingFormat::Packed } else { RingFormat::Split }));
        let ring = 1 << ring_pow;
        let mut t = Twins {
            pull: pair_with(ring, BufferConfig::default(), event_idx),
            callback: pair_with(ring, BufferConfig::default(), event_idx),
        };
        let (mut pull_log, mut callback_log) = (Log::default(), Log::default());
        for side in [&mut t.pull, &mut t.callback] {
            side.0.create_ept(b"", ADDR_ANY, ADDR_ANY).unwrap();
            side.0.create_ept(CHANNEL, ADDR_ANY, ADDR_ANY).unwrap();
            side.1.create_ept(b"", ADDR_ANY, 1024).unwrap();
        }
        let mut remote_channel: Vec<Option<EptId>> = vec![None, None];
        for (n, (op, size)) in steps.into_iter().enumerate() {
            let msg: Vec<u8> = (0..size).map(|i| (i + n) as u8).collect();
            match op {
                // Traffic to a known address, an unknown one and the name-service address.
                0..=2 => {
                    let dst = [1024, 1024 + 4242, NS_ADDR][op as usize];
                    let a = t.pull.1.send_offchannel_raw(1024, dst, &msg, false);
                    let b = t.callback.1.send_offchannel_raw(1024, dst, &msg, false);
                    prop_assert_eq!(a, b);
                }
                // The remote announces or withdraws its channel.
                3 => {
                    for (k, side) in [&mut t.pull, &mut t.callback].into_iter().enumerate() {
                        match remote_channel[k].take() {
                            Some(id) => side.1.destroy_ept(id).unwrap(),
                            None => {
                                remote_channel[k] = side.1.create_ept(CHANNEL, ADDR_ANY, ADDR_ANY).ok();
                            }
                        }
                    }
                }
                // The host polls with a budget.
                4 | 5 => {
                    let budget = if op == 4 { usize::MAX } else { 1 + size % 3 };
                    let a = pull_round(&mut t.pull.0, &mut pull_log, budget);
                    let b = t.callback.0.poll_budget(&mut callback_log, budget).unwrap();
                    prop_assert_eq!(a, b);
                }
                // The host gives back what it held.
                _ => {
                    for held in pull_log.held.drain(..) {
                        t.pull.0.release_rx(held).unwrap();
                    }
                    for held in callback_log.held.drain(..) {
                        t.callback.0.release_rx(held).unwrap();
                    }
                }
            }
            prop_assert_eq!(&pull_log.seen, &callback_log.seen);
            prop_assert_eq!(t.pull.0.stats(), t.callback.0.stats());
            prop_assert_eq!(t.pull.0.held_rx_count(), t.callback.0.held_rx_count());
            prop_assert_eq!(t.pull.2.kicks.get(), t.callback.2.kicks.get());
        }
        for id in [0, 1] {
            let ept = t.pull.0.endpoints_named(if id == 0 { b"" } else { CHANNEL }).next();
            let other = t.callback.0.endpoints_named(if id == 0 { b"" } else { CHANNEL }).next();
            prop_assert_eq!(
                ept.and_then(|e| t.pull.0.endpoint(e).cloned()),
                other.and_then(|e| t.callback.0.endpoint(e).cloned())
            );
        }
    }
}

/// A device that polls with the driver's kicks suppressed (`set_kick_suppression`, the hub's
/// `--poll`) hears no kick on either queue however the indices wrap, while its interrupts to
/// the driver go on as the driver asks; once it stops, the driver kicks again. Both formats.
#[test]
fn device_kick_suppression_silences_the_driver_only() {
    for format in [RingFormat::Split, RingFormat::Packed] {
        FORMAT.with(|f| f.set(format));
        for event_idx in [false, true] {
            let (mut host, mut remote, hk, rk) = pair_with(8, BufferConfig::default(), event_idx);
            remote.transport_mut().set_kick_suppression(true).unwrap();
            let before = hk.kicks.get();
            remote.create_ept(CHANNEL, ADDR_ANY, ADDR_ANY).unwrap();
            let mut h = Recorder::default();
            assert_eq!(host.poll(&mut h).unwrap(), 1, "the announcement");
            let h_ept = host.create_ept(CHANNEL, ADDR_ANY, 1024).unwrap();
            let mut r = Recorder {
                echo: true,
                ..Default::default()
            };
            for i in 0..40u32 {
                host.send(h_ept, &i.to_le_bytes()).unwrap();
                assert_eq!(remote.poll(&mut r).unwrap(), 1);
                assert_eq!(host.poll(&mut h).unwrap(), 1);
            }
            let what = alloc::format!("{format:?}, event_idx {event_idx}");
            assert_eq!(hk.kicks.get(), before, "no kick while suppressed: {what}");
            assert!(
                rk.kicks.get()[RX_QUEUE as usize] >= 40,
                "an interrupt for every echo: {what}"
            );
            remote.transport_mut().set_kick_suppression(false).unwrap();
            host.send(h_ept, b"after").unwrap();
            assert!(
                hk.kicks.get()[TX_QUEUE as usize] > before[TX_QUEUE as usize],
                "kicks again: {what}"
            );
        }
    }
    FORMAT.with(|f| f.set(RingFormat::Split));
}
