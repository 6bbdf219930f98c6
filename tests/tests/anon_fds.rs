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
fn anon_fds_checks_can_fail() {
    crt_tests::init!();
    let w = Workload::spawn_with_env("anon_fds", &[("CRT_WL_SABOTAGE", "1")]);
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_AFTER_RESTORE);
    let why = w.terminate_expect_fail();
    assert!(why.contains("eventfd"), "{why}");
}
