//! Bad input: missing pids, corrupted or truncated images, busy pids,
//! missing or wrong directories. crt must fail with a clear message, never
//! panic, and leave images and processes untouched.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::path::Path;

use crt_tests::{
    crt, crt_with_timeout, dump, flip_bytes_in_middle, pid_alive, task_image, truncate_to_half, DirSnapshot, Restored,
    TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP,
};
use std::time::Duration;

/// A pid that does not exist now.
fn unused_pid() -> i32 {
    (999_999..).find(|p| !Path::new(&format!("/proc/{p}")).exists()).unwrap()
}

#[test]
fn dump_of_missing_pid_fails() {
    crt_tests::init!();
    let img = TestDir::new("crt-img-");
    let pid = unused_pid();
    let out = crt(&["dump", "--tree", &pid.to_string(), "-D", &img.path().to_string_lossy()]);
    out.assert_failure().assert_stderr_mentions_number(pid);
    let snap = DirSnapshot::take(img.path());
    assert!(snap.is_empty(), "failed dump left files: {snap:?}");
}

/// Dumps a fresh `counters` (killing it) and returns it with its images.
fn dumped_counters() -> (Workload, TestDir) {
    let w = Workload::spawn("counters");
    let img = TestDir::new("crt-img-");
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);
    dump(&[&w], img.path(), &[]).assert_success();
    (w, img)
}

/// Restore of a damaged image: fails naming the file, leaves the images as
/// they were and no process with the dumped pid behind.
fn restore_must_fail_on(w: &Workload, img: &Path, damaged: &Path) {
    let before = DirSnapshot::take(img);
    let out = crt_with_timeout(&["restore", "-D", &img.to_string_lossy()], Duration::from_secs(30));
    let file = damaged.file_name().unwrap().to_string_lossy().into_owned();
    out.assert_failure().assert_stderr_contains(&file);
    assert_eq!(before, DirSnapshot::take(img), "a failed restore changed the images\n{out}");
    crt_tests::reap_strays();
    assert!(
        crt_tests::poll_until(Duration::from_secs(2), || !pid_alive(w.pid())),
        "a failed restore left pid {} running\n{out}",
        w.pid()
    );
}

#[test]
fn restore_of_corrupted_task_image_fails() {
    crt_tests::init!();
    let (w, img) = dumped_counters();
    let task = task_image(img.path(), w.pid());
    flip_bytes_in_middle(&task, 8);
    restore_must_fail_on(&w, img.path(), &task);
}

#[test]
fn restore_of_truncated_task_image_fails() {
    crt_tests::init!();
    let (w, img) = dumped_counters();
    let task = task_image(img.path(), w.pid());
    truncate_to_half(&task);
    restore_must_fail_on(&w, img.path(), &task);
}

#[test]
fn restore_onto_busy_pid_fails() {
    crt_tests::init!();
    let w = Workload::spawn("counters");
    let img = TestDir::new("crt-img-");
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);
    dump(&[&w], img.path(), &["--leave-running"]).assert_success();

    let before = DirSnapshot::take(img.path());
    let mut r = Restored::start(img.path(), &[]);
    let out = r.wait_exit(Duration::from_secs(30));
    out.assert_failure().assert_stderr_mentions_number(w.pid());
    assert_eq!(before, DirSnapshot::take(img.path()), "a failed restore changed the images");

    // the original is unharmed
    w.assert_alive("after the refused restore");
    assert_eq!(crt_tests::proc_status_field(w.pid(), "TracerPid").as_deref(), Some("0"));
    std::thread::sleep(RUN_AFTER_RESTORE);
    w.terminate_and_check();
}

#[test]
fn restore_from_missing_dir_fails() {
    crt_tests::init!();
    let out = crt(&["restore", "-D", "/nonexistent"]);
    out.assert_failure().assert_stderr_contains("/nonexistent");
}

#[test]
fn dump_into_a_regular_file_fails() {
    crt_tests::init!();
    let w = Workload::spawn("counters");
    let tmp = TestDir::new("crt-notdir-");
    let file = tmp.path().join("images");
    std::fs::write(&file, b"not a directory\n").unwrap();
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);

    let out = dump(&[&w], &file, &[]);
    out.assert_failure().assert_stderr_contains(&file.to_string_lossy());
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory\n", "the file was modified");
    w.assert_alive("after the failed dump");
    std::thread::sleep(RUN_AFTER_RESTORE);
    w.terminate_and_check();
}
