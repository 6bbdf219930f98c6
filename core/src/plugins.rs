//! Loading `.so` plugins: finding them, refusing unsafe or incompatible
//! files with a reason, and adding their handlers to the [`Registry`].
//!
//! Plugins are never unloaded. When crt runs as root it loads only files
//! (and directories) owned by root and not writable by group or others.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_raw_library, LibraryError, RawLibrary};
use crt_plugin_api::{PluginInit, PluginModRef, ABI_VERSION};

use crate::handlers::{Origin, Registry};

/// Where crt looks when no `--plugin-dir` is given.
pub const DEFAULT_DIR: &str = "/usr/lib/crt";

/// A plugin that loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its description.
    pub description: String,
    /// ABI version it was built for.
    pub abi: u32,
    /// The file.
    pub path: PathBuf,
    /// Names of the handlers it added.
    pub handlers: Vec<String>,
}

/// A file crt did not load, and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The file (or directory).
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// A plugin that chose not to run on this machine.
#[derive(Debug, Clone)]
pub struct Declined {
    /// The file.
    pub path: PathBuf,
    /// Its name.
    pub name: String,
    /// Its reason.
    pub reason: String,
}

/// The outcome of loading the plugin directories.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Loaded plugins.
    pub loaded: Vec<Loaded>,
    /// Refused files.
    pub rejected: Vec<Rejected>,
    /// Plugins that declined.
    pub declined: Vec<Declined>,
}

/// The plugin directories: `--plugin-dir`s, then `$CRT_PLUGIN_DIR`
/// (colon-separated), then [`DEFAULT_DIR`].
pub fn dirs(cli: &[PathBuf]) -> Vec<(PathBuf, bool)> {
    let mut out: Vec<(PathBuf, bool)> = cli.iter().map(|d| (d.clone(), true)).collect();
    if let Ok(env) = std::env::var("CRT_PLUGIN_DIR") {
        out.extend(env.split(':').filter(|s| !s.is_empty()).map(|d| (PathBuf::from(d), true)));
    }
    out.push((PathBuf::from(DEFAULT_DIR), false));
    out
}

/// Loads every `*.so` of `dirs` (explicit ones must exist) into `registry`.
pub fn load(dirs: &[(PathBuf, bool)], registry: &mut Registry) -> Report {
    let mut report = Report::default();
    let root = nix::unistd::geteuid().is_root();
    for (dir, explicit) in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                if *explicit {
                    report.rejected.push(Rejected { path: dir.clone(), reason: format!("cannot read directory: {e}") });
                }
                continue;
            }
        };
        if root {
            if let Err(reason) = safe_owner(dir) {
                report.rejected.push(Rejected { path: dir.clone(), reason });
                continue;
            }
        }
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "so"))
            .collect();
        files.sort();
        for path in files {
            match load_one(&path, root) {
                Ok((info, PluginInit::Handlers(handlers))) => {
                    let mut names = Vec::new();
                    let mut refused = None;
                    for h in handlers {
                        let name = h.name().into_string();
                        let origin = Origin::Plugin { name: info.name.clone(), path: path.clone() };
                        match registry.add_plugin_handler(h, origin) {
                            Ok(()) => names.push(name),
                            Err(e) => refused = Some(e),
                        }
                    }
                    if let Some(reason) = refused {
                        report.rejected.push(Rejected { path: path.clone(), reason });
                    }
                    if !names.is_empty() {
                        report.loaded.push(Loaded { handlers: names, ..info });
                    }
                }
                Ok((info, PluginInit::Declined(reason))) => {
                    report.declined.push(Declined { path, name: info.name, reason: reason.into_string() })
                }
                Err(reason) => report.rejected.push(Rejected { path, reason }),
            }
        }
    }
    report
}

/// Owned by root and not writable by group or others.
fn safe_owner(path: &Path) -> Result<(), String> {
    let m = std::fs::metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
    if m.uid() != 0 {
        return Err(format!("owned by uid {}, not root; crt running as root loads only root's plugins", m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {:o}); crt running as root refuses it (chmod go-w)",
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

fn load_one(path: &Path, root: bool) -> Result<(Loaded, PluginInit), String> {
    if root {
        safe_owner(path)?;
    }
    let raw = RawLibrary::load_at(path).map_err(|e| match e {
        LibraryError::OpenError { err, .. } => format!("not a loadable shared library: {err}"),
        other => one_line(&other.to_string()),
    })?;
    // SAFETY: `raw` is a library we just loaded; abi_stable reads its
    // exported header static, whose presence and type it checks itself.
    let header = unsafe { lib_header_from_raw_library(&raw) }.map_err(|e| match e {
        LibraryError::GetSymbolError { .. } => "not a crt plugin: it exports no crt_plugin root module".to_string(),
        LibraryError::InvalidAbiHeader(_) => "built with an incompatible abi_stable version".to_string(),
        other => one_line(&other.to_string()),
    })?;
    // Never unloaded: handler objects and their vtables live in it.
    std::mem::forget(raw);
    let module = header.init_root_module::<PluginModRef>().map_err(|e| match e {
        LibraryError::IncompatibleVersionNumber { expected_version, actual_version, .. } => {
            format!("built against crt-plugin-api {actual_version}; this crt accepts crt-plugin-api {expected_version}")
        }
        LibraryError::AbiInstability(_) => {
            "its plugin ABI layout differs from this crt's (built against an incompatible crt-plugin-api)".to_string()
        }
        other => one_line(&other.to_string()),
    })?;
    let abi = module.abi_version();
    if abi != ABI_VERSION {
        return Err(format!("built for crt plugin ABI {abi}; this crt accepts ABI {ABI_VERSION}"));
    }
    let info = Loaded {
        name: module.name().to_string(),
        version: module.version().to_string(),
        description: module.description().to_string(),
        abi,
        path: path.to_path_buf(),
        handlers: Vec::new(),
    };
    let init = module.init();
    Ok((info, init()))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
