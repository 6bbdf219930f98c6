//! Built-in handler for inotify instances: every watch (path, mask) comes
//! back with its watch descriptor number.
//!
//! fdinfo gives each watch as a file handle; crt resolves it to a path at
//! dump time (`open_by_handle_at` on the watch's filesystem). At restore,
//! watches are added in descriptor order; a gap (a watch removed earlier)
//! is skipped by adding and removing a watch on a scratch directory, whose
//! `IN_IGNORED` events crt reads away. Events not yet read at dump time
//! cannot be peeked, so such an instance is refused (nothing is lost).

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{FdDesc, Handler, TaskRef};
use prost::Message;

use super::anon::{fd_or_err, fdinfo};
use super::{boxed, Builtin, BUILTIN_VERSION};
use crate::images::pb;

/// `anon_inode:inotify`.
pub struct Inotify;

inventory::submit! { Builtin { priority: 134, make: || boxed(Inotify) } }

/// One `inotify wd:… ino:… sdev:… mask:… … f_handle:…` line.
struct Watch {
    wd: i32,
    ino: u64,
    sdev: u64,
    mask: u32,
    handle_type: i32,
    handle: Vec<u8>,
}

fn parse(info: &str) -> Result<Vec<Watch>, String> {
    info.lines()
        .filter(|l| l.starts_with("inotify "))
        .map(|l| {
            let get = |k: &str| l.split_whitespace().find_map(|f| f.strip_prefix(k)).ok_or(format!("no {k} in {l:?}"));
            let hexu = |k: &str| get(k).and_then(|v| u64::from_str_radix(v, 16).map_err(|_| format!("bad {k}")));
            let handle = get("f_handle:")?;
            let bytes = (0..handle.len() / 2)
                .map(|i| u8::from_str_radix(&handle[2 * i..2 * i + 2], 16).map_err(|_| "bad f_handle".to_string()))
                .collect::<Result<Vec<u8>, String>>()?;
            Ok(Watch {
                wd: get("wd:")?.parse().map_err(|_| "bad wd".to_string())?,
                ino: hexu("ino:")?,
                sdev: hexu("sdev:")?,
                mask: hexu("mask:")? as u32,
                handle_type: get("fhandle-type:")?.parse().map_err(|_| "bad fhandle-type".to_string())?,
                handle: bytes,
            })
        })
        .collect()
}

/// The path of a watched file and an `O_PATH` fd of it, from its handle
/// (needs CAP_DAC_READ_SEARCH).
fn resolve(w: &Watch) -> Result<(String, OwnedFd), String> {
    // The kernel's dev_t: major << 20 | minor.
    let (major, minor) = (w.sdev >> 20, w.sdev & 0xfffff);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let mount = mountinfo
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&format!("{major}:{minor}").as_str())).then(|| f.get(4).map(|s| s.to_string()))?
        })
        .ok_or_else(|| format!("no mount of device {major}:{minor} for inotify watch {}", w.wd))?;
    let dir = std::fs::File::open(&mount).map_err(|e| format!("{mount}: {e}"))?;
    // struct file_handle: handle_bytes, handle_type, f_handle[].
    let mut fh = Vec::with_capacity(8 + w.handle.len());
    fh.extend_from_slice(&(w.handle.len() as u32).to_ne_bytes());
    fh.extend_from_slice(&w.handle_type.to_ne_bytes());
    fh.extend_from_slice(&w.handle);
    // SAFETY: `fh` is a valid struct file_handle of the length it announces.
    let fd = unsafe {
        libc::syscall(libc::SYS_open_by_handle_at, dir.as_raw_fd(), fh.as_ptr(), libc::O_PATH | libc::O_CLOEXEC)
    };
    let fd = fd_or_err(fd as i32, "open_by_handle_at")?;
    // SAFETY: the kernel just gave us this fd.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", owned.as_raw_fd())).map_err(|e| e.to_string())?;
    Ok((path.to_string_lossy().into_owned(), owned))
}

fn dump(task: &mut TaskRef<'_>, fd: &FdDesc) -> Result<pb::Inotify, String> {
    let copy = task.take_fd(fd.fd).into_result().map_err(|e| e.to_string())?;
    // SAFETY: take_fd hands us ownership of a new fd.
    let copy = unsafe { OwnedFd::from_raw_fd(copy) };
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(copy.as_raw_fd(), libc::FIONREAD, &mut unread) };
    if unread > 0 {
        return Err(format!(
            "has {unread} bytes of inotify events not yet read, which cannot be peeked; retry when the process has read them"
        ));
    }
    let info = fdinfo(fd.pid, fd.fd)?;
    let mut watches = Vec::new();
    for w in parse(&info)? {
        let (path, file) = resolve(&w)?;
        // A file deleted since it was watched: the same ghost as its fds.
        let deleted = if super::is_deleted(&path) {
            let meta = std::fs::File::from(file.try_clone().map_err(|e| e.to_string())?).metadata();
            let meta = meta.map_err(|e| format!("stat {path}: {e}"))?;
            Some(super::ghost::dump(&format!("/proc/self/fd/{}", file.as_raw_fd()), &path, meta.dev(), meta.ino())?)
        } else {
            None
        };
        watches.push(pb::InotifyWatch { wd: w.wd, path, mask: w.mask, ino: w.ino, deleted });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(pb::Inotify { flags: fd.flags, watches })
}

fn add_watch(fd: i32, path: &str, mask: u32) -> Result<i32, String> {
    let c = std::ffi::CString::new(path).map_err(|_| "path with NUL".to_string())?;
    // SAFETY: valid C string and an inotify fd we own.
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
    fd_or_err(wd, &format!("inotify_add_watch {path}"))
}

fn restore(m: &pb::Inotify) -> Result<i32, String> {
    // Non-blocking while crt drains its own events; the dumped mode is set last.
    // SAFETY: inotify_init1 takes flags only.
    let fd = fd_or_err(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) }, "inotify_init1")?;
    // SAFETY: just created and owned here.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut next = 1;
    for w in &m.watches {
        while next < w.wd {
            // Skip a descriptor number: watch a scratch directory, then drop it.
            let tmp = std::env::temp_dir().join(format!("crt-inotify-{}-{next}", std::process::id()));
            std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
            let wd = add_watch(fd, &tmp.to_string_lossy(), libc::IN_ATTRIB)?;
            // SAFETY: removes the watch we just added.
            unsafe { libc::inotify_rm_watch(fd, wd) };
            let _ = std::fs::remove_dir(&tmp);
            next = wd + 1;
        }
        let got = if let Some(g) = &w.deleted {
            let anchor = super::ghost::restore(g).map_err(|e| format!("inotify watch {}: {e}", w.wd))?;
            add_watch(fd, &format!("/proc/self/fd/{}", anchor.as_raw_fd()), w.mask)?
        } else {
            let meta = std::fs::metadata(&w.path).map_err(|e| format!("inotify watch {}: {}: {e}", w.wd, w.path))?;
            if meta.ino() != w.ino {
                return Err(format!("inotify watch {}: {} is another file than at dump time", w.wd, w.path));
            }
            add_watch(fd, &w.path, w.mask)?
        };
        if got != w.wd {
            return Err(format!("inotify watch on {} got descriptor {got}, not {}", w.path, w.wd));
        }
        next = got + 1;
    }
    // Read away the IN_IGNORED events of the scratch watches.
    let mut f = std::fs::File::from(owned);
    let mut buf = [0u8; 4096];
    while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: fcntl on the fd we own: back to the dumped blocking mode.
    unsafe { libc::fcntl(fd, libc::F_SETFL, m.flags as i32 & libc::O_NONBLOCK) };
    Ok(fd)
}

impl Handler for Inotify {
    fn name(&self) -> RString {
        "inotify".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "fd: inotify instances (watches with their descriptor numbers)".into()
    }

    fn claims_fd(&self, fd: &FdDesc) -> bool {
        fd.link.as_str() == "anon_inode:inotify"
    }

    fn dump_fd(&self, mut task: TaskRef<'_>, fd: &FdDesc) -> RResult<RVec<u8>, RString> {
        dump(&mut task, fd).map(|m| RVec::from(m.encode_to_vec())).map_err(RString::from).into()
    }

    fn restore_fd(&self, _task: TaskRef<'_>, _fd: i32, blob: RSlice<'_, u8>) -> RResult<i32, RString> {
        let r = pb::Inotify::decode(blob.as_slice())
            .map_err(|e| format!("corrupt inotify record: {e}"))
            .and_then(|m| restore(&m));
        r.map_err(RString::from).into()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_watches() {
        let info = "pos:\t0\nflags:\t04000\ninotify wd:3 ino:98c226 sdev:fe00000 mask:fff ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:26c2980030e7b3b3\n";
        let w = super::parse(info).expect("parse");
        assert_eq!((w[0].wd, w[0].ino, w[0].sdev, w[0].mask, w[0].handle_type), (3, 0x98c226, 0xfe00000, 0xfff, 1));
        assert_eq!(w[0].handle, vec![0x26, 0xc2, 0x98, 0x00, 0x30, 0xe7, 0xb3, 0xb3]);
    }
}
