//! Round trips: each workload is dumped (killed), restored with the same
//! pid under crt restore, exercised, terminated, and must PASS.
#![allow(clippy::panic, clippy::unwrap_used)]

use crt_tests::{
    assert_image_files, dump, roundtrip, Restored, TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP,
};

fn rt(name: &str) {
    crt_tests::init!();
    roundtrip(name);
}

#[test]
fn counters_roundtrip() {
    rt("counters");
}

#[test]
fn file_offset_roundtrip() {
    rt("file_offset");
}

#[test]
fn signals_roundtrip() {
    rt("signals");
}

#[test]
fn sleeper_roundtrip() {
    rt("sleeper");
}

#[test]
fn pauser_roundtrip() {
    rt("pauser");
}

#[test]
fn avx_roundtrip() {
    rt("avx");
}

#[test]
fn vmas_roundtrip() {
    rt("vmas");
}

#[test]
fn rust_std_roundtrip() {
    rt(crt_tests::RUST_STD);
}

/// `--leave-running`: the original keeps running and passes; then, once it
/// is gone, the image restores and passes too.
#[test]
fn leave_running_then_restore() {
    crt_tests::init!();
    let w = Workload::spawn("counters");
    let img = TestDir::new("crt-img-");
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);
    dump(&[&w], img.path(), &["--leave-running"]).assert_success();
    assert_image_files(img.path(), &[&w]);
    std::thread::sleep(RUN_AFTER_RESTORE);
    w.assert_alive("dump --leave-running");
    w.terminate_and_check();

    // the restored copy must produce its own verdict after the original's
    w.mark_log();
    let mut r = Restored::start(img.path(), &[]);
    r.wait_running(&[&w]);
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&[&w]);
}

#[test]
fn deleted_open_files_roundtrip() {
    rt("ghost_file");
}
