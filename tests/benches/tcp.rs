//! TCP benchmark: a server tree and a client tree joined by N TCP
//! connections (default 1000) on 127.0.0.1, 4 KiB queued unread in each
//! direction of each (`tcp_fan`); prints dump and restore times from
//! `crt --stats`, and the cost per connection.
//!
//! Run: `cargo bench -p crt-tests --bench tcp` (as root).
//! Connections: `CRT_BENCH_TCP_CONNS="1000"`, runs: `CRT_BENCH_RUNS=3`.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use crt_tests::{dump, Restored, TestDir, Workload, READY_TIMEOUT};

fn stat(path: &Path, key: &str) -> f64 {
    crt_tests::stats_field(path, key)
}

fn one(conns: usize) {
    let ws = Workload::spawn_group_with_env("tcp_fan", &[("CRT_TCP_CONNS", &conns.to_string())]);
    for w in &ws {
        w.wait_ready(READY_TIMEOUT * 3);
    }
    let refs: Vec<&Workload> = ws.iter().collect();
    let dir = TestDir::new("crt-bench-tcp-");
    let img = dir.path().join("img");
    let (ds, rs) = (dir.path().join("d.json"), dir.path().join("r.json"));
    let t = Instant::now();
    dump(&refs, &img, &["--stats", ds.to_str().unwrap()]).assert_success();
    let dump_wall = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut r = Restored::start(&img, &["--stats", rs.to_str().unwrap()]);
    r.wait_running(&refs);
    let restore_wall = t.elapsed().as_secs_f64();
    for w in &ws {
        w.send(libc::SIGTERM);
    }
    let out = r.wait_exit(Duration::from_secs(120));
    assert!(out.success(), "restored tcp_fan failed:\n{}\n{}", ws[0].log(), ws[1].log());
    let dump_crt = stat(&ds, "freeze") + stat(&ds, "collect") + stat(&ds, "pages") + stat(&ds, "write");
    let restore_crt =
        stat(&rs, "validate") + stat(&rs, "create") + stat(&rs, "map") + stat(&rs, "fill") + stat(&rs, "resume");
    println!(
        "{conns} connections ({} KiB queued): dump {:7.1} ms (collect {:6.1} ms, {:5.1} µs/conn; wall {:7.1} ms) | restore {:7.1} ms ({:5.1} µs/conn; wall {:7.1} ms)",
        conns * 8,
        dump_crt * 1e3,
        stat(&ds, "collect") * 1e3,
        dump_crt * 1e6 / conns as f64,
        dump_wall * 1e3,
        restore_crt * 1e3,
        restore_crt * 1e6 / conns as f64,
        restore_wall * 1e3,
    );
}

fn main() {
    crt_tests::init!();
    let sizes: Vec<usize> = std::env::var("CRT_BENCH_TCP_CONNS")
        .unwrap_or_else(|_| "1000".into())
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let runs: usize = std::env::var("CRT_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    println!("# crt TCP benchmark: times are crt's own phases (from --stats); wall includes the harness");
    for n in sizes {
        for _ in 0..runs {
            one(n);
        }
    }
}
