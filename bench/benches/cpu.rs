//! Criterion benches of the CPU-side work, so that regressions there show too: building the
//! radial masks (HunyuanVideo 117 frames, Wan2.1 69 frames), the FP8 quantizers at 4096 x 7168
//! (1x128 and 128x128), and the f64 reference (FP8 GEMM 128 x 256 x 512, block-sparse attention
//! 1 x 1024 tokens x 2 heads x 64).
//!
//! Run with `cargo bench -p tessera-bench --bench cpu` (`cargo test` does not build it; with
//! `cargo test --benches` each bench runs once, quickly).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tessera::reference::attention::{block_sparse_attention, AttentionShape};
use tessera::reference::fp8::{fp8_gemm, quantize};
use tessera::{Fp8Gemm, Fp8Granularity, Fp8Quantize, RadialMaskConfig, ScaleRule, E4M3};

/// Deterministic values in [-amp, amp).
fn values(n: usize, amp: f32, mut state: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

fn masks(c: &mut Criterion) {
    let mut g = c.benchmark_group("radial_mask");
    g.sample_size(10);
    let hunyuan = RadialMaskConfig {
        frames: 30,
        tokens_per_frame: 3840,
        extra_tokens: 0,
        block_size: 128,
        decay: 0.95,
        sink: false,
    };
    let wan = RadialMaskConfig {
        frames: 18,
        decay: 0.2,
        sink: true,
        ..hunyuan.clone()
    };
    g.bench_function("hunyuan_117f", |b| {
        b.iter(|| black_box(&hunyuan).build().unwrap())
    });
    g.bench_function("wan_69f", |b| b.iter(|| black_box(&wan).build().unwrap()));
    g.finish();
}

fn quantizers(c: &mut Criterion) {
    let mut g = c.benchmark_group("fp8_quantize_4096x7168");
    g.sample_size(10);
    let (rows, cols) = (4096, 7168);
    let x = values(rows * cols, 3.0, 1);
    for (name, granularity) in [
        ("1x128", Fp8Granularity::PerToken1x128),
        ("128x128", Fp8Granularity::Block128x128),
    ] {
        let op = Fp8Quantize {
            rows,
            cols,
            granularity,
            scale_rule: ScaleRule::Float,
        };
        g.bench_function(name, |b| b.iter(|| quantize(black_box(&op), black_box(&x))));
    }
    g.finish();
}

fn reference(c: &mut Criterion) {
    let mut g = c.benchmark_group("reference");
    g.sample_size(10);
    let (m, n, k) = (128, 256, 512);
    let op = Fp8Gemm::new(m, n, k);
    let a: Vec<E4M3> = values(m * k, 400.0, 2)
        .into_iter()
        .map(E4M3::from_f32)
        .collect();
    let b: Vec<E4M3> = values(n * k, 400.0, 3)
        .into_iter()
        .map(E4M3::from_f32)
        .collect();
    let sa = vec![0.01f32; op.a_scales_len()];
    let sb = vec![0.02f32; op.b_scales_len()];
    g.bench_function("fp8_gemm_128x256x512", |bch| {
        bch.iter(|| fp8_gemm(black_box(&op), &a, &sa, &b, &sb))
    });

    let mask = RadialMaskConfig {
        frames: 8,
        tokens_per_frame: 128,
        extra_tokens: 0,
        block_size: 64,
        decay: 1.0,
        sink: false,
    }
    .build()
    .unwrap();
    let shape = AttentionShape {
        batch: 1,
        q_tokens: mask.tokens(),
        kv_tokens: mask.tokens(),
        heads: 2,
        head_dim: 64,
    };
    let len = mask.tokens() * 2 * 64;
    let q: Vec<f64> = values(len, 1.0, 4).into_iter().map(f64::from).collect();
    let kk: Vec<f64> = values(len, 1.0, 5).into_iter().map(f64::from).collect();
    let v: Vec<f64> = values(len, 1.0, 6).into_iter().map(f64::from).collect();
    g.bench_function("sparse_attention_1024x2x64", |bch| {
        bch.iter(|| block_sparse_attention(shape, &q, &kk, &v, 0.125, black_box(&mask)))
    });
    g.finish();
}

criterion_group!(benches, masks, quantizers, reference);
criterion_main!(benches);
