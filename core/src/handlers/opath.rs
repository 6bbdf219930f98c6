//! Built-in handler for `O_PATH` descriptors of every file type (regular
//! files, directories, symlinks opened with `O_NOFOLLOW`, devices, FIFOs,
//! socket files): an `O_PATH` fd only names a file, so reopening the same
//! inode by path is a faithful restore.

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::{boxed, ghost, is_deleted, reopen_same, Builtin, BUILTIN_VERSION};
use crate::images::pb;

/// `open(path, O_PATH)` descriptors.
pub struct OPath;

inventory::submit! { Builtin { priority: 80, make: || boxed(OPath) } }

impl Handler for OPath {
    fn name(&self) -> RString {
        "opath".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: O_PATH descriptors of any file type (symlinks with O_NOFOLLOW, devices, FIFOs, sockets)".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.flags & libc::O_PATH as u32 != 0 && fd.link.starts_with('/')
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        if is_deleted(&fd.link) && fd.file_type() != libc::S_IFREG {
            let what = format!(
                "O_PATH fd on {}, which was deleted and is not a regular file; crt cannot name it again",
                fd.link
            );
            return RResult::RErr(what.into());
        }
        // The regular file record: path, flags, inode, and the ghost of a deleted file.
        super::regfile::dump_blob(fd).map(RVec::from).map_err(RString::from).into()
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r =
            pb::RegFile::decode(blob.as_slice()).map_err(|e| format!("corrupt opath record: {e}")).and_then(|img| {
                match &img.deleted {
                    Some(g) => ghost::restore(g).and_then(|anchor| ghost::reopen(&anchor, libc::O_PATH)),
                    None => reopen_same(&img, libc::O_PATH),
                }
            });
        r.map_err(RString::from).into()
    }
}
