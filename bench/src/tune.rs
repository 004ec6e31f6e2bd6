//! `tessera tune`: times every kernel candidate of the standard shapes on the CUDA device, keeps
//! the fastest per shape class, and writes them to the plan file next to the NVRTC disk cache
//! (`tessera_cuda::plan::PlanCache`), which later processes read when they create the backend.
//! With `--backend vulkan`, the same for the Vulkan backend's FP8 GEMM and attention (their
//! shaders) and MLA decode (its pass-1 shaders and their tilings):
//! `tessera_vulkan::plan::VulkanPlans`, each candidate timed as `tessera bench --backend vulkan`
//! times the op.

use std::process::ExitCode;
use std::time::Instant;

use tessera::cuda::plan::TuneOutcome;
use tessera::cuda::CudaBackend;
use tessera::Fp8Gemm;

use tessera::vulkan::plan::{AttentionClass, Fp8GemmClass, MlaDecodeClass};
use tessera::vulkan::VulkanBackend;

use crate::bench_vk::{time_attention_kernel, time_gemm_kernel, MlaBench};
use crate::cases::{gemm_key, AttentionCase, MlaShape, Suite};
use crate::vk_timing::Timer;

/// Arguments of `tessera tune`.
#[derive(clap::Args, Debug)]
pub struct TuneArgs {
    /// The op whose standard shapes are tuned: gemm, attention, mla or all.
    #[arg(long, default_value = "all")]
    pub op: String,
    /// `standard` (every shape of `tessera bench`) or `quick` (a small subset).
    #[arg(long, default_value = "standard")]
    pub suite: String,
    /// `cuda` or `vulkan`.
    #[arg(long, default_value = "cuda")]
    pub backend: String,
    /// Only the MLA decode shapes whose key contains this (as `tessera bench --mla-shapes`).
    #[arg(long)]
    pub mla_shapes: Option<String>,
    /// Also print every candidate's time under each shape, fastest first (CUDA).
    #[arg(long)]
    pub all_times: bool,
}

type Job<'a> = (String, Box<dyn Fn() -> Result<TuneOutcome, String> + 'a>);

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
    if args.backend == "vulkan" {
        return run_vulkan(ops, args);
    }
    if args.backend != "cuda" {
        return Err(format!("--backend: expected cuda or vulkan, got {}", args.backend).into());
    }
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
                Box::new(move || {
                    be.tune_fp8_gemm(&Fp8Gemm::new(m, n, k))
                        .map_err(|e| e.to_string())
                }),
            ));
        }
    }
    if ops.contains(&"attention") {
        for case in &suite.attention {
            for radial in [true, false] {
                let work = case.work(radial);
                jobs.push((
                    attention_name(case, radial),
                    Box::new(move || {
                        let w = work.as_ref()?;
                        be.tune_sparse_attention(&w.op, &w.mask)
                            .map_err(|e| e.to_string())
                    }),
                ));
            }
        }
    }
    if ops.contains(&"mla") {
        for shape in suite.mla.iter().filter(|s| keep_mla(args, s)) {
            let op = shape.op();
            let s_k = shape.s_k;
            jobs.push((
                format!("mla_decode {}", shape.key()),
                Box::new(move || be.tune_mla_decode(&op, s_k).map_err(|e| e.to_string())),
            ));
        }
    }
    let start = Instant::now();
    let total = jobs.len();
    let mut failed = 0;
    for (i, (name, job)) in jobs.iter().enumerate() {
        let line = match job() {
            Ok(outcome) if args.all_times => {
                let mut lines = vec![outcome.summary()];
                lines.extend(outcome.ranking().iter().map(|l| format!("    {l}")));
                lines.join("\n")
            }
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
    finish(backend.plans().save()?, failed, total)
}

/// The progress name of an attention shape: `attention <key> radial|dense`.
fn attention_name(case: &AttentionCase, radial: bool) -> String {
    let kind = if radial { "radial" } else { "dense" };
    format!("attention {} {kind}", case.key())
}

/// Whether `--mla-shapes` keeps `shape`.
fn keep_mla(args: &TuneArgs, shape: &MlaShape) -> bool {
    args.mla_shapes
        .as_deref()
        .is_none_or(|f| shape.key().contains(f))
}

/// `tessera tune --backend vulkan`: every FP8 GEMM, attention (radial and dense) and MLA decode
/// candidate of the suite's shapes (variable query lengths left out: the Vulkan backend has no
/// such decode), the fastest stored per shape class and written to the Vulkan plan file.
fn run_vulkan(ops: &[&str], args: &TuneArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let suite = Suite::named(&args.suite, "vulkan")?;
    let backend = VulkanBackend::new()?;
    let timer = Timer::new(&backend)?;
    eprintln!("tuning on {}", tessera::Backend::device(&backend).name);
    let start = Instant::now();
    let mut failed = 0;
    let mut shapes_tried = 0;
    let gemm_shapes: &[(usize, usize, usize)] = if ops.contains(&"gemm") {
        &suite.gemm
    } else {
        &[]
    };
    for &(m, n, k) in gemm_shapes {
        shapes_tried += 1;
        let op = Fp8Gemm::new(m, n, k);
        let name = format!("fp8_gemm {}", gemm_key(m, n, k));
        let timed = backend
            .fp8_gemm_candidates(&op)
            .map_err(|e| e.to_string())
            .map(|candidates| {
                candidates
                    .into_iter()
                    .map(|kernel| {
                        let t = time_gemm_kernel(&backend, &timer, &op, kernel);
                        (kernel, t.map(|t| t.0))
                    })
                    .collect::<Vec<_>>()
            });
        let (best, line) = fastest(timed, |k| k.name().to_string());
        match best {
            Some(kernel) => backend.plans().set_fp8_gemm(Fp8GemmClass::of(&op), kernel),
            None => failed += 1,
        }
        eprintln!("{:6.1} s  {name}: {line}", start.elapsed().as_secs_f64());
    }
    let attention_cases: &[AttentionCase] = if ops.contains(&"attention") {
        &suite.attention
    } else {
        &[]
    };
    for case in attention_cases {
        for radial in [true, false] {
            shapes_tried += 1;
            let work = case.work(radial);
            let timed = work.as_ref().map_err(Clone::clone).map(|w| {
                backend
                    .attention_candidates(&w.op, &w.mask)
                    .into_iter()
                    .map(|kernel| {
                        let t = time_attention_kernel(&backend, &timer, &w.op, &w.mask, kernel);
                        (kernel, t.map(|t| t.0))
                    })
                    .collect::<Vec<_>>()
            });
            let (best, line) = fastest(timed, |k| k.name().to_string());
            match (best, &work) {
                (Some(kernel), Ok(w)) => backend
                    .plans()
                    .set_attention(AttentionClass::of(&w.op, &w.mask), kernel),
                _ => failed += 1,
            }
            let name = attention_name(case, radial);
            eprintln!("{:6.1} s  {name}: {line}", start.elapsed().as_secs_f64());
        }
    }
    let mla_formats: &[bool] = if ops.contains(&"mla") {
        &[false, true]
    } else {
        &[]
    };
    for &fp8 in mla_formats {
        let shapes: Vec<MlaShape> = suite
            .mla
            .iter()
            .filter(|s| s.fp8 == fp8 && !s.varlen && keep_mla(args, s))
            .copied()
            .collect();
        if shapes.is_empty() {
            continue;
        }
        let bench = match MlaBench::new(&backend, &shapes) {
            Ok(b) => b,
            Err(e) => {
                eprintln!(
                    "{} shapes ({}): {e}",
                    shapes.len(),
                    if fp8 { "fp8" } else { "bf16" }
                );
                continue;
            }
        };
        for shape in &shapes {
            shapes_tried += 1;
            let name = format!("mla_decode {}", shape.key());
            let timed = bench.time_candidates(&backend, &timer, shape).map(|all| {
                all.into_iter()
                    .map(|(k, t)| (k, t.map(|t| t.median_ms)))
                    .collect::<Vec<_>>()
            });
            let (best, line) = fastest(timed, |k| format!("{k:?}"));
            match best {
                Some(kernel) => backend
                    .plans()
                    .set_mla_decode(MlaDecodeClass::of(&shape.op()), kernel),
                None => failed += 1,
            }
            eprintln!("{:6.1} s  {name}: {line}", start.elapsed().as_secs_f64());
        }
    }
    finish(backend.plans().save()?, failed, shapes_tried)
}

/// Says where the plans were written (`saved`: the plan file, if one was) and how many of
/// `total` shapes failed; exit code 1 if any did.
fn finish(
    saved: Option<std::path::PathBuf>,
    failed: usize,
    total: usize,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match saved {
        Some(path) => println!("wrote the tuned plans to {}", path.display()),
        None => println!("no plan file written (no cache folder, or nothing tuned)"),
    }
    if failed > 0 {
        eprintln!("{failed} of {total} shapes failed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The candidates of one shape, each with its time in ms or why it failed (the heuristic's pick
/// first), or why none could be listed.
type Timed<K> = Result<Vec<(K, Result<f64, String>)>, String>;

/// The fastest of the candidates timed for one shape (ms, or why each failed; the heuristic's
/// pick first), if any ran, and a line saying so: how many, how many failed, the best (named by
/// `name`) and its speed-up over the first.
fn fastest<K: Copy>(timed: Timed<K>, name: impl Fn(&K) -> String) -> (Option<K>, String) {
    let timed = match timed {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => return (None, "no candidates".into()),
        Err(e) => return (None, format!("error: {e}")),
    };
    let ok: Vec<(K, f64)> = timed
        .iter()
        .filter_map(|(k, t)| t.as_ref().ok().map(|&ms| (*k, ms)))
        .collect();
    let Some(&(best, ms)) = ok.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else {
        return (
            None,
            format!("every candidate failed: {:?}", timed[0].1.as_ref().err()),
        );
    };
    let default = timed[0].1.as_ref().ok().map_or(String::new(), |d| {
        format!(" (default {d:.4} ms, {:.2}x)", d / ms)
    });
    (
        Some(best),
        format!(
            "{} candidates ({} failed), best {} {ms:.4} ms{default}",
            timed.len(),
            timed.len() - ok.len(),
            name(&best)
        ),
    )
}
