//! `wl-rust-std`: a single-threaded Rust `std` workload for crt tests.
//!
//! Protocol as for the C workloads (see the crate docs): argv[1] is the work
//! directory, output goes through write(2) to fd 1, `READY` once, `PASS` or
//! `FAIL: ...` on SIGTERM. State: a `HashMap`, a growing `Vec` and `String`,
//! a `File` (`seq.txt`) with one sequence-numbered line per iteration, and
//! `Instant` timing of each 5 ms sleep. `CRT_WL_SABOTAGE=1` corrupts the map.
//! After SIGTERM it drains like the C workloads (`wl_keep_going`): it goes on
//! until it has run `MARGIN` iterations since READY, for at most 15 s;
//! `CRT_WL_NO_DRAIN=1` turns that off.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_sig: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

/// Writes all of `s` to fd 1 with write(2).
fn out(s: &str) {
    let mut b = s.as_bytes();
    while !b.is_empty() {
        // SAFETY: `b` is a valid readable buffer of `b.len()` bytes.
        let r = unsafe { libc::write(1, b.as_ptr().cast(), b.len()) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        b = &b[usize::try_from(r).unwrap_or(b.len())..];
    }
}

struct Checks {
    failures: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let msg = what();
            out(&format!("CHECK FAILED: {msg}\n"));
            self.failures.push(msg);
        }
    }
}

/// Draining after SIGTERM, as `wl_keep_going` in `wl_common.h`.
struct Drain {
    /// `CRT_WL_NO_DRAIN=1`: stop at SIGTERM.
    off: bool,
    /// How long after SIGTERM it may drain.
    limit: Duration,
    /// When SIGTERM was first seen.
    term_seen: Option<Instant>,
    reported: bool,
}

impl Drain {
    /// The main loop's condition: true until SIGTERM; after it, true until
    /// `satisfied` (the progress the final checks need), or the deadline
    /// passed, or at once if draining is off.
    fn keep_going(&mut self, satisfied: bool) -> bool {
        if !TERM.load(Ordering::SeqCst) {
            return true;
        }
        let seen = *self.term_seen.get_or_insert_with(Instant::now);
        if !self.off && !satisfied && seen.elapsed() < self.limit {
            return true;
        }
        if !self.reported {
            self.reported = true;
            let why = if satisfied {
                ""
            } else if self.off {
                " (CRT_WL_NO_DRAIN=1)"
            } else {
                " (deadline passed without the progress wanted)"
            };
            out(&format!("INFO root: drained {} ms after SIGTERM{why}\n", seen.elapsed().as_millis()));
        }
        false
    }
}

const MAP_ENTRIES: u64 = 1000;
const SLEEP: Duration = Duration::from_millis(5);
const MARGIN: u64 = 20;

fn line(n: u64) -> String {
    format!("{n:010}\n")
}

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        out("FAIL: usage: wl-rust-std WORKDIR\n");
        std::process::exit(2);
    };
    let pid = std::process::id();
    let sabotage = std::env::var("CRT_WL_SABOTAGE").is_ok_and(|v| v == "1");
    let mut drain = Drain {
        off: std::env::var("CRT_WL_NO_DRAIN").is_ok_and(|v| v == "1"),
        // a sabotaged run fails anyway: do not wait long for progress
        limit: Duration::from_secs(if sabotage { 1 } else { 15 }),
        term_seen: None,
        reported: false,
    };

    let handler: extern "C" fn(libc::c_int) = on_term;
    // SAFETY: `on_term` only stores to an atomic, which is async-signal-safe.
    let prev = unsafe { libc::signal(libc::SIGTERM, handler as libc::sighandler_t) };
    if prev == libc::SIG_ERR {
        out("FAIL: setup: signal(SIGTERM)\n");
        std::process::exit(2);
    }

    let mut map: HashMap<String, u64> = (0..MAP_ENTRIES).map(|i| (format!("key-{i}"), i * i)).collect();
    let mut vec: Vec<u64> = Vec::new();
    let mut text = String::new();
    let seq_path = dir.join("seq.txt");
    let mut file = match File::options().read(true).write(true).create(true).truncate(true).open(&seq_path) {
        Ok(f) => f,
        Err(e) => {
            out(&format!("FAIL: setup: open {}: {e}\n", seq_path.display()));
            std::process::exit(2);
        }
    };
    let start = Instant::now();
    let mut checks = Checks { failures: Vec::new() };
    let mut iter: u64 = 0;
    let mut slept = Duration::ZERO;

    out("READY\n");
    let ready_iter = iter;
    while drain.keep_going(iter >= ready_iter + MARGIN) {
        let r = file.write_all(line(iter).as_bytes());
        checks.check(r.is_ok(), || format!("writing seq.txt line {iter}: {r:?}"));
        vec.push(iter * 3 + 1);
        let _ = write!(text, "{iter},");
        *map.entry("iterations".to_owned()).or_insert(0) += 1;
        iter += 1;
        if sabotage && iter == 30 {
            map.insert("key-500".to_owned(), 0);
        }
        let t0 = Instant::now();
        std::thread::sleep(SLEEP);
        let dt = t0.elapsed();
        checks.check(dt >= SLEEP, || format!("a {SLEEP:?} sleep measured only {dt:?}"));
        slept += dt;
    }

    out(&format!("INFO iterations={iter} elapsed={:?}\n", start.elapsed()));
    checks.check(iter >= ready_iter + MARGIN, || format!("only {} iterations since READY", iter - ready_iter));
    checks.check(map.get("iterations") == Some(&iter), || {
        format!("map[\"iterations\"] = {:?}, want {iter}", map.get("iterations"))
    });
    checks
        .check(map.len() == usize::try_from(MAP_ENTRIES).unwrap_or(0) + 1, || format!("map has {} entries", map.len()));
    for i in 0..MAP_ENTRIES {
        let v = map.get(&format!("key-{i}")).copied();
        if v != Some(i * i) {
            checks.check(false, || format!("map[key-{i}] = {v:?}, want {}", i * i));
            break;
        }
    }
    let want_vec: Vec<u64> = (0..iter).map(|i| i * 3 + 1).collect();
    checks.check(vec == want_vec, || format!("vec of {} elements differs", vec.len()));
    let want_text: String = (0..iter).map(|i| format!("{i},")).collect();
    checks.check(text == want_text, || format!("string of {} bytes differs", text.len()));
    let elapsed = start.elapsed();
    checks.check(elapsed >= slept, || format!("Instant: total {elapsed:?} < sum of sleeps {slept:?}"));

    // the file: offset and contents through a fresh handle
    let pos = file.stream_position();
    let want_len = iter * 11;
    checks.check(matches!(pos, Ok(p) if p == want_len), || format!("seq.txt position {pos:?}, want {want_len}"));
    let mut contents = String::new();
    let read = File::open(&seq_path).and_then(|mut f| f.read_to_string(&mut contents));
    checks.check(read.is_ok(), || format!("re-reading seq.txt: {read:?}"));
    let want_file: String = (0..iter).map(line).collect();
    checks.check(contents == want_file, || {
        format!("seq.txt holds {} bytes, differs from the {iter} expected lines", contents.len())
    });
    let _ = file.seek(SeekFrom::End(0));

    let now = std::process::id();
    checks.check(now == pid, || format!("pid changed: was {pid}, now {now}"));

    if checks.failures.is_empty() {
        out("PASS\n");
        std::process::exit(0);
    }
    out(&format!("FAIL: {} check(s) failed, first: {}\n", checks.failures.len(), checks.failures[0]));
    std::process::exit(1);
}
