//! Helpers for the handlers of anonymous-inode fds (eventfd, timerfd,
//! signalfd, epoll): their state is read from `/proc/PID/fdinfo/N`.

/// The lines of `/proc/<pid>/fdinfo/<fd>`.
pub(super) fn fdinfo(pid: i32, fd: i32) -> Result<String, String> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))
}

/// The value of `key:` in fdinfo text.
pub(super) fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// A hexadecimal fdinfo field.
pub(super) fn hex(info: &str, key: &str) -> Result<u64, String> {
    field(info, key).and_then(|v| u64::from_str_radix(v, 16).ok()).ok_or_else(|| format!("fdinfo has no {key}"))
}

/// A decimal fdinfo field.
pub(super) fn dec(info: &str, key: &str) -> Result<i64, String> {
    field(info, key).and_then(|v| v.parse().ok()).ok_or_else(|| format!("fdinfo has no {key}"))
}

/// `(sec, nsec)` from a timerfd fdinfo field, in nanoseconds.
pub(super) fn timespec_ns(info: &str, key: &str) -> Result<u64, String> {
    let v = field(info, key).ok_or_else(|| format!("fdinfo has no {key}"))?;
    let (s, n) = v.trim_matches(|c| c == '(' || c == ')').split_once(',').ok_or_else(|| format!("bad {key}"))?;
    let s: u64 = s.trim().parse().map_err(|_| format!("bad {key}"))?;
    let n: u64 = n.trim().parse().map_err(|_| format!("bad {key}"))?;
    Ok(s * 1_000_000_000 + n)
}

/// Turns a raw fd returned by a syscall into a result.
pub(super) fn fd_or_err(r: i32, what: &str) -> Result<i32, String> {
    if r < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo_fields() {
        let info = "pos:\t0\nflags:\t04002\neventfd-count:                5\nit_value: (1, 499919590)\n";
        assert_eq!(hex(info, "eventfd-count"), Ok(5));
        assert_eq!(timespec_ns(info, "it_value"), Ok(1_499_919_590));
        assert!(dec(info, "ticks").is_err());
    }
}
