//! Built-in handler for pseudo-terminal slaves (`/dev/pts/N`): a process
//! started in a terminal keeps writing to it after restore, provided that
//! terminal is still open. The pts is reopened by path (`O_NOCTTY`: crt
//! does not change controlling terminals); its device number must match.

use std::os::unix::fs::MetadataExt;

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::{boxed, open_raw, Builtin, BUILTIN_VERSION, REOPEN_STRIP};
use crate::images::pb;

/// First major number of Unix98 pty slaves (136–143).
const PTS_MAJOR: u32 = 136;

/// `/dev/pts/N`.
pub struct Tty;

inventory::submit! { Builtin { priority: 111, make: || boxed(Tty) } }

impl Handler for Tty {
    fn name(&self) -> RString {
        "tty".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: pseudo-terminal slaves /dev/pts/N (reopened; the terminal must still exist)".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.file_type() == libc::S_IFCHR
            && (PTS_MAJOR..PTS_MAJOR + 8).contains(&libc::major(fd.rdev))
            && fd.link.starts_with("/dev/pts/")
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        RResult::ROk(super::chardev::device_blob(fd))
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r = pb::RegFile::decode(blob.as_slice()).map_err(|e| format!("corrupt tty record: {e}")).and_then(|img| {
            let meta = std::fs::metadata(&img.path)
                .map_err(|e| format!("terminal {}: {e}; the terminal the process used is gone", img.path))?;
            if meta.rdev() != img.dev {
                return Err(format!("{} is now another device", img.path));
            }
            open_raw(&img.path, (img.flags as i32 & !REOPEN_STRIP) | libc::O_NOCTTY)
        });
        r.map_err(RString::from).into()
    }
}
