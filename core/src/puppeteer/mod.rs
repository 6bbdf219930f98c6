//! The puppeteer: building tasks from outside.
//!
//! A root is created by crt ([`fork_stopped`]); every other process by its
//! restored parent ([`Builder::spawn_child`], an injected `clone3` with
//! `set_tid`), threads by their process ([`Builder::create_threads`]). Each
//! new process is a copy of its creator, which a [`Builder`] turns into the
//! dumped process with syscalls injected through its vdso
//! (see `docs/internals.md`):
//!
//! *phase A* ([`Builder::phase_a`]): rseq off → crt's pidfd parked,
//! inherited fds closed → address space emptied → vdso moved → scratch →
//! memory areas → pages → mm fields → rlimits → fds → cwd, umask, name,
//! session; then its children are created from it;
//! *phase B* ([`Builder::phase_b`]), once the whole forest exists: signal
//! actions, masks, timers, pending signals → per-thread tid address,
//! altstack, rseq → credentials → registers.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crt_plugin_api::VmaDesc;
use tracing::{debug, info_span, warn};

use crate::dump::VDSO_NAMES;
use crate::handlers::Registry;
use crate::images::{pb, ImageDir, ImageError, PAGE_SIZE};
use crate::procfs::{self, MapsEntry};
use crate::ptrace::{self, Stop};
use crate::puppet::{self, Puppet};
use crate::restore::{RestoreError, RestoreStats};
use crate::task_state;

mod attrs;
mod creds;
pub use creds::securebits;
mod files;
mod memory;

/// One task's images, read and checked.
#[derive(Debug)]
pub struct Loaded {
    /// `task-<pid>.img`.
    pub task: pb::Task,
    /// `pagemap-<pid>.img`.
    pub pagemap: pb::PageMap,
    /// `pages-<pid>.img` and its other shards, headers checked.
    pub pages: Vec<File>,
}

/// Scratch memory crt maps inside a task while building it.
const SCRATCH_LEN: u64 = 16 * PAGE_SIZE;
/// Offsets inside the scratch area: small arguments, the auxv, clone_args.
const S_ARG: u64 = 1024;
const S_AUXV: u64 = 2048;
const S_CLONE: u64 = 4096;
/// Offset of the part of the scratch lent to plugins.
const S_PLUGIN: u64 = 4 * 4096;
/// Lowest address crt maps its scratch area at.
const SCRATCH_FLOOR: u64 = 0x10_0000;

/// Consistency checks of a task image against this machine.
pub fn check_task(dir: &ImageDir, task: &pb::Task, own: &[MapsEntry]) -> Result<(), RestoreError> {
    let invalid = |what: String| -> RestoreError { ImageError::Invalid { path: dir.task_path(task.pid), what }.into() };
    if task.zombie {
        return Ok(()); // nothing but its exit status to restore
    }
    let mm = task.mm.as_ref().ok_or_else(|| invalid("no mm state".into()))?;
    if task.threads.is_empty() {
        return Err(invalid("no threads".into()));
    }
    if mm.vdso_block.len() != own.len() {
        return Err(invalid(format!("vdso block has {} mappings, this kernel has {}", mm.vdso_block.len(), own.len())));
    }
    for (i, (img, mine)) in mm.vdso_block.iter().zip(own).enumerate() {
        let same_size = img.end - img.start == mine.end - mine.start;
        let same_off = img.start.wrapping_sub(mm.vdso_block[0].start) == mine.start.wrapping_sub(own[0].start);
        if img.name != mine.name || !same_size || !same_off {
            return Err(invalid(format!(
                "vdso mapping {i} ({}, {} bytes) differs from this kernel's ({}, {} bytes)",
                img.name,
                img.end - img.start,
                mine.name,
                mine.end - mine.start
            )));
        }
    }
    for t in &task.threads {
        if ptrace::regs_from_bytes(&t.regs).is_none() {
            return Err(invalid(format!("thread {}: registers have the wrong size", t.tid)));
        }
    }
    let mut last_end = 0;
    for v in &task.vmas {
        if v.start >= v.end || v.start < last_end || v.start % PAGE_SIZE != 0 || v.end % PAGE_SIZE != 0 {
            return Err(invalid(format!("memory area {:#x}-{:#x} is malformed or out of order", v.start, v.end)));
        }
        last_end = v.end;
    }
    Ok(())
}

/// Tasks die with crt; children and threads they are made to create are
/// traced from birth.
const TRACE_OPTIONS: libc::c_int = libc::PTRACE_O_EXITKILL
    | libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEVFORK
    | ptrace::PTRACE_O_SUSPEND_SECCOMP;

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// How long a pid that is busy but not in /proc (a process being torn
/// down: its /proc entry is gone, its pid not yet free) may take to free.
const PID_RELEASE_WAIT: Duration = Duration::from_secs(3);

/// Runs `attempt` (a `clone3` with `set_tid`) again while it fails with
/// `EEXIST` for a pid that no process shows in /proc; the error for a pid
/// that stays busy.
fn retry_busy_pid<T>(pid: i32, mut attempt: impl FnMut() -> Result<T, i32>) -> Result<T, RestoreError> {
    let deadline = Instant::now() + PID_RELEASE_WAIT;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if e != libc::EEXIST => {
                return Err(RestoreError::Clone { pid, source: std::io::Error::from_raw_os_error(e) })
            }
            Err(_) => {}
        }
        match procfs::stat(pid) {
            Ok(stat) => return Err(RestoreError::PidBusy { pid, comm: stat.comm, state: stat.state }),
            Err(_) if Instant::now() > deadline => return Err(RestoreError::PidReleasing { pid }),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Creates a child of crt with pid `pid` that stops itself under ptrace.
pub fn fork_stopped(pid: i32) -> Result<i32, RestoreError> {
    let child = retry_busy_pid(pid, || fork_stopped_once(pid))?;
    adopt_stopped(pid, child)
}

fn fork_stopped_once(pid: i32) -> Result<i32, i32> {
    let tids = [pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: `args` is a valid clone_args; `set_tid` points at `tids`,
    // alive across the call. Without CLONE_VM the child gets a copy of our
    // memory and continues below like after fork().
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, size_of::<CloneArgs>()) };
    if r == 0 {
        // Child: only raw syscalls (glibc's cached tid is the parent's here).
        // The parent takes over from the SIGSTOP and never lets it return.
        // SAFETY: PTRACE_TRACEME takes no pointers.
        unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) };
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::syscall(libc::SYS_getpid) };
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::syscall(libc::SYS_kill, me, libc::SIGSTOP) };
        // SAFETY: exit_group has no preconditions.
        unsafe { libc::syscall(libc::SYS_exit_group, 127) };
    }
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
    }
    Ok(r as i32)
}

/// Takes over the child [`fork_stopped_once`] made: its first stop, then
/// crt's ptrace options.
fn adopt_stopped(pid: i32, child: i32) -> Result<i32, RestoreError> {
    match ptrace::wait(child)? {
        Stop::Stopped { sig, .. } if sig == libc::SIGSTOP => {}
        other => {
            return Err(RestoreError::step(
                pid,
                "waiting for the new task to stop",
                std::io::Error::other(format!("{other:?}")),
            ))
        }
    }
    ptrace::set_options(child, TRACE_OPTIONS)?;
    Ok(child)
}

/// State shared by every task of one restore.
pub struct RestoreCtx<'a> {
    /// The handlers.
    pub registry: &'a Registry,
    /// Open file descriptions already recreated, by image file id.
    files: HashMap<u32, OwnedFd>,
    /// crt's own signal actions, which every new task starts with.
    baseline: Vec<pb::SigAction>,
    /// Plugin blobs from the image.
    pub blobs: crate::puppet::Blobs,
}

impl<'a> RestoreCtx<'a> {
    /// A context for one restore.
    pub fn new(registry: &'a Registry, blobs: crate::puppet::Blobs) -> Self {
        Self { registry, files: HashMap::new(), baseline: attrs::own_sigactions(), blobs }
    }
}

impl CloneArgs {
    fn to_bytes(&self) -> Vec<u8> {
        [
            self.flags,
            self.pidfd,
            self.child_tid,
            self.parent_tid,
            self.exit_signal,
            self.stack,
            self.stack_size,
            self.tls,
            self.set_tid,
            self.set_tid_size,
            self.cgroup,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }
}

/// State while rebuilding one process.
pub struct Builder {
    /// The process.
    pub pid: i32,
    /// Its main thread.
    p: Puppet,
    /// Its other threads, once created.
    threads: Vec<Puppet>,
    /// A pidfd of crt, open inside the task: the task pulls the fds crt
    /// prepared with `pidfd_getfd` (one injected syscall per fd).
    remote_pidfd: u64,
    scratch: u64,
    /// One fd table with its parent (CLONE_FILES): the parent installs the fds.
    shares_files: bool,
    /// One cwd/umask with its parent (CLONE_FS): the parent sets them.
    shares_fs: bool,
    /// Plugin blobs, lent to thread puppets too.
    blobs: Option<crate::puppet::Blobs>,
    /// A root of the forest (created by crt, not by a restored parent).
    pub is_root: bool,
}

fn step<E: std::error::Error + Send + Sync + 'static>(pid: i32, what: &str) -> impl FnOnce(E) -> RestoreError + '_ {
    move |e| RestoreError::step(pid, what.to_string(), e)
}

fn other(pid: i32, what: impl Into<String>, msg: String) -> RestoreError {
    RestoreError::step(pid, what, std::io::Error::other(msg))
}

impl Builder {
    /// Takes over the stopped new process `pid` (a copy of its creator;
    /// `parent_pidfd` is the creator's pidfd number when they share an fd table).
    pub fn start(pid: i32, task: &pb::Task, parent_pidfd: Option<u64>) -> Result<Self, RestoreError> {
        let regs = ptrace::get_regs(pid)?;
        let gadget = puppet::find_gadget(pid)?;
        // Every signal stays blocked while crt works inside the process
        // (its threads and children inherit the mask): a signal queued by
        // the image or sent from outside stays pending instead of being
        // taken off the queue by an injected syscall. `finish` sets the
        // dumped masks last.
        ptrace::set_sigmask(pid, !0)?;
        let mut p = Puppet::new(pid, regs, gadget);
        let me = u64::from(std::process::id());
        let shares_files = task.files_shared_with_parent;
        let remote_pidfd = match parent_pidfd.filter(|_| shares_files) {
            Some(fd) => fd,
            None => p.call("pidfd_open(crt)", libc::SYS_pidfd_open, [me, 0, 0, 0, 0, 0])?,
        };
        if task.sid == pid {
            // A session leader: before it creates any child.
            p.call("setsid", libc::SYS_setsid, [0; 6])?;
        }
        Ok(Self {
            pid,
            p,
            threads: Vec::new(),
            remote_pidfd,
            scratch: 0,
            shares_files,
            shares_fs: task.fs_shared_with_parent,
            blobs: None,
            is_root: false,
        })
    }

    /// Gives the plugin blobs of the image to this process's puppets.
    pub fn set_blobs(&mut self, blobs: crate::puppet::Blobs) {
        self.p.set_blobs(blobs.clone());
        self.blobs = Some(blobs);
    }

    /// Restore hook `after_fork`: the process exists, nothing is restored yet.
    pub fn after_fork(&mut self, registry: &Registry) -> Result<(), RestoreError> {
        let task = &mut self.p;
        registry.hook("restore_after_fork", |h| h.restore_after_fork(crate::collect::task_ref(task)))?;
        Ok(())
    }

    /// Phase A: everything but signals, rseq, credentials and registers.
    pub fn phase_a(
        &mut self,
        ctx: &mut RestoreCtx<'_>,
        loaded: &Loaded,
        stats: &mut RestoreStats,
    ) -> Result<(), RestoreError> {
        let task = &loaded.task;
        let Some(mm) = task.mm.as_ref() else { unreachable!("check_task verified mm") };
        let t = Instant::now();
        self.unregister_rseq()?;
        if !self.shares_files {
            self.park_pidfd(task)?;
        }
        self.empty_address_space(task)?;
        self.move_vdso(mm)?;
        self.map_scratch(task, mm)?;
        self.map_areas(ctx, task)?;
        stats.map += t.elapsed().as_secs_f64();

        let t = Instant::now();
        {
            let _s = info_span!("fill").entered();
            stats.page_bytes += self.fill(loaded)?;
        }
        stats.fill += t.elapsed().as_secs_f64();

        let t = Instant::now();
        self.set_mm(mm)?;
        task_state::write_rlimits(self.pid, &task.rlimits).map_err(step(self.pid, "setting rlimits"))?;
        if !self.shares_files {
            self.install_fds(ctx, task)?;
        }
        self.take_locks(task)?;
        self.set_attributes(task)?;
        stats.map += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// Phase B, once the forest exists: signals, per-thread state,
    /// credentials, registers.
    pub fn phase_b(&mut self, ctx: &RestoreCtx<'_>, task: &pb::Task) -> Result<(), RestoreError> {
        self.set_signals(ctx, task)?;
        self.set_thread_state(task)?;
        let p = &mut self.p;
        ctx.registry.hook("restore_resume", |h| h.restore_resume(crate::collect::task_ref(p)))?;
        self.set_seccomp(task)?;
        self.set_creds(task)?;
        self.set_leases_and_owners(task)?;
        self.finish(task)?;
        debug!(pid = self.pid, injected = self.p.injected(), "task rebuilt");
        Ok(())
    }

    fn unregister_rseq(&mut self) -> Result<(), RestoreError> {
        if let Some(r) = ptrace::rseq_config(self.pid)? {
            const RSEQ_FLAG_UNREGISTER: u64 = 1;
            self.p.call(
                "rseq(UNREGISTER)",
                libc::SYS_rseq,
                [r.ptr, u64::from(r.size), RSEQ_FLAG_UNREGISTER, u64::from(r.signature), 0, 0],
            )?;
        }
        Ok(())
    }

    /// Moves crt's pidfd above every fd the image uses and closes the rest
    /// of the fds the task inherited from crt.
    fn park_pidfd(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        let max_fd = task.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) as u64;
        if let Some(l) = task.rlimits.iter().find(|l| l.resource == libc::RLIMIT_NOFILE) {
            task_state::write_rlimits(self.pid, std::slice::from_ref(l))
                .map_err(step(self.pid, "raising RLIMIT_NOFILE"))?;
        }
        // The task inherited crt's fds (maybe thousands: the sockets of the
        // tasks made before it), which can fill every number up to its
        // RLIMIT_NOFILE: free the numbers above the image's first.
        let p = self.remote_pidfd;
        let max = u64::from(u32::MAX);
        let above =
            if p > max_fd { [(max_fd + 1, p.saturating_sub(1)), (p + 1, max)] } else { [(max_fd + 1, max), (1, 0)] };
        for (from, to) in above.into_iter().filter(|(from, to)| from <= to) {
            self.p.call("close_range", libc::SYS_close_range, [from, to, 0, 0, 0, 0])?;
        }
        let t = self.p.call(
            "fcntl(F_DUPFD_CLOEXEC)",
            libc::SYS_fcntl,
            [p, libc::F_DUPFD_CLOEXEC as u64, max_fd + 1, 0, 0, 0],
        )?;
        self.p.call("close_range", libc::SYS_close_range, [0, t - 1, 0, 0, 0, 0])?;
        self.p.call("close_range", libc::SYS_close_range, [t + 1, u64::from(u32::MAX), 0, 0, 0, 0])?;
        self.remote_pidfd = t;
        Ok(())
    }

    /// Hands `fd` (crt's) to the task and returns its number there
    /// (close-on-exec, lowest free number).
    fn install(&mut self, fd: OwnedFd) -> Result<u64, RestoreError> {
        let got = self.p.call(
            "pidfd_getfd",
            libc::SYS_pidfd_getfd,
            [self.remote_pidfd, fd.as_raw_fd() as u64, 0, 0, 0, 0],
        )?;
        drop(fd);
        Ok(got)
    }

    fn close_remote(&mut self, fd: u64) -> Result<(), RestoreError> {
        self.p.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        Ok(())
    }

    /// Runs `clone3` in this process with `args`; the new task starts
    /// traced and stopped. Returns once it has reported its stop.
    fn clone3(&mut self, what: &'static str, want: i32, mut args: CloneArgs) -> Result<(), RestoreError> {
        let at = self.scratch + S_CLONE;
        self.p.write(at + 128, &want.to_le_bytes())?;
        args.set_tid = at + 128;
        args.set_tid_size = 1;
        let bytes = args.to_bytes();
        self.p.write(at, &bytes)?;
        let mut injected = Ok(());
        let r = retry_busy_pid(want, || {
            match self.p.syscall_raw(what, libc::SYS_clone3, [at, bytes.len() as u64, 0, 0, 0, 0]) {
                Ok(r) if r == -i64::from(libc::EEXIST) => Err(libc::EEXIST),
                Ok(r) => Ok(r),
                Err(e) => {
                    injected = Err(e);
                    Ok(0)
                }
            }
        })?;
        injected?;
        if r != i64::from(want) {
            return Err(other(self.pid, format!("{what} for {want}"), format!("clone3 returned {r}")));
        }
        loop {
            match ptrace::wait(want)? {
                Stop::Stopped { sig, .. } if sig == libc::SIGSTOP => return Ok(()),
                Stop::Stopped { .. } => ptrace::cont(want, 0)?,
                s => return Err(other(want, "waiting for the new task to stop", format!("{s:?}"))),
            }
        }
    }

    /// Creates child process `pid` of this process (it starts as a copy,
    /// sharing the fd table and fs state if the dumped child did).
    pub fn spawn_child(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        debug!(pid = task.pid, "spawning");
        let mut flags = 0;
        if task.files_shared_with_parent {
            flags |= libc::CLONE_FILES as u64;
        }
        if task.fs_shared_with_parent {
            flags |= libc::CLONE_FS as u64;
        }
        let args = CloneArgs { flags, exit_signal: task.exit_signal as u64, ..Default::default() };
        self.clone3("clone3(child)", task.pid, args)
    }

    /// The number of crt's pidfd inside this process.
    pub fn remote_pidfd(&self) -> u64 {
        self.remote_pidfd
    }

    /// Creates child `pid` and makes it end as it had ended: a zombie
    /// this process has not reaped yet, in its process group, with its
    /// exit status (a core-dump flag included).
    pub fn make_zombie(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        let pid = task.pid;
        self.spawn_child(task)?;
        let mut child = Puppet::new(pid, ptrace::get_regs(pid)?, self.p.gadget());
        let at = self.scratch + S_ARG;
        if task.pgid != self.pgid()? {
            let target = if task.pgid == pid { 0 } else { task.pgid as u64 };
            child
                .call("setpgid", libc::SYS_setpgid, [0, target, 0, 0, 0, 0])
                .map_err(|e| other(pid, format!("zombie: joining process group {}", task.pgid), e.to_string()))?;
        }
        let status = task.exit_code;
        let mut regs = ptrace::get_regs(pid)?;
        regs.rip = self.p.gadget();
        regs.orig_rax = u64::MAX;
        let mut core_dir = None;
        if status & 0x7f == 0 {
            // Its parent sees its real uid in the SIGCHLD and in waitid.
            self.set_zombie_creds(&mut child, task)?;
            regs.rax = libc::SYS_exit_group as u64;
            regs.rdi = ((status >> 8) & 0xff) as u64;
        } else {
            let sig = (status & 0x7f) as u64;
            // The default action (unblocked: it inherited crt's
            // all-blocked mask); SIGKILL and SIGSTOP have no other.
            ptrace::set_sigmask(pid, 0)?;
            if sig != libc::SIGKILL as u64 && sig != libc::SIGSTOP as u64 {
                child.write(at, &[0u8; 32])?;
                child.call("rt_sigaction", libc::SYS_rt_sigaction, [sig, at, 0, 8, 0, 0])?;
            }
            let core = status & 0x80 != 0;
            // From outside: before the credentials change (prlimit on
            // another user's process needs CAP_SYS_RESOURCE).
            let limit = if core { libc::RLIM_INFINITY } else { 0 };
            let rl = [pb::Rlimit { resource: libc::RLIMIT_CORE, cur: limit, max: limit }];
            task_state::write_rlimits(pid, &rl).map_err(step(pid, "zombie: RLIMIT_CORE"))?;
            self.set_zombie_creds(&mut child, task)?;
            if core {
                core_dir = Some(self.prepare_core_dump(&mut child, pid, task.creds.as_ref())?);
            }
            regs.rax = libc::SYS_kill as u64;
            regs.rdi = pid as u64;
            regs.rsi = sig;
        }
        ptrace::set_regs(pid, &regs)?;
        ptrace::detach(pid, 0)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let done = loop {
            if procfs::stat(pid).map(|s| s.state).unwrap_or('Z') == 'Z' {
                break Ok(());
            }
            if Instant::now() > deadline {
                break Err(other(pid, "making the zombie", "it did not exit".into()));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if let Some(d) = core_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        done
    }

    /// This process's group.
    fn pgid(&self) -> Result<i32, RestoreError> {
        Ok(procfs::stat(self.pid)?.pgrp)
    }

    /// The would-be zombie's credentials, before it exits.
    fn set_zombie_creds(&mut self, child: &mut Puppet, task: &pb::Task) -> Result<(), RestoreError> {
        let Some(c) = &task.creds else { return Ok(()) };
        creds::set(child, c, self.scratch + S_ARG)
    }

    /// Makes the would-be zombie `child` dump a small core into a fresh
    /// directory (removed afterwards), so its status says "core dumped"
    /// as before: it moves there and gives up all its memory but the
    /// vdso, whose `syscall` instruction is all it still runs. Comes after
    /// its credentials, which may have cleared the dumpable flag a core
    /// dump needs (`commit_creds`): set again here.
    fn prepare_core_dump(
        &mut self,
        child: &mut Puppet,
        pid: i32,
        creds: Option<&pb::Creds>,
    ) -> Result<std::path::PathBuf, RestoreError> {
        let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
        if pattern.starts_with('|') {
            return Err(other(
                pid,
                "recreating a zombie whose exit status says it dumped core",
                format!("core dumps go to a program here ({}), which crt will not feed a fake core", pattern.trim()),
            ));
        }
        let dir = std::env::temp_dir().join(format!("crt-core-{pid}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(step(pid, "zombie: a directory for its core"))?;
        // Writable by the zombie-to-be, whatever its user.
        if let Some(c) = creds {
            std::os::unix::fs::chown(&dir, c.uids.get(3).copied(), c.gids.get(3).copied())
                .map_err(step(pid, "zombie: a directory for its core"))?;
        }
        child.call("prctl(PR_SET_DUMPABLE)", libc::SYS_prctl, [libc::PR_SET_DUMPABLE as u64, 1, 0, 0, 0, 0])?;
        let mut path = dir.to_string_lossy().into_owned().into_bytes();
        path.push(0);
        let at = self.scratch + S_ARG;
        child.write(at, &path)?;
        child.call("chdir", libc::SYS_chdir, [at, 0, 0, 0, 0, 0])?;
        let maps = procfs::maps(pid)?;
        for m in maps.iter().filter(|m| !VDSO_NAMES.contains(&m.name.as_str()) && m.name != "[vsyscall]") {
            child.call("munmap", libc::SYS_munmap, [m.start, m.end - m.start, 0, 0, 0, 0])?;
        }
        Ok(dir)
    }

    /// Takes SIGCHLDs that crt's own work (zombies) queued off this process.
    pub fn drain_sigchld(&mut self) -> Result<(), RestoreError> {
        let set = self.scratch + S_ARG;
        let zero = self.scratch + S_ARG + 64;
        self.p.write(set, &(1u64 << (libc::SIGCHLD - 1)).to_le_bytes())?;
        self.p.write(zero, &[0u8; 16])?;
        while self.p.syscall_raw("rt_sigtimedwait", libc::SYS_rt_sigtimedwait, [set, 0, zero, 8, 0, 0])? > 0 {}
        Ok(())
    }

    /// Creates the process's other threads with their tids.
    pub fn create_threads(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        // Seccomp filters all threads share: installed before the threads
        // exist, so that they inherit one filter (as after TSYNC).
        crate::seccomp::install(&mut self.p, crate::seccomp::shared_prefix(&task.threads))?;
        for t in task.threads.iter().skip(1) {
            let args = CloneArgs {
                flags: (libc::CLONE_VM
                    | libc::CLONE_FS
                    | libc::CLONE_FILES
                    | libc::CLONE_SIGHAND
                    | libc::CLONE_THREAD
                    | libc::CLONE_SYSVSEM) as u64,
                ..Default::default()
            };
            self.clone3("clone3(thread)", t.tid, args)?;
            crate::cgroups::join_thread(t.tid, &t.cgroups)
                .map_err(|e| RestoreError::step(t.tid, "joining its cgroups", std::io::Error::other(e)))?;
            let regs = ptrace::get_regs(t.tid)?;
            let mut puppet = Puppet::new(t.tid, regs, self.p.gadget());
            if let Some(b) = &self.blobs {
                puppet.set_blobs(b.clone());
            }
            self.threads.push(puppet);
        }
        Ok(())
    }

    /// Joins the dumped process group (leaders first: see [`set_groups`]).
    fn set_pgid(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        let pid = self.pid;
        if task.sid == pid {
            return Ok(());
        }
        let st = procfs::stat(pid)?;
        if st.pgrp == task.pgid {
            return Ok(());
        }
        let target = if task.pgid == pid { 0 } else { task.pgid as u64 };
        let r = self.p.syscall_raw("setpgid", libc::SYS_setpgid, [0, target, 0, 0, 0, 0])?;
        if r < 0 {
            warn!(
                pid,
                "cannot join process group {} ({}); staying in {}",
                task.pgid,
                std::io::Error::from_raw_os_error(-r as i32),
                st.pgrp
            );
        }
        Ok(())
    }

    /// Releases every thread: the process runs (or stops, if it was stopped).
    pub fn resume(&self, task: &pb::Task) -> Result<(), RestoreError> {
        let sig = match (task.stopped, task.stop_signal) {
            (false, _) => 0,
            (true, 0) => libc::SIGSTOP,
            (true, s) => s,
        };
        ptrace::detach(self.pid, sig)?;
        for t in &self.threads {
            ptrace::detach(t.tid(), 0)?;
        }
        Ok(())
    }
}

/// Process groups: leaders create theirs first, then members join.
pub fn set_groups(builders: &mut [(Builder, &pb::Task)]) -> Result<(), RestoreError> {
    for leaders_first in [true, false] {
        for (b, task) in builders.iter_mut() {
            if (task.pgid == task.pid) == leaders_first {
                b.set_pgid(task)?;
            }
        }
    }
    Ok(())
}

/// The handler-facing description of an image's memory area.
fn image_vma_desc(pid: i32, v: &pb::Vma) -> VmaDesc {
    VmaDesc {
        pid,
        start: v.start,
        end: v.end,
        prot: v.prot,
        shared: v.flags & libc::MAP_SHARED as u32 != 0,
        pgoff: v.pgoff,
        name: v.name.as_str().into(),
        dev: v.dev,
        ino: v.ino,
        vm_flags: v.vm_flags.join(" ").into(),
    }
}
