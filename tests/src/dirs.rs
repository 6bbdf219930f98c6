//! Temporary directories for workloads and images.

use std::path::Path;

/// A unique temporary directory, removed on drop unless `CRT_TEST_KEEP=1` is
/// set (then kept, and its path printed, for debugging failed tests).
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    /// Creates `/tmp/<prefix>XXXXXX` (or under `$TMPDIR`).
    pub fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("create temp dir");
        Self { dir: Some(dir) }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("TestDir present until drop").path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep = std::env::var("CRT_TEST_KEEP").is_ok_and(|v| v == "1");
        if let Some(dir) = self.dir.take() {
            if keep {
                let p = dir.keep();
                eprintln!("crt-tests: kept {}", p.display());
            } else if std::thread::panicking() {
                eprintln!("crt-tests: removing {} (set CRT_TEST_KEEP=1 to keep it)", dir.path().display());
            }
        }
    }
}
