//! Built-in handler for regular files opened by path.
//!
//! The size at dump time is recorded; at restore a file of another size is
//! refused (the task would read or overwrite the wrong bytes), except a file
//! opened with `O_APPEND` that has only grown, such as a log.
//!
//! A file deleted while open (`tmpfile()`, a temporary unlinked after
//! opening) is a *ghost*: its contents (up to [`GHOST_MAX`]) go in the
//! record, and restore recreates it as an unnamed file (`O_TMPFILE`) in the
//! same directory (or the system temporary directory if that is gone).

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
        "fd: regular files opened by path; deleted ones up to 64 MiB with their contents".into()
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

/// Largest deleted-but-open file crt stores.
pub const GHOST_MAX: i64 = 64 << 20;

/// The record of the regular file `fd` (also used by the unix handler for files in flight).
pub(crate) fn dump_blob(fd: &FdDesc) -> Result<Vec<u8>, String> {
    if is_deleted(&fd.link) {
        return ghost_blob(fd);
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
        ..Default::default()
    };
    Ok(img.encode_to_vec())
}

/// A deleted file's record, with its contents.
fn ghost_blob(fd: &FdDesc) -> Result<Vec<u8>, String> {
    if fd.size > GHOST_MAX {
        return Err(format!(
            "{} was deleted while open and holds {} bytes; crt stores deleted files up to {GHOST_MAX} bytes",
            fd.link, fd.size
        ));
    }
    let via = format!("/proc/{}/fd/{}", fd.pid, fd.fd);
    let data = std::fs::read(&via).map_err(|e| format!("reading deleted file {} through {via}: {e}", fd.link))?;
    let img = pb::RegFile {
        path: fd.link.strip_suffix(" (deleted)").unwrap_or(&fd.link).to_string(),
        flags: fd.flags,
        pos: fd.pos,
        mode: fd.mode,
        size: data.len() as i64,
        dev: fd.dev,
        ino: fd.ino,
        mtime_ns: fd.mtime_ns,
        ghost: true,
        ghost_data: data,
    };
    Ok(img.encode_to_vec())
}

/// Recreates a deleted file as an unnamed file with its contents, then
/// opens it with the dumped flags; returns that fd.
fn restore_ghost(img: &pb::RegFile) -> Result<i32, String> {
    use std::io::Write;
    let dir = std::path::Path::new(&img.path).parent().filter(|d| d.is_dir()).map(|d| d.to_path_buf());
    let dir = dir.unwrap_or_else(std::env::temp_dir);
    let c = std::ffi::CString::new(dir.to_string_lossy().as_bytes()).map_err(|_| "path with NUL".to_string())?;
    // SAFETY: valid C string; O_TMPFILE creates an unnamed file in `dir`.
    let tmp = unsafe { libc::open(c.as_ptr(), libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC, img.mode & 0o7777) };
    if tmp < 0 {
        return Err(format!(
            "recreating deleted file {} in {}: {}",
            img.path,
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: just created and owned here.
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(tmp) };
    f.write_all(&img.ghost_data).map_err(|e| format!("refilling deleted file {}: {e}", img.path))?;
    // The dumped access mode and flags, on a new description of that file.
    let own = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
    let fd = open_raw(&own, img.flags as i32 & !REOPEN_STRIP)?;
    // SAFETY: lseek on the fd we just opened.
    unsafe { libc::lseek(fd, img.pos, libc::SEEK_SET) };
    Ok(fd)
}

/// Refuses a file that is not the one dumped: another inode (replaced), or
/// another size or modification time (changed since the dump), except a
/// file opened with `O_APPEND` that has only grown, such as a log.
fn check_unchanged(img: &pb::RegFile, now: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if img.ino != 0 && (now.ino() != img.ino || now.dev() != img.dev) {
        return Err(format!(
            "{} is now inode {}, but was inode {} at dump time; the file was replaced since the dump",
            img.path,
            now.ino(),
            img.ino
        ));
    }
    let size = now.len() as i64;
    let appended = img.flags as i32 & libc::O_APPEND != 0 && size > img.size;
    if appended {
        return Ok(());
    }
    if size != img.size {
        return Err(format!(
            "{}: size is {size} bytes, but was {} at dump time; the file changed since the dump",
            img.path, img.size
        ));
    }
    let mtime = now.mtime() * 1_000_000_000 + now.mtime_nsec();
    if img.mtime_ns != 0 && mtime != img.mtime_ns {
        return Err(format!(
            "{}: modified at {} ns, but at {} ns at dump time; the file changed since the dump",
            img.path, mtime, img.mtime_ns
        ));
    }
    Ok(())
}

/// Reopens the file of a [`dump_blob`] record at its flags and offset; the caller owns the fd.
pub(crate) fn restore(blob: &[u8]) -> Result<i32, String> {
    let img = pb::RegFile::decode(blob).map_err(|e| format!("corrupt regfile record: {e}"))?;
    if img.ghost {
        return restore_ghost(&img);
    }
    let fd = open_raw(&img.path, img.flags as i32 & !REOPEN_STRIP)?;
    // SAFETY: fd was just opened by us and is owned here.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let meta = std::fs::File::from(owned);
    if !super::on_procfs(std::os::fd::AsRawFd::as_raw_fd(&meta)) {
        check_unchanged(&img, &meta.metadata().map_err(|e| format!("stat {}: {e}", img.path))?)?;
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
