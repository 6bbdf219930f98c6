//! `crt-plugin-recorder`: a test plugin. It claims fds of files whose name
//! ends in `.crt-recorder`, records every hook crt calls (to a log file set
//! with `--handler-opt recorder:log=PATH`), stores the dump-side sequence
//! in its image blob, and at restore refuses unless that sequence is
//! exactly init → pause → checkpoint → dump_fd. `recorder:fail=HOOK` makes
//! that hook fail; `CRT_RECORDER_DECLINE=1` makes the plugin decline.

use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use crt_plugin_api::abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use crt_plugin_api::{declare_plugin, handler_box, FdDesc, Handler, PluginInit, TaskRef};

#[derive(Default)]
struct Recorder {
    name: String,
    seen: Mutex<Vec<String>>,
    log: Mutex<Option<String>>,
    fail: Mutex<Option<String>>,
    install: Mutex<Option<String>>,
}

impl Recorder {
    fn record(&self, hook: &str, detail: String) -> RResult<(), RString> {
        let line = format!("{hook} {detail}");
        if let Ok(mut s) = self.seen.lock() {
            s.push(line.clone());
        }
        if let Some(path) = self.log.lock().ok().and_then(|l| l.clone()) {
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "{line}");
            }
        }
        if self.fail.lock().ok().and_then(|f| f.clone()).as_deref() == Some(hook) {
            return RResult::RErr(format!("failing {hook} as asked (recorder:fail)").into());
        }
        RResult::ROk(())
    }
}

fn pids(p: RSlice<'_, i32>) -> String {
    p.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

impl Handler for Recorder {
    fn name(&self) -> RString {
        self.name.as_str().into()
    }

    fn version(&self) -> RString {
        env!("CARGO_PKG_VERSION").into()
    }

    fn claims(&self) -> RString {
        "fd: files named *.crt-recorder".into()
    }

    fn hooks(&self) -> RString {
        "all".into()
    }

    fn configure(&self, key: RStr<'_>, value: RStr<'_>) -> RResult<(), RString> {
        let slot = match key.as_str() {
            "log" => &self.log,
            "fail" => &self.fail,
            "install" => &self.install,
            k => return RResult::RErr(format!("unknown option {k} (have: log, fail, install)").into()),
        };
        if let Ok(mut s) = slot.lock() {
            *s = Some(value.to_string());
        }
        RResult::ROk(())
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.link.ends_with(".crt-recorder")
    }

    fn dump_init(&self, roots: RSlice<'_, i32>) -> RResult<(), RString> {
        if let Ok(mut s) = self.seen.lock() {
            s.clear();
        }
        self.record("dump_init", pids(roots))
    }

    fn dump_pause(&self, p: RSlice<'_, i32>) -> RResult<(), RString> {
        self.record("dump_pause", pids(p))
    }

    fn dump_checkpoint(&self, p: RSlice<'_, i32>) -> RResult<(), RString> {
        self.record("dump_checkpoint", pids(p))
    }

    fn dump_fd(&self, mut task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        if let RResult::RErr(e) = self.record("dump_fd", format!("{} {}", fd.pid, fd.fd)) {
            return RResult::RErr(e);
        }
        let seen = self.seen.lock().map(|s| s.join("\n")).unwrap_or_default();
        // The same sequence also goes to the image's blob store.
        if let RResult::RErr(e) = task.store_blob("recorder/hooks".into(), seen.as_bytes().into()) {
            return RResult::RErr(e);
        }
        let blob = format!("{}\n{}\n{}\n{seen}", fd.link, fd.flags, fd.pos);
        RResult::ROk(blob.into_bytes().into())
    }

    fn dump_finish(&self, ok: bool) {
        let _ = self.record("dump_finish", ok.to_string());
    }

    fn restore_init(&self, p: RSlice<'_, i32>) -> RResult<(), RString> {
        self.record("restore_init", pids(p))
    }

    fn restore_after_fork(&self, task: TaskRef<'_>) -> RResult<(), RString> {
        self.record("restore_after_fork", task.pid().to_string())
    }

    fn restore_fd(&self, task: TaskRef<'_>, fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        if let RResult::RErr(e) = self.record("restore_fd", format!("{} {fd}", task.pid())) {
            return RResult::RErr(e);
        }
        let text = String::from_utf8_lossy(blob.as_slice()).into_owned();
        let stored = match task.load_blob("recorder/hooks".into()) {
            RResult::ROk(b) => String::from_utf8_lossy(&b).into_owned(),
            RResult::RErr(e) => return RResult::RErr(format!("blob store: {e}").into()),
        };
        let mut lines = text.lines();
        let (path, flags, pos) = (lines.next(), lines.next(), lines.next());
        let in_blob: Vec<&str> = text.lines().skip(3).collect();
        if stored.lines().collect::<Vec<_>>() != in_blob {
            return RResult::RErr("the blob store and the fd's blob disagree".into());
        }
        let hooks: Vec<&str> = lines.map(|l| l.split(' ').next().unwrap_or("")).collect();
        if hooks.first() != Some(&"dump_init")
            || !hooks.ends_with(&["dump_pause", "dump_checkpoint", "dump_fd"])
                && !hooks.windows(3).any(|w| w == ["dump_pause", "dump_checkpoint", "dump_fd"])
        {
            return RResult::RErr(format!("dump hooks came in the wrong order: {hooks:?}").into());
        }
        let (Some(path), Some(flags), Some(pos)) = (path, flags, pos) else {
            return RResult::RErr("truncated recorder blob".into());
        };
        let flags: i32 = flags.parse().unwrap_or(0);
        let pos: u64 = pos.parse().unwrap_or(0);
        let acc = flags & 3;
        let file = std::fs::OpenOptions::new()
            .read(acc != 1)
            .write(acc != 0)
            .custom_flags(flags & 0o2000) // O_APPEND
            .open(path);
        match file {
            Ok(f) => {
                use std::io::Seek;
                let mut f = f;
                if let Err(e) = f.seek(std::io::SeekFrom::Start(pos)) {
                    return RResult::RErr(format!("seek {path}: {e}").into());
                }
                RResult::ROk(f.into_raw_fd())
            }
            Err(e) => RResult::RErr(format!("open {path}: {e}").into()),
        }
    }

    fn restore_resume(&self, mut task: TaskRef<'_>) -> RResult<(), RString> {
        if let RResult::RErr(e) = self.record("restore_resume", task.pid().to_string()) {
            return RResult::RErr(e);
        }
        // `recorder:install=PATH`: put PATH at fd 99 of the task.
        if let Some(path) = self.install.lock().ok().and_then(|p| p.clone()) {
            let f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => return RResult::RErr(format!("open {path}: {e}").into()),
            };
            use std::os::fd::AsRawFd;
            return task.install_fd(f.as_raw_fd(), 99);
        }
        RResult::ROk(())
    }

    fn restore_finish(&self, ok: bool) {
        let _ = self.record("restore_finish", ok.to_string());
    }
}

/// The file this copy of the plugin was loaded from (from /proc/self/maps).
fn own_file() -> Option<String> {
    let here = init as fn() -> PluginInit as usize as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|l| {
        let (range, rest) = l.split_once(' ')?;
        let (a, b) = range.split_once('-')?;
        let (a, b) = (u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?);
        (a <= here && here < b).then(|| rest.split_whitespace().nth(4).unwrap_or("").to_string())
    })
}

fn init() -> PluginInit {
    if std::env::var_os("CRT_RECORDER_DECLINE").is_some() {
        return PluginInit::Declined("CRT_RECORDER_DECLINE is set".into());
    }
    // Copies installed under other file names get their own handler name,
    // so several can be loaded at once (the plugin benchmark does).
    let stem = own_file()
        .and_then(|p| std::path::Path::new(&p).file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let name = if stem.is_empty() || stem == "libcrt_plugin_recorder" {
        "recorder".into()
    } else {
        format!("recorder-{stem}")
    };
    PluginInit::Handlers(vec![handler_box(Recorder { name, ..Recorder::default() })].into())
}

declare_plugin! {
    name: "crt-plugin-recorder",
    version: env!("CARGO_PKG_VERSION"),
    description: "Test plugin: records every hook and checks their order",
    init: init,
}
