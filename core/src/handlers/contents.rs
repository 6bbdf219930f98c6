//! A file's contents and attributes, copied into the image and back, for
//! files that exist nowhere else once the dumped tasks are gone: files
//! deleted while open or mapped (`ghost.rs`) and memfds (`memfd.rs`).
//!
//! Only data segments are stored (`SEEK_DATA`/`SEEK_HOLE`), so holes stay
//! holes; then the size, owner, group, mode and access and modification
//! times. (The change time cannot be set: the kernel stamps it.)

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::images::pb;

/// Reads `f` (opened read-only, ideally with `O_NOATIME`), keeping at most
/// `limit` bytes of data; `what` names it in errors.
pub fn read(f: &File, limit: u64, what: &str) -> Result<pb::FileContents, String> {
    let meta = f.metadata().map_err(|e| format!("stat {what}: {e}"))?;
    let size = meta.len() as i64;
    let mut segments = Vec::new();
    let mut stored = 0u64;
    let mut at = 0i64;
    while at < size {
        let Some((start, end)) = next_segment(f, at, size)? else { break };
        stored += (end - start) as u64;
        if stored > limit {
            return Err(format!(
                "{what} holds more than {limit} bytes of data ({size} bytes in all); raise the limit with --handler-opt regfile:ghost-limit=BYTES"
            ));
        }
        let mut data = vec![0u8; (end - start) as usize];
        f.read_exact_at(&mut data, start as u64).map_err(|e| format!("reading {what} at {start}: {e}"))?;
        segments.push(pb::Segment { offset: start, data });
        at = end;
    }
    Ok(pb::FileContents {
        size,
        segments,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        atime_ns: meta.atime() * 1_000_000_000 + meta.atime_nsec(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    })
}

/// The next data segment at or after `at`, as `[start, end)`.
fn next_segment(f: &File, at: i64, size: i64) -> Result<Option<(i64, i64)>, String> {
    let fd = f.as_raw_fd();
    // SAFETY: lseek on a valid fd.
    let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
    if start < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None), // only a hole is left
            // No SEEK_DATA on this file system: all of it is data.
            Some(libc::EINVAL) => Ok(Some((at, size))),
            _ => Err(format!("SEEK_DATA: {e}")),
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    Ok(Some((start, if end < 0 { size } else { end.min(size) })))
}

/// Writes `c` into the empty file `f` and sets its attributes, times last.
pub fn write(f: &File, c: &pb::FileContents, what: &str) -> Result<(), String> {
    for s in &c.segments {
        f.write_all_at(&s.data, s.offset as u64).map_err(|e| format!("refilling {what} at {}: {e}", s.offset))?;
    }
    f.set_len(c.size as u64).map_err(|e| format!("setting the size of {what}: {e}"))?;
    let fd = f.as_raw_fd();
    let err = |op: &str| format!("{op} {what}: {}", std::io::Error::last_os_error());
    // SAFETY: fchown/fchmod on a valid fd with integer arguments.
    if unsafe { libc::fchown(fd, c.uid, c.gid) } != 0 {
        return Err(err("chown"));
    }
    // SAFETY: as above (after chown, which clears set-id bits).
    if unsafe { libc::fchmod(fd, c.mode) } != 0 {
        return Err(err("chmod"));
    }
    let ts = |ns: i64| libc::timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) };
    let times = [ts(c.atime_ns), ts(c.mtime_ns)];
    // SAFETY: `times` is an array of two timespecs, as futimens expects.
    if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
        return Err(err("setting the times of"));
    }
    Ok(())
}

/// Opens `path` read-only without touching its access time where allowed.
pub fn open_for_copy(path: &str) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let noatime = std::fs::File::options().read(true).custom_flags(libc::O_NOATIME).open(path);
    noatime.or_else(|_| File::open(path)).map_err(|e| format!("opening {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_attributes_survive() {
        let dir = std::env::temp_dir();
        let a = dir.join(format!("crt-contents-a-{}", std::process::id()));
        let b = dir.join(format!("crt-contents-b-{}", std::process::id()));
        let f = File::options().read(true).write(true).create(true).truncate(true).open(&a).expect("create");
        f.write_all_at(b"head", 0).expect("write");
        f.write_all_at(b"tail", 3 << 20).expect("write");
        let c = read(&f, 1 << 20, "a").expect("read");
        assert!(c.segments.iter().map(|s| s.data.len()).sum::<usize>() < 1 << 20, "holes stored as data");
        let g = File::options().read(true).write(true).create(true).truncate(true).open(&b).expect("create");
        write(&g, &c, "b").expect("write");
        let (ma, mb) = (f.metadata().expect("stat"), g.metadata().expect("stat"));
        assert_eq!(
            (ma.len(), ma.mode(), ma.mtime(), ma.mtime_nsec()),
            (mb.len(), mb.mode(), mb.mtime(), mb.mtime_nsec())
        );
        let mut buf = [0u8; 4];
        g.read_exact_at(&mut buf, 3 << 20).expect("read");
        assert_eq!(&buf, b"tail");
        assert!(mb.blocks() < 1024, "the copy is not sparse: {} blocks", mb.blocks());
        assert!(read(&f, 4, "a").is_err(), "the limit is not enforced");
        let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
    }
}
