//! Running the crt CLI: generic invocation with a timeout, dump, restore
//! (the [`Restored`] handle) and forests of workloads dumped together.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::dirs::TestDir;
use crate::images::DirSnapshot;
use crate::process::{self, describe_status, pid_of};
use crate::workload::Workload;
use crate::{CRT_TIMEOUT, EXIT_TIMEOUT, READY_TIMEOUT};

/// Path of the crt binary under test.
pub fn crt_path() -> PathBuf {
    crate::bins().crt.clone()
}

/// The outcome of one crt run.
#[derive(Debug, Clone)]
pub struct CrtOutput {
    /// Arguments crt was run with.
    pub args: Vec<String>,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl fmt::Display for CrtOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crt {}\n  => {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            describe_status(self.status),
            self.stdout,
            self.stderr
        )
    }
}

impl CrtOutput {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Asserts exit status 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "crt was expected to succeed:\n{self}");
        self
    }

    /// Asserts a non-zero exit code (an error, not a crash by signal).
    pub fn assert_failure(&self) -> &Self {
        assert!(
            matches!(self.status.code(), Some(c) if c != 0),
            "crt was expected to fail with a non-zero exit code:\n{self}"
        );
        self
    }

    /// Asserts stderr contains `s`.
    pub fn assert_stderr_contains(&self, s: &str) -> &Self {
        assert!(self.stderr.contains(s), "crt stderr was expected to mention {s:?}:\n{self}");
        self
    }

    /// Asserts stderr mentions the number `n` as a whole number (not as part
    /// of a longer run of digits), e.g. a pid or an fd.
    pub fn assert_stderr_mentions_number(&self, n: impl fmt::Display) -> &Self {
        let n = n.to_string();
        let found = self.stderr.split(|c: char| !c.is_ascii_digit()).any(|tok| tok == n);
        assert!(found, "crt stderr was expected to mention the number {n}:\n{self}");
        self
    }

    /// Asserts stderr contains `s`, ignoring ASCII case.
    pub fn assert_stderr_contains_nocase(&self, s: &str) -> &Self {
        assert!(
            self.stderr.to_ascii_lowercase().contains(&s.to_ascii_lowercase()),
            "crt stderr was expected to mention {s:?} (any case):\n{self}"
        );
        self
    }
}

/// Checks every crt run must pass whatever its outcome: it was not killed by
/// a signal and did not panic.
fn check_sane(out: &CrtOutput) {
    assert!(!out.stderr.contains("panicked"), "crt panicked:\n{out}");
    assert!(out.status.code().is_some(), "crt was killed by a signal (crash?):\n{out}");
}

/// A crt process whose stdout/stderr go to files.
struct CrtProcess {
    args: Vec<String>,
    child: Child,
    out_dir: TestDir,
}

impl CrtProcess {
    fn spawn<S: AsRef<OsStr>>(args: &[S]) -> Self {
        Self::spawn_env(args, &[])
    }

    /// Spawns crt with extra environment variables `envs` (for this crt
    /// process only). `CRT_FAULT` is never inherited from the test process.
    fn spawn_env<S: AsRef<OsStr>>(args: &[S], envs: &[(&str, &str)]) -> Self {
        let out_dir = TestDir::new("crt-out-");
        let stdout = std::fs::File::create(out_dir.path().join("stdout")).expect("create stdout file");
        let stderr = std::fs::File::create(out_dir.path().join("stderr")).expect("create stderr file");
        let mut cmd = Command::new(crt_path());
        cmd.args(args).stdin(Stdio::null()).stdout(stdout).stderr(stderr).env_remove("CRT_FAULT");
        cmd.envs(envs.iter().copied());
        process::close_extra_fds(&mut cmd);
        let child = process::spawn_tracked(&mut cmd).expect("spawn crt");
        Self { args: args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect(), child, out_dir }
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.out_dir.path().join(name)).unwrap_or_default()
    }

    fn output(&self, status: ExitStatus) -> CrtOutput {
        CrtOutput { args: self.args.clone(), status, stdout: self.read("stdout"), stderr: self.read("stderr") }
    }

    /// Waits up to `timeout`; on timeout kills crt and panics.
    fn wait(&mut self, timeout: Duration, context: &str) -> CrtOutput {
        let status = process::wait_timeout(&mut self.child, timeout);
        let Some(status) = status else {
            process::kill_and_reap(&mut self.child);
            panic!(
                "{context}: crt {} did not exit within {timeout:?} (killed)\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.args.join(" "),
                self.read("stdout"),
                self.read("stderr")
            );
        };
        process::reap_strays();
        let out = self.output(status);
        check_sane(&out);
        out
    }
}

impl Drop for CrtProcess {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
        process::reap_strays();
    }
}

/// Runs crt with `args`, waits at most [`CRT_TIMEOUT`] (then kills it and
/// panics). Asserts it neither panicked nor crashed.
pub fn crt<S: AsRef<OsStr>>(args: &[S]) -> CrtOutput {
    crt_with_timeout(args, CRT_TIMEOUT)
}

/// [`crt`] with an explicit timeout.
pub fn crt_with_timeout<S: AsRef<OsStr>>(args: &[S], timeout: Duration) -> CrtOutput {
    let mut p = CrtProcess::spawn(args);
    p.wait(timeout, "crt")
}

/// [`crt`] with extra environment variables for the crt process only
/// (e.g. `[("CRT_FAULT", "dump-after-pages")]`).
pub fn crt_env<S: AsRef<OsStr>>(args: &[S], envs: &[(&str, &str)]) -> CrtOutput {
    let mut p = CrtProcess::spawn_env(args, envs);
    p.wait(CRT_TIMEOUT, "crt")
}

/// `--tree` argument for a set of workloads: "pid1,pid2,...".
pub fn tree_arg(workloads: &[&Workload]) -> String {
    workloads.iter().map(|w| w.pid().to_string()).collect::<Vec<_>>().join(",")
}

/// `crt dump --tree <pids> -D img_dir <extra...>`.
///
/// Enforces the dump contract on top of returning the output:
/// - success without `--leave-running`: every original process is reaped
///   at once and must have died by SIGKILL (its pid is then free);
/// - success with `--leave-running`: every process is still running;
/// - failure: every process is still running and the contents of `img_dir`
///   (if it was a directory) are exactly what they were before.
pub fn dump(workloads: &[&Workload], img_dir: &Path, extra: &[&str]) -> CrtOutput {
    dump_env(workloads, img_dir, extra, &[])
}

/// [`dump`] with extra environment variables for the crt process only
/// (e.g. `CRT_FAULT`); the same contract checks.
pub fn dump_env(workloads: &[&Workload], img_dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> CrtOutput {
    let before = img_dir.is_dir().then(|| DirSnapshot::take(img_dir));
    let mut args: Vec<String> = vec!["dump".into(), "--tree".into(), tree_arg(workloads), "-D".into()];
    args.push(img_dir.to_string_lossy().into_owned());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let out = crt_env(&args, envs);
    let leave_running = extra.contains(&"--leave-running");
    if out.success() && !leave_running {
        for w in workloads {
            w.reap_after_killing_dump();
        }
    } else {
        for w in workloads {
            let ctx = if out.success() { "after dump --leave-running" } else { "after a failed dump" };
            assert!(
                w.is_alive(),
                "{ctx}: workload {} (pid {}) is not running\n{out}\nlog:\n{}",
                w.name(),
                w.pid(),
                w.log()
            );
            // the rest of its tree too, untraced
            let mut bad = w.tree_problems();
            if !out.success() {
                for pid in w.all_pids() {
                    let tracer = process::proc_status_field(pid, "TracerPid");
                    if tracer.is_some() && tracer.as_deref() != Some("0") {
                        bad.push(format!("pid {pid} is still traced: TracerPid {tracer:?}"));
                    }
                }
            }
            assert!(
                bad.is_empty(),
                "{ctx}: the tree of {} (pid {}) is not intact:\n  {}\n{out}\nlog:\n{}",
                w.name(),
                w.pid(),
                bad.join("\n  "),
                w.log()
            );
        }
    }
    if !out.success() {
        if let Some(before) = before {
            let after = DirSnapshot::take(img_dir);
            assert_eq!(before, after, "a failed dump changed the image directory {}\n{out}", img_dir.display());
        }
    }
    process::reap_strays();
    out
}

/// A running `crt restore -D <img>`: the restored processes' parent.
pub struct Restored {
    proc: Option<CrtProcess>,
    pid: i32,
    /// The `--stats` file crt writes once the forest is resumed: until it
    /// exists, a task that looks running may still be crt's fresh fork of
    /// it, not yet traced, with none of its state (credentials) restored.
    resumed: PathBuf,
}

impl fmt::Debug for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Restored").field("pid", &self.pid).finish()
    }
}

impl Restored {
    /// Spawns `crt restore -D img_dir <extra...>` (does not wait).
    pub fn start(img_dir: &Path, extra: &[&str]) -> Self {
        Self::start_env(img_dir, extra, &[])
    }

    /// [`Restored::start`] with extra environment variables for the crt
    /// process only (e.g. `CRT_FAULT`).
    pub fn start_env(img_dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut args: Vec<String> = vec!["restore".into(), "-D".into(), img_dir.to_string_lossy().into_owned()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let given = extra.iter().position(|a| *a == "--stats").and_then(|i| extra.get(i + 1));
        let resumed = match given {
            Some(p) => PathBuf::from(p),
            None => {
                let p = img_dir.with_extension("resumed.json");
                args.extend(["--stats".to_owned(), p.to_string_lossy().into_owned()]);
                p
            }
        };
        let _ = std::fs::remove_file(&resumed);
        let proc = CrtProcess::spawn_env(&args, envs);
        let pid = pid_of(&proc.child);
        Self { proc: Some(proc), pid, resumed }
    }

    /// Pid of the `crt restore` process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn proc_mut(&mut self) -> &mut CrtProcess {
        self.proc.as_mut().expect("crt restore process")
    }

    /// What crt restore wrote so far.
    pub fn stderr(&self) -> String {
        self.proc.as_ref().map(|p| p.read("stderr")).unwrap_or_default()
    }

    /// Waits until each root pid runs as a child of crt restore: it exists,
    /// is not traced (`TracerPid: 0`), not stopped nor a zombie, and its
    /// `PPid` is the crt restore process. Panics on timeout or if crt exits.
    pub fn wait_running(&mut self, roots: &[&Workload]) {
        for w in roots {
            self.wait_pid_running(w.pid(), Some(self.pid), READY_TIMEOUT, w);
        }
        process::reap_strays();
    }

    /// Like [`Restored::wait_running`] for a non-root (its parent is another
    /// restored process `ppid`).
    pub fn wait_child_running(&mut self, w: &Workload, ppid: i32) {
        self.wait_pid_running(w.pid(), Some(ppid), READY_TIMEOUT, w);
    }

    /// Like [`Restored::wait_running`], but a root may also be stopped
    /// (state `T`, job control: it was stopped when dumped), and then the
    /// rest of each root's tree must be restored as it recorded it
    /// ([`Workload::tree_problems`]: parents, zombies, threads).
    pub fn wait_restored(&mut self, roots: &[&Workload]) {
        for w in roots {
            self.wait_pid_state(w.pid(), Some(self.pid), READY_TIMEOUT, w, true);
        }
        for w in roots {
            self.wait_tree(w);
        }
        process::reap_strays();
    }

    /// Waits until [`Workload::tree_problems`] of `w` is empty; panics on
    /// timeout (listing what is wrong) or if crt restore exits.
    pub fn wait_tree(&mut self, w: &Workload) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let bad = w.tree_problems();
            if bad.is_empty() {
                return;
            }
            if let Ok(Some(status)) = self.proc_mut().child.try_wait() {
                process::untrack(self.pid);
                let out = self.proc_mut().output(status);
                panic!(
                    "crt restore exited before the tree of {} (pid {}) was restored:\n  {}\n{out}\nlog:\n{}",
                    w.name(),
                    w.pid(),
                    bad.join("\n  "),
                    w.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "the tree of {} (pid {}) is not restored as dumped after {READY_TIMEOUT:?}:\n  {}\n\
                     crt stderr:\n{}\nlog:\n{}",
                    w.name(),
                    w.pid(),
                    bad.join("\n  "),
                    self.stderr(),
                    w.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_pid_running(&mut self, pid: i32, ppid: Option<i32>, timeout: Duration, w: &Workload) {
        self.wait_pid_state(pid, ppid, timeout, w, false);
    }

    fn wait_pid_state(&mut self, pid: i32, ppid: Option<i32>, timeout: Duration, w: &Workload, stopped_ok: bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let tracer = process::proc_status_field(pid, "TracerPid");
            let parent = process::proc_status_field(pid, "PPid");
            let state = process::proc_status_field(pid, "State");
            let ok = self.resumed.exists()
                && tracer.as_deref() == Some("0")
                && ppid.is_none_or(|pp| parent.as_deref() == Some(pp.to_string().as_str()))
                && state
                    .as_deref()
                    .is_some_and(|s| !s.starts_with(['t', 'T', 'Z', 'X']) || (stopped_ok && s.starts_with('T')));
            if ok {
                return;
            }
            let last = format!("State={state:?} PPid={parent:?} TracerPid={tracer:?}");
            if let Ok(Some(status)) = self.proc_mut().child.try_wait() {
                process::untrack(self.pid);
                let out = self.proc_mut().output(status);
                panic!(
                    "crt restore exited before pid {pid} ({}) was running ({last}):\n{out}\nlog:\n{}",
                    w.name(),
                    w.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "pid {pid} ({}) not running under crt restore (pid {}) after {timeout:?}: {last}\n\
                     crt stderr:\n{}\nlog:\n{}",
                    w.name(),
                    self.pid,
                    self.stderr(),
                    w.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for crt restore to exit (at most `timeout`, else kill + panic).
    pub fn wait_exit(&mut self, timeout: Duration) -> CrtOutput {
        let out = self.proc_mut().wait(timeout, "crt restore");
        self.proc = None;
        out
    }

    /// Sends SIGTERM to every root, waits for crt restore to exit with
    /// status 0, and asserts every workload printed exactly one READY and
    /// ends with PASS (logs are printed on failure).
    pub fn finish(mut self, roots: &[&Workload]) -> CrtOutput {
        for w in roots {
            assert!(
                process::send_signal(w.pid(), libc::SIGTERM),
                "SIGTERM to restored {} (pid {}): {}\ncrt stderr:\n{}\nlog:\n{}",
                w.name(),
                w.pid(),
                std::io::Error::last_os_error(),
                self.stderr(),
                w.log()
            );
        }
        let out = self.wait_exit(EXIT_TIMEOUT);
        let logs: String =
            roots.iter().map(|w| format!("--- log of {} (pid {}) ---\n{}", w.name(), w.pid(), w.log())).collect();
        assert!(out.success(), "crt restore did not exit 0:\n{out}\n{logs}");
        for w in roots {
            w.assert_passed();
        }
        out
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        // drops the CrtProcess, which SIGKILLs crt if it still runs
        self.proc = None;
    }
}

/// A set of workloads dumped and restored together as one forest
/// (`--tree a,b,c`), with their image directory.
#[derive(Debug)]
pub struct Forest {
    /// The workloads, in `--tree` order.
    pub workloads: Vec<Workload>,
    img: TestDir,
}

/// How long a workload runs before the dump, and after restore before it is
/// exercised and terminated.
pub const RUN_BEFORE_DUMP: Duration = Duration::from_millis(200);
/// See [`RUN_BEFORE_DUMP`].
pub const RUN_AFTER_RESTORE: Duration = Duration::from_millis(300);

impl Forest {
    /// Spawns the named workloads (C names or [`crate::RUST_STD`]); a
    /// launcher contributes all its adopted roots
    /// ([`Workload::spawn_group`]).
    pub fn spawn(names: &[&str]) -> Self {
        Self::from_workloads(names.iter().flat_map(|n| Workload::spawn_group(n)).collect())
    }

    /// Wraps already spawned workloads.
    pub fn from_workloads(workloads: Vec<Workload>) -> Self {
        Self { workloads, img: TestDir::new("crt-img-") }
    }

    /// The image directory.
    pub fn img_dir(&self) -> &Path {
        self.img.path()
    }

    /// References to the workloads.
    pub fn refs(&self) -> Vec<&Workload> {
        self.workloads.iter().collect()
    }

    /// Waits for READY from every workload.
    pub fn wait_ready(&self) {
        for w in &self.workloads {
            w.wait_ready(READY_TIMEOUT);
        }
    }

    /// Dumps all workloads as one forest into the image directory.
    pub fn dump(&self, extra: &[&str]) -> CrtOutput {
        dump(&self.refs(), self.img_dir(), extra)
    }

    /// [`Forest::dump`] with extra environment variables for crt
    /// ([`dump_env`]).
    pub fn dump_env(&self, extra: &[&str], envs: &[(&str, &str)]) -> CrtOutput {
        dump_env(&self.refs(), self.img_dir(), extra, envs)
    }

    /// Starts `crt restore` and waits until every root is running (or
    /// stopped, for a workload dumped stopped) with its whole tree
    /// ([`Restored::wait_restored`]).
    pub fn restore(&self, extra: &[&str]) -> Restored {
        let mut r = Restored::start(self.img_dir(), extra);
        r.wait_restored(&self.refs());
        r
    }

    /// Runs [`Workload::prepare`] on each workload (before a dump).
    pub fn prepare(&self) {
        for w in &self.workloads {
            w.prepare();
        }
    }

    /// Asserts every workload's tree is as it recorded it
    /// ([`Workload::assert_tree`]).
    pub fn assert_trees(&self, context: &str) {
        for w in &self.workloads {
            w.assert_tree(context);
        }
    }

    /// The full cycle: READY, [`Workload::prepare`], run
    /// [`RUN_BEFORE_DUMP`], killing dump (must succeed), restore (whole
    /// trees), run [`RUN_AFTER_RESTORE`], [`Workload::exercise`] each,
    /// SIGTERM, and assert crt restore exits 0 and every workload PASSes.
    pub fn roundtrip(&self) {
        self.wait_ready();
        self.assert_trees("before the dump");
        self.prepare();
        std::thread::sleep(RUN_BEFORE_DUMP);
        self.dump(&[]).assert_success();
        crate::images::assert_image_files(self.img_dir(), &self.refs());
        let r = self.restore(&[]);
        std::thread::sleep(RUN_AFTER_RESTORE);
        for w in &self.workloads {
            w.exercise();
        }
        r.finish(&self.refs());
    }
}

/// [`Forest::roundtrip`] of a single workload.
pub fn roundtrip(name: &str) {
    Forest::spawn(&[name]).roundtrip();
}

/// A number from a `crt --stats` JSON file (NaN if absent): the benchmarks
/// read crt's own phase timings and peak memory with it.
pub fn stats_field(path: &Path, key: &str) -> f64 {
    let s = std::fs::read_to_string(path).expect("stats file");
    s.split(&format!("\"{key}\":"))
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// After a dump that was refused: no file was left in `img`, and every
/// workload runs on untraced and, once terminated, passes its own checks.
pub fn assert_refusal_left_all_running(ws: &[Workload], img: &Path) {
    let snap = DirSnapshot::take(img);
    assert!(snap.is_empty(), "a refused dump left files: {snap:?}");
    for w in ws {
        w.assert_alive("after the refused dump");
        assert_eq!(process::proc_status_field(w.pid(), "TracerPid").as_deref(), Some("0"));
    }
    std::thread::sleep(RUN_AFTER_RESTORE);
    for w in ws {
        w.terminate_and_check();
    }
}
