//! The attention backward on the GPU against the f64 reference: every plan candidate at small
//! and odd shapes (partial last blocks, a key block no query attends, rows with one block),
//! bitwise determinism (of every plan but the atomic fused-dq ones, whose dq may differ in its
//! last bits; their dk and dv are bitwise the two-pass plan's), the fused-dq plans where many
//! key blocks add into each query tile, and a property test through the `Backend` trait at
//! random masks and token counts, with and without the request for a deterministic dq. The
//! reference runs from the same q, k, v, o, lse and dO (the GPU forward's o and lse), so only the
//! backward is compared. Outputs start as NaN: an element a kernel fails
//! to write shows up. Prints `skipped:` and passes without a CUDA device.

mod common;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use half::{bf16, f16};
use proptest::prelude::*;
use std::sync::Arc;
use tessera_core::ops::attention::AttentionGradients;
use tessera_core::{BlockMask, DType, SparseAttention, Tensor};
use tessera_cuda::plan::heuristics::attention_backward_candidates;
use tessera_cuda::plan::{
    AttentionBackwardDq, AttentionBackwardPlan, AttentionBackwardTiles, AttentionBackwardVariant,
    KernelSpec,
};
use tessera_cuda::{
    AttentionBackwardBuffers, CudaBackend, DeviceBlockMask, DeviceHalf, DeviceHalfMut,
};
use tessera_reference::CpuBackend;
use tessera_testing::backward::{
    assert_gradients_match, assert_unattended_block_zero, random_mask, BackwardInputs as Inputs,
};
use tessera_testing::Rng;

fn up<T: DeviceRepr>(stream: &Arc<CudaStream>, x: &[T]) -> CudaSlice<T> {
    stream.clone_htod(x).unwrap()
}

fn down<T: DeviceRepr + Default + Clone>(stream: &Arc<CudaStream>, x: &CudaSlice<T>) -> Vec<T> {
    stream.clone_dtoh(x).unwrap()
}

/// Runs `plan` through the device API (outputs and workspace prefilled with NaN).
fn run_plan(be: &CudaBackend, x: &Inputs, plan: AttentionBackwardPlan) -> AttentionGradients {
    let stream = be.stream();
    let mask = DeviceBlockMask::new(stream, &x.mask).unwrap();
    let lse = up(stream, &x.lse);
    let mut delta = up(stream, &vec![f32::NAN; x.op.lse_len()]);
    let n = x.op.qkv_len();
    macro_rules! run {
        ($t:ty, $variant:ident, $tensor:ident) => {{
            let h = |t: &Tensor| -> CudaSlice<$t> {
                match t {
                    Tensor::$tensor(v) => up(stream, v),
                    _ => unreachable!("inputs are of the op's dtype"),
                }
            };
            let (q, k, v, o, d_o) = (h(&x.q), h(&x.k), h(&x.v), h(&x.o), h(&x.d_o));
            let nan = vec![<$t>::NAN; n];
            let (mut dq, mut dk, mut dv) = (up(stream, &nan), up(stream, &nan), up(stream, &nan));
            be.sparse_attention_backward_plan_on(
                stream,
                &x.op,
                plan,
                &mask,
                &mut AttentionBackwardBuffers {
                    q: DeviceHalf::$variant(q.as_view()),
                    k: DeviceHalf::$variant(k.as_view()),
                    v: DeviceHalf::$variant(v.as_view()),
                    o: DeviceHalf::$variant(o.as_view()),
                    lse: lse.as_view(),
                    d_o: DeviceHalf::$variant(d_o.as_view()),
                    delta: delta.as_view_mut(),
                    dq: DeviceHalfMut::$variant(dq.as_view_mut()),
                    dk: DeviceHalfMut::$variant(dk.as_view_mut()),
                    dv: DeviceHalfMut::$variant(dv.as_view_mut()),
                },
            )
            .unwrap();
            AttentionGradients {
                dq: Tensor::$tensor(down(stream, &dq)),
                dk: Tensor::$tensor(down(stream, &dk)),
                dv: Tensor::$tensor(down(stream, &dv)),
            }
        }};
    }
    match x.op.dtype {
        DType::F16 => run!(f16, F16, F16),
        _ => run!(bf16, BF16, BF16),
    }
}

/// The two-pass plan of the same tiles as a fused-dq `plan` (None for a two-pass plan).
fn two_pass_of(plan: AttentionBackwardPlan) -> Option<AttentionBackwardPlan> {
    match plan.key_value {
        AttentionBackwardVariant::KeyValue(t) if t.dq.is_fused() => {
            Some(AttentionBackwardPlan::new(AttentionBackwardTiles {
                dq: AttentionBackwardDq::QueryPass,
                ..t
            }))
        }
        _ => None,
    }
}

#[test]
fn every_backward_plan_matches_the_reference() {
    let Some(be) = common::backend() else { return };
    let mut rng = Rng::new(0xbac4);
    for head_dim in [64, 128] {
        for dtype in [DType::F16, DType::BF16] {
            for (block, tokens, density) in [
                (64, 200, 0.4),
                (128, 300, 0.5),
                (64, 64, 1.0),
                (128, 77, 1.0),
                (64, 450, 0.0),
            ] {
                let m = random_mask(&mut rng, tokens, block, density, true);
                let op = SparseAttention::new(2, tokens, 3, head_dim, dtype);
                let x = Inputs::new(&be, op, m, &mut rng);
                let want = x.backward(&CpuBackend::new());
                for plan in attention_backward_candidates(&x.op, block, be.arch_spec()).unwrap() {
                    let what = format!(
                        "d{head_dim} {dtype} B{block} t{tokens} {}",
                        plan.key_value.label()
                    );
                    let got = run_plan(&be, &x, plan);
                    assert_gradients_match(&got, &want, dtype, &what);
                    let again = run_plan(&be, &x, plan);
                    if plan.is_deterministic() {
                        assert_eq!(got, again, "{what}: not bitwise deterministic");
                    } else {
                        // The atomic fused dq may differ in its last bits; dk, dv may not.
                        assert_gradients_match(&again, &want, dtype, &what);
                        assert_eq!((&got.dk, &got.dv), (&again.dk, &again.dv), "{what}");
                    }
                    if let Some(two_pass) = two_pass_of(plan) {
                        // The fused pass's dk and dv are the two-pass kernel's, bitwise (same
                        // products in the same order).
                        let reference = run_plan(&be, &x, two_pass);
                        assert_eq!(
                            (&got.dk, &got.dv),
                            (&reference.dk, &reference.dv),
                            "{what}: dk, dv differ from the two-pass plan's"
                        );
                    }
                    if tokens.div_ceil(block) >= 3 {
                        // Key block 1 is attended by no row: dk = dv = 0 there.
                        assert_unattended_block_zero(&x.op, &got, block, &what);
                    }
                }
            }
        }
    }
}

/// The fused-dq plans (sm_90a) at a shape where many key blocks add into each query tile (a
/// dense mask of 16 blocks of 128, and a random one with a partial last block): the
/// deterministic mode's dq bitwise the same over three runs, both modes within the tolerance
/// of the reference. Prints `skipped:` without a device that has them.
#[test]
fn fused_dq_plans_under_contention() {
    let Some(be) = common::backend() else { return };
    let mut rng = Rng::new(0xf05e);
    let mut ran = 0;
    // Under compute-sanitizer: fewer key blocks and heads (every kernel still runs).
    let (cases, heads): (&[(usize, f64)], usize) = if common::under_sanitizer() {
        (&[(640, 1.0)], 2)
    } else {
        (&[(2048, 1.0), (1900, 0.5)], 4)
    };
    for &(tokens, density) in cases {
        for head_dim in [64, 128] {
            let m = random_mask(&mut rng, tokens, 128, density, false);
            let op = SparseAttention::new(1, tokens, heads, head_dim, DType::BF16);
            let x = Inputs::new(&be, op, m, &mut rng);
            let plans: Vec<AttentionBackwardPlan> =
                attention_backward_candidates(&x.op, 128, be.arch_spec())
                    .unwrap()
                    .into_iter()
                    .filter(|p| p.dq().is_fused())
                    .collect();
            if plans.is_empty() {
                println!("skipped: no fused-dq backward plan on {}", be.arch_spec());
                return;
            }
            let want = x.backward(&CpuBackend::new());
            for plan in plans {
                let what = format!("d{head_dim} t{tokens} {}", plan.key_value.label());
                let first = run_plan(&be, &x, plan);
                assert_gradients_match(&first, &want, DType::BF16, &what);
                if plan.dq() == AttentionBackwardDq::FusedDeterministic {
                    for _ in 0..2 {
                        assert_eq!(run_plan(&be, &x, plan), first, "{what}: dq not bitwise");
                    }
                }
                ran += 1;
            }
        }
    }
    println!("{ran} fused-dq plan runs matched the reference");
}

/// Through the `Backend` trait (the default plan, with and without the request for a
/// deterministic dq; with it, a second run must give the same bits) at random token counts,
/// masks and shapes: a property test (the backend is opened once, so the cases run through
/// proptest's runner).
#[test]
fn backward_through_the_trait_matches_the_reference() {
    let Some(be) = common::backend() else { return };
    let shapes = (
        1usize..=400,
        prop::bool::ANY,
        0.0f64..=1.0,
        prop::bool::ANY,
        prop::bool::ANY,
        1usize..=2,
        1usize..=3,
        any::<u64>(),
        prop::bool::ANY,
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    runner
        .run(
            &shapes,
            |(
                tokens,
                block_is_128,
                density,
                head_dim_is_128,
                bf16_type,
                batch,
                heads,
                seed,
                deterministic,
            )| {
                let mut rng = Rng::new(seed);
                let block = if block_is_128 { 128 } else { 64 };
                let head_dim = if head_dim_is_128 { 128 } else { 64 };
                let dtype = if bf16_type { DType::BF16 } else { DType::F16 };
                let m = random_mask(&mut rng, tokens, block, density, false);
                let op = SparseAttention::new(batch, tokens, heads, head_dim, dtype)
                    .with_deterministic_backward(deterministic);
                let x = Inputs::new(&be, op, m, &mut rng);
                let got = x.backward(&be);
                let what = format!(
                    "t{tokens} B{block} d{head_dim} {dtype} b{batch} h{heads} \
                     deterministic {deterministic}"
                );
                assert_gradients_match(&got, &x.backward(&CpuBackend::new()), dtype, &what);
                if deterministic {
                    assert_eq!(x.backward(&be), got, "{what}: not bitwise deterministic");
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn device_api_names_the_wrong_buffer_or_plan() {
    let Some(be) = common::backend() else { return };
    let stream = be.stream();
    let op = SparseAttention::new(1, 100, 2, 64, DType::BF16);
    let mask = BlockMask::dense(100, 64).unwrap();
    let dmask = DeviceBlockMask::new(stream, &mask).unwrap();
    let n = op.qkv_len();
    let x = up(stream, &vec![bf16::ZERO; n]);
    let f16s = up(stream, &vec![f16::ZERO; n]);
    let lse = up(stream, &vec![0f32; op.lse_len()]);
    let mut delta = up(stream, &vec![0f32; op.lse_len() + 1]);
    let (mut dq, mut dk, mut dv) = (x.clone(), x.clone(), x.clone());
    let plan = be.sparse_attention_backward_plan(&op, &mask).unwrap();
    let mut call = |plan: AttentionBackwardPlan, delta_len: usize, d_o_f16: bool| {
        be.sparse_attention_backward_plan_on(
            stream,
            &op,
            plan,
            &dmask,
            &mut AttentionBackwardBuffers {
                q: DeviceHalf::BF16(x.as_view()),
                k: DeviceHalf::BF16(x.as_view()),
                v: DeviceHalf::BF16(x.as_view()),
                o: DeviceHalf::BF16(x.as_view()),
                lse: lse.as_view(),
                d_o: if d_o_f16 {
                    DeviceHalf::F16(f16s.as_view())
                } else {
                    DeviceHalf::BF16(x.as_view())
                },
                delta: delta.slice_mut(0..delta_len),
                dq: DeviceHalfMut::BF16(dq.as_view_mut()),
                dk: DeviceHalfMut::BF16(dk.as_view_mut()),
                dv: DeviceHalfMut::BF16(dv.as_view_mut()),
            },
        )
        .map_err(|e| e.argument().map(str::to_string))
    };
    assert_eq!(call(plan, op.lse_len(), false), Ok(()));
    assert_eq!(
        call(plan, op.lse_len() + 1, false),
        Err(Some("delta".into()))
    );
    assert_eq!(call(plan, op.lse_len(), true), Err(Some("d_o".into())));
    let f16_op = SparseAttention::new(1, 100, 2, 64, DType::F16);
    let other = be.sparse_attention_backward_plan(&f16_op, &mask).unwrap();
    assert_eq!(call(other, op.lse_len(), false), Err(Some("plan".into())));
}
