//! A process's cgroup and root directory come back with it.
#![allow(clippy::panic, clippy::unwrap_used)]

use crt_tests::{roundtrip, Restored, TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP};

/// The cgroup v2 mount point, if there is one.
fn cgroup2_mount() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right.starts_with("cgroup2 ").then(|| left.split_whitespace().nth(4).map(String::from))?
    })
}

#[test]
fn process_returns_to_its_cgroup() {
    crt_tests::init!();
    let Some(mount) = cgroup2_mount() else {
        eprintln!("no cgroup2 mount: skipped");
        return;
    };
    let name = format!("crt-test-{}", std::process::id());
    let dir = format!("{mount}/{name}");
    std::fs::create_dir_all(&dir).unwrap();
    let w = Workload::spawn("counters");
    w.wait_ready(READY_TIMEOUT);
    std::fs::write(format!("{dir}/cgroup.procs"), w.pid().to_string()).unwrap();
    std::thread::sleep(RUN_BEFORE_DUMP);
    let tmp = TestDir::new("crt-cgroup-");
    let img = tmp.path().join("img");
    crt_tests::dump(&[&w], &img, &[]).assert_success();
    let mut r = Restored::start(&img, &[]);
    r.wait_running(&[&w]);
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", w.pid())).unwrap();
    assert!(cg.lines().any(|l| l == format!("0::/{name}")), "not back in /{name}:\n{cg}");
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&[&w]);
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn chroot_comes_back() {
    crt_tests::init!();
    roundtrip("chrooted");
}
