//! SysV message queues and semaphore sets of the forest, on the host.
//!
//! Neither is held through an fd or a memory area: a process names them by
//! id or key, and they live in the IPC namespace until `IPC_RMID`. The
//! dump takes the ones the forest uses, as the kernel records it: a queue
//! whose last sender or receiver (`lspid`, `lrpid`) is a dumped process, a
//! set one of whose semaphores a dumped process changed last (`GETPID`).
//! Each is stored with its id, key, mode, owners and contents (the
//! messages in order, read with `MSG_COPY` without taking them; the
//! semaphore values) in `ipc.img`. Restore, before it creates any task,
//! finds each object again (same id, key, mode and owners: emptied and
//! refilled to what was dumped) or creates it with its id
//! (`/proc/sys/kernel/msg_next_id`, `sem_next_id`) as its creator.
//!
//! Semaphore undo adjustments (`semop` with `SEM_UNDO`) live in the
//! process but cannot be read: when the forest uses semaphore sets, a
//! thread with an undo list is refused. (Only then: `clone` with
//! `CLONE_SYSVSEM`, as every pthread is made, gives the process an empty
//! undo list, which cannot be told from one with adjustments.)

use std::collections::HashSet;

use crate::images::pb;

/// A SysV IPC object that cannot be dumped or restored.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// A system call on an object failed.
    #[error("SysV {what}: {source}")]
    Io {
        /// The object and the call.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A process's state crt cannot dump.
    #[error("pid {pid}: {what}")]
    Refused {
        /// The process.
        pid: i32,
        /// What and why.
        what: String,
    },
    /// An object cannot be restored as dumped.
    #[error("SysV {what}")]
    Restore {
        /// The object and why.
        what: String,
    },
}

const KCMP_SYSVSEM: i32 = 6;
/// `msgrcv` flag: copy the message at an index, leave it queued.
const MSG_COPY: i32 = 0o40000;
/// Largest message crt reads (`msgmax` cannot exceed it much in practice).
const MSG_BUF: usize = 1 << 20;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> IpcError {
    let what = what.into();
    move |source| IpcError::Io { what, source }
}

fn last_err<T>(r: T, bad: bool, what: impl Into<String>) -> Result<T, IpcError> {
    if bad {
        return Err(io(what)(std::io::Error::last_os_error()));
    }
    Ok(r)
}

/// Refuses threads with a semaphore undo list (which may hold adjustments):
/// their list is not crt's, which has none (crt never uses `semop` nor
/// `CLONE_SYSVSEM`), compared with `kcmp(KCMP_SYSVSEM)`.
pub fn check_no_undo(tids: &[(i32, i32)]) -> Result<(), IpcError> {
    let me = std::process::id() as i32;
    for &(pid, tid) in tids {
        // SAFETY: kcmp takes integers only.
        let r = unsafe { libc::syscall(libc::SYS_kcmp, me, tid, KCMP_SYSVSEM, 0, 0) };
        if r > 0 {
            return Err(IpcError::Refused {
                pid,
                what: format!("thread {tid} has SysV semaphore undo adjustments (semop with SEM_UNDO), which crt cannot read; use semop without SEM_UNDO"),
            });
        }
    }
    Ok(())
}

/// Rows of `/proc/sysvipc/NAME` as numbers (the header line skipped).
fn table(name: &str) -> Result<Vec<Vec<i64>>, IpcError> {
    let path = format!("/proc/sysvipc/{name}");
    let text = std::fs::read_to_string(&path).map_err(io(format!("reading {path}")))?;
    Ok(text.lines().skip(1).map(|l| l.split_whitespace().map(|w| w.parse().unwrap_or(-1)).collect()).collect())
}

/// The message queues and semaphore sets the processes `pids` use.
pub fn dump(pids: &[i32]) -> Result<pb::SysvIpc, IpcError> {
    let forest: HashSet<i64> = pids.iter().map(|&p| i64::from(p)).collect();
    let mut ipc = pb::SysvIpc::default();
    // key msqid perms cbytes qnum lspid lrpid ...
    for row in table("msg")? {
        if row.len() > 6 && (forest.contains(&row[5]) || forest.contains(&row[6])) {
            ipc.queues.push(dump_queue(row[1] as i32)?);
        }
    }
    // key semid perms nsems ...
    for row in table("sem")? {
        if row.len() > 3 {
            if let Some(set) = dump_sem_set(row[1] as i32, row[3] as i32, &forest)? {
                ipc.sets.push(set);
            }
        }
    }
    Ok(ipc)
}

fn msg_stat(id: i32) -> std::io::Result<libc::msqid_ds> {
    // SAFETY: msqid_ds is plain data; all zeroes is a valid value.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one msqid_ds into `ds`, which is ours.
    if unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ds)
}

fn perm(p: &libc::ipc_perm) -> pb::IpcPerm {
    pb::IpcPerm { key: p.__key, mode: u32::from(p.mode) & 0o777, uid: p.uid, gid: p.gid, cuid: p.cuid, cgid: p.cgid }
}

fn dump_queue(id: i32) -> Result<pb::MsgQueue, IpcError> {
    let what = format!("message queue {id}");
    let ds = msg_stat(id).map_err(io(format!("{what}: IPC_STAT")))?;
    let mut buf = vec![0u8; size_of::<libc::c_long>() + MSG_BUF];
    let mut messages = Vec::new();
    for index in 0..ds.msg_qnum as i64 {
        // SAFETY: `buf` holds a long and MSG_BUF bytes, as msgrcv may write.
        let n = unsafe {
            libc::msgrcv(id, buf.as_mut_ptr().cast(), MSG_BUF, index, libc::IPC_NOWAIT | MSG_COPY | libc::MSG_NOERROR)
        };
        let n = last_err(n, n < 0, format!("{what}: reading message {index} (msgrcv MSG_COPY)"))? as usize;
        let (ty, text) = buf.split_at(size_of::<libc::c_long>());
        let mtype = libc::c_long::from_ne_bytes(ty.try_into().unwrap_or_default());
        messages.push(pb::QueuedMessage { mtype, data: text[..n].to_vec() });
    }
    Ok(pb::MsgQueue { id, perm: Some(perm(&ds.msg_perm)), qbytes: ds.msg_qbytes, messages })
}

/// The set `id` of `nsems` semaphores, if a process of `forest` changed one last.
fn dump_sem_set(id: i32, nsems: i32, forest: &HashSet<i64>) -> Result<Option<pb::SemSet>, IpcError> {
    let what = format!("semaphore set {id}");
    let mut used = false;
    for i in 0..nsems {
        // SAFETY: GETPID takes no buffer.
        let pid = unsafe { libc::semctl(id, i, libc::GETPID) };
        used |= forest.contains(&i64::from(last_err(pid, pid < 0, format!("{what}: GETPID"))?));
    }
    if !used {
        return Ok(None);
    }
    let ds = sem_stat(id).map_err(io(format!("{what}: IPC_STAT")))?;
    let mut values = vec![0u16; nsems as usize];
    // SAFETY: GETALL writes nsems unsigned shorts into `values`.
    let r = unsafe { libc::semctl(id, 0, libc::GETALL, values.as_mut_ptr()) };
    last_err(r, r < 0, format!("{what}: GETALL"))?;
    Ok(Some(pb::SemSet { id, perm: Some(perm(&ds.sem_perm)), values: values.into_iter().map(u32::from).collect() }))
}

fn sem_stat(id: i32) -> std::io::Result<libc::semid_ds> {
    // SAFETY: semid_ds is plain data; all zeroes is a valid value.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one semid_ds into `ds`, which is ours.
    if unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ds)
}

/// Objects made ready at restore: (queue or set, id, created by crt).
#[derive(Debug, Default)]
pub struct Restored {
    made: Vec<(bool, i32, bool)>,
}

impl Restored {
    /// Removes what crt created (the restore failed).
    pub fn undo(&mut self) {
        for (queue, id, created) in self.made.drain(..) {
            if created {
                remove(queue, id);
            }
        }
    }
}

fn remove(queue: bool, id: i32) {
    if queue {
        // SAFETY: IPC_RMID takes no buffer.
        unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    } else {
        // SAFETY: IPC_RMID takes no argument.
        unsafe { libc::semctl(id, 0, libc::IPC_RMID) };
    }
}

/// Finds again or creates every queue and set of `ipc`, with its contents;
/// on error `done` lists what to undo.
pub fn restore(ipc: &pb::SysvIpc, done: &mut Restored) -> Result<(), IpcError> {
    for q in &ipc.queues {
        let p = q.perm.unwrap_or_default();
        let what = format!("message queue {} (key {:#x})", q.id, p.key);
        let found = msg_stat(q.id).ok().map(|ds| perm(&ds.msg_perm));
        let created = ready(found, &p, &what, q.id, "msg", || {
            // SAFETY: msgget with integer arguments.
            unsafe { libc::msgget(p.key, libc::IPC_CREAT | libc::IPC_EXCL | p.mode as i32) }
        })?;
        done.made.push((true, q.id, created));
        fill_queue(q, &p, &what)?;
    }
    for s in &ipc.sets {
        let p = s.perm.unwrap_or_default();
        let what = format!("semaphore set {} (key {:#x})", s.id, p.key);
        let found = sem_stat(s.id).ok().filter(|ds| ds.sem_nsems as usize == s.values.len());
        let found = found.map(|ds| perm(&ds.sem_perm));
        let n = s.values.len() as i32;
        let created = ready(found, &p, &what, s.id, "sem", || {
            // SAFETY: semget with integer arguments.
            unsafe { libc::semget(p.key, n, libc::IPC_CREAT | libc::IPC_EXCL | p.mode as i32) }
        })?;
        done.made.push((false, s.id, created));
        fill_set(s, &p, &what)?;
    }
    Ok(())
}

/// Checks an object found with the id (`found`: its permissions) is the
/// dumped one, or creates it; true if created.
fn ready(
    found: Option<pb::IpcPerm>,
    want: &pb::IpcPerm,
    what: &str,
    id: i32,
    kind: &str,
    get: impl FnOnce() -> i32 + Send,
) -> Result<bool, IpcError> {
    let (flag, by_key) = if kind == "msg" { ("-q", "-Q") } else { ("-s", "-S") };
    match found {
        Some(f) if &f == want => Ok(false),
        Some(f) => Err(IpcError::Restore {
            what: format!(
                "{what}: id {id} is taken by another object (key {:#x}, mode {:o}, owner {}:{}); remove it (ipcrm {flag} {id}) to restore the dumped one",
                f.key, f.mode, f.uid, f.gid
            ),
        }),
        None => {
            create_as(kind, id, want.cuid, want.cgid, get).map_err(|e| IpcError::Restore {
                what: format!(
                    "{what}: {e}{}",
                    if e.contains("EEXIST") { format!(" (ipcrm {by_key} {:#x})", want.key) } else { String::new() }
                ),
            })?;
            Ok(true)
        }
    }
}

/// Creates an object with id `id` through `/proc/sys/kernel/KIND_next_id`:
/// `get` (a `*get` call) runs on a thread of crt that takes the creator's
/// effective ids (raw syscalls change that thread only).
pub fn create_as(kind: &str, id: i32, cuid: u32, cgid: u32, get: impl FnOnce() -> i32 + Send) -> Result<(), String> {
    let next = format!("/proc/sys/kernel/{kind}_next_id");
    std::fs::write(&next, id.to_string()).map_err(|e| format!("writing {next}: {e}"))?;
    let got = std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<i32> {
            let keep = libc::uid_t::MAX; // -1: unchanged
                                         // SAFETY: setresgid with integer arguments, on this thread only.
            let r = unsafe { libc::syscall(libc::SYS_setresgid, keep, cgid, keep) };
            // SAFETY: as above, setresuid.
            if r != 0 || unsafe { libc::syscall(libc::SYS_setresuid, keep, cuid, keep) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let got = get();
            if got < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(got)
        })
        .join()
    });
    // The kernel takes the next id once; put it back if the call failed.
    let _ = std::fs::write(&next, "-1");
    match got {
        Err(_) => Err("the creating thread panicked".into()),
        Ok(Ok(got)) if got == id => Ok(()),
        Ok(Ok(got)) => {
            Err(format!("the kernel gave id {got} instead (another object was created at the same time?); id {got} is crt's, remove it"))
        }
        Ok(Err(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
            Err("its key belongs to another object (EEXIST); remove that one".into())
        }
        Ok(Err(e)) => Err(format!("creating it as uid {cuid} gid {cgid}: {e}")),
    }
}

fn fill_queue(q: &pb::MsgQueue, p: &pb::IpcPerm, what: &str) -> Result<(), IpcError> {
    let id = q.id;
    let mut buf = vec![0u8; size_of::<libc::c_long>() + MSG_BUF];
    // Empty it first: a queue found again may hold other messages.
    loop {
        // SAFETY: `buf` holds a long and MSG_BUF bytes, as msgrcv may write.
        let n = unsafe { libc::msgrcv(id, buf.as_mut_ptr().cast(), MSG_BUF, 0, libc::IPC_NOWAIT | libc::MSG_NOERROR) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOMSG) {
                break;
            }
            return Err(io(format!("{what}: emptying it"))(e));
        }
    }
    let mut ds = msg_stat(id).map_err(io(format!("{what}: IPC_STAT")))?;
    (ds.msg_perm.uid, ds.msg_perm.gid, ds.msg_perm.mode) = (p.uid, p.gid, p.mode as u16);
    ds.msg_qbytes = q.qbytes;
    // SAFETY: IPC_SET reads the msqid_ds we own.
    let r = unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) };
    last_err(r, r < 0, format!("{what}: IPC_SET (owner, mode, a limit of {} bytes)", q.qbytes))?;
    for (i, m) in q.messages.iter().enumerate() {
        let mut msg = m.mtype.to_ne_bytes().to_vec();
        msg.extend_from_slice(&m.data);
        // SAFETY: `msg` is a long followed by data.len() bytes.
        let r = unsafe { libc::msgsnd(id, msg.as_ptr().cast(), m.data.len(), libc::IPC_NOWAIT) };
        last_err(r, r < 0, format!("{what}: sending message {i} back"))?;
    }
    Ok(())
}

fn fill_set(s: &pb::SemSet, p: &pb::IpcPerm, what: &str) -> Result<(), IpcError> {
    let mut ds = sem_stat(s.id).map_err(io(format!("{what}: IPC_STAT")))?;
    (ds.sem_perm.uid, ds.sem_perm.gid, ds.sem_perm.mode) = (p.uid, p.gid, p.mode as u16);
    // SAFETY: IPC_SET reads the semid_ds we own.
    let r = unsafe { libc::semctl(s.id, 0, libc::IPC_SET, &mut ds) };
    last_err(r, r < 0, format!("{what}: IPC_SET"))?;
    let mut values: Vec<u16> = s.values.iter().map(|&v| v as u16).collect();
    // SAFETY: SETALL reads nsems unsigned shorts from `values`.
    let r = unsafe { libc::semctl(s.id, 0, libc::SETALL, values.as_mut_ptr()) };
    last_err(r, r < 0, format!("{what}: SETALL"))?;
    Ok(())
}
