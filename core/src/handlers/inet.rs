//! Built-in handler for IPv4/IPv6 sockets that need no TCP repair: TCP
//! listeners (bound address, backlog, options) and UDP sockets (bound,
//! optionally connected). A listener with connections waiting in its
//! accept queue, an established or closing TCP connection, and a UDP socket
//! with datagrams queued are refused: their state lives in the kernel's
//! TCP stack and crt does not use TCP_REPAIR.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::{boxed, Builtin, BUILTIN_VERSION};
use crate::images::pb;

/// `socket:[…]` of family AF_INET or AF_INET6 (asked after the unix handler).
pub struct Inet;

inventory::submit! { Builtin { priority: 140, make: || boxed(Inet) } }

/// Options copied as plain integers.
const OPTIONS: [(i32, i32); 7] = [
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_BROADCAST),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
];

fn getint(fd: &OwnedFd, level: i32, name: i32) -> Result<i32, String> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid out-pointers of the announced size.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&mut v as *mut libc::c_int).cast(), &mut len) };
    if r != 0 {
        return Err(format!("getsockopt({level}, {name}): {}", std::io::Error::last_os_error()));
    }
    Ok(v)
}

fn setint(fd: &OwnedFd, level: i32, name: i32, v: i32) -> Result<(), String> {
    // SAFETY: passes a pointer to a live int of the announced size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if r != 0 {
        return Err(format!("setsockopt({level}, {name}): {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// getsockname / getpeername as raw bytes (empty when not connected).
fn addr(fd: &OwnedFd, peer: bool) -> Vec<u8> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast();
    let r = if peer {
        // SAFETY: `ss` and `len` are valid out-pointers of the announced size.
        unsafe { libc::getpeername(fd.as_raw_fd(), p, &mut len) }
    } else {
        // SAFETY: as above.
        unsafe { libc::getsockname(fd.as_raw_fd(), p, &mut len) }
    };
    if r != 0 {
        return Vec::new();
    }
    // SAFETY: the kernel filled `len` bytes of `ss`.
    unsafe { std::slice::from_raw_parts((&ss as *const libc::sockaddr_storage).cast::<u8>(), len as usize) }.to_vec()
}

fn dump(task: &mut TaskRef<'_>, fd: &FdDesc) -> Result<pb::InetSocket, String> {
    let copy = task.take_fd(fd.fd).into_result().map_err(|e| e.to_string())?;
    // SAFETY: take_fd hands us ownership of a new fd.
    let s = unsafe { OwnedFd::from_raw_fd(copy) };
    let family = getint(&s, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return Err(format!("a socket of address family {family}; crt handles unix, IPv4 and IPv6 sockets"));
    }
    let typ = getint(&s, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let protocol = getint(&s, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let listening = getint(&s, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 1;
    let mut backlog = 0;
    if typ == libc::SOCK_STREAM {
        if !listening {
            return Err("an established (or connecting, closing) TCP connection; crt does not restore TCP connections (no TCP_REPAIR)".into());
        }
        // For a listener, TCP_INFO's unacked is the accept queue and sacked its limit.
        // SAFETY: all-zero is a valid tcp_info.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` and `len` are valid out-pointers of the announced size.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(format!("TCP_INFO: {}", std::io::Error::last_os_error()));
        }
        if info.tcpi_unacked > 0 {
            return Err(format!(
                "a TCP listener with {} connection(s) waiting to be accepted; crt cannot restore them — retry when they are accepted",
                info.tcpi_unacked
            ));
        }
        backlog = info.tcpi_sacked as i32;
    } else if typ == libc::SOCK_DGRAM {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut queued) };
        if queued > 0 {
            return Err(
                "a UDP socket with datagrams queued; crt does not store UDP queues yet — retry when they are read"
                    .into(),
            );
        }
    } else {
        return Err(format!("an IP socket of type {typ}; crt handles TCP listeners and UDP sockets"));
    }
    let options = OPTIONS
        .iter()
        .filter_map(|&(level, name)| getint(&s, level, name).ok().map(|value| pb::SockOpt { level, name, value }))
        .filter(|o| !(o.level == libc::IPPROTO_TCP && typ != libc::SOCK_STREAM))
        .collect();
    let mut v6only = Vec::new();
    if family == libc::AF_INET6 {
        if let Ok(value) = getint(&s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) {
            v6only.push(pb::SockOpt { level: libc::IPPROTO_IPV6, name: libc::IPV6_V6ONLY, value });
        }
    }
    let mut all: Vec<pb::SockOpt> = v6only;
    all.extend::<Vec<pb::SockOpt>>(options);
    Ok(pb::InetSocket {
        family,
        r#type: typ,
        protocol,
        local: addr(&s, false),
        peer: if typ == libc::SOCK_DGRAM { addr(&s, true) } else { Vec::new() },
        listening,
        backlog,
        flags: fd.flags,
        options: all,
    })
}

fn restore(m: &pb::InetSocket) -> Result<i32, String> {
    // SAFETY: socket takes integers only.
    let raw = unsafe { libc::socket(m.family, m.r#type | libc::SOCK_CLOEXEC, m.protocol) };
    if raw < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: just created, owned here.
    let s = unsafe { OwnedFd::from_raw_fd(raw) };
    for o in &m.options {
        let _ = setint(&s, o.level, o.name, o.value);
    }
    let sa = |b: &[u8]| -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let n = b.len().min(size_of::<libc::sockaddr_storage>());
        // SAFETY: copies `n` bytes into `ss`, which has room for them.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(), n) };
        (ss, n as libc::socklen_t)
    };
    if !m.local.is_empty() {
        let (ss, len) = sa(&m.local);
        // SAFETY: `ss` holds a sockaddr of `len` bytes.
        if unsafe { libc::bind(s.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return Err(format!("binding the socket to its address again: {}", std::io::Error::last_os_error()));
        }
    }
    if m.listening {
        // SAFETY: listen takes integers only.
        if unsafe { libc::listen(s.as_raw_fd(), m.backlog.max(1)) } != 0 {
            return Err(format!("listen: {}", std::io::Error::last_os_error()));
        }
    }
    if !m.peer.is_empty() {
        let (ss, len) = sa(&m.peer);
        // SAFETY: `ss` holds a sockaddr of `len` bytes.
        if unsafe { libc::connect(s.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return Err(format!("connecting the UDP socket again: {}", std::io::Error::last_os_error()));
        }
    }
    let fd = s.into_raw_fd();
    // SAFETY: fcntl on the fd we own.
    unsafe { libc::fcntl(fd, libc::F_SETFL, m.flags as i32 & libc::O_NONBLOCK) };
    Ok(fd)
}

impl Handler for Inet {
    fn name(&self) -> RString {
        "inet".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: IPv4/IPv6 TCP listeners and UDP sockets (no TCP connections)".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.file_type() == libc::S_IFSOCK && fd.link.starts_with("socket:[")
    }

    fn dump_fd(&self, mut task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        dump(&mut task, fd).map(|m| RVec::from(m.encode_to_vec())).map_err(RString::from).into()
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r = pb::InetSocket::decode(blob.as_slice())
            .map_err(|e| format!("corrupt inet record: {e}"))
            .and_then(|m| restore(&m));
        r.map_err(RString::from).into()
    }
}
