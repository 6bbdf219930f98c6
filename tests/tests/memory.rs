//! Memory: copy-on-write sharing between a parent and its children since
//! fork, madvise and mlock state, mappings of deleted files, each checked
//! from inside the restored processes by their workloads.
#![allow(clippy::panic, clippy::unwrap_used)]

use crt_tests::roundtrip;

/// Pages neither side wrote since fork stay shared after restore (the
/// workload reads Shared_Dirty in its smaps), and each side keeps its own.
#[test]
fn cow_fork_roundtrip() {
    crt_tests::init!();
    roundtrip("cow_fork");
}

/// madvise state, mlock and mlockall(MCL_FUTURE|MCL_ONFAULT), guard
/// regions, zero-page mappings of a large sparse area, and shared
/// anonymous memory mapped at a non-zero offset.
#[test]
fn memstate_roundtrip() {
    crt_tests::init!();
    roundtrip("memstate");
}
