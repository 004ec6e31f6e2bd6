//! Times every attention backward candidate (the two-pass plans and, on sm_90a, the fused-dq
//! plans) at the nvcc harness's shapes (1 batch x 24 heads x 32768 tokens, bf16, head_dim 128
//! and 64, mask blocks of 128, random of density 0.25, dense, and radial masks of the bench's
//! HunyuanVideo and Wan settings over frames of 3840 tokens) through the device API (no
//! copies in the timed loop; a fused plan's per-call workspace allocation and zeroing are
//! timed), and prints milliseconds and TFLOP/s of 5 matmuls
//! ([`SparseAttention::backward_flops`]) with the ratio to the default pick. Prints `skipped:`
//! and passes without a CUDA device.

mod common;

use std::time::Instant;
use tessera_core::{DType, RadialMaskConfig, SparseAttention};
use tessera_cuda::plan::heuristics::{attention_backward_candidates, pick_attention_backward};
use tessera_cuda::plan::KernelSpec;
use tessera_cuda::{AttentionBackwardBuffers, DeviceBlockMask, DeviceHalf, DeviceHalfMut};
use tessera_testing::backward::random_mask;
use tessera_testing::Rng;

#[test]
fn attention_backward_timing() {
    let Some(backend) = common::backend() else {
        return;
    };
    // Under compute-sanitizer (its full run): a short sequence, every candidate still runs.
    let tokens = if common::under_sanitizer() {
        1024
    } else {
        32768
    };
    let (batch, heads) = (1, 24);
    let op = SparseAttention::new(batch, tokens, heads, 128, DType::BF16);
    let stream = backend.stream().clone();
    let mut rng = Rng::new(0x7b3d);
    let fill = |rng: &mut Rng| -> Vec<half::bf16> {
        rng.normals(op.qkv_len())
            .into_iter()
            .map(half::bf16::from_f32)
            .collect()
    };
    let (q, k, v, o, d_o) = (
        stream.clone_htod(&fill(&mut rng)).unwrap(),
        stream.clone_htod(&fill(&mut rng)).unwrap(),
        stream.clone_htod(&fill(&mut rng)).unwrap(),
        stream.clone_htod(&fill(&mut rng)).unwrap(),
        stream.clone_htod(&fill(&mut rng)).unwrap(),
    );
    // A plausible lse: log(keys attended) plus a margin, so that P stays finite.
    let lse = stream.clone_htod(&vec![12.0f32; op.lse_len()]).unwrap();
    let mut delta = stream.alloc_zeros::<f32>(op.lse_len()).unwrap();
    let mut grads = [
        stream.alloc_zeros::<half::bf16>(op.qkv_len()).unwrap(),
        stream.alloc_zeros::<half::bf16>(op.qkv_len()).unwrap(),
        stream.alloc_zeros::<half::bf16>(op.qkv_len()).unwrap(),
    ];
    println!(
        "{}: b{batch} t{tokens} h{heads} bf16 B128",
        backend.context().name().unwrap_or_default()
    );
    // Random masks, a dense one, and radial masks of the bench's two settings (HunyuanVideo:
    // decay 0.95, no sink; Wan: decay 0.2, a sink) over frames of 3840 tokens.
    let radial = |decay: f64, sink: bool| {
        let frames = (tokens / 3840).max(1);
        RadialMaskConfig {
            frames,
            tokens_per_frame: tokens / frames,
            extra_tokens: tokens - frames * (tokens / frames),
            block_size: 128,
            decay,
            sink,
        }
        .build()
        .unwrap()
    };
    let masks = [
        ("random", random_mask(&mut rng, tokens, 128, 0.25, false)),
        ("dense", random_mask(&mut rng, tokens, 128, 1.0, false)),
        ("radial hunyuan", radial(0.95, false)),
        ("radial wan", radial(0.2, true)),
    ];
    for head_dim in [128, 64] {
        for (mask_name, mask) in &masks {
            let op = SparseAttention::new(batch, tokens, heads, head_dim, DType::BF16);
            let n = op.qkv_len();
            let dmask = DeviceBlockMask::new(&stream, mask).unwrap();
            let plans = attention_backward_candidates(&op, 128, backend.arch_spec()).unwrap();
            let default = pick_attention_backward(&plans, op.deterministic_backward);
            let mut times = Vec::new();
            for plan in &plans {
                let [dq, dk, dv] = &mut grads;
                let mut run = || {
                    backend
                        .sparse_attention_backward_plan_on(
                            &stream,
                            &op,
                            *plan,
                            &dmask,
                            &mut AttentionBackwardBuffers {
                                q: DeviceHalf::BF16(q.slice(..n)),
                                k: DeviceHalf::BF16(k.slice(..n)),
                                v: DeviceHalf::BF16(v.slice(..n)),
                                o: DeviceHalf::BF16(o.slice(..n)),
                                lse: lse.as_view(),
                                d_o: DeviceHalf::BF16(d_o.slice(..n)),
                                delta: delta.as_view_mut(),
                                dq: DeviceHalfMut::BF16(dq.slice_mut(..n)),
                                dk: DeviceHalfMut::BF16(dk.slice_mut(..n)),
                                dv: DeviceHalfMut::BF16(dv.slice_mut(..n)),
                            },
                        )
                        .unwrap()
                };
                for _ in 0..2 {
                    run();
                }
                stream.synchronize().unwrap();
                let iters = 10;
                let start = Instant::now();
                for _ in 0..iters {
                    run();
                }
                stream.synchronize().unwrap();
                times.push(start.elapsed().as_secs_f64() / iters as f64);
            }
            for (i, (plan, seconds)) in plans.iter().zip(&times).enumerate() {
                println!(
                    "timing-bwd: d{head_dim} {mask_name:<14} density {:.3} {:?} {:<28} {:8.3} ms \
                     {:6.1} TFLOP/s {:.3}x the default{}  {}",
                    mask.density(),
                    plan.key_value.tile_kernel(),
                    format!("{:?} stages {}", plan.dq(), stages(plan)),
                    seconds * 1e3,
                    op.backward_flops(mask) / seconds / 1e12,
                    times[default] / seconds,
                    if i == default { " (default)" } else { "" },
                    plan.key_value.label()
                );
            }
        }
    }
    let dq = stream.clone_dtoh(&grads[0]).unwrap();
    assert!(dq.iter().all(|x| x.is_finite()), "non-finite dq");
}

fn stages(plan: &tessera_cuda::plan::AttentionBackwardPlan) -> u32 {
    match plan.key_value {
        tessera_cuda::plan::AttentionBackwardVariant::KeyValue(t) => t.stages,
        _ => 0,
    }
}
