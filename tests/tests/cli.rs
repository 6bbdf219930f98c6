//! The commands around dump and restore: `crt check`, `crt show`,
//! `--stats`, `--help`, and option errors.
#![allow(clippy::panic, clippy::unwrap_used)]

use crt_tests::{crt, dump, TestDir, Workload, READY_TIMEOUT};

#[test]
fn check_finds_every_required_feature() {
    crt_tests::init!();
    let out = crt(&["check"]);
    out.assert_success();
    for f in ["ptrace-seize", "clone3-set-tid", "pagemap-scan", "pidfd-getfd", "prctl-mm-map", "vdso-layout"] {
        let line =
            out.stdout.lines().find(|l| l.starts_with(f)).unwrap_or_else(|| panic!("{f} missing:\n{}", out.stdout));
        assert!(line.contains("present") && line.contains("required"), "{line}");
    }
}

#[test]
fn show_decodes_a_forest_image_and_stats_are_written() {
    crt_tests::init!();
    let w = Workload::spawn("tree_pipes");
    w.wait_ready(READY_TIMEOUT);
    let dir = TestDir::new("crt-cli-");
    let img = dir.path().join("img");
    let stats = dir.path().join("stats.json");
    dump(&[&w], &img, &["--leave-running", "--stats", stats.to_str().unwrap()]).assert_success();
    let tasks = crt_tests::stats_field(&stats, "tasks");
    assert_eq!(tasks, 5.0, "tree_pipes is a root, 3 children and a grandchild");
    assert!(crt_tests::stats_field(&stats, "peak_rss_kib") > 0.0);
    let out = crt(&["show", img.to_str().unwrap()]);
    out.assert_success();
    let v = &out.stdout;
    assert!(v.contains("\"forest\"") && v.contains("\"processes\"") && v.contains("\"shared_files\""), "{v}");
    let in_summary = v.matches("\"root\": true").count() + v.matches("\"root\": false").count();
    assert_eq!(in_summary, 5, "five processes in the forest summary:\n{v}");
    assert_eq!(v.matches("\"root\": true").count(), 1, "one root:\n{v}");
    // one image file alone
    let task = format!("task-{}.img", w.pid());
    let one = crt(&["show", img.to_str().unwrap(), task.as_str()]);
    one.assert_success();
    assert!(one.stdout.contains("\"regs_decoded\""), "{}", one.stdout);
    let bad = crt(&["show", img.to_str().unwrap(), "nope.img"]);
    bad.assert_failure().assert_stderr_contains("not an image name");
    std::thread::sleep(crt_tests::RUN_AFTER_RESTORE);
    w.terminate_and_check();
}

#[test]
fn bad_options_are_clear_errors() {
    crt_tests::init!();
    crt(&["-o", "nosuchhandler:x=1", "plugins"]).assert_failure().assert_stderr_contains("no such handler");
    crt(&["-o", "pipe:x=1", "plugins"]).assert_failure().assert_stderr_contains("unknown option");
    crt(&["dump", "-D", "/tmp/x"]).assert_failure().assert_stderr_contains("--tree");
    let help = crt(&["dump", "--help"]);
    help.assert_success();
    assert!(help.stdout.contains("Examples:") && help.stdout.contains("--leave-running"), "{}", help.stdout);
}
