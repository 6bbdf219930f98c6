//! State crt cannot restore yet, refused at dump time (before anything is
//! written) rather than silently lost: other namespaces, and capabilities
//! crt itself lacks.

use crate::procfs::{self, Status};

/// Why `pid` cannot be dumped, if it cannot.
pub fn check(pid: i32, status: &Status) -> Option<String> {
    namespaces(pid).or_else(|| capabilities(status))
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

/// Restore sets every capability set (`puppeteer/creds.rs`), but crt can
/// only hand out capabilities it has itself.
fn capabilities(st: &Status) -> Option<String> {
    let own = procfs::status("self").ok()?;
    let beyond = ((st.cap_prm | st.cap_eff | st.cap_amb) & !own.cap_prm)
        | (st.cap_bnd & !own.cap_bnd)
        | (st.cap_inh & !(own.cap_bnd | own.cap_prm));
    (beyond != 0).then(|| {
        format!(
            "has capabilities {beyond:#x} that crt itself does not have (crt: permitted {:#x}, bounding {:#x}); run crt with them",
            own.cap_prm, own.cap_bnd
        )
    })
}
