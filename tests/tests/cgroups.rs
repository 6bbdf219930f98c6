//! Nested cgroups: a process and one of its threads in different nested
//! cgroups of v1 (pids, cpuset) and v2 (a threaded cgroup) hierarchies,
//! with settings, mode and owner; after the restore `cgroup_nest` checks
//! from inside where each is and what the directories hold, also when
//! they were removed since the dump and crt made them again.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use crt_tests::{poll_until, Forest, Workload, RUN_AFTER_RESTORE};

/// The cgroup directories of the `cgroup_nest` workload `pid`, children first.
fn dirs(pid: i32) -> Vec<String> {
    let b = format!("crt-cg-{pid}");
    [
        format!("pids/{b}/inner"),
        format!("pids/{b}/thr"),
        format!("pids/{b}"),
        format!("cpuset/{b}"),
        format!("unified/{b}/t"),
        format!("unified/{b}"),
    ]
    .into_iter()
    .map(|d| format!("/sys/fs/cgroup/{d}"))
    .collect()
}

/// Removes the directories (once the tasks in them are gone); true if all went.
fn remove_dirs(pid: i32) -> bool {
    poll_until(Duration::from_secs(10), || {
        dirs(pid).iter().all(|d| std::fs::remove_dir(d).is_ok() || !Path::new(d).exists())
    })
}

/// Removes a workload's cgroups when a test ends, passed or not.
struct Cleanup(i32);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_dirs(self.0);
    }
}

/// This machine's layout: v1 pids and cpuset, v2 at unified.
fn hybrid_layout() -> bool {
    let ok = ["pids/tasks", "cpuset/tasks", "unified/cgroup.procs"]
        .iter()
        .all(|f| Path::new(&format!("/sys/fs/cgroup/{f}")).exists());
    if !ok {
        eprintln!("skipped: needs v1 pids and cpuset hierarchies and v2 at /sys/fs/cgroup/unified");
    }
    ok
}

/// The cgroups still there: the process and its thread join them again.
#[test]
fn nested_cgroups_kept() {
    crt_tests::init!();
    if !hybrid_layout() {
        return;
    }
    let f = Forest::spawn(&["cgroup_nest"]);
    let _c = Cleanup(f.workloads[0].pid());
    f.roundtrip();
}

/// The cgroups removed since the dump: made again, parents first, with
/// their settings (cpuset's cpus and mems before the process joins), mode
/// and owner, and the thread's threaded v2 cgroup.
#[test]
fn nested_cgroups_recreated() {
    crt_tests::init!();
    if !hybrid_layout() {
        return;
    }
    let f = Forest::from_workloads(vec![Workload::spawn("cgroup_nest")]);
    let pid = f.workloads[0].pid();
    let _c = Cleanup(pid);
    f.wait_ready();
    f.dump(&[]).assert_success();
    assert!(remove_dirs(pid), "the cgroups of pid {pid} could not be removed after the dump");
    let r = f.restore(&[]);
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&f.refs());
}
