//! The AIO plugin (plugins/aio, a separately built `.so`): unreaped
//! completions come back exactly, contexts keep working, refusal without
//! the plugin, contexts in a multi-threaded process and in a forest, and
//! completions that arrive while the task is frozen.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use crt_tests::{
    dump, Forest, PluginDir, Restored, TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP,
};

fn roundtrip_with(ws: &[&Workload], plugins: &PluginDir, extra: &[&str]) {
    let [a, b] = plugins.args();
    let mut args = vec![a.as_str(), b.as_str()];
    args.extend_from_slice(extra);
    let dir = TestDir::new("crt-aio-img-");
    let img = dir.path().join("img");
    dump(ws, &img, &args).assert_success();
    let mut r = Restored::start(&img, &args);
    r.wait_running(ws);
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(ws);
}

#[test]
fn unreaped_events_come_back_exactly() {
    crt_tests::init!();
    let plugins = PluginDir::with(&["crt-plugin-aio"]);
    let w = Workload::spawn_with_env("aio_events", &[("CRT_AIO_CONTEXTS", "3")]);
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);
    roundtrip_with(&[&w], &plugins, &[]);
}

#[test]
fn contexts_in_a_multithreaded_process() {
    crt_tests::init!();
    let plugins = PluginDir::with(&["crt-plugin-aio"]);
    let w = Workload::spawn_with_env("aio_events", &[("CRT_AIO_THREADS", "3")]);
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);
    roundtrip_with(&[&w], &plugins, &[]);
}

#[test]
fn forest_of_two_processes_with_contexts() {
    crt_tests::init!();
    let plugins = PluginDir::with(&["crt-plugin-aio"]);
    let f = Forest::spawn(&["aio_events", "aio_events", "counters"]);
    f.wait_ready();
    std::thread::sleep(RUN_BEFORE_DUMP);
    roundtrip_with(&f.refs(), &plugins, &[]);
}

#[test]
fn refused_without_the_plugin_and_the_task_runs_on() {
    crt_tests::init!();
    let w = Workload::spawn("aio_events");
    w.wait_ready(READY_TIMEOUT);
    let dir = TestDir::new("crt-aio-img-");
    let img = dir.path().join("img");
    dump(&[&w], &img, &[])
        .assert_failure()
        .assert_stderr_contains("crt-plugin-aio")
        .assert_stderr_mentions_number(w.pid());
    assert!(!img.join("inventory.img").exists());
    w.assert_alive("after a refused dump");
    w.terminate_and_check();
}

/// A POLLIN request on a FIFO that the test completes while crt is dumping
/// (the task frozen): `completes == true` gives crt a settle window that
/// catches it (the event must come back after restore); `false` gives a
/// timeout shorter than the settle window, so the dump must fail cleanly.
fn completion_during_dump(completes: bool) {
    let plugins = PluginDir::with(&["crt-plugin-aio"]);
    let dir = TestDir::new("crt-aio-fifo-");
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let w = Workload::spawn_with_env("aio_events", &[("CRT_AIO_POLL_FIFO", fifo.to_str().unwrap())]);
    w.wait_ready(READY_TIMEOUT);
    let opts: &[&str] = if completes {
        &["-o", "aio:settle-ms=1500", "-o", "aio:timeout-ms=5000"]
    } else {
        &["-o", "aio:settle-ms=1500", "-o", "aio:timeout-ms=300"]
    };
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            std::thread::sleep(Duration::from_millis(150));
            let mut f =
                std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo).expect("open fifo");
            f.write_all(b"x").expect("write fifo");
        }
    });
    let img = dir.path().join("img");
    let [a, b] = plugins.args();
    let mut args = vec![a.as_str(), b.as_str()];
    args.extend_from_slice(opts);
    let out = dump(&[&w], &img, &args);
    writer.join().unwrap();
    if completes {
        out.assert_success();
        let mut r = Restored::start(&img, &args);
        r.wait_running(&[&w]);
        std::thread::sleep(RUN_AFTER_RESTORE);
        r.finish(&[&w]);
    } else {
        out.assert_failure().assert_stderr_contains("still completing").assert_stderr_contains("aio:timeout-ms");
        w.assert_alive("after a timed-out dump");
        w.terminate_and_check();
    }
}

#[test]
fn completion_while_frozen_is_captured() {
    crt_tests::init!();
    completion_during_dump(true);
}

#[test]
fn completions_past_the_timeout_fail_the_dump_cleanly() {
    crt_tests::init!();
    completion_during_dump(false);
}

#[test]
fn found_in_the_default_directory_and_crt_plugin_dir() {
    crt_tests::init!();
    let so = crt_tests::plugin_so("crt-plugin-aio");
    // $CRT_PLUGIN_DIR
    let plugins = PluginDir::with(&["crt-plugin-aio"]);
    let out = crt_tests::crt_env(&["plugins"], &[("CRT_PLUGIN_DIR", plugins.path().to_str().unwrap())]);
    assert!(out.stdout.contains("crt-plugin-aio"), "{}", out.stdout);
    // /usr/lib/crt, the default (created for the test if missing, then removed)
    let default = std::path::Path::new("/usr/lib/crt");
    let created = !default.exists();
    if created {
        std::fs::create_dir_all(default).unwrap();
    }
    let target = default.join(format!("crt-test-{}-libcrt_plugin_aio.so", std::process::id()));
    std::fs::copy(&so, &target).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = crt_tests::crt(&["plugins"]);
    let _ = std::fs::remove_file(&target);
    if created {
        let _ = std::fs::remove_dir(default);
    }
    assert!(out.stdout.contains("crt-plugin-aio") && out.stdout.contains(target.to_str().unwrap()), "{}", out.stdout);
}
