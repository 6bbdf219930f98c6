//! The dump pipeline: discover → freeze → collect → pages → write → finish.
//!
//! Any failure before *finish* leaves every task running exactly as it was
//! (scratch memory unmapped, registers and stashed signals put back,
//! threads detached) and removes the image files written so far.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{debug, info, info_span};

use crate::collect::{self, PagePlan, Session};
use crate::cow;
use crate::forest::{Forest, ForestError, Frozen};
use crate::handlers::inet::{end_repair, Tasks};
use crate::handlers::{sysvshm, Registry};
use crate::images::{self, pb, ImageDir, ImageError, Kind};
use crate::mem::{self, MemError, Run};
use crate::procfs::{self, ProcError};
use crate::ptrace::PtraceError;
use crate::puppet::{self, PuppetError};
use crate::sharing::{self, FileIds};
use crate::sysvipc;

/// What to dump.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Root pids.
    pub roots: Vec<i32>,
    /// Image directory.
    pub dir: PathBuf,
    /// Let the tasks run on after the dump instead of killing them.
    pub leave_running: bool,
}

/// Figures from one dump, for `-v`, `--stats` and the benchmark.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DumpStats {
    /// Seconds freezing.
    pub freeze: f64,
    /// Seconds collecting state.
    pub collect: f64,
    /// Seconds copying pages.
    pub pages: f64,
    /// Seconds writing images.
    pub write: f64,
    /// Bytes of pages stored.
    pub page_bytes: u64,
    /// Number of processes.
    pub tasks: usize,
}

/// Errors of the dump pipeline.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The image directory cannot be used.
    #[error("image directory {path}: {what}")]
    ImageDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Discovering or freezing failed.
    #[error(transparent)]
    Forest(#[from] ForestError),
    /// Something crt does not support yet.
    #[error("pid {pid}: {what}")]
    Unsupported {
        /// The task.
        pid: i32,
        /// What it has.
        what: String,
    },
    /// No handler claims an fd.
    #[error("pid {pid} fd {fd}: no handler for {link} ({kind}); install a plugin that handles it, or close it before dumping")]
    UnclaimedFd {
        /// The task.
        pid: i32,
        /// The descriptor.
        fd: i32,
        /// Its link.
        link: String,
        /// The file type.
        kind: &'static str,
    },
    /// No handler claims a memory area.
    #[error("pid {pid}: no handler for memory area {start:#x}-{end:#x} {name:?}")]
    UnclaimedVma {
        /// The task.
        pid: i32,
        /// Start.
        start: u64,
        /// End.
        end: u64,
        /// Name in maps.
        name: String,
    },
    /// A handler refused.
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
    /// A pipe or socket is also held outside the forest.
    #[error("pid {} fd {}: {} is also held by pid {} ({}) fd {}, which is not dumped; add --tree {} to dump both ends, or close it", .0.pid, .0.fd, .0.link, .0.other_pid, .0.other_comm, .0.other_fd, .0.other_pid)]
    SharedOutside(sharing::OutsideHolder),
    /// A SysV shared memory segment is also attached outside the forest.
    #[error("pid {} memory at {:#x}: SysV shared memory segment {} is also attached {} time(s) outside the dumped forest{}; dump those processes too (add --tree PID), or detach them", .0.pid, .0.addr, .0.id, .0.outside, .0.other.as_ref().map(|(p, c)| format!(" (by pid {p}, {c})")).unwrap_or_default())]
    ShmOutside(sharing::OutsideAttach),
    /// SysV message queues and semaphores.
    #[error(transparent)]
    Ipc(#[from] crate::sysvipc::IpcError),
    /// Reading /proc failed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A handler's hook refused.
    #[error(transparent)]
    Hook(#[from] crate::handlers::HookError),
    /// A failure injected by `CRT_FAULT`.
    #[error(transparent)]
    Fault(#[from] crate::fault::Injected),
    /// ptrace failed.
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    /// Running code in the task failed.
    #[error(transparent)]
    Puppet(#[from] PuppetError),
    /// Copying pages failed.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// Writing images failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Another I/O failure.
    #[error("pid {pid}: {what}")]
    Io {
        /// The task.
        pid: i32,
        /// What crt was doing.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The kernel's vdso block, moved as one at restore.
pub const VDSO_NAMES: [&str; 3] = ["[vvar]", "[vvar_vclock]", "[vdso]"];

/// Dumps the forest under `opts.roots` into `opts.dir`.
pub fn dump(opts: &DumpOptions, registry: &Registry) -> Result<DumpStats, DumpError> {
    let mut out = Output::prepare(&opts.dir)?;
    let result = run(opts, registry, &mut out);
    if result.is_err() {
        out.remove_partial();
    }
    for h in registry.all() {
        h.dump_finish(result.is_ok());
    }
    result
}

fn run(opts: &DumpOptions, registry: &Registry, out: &mut Output) -> Result<DumpStats, DumpError> {
    let mut stats = DumpStats::default();

    // 1. Discover.
    registry.hook("dump_init", |h| h.dump_init(opts.roots.as_slice().into()))?;
    let mut forest = {
        let _s = info_span!("discover").entered();
        Forest::discover(&opts.roots)?
    };
    let pids: Vec<i32> = forest.procs.iter().map(|p| p.pid).collect();
    registry.hook("dump_pause", |h| h.dump_pause(pids.as_slice().into()))?;

    // 2. Freeze.
    let t = Instant::now();
    let frozen = {
        let _s = info_span!("freeze").entered();
        Frozen::freeze(&mut forest)?
    };
    stats.freeze = t.elapsed().as_secs_f64();
    info!(tasks = forest.procs.len(), secs = stats.freeze, "froze the forest");
    check_supported(&forest)?;
    let pids: Vec<i32> = forest.procs.iter().map(|p| p.pid).collect();
    registry.hook("dump_checkpoint", |h| h.dump_checkpoint(pids.as_slice().into()))?;

    // 3-6 under the frozen forest; undo on any error.
    let mut sessions: Vec<Session> = Vec::new();
    let result = collect_and_write(opts, registry, out, &forest, &frozen, &mut sessions, &mut stats);
    match result {
        Ok(()) => {
            // 7. Finish.
            let _s = info_span!("finish").entered();
            for s in &mut sessions {
                s.undo();
            }
            if opts.leave_running {
                drop(sessions);
                end_repair(Tasks::RunOn);
                frozen.release();
            } else {
                let pids: Vec<i32> = forest.procs.iter().map(|p| p.pid).collect();
                drop(sessions);
                frozen.kill(&pids);
                end_repair(Tasks::Killed);
            }
            stats.tasks = forest.procs.len();
            Ok(stats)
        }
        Err(e) => {
            for s in &mut sessions {
                s.undo();
            }
            drop(sessions);
            end_repair(Tasks::RunOn);
            frozen.release();
            Err(e)
        }
    }
}

/// What this version of crt refuses before touching anything.
fn check_supported(forest: &Forest) -> Result<(), DumpError> {
    for p in &forest.procs {
        if p.zombie && forest.roots.contains(&p.pid) {
            return Err(DumpError::Unsupported {
                pid: p.pid,
                what: "is a zombie (exited, waiting for its parent to reap it); dump its parent's tree instead".into(),
            });
        }
        if p.zombie && p.threads.len() > 1 {
            return Err(DumpError::Unsupported {
                pid: p.pid,
                what: "its main thread exited while other threads run; crt cannot restore that yet".into(),
            });
        }
        if !p.zombie {
            let status = crate::procfs::status(p.pid)?;
            if let Some(what) = crate::unsupported::check(p.pid, &status) {
                return Err(DumpError::Unsupported { pid: p.pid, what });
            }
        }
        if p.zombie || forest.roots.contains(&p.pid) {
            continue;
        }
        if let Some(what) = sharing::unsupported_sharing(p.pid, p.ppid) {
            return Err(DumpError::Unsupported {
                pid: p.pid,
                what: format!("shares {what} with its parent {}; crt cannot restore that yet", p.ppid),
            });
        }
    }
    Ok(())
}

fn collect_and_write(
    opts: &DumpOptions,
    registry: &Registry,
    out: &mut Output,
    forest: &Forest,
    frozen: &Frozen,
    sessions: &mut Vec<Session>,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    let kernel = procfs::kernel_release();
    let mut vdso_id = String::new();
    let mut plugins: Vec<pb::PluginRef> = Vec::new();
    let mut file_ids = FileIds::default();
    let blobs = crate::puppet::Blobs::default();

    // Puppeteer and frozen tasks share one CPU while syscalls are injected.
    let pin = crate::affinity::Pin::current_cpu();

    // 3. Collect every task (all refusals happen here, before any page is copied).
    let t = Instant::now();
    let mut collected: Vec<(pb::Task, Vec<PagePlan>)> = Vec::new();
    for proc_ in &forest.procs {
        let _span = info_span!("task", pid = proc_.pid).entered();
        if proc_.zombie {
            collected.push((collect::zombie_task(proc_), Vec::new()));
            continue;
        }
        sessions.push(Session::open(proc_, frozen, &blobs, pin.mask())?);
        let Some(session) = sessions.last_mut() else { unreachable!("pushed above") };
        let _s = info_span!("collect").entered();
        let (task, plans) =
            collect::collect_task(proc_, forest.roots.contains(&proc_.pid), registry, session, frozen, &mut file_ids)?;
        if vdso_id.is_empty() {
            vdso_id = vdso_fingerprint(proc_.pid, &task)?;
        }
        for h in task.vmas.iter().map(|v| &v.handler).chain(task.fds.iter().map(|f| &f.handler)) {
            if !plugins.iter().any(|p| &p.name == h) {
                let version = registry.by_name(h).map(|x| x.version().into_string()).unwrap_or_default();
                let provider = registry.origin(h).map(|o| o.provider()).unwrap_or_default();
                plugins.push(pb::PluginRef { name: h.clone(), version, provider });
            }
        }
        collected.push((task, plans));
    }

    // Locks of shared descriptions go back to the process that took them.
    crate::fdstate::assign_lock_takers(&mut collected.iter_mut().map(|(t, _)| t).collect::<Vec<_>>());

    // 4. Identify sharing with the outside: a pipe, socket or SysV shared
    // memory segment also held by a process that is not dumped cannot be
    // restored connected.
    let fifo_paths: std::collections::HashSet<String> = collected
        .iter()
        .flat_map(|(t, _)| {
            t.fds.iter().filter(|f| f.handler == "pipe" && f.link.starts_with('/')).map(|f| f.link.clone())
        })
        .collect();
    let objects: Vec<(i32, i32, String)> = collected
        .iter()
        .flat_map(|(t, _)| t.fds.iter().map(move |f| (t.pid, f.fd, f.link.clone())))
        .filter(|(_, _, l)| l.starts_with("pipe:[") || l.starts_with("socket:[") || fifo_paths.contains(l))
        .collect();
    let pids: Vec<i32> = forest.procs.iter().map(|p| p.pid).collect();
    if let Some(o) = sharing::find_outside_holders(&objects, &pids) {
        return Err(DumpError::SharedOutside(o));
    }
    // The same for SysV shared memory: one attach is one memory area.
    let attaches: Vec<(i32, u64, i32)> = collected
        .iter()
        .flat_map(|(t, _)| t.vmas.iter().filter(|v| v.handler == sysvshm::NAME).map(|v| (t.pid, v.start, v.ino as i32)))
        .collect();
    if let Some(o) = sharing::sysv_shm_outside(&attaches, &pids) {
        return Err(DumpError::ShmOutside(o));
    }
    // SysV message queues and semaphore sets the forest uses.
    let ipc = sysvipc::dump(&pids)?;
    if !ipc.sets.is_empty() {
        let live = forest.procs.iter().filter(|p| !p.zombie);
        let tids: Vec<(i32, i32)> = live.flat_map(|p| p.threads.iter().map(move |&t| (p.pid, t))).collect();
        sysvipc::check_no_undo(&tids)?;
    }
    stats.collect += t.elapsed().as_secs_f64();
    // Page copying wants both CPUs.
    drop(pin);
    crate::fault::check("dump-after-collect")?;

    // 5. Pages and task images: which pages, less those a child still
    // shares with its parent since fork (cow.rs), then copied.
    let mut runs = Vec::with_capacity(collected.len());
    for (task, plans) in &mut collected {
        let t = Instant::now();
        runs.push(scan_task_pages(task, plans)?);
        stats.pages += t.elapsed().as_secs_f64();
    }
    let t = Instant::now();
    share_cow_pages(&mut collected, &mut runs, &forest.roots)?;
    stats.pages += t.elapsed().as_secs_f64();
    for ((task, _), runs) in collected.iter().zip(&runs) {
        let _span = info_span!("task", pid = task.pid).entered();
        let t = Instant::now();
        let pagemap = {
            let _s = info_span!("pages").entered();
            dump_task_pages(task.pid, runs, out)?
        };
        stats.page_bytes += pagemap.total_pages * images::PAGE_SIZE;
        stats.pages += t.elapsed().as_secs_f64();

        let t = Instant::now();
        out.write(&out.dir.pagemap_path(task.pid), Kind::PageMap, &pagemap)?;
        out.write(&out.dir.task_path(task.pid), Kind::Task, task)?;
        stats.write += t.elapsed().as_secs_f64();
    }

    let stored: Vec<pb::Blob> = blobs
        .lock()
        .map(|b| b.iter().map(|(key, data)| pb::Blob { key: key.clone(), data: data.clone() }).collect())
        .unwrap_or_default();
    if !stored.is_empty() {
        out.write(&out.dir.blobs_path(), Kind::Blobs, &pb::Blobs { blobs: stored })?;
    }
    if !ipc.queues.is_empty() || !ipc.sets.is_empty() {
        out.write(&out.dir.ipc_path(), Kind::Ipc, &ipc)?;
    }
    crate::fault::check("dump-after-pages")?;
    // The inventory goes last: its presence marks a complete image.
    let t = Instant::now();
    let cgroup_dirs =
        crate::cgroups::describe(&collected).map_err(|(pid, what)| DumpError::Unsupported { pid, what })?;
    let inventory = pb::Inventory {
        format_version: images::FORMAT_VERSION,
        crt_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: kernel,
        roots: opts.roots.clone(),
        tasks: forest.procs.iter().map(|p| p.pid).collect(),
        plugins,
        dump_time_unix_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        vdso_build_id: vdso_id,
        cgroup_dirs,
    };
    out.write(&out.dir.inventory_path(), Kind::Inventory, &inventory)?;
    stats.write += t.elapsed().as_secs_f64();
    Ok(())
}

/// Identifies the vdso text, so restore can check it runs on the same one.
fn vdso_fingerprint(pid: i32, task: &pb::Task) -> Result<String, DumpError> {
    let Some(mm) = &task.mm else {
        return Ok(String::new());
    };
    let Some(v) = mm.vdso_block.iter().find(|v| v.name == "[vdso]") else {
        return Ok(String::new());
    };
    let mut text = vec![0u8; (v.end - v.start) as usize];
    puppet::read_mem(pid, v.start, &mut text)?;
    Ok(fingerprint(&text))
}

/// Page files written in parallel for a big task.
const PAGE_SHARDS: usize = 2;

/// A short, stable fingerprint of vdso text.
pub fn fingerprint(text: &[u8]) -> String {
    format!("crc32:{:08x}:{}", crc32fast::hash(text), text.len())
}

/// The pages of a task to store, by its handlers' page policies; the
/// zero-page and guard runs of each area go into its record.
fn scan_task_pages(task: &mut pb::Task, plans: &[PagePlan]) -> Result<Vec<Run>, DumpError> {
    let pid = task.pid;
    if plans.is_empty() {
        return Ok(Vec::new()); // a zombie: no memory
    }
    let pagemap_path = format!("/proc/{pid}/pagemap");
    let pagemap = File::open(&pagemap_path).map_err(|source| DumpError::Io {
        pid,
        what: format!("opening {pagemap_path}"),
        source,
    })?;
    let mut runs: Vec<Run> = Vec::new();
    let as_pb = |r: &[Run]| r.iter().map(|r| pb::PageRun { vaddr: r.vaddr, nr_pages: r.pages }).collect::<Vec<_>>();
    for (plan, vma) in plans.iter().zip(task.vmas.iter_mut()) {
        runs.extend(mem::scan(pid, &pagemap, plan.start, plan.end, plan.policy)?);
        let (zero, guard) = mem::scan_special(pid, &pagemap, plan.start, plan.end)?;
        (vma.zero, vma.guard) = (as_pb(&zero), as_pb(&guard));
    }
    Ok(runs)
}

/// Leaves out of each child's pages those it shares with its parent.
fn share_cow_pages(
    collected: &mut [(pb::Task, Vec<PagePlan>)],
    runs: &mut [Vec<Run>],
    roots: &[i32],
) -> Result<(), DumpError> {
    for c in 0..collected.len() {
        let ppid = collected[c].0.ppid;
        let Some(p) = collected.iter().position(|(t, _)| t.pid == ppid && !t.zombie) else { continue };
        // Roots are created by crt, not by their parent; parents come
        // first in the forest's order.
        if collected[c].0.zombie || roots.contains(&collected[c].0.pid) || p >= c {
            continue;
        }
        let (parents, rest) = collected.split_at_mut(c);
        let (run_parents, run_rest) = runs.split_at_mut(c);
        let parent = cow::Pages { pid: parents[p].0.pid, vmas: &mut parents[p].0.vmas, runs: &mut run_parents[p] };
        let mut child = cow::Pages { pid: rest[0].0.pid, vmas: &mut rest[0].0.vmas, runs: &mut run_rest[0] };
        let n = cow::share_with_parent(&mut child, &parent)?;
        debug!(pid = child.pid, ppid, pages = n, "pages shared with the parent since fork");
    }
    Ok(())
}

fn dump_task_pages(pid: i32, runs: &[Run], out: &mut Output) -> Result<pb::PageMap, DumpError> {
    if runs.is_empty() {
        out.create_pages(pid, 0, 0)?;
        return Ok(pb::PageMap { page_size: images::PAGE_SIZE, shards: 1, ..Default::default() });
    }
    let total: u64 = runs.iter().map(|r| r.pages).sum();
    // Big tasks write two shards in parallel (tmpfs serializes writes to
    // one file on its inode lock).
    let shards = if total * images::PAGE_SIZE >= 2 * mem::CHUNK as u64 { PAGE_SHARDS } else { 1 };
    let files = mem::shard_sizes(runs, shards)
        .iter()
        .enumerate()
        .map(|(k, &bytes)| out.create_pages(pid, k, bytes))
        .collect::<Result<Vec<File>, DumpError>>()?;
    let written = mem::dump_pages(pid, runs, &files, images::PAGE_SIZE)?;
    debug!(pages = total, bytes = written, shards, "pages stored");
    Ok(pb::PageMap {
        page_size: images::PAGE_SIZE,
        total_pages: total,
        runs: runs.iter().map(|r| pb::PageRun { vaddr: r.vaddr, nr_pages: r.pages }).collect(),
        shards: shards as u32,
    })
}

/// The image directory being written, and what to remove on failure.
struct Output {
    dir: ImageDir,
    created_dir: bool,
    written: Vec<PathBuf>,
}

impl Output {
    fn prepare(path: &Path) -> Result<Self, DumpError> {
        let err = |what: String| DumpError::ImageDir { path: path.to_path_buf(), what };
        let created_dir = match fs::metadata(path) {
            Ok(m) if m.is_dir() => false,
            Ok(_) => return Err(err("exists and is not a directory".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(path).map_err(|e| err(format!("cannot create: {e}")))?;
                true
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let dir = ImageDir::new(path);
        if !created_dir && dir.inventory_path().exists() {
            return Err(err(
                "already holds an image (inventory.img); choose an empty directory or remove the old image".into(),
            ));
        }
        Ok(Self { dir, created_dir, written: Vec::new() })
    }

    fn write<M: prost::Message>(&mut self, path: &Path, kind: Kind, msg: &M) -> Result<(), DumpError> {
        self.written.push(path.to_path_buf());
        self.written.push(path.with_extension("img.tmp"));
        self.dir.write_msg(path, kind, msg).map_err(Into::into)
    }

    fn create_pages(&mut self, pid: i32, shard: usize, bytes: u64) -> Result<File, DumpError> {
        self.written.push(self.dir.pages_path(pid, shard));
        self.dir.create_pages(pid, shard, bytes).map_err(Into::into)
    }

    fn remove_partial(&self) {
        for p in &self.written {
            let _ = fs::remove_file(p);
        }
        if self.created_dir {
            let _ = fs::remove_dir(self.dir.path());
        }
    }
}
