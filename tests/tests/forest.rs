//! Forests: several process trees (roots with children, grandchildren,
//! threads, zombies, stopped tasks, sessions, shared pipes, files and
//! memory) dumped together with one `crt dump --tree A,B,...`, restored
//! together, exercised, terminated, and every root must PASS.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use crt_tests::{
    dump, pid_alive, proc_status_field, truncate_to_half, CrtOutput, DirSnapshot, Forest, Restored, TestDir, Workload,
    READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP, RUST_STD,
};

fn forest(names: &[&str]) {
    crt_tests::init!();
    Forest::spawn(names).roundtrip();
}

/// The single-process workloads of the foundation suite.
const FOUNDATION: &[&str] = &["counters", "file_offset", "signals", "sleeper", "pauser", "avx", "vmas", RUST_STD];

// ---- foundation workloads, several at once --------------------------------

#[test]
fn forest_counters_file_offset_signals() {
    forest(&["counters", "file_offset", "signals"]);
}

#[test]
fn forest_sleeper_pauser_avx() {
    forest(&["sleeper", "pauser", "avx"]);
}

#[test]
fn forest_vmas_rust_std_counters() {
    forest(&["vmas", RUST_STD, "counters"]);
}

#[test]
fn forest_of_all_foundation_workloads() {
    forest(FOUNDATION);
}

// ---- forest workloads -------------------------------------------------------

#[test]
fn tree_pipes_roundtrip() {
    forest(&["tree_pipes"]);
}

#[test]
fn tree_pipes_with_counters() {
    forest(&["counters", "tree_pipes"]);
}

#[test]
fn threads4_roundtrip() {
    forest(&["threads4"]);
}

#[test]
fn zombie_roundtrip() {
    forest(&["zombie"]);
}

/// `stopped` is SIGSTOPped before the dump, must come back stopped (and
/// stay so, see `Workload::exercise`), and runs on after SIGCONT.
#[test]
fn stopped_roundtrip() {
    forest(&["stopped", "sleeper"]);
}

#[test]
fn session_roundtrip() {
    forest(&["session"]);
}

#[test]
fn shared_file_roundtrip() {
    forest(&["shared_file"]);
}

#[test]
fn shared_mem_roundtrip() {
    forest(&["shared_mem"]);
}

/// Two separate roots (writer W, reader R, both adopted by the harness)
/// joined by a pipe holding kilobytes at dump time.
#[test]
fn pipe_pair_roundtrip() {
    forest(&["pipe_pair"]);
}

#[test]
fn forest_of_all_new_workloads() {
    forest(&["tree_pipes", "threads4", "zombie", "stopped", "session", "shared_file", "shared_mem", "pipe_pair"]);
}

/// The same without `zombie`: so a crt limit on zombies does not hide how
/// the rest fares together.
#[test]
fn forest_of_new_workloads_but_zombie() {
    forest(&["tree_pipes", "threads4", "stopped", "session", "shared_file", "shared_mem", "pipe_pair", "counters"]);
}

// ---- refusals ---------------------------------------------------------------

/// Dumps only `dumped` of a running pipe_pair, whose pipe peer stays
/// outside the forest: crt must refuse, naming both pids, leave no image
/// files, and both ends must go on and pass.
fn outside_pipe(dumped: usize) {
    crt_tests::init!();
    let ws = Workload::spawn_group("pipe_pair");
    for w in &ws {
        w.wait_ready(READY_TIMEOUT);
    }
    std::thread::sleep(RUN_BEFORE_DUMP);
    let inside = &ws[dumped];
    let outside = &ws[1 - dumped];
    let img = TestDir::new("crt-img-");
    let out = dump(&[inside], img.path(), &[]);
    out.assert_failure().assert_stderr_mentions_number(inside.pid()).assert_stderr_mentions_number(outside.pid());
    let snap = DirSnapshot::take(img.path());
    assert!(snap.is_empty(), "a refused dump left files in {}: {snap:?}", img.path().display());
    for w in &ws {
        w.assert_alive("after the refused dump");
        assert_eq!(proc_status_field(w.pid(), "TracerPid").as_deref(), Some("0"), "{} still traced", w.name());
    }
    std::thread::sleep(RUN_AFTER_RESTORE);
    for w in &ws {
        w.terminate_and_check();
    }
}

#[test]
fn outside_pipe_writer_only_is_refused() {
    outside_pipe(0);
}

#[test]
fn outside_pipe_reader_only_is_refused() {
    outside_pipe(1);
}

// ---- a restore that fails half-way -------------------------------------------

/// Dumps `[first, second]` with --leave-running, kills workload `killed`
/// (its whole tree) and keeps the other running, so the other's pid is busy
/// at restore. crt restore must fail naming the busy pid, leave none of the
/// processes it created behind, leave the images untouched, and the busy
/// original must still pass.
fn restore_fails_half_way(first: &str, second: &str, killed: usize) {
    crt_tests::init!();
    let f = Forest::spawn(&[first, second]);
    f.wait_ready();
    std::thread::sleep(RUN_BEFORE_DUMP);
    f.dump(&["--leave-running"]).assert_success();
    let busy = &f.workloads[1 - killed];
    let gone = &f.workloads[killed];
    let gone_pids = gone.all_pids();
    gone.kill_tree_and_reap();
    for pid in &gone_pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still exists");
    }

    let before = DirSnapshot::take(f.img_dir());
    let mut r = Restored::start(f.img_dir(), &[]);
    let out = r.wait_exit(Duration::from_secs(30));
    out.assert_failure().assert_stderr_mentions_number(busy.pid());
    eprintln!("the failed restore, as expected:\n{out}");
    // nothing crt created may survive it: poll a while for stragglers
    assert_none_left(&gone_pids, &out);
    assert_eq!(before, DirSnapshot::take(f.img_dir()), "a failed restore changed the images\n{out}");

    busy.assert_alive("after the failed restore");
    busy.assert_tree("after the failed restore");
    assert_eq!(proc_status_field(busy.pid(), "TracerPid").as_deref(), Some("0"));
    std::thread::sleep(RUN_AFTER_RESTORE);
    busy.terminate_and_check();
}

/// The spec case: the first root's pid is busy.
#[test]
fn restore_fails_when_first_root_pid_is_busy() {
    restore_fails_half_way("counters", "tree_pipes", 1);
}

/// The second root's pid is busy: crt may already have created the whole
/// first tree when it finds out, and must kill it all.
#[test]
fn restore_fails_when_second_root_pid_is_busy() {
    restore_fails_half_way("tree_pipes", "counters", 0);
}

/// Polls /proc for a few hundred ms after a failed restore: none of `pids`
/// may be alive (zombies left to the harness are reaped).
fn assert_none_left(pids: &[i32], out: &CrtOutput) {
    let mut seen = Vec::new();
    for _ in 0..60 {
        crt_tests::reap_strays();
        for pid in pids {
            if pid_alive(*pid) && !seen.contains(pid) {
                seen.push(*pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        seen.is_empty(),
        "the failed restore left process(es) {seen:?} running (or they appeared after crt exited)\n{out}"
    );
}

/// A genuine half-way failure: every pid is free, but the pages image of
/// the second root is truncated, so crt can only notice while filling its
/// memory, possibly after creating the whole first tree. It must fail
/// naming the file, kill everything it created and leave the images as
/// they are.
#[test]
fn restore_fails_on_truncated_pages_of_second_root() {
    crt_tests::init!();
    let f = Forest::spawn(&["tree_pipes", "counters"]);
    f.wait_ready();
    std::thread::sleep(RUN_BEFORE_DUMP);
    f.dump(&[]).assert_success();
    let second = &f.workloads[1];
    let pages = f.img_dir().join(format!("pages-{}.img", second.pid()));
    truncate_to_half(&pages);
    let pids: Vec<i32> = f.workloads.iter().flat_map(Workload::all_pids).collect();

    let before = DirSnapshot::take(f.img_dir());
    let mut r = Restored::start(f.img_dir(), &[]);
    let out = r.wait_exit(Duration::from_secs(30));
    out.assert_failure().assert_stderr_contains(&format!("pages-{}.img", second.pid()));
    eprintln!("the failed restore, as expected:\n{out}");
    assert_none_left(&pids, &out);
    assert_eq!(before, DirSnapshot::take(f.img_dir()), "a failed restore changed the images\n{out}");
}
