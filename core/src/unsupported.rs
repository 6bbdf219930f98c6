//! State crt cannot restore yet, refused at dump time (before anything is
//! written) rather than silently lost: seccomp
//! filters, other namespaces, capabilities restore would not give back.

use crate::procfs::{self, Status};

/// Why `pid` cannot be dumped, if it cannot.
pub fn check(pid: i32, status: &Status) -> Option<String> {
    seccomp(pid).or_else(|| namespaces(pid)).or_else(|| capabilities(status))
}

fn seccomp(pid: i32) -> Option<String> {
    let mode = procfs::status_field(&pid.to_string(), "Seccomp")?;
    (mode != 0).then(|| format!("runs under seccomp (mode {mode}); crt cannot restore seccomp filters yet"))
}

fn namespaces(pid: i32) -> Option<String> {
    for ns in ["mnt", "pid_for_children", "net", "ipc", "uts", "user", "cgroup", "time"] {
        let theirs = procfs::link(pid, &format!("ns/{ns}")).ok()?;
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).ok()?;
        if ours.to_string_lossy() != theirs {
            return Some(format!(
                "lives in another {ns} namespace ({theirs}); crt restores only in its own namespaces"
            ));
        }
    }
    None
}

/// Restore gives a root task crt's capabilities and a non-root task none.
fn capabilities(st: &Status) -> Option<String> {
    let own = procfs::status("self").ok()?;
    let root = st.uids.get(1) == Some(&0);
    let same_as_crt = st.cap_prm == own.cap_prm
        && st.cap_eff == own.cap_eff
        && st.cap_inh == own.cap_inh
        && st.cap_bnd == own.cap_bnd
        && st.cap_amb == own.cap_amb;
    let none = st.cap_prm == 0 && st.cap_eff == 0 && st.cap_inh == 0 && st.cap_amb == 0;
    if root && !same_as_crt {
        return Some(format!(
            "runs as root with capabilities {:#x} (bounding {:#x}) other than crt's; crt cannot restore reduced capabilities yet",
            st.cap_eff, st.cap_bnd
        ));
    }
    if !root && !none {
        return Some(format!(
            "runs as uid {} with capabilities {:#x}; crt cannot restore capabilities yet",
            st.uids.get(1).copied().unwrap_or(0),
            st.cap_eff
        ));
    }
    None
}
