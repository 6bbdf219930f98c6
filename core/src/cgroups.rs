//! Control groups: recorded per process at dump, and at restore each new
//! process is moved into its dumped cgroup (created if it no longer
//! exists) before its memory is filled, so the pages are charged there.
//! Works on cgroup v1, v2 and hybrid hierarchies.

use std::collections::HashMap;

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
        let Some(mount) = mounts.get(&w.controllers) else {
            return Err(format!(
                "cgroup hierarchy {:?} (path {}) is not mounted here",
                if w.controllers.is_empty() { "v2" } else { &w.controllers },
                w.path
            ));
        };
        let dir = format!("{mount}{}", w.path);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating cgroup {dir}: {e}"))?;
        std::fs::write(format!("{dir}/cgroup.procs"), pid.to_string())
            .map_err(|e| format!("moving pid {pid} into cgroup {dir}: {e}"))?;
    }
    Ok(())
}
