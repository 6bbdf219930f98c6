//! SysV IPC on the host. Shared memory: segments found again or recreated
//! with their ids, keys, sizes, modes, owners and bytes, attached where
//! they were (`sysv_shm` checks all of it from inside); an attach by a
//! process outside the forest refused at dump, a segment id taken by
//! another segment refused at restore. Message queues and semaphore sets
//! (`sysv_ipc`): found again or recreated with their ids, keys, modes,
//! owners, messages and values; semaphore undo adjustments refused.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::time::Duration;

use crt_tests::{
    dump, pid_alive, poll_until, DirSnapshot, Forest, Restored, TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE,
};

/// The ids a `sysv_shm` or `sysv_ipc` workload wrote to `sysv_ids`.
fn segment_ids(w: &Workload) -> Vec<i32> {
    let text = std::fs::read_to_string(w.dir().join("sysv_ids")).expect("sysv_ids");
    text.split_whitespace().map(|s| s.parse().expect("an id")).collect()
}

/// The kinds of the ids in `sysv_ids`, by workload.
fn kinds(w: &Workload) -> &'static [Kind] {
    match w.name() {
        "sysv_ipc" => &[Kind::Msg, Kind::Msg, Kind::Sem],
        _ => &[Kind::Shm, Kind::Shm, Kind::Shm],
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Shm,
    Msg,
    Sem,
}

/// Removes object `id` (a segment is destroyed once unattached); false if none.
fn remove(kind: Kind, id: i32) -> bool {
    let r = match kind {
        // SAFETY: IPC_RMID takes no buffer.
        Kind::Shm => unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) },
        // SAFETY: as above.
        Kind::Msg => unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) },
        // SAFETY: as above.
        Kind::Sem => unsafe { libc::semctl(id, 0, libc::IPC_RMID) },
    };
    r == 0
}

/// Removes a workload's objects when a test ends, passed or not (the
/// workload removes them itself when it gets to its end).
struct Cleanup(Vec<(Kind, i32)>);

impl Cleanup {
    fn of(w: &Workload) -> Self {
        w.wait_ready(READY_TIMEOUT);
        Self(kinds(w).iter().copied().zip(segment_ids(w)).collect())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for &(kind, id) in &self.0 {
            remove(kind, id);
        }
    }
}

/// Segments still there after the dump killed their users: found again.
#[test]
fn sysv_shm_segments_found_again() {
    crt_tests::init!();
    let f = Forest::spawn(&["sysv_shm"]);
    let _c = Cleanup::of(&f.workloads[0]);
    f.roundtrip();
}

/// Segments gone since the dump (as after a reboot): recreated with their
/// ids as their creator, bytes and holes as dumped.
#[test]
fn sysv_shm_segments_recreated() {
    crt_tests::init!();
    recreated(Workload::spawn("sysv_shm"));
}

/// Dump, remove the objects, restore: the workload finds them as before.
fn recreated(w: Workload) {
    let f = Forest::from_workloads(vec![w]);
    let c = Cleanup::of(&f.workloads[0]);
    f.dump(&[]).assert_success();
    for &(kind, id) in &c.0 {
        assert!(remove(kind, id), "object {id} was gone after the dump");
    }
    let r = f.restore(&[]);
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&f.refs());
}

/// The same, for segments of an unprivileged user: recreated as their
/// creator (its `cuid`/`cgid`), owned and locked by it.
#[test]
fn sysv_shm_segments_recreated_as_user() {
    crt_tests::init!();
    recreated(Workload::spawn_as("sysv_shm", 2345));
}

/// An attach by a process that is not dumped: refused, naming both, and
/// the workload runs on untouched.
#[test]
fn sysv_shm_attached_outside_is_refused() {
    crt_tests::init!();
    let w = Workload::spawn("sysv_shm");
    let c = Cleanup::of(&w);
    let id = c.0[0].1;
    // SAFETY: attaching segment A anywhere in this process; detached below.
    let p = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    assert_ne!(p as isize, -1, "shmat: {}", std::io::Error::last_os_error());
    let img = TestDir::new("crt-img-");
    let out = dump(&[&w], img.path(), &[]);
    // SAFETY: detaching the attach made above.
    unsafe { libc::shmdt(p) };
    out.assert_failure()
        .assert_stderr_mentions_number(w.pid())
        .assert_stderr_mentions_number(id)
        .assert_stderr_mentions_number(std::process::id())
        .assert_stderr_contains("SysV shared memory");
    eprintln!("the refused dump, as expected:\n{out}");
    assert!(DirSnapshot::take(img.path()).is_empty(), "a refused dump left files behind");
    w.assert_alive("after the refused dump");
    w.terminate_and_check();
}

/// A segment id taken by another segment at restore: refused, naming it,
/// nothing left running, the image untouched; restored once it is free.
#[test]
fn sysv_shm_id_taken_is_refused_at_restore() {
    crt_tests::init!();
    let f = Forest::spawn(&["sysv_shm"]);
    let c = Cleanup::of(&f.workloads[0]);
    f.dump(&[]).assert_success();
    let id = c.0[0].1;
    assert!(remove(Kind::Shm, id), "segment {id} was gone after the dump");
    std::fs::write("/proc/sys/kernel/shm_next_id", id.to_string()).unwrap();
    // SAFETY: shmget with integer arguments.
    let intruder = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600) };
    assert_eq!(intruder, id, "could not take id {id}: {}", std::io::Error::last_os_error());
    let before = DirSnapshot::take(f.img_dir());
    let out = Restored::start(f.img_dir(), &[]).wait_exit(Duration::from_secs(30));
    remove(Kind::Shm, intruder);
    out.assert_failure().assert_stderr_mentions_number(id).assert_stderr_contains("ipcrm");
    eprintln!("the refused restore, as expected:\n{out}");
    assert_eq!(DirSnapshot::take(f.img_dir()), before, "the failed restore changed the image");
    let pids = f.workloads[0].all_pids();
    let gone = poll_until(Duration::from_secs(10), || !pids.iter().any(|&p| pid_alive(p)));
    assert!(gone, "the failed restore left some of {pids:?} running\n{out}");
    let r = f.restore(&[]);
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&f.refs());
}

/// Queues and sets still there after the dump: found again, emptied and
/// refilled as dumped.
#[test]
fn sysv_queues_and_semaphores_found_again() {
    crt_tests::init!();
    let f = Forest::spawn(&["sysv_ipc"]);
    let _c = Cleanup::of(&f.workloads[0]);
    f.roundtrip();
}

/// Queues and sets gone since the dump: recreated with their ids.
#[test]
fn sysv_queues_and_semaphores_recreated() {
    crt_tests::init!();
    recreated(Workload::spawn("sysv_ipc"));
}

/// The same for an unprivileged user's: recreated as their creator.
#[test]
fn sysv_queues_and_semaphores_recreated_as_user() {
    crt_tests::init!();
    recreated(Workload::spawn_as("sysv_ipc", 2345));
}

/// A semaphore undo adjustment cannot be read: refused, and the process
/// runs on untouched (its adjustment still in place).
#[test]
fn sem_undo_is_refused() {
    crt_tests::init!();
    let w = Workload::spawn_with_env("sysv_ipc", &[("CRT_SYSV_UNDO", "1")]);
    let _c = Cleanup::of(&w);
    let img = TestDir::new("crt-img-");
    let out = dump(&[&w], img.path(), &[]);
    out.assert_failure().assert_stderr_mentions_number(w.pid()).assert_stderr_contains("SEM_UNDO");
    assert!(DirSnapshot::take(img.path()).is_empty(), "a refused dump left files behind");
    w.assert_alive("after the refused dump");
    w.terminate_and_check();
}
