//! Fault injection for tests: `CRT_FAULT=<point>[:<n>]` makes crt fail the
//! n-th time (default: the first) it passes `point`, exactly as a real
//! error there would. Points: `dump-after-collect` (every task inspected,
//! nothing written), `dump-after-pages` (pages written, before the
//! inventory), `restore-after-task` (after each process is rebuilt),
//! `restore-before-resume` (all built, none released).
//! `CRT_FAULT=<point>:sleep=<ms>` sleeps there instead of failing, which
//! gives a test a window to act while crt holds the tasks.

use std::sync::atomic::{AtomicU32, Ordering};

/// An injected failure.
#[derive(Debug, thiserror::Error)]
#[error("injected failure at {0} (CRT_FAULT)")]
pub struct Injected(pub &'static str);

static HITS: AtomicU32 = AtomicU32::new(0);

/// Fails if `CRT_FAULT` names this point and this is the chosen pass.
pub fn check(point: &'static str) -> Result<(), Injected> {
    let Ok(spec) = std::env::var("CRT_FAULT") else { return Ok(()) };
    let (name, n) = spec.split_once(':').unwrap_or((spec.as_str(), "1"));
    if name != point {
        return Ok(());
    }
    if let Some(ms) = n.strip_prefix("sleep=") {
        // Not a failure: a window for a test to act while crt is there.
        std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
        return Ok(());
    }
    let want: u32 = n.parse().unwrap_or(1);
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == want {
        return Err(Injected(point));
    }
    Ok(())
}
