//! Both sides of the native link as threads of one test, driving the library API directly:
//! the host withdraws nothing and sends the shutdown word; the remote echoes on its channel.

use std::time::Duration;
use vamp::native_apps::{Protocol, run_echo_remote, run_ping_host};
use vamp_rpmsg::apps::ping_payload;
use vamp_rpmsg::native;

#[test]
fn echo_remote_and_ping_host_threads() {
    let paths = native::private_paths("thr");
    let remote_paths = paths.clone();
    let remote = std::thread::spawn(move || {
        run_echo_remote(
            &remote_paths,
            Some(Duration::from_secs(60)),
            &[Protocol::Demo],
            "r",
        )
    });
    let summary = run_ping_host(&paths, Duration::from_secs(60), 500, Protocol::Demo, "h").unwrap();
    let echo = remote.join().unwrap().unwrap();
    native::cleanup(&paths);
    assert!(summary.all_matched(), "{summary}");
    assert_eq!(summary.rtt_us.len(), 500);
    assert_eq!(echo.echoed, 500);
    assert!(echo.shutdown);
}

#[test]
fn ping_payloads_vary_and_never_look_like_shutdown() {
    let sizes: std::collections::BTreeSet<usize> =
        (0..496).map(|i| ping_payload(i).len()).collect();
    assert_eq!(sizes.len(), 496);
    assert_eq!((*sizes.first().unwrap(), *sizes.last().unwrap()), (1, 496));
    for i in 0..5000 {
        let p = ping_payload(i);
        assert!(p.len() < 4 || p[..4] != vamp_rpmsg::apps::SHUTDOWN_MSG.to_ne_bytes());
        assert_ne!(p, ping_payload(i + 496), "same size, different bytes");
    }
}
