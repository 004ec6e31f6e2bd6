//! The CUDA executor of `tessera bench` ([`crate::run`]): the cases of [`crate::cases`] timed
//! through the CUDA backend's device API (no copies, one stream), with the ceilings (copy
//! bandwidth, dense bf16 matmul) measured first.
//!
//! Timing: one warm-up launch (compiles and loads the kernel), one or two launches waited for
//! (the faster is the estimate), then `reps` launches each between two CUDA events recorded on
//! the stream (all read after the last), median and minimum reported. `reps` is chosen from the
//! estimate so the timed launches take about [`BUDGET_S`] (3 to 100); launches under 10 ms are
//! queued behind a GPU busy-wait so that the host's per-launch work is not timed. FP8 GEMM
//! rotates over enough input/output sets to exceed 200 MB, so L2 (50 MB on the H200) does not
//! hold the operands across launches; MLA decode and attention use one set (their working set
//! is far beyond L2).

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use half::bf16;
use serde_json::json;
use tessera::cuda::{
    AttentionBackwardBuffers, CudaBackend, DeviceBlockMask, DeviceHalf, DeviceHalfMut, DeviceInput,
    MlaDecodeBuffers, MlaDecodeVarlenBuffers,
};
use tessera::Fp8Gemm;

use crate::cases::{
    data, gemm_key, gemm_sets, AttentionCase, AttentionWork, GroupedGemmCase, MlaShape,
    QuantizeCase, ATTENTION_BACKWARD_IMPLS, ATTENTION_BACKWARD_OP, GROUPED_GEMM_OP,
    QUANTIZE_COPY_MS_PARAM, QUANTIZE_OP, ROTATE_BYTES,
};
use crate::executor::Executor;
use crate::schema::{Ceilings, Record};

/// Seconds of timed launches aimed at per measurement.
const BUDGET_S: f64 = 0.3;

type Res<T> = Result<T, String>;

const IMPL: &str = "tessera";

/// The CUDA backend on device 0, its stream and ceilings, and the MLA cache of the format
/// being timed.
pub struct CudaExecutor {
    backend: CudaBackend,
    stream: Arc<CudaStream>,
    device: String,
    ceilings: Ceilings,
    mla: Option<Res<MlaBench>>,
}

impl CudaExecutor {
    /// Opens CUDA device 0 and measures the ceilings.
    pub fn new() -> Res<Self> {
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
        Ok(Self {
            backend,
            stream,
            device,
            ceilings,
            mla: None,
        })
    }
}

impl Executor for CudaExecutor {
    fn device(&self) -> String {
        self.device.clone()
    }

    fn ceilings(&self) -> &Ceilings {
        &self.ceilings
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "time: median of CUDA-event-timed launches after a warm-up launch; reps chosen for ~0.3 s (3..100); launches under 10 ms queued behind a GPU busy-wait".into(),
            "fp8_gemm: FLOP 2MNK; bytes A + B + D + scales; inputs rotated over >= 200 MB of sets (L2 flushed by rotation)".into(),
            "fp8_gemm_grouped: FLOP 2 x rows computed x N x K; bytes A and D of the rows computed + B of every group + scales; group layout (i32 offsets or counts) uploaded once; sets rotated as fp8_gemm".into(),
            "mla_decode: FLOP 2 b s_q h s_k (576 + 512) (skewed or varlen shapes: 2 h (576 + 512) sum of queries x keys per request); bytes cache (keys x token_bytes) + q + o; pages of 64 in a shuffled block table; one set".into(),
            "attention: bf16, head_dim 128, batch 1; FLOP 4 B^2 d h nnz (every on block in full); bytes q + k + v + o; one set".into(),
            "attention_backward: the radial mask; o and lse from one forward run; FLOP 2.5 x the forward's (5 matmuls; the dq pass recomputes S and dP, not counted); bytes q + k + v + o + dO + dq + dk + dv; one set".into(),
        ]
    }

    fn gemm(&mut self, m: usize, n: usize, k: usize) -> Record {
        bench_gemm(&self.backend, &self.stream, m, n, k)
    }

    fn grouped_gemm(&mut self, case: &GroupedGemmCase) -> Record {
        bench_grouped_gemm(&self.backend, &self.stream, case)
    }

    fn quantize(&mut self, case: &QuantizeCase) -> Record {
        bench_quantize(&self.backend, &self.stream, case)
    }

    fn mla_begin(&mut self, shapes: &[MlaShape]) {
        self.mla = Some(MlaBench::new(&self.stream, shapes));
    }

    fn mla(&mut self, shape: &MlaShape) -> Record {
        match &mut self.mla {
            Some(Ok(mla)) => mla.bench(&self.backend, &self.stream, shape),
            Some(Err(e)) => Record::failed("mla_decode", shape.key(), IMPL, e.clone()),
            None => Record::failed("mla_decode", shape.key(), IMPL, "no cache prepared".into()),
        }
    }

    fn attention(&mut self, case: &AttentionCase, work: &AttentionWork, radial: bool) -> Record {
        bench_attention(&self.backend, &self.stream, case, work, radial)
    }

    fn attention_backward(&mut self, case: &AttentionCase, work: &AttentionWork) -> Vec<Record> {
        bench_attention_backward(&self.backend, &self.stream, case, work)
    }
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.0}"))
}

/// (median ms, min ms, reps) of `launch(i)` (i counts every launch, warm-ups included).
///
/// With `sleeper`, launches under 10 ms are queued behind a GPU busy-wait of about 0.2 ms per
/// rep (at most 20 ms; [`CudaBackend::gpu_sleep_on`]), as ci/peers.py does: the host then runs
/// ahead of the GPU and the events around each launch measure the GPU's work, not the host's
/// per-launch work (without it, launches of a few microseconds read as the host's ~20 us).
fn time_launches(
    stream: &Arc<CudaStream>,
    sleeper: Option<&CudaBackend>,
    mut launch: impl FnMut(usize) -> Res<()>,
) -> Res<(f64, f64, usize)> {
    let sync = |s: &Arc<CudaStream>| s.synchronize().map_err(|e| format!("synchronize: {e}"));
    // The first launch may compile and load its kernel (NVRTC, module loading): it only warms
    // up. The estimate is the faster of the next one or two launches, each waited for.
    let mut i = 0;
    launch(i)?;
    i += 1;
    sync(stream)?;
    let mut estimate = f64::INFINITY;
    for _ in 0..2 {
        let t = Instant::now();
        launch(i)?;
        i += 1;
        sync(stream)?;
        estimate = estimate.min(t.elapsed().as_secs_f64());
        if estimate >= 0.05 {
            break;
        }
    }
    let reps = ((BUDGET_S / estimate.max(1e-6)) as usize).clamp(3, 100);
    let event = |s: &Arc<CudaStream>| {
        s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| format!("record_event: {e}"))
    };
    if let Some(backend) = sleeper.filter(|_| estimate < 0.01) {
        let sleep = std::time::Duration::from_micros((reps as u64 * 200).min(20_000));
        backend
            .gpu_sleep_on(stream, sleep)
            .map_err(|e| format!("gpu_sleep: {e}"))?;
    }
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

/// One quantizer case, rotating over input sets (so that L2 is not what is measured).
fn bench_quantize(backend: &CudaBackend, stream: &Arc<CudaStream>, case: &QuantizeCase) -> Record {
    let key = case.key();
    let op = case.op();
    let inner = || -> Res<Record> {
        let (sr, sc) = op.scales_shape();
        let elems = op.rows * op.cols;
        let sets = ROTATE_BYTES.div_ceil(3 * elems).clamp(1, 16);
        let x: Vec<bf16> = data::bf16s(7, 1 << 16, 3.0);
        let mut bufs = Vec::with_capacity(sets);
        for _ in 0..sets {
            bufs.push((
                alloc_filled(stream, elems, &x)?,
                stream
                    .alloc_zeros::<u8>(elems)
                    .map_err(|e| format!("alloc: {e}"))?,
                stream
                    .alloc_zeros::<f32>(sr * sc)
                    .map_err(|e| format!("alloc: {e}"))?,
            ));
        }
        let (median, min, reps) = time_launches(stream, Some(backend), |i| {
            let (x, values, scales) = &mut bufs[i % sets];
            backend
                .fp8_quantize_on(
                    stream,
                    &op,
                    &DeviceInput::BF16(x.as_view()),
                    &mut values.as_view_mut(),
                    &mut scales.as_view_mut(),
                )
                .map_err(|e| e.to_string())
        })?;
        // The copy ceiling at this size: a device-to-device copy that reads and writes as many
        // bytes in all as the quantizer (bf16 in, E4M3 and f32 scales out), timed the same way.
        // A kernel of a few tens of microseconds pays fixed costs that the 1 GiB copy of the
        // header's ceiling spreads thin.
        let copy_elems = (3 * elems + 4 * sr * sc).div_ceil(4);
        let mut copy_dst = Vec::with_capacity(sets);
        for _ in 0..sets {
            copy_dst.push(
                stream
                    .alloc_zeros::<bf16>(copy_elems)
                    .map_err(|e| format!("alloc: {e}"))?,
            );
        }
        let (copy_ms, _, _) = time_launches(stream, Some(backend), |i| {
            let src = bufs[i % sets].0.slice(0..copy_elems);
            stream
                .memcpy_dtod(&src, &mut copy_dst[i % sets])
                .map_err(|e| format!("copy: {e}"))
        })?;
        Ok(Record::timed(
            QUANTIZE_OP,
            key.clone(),
            IMPL,
            [
                ("rows", json!(op.rows)),
                ("cols", json!(op.cols)),
                ("sets", json!(sets)),
                (QUANTIZE_COPY_MS_PARAM, json!(copy_ms)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            (median, min, reps),
        ))
    };
    inner().unwrap_or_else(|e| Record::failed(QUANTIZE_OP, key.clone(), IMPL, e))
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
        let (ms, _, _) = time_launches(stream, None, |_| {
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
    let pattern = data::bf16s(5, 1 << 20, 1.0);
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
    let (ms, _, _) = time_launches(stream, None, |_| {
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
        let mut bufs = gemm_operand_sets(stream, &op)?;
        let sets = bufs.len();
        let (median, min, reps) = time_launches(stream, Some(backend), |i| {
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
        Ok(Record::timed(
            "fp8_gemm",
            key.clone(),
            IMPL,
            [("m", m), ("n", n), ("k", k), ("sets", sets)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
            (median, min, reps),
        ))
    };
    inner().unwrap_or_else(|e| Record::failed("fp8_gemm", key.clone(), IMPL, e))
}

/// A, sA, B, sB (filled with valid codes and scales) and D of one operand set.
type GemmSet = (
    CudaSlice<u8>,
    CudaSlice<f32>,
    CudaSlice<u8>,
    CudaSlice<f32>,
    CudaSlice<bf16>,
);

/// The operand sets a GEMM (plain or grouped) rotates over ([`gemm_sets`] of them).
fn gemm_operand_sets(stream: &Arc<CudaStream>, op: &Fp8Gemm) -> Res<Vec<GemmSet>> {
    let codes = data::gemm_codes();
    let scales = data::gemm_scales();
    (0..gemm_sets(op))
        .map(|_| {
            Ok((
                alloc_filled(stream, op.a_len(), &codes)?,
                alloc_filled(stream, op.a_scales_len(), &scales)?,
                alloc_filled(stream, op.b_len(), &codes)?,
                alloc_filled(stream, op.b_scales_len(), &scales)?,
                stream
                    .alloc_zeros::<bf16>(op.d_len())
                    .map_err(|e| format!("alloc: {e}"))?,
            ))
        })
        .collect()
}

/// One grouped FP8 GEMM case, rotating over operand sets (the group layout uploaded once).
fn bench_grouped_gemm(
    backend: &CudaBackend,
    stream: &Arc<CudaStream>,
    case: &GroupedGemmCase,
) -> Record {
    let key = case.key();
    let op = case.op();
    let inner = || -> Res<Record> {
        let layout = case.group_layout();
        op.validate_group_layout(&layout)
            .map_err(|e| e.to_string())?;
        let groups = stream
            .clone_htod(&layout)
            .map_err(|e| format!("upload: {e}"))?;
        let mut bufs = gemm_operand_sets(stream, &op)?;
        let sets = bufs.len();
        let (median, min, reps) = time_launches(stream, Some(backend), |i| {
            let (a, sa, b, sb, d) = &mut bufs[i % sets];
            backend
                .fp8_gemm_grouped_on(
                    stream,
                    &op,
                    &a.as_view(),
                    &sa.as_view(),
                    &b.as_view(),
                    &sb.as_view(),
                    &groups.as_view(),
                    &mut d.as_view_mut(),
                )
                .map_err(|e| e.to_string())
        })?;
        let mut params = case.params();
        params.insert("sets".into(), json!(sets));
        Ok(Record::timed(
            GROUPED_GEMM_OP,
            key.clone(),
            IMPL,
            params,
            (median, min, reps),
        ))
    };
    inner().unwrap_or_else(|e| Record {
        params: case.params(),
        ..Record::failed(GROUPED_GEMM_OP, key.clone(), IMPL, e)
    })
}

/// One paged cache for one format, large enough for every shape of the suite, filled with
/// valid records ([`data::mla_cache_pattern`]).
struct MlaBench {
    cache: CudaSlice<u8>,
    pages: usize,
}

impl MlaBench {
    fn new(stream: &Arc<CudaStream>, shapes: &[MlaShape]) -> Res<Self> {
        let layout = shapes.first().ok_or("no shapes")?.layout();
        let pages = shapes.iter().map(MlaShape::pages).max().unwrap_or(1);
        let pattern = data::mla_cache_pattern(&layout);
        let cache = alloc_filled(stream, pages * layout.page_bytes(), &pattern)?;
        Ok(Self { cache, pages })
    }

    fn bench(
        &mut self,
        backend: &CudaBackend,
        stream: &Arc<CudaStream>,
        shape: &MlaShape,
    ) -> Record {
        let key = shape.key();
        let layout = shape.layout();
        let op = shape.op();
        let inner = || -> Res<Record> {
            let used = shape.pages();
            if used > self.pages {
                return Err("cache too small".into());
            }
            let table = data::block_table(31 + shape.batch as u64, used);
            let table = stream
                .clone_htod(&table)
                .map_err(|e| format!("upload: {e}"))?;
            let lens: Vec<i32> = shape.seq_lens().iter().map(|&n| n as i32).collect();
            let lens = stream
                .clone_htod(&lens)
                .map_err(|e| format!("upload: {e}"))?;
            let cu_seqlens_q = stream
                .clone_htod(&shape.cu_seqlens_q())
                .map_err(|e| format!("upload: {e}"))?;
            let varlen_op = shape.varlen_op();
            let (q_len, o_len, lse_len) = if shape.varlen {
                (varlen_op.q_len(), varlen_op.o_len(), varlen_op.lse_len())
            } else {
                (op.q_len(), op.o_len(), op.lse_len())
            };
            let q = alloc_filled(stream, q_len, &data::bf16s(32, 1 << 16, 1.0))?;
            let mut o = stream
                .alloc_zeros::<bf16>(o_len)
                .map_err(|e| format!("alloc: {e}"))?;
            let mut lse = stream
                .alloc_zeros::<f32>(lse_len)
                .map_err(|e| format!("alloc: {e}"))?;
            let plan = if shape.varlen {
                backend.mla_decode_varlen_plan(&varlen_op, shape.s_k)
            } else {
                backend.mla_decode_plan(&op, shape.s_k)
            }
            .map_err(|e| e.to_string())?;
            let mut ws = stream
                .alloc_zeros::<f32>(plan.workspace_len().max(1))
                .map_err(|e| format!("alloc: {e}"))?;
            let cache_len = self.pages * layout.page_bytes();
            let (median, min, reps) = time_launches(stream, Some(backend), |_| {
                if shape.varlen {
                    let mut bufs = MlaDecodeVarlenBuffers {
                        cache: self.cache.slice(0..cache_len),
                        q: q.as_view(),
                        cu_seqlens_q: cu_seqlens_q.as_view(),
                        block_table: table.as_view(),
                        seq_lens: lens.as_view(),
                        o: o.as_view_mut(),
                        lse: lse.as_view_mut(),
                        workspace: ws.as_view_mut(),
                    };
                    backend.mla_decode_varlen_on(stream, &varlen_op, &plan, &mut bufs)
                } else {
                    let mut bufs = MlaDecodeBuffers {
                        cache: self.cache.slice(0..cache_len),
                        q: q.as_view(),
                        block_table: table.as_view(),
                        seq_lens: lens.as_view(),
                        o: o.as_view_mut(),
                        lse: lse.as_view_mut(),
                        workspace: ws.as_view_mut(),
                    };
                    backend.mla_decode_on(stream, &op, &plan, &mut bufs)
                }
                .map_err(|e| e.to_string())
            })?;
            let lse_host = stream
                .clone_dtoh(&lse)
                .map_err(|e| format!("download: {e}"))?;
            if !lse_host.iter().all(|x| x.is_finite()) {
                return Err("non-finite lse in the timed output".into());
            }
            let mut params = shape.params();
            params.insert("splits".into(), json!(plan.splits()));
            Ok(Record::timed(
                "mla_decode",
                key.clone(),
                IMPL,
                params,
                (median, min, reps),
            ))
        };
        inner().unwrap_or_else(|e| Record::failed("mla_decode", key.clone(), IMPL, e))
    }
}

/// One attention case, radial or dense.
fn bench_attention(
    backend: &CudaBackend,
    stream: &Arc<CudaStream>,
    case: &AttentionCase,
    work: &AttentionWork,
    radial: bool,
) -> Record {
    let name = if radial {
        "tessera radial"
    } else {
        "tessera dense"
    };
    let key = case.key();
    let op = &work.op;
    let inner = || -> Res<Record> {
        let dmask = DeviceBlockMask::new(stream, &work.mask).map_err(|e| e.to_string())?;
        let pattern = data::bf16s(41, 1 << 20, 2.0);
        let q = alloc_filled(stream, op.qkv_len(), &pattern)?;
        let k = alloc_filled(stream, op.qkv_len(), &pattern[7..])?;
        let v = alloc_filled(stream, op.qkv_len(), &pattern[13..])?;
        let mut o = stream
            .alloc_zeros::<bf16>(op.qkv_len())
            .map_err(|e| format!("alloc: {e}"))?;
        let mut lse = stream
            .alloc_zeros::<f32>(op.lse_len())
            .map_err(|e| format!("alloc: {e}"))?;
        let (median, min, reps) = time_launches(stream, Some(backend), |_| {
            backend
                .sparse_attention_on(
                    stream,
                    op,
                    &dmask,
                    &DeviceHalf::BF16(q.as_view()),
                    &DeviceHalf::BF16(k.as_view()),
                    &DeviceHalf::BF16(v.as_view()),
                    &mut DeviceHalfMut::BF16(o.as_view_mut()),
                    &mut lse.as_view_mut(),
                )
                .map_err(|e| e.to_string())
        })?;
        Ok(Record::timed(
            "attention",
            key.clone(),
            name,
            work.params(case),
            (median, min, reps),
        ))
    };
    inner().unwrap_or_else(|e| Record::failed("attention", key, name, e))
}

/// The backward of one radial attention case, after one forward run that gives it o and lse:
/// one record per way of running it ([`ATTENTION_BACKWARD_IMPLS`]: the default plan for the op,
/// then with [`tessera::SparseAttention::deterministic_backward`] set), on the same inputs.
fn bench_attention_backward(
    backend: &CudaBackend,
    stream: &Arc<CudaStream>,
    case: &AttentionCase,
    work: &AttentionWork,
) -> Vec<Record> {
    let key = case.key();
    let op = &work.op;
    let inner = || -> Res<Vec<Record>> {
        let dmask = DeviceBlockMask::new(stream, &work.mask).map_err(|e| e.to_string())?;
        let pattern = data::bf16s(41, 1 << 20, 2.0);
        let n = op.qkv_len();
        let q = alloc_filled(stream, n, &pattern)?;
        let k = alloc_filled(stream, n, &pattern[7..])?;
        let v = alloc_filled(stream, n, &pattern[13..])?;
        let d_o = alloc_filled(stream, n, &pattern[17..])?;
        let zeros = |len: usize| {
            stream
                .alloc_zeros::<bf16>(len)
                .map_err(|e| format!("alloc: {e}"))
        };
        let floats = |len: usize| {
            stream
                .alloc_zeros::<f32>(len)
                .map_err(|e| format!("alloc: {e}"))
        };
        let (mut o, mut dq, mut dk, mut dv) = (zeros(n)?, zeros(n)?, zeros(n)?, zeros(n)?);
        let (mut lse, mut delta) = (floats(op.lse_len())?, floats(op.lse_len())?);
        backend
            .sparse_attention_on(
                stream,
                op,
                &dmask,
                &DeviceHalf::BF16(q.as_view()),
                &DeviceHalf::BF16(k.as_view()),
                &DeviceHalf::BF16(v.as_view()),
                &mut DeviceHalfMut::BF16(o.as_view_mut()),
                &mut lse.as_view_mut(),
            )
            .map_err(|e| e.to_string())?;
        let mut records = Vec::new();
        for (name, deterministic) in ATTENTION_BACKWARD_IMPLS.into_iter().zip([false, true]) {
            let op = &op.clone().with_deterministic_backward(deterministic);
            let timed = time_launches(stream, Some(backend), |_| {
                backend
                    .sparse_attention_backward_on(
                        stream,
                        op,
                        &dmask,
                        &mut AttentionBackwardBuffers {
                            q: DeviceHalf::BF16(q.as_view()),
                            k: DeviceHalf::BF16(k.as_view()),
                            v: DeviceHalf::BF16(v.as_view()),
                            o: DeviceHalf::BF16(o.as_view()),
                            lse: lse.as_view(),
                            d_o: DeviceHalf::BF16(d_o.as_view()),
                            delta: delta.as_view_mut(),
                            dq: DeviceHalfMut::BF16(dq.as_view_mut()),
                            dk: DeviceHalfMut::BF16(dk.as_view_mut()),
                            dv: DeviceHalfMut::BF16(dv.as_view_mut()),
                        },
                    )
                    .map_err(|e| e.to_string())
            });
            records.push(match timed {
                Ok(timing) => Record::timed(
                    ATTENTION_BACKWARD_OP,
                    key.clone(),
                    name,
                    work.params(case),
                    timing,
                ),
                Err(e) => Record::failed(ATTENTION_BACKWARD_OP, key.clone(), name, e),
            });
        }
        Ok(records)
    };
    inner().unwrap_or_else(|e| {
        ATTENTION_BACKWARD_IMPLS
            .into_iter()
            .map(|name| Record::failed(ATTENTION_BACKWARD_OP, key.clone(), name, e.clone()))
            .collect()
    })
}
