//! `tessera bench --backend vulkan`: the standard shapes on the Vulkan backend's device API, in
//! the JSON of [`crate::schema`] (impl `tessera-vulkan`, `tessera-vulkan radial`,
//! `tessera-vulkan dense`).
//!
//! Buffers are device-local, filled once with random data (never zeros) through a host staging
//! buffer. Timing ([`crate::vk_timing`]): a batch records `n` dispatches of the op into one
//! command buffer between two timestamps, with a memory barrier after each (so dispatches run
//! one after the other, as launches on one CUDA stream); the time of one dispatch is the batch's
//! over `n`. A first batch of one dispatch is the warm-up (the pipeline is created while
//! recording it) and sets `n` (batches of about [`BATCH_MS`]) and the number of batches (up to
//! [`BATCHES`], about [`MEASURE_S`] in all); median and minimum over the batches are reported.
//! Shapes whose buffers exceed `maxStorageBufferRange` are skipped with the reason, as are those
//! predicted to take over [`MAX_DISPATCH_S`] per dispatch, and everything once the suite has
//! run `--budget-s` seconds (170 by default).

use std::process::ExitCode;
use std::time::Instant;

use half::bf16;
use serde_json::json;
use tessera::vulkan::ops::attention::VulkanBlockMask;
use tessera::vulkan::{Buffer, BufferRange, VulkanBackend};
use tessera::{
    Backend, BlockMask, DType, Fp8Gemm, MlaCacheFormat, MlaCacheLayout, MlaDecode,
    RadialMaskConfig, SparseAttention,
};

use crate::bench::{
    attention_case, commit, failed, gemm_key, mla_key, print_summary, suite, AttentionCase,
    BenchArgs, Progress, Rng, Suite,
};
use crate::schema::{fill_rates, utc_now, BenchFile, Ceilings, Header, Record};
use crate::vk_timing::{device_buffer, download, record_copy, Timer};

type Res<T> = Result<T, String>;

/// Milliseconds aimed at per batch.
const BATCH_MS: f64 = 50.0;
/// Most batches per measurement.
const BATCHES: usize = 5;
/// Seconds aimed at per measurement (fewer batches for slow shapes).
const MEASURE_S: f64 = 0.4;
/// A shape whose warm-up dispatch takes longer than this is reported from that one dispatch.
const SINGLE_S: f64 = 2.0;
/// Shapes predicted (from the rate of the previous shape of the op) to take longer per dispatch
/// are skipped.
const MAX_DISPATCH_S: f64 = 8.0;
/// Bytes of operands the FP8 GEMM rotates over (as the CUDA bench).
const ROTATE_BYTES: usize = 200 << 20;

const IMPL: &str = "tessera-vulkan";

/// The shapes: the CUDA suite for `standard`; for `quick`, small shapes that run in seconds on
/// lavapipe.
fn vk_suite(name: &str) -> Res<Suite> {
    match name {
        "quick" => {
            let mut small = attention_case("hunyuan", 1);
            small.frames = 4;
            small.heads = 2;
            small.config = RadialMaskConfig {
                frames: 4,
                tokens_per_frame: 512,
                ..small.config
            };
            Ok(Suite {
                gemm: vec![(64, 2112, 7168)],
                mla: vec![(4, 1024, 16, 1, false), (4, 1024, 16, 1, true)],
                attention: vec![small],
            })
        }
        other => suite(other),
    }
}

/// Times `record(cmd, i)`: (median ms, min ms, dispatches timed, dispatches per batch).
fn time_dispatches(
    timer: &Timer,
    mut record: impl FnMut(tessera::vulkan::ash::vk::CommandBuffer, usize) -> Res<()>,
) -> Res<(f64, f64, usize, usize)> {
    let mut i = 0;
    let mut rec = |cmd: tessera::vulkan::ash::vk::CommandBuffer, _: usize| {
        let r = record(cmd, i);
        i += 1;
        r
    };
    let warm = timer.batch(1, &mut rec)?;
    if warm > SINGLE_S * 1e3 {
        return Ok((warm, warm, 1, 1));
    }
    let est = if warm < BATCH_MS {
        timer.batch(1, &mut rec)?.max(1e-4)
    } else {
        warm
    };
    let n = ((BATCH_MS / est).round() as usize).clamp(1, 200);
    let batches = ((MEASURE_S * 1e3 / (n as f64 * est)) as usize).clamp(1, BATCHES);
    let mut times = Vec::with_capacity(batches);
    for _ in 0..batches {
        times.push(timer.batch(n, &mut rec)? / n as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0], n * batches, n))
}

/// Skips and deadlines shared by the measurements.
struct Budget {
    start: Instant,
    /// Seconds after which the remaining shapes are skipped (`--budget-s`).
    suite_s: f64,
}

impl Budget {
    fn check(&self, predicted_s: Option<f64>) -> Res<()> {
        if self.start.elapsed().as_secs_f64() > self.suite_s {
            return Err(format!(
                "skipped: the Vulkan suite's time budget ({} s, --budget-s) was spent",
                self.suite_s
            ));
        }
        if let Some(p) = predicted_s.filter(|&p| p > MAX_DISPATCH_S) {
            return Err(format!(
                "skipped: predicted {p:.0} s per dispatch (over {MAX_DISPATCH_S} s) from the \
                 previous shape's rate"
            ));
        }
        Ok(())
    }
}

/// The range check of the device API, done early so that the buffers are not even allocated.
fn fits(backend: &VulkanBackend, what: &str, bytes: usize) -> Res<()> {
    let max = backend.features().max_storage_buffer_range as usize;
    if bytes.div_ceil(4) * 4 > max {
        return Err(format!(
            "skipped: `{what}` needs {bytes} bytes in one storage buffer, the device's \
             maxStorageBufferRange is {max}"
        ));
    }
    Ok(())
}

fn range(b: &Buffer) -> BufferRange {
    b.range()
}

fn params<const N: usize>(
    items: [(&str, serde_json::Value); N],
) -> std::collections::BTreeMap<String, serde_json::Value> {
    items.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Runs `tessera bench --backend vulkan`.
pub fn run(args: &BenchArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let suite = vk_suite(&args.suite)?;
    let wants = |op: &str| args.only.as_ref().is_none_or(|o| op.contains(o.as_str()));
    let backend = VulkanBackend::new().map_err(|e| format!("no Vulkan device: {e}"))?;
    let device = backend.device().name.clone();
    let coopmat = backend.fp8_gemm_uses_cooperative_matrix();
    let timer = Timer::new(&backend)?;
    eprintln!("device: {device}");
    eprintln!(
        "timestampPeriod {} ns, maxStorageBufferRange {} bytes",
        timer.period_ns(),
        backend.features().max_storage_buffer_range
    );
    let (ceilings, transfer_gbps) = measure_ceilings(&backend, &timer);
    eprintln!(
        "ceilings: copy {} GB/s; {}",
        ceilings
            .copy_gbps
            .map_or("n/a".into(), |v| format!("{v:.0}")),
        ceilings.matmul_impl
    );
    // The suite's attention cases are head_dim 128 with blocks of 64 or 128: one path for all.
    let attention_path = if backend.attention_uses_cooperative_matrix(64, 128) {
        "cooperative matrix"
    } else {
        "portable"
    };
    let gemm_path = if coopmat {
        "cooperative matrix"
    } else {
        "portable"
    };
    let mut file = BenchFile {
        header: Header {
            tool: "tessera".into(),
            device,
            date: utc_now(),
            commit: commit(),
            backend: "vulkan".into(),
            suite: args.suite.clone(),
            ceilings: ceilings.clone(),
            notes: vec![
                format!(
                    "time: Vulkan timestamp queries (timestampPeriod {} ns) around a batch of n \
                     dispatches in one command buffer, a global memory barrier after each; time = \
                     batch / n, median (min) over up to {BATCHES} batches of ~{BATCH_MS} ms after \
                     a warm-up batch; shapes slower than {SINGLE_S} s: one dispatch",
                    timer.period_ns()
                ),
                "buffers: device-local, filled once with random data via a host staging buffer".into(),
                format!("fp8_gemm: {gemm_path} path; FLOP 2MNK; bytes A + B + D + scales; inputs rotated over >= 200 MB of sets"),
                "mla_decode: FLOP 2 b s_q h s_k (576 + 512); bytes cache (b s_k token_bytes) + q + o; pages of 64 in a shuffled block table; one set".into(),
                format!("attention: {attention_path} path; bf16, head_dim 128, batch 1; FLOP 4 B^2 d h nnz; bytes q + k + v + o; one set"),
                format!(
                    "copy ceiling: a compute-shader copy of up to 1 GiB (record_copy_words), read + \
                     write bytes; vkCmdCopyBuffer of the same buffers: {} GB/s",
                    transfer_gbps.map_or("not measured".into(), |g| format!("{g:.0}"))
                ),
                format!("skips: buffers over maxStorageBufferRange; predicted > {MAX_DISPATCH_S} s per dispatch; after {} s of suite", args.budget_s),
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
    let save = |file: &BenchFile| {
        if let Some(path) = &args.json {
            if let Ok(text) = serde_json::to_string_pretty(file) {
                let _ = std::fs::write(path, text);
            }
        }
    };
    let mut progress = Progress {
        done: 0,
        total,
        start: Instant::now(),
    };
    let budget = Budget {
        start: Instant::now(),
        suite_s: args.budget_s,
    };
    if wants("fp8_gemm") {
        // TFLOPS of the previous shape, to predict the next.
        let mut rate: Option<f64> = None;
        for &(m, n, k) in &suite.gemm {
            progress.show(&format!("fp8_gemm {}", gemm_key(m, n, k)));
            let op = Fp8Gemm::new(m, n, k);
            let predicted = rate.map(|r| op.flops() / r / 1e12);
            let mut rec = match budget.check(predicted) {
                Ok(()) => bench_gemm(&backend, &timer, m, n, k, gemm_path),
                Err(e) => failed("fp8_gemm", gemm_key(m, n, k), IMPL, e),
            };
            let bytes =
                (m * k + n * k + 2 * m * n + 4 * (op.a_scales_len() + op.b_scales_len())) as f64;
            fill_rates(&mut rec, op.flops(), bytes, &ceilings);
            rate = rec.tflops.or(rate);
            file.records.push(rec);
            file.save_to(args.json.as_deref())?;
            save(&file);
        }
    }
    if wants("mla_decode") {
        for fp8 in [false, true] {
            let shapes: Vec<_> = suite.mla.iter().filter(|s| s.4 == fp8).copied().collect();
            if shapes.is_empty() {
                continue;
            }
            let mut mla = MlaBench::new(&backend, &shapes, fp8);
            for &(b, s_k, h, s_q, _) in &shapes {
                progress.show(&format!("mla_decode {}", mla_key(b, s_k, h, s_q, fp8)));
                let key = mla_key(b, s_k, h, s_q, fp8);
                let rec = match (&mut mla, budget.check(None)) {
                    (Ok(mla), Ok(())) => mla.bench(&backend, &timer, b, s_k, h, s_q, &ceilings),
                    (Err(e), _) => failed("mla_decode", key, IMPL, e.clone()),
                    (_, Err(e)) => failed("mla_decode", key, IMPL, e),
                };
                file.records.push(rec);
                file.save_to(args.json.as_deref())?;
                save(&file);
            }
        }
    }
    if wants("attention") {
        // (radial, dense) TFLOPS of the previous case (dense falls back on radial's).
        let mut rates: [Option<f64>; 2] = [None, None];
        for case in &suite.attention {
            for (j, radial) in [true, false].into_iter().enumerate() {
                progress.show(&format!(
                    "attention {} {}",
                    case.key(),
                    if radial { "radial" } else { "dense" }
                ));
                let rec = bench_attention(&backend, &timer, case, radial, &ceilings, |flops| {
                    budget.check(rates[j].or(rates[0]).map(|r| flops / r / 1e12))
                });
                rates[j] = rec.tflops.or(rates[j]);
                file.records.push(rec);
                file.save_to(args.json.as_deref())?;
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
    let errors = file.records.iter().filter(|r| r.error.is_some()).count();
    if errors > 0 {
        eprintln!("{errors} measurements failed or were skipped (see their `error`)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The copy ceiling: a device-local copy of up to 1 GiB (read + write bytes) by a compute shader
/// (`record_copy_words`, what shaders can stream); also returns `vkCmdCopyBuffer`'s rate on the
/// same buffers, for the notes. There is no dense matmul to compare with on Vulkan.
fn measure_ceilings(backend: &VulkanBackend, timer: &Timer) -> (Ceilings, Option<f64>) {
    let mut c = Ceilings {
        matmul_impl: "not measured (no dense Vulkan matmul in this bench)".into(),
        ..Default::default()
    };
    let copy = |shader: bool| -> Res<f64> {
        let n = (1usize << 30).min(backend.features().max_storage_buffer_range as usize / 16 * 16);
        let n = if backend.features().device_type == "Cpu" {
            n.min(64 << 20)
        } else {
            n
        };
        let src = device_buffer(backend, n, &[1, 2, 3, 4, 5, 6, 7, 9])?;
        let dst = device_buffer(backend, n, &[0xff; 4])?;
        let (ms, _, _, _) = time_dispatches(timer, |cmd, _| {
            if shader {
                // SAFETY: `cmd` is the timer's recording command buffer on this backend's
                // device; both buffers are live device-local storage buffers of `n` bytes.
                unsafe { backend.record_copy_words(cmd, src.range(), dst.range(), n as u64) }
                    .map_err(|e| e.to_string())
            } else {
                record_copy(backend, cmd, &src, &dst);
                Ok(())
            }
        })?;
        Ok(2.0 * n as f64 / (ms * 1e-3) / 1e9)
    };
    match copy(true) {
        Ok(g) => c.copy_gbps = Some(g),
        Err(e) => eprintln!("copy ceiling: {e}"),
    }
    let transfer = copy(false)
        .map_err(|e| eprintln!("vkCmdCopyBuffer: {e}"))
        .ok();
    (c, transfer)
}

/// One FP8 GEMM shape, rotating over operand sets.
fn bench_gemm(
    backend: &VulkanBackend,
    timer: &Timer,
    m: usize,
    n: usize,
    k: usize,
    path: &str,
) -> Record {
    let key = gemm_key(m, n, k);
    let op = Fp8Gemm::new(m, n, k);
    let inner = || -> Res<Record> {
        fits(backend, "b", n * k)?;
        fits(backend, "a", m * k)?;
        fits(backend, "d", 2 * m * n)?;
        let set_bytes = m * k + n * k + 2 * m * n;
        let sets = ROTATE_BYTES.div_ceil(set_bytes).clamp(1, 16);
        let mut rng = Rng(11);
        let codes: Vec<u8> = (0..1 << 22).map(|_| rng.e4m3()).collect();
        let scales: Vec<u8> = (0..4096)
            .flat_map(|_| 2f32.powf(rng.uniform(-8.0, -6.0)).to_le_bytes())
            .collect();
        let nan = bf16::NAN.to_bits().to_le_bytes();
        let mut bufs = Vec::with_capacity(sets);
        for s in 0..sets {
            bufs.push((
                device_buffer(backend, m * k, &codes[s..])?,
                device_buffer(backend, 4 * op.a_scales_len(), &scales)?,
                device_buffer(backend, n * k, &codes[3 * s + 1..])?,
                device_buffer(backend, 4 * op.b_scales_len(), &scales[4..])?,
                device_buffer(backend, 2 * m * n, &nan)?,
            ));
        }
        let (median, min, reps, per_batch) = time_dispatches(timer, |cmd, i| {
            let (a, sa, b, sb, d) = &bufs[i % sets];
            // SAFETY: `cmd` is the timer's command buffer on this backend's device, recording;
            // the buffers are live storage buffers of that device, kept until the batch is
            // waited for.
            unsafe {
                backend.record_fp8_gemm(
                    cmd,
                    &op,
                    range(a),
                    range(sa),
                    range(b),
                    range(sb),
                    range(d),
                )
            }
            .map_err(|e| e.to_string())
        })?;
        let d = download(backend, &bufs[0].4, 2 * m * n.min(64))?;
        if d.chunks_exact(2)
            .any(|h| !bf16::from_bits(u16::from_le_bytes([h[0], h[1]])).is_finite())
        {
            return Err("non-finite values in the timed output".into());
        }
        Ok(Record {
            op: "fp8_gemm".into(),
            shape: key.clone(),
            implementation: IMPL.into(),
            params: params([
                ("m", json!(m)),
                ("n", json!(n)),
                ("k", json!(k)),
                ("sets", json!(sets)),
                ("path", json!(path)),
                ("dispatches_per_batch", json!(per_batch)),
            ]),
            time_ms: Some(median),
            min_ms: Some(min),
            reps,
            ..Default::default()
        })
    };
    inner().unwrap_or_else(|e| failed("fp8_gemm", key.clone(), IMPL, e))
}

/// One paged cache per format for the largest shapes that fit one storage buffer, filled with
/// valid records (finite values, FP8 scales 2^-6).
struct MlaBench {
    layout: MlaCacheLayout,
    cache: Buffer,
    pages: usize,
}

impl MlaBench {
    fn new(
        backend: &VulkanBackend,
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
        let max_pages = backend.features().max_storage_buffer_range as usize / layout.page_bytes();
        let pages = shapes
            .iter()
            .map(|s| s.0 * s.1.div_ceil(layout.page_size))
            .filter(|&p| p <= max_pages)
            .max()
            .ok_or("skipped: no shape's cache fits maxStorageBufferRange")?;
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
        let cache = device_buffer(backend, pages * layout.page_bytes(), &pattern)?;
        Ok(Self {
            layout,
            cache,
            pages,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn bench(
        &mut self,
        backend: &VulkanBackend,
        timer: &Timer,
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
            fits(backend, "cache", used * layout.page_bytes())?;
            if used > self.pages {
                return Err("cache too small".into());
            }
            let mut rng = Rng(31 + b as u64);
            let mut table: Vec<i32> = (0..used as i32).collect();
            for i in (1..table.len()).rev() {
                table.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            let ctx = backend.context();
            let table = Buffer::from_bytes(ctx, &i32_bytes(&table)).map_err(|e| e.to_string())?;
            let lens = Buffer::from_bytes(ctx, &i32_bytes(&vec![s_k as i32; b]))
                .map_err(|e| e.to_string())?;
            let q_pattern: Vec<u8> = rng
                .bf16s(1 << 16, 1.0)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let q = device_buffer(backend, 2 * op.q_len(), &q_pattern)?;
            let o = device_buffer(backend, 2 * op.o_len(), &bf16::NAN.to_bits().to_le_bytes())?;
            let lse = device_buffer(backend, 4 * op.lse_len(), &f32::NAN.to_le_bytes())?;
            let ws_bytes = backend
                .mla_decode_workspace_bytes(&op)
                .map_err(|e| e.to_string())?;
            let ws = device_buffer(backend, ws_bytes as usize, &[0x7f, 0xc0, 0, 0])?;
            let cache_range = self.cache.range();
            let (median, min, reps, per_batch) = time_dispatches(timer, |cmd, _| {
                // SAFETY: `cmd` is the timer's command buffer on this backend's device,
                // recording; the buffers are live storage buffers of that device, kept until the
                // batch is waited for.
                unsafe {
                    backend.record_mla_decode(
                        cmd,
                        &op,
                        self.pages,
                        cache_range,
                        range(&q),
                        range(&table),
                        range(&lens),
                        range(&o),
                        range(&lse),
                        range(&ws),
                    )
                }
                .map_err(|e| e.to_string())
            })?;
            let lse_host = download(backend, &lse, 4 * op.lse_len())?;
            if !lse_host
                .chunks_exact(4)
                .all(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]).is_finite())
            {
                return Err("non-finite lse in the timed output".into());
            }
            Ok(Record {
                op: "mla_decode".into(),
                shape: key.clone(),
                implementation: IMPL.into(),
                params: params([
                    ("b", json!(b)),
                    ("s_k", json!(s_k)),
                    ("h_q", json!(h)),
                    ("s_q", json!(s_q)),
                    ("cache", json!(if fp8 { "fp8" } else { "bf16" })),
                    ("workspace_bytes", json!(ws_bytes)),
                    ("dispatches_per_batch", json!(per_batch)),
                ]),
                time_ms: Some(median),
                min_ms: Some(min),
                reps,
                ..Default::default()
            })
        };
        let mut rec = inner().unwrap_or_else(|e| failed("mla_decode", key.clone(), IMPL, e));
        let flops = 2.0 * (b * s_q * h * s_k) as f64 * (layout.qk_dim() + layout.latent_dim) as f64;
        let bytes =
            (b * s_k * layout.token_bytes()) as f64 + 2.0 * (op.q_len() + op.o_len()) as f64;
        fill_rates(&mut rec, flops, bytes, ceilings);
        rec
    }
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One attention case, radial or dense; `check(flops)` says whether to run it.
fn bench_attention(
    backend: &VulkanBackend,
    timer: &Timer,
    case: &AttentionCase,
    radial: bool,
    ceilings: &Ceilings,
    check: impl FnOnce(f64) -> Res<()>,
) -> Record {
    let name = if radial {
        "tessera-vulkan radial"
    } else {
        "tessera-vulkan dense"
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
        let flops = op.flops(&mask);
        check(flops)?;
        fits(backend, "q", 2 * op.qkv_len())?;
        let dmask = VulkanBlockMask::new(backend, &mask).map_err(|e| e.to_string())?;
        let mut rng = Rng(41);
        let pattern: Vec<u8> = rng
            .bf16s(1 << 20, 2.0)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let q = device_buffer(backend, 2 * op.qkv_len(), &pattern)?;
        let k = device_buffer(backend, 2 * op.qkv_len(), &pattern[14..])?;
        let v = device_buffer(backend, 2 * op.qkv_len(), &pattern[26..])?;
        let o = device_buffer(
            backend,
            2 * op.qkv_len(),
            &bf16::NAN.to_bits().to_le_bytes(),
        )?;
        let lse = device_buffer(backend, 4 * op.lse_len(), &f32::NAN.to_le_bytes())?;
        let (median, min, reps, per_batch) = time_dispatches(timer, |cmd, _| {
            // SAFETY: `cmd` is the timer's command buffer on this backend's device, recording;
            // the buffers and the mask are live storage buffers of that device, kept until the
            // batch is waited for.
            unsafe {
                backend.record_sparse_attention(
                    cmd,
                    &op,
                    &dmask,
                    range(&q),
                    range(&k),
                    range(&v),
                    range(&o),
                    range(&lse),
                )
            }
            .map_err(|e| e.to_string())
        })?;
        let lse_host = download(backend, &lse, 4 * op.lse_len().min(1 << 16))?;
        if !lse_host
            .chunks_exact(4)
            .all(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]).is_finite())
        {
            return Err("non-finite lse in the timed output".into());
        }
        let bytes = 4.0 * 2.0 * op.qkv_len() as f64;
        let rec = Record {
            op: "attention".into(),
            shape: key.clone(),
            implementation: name.into(),
            params: params([
                ("model", json!(case.model)),
                ("frames", json!(case.frames)),
                ("tokens", json!(tokens)),
                ("heads", json!(case.heads)),
                ("head_dim", json!(head_dim)),
                ("density", json!(mask.density())),
                ("nnz", json!(mask.nnz())),
                ("dispatches_per_batch", json!(per_batch)),
            ]),
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
