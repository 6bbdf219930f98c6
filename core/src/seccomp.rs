//! Seccomp filters, per thread.
//!
//! Dump: each thread's filters with `PTRACE_SECCOMP_GET_FILTER` (index 0
//! is the oldest)
//! and their flags with `PTRACE_SECCOMP_GET_METADATA` (crt seizes tasks with
//! `PTRACE_O_SUSPEND_SECCOMP`, so the filters do not apply to the syscalls it
//! injects). Strict mode and filters with a user-notification listener are
//! refused. Restore: each thread installs its chain again, oldest first,
//! from inside (`seccomp(SECCOMP_SET_MODE_FILTER)`), before its credentials
//! change; suspended until crt lets the task go, the filters then apply.
//! Filters every thread of a process has in common (its threads inherited
//! them, or `SECCOMP_FILTER_FLAG_TSYNC` spread them) are shared objects,
//! and `TSYNC` tells: they are installed in the main thread before the
//! other threads are created ([`shared_prefix`]), and each thread adds only
//! its own after that. Filters processes share since fork come back as
//! equal copies: no call tells those apart.

use crate::images::pb;
use crate::procfs;
use crate::puppet::{Puppet, PuppetError};

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: u64 = 1 << 3;
/// Flags a filter keeps that matter after install (`LOG`, `SPEC_ALLOW`).
const KEPT_FLAGS: u64 = (1 << 1) | (1 << 2);
/// One BPF instruction (`struct sock_filter`).
const INSN: usize = 8;

/// The filters of thread `tid`, oldest first; empty without seccomp.
pub fn read(tid: i32) -> Result<Vec<pb::SeccompFilter>, String> {
    let mode = procfs::status_field(&tid.to_string(), "Seccomp").unwrap_or(0);
    match mode {
        0 => return Ok(Vec::new()),
        2 => {}
        m => return Err(format!("thread {tid} runs in seccomp mode {m} (strict); crt cannot restore it")),
    }
    let mut out = Vec::new();
    for index in 0u64.. {
        // SAFETY: with a null buffer the kernel only returns the length.
        let n = unsafe {
            libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as *mut libc::c_void, std::ptr::null_mut::<u8>())
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                break; // past the newest filter
            }
            return Err(format!("thread {tid}: reading seccomp filter {index}: {e}"));
        }
        let mut prog = vec![0u8; n as usize * INSN];
        // SAFETY: `prog` has room for the `n` instructions the kernel writes.
        let r = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as *mut libc::c_void, prog.as_mut_ptr()) };
        if r != n {
            return Err(format!("thread {tid}: reading seccomp filter {index}: {}", std::io::Error::last_os_error()));
        }
        let mut meta = [index, 0u64]; // struct seccomp_metadata { filter_off, flags }
                                      // SAFETY: the kernel reads filter_off and writes flags, 16 bytes.
        let r =
            unsafe { libc::ptrace(PTRACE_SECCOMP_GET_METADATA, tid, 16usize as *mut libc::c_void, meta.as_mut_ptr()) };
        if r < 0 {
            return Err(format!("thread {tid}: seccomp filter {index} flags: {}", std::io::Error::last_os_error()));
        }
        if meta[1] & SECCOMP_FILTER_FLAG_NEW_LISTENER != 0 {
            return Err(format!(
                "thread {tid}: seccomp filter {index} sends to a user-notification listener; crt cannot restore that"
            ));
        }
        out.push(pb::SeccompFilter { program: prog, flags: meta[1] & KEPT_FLAGS });
    }
    Ok(out)
}

/// The filters, oldest first, that every thread of `threads` starts with.
pub fn shared_prefix(threads: &[pb::Thread]) -> &[pb::SeccompFilter] {
    let Some(first) = threads.first() else { return &[] };
    let n = threads.iter().skip(1).fold(first.seccomp.len(), |n, t| {
        first.seccomp.iter().zip(&t.seccomp).take(n).take_while(|(a, b)| a == b).count()
    });
    &first.seccomp[..n]
}

/// Installs `filters` (oldest first) in the thread `p` drives, through a
/// temporary mapping in the task for the programs.
pub fn install(p: &mut Puppet, filters: &[pb::SeccompFilter]) -> Result<(), PuppetError> {
    if filters.is_empty() {
        return Ok(());
    }
    let longest = filters.iter().map(|f| f.program.len()).max().unwrap_or(0) as u64;
    let len = (16 + longest).div_ceil(4096) * 4096;
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let at = p.call("mmap(seccomp)", libc::SYS_mmap, [0, len, prot, flags, u64::MAX, 0])?;
    let r = (|| {
        for f in filters {
            // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
            let mut fprog = [0u8; 16];
            fprog[..2].copy_from_slice(&((f.program.len() / INSN) as u16).to_le_bytes());
            fprog[8..].copy_from_slice(&(at + 16).to_le_bytes());
            p.write(at, &fprog)?;
            p.write(at + 16, &f.program)?;
            p.call("seccomp(SET_MODE_FILTER)", libc::SYS_seccomp, [SECCOMP_SET_MODE_FILTER, f.flags, at, 0, 0, 0])?;
        }
        Ok(())
    })();
    p.call("munmap(seccomp)", libc::SYS_munmap, [at, len, 0, 0, 0, 0])?;
    r
}
