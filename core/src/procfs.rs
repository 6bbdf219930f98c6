//! Parsers for the `/proc` files crt reads.

use std::fs;
use std::path::PathBuf;

/// A `/proc` file could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (usually: the task is gone).
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file's content was not what crt expects.
    #[error("{path}: cannot parse {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was being parsed.
        what: String,
    },
}

/// Reads `/proc/<pid>/<name>` (or any path under /proc) as a string.
pub fn read(path: impl Into<PathBuf>) -> Result<String, ProcError> {
    let path = path.into();
    fs::read_to_string(&path).map_err(|source| ProcError::Io { path, source })
}

fn parse_err(path: impl Into<PathBuf>, what: impl Into<String>) -> ProcError {
    ProcError::Parse { path: path.into(), what: what.into() }
}

/// The fields of `/proc/PID/stat` crt uses.
#[derive(Debug, Clone, Default)]
pub struct Stat {
    /// Command name.
    pub comm: String,
    /// State letter (`R`, `S`, `T`, `t`, `Z`, …).
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Process group.
    pub pgrp: i32,
    /// Session.
    pub session: i32,
    /// Signal sent to the parent on exit.
    pub exit_signal: i32,
    /// Exit status in waitpid form (meaningful for zombies).
    pub exit_code: i32,
    /// mm fields.
    pub start_code: u64,
    /// mm fields.
    pub end_code: u64,
    /// mm fields.
    pub start_stack: u64,
    /// mm fields.
    pub start_data: u64,
    /// mm fields.
    pub end_data: u64,
    /// mm fields.
    pub start_brk: u64,
    /// mm fields.
    pub arg_start: u64,
    /// mm fields.
    pub arg_end: u64,
    /// mm fields.
    pub env_start: u64,
    /// mm fields.
    pub env_end: u64,
}

/// Parses `/proc/<pid>/stat` (or `/proc/<pid>/task/<tid>/stat`).
pub fn stat(pid: i32) -> Result<Stat, ProcError> {
    stat_at(format!("/proc/{pid}/stat"))
}

/// Parses a stat file at `path`.
pub fn stat_at(path: String) -> Result<Stat, ProcError> {
    let s = read(&path)?;
    let open = s.find('(').ok_or_else(|| parse_err(&path, "comm"))?;
    let close = s.rfind(')').ok_or_else(|| parse_err(&path, "comm"))?;
    let comm = s[open + 1..close].to_string();
    // Fields after ") ": field N of proc(5) is index N-3 here.
    let f: Vec<&str> = s[close + 1..].split_whitespace().collect();
    let num = |i: usize| -> Result<u64, ProcError> {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok().or_else(|| v.parse::<i64>().ok().map(|x| x as u64)))
            .ok_or_else(|| parse_err(&path, format!("field {}", i + 3)))
    };
    Ok(Stat {
        comm,
        state: f.first().and_then(|v| v.chars().next()).unwrap_or('?'),
        ppid: num(1)? as i32,
        pgrp: num(2)? as i32,
        session: num(3)? as i32,
        start_code: num(23)?,
        end_code: num(24)?,
        start_stack: num(25)?,
        exit_signal: num(35)? as i32,
        start_data: num(42)?,
        end_data: num(43)?,
        start_brk: num(44)?,
        arg_start: num(45)?,
        arg_end: num(46)?,
        env_start: num(47)?,
        env_end: num(48)?,
        exit_code: num(49).unwrap_or(0) as i32,
    })
}

/// The fields of `/proc/PID/status` crt uses.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// File-creation mask.
    pub umask: u32,
    /// Real, effective, saved, fs uid.
    pub uids: Vec<u32>,
    /// Real, effective, saved, fs gid.
    pub gids: Vec<u32>,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capability sets.
    pub cap_inh: u64,
    /// Capability sets.
    pub cap_prm: u64,
    /// Capability sets.
    pub cap_eff: u64,
    /// Capability sets.
    pub cap_bnd: u64,
    /// Capability sets.
    pub cap_amb: u64,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
    /// Pid of the tracer, 0 if none.
    pub tracer_pid: i32,
    /// Number of threads.
    pub threads: u32,
    /// `VmLck` in KiB: memory locked with mlock.
    pub vm_lck_kb: u64,
}

/// Parses `/proc/<pid>/status` (`who`: a pid, or `"self"` as a string).
pub fn status(pid: impl std::fmt::Display) -> Result<Status, ProcError> {
    let path = format!("/proc/{pid}/status");
    let s = read(&path)?;
    let mut st = Status::default();
    for line in s.lines() {
        let Some((key, val)) = line.split_once(':') else {
            continue;
        };
        let val = val.trim();
        let nums = || -> Vec<u32> { val.split_whitespace().filter_map(|v| v.parse().ok()).collect() };
        let hex = || u64::from_str_radix(val, 16).unwrap_or(0);
        match key {
            "Umask" => st.umask = u32::from_str_radix(val, 8).map_err(|_| parse_err(&path, "Umask"))?,
            "Uid" => st.uids = nums(),
            "Gid" => st.gids = nums(),
            "Groups" => st.groups = nums(),
            "CapInh" => st.cap_inh = hex(),
            "CapPrm" => st.cap_prm = hex(),
            "CapEff" => st.cap_eff = hex(),
            "CapBnd" => st.cap_bnd = hex(),
            "CapAmb" => st.cap_amb = hex(),
            "NoNewPrivs" => st.no_new_privs = val == "1",
            "TracerPid" => st.tracer_pid = val.parse().unwrap_or(0),
            "Threads" => st.threads = val.parse().unwrap_or(0),
            "VmLck" => st.vm_lck_kb = val.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0),
            _ => {}
        }
    }
    if st.uids.len() != 4 || st.gids.len() != 4 {
        return Err(parse_err(&path, "Uid/Gid"));
    }
    Ok(st)
}

/// A numeric field of `/proc/<who>/status` (e.g. `VmHWM` in KiB); `who` is a pid or `self`.
pub fn status_field(who: &str, key: &str) -> Option<u64> {
    read(format!("/proc/{who}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}

/// The thread ids of a process (`/proc/PID/task`), sorted.
pub fn threads(pid: i32) -> Result<Vec<i32>, ProcError> {
    list_numeric_dir(format!("/proc/{pid}/task"))
}

/// The open fd numbers of a process, sorted.
pub fn fds(pid: i32) -> Result<Vec<i32>, ProcError> {
    list_numeric_dir(format!("/proc/{pid}/fd"))
}

fn list_numeric_dir(path: String) -> Result<Vec<i32>, ProcError> {
    let rd = fs::read_dir(&path).map_err(|source| ProcError::Io { path: path.clone().into(), source })?;
    let mut v: Vec<i32> =
        rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).collect();
    v.sort_unstable();
    Ok(v)
}

/// Children of every thread of `pid` (`/proc/PID/task/*/children`).
pub fn children(pid: i32) -> Result<Vec<i32>, ProcError> {
    let mut out = Vec::new();
    for tid in threads(pid)? {
        let path = format!("/proc/{pid}/task/{tid}/children");
        match fs::read_to_string(&path) {
            Ok(s) => out.extend(s.split_whitespace().filter_map(|v| v.parse::<i32>().ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ProcError::Io { path: path.into(), source }),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `pos`, `flags`, `mnt_id` and the `lock:` lines of `/proc/PID/fdinfo/N`.
#[derive(Debug, Clone, Default)]
pub struct FdInfo {
    /// File position.
    pub pos: i64,
    /// open(2) flags, including `O_CLOEXEC` for the descriptor.
    pub flags: u32,
    /// Mount id.
    pub mnt_id: i32,
    /// The locks and leases the kernel shows for this fd.
    pub locks: Vec<FdLock>,
}

/// One `lock:` line of an fdinfo file, e.g.
/// `lock:\t1: POSIX  ADVISORY  WRITE 1234 00:1a:5678 0 EOF`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdLock {
    /// `POSIX`, `OFDLCK`, `FLOCK`, `LEASE`, `DELEG`, `ACCESS`, …
    pub kind: String,
    /// `ADVISORY` for locks; `ACTIVE`, `BREAKING` or `BREAKER` for leases.
    pub state: String,
    /// `WRITE` rather than `READ`.
    pub write: bool,
    /// The pid the kernel records (-1 for OFD locks).
    pub pid: i32,
    /// First byte.
    pub start: i64,
    /// Last byte, `None` for `EOF`.
    pub end: Option<i64>,
}

/// Parses the part of a `lock:` line after `lock:`.
pub fn parse_lock_line(v: &str) -> Option<FdLock> {
    let t: Vec<&str> = v.split_whitespace().collect();
    // "1:" KIND STATE TYPE PID DEV:INO START END
    if t.len() < 8 || !t[0].ends_with(':') {
        return None;
    }
    Some(FdLock {
        kind: t[1].to_string(),
        state: t[2].to_string(),
        write: t[3] == "WRITE",
        pid: t[4].parse().ok()?,
        start: t[6].parse().ok()?,
        end: if t[7] == "EOF" { None } else { Some(t[7].parse().ok()?) },
    })
}

/// Parses `/proc/<pid>/fdinfo/<fd>`.
pub fn fdinfo(pid: i32, fd: i32) -> Result<FdInfo, ProcError> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let s = read(&path)?;
    let mut info = FdInfo::default();
    for line in s.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => info.pos = v.parse().map_err(|_| parse_err(&path, "pos"))?,
            "flags" => info.flags = u32::from_str_radix(v, 8).map_err(|_| parse_err(&path, "flags"))?,
            "mnt_id" => info.mnt_id = v.parse().unwrap_or(0),
            "lock" => info.locks.push(parse_lock_line(v).ok_or_else(|| parse_err(&path, format!("lock line {v:?}")))?),
            _ => {}
        }
    }
    Ok(info)
}

/// One line of `/proc/PID/maps`, plus its smaps `VmFlags`.
#[derive(Debug, Clone, Default)]
pub struct MapsEntry {
    /// Start address.
    pub start: u64,
    /// End address.
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// `s` rather than `p`.
    pub shared: bool,
    /// Offset in bytes.
    pub pgoff: u64,
    /// Device (major:minor encoded as `makedev`).
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Path or pseudo-name, empty for anonymous.
    pub name: String,
    /// smaps `VmFlags`.
    pub vm_flags: String,
}

/// Parses `/proc/<pid>/smaps`: every VMA with its `VmFlags`.
pub fn smaps(pid: i32) -> Result<Vec<MapsEntry>, ProcError> {
    let path = format!("/proc/{pid}/smaps");
    let s = read(&path)?;
    let mut out: Vec<MapsEntry> = Vec::new();
    for line in s.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vm_flags = flags.trim().to_string();
            }
            continue;
        }
        // A header line starts with "start-end ".
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            out.push(parse_maps_line(line).ok_or_else(|| parse_err(&path, format!("maps line {line:?}")))?);
        }
    }
    Ok(out)
}

fn parse_maps_line(line: &str) -> Option<MapsEntry> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let off = it.next()?;
    let dev = it.next()?;
    let ino = it.next()?;
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    let mut prot = 0;
    if perms.first() == Some(&b'r') {
        prot |= libc::PROT_READ as u32;
    }
    if perms.get(1) == Some(&b'w') {
        prot |= libc::PROT_WRITE as u32;
    }
    if perms.get(2) == Some(&b'x') {
        prot |= libc::PROT_EXEC as u32;
    }
    Some(MapsEntry {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        prot,
        shared: perms.get(3) == Some(&b's'),
        pgoff: u64::from_str_radix(off, 16).ok()?,
        dev: libc::makedev(u32::from_str_radix(maj, 16).ok()?, u32::from_str_radix(min, 16).ok()?),
        ino: ino.parse().ok()?,
        name,
        vm_flags: String::new(),
    })
}

/// Parses `/proc/<pid>/maps` (cheaper than smaps; no `VmFlags`).
pub fn maps(pid: i32) -> Result<Vec<MapsEntry>, ProcError> {
    let path = format!("/proc/{pid}/maps");
    read(&path)?
        .lines()
        .map(|l| parse_maps_line(l).ok_or_else(|| parse_err(&path, format!("maps line {l:?}"))))
        .collect()
}

/// The auxiliary vector of a process, as 64-bit words.
pub fn auxv(pid: i32) -> Result<Vec<u64>, ProcError> {
    let path = format!("/proc/{pid}/auxv");
    let b = fs::read(&path).map_err(|source| ProcError::Io { path: path.into(), source })?;
    Ok(b.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect())
}

/// `readlink /proc/<pid>/<name>`.
pub fn link(pid: i32, name: &str) -> Result<String, ProcError> {
    let path = format!("/proc/{pid}/{name}");
    fs::read_link(&path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|source| ProcError::Io { path: path.into(), source })
}

/// The personality of a process.
pub fn personality(pid: i32) -> Result<u32, ProcError> {
    let path = format!("/proc/{pid}/personality");
    let s = read(&path)?;
    u32::from_str_radix(s.trim(), 16).map_err(|_| parse_err(&path, "personality"))
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_status_and_stat() {
        let me = std::process::id() as i32;
        let st = super::status(me).expect("status");
        assert_eq!(st.uids.len(), 4);
        let s = super::stat(me).expect("stat");
        assert!(s.ppid > 0 && s.start_stack > 0);
    }

    #[test]
    fn lock_lines() {
        let l = super::parse_lock_line("1: POSIX  ADVISORY  WRITE 1234 00:1a:5678 10 EOF").expect("posix");
        assert_eq!((l.kind.as_str(), l.write, l.pid, l.start, l.end), ("POSIX", true, 1234, 10, None));
        let l = super::parse_lock_line("2: OFDLCK ADVISORY  READ -1 fd:00:12 0 99").expect("ofd");
        assert_eq!((l.kind.as_str(), l.write, l.pid, l.end), ("OFDLCK", false, -1, Some(99)));
        let l = super::parse_lock_line("3: LEASE  BREAKING  READ 7 00:1a:5 0 EOF").expect("lease");
        assert_eq!(l.state, "BREAKING");
        assert!(super::parse_lock_line("garbage").is_none());
    }

    /// The kernel shows a flock taken on one of our fds in its fdinfo.
    #[test]
    fn fdinfo_shows_flock() {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open("/proc/self/exe").expect("open");
        // SAFETY: flock on a file we own.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) }, 0);
        let info = super::fdinfo(std::process::id() as i32, f.as_raw_fd()).expect("fdinfo");
        assert_eq!(info.locks.len(), 1, "{info:?}");
        assert_eq!((info.locks[0].kind.as_str(), info.locks[0].write), ("FLOCK", false));
    }
}
