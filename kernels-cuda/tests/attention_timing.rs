//! Times the sparse-attention kernel at large representative shapes (1 batch x 24 heads x 8192
//! tokens, bf16, head_dim 128 and 64) with dense masks and a radial mask, through the device API
//! (no copies in the timed loop), and prints milliseconds and TFLOP/s (counting every on block
//! in full). Prints `skipped:` and passes without a CUDA device.

mod common;

use std::time::Instant;
use tessera_core::{BlockMask, DType, RadialMaskConfig, SparseAttention};
use tessera_cuda::{DeviceBlockMask, DeviceHalf, DeviceHalfMut};

#[test]
fn sparse_attention_timing() {
    // skipped: without a CUDA device (a failure where CUDA is required)
    let Some(backend) = common::backend() else {
        return;
    };
    let (batch, tokens, heads) = (1, 8192, 24);
    // Buffers for the largest head_dim; smaller ones use a prefix.
    let op = SparseAttention::new(batch, tokens, heads, 128, DType::BF16);
    let stream = backend.stream().clone();

    // Inputs: a cheap deterministic pseudo-random fill in [-2, 2).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut fill = || -> Vec<half::bf16> {
        (0..op.qkv_len())
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                half::bf16::from_f32(((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
            })
            .collect()
    };
    let (q, k, v) = (
        stream.clone_htod(&fill()).unwrap(),
        stream.clone_htod(&fill()).unwrap(),
        stream.clone_htod(&fill()).unwrap(),
    );
    let mut o = stream.alloc_zeros::<half::bf16>(op.qkv_len()).unwrap();
    let mut lse = stream.alloc_zeros::<f32>(op.lse_len()).unwrap();

    let radial = RadialMaskConfig {
        frames: 32,
        tokens_per_frame: 256,
        extra_tokens: 0,
        block_size: 128,
        decay: 1.0,
        sink: false,
    }
    .build()
    .unwrap();
    let cases = [
        ("dense B128", 128, BlockMask::dense(tokens, 128).unwrap()),
        ("dense B64", 128, BlockMask::dense(tokens, 64).unwrap()),
        ("radial 32x256 B128", 128, radial.clone()),
        ("dense B64 d64", 64, BlockMask::dense(tokens, 64).unwrap()),
        ("radial 32x256 B128 d64", 64, radial),
    ];
    println!(
        "{}: b{batch} t{tokens} h{heads} bf16",
        backend.context().name().unwrap_or_default()
    );
    for (name, head_dim, mask) in cases {
        let op = SparseAttention::new(batch, tokens, heads, head_dim, DType::BF16);
        let n = op.qkv_len();
        let dmask = DeviceBlockMask::new(&stream, &mask).unwrap();
        let mut run = || {
            backend
                .sparse_attention_on(
                    &stream,
                    &op,
                    &dmask,
                    &DeviceHalf::BF16(q.slice(..n)),
                    &DeviceHalf::BF16(k.slice(..n)),
                    &DeviceHalf::BF16(v.slice(..n)),
                    &mut DeviceHalfMut::BF16(o.slice_mut(..n)),
                    &mut lse.as_view_mut(),
                )
                .unwrap()
        };
        for _ in 0..3 {
            run();
        }
        stream.synchronize().unwrap();
        let iters = 20;
        let start = Instant::now();
        for _ in 0..iters {
            run();
        }
        stream.synchronize().unwrap();
        let seconds = start.elapsed().as_secs_f64() / iters as f64;
        println!(
            "timing: {name:<24} d{head_dim} density {:.3}  {:8.3} ms  {:6.1} TFLOP/s",
            mask.density(),
            seconds * 1e3,
            op.flops(&mask) / seconds / 1e12
        );
    }
    let lse_host = stream.clone_dtoh(&lse).unwrap();
    assert!(lse_host.iter().all(|x| x.is_finite()), "non-finite lse");
}
