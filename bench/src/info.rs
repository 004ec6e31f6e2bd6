//! `tessera info`.
use std::process::ExitCode;

/// Runs `tessera info`.
pub fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
    todo!()
}
