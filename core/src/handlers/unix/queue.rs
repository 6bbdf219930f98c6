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
}

/// Why a queue could not be read.
pub enum PeekError {
    /// A message carries file descriptors (`SCM_RIGHTS`): the count.
    Rights(usize),
    /// Anything else.
    Other(String),
}

/// Every message in `fd`'s receive queue, read with `MSG_PEEK` from
/// offset 0 on (`SO_PEEK_OFF`), leaving the queue and the socket's own
/// `SO_PEEK_OFF` as they were. `stream` glues everything into one message.
pub fn peek_all(fd: BorrowedFd<'_>, stream: bool, rcv_shut: bool) -> Result<Vec<Msg>, PeekError> {
    let other = PeekError::Other;
    let saved = get_int(fd, libc::SO_PEEK_OFF).map_err(other)?;
    set_int(fd, libc::SO_PEEK_OFF, 0).map_err(PeekError::Other)?;
    let r = walk(fd, stream, rcv_shut);
    let back = set_int(fd, libc::SO_PEEK_OFF, saved);
    let msgs = r?;
    back.map_err(PeekError::Other)?;
    Ok(msgs)
}

fn walk(fd: BorrowedFd<'_>, stream: bool, rcv_shut: bool) -> Result<Vec<Msg>, PeekError> {
    let mut out: Vec<Msg> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut ctl = [0u64; 64];
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    loop {
        if !stream {
            // The whole next datagram's length, without moving the peek offset.
            // A zero-length datagram is marked peeked by this probe and
            // skipped by the next peek: take it from the probe.
            let full = recv_msg(fd, &mut [], &mut ctl, flags | libc::MSG_TRUNC)?;
            match full {
                None => break,
                Some((_, _, rights)) if rights > 0 => return Err(PeekError::Rights(rights)),
                Some((0, ..)) if rcv_shut => break,
                Some((0, sender, _)) => {
                    out.push(Msg { data: Vec::new(), sender });
                    continue;
                }
                Some((n, ..)) if n > buf.len() => buf.resize(n, 0),
                _ => {}
            }
        }
        let Some((n, sender, rights)) = recv_msg(fd, &mut buf, &mut ctl, flags)? else { break };
        if rights > 0 {
            return Err(PeekError::Rights(rights));
        }
        if stream {
            if n == 0 {
                break; // EOF: the peer shut down or closed
            }
            match out.first_mut() {
                Some(m) => m.data.extend_from_slice(&buf[..n]),
                None => out.push(Msg { data: buf[..n].to_vec(), sender: Vec::new() }),
            }
        } else {
            out.push(Msg { data: buf[..n].to_vec(), sender });
            if n == 0 && rcv_shut {
                break;
            }
        }
    }
    Ok(out)
}

type Peeked = (usize, Vec<u8>, usize);

/// One `recvmsg`: (bytes, sender name, fds received); None when the queue is empty.
fn recv_msg(fd: BorrowedFd<'_>, buf: &mut [u8], ctl: &mut [u64], flags: i32) -> Result<Option<Peeked>, PeekError> {
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
        return Err(PeekError::Other(format!("recvmsg(MSG_PEEK): {e}")));
    }
    let rights = close_rights(&mh);
    let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let nlen = (mh.msg_namelen as usize).saturating_sub(base).min(from.sun_path.len());
    let mut sender: Vec<u8> = from.sun_path[..nlen].iter().map(|&c| c as u8).collect();
    if sender.first().is_some_and(|&c| c != 0) {
        while sender.last() == Some(&0) {
            sender.pop();
        }
    }
    if mh.msg_flags & libc::MSG_CTRUNC != 0 && rights == 0 && !ctl.is_empty() {
        return Err(PeekError::Rights(1));
    }
    Ok(Some((n as usize, sender, rights)))
}

/// Closes the descriptors a peek of an `SCM_RIGHTS` message installed in crt; returns how many.
fn close_rights(mh: &libc::msghdr) -> usize {
    let mut count = 0;
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
                // SAFETY: `fd` was just installed in crt's table by the peek and is ours to close.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            count += n.max(1);
        }
        // SAFETY: `c` is a valid cmsghdr of `mh`.
        c = unsafe { libc::CMSG_NXTHDR(mh, c) };
    }
    count
}

/// Sends `data` as one message (or, for a stream, all of it) from `fd`,
/// to `dest` when given, never blocking.
pub fn send(fd: BorrowedFd<'_>, data: &[u8], dest: Option<&[u8]>, stream: bool) -> Result<(), String> {
    let addr = dest.map(sockaddr).transpose()?;
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
