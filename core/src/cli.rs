//! The `crt` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::fmt::format::FmtSpan;

use crate::dump::{self, DumpOptions};
use crate::handlers::Registry;
use crate::images::ImageDir;
use crate::restore::{self, RestoreOptions};

/// crt — checkpoint and restore Linux process forests.
///
/// `crt dump` freezes one or more process trees and writes everything
/// needed to bring them back into an image directory; `crt restore`
/// recreates them with the same pids, memory, registers and files.
/// Run as root.
#[derive(Debug, Parser)]
#[command(name = "crt", version, about, long_about)]
pub struct Cli {
    /// More output: -v shows phases with timings, -vv details.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Also write the log to this file (at -vv detail).
    #[arg(long, global = true, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Write figures of the run (phase timings, bytes, crt's peak memory) as JSON to this file.
    #[arg(long, global = true, value_name = "PATH")]
    pub stats: Option<PathBuf>,
    /// An option for a handler, NAME:KEY=VALUE (repeatable; see `crt plugins`).
    #[arg(short = 'o', long = "handler-opt", global = true, value_name = "NAME:KEY=VALUE")]
    pub handler_opt: Vec<String>,
    /// Directory with plugin `.so` files (repeatable; also $CRT_PLUGIN_DIR; default /usr/lib/crt).
    #[arg(long, global = true, value_name = "DIR")]
    pub plugin_dir: Vec<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checkpoint process trees into an image directory.
    ///
    /// Every thread of every process under each root is frozen together,
    /// its state written to DIR, then the processes are killed (or left
    /// running with --leave-running). On failure the processes keep running
    /// untouched and no partial image is left behind.
    #[command(
        after_help = "Examples:\n  crt dump --tree 1234 -D /var/lib/crt/app\n  crt dump --tree 101,202 -D img --leave-running\n  crt --plugin-dir /usr/lib/crt dump --tree 101 -D img -o aio:timeout-ms=5000\n  crt dump --tree 120 -D img -o unix:external=close   # a client whose server is not dumped"
    )]
    Dump {
        /// Root pid(s) of the trees to dump: --tree 101,202 or --tree 101 --tree 202.
        #[arg(short, long = "tree", value_name = "PID[,PID...]", value_delimiter = ',', required = true)]
        tree: Vec<i32>,
        /// Image directory (created if missing; must not hold an image already).
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Let the processes continue after the dump instead of killing them.
        #[arg(long)]
        leave_running: bool,
    },
    /// Restore the process trees of an image directory.
    ///
    /// The processes come back with their pids, so those pids must be free.
    /// crt stays their parent and exits with the status of the restored
    /// root (128+N if killed by signal N), unless --detach is given.
    #[command(
        after_help = "Examples:\n  crt restore -D /var/lib/crt/app          # waits, exits with the root's status\n  crt restore -D img --detach\n  crt -v --stats restore.json restore -D img"
    )]
    Restore {
        /// Image directory written by `crt dump`.
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Exit as soon as the processes run; they are re-parented to crt's parent's subreaper.
        #[arg(long)]
        detach: bool,
    },
    /// List the kernel features crt relies on; exits non-zero if a required one is missing.
    Check,
    /// Decode an image directory (or one image file of it) to JSON.
    Show {
        /// Image directory.
        dir: PathBuf,
        /// One image file name in it, e.g. task-1234.img.
        image: Option<String>,
    },
    /// List the resource handlers crt has: built-in and from plugins.
    Plugins,
}

/// Entry point of the `crt` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.verbose, cli.log_file.as_deref()) {
        eprintln!("crt: cannot open log file: {e}");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            print_chain(e.as_ref());
            ExitCode::FAILURE
        }
    }
}

/// Prints an error and its causes, one line each.
fn print_chain(e: &(dyn std::error::Error + 'static)) {
    eprintln!("crt: error: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        eprintln!("  caused by: {c}");
        cause = c.source();
    }
}

fn init_logging(verbose: u8, log_file: Option<&std::path::Path>) -> std::io::Result<()> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{filter::LevelFilter, fmt};
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    // Field values are formatted once and shared by both layers: colour
    // only when nothing goes to a file and stderr is a terminal.
    use std::io::IsTerminal;
    let ansi = log_file.is_none() && std::io::stderr().is_terminal();
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .with_span_events(if verbose > 0 { FmtSpan::CLOSE } else { FmtSpan::NONE })
        .with_filter(level);
    let file = match log_file {
        Some(p) => {
            let f = std::fs::File::create(p)?;
            Some(
                fmt::layer()
                    .with_writer(std::sync::Mutex::new(f))
                    .with_ansi(false)
                    .with_span_events(FmtSpan::CLOSE)
                    .with_filter(LevelFilter::DEBUG.max(level)),
            )
        }
        None => None,
    };
    tracing_subscriber::registry().with(stderr).with(file).init();
    Ok(())
}

/// Writes to stdout; a closed pipe (`crt show | head`) is not an error.
fn out(s: &str) -> std::io::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(s.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `crt plugins`: handlers with origin, version, claims, hooks; plugins
/// with ABI and path; files refused and plugins that declined.
fn plugins_listing(registry: &Registry, report: &crate::plugins::Report) -> String {
    let mut s = format!("crt plugin ABI {}\n\nhandlers (asked in this order):\n", crt_plugin_api::ABI_VERSION);
    for name in registry.names() {
        let Some(h) = registry.by_name(&name) else { continue };
        let origin = registry.origin(&name).map(|o| o.provider()).unwrap_or_default();
        s += &format!("  {name:<14} {:<8} {origin:<20} {}\n", h.version(), h.claims());
        let hooks = h.hooks();
        if !hooks.is_empty() {
            s += &format!("  {:<44} hooks: {hooks}\n", "");
        }
    }
    s += "\nplugins loaded:\n";
    if report.loaded.is_empty() {
        s += "  (none)\n";
    }
    for p in &report.loaded {
        s += &format!(
            "  {} {} (ABI {}) {}\n    {}\n    handlers: {}\n",
            p.name,
            p.version,
            p.abi,
            p.path.display(),
            p.description,
            p.handlers.join(", ")
        );
    }
    for d in &report.declined {
        s += &format!("\ndeclined: {} ({}): {}\n", d.name, d.path.display(), d.reason);
    }
    for r in &report.rejected {
        s += &format!("\nrejected: {}: {}\n", r.path.display(), r.reason);
    }
    s
}

/// Where `--stats` goes (set once at start).
static STATS_PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Writes `stats` plus crt's own peak memory to the `--stats` file.
fn write_stats<T: serde::Serialize>(stats: &T) {
    let Some(path) = STATS_PATH.get() else { return };
    let mut v = serde_json::to_value(stats).unwrap_or_default();
    v["peak_rss_kib"] = crate::procfs::status_field("self", "VmHWM").unwrap_or(0).into();
    if let Err(e) = std::fs::write(path, v.to_string()) {
        tracing::warn!("writing {}: {e}", path.display());
    }
}

fn run(cli: Cli) -> Result<ExitCode, BoxError> {
    let mut registry = Registry::builtin();
    let report = crate::plugins::load(&crate::plugins::dirs(&cli.plugin_dir), &mut registry);
    if !matches!(cli.command, Command::Plugins) {
        for r in &report.rejected {
            tracing::warn!("plugin {} not loaded: {}", r.path.display(), r.reason);
        }
        for d in &report.declined {
            tracing::info!("plugin {} ({}) declined: {}", d.name, d.path.display(), d.reason);
        }
    }
    for opt in &cli.handler_opt {
        registry.configure(opt)?;
    }
    if let Some(p) = cli.stats {
        let _ = STATS_PATH.set(p);
    }
    match cli.command {
        Command::Dump { tree, dir, leave_running } => {
            let opts = DumpOptions { roots: tree, dir, leave_running };
            let s = dump::dump(&opts, &registry)?;
            write_stats(&s);
            tracing::info!(
                tasks = s.tasks,
                freeze = s.freeze,
                collect = s.collect,
                pages = s.pages,
                write = s.write,
                page_bytes = s.page_bytes,
                "dump done"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { dir, detach } => {
            let opts = RestoreOptions { dir, detach, on_resumed: Some(write_stats::<restore::RestoreStats>) };
            let out = restore::restore(&opts, &registry)?;
            let s = &out.stats;
            tracing::info!(
                tasks = s.tasks,
                validate = s.validate,
                create = s.create,
                map = s.map,
                fill = s.fill,
                resume = s.resume,
                page_bytes = s.page_bytes,
                "restore done"
            );
            Ok(ExitCode::from(out.exit_code.clamp(0, 255) as u8))
        }
        Command::Check => {
            let mut missing = false;
            for f in crate::check::run() {
                let (mark, detail) = match &f.result {
                    Ok(d) => ("present", d.clone()),
                    Err(e) => ("MISSING", e.clone()),
                };
                let req = if f.required { "required" } else { "optional" };
                out(&format!("{:<16} {mark:<8} {req:<8} {} ({detail})\n", f.name, f.purpose))?;
                missing |= f.required && f.result.is_err();
            }
            Ok(if missing { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Show { dir, image } => {
            let v = crate::show::show(&ImageDir::new(dir), image.as_deref())?;
            out(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins => {
            out(&plugins_listing(&registry, &report))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
