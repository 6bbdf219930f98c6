//! crt-core: checkpoint/restore of Linux process forests.
pub mod cli;
