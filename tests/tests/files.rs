//! Files: directories, `O_PATH` fds, `/proc` fds, the state of every open
//! file description (flags, `SIGIO` owner and signal, leases, locks), each
//! checked from inside the restored process by its workload.
#![allow(clippy::panic, clippy::unwrap_used)]

use crt_tests::roundtrip;

#[test]
fn fd_state_roundtrip() {
    crt_tests::init!();
    roundtrip("fd_state");
}

#[test]
fn ghosts_roundtrip() {
    crt_tests::init!();
    roundtrip("ghosts");
}

/// pidfds of the process itself, of a child restored after it, of a
/// thread, of a process outside the forest, and of a reaped child.
#[test]
fn pidfds_roundtrip() {
    crt_tests::init!();
    roundtrip("pidfds");
}
