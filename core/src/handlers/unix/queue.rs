//! Socket plumbing: options, addresses, peeking at a receive queue without
//! consuming it (`SO_PEEK_OFF` + `MSG_PEEK`) and refilling one.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// `getsockopt(SOL_SOCKET, opt)` as an int.
pub fn get_int(fd: BorrowedFd<'_>, opt: i32) -> Result<i32, String> {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for getsockopt to write an int.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (&raw mut v).cast(), &mut len) };
    if r < 0 {
        return Err(os_err(&format!("getsockopt({opt})")));
    }
    Ok(v)
}

/// `setsockopt(SOL_SOCKET, opt, v)`.
pub fn set_int(fd: BorrowedFd<'_>, opt: i32, v: i32) -> Result<(), String> {
    // SAFETY: passes a pointer to an int and its size.
    let r = unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (&raw const v).cast(), std::mem::size_of::<i32>() as _)
    };
    if r < 0 {
        return Err(os_err(&format!("setsockopt({opt}, {v})")));
    }
    Ok(())
}

/// A new AF_UNIX socket of `typ` (close-on-exec in crt).
pub fn socket(typ: i32) -> Result<OwnedFd, String> {
    // SAFETY: socket(2) with integer arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, typ | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err("socket(AF_UNIX)"));
    }
    // SAFETY: `fd` was just created and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A connected pair of `typ`.
pub fn socketpair(typ: i32) -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    if unsafe { libc::socketpair(libc::AF_UNIX, typ | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(os_err("socketpair(AF_UNIX)"));
    }
    // SAFETY: fds[0] was just created by socketpair and is owned here.
    let a = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above, fds[1].
    let b = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((a, b))
}

/// `sockaddr_un` for a name (path, or `\0abstract`) and its length.
pub fn sockaddr(name: &[u8]) -> Result<(libc::sockaddr_un, libc::socklen_t), String> {
    // SAFETY: sockaddr_un is plain data; all zeroes is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if name.len() > a.sun_path.len() {
        return Err(format!("socket name {:?} is too long", String::from_utf8_lossy(name)));
    }
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    Ok((a, (base + name.len()) as libc::socklen_t))
}

/// `bind(2)` to `name`.
pub fn bind(fd: BorrowedFd<'_>, name: &[u8]) -> Result<(), String> {
    let (a, len) = sockaddr(name)?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const a).cast(), len) } != 0 {
        return Err(os_err(&format!("bind to {}", super::diag::show_name(name))));
    }
    Ok(())
}

/// `connect(2)` to `name`, without blocking.
pub fn connect(fd: BorrowedFd<'_>, name: &[u8]) -> Result<(), String> {
    let (a, len) = sockaddr(name)?;
    let fl = fcntl(fd, libc::F_GETFL, 0)?;
    fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK)?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    let r = unsafe { libc::connect(fd.as_raw_fd(), (&raw const a).cast(), len) };
    let e = os_err(&format!("connect to {}", super::diag::show_name(name)));
    fcntl(fd, libc::F_SETFL, fl)?;
    if r != 0 {
        return Err(e);
    }
    Ok(())
}

/// `fcntl(fd, cmd, arg)`.
pub fn fcntl(fd: BorrowedFd<'_>, cmd: i32, arg: i32) -> Result<i32, String> {
    // SAFETY: fcntl with an integer argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, arg) };
    if r < 0 {
        return Err(os_err("fcntl"));
    }
    Ok(r)
}

/// One message of a receive queue.
pub struct Msg {
    /// Its bytes.
    pub data: Vec<u8>,
    /// Datagrams: the sender's bound name.
    pub sender: Vec<u8>,
    /// Copies (in crt, close-on-exec) of the descriptors in flight with it (`SCM_RIGHTS`), in order.
    pub fds: Vec<OwnedFd>,
}

/// Every message in `fd`'s receive queue, read with `MSG_PEEK` from
/// offset 0 on (`SO_PEEK_OFF`), leaving the queue and the socket's own
/// `SO_PEEK_OFF` as they were. `stream` glues bytes into one message, split
/// only where descriptors are in flight: a message carrying descriptors holds
/// the bytes up to the end of the write that sent them (the kernel's peek
/// does not show where that write began).
pub fn peek_all(fd: BorrowedFd<'_>, stream: bool, rcv_shut: bool) -> Result<Vec<Msg>, String> {
    let saved = get_int(fd, libc::SO_PEEK_OFF)?;
    set_int(fd, libc::SO_PEEK_OFF, 0)?;
    let r = walk(fd, stream, rcv_shut);
    let back = set_int(fd, libc::SO_PEEK_OFF, saved);
    let msgs = r?;
    back?;
    Ok(msgs)
}

fn walk(fd: BorrowedFd<'_>, stream: bool, rcv_shut: bool) -> Result<Vec<Msg>, String> {
    let mut out: Vec<Msg> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut ctl = [0u64; 256];
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    loop {
        if !stream {
            // The whole next datagram's length, without moving the peek offset.
            // A zero-length datagram is marked peeked by this probe and
            // skipped by the next peek: take it from the probe.
            let full = recv_msg(fd, &mut [], &mut ctl, flags | libc::MSG_TRUNC)?;
            match full {
                None => break,
                Some(p) if p.n == 0 && rcv_shut && p.fds.is_empty() => break,
                Some(p) if p.n == 0 => {
                    out.push(Msg { data: Vec::new(), sender: p.sender, fds: p.fds });
                    continue;
                }
                Some(p) if p.n > buf.len() => buf.resize(p.n, 0),
                _ => {}
            }
        }
        let Some(p) = recv_msg(fd, &mut buf, &mut ctl, flags)? else { break };
        let n = p.n;
        if stream {
            if n == 0 {
                break; // EOF: the peer shut down or closed
            }
            if p.fds.is_empty() {
                match out.last_mut().filter(|m| m.fds.is_empty()) {
                    Some(m) => m.data.extend_from_slice(&buf[..n]),
                    None => out.push(Msg { data: buf[..n].to_vec(), sender: Vec::new(), fds: Vec::new() }),
                }
            } else {
                // The peek glued the bytes of earlier writes without
                // descriptors to those of the write that carried them, and
                // nothing shows where that write began.
                out.push(Msg { data: buf[..n].to_vec(), sender: Vec::new(), fds: p.fds });
            }
        } else {
            out.push(Msg { data: buf[..n].to_vec(), sender: p.sender, fds: p.fds });
            if n == 0 && rcv_shut {
                break;
            }
        }
    }
    Ok(out)
}

struct Peeked {
    n: usize,
    sender: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// One `recvmsg`: bytes, sender name, descriptors received; None when the queue is empty.
fn recv_msg(fd: BorrowedFd<'_>, buf: &mut [u8], ctl: &mut [u64], flags: i32) -> Result<Option<Peeked>, String> {
    // SAFETY: plain data; zeroes are valid.
    let mut from: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: plain data; zeroes are valid.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_name = (&raw mut from).cast();
    mh.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as _;
    mh.msg_iov = &raw mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.as_mut_ptr().cast();
    mh.msg_controllen = std::mem::size_of_val(ctl) as _;
    // SAFETY: every pointer in `mh` refers to a live buffer of the given size.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut mh, flags) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(format!("recvmsg(MSG_PEEK): {e}"));
    }
    let fds = take_rights(&mh);
    let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let nlen = (mh.msg_namelen as usize).saturating_sub(base).min(from.sun_path.len());
    let mut sender: Vec<u8> = from.sun_path[..nlen].iter().map(|&c| c as u8).collect();
    if sender.first().is_some_and(|&c| c != 0) {
        while sender.last() == Some(&0) {
            sender.pop();
        }
    }
    if mh.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(format!(
            "a message carries more control data than crt's {}-byte buffer (descriptors in flight were cut off)",
            std::mem::size_of_val(ctl)
        ));
    }
    Ok(Some(Peeked { n: n as usize, sender, fds }))
}

/// Takes ownership of the descriptors a peek of an `SCM_RIGHTS` message installed in crt.
fn take_rights(mh: &libc::msghdr) -> Vec<OwnedFd> {
    let mut out = Vec::new();
    // SAFETY: `mh` was filled by recvmsg; CMSG_FIRSTHDR/CMSG_NXTHDR stay inside msg_control.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(mh) };
    while !c.is_null() {
        // SAFETY: `c` points to a complete cmsghdr inside the control buffer.
        let hdr_copy = unsafe { c.read_unaligned() };
        let (level, typ, len) = (hdr_copy.cmsg_level, hdr_copy.cmsg_type, hdr_copy.cmsg_len as usize);
        if level == libc::SOL_SOCKET && typ == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure computation.
            let hdr = unsafe { libc::CMSG_LEN(0) } as usize;
            let n = len.saturating_sub(hdr) / 4;
            // SAFETY: the data of an SCM_RIGHTS cmsg holds `n` ints.
            let data = unsafe { libc::CMSG_DATA(c) }.cast::<i32>();
            for i in 0..n {
                let at = data.wrapping_add(i);
                // SAFETY: index `i` < n is inside the cmsg's data; the fd was installed for us.
                let fd = unsafe { at.read_unaligned() };
                // SAFETY: `fd` was just installed in crt's table by the peek and is ours.
                out.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: `c` is a valid cmsghdr of `mh`.
        c = unsafe { libc::CMSG_NXTHDR(mh, c) };
    }
    out
}

/// One `sendmsg` of `data` with `fds` attached (`SCM_RIGHTS`) to `dest`
/// (a sockaddr_un and its length) when given; the bytes sent.
fn send_rights(
    fd: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    dest: Option<&(libc::sockaddr_un, libc::socklen_t)>,
) -> Result<usize, String> {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let bytes = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
    let mut ctl = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
    // SAFETY: plain data; zeroes are valid.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some((a, l)) = dest {
        mh.msg_name = (a as *const libc::sockaddr_un).cast_mut().cast();
        mh.msg_namelen = *l;
    }
    mh.msg_iov = &raw mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.as_mut_ptr().cast();
    mh.msg_controllen = space as _;
    // SAFETY: the control buffer holds CMSG_SPACE(bytes) bytes, room for one header.
    let c = unsafe { libc::CMSG_FIRSTHDR(&raw const mh) };
    if c.is_null() {
        return Err("no room for the SCM_RIGHTS header".into());
    }
    // SAFETY: CMSG_LEN is a pure computation.
    let clen = unsafe { libc::CMSG_LEN(bytes as u32) };
    // SAFETY: `c` points to the start of the (8-byte aligned) control buffer.
    unsafe {
        c.write(libc::cmsghdr { cmsg_len: clen as _, cmsg_level: libc::SOL_SOCKET, cmsg_type: libc::SCM_RIGHTS })
    };
    // SAFETY: `c` is the valid header just written.
    let at = unsafe { libc::CMSG_DATA(c) };
    // SAFETY: the data area after the header has room for `bytes` bytes; `raw` is that long.
    unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), at, bytes) };
    // SAFETY: every pointer in `mh` refers to a live buffer of the given size.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &raw const mh, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(os_err(&format!("sending {} bytes with {} descriptor(s) (SCM_RIGHTS)", data.len(), fds.len())));
    }
    Ok(n as usize)
}

/// Sends `data` as one message (or, for a stream, all of it) from `fd`,
/// to `dest` when given, never blocking; `fds` go with the first bytes (`SCM_RIGHTS`).
pub fn send(
    fd: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    dest: Option<&[u8]>,
    stream: bool,
) -> Result<(), String> {
    let addr = dest.map(sockaddr).transpose()?;
    if !fds.is_empty() {
        if !stream {
            send_rights(fd, data, fds, addr.as_ref())?;
            return Ok(());
        }
        // Stream: the descriptors ride with the last byte, so a read gets
        // them once it reaches the end of the write that carried them.
        let (head, last) = data.split_at(data.len().saturating_sub(1));
        if !head.is_empty() {
            send(fd, head, &[], dest, true)?;
        }
        if send_rights(fd, last, fds, addr.as_ref())? != last.len() {
            return Err("the byte carrying descriptors in flight was not sent".into());
        }
        return Ok(());
    }
    let mut off = 0;
    loop {
        let rest = &data[off..];
        let (ap, al) = match &addr {
            Some((a, l)) => ((a as *const libc::sockaddr_un).cast::<libc::sockaddr>(), *l),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: `rest` is a live buffer; `ap` is null or a valid sockaddr_un of `al` bytes.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                ap,
                al,
            )
        };
        if n < 0 {
            return Err(os_err(&format!("refilling {} bytes (at {off} of {})", rest.len(), data.len())));
        }
        off += n as usize;
        if !stream || off >= data.len() {
            return Ok(());
        }
    }
}

/// A copy in crt of `pid`'s descriptor `fd` (`pidfd_getfd`).
pub fn take_fd(pid: i32, fd: i32) -> Result<OwnedFd, String> {
    // SAFETY: plain syscall with integer arguments.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(os_err(&format!("pidfd_open({pid})")));
    }
    // SAFETY: pidfd was just returned to us and is owned here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: integer arguments only.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(os_err(&format!("pidfd_getfd({pid}, {fd})")));
    }
    // SAFETY: the kernel just gave us this new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}
