//! Files deleted while open or mapped ("ghosts"), shared by the regular
//! file handler (fds) and the file memory handler (mappings).
//!
//! A ghost still linked under another name (a hard link elsewhere:
//! `st_nlink > 0`) is the same inode after restore: crt records a file
//! handle (`name_to_handle_at`) and reopens it with `open_by_handle_at`.
//! Otherwise its contents and attributes are copied into the image
//! (`contents.rs`; at most [`limit`] bytes of data, holes kept) by the
//! first fd or mapping of that inode, and restore recreates it as an
//! unnamed file (`O_TMPFILE`) in the same directory. Every fd and mapping
//! of one inode, in every task, then shares that one file: each fd is a
//! new open file description of it (reopened through `/proc/self/fd`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::contents;
use crate::images::pb;

/// Largest amount of data of one copied ghost, by default.
pub const DEFAULT_LIMIT: u64 = 64 << 20;
static LIMIT: AtomicU64 = AtomicU64::new(DEFAULT_LIMIT);
/// Inodes whose contents are in the image already (dump).
static DUMPED: Mutex<BTreeSet<(u64, u64)>> = Mutex::new(BTreeSet::new());
/// Ghosts recreated so far (restore): an fd of each.
static MADE: Mutex<BTreeMap<(u64, u64), OwnedFd>> = Mutex::new(BTreeMap::new());
/// `MAX_HANDLE_SZ`.
const MAX_HANDLE: usize = 128;

/// The data limit for copied ghosts (`--handler-opt regfile:ghost-limit=`).
pub fn limit() -> u64 {
    LIMIT.load(Ordering::Relaxed)
}

/// Sets [`limit`].
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// Forgets the ghosts of the last dump or restore.
pub fn reset() {
    if let Ok(mut d) = DUMPED.lock() {
        d.clear();
    }
    if let Ok(mut m) = MADE.lock() {
        m.clear();
    }
}

/// The record of the deleted file `link` (as `/proc` shows it), readable
/// through `via` (`/proc/PID/fd/N` or `/proc/PID/map_files/…`).
pub fn dump(via: &str, link: &str, dev: u64, ino: u64) -> Result<pb::Ghost, String> {
    let path = link.strip_suffix(" (deleted)").unwrap_or(link).to_string();
    let f = contents::open_for_copy(via)?;
    let meta = f.metadata().map_err(|e| format!("stat {via}: {e}"))?;
    let mut g = pb::Ghost { path, dev, ino, ..Default::default() };
    if meta.nlink() > 0 {
        let (handle, handle_type, mount_point) = file_handle(via)?;
        (g.handle, g.handle_type, g.mount_point) = (handle, handle_type, mount_point);
        return Ok(g);
    }
    let first = DUMPED.lock().map(|mut d| d.insert((dev, ino))).unwrap_or(true);
    if first {
        g.contents = Some(contents::read(&f, limit(), &format!("deleted file {link}"))?);
        g.has_contents = true;
    }
    Ok(g)
}

/// An fd (read-write, or `O_PATH` for a reopened link) of the restored
/// ghost `g`, made on its first use.
pub fn restore(g: &pb::Ghost) -> Result<OwnedFd, String> {
    let mut made = MADE.lock().map_err(|_| "ghost state poisoned".to_string())?;
    if let Some(fd) = made.get(&(g.dev, g.ino)) {
        return fd.try_clone().map_err(|e| format!("dup: {e}"));
    }
    let fd = if !g.handle.is_empty() {
        open_handle(g)?
    } else {
        let c = g.contents.as_ref().ok_or_else(|| {
            format!("deleted file {}: the image holds no copy of it (its first record is missing)", g.path)
        })?;
        recreate(g, c)?
    };
    let out = fd.try_clone().map_err(|e| format!("dup: {e}"))?;
    made.insert((g.dev, g.ino), fd);
    Ok(out)
}

/// A new open file description of `anchor` with `flags` (through `/proc/self/fd`).
pub fn reopen(anchor: &OwnedFd, flags: i32) -> Result<i32, String> {
    super::open_raw(&format!("/proc/self/fd/{}", anchor.as_raw_fd()), flags)
}

fn recreate(g: &pb::Ghost, c: &pb::FileContents) -> Result<OwnedFd, String> {
    let dir = std::path::Path::new(&g.path).parent().filter(|d| d.is_dir()).map(|d| d.to_path_buf());
    let dir = dir.unwrap_or_else(std::env::temp_dir);
    let cdir = std::ffi::CString::new(dir.to_string_lossy().as_bytes()).map_err(|_| "path with NUL".to_string())?;
    // SAFETY: valid C string; O_TMPFILE creates an unnamed file in `dir`.
    let raw = unsafe { libc::open(cdir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC, 0o600) };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("recreating deleted file {} in {}: {e}", g.path, dir.display()));
    }
    // SAFETY: just created and owned here.
    let f = unsafe { File::from_raw_fd(raw) };
    contents::write(&f, c, &format!("deleted file {}", g.path))?;
    Ok(f.into())
}

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct Handle {
    bytes: u32,
    ty: i32,
    data: [u8; MAX_HANDLE],
}

impl Handle {
    fn as_ptr(&mut self) -> *mut libc::file_handle {
        (self as *mut Handle).cast()
    }
}

/// `name_to_handle_at` of `via`: the handle, its type, and the mount point
/// of the mount it was taken on.
fn file_handle(via: &str) -> Result<(Vec<u8>, i32, String), String> {
    let c = std::ffi::CString::new(via).map_err(|_| "path with NUL".to_string())?;
    let mut h = Handle { bytes: MAX_HANDLE as u32, ty: 0, data: [0; MAX_HANDLE] };
    let mut mnt_id = 0;
    // SAFETY: valid path; `h` is a file_handle with MAX_HANDLE bytes of room; an out int.
    let r = unsafe {
        libc::name_to_handle_at(libc::AT_FDCWD, c.as_ptr(), h.as_ptr(), &mut mnt_id, libc::AT_SYMLINK_FOLLOW)
    };
    if r != 0 {
        return Err(format!(
            "the file is still linked elsewhere, and crt cannot take a file handle of it to reopen it: {}",
            std::io::Error::last_os_error()
        ));
    }
    let handle = h.data[..(h.bytes as usize).min(MAX_HANDLE)].to_vec();
    let mount_point = mount_point(mnt_id).ok_or_else(|| format!("mount {mnt_id} of {via} is not in mountinfo"))?;
    Ok((handle, h.ty, mount_point))
}

/// The mount point of mount `id`, from `/proc/self/mountinfo`.
fn mount_point(id: i32) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = info.lines().find(|l| l.split(' ').next() == Some(id.to_string().as_str()))?;
    line.split(' ').nth(4).map(unescape)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn open_handle(g: &pb::Ghost) -> Result<OwnedFd, String> {
    let mnt = File::open(&g.mount_point).map_err(|e| format!("opening mount point {}: {e}", g.mount_point))?;
    if g.handle.len() > MAX_HANDLE {
        return Err(format!("{}: the image's file handle is {} bytes, more than {MAX_HANDLE}", g.path, g.handle.len()));
    }
    let mut h = Handle { bytes: g.handle.len() as u32, ty: g.handle_type, data: [0; MAX_HANDLE] };
    h.data[..g.handle.len()].copy_from_slice(&g.handle);
    // SAFETY: a valid mount fd and a complete file_handle in `h`.
    let raw = unsafe { libc::open_by_handle_at(mnt.as_raw_fd(), h.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(format!(
            "{} (deleted, linked elsewhere): reopening it by file handle: {}",
            g.path,
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: just opened, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let meta = File::from(fd.try_clone().map_err(|e| format!("dup: {e}"))?).metadata();
    match meta {
        Ok(m) if m.ino() == g.ino && m.dev() == g.dev => Ok(fd),
        Ok(m) => Err(format!("{}: the file handle now opens inode {}, not {}", g.path, m.ino(), g.ino)),
        Err(e) => Err(format!("stat {}: {e}", g.path)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes() {
        assert_eq!(super::unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(super::unescape("/plain"), "/plain");
    }
}
