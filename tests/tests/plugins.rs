//! Plugins: loading from a plugin directory, every hook in its documented
//! order, refusals with a reason, failing hooks, declining plugins, and
//! images that name the plugin they need.
#![allow(clippy::panic, clippy::unwrap_used)]

use crt_tests::{
    crt, crt_env, dump, DirSnapshot, PluginDir, Restored, TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE,
    RUN_BEFORE_DUMP,
};

fn start(name: &str) -> Workload {
    let w = Workload::spawn(name);
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);
    w
}

#[test]
fn recorder_sees_every_hook_in_order_and_restore_passes() {
    crt_tests::init!();
    let plugins = PluginDir::with(&["crt-plugin-recorder"]);
    let work = TestDir::new("crt-plugin-log-");
    let log = work.path().join("hooks.log");
    let opt = format!("recorder:log={}", log.display());
    let marker = work.path().join("installed-by-plugin");
    std::fs::write(&marker, b"x").unwrap();
    let install = format!("recorder:install={}", marker.display());
    let w = start("plugin_file");
    let img = work.path().join("img");
    let [a, b] = plugins.args();
    dump(&[&w], &img, &[&a, &b, "-o", &opt]).assert_success();
    assert!(img.join("blobs.img").exists(), "the plugin's blob store is in the image");
    let mut r = Restored::start(&img, &[&a, &b, "-o", &opt, "-o", &install]);
    r.wait_running(&[&w]);
    let link = std::fs::read_link(format!("/proc/{}/fd/99", w.pid())).unwrap();
    assert_eq!(link, marker, "Task::install_fd put the plugin's fd at 99");
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&[&w]);
    let hooks: Vec<String> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| l.split(' ').next().unwrap_or("").to_string()).collect();
    let want = [
        "dump_init",
        "dump_pause",
        "dump_checkpoint",
        "dump_fd",
        "dump_finish",
        "restore_init",
        "restore_after_fork",
        "restore_fd",
        "restore_resume",
        "restore_finish",
    ];
    assert_eq!(hooks, want, "hook order");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("dump_init {}", w.pid())), "dump_init got the roots: {text}");
    assert!(text.contains("dump_finish true") && text.contains("restore_finish true"), "{text}");
}

#[test]
fn bad_plugin_files_are_refused_with_a_reason() {
    crt_tests::init!();
    let plugins = PluginDir::with(&["crt-plugin-recorder", "crt-plugin-abi-mismatch", "crt-plugin-template"]);
    plugins.add_file("random.so", &[0x5a; 4096]);
    let libm = std::fs::read("/usr/lib/x86_64-linux-gnu/libm.so.6").unwrap();
    plugins.add_file("notaplugin.so", &libm);
    let writable =
        plugins.add_file("writable.so", &std::fs::read(crt_tests::plugin_so("crt-plugin-template")).unwrap());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).unwrap();
    let [a, b] = plugins.args();
    let out = crt(&[a.as_str(), b.as_str(), "plugins"]);
    out.assert_success();
    let s = &out.stdout;
    let line = |needle: &str| s.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle} in:\n{s}"));
    assert!(line("random.so").contains("not a loadable shared library"), "{s}");
    assert!(line("notaplugin.so").contains("not a crt plugin"), "{s}");
    let abi = line("abi_mismatch");
    assert!(abi.contains("ABI 999") && abi.contains("accepts ABI 1"), "{s}");
    assert!(line("writable.so").contains("writable by group or others"), "{s}");
    assert!(s.contains("crt-plugin-recorder 0.1.0 (ABI 1)") && s.contains("handlers: recorder"), "{s}");
    // Bad files around do not break a dump and restore.
    let w = start("counters");
    let work = TestDir::new("crt-plugin-img-");
    let img = work.path().join("img");
    dump(&[&w], &img, &[&a, &b]).assert_success();
    let mut r = Restored::start(&img, &[&a, &b]);
    r.wait_running(&[&w]);
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&[&w]);
}

#[test]
fn failing_hook_fails_the_dump_and_the_task_runs_on() {
    crt_tests::init!();
    let plugins = PluginDir::with(&["crt-plugin-recorder"]);
    let [a, b] = plugins.args();
    let w = start("plugin_file");
    let work = TestDir::new("crt-plugin-img-");
    let img = work.path().join("img");
    for hook in ["dump_pause", "dump_checkpoint", "dump_fd"] {
        let opt = format!("recorder:fail={hook}");
        let out = dump(&[&w], &img, &[&a, &b, "-o", &opt]);
        out.assert_failure().assert_stderr_contains("recorder").assert_stderr_contains(hook);
        assert!(!img.join("inventory.img").exists(), "no image after a failed dump");
        w.assert_alive("after a failed dump");
    }
    std::thread::sleep(RUN_AFTER_RESTORE);
    w.terminate_and_check();
}

#[test]
fn restore_names_the_missing_plugin_and_leaves_images_untouched() {
    crt_tests::init!();
    let plugins = PluginDir::with(&["crt-plugin-recorder"]);
    let [a, b] = plugins.args();
    let w = start("plugin_file");
    let work = TestDir::new("crt-plugin-img-");
    let img = work.path().join("img");
    dump(&[&w], &img, &[&a, &b]).assert_success();
    let before = DirSnapshot::take(&img);
    let img_s = img.to_string_lossy().into_owned();
    let out = crt(&["restore", "-D", img_s.as_str()]);
    out.assert_failure().assert_stderr_contains("crt-plugin-recorder").assert_stderr_contains("recorder");
    assert_eq!(DirSnapshot::take(&img), before, "images changed by a failed restore");
    assert!(!std::path::Path::new(&format!("/proc/{}", w.pid())).exists(), "task created by a refused restore");
    // With the plugin it restores.
    let mut r = Restored::start(&img, &[&a, &b]);
    r.wait_running(&[&w]);
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&[&w]);
}

#[test]
fn declining_plugin_does_not_fail_the_dump() {
    crt_tests::init!();
    let plugins = PluginDir::with(&["crt-plugin-recorder"]);
    let [a, b] = plugins.args();
    let env = [("CRT_RECORDER_DECLINE", "1")];
    let listing = crt_env(&[a.as_str(), b.as_str(), "plugins"], &env);
    listing.assert_success();
    assert!(listing.stdout.contains("declined: crt-plugin-recorder"), "{}", listing.stdout);
    assert!(!listing.stdout.contains("handlers: recorder"), "{}", listing.stdout);
    let w = start("counters");
    let work = TestDir::new("crt-plugin-img-");
    let img = work.path().join("img");
    let (pid, img_s) = (w.pid().to_string(), img.to_string_lossy().into_owned());
    crt_env(&[a.as_str(), b.as_str(), "dump", "--tree", pid.as_str(), "-D", img_s.as_str(), "--leave-running"], &env)
        .assert_success();
    assert!(img.join("inventory.img").exists());
    w.assert_alive("after --leave-running");
    // as in the other tests; the workload would pass without it too (it
    // drains after SIGTERM until it has run on after the dump's stall)
    std::thread::sleep(RUN_AFTER_RESTORE);
    w.terminate_and_check();
}
