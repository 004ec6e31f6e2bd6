//! One `CudaBackend` shared by 8 threads, each on its own stream (`ctx.new_stream()`) through
//! the `*_on` device API, every op interleaved: each output equals the single-threaded host
//! API's bit for bit. Then the module cache is hammered: 16 threads ask a fresh backend for every
//! quantizer variant at once. Needs a CUDA device (prints `skipped:` otherwise).

mod common;

use common::{bf16s, bits_bf16, bits_f32, GemmInputs};
use half::bf16;
use std::sync::{Arc, Barrier};
use tessera_core::{
    Backend, BlockMask, DType, Fp8Gemm, Fp8Granularity, Fp8Quantize, ScaleRule, SparseAttention,
    TensorRef,
};
use tessera_cuda::{CudaBackend, DeviceBlockMask, DeviceHalf, DeviceHalfMut, DeviceInput};

const THREADS: usize = 8;
const ROUNDS: usize = 4;

/// The work of one round, with the single-threaded results to compare with.
struct Work {
    quantize: Fp8Quantize,
    x: Vec<bf16>,
    gemm: GemmInputs,
    attention: SparseAttention,
    mask: BlockMask,
    qkv: Vec<bf16>,
    want_codes: Vec<u8>,
    want_scales: Vec<u32>,
    want_d: Vec<u16>,
    want_o: Vec<u16>,
    want_lse: Vec<u32>,
}

impl Work {
    fn new(backend: &CudaBackend, seed: u64) -> Self {
        let quantize = Fp8Quantize {
            rows: 67 + seed as usize,
            cols: 300,
            granularity: if seed % 2 == 0 {
                Fp8Granularity::PerToken1x128
            } else {
                Fp8Granularity::Block128x128
            },
            scale_rule: ScaleRule::Float,
        };
        let x = bf16s(seed, quantize.len());
        let gemm = GemmInputs::new(Fp8Gemm::new(96 + 8 * seed as usize, 256, 512), seed);
        let mask = BlockMask::dense(300 + 17 * seed as usize, 64).unwrap();
        let attention = SparseAttention::new(1, mask.tokens(), 2, 128, DType::BF16);
        let qkv = bf16s(seed + 100, attention.qkv_len());
        let q = backend
            .fp8_quantize(&quantize, TensorRef::BF16(&x))
            .unwrap();
        let d = backend
            .fp8_gemm(&gemm.op, &gemm.a, &gemm.a_scales, &gemm.b, &gemm.b_scales)
            .unwrap();
        let t = TensorRef::BF16(&qkv);
        let att = backend
            .sparse_attention(&attention, &mask, t, t, t)
            .unwrap();
        let tessera_core::Tensor::BF16(o) = att.o else {
            panic!("bf16 attention returned another type")
        };
        Self {
            want_codes: q.values.iter().map(|v| v.to_bits()).collect(),
            want_scales: bits_f32(&q.scales),
            want_d: bits_bf16(&d),
            want_o: bits_bf16(&o),
            want_lse: bits_f32(&att.lse),
            quantize,
            x,
            gemm,
            attention,
            mask,
            qkv,
        }
    }
}

/// Runs every op of `work` on its own stream through the device API and checks the results.
fn run_on_own_stream(backend: &CudaBackend, work: &Work, thread: usize) {
    let stream = backend.context().new_stream().unwrap();
    // Quantizer.
    let x = stream.clone_htod(&work.x).unwrap();
    let mut values = stream.alloc_zeros::<u8>(work.quantize.len()).unwrap();
    let mut scales = stream
        .alloc_zeros::<f32>(work.quantize.scales_len())
        .unwrap();
    backend
        .fp8_quantize_on(
            &stream,
            &work.quantize,
            &DeviceInput::BF16(x.as_view()),
            &mut values.as_view_mut(),
            &mut scales.as_view_mut(),
        )
        .unwrap();
    // GEMM.
    let g = &work.gemm;
    let a = stream
        .clone_htod(&g.a.iter().map(|v| v.to_bits()).collect::<Vec<u8>>())
        .unwrap();
    let b = stream
        .clone_htod(&g.b.iter().map(|v| v.to_bits()).collect::<Vec<u8>>())
        .unwrap();
    let sa = stream.clone_htod(&g.a_scales).unwrap();
    let sb = stream.clone_htod(&g.b_scales).unwrap();
    let mut d = stream.alloc_zeros::<bf16>(g.op.d_len()).unwrap();
    backend
        .fp8_gemm_on(
            &stream,
            &g.op,
            &a.as_view(),
            &sa.as_view(),
            &b.as_view(),
            &sb.as_view(),
            &mut d.as_view_mut(),
        )
        .unwrap();
    // Attention.
    let mask = DeviceBlockMask::new(&stream, &work.mask).unwrap();
    let qkv = stream.clone_htod(&work.qkv).unwrap();
    let mut o = stream
        .alloc_zeros::<bf16>(work.attention.qkv_len())
        .unwrap();
    let mut lse = stream.alloc_zeros::<f32>(work.attention.lse_len()).unwrap();
    backend
        .sparse_attention_on(
            &stream,
            &work.attention,
            &mask,
            &DeviceHalf::BF16(qkv.as_view()),
            &DeviceHalf::BF16(qkv.as_view()),
            &DeviceHalf::BF16(qkv.as_view()),
            &mut DeviceHalfMut::BF16(o.as_view_mut()),
            &mut lse.as_view_mut(),
        )
        .unwrap();
    let what = |op: &str| format!("thread {thread}: {op} differs from the single-threaded run");
    assert_eq!(
        stream.clone_dtoh(&values).unwrap(),
        work.want_codes,
        "{}",
        what("codes")
    );
    assert_eq!(
        bits_f32(&stream.clone_dtoh(&scales).unwrap()),
        work.want_scales,
        "{}",
        what("scales")
    );
    assert_eq!(
        bits_bf16(&stream.clone_dtoh(&d).unwrap()),
        work.want_d,
        "{}",
        what("gemm")
    );
    assert_eq!(
        bits_bf16(&stream.clone_dtoh(&o).unwrap()),
        work.want_o,
        "{}",
        what("attention o")
    );
    assert_eq!(
        bits_f32(&stream.clone_dtoh(&lse).unwrap()),
        work.want_lse,
        "{}",
        what("attention lse")
    );
}

#[test]
fn eight_threads_on_their_own_streams_match_one_thread() {
    let Some(backend) = common::backend() else {
        return;
    };
    let work: Vec<Work> = (0..4).map(|s| Work::new(&backend, s)).collect();
    let backend = Arc::new(backend);
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (backend, work, start) = (backend.clone(), work.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for round in 0..ROUNDS {
                    // Threads take the cases in different orders, so different ops overlap.
                    let w = &work[(t + round) % work.len()];
                    run_on_own_stream(&backend, w, t);
                    // The host API on the backend's own stream, interleaved with the others.
                    let q = backend
                        .fp8_quantize(&w.quantize, TensorRef::BF16(&w.x))
                        .unwrap();
                    assert_eq!(bits_f32(&q.scales), w.want_scales, "thread {t}: host API");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a thread failed");
    }
}

#[test]
fn module_cache_hammered_from_many_threads() {
    // A fresh backend: every variant is compiled (or read from the disk cache) and loaded while
    // 16 threads ask for it at once.
    let Some(backend) = common::backend() else {
        return;
    };
    let backend = Arc::new(backend);
    let x: Arc<Vec<f32>> = Arc::new((0..37 * 200).map(|i| (i % 31) as f32 - 15.0).collect());
    let ops: Vec<Fp8Quantize> = [Fp8Granularity::PerToken1x128, Fp8Granularity::Block128x128]
        .into_iter()
        .flat_map(|granularity| {
            [ScaleRule::Float, ScaleRule::PowerOfTwo].map(|scale_rule| Fp8Quantize {
                rows: 37,
                cols: 200,
                granularity,
                scale_rule,
            })
        })
        .collect();
    let start = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let (backend, x, ops, start) = (backend.clone(), x.clone(), ops.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let xs_f16: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
                let xs_bf16: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
                let mut out = Vec::new();
                for i in 0..ops.len() {
                    let op = &ops[(t + i) % ops.len()];
                    let input = match (t + i) % 3 {
                        0 => TensorRef::F32(&x),
                        1 => TensorRef::F16(&xs_f16),
                        _ => TensorRef::BF16(&xs_bf16),
                    };
                    out.push((
                        (t + i) % ops.len(),
                        (t + i) % 3,
                        backend.fp8_quantize(op, input).unwrap(),
                    ));
                }
                out
            })
        })
        .collect();
    let mut seen = std::collections::HashMap::new();
    for h in handles {
        for (op, input, result) in h.join().expect("a thread failed") {
            let first = seen.entry((op, input)).or_insert_with(|| result.clone());
            assert_eq!(*first, result, "op {op} input {input}: threads disagree");
        }
    }
}
