//! The `tessera` command: `info`, `check`, `mask`, `bench`, `report`, `tune`.

mod bench_cuda;
mod bench_vk;
mod cases;
mod check;
mod executor;
mod info;
mod logger;
mod mask;
mod plot;
mod report;
mod run;
mod schema;
mod tune;
mod vk_timing;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Tessera: radial sparse attention, MLA paged cache and FP8 GEMM kernels on CUDA, Vulkan and
/// the CPU reference.
#[derive(Parser, Debug)]
#[command(name = "tessera", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the backends found on this machine, their devices, and why any is missing.
    Info,
    /// Run every op on a backend at small random shapes and compare with the reference.
    Check(check::CheckArgs),
    /// Build a radial attention mask and print its blocks, density and O(n log n) comparison.
    Mask(mask::MaskArgs),
    /// Time the standard shapes on a backend (with the ceilings measured in the same run).
    Bench(run::BenchArgs),
    /// Join Tessera's and the peers' bench JSON into a Markdown table and PNG plots.
    Report(report::ReportArgs),
    /// Time every CUDA kernel candidate at the standard shapes and keep the fastest per shape
    /// class (written next to the NVRTC disk cache, read by later runs).
    Tune(tune::TuneArgs),
}

fn main() -> ExitCode {
    logger::install();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info::run(),
        Command::Check(args) => check::run(&args),
        Command::Mask(args) => mask::run(&args),
        Command::Bench(args) => run::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Tune(args) => tune::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
