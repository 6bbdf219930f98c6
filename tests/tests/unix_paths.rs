//! Socket files at restore: a stale socket file is replaced, a file that is
//! not a socket is a clear error (nothing left running, images untouched),
//! and a socket whose path was unlinked comes back without a visible path.
#![allow(clippy::panic, clippy::unwrap_used)]

use crt_tests::{dump, DirSnapshot, Restored, TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP};

#[test]
fn non_socket_file_at_the_path_is_refused_then_stale_socket_is_replaced() {
    crt_tests::init!();
    let w = Workload::spawn("unix_backlog");
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);
    let dir = TestDir::new("crt-unix-paths-");
    let img = dir.path().join("img");
    dump(&[&w], &img, &[]).assert_success();
    let sock = w.dir().join("listen.sock");
    assert!(sock.exists(), "the dumped process left its (now stale) socket file");
    // A regular file where the socket file was: refused, nothing created.
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, b"not a socket").unwrap();
    let before = DirSnapshot::take(&img);
    let out = crt_tests::crt(&["restore", "-D", img.to_str().unwrap()]);
    out.assert_failure().assert_stderr_contains("not a socket").assert_stderr_contains("listen.sock");
    assert_eq!(DirSnapshot::take(&img), before, "images untouched by a failed restore");
    assert!(!crt_tests::pid_alive(w.pid()), "no task left running after a failed restore");
    assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket", "the user's file was not touched");
    // A stale socket file there: replaced.
    std::fs::remove_file(&sock).unwrap();
    let stale = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    drop(stale);
    let mut r = Restored::start(&img, &[]);
    r.wait_running(&[&w]);
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&[&w]);
}

#[test]
fn unlinked_socket_path_stays_unlinked() {
    crt_tests::init!();
    let w = Workload::spawn("unix_unlinked");
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);
    let dir = TestDir::new("crt-unix-paths-");
    let img = dir.path().join("img");
    dump(&[&w], &img, &[]).assert_success();
    let mut r = Restored::start(&img, &[]);
    r.wait_running(&[&w]);
    assert!(!w.dir().join("gone.sock").exists(), "no visible path after restore");
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&[&w]);
}
