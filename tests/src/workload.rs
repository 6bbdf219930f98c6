//! Test workloads: spawning, the READY/PASS protocol, logs and signals.

use std::cell::Cell;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::dirs::TestDir;
use crate::process::{self, describe_status, pid_of};
use crate::EXIT_TIMEOUT;

/// Name of the Rust `std` workload (a `[[bin]]` of this crate).
pub const RUST_STD: &str = "wl-rust-std";

/// Names of all C workloads (built from `tests/workloads/*.c`).
pub const C_WORKLOADS: &[&str] = &[
    "counters",
    "file_offset",
    "signals",
    "sleeper",
    "pauser",
    "avx",
    "vmas",
    "eventfd_holder",
    "io_uring_holder",
    "anon_fds",
    "unsupported_state",
    "tty_writer",
    "prctl_state",
    "inotify_watch",
    "ghost_file",
    "chrooted",
    "inet_server",
    "bigmem",
    "plugin_file",
    "aio_events",
    "fanout",
    "manythreads",
    "tree_pipes",
    "threads4",
    "zombie",
    "stopped",
    "session",
    "shared_file",
    "shared_mem",
    "pipe_pair",
    "unix_spair",
    "stream_link",
    "tcp_states",
    "tcp_fan",
    "unix_backlog",
    "unix_dgram",
    "unix_fan",
    "unix_scm",
    "unix_unlinked",
    "fifo_pair",
    "memfd_share",
    "clone_files",
    "timers_rlimits",
    "fd_state",
    "ghosts",
    "cow_fork",
    "zombies",
    "attrs",
    "seccomp_caps",
    "memstate",
    "thread_timers",
    "forker",
    "pidfds",
    "sysv_shm",
    "sysv_ipc",
    "cgroup_nest",
];

/// Launcher workloads (also in [`C_WORKLOADS`]): each forks the listed
/// roles and exits, so they are re-parented to the harness (a subreaper)
/// as separate roots; see [`Workload::spawn_group`].
pub const LAUNCHERS: &[(&str, &[&str])] =
    &[("pipe_pair", &["w", "r"]), ("stream_link", &["s", "c"]), ("tcp_fan", &["s", "c"])];

/// A non-root process of a workload's tree, as listed by the workload in
/// `<workdir>/pids` (lines `<role> <pid> <ppid>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Its role name (`c1`, `gc`, `zombie`...).
    pub role: String,
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
}

impl Role {
    /// Roles named `zombie` or `zombie-<how>` are exited, unreaped children: state `Z`.
    pub fn is_zombie(&self) -> bool {
        self.role == "zombie" || self.role.starts_with("zombie-")
    }
}

/// Path of the executable of workload `name` (a C workload or [`RUST_STD`]).
pub fn workload_exe(name: &str) -> PathBuf {
    if name == RUST_STD {
        return crate::bins().rust_std.clone();
    }
    Path::new(env!("CRT_WORKLOAD_DIR")).join(name)
}

/// One running workload.
///
/// It lives in its own [`TestDir`] (`argv[1]`), with stdout and stderr
/// appended to `<dir>/out.log`. While it is the harness's own child, the
/// [`Child`] is held here; after a killing dump it is reaped and the
/// `Workload` keeps standing for the restored process with the same pid.
/// On drop, any process still running with this pid and this workload's
/// command name is SIGKILLed, and so are its descendants with that name.
///
/// An *adopted* workload (from a launcher, see [`Workload::spawn_group`]) has
/// no [`Child`]: it is the harness's child by re-parenting, its pid is
/// tracked (so [`process::reap_strays`] leaves it alone) and it is waited for
/// by pid.
pub struct Workload {
    name: String,
    comm: String,
    pid: i32,
    child: Mutex<Option<Child>>,
    adopted: AtomicBool,
    log_mark: Cell<usize>,
    path: PathBuf,
    _dir: Arc<TestDir>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload").field("name", &self.name).field("pid", &self.pid).field("dir", &self.path).finish()
    }
}

impl Workload {
    /// Spawns workload `name` (a C workload or [`RUST_STD`]).
    pub fn spawn(name: &str) -> Self {
        Self::spawn_with_env(name, &[])
    }

    /// Spawns the Rust `std` workload.
    pub fn spawn_rust_std() -> Self {
        Self::spawn(RUST_STD)
    }

    /// Spawns workload `name` with extra environment variables
    /// (e.g. `("CRT_WL_SABOTAGE", "1")`). `CRT_WL_SABOTAGE` and
    /// `CRT_WL_NO_DRAIN` are cleared from the inherited environment: only
    /// `env` sets them.
    pub fn spawn_with_env(name: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn_inner(name, env, None)
    }

    /// Spawns workload `name` as user and group `uid` (no supplementary
    /// groups), like a service that runs as its own user: its work
    /// directory is `uid`'s, and it runs a copy of its program there (the
    /// build directory need not be readable by `uid`).
    pub fn spawn_as(name: &str, uid: u32) -> Self {
        Self::spawn_inner(name, &[], Some(uid))
    }

    fn spawn_inner(name: &str, env: &[(&str, &str)], as_uid: Option<u32>) -> Self {
        let mut exe = workload_exe(name);
        let dir = TestDir::new(&format!("crt-wl-{name}-"));
        if let Some(uid) = as_uid {
            let copy = dir.path().join(name);
            std::fs::copy(&exe, &copy)
                .unwrap_or_else(|e| panic!("copying {} to {}: {e}", exe.display(), copy.display()));
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).expect("chown the work directory");
            exe = copy;
        }
        let log_path = dir.path().join("out.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("create out.log");
        let log2 = log.try_clone().expect("dup out.log");
        let mut cmd = Command::new(&exe);
        cmd.arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .env_remove("CRT_WL_SABOTAGE")
            .env_remove("CRT_WL_NO_DRAIN");
        process::close_extra_fds(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(uid) = as_uid {
            // std drops the supplementary groups too (setgroups(0)).
            cmd.uid(uid).gid(uid);
        }
        let child = process::spawn_tracked(&mut cmd)
            .unwrap_or_else(|e| panic!("spawning workload {} ({}): {e}", name, exe.display()));
        Self {
            name: name.to_owned(),
            comm: comm_of(&exe),
            pid: pid_of(&child),
            child: Mutex::new(Some(child)),
            adopted: AtomicBool::new(false),
            log_mark: Cell::new(0),
            path: dir.path().to_owned(),
            _dir: Arc::new(dir),
        }
    }

    /// Spawns workload `name`: one [`Workload`] for a plain workload, or,
    /// for a launcher (see [`LAUNCHERS`]), one adopted workload per role.
    pub fn spawn_group(name: &str) -> Vec<Self> {
        Self::spawn_group_with_env(name, &[])
    }

    /// [`Workload::spawn_group`] with extra environment variables.
    pub fn spawn_group_with_env(name: &str, env: &[(&str, &str)]) -> Vec<Self> {
        match LAUNCHERS.iter().find(|(n, _)| *n == name) {
            Some((_, roles)) => Self::spawn_adopted(name, roles, env),
            None => vec![Self::spawn_with_env(name, env)],
        }
    }

    /// Runs launcher `name` (`argv[1]` = a fresh directory), which must fork
    /// one process per role and exit 0. Role `r` works in `<dir>/<r>` (its
    /// `out.log`) and writes its pid to `<dir>/<r>/pid`; once the launcher
    /// has exited it is re-parented to the harness. Returns the adopted
    /// workloads, named `<name>:<role>`, in role order.
    pub fn spawn_adopted(name: &str, roles: &[&str], env: &[(&str, &str)]) -> Vec<Self> {
        let launcher = Self::spawn_with_env(name, env);
        let status = {
            let mut guard = launcher.child.lock().expect("child lock");
            let child = guard.as_mut().expect("launcher child");
            let st = process::wait_timeout(child, Duration::from_secs(10));
            *guard = None;
            st
        };
        let dir = Arc::clone(&launcher._dir);
        assert!(
            status.is_some_and(|s| s.success()),
            "launcher {name} did not exit 0 within 10 s ({:?})\nlog:\n{}",
            status.map(describe_status),
            launcher.log()
        );
        let me = std::process::id().to_string();
        let mut out = Vec::new();
        for role in roles {
            let path = dir.path().join(role);
            let pid_file = path.join("pid");
            let mut pid = None;
            process::poll_until(Duration::from_secs(10), || {
                pid = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok());
                pid.is_some()
            });
            let pid = pid.unwrap_or_else(|| {
                panic!(
                    "launcher {name}: role {role} wrote no pid file {}\nlauncher log:\n{}",
                    pid_file.display(),
                    launcher.log()
                )
            });
            // protect it from reap_strays before anything else can happen
            process::track(pid);
            let w = Self {
                name: format!("{name}:{role}"),
                comm: launcher.comm.clone(),
                pid,
                child: Mutex::new(None),
                adopted: AtomicBool::new(true),
                log_mark: Cell::new(0),
                path,
                _dir: Arc::clone(&dir),
            };
            let ok = process::poll_until(Duration::from_secs(5), || {
                process::proc_status_field(pid, "PPid").as_deref() == Some(me.as_str())
            });
            assert!(
                ok,
                "{} (pid {pid}) was not re-parented to the harness: PPid {:?}\nlog:\n{}",
                w.name,
                process::proc_status_field(pid, "PPid"),
                w.log()
            );
            out.push(w);
        }
        drop(launcher);
        out
    }

    /// The workload's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid (the same before dump and after restore).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Path of its `out.log`.
    pub fn log_path(&self) -> PathBuf {
        self.path.join("out.log")
    }

    /// The non-root processes of its tree, from `<workdir>/pids` (empty if
    /// the workload does not fork).
    pub fn roles(&self) -> Vec<Role> {
        let text = std::fs::read_to_string(self.path.join("pids")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let num = |i: usize| f.get(i).and_then(|s| s.parse::<i32>().ok());
                match (f.first(), num(1), num(2), f.len()) {
                    (Some(role), Some(pid), Some(ppid), 3) => Role { role: (*role).to_owned(), pid, ppid },
                    _ => panic!("{}: bad line {l:?} in pids file", self.name),
                }
            })
            .collect()
    }

    /// The pid of role `role` (panics if it is not listed).
    pub fn role_pid(&self, role: &str) -> i32 {
        self.roles()
            .iter()
            .find(|r| r.role == role)
            .unwrap_or_else(|| panic!("{}: no role {role} in its pids file", self.name))
            .pid
    }

    /// Pids of the root and of every listed role.
    pub fn all_pids(&self) -> Vec<i32> {
        let mut v = vec![self.pid];
        v.extend(self.roles().iter().map(|r| r.pid));
        v
    }

    /// Thread ids listed in `<workdir>/tids` (workloads with threads).
    pub fn tids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("tids"))
            .unwrap_or_default()
            .split_whitespace()
            .map(|t| t.parse().expect("tid"))
            .collect()
    }

    /// What is wrong with the tree right now, compared with what the
    /// workload recorded: each role exists with its parent (`PPid`), is not
    /// traced, is a zombie if and only if its role says so, is not in a
    /// tracing stop; every recorded thread is in `/proc/<pid>/task`.
    /// Empty when all is well.
    pub fn tree_problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        for r in self.roles() {
            let state = process::proc_state(r.pid);
            let ppid = process::proc_status_field(r.pid, "PPid");
            let tracer = process::proc_status_field(r.pid, "TracerPid");
            let state_ok =
                if r.is_zombie() { state == Some('Z') } else { state.is_some_and(|s| !matches!(s, 't' | 'Z' | 'X')) };
            let ppid_ok = ppid.as_deref() == Some(r.ppid.to_string().as_str());
            let tracer_ok = r.is_zombie() || tracer.as_deref() == Some("0");
            if !(state_ok && ppid_ok && tracer_ok) {
                bad.push(format!(
                    "{} (pid {}, want parent {}): state {state:?} PPid {ppid:?} TracerPid {tracer:?}",
                    r.role, r.pid, r.ppid
                ));
            }
        }
        for tid in self.tids() {
            if !Path::new(&format!("/proc/{}/task/{tid}", self.pid)).exists() {
                bad.push(format!("thread {tid} is not in /proc/{}/task", self.pid));
            }
        }
        bad
    }

    /// Asserts [`Workload::tree_problems`] is empty.
    pub fn assert_tree(&self, context: &str) {
        let bad = self.tree_problems();
        assert!(
            bad.is_empty(),
            "{context}: the tree of {} (pid {}) is wrong:\n  {}\nlog:\n{}",
            self.name,
            self.pid,
            bad.join("\n  "),
            self.log()
        );
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log after the mark set by [`Workload::mark_log`].
    pub fn log_since_mark(&self) -> String {
        let log = self.log();
        log.get(self.log_mark.get()..).unwrap_or_default().to_owned()
    }

    /// From now on [`Workload::assert_passed`] looks for the verdict only in
    /// output appended after this point (e.g. a restored copy of a workload
    /// whose original already printed PASS).
    pub fn mark_log(&self) {
        self.log_mark.set(self.log().len());
    }

    /// Sends signal `sig`; panics if the process does not exist.
    pub fn send(&self, sig: i32) {
        assert!(
            process::send_signal(self.pid, sig),
            "sending signal {sig} to {} (pid {}): {}\nlog:\n{}",
            self.name,
            self.pid,
            std::io::Error::last_os_error(),
            self.log()
        );
    }

    /// True if the process is alive (exists, not a zombie).
    pub fn is_alive(&self) -> bool {
        if let Some(child) = self.child.lock().expect("child lock").as_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
        }
        process::pid_alive(self.pid)
    }

    /// Asserts the process is alive.
    pub fn assert_alive(&self, context: &str) {
        assert!(
            self.is_alive(),
            "{context}: workload {} (pid {}) is not running\nlog:\n{}",
            self.name,
            self.pid,
            self.log()
        );
    }

    /// If the original child exited, its status (it is then reaped).
    fn child_exit(&self) -> Option<String> {
        let mut guard = self.child.lock().expect("child lock");
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                process::untrack(pid_of(child));
                Some(describe_status(status))
            }
            _ => None,
        }
    }

    /// Number of occurrences of `s` in the log.
    pub fn log_count(&self, s: &str) -> usize {
        self.log().matches(s).count()
    }

    /// Waits until the log holds `n` occurrences of `s`; panics (with the
    /// log) on timeout or if the original process exits first.
    pub fn wait_log_count(&self, s: &str, n: usize, timeout: Duration) {
        let mut exited = None;
        let ok = process::poll_until(timeout, || {
            if self.log_count(s) >= n {
                return true;
            }
            exited = self.child_exit();
            exited.is_some() && self.log_count(s) < n
        });
        let have = self.log_count(s);
        assert!(
            ok && have >= n,
            "workload {} (pid {}): waited {timeout:?} for {n} x {s:?} in its log, found {have}{}\nlog:\n{}",
            self.name,
            self.pid,
            exited.map(|e| format!(" (process exited: {e})")).unwrap_or_default(),
            self.log()
        );
        process::reap_strays();
    }

    /// Waits until the log contains `s`.
    pub fn wait_log_contains(&self, s: &str, timeout: Duration) {
        self.wait_log_count(s, 1, timeout);
    }

    /// Waits for the `READY` line.
    pub fn wait_ready(&self, timeout: Duration) {
        self.wait_log_contains("READY\n", timeout);
    }

    /// Workload-specific steps run before the dump (and in the self-checks,
    /// after READY):
    /// - `stopped`: SIGSTOP, and wait until it is in state `T`;
    /// - others: nothing.
    pub fn prepare(&self) {
        if self.name == "stopped" {
            self.send(libc::SIGSTOP);
            let ok = process::poll_until(Duration::from_secs(5), || process::proc_state(self.pid) == Some('T'));
            assert!(ok, "stopped (pid {}) not in state T after SIGSTOP: {:?}", self.pid, process::proc_state(self.pid));
        }
    }

    /// True if the workload is expected to be stopped (state `T`) between
    /// [`Workload::prepare`] and [`Workload::exercise`].
    pub fn expects_stopped(&self) -> bool {
        self.name == "stopped"
    }

    /// Workload-specific steps run after restore (and in the self-checks),
    /// which the workload's final verdict depends on:
    /// - `stopped`: it must be (still) stopped: state `T`, and no new
    ///   `TICK` and no CPU time for 300 ms; then SIGCONT and wait for 5 new
    ///   `TICK`s;
    /// - `signals`: SIGUSR1, wait for one more `GOT USR1`, then SIGINT (ignored);
    /// - `pauser`: SIGUSR1, wait for one more `WOKE`;
    /// - `sleeper`: wait for one more completed sleep (`SLEPT` line);
    /// - others: nothing.
    pub fn exercise(&self) {
        let t = Duration::from_secs(5);
        match self.name.as_str() {
            "signals" => {
                let n = self.log_count("GOT USR1");
                self.send(libc::SIGUSR1);
                self.wait_log_count("GOT USR1", n + 1, t);
                self.send(libc::SIGINT);
                std::thread::sleep(Duration::from_millis(50));
                self.assert_alive("after SIGINT (must be ignored)");
            }
            "pauser" => {
                let n = self.log_count("WOKE");
                std::thread::sleep(Duration::from_millis(20));
                self.send(libc::SIGUSR1);
                self.wait_log_count("WOKE", n + 1, t);
            }
            "sleeper" => {
                let n = self.log_count("SLEPT ");
                self.wait_log_count("SLEPT ", n + 1, t);
            }
            "stopped" => {
                self.assert_stays_stopped(Duration::from_millis(300));
                let n = self.log_count("TICK ");
                self.send(libc::SIGCONT);
                self.wait_log_count("TICK ", n + 5, t);
            }
            _ => {}
        }
    }

    /// Asserts the process stays in state `T` (job-control stop, not a
    /// tracing stop) for `dur`, with neither new output nor CPU time.
    pub fn assert_stays_stopped(&self, dur: Duration) {
        let log_len = self.log().len();
        let cpu = process::proc_cpu_ticks(self.pid);
        let deadline = Instant::now() + dur;
        loop {
            let state = process::proc_state(self.pid);
            assert!(
                state == Some('T'),
                "{} (pid {}) should be stopped (state T), but is in state {state:?}\nlog:\n{}",
                self.name,
                self.pid,
                self.log()
            );
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = self.log();
        assert_eq!(
            log.len(),
            log_len,
            "{} (pid {}) wrote output while stopped:\n{}",
            self.name,
            self.pid,
            log.get(log_len..).unwrap_or_default()
        );
        let cpu_after = process::proc_cpu_ticks(self.pid);
        assert!(
            cpu.is_some() && cpu == cpu_after,
            "{} (pid {}) used CPU time while stopped: {cpu:?} -> {cpu_after:?}",
            self.name,
            self.pid
        );
    }

    /// Asserts the log holds exactly one `READY` line and no failure, and
    /// that the output since [`Workload::mark_log`] ends with `PASS`.
    pub fn assert_passed(&self) {
        let log = self.log();
        let since = self.log_since_mark();
        let readies = log.lines().filter(|l| *l == "READY").count();
        let failed = log.lines().any(|l| l.starts_with("FAIL") || l.starts_with("CHECK FAILED"));
        let last = since.lines().rev().find(|l| !l.trim().is_empty());
        assert!(
            readies == 1 && !failed && last == Some("PASS"),
            "workload {} (pid {}) did not pass: {readies} READY line(s), failure lines: {failed}, \
             last line {last:?}\nlog ({}):\n{log}",
            self.name,
            self.pid,
            self.log_path().display()
        );
    }

    /// For the harness's own child (not restored): SIGTERM, wait for exit
    /// status 0 and assert PASS.
    pub fn terminate_and_check(&self) {
        let status = self.terminate_and_wait();
        assert!(
            status.success(),
            "workload {} (pid {}) exited with {}\nlog:\n{}",
            self.name,
            self.pid,
            describe_status(status),
            self.log()
        );
        self.assert_passed();
    }

    /// For the harness's own child: SIGTERM, wait for exit status 1 and a
    /// final `FAIL: ...` line; returns the log.
    pub fn terminate_expect_fail(&self) -> String {
        let status = self.terminate_and_wait();
        let log = self.log();
        let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
        assert!(
            status.code() == Some(1) && last.starts_with("FAIL: "),
            "workload {} was expected to FAIL, but exited with {} and last line {last:?}\nlog:\n{log}",
            self.name,
            describe_status(status)
        );
        log
    }

    /// SIGTERM to the original child and wait for it to exit.
    fn terminate_and_wait(&self) -> ExitStatus {
        if self.adopted.load(Ordering::SeqCst) {
            let _ = process::send_signal(self.pid, libc::SIGTERM);
            let status = self.wait_adopted(EXIT_TIMEOUT).unwrap_or_else(|| {
                panic!(
                    "workload {} (pid {}) did not exit within {EXIT_TIMEOUT:?} of SIGTERM\nlog:\n{}",
                    self.name,
                    self.pid,
                    self.log()
                )
            });
            process::reap_strays();
            return status;
        }
        let mut guard = self.child.lock().expect("child lock");
        let child = guard
            .as_mut()
            .unwrap_or_else(|| panic!("workload {} (pid {}) is not the harness's child any more", self.name, self.pid));
        let _ = process::send_signal(self.pid, libc::SIGTERM);
        let status = process::wait_timeout(child, EXIT_TIMEOUT).unwrap_or_else(|| {
            process::kill_and_reap(child);
            panic!(
                "workload {} (pid {}) did not exit within {EXIT_TIMEOUT:?} of SIGTERM\nlog:\n{}",
                self.name,
                self.pid,
                self.log()
            )
        });
        *guard = None;
        drop(guard);
        process::reap_strays();
        status
    }

    /// After a successful, killing dump: reap the original child, which
    /// must have been killed by SIGKILL, so its pid is free for restore.
    pub(crate) fn reap_after_killing_dump(&self) {
        let roles = self.roles();
        let status = if self.adopted.load(Ordering::SeqCst) {
            self.wait_adopted(Duration::from_secs(10))
        } else {
            let mut guard = self.child.lock().expect("child lock");
            let Some(child) = guard.as_mut() else {
                return;
            };
            let st = process::wait_timeout(child, Duration::from_secs(10));
            if st.is_none() {
                process::kill_and_reap(child);
            }
            *guard = None;
            st
        };
        let status = status.unwrap_or_else(|| {
            panic!(
                "workload {} (pid {}) still running 10 s after a successful dump without --leave-running",
                self.name, self.pid
            )
        });
        // the rest of the tree was killed too; its zombies are re-parented
        // to us: reap them so that every pid is free for the restore
        for r in &roles {
            let gone = process::poll_until(Duration::from_secs(10), || {
                process::reap_strays();
                !Path::new(&format!("/proc/{}", r.pid)).exists()
            });
            assert!(
                gone,
                "{} of workload {} (pid {}) still exists 10 s after a killing dump: state {:?}",
                r.role,
                self.name,
                r.pid,
                process::proc_state(r.pid)
            );
        }
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "workload {} (pid {}) after a killing dump: want killed by SIGKILL, got {}\nlog:\n{}",
            self.name,
            self.pid,
            describe_status(status),
            self.log()
        );
    }

    /// True while the original process is still the harness's child.
    pub fn is_original_child(&self) -> bool {
        self.child.lock().expect("child lock").is_some() || self.adopted.load(Ordering::SeqCst)
    }

    /// Waits (by pid) for an adopted workload to exit and reaps it.
    fn wait_adopted(&self, timeout: Duration) -> Option<ExitStatus> {
        let st = process::wait_pid_timeout(self.pid, timeout);
        if st.is_some() {
            self.adopted.store(false, Ordering::SeqCst);
        }
        st
    }

    /// SIGKILLs the original process and every descendant (e.g. to free
    /// its pids), reaps it and waits until every listed role's pid is free.
    pub fn kill_tree_and_reap(&self) {
        let roles = self.roles();
        for pid in process::descendants(self.pid) {
            process::kill_if_comm(pid, &self.comm);
        }
        let _ = process::send_signal(self.pid, libc::SIGKILL);
        if self.adopted.load(Ordering::SeqCst) {
            assert!(
                self.wait_adopted(Duration::from_secs(10)).is_some(),
                "{} (pid {}) survived SIGKILL",
                self.name,
                self.pid
            );
        } else {
            let mut guard = self.child.lock().expect("child lock");
            if let Some(child) = guard.as_mut() {
                process::kill_and_reap(child);
            }
            *guard = None;
        }
        for pid in roles.iter().map(|r| r.pid) {
            let gone = process::poll_until(Duration::from_secs(10), || {
                process::reap_strays();
                !Path::new(&format!("/proc/{pid}")).exists()
            });
            assert!(gone, "pid {pid} of {} did not go away", self.name);
        }
    }
}

/// The command name (`comm`, 15 bytes at most) of executable `exe`.
fn comm_of(exe: &Path) -> String {
    exe.file_name().expect("exe file name").to_string_lossy().chars().take(15).collect()
}

impl Drop for Workload {
    fn drop(&mut self) {
        // the rest of the tree first (children of this workload, same comm)
        let descendants = process::descendants(self.pid);
        for pid in &descendants {
            process::kill_if_comm(*pid, &self.comm);
        }
        let mut guard = self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(child) = guard.as_mut() {
            process::kill_and_reap(child);
        } else if self.adopted.load(Ordering::SeqCst) {
            process::kill_if_comm(self.pid, &self.comm);
            let _ = self.wait_adopted(Duration::from_secs(5));
            process::untrack(self.pid);
        } else if process::kill_if_comm(self.pid, &self.comm) {
            process::poll_until(Duration::from_secs(2), || {
                process::reap_strays();
                !process::pid_alive(self.pid)
            });
        }
        *guard = None;
        drop(guard);
        if !descendants.is_empty() {
            process::poll_until(Duration::from_secs(2), || {
                process::reap_strays();
                descendants.iter().all(|p| !process::pid_alive(*p))
            });
        }
        process::reap_strays();
    }
}
