//! Processes of another user: a service usually runs as its own user, and
//! root on these machines lacks `CAP_SYS_RESOURCE`, so some of its state
//! cannot be read or set from outside (`prlimit` on it fails with `EPERM`).
//! Each test runs one workload as an unprivileged uid from its start (its
//! files, pipes, sockets, memory and children are that user's), and checks
//! after the restore, from inside, that its state is whole and that it
//! still runs as that user.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;

use crt_tests::{descendants, Forest, Workload, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP};

/// A uid (and gid) with no account and no privileges.
const UID: u32 = 2345;

/// Asserts every process of `w`'s tree runs as [`UID`] (real, effective,
/// saved and filesystem ids) and, unless a zombie, owns its `/proc` entry.
fn assert_user(w: &Workload, when: &str) {
    let want = format!("{UID}\t{UID}\t{UID}\t{UID}");
    for pid in std::iter::once(w.pid()).chain(descendants(w.pid())) {
        // A child that just exited has no entry any more.
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
        for key in ["Uid:", "Gid:"] {
            assert_eq!(field(key), Some(want.as_str()), "{when}: pid {pid} of {w:?}: {key}");
        }
        // /proc/PID belongs to the process's user while it is dumpable
        // (changing credentials clears that flag: crt sets it again).
        let zombie = field("State:").is_some_and(|s| s.starts_with('Z'));
        if let (false, Ok(m)) = (zombie, std::fs::metadata(format!("/proc/{pid}"))) {
            assert_eq!(m.uid(), UID, "{when}: /proc/{pid} of {w:?} is not its user's: not dumpable");
        }
    }
}

/// [`Forest::roundtrip`] of workload `name` started as [`UID`].
fn roundtrip_as(name: &str) {
    let f = Forest::from_workloads(vec![Workload::spawn_as(name, UID)]);
    let w = &f.workloads[0];
    f.wait_ready();
    assert_user(w, "before the dump");
    f.prepare();
    std::thread::sleep(RUN_BEFORE_DUMP);
    f.dump(&[]).assert_success();
    let r = f.restore(&[]);
    assert_user(w, "after the restore");
    std::thread::sleep(RUN_AFTER_RESTORE);
    w.exercise();
    r.finish(&f.refs());
}

macro_rules! as_user {
    ($($test:ident: $workload:literal, $what:literal;)*) => {$(
        #[doc = $what]
        #[test]
        fn $test() {
            crt_tests::init!();
            roundtrip_as($workload);
        }
    )*};
}

as_user! {
    counters_as_user: "counters", "Memory, registers and a running loop.";
    file_offset_as_user: "file_offset", "A regular file the user created, with its offset.";
    signals_as_user: "signals", "Signal handlers, mask and pending signals.";
    timers_rlimits_as_user: "timers_rlimits", "Timers and rlimits (read and set from inside: EPERM from outside).";
    fd_state_as_user: "fd_state", "Open flags, SIGIO owners, POSIX/flock/OFD locks and a lease.";
    ghosts_as_user: "ghosts", "Files deleted while open, with holes, mode and times.";
    memfd_share_as_user: "memfd_share", "memfds shared between processes.";
    shared_mem_as_user: "shared_mem", "Shared anonymous memory between parent and child.";
    cow_fork_as_user: "cow_fork", "Copy-on-write sharing since fork.";
    memstate_as_user: "memstate", "madvise, mlock and guard regions.";
    sysv_shm_as_user: "sysv_shm", "SysV shared memory segments the user created and locked.";
    sysv_ipc_as_user: "sysv_ipc", "SysV message queues and semaphores the user created.";
    tree_pipes_as_user: "tree_pipes", "A tree of processes joined by pipes.";
    tcp_states_as_user: "tcp_states", "Half-closed TCP connections (repair mode on sockets of another user).";
    threads4_as_user: "threads4", "Threads.";
    thread_timers_as_user: "thread_timers", "POSIX timers that notify a thread.";
    zombies_as_user: "zombies", "Zombies with their process groups and statuses.";
    session_as_user: "session", "Sessions and process groups.";
    eventfd_as_user: "eventfd_holder", "eventfds.";
    inotify_as_user: "inotify_watch", "inotify watches.";
    anon_fds_as_user: "anon_fds", "signalfd, timerfd, epoll.";
    unix_spair_as_user: "unix_spair", "A unix socketpair with data in flight.";
    unix_scm_as_user: "unix_scm", "fds in flight over a unix socket.";
    unix_unlinked_as_user: "unix_unlinked", "A unix socket whose file was removed.";
    fifo_pair_as_user: "fifo_pair", "FIFOs.";
    pidfds_as_user: "pidfds", "pidfds.";
    prctl_state_as_user: "prctl_state", "prctl attributes.";
    vmas_as_user: "vmas", "Mappings of every kind.";
    clone_files_as_user: "clone_files", "Processes sharing one fd table.";
    shared_file_as_user: "shared_file", "One open file shared by a parent and its child.";
    stopped_as_user: "stopped", "A stopped process stays stopped.";
    unix_backlog_as_user: "unix_backlog", "A listening unix socket with connections to accept.";
    unix_dgram_as_user: "unix_dgram", "unix datagram sockets with queued datagrams.";
    unix_fan_as_user: "unix_fan", "A unix server with several clients.";
    avx_as_user: "avx", "AVX registers.";
    manythreads_as_user: "manythreads", "Many threads.";
    rust_std_as_user: "wl-rust-std", "A Rust program (std threads, channels, files).";
}
