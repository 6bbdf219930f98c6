//! IPv4 sockets without TCP repair: a TCP listener and a UDP socket come
//! back on their ports, and serve after restore; a TCP connection is
//! refused with a clear message and the process runs on.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crt_tests::{dump, Restored, TestDir, Workload, READY_TIMEOUT, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP};

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
