//! crt-core: checkpoint/restore of Linux process forests.
//!
//! The pipelines live in [`dump`] and [`restore`]; everything they use is
//! one module per concern (see `docs/internals.md`).
pub mod affinity;
pub mod cgroups;
pub mod check;
pub mod cli;
pub mod collect;
pub mod cow;
pub mod dump;
pub mod fault;
pub mod fdstate;
pub mod forest;
pub mod handlers;
pub mod images;
pub mod mem;
pub mod plugins;
pub mod procfs;
pub mod ptrace;
pub mod puppet;
pub mod puppeteer;
pub mod restore;
pub mod sched;
pub mod seccomp;
pub mod sharing;
pub mod show;
pub mod sockdiag;
pub mod sysvipc;
pub mod task_state;
pub mod timers;
pub mod unsupported;
