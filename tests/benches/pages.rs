//! Page benchmark: dump and restore a process holding N MiB of random
//! anonymous memory, images on tmpfs (/dev/shm), and print seconds and GiB/s
//! per phase plus crt's own peak memory (from `crt --stats`).
//!
//! Run: `cargo bench -p crt-tests --bench pages` (as root).
//! Sizes: `CRT_BENCH_MB="256 1024"` (default), runs per size: `CRT_BENCH_RUNS=3`,
//! `CRT_BENCH_WARMUP=0` to skip the unreported warm-up round.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Instant;

use crt_tests::{crt, dump, send_signal, Restored, TestDir, Workload, READY_TIMEOUT};

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn gibs(bytes: f64, secs: f64) -> f64 {
    bytes / (1u64 << 30) as f64 / secs.max(1e-9)
}

fn one(mb: usize) {
    let w = Workload::spawn_with_env("bigmem", &[("CRT_BIGMEM_MB", &mb.to_string())]);
    w.wait_ready(READY_TIMEOUT * 6);
    let shm = tempfile::Builder::new().prefix("crt-bench-").tempdir_in("/dev/shm").unwrap();
    let img = shm.path().join("img");
    let work = TestDir::new("crt-bench-stats-");
    let dstats = work.path().join("dump.json");
    let rstats = work.path().join("restore.json");

    let t = Instant::now();
    dump(&[&w], &img, &["--stats", dstats.to_str().unwrap()]).assert_success();
    let dump_wall = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut r = Restored::start(&img, &["--stats", rstats.to_str().unwrap()]);
    r.wait_running(&[&w]);
    let restore_wall = t.elapsed().as_secs_f64();
    send_signal(w.pid(), libc::SIGTERM);
    let out = r.wait_exit(std::time::Duration::from_secs(120));
    assert!(out.success(), "restored bigmem failed its check: {}", w.log());

    if QUIET.with(|q| q.get()) {
        return;
    }
    let d = |k: &str| crt_tests::stats_field(&dstats, k);
    let s = |k: &str| crt_tests::stats_field(&rstats, k);
    let bytes = d("page_bytes");
    println!(
        "{mb:>5} MiB  dump  {dump_wall:6.3}s {:5.2} GiB/s | freeze {:.4} collect {:.4} pages {:.3} ({:.2} GiB/s) write {:.4} | crt peak {:5.1} MiB",
        gibs(bytes, dump_wall),
        d("freeze"),
        d("collect"),
        d("pages"),
        gibs(bytes, d("pages")),
        d("write"),
        d("peak_rss_kib") / 1024.0
    );
    let restore_phases = s("validate") + s("create") + s("map") + s("fill") + s("resume");
    println!(
        "{mb:>5} MiB  restore {restore_wall:6.3}s {:5.2} GiB/s (phases {restore_phases:.3}s {:.2} GiB/s) | create {:.4} map {:.4} fill {:.3} ({:.2} GiB/s) resume {:.5} | crt peak {:5.1} MiB",
        gibs(bytes, restore_wall),
        gibs(bytes, restore_phases),
        s("create"),
        s("map"),
        s("fill"),
        gibs(bytes, s("fill")),
        s("resume"),
        s("peak_rss_kib") / 1024.0
    );
}

fn main() {
    crt_tests::init!();
    let sizes: Vec<usize> = std::env::var("CRT_BENCH_MB")
        .unwrap_or_else(|_| "256 1024".into())
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let runs: usize = std::env::var("CRT_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let v = crt(&["--version"]);
    println!("# crt page benchmark ({}), images on /dev/shm", v.stdout.trim());
    // On a VM, memory the guest touches for the first time is faulted in by
    // the host, several times slower; one unreported round at the largest
    // size warms it (CRT_BENCH_WARMUP=0 to skip and see cold figures).
    if std::env::var("CRT_BENCH_WARMUP").map_or(true, |v| v != "0") {
        if let Some(&largest) = sizes.iter().max() {
            println!("# warm-up round at {largest} MiB (not reported)");
            let quiet = QUIET.with(|q| q.replace(true));
            one(largest);
            QUIET.with(|q| q.set(quiet));
        }
    }
    for mb in sizes {
        for _ in 0..runs {
            one(mb);
        }
    }
}
