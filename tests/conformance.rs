//! The conformance suite: written once against the `Backend` trait and instantiated for every
//! backend. Each op runs at random shapes (proptest) and is compared with the f64 reference
//! through `tessera_testing::check`; invalid arguments must come back as typed errors naming the
//! argument, leaving the caller's buffers untouched.
//!
//! A backend that is not available on this machine prints `skipped: <why>` and passes, unless
//! it is required (`TESSERA_REQUIRE_BACKENDS=cuda,vulkan`, or `TESSERA_REQUIRE_VULKAN=1`, see
//! `common`): then its absence fails the suite. The GPU machine's script requires both, so
//! nothing passes silently there.

mod common;

use common::{open_or_skip, unsupported_is_skipped};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tessera::{
    bf16, Backend, BackendKind, DType, Error, Fp8Gemm, Fp8Granularity, Fp8Quantize, MlaAppend,
    MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, RadialMaskConfig, ScaleRule,
    SparseAttention, TensorRef, E4M3,
};
use tessera_testing::check::{
    AttentionBackwardCase, AttentionCase, Case, GemmCase, MaskSpec, MlaCase, QuantizeCase,
};

/// Proptest cases per op: fewer on the slow f64 CPU path; `PROPTEST_CASES` overrides (the
/// GPU machine's sanitizer run lowers it).
fn cases(kind: BackendKind) -> u32 {
    common::proptest_cases(match kind {
        BackendKind::Cpu => 12,
        _ => 48,
    })
}

fn run_case(
    backend: &dyn Backend,
    case: &Case,
    skipped: &std::sync::Mutex<Option<String>>,
) -> Result<(), TestCaseError> {
    let outcome = unsupported_is_skipped(backend.kind(), case.run(backend), skipped)
        .map_err(|e| TestCaseError::fail(format!("{case:?}: {e}")))?;
    let Some(outcome) = outcome else {
        return Ok(());
    };
    if let Some(m) = outcome.first_failure() {
        return Err(TestCaseError::fail(format!(
            "{} {}: {} = {:e} > {:e}",
            outcome.op, outcome.shape, m.name, m.error, m.tolerance
        )));
    }
    Ok(())
}

fn runner(kind: BackendKind) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(kind),
        failure_persistence: None,
        ..Config::default()
    })
}

fn attention_strategy() -> impl Strategy<Value = AttentionCase> {
    let random = (
        1usize..=300,
        prop_oneof![Just(64usize), Just(128)],
        0.05f64..1.0,
    )
        .prop_map(|(tokens, block_size, density)| MaskSpec::Random {
            tokens,
            block_size,
            density,
        });
    let radial = (
        1usize..=6,
        1usize..=140,
        0usize..=70,
        prop_oneof![Just(64usize), Just(128)],
        0.1f64..2.0,
        any::<bool>(),
    )
        .prop_map(
            |(frames, tokens_per_frame, extra_tokens, block_size, decay, sink)| {
                MaskSpec::Radial(RadialMaskConfig {
                    frames,
                    tokens_per_frame,
                    extra_tokens,
                    block_size,
                    decay,
                    sink,
                })
            },
        );
    (
        1usize..=2,
        1usize..=3,
        prop_oneof![Just(64usize), Just(128)],
        prop_oneof![Just(DType::F16), Just(DType::BF16)],
        prop_oneof![random, radial],
        any::<u64>(),
    )
        .prop_map(
            |(batch, heads, head_dim, dtype, mask, seed)| AttentionCase {
                batch,
                heads,
                head_dim,
                dtype,
                mask,
                seed,
            },
        )
}

fn mla_strategy() -> impl Strategy<Value = MlaCase> {
    let layout = (
        prop_oneof![Just(1usize), Just(7), Just(16), Just(64)],
        prop_oneof![Just(128usize), Just(256), Just(512)],
        prop_oneof![Just(0usize), Just(16), Just(64)],
        prop_oneof![Just(MlaCacheFormat::Bf16), Just(MlaCacheFormat::Fp8)],
    )
        .prop_map(|(page_size, latent_dim, rope_dim, format)| MlaCacheLayout {
            page_size,
            latent_dim,
            rope_dim,
            format,
        });
    (
        layout,
        1usize..=4,
        prop_oneof![Just(1usize), Just(3), Just(16), Just(33), Just(128)],
        prop::collection::vec(prop_oneof![Just(0usize), 1usize..=200], 1..=4),
        any::<u64>(),
    )
        .prop_map(|(layout, s_q, heads, seq_lens, seed)| MlaCase {
            layout,
            s_q,
            heads,
            seq_lens,
            seed,
        })
}

fn quantize_strategy() -> impl Strategy<Value = QuantizeCase> {
    (
        1usize..=300,
        1usize..=400,
        prop_oneof![
            Just(Fp8Granularity::PerToken1x128),
            Just(Fp8Granularity::Block128x128)
        ],
        prop_oneof![Just(ScaleRule::Float), Just(ScaleRule::PowerOfTwo)],
        prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)],
        any::<u64>(),
    )
        .prop_map(
            |(rows, cols, granularity, scale_rule, input, seed)| QuantizeCase {
                op: Fp8Quantize {
                    rows,
                    cols,
                    granularity,
                    scale_rule,
                },
                input,
                seed,
            },
        )
}

fn gemm_strategy() -> impl Strategy<Value = GemmCase> {
    (1usize..=200, 1usize..=40, 1usize..=40, any::<u64>()).prop_map(|(m, n8, k16, seed)| GemmCase {
        op: Fp8Gemm::new(m, 8 * n8, 16 * k16),
        seed,
    })
}

fn check_strategy<S: Strategy>(kind: BackendKind, strategy: S, wrap: fn(S::Value) -> Case)
where
    S::Value: Clone + std::fmt::Debug,
{
    let Some(backend) = open_or_skip(kind) else {
        return;
    };
    let skipped = std::sync::Mutex::new(None);
    runner(kind)
        .run(&strategy, |value| {
            run_case(backend.as_ref(), &wrap(value), &skipped)
        })
        .unwrap();
    if let Some(why) = skipped.into_inner().unwrap_or_else(|p| p.into_inner()) {
        println!("skipped: {why}");
    }
}

fn expect_invalid<T: std::fmt::Debug>(result: tessera::Result<T>, arg: &str) {
    match result {
        Err(Error::InvalidArgument { arg: got, .. }) => {
            assert_eq!(got, arg, "wrong argument named")
        }
        other => panic!("expected InvalidArgument naming `{arg}`, got {other:?}"),
    }
}

/// Every op rejects bad arguments with a typed error naming the argument, before writing.
fn invalid_arguments(kind: BackendKind) {
    let Some(b) = open_or_skip(kind) else { return };
    let b = b.as_ref();
    // Sparse attention.
    let mask = tessera::BlockMask::dense(100, 64).unwrap();
    let op = SparseAttention::new(1, 100, 2, 64, DType::BF16);
    let x = vec![bf16::ZERO; op.qkv_len()];
    let t = TensorRef::BF16(&x);
    expect_invalid(
        b.sparse_attention(&op, &mask, TensorRef::BF16(&x[1..]), t, t),
        "q",
    );
    expect_invalid(
        b.sparse_attention(
            &SparseAttention {
                head_dim: 96,
                ..op.clone()
            },
            &mask,
            t,
            t,
            t,
        ),
        "head_dim",
    );
    expect_invalid(
        b.sparse_attention(
            &SparseAttention {
                dtype: DType::F32,
                ..op.clone()
            },
            &mask,
            t,
            t,
            t,
        ),
        "dtype",
    );
    let xf = vec![0f32; op.qkv_len()];
    expect_invalid(
        b.sparse_attention(&op, &mask, t, TensorRef::F32(&xf), t),
        "k",
    );
    expect_invalid(
        b.sparse_attention(
            &SparseAttention {
                softmax_scale: f32::NAN,
                ..op.clone()
            },
            &mask,
            t,
            t,
            t,
        ),
        "softmax_scale",
    );
    let other_mask = tessera::BlockMask::dense(99, 64).unwrap();
    expect_invalid(b.sparse_attention(&op, &other_mask, t, t, t), "mask");
    let holey =
        tessera::BlockMask::from_dense_bitmap(100, 64, &[true, false, false, false]).unwrap();
    expect_invalid(b.sparse_attention(&op, &holey, t, t, t), "mask block row 1");

    // Sparse attention backward: the forward's checks, then o, d_o and lse.
    let lse = vec![0f32; op.lse_len()];
    let short = TensorRef::BF16(&x[1..]);
    expect_invalid(
        b.sparse_attention_backward(&op, &mask, short, t, t, t, &lse, t),
        "q",
    );
    expect_invalid(
        b.sparse_attention_backward(&op, &mask, t, t, t, short, &lse, t),
        "o",
    );
    expect_invalid(
        b.sparse_attention_backward(&op, &mask, t, t, t, t, &lse, short),
        "d_o",
    );
    expect_invalid(
        b.sparse_attention_backward(&op, &mask, t, t, t, t, &lse[1..], t),
        "lse",
    );
    expect_invalid(
        b.sparse_attention_backward(&op, &other_mask, t, t, t, t, &lse, t),
        "mask",
    );

    // MLA append: bad slots leave the cache untouched.
    let layout = MlaCacheLayout {
        page_size: 4,
        latent_dim: 128,
        rope_dim: 16,
        format: MlaCacheFormat::Fp8,
    };
    let mut cache = MlaCache::new(layout, 3).unwrap();
    cache.fill_nan();
    let before = cache.clone();
    let lat = vec![bf16::ONE; 2 * 128];
    let rope = vec![bf16::ONE; 2 * 16];
    expect_invalid(
        b.mla_append(&MlaAppend { tokens: 2 }, &mut cache, &lat, &rope, &[0, 12]),
        "slots[1]",
    );
    expect_invalid(
        b.mla_append(&MlaAppend { tokens: 2 }, &mut cache, &lat, &rope, &[5, 5]),
        "slots[1]",
    );
    expect_invalid(
        b.mla_append(
            &MlaAppend { tokens: 2 },
            &mut cache,
            &lat[1..],
            &rope,
            &[0, 1],
        ),
        "latent",
    );
    let mut bad = lat.clone();
    bad[130] = bf16::INFINITY;
    expect_invalid(
        b.mla_append(&MlaAppend { tokens: 2 }, &mut cache, &bad, &rope, &[0, 1]),
        "latent[1][2]",
    );
    assert_eq!(cache, before, "a rejected append must not touch the cache");

    // MLA decode.
    let op = MlaDecode {
        batch: 2,
        s_q: 1,
        heads: 2,
        max_pages: 2,
        softmax_scale: 0.1,
        layout,
    };
    let q = vec![bf16::ONE; op.q_len()];
    expect_invalid(
        b.mla_decode(&op, &cache, &q, &[0, 1, 2, -1], &[8, 9]),
        "seq_lens[1]",
    );
    expect_invalid(
        b.mla_decode(&op, &cache, &q, &[0, 3, 2, -1], &[8, 4]),
        "block_table[0][1]",
    );
    expect_invalid(
        b.mla_decode(&op, &cache, &q, &[0, 1, -1, -1], &[8, -1]),
        "seq_lens[1]",
    );
    expect_invalid(
        b.mla_decode(
            &MlaDecode {
                heads: 129,
                ..op.clone()
            },
            &cache,
            &q,
            &[0, 1, 2, -1],
            &[8, 4],
        ),
        "heads",
    );
    expect_invalid(
        b.mla_decode(
            &MlaDecode {
                s_q: 0,
                ..op.clone()
            },
            &cache,
            &q,
            &[0, 1, 2, -1],
            &[8, 4],
        ),
        "s_q",
    );
    let other = MlaCacheLayout {
        format: MlaCacheFormat::Bf16,
        ..layout
    };
    expect_invalid(
        b.mla_decode(
            &MlaDecode {
                layout: other,
                ..op.clone()
            },
            &cache,
            &q,
            &[0, 1, 2, -1],
            &[8, 4],
        ),
        "cache",
    );
    // Pages past the length are not read, so they may hold anything.
    let skipped = std::sync::Mutex::new(None);
    let result = b.mla_decode(&op, &cache, &q, &[0, 99, 2, -7], &[0, 4]);
    assert!(unsupported_is_skipped(kind, result, &skipped).is_ok());

    // FP8.
    let qop = Fp8Quantize {
        rows: 2,
        cols: 3,
        granularity: Fp8Granularity::PerToken1x128,
        scale_rule: ScaleRule::Float,
    };
    expect_invalid(
        b.fp8_quantize(
            &qop,
            TensorRef::F32(&[1.0, 2.0, 3.0, 4.0, f32::INFINITY, 6.0]),
        ),
        "x[1][1]",
    );
    expect_invalid(b.fp8_quantize(&qop, TensorRef::F32(&[1.0; 5])), "x");
    expect_invalid(b.fp8_quantize(&qop, TensorRef::E4M3(&[E4M3::ZERO; 6])), "x");
    let a = vec![E4M3::ZERO; 2 * 32];
    let bm = vec![E4M3::ZERO; 8 * 32];
    expect_invalid(
        b.fp8_gemm(&Fp8Gemm::new(2, 8, 24), &a, &[1.0; 2], &bm, &[1.0]),
        "k",
    );
    expect_invalid(
        b.fp8_gemm(&Fp8Gemm::new(2, 12, 32), &a, &[1.0; 2], &bm, &[1.0]),
        "n",
    );
    expect_invalid(
        b.fp8_gemm(&Fp8Gemm::new(2, 8, 32), &a, &[1.0, -1.0], &bm, &[1.0]),
        "a_scales[1][0]",
    );
    expect_invalid(
        b.fp8_gemm(&Fp8Gemm::new(2, 8, 32), &a, &[1.0; 2], &bm[8..], &[1.0]),
        "b",
    );
}

macro_rules! conformance_suite {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn sparse_attention_matches_reference() {
                check_strategy($kind, attention_strategy(), Case::Attention);
            }

            #[test]
            fn sparse_attention_backward_matches_reference() {
                check_strategy($kind, attention_strategy(), |forward| {
                    Case::AttentionBackward(AttentionBackwardCase { forward })
                });
            }

            #[test]
            fn mla_append_and_decode_match_reference() {
                check_strategy($kind, mla_strategy(), Case::Mla);
            }

            #[test]
            fn fp8_quantize_matches_reference() {
                check_strategy($kind, quantize_strategy(), Case::Quantize);
            }

            #[test]
            fn fp8_gemm_matches_reference() {
                check_strategy($kind, gemm_strategy(), Case::Gemm);
            }

            #[test]
            fn invalid_arguments_are_rejected() {
                invalid_arguments($kind);
            }

            #[test]
            fn standard_check_passes() {
                let Some(backend) = open_or_skip($kind) else {
                    return;
                };
                let skipped = std::sync::Mutex::new(None);
                let backward = tessera_testing::check::backward_cases(true, 7);
                for case in tessera_testing::check::standard_cases(true, 7)
                    .into_iter()
                    .chain(backward)
                {
                    run_case(backend.as_ref(), &case, &skipped).unwrap();
                }
                if let Some(why) = skipped.into_inner().unwrap_or_else(|p| p.into_inner()) {
                    println!("skipped (some cases): {why}");
                }
            }
        }
    };
}

conformance_suite!(cpu, BackendKind::Cpu);
conformance_suite!(cuda, BackendKind::Cuda);
conformance_suite!(vulkan, BackendKind::Vulkan);
