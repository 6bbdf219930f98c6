//! Proves the workloads themselves, without crt: each one, run under the
//! harness (spawn → READY → run → workload-specific steps → SIGTERM), must
//! PASS; and sabotaged or prematurely terminated runs must FAIL, showing the
//! checks can fail.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::time::Duration;

use crt_tests::{Workload, READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP};

/// The same timeline as a crt round trip, minus the dump and restore.
fn selfcheck(name: &str) {
    crt_tests::init!();
    let w = Workload::spawn(name);
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP + RUN_AFTER_RESTORE);
    w.exercise();
    w.terminate_and_check();
}

#[test]
fn counters_passes() {
    selfcheck("counters");
}

#[test]
fn file_offset_passes() {
    selfcheck("file_offset");
}

#[test]
fn signals_passes() {
    selfcheck("signals");
}

#[test]
fn sleeper_passes() {
    selfcheck("sleeper");
}

#[test]
fn pauser_passes() {
    selfcheck("pauser");
}

#[test]
fn avx_passes() {
    selfcheck("avx");
}

#[test]
fn vmas_passes() {
    selfcheck("vmas");
}

#[test]
fn eventfd_holder_passes() {
    selfcheck("eventfd_holder");
}

#[test]
fn io_uring_holder_passes() {
    selfcheck("io_uring_holder");
}

#[test]
fn rust_std_passes() {
    selfcheck(crt_tests::RUST_STD);
}

/// Runs `name` with CRT_WL_SABOTAGE=1 and expects FAIL mentioning `needle`.
fn sabotaged(name: &str, needle: &str) {
    crt_tests::init!();
    let w = Workload::spawn_with_env(name, &[("CRT_WL_SABOTAGE", "1")]);
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP + RUN_AFTER_RESTORE);
    w.exercise();
    let log = w.terminate_expect_fail();
    assert!(log.contains(needle), "expected {needle:?} in the failure of {name}:\n{log}");
}

#[test]
fn fd_state_passes() {
    selfcheck("fd_state");
}

#[test]
fn pidfds_passes() {
    selfcheck("pidfds");
}

#[test]
fn pidfds_detects_a_wrong_pidfd() {
    sabotaged("pidfds", "pidfd of the kid shows 1");
}

#[test]
fn forker_passes() {
    selfcheck("forker");
}

#[test]
fn forker_detects_a_wrong_exit_status() {
    sabotaged("forker", "round 5: child");
}

#[test]
fn thread_timers_passes() {
    selfcheck("thread_timers");
}

#[test]
fn thread_timers_detects_a_stopped_timer() {
    sabotaged("thread_timers", "SIGEV_THREAD_ID timer: only 0 signals");
}

#[test]
fn memstate_passes() {
    selfcheck("memstate");
}

#[test]
fn memstate_detects_lost_advice() {
    sabotaged("memstate", "dontdump: no dd in VmFlags");
}

#[test]
fn seccomp_caps_passes() {
    selfcheck("seccomp_caps");
}

#[test]
fn seccomp_caps_detects_an_added_filter() {
    sabotaged("seccomp_caps", "Seccomp_filters:\t2\" became");
}

#[test]
fn attrs_passes() {
    selfcheck("attrs");
}

#[test]
fn attrs_detects_a_changed_nice_value() {
    sabotaged("attrs", "main: policy 0 nice 6");
}

#[test]
fn zombies_passes() {
    selfcheck("zombies");
}

#[test]
fn zombies_detects_a_reaped_zombie() {
    sabotaged("zombies", "zombie zombie-sigterm: state");
}

#[test]
fn cow_fork_passes() {
    selfcheck("cow_fork");
}

#[test]
fn cow_fork_detects_unshared_memory() {
    sabotaged("cow_fork", "of the region shared");
}

#[test]
fn ghosts_passes() {
    selfcheck("ghosts");
}

#[test]
fn ghosts_detects_a_changed_mode() {
    sabotaged("ghosts", "ghost a: mode 600");
}

#[test]
fn fd_state_detects_a_lost_lock() {
    sabotaged("fd_state", "posix lock 0-9");
}

#[test]
fn fd_state_detects_a_lost_flag() {
    sabotaged("fd_state", "pipe read end flags");
}

#[test]
fn counters_detects_heap_corruption() {
    sabotaged("counters", "heap pattern");
}

#[test]
fn file_offset_detects_hole() {
    sabotaged("file_offset", "NUL");
}

#[test]
fn vmas_detects_private_file_change() {
    sabotaged("vmas", "private.bin");
}

#[test]
fn rust_std_detects_map_corruption() {
    sabotaged(crt_tests::RUST_STD, "key-500");
}

/// Terminates `name` right after READY, skipping the run and its steps.
/// With `CRT_WL_NO_DRAIN=1`: otherwise the workload would go on after
/// SIGTERM until it has made the progress its checks need.
fn too_early(name: &str, needle: &str) {
    crt_tests::init!();
    let w = Workload::spawn_with_env(name, &[("CRT_WL_NO_DRAIN", "1")]);
    w.wait_ready(READY_TIMEOUT);
    let log = w.terminate_expect_fail();
    assert!(log.contains(needle), "expected {needle:?} in the failure of {name}:\n{log}");
}

#[test]
fn counters_requires_progress() {
    too_early("counters", "advanced only");
}

#[test]
fn sleeper_requires_a_completed_sleep() {
    too_early("sleeper", "no sleep completed");
}

#[test]
fn pauser_requires_a_wake_up() {
    too_early("pauser", "woke 0 times");
}

#[test]
fn signals_requires_usr1() {
    too_early("signals", "SIGUSR1 was never handled");
}

#[test]
fn avx_requires_rounds() {
    too_early("avx", "rounds since READY");
}

/// Workloads whose checks need progress, so that they drain after SIGTERM
/// (`wl_keep_going`): `(name, environment)`.
const DRAINING: &[(&str, &[(&str, &str)])] = &[
    ("counters", &[]),
    ("avx", &[]),
    ("chrooted", &[]),
    ("manythreads", &[]),
    (crt_tests::RUST_STD, &[]),
    ("tree_pipes", &[]),
    ("threads4", &[]),
    ("stopped", &[]),
    ("session", &[]),
    ("shared_file", &[]),
    ("shared_mem", &[]),
    ("pipe_pair", &[]),
    ("unix_spair", &[]),
    ("stream_link", &[]),
    ("stream_link", &[("CRT_UNIX_KIND", "seqpacket")]),
    ("stream_link", &[("CRT_UNIX_KIND", "tcp4")]),
    ("fifo_pair", &[]),
    ("memfd_share", &[]),
    ("clone_files", &[]),
    ("timers_rlimits", &[]),
];

/// Terminates every draining workload right after READY (and its steps),
/// like `too_early` but without `CRT_WL_NO_DRAIN`: each must go on after
/// SIGTERM until it has made the progress its checks need, and PASS. The
/// roots of a launcher group are terminated one after the other
/// (`together` false: each exits before the next gets SIGTERM) or all at
/// once, as `Restored::finish` does.
fn drain_after_an_early_sigterm(together: bool) {
    crt_tests::init!();
    for (name, env) in DRAINING {
        if together && !crt_tests::LAUNCHERS.iter().any(|(n, _)| n == name) {
            continue;
        }
        eprintln!("{name} {env:?}");
        let ws = Workload::spawn_group_with_env(name, env);
        for w in &ws {
            w.wait_ready(READY_TIMEOUT);
            w.prepare();
        }
        for w in &ws {
            w.exercise();
        }
        if together {
            for w in &ws {
                w.send(libc::SIGTERM);
            }
        }
        for w in &ws {
            w.terminate_and_check();
            for l in w.log().lines().filter(|l| l.contains("drained")) {
                eprintln!("  {}: {l}", w.name());
            }
        }
    }
}

#[test]
fn workloads_drain_after_an_early_sigterm() {
    drain_after_an_early_sigterm(false);
}

#[test]
fn launched_roots_drain_when_terminated_together() {
    drain_after_an_early_sigterm(true);
}

#[test]
fn pauser_rejects_two_wake_ups() {
    crt_tests::init!();
    let w = Workload::spawn("pauser");
    w.wait_ready(READY_TIMEOUT);
    w.exercise();
    w.exercise();
    let log = w.terminate_expect_fail();
    assert!(log.contains("woke 2 times"), "{log}");
}

/// The harness itself: a workload killed mid-run is noticed (no PASS), and
/// a missing READY times out instead of hanging.
#[test]
fn harness_notices_a_dead_workload() {
    crt_tests::init!();
    let w = Workload::spawn("counters");
    w.wait_ready(READY_TIMEOUT);
    w.send(libc::SIGKILL);
    assert!(crt_tests::poll_until(Duration::from_secs(5), || !w.is_alive()));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.assert_passed()));
    assert!(r.is_err(), "assert_passed accepted a killed workload");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        w.wait_log_contains("PASS", Duration::from_millis(300));
    }));
    assert!(r.is_err(), "wait_log_contains accepted a missing line");
}

/// The reaper: an orphan reparented to us (we are a subreaper) is reaped,
/// while a dead child the harness still waits for is left alone.
#[test]
fn harness_reaps_orphans_but_not_tracked_children() {
    crt_tests::init!();
    let w = Workload::spawn("counters");
    w.wait_ready(READY_TIMEOUT);
    w.send(libc::SIGKILL);
    assert!(crt_tests::poll_until(Duration::from_secs(5), || { crt_tests::proc_state(w.pid()) == Some('Z') }));

    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", "sleep 0.1 & echo $!"]).stdout(std::process::Stdio::piped());
    let mut sh = crt_tests::spawn_tracked(&mut sh).expect("spawn sh");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut sh.stdout.take().expect("stdout"), &mut out).expect("read sh output");
    let status = crt_tests::wait_timeout(&mut sh, Duration::from_secs(5)).expect("sh exits");
    assert!(status.success());
    let orphan: i32 = out.trim().parse().expect("orphan pid");
    let mut reaped = Vec::new();
    assert!(
        crt_tests::poll_until(Duration::from_secs(5), || {
            reaped.extend(crt_tests::reap_strays());
            reaped.contains(&orphan)
        }),
        "orphan {orphan} was not reaped (reaped {reaped:?})"
    );
    assert!(!reaped.contains(&w.pid()), "the reaper stole a tracked child");
    assert_eq!(crt_tests::proc_state(w.pid()), Some('Z'), "tracked zombie was reaped");
    assert!(!w.is_alive());
}

// ---- forest workloads (several processes, threads, launchers) ----------

/// The forest timeline without crt: every root of the group READY, its
/// tree as recorded, `prepare`, run, `exercise`, then SIGTERM each root in
/// turn and expect PASS.
fn selfcheck_group(name: &str) -> Vec<Workload> {
    crt_tests::init!();
    let ws = Workload::spawn_group(name);
    for w in &ws {
        w.wait_ready(READY_TIMEOUT);
        w.assert_tree("after READY");
    }
    for w in &ws {
        w.prepare();
    }
    std::thread::sleep(RUN_BEFORE_DUMP + RUN_AFTER_RESTORE);
    for w in &ws {
        w.exercise();
    }
    for w in &ws {
        w.terminate_and_check();
    }
    ws
}

/// Roles recorded by `w`, as `(role, ppid)` with pids replaced by role
/// names (`root` for the workload itself).
fn role_shape(w: &Workload) -> Vec<(String, String)> {
    let roles = w.roles();
    let name_of = |pid: i32| {
        if pid == w.pid() {
            "root".to_owned()
        } else {
            roles.iter().find(|r| r.pid == pid).map_or_else(|| format!("?{pid}"), |r| r.role.clone())
        }
    };
    let mut v: Vec<(String, String)> = roles.iter().map(|r| (r.role.clone(), name_of(r.ppid))).collect();
    v.sort();
    v
}

fn shape(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
    v.sort();
    v
}

#[test]
fn tree_pipes_passes() {
    let ws = selfcheck_group("tree_pipes");
    assert_eq!(role_shape(&ws[0]), shape(&[("c1", "root"), ("c2", "root"), ("c3", "root"), ("gc", "c3")]));
    for c in ["c1", "c2", "c3", "gc"] {
        assert!(ws[0].log().contains(&format!("CHILD {c} OK")), "{c} did not report");
    }
}

#[test]
fn threads4_passes() {
    let ws = selfcheck_group("threads4");
    let tids = ws[0].tids();
    assert_eq!(tids.len(), 4, "threads4 recorded tids {tids:?}");
    assert!(tids.iter().all(|t| *t != ws[0].pid()));
}

#[test]
fn zombie_passes() {
    let ws = selfcheck_group("zombie");
    assert_eq!(role_shape(&ws[0]), shape(&[("zombie", "root")]));
}

#[test]
fn stopped_passes() {
    selfcheck_group("stopped");
}

#[test]
fn session_passes() {
    let ws = selfcheck_group("session");
    assert_eq!(role_shape(&ws[0]), shape(&[("A", "root"), ("A1", "A"), ("B", "root")]));
}

#[test]
fn shared_file_passes() {
    let ws = selfcheck_group("shared_file");
    assert_eq!(role_shape(&ws[0]), shape(&[("child", "root")]));
}

#[test]
fn shared_mem_passes() {
    selfcheck_group("shared_mem");
}

#[test]
fn pipe_pair_passes() {
    let ws = selfcheck_group("pipe_pair");
    let names: Vec<&str> = ws.iter().map(Workload::name).collect();
    assert_eq!(names, ["pipe_pair:w", "pipe_pair:r"]);
    let r = ws[1].log();
    assert!(r.contains("max_buffered="), "{r}");
}

/// Runs group `name` sabotaged and expects its root `idx` to FAIL
/// mentioning `needle` (the other roots are terminated without checks).
fn sabotaged_group(name: &str, idx: usize, needle: &str) {
    sabotaged_group_env(name, &[], idx, needle);
}

/// [`sabotaged_group`] with more environment variables.
fn sabotaged_group_env(name: &str, env: &[(&str, &str)], idx: usize, needle: &str) {
    crt_tests::init!();
    let mut env = env.to_vec();
    env.push(("CRT_WL_SABOTAGE", "1"));
    let ws = Workload::spawn_group_with_env(name, &env);
    for w in &ws {
        w.wait_ready(READY_TIMEOUT);
        w.prepare();
    }
    std::thread::sleep(RUN_BEFORE_DUMP + RUN_AFTER_RESTORE);
    for w in &ws {
        w.exercise();
    }
    // terminate the others first (e.g. the writer of a pipe), then the one
    for (i, w) in ws.iter().enumerate() {
        if i != idx {
            w.send(libc::SIGTERM);
        }
    }
    let log = ws[idx].terminate_expect_fail();
    assert!(log.contains(needle), "expected {needle:?} in the failure of {name}:\n{log}");
}

#[test]
fn tree_pipes_detects_a_lost_message() {
    sabotaged_group("tree_pipes", 0, "got seq 301, want 300");
}

#[test]
fn threads4_detects_tls_corruption() {
    sabotaged_group("threads4", 0, "thread 2: thread-local value changed");
}

#[test]
fn zombie_detects_early_reaping() {
    sabotaged_group("zombie", 0, "waitid(WNOHANG|WNOWAIT) on the zombie: errno 10");
}

#[test]
fn stopped_detects_counter_damage() {
    sabotaged_group("stopped", 0, "but the loop ran");
}

#[test]
fn session_detects_a_group_change() {
    sabotaged_group("session", 0, "getpgid(B=");
}

#[test]
fn shared_file_detects_unshared_offset() {
    sabotaged_group("shared_file", 0, "shared offset is");
}

#[test]
fn shared_mem_detects_unshared_memory() {
    sabotaged_group("shared_mem", 0, "the other side's counter advanced only 0");
}

#[test]
fn pipe_pair_detects_a_gap() {
    sabotaged_group("pipe_pair", 1, "R: got seq 3001, want 3000 (gap)");
}

#[test]
fn tree_pipes_requires_progress() {
    too_early("tree_pipes", "ring advanced only");
}

#[test]
fn stopped_requires_progress() {
    too_early("stopped", "counter advanced only");
}

/// `stopped` is stopped by `prepare` and the `exercise` step checks it
/// stays stopped; a running one fails that step.
#[test]
fn stopped_exercise_requires_a_stopped_process() {
    crt_tests::init!();
    let w = Workload::spawn("stopped");
    w.wait_ready(READY_TIMEOUT);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.exercise()));
    assert!(r.is_err(), "exercise accepted a running `stopped`");
    std::thread::sleep(RUN_AFTER_RESTORE);
    w.terminate_and_check();
}

/// The tree check notices a child that disappeared.
#[test]
fn harness_notices_a_missing_child() {
    crt_tests::init!();
    let w = Workload::spawn("shared_mem");
    w.wait_ready(READY_TIMEOUT);
    w.assert_tree("after READY");
    let child = w.role_pid("child");
    assert!(crt_tests::send_signal(child, libc::SIGKILL));
    assert!(crt_tests::poll_until(Duration::from_secs(5), || { !w.tree_problems().is_empty() }));
    let log = w.terminate_expect_fail();
    assert!(log.contains("killed by signal 9"), "{log}");
}

// ---- FIFOs, memfds, shared fd tables, timers and rlimits ----------------

#[test]
fn fifo_pair_passes() {
    let ws = selfcheck_group("fifo_pair");
    assert_eq!(role_shape(&ws[0]), shape(&[("w", "root"), ("r", "root")]));
    let log = ws[0].log();
    assert!(log.contains("CHILD w OK") && log.contains("CHILD r OK"), "{log}");
}

#[test]
fn memfd_share_passes() {
    let ws = selfcheck_group("memfd_share");
    assert_eq!(role_shape(&ws[0]), shape(&[("child", "root")]));
}

#[test]
fn clone_files_passes() {
    let ws = selfcheck_group("clone_files");
    assert_eq!(role_shape(&ws[0]), shape(&[("child", "root")]));
}

#[test]
fn timers_rlimits_passes() {
    selfcheck_group("timers_rlimits");
}

#[test]
fn fifo_pair_detects_a_gap() {
    sabotaged_group("fifo_pair", 0, "r: got seq 3001, want 3000 (gap)");
}

#[test]
fn memfd_share_detects_unshared_memory() {
    sabotaged_group("memfd_share", 0, "root: the other side's counter advanced only 0");
}

#[test]
fn clone_files_detects_an_unshared_fd_table() {
    sabotaged_group("clone_files", 0, "root: round 100: fd");
}

#[test]
fn clone_files_detects_an_unshared_cwd() {
    sabotaged_group("clone_files", 0, "root: round 100: my cwd is not d0");
}

#[test]
fn timers_rlimits_detects_a_stopped_timer() {
    sabotaged_group("timers_rlimits", 0, "the last SIGALRM tick was");
}

#[test]
fn timers_rlimits_requires_ticks() {
    too_early("timers_rlimits", "SIGALRM ticks after the last stall");
}

#[test]
fn clone_files_requires_rounds() {
    too_early("clone_files", "root: only");
}

#[test]
fn memfd_share_requires_progress() {
    too_early("memfd_share", "root: only");
}

// ---- unix sockets ---------------------------------------------------------------

#[test]
fn unix_spair_passes() {
    selfcheck("unix_spair");
}

#[test]
fn unix_spair_detects_a_consumed_byte() {
    sabotaged("unix_spair", "root: a[1] queue: queue holds 4999 bytes, want 5000");
}

#[test]
fn stream_link_passes() {
    let ws = selfcheck_group("stream_link");
    let names: Vec<&str> = ws.iter().map(Workload::name).collect();
    assert_eq!(names, ["stream_link:s", "stream_link:c"]);
}

#[test]
fn stream_link_detects_a_gap() {
    sabotaged_group("stream_link", 0, "S: got seq 3001, want 3000 (gap)");
}

#[test]
fn stream_link_tcp_detects_a_gap_and_a_changed_option() {
    let tcp = [("CRT_UNIX_KIND", "tcp4")];
    sabotaged_group_env("stream_link", &tcp, 0, "S: got seq 3001, want 3000 (gap)");
    sabotaged_group_env("stream_link", &tcp, 1, "option 6 is 3, want 5");
}

#[test]
fn tcp_fan_passes_and_detects_a_lost_byte() {
    let ws = selfcheck_group("tcp_fan");
    assert_eq!(ws.len(), 2);
    sabotaged_group("tcp_fan", 0, "S: bytes of connection 0 differ");
}

#[test]
fn tcp_states_passes() {
    selfcheck("tcp_states");
}

#[test]
fn tcp_states_detects_a_lost_byte() {
    sabotaged("tcp_states", "b2 read");
}

#[test]
fn unix_backlog_passes() {
    selfcheck("unix_backlog");
}

#[test]
fn unix_backlog_detects_an_early_accept() {
    sabotaged("unix_backlog", "accepted 1 pending connections, want 2");
}

#[test]
fn unix_dgram_passes() {
    selfcheck("unix_dgram");
}

#[test]
fn unix_dgram_detects_a_lost_datagram() {
    sabotaged("unix_dgram", "R: datagram 10 has 200 bytes");
}

#[test]
fn unix_fan_passes() {
    selfcheck("unix_fan");
}

#[test]
fn unix_fan_detects_a_consumed_byte() {
    sabotaged("unix_fan", "server: bytes from client 0 differ");
}

#[test]
fn unix_scm_passes() {
    selfcheck("unix_scm");
}

#[test]
fn unix_scm_detects_a_consumed_message() {
    sabotaged("unix_scm", "C: plain prefix: got 8 bytes, want 100");
}

#[test]
fn ghost_file_passes() {
    selfcheck("ghost_file");
}

#[test]
fn ghost_file_detects_overwritten_records() {
    sabotaged("ghost_file", "bytes");
}

#[test]
fn anon_fds_detects_a_consumed_eventfd_unit() {
    sabotaged("anon_fds", "eventfd");
}

#[test]
fn inotify_watch_detects_a_lost_watch() {
    sabotaged("inotify_watch", "descriptor");
}

#[test]
fn chrooted_detects_another_root() {
    sabotaged("chrooted", "another directory");
}

#[test]
fn plugin_file_detects_overwritten_records() {
    sabotaged("plugin_file", "bytes");
}

#[test]
fn prctl_state_detects_a_lost_subreaper() {
    sabotaged("prctl_state", "subreaper");
}

#[test]
fn unix_unlinked_detects_a_visible_path() {
    sabotaged("unix_unlinked", "exists again");
}

#[test]
fn sysv_shm_passes() {
    selfcheck("sysv_shm");
}

#[test]
fn sysv_shm_detects_an_unshared_segment() {
    sabotaged("sysv_shm", "segment A: the child did not answer");
}

#[test]
fn sysv_ipc_passes() {
    selfcheck("sysv_ipc");
}

#[test]
fn sysv_ipc_detects_a_lost_message() {
    sabotaged("sysv_ipc", "Q1: 2 messages, want 3");
}

#[test]
fn cgroup_nest_passes() {
    selfcheck("cgroup_nest");
}

#[test]
fn cgroup_nest_detects_a_changed_setting() {
    sabotaged("cgroup_nest", "pids.max is 78, want 77");
}
