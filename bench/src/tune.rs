//! `tessera tune`: times every kernel candidate of the standard shapes on the CUDA device, keeps
//! the fastest per shape class, and writes them to the plan file next to the NVRTC disk cache
//! (`tessera_cuda::plan::PlanCache`), which later processes read when they create the backend.

use std::process::ExitCode;
use std::time::Instant;

use tessera::cuda::plan::TuneOutcome;
use tessera::cuda::CudaBackend;
use tessera::{BlockMask, DType, Fp8Gemm, SparseAttention};

use crate::cases::{gemm_key, Suite};

/// Arguments of `tessera tune`.
#[derive(clap::Args, Debug)]
pub struct TuneArgs {
    /// The op whose standard shapes are tuned: gemm, attention, mla or all.
    #[arg(long, default_value = "all")]
    pub op: String,
    /// `standard` (every shape of `tessera bench`) or `quick` (a small subset).
    #[arg(long, default_value = "standard")]
    pub suite: String,
}

type Job<'a> = (String, Box<dyn Fn() -> tessera::Result<TuneOutcome> + 'a>);

/// Runs `tessera tune`.
pub fn run(args: &TuneArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let ops: &[&str] = match args.op.as_str() {
        "all" => &["gemm", "attention", "mla"],
        "gemm" => &["gemm"],
        "attention" => &["attention"],
        "mla" => &["mla"],
        other => {
            return Err(format!("--op: expected gemm, attention, mla or all, got {other}").into())
        }
    };
    let suite = Suite::named(&args.suite, "cuda")?;
    let backend = CudaBackend::new()?;
    eprintln!(
        "tuning on {} ({})",
        tessera::Backend::device(&backend).name,
        backend.arch_spec()
    );
    let be = &backend;
    let mut jobs: Vec<Job<'_>> = Vec::new();
    if ops.contains(&"gemm") {
        for &(m, n, k) in &suite.gemm {
            jobs.push((
                format!("fp8_gemm {}", gemm_key(m, n, k)),
                Box::new(move || be.tune_fp8_gemm(&Fp8Gemm::new(m, n, k))),
            ));
        }
    }
    if ops.contains(&"attention") {
        for case in &suite.attention {
            for radial in [true, false] {
                let tokens = case.config.tokens();
                let mask = if radial {
                    case.config.build()
                } else {
                    BlockMask::dense(tokens, case.config.block_size)
                };
                let op = SparseAttention::new(1, tokens, case.heads, 128, DType::BF16);
                let kind = if radial { "radial" } else { "dense" };
                jobs.push((
                    format!("attention {} {kind}", case.key()),
                    Box::new(move || {
                        be.tune_sparse_attention(&op, mask.as_ref().map_err(Clone::clone)?)
                    }),
                ));
            }
        }
    }
    if ops.contains(&"mla") {
        for shape in &suite.mla {
            let op = shape.op();
            let s_k = shape.s_k;
            jobs.push((
                format!("mla_decode {}", shape.key()),
                Box::new(move || be.tune_mla_decode(&op, s_k)),
            ));
        }
    }
    let start = Instant::now();
    let total = jobs.len();
    let mut failed = 0;
    for (i, (name, job)) in jobs.iter().enumerate() {
        let line = match job() {
            Ok(outcome) => outcome.summary(),
            Err(e) => {
                failed += 1;
                format!("error: {e}")
            }
        };
        eprintln!(
            "[{:>3}/{total}] {:6.1} s  {name}: {line}",
            i + 1,
            start.elapsed().as_secs_f64()
        );
    }
    match backend.plans().save()? {
        Some(path) => println!("wrote the tuned plans to {}", path.display()),
        None => println!("no plan file written (no cache folder, or nothing tuned)"),
    }
    if failed > 0 {
        eprintln!("{failed} of {total} shapes failed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
