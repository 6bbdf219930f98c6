//! `crt-plugin-aio`: Linux AIO contexts, shipped separately from crt.
//!
//! An AIO context (`io_setup`) shows in a process's maps as a ring mapping,
//! `/[aio] (deleted)`, whose address is the context id the program holds.
//! The ring starts with a 32-byte header (`id nr head tail magic …`)
//! followed by `nr` 32-byte `io_event`s; completions not yet reaped by the
//! program sit between `head` and `tail`.
//!
//! * **Dump** (`dump_vma`): waits, task frozen, until the ring stops
//!   changing (requests still in flight complete into it) — at most
//!   `aio:timeout-ms` (default 2000), quiet for `aio:settle-ms` (default
//!   50) — then records the geometry and every unreaped event.
//! * **Restore** (`restore_vma`): inside the task, `io_setup` a context
//!   whose ring has the same size (the kernel sizes rings for
//!   `max(n, 4·cpus)·2 + 2` events in whole pages, so `n = (nr − 2) / 2`), `mremap` the ring to the dumped address
//!   (the kernel follows: the context id is the address), then makes the
//!   kernel post as many completions as there were unreaped events (zero-
//!   length reads of `/dev/null`, which complete at once) and overwrites
//!   them in the ring with the dumped events: `io_getevents` then returns
//!   exactly those events, in order, with their results and user data.
//!
//! Limitation (the kernel's): no interface shows requests that are in
//! flight and never complete (e.g. `IOCB_CMD_POLL` on an idle fd); crt can
//! only wait for completions that do arrive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crt_plugin_api::abi_stable::std_types::{RResult, RSlice, RSliceMut, RStr, RString, RVec};
use crt_plugin_api::{
    declare_plugin, handler_box, Handler, PagePolicy, PluginInit, SyscallArgs, TaskRef, VmaDesc, VmaDump, VmaRestore,
};

const RING_NAME: &str = "/[aio] (deleted)";
const HEADER: u64 = 32;
const EVENT: u64 = 32;
const AIO_RING_MAGIC: u32 = 0xa10a10a1;
const BLOB_VERSION: u32 = 1;

const SYS_IO_SETUP: i64 = 206;
const SYS_IO_DESTROY: i64 = 207;
const SYS_IO_SUBMIT: i64 = 209;
const SYS_MREMAP: i64 = 25;
const SYS_OPENAT: i64 = 257;
const SYS_CLOSE: i64 = 3;
const AT_FDCWD: i64 = -100;
const MREMAP_MAYMOVE: u64 = 1;
const MREMAP_FIXED: u64 = 2;
const IOCB_CMD_PREAD: u16 = 0;
/// Events re-posted per io_submit.
const BATCH: u64 = 128;

/// The ring handler.
struct Aio {
    timeout_ms: AtomicU64,
    settle_ms: AtomicU64,
}

/// What the image holds about one context.
#[derive(Debug, Default, PartialEq)]
struct Ring {
    start: u64,
    len: u64,
    nr: u32,
    /// Unreaped events, oldest first: data, obj, res, res2.
    events: Vec<[u64; 4]>,
}

impl Ring {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [u64::from(BLOB_VERSION), self.start, self.len, u64::from(self.nr), self.events.len() as u64] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for e in &self.events {
            for v in e {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b
    }

    fn decode(b: &[u8]) -> Result<Self, String> {
        let words: Vec<u64> = b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
        if words.len() < 5 || words[0] != u64::from(BLOB_VERSION) {
            return Err("AIO record has an unknown format (written by a newer crt-plugin-aio?)".into());
        }
        let n = words[4] as usize;
        if words.len() != 5 + 4 * n {
            return Err("AIO record is truncated".into());
        }
        let events = words[5..].chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
        Ok(Self { start: words[1], len: words[2], nr: words[3] as u32, events })
    }
}

fn read(task: &TaskRef<'_>, addr: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    task.read_mem(addr, RSliceMut::from_mut_slice(&mut buf)).into_result().map_err(|e| e.to_string())?;
    Ok(buf)
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn sys(task: &mut TaskRef<'_>, what: &str, nr: i64, a: [u64; 6]) -> Result<u64, String> {
    let r = task.syscall(nr, SyscallArgs::from(a)).into_result().map_err(|e| e.to_string())?;
    if (-4095..0).contains(&r) {
        return Err(format!("{what} inside pid {}: {}", task.pid(), std::io::Error::from_raw_os_error(-r as i32)));
    }
    Ok(r as u64)
}

fn write(task: &mut TaskRef<'_>, addr: u64, data: &[u8]) -> Result<(), String> {
    task.write_mem(addr, RSlice::from_slice(data)).into_result().map_err(|e| e.to_string())
}

impl Aio {
    fn dump(&self, task: &TaskRef<'_>, vma: &VmaDesc) -> Result<Ring, String> {
        let timeout = Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed));
        let settle = Duration::from_millis(self.settle_ms.load(Ordering::Relaxed));
        let started = Instant::now();
        let mut header = read(task, vma.start, HEADER as usize)?;
        if u32_at(&header, 16) != AIO_RING_MAGIC {
            return Err(format!("AIO ring at {:#x} has a bad magic; not an AIO ring?", vma.start));
        }
        // Requests still in flight complete into the ring while the task is
        // frozen: wait until it has been quiet for `settle`.
        let mut quiet_since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(5).min(settle));
            let now = read(task, vma.start, HEADER as usize)?;
            if now != header {
                header = now;
                quiet_since = Instant::now();
            }
            if quiet_since.elapsed() >= settle {
                break;
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "pid {}: AIO context {:#x}: requests were still completing after {} ms; raise --handler-opt aio:timeout-ms=N or retry when the I/O is done",
                    task.pid(),
                    vma.start,
                    timeout.as_millis()
                ));
            }
        }
        let (nr, head, tail) = (u32_at(&header, 4), u32_at(&header, 8), u32_at(&header, 12));
        if nr == 0 || head >= nr || tail >= nr || HEADER + u64::from(nr) * EVENT > vma.len() {
            return Err(format!("AIO ring at {:#x}: inconsistent header nr={nr} head={head} tail={tail}", vma.start));
        }
        let count = (tail + nr - head) % nr;
        let mut events = Vec::with_capacity(count as usize);
        for i in 0..count {
            let slot = u64::from((head + i) % nr);
            let e = read(task, vma.start + HEADER + slot * EVENT, EVENT as usize)?;
            let w = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap_or([0; 8]));
            events.push([w(0), w(8), w(16), w(24)]);
        }
        Ok(Ring { start: vma.start, len: vma.len(), nr, events })
    }

    fn restore(&self, task: &mut TaskRef<'_>, vma: &VmaDesc, ring: &Ring) -> Result<(), String> {
        let (scratch, room) = match task.scratch().into_result() {
            Ok(t) => (t.0, t.1),
            Err(e) => return Err(e.to_string()),
        };
        // io_setup(n) sizes the ring for max(n, 4*cpus)*2 + 2 events in
        // whole pages; n = (nr - 2) / 2 gives back a ring of the dumped size.
        write(task, scratch, &0u64.to_le_bytes())?;
        sys(task, "io_setup", SYS_IO_SETUP, [u64::from(ring.nr.saturating_sub(2) / 2).max(1), scratch, 0, 0, 0, 0])?;
        let ctx = u64::from_le_bytes(read(task, scratch, 8)?.try_into().unwrap_or([0; 8]));
        let header = read(task, ctx, HEADER as usize)?;
        let len_ok = u32_at(&header, 4) == ring.nr;
        if !len_ok {
            let _ = sys(task, "io_destroy", SYS_IO_DESTROY, [ctx, 0, 0, 0, 0, 0]);
            return Err(format!(
                "AIO ring {:#x}: this kernel made a ring of {} events, the image has {}",
                ring.start,
                u32_at(&header, 4),
                ring.nr
            ));
        }
        if ctx != vma.start {
            let got = sys(
                task,
                "mremap(aio ring)",
                SYS_MREMAP,
                [ctx, ring.len, ring.len, MREMAP_MAYMOVE | MREMAP_FIXED, vma.start, 0],
            )?;
            if got != vma.start {
                return Err(format!("AIO ring moved to {got:#x}, wanted {:#x}", vma.start));
            }
        }
        if ring.events.is_empty() {
            return Ok(());
        }
        // Make the kernel post one completion per dumped event…
        write(task, scratch + 64, b"/dev/null\0")?;
        let fd = sys(task, "open(/dev/null)", SYS_OPENAT, [AT_FDCWD as u64, scratch + 64, 0, 0, 0, 0])?;
        let iocbs = scratch + 128;
        let batch = BATCH.min((room - 128) / (64 + 8));
        let ptrs = iocbs + batch * 64;
        let mut posted = 0u64;
        let total = ring.events.len() as u64;
        while posted < total {
            let n = batch.min(total - posted);
            let mut cbs = Vec::with_capacity((n * 64) as usize);
            let mut ps = Vec::with_capacity((n * 8) as usize);
            for i in 0..n {
                let mut cb = [0u8; 64];
                cb[16..18].copy_from_slice(&IOCB_CMD_PREAD.to_le_bytes());
                cb[20..24].copy_from_slice(&(fd as u32).to_le_bytes());
                cb[24..32].copy_from_slice(&(scratch + 96).to_le_bytes());
                cbs.extend_from_slice(&cb);
                ps.extend_from_slice(&(iocbs + i * 64).to_le_bytes());
            }
            write(task, iocbs, &cbs)?;
            write(task, ptrs, &ps)?;
            let r = sys(task, "io_submit", SYS_IO_SUBMIT, [vma.start, n, ptrs, 0, 0, 0])?;
            if r != n {
                return Err(format!("io_submit posted {r} of {n} completions"));
            }
            posted += n;
        }
        sys(task, "close", SYS_CLOSE, [fd, 0, 0, 0, 0, 0])?;
        // …then put the dumped events in their slots.
        let now = read(task, vma.start, HEADER as usize)?;
        let (head, tail) = (u32_at(&now, 8), u32_at(&now, 12));
        if (tail + ring.nr - head) % ring.nr != total as u32 {
            return Err(format!("AIO ring {:#x}: {} completions posted, ring shows {head}..{tail}", vma.start, total));
        }
        for (i, e) in ring.events.iter().enumerate() {
            let slot = u64::from((head + i as u32) % ring.nr);
            let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
            write(task, vma.start + HEADER + slot * EVENT, &bytes)?;
        }
        Ok(())
    }
}

impl Handler for Aio {
    fn name(&self) -> RString {
        "aio".into()
    }

    fn version(&self) -> RString {
        env!("CARGO_PKG_VERSION").into()
    }

    fn claims(&self) -> RString {
        "memory: AIO rings (/[aio] (deleted)), with unreaped completions".into()
    }

    fn hooks(&self) -> RString {
        "configure (aio:timeout-ms, aio:settle-ms)".into()
    }

    fn configure(&self, key: RStr<'_>, value: RStr<'_>) -> RResult<(), RString> {
        let slot = match key.as_str() {
            "timeout-ms" => &self.timeout_ms,
            "settle-ms" => &self.settle_ms,
            k => return RResult::RErr(format!("unknown option {k} (have: timeout-ms, settle-ms)").into()),
        };
        match value.as_str().parse::<u64>() {
            Ok(v) => {
                slot.store(v, Ordering::Relaxed);
                RResult::ROk(())
            }
            Err(_) => RResult::RErr(format!("{key} takes milliseconds, got {value:?}").into()),
        }
    }

    fn claims_vma(&self, vma: &VmaDesc) -> bool {
        vma.name.as_str() == RING_NAME
    }

    fn dump_vma(&self, task: TaskRef<'_>, vma: &VmaDesc) -> RResult<VmaDump, RString> {
        match self.dump(&task, vma) {
            Ok(ring) => RResult::ROk(VmaDump { blob: RVec::from(ring.encode()), pages: PagePolicy::None }),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn restore_vma(&self, mut task: TaskRef<'_>, vma: &VmaDesc, blob: RSlice<'_, u8>) -> RResult<VmaRestore, RString> {
        let r = Ring::decode(blob.as_slice()).and_then(|ring| self.restore(&mut task, vma, &ring));
        match r {
            Ok(()) => RResult::ROk(VmaRestore::Done),
            Err(e) => RResult::RErr(e.into()),
        }
    }
}

fn init() -> PluginInit {
    PluginInit::Handlers(
        vec![handler_box(Aio { timeout_ms: AtomicU64::new(2000), settle_ms: AtomicU64::new(50) })].into(),
    )
}

declare_plugin! {
    name: "crt-plugin-aio",
    version: env!("CARGO_PKG_VERSION"),
    description: "Linux AIO contexts: ring geometry and unreaped completions",
    init: init,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_record_round_trips() {
        let r = Ring { start: 0x7f00_0000_0000, len: 4096, nr: 127, events: vec![[1, 2, 3, 4], [5, 6, 7, 8]] };
        assert_eq!(Ring::decode(&r.encode()), Ok(r));
        assert!(Ring::decode(&[0u8; 16]).is_err());
    }
}
