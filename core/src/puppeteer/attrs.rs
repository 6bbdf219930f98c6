//! Process attributes (phase A: cwd, umask, name, personality) and
//! phase B: signals, per-thread state, credentials, registers.

use tracing::warn;

use super::{Builder, RestoreCtx, SCRATCH_LEN, S_ARG};
use crate::images::pb;
use crate::procfs;
use crate::ptrace;
use crate::puppet::Puppet;
use crate::restore::RestoreError;
use crate::task_state;

/// crt's own signal actions: what every task it creates starts with.
pub fn own_sigactions() -> Vec<pb::SigAction> {
    (1..=task_state::NSIG)
        .map(|signo| {
            let mut b = [0u64; 4];
            // SAFETY: a null new action and a 32-byte out buffer, as the
            // kernel's rt_sigaction expects with sigsetsize 8.
            let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, signo, 0usize, b.as_mut_ptr(), 8usize) };
            if r != 0 {
                b = [0; 4];
            }
            pb::SigAction { signo, handler: b[0], flags: b[1], restorer: b[2], mask: b[3] }
        })
        .collect()
}

impl Builder {
    /// cwd, umask, name, personality, OOM score, login uid, membarrier.
    pub(super) fn set_attributes(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        if let Some(v) = task.oom_score_adj {
            task_state::write_oom_score_adj(self.pid, v)
                .map_err(|e| RestoreError::step(self.pid, format!("setting oom_score_adj {v}"), e))?;
        }
        if let Some(uid) = task.loginuid.filter(|&u| task_state::loginuid(self.pid).ok() != Some(u)) {
            task_state::write_loginuid(&mut self.p, self.scratch + S_ARG, uid)
                .map_err(|e| RestoreError::step(self.pid, format!("setting its login uid {uid}"), e))?;
        }
        task_state::register_membarrier(&mut self.p, task.membarrier)?;
        if task.mlockall != 0 {
            // Mappings made from now on are locked (as after mlockall(MCL_FUTURE)).
            self.p.call("mlockall", libc::SYS_mlockall, [task.mlockall as u64, 0, 0, 0, 0, 0])?;
        }
        if !self.shares_fs {
            let mut cwd = task.cwd.clone().into_bytes();
            cwd.push(0);
            self.p.write(self.scratch + S_ARG, &cwd)?;
            self.p.call("chdir", libc::SYS_chdir, [self.scratch + S_ARG, 0, 0, 0, 0, 0])?;
            self.p.call("umask", libc::SYS_umask, [u64::from(task.umask), 0, 0, 0, 0, 0])?;
        }
        let mut comm = task.comm.clone().into_bytes();
        comm.truncate(15);
        comm.push(0);
        self.p.write(self.scratch + S_ARG, &comm)?;
        self.p.call(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            [libc::PR_SET_NAME as u64, self.scratch + S_ARG, 0, 0, 0, 0],
        )?;
        if procfs::personality(self.pid)? != task.personality {
            self.p.call("personality", libc::SYS_personality, [u64::from(task.personality), 0, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// Signal actions (where they differ from crt's), masks, timers and
    /// pending signals.
    pub(super) fn set_signals(&mut self, ctx: &RestoreCtx<'_>, task: &pb::Task) -> Result<(), RestoreError> {
        let changed: Vec<pb::SigAction> = task
            .sigactions
            .iter()
            .filter(|a| ctx.baseline.get((a.signo as usize).wrapping_sub(1)) != Some(*a))
            .cloned()
            .collect();
        task_state::write_sigactions(&mut self.p, self.scratch + S_ARG, &changed)?;
        task_state::write_itimers(&mut self.p, self.scratch + S_ARG, &task.itimers)?;
        crate::timers::write(&mut self.p, self.scratch + S_ARG, &task.posix_timers)?;
        let pid = self.pid as u64;
        let queue = task
            .shared_pending
            .iter()
            .map(|i| (None, i))
            .chain(task.threads.iter().flat_map(|t| t.pending.iter().map(move |i| (Some(t.tid), i))));
        for (tid, info) in queue {
            if info.raw.len() != ptrace::SIGINFO_LEN {
                continue;
            }
            let signo = u64::from(u32::from_le_bytes([info.raw[0], info.raw[1], info.raw[2], info.raw[3]]));
            self.p.write(self.scratch + S_ARG, &info.raw)?;
            match tid {
                None => self.p.call(
                    "rt_sigqueueinfo",
                    libc::SYS_rt_sigqueueinfo,
                    [pid, signo, self.scratch + S_ARG, 0, 0, 0],
                )?,
                Some(tid) => self.p.call(
                    "rt_tgsigqueueinfo",
                    libc::SYS_rt_tgsigqueueinfo,
                    [pid, tid as u64, signo, self.scratch + S_ARG, 0, 0],
                )?,
            };
        }
        Ok(())
    }

    /// Per thread, from inside it: clear-child-tid address, alternate
    /// signal stack, rseq registration.
    pub(super) fn set_thread_state(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        let scratch = self.scratch + S_ARG;
        task_state::write_prctls(&mut self.p, task)?;
        let threads = std::iter::once(&mut self.p).chain(self.threads.iter_mut());
        for (p, img) in threads.zip(&task.threads) {
            thread_state(p, img, scratch)?;
            task_state::write_thread_prctls(p, img)?;
        }
        Ok(())
    }

    /// Each thread's seccomp filters (suspended for crt until the release).
    pub(super) fn set_seccomp(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        let shared = crate::seccomp::shared_prefix(&task.threads).len();
        let threads = std::iter::once(&mut self.p).chain(self.threads.iter_mut());
        for (p, img) in threads.zip(&task.threads) {
            crate::seccomp::install(p, &img.seccomp[shared..])?;
        }
        Ok(())
    }

    /// chroot; no_new_privs, then each thread's credentials (`creds.rs`) —
    /// last, as they may drop the privileges crt needs — and what changing
    /// them resets (dumpable, parent-death signals).
    pub(super) fn set_creds(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        self.set_ids(task)?;
        let dumpable = task_state::write_after_creds(&mut self.p, &mut self.threads, task, self.is_root)?;
        if dumpable != task.dumpable {
            return Err(RestoreError::step(
                self.pid,
                "restoring its dumpable flag",
                std::io::Error::other(format!(
                    "dumped {}, now {dumpable}: only 0 and 1 can be set (2 follows fs.suid_dumpable)",
                    task.dumpable
                )),
            ));
        }
        Ok(())
    }

    fn set_ids(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        if !task.root.is_empty() && task.root != "/" {
            let mut root = task.root.clone().into_bytes();
            root.push(0);
            self.p.write(self.scratch + S_ARG, &root)?;
            self.p.call("chroot", libc::SYS_chroot, [self.scratch + S_ARG, 0, 0, 0, 0, 0])?;
        }
        let Some(c) = &task.creds else { return Ok(()) };
        if c.no_new_privs {
            let threads = std::iter::once(&mut self.p).chain(self.threads.iter_mut());
            for p in threads {
                p.call(
                    "prctl(PR_SET_NO_NEW_PRIVS)",
                    libc::SYS_prctl,
                    [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
                )?;
            }
        }
        let scratch = self.scratch + S_ARG;
        let threads = std::iter::once(&mut self.p).chain(self.threads.iter_mut());
        for (p, img) in threads.zip(&task.threads) {
            super::creds::set(p, img.creds.as_ref().unwrap_or(c), scratch)?;
        }
        Ok(())
    }

    /// Drops scratch and crt's pidfd, then loads every thread's registers.
    pub(super) fn finish(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        if !self.shares_files {
            let t = self.remote_pidfd;
            self.close_remote(t)?;
        }
        self.p.call("munmap(scratch)", libc::SYS_munmap, [self.scratch, SCRATCH_LEN, 0, 0, 0, 0])?;
        let tids = std::iter::once(self.pid).chain(self.threads.iter().map(Puppet::tid));
        for (tid, img) in tids.zip(&task.threads) {
            // The registers go back as dumped, `-ERESTART*` in `rax` included:
            // every thread sits in a signal-delivery stop (the SIGTRAP of its
            // last injected syscall), so after the detach the kernel itself
            // restarts the interrupted syscall, or turns it into EINTR when a
            // signal that arrived meanwhile runs a handler, as if never frozen.
            let Some(regs) = ptrace::regs_from_bytes(&img.regs) else { unreachable!("check_task verified the size") };
            ptrace::set_xsave(tid, &img.xsave)?;
            ptrace::set_regs(tid, &regs)?;
            // No injection follows: signals pending now are delivered at resume.
            ptrace::set_sigmask(tid, img.sigmask)?;
            // The task was built pinned to crt's CPU: give it back its own CPUs.
            if !img.cpu_affinity.is_empty() {
                crate::affinity::set(tid, &img.cpu_affinity)
                    .map_err(|e| RestoreError::step(tid, "setting its CPU affinity", e))?;
            } else if let Some(mask) = crate::affinity::original() {
                let _ = crate::affinity::set(tid, mask);
            }
            // Scheduling last of all: no more syscalls run in the thread.
            if let Some(s) = &img.sched {
                crate::sched::write(tid, s).map_err(|e| {
                    RestoreError::step(
                        tid,
                        format!(
                            "setting its scheduling policy {} (nice {}, priority {})",
                            s.policy, s.nice, s.priority
                        ),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }
}

fn thread_state(p: &mut Puppet, img: &pb::Thread, scratch: u64) -> Result<(), RestoreError> {
    p.call("set_tid_address", libc::SYS_set_tid_address, [img.clear_child_tid, 0, 0, 0, 0, 0])?;
    let alt = img.altstack.unwrap_or(pb::SigAltStack { sp: 0, flags: libc::SS_DISABLE, size: 0 });
    let mut b = Vec::with_capacity(24);
    let flags = if alt.flags & libc::SS_DISABLE != 0 { libc::SS_DISABLE } else { alt.flags & !libc::SS_ONSTACK };
    b.extend_from_slice(&alt.sp.to_le_bytes());
    b.extend_from_slice(&(flags as u64).to_le_bytes());
    b.extend_from_slice(&alt.size.to_le_bytes());
    p.write(scratch, &b)?;
    let r = p.syscall_raw("sigaltstack", libc::SYS_sigaltstack, [scratch, 0, 0, 0, 0, 0])?;
    if r < 0 {
        warn!(tid = p.tid(), "sigaltstack: {}", std::io::Error::from_raw_os_error(-r as i32));
    }
    if let Some(r) = &img.rseq {
        p.call("rseq", libc::SYS_rseq, [r.ptr, u64::from(r.size), 0, u64::from(r.signature), 0, 0])?;
    }
    if img.robust_list != 0 {
        p.call("set_robust_list", libc::SYS_set_robust_list, [img.robust_list, img.robust_list_len, 0, 0, 0, 0])?;
    }
    Ok(())
}
