//! Dumps crt must refuse cleanly: non-zero exit, a message naming what it
//! refused, no image files left, and the process still running untouched.
#![allow(clippy::panic, clippy::unwrap_used)]

use crt_tests::{dump, DirSnapshot, TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP};

/// The fd numbers of `pid` whose link target is `target`.
fn fds_pointing_to(pid: i32, target: &str) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/pid/fd")
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == target))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    fds
}

#[test]
fn io_uring_is_refused() {
    crt_tests::init!();
    let w = Workload::spawn("io_uring_holder");
    let img = TestDir::new("crt-img-");
    w.wait_ready(READY_TIMEOUT);
    let fds = fds_pointing_to(w.pid(), "anon_inode:[io_uring]");
    assert_eq!(fds.len(), 1, "io_uring_holder should hold exactly one io_uring: {fds:?}");
    std::thread::sleep(RUN_BEFORE_DUMP);

    let out = dump(&[&w], img.path(), &[]);
    out.assert_failure()
        .assert_stderr_mentions_number(w.pid())
        .assert_stderr_mentions_number(&fds[0])
        .assert_stderr_contains("io_uring");
    let snap = DirSnapshot::take(img.path());
    assert!(snap.is_empty(), "a refused dump left files in {}: {snap:?}", img.path().display());

    // untouched: still running, not traced, and its state still verifies
    w.assert_alive("after the refused dump");
    assert_eq!(crt_tests::proc_status_field(w.pid(), "TracerPid").as_deref(), Some("0"));
    std::thread::sleep(RUN_AFTER_RESTORE);
    w.terminate_and_check();
}

/// State crt cannot restore yet is refused before anything is written, and
/// the process runs on with that state intact.
fn refused(mode: &str, needle: &str) {
    let w = Workload::spawn_with_env("unsupported_state", &[("CRT_UNSUPPORTED", mode)]);
    let img = TestDir::new("crt-img-");
    w.wait_ready(READY_TIMEOUT);
    let out = dump(&[&w], img.path(), &[]);
    out.assert_failure().assert_stderr_mentions_number(w.pid()).assert_stderr_contains(needle);
    assert!(DirSnapshot::take(img.path()).is_empty(), "{mode}: files left behind");
    w.assert_alive(mode);
    std::thread::sleep(RUN_AFTER_RESTORE);
    w.terminate_and_check();
}

/// Locks are restored (no longer refused): the holder's own checks
/// (lock still in place) pass after the round trip.
#[test]
fn file_locks_survive() {
    crt_tests::init!();
    for mode in ["lock", "flock"] {
        crt_tests::Forest::from_workloads(vec![Workload::spawn_with_env(
            "unsupported_state",
            &[("CRT_UNSUPPORTED", mode)],
        )])
        .roundtrip();
    }
}

/// A working directory that was removed is refused, naming it.
#[test]
fn removed_cwd_is_refused() {
    crt_tests::init!();
    refused("removed_cwd", "working directory");
}

/// A lease in the middle of being broken (another process waits in open
/// for the holder to give it up) is refused, naming the fd and the state.
#[test]
fn breaking_lease_is_refused() {
    crt_tests::init!();
    refused("lease_breaking", "lease is being broken");
}

#[test]
fn posix_timers_survive() {
    crt_tests::init!();
    for mode in ["timer", "timer_sig"] {
        crt_tests::Forest::from_workloads(vec![Workload::spawn_with_env(
            "unsupported_state",
            &[("CRT_UNSUPPORTED", mode)],
        )])
        .roundtrip();
    }
}

/// Seccomp filters are restored (no longer refused).
#[test]
fn seccomp_survives() {
    crt_tests::init!();
    crt_tests::Forest::from_workloads(vec![Workload::spawn_with_env(
        "unsupported_state",
        &[("CRT_UNSUPPORTED", "seccomp")],
    )])
    .roundtrip();
}

#[test]
fn no_new_privs_survives() {
    crt_tests::init!();
    crt_tests::Forest::from_workloads(vec![Workload::spawn_with_env(
        "unsupported_state",
        &[("CRT_UNSUPPORTED", "nnp")],
    )])
    .roundtrip();
}

#[test]
fn prctl_attributes_survive() {
    crt_tests::init!();
    crt_tests::roundtrip("prctl_state");
}
