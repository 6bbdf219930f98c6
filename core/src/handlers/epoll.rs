//! Built-in handler for epoll instances: flags and the interest list.
//!
//! The interest list names the task's own fd numbers, so it is rebuilt
//! inside the task, once all its fds are back: the `restore_resume` hook
//! runs `epoll_ctl(ADD)` there for every watched fd.

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
                (Some(fd), Some(events), Some(data)) => Ok(pb::EpollTarget { fd, events, data }),
                _ => Err(format!("cannot parse epoll fdinfo line {l:?}")),
            }
        })
        .collect()
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
        let r = fdinfo(fd.pid, fd.fd).and_then(|info| Ok(pb::Epoll { flags: fd.flags, targets: targets(&info)? }));
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
            for t in targets {
                // struct epoll_event is packed on x86_64: u32 events, u64 data.
                let mut ev = [0u8; 12];
                ev[..4].copy_from_slice(&t.events.to_le_bytes());
                ev[4..].copy_from_slice(&t.data.to_le_bytes());
                if let RResult::RErr(e) = task.write_mem(scratch, ev.as_slice().into()) {
                    return RResult::RErr(e);
                }
                let args = SyscallArgs::from([epfd as u64, libc::EPOLL_CTL_ADD as u64, t.fd as u64, scratch, 0, 0]);
                match task.syscall(libc::SYS_epoll_ctl, args) {
                    RResult::ROk(0) => {}
                    RResult::ROk(r) => {
                        return RResult::RErr(
                            format!(
                                "epoll fd {epfd}: watching fd {} again: {}",
                                t.fd,
                                std::io::Error::from_raw_os_error(-r as i32)
                            )
                            .into(),
                        )
                    }
                    RResult::RErr(e) => return RResult::RErr(e),
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
