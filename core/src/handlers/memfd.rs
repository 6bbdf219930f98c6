//! Built-in handler for memfds (`memfd_create`): their fds and mappings.
//!
//! The file's contents are stored with the first record of each memfd
//! (read through `/proc/PID/fd/N` or `/proc/PID/map_files/…`). At restore
//! the first record creates the memfd; every fd and mapping of the same
//! inode then refers to that one object.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Mutex;

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, PagePolicy, TaskRef, VmaDesc, VmaDump, VmaRestore};
use prost::Message;

use super::{boxed, contents, Builtin, BUILTIN_VERSION};
use crate::images::pb;

/// Largest memfd whose contents crt stores (in the image record).
const MAX_CONTENTS: u64 = 256 << 20;
const F_ADD_SEALS: i32 = 1033;
const F_GET_SEALS: i32 = 1034;

/// memfds, as fds and as mappings.
#[derive(Default)]
pub struct MemFd {
    dumped: Mutex<HashSet<u64>>,
    /// Restored memfds: crt's fd of each, and whether that description
    /// was handed to a task.
    made: Mutex<HashMap<u64, (OwnedFd, bool)>>,
}

inventory::submit! { Builtin { priority: 90, make: || boxed(MemFd::default()) } }

fn memfd_name(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:").map(|n| n.strip_suffix(" (deleted)").unwrap_or(n))
}

impl MemFd {
    fn dump(&self, path: &str, ino: u64, name: &str, flags: u32, pos: i64) -> Result<Vec<u8>, String> {
        let first = self.dumped.lock().map(|mut s| s.insert(ino)).unwrap_or(false);
        let f = contents::open_for_copy(path)?;
        let size = f.metadata().map_err(|e| format!("stat {path}: {e}"))?.len();
        // SAFETY: fcntl on an fd we own.
        let seals = unsafe { libc::fcntl(f.as_raw_fd(), F_GET_SEALS) }.max(0) as u32;
        let contents = if first { Some(contents::read(&f, MAX_CONTENTS, &format!("memfd {name}"))?) } else { None };
        let img = pb::MemFd {
            ino,
            name: name.to_string(),
            size: size as i64,
            flags,
            pos,
            seals,
            has_data: first,
            contents,
            ..Default::default()
        };
        Ok(img.encode_to_vec())
    }

    /// The memfd of `img`, created and filled on first use: crt's fd of
    /// the description `memfd_create` made.
    fn object(&self, img: &pb::MemFd) -> Result<OwnedFd, String> {
        let mut made = self.made.lock().map_err(|_| "memfd state poisoned".to_string())?;
        if let Some((fd, _)) = made.get(&img.ino) {
            return fd.try_clone().map_err(|e| e.to_string());
        }
        let fd = create(img)?;
        let out = fd.try_clone().map_err(|e| e.to_string())?;
        made.insert(img.ino, (fd, false));
        Ok(out)
    }

    /// An open file description for an fd of the memfd: the one
    /// `memfd_create` made, for the first read-write fd (only that one
    /// does not count as a writer, so `execveat` of it works), else a new
    /// one opened through `/proc/self/fd`.
    fn description(&self, img: &pb::MemFd) -> Result<i32, String> {
        let obj = self.object(img)?;
        let acc = img.flags as i32 & libc::O_ACCMODE;
        let mut made = self.made.lock().map_err(|_| "memfd state poisoned".to_string())?;
        let handed = made.get_mut(&img.ino).map(|(_, h)| h);
        if acc == libc::O_RDWR && handed.as_ref().is_some_and(|h| !**h) {
            if let Some(h) = handed {
                *h = true;
            }
            return Ok(obj.into_raw_fd());
        }
        let path = format!("/proc/self/fd/{}", obj.as_raw_fd());
        super::open_raw(&path, img.flags as i32 & (libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK))
            .map_err(|e| format!("reopening memfd {}: {e}", img.name))
    }

    fn decode(blob: &[u8]) -> Result<pb::MemFd, String> {
        pb::MemFd::decode(blob).map_err(|e| format!("corrupt memfd record: {e}"))
    }
}

/// `MFD_EXEC`: an executable memfd (Linux 6.3; older kernels make every memfd so).
const MFD_EXEC: u32 = 0x10;

/// Creates the memfd of `img` with its contents, attributes and seals.
fn create(img: &pb::MemFd) -> Result<OwnedFd, String> {
    let name = CString::new(img.name.as_str()).map_err(|_| "memfd name contains NUL".to_string())?;
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: `name` is a valid C string.
    let mut raw = unsafe { libc::memfd_create(name.as_ptr(), flags | MFD_EXEC) };
    if raw < 0 {
        // SAFETY: as above.
        raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if raw < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: just created, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let f = std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?);
    let c = match &img.contents {
        Some(c) => c.clone(),
        // Images from before `contents`: the data in one piece.
        None => pb::FileContents {
            size: img.size,
            segments: vec![pb::Segment { offset: 0, data: img.data.clone() }],
            mode: 0o777,
            ..Default::default()
        },
    };
    contents::write(&f, &c, &format!("memfd {}", img.name))?;
    if img.seals != 0 {
        // SAFETY: fcntl on an fd we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), F_ADD_SEALS, img.seals as i32) } != 0 {
            return Err(format!("sealing memfd {}: {}", img.name, std::io::Error::last_os_error()));
        }
    }
    Ok(fd)
}

impl Handler for MemFd {
    fn name(&self) -> RString {
        "memfd".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd and memory: memfd_create files".into()
    }

    fn hooks(&self) -> RString {
        "dump_finish, restore_finish".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.file_type() == libc::S_IFREG && memfd_name(&fd.link).is_some()
    }

    fn claims_vma(&self, vma: &VmaDesc) -> bool {
        vma.ino != 0 && memfd_name(&vma.name).is_some()
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        let name = memfd_name(&fd.link).unwrap_or_default();
        let path = format!("/proc/{}/fd/{}", fd.pid, fd.fd);
        self.dump(&path, fd.ino, name, fd.flags, fd.pos).map(RVec::from).map_err(RString::from).into()
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r = Self::decode(blob.as_slice()).and_then(|img| {
            let fd = self.description(&img)?;
            // SAFETY: lseek on the fd just opened.
            unsafe { libc::lseek(fd, img.pos, libc::SEEK_SET) };
            Ok(fd)
        });
        r.map_err(RString::from).into()
    }

    fn dump_vma(&self, _task: TaskRef<'_>, vma: &VmaDesc) -> RResult<VmaDump, RString> {
        let name = memfd_name(&vma.name).unwrap_or_default();
        let path = format!("/proc/{}/map_files/{:x}-{:x}", vma.pid, vma.start, vma.end);
        self.dump(&path, vma.ino, name, 0, 0)
            .map(|blob| VmaDump {
                blob: blob.into(),
                pages: if vma.shared { PagePolicy::None } else { PagePolicy::Private },
            })
            .map_err(RString::from)
            .into()
    }

    fn restore_vma(&self, _task: TaskRef<'_>, _vma: &VmaDesc, blob: RSlice<'_, u8>) -> RResult<VmaRestore, RString> {
        let r = Self::decode(blob.as_slice())
            .and_then(|img| self.object(&img))
            .map(|fd| VmaRestore::MapFd(fd.into_raw_fd()));
        r.map_err(RString::from).into()
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
