//! Scheduling attributes of each thread (`sched_getattr`/`sched_setattr`):
//! policy, nice value, real-time priority, deadline parameters, the
//! reset-on-fork flag and utilization clamps. Read and set from outside;
//! set last at restore, once crt no longer runs anything in the thread (a
//! real-time thread pinned to crt's CPU could otherwise starve crt).

use crate::images::pb;

/// `struct sched_attr` (SCHED_ATTR_SIZE_VER1).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

const SCHED_FLAG_UTIL_CLAMP_MIN: u64 = 0x20;
const SCHED_FLAG_UTIL_CLAMP_MAX: u64 = 0x40;
/// Clamp values a thread has unless it set others.
const UTIL_DEFAULT: (u32, u32) = (0, 1024);

/// The scheduling attributes of thread `tid`.
pub fn read(tid: i32) -> std::io::Result<pb::Sched> {
    let mut a = SchedAttr { size: size_of::<SchedAttr>() as u32, ..Default::default() };
    // SAFETY: sched_getattr writes at most `size` bytes into `a`.
    let r = unsafe { libc::syscall(libc::SYS_sched_getattr, tid, &mut a as *mut SchedAttr, a.size, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pb::Sched {
        policy: a.policy,
        flags: a.flags,
        nice: a.nice,
        priority: a.priority,
        runtime: a.runtime,
        deadline: a.deadline,
        period: a.period,
        util_min: a.util_min,
        util_max: a.util_max,
    })
}

/// Gives thread `tid` the attributes `s`.
pub fn write(tid: i32, s: &pb::Sched) -> std::io::Result<()> {
    let mut flags = s.flags & !(SCHED_FLAG_UTIL_CLAMP_MIN | SCHED_FLAG_UTIL_CLAMP_MAX);
    // (0, 0): a kernel without utilization clamps.
    if (s.util_min, s.util_max) != UTIL_DEFAULT && (s.util_min, s.util_max) != (0, 0) {
        flags |= SCHED_FLAG_UTIL_CLAMP_MIN | SCHED_FLAG_UTIL_CLAMP_MAX;
    }
    let a = SchedAttr {
        size: size_of::<SchedAttr>() as u32,
        policy: s.policy,
        flags,
        nice: s.nice,
        priority: s.priority,
        runtime: s.runtime,
        deadline: s.deadline,
        period: s.period,
        util_min: s.util_min,
        util_max: s.util_max,
    };
    // SAFETY: sched_setattr reads `size` bytes of `a`.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, tid, &a as *const SchedAttr, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_attributes_read_back() {
        let me = std::process::id() as i32;
        let s = super::read(me).expect("sched_getattr");
        super::write(me, &s).expect("sched_setattr");
        assert_eq!(super::read(me).expect("again"), s);
    }
}
