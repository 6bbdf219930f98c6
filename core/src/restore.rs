//! The restore pipeline: validate → create → rebuild → resume → wait.
//!
//! crt has no restorer blob: each task is rebuilt *from outside* by the
//! puppeteer ([`crate::puppeteer`]), with ptrace and injected syscalls. On
//! any failure every task created so far is killed and the images are
//! left untouched.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{info, info_span, warn};

use crate::dump::{fingerprint, VDSO_NAMES};
use crate::handlers::Registry;
use crate::images::{pb, ImageDir, ImageError, FORMAT_VERSION};
use crate::mem::MemError;
use crate::procfs::{self, ProcError};
use crate::ptrace::PtraceError;
use crate::puppet::{self, PuppetError};
use crate::puppeteer::{self, Builder, Loaded, RestoreCtx};

/// What to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Image directory.
    pub dir: PathBuf,
    /// Exit once the tasks run, instead of waiting for them.
    pub detach: bool,
    /// Called once every task runs, before waiting for them.
    pub on_resumed: Option<fn(&RestoreStats)>,
}

/// Figures from one restore.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreStats {
    /// Seconds validating and reading images.
    pub validate: f64,
    /// Seconds creating tasks.
    pub create: f64,
    /// Seconds mapping memory areas (and everything but pages).
    pub map: f64,
    /// Seconds filling pages.
    pub fill: f64,
    /// Seconds setting registers and releasing tasks.
    pub resume: f64,
    /// Bytes of pages written.
    pub page_bytes: u64,
    /// Processes restored.
    pub tasks: usize,
}

/// Errors of the restore pipeline.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// An image is unreadable or inconsistent.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A SysV message queue or semaphore set cannot be restored.
    #[error(transparent)]
    Ipc(#[from] crate::sysvipc::IpcError),
    /// The images cannot be restored on this machine.
    #[error("{0}")]
    Incompatible(String),
    /// A handler the image needs is not available.
    #[error("the image needs handler {name}{}{}, which this crt does not have; install that plugin (in /usr/lib/crt or a --plugin-dir) — `crt plugins` lists what is loaded", if version.is_empty() { String::new() } else { format!(" {version}") }, provider.as_deref().map(|p| format!(" from plugin {p}")).unwrap_or_default())]
    MissingHandler {
        /// Handler name.
        name: String,
        /// Version that wrote the image.
        version: String,
        /// The plugin that provided it at dump time.
        provider: Option<String>,
    },
    /// A pid the image needs is taken.
    #[error("pid {pid} is in use by {comm:?} (state {state}); stop that process or restore elsewhere")]
    PidBusy {
        /// The pid.
        pid: i32,
        /// Who has it.
        comm: String,
        /// Its state letter.
        state: char,
    },
    /// A pid the image needs is still held by a process being torn down.
    #[error(
        "pid {pid} is still held by a process that is exiting (gone from /proc, not yet released); retry in a moment"
    )]
    PidReleasing {
        /// The pid.
        pid: i32,
    },
    /// clone3 failed.
    #[error("pid {pid}: creating the task with clone3(set_tid)")]
    Clone {
        /// The pid.
        pid: i32,
        /// The cause.
        source: std::io::Error,
    },
    /// A step of rebuilding a task failed.
    #[error("pid {pid}: {step}")]
    Step {
        /// The task.
        pid: i32,
        /// The step.
        step: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A handler failed.
    #[error("pid {pid} {what}: handler {handler}: {msg}")]
    Handler {
        /// The task.
        pid: i32,
        /// Which resource.
        what: String,
        /// The handler.
        handler: String,
        /// Its message.
        msg: String,
    },
    /// ptrace failed.
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    /// Running code in a task failed.
    #[error(transparent)]
    Puppet(#[from] PuppetError),
    /// Writing pages failed.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// Reading /proc failed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A handler's hook refused.
    #[error(transparent)]
    Hook(#[from] crate::handlers::HookError),
    /// A failure injected by `CRT_FAULT`.
    #[error(transparent)]
    Fault(#[from] crate::fault::Injected),
}

impl RestoreError {
    /// Wraps a cause with the task and step it happened in.
    pub fn step(pid: i32, step: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Step { pid, step: step.into(), source: Box::new(e) }
    }
}

/// The result of a restore: figures, and the exit status to report.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Timings.
    pub stats: RestoreStats,
    /// The restored roots' exit status (0 with `--detach`).
    pub exit_code: i32,
}

/// Restores the forest in `opts.dir`.
pub fn restore(opts: &RestoreOptions, registry: &Registry) -> Result<Outcome, RestoreError> {
    let mut stats = RestoreStats::default();
    let dir = ImageDir::new(&opts.dir);

    // 1. Validate.
    let t = Instant::now();
    let (inventory, tasks) = {
        let _s = info_span!("validate").entered();
        validate(&dir, registry)?
    };
    stats.validate = t.elapsed().as_secs_f64();

    let pids: Vec<i32> = tasks.iter().map(|t| t.task.pid).collect();
    let finish = |ok: bool| registry.all().for_each(|h| h.restore_finish(ok));
    if let Err(e) = registry.hook("restore_init", |h| h.restore_init(pids.as_slice().into())) {
        finish(false);
        return Err(e.into());
    }

    // Puppeteer and the tasks it builds share one CPU until release.
    let pin = crate::affinity::Pin::current_cpu();

    // 2-4. Before any task: the SysV message queues and semaphore sets,
    // and the cgroups that are gone (made again with their settings).
    // Then create, rebuild; undo everything made on failure.
    let mut created = Created::default();
    let before_tasks = dir
        .read_ipc()
        .map_err(RestoreError::from)
        .and_then(|img| Ok(crate::sysvipc::restore(&img, &mut created.ipc)?))
        .and_then(|()| {
            crate::cgroups::recreate(&inventory.cgroup_dirs, &mut created.cgroups).map_err(RestoreError::Incompatible)
        });
    if let Err(e) = before_tasks {
        created.undo();
        finish(false);
        return Err(e);
    }
    let blobs = crate::puppet::Blobs::default();
    if let Ok(mut b) = blobs.lock() {
        b.extend(dir.read_blobs()?.blobs.into_iter().map(|x| (x.key, x.data)));
    }
    let builders = match build_all(registry, blobs, &tasks, &inventory.roots, &mut created, &mut stats) {
        Ok(b) => b,
        Err(e) => {
            created.undo();
            finish(false);
            return Err(e);
        }
    };

    // 5. Resume all together, children before their parents (the builders
    // are in creation order): a process that signals its children as soon
    // as it runs then finds them released already, rather than on their
    // way out of the stop, where a signal runs its handler after the
    // kernel has rewound their interrupted syscall for restart.
    let t = Instant::now();
    {
        let _s = info_span!("resume").entered();
        for (b, task) in builders.iter().rev() {
            if let Err(e) = b.resume(task) {
                created.undo();
                finish(false);
                return Err(e);
            }
        }
    }
    finish(true);
    stats.resume = t.elapsed().as_secs_f64();
    drop(pin);
    stats.tasks = tasks.len();
    info!(tasks = stats.tasks, "forest resumed");
    let roots = inventory.roots.clone();
    created.pids.clear();

    // 6. Wait (unless detached).
    if let Some(f) = &opts.on_resumed {
        f(&stats);
    }
    let exit_code = if opts.detach { 0 } else { wait_roots(&roots) };
    Ok(Outcome { stats, exit_code })
}

/// Creates and rebuilds every task; returns the builders, ready to resume.
fn build_all<'t>(
    registry: &Registry,
    blobs: crate::puppet::Blobs,
    tasks: &'t [Loaded],
    roots: &[i32],
    created: &mut Created,
    stats: &mut RestoreStats,
) -> Result<Vec<(Builder, &'t pb::Task)>, RestoreError> {
    let mut ctx = RestoreCtx::new(registry, blobs);
    let mut builders: Vec<(Builder, &pb::Task)> = Vec::new();
    let mut drain: Vec<i32> = Vec::new();
    for loaded in tasks {
        let task = &loaded.task;
        let pid = task.pid;
        let _span = info_span!("task", pid).entered();
        let t = Instant::now();
        wait_pid_free(pid)?;
        let mut parent_pidfd = None;
        let parent = builders.iter_mut().find(|(b, _)| b.pid == task.ppid && !roots.contains(&pid));
        match parent {
            Some((p, _)) if task.zombie => {
                created.pids.push(pid);
                p.make_zombie(task)?;
                drain.push(p.pid);
                continue;
            }
            Some((p, _)) => {
                created.pids.push(pid);
                p.spawn_child(task)?;
                parent_pidfd = Some(p.remote_pidfd());
            }
            None if task.zombie => {
                return Err(RestoreError::Incompatible(format!(
                    "pid {pid} is a zombie whose parent is not in the image"
                )));
            }
            None => {
                puppeteer::fork_stopped(pid)?;
                created.pids.push(pid);
            }
        }
        stats.create += t.elapsed().as_secs_f64();
        crate::cgroups::join(pid, &task.cgroups)
            .map_err(|e| RestoreError::step(pid, "joining its cgroups", std::io::Error::other(e)))?;
        let mut b = Builder::start(pid, task, parent_pidfd)?;
        b.is_root = roots.contains(&pid) || !tasks.iter().any(|t| t.task.pid == task.ppid);
        b.set_blobs(ctx.blobs.clone());
        b.after_fork(registry)?;
        b.phase_a(&mut ctx, loaded, stats)?;
        builders.push((b, task));
        crate::fault::check("restore-after-task")?;
    }
    let t = Instant::now();
    for (b, task) in &mut builders {
        if drain.contains(&b.pid) {
            b.drain_sigchld()?;
        }
        b.create_threads(task)?;
    }
    stats.create += t.elapsed().as_secs_f64();
    let t = Instant::now();
    puppeteer::set_groups(&mut builders)?;
    for (b, task) in &mut builders {
        b.phase_b(&ctx, task)?;
    }
    stats.map += t.elapsed().as_secs_f64();
    crate::fault::check("restore-before-resume")?;
    Ok(builders)
}

/// Reads and checks everything before any task is created.
fn validate(dir: &ImageDir, registry: &Registry) -> Result<(pb::Inventory, Vec<Loaded>), RestoreError> {
    if !dir.path().is_dir() {
        return Err(RestoreError::Incompatible(format!("{}: no such image directory", dir.path().display())));
    }
    let inv = dir.read_inventory()?;
    if inv.format_version != FORMAT_VERSION {
        return Err(RestoreError::Incompatible(format!(
            "{}: image format version {}, this crt reads {FORMAT_VERSION}",
            dir.inventory_path().display(),
            inv.format_version
        )));
    }
    let kernel = procfs::kernel_release();
    if inv.kernel_release != kernel {
        return Err(RestoreError::Incompatible(format!(
            "the image was dumped on kernel {}, this is {kernel}; crt reuses the kernel's vdso and restores only on the same kernel",
            inv.kernel_release
        )));
    }
    let own = own_vdso_block()?;
    let mut text = vec![0u8; (own[2].end - own[2].start) as usize];
    puppet::read_mem(std::process::id() as i32, own[2].start, &mut text)?;
    if !inv.vdso_build_id.is_empty() && inv.vdso_build_id != fingerprint(&text) {
        return Err(RestoreError::Incompatible(format!(
            "the vdso of this kernel ({}) differs from the image's ({})",
            fingerprint(&text),
            inv.vdso_build_id
        )));
    }
    for p in &inv.plugins {
        let h = registry.by_name(&p.name).ok_or_else(|| RestoreError::MissingHandler {
            name: p.name.clone(),
            version: p.version.clone(),
            provider: Some(p.provider.clone()).filter(|p| !p.is_empty() && p != "built-in"),
        })?;
        let have = h.version().into_string();
        if major(&have) != major(&p.version) {
            return Err(RestoreError::Incompatible(format!(
                "handler {} is version {have} here, but the image was written by version {}{}; install a compatible version of that plugin",
                p.name,
                p.version,
                if p.provider.is_empty() { String::new() } else { format!(" (from {})", p.provider) }
            )));
        }
    }
    if inv.tasks.is_empty() || inv.roots.is_empty() {
        return Err(ImageError::Invalid { path: dir.inventory_path(), what: "lists no tasks".into() }.into());
    }
    let mut tasks = Vec::new();
    for &pid in &inv.tasks {
        let task = dir.read_task(pid)?;
        let pagemap = dir.read_pagemap(pid)?;
        let pages = dir.open_page_shards(pid, &pagemap)?;
        puppeteer::check_task(dir, &task, &own)?;
        tasks.push(Loaded { task, pagemap, pages });
    }
    dir.read_blobs()?;
    dir.read_ipc()?;
    Ok((inv, tasks))
}

fn major(v: &str) -> &str {
    v.split('.').next().unwrap_or(v)
}

/// crt's own `[vvar]`, `[vvar_vclock]`, `[vdso]` (the block restore reuses).
pub fn own_vdso_block() -> Result<Vec<procfs::MapsEntry>, RestoreError> {
    let maps = procfs::maps(std::process::id() as i32)?;
    let block: Vec<_> = VDSO_NAMES.iter().filter_map(|n| maps.iter().find(|m| &m.name == n).cloned()).collect();
    if block.len() != VDSO_NAMES.len() {
        return Err(RestoreError::Incompatible(format!(
            "this kernel's vdso layout is not the one crt knows: found {:?}",
            block.iter().map(|m| m.name.as_str()).collect::<Vec<_>>()
        )));
    }
    Ok(block)
}

/// Waits briefly for a zombie holding `pid` to be reaped; errors if the pid is taken.
fn wait_pid_free(pid: i32) -> Result<(), RestoreError> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let stat = match procfs::stat(pid) {
            Ok(s) => s,
            Err(_) => return Ok(()),
        };
        if !matches!(stat.state, 'Z' | 'X') || Instant::now() > deadline {
            return Err(RestoreError::PidBusy { pid, comm: stat.comm, state: stat.state });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Tasks, cgroups and SysV objects made so far; undone if the restore fails.
#[derive(Debug, Default)]
struct Created {
    pids: Vec<i32>,
    cgroups: crate::cgroups::Made,
    ipc: crate::sysvipc::Restored,
}

impl Created {
    /// Kills the tasks, then removes the cgroups and SysV objects made.
    fn undo(&mut self) {
        self.kill_all();
        self.cgroups.undo();
        self.ipc.undo();
    }

    /// Kills every created task and reaps all of crt's children and tracees.
    fn kill_all(&mut self) {
        for &pid in self.pids.iter().rev() {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Reap them (and any tracee crt still holds, which its death frees),
        // never waiting longer than the deadline.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut status = 0;
        while Instant::now() < deadline {
            // SAFETY: valid out-pointer; -1 waits for any child or tracee.
            match unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::WNOHANG) } {
                r if r > 0 => continue,
                0 => std::thread::sleep(Duration::from_millis(2)),
                _ => break, // ECHILD: nothing left
            }
        }
        self.pids.clear();
    }
}

/// Waits for every root; returns the first non-zero status (128+signal for a kill).
fn wait_roots(roots: &[i32]) -> i32 {
    let mut code = 0;
    for &pid in roots {
        let mut status = 0;
        loop {
            // SAFETY: valid out-pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                break;
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                warn!(pid, "waitpid failed");
                return 1;
            }
        }
        let this = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
        if code == 0 {
            code = this;
        }
    }
    code
}
