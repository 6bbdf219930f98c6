//! Process bookkeeping: child subreaper, tracked children, stray reaping,
//! waiting with timeouts, signals and `/proc/<pid>/status` inspection.

use std::collections::BTreeSet;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

static INIT: Once = Once::new();

/// Pids of children the harness will wait for itself (through their
/// [`Child`]); [`reap_strays`] never touches them.
static TRACKED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn tracked() -> MutexGuard<'static, BTreeSet<i32>> {
    TRACKED.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes the test process a child subreaper (once), so restored processes
/// orphaned by `crt restore` are reparented to us and can be reaped.
pub fn init() {
    INIT.call_once(|| {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integer arguments.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER): {}", std::io::Error::last_os_error());
    });
}

/// Spawns `cmd` and tracks its pid (under the tracking lock, so a concurrent
/// [`reap_strays`] cannot steal it) until it is reaped through
/// [`wait_timeout`] (or [`untrack`]ed). Tests that start their own child
/// processes must use this instead of `Command::spawn`/`output`, or the
/// reaper (possibly run by a parallel test) may reap them first.
pub fn spawn_tracked(cmd: &mut Command) -> std::io::Result<Child> {
    init();
    let mut set = tracked();
    let child = cmd.spawn()?;
    set.insert(pid_of(&child));
    Ok(child)
}

/// Makes `cmd` close every inherited fd above 2 in the child before exec.
///
/// The test process inherits stray fds (e.g. cargo's jobserver pipe, which
/// is not close-on-exec); a workload must hold only the fds it opened
/// itself, or crt would (rightly) find an unexpected pipe to dump.
pub fn close_extra_fds(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let hook = || {
        // SAFETY: close_range(2) takes plain integers; it is async-signal-safe
        // and closes only fds above stdio, which the child does not use.
        let r = unsafe { libc::syscall(libc::SYS_close_range, 3_u32, u32::MAX, 0_u32) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and only makes one
    // async-signal-safe syscall (no allocation, no locks).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Stops protecting `pid` from [`reap_strays`].
pub fn untrack(pid: i32) {
    tracked().remove(&pid);
}

pub(crate) fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("pid fits in i32")
}

/// Pids of our direct children (all threads), from `/proc/self/task/*/children`.
pub fn children_of_self() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Reaps every zombie child that the harness does not track (restored
/// processes reparented to us, grandchildren...). Returns the reaped pids.
///
/// It looks zombies up in `/proc` and waits for each by pid with `WNOHANG`,
/// so it never steals the exit status of a tracked child.
pub fn reap_strays() -> Vec<i32> {
    let set = tracked();
    let mut reaped = Vec::new();
    for pid in children_of_self() {
        if set.contains(&pid) {
            continue;
        }
        if proc_state(pid) != Some('Z') {
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid on a specific pid with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            reaped.push(pid);
        }
    }
    reaped
}

/// Waits for `child` to exit, up to `timeout`; `None` if it is still running.
/// The pid is untracked once it has been reaped.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                untrack(pid_of(child));
                return Some(status);
            }
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILLs and reaps `child` (no-op if it has already been reaped).
pub(crate) fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
    untrack(pid_of(child));
}

/// Sends `sig` to `pid`; returns false if the pid does not exist.
pub fn send_signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) with plain integer arguments.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// The state letter from `/proc/<pid>/stat` ('R', 'S', 'Z', 't'...).
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the comm field may contain spaces and parentheses: skip to the last ')'
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// The command name from `/proc/<pid>/comm`.
pub fn proc_comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_owned())
}

/// A field of `/proc/<pid>/status` (e.g. "PPid", "TracerPid", "State").
pub fn proc_status_field(pid: i32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == field).then(|| v.trim().to_owned())
    })
}

/// True if `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Describes an exit status as "exit N" or "signal N".
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{status:?}"),
    }
}

/// SIGKILLs the given pids when dropped (e.g. on panic), provided each still
/// runs the expected command (`comm`), so a recycled pid is never hit.
#[derive(Debug, Default)]
pub struct KillGuard {
    pids: Vec<(i32, String)>,
}

impl KillGuard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `pid`, to be killed on drop if its comm is still `comm`.
    pub fn add(&mut self, pid: i32, comm: &str) {
        self.pids.push((pid, comm.to_owned()));
    }

    /// Forgets all pids (nothing will be killed).
    pub fn disarm(&mut self) {
        self.pids.clear();
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        for (pid, comm) in &self.pids {
            kill_if_comm(*pid, comm);
        }
        if !self.pids.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
            reap_strays();
        }
    }
}

/// SIGKILLs `pid` if it is alive and its comm is `comm`.
pub(crate) fn kill_if_comm(pid: i32, comm: &str) -> bool {
    if pid_alive(pid) && proc_comm(pid).as_deref() == Some(comm) {
        return send_signal(pid, libc::SIGKILL);
    }
    false
}

/// Protects `pid` (a child of the harness without a [`Child`] handle, e.g. a
/// re-parented process) from [`reap_strays`]; it must then be reaped with
/// [`wait_pid_timeout`] (or [`untrack`]ed).
pub fn track(pid: i32) {
    tracked().insert(pid);
}

/// Waits for child `pid` (by pid, not through a [`Child`]) to exit, up to
/// `timeout`, and reaps it; `None` if it is still running. The pid is
/// untracked once reaped.
pub fn wait_pid_timeout(pid: i32, timeout: Duration) -> Option<ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a specific pid with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            untrack(pid);
            return Some(ExitStatus::from_raw(status));
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            assert!(e.raw_os_error() == Some(libc::EINTR), "waitpid({pid}): {e} (not a child of the harness?)");
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Direct children of `pid` (all its threads).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Every descendant of `pid` (children, grandchildren...), parents first.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            if !out.contains(&c) && c != pid {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// utime + stime of `pid` in clock ticks, from `/proc/<pid>/stat`.
pub fn proc_cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // after the comm: state(3) ppid(4) ... utime(14) stime(15)
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}
