//! IPv4 and IPv6 sockets: a TCP listener and a UDP socket come back on
//! their ports and serve after restore; TCP connections between two trees
//! (IPv4, IPv6, v4-mapped) come back in repair mode with every byte in
//! flight both ways and their options; a connection with an end outside
//! the forest, or waiting in an accept queue, is refused by name and the
//! processes run on untouched, as after a failed or `--leave-running` dump.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crt_tests::{
    dump, dump_env, DirSnapshot, Forest, Restored, TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP,
};

fn ports(w: &Workload) -> (u16, u16) {
    let text = std::fs::read_to_string(w.dir().join("ports")).unwrap();
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn ping(port: u16) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to the restored listener");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).expect("pong");
    assert_eq!(&b, b"pong");
}

#[test]
fn tcp_listener_and_udp_socket_serve_after_restore() {
    crt_tests::init!();
    let w = Workload::spawn("inet_server");
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(RUN_BEFORE_DUMP);
    let (tcp, udp) = ports(&w);
    let dir = TestDir::new("crt-inet-");
    let img = dir.path().join("img");
    dump(&[&w], &img, &[]).assert_success();
    let mut r = Restored::start(&img, &[]);
    r.wait_running(&[&w]);
    ping(tcp);
    UdpSocket::bind("127.0.0.1:0").unwrap().send_to(b"hello", ("127.0.0.1", udp)).unwrap();
    std::thread::sleep(RUN_AFTER_RESTORE);
    r.finish(&[&w]);
}

/// inet_server's own checks, without crt: passes as it is, and notices a
/// socket filter that is gone.
#[test]
fn inet_server_checks_itself() {
    crt_tests::init!();
    for sabotage in [false, true] {
        let env: &[(&str, &str)] = if sabotage { &[("CRT_WL_SABOTAGE", "1")] } else { &[] };
        let w = Workload::spawn_with_env("inet_server", env);
        w.wait_ready(READY_TIMEOUT);
        let (tcp, udp) = ports(&w);
        ping(tcp);
        UdpSocket::bind("127.0.0.1:0").unwrap().send_to(b"hello", ("127.0.0.1", udp)).unwrap();
        std::thread::sleep(RUN_AFTER_RESTORE);
        if sabotage {
            let log = w.terminate_expect_fail();
            assert!(log.contains("passed the filter uncut"), "sabotage not noticed:\n{log}");
        } else {
            w.terminate_and_check();
        }
    }
}

#[test]
fn tcp_connection_is_refused_and_the_server_runs_on() {
    crt_tests::init!();
    let w = Workload::spawn("inet_server");
    w.wait_ready(READY_TIMEOUT);
    let (tcp, udp) = ports(&w);
    // A connection waiting in the accept queue: the workload accepts every
    // 2 ms, so hold one open by connecting and not sending.
    let held = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let dir = TestDir::new("crt-inet-");
    let img = dir.path().join("img");
    let out = dump(&[&w], &img, &[]);
    out.assert_failure().assert_stderr_contains("TCP");
    drop(held);
    ping(tcp);
    UdpSocket::bind("127.0.0.1:0").unwrap().send_to(b"hello", ("127.0.0.1", udp)).unwrap();
    std::thread::sleep(RUN_AFTER_RESTORE);
    w.terminate_and_check();
}

/// `stream_link` over TCP: a server tree and a client tree.
fn tcp_link(kind: &str) -> Forest {
    Forest::from_workloads(Workload::spawn_group_with_env("stream_link", &[("CRT_UNIX_KIND", kind)]))
}

#[test]
fn tcp_connection_between_two_trees_ipv4() {
    crt_tests::init!();
    tcp_link("tcp4").roundtrip();
}

#[test]
fn tcp_connection_between_two_trees_ipv6() {
    crt_tests::init!();
    tcp_link("tcp6").roundtrip();
}

#[test]
fn tcp_connection_between_two_trees_v4_mapped() {
    crt_tests::init!();
    tcp_link("tcp4v6").roundtrip();
}

/// A dump that fails after every connection was read in repair mode, and
/// one with `--leave-running`: both ends go on with every byte (repair
/// mode left, no window probe, `SO_REUSEADDR` as it was).
#[test]
fn tcp_connection_survives_failed_and_leave_running_dumps() {
    crt_tests::init!();
    let f = tcp_link("tcp4");
    f.wait_ready();
    std::thread::sleep(RUN_BEFORE_DUMP);
    let img = f.img_dir();
    dump_env(&f.refs(), img, &[], &[("CRT_FAULT", "dump-after-collect")]).assert_failure();
    let snap = DirSnapshot::take(img);
    assert!(snap.is_empty(), "a failed dump left files: {snap:?}");
    std::thread::sleep(RUN_BEFORE_DUMP);
    f.dump(&["--leave-running"]).assert_success();
    for w in &f.workloads {
        w.assert_alive("after the dump with --leave-running");
    }
    std::thread::sleep(RUN_AFTER_RESTORE);
    for w in &f.workloads {
        w.terminate_and_check();
    }
}

#[test]
fn tcp_peer_outside_is_refused_and_both_run_on() {
    crt_tests::init!();
    for dumped in [0, 1] {
        let ws = Workload::spawn_group_with_env("stream_link", &[("CRT_UNIX_KIND", "tcp4")]);
        for w in &ws {
            w.wait_ready(READY_TIMEOUT);
        }
        let img = TestDir::new("crt-img-");
        let out = dump(&[&ws[dumped]], img.path(), &[]);
        out.assert_failure()
            .assert_stderr_contains("TCP connection")
            .assert_stderr_mentions_number(ws[1 - dumped].pid())
            .assert_stderr_contains("--tree");
        crt_tests::assert_refusal_left_all_running(&ws, img.path());
    }
}

/// Half-closed connections (FIN_WAIT2 / CLOSE_WAIT with bytes unread, a
/// FIN queued behind bytes never sent, SHUT_RD): the same states, bytes and
/// EOFs after the restore.
#[test]
fn tcp_half_closed_connections() {
    crt_tests::init!();
    Forest::spawn(&["tcp_states"]).roundtrip();
}

/// 300 connections between a server tree and a client tree, 4 KiB queued
/// unread each way on each: every byte comes back and each still works.
/// The fd limit (400) leaves no number free above the client's own fds for
/// all the server's sockets crt holds when it forks the client: crt must
/// close those before it parks its pidfd there.
#[test]
fn many_tcp_connections_between_two_trees() {
    crt_tests::init!();
    let env = [("CRT_TCP_CONNS", "300"), ("CRT_TCP_NOFILE", "400")];
    Forest::from_workloads(Workload::spawn_group_with_env("tcp_fan", &env)).roundtrip();
}
