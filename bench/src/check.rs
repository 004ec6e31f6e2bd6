//! `tessera check`.
use std::process::ExitCode;

/// Arguments of `tessera check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {}

/// Runs `tessera check`.
pub fn run(args: &CheckArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let _ = args;
    todo!()
}
