//! Built-in handler for eventfds: the counter and the semaphore mode.

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::anon::{dec, fd_or_err, fdinfo, hex};
use super::{boxed, Builtin, BUILTIN_VERSION};
use crate::images::pb;

/// `anon_inode:[eventfd]`.
pub struct EventFd;

inventory::submit! { Builtin { priority: 130, make: || boxed(EventFd) } }

impl Handler for EventFd {
    fn name(&self) -> RString {
        "eventfd".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: eventfds (counter, semaphore mode)".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.link.as_str() == "anon_inode:[eventfd]"
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        let r = fdinfo(fd.pid, fd.fd).and_then(|info| {
            Ok(pb::EventFd {
                count: hex(&info, "eventfd-count")?,
                flags: fd.flags,
                semaphore: dec(&info, "eventfd-semaphore").unwrap_or(0) == 1,
            })
        });
        r.map(|m| RVec::from(m.encode_to_vec())).map_err(RString::from).into()
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r =
            pb::EventFd::decode(blob.as_slice()).map_err(|e| format!("corrupt eventfd record: {e}")).and_then(|m| {
                let mut flags = libc::EFD_CLOEXEC;
                if m.flags as i32 & libc::O_NONBLOCK != 0 {
                    flags |= libc::EFD_NONBLOCK;
                }
                if m.semaphore {
                    flags |= libc::EFD_SEMAPHORE;
                }
                // SAFETY: eventfd takes integers only.
                let fd = fd_or_err(unsafe { libc::eventfd(0, flags) }, "eventfd")?;
                if m.count > 0 {
                    let bytes = m.count.to_ne_bytes();
                    // SAFETY: writes 8 bytes from `bytes` to the eventfd we own.
                    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), 8) };
                    if n != 8 {
                        let e = std::io::Error::last_os_error();
                        // SAFETY: closing the fd we own.
                        unsafe { libc::close(fd) };
                        return Err(format!("setting the eventfd counter to {}: {e}", m.count));
                    }
                }
                Ok(fd)
            });
        r.map_err(RString::from).into()
    }
}
