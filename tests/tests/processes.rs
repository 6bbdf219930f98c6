//! Process and thread attributes: how zombies ended, scheduling, identity,
//! each checked from inside the restored processes by their workloads.
#![allow(clippy::panic, clippy::unwrap_used)]

use crt_tests::{dump, roundtrip, TestDir, Workload, READY_TIMEOUT};

/// Zombies keep their exit status (signal and core-dump flag included)
/// and their process group; a failed zombie is never a hang.
#[test]
fn zombies_roundtrip() {
    crt_tests::init!();
    roundtrip("zombies");
}

/// Scheduling policy, nice value, priority and reset-on-fork per thread,
/// robust futex lists, CPU affinity, oom_score_adj, login uid, membarrier.
#[test]
fn attrs_roundtrip() {
    crt_tests::init!();
    roundtrip("attrs");
}

/// Seccomp filters per thread (TSYNC-shared and thread-only), and
/// credentials that differ per thread: uids, gids, groups, every
/// capability set, securebits.
#[test]
fn seccomp_caps_roundtrip() {
    crt_tests::init!();
    roundtrip("seccomp_caps");
}

/// POSIX timers that notify one thread (SIGEV_THREAD_ID, and glibc's
/// SIGEV_THREAD built on it) keep firing at that thread.
#[test]
fn thread_timers_roundtrip() {
    crt_tests::init!();
    roundtrip("thread_timers");
}

/// A busy tree (children born, exiting and reaped all the time) is frozen
/// reliably: 100 `--leave-running` dumps in a row all succeed, and the
/// tree runs on with no child lost or killed.
#[test]
fn busy_tree_dumps_100_times() {
    crt_tests::init!();
    let w = Workload::spawn("forker");
    w.wait_ready(READY_TIMEOUT);
    let work = TestDir::new("crt-busy-");
    for i in 0..100 {
        let img = work.path().join(format!("img{i}"));
        dump(&[&w], &img, &["--leave-running"]).assert_success();
        std::fs::remove_dir_all(&img).unwrap();
        w.assert_alive("after a --leave-running dump");
    }
    w.terminate_and_check();
}

/// The same tree dumped for real restores, and its loop goes on.
#[test]
fn busy_tree_roundtrip() {
    crt_tests::init!();
    roundtrip("forker");
}
