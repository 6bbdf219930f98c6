//! The forest: discovering the process trees under each root and freezing
//! every thread of every task together.

use std::collections::BTreeMap;

use crate::procfs::{self, ProcError};
use crate::ptrace::{self, PtraceError, Stop, SIGINFO_LEN};

/// Errors discovering or freezing the forest.
#[derive(Debug, thiserror::Error)]
pub enum ForestError {
    /// A root pid does not exist.
    #[error("pid {0}: no such process")]
    NoSuchPid(i32),
    /// A root was given twice.
    #[error("pid {0} is given twice in --tree")]
    Duplicate(i32),
    /// A root lies inside another root's tree.
    #[error("pid {inner} is inside the tree of pid {outer}; give only the outer root (its tree includes pid {inner})")]
    Nested {
        /// The root inside.
        inner: i32,
        /// The root that contains it.
        outer: i32,
    },
    /// A pid is a thread, not a process.
    #[error("pid {tid} is a thread of process {tgid}; give the process id")]
    Thread {
        /// The thread id given.
        tid: i32,
        /// Its process.
        tgid: i32,
    },
    /// A task is already traced by someone else.
    #[error("pid {pid} is already traced by pid {tracer} (a debugger or another crt?)")]
    Traced {
        /// The task.
        pid: i32,
        /// The tracer.
        tracer: i32,
    },
    /// Reading /proc failed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A ptrace request failed.
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    /// A task did not reach a ptrace stop (stuck in the kernel).
    #[error("pid {pid} did not stop within {secs} s (state {state}: blocked in the kernel?); try again later")]
    WontStop {
        /// The task.
        pid: i32,
        /// Its state letter.
        state: char,
        /// How long crt waited.
        secs: u64,
    },
    /// A task vanished while being frozen.
    #[error("pid {pid} exited while crt was freezing it")]
    Vanished {
        /// The task.
        pid: i32,
    },
}

/// How long one thread may take to reach its ptrace stop.
const FREEZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One process of the forest.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Process id.
    pub pid: i32,
    /// Parent pid.
    pub ppid: i32,
    /// Process group.
    pub pgid: i32,
    /// Session.
    pub sid: i32,
    /// Command name.
    pub comm: String,
    /// Thread ids, the leader first.
    pub threads: Vec<i32>,
    /// Child processes.
    pub children: Vec<i32>,
    /// Exited but not reaped by its parent.
    pub zombie: bool,
    /// A zombie's wait status.
    pub exit_code: i32,
}

/// The discovered forest, in tree order (parents before children).
#[derive(Debug, Clone, Default)]
pub struct Forest {
    /// Root pids in the order given.
    pub roots: Vec<i32>,
    /// Every process, parents first.
    pub procs: Vec<Proc>,
}

impl Forest {
    /// Walks `/proc` from each root.
    pub fn discover(roots: &[i32]) -> Result<Self, ForestError> {
        let mut seen: BTreeMap<i32, i32> = BTreeMap::new(); // pid -> root
        let mut forest = Forest { roots: roots.to_vec(), procs: Vec::new() };
        for (i, &root) in roots.iter().enumerate() {
            if roots[..i].contains(&root) {
                return Err(ForestError::Duplicate(root));
            }
            let status = procfs::status(root).map_err(|_| ForestError::NoSuchPid(root))?;
            let _ = status;
            let tgid = tgid_of(root)?;
            if tgid != root {
                return Err(ForestError::Thread { tid: root, tgid });
            }
        }
        for &root in roots {
            if let Some(&outer) = seen.get(&root) {
                return Err(ForestError::Nested { inner: root, outer });
            }
            let mut stack = vec![root];
            while let Some(pid) = stack.pop() {
                let p = match read_proc(pid) {
                    Ok(p) => p,
                    // A child that exited and was reaped since its parent
                    // listed it: normal in a busy tree, it is just gone.
                    Err(ForestError::Vanished { .. }) if pid != root => continue,
                    Err(e) => return Err(e),
                };
                seen.insert(pid, root);
                stack.extend(p.children.iter().rev());
                forest.procs.push(p);
            }
        }
        // A root found inside an earlier root's walk.
        for &root in roots {
            if let Some(&outer) = seen.get(&root) {
                if outer != root {
                    return Err(ForestError::Nested { inner: root, outer });
                }
            }
        }
        Ok(forest)
    }

    /// Every thread id of every live (not zombie) process in the forest.
    pub fn tids(&self) -> impl Iterator<Item = i32> + '_ {
        self.procs.iter().filter(|p| !p.zombie).flat_map(|p| p.threads.iter().copied())
    }

    /// The process with pid `pid`.
    pub fn get(&self, pid: i32) -> Option<&Proc> {
        self.procs.iter().find(|p| p.pid == pid)
    }
}

fn tgid_of(pid: i32) -> Result<i32, ForestError> {
    let s = procfs::read(format!("/proc/{pid}/status")).map_err(|_| ForestError::NoSuchPid(pid))?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:").and_then(|v| v.trim().parse().ok()))
        .ok_or(ForestError::NoSuchPid(pid))
}

fn read_proc(pid: i32) -> Result<Proc, ForestError> {
    let stat = procfs::stat(pid).map_err(|_| ForestError::Vanished { pid })?;
    let mut threads = procfs::threads(pid).map_err(|_| ForestError::Vanished { pid })?;
    threads.sort_by_key(|&t| (t != pid, t));
    Ok(Proc {
        pid,
        ppid: stat.ppid,
        pgid: stat.pgrp,
        sid: stat.session,
        comm: stat.comm,
        threads,
        children: procfs::children(pid).map_err(|_| ForestError::Vanished { pid })?,
        zombie: stat.state == 'Z',
        exit_code: stat.exit_code,
    })
}

/// Whether `tid` has exited (gone, a zombie, or dying).
fn exited(tid: i32) -> bool {
    procfs::stat(tid).map_or(true, |s| matches!(s.state, 'Z' | 'X' | 'x'))
}

/// A frozen thread and how it stopped.
#[derive(Debug, Clone)]
pub struct FrozenThread {
    /// Thread id.
    pub tid: i32,
    /// Signal taken off its queue by the freeze (signal-delivery stop).
    pub stashed: Vec<[u8; SIGINFO_LEN]>,
    /// The signal that put it in a group stop (SIGSTOP, SIGTSTP, SIGTTIN,
    /// SIGTTOU) when frozen; 0 if it was not stopped.
    pub stop_signal: i32,
}

/// Every thread of the forest, held in ptrace-stop. Dropping it without
/// calling [`Frozen::release`] or [`Frozen::kill`] detaches everything.
#[derive(Debug, Default)]
pub struct Frozen {
    /// Frozen threads in freeze order.
    pub threads: Vec<FrozenThread>,
    done: bool,
}

impl Frozen {
    /// Seizes and interrupts every thread of every process in `forest`,
    /// looping until no new thread or child appears; refreshes `forest`.
    pub fn freeze(forest: &mut Forest) -> Result<Self, ForestError> {
        let mut frozen = Frozen::default();
        loop {
            let mut new = 0;
            for tid in forest.tids().collect::<Vec<_>>() {
                if frozen.threads.iter().any(|t| t.tid == tid) {
                    continue;
                }
                if frozen.freeze_thread(tid)? {
                    new += 1;
                }
            }
            let roots = forest.roots.clone();
            let mut fresh = Forest::discover(&roots)?;
            std::mem::swap(forest, &mut fresh);
            if new == 0 && forest.tids().all(|t| frozen.threads.iter().any(|f| f.tid == t)) {
                // A pid crt froze that left the forest (it exited, was
                // reaped and the pid was reused): not ours to hold.
                let live: Vec<i32> = forest.tids().collect();
                for t in frozen.threads.iter().filter(|t| !live.contains(&t.tid)) {
                    let _ = ptrace::detach(t.tid, 0);
                }
                frozen.threads.retain(|t| live.contains(&t.tid));
                return Ok(frozen);
            }
        }
    }

    /// Seizes and interrupts `tid`; false when it exited meanwhile (a
    /// thread or a child ending while crt freezes a busy tree is normal:
    /// the next discovery sees it gone, or as a zombie).
    fn freeze_thread(&mut self, tid: i32) -> Result<bool, ForestError> {
        let Ok(st) = procfs::status(tid) else { return Ok(false) };
        if st.tracer_pid != 0 {
            return Err(ForestError::Traced { pid: tid, tracer: st.tracer_pid });
        }
        // Filters must not apply to the syscalls crt runs in the task.
        let seized = ptrace::seize(tid, ptrace::PTRACE_O_SUSPEND_SECCOMP).or_else(|_| ptrace::seize(tid, 0));
        if let Err(e) = seized {
            return if exited(tid) { Ok(false) } else { Err(e.into()) };
        }
        self.threads.push(FrozenThread { tid, stashed: Vec::new(), stop_signal: 0 });
        let idx = self.threads.len() - 1;
        let stopped = ptrace::interrupt(tid).map_err(ForestError::from).and_then(|()| self.wait_stopped(idx));
        match stopped {
            Ok(()) => Ok(true),
            Err(_) if exited(tid) => {
                self.threads.remove(idx);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn wait_stopped(&mut self, idx: usize) -> Result<(), ForestError> {
        let tid = self.threads[idx].tid;
        loop {
            let Some(stop) = ptrace::wait_timeout(tid, FREEZE_TIMEOUT)? else {
                let state = procfs::stat(tid).map(|s| s.state).unwrap_or('?');
                return Err(ForestError::WontStop { pid: tid, state, secs: FREEZE_TIMEOUT.as_secs() });
            };
            match stop {
                Stop::Stopped { sig, event } if event == libc::PTRACE_EVENT_STOP => {
                    // INTERRUPT reports SIGTRAP for a running task and the
                    // stop signal for one already in a group stop.
                    self.threads[idx].stop_signal = if sig == libc::SIGTRAP { 0 } else { sig };
                    return Ok(());
                }
                Stop::Stopped { sig, .. } => {
                    // A signal-delivery stop came first: keep the signal to
                    // put back later, and wait for the interrupt's stop.
                    let info = ptrace::get_siginfo(tid)?;
                    let _ = sig;
                    self.threads[idx].stashed.push(info);
                    ptrace::cont(tid, 0)?;
                }
                Stop::Exited(_) | Stop::Signaled(_) => return Err(ForestError::Vanished { pid: tid }),
            }
        }
    }

    /// Detaches every thread (they continue as before). Signals stashed
    /// during the freeze must have been re-queued by the caller.
    pub fn release(mut self) {
        self.detach_all();
    }

    fn detach_all(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        for t in self.threads.iter().rev() {
            if let Err(e) = ptrace::detach(t.tid, 0) {
                tracing::warn!(tid = t.tid, "detach failed: {e}");
            }
        }
    }

    /// The frozen thread `tid`.
    pub fn thread(&self, tid: i32) -> Option<&FrozenThread> {
        self.threads.iter().find(|t| t.tid == tid)
    }

    /// Kills every frozen process (after a successful dump).
    pub fn kill(mut self, pids: &[i32]) {
        self.done = true;
        for &pid in pids {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.detach_all();
    }
}
