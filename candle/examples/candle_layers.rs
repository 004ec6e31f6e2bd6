//! A small MLA decode step and a radial attention layer through candle, on a CUDA device when
//! the `cuda` feature is on and one is there (it says which), else on the CPU:
//! `cargo run -p tessera-candle --example candle_layers` (CPU),
//! `cargo run -p tessera-candle --features cuda --example candle_layers` (CUDA: needs nvcc to
//! build, see ci/cuda-toolkit.sh).

use candle_core::{DType, Device, Tensor};
use tessera_candle::{fp8_gemm, fp8_quantize, sparse_attention, MlaCache};
use tessera_core::{Fp8Granularity, MlaCacheLayout, RadialMaskConfig, ScaleRule};

/// CUDA device 0 with the `cuda` feature when it opens, else the CPU (saying why).
fn device() -> Device {
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(d) => return d,
        Err(e) => println!("no CUDA device ({e}): running on the CPU"),
    }
    Device::Cpu
}

fn main() -> candle_core::Result<()> {
    let dev = device();
    println!("device: {dev:?}");
    // Radial attention over 4 frames of 128 tokens and 32 text tokens, then an FP8 projection.
    let mask = RadialMaskConfig {
        frames: 4,
        tokens_per_frame: 128,
        extra_tokens: 32,
        block_size: 64,
        decay: 0.95,
        sink: false,
    }
    .build()
    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let shape = (1, mask.tokens(), 2, 64);
    let q = Tensor::randn(0f32, 1.0, shape, &dev)?.to_dtype(DType::BF16)?;
    let k = Tensor::randn(0f32, 1.0, shape, &dev)?.to_dtype(DType::BF16)?;
    let v = Tensor::randn(0f32, 1.0, shape, &dev)?.to_dtype(DType::BF16)?;
    let (o, lse) = sparse_attention(&q, &k, &v, &mask, None)?;
    let x = o.reshape((mask.tokens(), 128))?;
    let (xq, xs) = fp8_quantize(&x, Fp8Granularity::PerToken1x128, ScaleRule::Float)?;
    let w = Tensor::randn(0f32, 0.1, (256, 128), &dev)?;
    let (wq, ws) = fp8_quantize(&w, Fp8Granularity::Block128x128, ScaleRule::Float)?;
    let y = fp8_gemm(&xq, &xs, &wq, &ws)?;
    println!(
        "radial layer: density {:.3}, o {:?}, lse {:?}, projected {:?} (mean |y| {:.4})",
        mask.density(),
        o.dims(),
        lse.dims(),
        y.dims(),
        y.to_dtype(DType::F32)?
            .abs()?
            .mean_all()?
            .to_scalar::<f32>()?
    );

    // One MLA decode step: 4 requests of 100 cached tokens each, then a decode. Indices are
    // i32 (the CUDA kernels read i32).
    let layout = MlaCacheLayout::default();
    let cache = MlaCache::new(layout, 16, &dev)?;
    let history = Tensor::randn(0f32, 1.0, (4 * 100, 512), &dev)?.to_dtype(DType::BF16)?;
    let rope = Tensor::randn(0f32, 1.0, (4 * 100, 64), &dev)?.to_dtype(DType::BF16)?;
    // Request r owns pages 4r..4r+4; its token t is slot (4r) * 64 + t.
    let slots: Vec<i32> = (0..4)
        .flat_map(|r| (0..100).map(move |t| r * 256 + t))
        .collect();
    cache.append(&history, &rope, &Tensor::from_vec(slots, 400, &dev)?)?;
    let table: Vec<i32> = (0..16).collect();
    let q = Tensor::randn(0f32, 1.0, (4, 1, 16, 576), &dev)?.to_dtype(DType::BF16)?;
    let (o, lse) = cache.decode(
        &q,
        &Tensor::from_vec(table, (4, 4), &dev)?,
        &Tensor::from_vec(vec![100i32; 4], 4, &dev)?,
        192f32.powf(-0.5),
    )?;
    println!(
        "MLA decode step: o {:?}, lse {:?} (mean lse {:.4}), on {:?}",
        o.dims(),
        lse.dims(),
        lse.mean_all()?.to_scalar::<f32>()?,
        o.device()
    );
    Ok(())
}
