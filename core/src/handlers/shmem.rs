//! Built-in handler for anonymous shared memory objects: the memory of
//! `mmap(MAP_SHARED | MAP_ANONYMOUS)` (shown as `/dev/zero (deleted)`), as
//! every process reaches it: shared mappings, private (copy-on-write)
//! mappings of it, at any offset, and fds opened on it through
//! `/proc/PID/map_files`.
//!
//! At restore crt creates each object itself, once, with its dumped size
//! (an anonymous shared mapping in crt, kept through an fd of its
//! `map_files` entry), and every mapping and fd of every task attaches to
//! that one object. The bytes come back through the shared mappings (crt
//! stores all their present pages); an object no shared mapping shows is
//! copied into the record of its first private mapping or fd (holes kept).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Mutex;

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, PagePolicy, TaskRef, VmaDesc, VmaDump, VmaRestore};
use prost::Message;

use super::{boxed, contents, open_raw, Builtin, BUILTIN_VERSION, REOPEN_STRIP};
use crate::images::pb;

/// How the kernel names an anonymous shared memory object.
pub const NAME: &str = "/dev/zero (deleted)";
/// Largest object copied into a record (one no shared mapping shows).
const MAX_COPY: u64 = 256 << 20;

/// Anonymous shared memory: mappings and fds.
#[derive(Default)]
pub struct Shmem {
    /// Objects copied into the image already (dump).
    copied: Mutex<BTreeSet<u64>>,
    /// Objects made so far (restore): an fd of each.
    made: Mutex<BTreeMap<u64, OwnedFd>>,
}

inventory::submit! { Builtin { priority: 85, make: || boxed(Shmem::default()) } }

impl Shmem {
    /// The record of the object behind `via`, copied if `copy` and not yet.
    fn dump(&self, via: &str, ino: u64, copy: bool, flags: u32, pos: i64) -> Result<pb::ShmemObject, String> {
        use std::os::unix::fs::MetadataExt;
        let f = contents::open_for_copy(via)?;
        let size = f.metadata().map_err(|e| format!("stat {via}: {e}"))?.size();
        let mut rec = pb::ShmemObject { ino, size, flags, pos, contents: None };
        if copy && self.copied.lock().map(|mut c| c.insert(ino)).unwrap_or(true) {
            rec.contents = Some(contents::read(&f, MAX_COPY, "anonymous shared memory")?);
        }
        Ok(rec)
    }

    /// crt's fd of the object of `rec`, made on first use.
    fn object(&self, rec: &pb::ShmemObject) -> Result<OwnedFd, String> {
        let mut made = self.made.lock().map_err(|_| "shmem state poisoned".to_string())?;
        if let Some(fd) = made.get(&rec.ino) {
            return fd.try_clone().map_err(|e| format!("dup: {e}"));
        }
        let fd = create(rec.size)?;
        if let Some(c) = &rec.contents {
            let f = std::fs::File::from(fd.try_clone().map_err(|e| format!("dup: {e}"))?);
            for s in &c.segments {
                std::os::unix::fs::FileExt::write_all_at(&f, &s.data, s.offset as u64)
                    .map_err(|e| format!("refilling anonymous shared memory: {e}"))?;
            }
        }
        let out = fd.try_clone().map_err(|e| format!("dup: {e}"))?;
        made.insert(rec.ino, fd);
        Ok(out)
    }
}

/// A new anonymous shared memory object of `size` bytes.
fn create(size: u64) -> Result<OwnedFd, String> {
    let len = size.max(1).div_ceil(4096) * 4096;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a fresh shared anonymous mapping; nothing else refers to it.
    let p =
        unsafe { libc::mmap(std::ptr::null_mut(), len as usize, prot, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(format!("creating {len} bytes of anonymous shared memory: {}", std::io::Error::last_os_error()));
    }
    let start = p as u64;
    let fd = open_raw(&format!("/proc/self/map_files/{start:x}-{:x}", start + len), libc::O_RDWR);
    // SAFETY: unmapping the mapping made above; the fd keeps the object.
    unsafe { libc::munmap(p, len as usize) };
    // SAFETY: open_raw hands over a new fd.
    fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn decode(blob: &[u8]) -> Result<pb::ShmemObject, String> {
    pb::ShmemObject::decode(blob).map_err(|e| format!("corrupt shared memory record: {e}"))
}

impl Handler for Shmem {
    fn name(&self) -> RString {
        "shmem".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "memory and fd: anonymous shared memory (MAP_SHARED|MAP_ANONYMOUS), mapped shared or private at any offset, and fds on it".into()
    }

    fn hooks(&self) -> RString {
        "dump_finish, restore_finish".into()
    }

    fn claims_vma(&self, vma: &VmaDesc) -> bool {
        vma.ino != 0 && vma.name.as_str() == NAME
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.file_type() == libc::S_IFREG && fd.link.as_str() == NAME
    }

    fn dump_vma(&self, _task: TaskRef<'_>, vma: &VmaDesc) -> RResult<VmaDump, RString> {
        let via = format!("/proc/{}/map_files/{:x}-{:x}", vma.pid, vma.start, vma.end);
        let r = self.dump(&via, vma.ino, !vma.shared, 0, 0).map(|rec| VmaDump {
            blob: rec.encode_to_vec().into(),
            // Shared: all its present pages (the object's); private: its own copies.
            pages: if vma.shared { PagePolicy::All } else { PagePolicy::Private },
        });
        r.map_err(RString::from).into()
    }

    fn restore_vma(&self, _task: TaskRef<'_>, _vma: &VmaDesc, blob: RSlice<'_, u8>) -> RResult<VmaRestore, RString> {
        let r = decode(blob.as_slice()).and_then(|rec| self.object(&rec)).map(|fd| VmaRestore::MapFd(fd.into_raw_fd()));
        r.map_err(RString::from).into()
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        let via = format!("/proc/{}/fd/{}", fd.pid, fd.fd);
        let r = self.dump(&via, fd.ino, true, fd.flags, fd.pos).map(|rec| RVec::from(rec.encode_to_vec()));
        r.map_err(RString::from).into()
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r = decode(blob.as_slice()).and_then(|rec| {
            let obj = self.object(&rec)?;
            let fd = open_raw(&format!("/proc/self/fd/{}", obj.as_raw_fd()), rec.flags as i32 & !REOPEN_STRIP)?;
            // SAFETY: lseek on the fd just opened.
            unsafe { libc::lseek(fd, rec.pos, libc::SEEK_SET) };
            Ok(fd)
        });
        r.map_err(RString::from).into()
    }

    fn dump_finish(&self, _ok: bool) {
        if let Ok(mut c) = self.copied.lock() {
            c.clear();
        }
    }

    fn restore_finish(&self, _ok: bool) {
        if let Ok(mut m) = self.made.lock() {
            m.clear();
        }
    }
}
