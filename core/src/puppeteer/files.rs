//! Phase A, files: every fd recreated by its handler (or shared with an
//! earlier fd of the same open file description), given back the status
//! flags common to every description (`fdstate.rs`)
//! and put at its number; then the locks the process took. Last of all,
//! after the credentials: leases and `SIGIO` owners
//! ([`Builder::set_leases_and_owners`]).

use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use super::{step, Builder, RestoreCtx, S_ARG};
use crate::collect::task_ref;
use crate::fdstate;
use crate::images::pb;
use crate::restore::RestoreError;

impl Builder {
    /// Recreates every fd and puts it at its number.
    pub(super) fn install_fds(&mut self, ctx: &mut RestoreCtx<'_>, task: &pb::Task) -> Result<(), RestoreError> {
        for f in &task.fds {
            let owned = self.open_fd(ctx, f)?;
            let got = self.install(owned)?;
            let target = f.fd as u64;
            let cloexec = if f.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            if got == target {
                let fl = if f.cloexec { libc::FD_CLOEXEC as u64 } else { 0 };
                self.p.call("fcntl(F_SETFD)", libc::SYS_fcntl, [got, libc::F_SETFD as u64, fl, 0, 0, 0])?;
            } else {
                self.p.call("dup3", libc::SYS_dup3, [got, target, cloexec, 0, 0, 0])?;
                self.close_remote(got)?;
            }
        }
        Ok(())
    }

    /// Takes back, from inside the process, the locks it holds through its
    /// fds (POSIX locks are its own; flock and OFD locks were taken by it).
    pub(super) fn take_locks(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        for f in &task.fds {
            for l in f.locks.iter().filter(|l| l.kind != pb::LockKind::LockLease as i32) {
                let r = if l.kind == pb::LockKind::LockFlock as i32 {
                    let op = if l.write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
                    self.p.syscall_raw("flock", libc::SYS_flock, [f.fd as u64, op as u64, 0, 0, 0, 0])?
                } else {
                    let at = self.scratch + S_ARG;
                    self.p.write(at, &fdstate::flock_bytes(l))?;
                    let cmd = if l.kind == pb::LockKind::LockOfd as i32 { libc::F_OFD_SETLK } else { libc::F_SETLK };
                    self.p.syscall_raw("fcntl(lock)", libc::SYS_fcntl, [f.fd as u64, cmd as u64, at, 0, 0, 0])?
                };
                if r < 0 {
                    return Err(self.fd_error(f, format!("taking back its {}: {}", fdstate::lock_name(l), errno(r))));
                }
            }
        }
        Ok(())
    }

    /// Leases, `SIGIO` owners and signals, set from inside the process
    /// with its own credentials, once every task and fd of the forest
    /// exists (an owner may be any process, and a lease must come after
    /// every open of its file).
    pub(super) fn set_leases_and_owners(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        let at = self.scratch + S_ARG;
        for f in &task.fds {
            let fd = f.fd as u64;
            for l in f.locks.iter().filter(|l| l.kind == pb::LockKind::LockLease as i32) {
                let ty = if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as u64;
                let r = self.p.syscall_raw(
                    "fcntl(F_SETLEASE)",
                    libc::SYS_fcntl,
                    [fd, libc::F_SETLEASE as u64, ty, 0, 0, 0],
                )?;
                if r < 0 {
                    return Err(self.fd_error(f, format!("taking back its {}: {}", fdstate::lock_name(l), errno(r))));
                }
            }
            let Some(st) = &f.state else { continue };
            if st.signum != 0 {
                let r = self.p.syscall_raw(
                    "fcntl(F_SETSIG)",
                    libc::SYS_fcntl,
                    [fd, fdstate::F_SETSIG as u64, st.signum as u64, 0, 0, 0],
                )?;
                if r < 0 {
                    return Err(self.fd_error(f, format!("setting F_SETSIG {}: {}", st.signum, errno(r))));
                }
            }
            if let Some(owner) = fdstate::owner_bytes(st) {
                self.p.write(at, &owner)?;
                let r = self.p.syscall_raw(
                    "fcntl(F_SETOWN_EX)",
                    libc::SYS_fcntl,
                    [fd, fdstate::F_SETOWN_EX as u64, at, 0, 0, 0],
                )?;
                if r < 0 {
                    let what =
                        format!("setting its SIGIO owner (type {}, pid {}): {}", st.owner_type, st.owner_pid, errno(r));
                    return Err(self.fd_error(f, what));
                }
            }
            if st.flags & libc::O_ASYNC as u32 != 0 {
                let fl = self.p.call("fcntl(F_GETFL)", libc::SYS_fcntl, [fd, libc::F_GETFL as u64, 0, 0, 0, 0])?;
                let set = [fd, libc::F_SETFL as u64, fl | libc::O_ASYNC as u64, 0, 0, 0];
                let r = self.p.syscall_raw("fcntl(F_SETFL)", libc::SYS_fcntl, set)?;
                if r < 0 {
                    return Err(self.fd_error(f, format!("setting O_ASYNC: {}", errno(r))));
                }
            }
        }

        Ok(())
    }

    fn fd_error(&self, f: &pb::Fd, msg: String) -> RestoreError {
        RestoreError::Handler {
            pid: self.pid,
            what: format!("fd {} ({})", f.fd, f.link),
            handler: f.handler.clone(),
            msg,
        }
    }

    /// The open file description for `f`, in crt's fd table.
    fn open_fd(&mut self, ctx: &mut RestoreCtx<'_>, f: &pb::Fd) -> Result<OwnedFd, RestoreError> {
        if let Some(existing) = ctx.files.get(&f.file_id).filter(|_| f.file_id != 0) {
            return existing.try_clone().map_err(step(self.pid, "duplicating a shared fd"));
        }
        if f.shared_ref {
            return Err(RestoreError::Handler {
                pid: self.pid,
                what: format!("fd {} ({})", f.fd, f.link),
                handler: f.handler.clone(),
                msg: format!("shares open file {} with an fd that is not in the image", f.file_id),
            });
        }
        let h = ctx.registry.by_name(&f.handler).ok_or_else(|| RestoreError::MissingHandler {
            name: f.handler.clone(),
            version: String::new(),
            provider: None,
        })?;
        let fd = h.restore_fd(task_ref(&mut self.p), f.fd, f.blob.as_slice().into()).into_result().map_err(|msg| {
            RestoreError::Handler {
                pid: self.pid,
                what: format!("fd {} ({})", f.fd, f.link),
                handler: f.handler.clone(),
                msg: msg.into_string(),
            }
        })?;
        // SAFETY: the handler hands us ownership of this fd.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Some(st) = &f.state {
            fdstate::apply_flags(owned.as_fd(), st).map_err(|msg| self.fd_error(f, msg))?;
        }
        if f.file_id != 0 {
            let keep = owned.try_clone().map_err(step(self.pid, "keeping a shared fd"))?;
            ctx.files.insert(f.file_id, keep);
        }
        Ok(owned)
    }
}

fn errno(r: i64) -> std::io::Error {
    std::io::Error::from_raw_os_error(-r as i32)
}
