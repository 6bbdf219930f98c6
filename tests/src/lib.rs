//! Test harness for crt integration tests.
//!
//! # Workload protocol
//!
//! Every workload (C programs in `tests/workloads/*.c`, built by `build.rs`
//! into `$CRT_WORKLOAD_DIR`, and the Rust `wl-rust-std` binary):
//! - `argv[1]` is its own working directory (a fresh [`TestDir`]);
//! - stdin is `/dev/null`, stdout and stderr are `<workdir>/out.log`, opened
//!   `O_APPEND`; it writes with write(2), unbuffered;
//! - prints `READY` once its state is set up, then keeps working (sleeping
//!   often enough not to hog the CPUs);
//! - on SIGTERM it verifies its state (including that `getpid()` did not
//!   change) and prints `PASS` or `FAIL: <reason>` as its last line, exiting
//!   0 or 1. Failed checks also appear as `CHECK FAILED: ...` lines.
//! - it drains: a workload whose checks need progress (iterations since
//!   READY, or since the last stall, i.e. the dump/restore gap) goes on
//!   working, and checking, after SIGTERM until it has made that progress
//!   (`wl_keep_going` in `wl_common.h`), for at most 15 s (1 s when
//!   sabotaged), well within [`EXIT_TIMEOUT`]; only then it runs its final
//!   checks. So a scheduling stall just before SIGTERM on a busy machine, or
//!   a test that sends SIGTERM early, does not fail it; a workload that makes
//!   no progress still fails, once the deadline has passed. Processes that
//!   serve a peer's progress (a pipe reader, a ping-pong partner) keep
//!   serving until the peer has drained too.
//! - `CRT_WL_SABOTAGE=1` in its environment makes it corrupt its own state
//!   after READY (to prove the checks can fail).
//! - `CRT_WL_NO_DRAIN=1` turns the drain off: it checks at once on SIGTERM
//!   (to prove the progress checks can fail, e.g. SIGTERM right after READY).
//!   [`Workload::spawn_with_env`] clears both variables unless given.
//!
//! Workloads with several processes (`tree_pipes`, `session`, `zombie`,
//! `shared_file`, `shared_mem`, `fifo_pair`, `memfd_share`, `clone_files`):
//! - only the root prints READY and the final verdict; the other processes
//!   share its log and report `CHILD <role> OK` (or `CHILD <role> BAD: ...`
//!   after `CHECK FAILED` lines) and exit 0/1; the root waits for its
//!   children at SIGTERM and fails unless each exited 0;
//! - every non-root process is listed in `<workdir>/pids` as
//!   `<role> <pid> <ppid>` (role `zombie`: an exited, unreaped child), which
//!   the harness checks before the dump and after restore
//!   ([`Workload::roles`], [`Workload::tree_problems`]); threads are listed
//!   in `<workdir>/tids` (`threads4`).
//!
//! Launchers ([`LAUNCHERS`], e.g. `pipe_pair`) fork their roles and exit,
//! so each role is re-parented to the harness (a subreaper) as a separate
//! root: role `r` works in `<workdir>/<r>` (its own `out.log`) and writes its
//! pid to `<workdir>/<r>/pid` before READY. The harness adopts them
//! ([`Workload::spawn_group`]): no `Child` handle, tracked and reaped by pid.
//!
//! Some workloads need steps before the dump ([`Workload::prepare`]:
//! `stopped` is SIGSTOPped) and after restore ([`Workload::exercise`]).
//!
//! # Harness
//!
//! Call [`init!`] first in every test: it records the paths of the binaries
//! built by cargo and makes the test process a child subreaper.
//! - [`Workload`]: spawn ([`Workload::spawn_group`] for launchers),
//!   [`Workload::wait_ready`], logs, signals, [`Workload::prepare`] and
//!   [`Workload::exercise`] (workload-specific steps), trees
//!   ([`Workload::roles`], [`Workload::assert_tree`],
//!   [`Workload::kill_tree_and_reap`]), verdicts.
//! - [`crt()`]: run the CLI with a timeout; [`dump`]: dump with the contract
//!   checks (whole trees); [`Restored`]: a running `crt restore`
//!   ([`Restored::wait_restored`] accepts stopped roots and checks whole
//!   trees); [`Forest`]: several workloads dumped as one forest;
//!   [`roundtrip`]: the whole cycle.
//! - [`DirSnapshot`]: prove an image directory was left untouched.
//! - [`reap_strays`]: reap zombies that are not the harness's own children.
#![allow(clippy::panic)]

mod crt;
mod dirs;
mod images;
mod plugins;
mod process;
mod workload;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub use crate::crt::{
    assert_refusal_left_all_running, crt, crt_env, crt_path, crt_with_timeout, dump, dump_env, roundtrip, stats_field,
    tree_arg, CrtOutput, Forest, Restored, RUN_AFTER_RESTORE, RUN_BEFORE_DUMP,
};
pub use crate::dirs::TestDir;
pub use crate::images::{assert_image_files, flip_bytes_in_middle, task_image, truncate_to_half, DirSnapshot};
pub use crate::plugins::{plugin_so, PluginDir, TEST_PLUGINS};
pub use crate::process::{
    children_of, children_of_self, close_extra_fds, descendants, describe_status, pid_alive, poll_until, proc_comm,
    proc_cpu_ticks, proc_state, proc_status_field, reap_strays, send_signal, spawn_tracked, track, untrack,
    wait_pid_timeout, wait_timeout, KillGuard,
};
pub use crate::workload::{workload_exe, Role, Workload, C_WORKLOADS, LAUNCHERS, RUST_STD};

/// How long a workload may take to print READY.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long any crt command may run before it is killed (and the test fails).
pub const CRT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Paths of the binaries built by cargo for this package.
#[derive(Debug, Clone)]
pub struct Bins {
    /// The crt CLI (`crt-under-test`).
    pub crt: PathBuf,
    /// The Rust std workload (`wl-rust-std`).
    pub rust_std: PathBuf,
}

static BINS: OnceLock<Bins> = OnceLock::new();

/// Records the binary paths and makes this process a child subreaper.
/// Use the [`init!`] macro, which takes the paths from cargo.
pub fn init_with(bins: Bins) {
    let _ = BINS.set(bins);
    process::init();
}

/// Initialises the harness from an integration test (`crt_tests::init!();`):
/// `CARGO_BIN_EXE_*` is only visible to integration tests, so the paths are
/// captured in the caller's crate.
#[macro_export]
macro_rules! init {
    () => {
        $crate::init_with($crate::Bins {
            crt: ::std::path::PathBuf::from(env!("CARGO_BIN_EXE_crt-under-test")),
            rust_std: ::std::path::PathBuf::from(env!("CARGO_BIN_EXE_wl-rust-std")),
        })
    };
}

/// The recorded binaries; falls back to cargo's layout next to the test
/// executable (`target/<profile>/deps/<test>` → `target/<profile>/<bin>`).
pub(crate) fn bins() -> &'static Bins {
    BINS.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe.parent().and_then(|d| d.parent()).expect("target dir").to_path_buf();
        Bins { crt: dir.join("crt-under-test"), rust_std: dir.join("wl-rust-std") }
    })
}
