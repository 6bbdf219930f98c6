//! `inet_diag`: every TCP or UDP socket of crt's network namespace (IPv4
//! and IPv6), with its state, addresses, owner inode and shutdown state, so
//! the dump can tell whether the other end of a connection is in the forest
//! and which way a socket was shut.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::sockdiag::{self, u32_at};

const INET_DIAG_SHUTDOWN: u16 = 8;

/// `sk_state` values (include/net/tcp_states.h).
pub mod state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const TIME_WAIT: u32 = 6;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
}

/// The kernel's name of a TCP state.
pub fn state_name(s: u32) -> &'static str {
    match s {
        state::ESTABLISHED => "ESTABLISHED",
        state::SYN_SENT => "SYN_SENT",
        state::SYN_RECV => "SYN_RECV",
        state::FIN_WAIT1 => "FIN_WAIT1",
        state::FIN_WAIT2 => "FIN_WAIT2",
        state::TIME_WAIT => "TIME_WAIT",
        state::CLOSE => "CLOSE",
        state::CLOSE_WAIT => "CLOSE_WAIT",
        state::LAST_ACK => "LAST_ACK",
        state::LISTEN => "LISTEN",
        state::CLOSING => "CLOSING",
        _ => "unknown",
    }
}

/// One TCP (or UDP) socket.
#[derive(Debug, Clone)]
pub struct Sock {
    /// Socket inode; 0 for a connection no fd holds (not yet accepted, orphaned, TIME_WAIT).
    pub ino: u64,
    pub state: u32,
    /// Local and remote address (v4-mapped IPv6 addresses as IPv4).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `sk_shutdown`: 1 RCV_SHUTDOWN, 2 SEND_SHUTDOWN.
    pub shutdown: u8,
}

fn ip(family: u8, b: &[u8]) -> IpAddr {
    if family as i32 == libc::AF_INET {
        return Ipv4Addr::new(b[0], b[1], b[2], b[3]).into();
    }
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    let v6 = Ipv6Addr::from(a);
    v6.to_ipv4_mapped().map(Into::into).unwrap_or(v6.into())
}

fn parse(m: &[u8]) -> Option<Sock> {
    // inet_diag_msg: family, state, timer, retrans, id (48 bytes), expires, rqueue, wqueue, uid, inode.
    if m.len() < 72 {
        return None;
    }
    let family = m[0];
    let sport = u16::from_be_bytes([m[4], m[5]]);
    let dport = u16::from_be_bytes([m[6], m[7]]);
    let mut t = Sock {
        ino: u32_at(m, 68) as u64,
        state: m[1] as u32,
        local: SocketAddr::new(ip(family, &m[8..24]), sport),
        remote: SocketAddr::new(ip(family, &m[24..40]), dport),
        shutdown: 0,
    };
    for (typ, d) in sockdiag::attrs(m, 72) {
        if typ == INET_DIAG_SHUTDOWN {
            t.shutdown = d.first().copied().unwrap_or(0);
        }
    }
    Some(t)
}

/// Every socket of `protocol` (`IPPROTO_TCP`, `IPPROTO_UDP`) of this
/// network namespace, IPv4 then IPv6.
pub fn all(protocol: i32) -> Result<Vec<Sock>, String> {
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let mut req = Vec::with_capacity(56);
        req.push(family as u8); // sdiag_family
        req.push(protocol as u8); // sdiag_protocol
        req.push(0); // idiag_ext
        req.push(0); // pad
        req.extend_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: all
        req.extend_from_slice(&[0u8; 48]); // id: any
        let answers = sockdiag::dump(&req).map_err(|e| format!("inet_diag (is CONFIG_INET_DIAG on?): {e}"))?;
        out.extend(answers.iter().filter_map(|m| parse(m)));
    }
    Ok(out)
}
