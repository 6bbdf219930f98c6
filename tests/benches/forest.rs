//! Forest benchmark: dump and restore trees of 10, 50 and 200 small
//! processes (a root and its children) and one process with 64 threads;
//! prints total and per-task times from `crt --stats`.
//!
//! Run: `cargo bench -p crt-tests --bench forest` (as root).
//! Sizes: `CRT_BENCH_FOREST="10 50 200"`, threads: `CRT_BENCH_THREADS=64`,
//! runs per size: `CRT_BENCH_RUNS=3`.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use crt_tests::{dump, send_signal, Restored, TestDir, Workload, READY_TIMEOUT};

fn stat(path: &Path, key: &str) -> f64 {
    crt_tests::stats_field(path, key)
}

fn one(label: &str, w: &Workload, tasks: usize) {
    w.wait_ready(READY_TIMEOUT * 3);
    let dir = TestDir::new("crt-bench-forest-");
    let img = dir.path().join("img");
    let (ds, rs) = (dir.path().join("d.json"), dir.path().join("r.json"));
    let t = Instant::now();
    dump(&[w], &img, &["--stats", ds.to_str().unwrap()]).assert_success();
    let dump_wall = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut r = Restored::start(&img, &["--stats", rs.to_str().unwrap()]);
    r.wait_running(&[w]);
    let restore_wall = t.elapsed().as_secs_f64();
    send_signal(w.pid(), libc::SIGTERM);
    let out = r.wait_exit(Duration::from_secs(120));
    assert!(out.success(), "{label}: restored workload failed: {}", w.log());
    let dump_crt = stat(&ds, "freeze") + stat(&ds, "collect") + stat(&ds, "pages") + stat(&ds, "write");
    let restore_crt =
        stat(&rs, "validate") + stat(&rs, "create") + stat(&rs, "map") + stat(&rs, "fill") + stat(&rs, "resume");
    println!(
        "{label:<22} dump {:7.1} ms ({:5.2} ms/task, wall {:7.1} ms) | restore {:7.1} ms ({:5.2} ms/task, wall {:7.1} ms) | crt peak {:.1}/{:.1} MiB",
        dump_crt * 1e3,
        dump_crt * 1e3 / tasks as f64,
        dump_wall * 1e3,
        restore_crt * 1e3,
        restore_crt * 1e3 / tasks as f64,
        restore_wall * 1e3,
        stat(&ds, "peak_rss_kib") / 1024.0,
        stat(&rs, "peak_rss_kib") / 1024.0,
    );
}

fn main() {
    crt_tests::init!();
    let sizes: Vec<usize> = std::env::var("CRT_BENCH_FOREST")
        .unwrap_or_else(|_| "10 50 200".into())
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let threads: usize = std::env::var("CRT_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    let runs: usize = std::env::var("CRT_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    println!("# crt forest benchmark: times are crt's own phases (from --stats); wall includes the harness");
    for n in sizes {
        for _ in 0..runs {
            let w = Workload::spawn_with_env("fanout", &[("CRT_FANOUT", &n.to_string())]);
            one(&format!("{n} processes"), &w, n);
        }
    }
    for _ in 0..runs {
        let w = Workload::spawn_with_env("manythreads", &[("CRT_THREADS", &threads.to_string())]);
        one(&format!("1 process, {} threads", threads + 1), &w, threads + 1);
    }
}
