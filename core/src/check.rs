//! `crt check`: which kernel features this machine offers crt.
//!
//! Each probe exercises the real mechanism (not a version number).

use std::time::Duration;

/// One feature probe.
#[derive(Debug, Clone)]
pub struct Feature {
    /// Short name.
    pub name: &'static str,
    /// Whether crt cannot work without it.
    pub required: bool,
    /// What crt uses it for.
    pub purpose: &'static str,
    /// `Ok(detail)` when present, `Err(why)` when missing.
    pub result: Result<String, String>,
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Runs every probe.
pub fn run() -> Vec<Feature> {
    vec![
        feature("ptrace-seize", true, "freeze tasks without stopping them visibly", probe_seize()),
        feature("clone3-set-tid", true, "recreate tasks with their pids", probe_set_tid()),
        feature("pagemap-scan", true, "find present pages fast (PAGEMAP_SCAN)", probe_pagemap_scan()),
        feature("pidfd-getfd", true, "pass fds into tasks being restored", probe_pidfd_getfd()),
        feature("prctl-mm-map", true, "restore mm fields and /proc/PID/exe", probe_mm_map()),
        feature("process-vm", true, "copy pages in and out", probe_process_vm()),
        feature("vdso-layout", true, "reuse the kernel's vdso at the dumped address", probe_vdso()),
        feature("rseq-config", true, "restore rseq registrations", probe_rseq()),
        feature("kcmp", false, "find shared file descriptions", probe_kcmp()),
        feature("unix-diag", false, "find unix socket peers", probe_unix_diag()),
        feature("aio", false, "AIO rings (plugin)", probe_aio()),
        feature("userfaultfd", false, "dirty-page tracking, lazy restore", probe_uffd()),
        feature("kvm", false, "KVM device plugin", probe_kvm()),
    ]
}

fn feature(name: &'static str, required: bool, purpose: &'static str, result: Result<String, String>) -> Feature {
    Feature { name, required, purpose, result }
}

/// Forks a child that sleeps; returns its pid. The caller kills and reaps it.
fn sleeper() -> Result<libc::pid_t, String> {
    // SAFETY: the child only calls async-signal-safe pause/_exit.
    let pid = unsafe { libc::fork() };
    match pid {
        0 => loop {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        },
        p if p < 0 => Err(format!("fork: {}", errno())),
        p => Ok(p),
    }
}

fn reap(pid: libc::pid_t) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // SAFETY: a null status pointer is allowed.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL) };
}

fn with_seized<T>(f: impl FnOnce(i32) -> Result<T, String>) -> Result<T, String> {
    let pid = sleeper()?;
    std::thread::sleep(Duration::from_millis(5));
    let r = (|| {
        crate::ptrace::seize(pid, 0).map_err(|e| e.to_string())?;
        crate::ptrace::interrupt(pid).map_err(|e| e.to_string())?;
        crate::ptrace::wait(pid).map_err(|e| e.to_string())?;
        f(pid)
    })();
    reap(pid);
    r
}

fn probe_seize() -> Result<String, String> {
    with_seized(|pid| {
        crate::ptrace::get_xsave(pid).map(|x| format!("XSAVE area {} bytes", x.len())).map_err(|e| e.to_string())
    })
}

fn probe_rseq() -> Result<String, String> {
    with_seized(|pid| {
        crate::ptrace::rseq_config(pid)
            .map(|r| match r {
                Some(c) => format!("rseq size {}", c.size),
                None => "no rseq registered by libc".into(),
            })
            .map_err(|e| e.to_string())
    })
}

fn probe_set_tid() -> Result<String, String> {
    let want = (300..32768).find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).ok_or("no free pid")?;
    match crate::puppeteer::fork_stopped(want) {
        Ok(child) => {
            reap(child);
            Ok(format!("created pid {want}"))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn probe_pagemap_scan() -> Result<String, String> {
    let f = std::fs::File::open("/proc/self/pagemap").map_err(|e| e.to_string())?;
    let v = [1u8; 4096];
    let addr = v.as_ptr() as u64 & !4095;
    crate::mem::scan(std::process::id() as i32, &f, addr, addr + 4096, crt_plugin_api::PagePolicy::All)
        .map(|r| format!("{} run(s)", r.len()))
        .map_err(|e| e.to_string())
}

fn probe_pidfd_getfd() -> Result<String, String> {
    // SAFETY: plain syscalls with integer arguments.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id(), 0) };
    if pidfd < 0 {
        return Err(format!("pidfd_open: {}", errno()));
    }
    // SAFETY: as above.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, 0, 0) };
    let r = if fd < 0 { Err(format!("pidfd_getfd: {}", errno())) } else { Ok("ok".into()) };
    if fd >= 0 {
        // SAFETY: closing an fd we own.
        unsafe { libc::close(fd as i32) };
    }
    // SAFETY: closing an fd we own.
    unsafe { libc::close(pidfd as i32) };
    r
}

fn probe_mm_map() -> Result<String, String> {
    let mut size: u32 = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes one u32 to the pointer we pass.
    let r = unsafe { libc::prctl(libc::PR_SET_MM, libc::PR_SET_MM_MAP_SIZE, &mut size as *mut u32, 0, 0) };
    if r != 0 {
        return Err(format!("prctl(PR_SET_MM_MAP_SIZE): {}", errno()));
    }
    if size as usize != crate::task_state::PRCTL_MM_MAP_LEN {
        return Err(format!("struct prctl_mm_map is {size} bytes, crt knows {}", crate::task_state::PRCTL_MM_MAP_LEN));
    }
    Ok(format!("prctl_mm_map {size} bytes"))
}

fn probe_process_vm() -> Result<String, String> {
    let src = [7u8; 64];
    let mut dst = [0u8; 64];
    crate::puppet::read_mem(std::process::id() as i32, src.as_ptr() as u64, &mut dst).map_err(|e| e.to_string())?;
    if src == dst {
        Ok("ok".into())
    } else {
        Err("data mismatch".into())
    }
}

fn probe_vdso() -> Result<String, String> {
    crate::restore::own_vdso_block()
        .map(|b| b.iter().map(|m| format!("{} {}p", m.name, (m.end - m.start) / 4096)).collect::<Vec<_>>().join(", "))
        .map_err(|e| e.to_string())
}

fn probe_kcmp() -> Result<String, String> {
    const KCMP_FILE: i32 = 0;
    let me = std::process::id();
    // SAFETY: kcmp takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, me, me, KCMP_FILE, 0, 0) };
    if r == 0 {
        Ok("ok".into())
    } else {
        Err(format!("kcmp: {}", errno()))
    }
}

fn probe_unix_diag() -> Result<String, String> {
    const NETLINK_SOCK_DIAG: i32 = 4;
    // SAFETY: socket takes integers only.
    let s = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if s < 0 {
        return Err(format!("netlink socket: {}", errno()));
    }
    // nlmsghdr (16) + unix_diag_req (24): family AF_UNIX, all states, show name.
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_le_bytes());
    req[4..6].copy_from_slice(&20u16.to_le_bytes()); // SOCK_DIAG_BY_FAMILY
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_le_bytes());
    req[16] = libc::AF_UNIX as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    req[32..36].copy_from_slice(&1u32.to_le_bytes()); // UDIAG_SHOW_NAME
    let mut buf = [0u8; 8192];
    // SAFETY: `req` is a valid buffer of the given length.
    let sent = unsafe { libc::send(s, req.as_ptr().cast(), req.len(), 0) };
    let r = if sent < 0 {
        -1
    } else {
        // SAFETY: `buf` is a valid writable buffer of the given length.
        unsafe { libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), 0) }
    };
    let e = errno();
    // SAFETY: closing our socket.
    unsafe { libc::close(s) };
    if r < 16 {
        return Err(format!("unix_diag dump: {e}"));
    }
    let kind = u16::from_le_bytes([buf[4], buf[5]]);
    if kind == libc::NLMSG_ERROR as u16 {
        return Err("unix_diag answered with an error (module missing?)".into());
    }
    Ok("ok".into())
}

fn probe_aio() -> Result<String, String> {
    let mut ctx: u64 = 0;
    // SAFETY: io_setup writes the context id to `ctx`.
    let r = unsafe { libc::syscall(libc::SYS_io_setup, 1, &mut ctx as *mut u64) };
    if r != 0 {
        return Err(format!("io_setup: {}", errno()));
    }
    // SAFETY: destroys the context we created.
    unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    Ok("ok".into())
}

fn probe_uffd() -> Result<String, String> {
    // SAFETY: userfaultfd takes flags only.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("userfaultfd: {}", errno()));
    }
    // SAFETY: closing our fd.
    unsafe { libc::close(fd as i32) };
    Ok("ok".into())
}

fn probe_kvm() -> Result<String, String> {
    std::fs::File::open("/dev/kvm").map(|_| "/dev/kvm opens".into()).map_err(|e| format!("/dev/kvm: {e}"))
}
