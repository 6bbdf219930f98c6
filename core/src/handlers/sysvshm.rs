//! Built-in handler for SysV shared memory (`shmget`/`shmat`): the
//! attaches of segments, shown in `maps` as `/SYSV<key> (deleted)` with the
//! segment's id as the inode number.
//!
//! A segment lives in the IPC namespace, not in a process: it outlives its
//! attachers (until `IPC_RMID`), so on the host a restore usually finds it
//! still there, unattached, since the dump killed its users. Dump records
//! each attach (the whole segment, from offset 0) with the segment's id,
//! key, size, mode and owners, and the segment's bytes once per image
//! (holes kept). Restore reuses a segment that is still there with the
//! same id, key, size, mode and owners and no attaches, or else creates it
//! with its id (`/proc/sys/kernel/shm_next_id`) as its creator (`cuid`,
//! `cgid`: `sysvipc::create_as`); either way it writes the dumped bytes back, then each task
//! attaches it at its address itself (`shmat` inside the task), so
//! `shm_nattch`, `shmdt` and `SHM_RDONLY` behave as before. A segment
//! removed while attached (`SHM_DEST`) is removed again once the restore
//! succeeded. The outside-attacher check (an attach crt does not dump) is in
//! the dump pipeline: [`crate::sharing::sysv_shm_outside`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use abi_stable::std_types::{RResult, RSlice, RString};
use crt_plugin_api::{Handler, PagePolicy, SyscallArgs, TaskRef, VmaDesc, VmaDump, VmaRestore};
use prost::Message;

use super::{boxed, contents, Builtin, BUILTIN_VERSION};
use crate::images::{pb, PAGE_SIZE};

/// The handler's name, as recorded in images.
pub const NAME: &str = "sysv-shm";
/// `shm_perm.mode`: removed, destroyed when the last attach goes.
const SHM_DEST: u32 = 0o1000;
/// `shm_perm.mode`: locked in memory (`SHM_LOCK`).
const SHM_LOCKED: u32 = 0o2000;
/// Largest segment whose bytes crt copies into an image.
const MAX_COPY: u64 = 1 << 30;

/// SysV shared memory attaches.
#[derive(Default)]
pub struct SysvShm {
    /// Segments whose bytes are in the image already (dump).
    copied: Mutex<BTreeSet<i32>>,
    /// Segments made ready so far (restore), by id.
    ready: Mutex<BTreeMap<i32, Ready>>,
}

/// A segment crt made ready at restore.
struct Ready {
    /// crt created it (rather than finding it there).
    created: bool,
    /// It was removed while attached: remove it again after the restore.
    dest: bool,
}

inventory::submit! { Builtin { priority: 84, make: || boxed(SysvShm::default()) } }

/// True for an attach of a SysV segment, as `maps` names it.
pub fn is_sysv(name: &str) -> bool {
    name.starts_with("/SYSV") && name.ends_with(" (deleted)")
}

/// `IPC_STAT` of segment `id`.
pub fn stat(id: i32) -> std::io::Result<libc::shmid_ds> {
    // SAFETY: shmid_ds is plain data; all zeroes is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one shmid_ds into `ds`, which is ours.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ds)
}

/// The image blob key of the bytes of segment `id`.
fn blob_key(id: i32) -> String {
    format!("{NAME}:{id}")
}

impl SysvShm {
    fn dump(&self, mut task: TaskRef<'_>, vma: &VmaDesc) -> Result<VmaDump, String> {
        let id = i32::try_from(vma.ino).map_err(|_| format!("inode {} is not a SysV shm id", vma.ino))?;
        let at = format!("SysV shared memory segment {id} attached at {:#x}-{:#x}", vma.start, vma.end);
        if vma.has_vm_flag("ht") {
            return Err(format!("{at}: a huge-page (SHM_HUGETLB) segment; crt cannot restore those yet"));
        }
        let ds = stat(id).map_err(|e| format!("{at}: IPC_STAT: {e}"))?;
        let size = ds.shm_segsz as u64;
        if vma.pgoff != 0 || vma.len() != size.div_ceil(PAGE_SIZE) * PAGE_SIZE {
            return Err(format!(
                "{at}: the attach covers only bytes {:#x}-{:#x} of the segment's {size} (split by munmap, mprotect or mremap); crt restores whole attaches only",
                vma.pgoff,
                vma.pgoff + vma.len()
            ));
        }
        if size > MAX_COPY {
            return Err(format!("{at}: {size} bytes; crt copies segments of at most {MAX_COPY} bytes"));
        }
        if self.copied.lock().map(|mut c| c.insert(id)).unwrap_or(true) {
            let via = format!("/proc/{}/map_files/{:x}-{:x}", vma.pid, vma.start, vma.end);
            let bytes = contents::read(&contents::open_for_copy(&via)?, MAX_COPY, &at)?;
            task.store_blob(blob_key(id).as_str().into(), bytes.encode_to_vec().as_slice().into())
                .into_result()
                .map_err(|e| format!("{at}: storing its bytes: {e}"))?;
        }
        let mut shmat_flags = 0;
        if !vma.has_vm_flag("mw") {
            shmat_flags |= libc::SHM_RDONLY;
        }
        if vma.prot & libc::PROT_EXEC as u32 != 0 {
            shmat_flags |= libc::SHM_EXEC;
        }
        let p = &ds.shm_perm;
        let rec = pb::SysvShm {
            id,
            key: p.__key,
            size,
            mode: u32::from(p.mode),
            uid: p.uid,
            gid: p.gid,
            cuid: p.cuid,
            cgid: p.cgid,
            shmat_flags: shmat_flags as u32,
        };
        Ok(VmaDump { blob: rec.encode_to_vec().into(), pages: PagePolicy::None })
    }

    /// Makes segment `rec.id` ready (found or created, bytes written) once.
    fn ready(&self, task: &TaskRef<'_>, rec: &pb::SysvShm) -> Result<(), String> {
        let mut ready = self.ready.lock().map_err(|_| "sysv-shm state poisoned".to_string())?;
        if ready.contains_key(&rec.id) {
            return Ok(());
        }
        let created = match stat(rec.id) {
            Ok(ds) => {
                check_reusable(rec, &ds)?;
                false
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIDRM)) => {
                create(rec)?;
                true
            }
            Err(e) => return Err(format!("segment {}: IPC_STAT: {e}", rec.id)),
        };
        let r = fill(task, rec).and_then(|()| set_attributes(rec));
        if let Err(e) = r {
            if created {
                remove(rec.id);
            }
            return Err(e);
        }
        ready.insert(rec.id, Ready { created, dest: rec.mode & SHM_DEST != 0 });
        Ok(())
    }

    fn restore(&self, mut task: TaskRef<'_>, vma: &VmaDesc, blob: &[u8]) -> Result<VmaRestore, String> {
        let rec = pb::SysvShm::decode(blob).map_err(|e| format!("corrupt SysV shared memory record: {e}"))?;
        self.ready(&task, &rec)?;
        let args = SyscallArgs::from([rec.id as u64, vma.start, u64::from(rec.shmat_flags), 0, 0, 0]);
        let got = task.syscall(libc::SYS_shmat, args).into_result().map_err(|e| e.into_string())?;
        if got as u64 != vma.start {
            return Err(format!("shmat of segment {} at {:#x}: {}", rec.id, vma.start, errno_or_addr(got)));
        }
        let flags = rec.shmat_flags as i32;
        let mut prot = libc::PROT_READ;
        if flags & libc::SHM_RDONLY == 0 {
            prot |= libc::PROT_WRITE;
        }
        if flags & libc::SHM_EXEC != 0 {
            prot |= libc::PROT_EXEC;
        }
        if vma.prot != prot as u32 {
            let args = SyscallArgs::from([vma.start, vma.len(), u64::from(vma.prot), 0, 0, 0]);
            let r = task.syscall(libc::SYS_mprotect, args).into_result().map_err(|e| e.into_string())?;
            if r < 0 {
                return Err(format!("mprotect of segment {} at {:#x}: errno {}", rec.id, vma.start, -r));
            }
        }
        Ok(VmaRestore::Done)
    }
}

fn errno_or_addr(r: i64) -> String {
    if r < 0 {
        std::io::Error::from_raw_os_error(-r as i32).to_string()
    } else {
        format!("landed at {r:#x}")
    }
}

/// A segment found at restore is the dumped one, unattached.
fn check_reusable(rec: &pb::SysvShm, ds: &libc::shmid_ds) -> Result<(), String> {
    let p = &ds.shm_perm;
    let mode = u32::from(p.mode);
    let found = (p.__key, ds.shm_segsz as u64, mode & 0o777, p.uid, p.gid, p.cuid, p.cgid);
    let want = (rec.key, rec.size, rec.mode & 0o777, rec.uid, rec.gid, rec.cuid, rec.cgid);
    let id = rec.id;
    if found != want || mode & SHM_DEST != 0 {
        return Err(format!(
            "SysV shm id {id} is taken by another segment (key {:#x}, {} bytes, mode {:o}, owner {}:{}); remove it (ipcrm -m {id}) to restore the dumped one (key {:#x}, {} bytes, mode {:o}, owner {}:{})",
            found.0, found.1, mode, found.3, found.4, rec.key, rec.size, rec.mode & 0o777, rec.uid, rec.gid
        ));
    }
    if ds.shm_nattch != 0 {
        return Err(format!(
            "SysV shm segment {id} (key {:#x}) is attached {} time(s) by running processes (last: pid {}); the dumped processes may still run",
            rec.key, ds.shm_nattch, ds.shm_lpid
        ));
    }
    Ok(())
}

/// Creates segment `rec` with its id, as its creator.
fn create(rec: &pb::SysvShm) -> Result<(), String> {
    let (id, key, size, mode) = (rec.id, rec.key, rec.size as usize, (rec.mode & 0o777) as i32);
    crate::sysvipc::create_as("shm", id, rec.cuid, rec.cgid, || {
        // SAFETY: shmget with integer arguments.
        unsafe { libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | mode) }
    })
    .map_err(|e| {
        // SAFETY: shmget with integer arguments, looking the key up.
        let other = if key != libc::IPC_PRIVATE { unsafe { libc::shmget(key, 0, 0) } } else { -1 };
        let hint = if other >= 0 { format!(" (id {other}: ipcrm -m {other})") } else { String::new() };
        format!("segment {id} (key {key:#x}, {size} bytes): {e}{hint}")
    })
}

/// Writes the dumped bytes into segment `rec.id`, holes as holes.
fn fill(task: &TaskRef<'_>, rec: &pb::SysvShm) -> Result<(), String> {
    let id = rec.id;
    let blob = task.load_blob(blob_key(id).as_str().into()).into_result().map_err(|e| format!("segment {id}: {e}"))?;
    let bytes =
        pb::FileContents::decode(blob.as_slice()).map_err(|e| format!("segment {id}: corrupt contents: {e}"))?;
    let len = rec.size as usize;
    if bytes.segments.iter().any(|s| s.offset < 0 || s.offset as usize + s.data.len() > len) {
        return Err(format!("segment {id}: corrupt contents: data past its {len} bytes"));
    }
    // SAFETY: attaching segment `id` anywhere in crt's own address space.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if p as isize == -1 {
        return Err(format!("segment {id}: shmat in crt: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `p` is the start of an attach of `len` bytes (rounded up to
    // pages), ours until the shmdt below; nothing else in crt refers to it.
    let mem = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
    // SAFETY: punches out every page of the attach (a segment found
    // there may hold bytes where the dump had holes).
    let r = unsafe { libc::madvise(p, len.div_ceil(PAGE_SIZE as usize) * PAGE_SIZE as usize, libc::MADV_REMOVE) };
    let e = std::io::Error::last_os_error();
    if r == 0 {
        for s in &bytes.segments {
            mem[s.offset as usize..][..s.data.len()].copy_from_slice(&s.data);
        }
    }
    // SAFETY: detaching the attach made above; `mem` is not used after.
    unsafe { libc::shmdt(p) };
    if r != 0 {
        return Err(format!("segment {id}: emptying it (MADV_REMOVE): {e}"));
    }
    Ok(())
}

/// Owner, group, mode and `SHM_LOCK` as dumped.
fn set_attributes(rec: &pb::SysvShm) -> Result<(), String> {
    let id = rec.id;
    let mut ds = stat(id).map_err(|e| format!("segment {id}: IPC_STAT: {e}"))?;
    ds.shm_perm.uid = rec.uid;
    ds.shm_perm.gid = rec.gid;
    ds.shm_perm.mode = (rec.mode & 0o777) as u16;
    // SAFETY: IPC_SET reads the shmid_ds we own.
    if unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) } < 0 {
        return Err(format!("segment {id}: IPC_SET: {}", std::io::Error::last_os_error()));
    }
    let (locked, want) = (u32::from(ds.shm_perm.mode) & SHM_LOCKED != 0, rec.mode & SHM_LOCKED != 0);
    if locked == want {
        return Ok(());
    }
    let lock = if want { libc::SHM_LOCK } else { libc::SHM_UNLOCK };
    // SAFETY: SHM_LOCK/SHM_UNLOCK take no buffer.
    if unsafe { libc::shmctl(id, lock, std::ptr::null_mut()) } < 0 {
        return Err(format!("segment {id}: SHM_LOCK/SHM_UNLOCK: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `IPC_RMID` of segment `id` (destroyed once unattached).
fn remove(id: i32) {
    // SAFETY: IPC_RMID takes no buffer.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
}

impl Handler for SysvShm {
    fn name(&self) -> RString {
        NAME.into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "memory: SysV shared memory attaches (shmat), with their segments' ids, keys, modes, owners and bytes".into()
    }

    fn hooks(&self) -> RString {
        "dump_finish, restore_finish".into()
    }

    fn claims_vma(&self, vma: &VmaDesc) -> bool {
        vma.ino != 0 && is_sysv(vma.name.as_str())
    }

    fn dump_vma(&self, task: TaskRef<'_>, vma: &VmaDesc) -> RResult<VmaDump, RString> {
        self.dump(task, vma).map_err(RString::from).into()
    }

    fn restore_vma(&self, task: TaskRef<'_>, vma: &VmaDesc, blob: RSlice<'_, u8>) -> RResult<VmaRestore, RString> {
        self.restore(task, vma, blob.as_slice()).map_err(RString::from).into()
    }

    fn dump_finish(&self, _ok: bool) {
        if let Ok(mut c) = self.copied.lock() {
            c.clear();
        }
    }

    fn restore_finish(&self, ok: bool) {
        let Ok(mut ready) = self.ready.lock() else { return };
        for (id, r) in std::mem::take(&mut *ready) {
            if (ok && r.dest) || (!ok && r.created) {
                remove(id);
            }
        }
    }
}
