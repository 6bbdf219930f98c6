//! Copy-on-write sharing between a parent and its children since `fork`.
//!
//! After `fork`, a child's private pages are the parent's until one of
//! them writes: one physical page for both. Dumping each process's pages
//! and writing them back separately would double that memory and lose the
//! sharing. crt instead finds, at dump, the private pages a child still
//! shares with its parent (same page frame in both `/proc/PID/pagemap`s,
//! at the same address of an identical memory area) and leaves them out of
//! the child's image; the area is marked *inherited*. At restore the child
//! is created by its restored parent (`clone3`, without `CLONE_VM`), so it
//! starts with the parent's pages shared copy-on-write, exactly like after
//! the original `fork`: crt keeps the inherited areas instead of unmapping
//! them, writes only the pages the child had of its own, and discards
//! (`MADV_DONTNEED`) the pages the parent has and the child had not
//! (`zap` runs), so the child sees zeros or its file there, as before.
//! Pages on the shared zero page count the same way (inherited when both
//! have one there); areas with guard markers are never inherited.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::images::{pb, PAGE_SIZE};
use crate::mem::{MemError, Run};

/// pagemap entry: page present, and its frame number bits.
const PM_PRESENT: u64 = 1 << 63;
const PM_PFN: u64 = (1 << 55) - 1;

/// A process's memory areas and the pages to store from them.
pub struct Pages<'a> {
    /// The process.
    pub pid: i32,
    /// Its memory areas (the image's records; inherited ones get marked).
    pub vmas: &'a mut [pb::Vma],
    /// Stored page runs, sorted by address.
    pub runs: &'a mut Vec<Run>,
}

/// Can `v` of the child come from `p` of the parent through fork?
fn same_area(v: &pb::Vma, p: &pb::Vma) -> bool {
    let private = v.flags & libc::MAP_SHARED as u32 == 0;
    // Areas the kernel does not copy, or wipes, at fork.
    let not_inherited = v.vm_flags.iter().any(|f| f == "dc" || f == "wf");
    private
        && !not_inherited
        && v.pages == pb::PageSource::PagesPrivate as i32
        && (v.start, v.end, v.prot, v.flags, v.pgoff, v.dev, v.ino)
            == (p.start, p.end, p.prot, p.flags, p.pgoff, p.dev, p.ino)
        && v.name == p.name
        && v.handler == p.handler
}

/// Takes out of `child.runs` the pages it shares with `parent`, marking
/// the areas they are in as inherited and recording what to discard.
/// Returns the number of pages left out.
pub fn share_with_parent(child: &mut Pages<'_>, parent: &Pages<'_>) -> Result<u64, MemError> {
    let mut left_out = 0;
    let mut child_map: Option<File> = None;
    let mut parent_map: Option<File> = None;
    for v in child.vmas.iter_mut() {
        let Some(p) = parent.vmas.iter().find(|p| same_area(v, p)) else { continue };
        if !v.guard.is_empty() || !p.guard.is_empty() {
            continue; // guard markers: rebuilt from scratch
        }
        let n = ((v.end - v.start) / PAGE_SIZE) as usize;
        let (mine, my_zero) = (stored(child.runs, v.start, n), stored(&to_mem(&v.zero), v.start, n));
        let (theirs, their_zero) = (stored(parent.runs, v.start, n), stored(&to_mem(&p.zero), v.start, n));
        if !theirs.iter().chain(&their_zero).any(|&b| b) {
            continue;
        }
        let cm = open_pagemap(child.pid, &mut child_map)?;
        let pm = open_pagemap(parent.pid, &mut parent_map)?;
        let (cf, pf) = (frames(child.pid, cm, v.start, n)?, frames(parent.pid, pm, v.start, n)?);
        let (mut keep, mut keep_zero, mut zap) = (mine.clone(), my_zero.clone(), vec![false; n]);
        let mut shared = 0;
        for i in 0..n {
            if mine[i] && theirs[i] && cf[i] != 0 && cf[i] == pf[i] {
                keep[i] = false; // the parent's page, shared since fork
                shared += 1;
            } else if my_zero[i] && their_zero[i] {
                keep_zero[i] = false; // both on the zero page
                shared += 1;
            } else if !mine[i] && (theirs[i] || their_zero[i]) {
                // Not the child's: gone (a zero page is mapped again after).
                zap[i] = !their_zero[i] || !my_zero[i];
            }
        }
        if shared == 0 {
            continue;
        }
        v.inherited = true;
        v.zap = to_pb(&to_runs(&zap, v.start));
        v.zero = to_pb(&to_runs(&keep_zero, v.start));
        replace_range(child.runs, v.start, v.end, to_runs(&keep, v.start));
        left_out += shared as u64;
    }
    Ok(left_out)
}

fn to_mem(runs: &[pb::PageRun]) -> Vec<Run> {
    runs.iter().map(|r| Run { vaddr: r.vaddr, pages: r.nr_pages }).collect()
}

fn to_pb(runs: &[Run]) -> Vec<pb::PageRun> {
    runs.iter().map(|r| pb::PageRun { vaddr: r.vaddr, nr_pages: r.pages }).collect()
}

fn open_pagemap(pid: i32, slot: &mut Option<File>) -> Result<&File, MemError> {
    if slot.is_none() {
        let f = File::open(format!("/proc/{pid}/pagemap")).map_err(|source| MemError::Scan {
            pid,
            start: 0,
            end: 0,
            source,
        })?;
        *slot = Some(f);
    }
    Ok(slot.as_ref().unwrap_or_else(|| unreachable!("set above")))
}

/// The page frame of each of the `n` pages from `start` (0: not present).
fn frames(pid: i32, pagemap: &File, start: u64, n: usize) -> Result<Vec<u64>, MemError> {
    let mut raw = vec![0u8; n * 8];
    pagemap.read_exact_at(&mut raw, start / PAGE_SIZE * 8).map_err(|source| MemError::Scan {
        pid,
        start,
        end: start + n as u64 * PAGE_SIZE,
        source,
    })?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| {
            let e = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            if e & PM_PRESENT != 0 {
                e & PM_PFN
            } else {
                0
            }
        })
        .collect())
}

/// Which of the `n` pages from `start` the sorted `runs` store.
fn stored(runs: &[Run], start: u64, n: usize) -> Vec<bool> {
    let end = start + n as u64 * PAGE_SIZE;
    let mut out = vec![false; n];
    let first = runs.partition_point(|r| r.vaddr + r.pages * PAGE_SIZE <= start);
    for r in runs[first..].iter().take_while(|r| r.vaddr < end) {
        let lo = r.vaddr.max(start);
        let hi = (r.vaddr + r.pages * PAGE_SIZE).min(end);
        for a in (lo..hi).step_by(PAGE_SIZE as usize) {
            out[((a - start) / PAGE_SIZE) as usize] = true;
        }
    }
    out
}

/// Runs of the set pages.
fn to_runs(bits: &[bool], start: u64) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (i, _) in bits.iter().enumerate().filter(|(_, &b)| b) {
        let a = start + i as u64 * PAGE_SIZE;
        match out.last_mut() {
            Some(last) if last.vaddr + last.pages * PAGE_SIZE == a => last.pages += 1,
            _ => out.push(Run { vaddr: a, pages: 1 }),
        }
    }
    out
}

/// Replaces the part of the sorted `runs` inside `[start, end)` with `new`.
fn replace_range(runs: &mut Vec<Run>, start: u64, end: u64, new: Vec<Run>) {
    let mut out = Vec::with_capacity(runs.len() + new.len());
    for r in runs.iter() {
        let r_end = r.vaddr + r.pages * PAGE_SIZE;
        if r_end <= start || r.vaddr >= end {
            out.push(*r);
            continue;
        }
        if r.vaddr < start {
            out.push(Run { vaddr: r.vaddr, pages: (start - r.vaddr) / PAGE_SIZE });
        }
        if r_end > end {
            out.push(Run { vaddr: end, pages: (r_end - end) / PAGE_SIZE });
        }
    }
    out.extend(new);
    out.sort_by_key(|r| r.vaddr);
    *runs = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_bits_round_trip() {
        let runs = vec![Run { vaddr: 0x1000, pages: 2 }, Run { vaddr: 0x5000, pages: 1 }];
        let bits = stored(&runs, 0x1000, 5);
        assert_eq!(bits, vec![true, true, false, false, true]);
        assert_eq!(to_runs(&bits, 0x1000), runs);
    }

    #[test]
    fn replace_inside_a_range() {
        let mut runs = vec![Run { vaddr: 0x0, pages: 8 }, Run { vaddr: 0x10000, pages: 1 }];
        replace_range(&mut runs, 0x2000, 0x6000, vec![Run { vaddr: 0x3000, pages: 1 }]);
        assert_eq!(
            runs,
            vec![
                Run { vaddr: 0x0, pages: 2 },
                Run { vaddr: 0x3000, pages: 1 },
                Run { vaddr: 0x6000, pages: 2 },
                Run { vaddr: 0x10000, pages: 1 }
            ]
        );
    }
}
