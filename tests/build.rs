//! Compiles every `workloads/*.c` into `$OUT_DIR/workloads/<name>` with gcc
//! (dynamically linked against glibc) and exports that directory to the
//! crate as `CRT_WORKLOAD_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src_dir = manifest.join("workloads");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("workloads");
    std::fs::create_dir_all(&out_dir).expect("create $OUT_DIR/workloads");

    println!("cargo:rerun-if-changed={}", src_dir.display());
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&src_dir)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", src_dir.display())))
        .map(|e| e.expect("read_dir entry").path())
        .collect();
    entries.sort();
    for path in &entries {
        // headers and sources: any change must rebuild
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for path in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "c")) {
        compile(path, &out_dir);
    }
    println!("cargo:rustc-env=CRT_WORKLOAD_DIR={}", out_dir.display());
}

fn compile(src: &Path, out_dir: &Path) {
    let name = src.file_stem().expect("file stem").to_string_lossy().into_owned();
    let out = out_dir.join(&name);
    let result = Command::new("gcc").args(["-O1", "-g", "-Wall", "-o"]).arg(&out).arg(src).arg("-lpthread").output();
    match result {
        Ok(o) if o.status.success() => {
            let warnings = String::from_utf8_lossy(&o.stderr);
            for line in warnings.lines() {
                println!("cargo:warning=workload {name}: {line}");
            }
        }
        Ok(o) => fail(&format!(
            "gcc failed to compile workload {} ({}):\n{}{}",
            src.display(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => fail(&format!("cannot run gcc to compile workload {}: {e}", src.display())),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}
