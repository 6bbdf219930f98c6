//! eventfd, timerfd, signalfd and epoll: restored with their state, and the
//! epoll's interest list rebuilt inside the task.
#![allow(clippy::panic, clippy::unwrap_used)]

use crt_tests::{roundtrip, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE};

#[test]
fn eventfd_timerfd_signalfd_epoll_roundtrip() {
    crt_tests::init!();
    roundtrip("anon_fds");
}

#[test]
fn eventfd_counter_roundtrip() {
    crt_tests::init!();
    roundtrip("eventfd_holder");
}

#[test]
fn inotify_watches_keep_their_descriptors() {
    crt_tests::init!();
    let w = Workload::spawn("inotify_watch");
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(crt_tests::RUN_BEFORE_DUMP);
    let dir = crt_tests::TestDir::new("crt-inotify-");
    let img = dir.path().join("img");
    // An event not yet read at the instant of the freeze makes crt refuse
    // (it cannot peek inotify events): the operator retries.
    let mut tries = 0;
    loop {
        tries += 1;
        let out = crt_tests::dump(&[&w], &img, &[]);
        if out.success() {
            break;
        }
        assert!(out.stderr.contains("not yet read") && tries < 10, "{}", out.stderr);
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    let mut r = crt_tests::Restored::start(&img, &[]);
    r.wait_running(&[&w]);
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&[&w]);
}
