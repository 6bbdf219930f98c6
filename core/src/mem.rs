//! Memory: which pages to store (`PAGEMAP_SCAN`), reading them out of a
//! frozen task into a page file, and writing them back into a rebuilt one.
//!
//! Pages move in large batches: one `process_vm_readv`/`process_vm_writev`
//! per chunk of up to [`CHUNK`] bytes and `MAX_IOV` runs, through one
//! reusable buffer, so crt's own memory stays small whatever the task's size.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crt_plugin_api::PagePolicy;

use crate::images::PAGE_SIZE;

/// Bytes moved per system call.
pub const CHUNK: usize = 8 << 20;
/// Remote iovecs per call (the kernel's `UIO_MAXIOV`).
const MAX_IOV: usize = 1024;

/// Errors moving pages. Each names the task and address.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// PAGEMAP_SCAN failed.
    #[error("pid {pid}: scanning pages of {start:#x}-{end:#x}")]
    Scan {
        /// The task.
        pid: i32,
        /// Area start.
        start: u64,
        /// Area end.
        end: u64,
        /// The cause.
        source: io::Error,
    },
    /// Reading task memory failed.
    #[error("pid {pid}: reading {len} bytes at {addr:#x}")]
    Read {
        /// The task.
        pid: i32,
        /// Address.
        addr: u64,
        /// Length.
        len: usize,
        /// The cause.
        source: io::Error,
    },
    /// Writing task memory failed.
    #[error("pid {pid}: writing {len} bytes at {addr:#x}")]
    Write {
        /// The task.
        pid: i32,
        /// Address.
        addr: u64,
        /// Length.
        len: usize,
        /// The cause.
        source: io::Error,
    },
    /// Reading or writing the page file failed.
    #[error("page file: {0}")]
    File(#[source] io::Error),
}

/// A run of consecutive stored pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First address.
    pub vaddr: u64,
    /// Number of pages.
    pub pages: u64,
}

impl Run {
    fn bytes(&self) -> usize {
        (self.pages * PAGE_SIZE) as usize
    }
}

// PAGEMAP_SCAN (Linux 6.7+) uapi.
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
const PAGE_IS_GUARD: u64 = 1 << 8;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = (3 << 30) | ((size_of::<PmScanArg>() as libc::c_ulong) << 16) | (0x66 << 8) | 16;

/// Finds the pages of `[start, end)` that `policy` says to store, using
/// `PAGEMAP_SCAN` on the task's open `/proc/PID/pagemap`.
pub fn scan(pid: i32, pagemap: &File, start: u64, end: u64, policy: PagePolicy) -> Result<Vec<Run>, MemError> {
    let (inverted, mask) = match policy {
        PagePolicy::None => return Ok(Vec::new()),
        // Private: anonymous (COW) pages only, never the file's own pages,
        // nor the shared zero page or guard markers (see `scan_special`).
        PagePolicy::Private => {
            let m = PAGE_IS_FILE | PAGE_IS_PFNZERO | PAGE_IS_GUARD;
            (m, m)
        }
        PagePolicy::All => (PAGE_IS_GUARD, PAGE_IS_GUARD),
    };
    let mut out = Vec::new();
    scan_regions(pid, pagemap, start, end, inverted, mask, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, |r| {
        push_run(&mut out, r.start, r.end)
    })?;
    Ok(out)
}

/// Pages of `[start, end)` that hold no data of their own: mapped to the
/// shared zero page (read, never written), and guard markers. Returns
/// `(zero, guard)` runs.
pub fn scan_special(pid: i32, pagemap: &File, start: u64, end: u64) -> Result<(Vec<Run>, Vec<Run>), MemError> {
    let (mut zero, mut guard) = (Vec::new(), Vec::new());
    scan_regions(pid, pagemap, start, end, 0, 0, PAGE_IS_PFNZERO | PAGE_IS_GUARD, |r| {
        if r.categories & PAGE_IS_GUARD != 0 {
            push_run(&mut guard, r.start, r.end);
        } else {
            push_run(&mut zero, r.start, r.end);
        }
    })?;
    Ok((zero, guard))
}

fn push_run(out: &mut Vec<Run>, start: u64, end: u64) {
    let pages = (end - start) / PAGE_SIZE;
    match out.last_mut() {
        Some(last) if last.vaddr + last.pages * PAGE_SIZE == start => last.pages += pages,
        _ => out.push(Run { vaddr: start, pages }),
    }
}

/// `PAGEMAP_SCAN` over `[start, end)`: every region whose categories
/// match (`inverted`, `mask`, any of `anyof`), with the categories of
/// `anyof` and `PAGE_IS_FILE` reported.
#[allow(clippy::too_many_arguments)]
fn scan_regions(
    pid: i32,
    pagemap: &File,
    start: u64,
    end: u64,
    inverted: u64,
    mask: u64,
    anyof: u64,
    mut each: impl FnMut(&PageRegion),
) -> Result<(), MemError> {
    let mut regions = vec![PageRegion::default(); 512];
    let mut cursor = start;
    while cursor < end {
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            start: cursor,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_inverted: inverted,
            category_mask: mask,
            category_anyof_mask: anyof,
            return_mask: anyof | PAGE_IS_FILE,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at
        // `regions`, which has room for `vec_len` entries and outlives the call.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut PmScanArg) };
        if n < 0 {
            return Err(MemError::Scan { pid, start, end, source: io::Error::last_os_error() });
        }
        regions[..n as usize].iter().for_each(&mut each);
        if arg.walk_end <= cursor {
            break;
        }
        cursor = arg.walk_end;
    }
    Ok(())
}

/// Splits runs into batches of at most [`CHUNK`] bytes and [`MAX_IOV`] pieces.
fn batches(runs: &[Run]) -> impl Iterator<Item = Vec<(u64, usize)>> + '_ {
    let mut pieces = runs.iter().flat_map(|r| {
        let total = r.bytes();
        (0..total).step_by(CHUNK).map(move |off| (r.vaddr + off as u64, (total - off).min(CHUNK)))
    });
    let mut pending: Option<(u64, usize)> = None;
    std::iter::from_fn(move || {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some((addr, len)) = pending.take().or_else(|| pieces.next()) {
            if batch.len() == MAX_IOV || bytes == CHUNK {
                pending = Some((addr, len));
                break;
            }
            let take = len.min(CHUNK - bytes);
            batch.push((addr, take));
            bytes += take;
            if take < len {
                pending = Some((addr + take as u64, len - take));
            }
        }
        (!batch.is_empty()).then_some(batch)
    })
}

fn remote_iovs(batch: &[(u64, usize)]) -> Vec<libc::iovec> {
    batch.iter().map(|&(addr, len)| libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len }).collect()
}

/// Threads that drain filled buffers. Page faults in the target scale
/// over both cores of the development machines; tmpfs writes to one file
/// serialize on its inode lock, but still overlap with the reading.
const CONSUMERS: usize = 2;
/// Buffers in flight between the threads of a page copy.
const BUFFERS: usize = CONSUMERS + 2;

/// One filled buffer: its batch, and the batch's index in the stream.
type Filled = (Vec<u8>, Vec<(u64, usize)>, usize);

/// Runs `produce` on this thread and `consume` on [`CONSUMERS`] helper
/// threads, passing filled buffers of up to [`CHUNK`] bytes between them
/// and recycling them, so reading one side overlaps with writing the other.
/// Both get the buffer, its batch and the batch's index in the stream.
fn pipeline<E: Send, C>(
    mut produce: impl FnMut(&mut [u8], &[(u64, usize)], usize) -> Result<(), E>,
    make_consumer: impl Fn() -> C,
    runs: &[Run],
) -> Result<u64, E>
where
    C: FnMut(&[u8], &[(u64, usize)], usize) -> Result<(), E> + Send,
{
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Filled>(BUFFERS);
    let full_rx = std::sync::Mutex::new(full_rx);
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    // Small tasks get small buffers: crt's memory follows the work, up to
    // BUFFERS * CHUNK.
    let total: u64 = runs.iter().map(|r| r.pages * PAGE_SIZE).sum();
    let size = CHUNK.min(total as usize);
    for _ in 0..BUFFERS {
        let _ = free_tx.send(vec![0u8; size]);
    }
    std::thread::scope(|scope| {
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let mut consume = make_consumer();
                let free_tx = free_tx.clone();
                let full_rx = &full_rx;
                scope.spawn(move || -> Result<(), E> {
                    // Copy threads use every CPU, even when the puppeteer is pinned.
                    crate::affinity::unpin_current();
                    loop {
                        let next = full_rx.lock().map_err(|_| ()).and_then(|rx| rx.recv().map_err(|_| ()));
                        let Ok((buf, batch, off)) = next else {
                            return Ok(());
                        };
                        let total: usize = batch.iter().map(|b| b.1).sum();
                        consume(&buf[..total], &batch, off)?;
                        let _ = free_tx.send(buf);
                    }
                })
            })
            .collect();
        drop(free_tx);
        let mut moved = 0u64;
        let mut result = Ok(());
        for (idx, batch) in batches(runs).enumerate() {
            let Ok(mut buf) = free_rx.recv() else { break };
            let total: usize = batch.iter().map(|b| b.1).sum();
            if let Err(e) = produce(&mut buf[..total], &batch, idx) {
                result = Err(e);
                break;
            }
            if full_tx.send((buf, batch, idx)).is_err() {
                break;
            }
            moved += total as u64;
        }
        drop(full_tx);
        for c in consumers {
            let r = c.join().unwrap_or(Ok(()));
            if result.is_ok() {
                result = r;
            }
        }
        result.map(|()| moved)
    })
}

/// Reads `batch` out of task `pid` into `buf` with one `process_vm_readv`,
/// falling back to `/proc/PID/mem` for pages the task cannot read itself.
fn read_batch(pid: i32, mem: &mut Option<File>, buf: &mut [u8], batch: &[(u64, usize)]) -> Result<(), MemError> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = remote_iovs(batch);
    // SAFETY: `local` covers `buf`, which we own mutably for the call;
    // remote iovecs are only interpreted in the other task.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), remote.len() as u64, 0) };
    if n == buf.len() as isize {
        return Ok(());
    }
    // PROT_NONE or write-only pages: /proc/PID/mem may force access.
    let m = match mem {
        Some(m) => m,
        None => mem.insert(File::open(format!("/proc/{pid}/mem")).map_err(|source| MemError::Read {
            pid,
            addr: batch[0].0,
            len: buf.len(),
            source,
        })?),
    };
    let mut off = 0;
    for &(addr, len) in batch {
        m.read_exact_at(&mut buf[off..off + len], addr).map_err(|source| MemError::Read { pid, addr, len, source })?;
        off += len;
    }
    Ok(())
}

/// Writes `buf` into task `pid` at `batch`: `process_vm_writev` when every
/// piece is writable by the task, else `/proc/PID/mem`.
fn write_batch(
    pid: i32,
    mem: &mut Option<File>,
    buf: &[u8],
    batch: &[(u64, usize)],
    direct: bool,
) -> Result<(), MemError> {
    if direct {
        let local = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let remote = remote_iovs(batch);
        // SAFETY: `local` covers `buf`, only read by the kernel; remote
        // iovecs address the other task.
        let n = unsafe { libc::process_vm_writev(pid, &local, 1, remote.as_ptr(), remote.len() as u64, 0) };
        if n == buf.len() as isize {
            return Ok(());
        }
    }
    let m = match mem {
        Some(m) => m,
        None => mem.insert(
            File::options()
                .read(true)
                .write(true)
                .open(format!("/proc/{pid}/mem"))
                .map_err(|source| MemError::Write { pid, addr: batch[0].0, len: buf.len(), source })?,
        ),
    };
    let mut off = 0;
    for &(addr, len) in batch {
        m.write_all_at(&buf[off..off + len], addr).map_err(|source| MemError::Write { pid, addr, len, source })?;
        off += len;
    }
    Ok(())
}

/// Reads one byte of every page of `runs` in task `pid`, so that each is
/// mapped again, to the shared zero page where nothing was written.
pub fn touch_pages(pid: i32, runs: &[Run]) -> Result<(), MemError> {
    let mut mem: Option<File> = None;
    let pages: Vec<u64> = runs.iter().flat_map(|r| (0..r.pages).map(move |i| r.vaddr + i * PAGE_SIZE)).collect();
    let mut sink = vec![0u8; MAX_IOV];
    for chunk in pages.chunks(MAX_IOV) {
        let remote: Vec<libc::iovec> =
            chunk.iter().map(|&a| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: 1 }).collect();
        let local = libc::iovec { iov_base: sink.as_mut_ptr().cast(), iov_len: chunk.len() };
        // SAFETY: `local` covers `sink`, which we own; remote iovecs address the other task.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), remote.len() as u64, 0) };
        if n == chunk.len() as isize {
            continue;
        }
        // PROT_NONE pages: /proc/PID/mem may force the read.
        let m = match &mem {
            Some(m) => m,
            None => mem.insert(File::open(format!("/proc/{pid}/mem")).map_err(|source| MemError::Read {
                pid,
                addr: chunk[0],
                len: 1,
                source,
            })?),
        };
        for &a in chunk {
            m.read_exact_at(&mut sink[..1], a).map_err(|source| MemError::Read { pid, addr: a, len: 1, source })?;
        }
    }
    Ok(())
}

/// Where each batch of the page stream is stored: `(shard, offset in the
/// shard's payload)`, batch i in shard i % `shards`.
pub fn layout(runs: &[Run], shards: usize) -> Vec<(usize, u64)> {
    let shards = shards.max(1);
    let mut next = vec![0u64; shards];
    batches(runs)
        .enumerate()
        .map(|(i, batch)| {
            let shard = i % shards;
            let at = next[shard];
            next[shard] += batch.iter().map(|b| b.1 as u64).sum::<u64>();
            (shard, at)
        })
        .collect()
}

/// Payload bytes of each shard.
pub fn shard_sizes(runs: &[Run], shards: usize) -> Vec<u64> {
    let shards = shards.max(1);
    let mut sizes = vec![0u64; shards];
    for (i, batch) in batches(runs).enumerate() {
        sizes[i % shards] += batch.iter().map(|b| b.1 as u64).sum::<u64>();
    }
    sizes
}

/// Copies the pages of `runs` out of task `pid` into the shard files `outs`
/// (payload after `header` bytes). Reading the task and writing the shards
/// overlap on several threads; shards are separate files, so their writes
/// do not serialize on one inode lock. Returns the bytes written.
pub fn dump_pages(pid: i32, runs: &[Run], outs: &[File], header: u64) -> Result<u64, MemError> {
    let place = layout(runs, outs.len());
    let place = &place;
    let mut mem = None;
    pipeline(
        |buf, batch, _| read_batch(pid, &mut mem, buf, batch),
        || {
            |buf: &[u8], _: &[(u64, usize)], idx: usize| {
                let (shard, off) = place[idx];
                outs[shard].write_all_at(buf, header + off).map_err(MemError::File)
            }
        },
        runs,
    )
}

/// Writes the pages of `runs` from the shard files `pages` (payload after
/// `header` bytes) into task `pid`. `writable(addr)` says whether the
/// task's own mapping at `addr` is writable; other pages go through
/// `/proc/PID/mem`. Reading the files and writing the task overlap on
/// several threads.
pub fn fill_pages(
    pid: i32,
    runs: &[Run],
    pages: &[File],
    header: u64,
    writable: impl Fn(u64) -> bool + Sync,
) -> Result<u64, MemError> {
    let writable = &writable;
    let place = layout(runs, pages.len());
    pipeline(
        |buf, _, idx| {
            let (shard, off) = place[idx];
            pages[shard].read_exact_at(buf, header + off).map_err(MemError::File)
        },
        || {
            let mut mem = None;
            move |buf: &[u8], batch: &[(u64, usize)], _| {
                let direct = batch.iter().all(|&(addr, _)| writable(addr));
                write_batch(pid, &mut mem, buf, batch, direct)
            }
        },
        runs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_limits() {
        let runs = [Run { vaddr: 0x1000, pages: 1 }, Run { vaddr: 0x10_0000, pages: (CHUNK as u64 / PAGE_SIZE) + 3 }];
        let all: Vec<_> = batches(&runs).collect();
        let bytes: usize = all.iter().flatten().map(|b| b.1).sum();
        assert_eq!(bytes as u64, (runs[0].pages + runs[1].pages) * PAGE_SIZE);
        assert!(all.iter().all(|b| b.iter().map(|p| p.1).sum::<usize>() <= CHUNK));
        assert_eq!(all[0][0], (0x1000, 4096));
        assert_eq!(all[0][1].0, 0x10_0000);
    }

    #[test]
    fn layout_alternates_shards() {
        let runs = [Run { vaddr: 0, pages: 3 * CHUNK as u64 / PAGE_SIZE + 1 }];
        let place = layout(&runs, 2);
        assert_eq!(place, vec![(0, 0), (1, 0), (0, CHUNK as u64), (1, CHUNK as u64)]);
        assert_eq!(shard_sizes(&runs, 2), vec![2 * CHUNK as u64, CHUNK as u64 + PAGE_SIZE]);
        assert_eq!(shard_sizes(&runs, 1), vec![3 * CHUNK as u64 + PAGE_SIZE]);
    }

    #[test]
    fn batches_cap_iovecs() {
        let runs: Vec<Run> = (0..3000).map(|i| Run { vaddr: i * 0x2000, pages: 1 }).collect();
        let all: Vec<_> = batches(&runs).collect();
        assert!(all.iter().all(|b| b.len() <= MAX_IOV));
        assert_eq!(all.iter().map(Vec::len).sum::<usize>(), 3000);
    }
}
