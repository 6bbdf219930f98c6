//! Built-in handler for pidfds (`pidfd_open`, `clone(CLONE_PIDFD)`): a
//! pidfd of a live process (in the forest, restored with its pid, or
//! outside it, checked to be the same process by its start time), of a
//! thread (`PIDFD_THREAD`), or of a process that has exited and was reaped
//! (the kernel then shows pid -1: crt makes such a pidfd of a child of its
//! own that exits at once, one child per dumped pidfs inode, so pidfds of
//! one dead process keep one inode; the children are reaped once every fd
//! exists, at the first `restore_resume`).
//!
//! A pidfd of a process of the forest created later than the holder is
//! made at `restore_resume`, once every process exists: until then the fd
//! number holds a pidfd of crt.

use std::collections::HashMap;
use std::sync::Mutex;

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, SyscallArgs, TaskRef};
use prost::Message;

use super::anon::{fd_or_err, fdinfo};
use super::{boxed, Builtin, BUILTIN_VERSION};
use crate::images::pb;

/// `PIDFD_THREAD` (= `O_EXCL`): a pidfd of one thread.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// `anon_inode:[pidfd]`.
#[derive(Default)]
pub struct PidFd {
    /// Per task: fd numbers whose pidfd is made at resume.
    pending: Mutex<HashMap<i32, Vec<(i32, pb::PidFd)>>>,
    /// The pids of the forest being restored (those are restored, not
    /// checked: a restored process has a new start time).
    forest: Mutex<Vec<i32>>,
    /// Exited children of crt standing for dead processes, by dumped
    /// pidfs inode; reaped at resume.
    dead: Mutex<HashMap<u64, i32>>,
}

inventory::submit! { Builtin { priority: 135, make: || boxed(PidFd::default()) } }

fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")?.1.split_whitespace().nth(19)?.parse().ok()
}

fn pidfd_open(pid: i32, flags: u32) -> Result<i32, String> {
    let f = flags & (libc::O_NONBLOCK as u32 | PIDFD_THREAD);
    // SAFETY: pidfd_open takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, f) };
    fd_or_err(r as i32, &format!("pidfd_open({pid})"))
}

impl PidFd {
    /// A pidfd of an exited process standing for dumped inode `ino` (the
    /// same one for every pidfd of that inode); reaped in [`PidFd::reap`].
    fn dead_pidfd(&self, ino: u64, flags: u32) -> Result<i32, String> {
        let mut dead = self.dead.lock().map_err(|_| "pidfd state poisoned".to_string())?;
        let child = match dead.get(&ino) {
            Some(&c) => c,
            None => {
                // SAFETY: the child only calls _exit; crt reaps it later.
                let child = unsafe { libc::fork() };
                if child == 0 {
                    // SAFETY: leaving the child at once.
                    unsafe { libc::_exit(0) };
                }
                if child < 0 {
                    return Err(format!("fork: {}", std::io::Error::last_os_error()));
                }
                dead.insert(ino, child);
                child
            }
        };
        pidfd_open(child, flags & libc::O_NONBLOCK as u32)
    }

    /// Reaps the stand-ins: their pidfds now show pid -1.
    fn reap(&self) {
        let Ok(mut dead) = self.dead.lock() else { return };
        for (_, child) in dead.drain() {
            let mut st = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(child, &mut st, 0) };
        }
    }
}

impl PidFd {
    /// Whether the pidfd's process (or thread) is one crt restores: a
    /// process of the forest, or a thread (only the forest's threads can
    /// be missing until resume).
    fn restored(&self, m: &pb::PidFd) -> bool {
        m.flags & PIDFD_THREAD != 0 || self.forest.lock().map(|f| f.contains(&m.pid)).unwrap_or(false)
    }
}

fn check_same(m: &pb::PidFd, in_forest: bool) -> Result<(), String> {
    match start_time(m.pid) {
        Some(_) if in_forest => Ok(()),
        Some(t) if m.start_time == 0 || t == m.start_time => Ok(()),
        Some(_) => Err(format!("pidfd of pid {}: that pid is another process now", m.pid)),
        None => Err(format!("pidfd of pid {}: no such process", m.pid)),
    }
}

impl Handler for PidFd {
    fn name(&self) -> RString {
        "pidfd".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: pidfds of processes and threads, live or exited".into()
    }

    fn hooks(&self) -> RString {
        "restore_init, restore_resume, restore_finish".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.link.as_str() == "anon_inode:[pidfd]"
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        let r = fdinfo(fd.pid, fd.fd).and_then(|info| {
            let pid = info
                .lines()
                .find_map(|l| l.strip_prefix("Pid:"))
                .and_then(|v| v.trim().parse::<i32>().ok())
                .ok_or("no Pid in the pidfd's fdinfo")?;
            let start_time = if pid > 0 { start_time(pid).unwrap_or(0) } else { 0 };
            Ok(pb::PidFd { pid, flags: fd.flags, start_time, ino: fd.ino })
        });
        r.map(|m| RVec::from(m.encode_to_vec())).map_err(RString::from).into()
    }

    fn restore_fd(&self, task: TaskRef<'_>, fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r = pb::PidFd::decode(blob.as_slice()).map_err(|e| format!("corrupt pidfd record: {e}")).and_then(|m| {
            if m.pid <= 0 {
                return self.dead_pidfd(m.ino, m.flags);
            }
            if start_time(m.pid).is_some() {
                check_same(&m, self.restored(&m))?;
                return pidfd_open(m.pid, m.flags);
            }
            // Not created yet: a stand-in (same flags) until resume.
            if let Ok(mut p) = self.pending.lock() {
                p.entry(task.pid()).or_default().push((fd, m));
            }
            pidfd_open(std::process::id() as i32, m.flags & libc::O_NONBLOCK as u32)
        });
        r.map_err(RString::from).into()
    }

    fn restore_resume(&self, mut task: TaskRef<'_>) -> RResult<(), RString> {
        self.reap(); // every fd exists by now
        let Some(list) = self.pending.lock().ok().and_then(|mut p| p.remove(&task.pid())) else {
            return RResult::ROk(());
        };
        for (fd, m) in list {
            let r = check_same(&m, self.restored(&m)).and_then(|()| pidfd_open(m.pid, m.flags)).and_then(|real| {
                let put = task.install_fd(real, fd).into_result().map_err(RString::into_string);
                // SAFETY: closing crt's copy; the task has its own now.
                unsafe { libc::close(real) };
                put?;
                if m.flags & libc::O_CLOEXEC as u32 != 0 {
                    let args = SyscallArgs::from([fd as u64, libc::F_SETFD as u64, libc::FD_CLOEXEC as u64, 0, 0, 0]);
                    task.syscall(libc::SYS_fcntl, args).into_result().map_err(RString::into_string)?;
                }
                Ok(())
            });
            if let Err(e) = r {
                return RResult::RErr(e.into());
            }
        }
        RResult::ROk(())
    }

    fn restore_init(&self, pids: RSlice<'_, i32>) -> RResult<(), RString> {
        if let Ok(mut f) = self.forest.lock() {
            *f = pids.to_vec();
        }
        RResult::ROk(())
    }

    fn restore_finish(&self, _ok: bool) {
        self.reap();
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
        if let Ok(mut f) = self.forest.lock() {
            f.clear();
        }
    }
}
