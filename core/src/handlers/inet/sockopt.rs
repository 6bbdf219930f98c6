//! Socket options, addresses and ioctls of IPv4/IPv6 sockets, on fds of
//! crt's own: what every kind of inet socket reads at dump and sets again.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::images::pb;

/// Options copied as plain integers, set before bind.
pub const INTS: [(i32, i32); 9] = [
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_BROADCAST),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE),
    (libc::SOL_SOCKET, libc::SO_MARK),
    (libc::SOL_SOCKET, libc::SO_PASSCRED),
];

/// TCP options copied as integers.
pub const TCP_INTS: [(i32, i32); 7] = [
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::IPPROTO_TCP, libc::TCP_CORK),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT),
];

/// Options of any size, restored with the bytes getsockopt gave.
pub const RAW: [(i32, i32); 4] = [
    (libc::SOL_SOCKET, libc::SO_LINGER),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO),
    (libc::SOL_SOCKET, libc::SO_BINDTODEVICE),
];

/// `TCP_CONGESTION`, set when it is not the system's default.
pub const CONGESTION: (i32, i32) = (libc::IPPROTO_TCP, libc::TCP_CONGESTION);

/// `SO_BUF_LOCK`: which buffer sizes the task set (the others autotune).
pub const SO_BUF_LOCK: i32 = 72;

/// The buffer sizes, as getsockopt reads them, then `SO_BUF_LOCK`.
pub const BUFFERS: [(i32, i32); 3] =
    [(libc::SOL_SOCKET, libc::SO_SNDBUF), (libc::SOL_SOCKET, libc::SO_RCVBUF), (libc::SOL_SOCKET, SO_BUF_LOCK)];

fn os_err(what: impl std::fmt::Display) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// getsockopt of an int.
pub fn getint(fd: BorrowedFd<'_>, level: i32, name: i32) -> Result<i32, String> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid out-pointers of the announced size.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&mut v as *mut libc::c_int).cast(), &mut len) };
    if r != 0 {
        return Err(os_err(format_args!("getsockopt({level}, {name})")));
    }
    Ok(v)
}

/// setsockopt of an int.
pub fn setint(fd: BorrowedFd<'_>, level: i32, name: i32, v: i32) -> Result<(), String> {
    set_bytes(fd, level, name, &v.to_ne_bytes())
}

/// getsockopt into up to `max` bytes.
pub fn get_bytes(fd: BorrowedFd<'_>, level: i32, name: i32, max: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; max];
    let mut len = max as libc::socklen_t;
    // SAFETY: `buf` has room for `len` bytes; `len` is a valid out-pointer.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &mut len) };
    if r != 0 {
        return Err(os_err(format_args!("getsockopt({level}, {name})")));
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// setsockopt with the bytes of `v`.
pub fn set_bytes(fd: BorrowedFd<'_>, level: i32, name: i32, v: &[u8]) -> Result<(), String> {
    // SAFETY: passes `v.len()` readable bytes.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, v.as_ptr().cast(), v.len() as libc::socklen_t) };
    if r != 0 {
        return Err(os_err(format_args!("setsockopt({level}, {name})")));
    }
    Ok(())
}

/// An ioctl that writes one int (`FIONREAD`, `SIOCOUTQ`, ...).
pub fn ioctl_int(fd: BorrowedFd<'_>, req: libc::c_ulong) -> Result<i32, String> {
    let mut v: libc::c_int = 0;
    // SAFETY: these requests write one int through the pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v) } != 0 {
        return Err(os_err(format_args!("ioctl({req:#x})")));
    }
    Ok(v)
}

/// getsockname / getpeername as raw bytes (empty when not connected).
pub fn addr(fd: BorrowedFd<'_>, peer: bool) -> Vec<u8> {
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

/// bind (`connect` false) or connect to the sockaddr bytes `b`.
pub fn bind_or_connect(fd: BorrowedFd<'_>, b: &[u8], connect: bool) -> std::io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let n = b.len().min(size_of::<libc::sockaddr_storage>());
    // SAFETY: copies `n` bytes into `ss`, which has room for them.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(), n) };
    let p = (&ss as *const libc::sockaddr_storage).cast();
    let r = if connect {
        // SAFETY: `ss` holds a sockaddr of `n` bytes.
        unsafe { libc::connect(fd.as_raw_fd(), p, n as libc::socklen_t) }
    } else {
        // SAFETY: as above.
        unsafe { libc::bind(fd.as_raw_fd(), p, n as libc::socklen_t) }
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `sockaddr_in`/`sockaddr_in6` bytes as an address (a v4-mapped IPv6
/// address as the IPv4 one, as the other end of the connection sees it).
pub fn show_addr(b: &[u8]) -> Option<std::net::SocketAddr> {
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]) as i32;
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    let ip: std::net::IpAddr = match family {
        libc::AF_INET => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b.get(4..8)?).ok()?).into(),
        libc::AF_INET6 => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b.get(8..24)?).ok()?);
            v6.to_ipv4_mapped().map(Into::into).unwrap_or(v6.into())
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

/// Reads the options of `fd` worth keeping: integers (`ints`), raw ones,
/// and the buffer sizes.
pub fn read_all(
    fd: BorrowedFd<'_>,
    family: i32,
    tcp: bool,
) -> (Vec<pb::SockOpt>, Vec<pb::RawSockOpt>, Vec<pb::SockOpt>) {
    let int =
        |&(level, name): &(i32, i32)| getint(fd, level, name).ok().map(|value| pb::SockOpt { level, name, value });
    let mut ints: Vec<pb::SockOpt> = Vec::new();
    if family == libc::AF_INET6 {
        ints.extend(int(&(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)));
    }
    ints.extend(INTS.iter().filter_map(int));
    if tcp {
        ints.extend(TCP_INTS.iter().filter_map(int));
    }
    // IP_FREEBIND and IP_TRANSPARENT come before bind: an address not (yet) on the host binds again.
    let ip = if family == libc::AF_INET6 {
        [
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
            (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
            (libc::IPPROTO_IP, libc::IP_FREEBIND),
            (libc::IPPROTO_IP, libc::IP_TRANSPARENT),
        ]
    } else {
        [
            (libc::IPPROTO_IP, libc::IP_TOS),
            (libc::IPPROTO_IP, libc::IP_TTL),
            (libc::IPPROTO_IP, libc::IP_FREEBIND),
            (libc::IPPROTO_IP, libc::IP_TRANSPARENT),
        ]
    };
    ints.extend(ip.iter().filter_map(int));
    let raw_of = |&(level, name): &(i32, i32)| {
        get_bytes(fd, level, name, 64).ok().map(|value| pb::RawSockOpt { level, name, value })
    };
    let mut raw: Vec<pb::RawSockOpt> =
        RAW.iter().filter_map(raw_of).filter(|o| o.value.iter().any(|&b| b != 0)).collect();
    if tcp {
        let default = std::fs::read("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default();
        let default = default.trim_ascii_end();
        raw.extend(raw_of(&CONGESTION).filter(|o| o.value.split(|&b| b == 0).next() != Some(default)));
    }
    let buffers = BUFFERS.iter().filter_map(int).collect();
    (ints, raw, buffers)
}

/// Sets what [`read_all`] read (buffers excepted); an option the new
/// socket refuses is an error naming it.
pub fn apply(fd: BorrowedFd<'_>, ints: &[pb::SockOpt], raw: &[pb::RawSockOpt]) -> Result<(), String> {
    for o in ints {
        // The ttl getsockopt shows the route's default when none was set; -1 asks for it.
        if getint(fd, o.level, o.name).ok() == Some(o.value) {
            continue;
        }
        setint(fd, o.level, o.name, o.value)?;
    }
    for o in raw {
        set_bytes(fd, o.level, o.name, &o.value)?;
    }
    Ok(())
}

/// Sets the buffer sizes getsockopt showed (the kernel doubles what is
/// set, so half of it, with the `FORCE` variants so no sysctl limit cuts
/// it), then `SO_BUF_LOCK` as it was: a size the task never set goes on
/// autotuning from there.
pub fn apply_buffers(fd: BorrowedFd<'_>, buffers: &[pb::SockOpt]) -> Result<(), String> {
    for o in buffers {
        if o.name == SO_BUF_LOCK {
            setint(fd, o.level, o.name, o.value)?;
            continue;
        }
        if getint(fd, o.level, o.name).ok() == Some(o.value) {
            continue;
        }
        let force = if o.name == libc::SO_SNDBUF { libc::SO_SNDBUFFORCE } else { libc::SO_RCVBUFFORCE };
        setint(fd, o.level, force, o.value / 2)?;
    }
    Ok(())
}

/// `TCP_INFO`.
pub fn tcp_info(fd: BorrowedFd<'_>) -> Result<libc::tcp_info, String> {
    let info = get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, size_of::<libc::tcp_info>())?;
    // SAFETY: all-zero is a valid tcp_info.
    let mut t: libc::tcp_info = unsafe { std::mem::zeroed() };
    let n = info.len().min(size_of::<libc::tcp_info>());
    // SAFETY: copies `n` bytes into `t`, which has room for them.
    unsafe { std::ptr::copy_nonoverlapping(info.as_ptr(), (&mut t as *mut libc::tcp_info).cast::<u8>(), n) };
    Ok(t)
}
