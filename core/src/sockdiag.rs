//! `NETLINK_SOCK_DIAG`: the kernel's table of sockets, one dump request per
//! family (`unix_diag`, `inet_diag`), and the socket inodes a forest holds.
//! The parsers of each family live with their handler.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY`: the request type of every family.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// A native-endian `u32` at byte `o` of `b` (0 past the end).
pub fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4).map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]])).unwrap_or(0)
}

/// A native-endian `u16` at byte `o` of `b` (0 past the end).
pub fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2).map(|s| u16::from_ne_bytes([s[0], s[1]])).unwrap_or(0)
}

fn os_err(what: &str) -> String {
    format!("sock_diag: {what}: {}", std::io::Error::last_os_error())
}

/// Sends one dump request (`req`: the family's request structure, after the
/// netlink header) and returns the body of every answer.
pub fn dump(req: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if raw < 0 {
        return Err(os_err("netlink socket"));
    }
    // SAFETY: `raw` was just created and is owned by nobody else.
    let nl = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut msg = Vec::with_capacity(16 + req.len());
    msg.extend_from_slice(&((16 + req.len()) as u32).to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    msg.extend_from_slice(req);
    // SAFETY: sends `msg.len()` initialised bytes from `msg`.
    if unsafe { libc::send(nl.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(os_err("send"));
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receives at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(os_err("recv"));
        }
        if n == 0 {
            return Ok(out);
        }
        let data = &buf[..n as usize];
        let mut off = 0usize;
        while off + 16 <= data.len() {
            let len = u32_at(data, off) as usize;
            if len < 16 || off + len > data.len() {
                break;
            }
            match u16_at(data, off + 4) {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = -(u32_at(data, off + 16) as i32);
                    return Err(format!("sock_diag: {}", std::io::Error::from_raw_os_error(errno)));
                }
                _ => out.push(data[off + 16..off + len].to_vec()),
            }
            off += (len + 3) & !3;
        }
    }
}

/// The netlink attributes of a message body from byte `start`: (type, payload).
pub fn attrs(m: &[u8], start: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = start;
    while off + 4 <= m.len() {
        let alen = u16_at(m, off) as usize;
        if alen < 4 || off + alen > m.len() {
            break;
        }
        out.push((u16_at(m, off + 2) & 0x3fff, &m[off + 4..off + alen]));
        off += (alen + 3) & !3;
    }
    out
}

/// `socket:[INO]` → INO.
pub fn socket_ino(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Socket inodes held by `pids`.
pub fn forest_sockets(pids: &[i32]) -> HashSet<u64> {
    let mut out = HashSet::new();
    for &pid in pids {
        let Ok(fds) = crate::procfs::fds(pid) else { continue };
        for fd in fds {
            if let Some(ino) = crate::procfs::link(pid, &format!("fd/{fd}")).ok().as_deref().and_then(socket_ino) {
                out.insert(ino);
            }
        }
    }
    out
}
