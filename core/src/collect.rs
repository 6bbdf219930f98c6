//! Collecting one process: threads, signals, timers, memory areas and
//! fds, each resource dispatched to the handler that claims it. State only
//! readable from inside the task is read through injected syscalls.

use abi_stable::sabi_trait::TD_Opaque;
use crt_plugin_api::{FdDesc, PagePolicy, TaskRef, Task_TO, VmaDesc};
use tracing::debug;

use crate::dump::{DumpError, VDSO_NAMES};
use crate::forest::{Frozen, Proc};
use crate::handlers::Registry;
use crate::images::pb;
use crate::procfs;
use crate::ptrace;
use crate::puppet::{self, Puppet, PuppetError};
use crate::sharing::{self, FileIds};
use crate::task_state;

/// Scratch memory crt maps inside a task while collecting.
const SCRATCH_LEN: u64 = 16 * 4096;
/// Offset of the part of the scratch lent to plugins.
const PLUGIN_SCRATCH: u64 = 4 * 4096;
/// Kernel mappings that are neither restored nor handled.
const KERNEL_MAPPINGS: [&str; 2] = ["[vsyscall]", "[uprobes]"];
/// `prctl(PR_GET_TID_ADDRESS)`.
const PR_GET_TID_ADDRESS: u64 = 40;

/// The plugin-API view of a puppet.
pub fn task_ref(p: &mut Puppet) -> TaskRef<'_> {
    Task_TO::from_ptr(p, TD_Opaque)
}

/// A process being collected: a puppet per thread and what must be undone.
pub struct Session {
    pid: i32,
    /// The main thread's puppet.
    pub puppet: Puppet,
    /// The other threads' puppets.
    threads: Vec<Puppet>,
    scratch: Option<u64>,
    stashed: Vec<(i32, Vec<[u8; ptrace::SIGINFO_LEN]>)>,
    /// Each thread's own CPU affinity, while crt runs it on crt's CPU.
    affinity: Vec<(i32, Vec<u8>)>,
    undone: bool,
}

impl Session {
    /// Opens puppets on every thread of `p`, which `frozen` holds stopped.
    /// With `pin`, the threads run on crt's CPU while crt injects syscalls
    /// (their own affinity is recorded and given back by [`Session::undo`]).
    pub fn open(
        p: &Proc,
        frozen: &Frozen,
        blobs: &crate::puppet::Blobs,
        pin: Option<&[u8]>,
    ) -> Result<Self, DumpError> {
        let mut affinity = Vec::new();
        for &tid in &p.threads {
            let own = crate::affinity::get(tid).unwrap_or_default();
            if let Some(mask) = pin.filter(|_| !own.is_empty()) {
                if crate::affinity::set(tid, mask).is_ok() {
                    affinity.push((tid, own));
                    continue;
                }
            }
            affinity.push((tid, own));
        }
        let gadget = puppet::find_gadget(p.pid)?;
        let mut puppets = Vec::new();
        let mut stashed = Vec::new();
        for &tid in &p.threads {
            let mut puppet = Puppet::new(tid, ptrace::get_regs(tid)?, gadget);
            puppet.set_blobs(blobs.clone());
            puppets.push(puppet);
            if let Some(t) = frozen.thread(tid) {
                stashed.push((tid, t.stashed.clone()));
            }
        }
        if puppets.is_empty() {
            return Err(DumpError::Forest(crate::forest::ForestError::Vanished { pid: p.pid }));
        }
        let puppet = puppets.remove(0);
        Ok(Self { pid: p.pid, puppet, threads: puppets, scratch: None, stashed, affinity, undone: false })
    }

    fn scratch(&mut self) -> Result<u64, DumpError> {
        if let Some(s) = self.scratch {
            return Ok(s);
        }
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let addr = self.puppet.call("mmap", libc::SYS_mmap, [0, SCRATCH_LEN, prot, flags, u64::MAX, 0])?;
        self.scratch = Some(addr);
        self.puppet.set_plugin_scratch(addr + PLUGIN_SCRATCH, SCRATCH_LEN - PLUGIN_SCRATCH);
        Ok(addr)
    }

    /// Puts the process back as it was: scratch unmapped, signals
    /// re-queued, every thread's registers.
    pub fn undo(&mut self) {
        if self.undone {
            return;
        }
        self.undone = true;
        if let Some(addr) = self.scratch.take() {
            if let Err(e) = self.puppet.call("munmap", libc::SYS_munmap, [addr, SCRATCH_LEN, 0, 0, 0, 0]) {
                tracing::warn!(pid = self.pid, "unmapping scratch: {e}");
            }
        }
        let mut all = std::mem::take(&mut self.stashed);
        all.push((self.puppet.tid(), self.puppet.take_stashed()));
        for t in &mut self.threads {
            all.push((t.tid(), t.take_stashed()));
        }
        for (tid, infos) in all.into_iter().filter(|(_, i)| !i.is_empty()) {
            if let Err(e) = requeue(&mut self.puppet, self.pid, tid, &infos) {
                tracing::warn!(pid = self.pid, tid, "re-queueing {} signals: {e}", infos.len());
            }
        }
        for p in std::iter::once(&self.puppet).chain(&self.threads) {
            if let Err(e) = p.restore_regs() {
                tracing::warn!(pid = self.pid, tid = p.tid(), "restoring registers: {e}");
            }
        }
        for (tid, mask) in self.affinity.iter().filter(|(_, m)| !m.is_empty()) {
            if let Err(e) = crate::affinity::set(*tid, mask) {
                tracing::warn!(pid = self.pid, tid, "restoring CPU affinity: {e}");
            }
        }
    }
}

/// Queues signals back into the task they were taken from.
fn requeue(p: &mut Puppet, pid: i32, tid: i32, infos: &[[u8; ptrace::SIGINFO_LEN]]) -> Result<(), PuppetError> {
    // Blocked while crt queues, so the next injection does not take the
    // signal just queued off again; the thread's own mask comes back after.
    let mask = ptrace::get_sigmask(pid)?;
    ptrace::set_sigmask(pid, !0)?;
    let r = queue_signals(p, pid, tid, infos);
    ptrace::set_sigmask(pid, mask)?;
    r
}

fn queue_signals(p: &mut Puppet, pid: i32, tid: i32, infos: &[[u8; ptrace::SIGINFO_LEN]]) -> Result<(), PuppetError> {
    // The siginfo goes on the task's stack, below the red zone.
    let regs = ptrace::get_regs(pid)?;
    let at = (regs.rsp - 128 - ptrace::SIGINFO_LEN as u64) & !15;
    let mut saved = [0u8; ptrace::SIGINFO_LEN];
    p.read(at, &mut saved)?;
    for info in infos {
        let signo = i32::from_le_bytes([info[0], info[1], info[2], info[3]]);
        p.write(at, info)?;
        p.call("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo, [pid as u64, tid as u64, signo as u64, at, 0, 0])?;
    }
    p.write(at, &saved)
}

/// A memory area and the pages to store from it.
#[derive(Debug, Clone, Copy)]
pub struct PagePlan {
    /// Start.
    pub start: u64,
    /// End.
    pub end: u64,
    /// Which pages.
    pub policy: PagePolicy,
}

/// The image of a zombie: who it was and how it ended.
pub fn zombie_task(p: &Proc) -> pb::Task {
    pb::Task {
        pid: p.pid,
        ppid: p.ppid,
        pgid: p.pgid,
        sid: p.sid,
        comm: p.comm.clone(),
        zombie: true,
        exit_code: p.exit_code,
        exit_signal: procfs::stat(p.pid).map(|s| s.exit_signal).unwrap_or(libc::SIGCHLD),
        // Its parent sees the real uid (waitid, SIGCHLD); /proc shows all.
        creds: task_state::read_creds(p.pid).ok(),
        ..Default::default()
    }
}

/// Collects one live process.
pub fn collect_task(
    p: &Proc,
    is_root: bool,
    registry: &Registry,
    s: &mut Session,
    frozen: &Frozen,
    file_ids: &mut FileIds,
) -> Result<(pb::Task, Vec<PagePlan>), DumpError> {
    let pid = p.pid;
    // Memory layout first, before crt's scratch mapping exists.
    let maps = procfs::smaps(pid)?;
    let scratch = s.scratch()?;
    let mut threads = vec![collect_thread(&mut s.puppet, scratch)?];
    for t in &mut s.threads {
        threads.push(collect_thread(t, scratch)?);
    }
    for t in &mut threads {
        if let Some((_, own)) = s.affinity.iter().find(|(tid, _)| *tid == t.tid) {
            t.cpu_affinity = own.clone();
        }
    }
    for (tid, infos) in &s.stashed {
        if let Some(t) = threads.iter_mut().find(|t| t.tid == *tid) {
            t.pending.extend(infos.iter().map(|raw| pb::SigInfo { raw: raw.to_vec() }));
        }
    }
    let sigactions = task_state::read_sigactions(&mut s.puppet, scratch)?;
    let itimers = task_state::read_itimers(&mut s.puppet, scratch)?;
    let posix_timers = crate::timers::read(pid, &mut s.puppet, scratch)?;
    let (child_subreaper, dumpable, thp_disable) = task_state::read_prctls(&mut s.puppet, scratch)?;
    let mut mm = task_state::read_mm(pid, &mut s.puppet)?;
    let status = procfs::status(pid)?;
    let stat = procfs::stat(pid)?;
    let io = |what: &str| {
        let what = what.to_string();
        move |source| DumpError::Io { pid, what, source }
    };
    let oom_score_adj = task_state::oom_score_adj(pid).map_err(io("reading /proc/PID/oom_score_adj"))?;
    let loginuid = task_state::loginuid(pid).map_err(io("reading /proc/PID/loginuid"))?;
    let membarrier = task_state::read_membarrier(&mut s.puppet)?;
    // mlockall(MCL_FUTURE) shows on crt's scratch mapping, made after it.
    let mlockall = if status.vm_lck_kb > 0 {
        let maps = procfs::smaps(pid)?;
        let flags = maps.into_iter().find(|m| m.start <= scratch && scratch < m.end).map(|m| m.vm_flags);
        let flags = flags.unwrap_or_default();
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        match (has("lo"), has("lf")) {
            (_, true) => libc::MCL_FUTURE | libc::MCL_ONFAULT,
            (true, false) => libc::MCL_FUTURE,
            _ => 0,
        }
    } else {
        0
    };

    let main_creds = threads.first().and_then(|t| t.creds.clone());
    // From outside when crt may (same user, or CAP_SYS_RESOURCE), else from inside.
    let rlimits = match task_state::read_rlimits(pid) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => task_state::read_rlimits_inside(&mut s.puppet, scratch)?,
        Err(source) => return Err(DumpError::Io { pid, what: "reading rlimits".into(), source }),
    };
    let mut task = pb::Task {
        pid,
        ppid: p.ppid,
        pgid: p.pgid,
        sid: p.sid,
        comm: p.comm.clone(),
        threads,
        sigactions,
        shared_pending: ptrace::peek_siginfo(pid, true)?
            .into_iter()
            .map(|raw| pb::SigInfo { raw: raw.to_vec() })
            .collect(),
        rlimits,
        itimers,
        posix_timers,
        child_subreaper,
        dumpable,
        thp_disable,
        cgroups: crate::cgroups::read(pid),
        cwd: existing_dir(pid, "cwd", "working directory")?,
        root: existing_dir(pid, "root", "root directory")?,
        umask: status.umask,
        creds: main_creds,
        personality: procfs::personality(pid)?,
        exit_signal: stat.exit_signal,
        stopped: frozen.thread(pid).is_some_and(|t| t.stop_signal != 0),
        stop_signal: frozen.thread(pid).map_or(0, |t| t.stop_signal),
        oom_score_adj: Some(oom_score_adj),
        loginuid: Some(loginuid),
        membarrier,
        mlockall,
        ..Default::default()
    };
    if !is_root {
        (task.files_shared_with_parent, task.fs_shared_with_parent) = sharing::shares_with_parent(pid, p.ppid);
    }
    for t in task.threads.iter_mut().skip(1) {
        t.cgroups = crate::cgroups::read_thread(pid, t.tid, &task.cgroups);
    }

    let mut plans = Vec::new();
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
        let (rec, plan) = collect_vma(pid, m, registry, &mut s.puppet)?;
        plans.push(plan);
        task.vmas.push(rec);
    }
    if mm.vdso_text == 0 {
        return Err(DumpError::Unsupported { pid, what: "has no [vdso] mapping; crt needs it to restore".into() });
    }
    for fd in procfs::fds(pid)? {
        task.fds.push(collect_fd(pid, fd, registry, &mut s.puppet, file_ids)?);
    }
    task.mm = Some(mm);
    // Signals that arrived while crt ran syscalls in the task: in the image
    // too (and re-queued into the task if it keeps running).
    for (t, p) in task.threads.iter_mut().zip(std::iter::once(&s.puppet).chain(&s.threads)) {
        t.pending.extend(p.stashed().iter().map(|raw| pb::SigInfo { raw: raw.to_vec() }));
    }
    Ok((task, plans))
}

/// The cwd or root link of `pid`, refused when that directory was removed
/// (crt would have nowhere to put the process back).
fn existing_dir(pid: i32, link: &str, what: &str) -> Result<String, DumpError> {
    let path = procfs::link(pid, link)?;
    if path.ends_with(" (deleted)") || std::fs::metadata(format!("/proc/{pid}/{link}")).is_err() {
        return Err(DumpError::Unsupported {
            pid,
            what: format!("its {what} {path} was removed; crt cannot recreate a removed directory"),
        });
    }
    Ok(path)
}

fn collect_vma(
    pid: i32,
    m: &procfs::MapsEntry,
    registry: &Registry,
    puppet: &mut Puppet,
) -> Result<(pb::Vma, PagePlan), DumpError> {
    let desc = vma_desc(pid, m);
    let h = registry.claim_vma(&desc).ok_or_else(|| DumpError::UnclaimedVma {
        pid,
        start: m.start,
        end: m.end,
        name: m.name.clone(),
    })?;
    let d = h.dump_vma(task_ref(puppet), &desc).into_result().map_err(|msg| DumpError::Handler {
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
    let plan = PagePlan { start: m.start, end: m.end, policy: d.pages };
    Ok((rec, plan))
}

fn collect_fd(
    pid: i32,
    fd: i32,
    registry: &Registry,
    puppet: &mut Puppet,
    file_ids: &mut FileIds,
) -> Result<pb::Fd, DumpError> {
    let (desc, info) = fd_desc(pid, fd)?;
    let h = registry.claim_fd(&desc).ok_or_else(|| DumpError::UnclaimedFd {
        pid,
        fd,
        link: desc.link.to_string(),
        kind: file_kind(desc.mode),
    })?;
    let (file_id, shared_ref) = file_ids.id(pid, fd, desc.dev, desc.ino);
    let copy = puppet.take_fd(fd)?;
    let common = crate::fdstate::dump(pid, fd, &info, std::os::fd::AsFd::as_fd(&copy), !shared_ref)
        .map_err(|what| DumpError::Unsupported { pid, what: format!("{what} ({})", desc.link) })?;
    drop(copy);
    let blob = if shared_ref {
        Vec::new()
    } else {
        h.dump_fd(task_ref(puppet), &desc)
            .into_result()
            .map_err(|msg| DumpError::Handler {
                pid,
                what: format!("fd {fd} ({})", desc.link),
                handler: h.name().into_string(),
                msg: msg.into_string(),
            })?
            .into_vec()
    };
    debug!(fd, link = %desc.link, file_id, shared_ref, "fd claimed");
    Ok(pb::Fd {
        fd,
        cloexec: desc.flags & libc::O_CLOEXEC as u32 != 0,
        handler: h.name().into_string(),
        blob,
        link: desc.link.to_string(),
        file_id,
        shared_ref,
        state: common.state,
        locks: common.locks,
    })
}

/// One thread: registers, FPU state, signal mask and queue, rseq, and
/// (from inside) its clear-child-tid address and alternate signal stack.
fn collect_thread(p: &mut Puppet, scratch: u64) -> Result<pb::Thread, DumpError> {
    let tid = p.tid();
    let regs = *p.base_regs();
    p.call("prctl(PR_GET_TID_ADDRESS)", libc::SYS_prctl, [PR_GET_TID_ADDRESS, scratch, 0, 0, 0, 0])?;
    let mut w = [0u8; 24];
    p.read(scratch, &mut w[..8])?;
    let clear_child_tid = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
    let (pdeathsig, timerslack_ns) = task_state::read_thread_prctls(p, scratch)?;
    let sched = crate::sched::read(tid).map_err(|source| DumpError::Io {
        pid: tid,
        what: "reading its scheduling attributes (sched_getattr)".into(),
        source,
    })?;
    let seccomp = crate::seccomp::read(tid).map_err(|what| DumpError::Unsupported { pid: tid, what })?;
    let (robust_list, robust_list_len) = task_state::robust_list(tid).map_err(|source| DumpError::Io {
        pid: tid,
        what: "reading its robust futex list (get_robust_list)".into(),
        source,
    })?;
    p.call("sigaltstack", libc::SYS_sigaltstack, [0, scratch, 0, 0, 0, 0])?;
    p.read(scratch, &mut w)?;
    let word =
        |o: usize| u64::from_le_bytes([w[o], w[o + 1], w[o + 2], w[o + 3], w[o + 4], w[o + 5], w[o + 6], w[o + 7]]);
    Ok(pb::Thread {
        tid,
        regs: ptrace::regs_to_bytes(&regs),
        xsave: ptrace::get_xsave(tid)?,
        sigmask: ptrace::get_sigmask(tid)?,
        pending: ptrace::peek_siginfo(tid, false)?.into_iter().map(|raw| pb::SigInfo { raw: raw.to_vec() }).collect(),
        rseq: ptrace::rseq_config(tid)?.map(|r| pb::Rseq { ptr: r.ptr, size: r.size, signature: r.signature }),
        clear_child_tid,
        altstack: Some(pb::SigAltStack { sp: word(0), flags: word(8) as i32, size: word(16) }),
        cpu_affinity: Vec::new(), // filled from the session's record
        pdeathsig,
        timerslack_ns,
        sched: Some(sched),
        robust_list,
        robust_list_len,
        seccomp,
        creds: Some(pb::Creds { securebits: crate::puppeteer::securebits(p)?, ..task_state::read_creds(tid)? }),
        cgroups: Vec::new(), // filled once the process's are known
    })
}

fn vma_record(m: &procfs::MapsEntry) -> pb::Vma {
    let mut flags = if m.shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE } as u32;
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

fn fd_desc(pid: i32, fd: i32) -> Result<(FdDesc, procfs::FdInfo), DumpError> {
    use std::os::unix::fs::MetadataExt;
    let link = procfs::link(pid, &format!("fd/{fd}"))?;
    let path = format!("/proc/{pid}/fd/{fd}");
    let meta = std::fs::metadata(&path).map_err(|source| DumpError::Io {
        pid,
        what: format!("stat fd {fd} ({link})"),
        source,
    })?;
    let info = procfs::fdinfo(pid, fd)?;
    let desc = FdDesc {
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
    };
    Ok((desc, info))
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
