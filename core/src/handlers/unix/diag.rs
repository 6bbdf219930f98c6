//! `NETLINK_SOCK_DIAG` / `unix_diag`: every AF_UNIX socket of crt's network
//! namespace with its type, state, bound name, socket-file inode, peer,
//! pending connections, queue lengths and shutdown state.

use std::collections::HashMap;

use crate::sockdiag::{self, u32_at};

const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UDIAG_SHOW_UID: u32 = 0x40;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const UNIX_DIAG_UID: u16 = 7;

/// `sk_state` of a listening socket.
pub const TCP_LISTEN: u8 = 10;
/// `sk_state` of a connected socket.
pub const TCP_ESTABLISHED: u8 = 1;

/// One unix socket as `unix_diag` reports it.
#[derive(Debug, Clone, Default)]
pub struct Sock {
    /// Socket inode (`socket:[ino]`).
    pub ino: u64,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`.
    pub typ: u8,
    /// `TCP_*` state.
    pub state: u8,
    /// Bound name: a path or `\0abstract`; empty when unbound (or for accepted sockets, the listener's).
    pub name: Vec<u8>,
    /// Inode and device of the socket file (pathname-bound sockets that did bind themselves).
    pub vfs: Option<(u64, u32)>,
    /// Peer inode (0: none, or the peer is gone or not yet accepted).
    pub peer: u64,
    /// A listener's pending connections: the clients' inodes, in queue order.
    pub icons: Vec<u64>,
    /// Listener: (pending connections, backlog). Others: (bytes to read, bytes sent not yet read).
    pub rqlen: (u32, u32),
    /// `sk_shutdown`: 1 RCV_SHUTDOWN, 2 SEND_SHUTDOWN.
    pub shutdown: u8,
    /// Owner uid of the socket.
    pub uid: u32,
}

/// Every unix socket of this network namespace, by inode.
pub fn all() -> Result<HashMap<u64, Sock>, String> {
    let mut req = Vec::with_capacity(24);
    req.push(libc::AF_UNIX as u8); // sdiag_family
    req.push(0); // sdiag_protocol
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // udiag_states: all
    req.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN | UDIAG_SHOW_UID;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0u8; 8]); // cookie
    let answers = sockdiag::dump(&req).map_err(|e| format!("unix_diag (is CONFIG_UNIX_DIAG on?): {e}"))?;
    Ok(answers.iter().filter_map(|m| parse(m)).map(|s| (s.ino, s)).collect())
}

fn parse(m: &[u8]) -> Option<Sock> {
    if m.len() < 16 {
        return None;
    }
    let mut s = Sock { typ: m[1], state: m[2], ino: u32_at(m, 4) as u64, ..Default::default() };
    for (atype, d) in sockdiag::attrs(m, 16) {
        match atype {
            UNIX_DIAG_NAME => {
                s.name = d.to_vec();
                // A path comes with its terminating NUL; an abstract name is taken as is.
                if s.name.first().is_some_and(|&c| c != 0) {
                    while s.name.last() == Some(&0) {
                        s.name.pop();
                    }
                }
            }
            UNIX_DIAG_VFS => s.vfs = Some((u32_at(d, 0) as u64, u32_at(d, 4))),
            UNIX_DIAG_PEER => s.peer = u32_at(d, 0) as u64,
            UNIX_DIAG_ICONS => s.icons = d.chunks_exact(4).map(|c| u32_at(c, 0) as u64).collect(),
            UNIX_DIAG_RQLEN => s.rqlen = (u32_at(d, 0), u32_at(d, 4)),
            UNIX_DIAG_SHUTDOWN => s.shutdown = d.first().copied().unwrap_or(0),
            UNIX_DIAG_UID => s.uid = u32_at(d, 0),
            _ => {}
        }
    }
    Some(s)
}

/// A socket name for messages: `@abstract` or the path.
pub fn show_name(name: &[u8]) -> String {
    match name.first() {
        None => "(unbound)".into(),
        Some(0) => format!("@{}", String::from_utf8_lossy(&name[1..])),
        Some(_) => String::from_utf8_lossy(name).into_owned(),
    }
}
