//! Built-in handler for regular files opened by path.
//!
//! The size at dump time is recorded; at restore a file of another size is
//! refused (the task would read or overwrite the wrong bytes), except a file
//! opened with `O_APPEND` that has only grown, such as a log.
//!
//! A file deleted while open (`tmpfile()`, a temporary unlinked after
//! opening) is a *ghost* (`ghost.rs`): reopened by file handle if it is
//! still linked elsewhere, else copied into the image (holes, mode, owner
//! and times kept; `--handler-opt regfile:ghost-limit=BYTES`, 64 MiB of
//! data by default) and recreated as one unnamed file shared by all its fds.

use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::{boxed, ghost, is_deleted, open_raw, Builtin, BUILTIN_VERSION, REOPEN_STRIP};
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
        "fd: regular files opened by path; deleted ones reopened or copied (64 MiB of data by default)".into()
    }

    fn hooks(&self) -> RString {
        "dump_finish, restore_finish".into()
    }

    fn configure(&self, key: RStr<'_>, value: RStr<'_>) -> RResult<(), RString> {
        let r = match key.as_str() {
            "ghost-limit" => parse_size(value.as_str()).map(ghost::set_limit),
            k => Err(format!("unknown option {k} (have: ghost-limit=BYTES, with K, M or G)")),
        };
        r.map_err(RString::from).into()
    }

    fn dump_finish(&self, _ok: bool) {
        ghost::reset();
    }

    fn restore_finish(&self, _ok: bool) {
        ghost::reset();
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.file_type() == libc::S_IFREG && fd.link.starts_with('/') && fd.link.as_str() != super::shmem::NAME
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
    let deleted = if is_deleted(&fd.link) {
        Some(ghost::dump(&format!("/proc/{}/fd/{}", fd.pid, fd.fd), &fd.link, fd.dev, fd.ino)?)
    } else {
        None
    };
    let img = pb::RegFile {
        path: fd.link.strip_suffix(" (deleted)").unwrap_or(&fd.link).to_string(),
        flags: fd.flags,
        pos: fd.pos,
        mode: fd.mode,
        size: fd.size,
        dev: fd.dev,
        ino: fd.ino,
        mtime_ns: fd.mtime_ns,
        ghost: deleted.is_some(),
        deleted,
        ..Default::default()
    };
    Ok(img.encode_to_vec())
}

/// A new open file description, with the dumped flags and offset, of the
/// restored deleted file.
fn restore_ghost(img: &pb::RegFile) -> Result<i32, String> {
    let g = match &img.deleted {
        Some(g) => g.clone(),
        // Images from before `deleted`: the contents in one piece.
        None => pb::Ghost {
            path: img.path.clone(),
            dev: img.dev,
            ino: img.ino,
            has_contents: true,
            contents: Some(pb::FileContents {
                size: img.ghost_data.len() as i64,
                segments: vec![pb::Segment { offset: 0, data: img.ghost_data.clone() }],
                mode: img.mode & 0o7777,
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    let anchor = ghost::restore(&g)?;
    let fd = ghost::reopen(&anchor, img.flags as i32 & !REOPEN_STRIP)?;
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
    if !super::on_kernel_fs(std::os::fd::AsRawFd::as_raw_fd(&meta)) {
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

/// `1048576`, `64K`, `64M`, `2G`.
fn parse_size(v: &str) -> Result<u64, String> {
    let (num, mul) = match v.as_bytes().last() {
        Some(b'K' | b'k') => (&v[..v.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&v[..v.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{v:?}: expected a size such as 1048576, 64K, 64M or 2G"))
}
