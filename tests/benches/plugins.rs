//! Plugin overhead: dump and restore of a small process with no plugin
//! directory, and with five plugins loaded (the template, the AIO plugin
//! and three copies of the recorder under other names). Loading and dispatch must not show in the timings.
//!
//! Run: `cargo bench -p crt-tests --bench plugins` (as root).
#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use crt_tests::{crt, dump, send_signal, PluginDir, Restored, TestDir, Workload, READY_TIMEOUT};

fn round(args: &[String]) -> (f64, f64) {
    let w = Workload::spawn("counters");
    w.wait_ready(READY_TIMEOUT);
    std::thread::sleep(crt_tests::RUN_BEFORE_DUMP);
    let dir = TestDir::new("crt-bench-plugins-");
    let img = dir.path().join("img");
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    dump(&[&w], &img, &extra).assert_success();
    let d = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut r = Restored::start(&img, &extra);
    r.wait_running(&[&w]);
    let rs = t.elapsed().as_secs_f64();
    std::thread::sleep(crt_tests::RUN_AFTER_RESTORE);
    send_signal(w.pid(), libc::SIGTERM);
    assert!(r.wait_exit(Duration::from_secs(30)).success(), "{}", w.log());
    (d, rs)
}

fn main() {
    crt_tests::init!();
    let dir = PluginDir::with(&["crt-plugin-template", "crt-plugin-aio"]);
    let rec = std::fs::read(crt_tests::plugin_so("crt-plugin-recorder")).unwrap();
    for i in 0..3 {
        dir.add_file(&format!("librecorder{i}.so"), &rec);
    }
    let five: Vec<String> = dir.args().to_vec();
    let listing = crt(&[five[0].as_str(), five[1].as_str(), "plugins"]);
    let loaded = listing.stdout.matches("(ABI 1)").count();
    println!("# plugin overhead: small process (counters), wall time of crt dump / crt restore (median of 7)");
    for (label, args) in [("0 plugins".to_string(), Vec::new()), (format!("{loaded} plugins"), five)] {
        let mut ds = Vec::new();
        let mut rs = Vec::new();
        for _ in 0..7 {
            let (d, r) = round(&args);
            ds.push(d);
            rs.push(r);
        }
        ds.sort_by(f64::total_cmp);
        rs.sort_by(f64::total_cmp);
        println!("{label:<10} dump {:6.1} ms   restore {:6.1} ms", ds[3] * 1e3, rs[3] * 1e3);
    }
}
