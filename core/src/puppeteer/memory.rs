//! Phase A, memory: emptying the copy's address space, moving the vdso,
//! mapping every area through its handler, filling pages, mm fields.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crt_plugin_api::VmaRestore;
use tracing::warn;

use super::{image_vma_desc, other, step, Builder, Loaded, RestoreCtx, SCRATCH_FLOOR, SCRATCH_LEN, S_ARG, S_AUXV};
use crate::collect::task_ref;
use crate::dump::VDSO_NAMES;
use crate::images::{pb, PAGE_SIZE};
use crate::mem::{self, Run};
use crate::procfs::{self, MapsEntry};
use crate::restore::RestoreError;
use crate::task_state;

impl Builder {
    /// The task's current `[vvar]`, `[vvar_vclock]`, `[vdso]`, in address order.
    fn vdso_block(&self) -> Result<Vec<MapsEntry>, RestoreError> {
        let mut block: Vec<MapsEntry> =
            procfs::maps(self.pid)?.into_iter().filter(|m| VDSO_NAMES.contains(&m.name.as_str())).collect();
        block.sort_by_key(|m| m.start);
        if block.len() != VDSO_NAMES.len() {
            return Err(other(self.pid, "finding the vdso", format!("found {} of its 3 mappings", block.len())));
        }
        Ok(block)
    }

    /// Unmaps everything but the vdso block and the areas inherited from
    /// the parent (the creator's code, heap, stack: see `cow.rs`).
    pub(super) fn empty_address_space(&mut self, task: &pb::Task) -> Result<(), RestoreError> {
        let block = self.vdso_block()?;
        let maps = procfs::maps(self.pid)?;
        let top = maps.iter().filter(|m| m.name != "[vsyscall]").map(|m| m.end).max().unwrap_or(0);
        let mut keep: Vec<(u64, u64)> = task.vmas.iter().filter(|v| v.inherited).map(|v| (v.start, v.end)).collect();
        if self.is_root && !keep.is_empty() {
            return Err(other(
                self.pid,
                "reading its memory areas",
                "a root cannot inherit memory from a parent".into(),
            ));
        }
        keep.push((block[0].start, block[block.len() - 1].end));

        keep.sort_unstable();
        for v in task.vmas.iter().filter(|v| v.inherited) {
            let covered = maps.iter().any(|m| m.start <= v.start && v.end <= m.end && m.prot == v.prot && !m.shared);
            if !covered {
                return Err(other(
                    self.pid,
                    format!("keeping {:#x}-{:#x} {} from its parent", v.start, v.end, v.name),
                    "the parent does not have that area".into(),
                ));
            }
        }
        let mut at = 0;
        for (s, e) in keep {
            if s > at {
                self.p.call("munmap", libc::SYS_munmap, [at, s - at, 0, 0, 0, 0])?;
            }
            at = at.max(e);
        }
        if top > at {
            self.p.call("munmap", libc::SYS_munmap, [at, top - at, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// Moves `[vvar]`, `[vvar_vclock]`, `[vdso]` together to their dumped addresses.
    pub(super) fn move_vdso(&mut self, mm: &pb::MmState) -> Result<(), RestoreError> {
        let block = self.vdso_block()?;
        let cur = block[0].start;
        let want = mm.vdso_block.iter().map(|v| v.start).min().unwrap_or(cur);
        if cur == want {
            return Ok(());
        }
        let size = block[block.len() - 1].end - cur;
        let overlap = want < cur + size && cur < want + size;
        let mut from = cur;
        if overlap {
            let temp = cur.max(want) + size + (1 << 30);
            self.move_block(&block, from, temp)?;
            from = temp;
        }
        self.move_block(&block, from, want)
    }

    fn move_block(&mut self, own: &[MapsEntry], from: u64, to: u64) -> Result<(), RestoreError> {
        let base = own[0].start;
        for m in own {
            let len = m.end - m.start;
            let old = from + (m.start - base);
            let new = to + (m.start - base);
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            self.p.call("mremap(vdso)", libc::SYS_mremap, [old, len, len, flags, new, 0])?;
            if m.name == "[vdso]" {
                let g = self.p.gadget();
                self.p.set_gadget(g - old + new);
            }
        }
        Ok(())
    }

    /// Maps crt's scratch area in a hole of the dumped address space.
    pub(super) fn map_scratch(&mut self, task: &pb::Task, mm: &pb::MmState) -> Result<(), RestoreError> {
        let mut taken: Vec<(u64, u64)> = task.vmas.iter().chain(&mm.vdso_block).map(|v| (v.start, v.end)).collect();
        taken.sort_unstable();
        // Leave a guard page on both sides so stacks growing down keep their gap.
        let mut at = SCRATCH_FLOOR;
        for (s, e) in taken {
            if at + SCRATCH_LEN + 2 * PAGE_SIZE <= s {
                break;
            }
            at = at.max(e + PAGE_SIZE);
        }
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        self.scratch = self.p.call("mmap(scratch)", libc::SYS_mmap, [at, SCRATCH_LEN, prot, flags, u64::MAX, 0])?;
        self.p.set_plugin_scratch(self.scratch + super::S_PLUGIN, SCRATCH_LEN - super::S_PLUGIN);
        Ok(())
    }

    /// Maps every memory area through the handler that dumped it.
    pub(super) fn map_areas(&mut self, ctx: &mut RestoreCtx<'_>, task: &pb::Task) -> Result<(), RestoreError> {
        let _s = tracing::info_span!("map").entered();
        for v in task.vmas.iter().filter(|v| !v.inherited) {
            let got = self.map_area(ctx, v)?;
            if got != v.start {
                return Err(other(
                    self.pid,
                    format!("mapping {:#x}-{:#x} {}", v.start, v.end, v.name),
                    format!("landed at {got:#x}"),
                ));
            }
            self.advise(v)?;
        }
        Ok(())
    }

    fn map_area(&mut self, ctx: &mut RestoreCtx<'_>, v: &pb::Vma) -> Result<u64, RestoreError> {
        let len = v.end - v.start;
        let shared = v.flags & libc::MAP_SHARED as u32 != 0;
        let mut flags = libc::MAP_FIXED | if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
        if v.flags & libc::MAP_GROWSDOWN as u32 != 0 {
            flags |= libc::MAP_GROWSDOWN;
        }
        if v.vm_flags.iter().any(|f| f == "nr") {
            flags |= libc::MAP_NORESERVE;
        }
        let h = ctx.registry.by_name(&v.handler).ok_or_else(|| RestoreError::MissingHandler {
            name: v.handler.clone(),
            version: String::new(),
            provider: None,
        })?;
        let desc = image_vma_desc(self.pid, v);
        let how =
            h.restore_vma(task_ref(&mut self.p), &desc, v.blob.as_slice().into()).into_result().map_err(|msg| {
                RestoreError::Handler {
                    pid: self.pid,
                    what: format!("memory {:#x}-{:#x} {}", v.start, v.end, v.name),
                    handler: v.handler.clone(),
                    msg: msg.into_string(),
                }
            })?;
        match how {
            VmaRestore::Done => Ok(v.start),
            VmaRestore::Anonymous => Ok(self.p.call(
                "mmap",
                libc::SYS_mmap,
                [v.start, len, u64::from(v.prot), (flags | libc::MAP_ANONYMOUS) as u64, u64::MAX, 0],
            )?),
            VmaRestore::MapFd(fd) => {
                // SAFETY: the handler hands us ownership of this fd.
                let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
                self.map_fd(v, flags, owned)
            }
        }
    }

    fn map_fd(&mut self, v: &pb::Vma, flags: i32, fd: OwnedFd) -> Result<u64, RestoreError> {
        let rfd = self.install(fd)?;
        let r = self.p.call(
            "mmap(file)",
            libc::SYS_mmap,
            [v.start, v.end - v.start, u64::from(v.prot), flags as u64, rfd, v.pgoff],
        );
        self.close_remote(rfd)?;
        Ok(r?)
    }

    fn advise(&mut self, v: &pb::Vma) -> Result<(), RestoreError> {
        const ADVICE: [(&str, i32); 6] = [
            ("dd", libc::MADV_DONTDUMP),
            ("dc", libc::MADV_DONTFORK),
            ("wf", libc::MADV_WIPEONFORK),
            ("hg", libc::MADV_HUGEPAGE),
            ("nh", libc::MADV_NOHUGEPAGE),
            ("mg", libc::MADV_MERGEABLE),
        ];
        for (flag, advice) in ADVICE {
            if v.vm_flags.iter().any(|f| f == flag) {
                let r = self.p.syscall_raw(
                    "madvise",
                    libc::SYS_madvise,
                    [v.start, v.end - v.start, advice as u64, 0, 0, 0],
                )?;
                if r < 0 {
                    warn!(pid = self.pid, flag, "madvise on {:#x}-{:#x} failed: {r}", v.start, v.end);
                }
            }
        }
        Ok(())
    }

    /// Writes the stored pages into the task.
    pub(super) fn fill(&mut self, loaded: &Loaded) -> Result<u64, RestoreError> {
        let runs: Vec<Run> = loaded.pagemap.runs.iter().map(|r| Run { vaddr: r.vaddr, pages: r.nr_pages }).collect();
        let vmas = &loaded.task.vmas;
        let writable = |addr: u64| {
            let i = vmas.partition_point(|v| v.end <= addr);
            vmas.get(i).is_some_and(|v| v.start <= addr && v.prot & libc::PROT_WRITE as u32 != 0)
        };
        let n = mem::fill_pages(self.pid, &runs, &loaded.pages, PAGE_SIZE, writable)?;
        for v in vmas {
            self.page_states(v)?;
        }
        Ok(n)
    }

    /// What an area's pages were besides their data: inherited pages the
    /// child did not have, dropped again (`cow.rs`); guard markers; pages
    /// on the shared zero page (a read maps it again); then `mlock`.
    fn page_states(&mut self, v: &pb::Vma) -> Result<(), RestoreError> {
        const MADV_GUARD_INSTALL: u64 = 102;
        for z in &v.zap {
            let len = z.nr_pages * PAGE_SIZE;
            self.p.call(
                "madvise(MADV_DONTNEED)",
                libc::SYS_madvise,
                [z.vaddr, len, libc::MADV_DONTNEED as u64, 0, 0, 0],
            )?;
        }
        for g in &v.guard {
            let len = g.nr_pages * PAGE_SIZE;
            self.p.call(
                "madvise(MADV_GUARD_INSTALL)",
                libc::SYS_madvise,
                [g.vaddr, len, MADV_GUARD_INSTALL, 0, 0, 0],
            )?;
        }
        let zero: Vec<Run> = v.zero.iter().map(|r| Run { vaddr: r.vaddr, pages: r.nr_pages }).collect();
        mem::touch_pages(self.pid, &zero)?;
        let has = |f: &str| v.vm_flags.iter().any(|x| x == f);
        if has("lo") || has("lf") {
            let onfault = u64::from(has("lf")); // MLOCK_ONFAULT
            self.p.call("mlock2", libc::SYS_mlock2, [v.start, v.end - v.start, onfault, 0, 0, 0])?;
        }
        Ok(())
    }

    /// `PR_SET_MM_MAP`: code/data/brk/stack/args/env bounds, auxv, exe.
    pub(super) fn set_mm(&mut self, mm: &pb::MmState) -> Result<(), RestoreError> {
        use std::os::unix::fs::MetadataExt;
        let exe = File::open(&mm.exe).map_err(step(self.pid, "opening the executable"))?;
        // A task created by a restored parent already runs the same program
        // (and the kernel refuses to switch to a file that is mapped).
        let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
        let current = std::fs::metadata(format!("/proc/{}/exe", self.pid)).ok();
        let wanted = exe.metadata().map_err(step(self.pid, "opening the executable"))?;
        let exe_fd =
            if current.is_some_and(|c| same(&c, &wanted)) { u64::from(u32::MAX) } else { self.install(exe.into())? };
        let auxv: Vec<u8> = mm.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.p.write(self.scratch + S_AUXV, &auxv)?;
        let map = task_state::prctl_mm_map(mm, self.scratch + S_AUXV, exe_fd as u32);
        self.p.write(self.scratch + S_ARG, &map)?;
        let r = self.p.call(
            "prctl(PR_SET_MM_MAP)",
            libc::SYS_prctl,
            [libc::PR_SET_MM as u64, libc::PR_SET_MM_MAP as u64, self.scratch + S_ARG, map.len() as u64, 0, 0],
        );
        if exe_fd != u64::from(u32::MAX) {
            self.close_remote(exe_fd)?;
        }
        r?;
        Ok(())
    }
}
