//! Unix sockets (issue 4): socketpairs, connections between separate trees
//! over pathname, abstract and seqpacket sockets with data in flight both
//! ways, listeners with pending connections, datagrams, half-shut and
//! peer-closed connections, peers outside the dump (refused, or the
//! `external=close` / `connect=` policies) and failed dumps losing nothing.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use crt_tests::{
    dump, dump_env, DirSnapshot, Forest, Restored, TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP,
};

fn forest_env(name: &str, env: &[(&str, &str)]) -> Forest {
    Forest::from_workloads(Workload::spawn_group_with_env(name, env))
}

#[test]
fn socketpairs_in_one_process_and_across_fork() {
    crt_tests::init!();
    Forest::spawn(&["unix_spair"]).roundtrip();
}

#[test]
fn stream_pathname_between_two_trees() {
    crt_tests::init!();
    forest_env("stream_link", &[("CRT_UNIX_KIND", "path")]).roundtrip();
}

#[test]
fn stream_abstract_between_two_trees() {
    crt_tests::init!();
    forest_env("stream_link", &[("CRT_UNIX_KIND", "abstract")]).roundtrip();
}

#[test]
fn seqpacket_between_two_trees() {
    crt_tests::init!();
    forest_env("stream_link", &[("CRT_UNIX_KIND", "seqpacket")]).roundtrip();
}

#[test]
fn listener_with_pending_connections_half_shut_and_closed_peer() {
    crt_tests::init!();
    Forest::spawn(&["unix_backlog"]).roundtrip();
}

#[test]
fn datagrams_connected_and_unconnected() {
    crt_tests::init!();
    Forest::spawn(&["unix_dgram"]).roundtrip();
}

#[test]
fn all_unix_workloads_in_one_forest() {
    crt_tests::init!();
    let mut ws = Workload::spawn_group("unix_spair");
    ws.extend(Workload::spawn_group("stream_link"));
    ws.extend(Workload::spawn_group("unix_backlog"));
    ws.extend(Workload::spawn_group("unix_dgram"));
    Forest::from_workloads(ws).roundtrip();
}

/// `CRT_FAULT=dump-after-collect`: every socket was inspected (queues
/// peeked), then the dump fails; every workload must go on and pass with
/// every byte.
#[test]
fn failed_dump_after_collect_loses_no_byte() {
    crt_tests::init!();
    let mut ws = Workload::spawn_group("unix_spair");
    ws.extend(Workload::spawn_group("stream_link"));
    ws.extend(Workload::spawn_group_with_env("stream_link", &[("CRT_UNIX_KIND", "seqpacket")]));
    ws.extend(Workload::spawn_group("unix_backlog"));
    ws.extend(Workload::spawn_group("unix_dgram"));
    let f = Forest::from_workloads(ws);
    f.wait_ready();
    std::thread::sleep(RUN_BEFORE_DUMP);
    let out = dump_env(&f.refs(), f.img_dir(), &[], &[("CRT_FAULT", "dump-after-collect")]);
    out.assert_failure().assert_stderr_contains("injected");
    std::thread::sleep(RUN_AFTER_RESTORE);
    for w in &f.workloads {
        w.terminate_and_check();
    }
}

/// Regular files and a unix socket in flight (SCM_RIGHTS) in a stream and
/// a datagram queue: the receiver gets working fds at the right offsets,
/// with the message and fd boundaries it would have seen.
#[test]
fn descriptors_in_flight_scm_rights() {
    crt_tests::init!();
    Forest::spawn(&["unix_scm"]).roundtrip();
}

/// A failed dump after every queue carrying descriptors was peeked loses no
/// byte and no descriptor in flight.
#[test]
fn failed_dump_keeps_descriptors_in_flight() {
    crt_tests::init!();
    let f = Forest::spawn(&["unix_scm"]);
    f.wait_ready();
    std::thread::sleep(RUN_BEFORE_DUMP);
    let out = dump_env(&f.refs(), f.img_dir(), &[], &[("CRT_FAULT", "dump-after-collect")]);
    out.assert_failure().assert_stderr_contains("injected");
    std::thread::sleep(RUN_AFTER_RESTORE);
    for w in &f.workloads {
        w.terminate_and_check();
    }
}

/// A pipe in flight is refused, naming the process, fd, socket and the
/// pipe; the workload runs on with every message and descriptor.
#[test]
fn pipe_in_flight_is_refused_and_nothing_is_lost() {
    crt_tests::init!();
    let f = Forest::from_workloads(vec![Workload::spawn_with_env("unix_scm", &[("CRT_SCM_PIPE", "1")])]);
    f.wait_ready();
    std::thread::sleep(RUN_BEFORE_DUMP);
    let out = dump(&f.refs(), f.img_dir(), &[]);
    out.assert_failure()
        .assert_stderr_contains("SCM_RIGHTS")
        .assert_stderr_contains("pipe:[")
        .assert_stderr_contains("a pipe or FIFO")
        .assert_stderr_contains("unix datagram socket:[")
        .assert_stderr_mentions_number(f.workloads[0].roles()[0].pid);
    let snap = DirSnapshot::take(f.img_dir());
    assert!(snap.is_empty(), "a refused dump left files: {snap:?}");
    std::thread::sleep(RUN_AFTER_RESTORE);
    for w in &f.workloads {
        w.terminate_and_check();
    }
}

/// Dumps only one side (`dumped`: 0 = server, 1 = client) of a running
/// stream_link; the peer socket stays outside.
fn outside(dumped: usize, extra: &[&str], env: &[(&str, &str)]) -> (Vec<Workload>, TestDir, crt_tests::CrtOutput) {
    let ws = Workload::spawn_group_with_env("stream_link", env);
    for w in &ws {
        w.wait_ready(READY_TIMEOUT);
    }
    std::thread::sleep(RUN_BEFORE_DUMP);
    let img = TestDir::new("crt-img-");
    let out = dump(&[&ws[dumped]], img.path(), extra);
    (ws, img, out)
}

fn peer_inode(stderr: &str) -> u64 {
    let at = stderr.find("peer socket:[").unwrap_or_else(|| panic!("no peer socket in:\n{stderr}"));
    let rest = &stderr[at + "peer socket:[".len()..];
    rest[..rest.find(']').unwrap()].parse().unwrap()
}

#[test]
fn peer_outside_is_refused_and_both_run_on() {
    crt_tests::init!();
    for dumped in [0, 1] {
        let (ws, img, out) = outside(dumped, &[], &[]);
        out.assert_failure()
            .assert_stderr_mentions_number(ws[dumped].pid())
            .assert_stderr_mentions_number(ws[1 - dumped].pid())
            .assert_stderr_contains("unix:external=close")
            .assert_stderr_contains("--tree");
        crt_tests::assert_refusal_left_all_running(&ws, img.path());
    }
}

/// `external=close`: the client is dumped alone; restored, it reads every
/// byte that was queued for it in sequence, then EOF, and writes fail with
/// EPIPE.
#[test]
fn external_close_policy_restores_a_closed_connection() {
    crt_tests::init!();
    let env = [("CRT_UNIX_PEER_MAY_GO", "1")];
    let (ws, img, out) = outside(1, &["--handler-opt", "unix:external=close"], &env);
    out.assert_success();
    let client = &ws[1];
    let mut r = Restored::start(img.path(), &[]);
    r.wait_running(&[client]);
    std::thread::sleep(Duration::from_secs(1));
    ws[0].terminate_and_check();
    client.send(libc::SIGTERM);
    let o = r.wait_exit(Duration::from_secs(30));
    assert!(o.success(), "restored client failed:\n{}\n{}", o, client.log());
    let log = client.log();
    assert!(log.contains("eof=1 epipe=1") && log.contains("PASS"), "{log}");
}

/// `external=close` at dump + `connect=INO=PATH` at restore: the restored
/// client connects to a socket the test supplies and goes on sending its
/// sequence there.
#[test]
fn connect_policy_connects_to_a_supplied_socket() {
    crt_tests::init!();
    let env = [("CRT_UNIX_PEER_MAY_GO", "1")];
    // learn the peer's inode from the refusal, then dump with external=close
    let (ws, _img, out) = outside(1, &[], &env);
    out.assert_failure();
    let peer = peer_inode(&out.stderr);
    let img = TestDir::new("crt-img-");
    let client = &ws[1];
    dump(&[client], img.path(), &["--handler-opt", "unix:external=close"]).assert_success();
    let dir = TestDir::new("crt-unix-connect-");
    let path = dir.path().join("new.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let opt = format!("unix:connect={peer}={}", path.display());
    let mut r = Restored::start(img.path(), &["--handler-opt", &opt]);
    r.wait_running(&[client]);
    listener.set_nonblocking(false).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    let mut got = 0;
    let mut first = None;
    while got < 4096 {
        let n = conn.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "the restored client closed the new connection");
        if first.is_none() && got + n >= 8 {
            first = Some(u64::from_ne_bytes(buf[..8].try_into().unwrap()));
        }
        got += n;
    }
    // a continuous sequence from where the client was (well past 0)
    let first = first.unwrap();
    assert!(first > 0, "the client restarted its sequence");
    for i in 1..got / 8 {
        let v = u64::from_ne_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap());
        if first % 64 == 0 {
            assert_eq!(v, first + i as u64, "gap in the sequence sent to the new socket");
        }
    }
    ws[0].terminate_and_check();
    client.send(libc::SIGTERM);
    drop(conn);
    let o = r.wait_exit(Duration::from_secs(30));
    assert!(o.success(), "restored client failed:\n{}\n{}", o, client.log());
}
