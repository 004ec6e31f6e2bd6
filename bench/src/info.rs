//! `tessera info`: the backends found, their devices, and why any is missing.

use std::process::ExitCode;

/// Runs `tessera info`.
pub fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
    println!("tessera {}", env!("CARGO_PKG_VERSION"));
    let forced = tessera::forced_backend()?;
    for status in tessera::probe_all() {
        let state = match (&status.usable, status.compiled) {
            (_, false) => "not compiled in".to_string(),
            (Ok(()), true) if status.software => {
                "available (software device: used only when forced)".to_string()
            }
            (Ok(()), true) => "available".to_string(),
            (Err(_), true) => "unavailable".to_string(),
        };
        println!("\n{:<7} {state}", status.kind.name());
        for d in &status.devices {
            println!("  device: {d}");
        }
        for d in &status.details {
            println!("  {d}");
        }
        if let Err(why) = &status.usable {
            // The reason repeats the detail that failed; show the backend's own summary.
            let why = why.split_once(": ").map_or(why.as_str(), |(_, r)| r);
            println!("  why: {why}");
        }
    }
    println!();
    match forced {
        Some(kind) => println!("{} forces: {kind}", tessera::BACKEND_ENV),
        None => println!(
            "{} not set: `best available` order is cuda, vulkan, cpu",
            tessera::BACKEND_ENV
        ),
    }
    match tessera::best_available() {
        Ok(b) => println!("selected: {} ({})", b.kind(), b.device().name),
        Err(e) => println!("selected: none: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}
