//! Command-line interface.
use std::process::ExitCode;

/// Entry point of the `crt` binary.
pub fn main() -> ExitCode {
    eprintln!("crt: not implemented yet");
    ExitCode::FAILURE
}
