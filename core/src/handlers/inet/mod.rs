//! Built-in handler for IPv4/IPv6 sockets: TCP listeners (bound address,
//! backlog, options), TCP connections with both ends in the forest (in
//! repair mode, [`tcp`]), and UDP sockets (bound, optionally connected).
//!
//! Refused, by name: a listener with connections waiting in its accept
//! queue, a connection whose other end is outside the forest (another
//! host, a process not dumped, a connection not yet accepted), a TCP state
//! other than those in [`tcp::RESTORABLE`], a UDP socket with datagrams
//! queued, and every other socket type.

mod diag;
mod sockopt;
mod tcp;

use std::collections::HashSet;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Mutex;

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::{boxed, Builtin, BUILTIN_VERSION};
use crate::images::pb;
use sockopt::getint;
pub use tcp::{end_repair, Tasks};

/// Per-dump state, read at the first IP socket of a dump (the forest is
/// frozen then), so a forest without any costs nothing.
struct DumpState {
    pids: Vec<i32>,
    /// Socket inodes held by the forest.
    forest: HashSet<u64>,
    /// Every TCP and UDP socket of the namespace.
    tcp: Vec<diag::Sock>,
    udp: Vec<diag::Sock>,
}

/// From `dump_checkpoint` to `dump_finish`: the forest, then its tables.
#[derive(Default)]
struct Dump {
    pids: Vec<i32>,
    state: Option<DumpState>,
}

/// `socket:[…]` of family AF_INET or AF_INET6 (asked after the unix handler).
#[derive(Default)]
pub struct Inet {
    dump: Mutex<Dump>,
    /// Restored connections to finish once every task's fds exist.
    pending: Mutex<Vec<tcp::Pending>>,
}

inventory::submit! { Builtin { priority: 140, make: || boxed(Inet::default()) } }

impl DumpState {
    /// Refuses a connection whose other end the forest does not hold.
    fn check_peer(&self, fd: &FdDesc, me: &diag::Sock) -> Result<(), String> {
        let what = format!("a TCP connection {} -> {} ({})", me.local, me.remote, diag::state_name(me.state));
        let candidates: Vec<&diag::Sock> =
            self.tcp.iter().filter(|t| t.local == me.remote && t.remote == me.local && t.ino != me.ino).collect();
        if candidates.iter().any(|t| t.ino != 0 && self.forest.contains(&t.ino)) {
            return Ok(());
        }
        let why = if let Some(p) = candidates.iter().find(|t| t.ino != 0) {
            let link = format!("socket:[{}]", p.ino);
            match crate::sharing::find_outside_holders(&[(fd.pid, fd.fd, link)], &self.pids) {
                Some(h) => format!(
                    "its other end is held by pid {} ({}) fd {}, which is not dumped; add --tree {} to dump both ends",
                    h.other_pid, h.other_comm, h.other_fd, h.other_pid
                ),
                None => "its other end is held by no process crt can see".into(),
            }
        } else if let Some(p) = candidates.first() {
            match p.state {
                diag::state::ESTABLISHED | diag::state::SYN_RECV => {
                    "its other end waits in a listener's accept queue (not yet accepted); retry when it is accepted"
                        .into()
                }
                s => format!("its other end was closed by its owner ({}, held by no fd)", diag::state_name(s)),
            }
        } else {
            "its other end is not on this host's network namespace (another host, or a container)".into()
        };
        Err(format!("{what}: {why}; crt restores TCP connections with both ends in the forest"))
    }

    /// The `inet_diag` entry of a connection fd, checked for a state crt rebuilds and a peer in the forest.
    fn connection(&self, fd: &FdDesc) -> Result<&diag::Sock, String> {
        let me = self
            .tcp
            .iter()
            .find(|t| t.ino == fd.ino)
            .ok_or_else(|| format!("TCP socket {} is missing from inet_diag", fd.link))?;
        if !tcp::RESTORABLE.contains(&me.state) {
            return Err(format!(
                "a TCP connection {} -> {} in state {}; crt rebuilds ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK and CLOSING",
                me.local,
                me.remote,
                diag::state_name(me.state)
            ));
        }
        self.check_peer(fd, me)?;
        Ok(me)
    }
}

/// A TCP socket `inet_diag` does not list is in state CLOSE: new (maybe
/// bound), or a connection that ended. Only the first is restored (a new
/// socket, bound again if it was); an ended one (reads EOF, writes EPIPE)
/// is refused. `tcpi_rcv_mss` is set when a connection is made.
fn never_connected(s: &OwnedFd) -> Result<(), String> {
    let info = sockopt::tcp_info(s.as_fd())?;
    if info.tcpi_state as u32 != diag::state::CLOSE || info.tcpi_rcv_mss != 0 {
        return Err(format!(
            "a TCP socket in state {} that inet_diag does not list (a connection that ended); crt cannot rebuild it",
            diag::state_name(info.tcpi_state as u32)
        ));
    }
    Ok(())
}

/// For a listener, TCP_INFO's unacked is the accept queue and sacked its limit.
fn listener_backlog(s: &OwnedFd) -> Result<i32, String> {
    let t = sockopt::tcp_info(s.as_fd())?;
    if t.tcpi_unacked > 0 {
        return Err(format!(
            "a TCP listener with {} connection(s) waiting to be accepted; crt cannot restore them — retry when they are accepted",
            t.tcpi_unacked
        ));
    }
    Ok(t.tcpi_sacked as i32)
}

impl Inet {
    /// Runs `f` on this dump's state, reading it first if needed.
    fn with_state<R>(&self, f: impl FnOnce(&DumpState) -> Result<R, String>) -> Result<R, String> {
        let mut d = self.dump.lock().map_err(|_| "inet dump state poisoned".to_string())?;
        if d.state.is_none() {
            d.state = Some(DumpState {
                forest: crate::sockdiag::forest_sockets(&d.pids),
                tcp: diag::all(libc::IPPROTO_TCP)?,
                udp: diag::all(libc::IPPROTO_UDP)?,
                pids: d.pids.clone(),
            });
        }
        f(d.state.as_ref().ok_or("inet: no dump state")?)
    }

    fn dump_socket(&self, task: &mut TaskRef<'_>, fd: &FdDesc) -> Result<pb::InetSocket, String> {
        let copy = task.take_fd(fd.fd).into_result().map_err(|e| e.to_string())?;
        // SAFETY: take_fd hands us ownership of a new fd.
        let s = unsafe { OwnedFd::from_raw_fd(copy) };
        let b = s.as_fd();
        let family = getint(b, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
        if family != libc::AF_INET && family != libc::AF_INET6 {
            return Err(format!("a socket of address family {family}; crt handles unix, IPv4 and IPv6 sockets"));
        }
        let typ = getint(b, libc::SOL_SOCKET, libc::SO_TYPE)?;
        let protocol = getint(b, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
        let listening = getint(b, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 1;
        let mut backlog = 0;
        let mut conn = None;
        let mut shutdown = 0;
        if typ == libc::SOCK_STREAM && listening {
            backlog = listener_backlog(&s)?;
        } else if typ == libc::SOCK_STREAM {
            conn = self.with_state(|st| {
                if st.tcp.iter().any(|t| t.ino == fd.ino && t.state != diag::state::CLOSE) {
                    return Ok(Some(tcp::dump(&s, st.connection(fd)?)?));
                }
                never_connected(&s).map(|()| None)
            })?;
        } else if typ == libc::SOCK_DGRAM {
            if sockopt::ioctl_int(b, libc::FIONREAD)? > 0 {
                return Err(
                    "a UDP socket with datagrams queued; crt does not store UDP queues yet — retry when they are read"
                        .into(),
                );
            }
            shutdown =
                self.with_state(|st| Ok(st.udp.iter().find(|u| u.ino == fd.ino).map_or(0, |u| u.shutdown as u32)))?;
        } else {
            return Err(format!("an IP socket of type {typ}; crt handles TCP and UDP sockets"));
        }
        if !sockopt::get_bytes(b, libc::IPPROTO_IP, libc::IP_OPTIONS, 40).unwrap_or_default().is_empty() {
            return Err("it has IP options (IP_OPTIONS); crt does not restore them".into());
        }
        let ext = [libc::IPV6_HOPOPTS, libc::IPV6_RTHDR, libc::IPV6_DSTOPTS, libc::IPV6_RTHDRDSTOPTS];
        if family == libc::AF_INET6
            && ext.iter().any(|&o| !sockopt::get_bytes(b, libc::IPPROTO_IPV6, o, 256).unwrap_or_default().is_empty())
        {
            return Err(
                "it has IPv6 extension headers (IPV6_HOPOPTS, RTHDR or DSTOPTS); crt does not restore them".into()
            );
        }
        let (options, raw_options, buffers) = sockopt::read_all(b, family, typ == libc::SOCK_STREAM);
        let connected = typ == libc::SOCK_DGRAM || conn.is_some();
        Ok(pb::InetSocket {
            family,
            r#type: typ,
            protocol,
            local: sockopt::addr(b, false),
            peer: if connected { sockopt::addr(b, true) } else { Vec::new() },
            listening,
            backlog,
            flags: fd.flags,
            options,
            raw_options,
            buffers,
            conn,
            filter: super::sockfilter::dump(b)?,
            shutdown,
        })
    }

    fn restore_socket(&self, m: &pb::InetSocket) -> Result<i32, String> {
        // SAFETY: socket takes integers only.
        let raw = unsafe { libc::socket(m.family, m.r#type | libc::SOCK_CLOEXEC, m.protocol) };
        if raw < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: just created, owned here.
        let s = unsafe { OwnedFd::from_raw_fd(raw) };
        let b = s.as_fd();
        sockopt::apply(b, &m.options, &m.raw_options)?;
        if let Some(c) = &m.conn {
            let p = tcp::restore(&s, m, c)?;
            if let Some(f) = &m.filter {
                super::sockfilter::restore(b, f)?;
            }
            self.pending.lock().map_err(|_| "inet restore state poisoned".to_string())?.push(p);
            return Ok(s.into_raw_fd());
        }
        sockopt::apply_buffers(b, &m.buffers)?;
        bind_and_listen(&s, m).map_err(|e| format!("binding the socket to its address again (and listening): {e}"))?;
        if !m.peer.is_empty() {
            sockopt::bind_or_connect(b, &m.peer, true).map_err(|e| format!("connecting the UDP socket again: {e}"))?;
        }
        if let Some(f) = &m.filter {
            super::sockfilter::restore(b, f)?;
        }
        shut(&s, m.shutdown)?;
        Ok(s.into_raw_fd())
    }
}

/// `shutdown(2)` a UDP socket the way it was (`how`: 1 read, 2 write); an
/// unconnected one says ENOTCONN but is shut all the same.
fn shut(s: &OwnedFd, how: u32) -> Result<(), String> {
    let how = match how & 3 {
        0 => return Ok(()),
        1 => libc::SHUT_RD,
        2 => libc::SHUT_WR,
        _ => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown takes integers only.
    if unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(s), how) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOTCONN) {
            return Err(format!("shutdown again: {e}"));
        }
    }
    Ok(())
}

/// Binds `s` to its address (unless it never was: port 0) and listens if
/// it did. A connection accepted from a listener shares its port; restored
/// first (repair mode binds regardless), it makes the listener's bind fail
/// unless `SO_REUSEADDR` is on for the bind only. An address bound with
/// `IP_FREEBIND`, since turned off, binds with it on.
fn bind_and_listen(s: &OwnedFd, m: &pb::InetSocket) -> std::io::Result<()> {
    let b = s.as_fd();
    let bound = sockopt::show_addr(&m.local).is_some_and(|a| a.port() != 0);
    let place = || -> std::io::Result<()> {
        if bound {
            sockopt::bind_or_connect(b, &m.local, false)?;
        }
        // SAFETY: listen takes integers only.
        if m.listening && unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(s), m.backlog.max(1)) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    let errno = |r: &std::io::Result<()>| r.as_ref().err().and_then(std::io::Error::raw_os_error);
    let r = place();
    if bound
        && errno(&r) == Some(libc::EADDRINUSE)
        && m.r#type == libc::SOCK_STREAM
        && getint(b, libc::SOL_SOCKET, libc::SO_REUSEADDR) == Ok(0)
    {
        return with_option(b, libc::SOL_SOCKET, libc::SO_REUSEADDR, place);
    }
    if bound && errno(&r) == Some(libc::EADDRNOTAVAIL) {
        return with_option(b, libc::IPPROTO_IP, libc::IP_FREEBIND, place);
    }
    r
}

/// Runs `f` with the boolean option `name` on, then off again.
fn with_option(
    b: std::os::fd::BorrowedFd<'_>,
    level: i32,
    name: i32,
    f: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<()> {
    sockopt::setint(b, level, name, 1).map_err(std::io::Error::other)?;
    let r = f();
    sockopt::setint(b, level, name, 0).map_err(std::io::Error::other)?;
    r
}

impl Handler for Inet {
    fn name(&self) -> RString {
        "inet".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: IPv4/IPv6 TCP listeners, TCP connections within the forest (TCP_REPAIR), UDP sockets".into()
    }

    fn hooks(&self) -> RString {
        "dump_checkpoint, dump_finish, restore_resume, restore_finish".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.file_type() == libc::S_IFSOCK && fd.link.starts_with("socket:[")
    }

    fn dump_checkpoint(&self, pids: RSlice<'_, i32>) -> RResult<(), RString> {
        match self.dump.lock() {
            Ok(mut d) => {
                *d = Dump { pids: pids.to_vec(), state: None };
                RResult::ROk(())
            }
            Err(_) => RResult::RErr("inet dump state poisoned".into()),
        }
    }

    fn dump_fd(&self, mut task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        self.dump_socket(&mut task, fd).map(|m| RVec::from(m.encode_to_vec())).map_err(RString::from).into()
    }

    fn dump_finish(&self, _ok: bool) {
        // The core ended repair mode before it released or killed the tasks; this is the safety net.
        end_repair(Tasks::RunOn);
        if let Ok(mut d) = self.dump.lock() {
            *d = Dump::default();
        }
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r = pb::InetSocket::decode(blob.as_slice())
            .map_err(|e| format!("corrupt inet record: {e}"))
            .and_then(|m| self.restore_socket(&m));
        r.map_err(RString::from).into()
    }

    fn restore_resume(&self, _task: TaskRef<'_>) -> RResult<(), RString> {
        // Every task's fds exist by the first call: both ends of each connection.
        let r = match self.pending.lock() {
            Ok(mut p) => tcp::release(std::mem::take(&mut *p)),
            Err(_) => Err("inet restore state poisoned".into()),
        };
        r.map_err(RString::from).into()
    }

    fn restore_finish(&self, _ok: bool) {
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
    }
}
