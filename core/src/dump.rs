//! The dump pipeline: discover → freeze → collect → pages → write → finish.
//!
//! Any failure before *finish* leaves every task running exactly as it was
//! (scratch memory unmapped, registers and stashed signals put back,
//! threads detached) and removes the image files written so far.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use abi_stable::sabi_trait::TD_Opaque;
use crt_plugin_api::{FdDesc, PagePolicy, TaskRef, Task_TO, VmaDesc};
use tracing::{debug, info, info_span};

use crate::forest::{Forest, ForestError, Frozen, Proc};
use crate::handlers::Registry;
use crate::images::{self, pb, ImageDir, ImageError, Kind};
use crate::mem::{self, MemError, Run};
use crate::procfs::{self, ProcError};
use crate::ptrace::{self, PtraceError};
use crate::puppet::{self, Puppet, PuppetError};
use crate::task_state;

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
    /// Reading /proc failed.
    #[error(transparent)]
    Proc(#[from] ProcError),
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
    #[error("pid {pid}: {what}: {source}")]
    Io {
        /// The task.
        pid: i32,
        /// What crt was doing.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Scratch memory crt maps inside a task while collecting.
const SCRATCH_LEN: u64 = 16 * 4096;
/// Mappings that belong to the kernel, not to a handler.
pub const VDSO_NAMES: [&str; 3] = ["[vvar]", "[vvar_vclock]", "[vdso]"];
const KERNEL_MAPPINGS: [&str; 2] = ["[vsyscall]", "[uprobes]"];

/// Dumps the forest under `opts.roots` into `opts.dir`.
pub fn dump(opts: &DumpOptions, registry: &Registry) -> Result<DumpStats, DumpError> {
    let mut out = Output::prepare(&opts.dir)?;
    let result = run(opts, registry, &mut out);
    if result.is_err() {
        out.remove_partial();
    }
    result
}

fn run(opts: &DumpOptions, registry: &Registry, out: &mut Output) -> Result<DumpStats, DumpError> {
    let mut stats = DumpStats::default();

    // 1. Discover.
    let mut forest = {
        let _s = info_span!("discover").entered();
        Forest::discover(&opts.roots)?
    };

    // 2. Freeze.
    let t = Instant::now();
    let frozen = {
        let _s = info_span!("freeze").entered();
        Frozen::freeze(&mut forest)?
    };
    stats.freeze = t.elapsed().as_secs_f64();
    info!(
        tasks = forest.procs.len(),
        secs = stats.freeze,
        "froze the forest"
    );
    check_supported(&forest, &frozen)?;

    // 3-6 under the frozen forest; undo on any error.
    let mut sessions: Vec<Session> = Vec::new();
    let result = collect_and_write(
        opts,
        registry,
        out,
        &forest,
        &frozen,
        &mut sessions,
        &mut stats,
    );
    match result {
        Ok(()) => {
            // 7. Finish.
            let _s = info_span!("finish").entered();
            for s in &mut sessions {
                s.undo();
            }
            if opts.leave_running {
                drop(sessions);
                frozen.release();
            } else {
                let pids: Vec<i32> = forest.procs.iter().map(|p| p.pid).collect();
                drop(sessions);
                frozen.kill(&pids);
            }
            stats.tasks = forest.procs.len();
            Ok(stats)
        }
        Err(e) => {
            for s in &mut sessions {
                s.undo();
            }
            drop(sessions);
            frozen.release();
            Err(e)
        }
    }
}

/// What this version of crt refuses before touching anything.
fn check_supported(forest: &Forest, frozen: &Frozen) -> Result<(), DumpError> {
    for p in &forest.procs {
        if p.threads.len() > 1 {
            return Err(DumpError::Unsupported {
                pid: p.pid,
                what: format!(
                    "has {} threads ({:?}); multi-threaded processes are not supported yet",
                    p.threads.len(),
                    p.threads
                ),
            });
        }
        if !p.children.is_empty() {
            return Err(DumpError::Unsupported {
                pid: p.pid,
                what: format!(
                    "has child processes {:?}; process trees are not supported yet",
                    p.children
                ),
            });
        }
    }
    let _ = frozen;
    Ok(())
}

/// A task being collected: its puppet and what must be undone.
struct Session {
    pid: i32,
    puppet: Puppet,
    scratch: Option<u64>,
    stashed: Vec<[u8; ptrace::SIGINFO_LEN]>,
    undone: bool,
}

impl Session {
    fn open(pid: i32, stashed: Vec<[u8; ptrace::SIGINFO_LEN]>) -> Result<Self, DumpError> {
        let regs = ptrace::get_regs(pid)?;
        let gadget = puppet::find_gadget(pid)?;
        Ok(Self {
            pid,
            puppet: Puppet::new(pid, regs, gadget),
            scratch: None,
            stashed,
            undone: false,
        })
    }

    fn scratch(&mut self) -> Result<u64, DumpError> {
        if let Some(s) = self.scratch {
            return Ok(s);
        }
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let addr = self.puppet.call(
            "mmap",
            libc::SYS_mmap,
            [0, SCRATCH_LEN, prot, flags, u64::MAX, 0],
        )?;
        self.scratch = Some(addr);
        Ok(addr)
    }

    /// Puts the task back as it was: scratch unmapped, signals re-queued, registers.
    fn undo(&mut self) {
        if self.undone {
            return;
        }
        self.undone = true;
        if let Some(addr) = self.scratch.take() {
            if let Err(e) =
                self.puppet
                    .call("munmap", libc::SYS_munmap, [addr, SCRATCH_LEN, 0, 0, 0, 0])
            {
                tracing::warn!(pid = self.pid, "unmapping scratch: {e}");
            }
        }
        let mut stashed = std::mem::take(&mut self.stashed);
        stashed.extend(self.puppet.take_stashed());
        if !stashed.is_empty() {
            if let Err(e) = requeue(&mut self.puppet, self.pid, &stashed) {
                tracing::warn!(pid = self.pid, "re-queueing {} signals: {e}", stashed.len());
            }
        }
        if let Err(e) = self.puppet.restore_regs() {
            tracing::warn!(pid = self.pid, "restoring registers: {e}");
        }
    }
}

/// Queues signals back into the task they were taken from.
fn requeue(
    p: &mut Puppet,
    pid: i32,
    infos: &[[u8; ptrace::SIGINFO_LEN]],
) -> Result<(), PuppetError> {
    // The siginfo goes on the task's stack, below the red zone.
    let regs = ptrace::get_regs(pid)?;
    let at = (regs.rsp - 128 - ptrace::SIGINFO_LEN as u64) & !15;
    let mut saved = [0u8; ptrace::SIGINFO_LEN];
    p.read(at, &mut saved)?;
    for info in infos {
        let signo = i32::from_le_bytes([info[0], info[1], info[2], info[3]]);
        p.write(at, info)?;
        p.call(
            "rt_tgsigqueueinfo",
            libc::SYS_rt_tgsigqueueinfo,
            [pid as u64, pid as u64, signo as u64, at, 0, 0],
        )?;
    }
    p.write(at, &saved)
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
    for proc_ in &forest.procs {
        let _span = info_span!("task", pid = proc_.pid).entered();
        let stashed = frozen
            .threads
            .iter()
            .find(|t| t.tid == proc_.pid)
            .map(|t| t.stashed.clone())
            .unwrap_or_default();
        sessions.push(Session::open(proc_.pid, stashed)?);
        let Some(session) = sessions.last_mut() else {
            unreachable!("pushed above")
        };

        // 3. Collect.
        let t = Instant::now();
        let (task, plans) = {
            let _s = info_span!("collect").entered();
            collect_task(proc_, registry, session)?
        };
        if vdso_id.is_empty() {
            vdso_id = vdso_fingerprint(proc_.pid, &task)?;
        }
        for h in task
            .vmas
            .iter()
            .map(|v| &v.handler)
            .chain(task.fds.iter().map(|f| &f.handler))
        {
            if !plugins.iter().any(|p| &p.name == h) {
                let version = registry
                    .by_name(h)
                    .map(|x| x.version().into_string())
                    .unwrap_or_default();
                plugins.push(pb::PluginRef {
                    name: h.clone(),
                    version,
                });
            }
        }
        stats.collect += t.elapsed().as_secs_f64();

        // 4/6. Pages.
        let t = Instant::now();
        let pagemap = {
            let _s = info_span!("pages").entered();
            dump_task_pages(proc_.pid, &plans, out)?
        };
        stats.page_bytes += pagemap.total_pages * images::PAGE_SIZE;
        stats.pages += t.elapsed().as_secs_f64();

        let t = Instant::now();
        out.write(&out.dir.pagemap_path(proc_.pid), Kind::PageMap, &pagemap)?;
        out.write(&out.dir.task_path(proc_.pid), Kind::Task, &task)?;
        stats.write += t.elapsed().as_secs_f64();
    }

    // The inventory goes last: its presence marks a complete image.
    let t = Instant::now();
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
    };
    out.write(&out.dir.inventory_path(), Kind::Inventory, &inventory)?;
    stats.write += t.elapsed().as_secs_f64();
    Ok(())
}

/// A memory area and the pages to store from it.
struct PagePlan {
    start: u64,
    end: u64,
    policy: PagePolicy,
}

fn collect_task(
    p: &Proc,
    registry: &Registry,
    s: &mut Session,
) -> Result<(pb::Task, Vec<PagePlan>), DumpError> {
    let pid = p.pid;
    // Memory layout first, before crt's scratch mapping exists.
    let maps = procfs::smaps(pid)?;
    let thread = collect_thread(pid)?;
    let scratch = s.scratch()?;
    let sigactions = task_state::read_sigactions(&mut s.puppet, scratch)?;
    let itimers = task_state::read_itimers(&mut s.puppet, scratch)?;
    let mut mm = task_state::read_mm(pid, &mut s.puppet)?;
    let status = procfs::status(pid)?;

    let mut task = pb::Task {
        pid,
        ppid: p.ppid,
        pgid: p.pgid,
        sid: p.sid,
        comm: p.comm.clone(),
        threads: vec![thread],
        sigactions,
        shared_pending: ptrace::peek_siginfo(pid, true)?
            .into_iter()
            .map(|raw| pb::SigInfo { raw: raw.to_vec() })
            .collect(),
        rlimits: task_state::read_rlimits(pid).map_err(|source| DumpError::Io {
            pid,
            what: "reading rlimits".into(),
            source,
        })?,
        itimers,
        cwd: procfs::link(pid, "cwd")?,
        root: procfs::link(pid, "root")?,
        umask: status.umask,
        creds: Some(task_state::read_creds(pid)?),
        personality: procfs::personality(pid)?,
        exit_signal: procfs::stat(pid)?.exit_signal,
        ..Default::default()
    };
    // Signals the freeze took off the queue belong to the image too.
    for raw in &s.stashed {
        task.threads[0]
            .pending
            .push(pb::SigInfo { raw: raw.to_vec() });
    }

    let mut plans = Vec::new();
    {
        for m in &maps {
            if VDSO_NAMES.contains(&m.name.as_str()) {
                mm.vdso_block.push(vma_record(m));
                if m.name == "[vvar]" {
                    mm.vdso_start = m.start;
                }
                if m.name == "[vdso]" {
                    mm.vdso_text = m.start;
                }
                continue;
            }
            if KERNEL_MAPPINGS.contains(&m.name.as_str()) {
                continue;
            }
            let desc = vma_desc(pid, m);
            let h = registry
                .claim_vma(&desc)
                .ok_or_else(|| DumpError::UnclaimedVma {
                    pid,
                    start: m.start,
                    end: m.end,
                    name: m.name.clone(),
                })?;
            let d = h
                .dump_vma(task_ref(&mut s.puppet), &desc)
                .into_result()
                .map_err(|msg| DumpError::Handler {
                    pid,
                    what: format!("memory {:#x}-{:#x} {}", m.start, m.end, m.name),
                    handler: h.name().into_string(),
                    msg: msg.into_string(),
                })?;
            let mut rec = vma_record(m);
            rec.handler = h.name().into_string();
            rec.blob = d.blob.into_vec();
            rec.pages = match d.pages {
                PagePolicy::None => pb::PageSource::PagesNone,
                PagePolicy::Private => pb::PageSource::PagesPrivate,
                PagePolicy::All => pb::PageSource::PagesAll,
            } as i32;
            plans.push(PagePlan {
                start: m.start,
                end: m.end,
                policy: d.pages,
            });
            task.vmas.push(rec);
        }
        if mm.vdso_text == 0 {
            return Err(DumpError::Unsupported {
                pid,
                what: "has no [vdso] mapping; crt needs it to restore".into(),
            });
        }
        for fd in procfs::fds(pid)? {
            let desc = fd_desc(pid, fd)?;
            let h = registry
                .claim_fd(&desc)
                .ok_or_else(|| DumpError::UnclaimedFd {
                    pid,
                    fd,
                    link: desc.link.to_string(),
                    kind: file_kind(desc.mode),
                })?;
            let blob = h
                .dump_fd(task_ref(&mut s.puppet), &desc)
                .into_result()
                .map_err(|msg| DumpError::Handler {
                    pid,
                    what: format!("fd {fd} ({})", desc.link),
                    handler: h.name().into_string(),
                    msg: msg.into_string(),
                })?;
            task.fds.push(pb::Fd {
                fd,
                cloexec: desc.flags & libc::O_CLOEXEC as u32 != 0,
                handler: h.name().into_string(),
                blob: blob.into_vec(),
                link: desc.link.to_string(),
            });
            debug!(fd, link = %desc.link, "fd claimed");
        }
    }
    task.mm = Some(mm);
    Ok((task, plans))
}

/// The plugin-API view of a puppet.
pub fn task_ref(p: &mut Puppet) -> TaskRef<'_> {
    Task_TO::from_ptr(p, TD_Opaque)
}

fn collect_thread(tid: i32) -> Result<pb::Thread, DumpError> {
    let regs = ptrace::get_regs(tid)?;
    Ok(pb::Thread {
        tid,
        regs: ptrace::regs_to_bytes(&regs),
        xsave: ptrace::get_xsave(tid)?,
        sigmask: ptrace::get_sigmask(tid)?,
        pending: ptrace::peek_siginfo(tid, false)?
            .into_iter()
            .map(|raw| pb::SigInfo { raw: raw.to_vec() })
            .collect(),
        rseq: ptrace::rseq_config(tid)?.map(|r| pb::Rseq {
            ptr: r.ptr,
            size: r.size,
            signature: r.signature,
        }),
        clear_child_tid: 0,
    })
}

fn vma_record(m: &procfs::MapsEntry) -> pb::Vma {
    let mut flags = if m.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    } as u32;
    let vm_flags: Vec<String> = m.vm_flags.split_whitespace().map(String::from).collect();
    if vm_flags.iter().any(|f| f == "gd") {
        flags |= libc::MAP_GROWSDOWN as u32;
    }
    if m.ino == 0 {
        flags |= libc::MAP_ANONYMOUS as u32;
    }
    pb::Vma {
        start: m.start,
        end: m.end,
        prot: m.prot,
        flags,
        pgoff: m.pgoff,
        name: m.name.clone(),
        vm_flags,
        dev: m.dev,
        ino: m.ino,
        ..Default::default()
    }
}

/// The handler-facing description of a memory area.
pub fn vma_desc(pid: i32, m: &procfs::MapsEntry) -> VmaDesc {
    VmaDesc {
        pid,
        start: m.start,
        end: m.end,
        prot: m.prot,
        shared: m.shared,
        pgoff: m.pgoff,
        name: m.name.as_str().into(),
        dev: m.dev,
        ino: m.ino,
        vm_flags: m.vm_flags.as_str().into(),
    }
}

fn fd_desc(pid: i32, fd: i32) -> Result<FdDesc, DumpError> {
    use std::os::unix::fs::MetadataExt;
    let link = procfs::link(pid, &format!("fd/{fd}"))?;
    let path = format!("/proc/{pid}/fd/{fd}");
    let meta = fs::metadata(&path).map_err(|source| DumpError::Io {
        pid,
        what: format!("stat fd {fd} ({link})"),
        source,
    })?;
    let info = procfs::fdinfo(pid, fd)?;
    Ok(FdDesc {
        pid,
        fd,
        link: link.as_str().into(),
        mode: meta.mode(),
        dev: meta.dev(),
        ino: meta.ino(),
        rdev: meta.rdev(),
        size: meta.size() as i64,
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        flags: info.flags,
        pos: info.pos,
        mnt_id: info.mnt_id,
    })
}

fn file_kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "pipe",
        libc::S_IFSOCK => "socket",
        libc::S_IFLNK => "symlink",
        _ => "anonymous inode",
    }
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

/// A short, stable fingerprint of vdso text.
pub fn fingerprint(text: &[u8]) -> String {
    format!("crc32:{:08x}:{}", crc32fast::hash(text), text.len())
}

fn dump_task_pages(
    pid: i32,
    plans: &[PagePlan],
    out: &mut Output,
) -> Result<pb::PageMap, DumpError> {
    let pagemap_path = format!("/proc/{pid}/pagemap");
    let pagemap = File::open(&pagemap_path).map_err(|source| DumpError::Io {
        pid,
        what: format!("opening {pagemap_path}"),
        source,
    })?;
    let mut runs: Vec<Run> = Vec::new();
    for plan in plans {
        runs.extend(mem::scan(pid, &pagemap, plan.start, plan.end, plan.policy)?);
    }
    let total: u64 = runs.iter().map(|r| r.pages).sum();
    let file = out.create_pages(pid, total)?;
    let written = mem::dump_pages(pid, &runs, &file, images::PAGE_SIZE)?;
    debug!(pages = total, bytes = written, "pages stored");
    Ok(pb::PageMap {
        page_size: images::PAGE_SIZE,
        total_pages: total,
        runs: runs
            .iter()
            .map(|r| pb::PageRun {
                vaddr: r.vaddr,
                nr_pages: r.pages,
            })
            .collect(),
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
        let err = |what: String| DumpError::ImageDir {
            path: path.to_path_buf(),
            what,
        };
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
        Ok(Self {
            dir,
            created_dir,
            written: Vec::new(),
        })
    }

    fn write<M: prost::Message>(
        &mut self,
        path: &Path,
        kind: Kind,
        msg: &M,
    ) -> Result<(), DumpError> {
        self.written.push(path.to_path_buf());
        self.written.push(path.with_extension("img.tmp"));
        self.dir.write_msg(path, kind, msg).map_err(Into::into)
    }

    fn create_pages(&mut self, pid: i32, pages: u64) -> Result<File, DumpError> {
        self.written.push(self.dir.pages_path(pid));
        self.dir.create_pages(pid, pages).map_err(Into::into)
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
