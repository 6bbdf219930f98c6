//! Resources shared between fds and tasks: open file descriptions (found
//! with `kcmp(KCMP_FILE)`), and pipes/sockets held by processes outside the
//! forest (which crt refuses to dump).

use std::collections::HashMap;

use crate::procfs;

const KCMP_FILE: i32 = 0;
const KCMP_VM: i32 = 1;
const KCMP_FILES: i32 = 2;
const KCMP_FS: i32 = 3;
const KCMP_SIGHAND: i32 = 4;

fn kcmp(pid1: i32, pid2: i32, kind: i32, a: u64, b: u64) -> Option<i64> {
    // SAFETY: kcmp takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, a, b) };
    (r >= 0).then_some(r)
}

/// An fd already given an id: pid, fd number, id.
type Seen = (i32, i32, u32);

/// Assigns one id per open file description across the forest.
#[derive(Debug, Default)]
pub struct FileIds {
    seen: HashMap<(u64, u64), Vec<Seen>>,
    next: u32,
}

impl FileIds {
    /// The id of `pid`'s fd `fd` (file `dev`/`ino`), and whether an earlier
    /// fd already holds the same open file description.
    pub fn id(&mut self, pid: i32, fd: i32, dev: u64, ino: u64) -> (u32, bool) {
        let list = self.seen.entry((dev, ino)).or_default();
        for &(p, f, id) in list.iter() {
            if kcmp(pid, p, KCMP_FILE, fd as u64, f as u64) == Some(0) {
                list.push((pid, fd, id));
                return (id, true);
            }
        }
        self.next += 1;
        list.push((pid, fd, self.next));
        (self.next, false)
    }
}

/// Kernel objects a process shares with its parent by `clone` flags that
/// crt cannot restore (address space, signal handlers).
pub fn unsupported_sharing(pid: i32, ppid: i32) -> Option<&'static str> {
    for (kind, what) in
        [(KCMP_VM, "its address space (CLONE_VM / vfork)"), (KCMP_SIGHAND, "its signal handlers (CLONE_SIGHAND)")]
    {
        if kcmp(pid, ppid, kind, 0, 0) == Some(0) {
            return Some(what);
        }
    }
    None
}

/// Whether `pid` shares its fd table (CLONE_FILES) and its fs state
/// (CLONE_FS) with `ppid`.
pub fn shares_with_parent(pid: i32, ppid: i32) -> (bool, bool) {
    (kcmp(pid, ppid, KCMP_FILES, 0, 0) == Some(0), kcmp(pid, ppid, KCMP_FS, 0, 0) == Some(0))
}

/// A pipe or socket of the forest that a process outside it also holds.
#[derive(Debug, Clone)]
pub struct OutsideHolder {
    /// Forest side.
    pub pid: i32,
    /// Its fd.
    pub fd: i32,
    /// The object (`pipe:[123]`).
    pub link: String,
    /// The outside process.
    pub other_pid: i32,
    /// Its command name.
    pub other_comm: String,
    /// Its fd.
    pub other_fd: i32,
}

/// Looks through every other process's fds for the forest's pipes and sockets.
pub fn find_outside_holders(objects: &[(i32, i32, String)], forest: &[i32]) -> Option<OutsideHolder> {
    if objects.is_empty() {
        return None;
    }
    let wanted: HashMap<&str, (i32, i32)> = objects.iter().map(|(p, f, l)| (l.as_str(), (*p, *f))).collect();
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return None;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || forest.contains(&pid) {
            continue;
        }
        let Ok(fds) = procfs::fds(pid) else { continue };
        for fd in fds {
            let Ok(link) = procfs::link(pid, &format!("fd/{fd}")) else {
                continue;
            };
            if let Some(&(p, f)) = wanted.get(link.as_str()) {
                return Some(OutsideHolder {
                    pid: p,
                    fd: f,
                    link,
                    other_pid: pid,
                    other_comm: procfs::stat(pid).map(|s| s.comm).unwrap_or_default(),
                    other_fd: fd,
                });
            }
        }
    }
    None
}

/// A SysV shared memory segment attached in the forest and outside it too.
#[derive(Debug, Clone)]
pub struct OutsideAttach {
    /// Forest side.
    pub pid: i32,
    /// Its attach address.
    pub addr: u64,
    /// The segment's id.
    pub id: i32,
    /// How many attaches outside the forest.
    pub outside: u64,
    /// One outside attacher and its command name, when found.
    pub other: Option<(i32, String)>,
}

/// Compares the forest's attaches (`pid`, address, shm id) of each SysV
/// segment with the segment's `shm_nattch`: every attach is one memory
/// area, so more attaches than the forest's areas are outside it.
pub fn sysv_shm_outside(attaches: &[(i32, u64, i32)], forest: &[i32]) -> Option<OutsideAttach> {
    let mut ours: HashMap<i32, (u64, i32, u64)> = HashMap::new();
    for &(pid, addr, id) in attaches {
        ours.entry(id).or_insert((0, pid, addr)).0 += 1;
    }
    for (id, (n, pid, addr)) in ours {
        let Ok(ds) = crate::handlers::sysvshm::stat(id) else { continue };
        let nattch = ds.shm_nattch;
        if nattch > n {
            let other = find_outside_attacher(id, forest);
            return Some(OutsideAttach { pid, addr, id, outside: nattch - n, other });
        }
    }
    None
}

/// A process outside the forest with an attach of SysV segment `id`.
fn find_outside_attacher(id: i32, forest: &[i32]) -> Option<(i32, String)> {
    let me = std::process::id() as i32;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || forest.contains(&pid) {
            continue;
        }
        let Ok(maps) = procfs::maps(pid) else { continue };
        if maps.iter().any(|m| m.ino == id as u64 && crate::handlers::sysvshm::is_sysv(&m.name)) {
            return Some((pid, procfs::stat(pid).map(|s| s.comm).unwrap_or_default()));
        }
    }
    None
}
