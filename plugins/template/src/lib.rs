//! `crt-plugin-template`: the starting point for a device plugin.
//!
//! Copy this crate, rename it, and replace the device logic. It shows the
//! whole life of a device plugin:
//!
//! * `init` declines when the device is absent (the dump goes on without it);
//! * `configure` takes `--handler-opt template:device=/dev/NAME`;
//! * `claims_fd` takes the fds opened on that character device (by
//!   major/minor, so any path to it matches);
//! * `dump_pause` quiesces the device before the forest is frozen and
//!   `dump_finish` resumes it, whether the dump worked or not;
//! * `dump_fd` records what is needed to reopen it (path, flags) — a real
//!   device would also read its state here, through the task handle
//!   (`Task::take_fd` + ioctls, or `Task::syscall` inside the task);
//! * `restore_fd` reopens the device and returns the fd; crt installs it at
//!   the dumped number.
//!
//! Build: `cargo build --release -p crt-plugin-template`, then install
//! `target/release/libcrt_plugin_template.so` into `/usr/lib/crt` (owned by
//! root, mode 0644). See docs/plugin-guide.md.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use crt_plugin_api::abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use crt_plugin_api::{declare_plugin, handler_box, FdDesc, Handler, PluginInit, TaskRef};

/// The device this plugin handles, once configured.
#[derive(Default)]
struct TemplateDevice {
    /// Path and device number (`st_rdev`) of the device.
    device: Mutex<Option<(String, u64)>>,
}

impl TemplateDevice {
    fn rdev(&self) -> Option<u64> {
        self.device.lock().ok().and_then(|d| d.as_ref().map(|(_, r)| *r))
    }
}

impl Handler for TemplateDevice {
    fn name(&self) -> RString {
        "template".into()
    }

    fn version(&self) -> RString {
        env!("CARGO_PKG_VERSION").into()
    }

    fn claims(&self) -> RString {
        match self.device.lock().ok().and_then(|d| d.clone()) {
            Some((path, _)) => format!("fd: character device {path}").into(),
            None => "fd: the character device set with --handler-opt template:device=PATH".into(),
        }
    }

    fn hooks(&self) -> RString {
        "configure, dump_pause, dump_finish".into()
    }

    fn configure(&self, key: RStr<'_>, value: RStr<'_>) -> RResult<(), RString> {
        if key.as_str() != "device" {
            return RResult::RErr(format!("unknown option {key} (have: device)").into());
        }
        match std::fs::metadata(value.as_str()) {
            Ok(m) if m.file_type_is_char_device() => {
                if let Ok(mut d) = self.device.lock() {
                    *d = Some((value.to_string(), m.rdev()));
                }
                RResult::ROk(())
            }
            Ok(_) => RResult::RErr(format!("{value} is not a character device").into()),
            Err(e) => RResult::RErr(format!("{value}: {e}").into()),
        }
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.file_type() == 0o020000 && Some(fd.rdev) == self.rdev()
    }

    fn dump_pause(&self, _pids: RSlice<'_, i32>) -> RResult<(), RString> {
        // A real device: stop DMA / drain queues here, before the freeze.
        RResult::ROk(())
    }

    fn dump_fd(&self, _task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        // The blob format is the plugin's own; version it.
        let blob = format!("v1\n{}\n{}", fd.link, fd.flags);
        RResult::ROk(blob.into_bytes().into())
    }

    fn dump_finish(&self, _ok: bool) {
        // A real device: resume what dump_pause stopped.
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let text = String::from_utf8_lossy(blob.as_slice()).into_owned();
        let mut lines = text.lines();
        if lines.next() != Some("v1") {
            return RResult::RErr("unknown blob version; written by a newer plugin?".into());
        }
        let (Some(path), Some(flags)) = (lines.next(), lines.next().and_then(|f| f.parse::<i32>().ok())) else {
            return RResult::RErr("truncated blob".into());
        };
        let Ok(c) = CString::new(path) else { return RResult::RErr("bad path".into()) };
        let keep = flags & !(0o100 | 0o200 | 0o1000 | 0o400); // no O_CREAT/O_EXCL/O_TRUNC/O_NOCTTY
                                                              // SAFETY: `c` is a valid C string; open has no other preconditions.
        let fd = unsafe { open(c.as_ptr(), keep | 0o2000000) }; // O_CLOEXEC
        if fd < 0 {
            return RResult::RErr(format!("open {path}: {}", std::io::Error::last_os_error()).into());
        }
        RResult::ROk(fd)
    }
}

extern "C" {
    fn open(path: *const std::ffi::c_char, flags: i32, ...) -> i32;
}

trait CharDev {
    fn file_type_is_char_device(&self) -> bool;
}

impl CharDev for std::fs::Metadata {
    fn file_type_is_char_device(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.file_type().is_char_device()
    }
}

fn init() -> PluginInit {
    // A real plugin checks for its hardware here and declines without it:
    // if !Path::new("/dev/mydev").exists() { return PluginInit::Declined("no /dev/mydev".into()) }
    PluginInit::Handlers(vec![handler_box(TemplateDevice::default())].into())
}

declare_plugin! {
    name: "crt-plugin-template",
    version: env!("CARGO_PKG_VERSION"),
    description: "Template device plugin (reopens a configured character device)",
    init: init,
}
