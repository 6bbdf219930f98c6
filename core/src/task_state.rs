//! Per-task state that is neither memory nor files: signals, timers,
//! rlimits, credentials, the mm fields. Read at dump (some of it from
//! inside the task through injected syscalls) and written back at restore.

use crate::images::pb;
use crate::procfs::{self, ProcError};
use crate::puppet::{Puppet, PuppetError};

/// Signals 1..=64.
pub const NSIG: u32 = 64;
/// Bytes of a kernel `struct sigaction` on x86_64 (handler, flags, restorer, mask).
const KSIGACTION_LEN: usize = 32;
/// `ITIMER_REAL`, `ITIMER_VIRTUAL`, `ITIMER_PROF`.
const ITIMERS: [u32; 3] = [0, 1, 2];
/// rlimit resources 0..RLIM_NLIMITS.
const RLIM_NLIMITS: u32 = 16;

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

/// Reads every signal action from inside the task (injected `rt_sigaction`).
pub fn read_sigactions(p: &mut Puppet, scratch: u64) -> Result<Vec<pb::SigAction>, PuppetError> {
    let mut out = Vec::with_capacity(NSIG as usize);
    for signo in 1..=NSIG {
        if signo == libc::SIGKILL as u32 || signo == libc::SIGSTOP as u32 {
            out.push(pb::SigAction { signo, ..Default::default() });
            continue;
        }
        p.call("rt_sigaction", libc::SYS_rt_sigaction, [u64::from(signo), 0, scratch, 8, 0, 0])?;
        let mut b = [0u8; KSIGACTION_LEN];
        p.read(scratch, &mut b)?;
        out.push(pb::SigAction {
            signo,
            handler: u64_at(&b, 0),
            flags: u64_at(&b, 8),
            restorer: u64_at(&b, 16),
            mask: u64_at(&b, 24),
        });
    }
    Ok(out)
}

/// Installs every non-default signal action inside the task.
pub fn write_sigactions(p: &mut Puppet, scratch: u64, acts: &[pb::SigAction]) -> Result<(), PuppetError> {
    for a in acts {
        if a.signo == libc::SIGKILL as u32 || a.signo == libc::SIGSTOP as u32 {
            continue;
        }
        if a.handler == 0 && a.flags == 0 && a.mask == 0 {
            continue; // SIG_DFL, the state of a fresh task
        }
        let mut b = [0u8; KSIGACTION_LEN];
        b[0..8].copy_from_slice(&a.handler.to_le_bytes());
        b[8..16].copy_from_slice(&a.flags.to_le_bytes());
        b[16..24].copy_from_slice(&a.restorer.to_le_bytes());
        b[24..32].copy_from_slice(&a.mask.to_le_bytes());
        p.write(scratch, &b)?;
        p.call("rt_sigaction", libc::SYS_rt_sigaction, [u64::from(a.signo), scratch, 0, 8, 0, 0])?;
    }
    Ok(())
}

/// Reads the three interval timers from inside the task.
pub fn read_itimers(p: &mut Puppet, scratch: u64) -> Result<Vec<pb::ITimer>, PuppetError> {
    let mut out = Vec::new();
    for which in ITIMERS {
        p.call("getitimer", libc::SYS_getitimer, [u64::from(which), scratch, 0, 0, 0, 0])?;
        let mut b = [0u8; 32];
        p.read(scratch, &mut b)?;
        let us = |off| u64_at(&b, off) * 1_000_000 + u64_at(&b, off + 8);
        out.push(pb::ITimer { which, interval_us: us(0), value_us: us(16) });
    }
    Ok(out)
}

/// Arms the interval timers that were armed at dump time.
pub fn write_itimers(p: &mut Puppet, scratch: u64, timers: &[pb::ITimer]) -> Result<(), PuppetError> {
    for t in timers.iter().filter(|t| t.value_us != 0 || t.interval_us != 0) {
        let mut b = [0u8; 32];
        let put = |b: &mut [u8; 32], off: usize, us: u64| {
            b[off..off + 8].copy_from_slice(&(us / 1_000_000).to_le_bytes());
            b[off + 8..off + 16].copy_from_slice(&(us % 1_000_000).to_le_bytes());
        };
        put(&mut b, 0, t.interval_us);
        put(&mut b, 16, t.value_us);
        p.write(scratch, &b)?;
        p.call("setitimer", libc::SYS_setitimer, [u64::from(t.which), scratch, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// Process-wide prctl attributes, from inside: child subreaper, dumpable,
/// THP disabled.
pub fn read_prctls(p: &mut Puppet, scratch: u64) -> Result<(bool, i32, bool), PuppetError> {
    p.call(
        "prctl(PR_GET_CHILD_SUBREAPER)",
        libc::SYS_prctl,
        [libc::PR_GET_CHILD_SUBREAPER as u64, scratch, 0, 0, 0, 0],
    )?;
    let mut b = [0u8; 4];
    p.read(scratch, &mut b)?;
    let subreaper = i32::from_le_bytes(b) != 0;
    let dumpable =
        p.call("prctl(PR_GET_DUMPABLE)", libc::SYS_prctl, [libc::PR_GET_DUMPABLE as u64, 0, 0, 0, 0, 0])? as i32;
    let thp = p.call("prctl(PR_GET_THP_DISABLE)", libc::SYS_prctl, [libc::PR_GET_THP_DISABLE as u64, 0, 0, 0, 0, 0])?;
    Ok((subreaper, dumpable, thp != 0))
}

/// Per-thread prctl attributes, from inside: parent-death signal, timer slack.
pub fn read_thread_prctls(p: &mut Puppet, scratch: u64) -> Result<(i32, u64), PuppetError> {
    p.call("prctl(PR_GET_PDEATHSIG)", libc::SYS_prctl, [libc::PR_GET_PDEATHSIG as u64, scratch, 0, 0, 0, 0])?;
    let mut b = [0u8; 4];
    p.read(scratch, &mut b)?;
    let slack = p.call("prctl(PR_GET_TIMERSLACK)", libc::SYS_prctl, [libc::PR_GET_TIMERSLACK as u64, 0, 0, 0, 0, 0])?;
    Ok((i32::from_le_bytes(b), slack))
}

/// Sets the process-wide prctl attributes that differ from a new task's.
pub fn write_prctls(p: &mut Puppet, task: &pb::Task) -> Result<(), PuppetError> {
    if task.child_subreaper {
        p.call("prctl(PR_SET_CHILD_SUBREAPER)", libc::SYS_prctl, [libc::PR_SET_CHILD_SUBREAPER as u64, 1, 0, 0, 0, 0])?;
    }
    if task.thp_disable {
        p.call("prctl(PR_SET_THP_DISABLE)", libc::SYS_prctl, [libc::PR_SET_THP_DISABLE as u64, 1, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// What the kernel resets when a thread's uids, gids or capabilities
/// change (`commit_creds`): the mm's dumpable flag (to `fs.suid_dumpable`)
/// and that thread's parent-death signal. Set once the credentials are.
/// Returns the dumpable value the process has now (the dumped one unless
/// that was 2, which only the kernel sets).
pub fn write_after_creds(
    p: &mut Puppet,
    threads: &mut [Puppet],
    task: &pb::Task,
    is_root: bool,
) -> Result<i32, PuppetError> {
    let get = |p: &mut Puppet| {
        p.call("prctl(PR_GET_DUMPABLE)", libc::SYS_prctl, [libc::PR_GET_DUMPABLE as u64, 0, 0, 0, 0, 0])
    };
    let mut now = get(p)? as i32;
    if now != task.dumpable && (task.dumpable == 0 || task.dumpable == 1) {
        let d = task.dumpable as u64;
        p.call("prctl(PR_SET_DUMPABLE)", libc::SYS_prctl, [libc::PR_SET_DUMPABLE as u64, d, 0, 0, 0, 0])?;
        now = task.dumpable;
    }
    // Roots: their parent is now crt, whose death is no event of theirs.
    if !is_root {
        for (p, t) in std::iter::once(p).chain(threads.iter_mut()).zip(&task.threads) {
            if t.pdeathsig != 0 {
                let sig = t.pdeathsig as u64;
                p.call("prctl(PR_SET_PDEATHSIG)", libc::SYS_prctl, [libc::PR_SET_PDEATHSIG as u64, sig, 0, 0, 0, 0])?;
            }
        }
    }
    Ok(now)
}

/// Sets a thread's timer slack.
pub fn write_thread_prctls(p: &mut Puppet, t: &pb::Thread) -> Result<(), PuppetError> {
    if t.timerslack_ns != 0 {
        p.call(
            "prctl(PR_SET_TIMERSLACK)",
            libc::SYS_prctl,
            [libc::PR_SET_TIMERSLACK as u64, t.timerslack_ns, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// The robust futex list of thread `tid`: head address and length.
pub fn robust_list(tid: i32) -> std::io::Result<(u64, u64)> {
    let (mut head, mut len) = (0u64, 0u64);
    // SAFETY: get_robust_list writes one pointer and one size_t to the out-pointers.
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head as *mut u64, &mut len as *mut u64) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((head, len))
}

/// `/proc/PID/oom_score_adj`.
pub fn oom_score_adj(pid: i32) -> std::io::Result<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))?;
    s.trim().parse().map_err(|_| std::io::Error::other(format!("oom_score_adj {s:?}")))
}

/// Sets `/proc/PID/oom_score_adj` (lowering it below what the process
/// inherited needs `CAP_SYS_RESOURCE`).
pub fn write_oom_score_adj(pid: i32, v: i32) -> std::io::Result<()> {
    if oom_score_adj(pid)? == v {
        return Ok(());
    }
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), v.to_string())
}

/// `/proc/PID/loginuid` (`u32::MAX`: never set).
pub fn loginuid(pid: i32) -> std::io::Result<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/loginuid"))?;
    s.trim().parse().map_err(|_| std::io::Error::other(format!("loginuid {s:?}")))
}

/// Sets the login uid from inside the task (the kernel lets a task set
/// only its own): `open("/proc/self/loginuid")` and `write`.
pub fn write_loginuid(p: &mut Puppet, scratch: u64, uid: u32) -> Result<(), PuppetError> {
    let path = b"/proc/self/loginuid\0";
    let value = uid.to_string();
    p.write(scratch, path)?;
    p.write(scratch + 64, value.as_bytes())?;
    let fd = p.call("open(loginuid)", libc::SYS_open, [scratch, libc::O_WRONLY as u64, 0, 0, 0, 0])?;
    let r = p.call("write(loginuid)", libc::SYS_write, [fd, scratch + 64, value.len() as u64, 0, 0, 0]);
    p.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    r.map(|_| ())
}

/// `membarrier` commands, and the registration each needs.
const MEMBARRIER: [(u64, u32); 3] = [
    (8, 16),    // PRIVATE_EXPEDITED, REGISTER_PRIVATE_EXPEDITED
    (32, 64),   // PRIVATE_EXPEDITED_SYNC_CORE, REGISTER_…_SYNC_CORE
    (128, 256), // PRIVATE_EXPEDITED_RSEQ, REGISTER_…_RSEQ
];

/// The `membarrier` registrations of the task's process, found from inside:
/// a private expedited command fails with `EPERM` until registered.
pub fn read_membarrier(p: &mut Puppet) -> Result<u32, PuppetError> {
    let supported = p.syscall_raw("membarrier(QUERY)", libc::SYS_membarrier, [0; 6])?;
    if supported <= 0 {
        return Ok(0);
    }
    let mut registered = 0;
    for (cmd, reg) in MEMBARRIER {
        if supported as u64 & cmd != 0 && p.syscall_raw("membarrier", libc::SYS_membarrier, [cmd, 0, 0, 0, 0, 0])? == 0
        {
            registered |= reg;
        }
    }
    Ok(registered)
}

/// Registers the process for the `membarrier` commands of `registered`.
pub fn register_membarrier(p: &mut Puppet, registered: u32) -> Result<(), PuppetError> {
    for (_, reg) in MEMBARRIER.iter().filter(|(_, r)| registered & r != 0) {
        p.call("membarrier(REGISTER)", libc::SYS_membarrier, [u64::from(*reg), 0, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// Reads the rlimits of `pid` from outside.
pub fn read_rlimits(pid: i32) -> std::io::Result<Vec<pb::Rlimit>> {
    (0..RLIM_NLIMITS)
        .map(|resource| {
            let mut old = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: a null new-limit and a valid out-pointer for the old one.
            let r = unsafe { libc::prlimit64(pid, resource, std::ptr::null(), &mut old) };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(pb::Rlimit { resource, cur: old.rlim_cur, max: old.rlim_max })
        })
        .collect()
}

/// Reads the rlimits of the task from inside (`prlimit64(0, …)`), for a
/// process of another user, whose limits crt may not read from outside
/// without `CAP_SYS_RESOURCE`.
pub fn read_rlimits_inside(p: &mut Puppet, scratch: u64) -> Result<Vec<pb::Rlimit>, PuppetError> {
    (0..RLIM_NLIMITS)
        .map(|resource| {
            p.call("prlimit64", libc::SYS_prlimit64, [0, u64::from(resource), 0, scratch, 0, 0])?;
            let mut b = [0u8; 16];
            p.read(scratch, &mut b)?;
            Ok(pb::Rlimit { resource, cur: u64_at(&b, 0), max: u64_at(&b, 8) })
        })
        .collect()
}

/// Sets the rlimits of `pid` from outside.
pub fn write_rlimits(pid: i32, limits: &[pb::Rlimit]) -> std::io::Result<()> {
    for l in limits {
        let new = libc::rlimit64 { rlim_cur: l.cur, rlim_max: l.max };
        // SAFETY: valid pointer to `new`; null old-limit pointer.
        let r = unsafe { libc::prlimit64(pid, l.resource, &new, std::ptr::null_mut()) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(e.kind(), format!("rlimit {}: {e}", l.resource)));
        }
    }
    Ok(())
}

/// The credentials of `pid` from its status file.
pub fn read_creds(pid: i32) -> Result<pb::Creds, ProcError> {
    let st = procfs::status(pid)?;
    Ok(pb::Creds {
        uids: st.uids,
        gids: st.gids,
        groups: st.groups,
        cap_inh: st.cap_inh,
        cap_prm: st.cap_prm,
        cap_eff: st.cap_eff,
        cap_bnd: st.cap_bnd,
        cap_amb: st.cap_amb,
        no_new_privs: st.no_new_privs,
        securebits: 0,
    })
}

/// The mm fields: `/proc/PID/stat`, auxv, exe, and `brk` from inside.
pub fn read_mm(pid: i32, p: &mut Puppet) -> Result<pb::MmState, PuppetError> {
    let st = procfs::stat(pid)?;
    let brk = p.call("brk", libc::SYS_brk, [0; 6])?;
    Ok(pb::MmState {
        start_code: st.start_code,
        end_code: st.end_code,
        start_data: st.start_data,
        end_data: st.end_data,
        start_brk: st.start_brk,
        brk,
        start_stack: st.start_stack,
        arg_start: st.arg_start,
        arg_end: st.arg_end,
        env_start: st.env_start,
        env_end: st.env_end,
        auxv: procfs::auxv(pid)?,
        exe: procfs::link(pid, "exe")?,
        ..Default::default()
    })
}

/// Bytes of `struct prctl_mm_map`.
pub const PRCTL_MM_MAP_LEN: usize = 104;

/// Encodes `struct prctl_mm_map` for `PR_SET_MM_MAP`, with the auxv at `auxv_addr`.
pub fn prctl_mm_map(mm: &pb::MmState, auxv_addr: u64, exe_fd: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(PRCTL_MM_MAP_LEN);
    for v in [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_addr,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&((mm.auxv.len() * 8) as u32).to_le_bytes());
    b.extend_from_slice(&exe_fd.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prctl_map_layout() {
        let mm = pb::MmState { start_code: 1, auxv: vec![0; 4], ..Default::default() };
        let b = prctl_mm_map(&mm, 0x1000, 7);
        assert_eq!(b.len(), PRCTL_MM_MAP_LEN);
        assert_eq!(&b[0..8], &1u64.to_le_bytes());
        assert_eq!(&b[88..96], &0x1000u64.to_le_bytes());
        assert_eq!(&b[96..100], &32u32.to_le_bytes());
        assert_eq!(&b[100..104], &7u32.to_le_bytes());
    }
}
