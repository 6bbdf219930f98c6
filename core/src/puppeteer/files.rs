//! Phase A, files: every fd recreated by its handler (or shared with an
//! earlier fd of the same open file description) and put at its number.

use std::os::fd::{FromRawFd, OwnedFd};

use super::{step, Builder, RestoreCtx};
use crate::collect::task_ref;
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
        if f.file_id != 0 {
            let keep = owned.try_clone().map_err(step(self.pid, "keeping a shared fd"))?;
            ctx.files.insert(f.file_id, keep);
        }
        Ok(owned)
    }
}
