//! Resource handlers: the registry and crt's built-in handlers.
//!
//! Built-in handlers implement the same [`crt_plugin_api::Handler`] trait as
//! plugins and register themselves with [`inventory::submit!`]; the
//! [`Registry`] collects them (and, later, loaded plugins) and answers
//! "who claims this fd / this memory area?".

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::RBox;
use crt_plugin_api::{FdDesc, Handler, HandlerBox, Handler_TO, VmaDesc};

mod anon;
mod chardev;
mod contents;

mod directory;
mod epoll;
mod eventfd;
mod filemap;
mod ghost;

pub mod inet;
mod inotify;
mod memfd;
mod memory;
mod opath;
mod pidfd;
mod pipe;
mod regfile;
mod shmem;
mod signalfd;
mod sockfilter;
pub mod sysvshm;
mod timerfd;
mod tty;
mod unix;

/// A built-in handler, registered with `inventory::submit!`.
#[derive(Debug)]
pub struct Builtin {
    /// Claim order: lower is asked first.
    pub priority: u32,
    /// Constructs the handler.
    pub make: fn() -> HandlerBox,
}

inventory::collect!(Builtin);

/// Boxes a handler value into the ABI-stable trait object crt stores.
pub fn boxed<H: Handler + 'static>(h: H) -> HandlerBox {
    Handler_TO::from_ptr(RBox::new(h), TD_Opaque)
}

/// Where a handler comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Compiled into crt.
    Builtin,
    /// Loaded from a plugin.
    Plugin {
        /// The plugin's name.
        name: String,
        /// Its file.
        path: std::path::PathBuf,
    },
}

impl Origin {
    /// `built-in` or the plugin's name.
    pub fn provider(&self) -> String {
        match self {
            Origin::Builtin => "built-in".into(),
            Origin::Plugin { name, .. } => name.clone(),
        }
    }
}

/// All handlers crt knows, in claim order: plugins first, then built-ins.
pub struct Registry {
    handlers: Vec<HandlerBox>,
    origins: Vec<Origin>,
    plugins: usize,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Registry {
    /// The built-in handlers.
    pub fn builtin() -> Self {
        let mut list: Vec<&Builtin> = inventory::iter::<Builtin>.into_iter().collect();
        list.sort_by_key(|b| b.priority);
        let handlers: Vec<HandlerBox> = list.into_iter().map(|b| (b.make)()).collect();
        Self { origins: vec![Origin::Builtin; handlers.len()], handlers, plugins: 0 }
    }

    /// Adds a plugin's handler, asked before the built-ins; refuses a name
    /// another handler already has (and says whose it is).
    pub fn add_plugin_handler(&mut self, h: HandlerBox, origin: Origin) -> Result<(), String> {
        let name = h.name().into_string();
        if let Some(o) = self.origin(&name) {
            return Err(format!("its handler {name} has the name of a handler from {}", o.provider()));
        }
        self.handlers.insert(self.plugins, h);
        self.origins.insert(self.plugins, origin);
        self.plugins += 1;
        Ok(())
    }

    /// Where the handler called `name` comes from.
    pub fn origin(&self, name: &str) -> Option<&Origin> {
        self.handlers.iter().position(|h| h.name().as_str() == name).map(|i| &self.origins[i])
    }

    /// Handler names in claim order.
    pub fn names(&self) -> Vec<String> {
        self.handlers.iter().map(|h| h.name().into_string()).collect()
    }

    /// The first handler that claims `fd`.
    pub fn claim_fd(&self, fd: &FdDesc) -> Option<&HandlerBox> {
        self.handlers.iter().find(|h| h.claims_fd(fd))
    }

    /// The first handler that claims `vma`.
    pub fn claim_vma(&self, vma: &VmaDesc) -> Option<&HandlerBox> {
        self.handlers.iter().find(|h| h.claims_vma(vma))
    }

    /// Every handler.
    pub fn all(&self) -> impl Iterator<Item = &HandlerBox> {
        self.handlers.iter()
    }

    /// The handler called `name`.
    pub fn by_name(&self, name: &str) -> Option<&HandlerBox> {
        self.handlers.iter().find(|h| h.name().as_str() == name)
    }
}

/// A handler's hook or option refused.
#[derive(Debug, thiserror::Error)]
#[error("handler {handler}: {hook}: {msg}")]
pub struct HookError {
    /// The handler.
    pub handler: String,
    /// The hook or option.
    pub hook: String,
    /// What it said.
    pub msg: String,
}

impl Registry {
    /// Calls `hook` on every handler, in claim order; the first refusal stops.
    pub fn hook(
        &self,
        name: &str,
        mut hook: impl FnMut(&HandlerBox) -> abi_stable::std_types::RResult<(), abi_stable::std_types::RString>,
    ) -> Result<(), HookError> {
        for h in &self.handlers {
            if let abi_stable::std_types::RResult::RErr(msg) = hook(h) {
                return Err(HookError {
                    handler: h.name().into_string(),
                    hook: name.to_string(),
                    msg: msg.into_string(),
                });
            }
        }
        Ok(())
    }

    /// Applies `--handler-opt NAME:KEY=VALUE`.
    pub fn configure(&self, opt: &str) -> Result<(), HookError> {
        let err = |handler: &str, msg: String| HookError {
            handler: handler.to_string(),
            hook: format!("option {opt:?}"),
            msg,
        };
        let (name, kv) = opt.split_once(':').ok_or_else(|| err("?", "expected NAME:KEY=VALUE".into()))?;
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        let h = self
            .by_name(name)
            .ok_or_else(|| err(name, format!("no such handler (have: {})", self.names().join(", "))))?;
        h.configure(key.into(), value.into()).into_result().map_err(|m| err(name, m.into_string()))
    }
}

/// Version string built-in handlers record.
pub const BUILTIN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Opens `path` with `flags` and returns the raw fd (ownership passes to the caller).
fn open_raw(path: &str, flags: i32) -> Result<i32, String> {
    let c = std::ffi::CString::new(path).map_err(|_| format!("{path:?}: path contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string; open has no other preconditions.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0) };
    if fd < 0 {
        Err(format!("open {path}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(fd)
    }
}

/// Flags that must not be replayed when reopening a file.
const REOPEN_STRIP: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC;

/// Opens the file of `img` again by path with its dumped flags (plus
/// `extra`), and checks it is the same inode; returns the fd.
fn reopen_same(img: &crate::images::pb::RegFile, extra: i32) -> Result<i32, String> {
    let fd = open_raw(&img.path, (img.flags as i32 | extra) & !REOPEN_STRIP)?;
    // SAFETY: an all-zero stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on the fd we just opened, with a valid out buffer.
    let r = unsafe { libc::fstat(fd, &mut st) };
    if r != 0 || (!on_kernel_fs(fd) && (st.st_dev != img.dev || st.st_ino != img.ino)) {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing our own fd on the error path.
        unsafe { libc::close(fd) };
        return Err(if r != 0 {
            format!("fstat {}: {e}", img.path)
        } else {
            format!(
                "{} is now inode {} on device {:#x}, but was inode {} on device {:#x} at dump time; it was replaced since the dump",
                img.path, st.st_ino, st.st_dev, img.ino, img.dev
            )
        });
    }
    Ok(fd)
}

/// True for a file of a kernel file system whose files stand for kernel
/// objects rather than stored data: `/proc` (inodes are made anew for
/// every process, so a `/proc/PID/...` file of a restored pid is another
/// inode, with another time, and still the right file), cgroup file systems
/// (crt itself writes `cgroup.procs` when it restores a task, and a
/// recreated cgroup has new inodes) and sysfs.
fn on_kernel_fs(fd: i32) -> bool {
    const CGROUP_SUPER_MAGIC: libc::c_long = 0x27e0eb;
    const CGROUP2_SUPER_MAGIC: libc::c_long = 0x6367_7270;
    const SYSFS_MAGIC: libc::c_long = 0x6265_6572;
    // SAFETY: an all-zero statfs is a valid out buffer.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on a valid fd with a valid out buffer.
    let r = unsafe { libc::fstatfs(fd, &mut sfs) };
    r == 0 && [libc::PROC_SUPER_MAGIC, CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, SYSFS_MAGIC].contains(&sfs.f_type)
}

fn is_deleted(link: &str) -> bool {
    link.ends_with(" (deleted)")
}

#[cfg(test)]
mod tests {
    use super::Registry;

    /// `crt plugins` shows what each handler claims; none may leave it blank,
    /// and names must be unique (restore looks handlers up by name).
    #[test]
    fn every_builtin_says_what_it_claims() {
        let reg = Registry::builtin();
        let mut names = reg.names();
        for h in reg.all() {
            assert!(!h.claims().trim().is_empty(), "built-in handler {} does not say what it claims", h.name());
        }
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate built-in handler names");
    }
}
