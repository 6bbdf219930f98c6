//! Built-in handler for directories opened for reading (`open(O_DIRECTORY)`,
//! `opendir`): reopened by path, checked to be the same directory, at the
//! dumped `getdents` position.

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::{boxed, is_deleted, reopen_same, Builtin, BUILTIN_VERSION};
use crate::images::pb;

/// Directories opened by path (not `O_PATH`: see [`super::opath`]).
pub struct Directory;

inventory::submit! { Builtin { priority: 95, make: || boxed(Directory) } }

impl Handler for Directory {
    fn name(&self) -> RString {
        "directory".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: directories opened for reading (open O_DIRECTORY, opendir), with their position".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.file_type() == libc::S_IFDIR && fd.link.starts_with('/')
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        if is_deleted(&fd.link) {
            return RResult::RErr(
                format!("directory {} was removed while open; crt cannot recreate it", fd.link).into(),
            );
        }
        let img = pb::RegFile {
            path: fd.link.to_string(),
            flags: fd.flags,
            pos: fd.pos,
            mode: fd.mode,
            dev: fd.dev,
            ino: fd.ino,
            ..Default::default()
        };
        RResult::ROk(img.encode_to_vec().into())
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        restore(blob.as_slice()).map_err(RString::from).into()
    }
}

fn restore(blob: &[u8]) -> Result<i32, String> {
    let img = pb::RegFile::decode(blob).map_err(|e| format!("corrupt directory record: {e}"))?;
    let fd = reopen_same(&img, libc::O_DIRECTORY)?;
    // SAFETY: lseek on the fd we just opened (directories seek to a getdents cookie).
    let off = unsafe { libc::lseek(fd, img.pos, libc::SEEK_SET) };
    if off != img.pos {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing our own fd on the error path.
        unsafe { libc::close(fd) };
        return Err(format!("{}: seek to directory position {}: {e}", img.path, img.pos));
    }
    Ok(fd)
}
