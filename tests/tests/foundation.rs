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

/// `pauser`, settled in `pause()`, dumped (and killed); with its image.
fn dumped_pauser() -> (Workload, TestDir) {
    let w = Workload::spawn("pauser");
    let img = TestDir::new("crt-img-");
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);
    dump(&[&w], img.path(), &[]).assert_success();
    (w, img)
}

/// A signal pending when the restored task resumes must interrupt the
/// syscall it was frozen in, as it would have without the freeze: `pauser`
/// sits in `pause()`; a SIGUSR1 is added to its pending signals in the image,
/// so restore queues it before the task runs. The kernel must run the handler
/// and make `pause()` return EINTR (one `WOKE`), not re-enter `pause()` with
/// the signal already consumed (no `WOKE`: the workload sleeps on).
#[test]
fn pending_signal_interrupts_the_frozen_syscall() {
    use crt_core::images::{pb, ImageDir, Kind};
    crt_tests::init!();
    let (w, img) = dumped_pauser();

    let dir = ImageDir::new(img.path());
    let mut task = dir.read_task(w.pid()).unwrap();
    let mut raw = vec![0u8; 128];
    raw[0..4].copy_from_slice(&libc::SIGUSR1.to_le_bytes());
    raw[8..12].copy_from_slice(&libc::SI_QUEUE.to_le_bytes());
    task.shared_pending.push(pb::SigInfo { raw });
    dir.write_msg(&dir.task_path(w.pid()), Kind::Task, &task).unwrap();

    let woke = w.log_count("WOKE");
    let mut r = Restored::start(img.path(), &[]);
    r.wait_running(&[&w]);
    w.wait_log_count("WOKE", woke + 1, std::time::Duration::from_secs(5));
    r.finish(&[&w]);
}

/// A signal sent to a process while crt is still rebuilding it is neither
/// lost nor delivered early: crt holds `pauser` for a second after
/// rebuilding its memory and files (`CRT_FAULT=restore-after-task:sleep=1000`),
/// the test sends SIGUSR1 then, and after the resume `pause()` must return
/// EINTR once (`WOKE`), though crt ran syscalls inside the process meanwhile.
#[test]
fn signal_sent_during_restore_arrives_after_it() {
    use std::time::Duration;
    crt_tests::init!();
    let (w, img) = dumped_pauser();

    let woke = w.log_count("WOKE");
    let mut r = Restored::start_env(img.path(), &[], &[("CRT_FAULT", "restore-after-task:sleep=1000")]);
    let crt = r.pid().to_string();
    let held = crt_tests::poll_until(READY_TIMEOUT, || {
        crt_tests::proc_status_field(w.pid(), "TracerPid").as_deref() == Some(crt.as_str())
    });
    assert!(held, "pid {} never appeared under crt restore", w.pid());
    std::thread::sleep(Duration::from_millis(200));
    crt_tests::send_signal(w.pid(), libc::SIGUSR1);
    r.wait_running(&[&w]);
    w.wait_log_count("WOKE", woke + 1, Duration::from_secs(5));
    r.finish(&[&w]);
}

/// Signals sent while crt holds a process during `dump --leave-running`
/// reach it after the release and do no harm: crt's own syscalls inside the
/// process take them off the queue, and crt must queue each back. `pauser`
/// gets SIGUSR1 and SIGCONT while crt is held at `dump-after-collect`; it
/// must survive (a SIGCONT once left the step's SIGTRAP queued, which killed
/// it) and wake once for the SIGUSR1.
#[test]
fn signals_sent_during_dump_arrive_after_it() {
    use std::time::Duration;
    crt_tests::init!();
    let w = Workload::spawn("pauser");
    let img = TestDir::new("crt-img-");
    w.wait_ready(READY_TIMEOUT);
    let pid = w.pid();
    let sender = std::thread::spawn(move || {
        let frozen = crt_tests::poll_until(READY_TIMEOUT, || {
            crt_tests::proc_status_field(pid, "TracerPid").is_some_and(|t| t != "0")
        });
        std::thread::sleep(Duration::from_millis(300));
        crt_tests::send_signal(pid, libc::SIGUSR1);
        crt_tests::send_signal(pid, libc::SIGCONT);
        frozen
    });
    let woke = w.log_count("WOKE");
    crt_tests::dump_env(&[&w], img.path(), &["--leave-running"], &[("CRT_FAULT", "dump-after-collect:sleep=1500")])
        .assert_success();
    assert!(sender.join().unwrap(), "crt dump never held pid {pid}");
    w.wait_log_count("WOKE", woke + 1, Duration::from_secs(5));
    w.terminate_and_check();
}
