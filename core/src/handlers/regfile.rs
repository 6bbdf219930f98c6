//! Built-in handler for regular files opened by path.
//!
//! The size at dump time is recorded; at restore a file of another size is
//! refused (the task would read or overwrite the wrong bytes), except a file
//! opened with `O_APPEND` that has only grown, such as a log.

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::{boxed, is_deleted, open_raw, Builtin, BUILTIN_VERSION, REOPEN_STRIP};
use crate::images::pb;

/// Regular files: path, open flags, offset; the size is checked at restore.
pub struct RegFile;

inventory::submit! { Builtin { priority: 100, make: || boxed(RegFile) } }

impl Handler for RegFile {
    fn name(&self) -> RString {
        "regfile".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: regular files opened by path (not deleted ones)".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.file_type() == libc::S_IFREG && fd.link.starts_with('/')
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        dump_blob(fd).map(RVec::from).map_err(RString::from).into()
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        restore(blob.as_slice()).map_err(RString::from).into()
    }
}

/// The record of the regular file `fd` (also used by the unix handler for files in flight).
pub(crate) fn dump_blob(fd: &FdDesc) -> Result<Vec<u8>, String> {
    if is_deleted(&fd.link) {
        return Err(format!("{} was deleted while open; crt cannot restore deleted files", fd.link));
    }
    let img = pb::RegFile {
        path: fd.link.to_string(),
        flags: fd.flags,
        pos: fd.pos,
        mode: fd.mode,
        size: fd.size,
        dev: fd.dev,
        ino: fd.ino,
        mtime_ns: fd.mtime_ns,
    };
    Ok(img.encode_to_vec())
}

/// Reopens the file of a [`dump_blob`] record at its flags and offset; the caller owns the fd.
pub(crate) fn restore(blob: &[u8]) -> Result<i32, String> {
    let img = pb::RegFile::decode(blob).map_err(|e| format!("corrupt regfile record: {e}"))?;
    let fd = open_raw(&img.path, img.flags as i32 & !REOPEN_STRIP)?;
    // SAFETY: fd was just opened by us and is owned here.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let meta = std::fs::File::from(owned);
    let size = meta.metadata().map_err(|e| format!("stat {}: {e}", img.path))?.len() as i64;
    // A file opened O_APPEND that only grew is safe: writes land at the end.
    let appended = img.flags as i32 & libc::O_APPEND != 0 && size > img.size;
    if size != img.size && !appended {
        return Err(format!(
            "{}: size is {size} bytes, but was {} at dump time; the file changed since the dump",
            img.path, img.size
        ));
    }
    let fd = std::os::fd::IntoRawFd::into_raw_fd(meta);
    // SAFETY: lseek on an fd we own.
    let off = unsafe { libc::lseek(fd, img.pos, libc::SEEK_SET) };
    if off != img.pos {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing the fd we own on the error path.
        unsafe { libc::close(fd) };
        return Err(format!("{}: seek to {}: {e}", img.path, img.pos));
    }
    Ok(fd)
}
