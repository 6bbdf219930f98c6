//! More forests: named FIFOs, memfds, children sharing their parent's fd
//! table and fs state (CLONE_FILES|CLONE_FS), interval timers and rlimits;
//! and failures injected late in dump and restore (`CRT_FAULT`, passed to
//! the crt process only): a failed dump leaves every process running as
//! before and no image file; a failed restore kills every process it made
//! and leaves the images untouched, and a normal restore then works.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use crt_tests::{
    assert_image_files, poll_until, proc_state, proc_status_field, reap_strays, CrtOutput, DirSnapshot, Forest,
    Restored, Workload, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP,
};

fn forest(names: &[&str]) {
    crt_tests::init!();
    Forest::spawn(names).roundtrip();
}

// ---- round trips of the new workloads ---------------------------------------

/// A FIFO in the workdir, opened by path by a writer and a reader child,
/// kilobytes buffered at dump time.
#[test]
fn fifo_pair_roundtrip() {
    forest(&["fifo_pair"]);
}

/// One memfd: an fd in each process (two open file descriptions) and a
/// MAP_SHARED mapping of it in both.
#[test]
fn memfd_share_roundtrip() {
    forest(&["memfd_share"]);
}

/// A child made with clone3(CLONE_FILES|CLONE_FS): fds, cwd and umask
/// stay shared with its parent after restore.
#[test]
fn clone_files_roundtrip() {
    forest(&["clone_files"]);
}

/// A periodic ITIMER_REAL keeps ticking; RLIMIT_NOFILE and RLIMIT_CORE
/// unchanged and enforced.
#[test]
fn timers_rlimits_roundtrip() {
    forest(&["timers_rlimits"]);
}

#[test]
fn forest_of_fifo_memfd_clone_files_timers() {
    forest(&["fifo_pair", "memfd_share", "clone_files", "timers_rlimits", "pipe_pair"]);
}

// ---- helpers ------------------------------------------------------------------

/// Every pid of every tree of the forest (roots and recorded roles).
fn forest_pids(f: &Forest) -> Vec<i32> {
    f.workloads.iter().flat_map(Workload::all_pids).collect()
}

/// After a failed restore: polls /proc (reaping what is re-parented to
/// us) until none of `pids` exists, at most 2 s; then watches 300 ms more
/// that none comes back.
fn assert_no_pid_exists(pids: &[i32], out: &CrtOutput) {
    let exists = |p: &i32| Path::new(&format!("/proc/{p}")).exists();
    let gone = poll_until(Duration::from_secs(2), || {
        reap_strays();
        !pids.iter().any(exists)
    });
    let left: Vec<String> =
        pids.iter().filter(|p| exists(p)).map(|p| format!("{p} (state {:?})", proc_state(*p))).collect();
    assert!(gone, "the failed restore left process(es) behind: {left:?}\n{out}");
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        reap_strays();
        let back: Vec<&i32> = pids.iter().filter(|p| exists(p)).collect();
        assert!(back.is_empty(), "pid(s) {back:?} of the image appeared after the failed restore\n{out}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The point named in a `CRT_FAULT` value (`point[:n]`).
fn point(fault: &str) -> &str {
    fault.split(':').next().unwrap()
}

// ---- restores that fail late ------------------------------------------------------

/// Dumps (killing) the forest `names`, then runs `crt restore` with
/// `CRT_FAULT=fault`: it must fail with the injected-failure message, no
/// pid of the image may exist afterwards, the image directory must be
/// unchanged; then a normal restore of the same image must succeed and
/// every workload PASS.
fn restore_fault(names: &[&str], fault: &str) {
    crt_tests::init!();
    let f = Forest::spawn(names);
    f.wait_ready();
    f.assert_trees("before the dump");
    std::thread::sleep(RUN_BEFORE_DUMP);
    f.dump(&[]).assert_success();
    assert_image_files(f.img_dir(), &f.refs());
    let pids = forest_pids(&f);
    assert!(pids.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists()), "pids not free after the dump");

    let before = DirSnapshot::take(f.img_dir());
    let mut r = Restored::start_env(f.img_dir(), &[], &[("CRT_FAULT", fault)]);
    let out = r.wait_exit(Duration::from_secs(30));
    out.assert_failure().assert_stderr_contains(&format!("injected failure at {}", point(fault)));
    eprintln!("the failed restore, as expected:\n{out}");
    assert_no_pid_exists(&pids, &out);
    assert_eq!(before, DirSnapshot::take(f.img_dir()), "a failed restore changed the images\n{out}");

    // the same image, restored for real
    let r = f.restore(&[]);
    std::thread::sleep(RUN_AFTER_RESTORE);
    for w in &f.workloads {
        w.exercise();
    }
    r.finish(&f.refs());
}

/// Fails right after the second process of the forest (a child of the
/// first root) was created and rebuilt.
#[test]
fn restore_fails_after_second_task() {
    restore_fault(&["tree_pipes", "pipe_pair"], "restore-after-task:2");
}

/// Fails after the first process of the second root: the whole first tree
/// (5 processes) is already built.
#[test]
fn restore_fails_after_first_task_of_second_root() {
    restore_fault(&["tree_pipes", "pipe_pair"], "restore-after-task:6");
}

/// Fails after the very first process.
#[test]
fn restore_fails_after_first_task() {
    restore_fault(&["pipe_pair", "tree_pipes"], "restore-after-task:1");
}

/// Everything built (pipes refilled), nothing released yet.
#[test]
fn restore_fails_before_resume() {
    restore_fault(&["tree_pipes", "pipe_pair"], "restore-before-resume");
}

/// A FIFO with buffered bytes and a memfd shared by two processes: a
/// restore that fails with all of them built must not lose the FIFO's bytes
/// nor the memfd's contents for the next restore.
#[test]
fn restore_fails_before_resume_with_fifo_and_memfd() {
    restore_fault(&["fifo_pair", "memfd_share", "clone_files"], "restore-before-resume");
}

#[test]
fn restore_fails_after_task_with_fifo_and_memfd() {
    restore_fault(&["fifo_pair", "memfd_share"], "restore-after-task:3");
}

// ---- dumps that fail late ---------------------------------------------------------

/// Runs a failing dump with `CRT_FAULT=fault` on a forest holding pipes
/// with bytes in flight (tree_pipes: a ring of 5 pipes; pipe_pair: a full
/// pipe between two roots): crt must fail with the injected-failure
/// message, leave no file in the image directory, and every original
/// process must be running, untraced and not stopped ([`crt_tests::dump`]
/// checks the trees and that the directory is unchanged). Then either the
/// workloads are terminated and must PASS (no byte lost, sequences go on),
/// or (`then_roundtrip`) the same forest goes through a normal dump and
/// restore and must PASS.
fn dump_fault(names: &[&str], fault: &str, then_roundtrip: bool) {
    crt_tests::init!();
    let f = Forest::spawn(names);
    f.wait_ready();
    f.assert_trees("before the dump");
    std::thread::sleep(RUN_BEFORE_DUMP);
    let out = f.dump_env(&[], &[("CRT_FAULT", fault)]);
    out.assert_failure().assert_stderr_contains(&format!("injected failure at {}", point(fault)));
    eprintln!("the failed dump, as expected:\n{out}");
    let snap = DirSnapshot::take(f.img_dir());
    assert!(snap.is_empty(), "a failed dump left files in {}: {snap:?}\n{out}", f.img_dir().display());
    // every process: alive, untraced, running (not left stopped by crt)
    std::thread::sleep(Duration::from_millis(50));
    for w in &f.workloads {
        w.assert_alive("after the failed dump");
        w.assert_tree("after the failed dump");
        for pid in w.all_pids() {
            let state = proc_state(pid);
            let tracer = proc_status_field(pid, "TracerPid");
            assert!(
                matches!(state, Some('R' | 'S' | 'D')) && tracer.as_deref() == Some("0"),
                "after the failed dump: pid {pid} of {}: state {state:?} TracerPid {tracer:?}\n{out}\nlog:\n{}",
                w.name(),
                w.log()
            );
        }
    }
    if then_roundtrip {
        std::thread::sleep(RUN_BEFORE_DUMP);
        f.dump(&[]).assert_success();
        assert_image_files(f.img_dir(), &f.refs());
        let r = f.restore(&[]);
        std::thread::sleep(RUN_AFTER_RESTORE);
        for w in &f.workloads {
            w.exercise();
        }
        r.finish(&f.refs());
    } else {
        std::thread::sleep(RUN_AFTER_RESTORE);
        for w in &f.workloads {
            w.exercise();
        }
        for w in &f.workloads {
            w.terminate_and_check();
        }
    }
}

#[test]
fn dump_fails_after_collect() {
    dump_fault(&["tree_pipes", "pipe_pair"], "dump-after-collect", false);
}

#[test]
fn dump_fails_after_pages() {
    dump_fault(&["tree_pipes", "pipe_pair"], "dump-after-pages", false);
}

/// After a dump that failed late, the same processes dump and restore
/// normally.
#[test]
fn dump_fails_after_pages_then_roundtrip() {
    dump_fault(&["tree_pipes", "pipe_pair"], "dump-after-pages", true);
}

/// The same with a FIFO, a memfd and a shared fd table in the forest.
#[test]
fn dump_fails_after_collect_with_fifo_memfd_clone_files() {
    dump_fault(&["fifo_pair", "memfd_share", "clone_files", "pipe_pair"], "dump-after-collect", false);
}

#[test]
fn dump_fails_after_pages_with_fifo_memfd_clone_files_then_roundtrip() {
    dump_fault(&["fifo_pair", "memfd_share", "clone_files", "timers_rlimits"], "dump-after-pages", true);
}
