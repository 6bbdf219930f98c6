//! What the kernel keeps for every open file description, whatever its
//! kind, and per fd: status flags (`F_GETFL`), the `SIGIO` owner and signal
//! (`F_GETOWN_EX`, `F_GETSIG`), the lease, and file locks (flock and OFD
//! locks belong to the description, POSIX locks to the process).
//!
//! Handlers recreate the object behind an fd; this module puts this common
//! state back on top, and checks that it took, so that no handler can
//! silently drop an `O_NONBLOCK` or a lock:
//!
//! - dump: [`dump`], from a copy of the fd (`pidfd_getfd`, the same
//!   description) and the `lock:` lines of its fdinfo;
//! - restore, on crt's copy before it is installed: [`apply_flags`];
//!   inside the task that took them (so the kernel shows the same pid),
//!   once its fds are in place: POSIX, flock and OFD locks; last, after
//!   credentials: leases, owner and signal (see `puppeteer/files.rs`).

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::images::pb;
use crate::procfs::FdInfo;

/// Status flags crt sets with `F_SETFL` on its copy of a description.
/// (`O_ASYNC` is set later from inside the task: the kernel records the fd
/// number that set it and reports it as `si_fd` with every `SIGIO`.)
pub const SETTABLE: u32 = (libc::O_APPEND | libc::O_DIRECT | libc::O_NOATIME | libc::O_NONBLOCK) as u32;

/// Flags compared between the dumped and the restored description: the
/// access mode, the settable flags, and those fixed at open.
pub const COMPARED: u32 =
    SETTABLE | (libc::O_ASYNC | libc::O_ACCMODE | libc::O_SYNC | libc::O_DSYNC | libc::O_PATH) as u32;

/// `fcntl(F_GETOWN_EX)`: the owner as `{type, pid}` (`F_OWNER_TID` 0,
/// `F_OWNER_PID` 1, `F_OWNER_PGRP` 2).
const F_GETOWN_EX: i32 = 16;
/// `fcntl(F_SETOWN_EX)`.
pub const F_SETOWN_EX: i32 = 15;
/// `fcntl(F_SETSIG)`, `fcntl(F_GETSIG)`.
pub const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;

/// What [`dump`] found for one fd.
#[derive(Debug, Default)]
pub struct Dumped {
    /// Description state (for the first fd of a description).
    pub state: Option<pb::FdState>,
    /// Locks to take back through this fd: the process's own POSIX locks,
    /// and (first fd of a description) its flock and OFD locks and lease.
    pub locks: Vec<pb::FileLock>,
}

/// Reads the common state of `pid`'s fd `fd`; `copy` is crt's copy of it.
/// `first` says this is the first fd of its description in the forest
/// (description state is recorded once). Refuses what crt cannot restore.
pub fn dump(pid: i32, fd: i32, info: &FdInfo, copy: BorrowedFd<'_>, first: bool) -> Result<Dumped, String> {
    let mut out = Dumped::default();
    for l in &info.locks {
        let lock = |kind: pb::LockKind| pb::FileLock {
            kind: kind as i32,
            write: l.write,
            start: l.start,
            end: l.end.unwrap_or(-1),
            pid: l.pid,
        };
        let kind = match l.kind.as_str() {
            // Shown on this fd when this process owns it; with a shared fd
            // table, recorded by the process that took it.
            "POSIX" if l.pid == pid || l.pid <= 0 => pb::LockKind::LockPosix,
            "POSIX" => continue,
            "FLOCK" | "OFDLCK" | "LEASE" if !first => continue,
            "FLOCK" => pb::LockKind::LockFlock,
            "OFDLCK" => pb::LockKind::LockOfd,
            "LEASE" if l.state == "ACTIVE" => pb::LockKind::LockLease,
            "LEASE" => {
                return Err(format!(
                    "fd {fd}: its lease is being broken ({}): another process opened the file and waits for the lease holder; crt can dump it once the lease break is over",
                    l.state
                ))
            }
            other => return Err(format!("fd {fd}: holds a {other} lock, which crt cannot restore")),
        };
        out.locks.push(lock(kind));
    }
    if !first {
        return Ok(out);
    }
    let mut state = pb::FdState { flags: info.flags & COMPARED, ..Default::default() };
    if info.flags & libc::O_PATH as u32 == 0 {
        let mut owner = [0i32; 2];
        // SAFETY: F_GETOWN_EX writes a struct f_owner_ex (two ints) to `owner`.
        let r = unsafe { libc::fcntl(copy.as_raw_fd(), F_GETOWN_EX, owner.as_mut_ptr()) };
        if r == 0 && owner[1] != 0 {
            (state.owner_type, state.owner_pid) = (owner[0], owner[1]);
        }
        // SAFETY: F_GETSIG takes no argument.
        let sig = unsafe { libc::fcntl(copy.as_raw_fd(), F_GETSIG) };
        state.signum = sig.max(0);
    }
    out.state = Some(state);
    Ok(out)
}

/// Moves each description's lock or lease to an fd of the process that
/// took it (the pid the kernel shows), when that process holds the
/// description too, so the lock comes back with the same pid.
pub fn assign_lock_takers(tasks: &mut [&mut pb::Task]) {
    // (task, fd, lock) to move to (task, fd).
    type Move = ((usize, usize, usize), (usize, usize));
    let mut moves: Vec<Move> = Vec::new();
    for (ti, t) in tasks.iter().enumerate() {
        for (fi, f) in t.fds.iter().enumerate() {
            for (li, l) in f.locks.iter().enumerate() {
                if l.kind == pb::LockKind::LockPosix as i32 || l.pid == t.pid || l.pid <= 0 || f.file_id == 0 {
                    continue;
                }
                let Some(ui) = tasks.iter().position(|u| u.pid == l.pid) else { continue };
                if let Some(gi) = tasks[ui].fds.iter().position(|g| g.file_id == f.file_id) {
                    moves.push(((ti, fi, li), (ui, gi)));
                }
            }
        }
    }
    // Removed last first, so earlier indices stay valid.
    for &((ti, fi, li), (ui, gi)) in moves.iter().rev() {
        let l = tasks[ti].fds[fi].locks.remove(li);
        tasks[ui].fds[gi].locks.push(l);
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// `struct flock` for `F_SETLK` / `F_OFD_SETLK`, as bytes (x86_64 layout).
pub fn flock_bytes(l: &pb::FileLock) -> [u8; 32] {
    let ty: i16 = if l.write { libc::F_WRLCK as i16 } else { libc::F_RDLCK as i16 };
    let len: i64 = if l.end < 0 { 0 } else { l.end - l.start + 1 };
    let mut b = [0u8; 32];
    b[0..2].copy_from_slice(&ty.to_le_bytes());
    b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
    b[8..16].copy_from_slice(&l.start.to_le_bytes());
    b[16..24].copy_from_slice(&len.to_le_bytes());
    b
}

/// Puts the status flags on crt's copy `fd` of a restored description,
/// and checks they took.
pub fn apply_flags(fd: BorrowedFd<'_>, st: &pb::FdState) -> Result<(), String> {
    let raw = fd.as_raw_fd();
    // SAFETY: F_GETFL takes no argument.
    let have = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if have < 0 {
        return Err(format!("F_GETFL: {}", errno()));
    }
    let have = have as u32;
    if have & libc::O_PATH as u32 == 0 && have & SETTABLE != st.flags & SETTABLE {
        let want = (have & !SETTABLE) | (st.flags & SETTABLE);
        // SAFETY: F_SETFL takes an int.
        if unsafe { libc::fcntl(raw, libc::F_SETFL, want as libc::c_int) } < 0 {
            return Err(format!("setting open flags {:#o}: {}", st.flags & SETTABLE, errno()));
        }
    }
    // SAFETY: F_GETFL takes no argument.
    let now = unsafe { libc::fcntl(raw, libc::F_GETFL) } as u32;
    let compared = COMPARED & !(libc::O_ASYNC as u32);
    if now & compared != st.flags & compared {
        return Err(format!(
            "open flags are {:#o} after restore, {:#o} at dump time (access mode, O_APPEND, O_NONBLOCK, O_ASYNC, O_DIRECT, O_NOATIME, O_SYNC, O_DSYNC, O_PATH)",
            now & compared,
            st.flags & compared
        ));
    }
    Ok(())
}

/// `flock LOCK_EX`, `OFD write lock on bytes 0-EOF`, … for messages.
pub fn lock_name(l: &pb::FileLock) -> String {
    let rw = if l.write { "write" } else { "read" };
    let range = if l.end < 0 { format!("{}-EOF", l.start) } else { format!("{}-{}", l.start, l.end) };
    match pb::LockKind::try_from(l.kind) {
        Ok(pb::LockKind::LockFlock) => format!("flock {}", if l.write { "LOCK_EX" } else { "LOCK_SH" }),
        Ok(pb::LockKind::LockOfd) => format!("OFD {rw} lock on bytes {range}"),
        Ok(pb::LockKind::LockLease) => format!("{rw} lease"),
        _ => format!("POSIX {rw} lock on bytes {range}"),
    }
}

/// The `F_SETOWN_EX` argument for a restored description, if it had an owner.
pub fn owner_bytes(st: &pb::FdState) -> Option<[u8; 8]> {
    (st.owner_pid != 0).then(|| {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&st.owner_type.to_le_bytes());
        b[4..].copy_from_slice(&st.owner_pid.to_le_bytes());
        b
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flock_layout() {
        let l = pb::FileLock { kind: pb::LockKind::LockPosix as i32, write: true, start: 10, end: 19, pid: 1 };
        let b = flock_bytes(&l);
        assert_eq!(i16::from_le_bytes([b[0], b[1]]), libc::F_WRLCK as i16);
        assert_eq!(i64::from_le_bytes(b[8..16].try_into().unwrap_or_default()), 10);
        assert_eq!(i64::from_le_bytes(b[16..24].try_into().unwrap_or_default()), 10);
        let eof = pb::FileLock { end: -1, ..l };
        assert_eq!(i64::from_le_bytes(flock_bytes(&eof)[16..24].try_into().unwrap_or_default()), 0);
        assert_eq!(std::mem::size_of::<libc::flock>(), 32);
    }
}
