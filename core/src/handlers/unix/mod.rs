//! Built-in handler for AF_UNIX sockets: stream, seqpacket and datagram;
//! socketpairs, pathname- and abstract-bound, unbound; listeners with
//! connections not yet accepted; connected pairs (both ends in the forest,
//! in one process or in two different trees); half-shut and peer-closed
//! connections; and every byte queued in each direction.
//!
//! **Dump.** `dump_checkpoint` (the forest is frozen) reads every unix socket
//! of the namespace from `unix_diag` ([`diag`]) and the socket inodes the
//! forest holds. Each socket records how to create itself and its peer
//! ([`pb::UnixBase`]), its options and its receive queue, read with
//! `MSG_PEEK` from `SO_PEEK_OFF` 0 on a `pidfd_getfd` copy ([`queue`]), so
//! a failed dump leaves every byte in place. Descriptors in flight
//! (`SCM_RIGHTS`) are recorded with their message when they are regular
//! files (the `regfile` blob) or unix sockets (a nested record); others are
//! refused. A peer, listener or pending client held only outside the forest
//! (neither by a task nor in flight in a queue of the forest) is refused,
//! unless `--handler-opt unix:external=close`.
//!
//! **Restore.** State is keyed by socket inode. The first end of a
//! connected pair restored creates both (`socketpair`); the other end waits
//! in the map for its own fd. A listener is bound, listens and re-connects
//! its pending clients in queue order. Each end's receive queue is refilled
//! by sending its recorded messages from the peer end (or, for an
//! unconnected datagram socket, from a scratch socket to its name), with
//! the descriptors in flight recreated and sent along. Buffer
//! sizes and `shutdown(2)` are applied in `restore_resume`, after every
//! queue is full; ends no task claimed and socket files of unlinked paths
//! are dropped in `restore_finish`.

mod diag;
mod queue;

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Mutex;

use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::{boxed, Builtin, BUILTIN_VERSION};
use crate::images::pb;
use crate::sockdiag::{forest_sockets, socket_ino};
use diag::Sock;
use pb::UnixPeerKind as Kind;

/// What to do with a peer held only outside the forest (`unix:external=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum External {
    #[default]
    Refuse,
    Close,
}

#[derive(Default)]
struct Opts {
    external: External,
    /// `unix:connect=INO=PATH`: connect the socket whose (external) peer or
    /// own inode is INO to the socket at PATH at restore.
    connect: HashMap<u64, Vec<u8>>,
}

/// Per-dump state (from `dump_checkpoint` to `dump_finish`).
#[derive(Default)]
struct DumpState {
    socks: HashMap<u64, Sock>,
    /// Socket inodes held by the forest.
    forest: HashSet<u64>,
    pids: Vec<i32>,
    /// Inode → sockets whose peer it is.
    reverse: HashMap<u64, Vec<u64>>,
    /// Pending client → its listener.
    pending_of: HashMap<u64, u64>,
    /// Names of listening sockets (their accepted sockets show the same name).
    listener_names: HashSet<Vec<u8>>,
    /// Sockets in flight in the forest's queues ([`DumpState::inflight`]), once computed.
    inflight: Option<HashSet<u64>>,
}

/// Per-restore state.
#[derive(Default)]
struct Made {
    /// crt's copy of every socket created so far.
    socks: HashMap<u64, OwnedFd>,
    /// The name each bound socket got (a temporary path for an unlinked one whose path is taken).
    bound: HashMap<u64, Vec<u8>>,
    /// Options and shutdowns to apply once every queue is refilled.
    finals: Vec<(u64, i32, i32, u32)>,
    finals_done: bool,
    /// Socket files to remove at the end (sockets whose path was unlinked after bind).
    unlink: Vec<PathBuf>,
    /// Sockets whose receive queue is refilled (a socket both held and in flight is restored twice).
    refilled: HashSet<u64>,
    /// Sockets whose queue is being refilled, innermost last (to refuse cycles of sockets in flight).
    restoring: Vec<u64>,
}

/// AF_UNIX sockets.
#[derive(Default)]
pub struct Unix {
    opts: Mutex<Opts>,
    dump: Mutex<Option<DumpState>>,
    made: Mutex<Made>,
}

inventory::submit! { Builtin { priority: 130, make: || boxed(Unix::default()) } }

fn type_name(t: u32) -> &'static str {
    match t as i32 {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "unknown-type",
    }
}

fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> Result<std::sync::MutexGuard<'a, T>, String> {
    m.lock().map_err(|_| format!("unix handler {what} state poisoned"))
}

impl DumpState {
    fn load(pids: &[i32]) -> Result<Self, String> {
        let socks = diag::all()?;
        let mut st = DumpState { forest: forest_sockets(pids), pids: pids.to_vec(), ..Default::default() };
        for s in socks.values() {
            if s.peer != 0 {
                st.reverse.entry(s.peer).or_default().push(s.ino);
            }
            if s.state == diag::TCP_LISTEN {
                st.listener_names.insert(s.name.clone());
                for &c in &s.icons {
                    st.pending_of.insert(c, s.ino);
                }
            }
        }
        st.socks = socks;
        Ok(st)
    }

    /// How to recreate `s` (its name, socket file, backlog, pending clients).
    fn base(&self, s: &Sock, pid: i32, ext: External) -> pb::UnixBase {
        let mut b =
            pb::UnixBase { ino: s.ino, r#type: s.typ as u32, name: s.name.clone(), mode: 0o755, ..Default::default() };
        match s.name.first() {
            None => {}
            Some(0) => {
                b.bind = s.state == diag::TCP_LISTEN || !self.listener_names.contains(&s.name);
            }
            Some(_) => {
                // Accepted sockets share their listener's name and socket file.
                b.bind = s.vfs.is_some() && (s.state == diag::TCP_LISTEN || !self.listener_names.contains(&s.name));
                let name = String::from_utf8_lossy(&s.name).into_owned();
                let (file, abs) = if name.starts_with('/') {
                    (format!("/proc/{pid}/root{name}"), name)
                } else {
                    let cwd = crate::procfs::link(pid, "cwd").unwrap_or_default();
                    (format!("/proc/{pid}/cwd/{name}"), format!("{}/{name}", cwd.trim_end_matches('/')))
                };
                b.name = abs.into_bytes();
                match std::fs::symlink_metadata(&file) {
                    Ok(m) if m.file_type().is_socket() && Some(m.ino()) == s.vfs.map(|v| v.0) => {
                        b.mode = m.mode() & 0o7777;
                        b.uid = m.uid();
                        b.gid = m.gid();
                    }
                    _ => b.unlinked = true,
                }
            }
        }
        if s.state == diag::TCP_LISTEN {
            b.backlog = s.rqlen.1.max(1);
            b.pending = s
                .icons
                .iter()
                .copied()
                .filter(|c| *c != 0 && (self.forest.contains(c) || ext == External::Refuse))
                .collect();
        }
        b
    }

    /// The error for `other`, a socket related to `s` but held only outside the forest.
    fn outside(&self, s: &Sock, fd: &FdDesc, other: u64, what: &str) -> String {
        let link = format!("socket:[{other}]");
        let holder = crate::sharing::find_outside_holders(&[(fd.pid, fd.fd, link.clone())], &self.pids);
        let who = match holder {
            Some(h) => format!(
                "is held by pid {} ({}) fd {}, which is not dumped; add --tree {} to dump both ends, or",
                h.other_pid, h.other_comm, h.other_fd, h.other_pid
            ),
            None => "is held by no process crt can see (in flight in an SCM_RIGHTS message, or in another \
                     namespace); "
                .to_string(),
        };
        format!(
            "unix {} {what} {link} of socket:[{}] {who} choose how to treat it with --handler-opt \
             unix:external=close (restored as closed by the peer: reads EOF, writes EPIPE; at restore \
             --handler-opt unix:connect={other}=PATH connects it to the socket at PATH instead)",
            type_name(s.typ as u32),
            s.ino
        )
    }
}

/// Where a socket's record is made: the task and fd that hold it (or, for
/// a socket in flight, the one whose queue carries it).
#[derive(Clone, Copy)]
struct At {
    pid: i32,
    fd: i32,
}

impl DumpState {
    /// `ino` is held by the forest: by a task, or in flight in the queue of a socket the forest holds.
    fn held(&mut self, ino: u64) -> bool {
        self.forest.contains(&ino) || self.inflight().contains(&ino)
    }

    /// Sockets in flight (`SCM_RIGHTS`) in the receive queues of the forest's
    /// sockets, and in theirs; found by peeking, once, when first asked.
    fn inflight(&mut self) -> &HashSet<u64> {
        if self.inflight.is_none() {
            let mut found = HashSet::new();
            let mut work: Vec<OwnedFd> = Vec::new();
            for &pid in &self.pids {
                let Ok(fds) = crate::procfs::fds(pid) else { continue };
                for fd in fds {
                    let link = crate::procfs::link(pid, &format!("fd/{fd}")).unwrap_or_default();
                    if socket_ino(&link).is_some_and(|i| self.socks.contains_key(&i)) {
                        if let Ok(f) = queue::take_fd(pid, fd) {
                            work.push(f);
                        }
                    }
                }
            }
            while let Some(f) = work.pop() {
                let Some(s) = self.sock_of(f.as_fd()) else { continue };
                if s.state == diag::TCP_LISTEN {
                    continue;
                }
                let Ok(msgs) = queue::peek_all(f.as_fd(), s.typ as i32 == libc::SOCK_STREAM, s.shutdown & 1 != 0)
                else {
                    continue;
                };
                for inner in msgs.into_iter().flat_map(|m| m.fds) {
                    if let Some(i) = self.sock_of(inner.as_fd()).map(|s| s.ino) {
                        if found.insert(i) && !self.forest.contains(&i) {
                            work.push(inner);
                        }
                    }
                }
            }
            self.inflight = Some(found);
        }
        self.inflight.get_or_insert_with(HashSet::new)
    }

    /// The unix socket behind crt's descriptor `f`, if it is one of the namespace's.
    fn sock_of(&self, f: std::os::fd::BorrowedFd<'_>) -> Option<&Sock> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()?;
        self.socks.get(&socket_ino(link.to_str()?)?)
    }
}

impl Unix {
    fn dump_one(&self, mut task: TaskRef<'_>, fd: &FdDesc) -> Result<Vec<u8>, String> {
        let ext = lock(&self.opts, "option")?.external;
        let mut guard = lock(&self.dump, "dump")?;
        if guard.is_none() {
            *guard = Some(DumpState::load(&[fd.pid])?);
        }
        let Some(st) = guard.as_mut() else { unreachable!("set above") };
        if !st.socks.contains_key(&fd.ino) {
            return Err(format!("socket:[{}] is not in unix_diag's list (another network namespace?)", fd.ino));
        }
        let raw = task.take_fd(fd.fd).into_result().map_err(|e| format!("taking a copy of the socket: {e}"))?;
        // SAFETY: take_fd hands over ownership of a fresh descriptor in crt's table.
        let own = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        let img = record(st, ext, At { pid: fd.pid, fd: fd.fd }, fd.ino, fd.flags, own.as_fd(), &mut Vec::new())?;
        Ok(img.encode_to_vec())
    }
}

/// The record of socket `ino`, whose copy in crt is `b` and whose fd has status `flags`.
/// `stack`: the sockets whose queues carry this one (to refuse cycles).
fn record(
    st: &mut DumpState,
    ext: External,
    at: At,
    ino: u64,
    flags: u32,
    b: std::os::fd::BorrowedFd<'_>,
    stack: &mut Vec<u64>,
) -> Result<pb::UnixSocket, String> {
    let fd = FdDesc { pid: at.pid, fd: at.fd, ino, ..Default::default() };
    let s = st
        .socks
        .get(&ino)
        .cloned()
        .ok_or_else(|| format!("socket:[{ino}] is not in unix_diag's list (another network namespace?)"))?;
    let s = &s;
    if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&(s.typ as i32)) {
        return Err(format!("unix socket:[{}] has type {}, which crt does not handle", s.ino, s.typ));
    }
    let stream_like = s.typ as i32 != libc::SOCK_DGRAM;
    let mut img = pb::UnixSocket {
        me: Some(st.base(s, fd.pid, ext)),
        state: s.state as u32,
        flags,
        shutdown: s.shutdown as u32,
        ..Default::default()
    };

    // The peer, and who else is connected to this socket.
    let mut kind = Kind::PeerNone;
    let mut peer_ino = s.peer;
    if s.peer != 0 {
        kind = if st.held(s.peer) {
            Kind::PeerForest
        } else if ext == External::Close {
            Kind::PeerExternal
        } else {
            return Err(st.outside(s, &fd, s.peer, "peer"));
        };
    } else if let Some(&l) = st.pending_of.get(&s.ino) {
        peer_ino = l;
        kind = if st.held(l) {
            Kind::PeerPending
        } else if ext == External::Close {
            Kind::PeerExternal
        } else {
            return Err(st.outside(s, &fd, l, "listener (this connection is not accepted yet)"));
        };
        if s.rqlen.1 > 0 && kind == Kind::PeerPending {
            return Err(format!(
                "unix {} socket:[{}] sent data on a connection its listener socket:[{l}] has not \
                 accepted yet; crt cannot read it without accepting: let the server accept it first",
                type_name(s.typ as u32),
                s.ino
            ));
        }
    } else if stream_like && s.state == diag::TCP_ESTABLISHED {
        kind = Kind::PeerClosed;
    }
    if ext == External::Refuse {
        let mut related: Vec<(u64, &str)> = s.icons.iter().map(|&c| (c, "pending client")).collect();
        related.extend(st.reverse.get(&s.ino).cloned().unwrap_or_default().into_iter().map(|r| (r, "peer")));
        for (o, what) in related {
            if o != 0 && !st.held(o) {
                return Err(st.outside(s, &fd, o, what));
            }
        }
    }
    if let Some(p) = st.socks.get(&peer_ino).filter(|_| matches!(kind, Kind::PeerForest | Kind::PeerPending)) {
        img.peer = Some(st.base(p, fd.pid, ext));
        img.mutual = p.peer == s.ino;
    }
    img.peer_kind = kind as i32;
    img.peer_ino = peer_ino;

    // Options and the receive queue.
    img.passcred = queue::get_int(b, libc::SO_PASSCRED)? != 0;
    img.passsec = queue::get_int(b, libc::SO_PASSSEC).unwrap_or(0) != 0;
    img.sndbuf = queue::get_int(b, libc::SO_SNDBUF)?;
    img.rcvbuf = queue::get_int(b, libc::SO_RCVBUF)?;
    img.peek_off = queue::get_int(b, libc::SO_PEEK_OFF)?;
    img.filter = super::sockfilter::dump(b)?;
    if s.state != diag::TCP_LISTEN {
        let msgs = queue::peek_all(b, s.typ as i32 == libc::SOCK_STREAM, s.shutdown & 1 != 0)
            .map_err(|m| format!("reading the receive queue of socket:[{}]: {m}", s.ino))?;
        stack.push(s.ino);
        for m in msgs {
            let mut fds = Vec::with_capacity(m.fds.len());
            for f in &m.fds {
                fds.push(inflight_fd(st, ext, at, s, f.as_fd(), stack)?);
            }
            img.queue.push(pb::UnixMessage { data: m.data, sender: m.sender, fds });
            // `m.fds`, crt's copies of the descriptors in flight, close here.
        }
        stack.pop();
    }
    Ok(img)
}

/// The record of a descriptor in flight with a message queued on `carrier`
/// (`f` is crt's copy): a regular file opened by path or a unix socket.
fn inflight_fd(
    st: &mut DumpState,
    ext: External,
    at: At,
    carrier: &Sock,
    f: std::os::fd::BorrowedFd<'_>,
    stack: &mut Vec<u64>,
) -> Result<pb::UnixInflightFd, String> {
    let n = f.as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{n}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("(readlink: {e})"));
    let refuse = |why: &str| {
        format!(
            "pid {} fd {} (unix {} socket:[{}]) has a message in its receive queue carrying a file descriptor \
             in flight (SCM_RIGHTS): {link}, {why}; crt restores regular files and unix sockets in flight: let \
             the receiver read the message first",
            at.pid,
            at.fd,
            type_name(carrier.typ as u32),
            carrier.ino
        )
    };
    let desc = (|| -> Result<FdDesc, String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(format!("/proc/self/fd/{n}")).map_err(|e| format!("stat: {e}"))?;
        let info = crate::procfs::fdinfo(std::process::id() as i32, n).map_err(|e| e.to_string())?;
        Ok(FdDesc {
            pid: at.pid,
            fd: at.fd,
            link: link.as_str().into(),
            mode: meta.mode(),
            dev: meta.dev(),
            ino: meta.ino(),
            rdev: meta.rdev(),
            size: meta.size() as i64,
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            flags: info.flags & !(libc::O_CLOEXEC as u32),
            pos: info.pos,
            mnt_id: info.mnt_id,
        })
    })()
    .map_err(|e| refuse(&format!("which crt could not inspect ({e})")))?;
    let (handler, blob) = if desc.file_type() == libc::S_IFREG && link.starts_with('/') {
        let blob = super::regfile::dump_blob(&desc).map_err(|e| refuse(&e))?;
        ("regfile", blob)
    } else if let Some(ino) = socket_ino(&link).filter(|i| st.socks.contains_key(i)) {
        if stack.contains(&ino) {
            return Err(refuse("a socket that carries itself, directly or not (a cycle)"));
        }
        let rec = record(st, ext, at, ino, desc.flags, f, stack).map_err(|e| refuse(&format!("whose state: {e}")))?;
        ("unix", rec.encode_to_vec())
    } else {
        let kind = match desc.file_type() {
            libc::S_IFIFO => "a pipe or FIFO",
            libc::S_IFSOCK => "a socket that is not a unix socket of this namespace",
            libc::S_IFDIR => "a directory",
            libc::S_IFCHR | libc::S_IFBLK => "a device",
            libc::S_IFREG => "a regular file not opened by path",
            _ => "an anonymous inode",
        };
        return Err(refuse(&format!("which is {kind}")));
    };
    Ok(pb::UnixInflightFd { link, handler: handler.into(), blob })
}

impl Made {
    fn fd(&self, ino: u64) -> Result<std::os::fd::BorrowedFd<'_>, String> {
        self.socks.get(&ino).map(|f| f.as_fd()).ok_or_else(|| format!("socket:[{ino}] was not created"))
    }

    /// Creates `b` unless it exists: socket, bind, listen and pending connections.
    fn create_base(&mut self, b: &pb::UnixBase) -> Result<(), String> {
        if self.socks.contains_key(&b.ino) {
            return Ok(());
        }
        self.socks.insert(b.ino, queue::socket(b.r#type as i32)?);
        self.ensure_bound(b)?;
        if b.backlog > 0 {
            let fd = self.fd(b.ino)?;
            // SAFETY: listen(2) on a socket crt owns.
            if unsafe { libc::listen(fd.as_raw_fd(), b.backlog as i32) } != 0 {
                return Err(format!("listen on socket:[{}]: {}", b.ino, std::io::Error::last_os_error()));
            }
            let name =
                self.bound.get(&b.ino).cloned().ok_or_else(|| {
                    format!("listener socket:[{}] has no name to connect its pending clients to", b.ino)
                })?;
            for &c in &b.pending {
                if self.socks.contains_key(&c) {
                    continue;
                }
                let cs = queue::socket(b.r#type as i32)?;
                queue::connect(cs.as_fd(), &name)
                    .map_err(|e| format!("re-queueing pending client socket:[{c}] on socket:[{}]: {e}", b.ino))?;
                self.socks.insert(c, cs);
            }
        }
        Ok(())
    }

    /// Binds `b` to its name if it owns one and is not bound yet; recreates
    /// the socket file (mode, owner), replacing a stale socket file.
    fn ensure_bound(&mut self, b: &pb::UnixBase) -> Result<(), String> {
        if !b.bind || b.name.is_empty() || self.bound.contains_key(&b.ino) {
            return Ok(());
        }
        let fd = self.fd(b.ino)?;
        if b.name[0] == 0 {
            queue::bind(fd, &b.name)?;
            self.bound.insert(b.ino, b.name.clone());
            return Ok(());
        }
        if self.bound.values().any(|n| *n == b.name) {
            // Another socket of this restore owns the file now (it was replaced after this one bound).
            return Ok(());
        }
        let path = PathBuf::from(String::from_utf8_lossy(&b.name).into_owned());
        let mut name = b.name.clone();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if b.unlinked || !m.file_type().is_socket() => {
                if !b.unlinked {
                    return Err(format!(
                        "cannot recreate the socket file of unix socket:[{}] at {}: a file that is not a socket \
                         is there; move it away",
                        b.ino,
                        path.display()
                    ));
                }
                // Removed after bind, and the path is taken now: bind somewhere invisible.
                name = format!("/tmp/.crt-unix-{}-{}", std::process::id(), b.ino).into_bytes();
                let _ = std::fs::remove_file(String::from_utf8_lossy(&name).as_ref());
            }
            Ok(_) => {
                std::fs::remove_file(&path)
                    .map_err(|e| format!("removing the stale socket file {}: {e}", path.display()))?;
            }
            Err(_) => {}
        }
        queue::bind(fd, &name).map_err(|e| format!("unix socket:[{}]: {e}", b.ino))?;
        let bound_path = PathBuf::from(String::from_utf8_lossy(&name).into_owned());
        if b.unlinked {
            self.unlink.push(bound_path);
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bound_path, std::fs::Permissions::from_mode(b.mode))
                .map_err(|e| format!("chmod {}: {e}", bound_path.display()))?;
            std::os::unix::fs::lchown(&bound_path, Some(b.uid), Some(b.gid))
                .map_err(|e| format!("chown {}: {e}", bound_path.display()))?;
        }
        self.bound.insert(b.ino, name);
        Ok(())
    }

    fn restore(&mut self, s: &pb::UnixSocket, connect_to: Option<&[u8]>) -> Result<OwnedFd, String> {
        let me = s.me.as_ref().ok_or("unix record without its socket")?;
        let typ = me.r#type as i32;
        let kind = Kind::try_from(s.peer_kind).unwrap_or(Kind::PeerNone);
        let mut closer: Option<OwnedFd> = None;
        let mut external = None;
        if !self.socks.contains_key(&me.ino) {
            match kind {
                Kind::PeerForest if typ != libc::SOCK_DGRAM || s.mutual => {
                    if self.socks.contains_key(&s.peer_ino) {
                        return Err(format!(
                            "the peer socket:[{}] of socket:[{}] was created without it",
                            s.peer_ino, me.ino
                        ));
                    }
                    let (a, b) = queue::socketpair(typ)?;
                    self.socks.insert(me.ino, a);
                    self.socks.insert(s.peer_ino, b);
                }
                Kind::PeerExternal if connect_to.is_some() => {
                    let a = queue::socket(typ)?;
                    let path = connect_to.unwrap_or_default();
                    queue::connect(a.as_fd(), path).map_err(|e| {
                        format!("unix:connect for socket:[{}] (peer socket:[{}]): {e}", me.ino, s.peer_ino)
                    })?;
                    self.socks.insert(me.ino, a);
                    external = Some(path.to_vec());
                }
                Kind::PeerClosed | Kind::PeerExternal => {
                    let (a, b) = queue::socketpair(typ)?;
                    self.socks.insert(me.ino, a);
                    closer = Some(b);
                }
                Kind::PeerPending => {
                    let l = s.peer.as_ref().ok_or("pending connection without its listener")?;
                    self.create_base(l)?;
                    if !self.socks.contains_key(&me.ino) {
                        return Err(format!(
                            "pending client socket:[{}] is not in the queue of its listener socket:[{}]",
                            me.ino, l.ino
                        ));
                    }
                }
                _ => self.create_base(me)?,
            }
        }
        self.ensure_bound(me)?;
        if typ == libc::SOCK_DGRAM && kind == Kind::PeerForest && !s.mutual {
            let p = s.peer.as_ref().ok_or("datagram peer without its record")?;
            self.create_base(p)?;
            let name = self.bound.get(&p.ino).cloned().ok_or_else(|| {
                format!("datagram socket:[{}] is connected to socket:[{}], which has no name", me.ino, p.ino)
            })?;
            queue::connect(self.fd(me.ino)?, &name)?;
        }

        // Refill the receive queue from the sending side, once.
        let first = self.refilled.insert(me.ino);
        if first
            && (s.queue.iter().any(|m| !m.data.is_empty() || !m.fds.is_empty())
                || (typ != libc::SOCK_STREAM && !s.queue.is_empty()))
        {
            if let Some(path) = &external {
                tracing::warn!(
                    ino = me.ino,
                    bytes = s.queue.iter().map(|m| m.data.len()).sum::<usize>(),
                    "unix:connect to {}: the bytes the old peer had sent are dropped",
                    diag::show_name(path)
                );
            } else {
                self.restoring.push(me.ino);
                let carried = self.carried(s);
                self.restoring.pop();
                self.refill(s, me, kind, closer.as_ref(), &carried?)?;
            }
        }
        drop(closer);

        if first {
            self.finals.push((me.ino, s.sndbuf, s.rcvbuf, s.shutdown));
        }
        let fd = self.fd(me.ino)?;
        if s.passcred {
            queue::set_int(fd, libc::SO_PASSCRED, 1)?;
        }
        if s.passsec {
            let _ = queue::set_int(fd, libc::SO_PASSSEC, 1);
        }
        if s.peek_off >= 0 {
            queue::set_int(fd, libc::SO_PEEK_OFF, s.peek_off)?;
        }
        if let Some(f) = &s.filter {
            super::sockfilter::restore(fd, f)?;
        }
        let out = fd.try_clone_to_owned().map_err(|e| format!("dup: {e}"))?;
        queue::fcntl(out.as_fd(), libc::F_SETFL, s.flags as i32 & libc::O_NONBLOCK)?;
        Ok(out)
    }

    /// The descriptors in flight with each message of `s`'s queue, recreated.
    fn carried(&mut self, s: &pb::UnixSocket) -> Result<Vec<Vec<OwnedFd>>, String> {
        let own = s.me.as_ref().map(|m| m.ino).unwrap_or(0);
        let mut out = Vec::with_capacity(s.queue.len());
        for m in &s.queue {
            let mut fds = Vec::with_capacity(m.fds.len());
            for f in &m.fds {
                let err = |e: String| format!("socket:[{own}]: descriptor in flight {}: {e}", f.link);
                let fd = match f.handler.as_str() {
                    "regfile" => {
                        let raw = super::regfile::restore(&f.blob).map_err(err)?;
                        // SAFETY: regfile::restore hands over a descriptor it just opened.
                        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
                    }
                    "unix" => {
                        let rec = pb::UnixSocket::decode(f.blob.as_slice())
                            .map_err(|e| err(format!("corrupt unix socket record: {e}")))?;
                        let ino = rec.me.as_ref().map(|m| m.ino).unwrap_or(0);
                        if self.restoring.contains(&ino) {
                            return Err(err(format!("socket:[{ino}] carries itself in flight (a cycle)")));
                        }
                        self.restore(&rec, None).map_err(err)?
                    }
                    h => return Err(err(format!("unknown handler {h:?} (an image from a newer crt?)"))),
                };
                fds.push(fd);
            }
            out.push(fds);
        }
        Ok(out)
    }

    fn refill(
        &self,
        s: &pb::UnixSocket,
        me: &pb::UnixBase,
        kind: Kind,
        closer: Option<&OwnedFd>,
        carried: &[Vec<OwnedFd>],
    ) -> Result<(), String> {
        let typ = me.r#type as i32;
        let scratch;
        let (writer, dest) = match (closer, kind) {
            (Some(c), _) => (c.as_fd(), None),
            (None, Kind::PeerForest) if typ != libc::SOCK_DGRAM || s.mutual => (self.fd(s.peer_ino)?, None),
            (None, _) => {
                let name = self.bound.get(&me.ino).cloned().ok_or_else(|| {
                    format!("socket:[{}] has queued datagrams but no name crt could send them to", me.ino)
                })?;
                let w = if kind == Kind::PeerForest {
                    self.fd(s.peer_ino)?
                } else {
                    scratch = queue::socket(libc::SOCK_DGRAM)?;
                    scratch.as_fd()
                };
                (w, Some(name))
            }
        };
        let total: usize = s.queue.iter().map(|m| m.data.len() + 512).sum();
        let cur = queue::get_int(writer, libc::SO_SNDBUF)?;
        if (cur as usize) < total * 2 {
            queue::set_int(writer, libc::SO_SNDBUFFORCE, total.min(i32::MAX as usize / 2) as i32)?;
        }
        for (i, m) in s.queue.iter().enumerate() {
            let fds: Vec<_> = carried.get(i).into_iter().flatten().map(|f| f.as_fd()).collect();
            // An unconnected receiver sees who sent each datagram: send it
            // from the sender's name when crt can take that name.
            let sender = match (&dest, m.sender.is_empty()) {
                (Some(_), false) => self.sender_socket(&m.sender),
                _ => None,
            };
            let from = sender.as_ref().map(|(f, _)| f.as_fd()).unwrap_or(writer);
            queue::send(from, &m.data, &fds, dest.as_deref(), typ == libc::SOCK_STREAM)
                .map_err(|e| format!("socket:[{}]: {e}", me.ino))?;
            if let Some((_, Some(path))) = sender {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// A datagram socket bound to `name` to replay a queued datagram from:
    /// a restored socket that has that name, or a temporary one (with the
    /// socket file to remove afterwards for a pathname; a stale socket file
    /// there is replaced). None when a live socket holds the name: the
    /// datagram is then sent unnamed.
    fn sender_socket(&self, name: &[u8]) -> Option<(OwnedFd, Option<std::path::PathBuf>)> {
        if let Some(ino) = self.bound.iter().find(|(_, n)| n.as_slice() == name).map(|(i, _)| *i) {
            if let Ok(fd) = self.fd(ino) {
                return fd.try_clone_to_owned().ok().map(|f| (f, None));
            }
        }
        let tmp = queue::socket(libc::SOCK_DGRAM).ok()?;
        let path =
            (name.first() != Some(&0)).then(|| std::path::PathBuf::from(String::from_utf8_lossy(name).into_owned()));
        if queue::bind(tmp.as_fd(), name).is_err() {
            // A socket file nobody listens on any more is stale: replace it.
            let probe = queue::socket(libc::SOCK_DGRAM).ok()?;
            let stale = path.is_some() && queue::connect(probe.as_fd(), name).is_err();
            if !stale {
                return None;
            }
            std::fs::remove_file(path.as_ref()?).ok()?;
            queue::bind(tmp.as_fd(), name).ok()?;
        }
        Some((tmp, path))
    }

    /// Buffer sizes and shutdowns, once every queue is full.
    fn apply_finals(&mut self) -> Result<(), String> {
        if self.finals_done {
            return Ok(());
        }
        self.finals_done = true;
        for &(ino, snd, rcv, shut) in &self.finals {
            let fd = self.fd(ino)?;
            queue::set_int(fd, libc::SO_SNDBUFFORCE, snd / 2).map_err(|e| format!("socket:[{ino}]: {e}"))?;
            queue::set_int(fd, libc::SO_RCVBUFFORCE, rcv / 2).map_err(|e| format!("socket:[{ino}]: {e}"))?;
            let how = match shut & 3 {
                1 => libc::SHUT_RD,
                2 => libc::SHUT_WR,
                3 => libc::SHUT_RDWR,
                _ => continue,
            };
            // SAFETY: shutdown(2) on a socket crt holds.
            if unsafe { libc::shutdown(fd.as_raw_fd(), how) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENOTCONN) {
                    return Err(format!("shutdown of socket:[{ino}]: {e}"));
                }
            }
        }
        Ok(())
    }
}

impl Handler for Unix {
    fn name(&self) -> RString {
        "unix".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: unix sockets (stream, seqpacket, datagram) with both ends, queued bytes and fds in flight".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        if fd.file_type() != libc::S_IFSOCK || !fd.link.starts_with("socket:[") {
            return false;
        }
        let Ok(mut guard) = self.dump.lock() else { return false };
        if guard.is_none() {
            match DumpState::load(&[fd.pid]) {
                Ok(st) => *guard = Some(st),
                Err(_) => return false,
            }
        }
        guard.as_ref().is_some_and(|st| st.socks.contains_key(&fd.ino))
    }

    fn configure(&self, key: RStr<'_>, value: RStr<'_>) -> RResult<(), RString> {
        let r = (|| -> Result<(), String> {
            let mut o = lock(&self.opts, "option")?;
            match key.as_str() {
                "external" => {
                    o.external = match value.as_str() {
                        "close" => External::Close,
                        "refuse" => External::Refuse,
                        v => return Err(format!("external={v}: expected close or refuse")),
                    }
                }
                "connect" => {
                    let (ino, path) = value
                        .as_str()
                        .split_once('=')
                        .ok_or("connect expects INO=PATH (an inode from the dump's error or `crt show`)")?;
                    let ino: u64 = ino
                        .trim_start_matches("socket:[")
                        .trim_end_matches(']')
                        .parse()
                        .map_err(|_| format!("connect={value}: {ino:?} is not a socket inode"))?;
                    let name = match path.strip_prefix('@') {
                        Some(abs) => [&[0u8][..], abs.as_bytes()].concat(),
                        None => path.as_bytes().to_vec(),
                    };
                    o.connect.insert(ino, name);
                }
                k => return Err(format!("unknown option {k} (have: external=close|refuse, connect=INO=PATH)")),
            }
            Ok(())
        })();
        r.map_err(RString::from).into()
    }

    fn dump_checkpoint(&self, pids: RSlice<'_, i32>) -> RResult<(), RString> {
        let r = DumpState::load(pids.as_slice()).and_then(|st| {
            *lock(&self.dump, "dump")? = Some(st);
            Ok(())
        });
        r.map_err(RString::from).into()
    }

    fn dump_fd(&self, task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        self.dump_one(task, fd).map(RVec::from).map_err(RString::from).into()
    }

    fn dump_finish(&self, _ok: bool) {
        if let Ok(mut g) = self.dump.lock() {
            *g = None;
        }
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r = (|| -> Result<i32, String> {
            let s = pb::UnixSocket::decode(blob.as_slice()).map_err(|e| format!("corrupt unix socket record: {e}"))?;
            let connect_to = {
                let o = lock(&self.opts, "option")?;
                let own = s.me.as_ref().map(|m| m.ino).unwrap_or(0);
                o.connect.get(&s.peer_ino).or_else(|| o.connect.get(&own)).cloned()
            };
            let mut made = lock(&self.made, "restore")?;
            Ok(made.restore(&s, connect_to.as_deref())?.into_raw_fd())
        })();
        r.map_err(RString::from).into()
    }

    fn restore_resume(&self, _task: TaskRef<'_>) -> RResult<(), RString> {
        let r = lock(&self.made, "restore").and_then(|mut m| m.apply_finals());
        r.map_err(RString::from).into()
    }

    fn restore_finish(&self, _ok: bool) {
        if let Ok(mut m) = self.made.lock() {
            for p in m.unlink.drain(..) {
                let _ = std::fs::remove_file(p);
            }
            *m = Made::default();
        }
    }
}
