//! Unix socket benchmark: one server and N client processes (default 100),
//! each connected over a unix stream socket with 4 KiB queued in each
//! direction (`unix_fan`); prints dump and restore times from `crt --stats`.
//!
//! Run: `cargo bench -p crt-tests --bench unix` (as root).
//! Clients: `CRT_BENCH_UNIX_CLIENTS="100"`, runs: `CRT_BENCH_RUNS=3`.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use crt_tests::{dump, send_signal, Restored, TestDir, Workload, READY_TIMEOUT};

fn stat(path: &Path, key: &str) -> f64 {
    crt_tests::stats_field(path, key)
}

fn one(clients: usize) {
    let w = Workload::spawn_with_env("unix_fan", &[("CRT_UNIX_CLIENTS", &clients.to_string())]);
    w.wait_ready(READY_TIMEOUT * 3);
    let dir = TestDir::new("crt-bench-unix-");
    let img = dir.path().join("img");
    let (ds, rs) = (dir.path().join("d.json"), dir.path().join("r.json"));
    let t = Instant::now();
    dump(&[&w], &img, &["--stats", ds.to_str().unwrap()]).assert_success();
    let dump_wall = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut r = Restored::start(&img, &["--stats", rs.to_str().unwrap()]);
    r.wait_running(&[&w]);
    let restore_wall = t.elapsed().as_secs_f64();
    send_signal(w.pid(), libc::SIGTERM);
    let out = r.wait_exit(Duration::from_secs(120));
    assert!(out.success(), "restored unix_fan failed: {}", w.log());
    let dump_crt = stat(&ds, "freeze") + stat(&ds, "collect") + stat(&ds, "pages") + stat(&ds, "write");
    let restore_crt =
        stat(&rs, "validate") + stat(&rs, "create") + stat(&rs, "map") + stat(&rs, "fill") + stat(&rs, "resume");
    println!(
        "1 server + {clients} clients ({} sockets, {} KiB queued): dump {:7.1} ms (collect {:6.1} ms, wall {:7.1} ms) | restore {:7.1} ms (wall {:7.1} ms)",
        2 * clients + 1,
        clients * 8,
        dump_crt * 1e3,
        stat(&ds, "collect") * 1e3,
        dump_wall * 1e3,
        restore_crt * 1e3,
        restore_wall * 1e3,
    );
}

fn main() {
    crt_tests::init!();
    let sizes: Vec<usize> = std::env::var("CRT_BENCH_UNIX_CLIENTS")
        .unwrap_or_else(|_| "100".into())
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let runs: usize = std::env::var("CRT_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    println!("# crt unix socket benchmark: times are crt's own phases (from --stats); wall includes the harness");
    for n in sizes {
        for _ in 0..runs {
            one(n);
        }
    }
}
