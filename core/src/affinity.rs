//! CPU affinity: recorded per thread at dump, restored at the end; and the
//! puppeteer's pinning — an injected syscall costs ~11 µs when crt and the
//! task share a CPU and 20–90 µs across CPUs, so crt's puppeteering thread
//! and the tasks it builds run on one CPU until they are released.

use std::io;
use std::sync::OnceLock;

/// Bytes of the affinity masks crt handles (1024 CPUs).
const MASK_BYTES: usize = 128;

/// The affinity of thread `tid` (0: the calling thread), as raw mask bytes.
pub fn get(tid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; MASK_BYTES];
    // SAFETY: the kernel writes at most `MASK_BYTES` bytes into `buf`.
    let n = unsafe { libc::syscall(libc::SYS_sched_getaffinity, tid, MASK_BYTES, buf.as_mut_ptr()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Sets the affinity of thread `tid` (0: the calling thread).
pub fn set(tid: i32, mask: &[u8]) -> io::Result<()> {
    // SAFETY: the kernel reads `mask.len()` bytes from `mask`.
    let r = unsafe { libc::syscall(libc::SYS_sched_setaffinity, tid, mask.len(), mask.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// crt's affinity before any pinning, for threads that must not be pinned.
static ORIGINAL: OnceLock<Vec<u8>> = OnceLock::new();

/// crt's own affinity before it pinned itself, if it did.
pub fn original() -> Option<&'static [u8]> {
    ORIGINAL.get().map(Vec::as_slice)
}

/// Lets the calling thread run on every CPU crt may use (page-copy threads
/// spawned by a pinned thread).
pub fn unpin_current() {
    if let Some(mask) = ORIGINAL.get() {
        let _ = set(0, mask);
    }
}

/// Pins the calling thread to the CPU it runs on; restores its affinity on drop.
#[derive(Debug)]
pub struct Pin {
    saved: Option<Vec<u8>>,
    pinned: Option<Vec<u8>>,
}

impl Pin {
    /// Pins now (best effort: no pinning if the kernel refuses).
    pub fn current_cpu() -> Self {
        let saved = get(0).ok();
        if let Some(s) = &saved {
            let _ = ORIGINAL.set(s.clone());
        }
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        let mut pinned = None;
        if cpu >= 0 && (cpu as usize) < MASK_BYTES * 8 {
            let mut mask = vec![0u8; MASK_BYTES];
            mask[cpu as usize / 8] |= 1 << (cpu % 8);
            if set(0, &mask).is_ok() {
                pinned = Some(mask);
            }
        }
        Self { saved, pinned }
    }

    /// The one-CPU mask crt runs on, if pinning worked.
    pub fn mask(&self) -> Option<&[u8]> {
        self.pinned.as_deref()
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            let _ = set(0, s);
        }
    }
}
