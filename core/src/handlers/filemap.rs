//! Built-in handler for memory mapped from regular files (programs,
//! libraries, data files), private or shared.

use abi_stable::std_types::{RResult, RSlice, RString};
use crt_plugin_api::{Handler, PagePolicy, TaskRef, VmaDesc, VmaDump, VmaRestore};
use prost::Message;

use super::{boxed, is_deleted, open_raw, Builtin, BUILTIN_VERSION};
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
        // Regular files only: a mapped device needs a device plugin. A
        // deleted file is claimed so that the dump can say why it refuses.
        vma.ino != 0
            && path.starts_with('/')
            && path != "/dev/zero (deleted)"
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
    if is_deleted(path) {
        return Err(format!(
            "mapping {:#x}-{:#x} of {path}: the file was deleted (or is SysV shared memory); crt cannot restore it",
            vma.start, vma.end
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("stat {path}: {e}"))?;
    use std::os::unix::fs::MetadataExt;
    if meta.ino() != vma.ino {
        return Err(format!(
            "{path}: inode {} differs from the mapped inode {}; the file was replaced",
            meta.ino(),
            vma.ino
        ));
    }
    let img = pb::RegFile {
        path: path.to_string(),
        mode: meta.mode(),
        size: meta.size() as i64,
        dev: meta.dev(),
        ino: meta.ino(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ..Default::default()
    };
    Ok(VmaDump {
        blob: img.encode_to_vec().into(),
        pages: if vma.shared { PagePolicy::None } else { PagePolicy::Private },
    })
}

fn restore(vma: &VmaDesc, blob: &[u8]) -> Result<VmaRestore, String> {
    let img = pb::RegFile::decode(blob).map_err(|e| format!("corrupt file-memory record: {e}"))?;
    let write = vma.shared && vma.prot & libc::PROT_WRITE as u32 != 0;
    let fd = open_raw(&img.path, if write { libc::O_RDWR } else { libc::O_RDONLY })?;
    // SAFETY: fd was just opened and is owned here.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let size = file.metadata().map_err(|e| format!("stat {}: {e}", img.path))?.len() as i64;
    if size != img.size {
        return Err(format!(
            "{}: size is {size} bytes, but was {} at dump time; the mapped file changed since the dump",
            img.path, img.size
        ));
    }
    Ok(VmaRestore::MapFd(std::os::fd::IntoRawFd::into_raw_fd(file)))
}
