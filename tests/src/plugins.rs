//! Test plugins: built on demand with cargo (a cdylib is not built by
//! `cargo test`), and plugin directories laid out as crt expects when it
//! runs as root (owned by root, not writable by group or others).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::dirs::TestDir;

/// The workspace's plugin crates the tests use.
pub const TEST_PLUGINS: &[&str] =
    &["crt-plugin-recorder", "crt-plugin-abi-mismatch", "crt-plugin-template", "crt-plugin-aio"];

/// `target/<profile>` of this test build.
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> or target/<profile>/<bench/bin>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of the built `.so` of plugin crate `name` (building them all once).
pub fn plugin_so(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build").current_dir(env!("CARGO_MANIFEST_DIR"));
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        for p in TEST_PLUGINS {
            cmd.args(["-p", p]);
        }
        let st = cmd.status().expect("run cargo build for the test plugins");
        assert!(st.success(), "building the test plugins failed");
    });
    let path = target_profile_dir().join(format!("lib{}.so", name.replace('-', "_")));
    assert!(path.exists(), "plugin {} not found at {}", name, path.display());
    path
}

/// A plugin directory crt accepts as root: mode 0755 dir, 0644 files.
#[derive(Debug)]
pub struct PluginDir {
    dir: TestDir,
}

impl PluginDir {
    /// A directory holding the given plugin crates' `.so` files.
    pub fn with(plugins: &[&str]) -> Self {
        let dir = TestDir::new("crt-plugins-");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let d = Self { dir };
        for p in plugins {
            d.add_file(&format!("lib{}.so", p.replace('-', "_")), &std::fs::read(plugin_so(p)).expect("read plugin"));
        }
        d
    }

    /// Adds a file (mode 0644).
    pub fn add_file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, data).expect("write plugin file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod file");
        path
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `--plugin-dir <dir>` as arguments.
    pub fn args(&self) -> [String; 2] {
        ["--plugin-dir".into(), self.path().to_string_lossy().into_owned()]
    }
}
