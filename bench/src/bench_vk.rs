//! The Vulkan executor of `tessera bench` ([`crate::run`]): the cases of [`crate::cases`] on the
//! Vulkan backend's device API (impl `tessera-vulkan`, `tessera-vulkan radial`,
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

use std::time::Instant;

use half::bf16;
use serde_json::json;
use tessera::vulkan::ops::attention::VulkanBlockMask;
use tessera::vulkan::{
    AttentionKernel, Buffer, BufferRange, Fp8GemmKernel, MlaDecodeKernel, MlaDecodePlan,
    VulkanBackend,
};
use tessera::{Backend, BlockMask, Fp8Gemm, SparseAttention};

use crate::cases::{
    data, gemm_flops_bytes, gemm_key, gemm_sets, AttentionCase, AttentionWork, GroupedGemmCase,
    MlaShape, QuantizeCase, GROUPED_GEMM_OP, QUANTIZE_OP,
};
use crate::executor::Executor;
use crate::schema::{Ceilings, Record};
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

const IMPL: &str = "tessera-vulkan";

/// The Vulkan backend, its timer and ceilings, the paths it takes, the suite's time budget and
/// the rates of the previous shapes (to predict and skip the slow ones).
pub struct VulkanExecutor {
    backend: VulkanBackend,
    timer: Timer,
    ceilings: Ceilings,
    transfer_gbps: Option<f64>,
    gemm_path: &'static str,
    attention_path: &'static str,
    budget: Budget,
    /// TFLOPS of the previous GEMM.
    gemm_rate: Option<f64>,
    /// TFLOPS of the previous (radial, dense) attention.
    attention_rates: [Option<f64>; 2],
    mla: Option<Res<MlaBench>>,
}

impl VulkanExecutor {
    /// Opens the Vulkan device and measures the ceilings; the suite stops after `budget_s`.
    pub fn new(budget_s: f64) -> Res<Self> {
        let backend = VulkanBackend::new().map_err(|e| format!("no Vulkan device: {e}"))?;
        let timer = Timer::new(&backend)?;
        eprintln!("device: {}", backend.device().name);
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
        let path = |coopmat: bool| {
            if coopmat {
                "cooperative matrix"
            } else {
                "portable"
            }
        };
        // The suite's attention cases are head_dim 128 with blocks of 64 or 128: one path.
        let attention_path = path(backend.attention_uses_cooperative_matrix(64, 128));
        let gemm_path = path(backend.fp8_gemm_uses_cooperative_matrix());
        Ok(Self {
            backend,
            timer,
            ceilings,
            transfer_gbps,
            gemm_path,
            attention_path,
            budget: Budget {
                start: Instant::now(),
                suite_s: budget_s,
            },
            gemm_rate: None,
            attention_rates: [None, None],
            mla: None,
        })
    }
}

impl Executor for VulkanExecutor {
    fn device(&self) -> String {
        self.backend.device().name.clone()
    }

    fn ceilings(&self) -> &Ceilings {
        &self.ceilings
    }

    fn notes(&self) -> Vec<String> {
        vec![
            format!(
                "time: Vulkan timestamp queries (timestampPeriod {} ns) around a batch of n \
                 dispatches in one command buffer, a global memory barrier after each; time = \
                 batch / n, median (min) over up to {BATCHES} batches of ~{BATCH_MS} ms after \
                 a warm-up batch; shapes slower than {SINGLE_S} s: one dispatch",
                self.timer.period_ns()
            ),
            "buffers: device-local, filled once with random data via a host staging buffer".into(),
            format!("fp8_gemm: {} path by default (each record's path: its plan's shader, portable, coopmat or coopmat_large); FLOP 2MNK; bytes A + B + D + scales; inputs rotated over >= 200 MB of sets", self.gemm_path),
            "mla_decode: the shader and its plan per shape in the record's params (kernel, plan; see `tessera info`: shaders); FLOP 2 b s_q h s_k (576 + 512) (skewed or varlen shapes: 2 h (576 + 512) sum of queries x keys per request); bytes cache (keys x token_bytes) + q + o; pages of 64 in a shuffled block table; one set".into(),
            format!("attention: {} path; bf16, head_dim 128, batch 1; FLOP 4 B^2 d h nnz; bytes q + k + v + o; one set", self.attention_path),
            format!(
                "copy ceiling: a compute-shader copy of up to 1 GiB (record_copy_words), read + \
                 write bytes; vkCmdCopyBuffer of the same buffers: {} GB/s",
                self.transfer_gbps.map_or("not measured".into(), |g| format!("{g:.0}"))
            ),
            format!("skips: buffers over maxStorageBufferRange; predicted > {MAX_DISPATCH_S} s per dispatch; after {} s of suite", self.budget.suite_s),
        ]
    }

    fn gemm(&mut self, m: usize, n: usize, k: usize) -> Record {
        let op = Fp8Gemm::new(m, n, k);
        let predicted = self.gemm_rate.map(|r| op.flops() / r / 1e12);
        let rec = match self.budget.check(predicted) {
            Ok(()) => bench_gemm(&self.backend, &self.timer, m, n, k),
            Err(e) => Record::failed("fp8_gemm", gemm_key(m, n, k), IMPL, e),
        };
        // The rate, for the next prediction (the runner fills the record's own).
        if let Some(ms) = rec.time_ms.filter(|&ms| ms > 0.0) {
            self.gemm_rate = Some(gemm_flops_bytes(&op).0 / (ms * 1e-3) / 1e12);
        }
        rec
    }

    fn quantize(&mut self, case: &QuantizeCase) -> Record {
        match self.budget.check(None) {
            Ok(()) => bench_quantize(&self.backend, &self.timer, case),
            Err(e) => Record::failed(QUANTIZE_OP, case.key(), IMPL, e),
        }
    }

    fn grouped_gemm(&mut self, case: &GroupedGemmCase) -> Record {
        // Nothing is timed: the backend's fp8_gemm_grouped returns Unsupported.
        Record {
            params: case.params(),
            ..Record::failed(
                GROUPED_GEMM_OP,
                case.key(),
                IMPL,
                "skipped: no grouped GEMM kernel on Vulkan".into(),
            )
        }
    }

    fn mla_begin(&mut self, shapes: &[MlaShape]) {
        self.mla = Some(MlaBench::new(&self.backend, shapes));
    }

    fn mla(&mut self, shape: &MlaShape) -> Record {
        let key = shape.key();
        match (&mut self.mla, self.budget.check(None)) {
            (Some(Ok(mla)), Ok(())) => mla.bench(&self.backend, &self.timer, shape),
            (Some(Err(e)), _) => Record::failed("mla_decode", key, IMPL, e.clone()),
            (None, _) => Record::failed("mla_decode", key, IMPL, "no cache prepared".into()),
            (_, Err(e)) => Record::failed("mla_decode", key, IMPL, e),
        }
    }

    fn attention(&mut self, case: &AttentionCase, work: &AttentionWork, radial: bool) -> Record {
        let j = usize::from(!radial);
        // Dense falls back on radial's rate.
        let rate = self.attention_rates[j].or(self.attention_rates[0]);
        let budget = &self.budget;
        let rec = bench_attention(&self.backend, &self.timer, case, work, radial, |flops| {
            budget.check(rate.map(|r| flops / r / 1e12))
        });
        if let Some(ms) = rec.time_ms.filter(|&ms| ms > 0.0) {
            self.attention_rates[j] = Some(work.flops / (ms * 1e-3) / 1e12);
        }
        rec
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

/// One quantizer case (one input set: these are memory-bound and far larger than any cache).
fn bench_quantize(backend: &VulkanBackend, timer: &Timer, case: &QuantizeCase) -> Record {
    let key = case.key();
    let op = case.op();
    let inner = || -> Res<Record> {
        let (sr, sc) = op.scales_shape();
        let elems = op.rows * op.cols;
        fits(backend, "x", 2 * elems)?;
        let x: Vec<u8> = data::bf16s(7, 1 << 16, 3.0)
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect();
        let xb = device_buffer(backend, 2 * elems, &x)?;
        let values = device_buffer(backend, elems, &[0])?;
        let scales = device_buffer(backend, 4 * sr * sc, &[0])?;
        let (median, min, reps, per_batch) = time_dispatches(timer, |cmd, _| {
            // SAFETY: `cmd` is the timer's command buffer on this backend's device, recording;
            // the buffers are live storage buffers of that device, kept until the batch is
            // waited for.
            unsafe {
                backend.record_fp8_quantize(
                    cmd,
                    &op,
                    tessera::DType::BF16,
                    range(&xb),
                    range(&values),
                    range(&scales),
                )
            }
            .map_err(|e| e.to_string())
        })?;
        Ok(Record::timed(
            QUANTIZE_OP,
            key.clone(),
            IMPL,
            params([
                ("rows", json!(op.rows)),
                ("cols", json!(op.cols)),
                ("dispatches_per_batch", json!(per_batch)),
            ]),
            (median, min, reps),
        ))
    };
    inner().unwrap_or_else(|e| Record::failed(QUANTIZE_OP, key.clone(), IMPL, e))
}

fn range(b: &Buffer) -> BufferRange {
    b.range()
}

fn params<const N: usize>(
    items: [(&str, serde_json::Value); N],
) -> std::collections::BTreeMap<String, serde_json::Value> {
    items.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
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
        let n = if backend.features().is_cpu() {
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
/// Times `kernel` on `op`, operand sets rotated over >= 200 MB: (median ms, min ms, dispatches
/// timed, dispatches per batch, sets).
pub(crate) fn time_gemm_kernel(
    backend: &VulkanBackend,
    timer: &Timer,
    op: &Fp8Gemm,
    kernel: Fp8GemmKernel,
) -> Res<(f64, f64, usize, usize, usize)> {
    let (m, n, k) = (op.m, op.n, op.k);
    fits(backend, "b", n * k)?;
    fits(backend, "a", m * k)?;
    fits(backend, "d", 2 * m * n)?;
    let sets = gemm_sets(op);
    let codes = data::gemm_codes();
    let scales: Vec<u8> = data::gemm_scales()
        .iter()
        .flat_map(|s| s.to_le_bytes())
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
        // SAFETY: `cmd` is the timer's command buffer on this backend's device, recording; the
        // buffers are live storage buffers of that device, kept until the batch is waited for.
        unsafe {
            backend.record_fp8_gemm_with(
                cmd,
                op,
                kernel,
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
    Ok((median, min, reps, per_batch, sets))
}

fn bench_gemm(backend: &VulkanBackend, timer: &Timer, m: usize, n: usize, k: usize) -> Record {
    let key = gemm_key(m, n, k);
    let op = Fp8Gemm::new(m, n, k);
    let inner = || -> Res<Record> {
        let kernel = backend.fp8_gemm_plan(&op).map_err(|e| e.to_string())?;
        let (median, min, reps, per_batch, sets) = time_gemm_kernel(backend, timer, &op, kernel)?;
        Ok(Record::timed(
            "fp8_gemm",
            key.clone(),
            IMPL,
            params([
                ("m", json!(m)),
                ("n", json!(n)),
                ("k", json!(k)),
                ("sets", json!(sets)),
                ("path", json!(kernel.name())),
                ("dispatches_per_batch", json!(per_batch)),
            ]),
            (median, min, reps),
        ))
    };
    inner().unwrap_or_else(|e| Record::failed("fp8_gemm", key.clone(), IMPL, e))
}

/// One paged cache for one format, for the largest shapes that fit one storage buffer, filled
/// with valid records ([`data::mla_cache_pattern`]).
pub(crate) struct MlaBench {
    cache: Buffer,
    pages: usize,
}

/// A decode's inputs and outputs on the device for one shape (the cache is [`MlaBench`]'s).
struct MlaBuffers {
    table: Buffer,
    lens: Buffer,
    q: Buffer,
    o: Buffer,
    lse: Buffer,
}

/// The time of one plan: median ms, min ms, dispatches timed, dispatches per batch, workspace
/// bytes.
pub(crate) struct MlaTimed {
    pub median_ms: f64,
    pub min_ms: f64,
    pub reps: usize,
    pub per_batch: usize,
    pub workspace_bytes: u64,
}

impl MlaBench {
    pub(crate) fn new(backend: &VulkanBackend, shapes: &[MlaShape]) -> Res<Self> {
        let layout = shapes.first().ok_or("no shapes")?.layout();
        let max_pages = backend.features().max_storage_buffer_range as usize / layout.page_bytes();
        let pages = shapes
            .iter()
            .map(MlaShape::pages)
            .filter(|&p| p <= max_pages)
            .max()
            .ok_or("skipped: no shape's cache fits maxStorageBufferRange")?;
        let pattern = data::mla_cache_pattern(&layout);
        let cache = device_buffer(backend, pages * layout.page_bytes(), &pattern)?;
        Ok(Self { cache, pages })
    }

    /// The shape's buffers (inputs filled, outputs NaN), or why it cannot run here.
    fn buffers(&self, backend: &VulkanBackend, shape: &MlaShape) -> Res<MlaBuffers> {
        if shape.varlen {
            // Nothing is timed: the backend's mla_decode_varlen returns Unsupported.
            return Err("skipped: no variable-length MLA decode on Vulkan".into());
        }
        let layout = shape.layout();
        let op = shape.op();
        let used = shape.pages();
        fits(backend, "cache", used * layout.page_bytes())?;
        if used > self.pages {
            return Err("cache too small".into());
        }
        let table = data::block_table(31 + shape.batch as u64, used);
        let ctx = backend.context();
        let table = Buffer::from_bytes(ctx, &i32_bytes(&table)).map_err(|e| e.to_string())?;
        let lens: Vec<i32> = shape.seq_lens().iter().map(|&n| n as i32).collect();
        let lens = Buffer::from_bytes(ctx, &i32_bytes(&lens)).map_err(|e| e.to_string())?;
        let q_pattern: Vec<u8> = data::bf16s(32, 1 << 16, 1.0)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        Ok(MlaBuffers {
            table,
            lens,
            q: device_buffer(backend, 2 * op.q_len(), &q_pattern)?,
            o: device_buffer(backend, 2 * op.o_len(), &bf16::NAN.to_bits().to_le_bytes())?,
            lse: device_buffer(backend, 4 * op.lse_len(), &f32::NAN.to_le_bytes())?,
        })
    }

    /// Times `plan` (of `shape`'s op) and checks that its log-sum-exps came out finite.
    fn time_with(
        &self,
        backend: &VulkanBackend,
        timer: &Timer,
        shape: &MlaShape,
        bufs: &MlaBuffers,
        plan: &MlaDecodePlan,
    ) -> Res<MlaTimed> {
        let op = shape.op();
        let workspace_bytes = plan.workspace_bytes();
        let ws = device_buffer(backend, workspace_bytes as usize, &[0x7f, 0xc0, 0, 0])?;
        let cache_range = self.cache.range();
        let (median_ms, min_ms, reps, per_batch) = time_dispatches(timer, |cmd, _| {
            // SAFETY: `cmd` is the timer's command buffer on this backend's device, recording;
            // the buffers are live storage buffers of that device, kept until the batch is
            // waited for.
            unsafe {
                backend.record_mla_decode_planned(
                    cmd,
                    plan,
                    self.pages,
                    cache_range,
                    range(&bufs.q),
                    range(&bufs.table),
                    range(&bufs.lens),
                    range(&bufs.o),
                    range(&bufs.lse),
                    range(&ws),
                )
            }
            .map_err(|e| e.to_string())
        })?;
        let lse_host = download(backend, &bufs.lse, 4 * op.lse_len())?;
        if !lse_host
            .chunks_exact(4)
            .all(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]).is_finite())
        {
            return Err("non-finite lse in the timed output".into());
        }
        Ok(MlaTimed {
            median_ms,
            min_ms,
            reps,
            per_batch,
            workspace_bytes,
        })
    }

    /// Times every candidate plan of `shape` ([`VulkanBackend::mla_decode_candidates`], the
    /// default first): each with its time, or why it failed.
    pub(crate) fn time_candidates(
        &self,
        backend: &VulkanBackend,
        timer: &Timer,
        shape: &MlaShape,
    ) -> Res<Vec<(MlaDecodeKernel, Res<MlaTimed>)>> {
        let bufs = self.buffers(backend, shape)?;
        let op = shape.op();
        let candidates = backend
            .mla_decode_candidates(&op)
            .map_err(|e| e.to_string())?;
        Ok(candidates
            .into_iter()
            .map(|k| {
                let timed = backend
                    .mla_decode_plan_with(&op, k)
                    .map_err(|e| e.to_string())
                    .and_then(|plan| self.time_with(backend, timer, shape, &bufs, &plan));
                (k, timed)
            })
            .collect())
    }

    fn bench(&mut self, backend: &VulkanBackend, timer: &Timer, shape: &MlaShape) -> Record {
        let key = shape.key();
        let inner = || -> Res<Record> {
            let bufs = self.buffers(backend, shape)?;
            let plan = backend
                .mla_decode_plan(&shape.op())
                .map_err(|e| e.to_string())?;
            let t = self.time_with(backend, timer, shape, &bufs, &plan)?;
            Ok(Record::timed(
                "mla_decode",
                key.clone(),
                IMPL,
                {
                    let mut p = shape.params();
                    p.insert("workspace_bytes".into(), json!(t.workspace_bytes));
                    p.insert("kernel".into(), json!(plan.kernel().name()));
                    p.insert("plan".into(), json!(plan.to_string()));
                    p.insert("dispatches_per_batch".into(), json!(t.per_batch));
                    p
                },
                (t.median_ms, t.min_ms, t.reps),
            ))
        };
        inner().unwrap_or_else(|e| Record::failed("mla_decode", key.clone(), IMPL, e))
    }
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One attention case, radial or dense; `check(flops)` says whether to run it.
/// Times `kernel` on `op` over `mask` (inputs from a fixed pattern, outputs NaN first): (median
/// ms, min ms, dispatches timed, dispatches per batch), after checking the lse came out finite.
pub(crate) fn time_attention_kernel(
    backend: &VulkanBackend,
    timer: &Timer,
    op: &SparseAttention,
    mask: &BlockMask,
    kernel: AttentionKernel,
) -> Res<(f64, f64, usize, usize)> {
    fits(backend, "q", 2 * op.qkv_len())?;
    let dmask = VulkanBlockMask::new(backend, mask).map_err(|e| e.to_string())?;
    let pattern: Vec<u8> = data::bf16s(41, 1 << 20, 2.0)
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
    let timed = time_dispatches(timer, |cmd, _| {
        // SAFETY: `cmd` is the timer's command buffer on this backend's device, recording; the
        // buffers and the mask are live storage buffers of that device, kept until the batch
        // is waited for.
        unsafe {
            backend.record_sparse_attention_with(
                cmd,
                op,
                kernel,
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
    Ok(timed)
}

fn bench_attention(
    backend: &VulkanBackend,
    timer: &Timer,
    case: &AttentionCase,
    work: &AttentionWork,
    radial: bool,
    check: impl FnOnce(f64) -> Res<()>,
) -> Record {
    let name = if radial {
        "tessera-vulkan radial"
    } else {
        "tessera-vulkan dense"
    };
    let key = case.key();
    let op = &work.op;
    let inner = || -> Res<Record> {
        check(work.flops)?;
        let kernel = backend.attention_plan(op, &work.mask);
        let (median, min, reps, per_batch) =
            time_attention_kernel(backend, timer, op, &work.mask, kernel)?;
        Ok(Record::timed(
            "attention",
            key.clone(),
            name,
            {
                let mut p = work.params(case);
                p.insert("dispatches_per_batch".into(), json!(per_batch));
                p.insert("kernel".into(), json!(kernel.name()));
                p
            },
            (median, min, reps),
        ))
    };
    inner().unwrap_or_else(|e| Record::failed("attention", key, name, e))
}
