//! Fuzzing of every op of the `Backend` trait on every backend: shapes, lengths, slots, block
//! tables, sequence lengths and scales with arbitrary values, 0, 1, values near the integer
//! limits and overflowing products, and tensors with NaN and infinities. Each call returns a
//! typed error (`InvalidArgument`, `Unsupported`, `OutOfMemory`) or a correct result (the exact
//! ops equal the CPU reference bit for bit; the others have the right lengths and finite values);
//! never a panic, never a device fault (a GPU backend still computes correctly afterwards).
//!
//! Inputs are only as long as the descriptor asks when that is small: huge descriptors are
//! checked against short slices (validation must reject them). Case counts are small so that
//! lavapipe in CI stays fast; `PROPTEST_CASES` overrides them.

mod common;

use common::{open_or_skip, proptest_cases};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use tessera::{
    bf16, Backend, BackendKind, BlockMask, CpuBackend, DType, Error, Fp8Gemm, Fp8Granularity,
    Fp8Quantize, MlaAppend, MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeVarlen,
    ScaleRule, SparseAttention, Tensor, TensorRef, E4M3,
};

/// The largest input a case builds in full (elements).
const SMALL: usize = 1 << 15;

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        16 => 1usize..6,
        2 => Just(0usize),
        6 => 1usize..200,
        1 => Just(i32::MAX as usize),
        1 => Just(u32::MAX as usize + 1),
        1 => Just(usize::MAX / 2),
        1 => Just(usize::MAX),
        1 => any::<usize>(),
    ]
}

/// Whether the slices have the lengths the descriptor asks (mostly).
fn exact() -> impl Strategy<Value = bool> {
    prop_oneof![3 => Just(true), 1 => Just(false)]
}

fn int32() -> impl Strategy<Value = i32> {
    prop_oneof![
        8 => -2i32..80,
        1 => Just(i32::MIN),
        1 => Just(i32::MAX),
        1 => any::<i32>(),
    ]
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        20 => -3.0f32..3.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(-f32::INFINITY),
        1 => Just(0.0f32),
        1 => Just(f32::MAX),
    ]
}

/// A length: what the descriptor asks when that is small (`exact`), else something near it.
fn length(wanted: Option<usize>, exact: bool, off: usize) -> usize {
    match wanted {
        Some(n) if n <= SMALL && exact => n,
        Some(n) if n <= SMALL => n.saturating_sub(off % 3).saturating_add(off % 2),
        _ => off % 64,
    }
}

/// `n` values cycling through `pattern` (never empty).
fn fill(pattern: &[f32], n: usize) -> Vec<f32> {
    pattern.iter().copied().cycle().take(n).collect()
}

#[derive(Clone, Debug)]
enum Call {
    Attention {
        op: SparseAttention,
        mask_tokens: usize,
        block_size: usize,
        exact: bool,
        off: usize,
        values: Vec<f32>,
    },
    Append {
        layout: MlaCacheLayout,
        pages: usize,
        tokens: usize,
        exact: bool,
        off: usize,
        slots: Vec<i32>,
        values: Vec<f32>,
    },
    Decode {
        op: MlaDecode,
        pages: usize,
        exact: bool,
        off: usize,
        block_table: Vec<i32>,
        seq_lens: Vec<i32>,
    },
    DecodeVarlen {
        op: MlaDecodeVarlen,
        pages: usize,
        exact: bool,
        off: usize,
        /// Query counts per request (made into offsets when `exact`), or raw offsets.
        counts: Vec<i32>,
        block_table: Vec<i32>,
        seq_lens: Vec<i32>,
    },
    Quantize {
        op: Fp8Quantize,
        input: DType,
        exact: bool,
        off: usize,
        values: Vec<f32>,
    },
    Gemm {
        op: Fp8Gemm,
        exact: bool,
        off: usize,
        scales: Vec<f32>,
    },
}

fn layout() -> impl Strategy<Value = MlaCacheLayout> {
    (
        prop_oneof![4 => Just(4usize), 2 => Just(16usize), 1 => dim()],
        prop_oneof![4 => Just(128usize), 1 => Just(64usize), 1 => dim()],
        prop_oneof![4 => Just(16usize), 1 => Just(0usize), 1 => dim()],
        prop_oneof![Just(MlaCacheFormat::Bf16), Just(MlaCacheFormat::Fp8)],
    )
        .prop_map(|(page_size, latent_dim, rope_dim, format)| MlaCacheLayout {
            page_size,
            latent_dim,
            rope_dim,
            format,
        })
}

fn call() -> impl Strategy<Value = Call> {
    let values = || prop::collection::vec(value(), 1..8);
    let attention = (
        (
            dim(),
            dim(),
            prop_oneof![3 => Just(64usize), 1 => Just(128usize), 1 => dim()],
        ),
        (
            prop_oneof![Just(DType::BF16), Just(DType::F16), Just(DType::F32)],
            prop_oneof![4 => Just(0.125f32), 1 => value()],
        ),
        (
            1usize..150,
            prop_oneof![Just(64usize), Just(128usize)],
            exact(),
            0usize..100,
        ),
        values(),
    )
        .prop_map(
            |(
                (batch, heads, head_dim),
                (dtype, scale),
                (mask_tokens, block_size, exact, off),
                values,
            )| {
                Call::Attention {
                    op: SparseAttention {
                        batch,
                        tokens: if off % 7 == 0 { off } else { mask_tokens },
                        heads,
                        head_dim,
                        dtype,
                        softmax_scale: scale,
                        deterministic_backward: off % 2 == 0,
                    },
                    mask_tokens,
                    block_size,
                    exact,
                    off,
                    values,
                }
            },
        );
    let append = (
        layout(),
        prop_oneof![4 => 1usize..6, 1 => dim()],
        prop_oneof![4 => 0usize..12, 1 => dim()],
        (exact(), 0usize..100),
        prop::collection::vec(int32(), 0..12),
        values(),
    )
        .prop_map(
            |(layout, pages, tokens, (exact, off), slots, values)| Call::Append {
                layout,
                pages,
                tokens,
                exact,
                off,
                slots,
                values,
            },
        );
    let decode = (
        layout(),
        prop_oneof![4 => 1usize..6, 1 => dim()],
        (
            prop_oneof![4 => 1usize..3, 1 => dim()],
            prop_oneof![4 => 1usize..3, 1 => dim()],
            prop_oneof![4 => 1usize..5, 1 => dim()],
            prop_oneof![4 => 1usize..4, 1 => dim()],
        ),
        prop_oneof![4 => Just(0.1f32), 1 => value()],
        (exact(), 0usize..100),
        prop::collection::vec(int32(), 0..12),
        prop::collection::vec(int32(), 0..4),
    )
        .prop_map(
            |(
                layout,
                pages,
                (batch, s_q, heads, max_pages),
                scale,
                (exact, off),
                block_table,
                seq_lens,
            )| {
                Call::Decode {
                    op: MlaDecode {
                        batch,
                        s_q,
                        heads,
                        max_pages,
                        softmax_scale: scale,
                        layout,
                    },
                    pages,
                    exact,
                    off,
                    block_table,
                    seq_lens,
                }
            },
        );
    let decode_varlen = (
        layout(),
        prop_oneof![4 => 1usize..6, 1 => dim()],
        (
            prop_oneof![4 => 1usize..4, 1 => dim()],
            prop_oneof![4 => 0usize..8, 1 => dim()],
            prop_oneof![4 => 1usize..4, 1 => dim()],
            prop_oneof![4 => 1usize..5, 1 => dim()],
            prop_oneof![4 => 1usize..4, 1 => dim()],
        ),
        prop_oneof![4 => Just(0.1f32), 1 => value()],
        (exact(), 0usize..100),
        prop::collection::vec(prop_oneof![4 => 0i32..4, 1 => int32()], 0..5),
        prop::collection::vec(int32(), 0..12),
        prop::collection::vec(int32(), 0..4),
    )
        .prop_map(
            |(
                layout,
                pages,
                (batch, total_q, max_s_q, heads, max_pages),
                scale,
                (exact, off),
                counts,
                block_table,
                seq_lens,
            )| {
                Call::DecodeVarlen {
                    op: MlaDecodeVarlen {
                        batch,
                        total_q,
                        max_s_q,
                        heads,
                        max_pages,
                        softmax_scale: scale,
                        layout,
                    },
                    pages,
                    exact,
                    off,
                    counts,
                    block_table,
                    seq_lens,
                }
            },
        );
    let quantize = (
        dim(),
        dim(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(DType::F32),
            Just(DType::F16),
            Just(DType::BF16),
            Just(DType::E4M3)
        ],
        (exact(), 0usize..100),
        values(),
    )
        .prop_map(
            |(rows, cols, block, pow2, input, (exact, off), values)| Call::Quantize {
                op: Fp8Quantize {
                    rows,
                    cols,
                    granularity: if block {
                        Fp8Granularity::Block128x128
                    } else {
                        Fp8Granularity::PerToken1x128
                    },
                    scale_rule: if pow2 {
                        ScaleRule::PowerOfTwo
                    } else {
                        ScaleRule::Float
                    },
                },
                input,
                exact,
                off,
                values,
            },
        );
    let gemm = (
        dim(),
        prop_oneof![3 => (1usize..20).prop_map(|n| 8 * n), 1 => dim()],
        prop_oneof![3 => (1usize..12).prop_map(|k| 16 * k), 1 => dim()],
        (exact(), 0usize..100),
        prop::collection::vec(prop_oneof![8 => 0.01f32..2.0, 1 => value()], 1..4),
    )
        .prop_map(|(m, n, k, (exact, off), scales)| Call::Gemm {
            op: Fp8Gemm::new(m, n, k),
            exact,
            off,
            scales,
        });
    prop_oneof![attention, append, decode, decode_varlen, quantize, gemm]
}

/// A small cache, or `None` when the layout and page count would make a large or invalid one
/// (the cache constructor is fuzzed in core's tests).
fn cache(layout: MlaCacheLayout, pages: usize, nan: bool) -> Option<MlaCache> {
    layout.validate().ok()?;
    if pages == 0 || pages > 16 {
        return None;
    }
    let mut cache = MlaCache::new(layout, pages).ok()?;
    if nan {
        cache.fill_nan();
    }
    Some(cache)
}

fn typed(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidArgument { .. } | Error::Unsupported { .. } | Error::OutOfMemory { .. }
    )
}

/// Calls accepted (a result checked) and rejected (a typed error), per run.
static ACCEPTED: AtomicUsize = AtomicUsize::new(0);
static REJECTED: AtomicUsize = AtomicUsize::new(0);

/// Runs one call on `backend`, checking the outcome; `cpu` gives the reference results.
fn run(backend: &dyn Backend, cpu: &CpuBackend, call: &Call) -> Result<(), TestCaseError> {
    let check_err = |e: Error| -> Result<(), TestCaseError> {
        REJECTED.fetch_add(1, Ordering::Relaxed);
        prop_assert!(typed(&e), "{:?}: untyped error {e:?}", backend.kind());
        Ok(())
    };
    let accepted = || ACCEPTED.fetch_add(1, Ordering::Relaxed);
    match call {
        Call::Attention {
            op,
            mask_tokens,
            block_size,
            exact,
            off,
            values,
        } => {
            let mask = BlockMask::dense(*mask_tokens, *block_size).unwrap();
            let n = length(
                [op.batch, op.tokens, op.heads, op.head_dim]
                    .iter()
                    .try_fold(1usize, |a, &b| a.checked_mul(b)),
                *exact,
                *off,
            );
            let x = Tensor::from_f32(op.dtype, &fill(values, n));
            match backend.sparse_attention(op, &mask, x.as_ref(), x.as_ref(), x.as_ref()) {
                Ok(out) => {
                    accepted();
                    prop_assert_eq!(out.o.len(), op.qkv_len());
                    prop_assert_eq!(out.lse.len(), op.lse_len());
                    if values.iter().all(|v| v.is_finite() && v.abs() < 1e3) {
                        prop_assert!(out.o.to_f32_vec().iter().all(|v| v.is_finite()));
                    }
                }
                Err(e) => check_err(e)?,
            }
        }
        Call::Append {
            layout,
            pages,
            tokens,
            exact,
            off,
            slots,
            values,
        } => {
            let Some(mut cache) = cache(*layout, *pages, true) else {
                return Ok(());
            };
            let latent_len = length(tokens.checked_mul(layout.latent_dim), *exact, *off);
            let rope_len = length(tokens.checked_mul(layout.rope_dim), *exact, *off);
            let latent: Vec<bf16> = fill(values, latent_len)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let rope: Vec<bf16> = fill(values, rope_len)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let slots: Vec<i32> = if *exact && *tokens <= 16 {
                (0..*tokens)
                    .map(|t| slots.get(t).copied().unwrap_or(t as i32))
                    .collect()
            } else {
                slots.clone()
            };
            let before = cache.clone();
            let mut want = cache.clone();
            let want_result = cpu.mla_append(
                &MlaAppend { tokens: *tokens },
                &mut want,
                &latent,
                &rope,
                &slots,
            );
            match backend.mla_append(
                &MlaAppend { tokens: *tokens },
                &mut cache,
                &latent,
                &rope,
                &slots,
            ) {
                Ok(()) => {
                    accepted();
                    prop_assert!(
                        want_result.is_ok(),
                        "the CPU rejects what {:?} accepts",
                        backend.kind()
                    );
                    prop_assert!(
                        cache == want,
                        "{:?}: the cache differs from the reference",
                        backend.kind()
                    );
                }
                Err(e) => {
                    prop_assert!(cache == before, "a rejected append wrote the cache");
                    check_err(e)?;
                }
            }
        }
        Call::Decode {
            op,
            pages,
            exact,
            off,
            block_table,
            seq_lens,
        } => {
            // Zeros: finite values, so that the output can be checked for NaN.
            let Some(cache) = cache(op.layout, *pages, false) else {
                return Ok(());
            };
            let q_len = length(
                [op.batch, op.s_q, op.heads, op.layout.qk_dim()]
                    .iter()
                    .try_fold(1usize, |a, &b| a.checked_mul(b)),
                *exact,
                *off,
            );
            let q = vec![bf16::from_f32(0.5); q_len];
            let table: Vec<i32> = match op.batch.checked_mul(op.max_pages) {
                Some(n) if *exact && n <= 64 => (0..n)
                    .map(|i| block_table.get(i).copied().unwrap_or((i % pages) as i32))
                    .collect(),
                _ => block_table.clone(),
            };
            let lens: Vec<i32> = if *exact && op.batch <= 8 {
                (0..op.batch)
                    .map(|b| seq_lens.get(b).copied().unwrap_or(1))
                    .collect()
            } else {
                seq_lens.clone()
            };
            match backend.mla_decode(op, &cache, &q, &table, &lens) {
                Ok(out) => {
                    accepted();
                    prop_assert_eq!(out.o.len(), op.o_len());
                    prop_assert_eq!(out.lse.len(), op.lse_len());
                    prop_assert!(
                        out.o.iter().all(|v| v.is_finite()),
                        "{:?}: non-finite o",
                        backend.kind()
                    );
                }
                Err(e) => check_err(e)?,
            }
        }
        Call::DecodeVarlen {
            op,
            pages,
            exact,
            off,
            counts,
            block_table,
            seq_lens,
        } => {
            let Some(cache) = cache(op.layout, *pages, false) else {
                return Ok(());
            };
            // Exact calls: the offsets of the counts (each clamped to 0..=max_s_q, total_q
            // taken from them), table entries in range and lengths of 1 by default.
            let mut op = op.clone();
            let cu: Vec<i32> = if *exact && op.batch <= 8 {
                let mut cu = vec![0i32];
                for b in 0..op.batch {
                    let n = counts.get(b).copied().unwrap_or(1);
                    let n = n.clamp(0, op.max_s_q.min(8) as i32);
                    cu.push(cu[b] + n);
                }
                op.total_q = cu[op.batch] as usize;
                cu
            } else {
                counts.clone()
            };
            let q_len = length(
                [op.total_q, op.heads, op.layout.qk_dim()]
                    .iter()
                    .try_fold(1usize, |a, &b| a.checked_mul(b)),
                *exact,
                *off,
            );
            let q = vec![bf16::from_f32(0.5); q_len];
            let table: Vec<i32> = match op.batch.checked_mul(op.max_pages) {
                Some(n) if *exact && n <= 64 => (0..n)
                    .map(|i| block_table.get(i).copied().unwrap_or((i % pages) as i32))
                    .collect(),
                _ => block_table.clone(),
            };
            let lens: Vec<i32> = if *exact && op.batch <= 8 {
                (0..op.batch)
                    .map(|b| seq_lens.get(b).copied().unwrap_or(1))
                    .collect()
            } else {
                seq_lens.clone()
            };
            match backend.mla_decode_varlen(&op, &cache, &q, &cu, &table, &lens) {
                Ok(out) => {
                    accepted();
                    prop_assert_eq!(out.o.len(), op.o_len());
                    prop_assert_eq!(out.lse.len(), op.lse_len());
                    prop_assert!(
                        out.o.iter().all(|v| v.is_finite()),
                        "{:?}: non-finite o",
                        backend.kind()
                    );
                    prop_assert!(
                        out.lse.iter().all(|v| !v.is_nan()),
                        "{:?}: an lse not written",
                        backend.kind()
                    );
                }
                Err(e) => check_err(e)?,
            }
        }
        Call::Quantize {
            op,
            input,
            exact,
            off,
            values,
        } => {
            let n = length(op.rows.checked_mul(op.cols), *exact, *off);
            let x = Tensor::from_f32(*input, &fill(values, n));
            let want = cpu.fp8_quantize(op, x.as_ref());
            match backend.fp8_quantize(op, x.as_ref()) {
                Ok(got) => {
                    accepted();
                    let want =
                        want.map_err(|e| TestCaseError::fail(format!("the CPU rejects it: {e}")))?;
                    prop_assert_eq!(got.values, want.values);
                    prop_assert_eq!(
                        got.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                        want.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>()
                    );
                }
                Err(e) => check_err(e)?,
            }
        }
        Call::Gemm {
            op,
            exact,
            off,
            scales,
        } => {
            let a_len = length(op.m.checked_mul(op.k), *exact, *off);
            let b_len = length(op.n.checked_mul(op.k), *exact, *off);
            let sa_len = length(op.m.checked_mul(op.k.div_ceil(128)), *exact, *off);
            let sb_len = length(
                op.n.div_ceil(128).checked_mul(op.k.div_ceil(128)),
                *exact,
                *off,
            );
            // Only outputs of a moderate size are computed (D is m * n).
            if op.m.checked_mul(op.n).is_none_or(|d| d > 1 << 20) && *exact {
                return Ok(());
            }
            let codes = |n: usize| -> Vec<E4M3> {
                (0..n)
                    .map(|i| E4M3::from_f32(((i % 13) as f32 - 6.0) / 4.0))
                    .collect()
            };
            let (a, b) = (codes(a_len), codes(b_len));
            let (sa, sb) = (fill(scales, sa_len), fill(scales, sb_len));
            match backend.fp8_gemm(op, &a, &sa, &b, &sb) {
                Ok(d) => {
                    accepted();
                    prop_assert_eq!(d.len(), op.m * op.n);
                    if scales.iter().all(|s| *s < 1e3) {
                        prop_assert!(d.iter().all(|v| v.is_finite()));
                    }
                }
                Err(e) => check_err(e)?,
            }
        }
    }
    Ok(())
}

fn fuzz(kind: BackendKind, default_cases: u32) {
    let Some(backend) = open_or_skip(kind) else {
        return;
    };
    let cpu = CpuBackend::new();
    let mut runner = TestRunner::new(Config {
        cases: proptest_cases(default_cases),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&call(), |call| {
            match catch_unwind(AssertUnwindSafe(|| run(backend.as_ref(), &cpu, &call))) {
                Ok(r) => r,
                Err(_) => Err(TestCaseError::fail(format!("{kind}: panicked on {call:?}"))),
            }
        })
        .unwrap();
    println!(
        "{kind}: {} calls accepted and checked, {} rejected with typed errors (all backends' tests so far)",
        ACCEPTED.load(Ordering::Relaxed),
        REJECTED.load(Ordering::Relaxed)
    );
    // No fault left behind: a plain call still gives the reference's answer.
    let op = Fp8Quantize {
        rows: 5,
        cols: 300,
        granularity: Fp8Granularity::Block128x128,
        scale_rule: ScaleRule::PowerOfTwo,
    };
    let x: Vec<f32> = (0..op.len()).map(|i| (i as f32).sin() * 10.0).collect();
    assert_eq!(
        backend.fp8_quantize(&op, TensorRef::F32(&x)).unwrap(),
        cpu.fp8_quantize(&op, TensorRef::F32(&x)).unwrap(),
        "{kind}: wrong after fuzzing"
    );
}

#[test]
fn cpu_survives_fuzzed_arguments() {
    fuzz(BackendKind::Cpu, 256);
}

#[test]
fn cuda_survives_fuzzed_arguments() {
    fuzz(BackendKind::Cuda, 256);
}

#[test]
fn vulkan_survives_fuzzed_arguments() {
    fuzz(BackendKind::Vulkan, 48);
}
