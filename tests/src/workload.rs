//! Test workloads: spawning, the READY/PASS protocol, logs and signals.

use std::cell::Cell;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

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
    "bigmem",
];

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
/// command name is SIGKILLed.
pub struct Workload {
    name: String,
    comm: String,
    pid: i32,
    child: Mutex<Option<Child>>,
    log_mark: Cell<usize>,
    dir: TestDir,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("dir", &self.dir.path())
            .finish()
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
    /// (e.g. `("CRT_WL_SABOTAGE", "1")`).
    pub fn spawn_with_env(name: &str, env: &[(&str, &str)]) -> Self {
        let exe = workload_exe(name);
        let dir = TestDir::new(&format!("crt-wl-{name}-"));
        let log_path = dir.path().join("out.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create out.log");
        let log2 = log.try_clone().expect("dup out.log");
        let mut cmd = Command::new(&exe);
        cmd.arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .env_remove("CRT_WL_SABOTAGE");
        process::close_extra_fds(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = process::spawn_tracked(&mut cmd)
            .unwrap_or_else(|e| panic!("spawning workload {} ({}): {e}", name, exe.display()));
        let comm: String = exe
            .file_name()
            .expect("exe file name")
            .to_string_lossy()
            .chars()
            .take(15)
            .collect();
        Self {
            name: name.to_owned(),
            comm,
            pid: pid_of(&child),
            child: Mutex::new(Some(child)),
            log_mark: Cell::new(0),
            dir,
        }
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
        self.dir.path()
    }

    /// Path of its `out.log`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("out.log")
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log after the mark set by [`Workload::mark_log`].
    pub fn log_since_mark(&self) -> String {
        let log = self.log();
        log.get(self.log_mark.get()..)
            .unwrap_or_default()
            .to_owned()
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

    /// Workload-specific steps run after restore (and in the self-checks),
    /// which the workload's final verdict depends on:
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
            _ => {}
        }
    }

    /// Asserts the log holds exactly one `READY` line and no failure, and
    /// that the output since [`Workload::mark_log`] ends with `PASS`.
    pub fn assert_passed(&self) {
        let log = self.log();
        let since = self.log_since_mark();
        let readies = log.lines().filter(|l| *l == "READY").count();
        let failed = log
            .lines()
            .any(|l| l.starts_with("FAIL") || l.starts_with("CHECK FAILED"));
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
        let last = log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            status.code() == Some(1) && last.starts_with("FAIL: "),
            "workload {} was expected to FAIL, but exited with {} and last line {last:?}\nlog:\n{log}",
            self.name,
            describe_status(status)
        );
        log
    }

    /// SIGTERM to the original child and wait for it to exit.
    fn terminate_and_wait(&self) -> std::process::ExitStatus {
        let mut guard = self.child.lock().expect("child lock");
        let child = guard.as_mut().unwrap_or_else(|| {
            panic!(
                "workload {} (pid {}) is not the harness's child any more",
                self.name, self.pid
            )
        });
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
        let mut guard = self.child.lock().expect("child lock");
        let Some(child) = guard.as_mut() else {
            return;
        };
        let status = process::wait_timeout(child, Duration::from_secs(10)).unwrap_or_else(|| {
            process::kill_and_reap(child);
            panic!(
                "workload {} (pid {}) still running 10 s after a successful dump without --leave-running",
                self.name, self.pid
            )
        });
        *guard = None;
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
        self.child.lock().expect("child lock").is_some()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let mut guard = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(child) = guard.as_mut() {
            process::kill_and_reap(child);
        } else if process::kill_if_comm(self.pid, &self.comm) {
            process::poll_until(Duration::from_secs(2), || {
                process::reap_strays();
                !process::pid_alive(self.pid)
            });
        }
        *guard = None;
        drop(guard);
        process::reap_strays();
    }
}
