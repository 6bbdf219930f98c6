//! The `crt` command-line tool. All logic lives in the `crt_core` library.

fn main() -> std::process::ExitCode {
    crt_core::cli::main()
}
