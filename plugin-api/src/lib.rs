//! # crt-plugin-api
//!
//! The one crate a crt resource handler depends on. crt's built-in handlers
//! (regular files, character devices, memory) and the `.so` plugins that
//! ship separately implement the same [`Handler`] trait, with
//! [`abi_stable`]-compatible types at every boundary so a plugin built with
//! one crt release keeps loading into the next.
//!
//! A handler *claims* resources — open file descriptors ([`FdDesc`]) and
//! memory areas ([`VmaDesc`]) — and is called to dump each claimed resource
//! into an opaque blob, and to restore it from that blob. The blob's format
//! is the handler's own business; crt stores it in the image next to the
//! resource.
//!
//! ```
//! use crt_plugin_api::*;
//! use abi_stable::std_types::{RResult::{self, ROk, RErr}, RString, RVec, RSlice};
//!
//! /// Claims `/dev/null` and reopens it at restore.
//! struct DevNull;
//!
//! impl Handler for DevNull {
//!     fn name(&self) -> RString { "devnull".into() }
//!     fn version(&self) -> RString { "1.0.0".into() }
//!     fn claims_fd(&self, fd: &FdDesc) -> bool { fd.link.as_str() == "/dev/null" }
//!     fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
//!         ROk(fd.flags.to_le_bytes().to_vec().into())
//!     }
//!     fn restore_fd(&self, _task: TaskRef<'_>, fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
//!         let _ = (fd, blob);
//!         RErr("example only".into())
//!     }
//! }
//! ```

// The sabi_trait macro generates impls inside a const; rustc flags that.
#![allow(non_local_definitions)]

pub use abi_stable;

mod plugin;
pub use plugin::{PluginInit, PluginMod, PluginModRef};

use abi_stable::std_types::RResult::{self, RErr, ROk};
use abi_stable::std_types::{RSlice, RSliceMut, RStr, RString, RVec};
use abi_stable::{sabi_trait, StableAbi};

/// Version of this ABI. Bumped only for incompatible changes; new hooks are
/// appended without a bump.
pub const ABI_VERSION: u32 = 1;

/// An open file descriptor of a dumped task, as crt sees it from `/proc`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default)]
pub struct FdDesc {
    /// The task (thread-group id) holding the fd.
    pub pid: i32,
    /// The descriptor number.
    pub fd: i32,
    /// `readlink /proc/PID/fd/N`: a path, or `pipe:[ino]`, `anon_inode:[eventfd]`, …
    pub link: RString,
    /// `st_mode` of the open file (type and permission bits).
    pub mode: u32,
    /// Device holding the file.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Device number for character and block devices.
    pub rdev: u64,
    /// File size in bytes.
    pub size: i64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// `open(2)` flags (from `fdinfo`).
    pub flags: u32,
    /// File position (from `fdinfo`).
    pub pos: i64,
    /// Mount id (from `fdinfo`).
    pub mnt_id: i32,
}

impl FdDesc {
    /// The file type bits of [`FdDesc::mode`] (`S_IFREG`, `S_IFCHR`, …).
    ///
    /// ```
    /// use crt_plugin_api::FdDesc;
    /// let fd = FdDesc { mode: 0o020_666, link: "/dev/null".into(), ..Default::default() };
    /// assert_eq!(fd.file_type(), 0o020_000); // a character device
    /// ```
    pub fn file_type(&self) -> u32 {
        self.mode & 0o170_000
    }
}

/// A memory area (VMA) of a dumped task, from `/proc/PID/maps` and `smaps`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default)]
pub struct VmaDesc {
    /// The task.
    pub pid: i32,
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `PROT_READ | PROT_WRITE | PROT_EXEC` bits.
    pub prot: u32,
    /// `MAP_SHARED` rather than `MAP_PRIVATE`.
    pub shared: bool,
    /// Offset into the file, in bytes.
    pub pgoff: u64,
    /// The path or pseudo-name from `maps` (`[heap]`, `/[aio] (deleted)`, …); empty for anonymous.
    pub name: RString,
    /// Device of the backing file (0 for anonymous).
    pub dev: u64,
    /// Inode of the backing file (0 for anonymous).
    pub ino: u64,
    /// `VmFlags` mnemonics from smaps, space separated (`rd wr mr mw me gd ac`).
    pub vm_flags: RString,
}

impl VmaDesc {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True for a zero-length area (never produced by crt).
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// True when the area has the given smaps `VmFlags` mnemonic (e.g. `"gd"`).
    ///
    /// ```
    /// use crt_plugin_api::VmaDesc;
    /// let stack = VmaDesc { start: 0x7ff0_0000, end: 0x7ff2_1000, vm_flags: "rd wr mr mw me gd ac".into(), ..Default::default() };
    /// assert!(stack.has_vm_flag("gd")); // grows down
    /// assert_eq!(stack.len(), 0x21000);
    /// ```
    pub fn has_vm_flag(&self, flag: &str) -> bool {
        self.vm_flags.as_str().split_whitespace().any(|f| f == flag)
    }
}

/// Which page contents crt must store for a memory area.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagePolicy {
    /// Store nothing: the contents come from a file, or the handler keeps them itself.
    None = 0,
    /// Store present pages that are not file pages (anonymous memory, COW copies).
    Private = 1,
    /// Store every present page (shared anonymous memory).
    All = 2,
}

/// What a handler recorded about a memory area.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct VmaDump {
    /// Handler-private state.
    pub blob: RVec<u8>,
    /// The pages crt stores.
    pub pages: PagePolicy,
}

/// How a handler wants a memory area rebuilt.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmaRestore {
    /// crt maps the area anonymously (shared or private as dumped).
    Anonymous,
    /// crt maps this fd (owned by crt from now on, in crt's own fd table) at the area.
    MapFd(i32),
    /// The handler built the area itself through the task handle.
    Done,
}

/// The six argument registers of a system call.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyscallArgs {
    /// `rdi, rsi, rdx, r10, r8, r9`.
    pub regs: [u64; 6],
}

/// ```
/// use crt_plugin_api::SyscallArgs;
/// // getpid() takes no arguments; write(1, buf, len) takes three.
/// let none = SyscallArgs::default();
/// let write = SyscallArgs::from([1, 0x7fff_0000, 5, 0, 0, 0]);
/// assert_eq!(write.regs[2], 5);
/// assert_eq!(none.regs, [0; 6]);
/// ```
impl From<[u64; 6]> for SyscallArgs {
    fn from(regs: [u64; 6]) -> Self {
        Self { regs }
    }
}

/// The task a hook works on. crt implements it; plugins call it.
///
/// All addresses are in the task's address space. Errors are strings that
/// crt reports together with the handler's name.
#[sabi_trait]
pub trait Task {
    /// The task's pid.
    fn pid(&self) -> i32;

    /// Runs one system call inside the stopped task and returns its raw
    /// result (a negative errno on failure, as the kernel returns it).
    fn syscall(&mut self, nr: i64, args: SyscallArgs) -> RResult<i64, RString>;

    /// Reads task memory at `addr` into `buf`.
    fn read_mem(&self, addr: u64, buf: RSliceMut<'_, u8>) -> RResult<(), RString>;

    /// Writes `data` into task memory at `addr` (also into read-only pages).
    fn write_mem(&mut self, addr: u64, data: RSlice<'_, u8>) -> RResult<(), RString>;

    /// A copy, in crt's own fd table, of the task's descriptor `fd`
    /// (`pidfd_getfd`); the caller owns and must close it.
    fn take_fd(&mut self, fd: i32) -> RResult<i32, RString>;

    /// Installs a copy of crt's descriptor `fd` (one the plugin opened, in
    /// crt's fd table) into the task as descriptor number `target`,
    /// replacing whatever `target` was. crt keeps `fd`; close it yourself.
    fn install_fd(&mut self, fd: i32, target: i32) -> RResult<(), RString>;

    /// Dump side: stores `data` in the image under `key` (prefix keys with
    /// your plugin's name; a later store replaces an earlier one).
    fn store_blob(&mut self, key: RStr<'_>, data: RSlice<'_, u8>) -> RResult<(), RString>;

    /// Restore side: the data stored under `key` at dump time.
    fn load_blob(&self, key: RStr<'_>) -> RResult<RVec<u8>, RString>;

    /// Scratch memory inside the task that the hook may use freely while
    /// it runs (for syscall arguments): `(address, length)`.
    ///
    /// (The last method of ABI version 1: methods added later come after
    /// it, and crt checks a plugin's vtable has them before calling them.)
    #[sabi(last_prefix_field)]
    fn scratch(&mut self) -> RResult<abi_stable::std_types::Tuple2<u64, u64>, RString>;
}

/// A borrowed task handle as hooks receive it.
pub type TaskRef<'a> = Task_TO<'a, abi_stable::sabi_types::RMut<'a, ()>>;

/// A resource handler: built in (registered with `inventory`) or loaded from a plugin.
///
/// Every method has a default that claims nothing, so a handler implements
/// only what it handles.
#[sabi_trait]
pub trait Handler: Send + Sync {
    /// Unique, stable name; recorded in images next to each resource it dumped.
    fn name(&self) -> RString;

    /// Version recorded in images (semver); restore refuses an image
    /// written by a handler of another major version.
    fn version(&self) -> RString;

    /// What this handler claims, for people (`crt plugins`), e.g.
    /// `"fd: anonymous pipes and FIFOs"`.
    fn claims(&self) -> RString {
        RString::new()
    }

    /// The hooks this handler implements beyond dump/restore of its
    /// resources, for people (`crt plugins`), e.g. `"dump_pause, dump_finish"`.
    fn hooks(&self) -> RString {
        RString::new()
    }

    /// True when this handler takes `fd`.
    fn claims_fd(&self, fd: &FdDesc) -> bool {
        let _ = fd;
        false
    }

    /// True when this handler takes the memory area `vma`.
    fn claims_vma(&self, vma: &VmaDesc) -> bool {
        let _ = vma;
        false
    }

    /// Records a claimed fd. The task is frozen; nothing may change it.
    fn dump_fd(&self, task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        let _ = (task, fd);
        RErr("this handler does not dump fds".into())
    }

    /// Recreates a claimed fd and returns a descriptor in crt's own fd table
    /// (crt takes ownership and installs it in the task as number `fd`).
    fn restore_fd(&self, task: TaskRef<'_>, fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let _ = (task, fd, blob);
        RErr("this handler does not restore fds".into())
    }

    /// Records a claimed memory area and says which pages crt stores.
    fn dump_vma(&self, task: TaskRef<'_>, vma: &VmaDesc) -> RResult<VmaDump, RString> {
        let _ = (task, vma);
        RErr("this handler does not dump memory areas".into())
    }

    /// Says how to rebuild a claimed memory area.
    fn restore_vma(&self, task: TaskRef<'_>, vma: &VmaDesc, blob: RSlice<'_, u8>) -> RResult<VmaRestore, RString> {
        let _ = (task, vma, blob);
        RErr("this handler does not restore memory areas".into())
    }

    /// Sets an option given on the command line as
    /// `--handler-opt NAME:KEY=VALUE`. Unknown keys should be refused.
    fn configure(&self, key: RStr<'_>, value: RStr<'_>) -> RResult<(), RString> {
        let _ = value;
        RErr(format!("unknown option {key}").into())
    }

    /// Dump hook 1: a dump of the trees under `roots` begins.
    fn dump_init(&self, roots: RSlice<'_, i32>) -> RResult<(), RString> {
        let _ = roots;
        ROk(())
    }

    /// Dump hook 2: the forest (`pids`) is known but still running; quiesce
    /// a device here.
    fn dump_pause(&self, pids: RSlice<'_, i32>) -> RResult<(), RString> {
        let _ = pids;
        ROk(())
    }

    /// Dump hook 3: every task of the forest (`pids`) is frozen; next come
    /// `dump_fd` / `dump_vma` for each claimed resource.
    fn dump_checkpoint(&self, pids: RSlice<'_, i32>) -> RResult<(), RString> {
        let _ = pids;
        ROk(())
    }

    /// Dump hook 5: the dump is over (`ok` false when it failed, and the
    /// tasks keep running): drop per-dump state, resume a quiesced device.
    fn dump_finish(&self, ok: bool) {
        let _ = ok;
    }

    /// Restore hook 1: a restore of the forest `pids` begins.
    fn restore_init(&self, pids: RSlice<'_, i32>) -> RResult<(), RString> {
        let _ = pids;
        ROk(())
    }

    /// Restore hook 2: process `task` was just created (still a copy of its
    /// creator; nothing of it is restored yet).
    fn restore_after_fork(&self, task: TaskRef<'_>) -> RResult<(), RString> {
        let _ = task;
        ROk(())
    }

    /// Restore hook 4: `task`'s memory and fds are back (late, per task,
    /// before its registers are loaded and it is released).
    fn restore_resume(&self, task: TaskRef<'_>) -> RResult<(), RString> {
        let _ = task;
        ROk(())
    }

    /// The restore is over (`ok` false when it failed): drop per-restore
    /// state, such as objects created for resources shared by several tasks.
    ///
    /// (The last method of ABI version 1: hooks added later are appended
    /// after it with defaults, so plugins built earlier keep loading.)
    #[sabi(last_prefix_field)]
    fn restore_finish(&self, ok: bool) {
        let _ = ok;
    }
}

/// An owned, type-erased handler as crt stores it.
pub type HandlerBox = Handler_TO<'static, abi_stable::std_types::RBox<()>>;

/// Boxes a handler into the ABI-stable object crt stores (what a plugin's
/// `init` returns in [`PluginInit::Handlers`]).
///
/// ```
/// use crt_plugin_api::abi_stable::std_types::RString;
/// use crt_plugin_api::{handler_box, FdDesc, Handler, PluginInit};
///
/// struct Quiet;
/// impl Handler for Quiet {
///     fn name(&self) -> RString { "quiet".into() }
///     fn version(&self) -> RString { "1.0.0".into() }
/// }
///
/// let h = handler_box(Quiet);
/// assert_eq!(h.name().as_str(), "quiet");
/// assert!(!h.claims_fd(&FdDesc::default())); // the default claims nothing
/// let init = PluginInit::Handlers(vec![h].into());
/// assert!(matches!(init, PluginInit::Handlers(v) if v.len() == 1));
/// ```
pub fn handler_box<H: Handler + 'static>(h: H) -> HandlerBox {
    Handler_TO::from_ptr(abi_stable::std_types::RBox::new(h), abi_stable::sabi_trait::TD_Opaque)
}
