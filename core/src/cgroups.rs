//! Control groups: recorded per process (and per thread, where a thread is
//! elsewhere: v1 hierarchies, v2 threaded cgroups) at dump, with every
//! directory on the way (mode, owner, settings: [`describe`]). At restore
//! the missing directories are made again, parents first, with their
//! attributes and settings ([`recreate`]); each new process is moved into
//! its cgroups before its memory is filled, so the pages are charged
//! there, and each thread into its own once it exists. Works on cgroup v1,
//! v2 and hybrid hierarchies.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use crate::images::pb;
use crate::procfs;

/// The cgroups of `pid`, from `/proc/PID/cgroup`.
pub fn read(pid: impl std::fmt::Display) -> Vec<pb::Cgroup> {
    let Ok(text) = procfs::read(format!("/proc/{pid}/cgroup")) else { return Vec::new() };
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            Some(pb::Cgroup { controllers: f.next()?.to_string(), path: f.next()?.to_string() })
        })
        .collect()
}

/// Mount points of the cgroup hierarchies, by controller list ("" for v2).
fn mounts() -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(text) = procfs::read("/proc/self/mountinfo") else { return out };
    for l in text.lines() {
        let Some((left, right)) = l.split_once(" - ") else { continue };
        let point = left.split_whitespace().nth(4).unwrap_or("").to_string();
        let mut r = right.split_whitespace();
        let fstype = r.next().unwrap_or("");
        let opts = r.nth(1).unwrap_or("");
        match fstype {
            "cgroup2" => {
                out.entry(String::new()).or_insert(point);
            }
            "cgroup" => {
                // Super options: "rw,cpu,cpuacct" or "rw,name=systemd".
                let ctrl: Vec<&str> = opts
                    .split(',')
                    .filter(|o| {
                        *o != "rw"
                            && *o != "ro"
                            && !o.starts_with("release_agent")
                            && *o != "xattr"
                            && *o != "clone_children"
                            && *o != "noprefix"
                    })
                    .collect();
                out.insert(ctrl.join(","), point);
            }
            _ => {}
        }
    }
    out
}

/// Settings written back into a cgroup crt recreates, in this order (the
/// type first; cpuset's cpus and mems before any task can join; the
/// period before the quota). Files a hierarchy lacks are skipped.
const KNOBS: &[&str] = &[
    "cgroup.type",
    "cgroup.subtree_control",
    "cgroup.max.depth",
    "cgroup.max.descendants",
    "cpuset.cpus",
    "cpuset.mems",
    "cpuset.cpu_exclusive",
    "cpuset.mem_exclusive",
    "cpu.shares",
    "cpu.cfs_period_us",
    "cpu.cfs_quota_us",
    "cpu.weight",
    "cpu.max",
    "memory.limit_in_bytes",
    "memory.soft_limit_in_bytes",
    "memory.swappiness",
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
    "pids.max",
    "blkio.weight",
    "io.weight",
    "notify_on_release",
];

/// The cgroups of thread `tid` of `pid` that are not the process's.
pub fn read_thread(pid: i32, tid: i32, process: &[pb::Cgroup]) -> Vec<pb::Cgroup> {
    let mut own = read(format!("{pid}/task/{tid}"));
    own.retain(|c| !process.contains(c));
    own
}

/// Every directory of the cgroups of the tasks and threads of `tasks`,
/// parents first, with its mode, owner and settings (hierarchy roots are
/// left out: they always exist). An error names a pid in that cgroup.
pub fn describe<P>(tasks: &[(pb::Task, P)]) -> Result<Vec<pb::CgroupDir>, (i32, String)> {
    let mounts = mounts();
    let mut dirs = std::collections::BTreeMap::new();
    for (t, _) in tasks {
        for c in t.cgroups.iter().chain(t.threads.iter().flat_map(|th| &th.cgroups)) {
            let mut at = String::new();
            for part in c.path.split('/').filter(|p| !p.is_empty()) {
                at = format!("{at}/{part}");
                dirs.entry((c.controllers.clone(), at.clone())).or_insert(t.pid);
            }
        }
    }
    // In map order: a directory sorts before those below it (its path is their prefix).
    let mut out: Vec<pb::CgroupDir> = Vec::new();
    for ((controllers, path), pid) in dirs {
        let Some(mount) = mounts.get(&controllers) else { continue };
        let dir = format!("{mount}{path}");
        let meta = std::fs::metadata(&dir).map_err(|e| (pid, format!("its cgroup {dir}: {e}")))?;
        let knobs = KNOBS
            .iter()
            .filter_map(|k| {
                let value = std::fs::read_to_string(format!("{dir}/{k}")).ok()?;
                Some(pb::CgroupKnob { name: k.to_string(), value: value.trim().to_string() })
            })
            .collect();
        out.push(pb::CgroupDir {
            controllers,
            path,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            knobs,
        });
    }
    Ok(out)
}

/// Directories crt made at restore, removed again if the restore fails.
#[derive(Debug, Default)]
pub struct Made(Vec<String>);

impl Made {
    /// Removes them, children first (best effort: tasks killed a moment
    /// ago may still be leaving them).
    pub fn undo(&mut self) {
        for dir in self.0.drain(..).rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(&dir).is_ok() || !std::path::Path::new(&dir).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// Makes the directories of `dirs` that are missing, with their mode,
/// owner and settings; those already there are left as they are.
pub fn recreate(dirs: &[pb::CgroupDir], made: &mut Made) -> Result<(), String> {
    let mounts = mounts();
    for d in dirs {
        let Some(mount) = mounts.get(&d.controllers) else {
            return Err(format!(
                "cgroup hierarchy {:?} (path {}) is not mounted here",
                hierarchy(&d.controllers),
                d.path
            ));
        };
        let dir = format!("{mount}{}", d.path);
        if std::path::Path::new(&dir).exists() {
            continue;
        }
        std::fs::create_dir(&dir).map_err(|e| format!("creating cgroup {dir}: {e}"))?;
        made.0.push(dir.clone());
        for k in &d.knobs {
            write_knob(&dir, k)?;
        }
        std::os::unix::fs::chown(&dir, Some(d.uid), Some(d.gid)).map_err(|e| format!("chown cgroup {dir}: {e}"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(d.mode))
            .map_err(|e| format!("chmod cgroup {dir}: {e}"))?;
    }
    Ok(())
}

/// The directory of cgroup `c` under its hierarchy's mount point.
fn dir_of(mounts: &HashMap<String, String>, c: &pb::Cgroup) -> Result<String, String> {
    let Some(mount) = mounts.get(&c.controllers) else {
        return Err(format!("cgroup hierarchy {:?} (path {}) is not mounted here", hierarchy(&c.controllers), c.path));
    };
    Ok(format!("{mount}{}", c.path))
}

/// A hierarchy's name for people: its controllers, or "v2".
fn hierarchy(controllers: &str) -> &str {
    if controllers.is_empty() {
        "v2"
    } else {
        controllers
    }
}

/// Writes one setting of a new cgroup back, as the kernel wants it.
fn write_knob(dir: &str, k: &pb::CgroupKnob) -> Result<(), String> {
    let value = match k.name.as_str() {
        // Only "threaded" can be written; a new cgroup is a domain.
        "cgroup.type" if k.value != "threaded" => return Ok(()),
        // Read as "cpu memory", written as "+cpu +memory".
        "cgroup.subtree_control" => k.value.split_whitespace().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" "),
        _ => k.value.clone(),
    };
    if value.is_empty() {
        return Ok(());
    }
    // A new cgroup may already hold the value (its default): skip the write.
    if std::fs::read_to_string(format!("{dir}/{}", k.name)).is_ok_and(|v| v.trim() == k.value) {
        return Ok(());
    }
    std::fs::write(format!("{dir}/{}", k.name), &value)
        .map_err(|e| format!("setting {} of cgroup {dir} to {value:?}: {e}", k.name))
}

/// Moves thread `tid` into its own cgroups (`tasks` in v1, `cgroup.threads` in v2).
pub fn join_thread(tid: i32, wanted: &[pb::Cgroup]) -> Result<(), String> {
    if wanted.is_empty() {
        return Ok(());
    }
    let mounts = mounts();
    for w in wanted {
        let file = if w.controllers.is_empty() { "cgroup.threads" } else { "tasks" };
        let path = format!("{}/{file}", dir_of(&mounts, w)?);
        std::fs::write(&path, tid.to_string()).map_err(|e| format!("moving thread {tid} into {path}: {e}"))?;
    }
    Ok(())
}

/// Moves `pid` into the cgroups of `wanted` where they differ from crt's own.
pub fn join(pid: i32, wanted: &[pb::Cgroup]) -> Result<(), String> {
    if wanted.is_empty() {
        return Ok(());
    }
    let own = read("self");
    let mounts = mounts();
    for w in wanted {
        if own.iter().any(|o| o.controllers == w.controllers && o.path == w.path) {
            continue;
        }
        let dir = dir_of(&mounts, w)?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating cgroup {dir}: {e}"))?;
        std::fs::write(format!("{dir}/cgroup.procs"), pid.to_string())
            .map_err(|e| format!("moving pid {pid} into cgroup {dir}: {e}"))?;
    }
    Ok(())
}
