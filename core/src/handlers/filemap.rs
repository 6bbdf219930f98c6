//! Built-in handler for memory mapped from regular files (programs,
//! libraries, data files), private or shared.

use abi_stable::std_types::{RResult, RSlice, RString};
use crt_plugin_api::{Handler, PagePolicy, TaskRef, VmaDesc, VmaDump, VmaRestore};
use prost::Message;

use super::{boxed, ghost, is_deleted, open_raw, Builtin, BUILTIN_VERSION};
use crate::images::pb;

/// File-backed memory: the file is reopened by path and mapped again;
/// crt stores only the pages the task changed privately.
pub struct FileMemory;

inventory::submit! { Builtin { priority: 210, make: || boxed(FileMemory) } }

impl Handler for FileMemory {
    fn name(&self) -> RString {
        "file-memory".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "memory: mappings of regular files, private and shared".into()
    }

    fn claims_vma(&self, vma: &VmaDesc) -> bool {
        let path = vma.name.as_str();
        // Regular files only: a mapped device needs a device plugin.

        vma.ino != 0
            && path.starts_with('/')
            && path != "/dev/zero (deleted)"
            && !super::sysvshm::is_sysv(path)
            && (is_deleted(path) || std::fs::metadata(path).is_ok_and(|m| m.is_file()))
    }

    fn dump_vma(&self, _task: TaskRef<'_>, vma: &VmaDesc) -> RResult<VmaDump, RString> {
        let r = dump(vma);
        r.map_err(RString::from).into()
    }

    fn restore_vma(&self, _task: TaskRef<'_>, vma: &VmaDesc, blob: RSlice<'_, u8>) -> RResult<VmaRestore, RString> {
        let r = restore(vma, blob.as_slice());
        r.map_err(RString::from).into()
    }
}

fn dump(vma: &VmaDesc) -> Result<VmaDump, String> {
    let path = vma.name.as_str();
    if path == "/[aio] (deleted)" {
        return Err(format!(
            "AIO context (ring at {:#x}): install the crt-plugin-aio plugin (libcrt_plugin_aio.so in /usr/lib/crt or a --plugin-dir)",
            vma.start
        ));
    }
    // The mapping's file was opened for writing too when its map_files
    // link is writable (the link's mode mirrors the file's f_mode).
    let via = format!("/proc/{}/map_files/{:x}-{:x}", vma.pid, vma.start, vma.end);
    let link = std::fs::symlink_metadata(&via).map_err(|e| format!("stat {via}: {e}"))?;
    use std::os::unix::fs::MetadataExt;
    let flags = if link.mode() & 0o200 != 0 { libc::O_RDWR } else { libc::O_RDONLY } as u32;
    let pages = if vma.shared { PagePolicy::None } else { PagePolicy::Private };
    if is_deleted(path) {
        let g = ghost::dump(&via, path, vma.dev, vma.ino)?;
        let img = pb::RegFile { path: g.path.clone(), flags, ghost: true, deleted: Some(g), ..Default::default() };
        return Ok(VmaDump { blob: img.encode_to_vec().into(), pages });
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("stat {path}: {e}"))?;
    if meta.ino() != vma.ino {
        return Err(format!(
            "{path}: inode {} differs from the mapped inode {}; the file was replaced",
            meta.ino(),
            vma.ino
        ));
    }
    let img = pb::RegFile {
        path: path.to_string(),
        flags,
        mode: meta.mode(),
        size: meta.size() as i64,
        dev: meta.dev(),
        ino: meta.ino(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ..Default::default()
    };
    Ok(VmaDump { blob: img.encode_to_vec().into(), pages })
}

fn restore(vma: &VmaDesc, blob: &[u8]) -> Result<VmaRestore, String> {
    let img = pb::RegFile::decode(blob).map_err(|e| format!("corrupt file-memory record: {e}"))?;
    // As the task had it open; images without the mode: what the mapping needs.
    let needs_write = vma.shared && vma.prot & libc::PROT_WRITE as u32 != 0;
    let acc =
        if img.flags as i32 & libc::O_ACCMODE == libc::O_RDWR || needs_write { libc::O_RDWR } else { libc::O_RDONLY };
    if let Some(g) = &img.deleted {
        let anchor = ghost::restore(g)?;
        return Ok(VmaRestore::MapFd(ghost::reopen(&anchor, acc)?));
    }
    let fd = open_raw(&img.path, acc)?;
    // SAFETY: fd was just opened and is owned here.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let meta = file.metadata().map_err(|e| format!("stat {}: {e}", img.path))?;
    use std::os::unix::fs::MetadataExt;
    if meta.ino() != img.ino || meta.dev() != img.dev {
        return Err(format!(
            "{}: inode {} is not the mapped inode {}; the file was replaced since the dump",
            img.path,
            meta.ino(),
            img.ino
        ));
    }
    let size = meta.len() as i64;
    if size != img.size {
        return Err(format!(
            "{}: size is {size} bytes, but was {} at dump time; the mapped file changed since the dump",
            img.path, img.size
        ));
    }
    Ok(VmaRestore::MapFd(std::os::fd::IntoRawFd::into_raw_fd(file)))
}
