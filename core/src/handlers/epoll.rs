//! Built-in handler for epoll instances: flags and the interest list.
//!
//! An interest-list entry is an open file description and the fd number
//! it was added with; the number may since have been closed, or reused for
//! another file. At dump crt finds, for each entry, an fd of the task that
//! still holds that description (`kcmp(KCMP_EPOLL_TFD)`). The list is
//! rebuilt inside the task once all its fds are back (`restore_resume`):
//! `epoll_ctl(ADD)` with the entry's number, which for a moved entry is
//! pointed at the holder's description for the call and then given back
//! (or closed), so epoll keeps the right file under the right key.

use std::collections::HashMap;
use std::sync::Mutex;

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, SyscallArgs, TaskRef};
use prost::Message;

use super::anon::{fd_or_err, fdinfo};
use super::{boxed, Builtin, BUILTIN_VERSION};
use crate::images::pb;

/// An epoll fd number in a task and the fds it must watch again.
type Interest = (i32, Vec<pb::EpollTarget>);

/// `anon_inode:[eventpoll]`.
#[derive(Default)]
pub struct Epoll {
    /// Per task: epoll fds and their watched fds, to add at resume.
    pending: Mutex<HashMap<i32, Vec<Interest>>>,
}

inventory::submit! { Builtin { priority: 133, make: || boxed(Epoll::default()) } }

/// The `tfd:` lines of an epoll fdinfo.
fn targets(info: &str) -> Result<Vec<pb::EpollTarget>, String> {
    info.lines()
        .filter(|l| l.starts_with("tfd:"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let at = |k: &str| f.iter().position(|x| *x == k).and_then(|i| f.get(i + 1)).copied();
            let fd = at("tfd:").and_then(|v| v.parse().ok());
            let events = at("events:").and_then(|v| u32::from_str_radix(v, 16).ok());
            let data = at("data:").and_then(|v| u64::from_str_radix(v, 16).ok());
            match (fd, events, data) {
                (Some(fd), Some(events), Some(data)) => Ok(pb::EpollTarget { fd, events, data, holder: None }),
                _ => Err(format!("cannot parse epoll fdinfo line {l:?}")),
            }
        })
        .collect()
}

const KCMP_EPOLL_TFD: i32 = 7;

/// Is fd `cand` of `pid` the file of entry (`tfd`, `toff`) of epoll `epfd`?
fn is_target(pid: i32, epfd: i32, tfd: i32, toff: u32, cand: i32) -> bool {
    let slot = [epfd as u32, tfd as u32, toff]; // struct kcmp_epoll_slot
                                                // SAFETY: kcmp reads the 12-byte slot; other arguments are integers.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_EPOLL_TFD, cand, slot.as_ptr()) };
    r == 0
}

/// Finds, for each entry, an fd of the task holding its file now.
fn find_holders(pid: i32, epfd: i32, targets: &mut [pb::EpollTarget]) -> Result<(), String> {
    let fds = crate::procfs::fds(pid).map_err(|e| e.to_string())?;
    for i in 0..targets.len() {
        let tfd = targets[i].fd;
        let toff = targets[..i].iter().filter(|t| t.fd == tfd).count() as u32;
        if is_target(pid, epfd, tfd, toff, tfd) {
            continue;
        }
        let holder = fds.iter().copied().find(|&c| is_target(pid, epfd, tfd, toff, c)).ok_or_else(|| {
            format!(
                "epoll fd {epfd} watches a file added as fd {tfd} that no fd of the process holds any more; crt cannot restore that entry"
            )
        })?;
        targets[i].holder = Some(holder);
    }
    Ok(())
}

/// Runs a syscall in the task; a negative result is an error naming `what`.
fn call(task: &mut TaskRef<'_>, what: &str, nr: i64, args: [u64; 6]) -> Result<i64, String> {
    match task.syscall(nr, SyscallArgs::from(args)) {
        RResult::ROk(r) if r < 0 => Err(format!("{what}: {}", std::io::Error::from_raw_os_error(-r as i32))),
        RResult::ROk(r) => Ok(r),
        RResult::RErr(e) => Err(e.into_string()),
    }
}

/// Adds entry `t` to `epfd` inside the task (`ev` is task memory).
fn add(task: &mut TaskRef<'_>, epfd: i32, t: &pb::EpollTarget, ev: u64) -> Result<(), String> {
    // struct epoll_event is packed on x86_64: u32 events, u64 data.
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&t.events.to_le_bytes());
    b[4..].copy_from_slice(&t.data.to_le_bytes());
    task.write_mem(ev, b.as_slice().into()).into_result().map_err(RString::into_string)?;
    let (tfd, ctl) = (t.fd as u64, libc::EPOLL_CTL_ADD as u64);
    let what = format!("epoll fd {epfd}: watching fd {} again", t.fd);
    let Some(holder) = t.holder else {
        return call(task, &what, libc::SYS_epoll_ctl, [epfd as u64, ctl, tfd, ev, 0, 0]).map(drop);
    };
    // The number now names another file, or none: lend it the holder's for the call.
    let fl = task.syscall(libc::SYS_fcntl, SyscallArgs::from([tfd, libc::F_GETFD as u64, 0, 0, 0, 0])).into_result();
    let saved = match fl {
        Ok(fl) if fl >= 0 => Some((
            call(task, "fcntl(F_DUPFD_CLOEXEC)", libc::SYS_fcntl, [tfd, libc::F_DUPFD_CLOEXEC as u64, 0, 0, 0, 0])?,
            fl,
        )),
        _ => None,
    };
    call(task, "dup3", libc::SYS_dup3, [holder as u64, tfd, 0, 0, 0, 0])?;
    call(task, &what, libc::SYS_epoll_ctl, [epfd as u64, ctl, tfd, ev, 0, 0])?;
    match saved {
        Some((copy, fl)) => {
            let cloexec = if fl & libc::FD_CLOEXEC as i64 != 0 { libc::O_CLOEXEC as u64 } else { 0 };
            call(task, "dup3", libc::SYS_dup3, [copy as u64, tfd, cloexec, 0, 0, 0])?;
            call(task, "close", libc::SYS_close, [copy as u64, 0, 0, 0, 0, 0]).map(drop)
        }
        None => call(task, "close", libc::SYS_close, [tfd, 0, 0, 0, 0, 0]).map(drop),
    }
}

impl Handler for Epoll {
    fn name(&self) -> RString {
        "epoll".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: epoll instances (interest list rebuilt inside the task)".into()
    }

    fn hooks(&self) -> RString {
        "restore_resume, restore_finish".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.link.as_str() == "anon_inode:[eventpoll]"
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        let r = fdinfo(fd.pid, fd.fd).and_then(|info| {
            let mut targets = targets(&info)?;
            find_holders(fd.pid, fd.fd, &mut targets)?;
            Ok(pb::Epoll { flags: fd.flags, targets })
        });
        r.map(|m| RVec::from(m.encode_to_vec())).map_err(RString::from).into()
    }

    fn restore_fd(&self, task: TaskRef<'_>, fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r = pb::Epoll::decode(blob.as_slice()).map_err(|e| format!("corrupt epoll record: {e}")).and_then(|m| {
            // SAFETY: epoll_create1 takes flags only.
            let ep = fd_or_err(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }, "epoll_create1")?;
            if let Ok(mut p) = self.pending.lock() {
                p.entry(task.pid()).or_default().push((fd, m.targets));
            }
            Ok(ep)
        });
        r.map_err(RString::from).into()
    }

    fn restore_resume(&self, mut task: TaskRef<'_>) -> RResult<(), RString> {
        let Some(list) = self.pending.lock().ok().and_then(|mut p| p.remove(&task.pid())) else {
            return RResult::ROk(());
        };
        let scratch = match task.scratch().into_result() {
            Ok(s) => s.0,
            Err(e) => return RResult::RErr(e),
        };
        for (epfd, targets) in list {
            for t in &targets {
                if let Err(e) = add(&mut task, epfd, t, scratch) {
                    return RResult::RErr(e.into());
                }
            }
        }
        RResult::ROk(())
    }

    fn restore_finish(&self, _ok: bool) {
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_interest_list() {
        let info =
            "pos:\t0\nflags:\t02\ntfd:        4 events:       19 data:               4d  pos:0 ino:40f sdev:10\n\
                    tfd:        3 events: 80000019 data:             1234  pos:0 ino:40f sdev:10\n";
        let t = super::targets(info).expect("parse");
        assert_eq!((t[0].fd, t[0].events, t[0].data), (4, 0x19, 0x4d));
        assert_eq!((t[1].fd, t[1].events, t[1].data), (3, 0x8000_0019, 0x1234));
    }
}
