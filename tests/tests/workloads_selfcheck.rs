//! Proves the workloads themselves, without crt: each one, run under the
//! harness (spawn → READY → run → workload-specific steps → SIGTERM), must
//! PASS; and sabotaged or prematurely terminated runs must FAIL, showing the
//! checks can fail.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::time::Duration;

use crt_tests::{Workload, READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP};

/// The same timeline as a crt round trip, minus the dump and restore.
fn selfcheck(name: &str) {
    crt_tests::init!();
    let w = Workload::spawn(name);
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP + RUN_AFTER_RESTORE);
    w.exercise();
    w.terminate_and_check();
}

#[test]
fn counters_passes() {
    selfcheck("counters");
}

#[test]
fn file_offset_passes() {
    selfcheck("file_offset");
}

#[test]
fn signals_passes() {
    selfcheck("signals");
}

#[test]
fn sleeper_passes() {
    selfcheck("sleeper");
}

#[test]
fn pauser_passes() {
    selfcheck("pauser");
}

#[test]
fn avx_passes() {
    selfcheck("avx");
}

#[test]
fn vmas_passes() {
    selfcheck("vmas");
}

#[test]
fn eventfd_holder_passes() {
    selfcheck("eventfd_holder");
}

#[test]
fn rust_std_passes() {
    selfcheck(crt_tests::RUST_STD);
}

/// Runs `name` with CRT_WL_SABOTAGE=1 and expects FAIL mentioning `needle`.
fn sabotaged(name: &str, needle: &str) {
    crt_tests::init!();
    let w = Workload::spawn_with_env(name, &[("CRT_WL_SABOTAGE", "1")]);
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP + RUN_AFTER_RESTORE);
    w.exercise();
    let log = w.terminate_expect_fail();
    assert!(
        log.contains(needle),
        "expected {needle:?} in the failure of {name}:\n{log}"
    );
}

#[test]
fn counters_detects_heap_corruption() {
    sabotaged("counters", "heap pattern");
}

#[test]
fn file_offset_detects_hole() {
    sabotaged("file_offset", "NUL");
}

#[test]
fn vmas_detects_private_file_change() {
    sabotaged("vmas", "private.bin");
}

#[test]
fn rust_std_detects_map_corruption() {
    sabotaged(crt_tests::RUST_STD, "key-500");
}

/// Terminates `name` right after READY, skipping the run and its steps.
fn too_early(name: &str, needle: &str) {
    crt_tests::init!();
    let w = Workload::spawn(name);
    w.wait_ready(READY_TIMEOUT);
    let log = w.terminate_expect_fail();
    assert!(
        log.contains(needle),
        "expected {needle:?} in the failure of {name}:\n{log}"
    );
}

#[test]
fn counters_requires_progress() {
    too_early("counters", "advanced only");
}

#[test]
fn sleeper_requires_a_completed_sleep() {
    too_early("sleeper", "no sleep completed");
}

#[test]
fn pauser_requires_a_wake_up() {
    too_early("pauser", "woke 0 times");
}

#[test]
fn signals_requires_usr1() {
    too_early("signals", "SIGUSR1 was never handled");
}

#[test]
fn avx_requires_rounds() {
    too_early("avx", "rounds since READY");
}

#[test]
fn pauser_rejects_two_wake_ups() {
    crt_tests::init!();
    let w = Workload::spawn("pauser");
    w.wait_ready(READY_TIMEOUT);
    w.exercise();
    w.exercise();
    let log = w.terminate_expect_fail();
    assert!(log.contains("woke 2 times"), "{log}");
}

/// The harness itself: a workload killed mid-run is noticed (no PASS), and
/// a missing READY times out instead of hanging.
#[test]
fn harness_notices_a_dead_workload() {
    crt_tests::init!();
    let w = Workload::spawn("counters");
    w.wait_ready(READY_TIMEOUT);
    w.send(libc::SIGKILL);
    assert!(crt_tests::poll_until(Duration::from_secs(5), || !w.is_alive()));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.assert_passed()));
    assert!(r.is_err(), "assert_passed accepted a killed workload");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        w.wait_log_contains("PASS", Duration::from_millis(300));
    }));
    assert!(r.is_err(), "wait_log_contains accepted a missing line");
}

/// The reaper: an orphan reparented to us (we are a subreaper) is reaped,
/// while a dead child the harness still waits for is left alone.
#[test]
fn harness_reaps_orphans_but_not_tracked_children() {
    crt_tests::init!();
    let w = Workload::spawn("counters");
    w.wait_ready(READY_TIMEOUT);
    w.send(libc::SIGKILL);
    assert!(crt_tests::poll_until(Duration::from_secs(5), || {
        crt_tests::proc_state(w.pid()) == Some('Z')
    }));

    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", "sleep 0.1 & echo $!"])
        .stdout(std::process::Stdio::piped());
    let mut sh = crt_tests::spawn_tracked(&mut sh).expect("spawn sh");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut sh.stdout.take().expect("stdout"), &mut out)
        .expect("read sh output");
    let status = crt_tests::wait_timeout(&mut sh, Duration::from_secs(5)).expect("sh exits");
    assert!(status.success());
    let orphan: i32 = out.trim().parse().expect("orphan pid");
    let mut reaped = Vec::new();
    assert!(
        crt_tests::poll_until(Duration::from_secs(5), || {
            reaped.extend(crt_tests::reap_strays());
            reaped.contains(&orphan)
        }),
        "orphan {orphan} was not reaped (reaped {reaped:?})"
    );
    assert!(
        !reaped.contains(&w.pid()),
        "the reaper stole a tracked child"
    );
    assert_eq!(
        crt_tests::proc_state(w.pid()),
        Some('Z'),
        "tracked zombie was reaped"
    );
    assert!(!w.is_alive());
}
