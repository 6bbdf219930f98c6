//! The puppeteer: building one task from outside.
//!
//! [`fork_stopped`] creates the task with its dumped pid; [`rebuild`] then
//! turns that copy of crt into the dumped process, step by step, with
//! syscalls injected through its vdso (see `docs/internals.md`):
//! rseq off → crt's pidfd parked, inherited fds closed → address space emptied → vdso moved → scratch →
//! memory areas → pages → mm fields → rlimits → fds → process attributes →
//! signals → rseq → registers.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crt_plugin_api::{VmaDesc, VmaRestore};
use tracing::{debug, info_span, warn};

use crate::dump::task_ref;
use crate::handlers::Registry;
use crate::images::{pb, ImageDir, ImageError, PAGE_SIZE};
use crate::mem::{self, Run};
use crate::procfs::{self, MapsEntry};
use crate::ptrace::{self, Stop};
use crate::puppet::{self, Puppet};
use crate::restore::{RestoreError, RestoreStats};
use crate::task_state;

/// One task's images, read and checked.
#[derive(Debug)]
pub struct Loaded {
    /// `task-<pid>.img`.
    pub task: pb::Task,
    /// `pagemap-<pid>.img`.
    pub pagemap: pb::PageMap,
    /// `pages-<pid>.img`, header checked.
    pub pages: File,
}

/// Scratch memory crt maps inside a task while building it.
const SCRATCH_LEN: u64 = 16 * PAGE_SIZE;
/// Offsets inside the scratch area.
const S_ARG: u64 = 1024;
const S_AUXV: u64 = 2048;
/// Lowest address crt maps its scratch area at.
const SCRATCH_FLOOR: u64 = 0x10_0000;

/// Consistency checks of a task image against this machine.
pub fn check_task(dir: &ImageDir, task: &pb::Task, own: &[MapsEntry]) -> Result<(), RestoreError> {
    let invalid = |what: String| -> RestoreError {
        ImageError::Invalid {
            path: dir.task_path(task.pid),
            what,
        }
        .into()
    };
    let mm = task
        .mm
        .as_ref()
        .ok_or_else(|| invalid("no mm state".into()))?;
    if task.threads.is_empty() {
        return Err(invalid("no threads".into()));
    }
    if mm.vdso_block.len() != own.len() {
        return Err(invalid(format!(
            "vdso block has {} mappings, this kernel has {}",
            mm.vdso_block.len(),
            own.len()
        )));
    }
    for (i, (img, mine)) in mm.vdso_block.iter().zip(own).enumerate() {
        let same_size = img.end - img.start == mine.end - mine.start;
        let same_off =
            img.start.wrapping_sub(mm.vdso_block[0].start) == mine.start.wrapping_sub(own[0].start);
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
            return Err(invalid(format!(
                "thread {}: registers have the wrong size",
                t.tid
            )));
        }
    }
    let mut last_end = 0;
    for v in &task.vmas {
        if v.start >= v.end
            || v.start < last_end
            || v.start % PAGE_SIZE != 0
            || v.end % PAGE_SIZE != 0
        {
            return Err(invalid(format!(
                "memory area {:#x}-{:#x} is malformed or out of order",
                v.start, v.end
            )));
        }
        last_end = v.end;
    }
    Ok(())
}

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

/// Creates a child of crt with pid `pid` that stops itself under ptrace.
pub fn fork_stopped(pid: i32) -> Result<i32, RestoreError> {
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
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    };
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
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            let stat = procfs::stat(pid).unwrap_or_default();
            return Err(RestoreError::PidBusy {
                pid,
                comm: stat.comm,
                state: stat.state,
            });
        }
        return Err(RestoreError::Clone { pid, source: e });
    }
    let child = r as i32;
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
    ptrace::set_options(child, libc::PTRACE_O_EXITKILL)?;
    Ok(child)
}

/// Turns the stopped copy of crt with the task's pid into the dumped task.
pub fn rebuild(
    dir: &ImageDir,
    registry: &Registry,
    loaded: &Loaded,
    own_block: &[MapsEntry],
    stats: &mut RestoreStats,
) -> Result<(), RestoreError> {
    let task = &loaded.task;
    let pid = task.pid;
    let Some(mm) = task.mm.as_ref() else {
        unreachable!("check_task verified mm")
    };
    let _ = dir;
    let t = Instant::now();
    let mut b = Builder::start(pid)?;
    b.unregister_rseq()?;
    b.park_pidfd(task)?;
    b.empty_address_space(own_block)?;
    b.move_vdso(own_block, mm)?;
    b.map_scratch(task, mm)?;
    b.map_areas(registry, task)?;
    stats.map += t.elapsed().as_secs_f64();

    let t = Instant::now();
    {
        let _s = info_span!("fill").entered();
        stats.page_bytes += b.fill(loaded)?;
    }
    stats.fill += t.elapsed().as_secs_f64();

    let t = Instant::now();
    b.set_mm(mm)?;
    task_state::write_rlimits(pid, &task.rlimits)
        .map_err(|e| RestoreError::step(pid, "setting rlimits", e))?;
    b.install_fds(registry, task)?;
    b.set_attributes(task)?;
    b.set_signals(task)?;
    b.register_rseq(task)?;
    b.set_creds(task)?;
    b.finish(task)?;
    stats.map += t.elapsed().as_secs_f64();
    debug!(injected = b.p.injected(), "task rebuilt");
    Ok(())
}

/// State while rebuilding one task.
struct Builder {
    pid: i32,
    p: Puppet,
    /// A pidfd of crt, open inside the task: the task pulls the fds crt
    /// prepared with `pidfd_getfd` (one injected syscall per fd).
    remote_pidfd: u64,
    scratch: u64,
}

fn step<E: std::error::Error + Send + Sync + 'static>(
    pid: i32,
    what: &str,
) -> impl FnOnce(E) -> RestoreError + '_ {
    move |e| RestoreError::step(pid, what.to_string(), e)
}

impl Builder {
    fn start(pid: i32) -> Result<Self, RestoreError> {
        let regs = ptrace::get_regs(pid)?;
        let gadget = puppet::find_gadget(pid)?;
        let mut p = Puppet::new(pid, regs, gadget);
        let me = u64::from(std::process::id());
        let remote_pidfd = p.call("pidfd_open(crt)", libc::SYS_pidfd_open, [me, 0, 0, 0, 0, 0])?;
        Ok(Self {
            pid,
            p,
            remote_pidfd,
            scratch: 0,
        })
    }

    fn unregister_rseq(&mut self) -> Result<(), RestoreError> {
        if let Some(r) = ptrace::rseq_config(self.pid)? {
            const RSEQ_FLAG_UNREGISTER: u64 = 1;
            self.p.call(
                "rseq(UNREGISTER)",
                libc::SYS_rseq,
                [
                    r.ptr,
                    u64::from(r.size),
                    RSEQ_FLAG_UNREGISTER,
                    u64::from(r.signature),
                    0,
                    0,
                ],
            )?;
        }
        Ok(())
    }

    /// Moves crt's pidfd above every fd the image uses and closes the rest
    /// of the fds the task inherited from crt.
    fn park_pidfd(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        let max_fd = task.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) as u64;
        if let Some(l) = task
            .rlimits
            .iter()
            .find(|l| l.resource == libc::RLIMIT_NOFILE)
        {
            task_state::write_rlimits(self.pid, std::slice::from_ref(l))
                .map_err(step(self.pid, "raising RLIMIT_NOFILE"))?;
        }
        let t = self.p.call(
            "fcntl(F_DUPFD_CLOEXEC)",
            libc::SYS_fcntl,
            [
                self.remote_pidfd,
                libc::F_DUPFD_CLOEXEC as u64,
                max_fd + 1,
                0,
                0,
                0,
            ],
        )?;
        self.p
            .call("close_range", libc::SYS_close_range, [0, t - 1, 0, 0, 0, 0])?;
        self.p.call(
            "close_range",
            libc::SYS_close_range,
            [t + 1, u64::from(u32::MAX), 0, 0, 0, 0],
        )?;
        self.remote_pidfd = t;
        Ok(())
    }

    /// Unmaps everything but the vdso block (crt's code, heap, stack).
    fn empty_address_space(&mut self, block: &[MapsEntry]) -> Result<(), RestoreError> {
        let lo = block[0].start;
        let hi = block[block.len() - 1].end;
        let top = procfs::maps(self.pid)?
            .iter()
            .filter(|m| m.name != "[vsyscall]")
            .map(|m| m.end)
            .max()
            .unwrap_or(hi);
        self.p
            .call("munmap", libc::SYS_munmap, [0, lo, 0, 0, 0, 0])?;
        if top > hi {
            self.p
                .call("munmap", libc::SYS_munmap, [hi, top - hi, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// Moves `[vvar]`, `[vvar_vclock]`, `[vdso]` together to their dumped addresses.
    fn move_vdso(&mut self, own: &[MapsEntry], mm: &pb::MmState) -> Result<(), RestoreError> {
        let cur = own[0].start;
        let want = mm.vdso_block[0].start;
        if cur == want {
            return Ok(());
        }
        let size = own[own.len() - 1].end - cur;
        let overlap = want < cur + size && cur < want + size;
        let mut from = cur;
        if overlap {
            let temp = cur.max(want) + size + (1 << 30);
            self.move_block(own, from, temp)?;
            from = temp;
        }
        self.move_block(own, from, want)
    }

    fn move_block(&mut self, own: &[MapsEntry], from: u64, to: u64) -> Result<(), RestoreError> {
        let base = own[0].start;
        for m in own {
            let len = m.end - m.start;
            let old = from + (m.start - base);
            let new = to + (m.start - base);
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            self.p.call(
                "mremap(vdso)",
                libc::SYS_mremap,
                [old, len, len, flags, new, 0],
            )?;
            if m.name == "[vdso]" {
                let g = self.p.gadget();
                self.p.set_gadget(g - old + new);
            }
        }
        Ok(())
    }

    /// Maps crt's scratch area in a hole of the dumped address space.
    fn map_scratch(&mut self, task: &pb::Task, mm: &pb::MmState) -> Result<(), RestoreError> {
        let mut taken: Vec<(u64, u64)> = task
            .vmas
            .iter()
            .chain(&mm.vdso_block)
            .map(|v| (v.start, v.end))
            .collect();
        taken.sort_unstable();
        // Leave a guard page on both sides so stacks growing down keep their gap.
        let mut at = SCRATCH_FLOOR;
        for (s, e) in taken {
            if at + SCRATCH_LEN + 2 * PAGE_SIZE <= s {
                break;
            }
            at = at.max(e + PAGE_SIZE);
        }
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        self.scratch = self.p.call(
            "mmap(scratch)",
            libc::SYS_mmap,
            [at, SCRATCH_LEN, prot, flags, u64::MAX, 0],
        )?;
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

    /// Maps every memory area through the handler that dumped it.
    fn map_areas(&mut self, registry: &Registry, task: &pb::Task) -> Result<(), RestoreError> {
        let _s = info_span!("map").entered();
        for v in &task.vmas {
            let h = registry
                .by_name(&v.handler)
                .ok_or_else(|| RestoreError::MissingHandler {
                    name: v.handler.clone(),
                    version: String::new(),
                })?;
            let desc = image_vma_desc(self.pid, v);
            let how = h
                .restore_vma(task_ref(&mut self.p), &desc, v.blob.as_slice().into())
                .into_result()
                .map_err(|msg| RestoreError::Handler {
                    pid: self.pid,
                    what: format!("memory {:#x}-{:#x} {}", v.start, v.end, v.name),
                    handler: v.handler.clone(),
                    msg: msg.into_string(),
                })?;
            let len = v.end - v.start;
            let share = if v.flags & libc::MAP_SHARED as u32 != 0 {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
            let mut flags = share | libc::MAP_FIXED;
            if v.flags & libc::MAP_GROWSDOWN as u32 != 0 {
                flags |= libc::MAP_GROWSDOWN;
            }
            if v.vm_flags.iter().any(|f| f == "nr") {
                flags |= libc::MAP_NORESERVE;
            }
            let got = match how {
                VmaRestore::Done => v.start,
                VmaRestore::Anonymous => self.p.call(
                    "mmap",
                    libc::SYS_mmap,
                    [
                        v.start,
                        len,
                        u64::from(v.prot),
                        (flags | libc::MAP_ANONYMOUS) as u64,
                        u64::MAX,
                        0,
                    ],
                )?,
                VmaRestore::MapFd(fd) => {
                    // SAFETY: the handler hands us ownership of this fd.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
                    let rfd = self.install(owned)?;
                    let r = self.p.call(
                        "mmap(file)",
                        libc::SYS_mmap,
                        [v.start, len, u64::from(v.prot), flags as u64, rfd, v.pgoff],
                    );
                    self.close_remote(rfd)?;
                    r?
                }
            };
            if got != v.start {
                return Err(RestoreError::step(
                    self.pid,
                    format!("mapping {:#x}-{:#x} {}", v.start, v.end, v.name),
                    std::io::Error::other(format!("landed at {got:#x}")),
                ));
            }
            self.advise(v)?;
        }
        Ok(())
    }

    fn advise(&mut self, v: &pb::Vma) -> Result<(), RestoreError> {
        const ADVICE: [(&str, i32); 6] = [
            ("dd", libc::MADV_DONTDUMP),
            ("dc", libc::MADV_DONTFORK),
            ("wf", libc::MADV_WIPEONFORK),
            ("hg", libc::MADV_HUGEPAGE),
            ("nh", libc::MADV_NOHUGEPAGE),
            ("mg", libc::MADV_MERGEABLE),
        ];
        for (flag, advice) in ADVICE {
            if v.vm_flags.iter().any(|f| f == flag) {
                let r = self.p.syscall_raw(
                    "madvise",
                    libc::SYS_madvise,
                    [v.start, v.end - v.start, advice as u64, 0, 0, 0],
                )?;
                if r < 0 {
                    warn!(
                        pid = self.pid,
                        flag, "madvise on {:#x}-{:#x} failed: {r}", v.start, v.end
                    );
                }
            }
        }
        Ok(())
    }

    /// Writes the stored pages into the task.
    fn fill(&mut self, loaded: &Loaded) -> Result<u64, RestoreError> {
        let runs: Vec<Run> = loaded
            .pagemap
            .runs
            .iter()
            .map(|r| Run {
                vaddr: r.vaddr,
                pages: r.nr_pages,
            })
            .collect();
        let vmas = &loaded.task.vmas;
        let writable = |addr: u64| {
            let i = vmas.partition_point(|v| v.end <= addr);
            vmas.get(i)
                .is_some_and(|v| v.start <= addr && v.prot & libc::PROT_WRITE as u32 != 0)
        };
        Ok(mem::fill_pages(
            self.pid,
            &runs,
            &loaded.pages,
            PAGE_SIZE,
            writable,
        )?)
    }

    /// `PR_SET_MM_MAP`: code/data/brk/stack/args/env bounds, auxv, exe.
    fn set_mm(&mut self, mm: &pb::MmState) -> Result<(), RestoreError> {
        let exe = File::open(&mm.exe).map_err(step(self.pid, "opening the executable"))?;
        let exe_fd = self.install(exe.into())?;
        let auxv: Vec<u8> = mm.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.p.write(self.scratch + S_AUXV, &auxv)?;
        let map = task_state::prctl_mm_map(mm, self.scratch + S_AUXV, exe_fd as u32);
        self.p.write(self.scratch + S_ARG, &map)?;
        let r = self.p.call(
            "prctl(PR_SET_MM_MAP)",
            libc::SYS_prctl,
            [
                libc::PR_SET_MM as u64,
                libc::PR_SET_MM_MAP as u64,
                self.scratch + S_ARG,
                map.len() as u64,
                0,
                0,
            ],
        );
        self.close_remote(exe_fd)?;
        r?;
        Ok(())
    }

    /// Recreates every fd through its handler and puts it at its number.
    fn install_fds(&mut self, registry: &Registry, task: &pb::Task) -> Result<(), RestoreError> {
        for f in &task.fds {
            let h = registry
                .by_name(&f.handler)
                .ok_or_else(|| RestoreError::MissingHandler {
                    name: f.handler.clone(),
                    version: String::new(),
                })?;
            let fd = h
                .restore_fd(task_ref(&mut self.p), f.fd, f.blob.as_slice().into())
                .into_result()
                .map_err(|msg| RestoreError::Handler {
                    pid: self.pid,
                    what: format!("fd {} ({})", f.fd, f.link),
                    handler: f.handler.clone(),
                    msg: msg.into_string(),
                })?;
            // SAFETY: the handler hands us ownership of this fd.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let got = self.install(owned)?;
            let target = f.fd as u64;
            let cloexec = if f.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            if got == target {
                let fl = if f.cloexec {
                    libc::FD_CLOEXEC as u64
                } else {
                    0
                };
                self.p.call(
                    "fcntl(F_SETFD)",
                    libc::SYS_fcntl,
                    [got, libc::F_SETFD as u64, fl, 0, 0, 0],
                )?;
            } else {
                self.p
                    .call("dup3", libc::SYS_dup3, [got, target, cloexec, 0, 0, 0])?;
                self.close_remote(got)?;
            }
        }
        Ok(())
    }

    /// cwd, umask, name, session and group, personality.
    fn set_attributes(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        let mut cwd = task.cwd.clone().into_bytes();
        cwd.push(0);
        self.p.write(self.scratch + S_ARG, &cwd)?;
        self.p.call(
            "chdir",
            libc::SYS_chdir,
            [self.scratch + S_ARG, 0, 0, 0, 0, 0],
        )?;
        self.p.call(
            "umask",
            libc::SYS_umask,
            [u64::from(task.umask), 0, 0, 0, 0, 0],
        )?;
        let mut comm = task.comm.clone().into_bytes();
        comm.truncate(15);
        comm.push(0);
        self.p.write(self.scratch + S_ARG, &comm)?;
        self.p.call(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            [libc::PR_SET_NAME as u64, self.scratch + S_ARG, 0, 0, 0, 0],
        )?;
        let pid = self.pid;
        if task.sid == pid {
            self.p.call("setsid", libc::SYS_setsid, [0; 6])?;
        } else if task.pgid == pid {
            self.p
                .call("setpgid", libc::SYS_setpgid, [0, 0, 0, 0, 0, 0])?;
        } else {
            let st = procfs::stat(pid)?;
            if st.pgrp != task.pgid {
                let r = self.p.syscall_raw(
                    "setpgid",
                    libc::SYS_setpgid,
                    [0, task.pgid as u64, 0, 0, 0, 0],
                )?;
                if r < 0 {
                    warn!(
                        pid,
                        "cannot join process group {} (it does not exist here); staying in {}",
                        task.pgid,
                        st.pgrp
                    );
                }
            }
            if st.session != task.sid {
                warn!(
                    pid,
                    "session {} is not recreated; the task joins session {}", task.sid, st.session
                );
            }
        }
        if procfs::personality(pid)? != task.personality {
            self.p.call(
                "personality",
                libc::SYS_personality,
                [u64::from(task.personality), 0, 0, 0, 0, 0],
            )?;
        }
        Ok(())
    }

    /// Signal actions, mask, timers and pending signals.
    fn set_signals(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        task_state::write_sigactions(&mut self.p, self.scratch + S_ARG, &task.sigactions)?;
        let main = &task.threads[0];
        ptrace::set_sigmask(self.pid, main.sigmask)?;
        task_state::write_itimers(&mut self.p, self.scratch + S_ARG, &task.itimers)?;
        let pid = self.pid as u64;
        for (shared, info) in task
            .shared_pending
            .iter()
            .map(|i| (true, i))
            .chain(main.pending.iter().map(|i| (false, i)))
        {
            if info.raw.len() != ptrace::SIGINFO_LEN {
                continue;
            }
            let signo = u64::from(u32::from_le_bytes([
                info.raw[0],
                info.raw[1],
                info.raw[2],
                info.raw[3],
            ]));
            self.p.write(self.scratch + S_ARG, &info.raw)?;
            if shared {
                self.p.call(
                    "rt_sigqueueinfo",
                    libc::SYS_rt_sigqueueinfo,
                    [pid, signo, self.scratch + S_ARG, 0, 0, 0],
                )?;
            } else {
                self.p.call(
                    "rt_tgsigqueueinfo",
                    libc::SYS_rt_tgsigqueueinfo,
                    [pid, pid, signo, self.scratch + S_ARG, 0, 0],
                )?;
            }
        }
        Ok(())
    }

    fn register_rseq(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        if let Some(r) = &task.threads[0].rseq {
            self.p.call(
                "rseq",
                libc::SYS_rseq,
                [r.ptr, u64::from(r.size), 0, u64::from(r.signature), 0, 0],
            )?;
        }
        Ok(())
    }

    /// Groups, gids, uids — last, as they may drop crt's privileges in the task.
    fn set_creds(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        let Some(c) = &task.creds else { return Ok(()) };
        let st = procfs::status(self.pid)?;
        if st.groups != c.groups {
            let g: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
            self.p.write(self.scratch + S_ARG, &g)?;
            self.p.call(
                "setgroups",
                libc::SYS_setgroups,
                [c.groups.len() as u64, self.scratch + S_ARG, 0, 0, 0, 0],
            )?;
        }
        if st.gids != c.gids && c.gids.len() == 4 {
            self.p.call(
                "setresgid",
                libc::SYS_setresgid,
                [
                    u64::from(c.gids[0]),
                    u64::from(c.gids[1]),
                    u64::from(c.gids[2]),
                    0,
                    0,
                    0,
                ],
            )?;
        }
        if st.uids != c.uids && c.uids.len() == 4 {
            self.p.call(
                "setresuid",
                libc::SYS_setresuid,
                [
                    u64::from(c.uids[0]),
                    u64::from(c.uids[1]),
                    u64::from(c.uids[2]),
                    0,
                    0,
                    0,
                ],
            )?;
        }
        Ok(())
    }

    /// Drops scratch and transport, then loads the dumped registers.
    fn finish(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        let t = self.remote_pidfd;
        self.close_remote(t)?;
        self.p.call(
            "munmap(scratch)",
            libc::SYS_munmap,
            [self.scratch, SCRATCH_LEN, 0, 0, 0, 0],
        )?;
        let main = &task.threads[0];
        let Some(mut regs) = ptrace::regs_from_bytes(&main.regs) else {
            unreachable!("check_task verified the size")
        };
        task_state::restart_fixup(&mut regs);
        ptrace::set_xsave(self.pid, &main.xsave)?;
        ptrace::set_regs(self.pid, &regs)?;
        Ok(())
    }
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
