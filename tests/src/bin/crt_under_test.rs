//! The `crt` binary as built for the integration tests (cargo builds it for us
//! and exposes its path as `CARGO_BIN_EXE_crt-under-test`).

fn main() -> std::process::ExitCode {
    crt_core::cli::main()
}
