//! Image directories: snapshots (to prove a failed operation left them
//! untouched), expected files, and deliberate corruption.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::workload::Workload;

/// File names and contents (length + FNV-1a 64 hash) of a directory tree.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct DirSnapshot {
    entries: BTreeMap<String, (u64, u64)>,
}

impl fmt::Debug for DirSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (name, (len, hash)) in &self.entries {
            m.entry(name, &format_args!("{len} bytes, fnv {hash:016x}"));
        }
        m.finish()
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

impl DirSnapshot {
    /// Snapshots `dir` recursively (empty if it does not exist). Symlinks
    /// are recorded by target, other non-regular files by kind.
    pub fn take(dir: &Path) -> Self {
        let mut s = Self::default();
        s.walk(dir, "");
        s
    }

    fn walk(&mut self, dir: &Path, prefix: &str) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                self.entries.insert(format!("{name}/"), (0, 0));
                self.walk(&e.path(), &format!("{name}/"));
            } else if ft.is_file() {
                let data = std::fs::read(e.path()).unwrap_or_default();
                self.entries.insert(name, (data.len() as u64, fnv1a(&data)));
            } else if ft.is_symlink() {
                let t = std::fs::read_link(e.path()).unwrap_or_default();
                self.entries.insert(name, (0, fnv1a(t.as_os_str().as_encoded_bytes())));
            } else {
                self.entries.insert(name, (0, 1));
            }
        }
    }

    /// The file names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// True if the directory was empty or missing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Path of `task-<pid>.img` in `dir`.
pub fn task_image(dir: &Path, pid: i32) -> PathBuf {
    dir.join(format!("task-{pid}.img"))
}

/// Asserts the image directory holds `inventory.img` and, for each
/// workload and each non-root process of its tree ([`Workload::roles`]),
/// `task-`, `pagemap-` and `pages-<pid>.img`, each at least 8 bytes long
/// (every image starts with a magic and a version); the pages image must
/// not be empty. A zombie (no memory) needs only its `task-<pid>.img`.
pub fn assert_image_files(dir: &Path, workloads: &[&Workload]) {
    let snap = DirSnapshot::take(dir);
    let mut want = vec!["inventory.img".to_owned()];
    for w in workloads {
        let mut pids = vec![(w.pid(), false)];
        pids.extend(w.roles().iter().map(|r| (r.pid, r.is_zombie())));
        for (pid, zombie) in pids {
            let kinds: &[&str] = if zombie { &["task"] } else { &["task", "pagemap", "pages"] };
            for kind in kinds {
                want.push(format!("{kind}-{pid}.img"));
            }
        }
    }
    for name in &want {
        let len = snap.entries.get(name).map(|e| e.0);
        assert!(
            len.is_some_and(|l| l >= 8),
            "image {} missing or shorter than a header ({len:?} bytes); directory: {snap:?}",
            dir.join(name).display()
        );
    }
}

/// Inverts `n` bytes in the middle of `path`.
pub fn flip_bytes_in_middle(path: &Path, n: usize) {
    let mut data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(data.len() >= 2, "{} is too short to corrupt ({} bytes)", path.display(), data.len());
    let mid = data.len() / 2;
    let end = (mid + n).min(data.len());
    for b in &mut data[mid..end] {
        *b ^= 0xff;
    }
    std::fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Truncates `path` to half its length.
pub fn truncate_to_half(path: &Path) {
    let len = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).len();
    let f = std::fs::OpenOptions::new().write(true).open(path).expect("open for truncate");
    f.set_len(len / 2).expect("truncate");
}
