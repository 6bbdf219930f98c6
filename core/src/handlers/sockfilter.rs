//! Classic BPF socket filters (`SO_ATTACH_FILTER`), on any socket: read
//! back with `SO_GET_FILTER` at dump, attached again (and locked, with
//! `SO_LOCK_FILTER`) at restore. An eBPF program attached with
//! `SO_ATTACH_BPF` cannot be read back and is refused.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::images::pb;

const SO_GET_FILTER: i32 = libc::SO_ATTACH_FILTER;
const SO_LOCK_FILTER: i32 = 44;
/// `struct sock_filter`: code (u16), jt, jf (u8), k (u32).
const INSN: usize = 8;

fn get(fd: BorrowedFd<'_>, buf: &mut [u8], len: &mut libc::socklen_t) -> std::io::Result<()> {
    // SAFETY: `buf` has room for `len` instructions of INSN bytes (0 asks for the count only).
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, SO_GET_FILTER, buf.as_mut_ptr().cast(), len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The filter attached to `fd`, if any.
pub fn dump(fd: BorrowedFd<'_>) -> Result<Option<pb::SockFilter>, String> {
    // SO_GET_FILTER counts in instructions: with 0 it says how many.
    let mut count: libc::socklen_t = 0;
    get(fd, &mut [], &mut count).map_err(|e| match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EINVAL) => {
            "it has an eBPF socket filter (SO_ATTACH_BPF), which cannot be read back; crt restores classic filters (SO_ATTACH_FILTER)".to_string()
        }
        _ => format!("reading its socket filter (SO_GET_FILTER): {e}"),
    })?;
    if count == 0 {
        return Ok(None);
    }
    let mut insns = vec![0u8; count as usize * INSN];
    let mut len = count;
    get(fd, &mut insns, &mut len).map_err(|e| format!("reading its socket filter (SO_GET_FILTER): {e}"))?;
    insns.truncate(len as usize * INSN);
    let mut locked: libc::c_int = 0;
    let mut l = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `locked` and `l` are valid out-pointers of the announced size.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_LOCK_FILTER,
            (&mut locked as *mut libc::c_int).cast(),
            &mut l,
        )
    };
    Ok(Some(pb::SockFilter { insns, locked: locked != 0 }))
}

/// Attaches `f` to `fd` (and locks it if it was).
pub fn restore(fd: BorrowedFd<'_>, f: &pb::SockFilter) -> Result<(), String> {
    let prog =
        libc::sock_fprog { len: (f.insns.len() / INSN) as u16, filter: f.insns.as_ptr() as *mut libc::sock_filter };
    // SAFETY: `prog` points at `len` instructions in `f.insns`, alive across the call; the kernel copies them.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(format!("attaching its socket filter again: {}", std::io::Error::last_os_error()));
    }
    if f.locked {
        let one: libc::c_int = 1;
        // SAFETY: passes a pointer to a live int of the announced size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_LOCK_FILTER,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(format!("locking its socket filter: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
