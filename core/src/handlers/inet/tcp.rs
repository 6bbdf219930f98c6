//! TCP connections through `TCP_REPAIR`: read at dump (sequence numbers,
//! both queues, MSS, window scale, SACK, timestamps, windows) without
//! sending anything, and rebuilt at restore without a handshake.
//!
//! **Dump.** The connection goes into repair mode on crt's copy of it (the
//! mode belongs to the socket, so the task's fd is in it too) and stays so
//! until the tasks are released ([`end_repair`]): a task left running gets
//! it back out of repair mode first, without a window probe; a killed
//! task's connection closes silently, so its peer sees no FIN nor RST.
//!
//! **Restore.** A new socket in repair mode gets the sequence numbers,
//! binds, `connect`s (no SYN in repair mode), gets its TCP options, its
//! receive queue and the part of its send queue that had been sent, and its
//! windows. Once every task's fds exist, [`release`] takes each connection
//! out of repair mode, queues the bytes never sent as plain writes, and
//! replays `shutdown` for the ends that had shut: a FIN is left out of the
//! sequence numbers at dump, and the peer's FIN arrives again.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::diag::{self, state};
use super::sockopt::{get_bytes, getint, ioctl_int, set_bytes, setint};
use crate::images::pb;

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_REPAIR_ON: i32 = 1;
const TCP_REPAIR_OFF: i32 = 0;
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const NO_QUEUE: i32 = 0;
const RECV_QUEUE: i32 = 1;
const SEND_QUEUE: i32 = 2;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const SIOCINQ: libc::c_ulong = 0x541B;
const SIOCOUTQ: libc::c_ulong = 0x5411;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;
const SO_PEEK_OFF: i32 = 42;
const TCP: i32 = libc::IPPROTO_TCP;

/// How long [`release`] waits for room to queue the bytes never sent.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// The states a connection with both ends in the forest is rebuilt from.
pub const RESTORABLE: [u32; 6] =
    [state::ESTABLISHED, state::FIN_WAIT1, state::FIN_WAIT2, state::CLOSE_WAIT, state::LAST_ACK, state::CLOSING];

/// Connections this dump put in repair mode (crt's copies), with their
/// `SO_REUSEADDR` (leaving repair mode clears it).
static REPAIRED: Mutex<Vec<(OwnedFd, i32)>> = Mutex::new(Vec::new());

/// What becomes of the dumped tasks, for [`end_repair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tasks {
    /// They run on (`--leave-running`, or the dump failed): connections
    /// leave repair mode before the tasks are released.
    RunOn,
    /// They were killed: the connections close in repair mode, silently.
    Killed,
}

/// Ends the repair mode the dump put connections in (see [`Tasks`]).
pub fn end_repair(tasks: Tasks) {
    let Ok(mut list) = REPAIRED.lock() else { return };
    for (s, reuse) in list.drain(..) {
        if tasks == Tasks::RunOn {
            let off = setint(s.as_fd(), TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
                .and_then(|()| setint(s.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse));
            if let Err(e) = off {
                tracing::warn!("taking a TCP connection out of repair mode: {e}");
            }
        }
    }
}

fn queue_seq(fd: BorrowedFd<'_>, q: i32) -> Result<u32, String> {
    setint(fd, TCP, TCP_REPAIR_QUEUE, q)?;
    Ok(getint(fd, TCP, TCP_QUEUE_SEQ)? as u32)
}

/// Peeks the whole queue `q` (`len` bytes at most).
fn peek_queue(fd: BorrowedFd<'_>, q: i32, len: usize) -> Result<Vec<u8>, String> {
    setint(fd, TCP, TCP_REPAIR_QUEUE, q)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; len];
    // SAFETY: receives at most `buf.len()` bytes into `buf`.
    let n =
        unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(Vec::new());
        }
        return Err(format!("reading the {} queue: {e}", if q == RECV_QUEUE { "receive" } else { "send" }));
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Reads a connection already in repair mode. `d` is its `inet_diag` entry.
fn read(fd: BorrowedFd<'_>, d: &diag::Sock) -> Result<pb::TcpConn, String> {
    let info = super::sockopt::tcp_info(fd)?;
    let (options, wscale) = (info.tcpi_options, info.tcpi_snd_rcv_wscale);
    let shut_wr = d.shutdown & 2 != 0;
    let fin_received = matches!(d.state, state::CLOSE_WAIT | state::CLOSING | state::LAST_ACK);
    let inq = ioctl_int(fd, SIOCINQ)? as usize;
    let outq = ioctl_int(fd, SIOCOUTQ)? as usize;
    let not_sent = ioctl_int(fd, SIOCOUTQNSD)? as u32;
    let recv_queue = peek_queue(fd, RECV_QUEUE, inq)?;
    if recv_queue.len() < inq {
        return Err(format!(
            "read {} of the {inq} bytes of its receive queue: urgent (MSG_OOB) data stops the read; crt does not restore urgent data",
            recv_queue.len()
        ));
    }
    let rcv_seq = queue_seq(fd, RECV_QUEUE)?.wrapping_sub(fin_received as u32);
    let send_queue = peek_queue(fd, SEND_QUEUE, outq)?;
    let snd_seq = queue_seq(fd, SEND_QUEUE)?.wrapping_sub(shut_wr as u32);
    setint(fd, TCP, TCP_REPAIR_QUEUE, NO_QUEUE)?;
    // A FIN not yet sent counts in SIOCOUTQNSD.
    let unsent = if shut_wr && not_sent > 0 { not_sent - 1 } else { not_sent }.min(send_queue.len() as u32);
    let w = get_bytes(fd, TCP, TCP_REPAIR_WINDOW, 20)?;
    let word = |i: usize| crate::sockdiag::u32_at(&w, i * 4);
    let timestamps = options & TCPI_OPT_TIMESTAMPS != 0;
    Ok(pb::TcpConn {
        state: d.state,
        snd_seq,
        rcv_seq,
        send_queue,
        unsent,
        recv_queue,
        mss: getint(fd, TCP, libc::TCP_MAXSEG)? as u32,
        snd_wscale: (wscale & 0xf) as u32,
        rcv_wscale: (wscale >> 4) as u32,
        wscale: options & TCPI_OPT_WSCALE != 0,
        timestamps,
        sack: options & TCPI_OPT_SACK != 0,
        tsval: if timestamps { getint(fd, TCP, TCP_TIMESTAMP)? as u32 } else { 0 },
        window: Some(pb::TcpWindow {
            snd_wl1: word(0),
            snd_wnd: word(1),
            max_window: word(2),
            rcv_wnd: word(3),
            rcv_wup: word(4),
        }),
        shut_wr,
        shut_rd: d.shutdown & 1 != 0 && !fin_received,
        peek_off: -1,
    })
}

/// Dumps the connection `s` (crt's copy of the task's fd): puts it in
/// repair mode (kept until [`end_repair`]) and reads it.
pub fn dump(s: &OwnedFd, d: &diag::Sock) -> Result<pb::TcpConn, String> {
    let fd = s.as_fd();
    let keep = s.try_clone().map_err(|e| format!("keeping the connection: {e}"))?;
    let reuse = getint(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    setint(fd, TCP, TCP_REPAIR, TCP_REPAIR_ON)
        .map_err(|e| format!("entering TCP repair mode (needs CAP_NET_ADMIN): {e}"))?;
    REPAIRED.lock().map_err(|_| "TCP repair list poisoned".to_string())?.push((keep, reuse));
    // A peek offset (SO_PEEK_OFF) would move the peek; off while reading.
    let peek_off = getint(fd, libc::SOL_SOCKET, SO_PEEK_OFF).unwrap_or(-1);
    if peek_off >= 0 {
        setint(fd, libc::SOL_SOCKET, SO_PEEK_OFF, -1)?;
    }
    let r = read(fd, d);
    if peek_off >= 0 {
        setint(fd, libc::SOL_SOCKET, SO_PEEK_OFF, peek_off)?;
    }
    r.map(|c| pb::TcpConn { peek_off, ..c })
}

/// What is left to do for a restored connection once every peer exists.
pub struct Pending {
    sock: OwnedFd,
    unsent: Vec<u8>,
    shut_wr: bool,
    shut_rd: bool,
    /// `SO_REUSEADDR` (leaving repair mode clears it).
    reuse: i32,
    /// The buffer sizes dumped, set once the bytes never sent are queued.
    buffers: Vec<pb::SockOpt>,
    /// `local -> remote`, for messages.
    what: String,
}

/// Sends `data` into queue `q` of a socket in repair mode.
fn fill(fd: BorrowedFd<'_>, q: i32, data: &[u8]) -> Result<(), String> {
    setint(fd, TCP, TCP_REPAIR_QUEUE, q)?;
    let mut off = 0;
    while off < data.len() {
        let rest = &data[off..];
        // SAFETY: sends `rest.len()` readable bytes.
        let n = unsafe { libc::send(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            let q = if q == RECV_QUEUE { "receive" } else { "send" };
            return Err(format!(
                "refilling the {q} queue ({off} of {} bytes): {}",
                data.len(),
                std::io::Error::last_os_error()
            ));
        }
        off += n as usize;
    }
    Ok(())
}

/// Makes the sockaddr bytes into a message address.
fn show(b: &[u8]) -> String {
    super::sockopt::show_addr(b).map(|a| a.to_string()).unwrap_or_else(|| "?".into())
}

/// Rebuilds connection `c` of `m` on `s`, a new socket with its options set.
pub fn restore(s: &OwnedFd, m: &pb::InetSocket, c: &pb::TcpConn) -> Result<Pending, String> {
    let fd = s.as_fd();
    setint(fd, TCP, TCP_REPAIR, TCP_REPAIR_ON)
        .map_err(|e| format!("entering TCP repair mode (needs CAP_NET_ADMIN): {e}"))?;
    setint(fd, TCP, TCP_REPAIR_QUEUE, RECV_QUEUE)?;
    setint(fd, TCP, TCP_QUEUE_SEQ, c.rcv_seq.wrapping_sub(c.recv_queue.len() as u32) as i32)?;
    setint(fd, TCP, TCP_REPAIR_QUEUE, SEND_QUEUE)?;
    setint(fd, TCP, TCP_QUEUE_SEQ, c.snd_seq.wrapping_sub(c.send_queue.len() as u32) as i32)?;
    if c.timestamps {
        setint(fd, TCP, TCP_TIMESTAMP, c.tsval as i32)?;
    }
    let what = format!("{} -> {}", show(&m.local), show(&m.peer));
    super::sockopt::bind_or_connect(fd, &m.local, false).map_err(|e| format!("binding {what} again: {e}"))?;
    // IPv6: the connect sizes segments from the MSS set now (none of the
    // kernel's resync paths below applies); at most 32767 may be set.
    let v4 = m.family == libc::AF_INET || super::sockopt::show_addr(&m.peer).is_some_and(|a| a.is_ipv4());
    if !v4 {
        setint(fd, TCP, libc::TCP_MAXSEG, c.mss.clamp(88, 32767) as i32)?;
    }
    super::sockopt::bind_or_connect(fd, &m.peer, true).map_err(|e| format!("connecting {what} in repair mode: {e}"))?;
    if !v4 {
        setint(fd, TCP, libc::TCP_MAXSEG, 0)?;
    }
    let mut opts: Vec<u32> = vec![TCPOPT_MSS, c.mss];
    if c.wscale {
        opts.extend([TCPOPT_WINDOW, c.snd_wscale | (c.rcv_wscale << 16)]);
    }
    if c.sack {
        opts.extend([TCPOPT_SACK_PERM, 0]);
    }
    if c.timestamps {
        opts.extend([TCPOPT_TIMESTAMP, 0]);
    }
    let bytes: Vec<u8> = opts.iter().flat_map(|v| v.to_ne_bytes()).collect();
    set_bytes(fd, TCP, TCP_REPAIR_OPTIONS, &bytes)?;
    resync_mss(fd, v4);
    // Room for the queues while they are refilled and the bytes never sent
    // are queued ([`release`]); the sizes dumped come after that.
    let need = (c.recv_queue.len().max(c.send_queue.len()) * 4).min(i32::MAX as usize) as i32;
    for (now, force) in [(libc::SO_SNDBUF, libc::SO_SNDBUFFORCE), (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE)] {
        if getint(fd, libc::SOL_SOCKET, now)? < need {
            setint(fd, libc::SOL_SOCKET, force, need)?;
        }
    }
    fill(fd, RECV_QUEUE, &c.recv_queue)?;
    let sent = c.send_queue.len() - (c.unsent as usize).min(c.send_queue.len());
    fill(fd, SEND_QUEUE, &c.send_queue[..sent])?;
    setint(fd, TCP, TCP_REPAIR_QUEUE, NO_QUEUE)?;
    if let Some(w) = &c.window {
        set_window(fd, c.rcv_seq, w)?;
    }
    if c.peek_off >= 0 {
        setint(fd, libc::SOL_SOCKET, SO_PEEK_OFF, c.peek_off)?;
    }
    Ok(Pending {
        sock: s.try_clone().map_err(|e| format!("keeping {what}: {e}"))?,
        unsent: c.send_queue[sent..].to_vec(),
        shut_wr: c.shut_wr,
        shut_rd: c.shut_rd,
        reuse: m
            .options
            .iter()
            .find(|o| o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEADDR)
            .map_or(0, |o| o.value),
        buffers: m.buffers.clone(),
        what,
    })
}

/// IPv4: makes the kernel compute the segment size again from the MSS
/// just set (the repair-mode `connect` sized segments for the default MSS,
/// 536). New IP options recompute it; empty ones (none were set: see
/// `IP_OPTIONS` in docs/internals.md) change nothing else.
fn resync_mss(fd: BorrowedFd<'_>, v4: bool) {
    if !v4 {
        return;
    }
    if let Err(e) = set_bytes(fd, libc::IPPROTO_IP, libc::IP_OPTIONS, &[]) {
        tracing::debug!("recomputing the MSS: {e}");
    }
}

/// `TCP_REPAIR_WINDOW`, with the receive edges kept at or before `rcv_nxt`
/// (a FIN received is left out of it until the peer sends it again).
fn set_window(fd: BorrowedFd<'_>, rcv_nxt: u32, w: &pb::TcpWindow) -> Result<(), String> {
    let after = |a: u32, b: u32| (a.wrapping_sub(b) as i32) > 0;
    let rcv_wup = if after(w.rcv_wup, rcv_nxt) { rcv_nxt } else { w.rcv_wup };
    let edge = rcv_nxt.wrapping_add(w.rcv_wnd);
    let snd_wl1 = if after(w.snd_wl1, edge) { edge } else { w.snd_wl1 };
    let words = [snd_wl1, w.snd_wnd, w.max_window.max(w.snd_wnd), w.rcv_wnd, rcv_wup];
    let bytes: Vec<u8> = words.iter().flat_map(|v| v.to_ne_bytes()).collect();
    set_bytes(fd, TCP, TCP_REPAIR_WINDOW, &bytes)
}

/// Queues `data` on a live connection (plain writes), waiting for room.
fn queue(fd: BorrowedFd<'_>, data: &[u8], what: &str) -> Result<(), String> {
    let deadline = Instant::now() + QUEUE_TIMEOUT;
    let mut off = 0;
    while off < data.len() {
        let rest = &data[off..];
        // SAFETY: sends `rest.len()` readable bytes.
        let n = unsafe {
            libc::send(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n > 0 {
            off += n as usize;
            continue;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) || Instant::now() >= deadline {
            return Err(format!("{what}: queueing {} bytes never sent ({off} done): {e}", data.len()));
        }
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 100) };
    }
    Ok(())
}

/// Takes every restored connection out of repair mode (all their peers
/// exist now), queues the bytes they had not sent and replays shutdowns.
pub fn release(pending: Vec<Pending>) -> Result<(), String> {
    for p in &pending {
        setint(p.sock.as_fd(), TCP, TCP_REPAIR, TCP_REPAIR_OFF)
            .and_then(|()| setint(p.sock.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, p.reuse))
            .map_err(|e| format!("{}: leaving repair mode: {e}", p.what))?;
    }
    for p in &pending {
        queue(p.sock.as_fd(), &p.unsent, &p.what)?;
        super::sockopt::apply_buffers(p.sock.as_fd(), &p.buffers).map_err(|e| format!("{}: {e}", p.what))?;
    }
    for p in &pending {
        for (shut, how) in [(p.shut_wr, libc::SHUT_WR), (p.shut_rd, libc::SHUT_RD)] {
            // SAFETY: shutdown takes integers only.
            if shut && unsafe { libc::shutdown(p.sock.as_raw_fd(), how) } != 0 {
                return Err(format!("{}: shutdown again: {}", p.what, std::io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}
