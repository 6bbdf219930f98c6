//! POSIX timers (`timer_create`): read from `/proc/PID/timers` and, for the
//! time left, `timer_gettime` inside the task; recreated with their ids
//! (`PR_TIMER_CREATE_RESTORE_IDS`) and re-armed inside the task.

use crate::images::pb;
use crate::procfs;
use crate::puppet::{Puppet, PuppetError};

/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, …)`: timer_create takes the id to use.
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;

fn ns(b: &[u8], off: usize) -> u64 {
    let w = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    w(off) * 1_000_000_000 + w(off + 8)
}

/// Parses `/proc/<pid>/timers`.
pub fn parse(text: &str) -> Result<Vec<pb::PosixTimer>, String> {
    let mut out: Vec<pb::PosixTimer> = Vec::new();
    for line in text.lines() {
        let Some((key, val)) = line.split_once(':') else { continue };
        let val = val.trim();
        if key == "ID" {
            out.push(pb::PosixTimer {
                id: val.parse().map_err(|_| format!("bad timer id {val:?}"))?,
                ..Default::default()
            });
            continue;
        }
        let Some(t) = out.last_mut() else { continue };
        match key {
            "signal" => {
                let (signo, value) = val.split_once('/').ok_or_else(|| format!("bad timer signal {val:?}"))?;
                t.signo = signo.parse().map_err(|_| format!("bad timer signal {val:?}"))?;
                t.sigval = u64::from_str_radix(value, 16).map_err(|_| format!("bad timer value {val:?}"))?;
            }
            "notify" => {
                // "signal/pid.N", "signal/tid.N" (SIGEV_THREAD_ID: to one
                // thread, as glibc's SIGEV_THREAD timers do), "none/pid.N".
                let (kind, target) = val.split_once('/').unwrap_or((val, ""));
                let to_thread = target.starts_with("tid.");
                t.notify = match kind {
                    "none" => SIGEV_NONE,
                    _ if to_thread => SIGEV_THREAD_ID,
                    _ => SIGEV_SIGNAL,
                };
                t.tid = target.rsplit('.').next().and_then(|n| n.parse().ok()).unwrap_or(0);
            }
            "ClockID" => t.clockid = val.parse().map_err(|_| format!("bad timer clock {val:?}"))?,
            _ => {}
        }
    }
    Ok(out)
}

/// The process's timers with the time left on each (from inside the task).
pub fn read(pid: i32, p: &mut Puppet, scratch: u64) -> Result<Vec<pb::PosixTimer>, PuppetError> {
    let text = procfs::read(format!("/proc/{pid}/timers")).unwrap_or_default();
    let mut timers = parse(&text).map_err(|e| {
        PuppetError::Proc(procfs::ProcError::Parse { path: format!("/proc/{pid}/timers").into(), what: e })
    })?;
    for t in &mut timers {
        p.call("timer_gettime", libc::SYS_timer_gettime, [t.id as u64, scratch, 0, 0, 0, 0])?;
        let mut b = [0u8; 32];
        p.read(scratch, &mut b)?;
        t.interval_ns = ns(&b, 0);
        t.value_ns = ns(&b, 16);
    }
    Ok(timers)
}

/// Recreates the timers with their ids and arms them (inside the task).
pub fn write(p: &mut Puppet, scratch: u64, timers: &[pb::PosixTimer]) -> Result<(), PuppetError> {
    if timers.is_empty() {
        return Ok(());
    }
    p.call("prctl(PR_TIMER_CREATE_RESTORE_IDS)", libc::SYS_prctl, [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0])?;
    let mut sorted: Vec<&pb::PosixTimer> = timers.iter().collect();
    sorted.sort_by_key(|t| t.id);
    for t in sorted {
        // struct sigevent: value, signo, notify, thread id (64 bytes in all).
        let mut ev = [0u8; 64];
        ev[0..8].copy_from_slice(&t.sigval.to_le_bytes());
        ev[8..12].copy_from_slice(&t.signo.to_le_bytes());
        ev[12..16].copy_from_slice(&t.notify.to_le_bytes());
        ev[16..20].copy_from_slice(&t.tid.to_le_bytes());
        p.write(scratch, &ev)?;
        p.write(scratch + 64, &t.id.to_le_bytes())?;
        p.call("timer_create", libc::SYS_timer_create, [t.clockid as u64, scratch, scratch + 64, 0, 0, 0])?;
        if t.value_ns > 0 {
            let mut its = [0u8; 32];
            for (i, v) in [
                t.interval_ns / 1_000_000_000,
                t.interval_ns % 1_000_000_000,
                t.value_ns / 1_000_000_000,
                t.value_ns % 1_000_000_000,
            ]
            .iter()
            .enumerate()
            {
                its[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
            p.write(scratch + 128, &its)?;
            p.call("timer_settime", libc::SYS_timer_settime, [t.id as u64, 0, scratch + 128, 0, 0, 0])?;
        }
    }
    p.call("prctl(PR_TIMER_CREATE_RESTORE_IDS)", libc::SYS_prctl, [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_proc_timers() {
        let t = super::parse(
            "ID: 8\nsignal: 10/0000000000000055\nnotify: signal/pid.5063\nClockID: 1\nID: 7\nsignal: 14/0000000000000000\nnotify: signal/tid.5070\nClockID: 0\n",
        )
        .expect("parse");
        assert_eq!((t[0].id, t[0].signo, t[0].sigval, t[0].notify, t[0].clockid), (8, 10, 0x55, 0, 1));
        assert_eq!((t[1].id, t[1].notify, t[1].tid, t[1].clockid), (7, 4, 5070, 0));
    }
}
