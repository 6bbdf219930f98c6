//! Process and thread attributes: how zombies ended, scheduling, identity,
//! each checked from inside the restored processes by their workloads.
#![allow(clippy::panic, clippy::unwrap_used)]

use crt_tests::roundtrip;

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
