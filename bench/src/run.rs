//! `tessera bench`: runs the cases of [`crate::cases`] on one executor (CUDA or Vulkan, each
//! timing through its backend's device API), with the ceilings measured in the same run, and
//! writes the JSON of [`crate::schema`]; optionally the radial masks as JSON (for
//! `ci/peers.py`, which must use the very same BSR) and the Markdown table and plots.
//!
//! The loop over the suite, the progress line, the JSON written after every measurement (so that
//! a run cut short keeps its results) and the summary are here, once; how a measurement is taken
//! is each executor's (see their module documentation).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;

use crate::cases::{
    gemm_flops_bytes, gemm_key, MlaShape, Suite, ATTENTION_BACKWARD_IMPLS, ATTENTION_BACKWARD_OP,
    GROUPED_GEMM_OP, QUANTIZE_OP,
};
use crate::executor::Executor;
use crate::schema::{fill_rates, utc_now, BenchFile, Header, Record};

/// Arguments of `tessera bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Backend to time: `cuda` or `vulkan` (the backends with a device API).
    #[arg(long, default_value = "cuda")]
    pub backend: String,
    /// `standard` (every shape of FACTS.md) or `quick` (a small subset, for testing).
    #[arg(long, default_value = "standard")]
    pub suite: String,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the Markdown table and PNG plots into this folder (joined with --peers if given).
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Peers' JSON (from ci/peers.py) to join into the table and plots.
    #[arg(long, value_name = "FILE")]
    pub peers: Option<PathBuf>,
    /// Write each radial mask of the suite as JSON into this folder (`<case>.json`: tokens,
    /// block_size, blocks, nnz, density, indptr, indices), for ci/peers.py.
    #[arg(long, value_name = "DIR")]
    pub masks: Option<PathBuf>,
    /// Only the ops whose name contains this (fp8_gemm, fp8_gemm_grouped, mla_decode,
    /// attention; `fp8_gemm` takes both GEMMs).
    #[arg(long)]
    pub only: Option<String>,
    /// Only the MLA decode shapes whose key contains this (e.g. `hq16 sq1 bf16`; the keys are
    /// the table's shape column).
    #[arg(long, value_name = "SUBSTRING")]
    pub mla_shapes: Option<String>,
    /// Vulkan only: seconds after which the remaining shapes are skipped (and reported so).
    #[arg(long, value_name = "SECONDS", default_value_t = 170.0)]
    pub budget_s: f64,
}

/// Runs `tessera bench`.
pub fn run(args: &BenchArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.backend != "cuda" && args.backend != "vulkan" {
        return Err(format!(
            "--backend {}: cuda and vulkan can be benchmarked (the CPU backend has no device API \
             to time without copies)",
            args.backend
        )
        .into());
    }
    let suite = Suite::named(&args.suite, &args.backend)?;
    let wants = |op: &str| args.only.as_ref().is_none_or(|o| op.contains(o.as_str()));
    let keep_mla = |shape: &MlaShape| {
        args.mla_shapes
            .as_ref()
            .is_none_or(|k| shape.key().contains(k.as_str()))
    };
    if let Some(dir) = &args.masks {
        write_masks(&suite, dir)?;
    }
    let mut executor: Box<dyn Executor> = if args.backend == "cuda" {
        Box::new(crate::bench_cuda::CudaExecutor::new()?)
    } else {
        Box::new(crate::bench_vk::VulkanExecutor::new(args.budget_s)?)
    };
    let ceilings = executor.ceilings().clone();
    let mut file = BenchFile {
        header: Header {
            tool: "tessera".into(),
            device: executor.device(),
            date: utc_now(),
            commit: commit(),
            backend: args.backend.clone(),
            suite: args.suite.clone(),
            ceilings: ceilings.clone(),
            notes: executor.notes(),
        },
        records: Vec::new(),
    };
    let count = |op: &str, n: usize| if wants(op) { n } else { 0 };
    let mut progress = Progress {
        done: 0,
        total: count("fp8_gemm", suite.gemm.len())
            + count(GROUPED_GEMM_OP, suite.grouped_gemm.len())
            + count(QUANTIZE_OP, suite.quantize.len())
            + count(
                "mla_decode",
                suite.mla.iter().filter(|s| keep_mla(s)).count(),
            )
            + count("attention", 2 * suite.attention.len())
            + count(ATTENTION_BACKWARD_OP, suite.attention.len()),
        start: Instant::now(),
    };
    // Written after every measurement, so a run cut short still leaves its results.
    let push = |file: &mut BenchFile, rec: Record| {
        file.records.push(rec);
        if let Err(e) = file.save_to(args.json.as_deref()) {
            eprintln!("warning: {e}");
        }
    };
    if wants("fp8_gemm") {
        for &(m, n, k) in &suite.gemm {
            progress.show(&format!("fp8_gemm {}", gemm_key(m, n, k)));
            let mut rec = executor.gemm(m, n, k);
            let (flops, bytes) = gemm_flops_bytes(&tessera::Fp8Gemm::new(m, n, k));
            fill_rates(&mut rec, flops, bytes, &ceilings);
            push(&mut file, rec);
        }
    }
    if wants(GROUPED_GEMM_OP) {
        for case in &suite.grouped_gemm {
            progress.show(&format!("{GROUPED_GEMM_OP} {}", case.key()));
            let mut rec = executor.grouped_gemm(case);
            let (flops, bytes) = case.flops_bytes();
            fill_rates(&mut rec, flops, bytes, &ceilings);
            push(&mut file, rec);
        }
    }
    if wants(QUANTIZE_OP) {
        for case in &suite.quantize {
            progress.show(&format!("{QUANTIZE_OP} {}", case.key()));
            let mut rec = executor.quantize(case);
            let (flops, bytes) = case.flops_bytes();
            fill_rates(&mut rec, flops, bytes, &ceilings);
            push(&mut file, rec);
        }
    }
    if wants("mla_decode") {
        for fp8 in [false, true] {
            let shapes: Vec<MlaShape> = suite
                .mla
                .iter()
                .filter(|s| s.fp8 == fp8 && keep_mla(s))
                .copied()
                .collect();
            if shapes.is_empty() {
                continue;
            }
            executor.mla_begin(&shapes);
            for shape in &shapes {
                progress.show(&format!("mla_decode {}", shape.key()));
                let mut rec = executor.mla(shape);
                let (flops, bytes) = shape.flops_bytes();
                fill_rates(&mut rec, flops, bytes, &ceilings);
                push(&mut file, rec);
            }
        }
    }
    // `--only attention` runs both directions; `--only attention_backward` the backward alone.
    let (forward, backward) = (wants("attention"), wants(ATTENTION_BACKWARD_OP));
    if forward || backward {
        for case in &suite.attention {
            for radial in [true, false].into_iter().filter(|_| forward) {
                progress.show(&format!(
                    "attention {} {}",
                    case.key(),
                    if radial { "radial" } else { "dense" }
                ));
                let rec = match case.work(radial) {
                    Ok(work) => {
                        let mut rec = executor.attention(case, &work, radial);
                        fill_rates(&mut rec, work.flops, work.bytes, &ceilings);
                        rec
                    }
                    Err(e) => Record::failed("attention", case.key(), "tessera", e),
                };
                push(&mut file, rec);
            }
            if !backward {
                continue;
            }
            progress.show(&format!("attention {} radial backward", case.key()));
            let recs = match case.backward_work() {
                Ok(work) => executor
                    .attention_backward(case, &work)
                    .into_iter()
                    .map(|mut rec| {
                        fill_rates(&mut rec, work.flops, work.bytes, &ceilings);
                        rec
                    })
                    .collect(),
                Err(e) => vec![Record::failed(
                    ATTENTION_BACKWARD_OP,
                    case.key(),
                    ATTENTION_BACKWARD_IMPLS[0],
                    e,
                )],
            };
            for rec in recs {
                push(&mut file, rec);
            }
        }
    }
    progress.finish();
    print_summary(&file);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&file)?)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &args.plot {
        let peers = match &args.peers {
            Some(p) => Some(BenchFile::load(p)?),
            None => None,
        };
        crate::report::write(&file, peers.as_ref(), None, dir)?;
    }
    let errors = file.records.iter().filter(|r| r.error.is_some()).count();
    if errors > 0 {
        eprintln!("{errors} measurements failed or were skipped (see their `error`)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes each radial mask of the suite as JSON into `dir`.
fn write_masks(suite: &Suite, dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    for case in &suite.attention {
        let mask = case.config.build()?;
        let value = json!({
            "tokens": mask.tokens(), "block_size": mask.block_size(),
            "blocks": mask.num_blocks(), "nnz": mask.nnz(), "density": mask.density(),
            "model": case.model, "frames": case.frames, "heads": case.heads,
            "shape": case.key(),
            "indptr": mask.indptr(), "indices": mask.indices(),
        });
        std::fs::write(dir.join(case.mask_file()), serde_json::to_vec(&value)?)?;
    }
    eprintln!(
        "wrote {} masks into {}",
        suite.attention.len(),
        dir.display()
    );
    Ok(())
}

/// The commit measured: `TESSERA_COMMIT`, else `git rev-parse --short HEAD`, else `unknown`.
fn commit() -> String {
    if let Ok(c) = std::env::var("TESSERA_COMMIT") {
        return c.trim().to_string();
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The progress line on stderr.
struct Progress {
    done: usize,
    total: usize,
    start: Instant,
}

impl Progress {
    fn show(&mut self, what: &str) {
        self.done += 1;
        eprint!(
            "\r\x1b[2K[{:>3}/{}] {:6.1} s  {what}",
            self.done,
            self.total,
            self.start.elapsed().as_secs_f64()
        );
    }

    fn finish(&self) {
        eprintln!(
            "\r\x1b[2K{} measurements in {:.1} s",
            self.total,
            self.start.elapsed().as_secs_f64()
        );
    }
}

fn print_summary(file: &BenchFile) {
    println!(
        "{:<16} {:<42} {:<16} {:>10} {:>9} {:>9} {:>7} {:>7}",
        "op", "shape", "impl", "ms", "TFLOPS", "GB/s", "%mm", "%copy"
    );
    for r in &file.records {
        match &r.error {
            Some(e) => println!(
                "{:<16} {:<42} {:<16} error: {e}",
                r.op, r.shape, r.implementation
            ),
            None => println!(
                "{:<16} {:<42} {:<16} {:>10.4} {:>9.1} {:>9.0} {:>7.1} {:>7.1}",
                r.op,
                r.shape,
                r.implementation,
                r.time_ms.unwrap_or(f64::NAN),
                r.tflops.unwrap_or(f64::NAN),
                r.gbps.unwrap_or(f64::NAN),
                r.pct_matmul.unwrap_or(f64::NAN),
                r.pct_copy.unwrap_or(f64::NAN)
            ),
        }
    }
}
