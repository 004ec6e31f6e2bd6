//! `tessera bench`: times the standard shapes (FACTS.md) on the CUDA backend through its device
//! API (no copies, one stream), with the ceilings (copy bandwidth, dense bf16 matmul) measured in
//! the same run, and writes the JSON of [`crate::schema`]; optionally the radial masks as JSON
//! (for `ci/peers.py`, which must use the very same BSR) and the Markdown table and plots.
//!
//! Timing: one warm-up launch (compiles the kernel), a second when the first took under 50 ms,
//! then `reps` launches each between two CUDA events recorded on the stream (all read after the
//! last), median and minimum reported. `reps` is chosen so the timed launches take about
//! [`BUDGET_S`] (3 to 100). FP8 GEMM rotates over enough input/output sets to exceed 200 MB, so
//! L2 (50 MB on the H200) does not hold the operands across launches; MLA decode and attention
//! use one set (their working set is far beyond L2).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use half::bf16;
use serde_json::json;
use tessera::cuda::{CudaBackend, DeviceBlockMask, DeviceHalf, DeviceHalfMut, MlaDecodeBuffers};
use tessera::{
    BlockMask, DType, Fp8Gemm, MlaCacheFormat, MlaCacheLayout, MlaDecode, RadialMaskConfig,
    SparseAttention,
};

use crate::schema::{fill_rates, utc_now, BenchFile, Ceilings, Header, Record};

/// Seconds of timed launches aimed at per measurement.
const BUDGET_S: f64 = 0.3;
/// Bytes of operands the FP8 GEMM rotates over (about 4x the H200's L2).
const ROTATE_BYTES: usize = 200 << 20;

type Res<T> = Result<T, String>;

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
    /// Only the ops whose name contains this (fp8_gemm, mla_decode, attention).
    #[arg(long)]
    pub only: Option<String>,
    /// Vulkan only: seconds after which the remaining shapes are skipped (and reported so).
    #[arg(long, value_name = "SECONDS", default_value_t = 170.0)]
    pub budget_s: f64,
}

/// An attention case: a published radial setting at a multiple of its frames.
#[derive(Clone, Debug)]
pub struct AttentionCase {
    /// `hunyuan` or `wan`.
    pub model: &'static str,
    /// Latent frames.
    pub frames: usize,
    /// Heads.
    pub heads: usize,
    /// The mask's configuration.
    pub config: RadialMaskConfig,
}

impl AttentionCase {
    /// The shape key shared with the peers.
    pub fn key(&self) -> String {
        format!(
            "{} F{} T{} h{}",
            self.model, self.frames, self.config.tokens_per_frame, self.heads
        )
    }

    /// The mask file name.
    pub fn mask_file(&self) -> String {
        format!("{}_F{}.json", self.model, self.frames)
    }
}

/// The standard (or quick) suite's shapes.
pub struct Suite {
    /// (M, N, K).
    pub gemm: Vec<(usize, usize, usize)>,
    /// (batch, s_k, heads, s_q, fp8).
    pub mla: Vec<(usize, usize, usize, usize, bool)>,
    /// Radial attention cases (each also timed dense).
    pub attention: Vec<AttentionCase>,
}

pub(crate) fn attention_case(model: &'static str, mult: usize) -> AttentionCase {
    let (frames, heads, decay, sink) = match model {
        "hunyuan" => (30, 24, 0.95, false),
        _ => (18, 40, 0.2, true),
    };
    AttentionCase {
        model,
        frames: frames * mult,
        heads,
        config: RadialMaskConfig {
            frames: frames * mult,
            tokens_per_frame: 3840,
            extra_tokens: 0,
            block_size: 128,
            decay,
            sink,
        },
    }
}

/// The shapes of `name` (`standard` or `quick`).
pub fn suite(name: &str) -> Res<Suite> {
    match name {
        "standard" => {
            let nk = [
                (2112, 7168),
                (24576, 1536),
                (32768, 512),
                (7168, 16384),
                (4096, 7168),
                (7168, 2048),
            ];
            let gemm = [64, 128, 4096]
                .iter()
                .flat_map(|&m| nk.iter().map(move |&(n, k)| (m, n, k)))
                .collect();
            let mut mla = Vec::new();
            for fp8 in [false, true] {
                for b in [64, 128] {
                    for s_k in [4096, 8192, 32768] {
                        for h in [16, 128] {
                            for s_q in [1, 2] {
                                mla.push((b, s_k, h, s_q, fp8));
                            }
                        }
                    }
                }
            }
            let attention = ["hunyuan", "wan"]
                .iter()
                .flat_map(|m| [1, 2, 4].map(|x| attention_case(m, x)))
                .collect();
            Ok(Suite {
                gemm,
                mla,
                attention,
            })
        }
        "quick" => Ok(Suite {
            gemm: vec![(64, 2112, 7168), (4096, 7168, 2048)],
            mla: vec![(64, 4096, 128, 1, false), (64, 4096, 128, 1, true)],
            attention: vec![attention_case("wan", 1)],
        }),
        other => Err(format!("--suite: expected standard or quick, got {other}")),
    }
}

/// The shape key of an FP8 GEMM.
pub fn gemm_key(m: usize, n: usize, k: usize) -> String {
    format!("M{m} N{n} K{k}")
}

/// The shape key of an MLA decode.
pub fn mla_key(b: usize, s_k: usize, h: usize, s_q: usize, fp8: bool) -> String {
    format!(
        "b{b} sk{s_k} hq{h} sq{s_q} {}",
        if fp8 { "fp8" } else { "bf16" }
    )
}

/// Runs `tessera bench`.
pub fn run(args: &BenchArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.backend == "vulkan" {
        return crate::bench_vk::run(args);
    }
    if args.backend != "cuda" {
        return Err(format!(
            "--backend {}: cuda and vulkan can be benchmarked (the CPU backend has no device API \
             to time without copies)",
            args.backend
        )
        .into());
    }
    let suite = suite(&args.suite)?;
    let wants = |op: &str| args.only.as_ref().is_none_or(|o| op.contains(o.as_str()));
    if let Some(dir) = &args.masks {
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
    }
    let backend = CudaBackend::new().map_err(|e| format!("no CUDA device: {e}"))?;
    let stream = backend.stream().clone();
    let device = backend.context().name().unwrap_or_default();
    eprintln!("device: {device}");

    let ceilings = measure_ceilings(&stream);
    eprintln!(
        "ceilings: copy {} GB/s, matmul {} TFLOPS ({})",
        fmt_opt(ceilings.copy_gbps),
        fmt_opt(ceilings.matmul_tflops),
        ceilings.matmul_impl
    );
    let mut file = BenchFile {
        header: Header {
            tool: "tessera".into(),
            device,
            date: utc_now(),
            commit: commit(),
            backend: "cuda".into(),
            suite: args.suite.clone(),
            ceilings: ceilings.clone(),
            notes: vec![
                "time: median of CUDA-event-timed launches after warm-up; reps chosen for ~0.3 s (3..100)".into(),
                "fp8_gemm: FLOP 2MNK; bytes A + B + D + scales; inputs rotated over >= 200 MB of sets (L2 flushed by rotation)".into(),
                "mla_decode: FLOP 2 b s_q h s_k (576 + 512); bytes cache (b s_k token_bytes) + q + o; pages of 64 in a shuffled block table; one set".into(),
                "attention: bf16, head_dim 128, batch 1; FLOP 4 B^2 d h nnz (every on block in full); bytes q + k + v + o; one set".into(),
            ],
        },
        records: Vec::new(),
    };
    let total = if wants("fp8_gemm") {
        suite.gemm.len()
    } else {
        0
    } + if wants("mla_decode") {
        suite.mla.len()
    } else {
        0
    } + if wants("attention") {
        2 * suite.attention.len()
    } else {
        0
    };
    // Written after every measurement, so a run cut short still leaves its results.
    let save = |file: &BenchFile| {
        if let Err(e) = file.save_to(args.json.as_deref()) {
            eprintln!("warning: {e}");
        }
    };
    let mut progress = Progress {
        done: 0,
        total,
        start: Instant::now(),
    };
    if wants("fp8_gemm") {
        for &(m, n, k) in &suite.gemm {
            progress.show(&format!("fp8_gemm {}", gemm_key(m, n, k)));
            let mut rec = bench_gemm(&backend, &stream, m, n, k);
            let op = Fp8Gemm::new(m, n, k);
            let bytes =
                (m * k + n * k + 2 * m * n + 4 * (op.a_scales_len() + op.b_scales_len())) as f64;
            fill_rates(&mut rec, op.flops(), bytes, &ceilings);
            file.records.push(rec);
            save(&file);
        }
    }
    if wants("mla_decode") {
        for fp8 in [false, true] {
            let shapes: Vec<_> = suite.mla.iter().filter(|s| s.4 == fp8).copied().collect();
            if shapes.is_empty() {
                continue;
            }
            let mut mla = MlaBench::new(&stream, &shapes, fp8);
            for &(b, s_k, h, s_q, _) in &shapes {
                progress.show(&format!("mla_decode {}", mla_key(b, s_k, h, s_q, fp8)));
                let rec = match &mut mla {
                    Ok(mla) => mla.bench(&backend, &stream, b, s_k, h, s_q, &ceilings),
                    Err(e) => failed(
                        "mla_decode",
                        mla_key(b, s_k, h, s_q, fp8),
                        "tessera",
                        e.clone(),
                    ),
                };
                file.records.push(rec);
                save(&file);
            }
        }
    }
    if wants("attention") {
        for case in &suite.attention {
            for radial in [true, false] {
                progress.show(&format!(
                    "attention {} {}",
                    case.key(),
                    if radial { "radial" } else { "dense" }
                ));
                file.records
                    .push(bench_attention(&backend, &stream, case, radial, &ceilings));
                save(&file);
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
        eprintln!("{errors} measurements failed (see their `error`)");
    }
    Ok(ExitCode::SUCCESS)
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.0}"))
}

/// The commit measured: `TESSERA_COMMIT`, else `git rev-parse --short HEAD`, else `unknown`.
pub(crate) fn commit() -> String {
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
pub(crate) struct Progress {
    pub(crate) done: usize,
    pub(crate) total: usize,
    pub(crate) start: Instant,
}

impl Progress {
    pub(crate) fn show(&mut self, what: &str) {
        self.done += 1;
        eprint!(
            "\r\x1b[2K[{:>3}/{}] {:6.1} s  {what}",
            self.done,
            self.total,
            self.start.elapsed().as_secs_f64()
        );
    }

    pub(crate) fn finish(&self) {
        eprintln!(
            "\r\x1b[2K{} measurements in {:.1} s",
            self.total,
            self.start.elapsed().as_secs_f64()
        );
    }
}

pub(crate) fn print_summary(file: &BenchFile) {
    println!(
        "{:<11} {:<28} {:<16} {:>10} {:>9} {:>9} {:>7} {:>7}",
        "op", "shape", "impl", "ms", "TFLOPS", "GB/s", "%mm", "%copy"
    );
    for r in &file.records {
        match &r.error {
            Some(e) => println!(
                "{:<11} {:<28} {:<16} error: {e}",
                r.op, r.shape, r.implementation
            ),
            None => println!(
                "{:<11} {:<28} {:<16} {:>10.4} {:>9.1} {:>9.0} {:>7.1} {:>7.1}",
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

pub(crate) fn failed(op: &str, shape: String, implementation: &str, error: String) -> Record {
    Record {
        op: op.into(),
        shape,
        implementation: implementation.into(),
        error: Some(error),
        ..Default::default()
    }
}

/// (median ms, min ms, reps) of `launch(i)` (i counts every launch, warm-ups included).
fn time_launches(
    stream: &Arc<CudaStream>,
    mut launch: impl FnMut(usize) -> Res<()>,
) -> Res<(f64, f64, usize)> {
    let sync = |s: &Arc<CudaStream>| s.synchronize().map_err(|e| format!("synchronize: {e}"));
    let mut i = 0;
    let t = Instant::now();
    launch(i)?;
    i += 1;
    sync(stream)?;
    let mut estimate = t.elapsed().as_secs_f64();
    if estimate < 0.05 {
        let t = Instant::now();
        launch(i)?;
        i += 1;
        sync(stream)?;
        estimate = t.elapsed().as_secs_f64();
    }
    let reps = ((BUDGET_S / estimate.max(1e-6)) as usize).clamp(3, 100);
    let event = |s: &Arc<CudaStream>| {
        s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| format!("record_event: {e}"))
    };
    let mut events = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = event(stream)?;
        launch(i)?;
        i += 1;
        let end = event(stream)?;
        events.push((start, end));
    }
    sync(stream)?;
    let mut ms = events
        .iter()
        .map(|(s, e)| {
            s.elapsed_ms(e)
                .map(f64::from)
                .map_err(|e| format!("elapsed: {e}"))
        })
        .collect::<Res<Vec<f64>>>()?;
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[0], reps))
}

/// Allocates `len` elements (at least 1) and fills them by repeating `pattern` (uploaded once,
/// then copied on the device).
fn alloc_filled<T: DeviceRepr + ValidAsZeroBits + Copy>(
    stream: &Arc<CudaStream>,
    len: usize,
    pattern: &[T],
) -> Res<CudaSlice<T>> {
    let len = len.max(1);
    let mut dst = stream
        .alloc_zeros::<T>(len)
        .map_err(|e| format!("alloc {len} elements: {e}"))?;
    let pat = stream
        .clone_htod(&pattern[..pattern.len().min(len)])
        .map_err(|e| format!("upload: {e}"))?;
    let step = pat.len();
    let mut at = 0;
    while at < len {
        let n = step.min(len - at);
        let mut view = dst.slice_mut(at..at + n);
        stream
            .memcpy_dtod(&pat.slice(0..n), &mut view)
            .map_err(|e| format!("fill: {e}"))?;
        at += n;
    }
    Ok(dst)
}

/// SplitMix64.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub(crate) fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// A finite E4M3 code of moderate magnitude (exponent field 4..=10).
    pub(crate) fn e4m3(&mut self) -> u8 {
        let r = self.next();
        (((r & 1) as u8) << 7) | ((4 + ((r >> 1) % 7) as u8) << 3) | ((r >> 4) & 7) as u8
    }

    pub(crate) fn bf16s(&mut self, n: usize, amp: f32) -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(self.uniform(-amp, amp)))
            .collect()
    }
}

/// The ceilings: a 1 GiB device-to-device copy (read + write bytes) and a bf16 8192^3 cuBLAS
/// matmul (libcublas loaded at run time; `None` with the reason in `matmul_impl` if absent).
fn measure_ceilings(stream: &Arc<CudaStream>) -> Ceilings {
    let mut c = Ceilings::default();
    let copy = || -> Res<f64> {
        let n = 1usize << 30;
        let src = alloc_filled::<u8>(stream, n, &[1u8; 4096])?;
        let mut dst = stream
            .alloc_zeros::<u8>(n)
            .map_err(|e| format!("alloc: {e}"))?;
        let (ms, _, _) = time_launches(stream, |_| {
            stream
                .memcpy_dtod(&src, &mut dst)
                .map_err(|e| format!("copy: {e}"))
        })?;
        Ok(2.0 * n as f64 / (ms * 1e-3) / 1e9)
    };
    match copy() {
        Ok(g) => c.copy_gbps = Some(g),
        Err(e) => eprintln!("copy ceiling: {e}"),
    }
    match matmul_ceiling(stream) {
        Ok(t) => {
            c.matmul_tflops = Some(t);
            c.matmul_impl = "cuBLAS bf16 8192^3 (f32 accumulate)".into();
        }
        Err(e) => {
            eprintln!("matmul ceiling: {e}");
            c.matmul_impl = format!("not measured: {e}");
        }
    }
    c
}

fn matmul_ceiling(stream: &Arc<CudaStream>) -> Res<f64> {
    use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
    // cudarc panics when the library is missing: probe it first, quietly.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    // SAFETY: loads libcublas (a plain shared library) and keeps it for the process.
    let found = std::panic::catch_unwind(|| unsafe { cudarc::cublas::sys::culib() }).is_ok();
    std::panic::set_hook(hook);
    if !found {
        return Err("libcublas.so not found (put it on LD_LIBRARY_PATH)".into());
    }
    let n = 8192usize;
    let mut rng = Rng(5);
    let pattern = rng.bf16s(1 << 20, 1.0);
    let a = alloc_filled(stream, n * n, &pattern)?;
    let b = alloc_filled(stream, n * n, &pattern)?;
    let mut c = stream
        .alloc_zeros::<bf16>(n * n)
        .map_err(|e| format!("alloc: {e}"))?;
    let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cublas: {e:?}"))?;
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: n as i32,
        k: n as i32,
        alpha: bf16::ONE,
        lda: n as i32,
        ldb: n as i32,
        beta: bf16::ZERO,
        ldc: n as i32,
    };
    let (ms, _, _) = time_launches(stream, |_| {
        // SAFETY: a, b and c hold n*n elements each, column-major with leading dimension n,
        // as cfg says.
        unsafe { blas.gemm(cfg, &a, &b, &mut c) }.map_err(|e| format!("gemm: {e:?}"))
    })?;
    Ok(2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e12)
}

/// One FP8 GEMM shape, rotating over operand sets.
fn bench_gemm(
    backend: &CudaBackend,
    stream: &Arc<CudaStream>,
    m: usize,
    n: usize,
    k: usize,
) -> Record {
    let key = gemm_key(m, n, k);
    let op = Fp8Gemm::new(m, n, k);
    let inner = || -> Res<Record> {
        let set_bytes = m * k + n * k + 2 * m * n;
        let sets = ROTATE_BYTES.div_ceil(set_bytes).clamp(1, 16);
        let mut rng = Rng(11);
        let codes: Vec<u8> = (0..1 << 22).map(|_| rng.e4m3()).collect();
        let scales: Vec<f32> = (0..4096)
            .map(|_| 2f32.powf(rng.uniform(-8.0, -6.0)))
            .collect();
        let mut bufs = Vec::with_capacity(sets);
        for _ in 0..sets {
            bufs.push((
                alloc_filled(stream, m * k, &codes)?,
                alloc_filled(stream, op.a_scales_len(), &scales)?,
                alloc_filled(stream, n * k, &codes)?,
                alloc_filled(stream, op.b_scales_len(), &scales)?,
                stream
                    .alloc_zeros::<bf16>(m * n)
                    .map_err(|e| format!("alloc: {e}"))?,
            ));
        }
        let (median, min, reps) = time_launches(stream, |i| {
            let (a, sa, b, sb, d) = &mut bufs[i % sets];
            backend
                .fp8_gemm_on(
                    stream,
                    &op,
                    &a.as_view(),
                    &sa.as_view(),
                    &b.as_view(),
                    &sb.as_view(),
                    &mut d.as_view_mut(),
                )
                .map_err(|e| e.to_string())
        })?;
        Ok(Record {
            op: "fp8_gemm".into(),
            shape: key.clone(),
            implementation: "tessera".into(),
            params: [("m", m), ("n", n), ("k", k), ("sets", sets)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
            time_ms: Some(median),
            min_ms: Some(min),
            reps,
            ..Default::default()
        })
    };
    inner().unwrap_or_else(|e| failed("fp8_gemm", key.clone(), "tessera", e))
}

/// One paged cache per format, large enough for every shape of the suite, filled with valid
/// records (finite values, FP8 scales 2^-6).
struct MlaBench {
    layout: MlaCacheLayout,
    cache: CudaSlice<u8>,
    pages: usize,
}

impl MlaBench {
    fn new(
        stream: &Arc<CudaStream>,
        shapes: &[(usize, usize, usize, usize, bool)],
        fp8: bool,
    ) -> Res<Self> {
        let layout = MlaCacheLayout {
            format: if fp8 {
                MlaCacheFormat::Fp8
            } else {
                MlaCacheFormat::Bf16
            },
            ..MlaCacheLayout::default()
        };
        let pages = shapes
            .iter()
            .map(|s| s.0 * s.1.div_ceil(layout.page_size))
            .max()
            .unwrap_or(1);
        // A pattern of 256 pages of valid records, repeated.
        let tb = layout.token_bytes();
        let mut rng = Rng(21);
        let mut pattern = vec![0u8; 256 * layout.page_bytes()];
        for rec in pattern.chunks_exact_mut(tb) {
            match layout.format {
                MlaCacheFormat::Bf16 => {
                    for v in rec.chunks_exact_mut(2) {
                        v.copy_from_slice(&bf16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes());
                    }
                }
                MlaCacheFormat::Fp8 => {
                    let (latent, rest) = rec.split_at_mut(layout.latent_dim);
                    latent.iter_mut().for_each(|b| *b = rng.e4m3());
                    let (sc, rope) = rest.split_at_mut(4 * layout.fp8_groups());
                    for s in sc.chunks_exact_mut(4) {
                        s.copy_from_slice(&(1.0f32 / 64.0).to_le_bytes());
                    }
                    for v in rope.chunks_exact_mut(2) {
                        v.copy_from_slice(&bf16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes());
                    }
                }
            }
        }
        let cache = alloc_filled(stream, pages * layout.page_bytes(), &pattern)?;
        Ok(Self {
            layout,
            cache,
            pages,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn bench(
        &mut self,
        backend: &CudaBackend,
        stream: &Arc<CudaStream>,
        b: usize,
        s_k: usize,
        h: usize,
        s_q: usize,
        ceilings: &Ceilings,
    ) -> Record {
        let fp8 = self.layout.format == MlaCacheFormat::Fp8;
        let key = mla_key(b, s_k, h, s_q, fp8);
        let layout = self.layout;
        let max_pages = s_k.div_ceil(layout.page_size);
        let op = MlaDecode {
            batch: b,
            s_q,
            heads: h,
            max_pages,
            softmax_scale: 192f32.powf(-0.5),
            layout,
        };
        let inner = || -> Res<Record> {
            let used = b * max_pages;
            if used > self.pages {
                return Err("cache too small".into());
            }
            // A shuffled block table over the first `used` pages.
            let mut rng = Rng(31 + b as u64);
            let mut table: Vec<i32> = (0..used as i32).collect();
            for i in (1..table.len()).rev() {
                table.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            let table = stream
                .clone_htod(&table)
                .map_err(|e| format!("upload: {e}"))?;
            let lens = stream
                .clone_htod(&vec![s_k as i32; b])
                .map_err(|e| format!("upload: {e}"))?;
            let q = alloc_filled(stream, op.q_len(), &rng.bf16s(1 << 16, 1.0))?;
            let mut o = stream
                .alloc_zeros::<bf16>(op.o_len())
                .map_err(|e| format!("alloc: {e}"))?;
            let mut lse = stream
                .alloc_zeros::<f32>(op.lse_len())
                .map_err(|e| format!("alloc: {e}"))?;
            let plan = backend
                .mla_decode_plan(&op, s_k)
                .map_err(|e| e.to_string())?;
            let mut ws = stream
                .alloc_zeros::<f32>(plan.workspace_len().max(1))
                .map_err(|e| format!("alloc: {e}"))?;
            let cache_len = self.pages * layout.page_bytes();
            let (median, min, reps) = time_launches(stream, |_| {
                let mut bufs = MlaDecodeBuffers {
                    cache: self.cache.slice(0..cache_len),
                    q: q.as_view(),
                    block_table: table.as_view(),
                    seq_lens: lens.as_view(),
                    o: o.as_view_mut(),
                    lse: lse.as_view_mut(),
                    workspace: ws.as_view_mut(),
                };
                backend
                    .mla_decode_on(stream, &op, &plan, &mut bufs)
                    .map_err(|e| e.to_string())
            })?;
            let lse_host = stream
                .clone_dtoh(&lse)
                .map_err(|e| format!("download: {e}"))?;
            if !lse_host.iter().all(|x| x.is_finite()) {
                return Err("non-finite lse in the timed output".into());
            }
            Ok(Record {
                op: "mla_decode".into(),
                shape: key.clone(),
                implementation: "tessera".into(),
                params: [
                    ("b", json!(b)),
                    ("s_k", json!(s_k)),
                    ("h_q", json!(h)),
                    ("s_q", json!(s_q)),
                    ("cache", json!(if fp8 { "fp8" } else { "bf16" })),
                    ("splits", json!(plan.splits())),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
                time_ms: Some(median),
                min_ms: Some(min),
                reps,
                ..Default::default()
            })
        };
        let mut rec = inner().unwrap_or_else(|e| failed("mla_decode", key.clone(), "tessera", e));
        let flops = 2.0 * (b * s_q * h * s_k) as f64 * (layout.qk_dim() + layout.latent_dim) as f64;
        let bytes =
            (b * s_k * layout.token_bytes()) as f64 + 2.0 * (op.q_len() + op.o_len()) as f64;
        fill_rates(&mut rec, flops, bytes, ceilings);
        rec
    }
}

/// One attention case, radial or dense.
fn bench_attention(
    backend: &CudaBackend,
    stream: &Arc<CudaStream>,
    case: &AttentionCase,
    radial: bool,
    ceilings: &Ceilings,
) -> Record {
    let name = if radial {
        "tessera radial"
    } else {
        "tessera dense"
    };
    let key = case.key();
    let head_dim = 128;
    let inner = || -> Res<(Record, f64, f64)> {
        let tokens = case.config.tokens();
        let mask = if radial {
            case.config.build().map_err(|e| e.to_string())?
        } else {
            BlockMask::dense(tokens, 128).map_err(|e| e.to_string())?
        };
        let op = SparseAttention::new(1, tokens, case.heads, head_dim, DType::BF16);
        let dmask = DeviceBlockMask::new(stream, &mask).map_err(|e| e.to_string())?;
        let mut rng = Rng(41);
        let pattern = rng.bf16s(1 << 20, 2.0);
        let q = alloc_filled(stream, op.qkv_len(), &pattern)?;
        let k = alloc_filled(stream, op.qkv_len(), &pattern[7..])?;
        let v = alloc_filled(stream, op.qkv_len(), &pattern[13..])?;
        let mut o = stream
            .alloc_zeros::<bf16>(op.qkv_len())
            .map_err(|e| format!("alloc: {e}"))?;
        let mut lse = stream
            .alloc_zeros::<f32>(op.lse_len())
            .map_err(|e| format!("alloc: {e}"))?;
        let (median, min, reps) = time_launches(stream, |_| {
            backend
                .sparse_attention_on(
                    stream,
                    &op,
                    &dmask,
                    &DeviceHalf::BF16(q.as_view()),
                    &DeviceHalf::BF16(k.as_view()),
                    &DeviceHalf::BF16(v.as_view()),
                    &mut DeviceHalfMut::BF16(o.as_view_mut()),
                    &mut lse.as_view_mut(),
                )
                .map_err(|e| e.to_string())
        })?;
        let flops = op.flops(&mask);
        let bytes = 4.0 * 2.0 * op.qkv_len() as f64;
        let rec = Record {
            op: "attention".into(),
            shape: key.clone(),
            implementation: name.into(),
            params: [
                ("model", json!(case.model)),
                ("frames", json!(case.frames)),
                ("tokens", json!(tokens)),
                ("heads", json!(case.heads)),
                ("head_dim", json!(head_dim)),
                ("density", json!(mask.density())),
                ("nnz", json!(mask.nnz())),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            time_ms: Some(median),
            min_ms: Some(min),
            reps,
            ..Default::default()
        };
        Ok((rec, flops, bytes))
    };
    match inner() {
        Ok((mut rec, flops, bytes)) => {
            fill_rates(&mut rec, flops, bytes, ceilings);
            rec
        }
        Err(e) => failed("attention", key, name, e),
    }
}
