//! A process writing to a terminal (the test holds the pty master): after
//! restore it writes to the same terminal, with no line lost or repeated.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::io::Read;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crt_tests::{dump, Restored, TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP};

/// Opens a pty pair; returns the master and the slave's path.
fn pty() -> (std::fs::File, String) {
    // SAFETY: plain syscalls; the returned fd is owned by the File below.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
    assert!(m >= 0);
    // SAFETY: `m` is a pty master we own.
    assert_eq!(unsafe { libc::grantpt(m) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::unlockpt(m) }, 0);
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: `name` has room for 64 bytes, as passed.
    assert_eq!(unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) }, 0);
    // SAFETY: ptsname_r wrote a NUL-terminated string into `name`.
    let slave = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    // Non-blocking, so the reader thread can always stop.
    // SAFETY: fcntl on the fd we own.
    unsafe { libc::fcntl(m, libc::F_SETFL, libc::O_NONBLOCK) };
    // SAFETY: `m` was just created and is owned here.
    (unsafe { std::fs::File::from_raw_fd(m) }, slave)
}

/// The numbers of the "TTY n" lines in `text`.
fn numbers(text: &str) -> Vec<u64> {
    text.lines().filter_map(|l| l.trim().strip_prefix("TTY ")).filter_map(|n| n.parse().ok()).collect()
}

#[test]
fn terminal_output_continues_after_restore() {
    crt_tests::init!();
    let (mut master, slave) = pty();
    let out = Arc::new(Mutex::new(String::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (out, stop) = (out.clone(), stop.clone());
        move || {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                match master.read(&mut buf) {
                    Ok(0) | Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    Ok(n) => out.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n])),
                }
                if out.lock().unwrap().contains("END") {
                    break;
                }
            }
        }
    });
    let w = Workload::spawn_with_env("tty_writer", &[("CRT_PTY", &slave)]);
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);
    let dir = TestDir::new("crt-tty-");
    let img = dir.path().join("img");
    dump(&[&w], &img, &[]).assert_success();
    let before = numbers(&out.lock().unwrap()).len();
    let mut r = Restored::start(&img, &[]);
    r.wait_running(&[&w]);
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&[&w]);
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let text = out.lock().unwrap().clone();
    let got = numbers(&text);
    assert!(got.len() > before + 10, "no lines after restore ({} before, {} in all)", before, got.len());
    for (i, n) in got.iter().enumerate() {
        assert_eq!(*n, i as u64, "line {i} says TTY {n}: a gap or a repeat across the dump");
    }
    assert!(text.contains("END"), "the final write reached the terminal");
}
