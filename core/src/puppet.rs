//! The puppeteer's strings: system calls run inside a stopped task, and
//! access to its memory.
//!
//! A [`Puppet`] drives one ptrace-stopped thread. It points the thread's
//! instruction pointer at a `syscall` instruction inside the task's own
//! `[vdso]` (the *gadget*), loads the syscall number and arguments into
//! registers and single-steps exactly that instruction. Nothing is written
//! into the task's code.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use libc::user_regs_struct;

use crate::procfs;
use crate::ptrace::{self, PtraceError, Stop, SIGINFO_LEN};

/// Errors of remote execution.
#[derive(Debug, thiserror::Error)]
pub enum PuppetError {
    /// A ptrace request failed.
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    /// No `[vdso]` or no `syscall` instruction in it.
    #[error("pid {pid}: no syscall instruction found in its [vdso]")]
    NoGadget {
        /// The task.
        pid: i32,
    },
    /// The task went away under crt.
    #[error("pid {pid}: task ended while crt ran {syscall} in it ({how})")]
    Died {
        /// The task.
        pid: i32,
        /// The syscall being injected.
        syscall: &'static str,
        /// Exit code or signal.
        how: String,
    },
    /// The injected syscall returned an error.
    #[error("pid {pid}: {syscall} inside the task failed")]
    Syscall {
        /// The task.
        pid: i32,
        /// The syscall.
        syscall: &'static str,
        /// The errno it returned.
        source: io::Error,
    },
    /// Reading or writing task memory failed.
    #[error("pid {pid}: {op} of {len} bytes at {addr:#x}")]
    Mem {
        /// The task.
        pid: i32,
        /// read / write.
        op: &'static str,
        /// Address.
        addr: u64,
        /// Length.
        len: usize,
        /// The cause.
        source: io::Error,
    },
    /// Reading /proc failed.
    #[error(transparent)]
    Proc(#[from] procfs::ProcError),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, PuppetError>;

/// Finds a `syscall` (`0f 05`) instruction inside the `[vdso]` of `pid`.
pub fn find_gadget(pid: i32) -> Result<u64> {
    let maps = procfs::maps(pid)?;
    let vdso = maps.iter().find(|m| m.name == "[vdso]").ok_or(PuppetError::NoGadget { pid })?;
    let mut buf = vec![0u8; (vdso.end - vdso.start) as usize];
    read_mem(pid, vdso.start, &mut buf)?;
    buf.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|off| vdso.start + off as u64)
        .ok_or(PuppetError::NoGadget { pid })
}

/// Reads task memory with `process_vm_readv`, falling back to
/// `/proc/PID/mem` for pages the task cannot read itself.
pub fn read_mem(pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes `buf`, which we own mutably; the remote
    // side is only interpreted by the kernel in the other process.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n == buf.len() as isize {
        return Ok(());
    }
    let mem = File::open(format!("/proc/{pid}/mem")).map_err(|source| PuppetError::Mem {
        pid,
        op: "read",
        addr,
        len: buf.len(),
        source,
    })?;
    mem.read_exact_at(buf, addr).map_err(|source| PuppetError::Mem { pid, op: "read", addr, len: buf.len(), source })
}

/// Writes task memory through `/proc/PID/mem` (works on read-only pages).
pub fn write_mem_force(mem: &File, pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    mem.write_all_at(data, addr).map_err(|source| PuppetError::Mem { pid, op: "write", addr, len: data.len(), source })
}

/// Writes task memory with `process_vm_writev` (writable pages only).
pub fn write_mem(pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    let local = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: `local` describes `data`, which the kernel only reads.
    let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    if n == data.len() as isize {
        Ok(())
    } else {
        Err(PuppetError::Mem {
            pid,
            op: "write",
            addr,
            len: data.len(),
            source: if n < 0 {
                io::Error::last_os_error()
            } else {
                io::Error::new(io::ErrorKind::WriteZero, format!("short write: {n} bytes"))
            },
        })
    }
}

/// One ptrace-stopped thread that crt runs system calls in.
#[derive(Debug)]
pub struct Puppet {
    tid: i32,
    gadget: u64,
    base: user_regs_struct,
    mem: Option<File>,
    stashed: Vec<[u8; SIGINFO_LEN]>,
    injected: u64,
    /// Scratch memory lent to plugins: address, length.
    plugin_scratch: Option<(u64, u64)>,
    /// Plugin blobs of this dump or restore.
    blobs: Option<Blobs>,
}

/// Plugin blobs (`Task::store_blob` / `load_blob`), shared by every task of
/// one dump or restore.
pub type Blobs = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>>;

impl Puppet {
    /// Drives stopped thread `tid`, using `base` as the register template
    /// (the thread's own registers) and `gadget` as the syscall instruction.
    pub fn new(tid: i32, base: user_regs_struct, gadget: u64) -> Self {
        Self { tid, gadget, base, mem: None, stashed: Vec::new(), injected: 0, plugin_scratch: None, blobs: None }
    }

    /// Attaches the blob store of this dump or restore.
    pub fn set_blobs(&mut self, blobs: Blobs) {
        self.blobs = Some(blobs);
    }

    /// Installs a copy of crt's `fd` into the task as `target`.
    pub fn install_fd_at(&mut self, fd: i32, target: i32) -> Result<()> {
        let me = u64::from(std::process::id());
        let pidfd = self.call("pidfd_open(crt)", libc::SYS_pidfd_open, [me, 0, 0, 0, 0, 0])?;
        let got = self.call("pidfd_getfd", libc::SYS_pidfd_getfd, [pidfd, fd as u64, 0, 0, 0, 0]);
        self.call("close", libc::SYS_close, [pidfd, 0, 0, 0, 0, 0])?;
        let got = got?;
        if got == target as u64 {
            self.call("fcntl(F_SETFD)", libc::SYS_fcntl, [got, libc::F_SETFD as u64, 0, 0, 0, 0])?;
        } else {
            self.call("dup3", libc::SYS_dup3, [got, target as u64, 0, 0, 0, 0])?;
            self.call("close", libc::SYS_close, [got, 0, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// Lends `[addr, addr+len)` of task memory to plugin hooks.
    pub fn set_plugin_scratch(&mut self, addr: u64, len: u64) {
        self.plugin_scratch = Some((addr, len));
    }

    /// The thread this puppet drives.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The thread's own registers, as they were before any injection.
    pub fn base_regs(&self) -> &user_regs_struct {
        &self.base
    }

    /// The current gadget address.
    pub fn gadget(&self) -> u64 {
        self.gadget
    }

    /// Points at a new gadget (after the vdso moved).
    pub fn set_gadget(&mut self, gadget: u64) {
        self.gadget = gadget;
    }

    /// Number of syscalls injected so far.
    pub fn injected(&self) -> u64 {
        self.injected
    }

    /// Signals taken off the queue while injecting, so far.
    pub fn stashed(&self) -> &[[u8; SIGINFO_LEN]] {
        &self.stashed
    }

    /// Signals that arrived while injecting and were taken off the queue;
    /// the caller must put them back (or record them in the image).
    pub fn take_stashed(&mut self) -> Vec<[u8; SIGINFO_LEN]> {
        std::mem::take(&mut self.stashed)
    }

    /// Runs syscall `nr` with `args` and returns the raw result
    /// (negative errno on failure).
    pub fn syscall_raw(&mut self, name: &'static str, nr: i64, args: [u64; 6]) -> Result<i64> {
        let mut regs = self.base;
        regs.rip = self.gadget;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX; // -1: no syscall-restart fix-up by the kernel
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        ptrace::set_regs(self.tid, &regs)?;
        loop {
            ptrace::singlestep(self.tid)?;
            match ptrace::wait(self.tid)? {
                Stop::Stopped { sig, event }
                    if sig == libc::SIGTRAP && event != 0 && event != libc::PTRACE_EVENT_STOP =>
                {
                    // fork/clone/exec event inside the injected syscall: the
                    // syscall is still running; the next step finishes it.
                    let _ = event;
                }
                Stop::Stopped { event, .. } if event == libc::PTRACE_EVENT_STOP => {
                    // A job-control notification (SIGCONT, SIGSTOP sent to
                    // the seized task), not the step: the step's SIGTRAP may
                    // still be queued, and would kill the task after the
                    // detach. Step on; the next stop takes it.
                }
                Stop::Stopped { sig, event } => {
                    let now = ptrace::get_regs(self.tid)?;
                    if sig != libc::SIGTRAP && event == 0 {
                        // A signal arrived; it is dequeued now: keep it.
                        self.stashed.push(ptrace::get_siginfo(self.tid)?);
                    }
                    if now.rip == self.gadget + 2 {
                        self.injected += 1;
                        // Between injections the thread holds its own
                        // registers: if crt dies now, the kernel releases
                        // it exactly where it was.
                        ptrace::set_regs(self.tid, &self.base)?;
                        return Ok(now.rax as i64);
                    }
                    if now.rip != self.gadget {
                        ptrace::set_regs(self.tid, &regs)?;
                    }
                }
                Stop::Exited(c) => {
                    return Err(PuppetError::Died { pid: self.tid, syscall: name, how: format!("exit code {c}") })
                }
                Stop::Signaled(s) => {
                    return Err(PuppetError::Died {
                        pid: self.tid,
                        syscall: name,
                        how: format!("killed by signal {s}"),
                    })
                }
            }
        }
    }

    /// Runs a syscall and turns a negative result into [`PuppetError::Syscall`].
    pub fn call(&mut self, name: &'static str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let r = self.syscall_raw(name, nr, args)?;
        if (-4095..0).contains(&r) {
            Err(PuppetError::Syscall { pid: self.tid, syscall: name, source: io::Error::from_raw_os_error(-r as i32) })
        } else {
            Ok(r as u64)
        }
    }

    /// Reads task memory.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        read_mem(self.tid, addr, buf)
    }

    /// Writes task memory, also into pages the task cannot write.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        if write_mem(self.tid, addr, data).is_ok() {
            return Ok(());
        }
        let tid = self.tid;
        if self.mem.is_none() {
            let f = File::options().read(true).write(true).open(format!("/proc/{tid}/mem")).map_err(|source| {
                PuppetError::Mem { pid: tid, op: "open /proc/PID/mem for", addr, len: data.len(), source }
            })?;
            self.mem = Some(f);
        }
        let Some(mem) = self.mem.as_ref() else { unreachable!("opened above") };
        write_mem_force(mem, tid, addr, data)
    }

    /// Restores the thread's own registers (the template).
    pub fn restore_regs(&self) -> Result<()> {
        ptrace::set_regs(self.tid, &self.base).map_err(Into::into)
    }
}

impl Puppet {
    /// A copy of the task's fd `fd` in crt's fd table.
    pub fn take_fd(&mut self, fd: i32) -> Result<std::os::fd::OwnedFd> {
        use std::os::fd::FromRawFd;
        let err = |source| PuppetError::Syscall { pid: self.tid, syscall: "pidfd_getfd", source };
        // SAFETY: plain syscalls with integer arguments.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.tid, 0) };
        if pidfd < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: pidfd was just returned to us and is owned here.
        let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as i32) };
        // SAFETY: integer arguments only.
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, std::os::fd::AsRawFd::as_raw_fd(&pidfd), fd, 0) };
        if got < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: the kernel just gave us this new descriptor.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(got as i32) })
    }
}

impl crt_plugin_api::Task for Puppet {
    fn pid(&self) -> i32 {
        self.tid
    }

    fn syscall(
        &mut self,
        nr: i64,
        args: crt_plugin_api::SyscallArgs,
    ) -> abi_stable::std_types::RResult<i64, abi_stable::std_types::RString> {
        self.syscall_raw("plugin syscall", nr, args.regs).map_err(|e| e.to_string().into()).into()
    }

    fn read_mem(
        &self,
        addr: u64,
        mut buf: abi_stable::std_types::RSliceMut<'_, u8>,
    ) -> abi_stable::std_types::RResult<(), abi_stable::std_types::RString> {
        self.read(addr, buf.as_mut_slice()).map_err(|e| e.to_string().into()).into()
    }

    fn install_fd(
        &mut self,
        fd: i32,
        target: i32,
    ) -> abi_stable::std_types::RResult<(), abi_stable::std_types::RString> {
        self.install_fd_at(fd, target).map_err(|e| e.to_string().into()).into()
    }

    fn store_blob(
        &mut self,
        key: abi_stable::std_types::RStr<'_>,
        data: abi_stable::std_types::RSlice<'_, u8>,
    ) -> abi_stable::std_types::RResult<(), abi_stable::std_types::RString> {
        match self.blobs.as_ref().map(|b| b.lock()) {
            Some(Ok(mut b)) => {
                b.insert(key.to_string(), data.to_vec());
                abi_stable::std_types::RResult::ROk(())
            }
            _ => abi_stable::std_types::RResult::RErr("no blob store at this point".into()),
        }
    }

    fn load_blob(
        &self,
        key: abi_stable::std_types::RStr<'_>,
    ) -> abi_stable::std_types::RResult<abi_stable::std_types::RVec<u8>, abi_stable::std_types::RString> {
        match self.blobs.as_ref().map(|b| b.lock()) {
            Some(Ok(b)) => match b.get(key.as_str()) {
                Some(d) => abi_stable::std_types::RResult::ROk(d.clone().into()),
                None => abi_stable::std_types::RResult::RErr(format!("no blob {key} in the image").into()),
            },
            _ => abi_stable::std_types::RResult::RErr("no blob store at this point".into()),
        }
    }

    fn scratch(
        &mut self,
    ) -> abi_stable::std_types::RResult<abi_stable::std_types::Tuple2<u64, u64>, abi_stable::std_types::RString> {
        match self.plugin_scratch {
            Some((a, l)) => abi_stable::std_types::RResult::ROk(abi_stable::std_types::Tuple2(a, l)),
            None => abi_stable::std_types::RResult::RErr("no scratch memory in this task at this point".into()),
        }
    }

    fn take_fd(&mut self, fd: i32) -> abi_stable::std_types::RResult<i32, abi_stable::std_types::RString> {
        Puppet::take_fd(self, fd).map(std::os::fd::IntoRawFd::into_raw_fd).map_err(|e| e.to_string().into()).into()
    }

    fn write_mem(
        &mut self,
        addr: u64,
        data: abi_stable::std_types::RSlice<'_, u8>,
    ) -> abi_stable::std_types::RResult<(), abi_stable::std_types::RString> {
        self.write(addr, data.as_slice()).map_err(|e| e.to_string().into()).into()
    }
}
