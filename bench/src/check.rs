//! `tessera check`: every op on a backend at small random shapes, against the reference.

use std::process::ExitCode;
use tessera::BackendKind;
use tessera::Error;
use tessera_testing::check::{backward_cases, standard_cases, CheckOutcome};

/// Arguments of `tessera check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Backend to check: cpu, cuda or vulkan (default: `TESSERA_BACKEND`, else the best
    /// available).
    #[arg(long)]
    pub backend: Option<String>,
    /// A few small shapes per op instead of the full random suite.
    #[arg(long)]
    pub quick: bool,
    /// Seed of the shapes and inputs (the same seed replays the same cases).
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
}

fn outcome_json(o: &CheckOutcome, ok: bool) -> serde_json::Value {
    serde_json::json!({
        "op": o.op,
        "shape": o.shape,
        "passed": ok,
        "seconds": o.seconds,
        "metrics": o.metrics.iter().map(|m| serde_json::json!({
            "name": m.name,
            "error": if m.error.is_finite() { serde_json::json!(m.error) } else { serde_json::json!(m.error.to_string()) },
            "tolerance": m.tolerance,
        })).collect::<Vec<_>>(),
    })
}

/// Runs `tessera check`.
pub fn run(args: &CheckArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let backend = match &args.backend {
        Some(name) => tessera::backend(BackendKind::parse(name)?)?,
        None => tessera::best_available()?,
    };
    println!(
        "tessera check: backend {} ({}), seed {}{}",
        backend.kind(),
        backend.device().name,
        args.seed,
        if args.quick { ", quick" } else { "" }
    );
    println!(
        "{:<18} {:<58} {:<22} {:>10} {:>9} {:>9}  result",
        "op", "shape", "metric", "error", "tolerance", "time ms"
    );
    let (mut passed, mut failed, mut unsupported) = (0usize, 0usize, 0usize);
    let mut json = Vec::new();
    // The backward cases run on every backend (the reference, CUDA and Vulkan have it); one
    // that returns `Unsupported` for a case says so on its own line (`unsupported`, counted
    // apart), which does not fail the check.
    let cases = standard_cases(args.quick, args.seed)
        .into_iter()
        .map(|c| (c, false))
        .chain(
            backward_cases(args.quick, args.seed)
                .into_iter()
                .map(|c| (c, true)),
        );
    for (case, may_be_unsupported) in cases {
        match case.run(backend.as_ref()) {
            Err(e @ Error::Unsupported { .. }) if may_be_unsupported => {
                println!(
                    "{:<18} {:<58} {e}  unsupported",
                    format!("{case:?}").chars().take(18).collect::<String>(),
                    ""
                );
                json.push(serde_json::json!({"case": format!("{case:?}"), "passed": false, "unsupported": e.to_string()}));
                unsupported += 1;
            }
            Ok(outcome) => {
                let ok = outcome.passed();
                // Show the failing metric, else the first (the main one).
                let shown = outcome.first_failure().unwrap_or(&outcome.metrics[0]);
                println!(
                    "{:<18} {:<58} {:<22} {:>10.3e} {:>9.1e} {:>9.2}  {}",
                    outcome.op,
                    outcome.shape,
                    shown.name,
                    shown.error,
                    shown.tolerance,
                    outcome.seconds * 1e3,
                    if ok { "pass" } else { "FAIL" }
                );
                for m in outcome.metrics.iter().filter(|m| !std::ptr::eq(*m, shown)) {
                    println!(
                        "{:<18} {:<58} {:<22} {:>10.3e} {:>9.1e} {:>9}  {}",
                        "",
                        "",
                        m.name,
                        m.error,
                        m.tolerance,
                        "",
                        if m.passed() { "pass" } else { "FAIL" }
                    );
                }
                json.push(outcome_json(&outcome, ok));
                if ok {
                    passed += 1
                } else {
                    failed += 1
                }
            }
            Err(e) => {
                println!(
                    "{:<18} {:<58} error: {e}  FAIL",
                    format!("{case:?}").chars().take(18).collect::<String>(),
                    ""
                );
                json.push(serde_json::json!({"case": format!("{case:?}"), "passed": false, "error": e.to_string()}));
                failed += 1;
            }
        }
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "backend": backend.kind().name(),
            "device": backend.device().name,
            "seed": args.seed,
            "quick": args.quick,
            "cases": json,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    if unsupported == 0 {
        println!("check: {passed} passed, {failed} failed");
    } else {
        println!("check: {passed} passed, {failed} failed, {unsupported} unsupported");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
