//! Built-in handler for signalfds: the signal mask and flags.

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::anon::{fd_or_err, fdinfo, hex};
use super::{boxed, Builtin, BUILTIN_VERSION};
use crate::images::pb;

/// `anon_inode:[signalfd]`.
pub struct SignalFd;

inventory::submit! { Builtin { priority: 131, make: || boxed(SignalFd) } }

impl Handler for SignalFd {
    fn name(&self) -> RString {
        "signalfd".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: signalfds (mask)".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.link.as_str() == "anon_inode:[signalfd]"
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        let r =
            fdinfo(fd.pid, fd.fd).and_then(|info| Ok(pb::SignalFd { mask: hex(&info, "sigmask")?, flags: fd.flags }));
        r.map(|m| RVec::from(m.encode_to_vec())).map_err(RString::from).into()
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r =
            pb::SignalFd::decode(blob.as_slice()).map_err(|e| format!("corrupt signalfd record: {e}")).and_then(|m| {
                let mut flags = libc::SFD_CLOEXEC;
                if m.flags as i32 & libc::O_NONBLOCK != 0 {
                    flags |= libc::SFD_NONBLOCK;
                }
                // SAFETY: the kernel reads an 8-byte mask from `m.mask`.
                let fd = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &m.mask as *const u64, 8usize, flags) };
                fd_or_err(fd as i32, "signalfd")
            });
        r.map_err(RString::from).into()
    }
}
