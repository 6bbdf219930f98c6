//! Built-in handler for timerfds: clock, time to the next expiration,
//! interval, the `timerfd_settime` flags, and the count of expirations not
//! yet read (set with `TFD_IOC_SET_TICKS`).

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::anon::{dec, fd_or_err, fdinfo, timespec_ns};
use super::{boxed, Builtin, BUILTIN_VERSION};
use crate::images::pb;

/// `anon_inode:[timerfd]`.
pub struct TimerFd;

inventory::submit! { Builtin { priority: 132, make: || boxed(TimerFd) } }

/// `_IOW('T', 0, __u64)`: adds expirations to a timerfd's count.
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

fn ts(ns: u64) -> libc::timespec {
    libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long }
}

impl Handler for TimerFd {
    fn name(&self) -> RString {
        "timerfd".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: timerfds (clock, remaining time, interval)".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.link.as_str() == "anon_inode:[timerfd]"
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        let r = fdinfo(fd.pid, fd.fd).and_then(|info| {
            Ok(pb::TimerFd {
                clockid: dec(&info, "clockid")? as i32,
                flags: fd.flags,
                ticks: dec(&info, "ticks")? as u64,
                value_ns: timespec_ns(&info, "it_value")?,
                interval_ns: timespec_ns(&info, "it_interval")?,
                settime_flags: info
                    .lines()
                    .find_map(|l| l.strip_prefix("settime flags:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
                    .unwrap_or(0),
            })
        });
        r.map(|m| RVec::from(m.encode_to_vec())).map_err(RString::from).into()
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r =
            pb::TimerFd::decode(blob.as_slice()).map_err(|e| format!("corrupt timerfd record: {e}")).and_then(|m| {
                let mut flags = libc::TFD_CLOEXEC;
                if m.flags as i32 & libc::O_NONBLOCK != 0 {
                    flags |= libc::TFD_NONBLOCK;
                }
                // SAFETY: timerfd_create takes integers only.
                let fd = fd_or_err(unsafe { libc::timerfd_create(m.clockid, flags) }, "timerfd_create")?;
                if m.value_ns > 0 {
                    // An absolute timer (TFD_TIMER_CANCEL_ON_SET needs one) at
                    // now plus what was left; a relative one from now.
                    let abs = m.settime_flags as i32 & libc::TFD_TIMER_ABSTIME != 0;
                    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                    // SAFETY: a valid out-pointer.
                    unsafe { libc::clock_gettime(m.clockid, &mut now) };
                    let base = if abs { now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64 } else { 0 };
                    let spec = libc::itimerspec { it_interval: ts(m.interval_ns), it_value: ts(base + m.value_ns) };
                    let flags = if abs { m.settime_flags as i32 } else { 0 };
                    // SAFETY: `spec` is a valid itimerspec; no old value is wanted.
                    let r = unsafe { libc::timerfd_settime(fd, flags, &spec, std::ptr::null_mut()) };
                    if r != 0 {
                        let e = std::io::Error::last_os_error();
                        // SAFETY: closing the fd we own.
                        unsafe { libc::close(fd) };
                        return Err(format!("timerfd_settime: {e}"));
                    }
                }
                if m.ticks > 0 {
                    // SAFETY: TFD_IOC_SET_TICKS reads one u64.
                    let r = unsafe { libc::ioctl(fd, TFD_IOC_SET_TICKS, &m.ticks as *const u64) };
                    if r != 0 {
                        let e = std::io::Error::last_os_error();
                        // SAFETY: closing the fd we own.
                        unsafe { libc::close(fd) };
                        return Err(format!("setting {} unread expirations (TFD_IOC_SET_TICKS): {e}", m.ticks));
                    }
                }
                Ok(fd)
            });
        r.map_err(RString::from).into()
    }
}
