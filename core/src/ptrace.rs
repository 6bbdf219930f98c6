//! Thin, typed wrappers around the ptrace requests crt uses.
//!
//! Every function takes the thread id it acts on and returns a
//! [`PtraceError`] naming the request and the thread when the kernel says no.

use std::io;

use libc::{c_void, pid_t, user_regs_struct};

/// A ptrace request failed.
#[derive(Debug, thiserror::Error)]
#[error("ptrace {op} on tid {tid}")]
pub struct PtraceError {
    /// The request.
    pub op: &'static str,
    /// The thread.
    pub tid: i32,
    /// The errno.
    pub source: io::Error,
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, PtraceError>;

const NT_PRSTATUS: libc::c_int = 1;
const NT_X86_XSTATE: libc::c_int = 0x202;
/// `PTRACE_GET_RSEQ_CONFIGURATION` (not in every libc).
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// Room for the XSAVE area; the kernel reports the real size.
const XSAVE_MAX: usize = 64 * 1024;

fn check(op: &'static str, tid: i32, r: libc::c_long) -> Result<libc::c_long> {
    if r < 0 {
        Err(PtraceError { op, tid, source: io::Error::last_os_error() })
    } else {
        Ok(r)
    }
}

fn raw(req: libc::c_uint, tid: i32, addr: *mut c_void, data: *mut c_void) -> libc::c_long {
    // SAFETY: callers pass `addr`/`data` that are valid for the request
    // (null, an integer, or a pointer to a live buffer of the right size).
    unsafe { libc::ptrace(req, tid as pid_t, addr, data) }
}

/// `PTRACE_SEIZE` with `options`.
pub fn seize(tid: i32, options: libc::c_int) -> Result<()> {
    check("SEIZE", tid, raw(libc::PTRACE_SEIZE, tid, std::ptr::null_mut(), options as usize as *mut c_void)).map(drop)
}

/// Seccomp filters do not apply to a tracee with this option (crt's
/// injected syscalls); needs `CAP_SYS_ADMIN`.
pub const PTRACE_O_SUSPEND_SECCOMP: libc::c_int = 1 << 21;

/// `PTRACE_INTERRUPT`.
pub fn interrupt(tid: i32) -> Result<()> {
    check("INTERRUPT", tid, raw(libc::PTRACE_INTERRUPT, tid, std::ptr::null_mut(), std::ptr::null_mut())).map(drop)
}

/// `PTRACE_SETOPTIONS`.
pub fn set_options(tid: i32, options: libc::c_int) -> Result<()> {
    check("SETOPTIONS", tid, raw(libc::PTRACE_SETOPTIONS, tid, std::ptr::null_mut(), options as usize as *mut c_void))
        .map(drop)
}

/// `PTRACE_DETACH`, delivering `sig` (0 for none).
pub fn detach(tid: i32, sig: i32) -> Result<()> {
    check("DETACH", tid, raw(libc::PTRACE_DETACH, tid, std::ptr::null_mut(), sig as usize as *mut c_void)).map(drop)
}

/// `PTRACE_CONT`, delivering `sig` (0 for none).
pub fn cont(tid: i32, sig: i32) -> Result<()> {
    check("CONT", tid, raw(libc::PTRACE_CONT, tid, std::ptr::null_mut(), sig as usize as *mut c_void)).map(drop)
}

/// `PTRACE_SINGLESTEP`.
pub fn singlestep(tid: i32) -> Result<()> {
    check("SINGLESTEP", tid, raw(libc::PTRACE_SINGLESTEP, tid, std::ptr::null_mut(), std::ptr::null_mut())).map(drop)
}

/// How a traced thread stopped (or ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stopped with signal `sig`; `event` is the ptrace event (status >> 16).
    Stopped {
        /// The stop signal.
        sig: i32,
        /// `PTRACE_EVENT_*` or 0.
        event: i32,
    },
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

/// Waits for `tid` to change state (`__WALL`), retrying on EINTR.
pub fn wait(tid: i32) -> Result<Stop> {
    wait_flags(tid, 0).map(|s| s.unwrap_or(Stop::Exited(0)))
}

/// Like [`wait`], but gives up after `timeout` (`Ok(None)`): a task stuck
/// in the kernel (state D) never reaches a ptrace stop.
pub fn wait_timeout(tid: i32, timeout: std::time::Duration) -> Result<Option<Stop>> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pause = std::time::Duration::from_micros(50);
    loop {
        if let Some(s) = wait_flags(tid, libc::WNOHANG)? {
            return Ok(Some(s));
        }
        if std::time::Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(5));
    }
}

fn wait_flags(tid: i32, flags: libc::c_int) -> Result<Option<Stop>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for waitpid.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | flags) };
        if r > 0 {
            break;
        }
        if r == 0 {
            return Ok(None); // WNOHANG: no change yet
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(PtraceError { op: "waitpid", tid, source: e });
        }
    }
    Ok(Some(if libc::WIFSTOPPED(status) {
        Stop::Stopped { sig: libc::WSTOPSIG(status), event: status >> 16 }
    } else if libc::WIFEXITED(status) {
        Stop::Exited(libc::WEXITSTATUS(status))
    } else {
        Stop::Signaled(libc::WTERMSIG(status))
    }))
}

fn regset(req: libc::c_uint, op: &'static str, tid: i32, kind: libc::c_int, buf: &mut [u8]) -> Result<usize> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    check(op, tid, raw(req, tid, kind as usize as *mut c_void, (&mut iov as *mut libc::iovec).cast()))?;
    Ok(iov.iov_len)
}

/// General registers (`NT_PRSTATUS`).
pub fn get_regs(tid: i32) -> Result<user_regs_struct> {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    let mut regs: user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: the slice covers exactly `regs`, which outlives the call.
    let buf = unsafe {
        std::slice::from_raw_parts_mut((&mut regs as *mut user_regs_struct).cast::<u8>(), size_of::<user_regs_struct>())
    };
    regset(libc::PTRACE_GETREGSET, "GETREGSET(PRSTATUS)", tid, NT_PRSTATUS, buf)?;
    Ok(regs)
}

/// Sets general registers.
pub fn set_regs(tid: i32, regs: &user_regs_struct) -> Result<()> {
    let mut copy = *regs;
    // SAFETY: the slice covers exactly `copy`, which outlives the call.
    let buf = unsafe {
        std::slice::from_raw_parts_mut((&mut copy as *mut user_regs_struct).cast::<u8>(), size_of::<user_regs_struct>())
    };
    regset(libc::PTRACE_SETREGSET, "SETREGSET(PRSTATUS)", tid, NT_PRSTATUS, buf).map(drop)
}

/// Registers as bytes, for images.
pub fn regs_to_bytes(regs: &user_regs_struct) -> Vec<u8> {
    // SAFETY: user_regs_struct is repr(C) plain integers without padding.
    let b = unsafe {
        std::slice::from_raw_parts((regs as *const user_regs_struct).cast::<u8>(), size_of::<user_regs_struct>())
    };
    b.to_vec()
}

/// Registers from image bytes; `None` when the size is wrong.
pub fn regs_from_bytes(b: &[u8]) -> Option<user_regs_struct> {
    if b.len() != size_of::<user_regs_struct>() {
        return None;
    }
    // SAFETY: all-zero is valid for this plain-integer struct.
    let mut regs: user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: both regions are exactly size_of::<user_regs_struct>() bytes and do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut regs as *mut user_regs_struct).cast::<u8>(), b.len());
    }
    Some(regs)
}

/// The XSAVE area (`NT_X86_XSTATE`): FPU, SSE, AVX, … state.
pub fn get_xsave(tid: i32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; XSAVE_MAX];
    let n = regset(libc::PTRACE_GETREGSET, "GETREGSET(X86_XSTATE)", tid, NT_X86_XSTATE, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Sets the XSAVE area.
pub fn set_xsave(tid: i32, xsave: &[u8]) -> Result<()> {
    let mut copy = xsave.to_vec();
    regset(libc::PTRACE_SETREGSET, "SETREGSET(X86_XSTATE)", tid, NT_X86_XSTATE, &mut copy).map(drop)
}

/// The blocked-signal mask.
pub fn get_sigmask(tid: i32) -> Result<u64> {
    let mut mask: u64 = 0;
    check("GETSIGMASK", tid, raw(libc::PTRACE_GETSIGMASK, tid, 8usize as *mut c_void, (&mut mask as *mut u64).cast()))?;
    Ok(mask)
}

/// Sets the blocked-signal mask.
pub fn set_sigmask(tid: i32, mask: u64) -> Result<()> {
    let mut m = mask;
    check("SETSIGMASK", tid, raw(libc::PTRACE_SETSIGMASK, tid, 8usize as *mut c_void, (&mut m as *mut u64).cast()))
        .map(drop)
}

/// Size of a raw siginfo.
pub const SIGINFO_LEN: usize = 128;

/// Pending signals, without dequeuing them: the thread's own queue, or the
/// process-wide (shared) queue.
pub fn peek_siginfo(tid: i32, shared: bool) -> Result<Vec<[u8; SIGINFO_LEN]>> {
    #[repr(C)]
    struct PeekArgs {
        off: u64,
        flags: u32,
        nr: i32,
    }
    const BATCH: usize = 32;
    let mut out = Vec::new();
    loop {
        let mut args = PeekArgs {
            off: out.len() as u64,
            flags: u32::from(shared), // PTRACE_PEEKSIGINFO_SHARED = 1
            nr: BATCH as i32,
        };
        let mut buf = [[0u8; SIGINFO_LEN]; BATCH];
        let n = check(
            "PEEKSIGINFO",
            tid,
            raw(libc::PTRACE_PEEKSIGINFO, tid, (&mut args as *mut PeekArgs).cast(), buf.as_mut_ptr().cast()),
        )? as usize;
        out.extend_from_slice(&buf[..n.min(BATCH)]);
        if n < BATCH {
            return Ok(out);
        }
    }
}

/// The siginfo of the signal a thread is stopped with.
pub fn get_siginfo(tid: i32) -> Result<[u8; SIGINFO_LEN]> {
    let mut buf = [0u8; SIGINFO_LEN];
    check("GETSIGINFO", tid, raw(libc::PTRACE_GETSIGINFO, tid, std::ptr::null_mut(), buf.as_mut_ptr().cast()))?;
    Ok(buf)
}

/// A thread's rseq registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RseqConfig {
    /// Address of `struct rseq`.
    pub ptr: u64,
    /// Registered size.
    pub size: u32,
    /// Abort signature.
    pub signature: u32,
}

/// The thread's rseq registration, `None` when it has none.
pub fn rseq_config(tid: i32) -> Result<Option<RseqConfig>> {
    #[repr(C)]
    #[derive(Default)]
    struct Conf {
        ptr: u64,
        size: u32,
        sig: u32,
        flags: u32,
        pad: u32,
    }
    let mut c = Conf::default();
    check(
        "GET_RSEQ_CONFIGURATION",
        tid,
        raw(PTRACE_GET_RSEQ_CONFIGURATION, tid, size_of::<Conf>() as *mut c_void, (&mut c as *mut Conf).cast()),
    )?;
    Ok((c.ptr != 0).then_some(RseqConfig { ptr: c.ptr, size: c.size, signature: c.sig }))
}
