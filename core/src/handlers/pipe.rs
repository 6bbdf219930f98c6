//! Built-in handler for pipes and named FIFOs, with the bytes buffered in them.
//!
//! At dump, the buffered bytes are copied without consuming them: crt
//! opens a second read end through `/proc/PID/fd/N` and `tee(2)`s the pipe
//! into a private pipe. The first end of a pipe dumped carries the bytes.
//! At restore, the first end restored creates the pipe and refills it;
//! ends not held by any task are closed when the restore finishes. Two
//! open file descriptions of one end (a pipe end reopened through
//! `/proc/self/fd/N`) stay two. A FIFO is reopened by path: crt first
//! holds it open read-write (which never blocks and keeps the buffered
//! bytes alive), then opens each end. A FIFO unlinked while open is made
//! again under a temporary name in its directory, opened, and unlinked.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Mutex;

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::{boxed, Builtin, BUILTIN_VERSION};
use crate::images::pb;

/// Anonymous pipes (`pipe:[ino]`) and named FIFOs.
#[derive(Default)]
pub struct Pipe {
    /// Pipes whose bytes are already in the image (dump).
    dumped: Mutex<HashSet<(u64, u64)>>,
    /// Pipes recreated so far (restore).
    made: Mutex<HashMap<(u64, u64), Made>>,
}

/// A pipe recreated at restore.
struct Made {
    /// Read end and write end; for a FIFO both are one read-write
    /// descriptor that keeps it open.
    ends: [OwnedFd; 2],
    /// Whether the read / write end's own description was handed out (a
    /// second description of that end is opened anew).
    handed: [bool; 2],
}

inventory::submit! { Builtin { priority: 120, make: || boxed(Pipe::default()) } }

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn pipe2() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe2"));
    }
    // SAFETY: fds[0] was just created by pipe2 and is owned here.
    let r = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above, for fds[1].
    let w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((r, w))
}

fn fcntl(fd: &OwnedFd, cmd: i32, arg: i32) -> Result<i32, String> {
    // SAFETY: fcntl on an fd we own with an integer argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, arg) };
    if r < 0 {
        Err(os_err("fcntl"))
    } else {
        Ok(r)
    }
}

/// Opens FIFO `path` with access mode `acc` without blocking.
fn open_fifo(path: &str, acc: i32) -> Result<OwnedFd, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("FIFO {path}: {e}"))?;
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_fifo() {
        return Err(format!("{path} is no longer a FIFO"));
    }
    let f = std::fs::File::options()
        .read(acc != libc::O_WRONLY)
        .write(acc != libc::O_RDONLY)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("opening FIFO {path}: {e}"))?;
    Ok(f.into())
}

/// The bytes buffered in the pipe behind `/proc/<pid>/fd/<fd>`, left in place.
fn peek(pid: i32, fd: i32) -> Result<(u32, Vec<u8>), String> {
    let path = format!("/proc/{pid}/fd/{fd}");
    let reader: OwnedFd = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("opening {path} to read the pipe's bytes: {e}"))?
        .into();
    let size = fcntl(&reader, libc::F_GETPIPE_SZ, 0)?;
    let (tmp_r, tmp_w) = pipe2()?;
    fcntl(&tmp_w, libc::F_SETPIPE_SZ, size)?;
    // SAFETY: tee between two pipe fds we own; no memory is passed.
    let n = unsafe { libc::tee(reader.as_raw_fd(), tmp_w.as_raw_fd(), size as usize, libc::SPLICE_F_NONBLOCK) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok((size as u32, Vec::new()));
        }
        return Err(format!("tee: {e}"));
    }
    drop(tmp_w);
    let mut data = Vec::with_capacity(n as usize);
    std::fs::File::from(tmp_r).read_to_end(&mut data).map_err(|e| format!("reading the copied bytes: {e}"))?;
    Ok((size as u32, data))
}

use std::os::unix::fs::OpenOptionsExt;

impl Handler for Pipe {
    fn name(&self) -> RString {
        "pipe".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: anonymous pipes and named FIFOs, with buffered bytes".into()
    }

    fn hooks(&self) -> RString {
        "dump_finish, restore_finish".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.file_type() == libc::S_IFIFO && (fd.link.starts_with("pipe:[") || fd.link.starts_with('/'))
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        let first = self.dumped.lock().map(|mut s| s.insert((fd.dev, fd.ino))).unwrap_or(false);
        let r = (|| -> Result<Vec<u8>, String> {
            let (pipe_size, data) = if first { peek(fd.pid, fd.fd)? } else { (0, Vec::new()) };
            let deleted = fd.link.strip_suffix(" (deleted)");
            let img = pb::PipeEnd {
                fifo_path: if fd.link.starts_with('/') {
                    deleted.unwrap_or(&fd.link).to_string()
                } else {
                    String::new()
                },
                fifo_deleted: deleted.is_some(),
                fifo_mode: fd.mode & 0o7777,
                ino: fd.ino,
                dev: fd.dev,
                write_end: fd.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32,
                flags: fd.flags,
                pipe_size,
                has_data: first,
                data,
            };
            Ok(img.encode_to_vec())
        })();
        r.map(RVec::from).map_err(RString::from).into()
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        self.restore(blob.as_slice()).map_err(RString::from).into()
    }

    fn dump_finish(&self, _ok: bool) {
        if let Ok(mut s) = self.dumped.lock() {
            s.clear();
        }
    }

    fn restore_finish(&self, _ok: bool) {
        if let Ok(mut m) = self.made.lock() {
            m.clear();
        }
    }
}

impl Pipe {
    fn restore(&self, blob: &[u8]) -> Result<i32, String> {
        let img = pb::PipeEnd::decode(blob).map_err(|e| format!("corrupt pipe record: {e}"))?;
        let mut made = self.made.lock().map_err(|_| "pipe state poisoned".to_string())?;
        let m = match made.entry((img.dev, img.ino)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(make(&img)?),
        };
        if img.has_data && !img.data.is_empty() {
            let mut f = std::fs::File::from(m.ends[1].try_clone().map_err(|e| format!("dup: {e}"))?);
            f.write_all(&img.data).map_err(|e| format!("refilling the pipe with {} bytes: {e}", img.data.len()))?;
        }
        let status = img.flags as i32 & (libc::O_NONBLOCK | libc::O_DIRECT);
        let acc = img.flags as i32 & libc::O_ACCMODE;
        let end = if !img.fifo_path.is_empty() && !img.fifo_deleted {
            // Its own open file description, as the task had it.
            open_fifo(&img.fifo_path, acc)?
        } else {
            let k = usize::from(img.write_end);
            if img.fifo_path.is_empty() && !m.handed[k] {
                m.handed[k] = true;
                m.ends[k].try_clone().map_err(|e| format!("dup: {e}"))?
            } else {
                reopen_end(&m.ends[k], acc)?
            }
        };
        fcntl(&end, libc::F_SETFL, status)?;
        Ok(end.into_raw_fd())
    }
}

/// Creates the pipe or FIFO of `img` (its first end restored).
fn make(img: &pb::PipeEnd) -> Result<Made, String> {
    let [r, w] = if img.fifo_deleted {
        let anchor = ghost_fifo(img)?;
        let other = anchor.try_clone().map_err(|e| format!("dup: {e}"))?;
        [anchor, other]
    } else if !img.fifo_path.is_empty() {
        let anchor = open_fifo(&img.fifo_path, libc::O_RDWR)?;
        let other = anchor.try_clone().map_err(|e| format!("dup: {e}"))?;
        [anchor, other]
    } else {
        let (r, w) = pipe2()?;
        [r, w]
    };
    if img.pipe_size > 0 {
        fcntl(&w, libc::F_SETPIPE_SZ, img.pipe_size as i32)?;
    }
    Ok(Made { ends: [r, w], handed: [false, false] })
}

/// A new open file description of the pipe behind `end`, opened through
/// `/proc/self/fd` with access mode `acc` (never blocks: crt holds both ends).
fn reopen_end(end: &OwnedFd, acc: i32) -> Result<OwnedFd, String> {
    let path = format!("/proc/self/fd/{}", end.as_raw_fd());
    let f = std::fs::File::options()
        .read(acc != libc::O_WRONLY)
        .write(acc != libc::O_RDONLY)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("opening another description of the pipe: {e}"))?;
    Ok(f.into())
}

/// A FIFO like the deleted one of `img`, open read-write and unlinked
/// again: made under a temporary name in its directory (or the system's
/// temporary directory, if that is gone).
fn ghost_fifo(img: &pb::PipeEnd) -> Result<OwnedFd, String> {
    let dir = std::path::Path::new(&img.fifo_path).parent().filter(|d| d.is_dir()).map(|d| d.to_path_buf());
    let dir = dir.unwrap_or_else(std::env::temp_dir);
    let tmp = dir.join(format!(".crt-fifo-{}-{}", std::process::id(), img.ino));
    let c = std::ffi::CString::new(tmp.to_string_lossy().as_bytes()).map_err(|_| "path with NUL".to_string())?;
    // SAFETY: `c` is a valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), img.fifo_mode & 0o7777) } != 0 {
        return Err(os_err(&format!("recreating deleted FIFO {} as {}", img.fifo_path, tmp.display())));
    }
    let anchor = open_fifo(&tmp.to_string_lossy(), libc::O_RDWR);
    let _ = std::fs::remove_file(&tmp);
    anchor
}
