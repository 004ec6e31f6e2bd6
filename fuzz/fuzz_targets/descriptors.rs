//! Every descriptor's validation with fuzzed shapes, lengths, slots, block tables, sequence
//! lengths and scales: it returns Ok or a typed error and never panics (a panic is a crash).
//! Valid descriptors are only checked against the short slices the input provides, so nothing
//! large is ever allocated.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::ops::attention::SparseAttention;
use tessera_core::{
    bf16, BlockMask, DType, Error, Fp8Gemm, Fp8Granularity, Fp8Quantize, MlaAppend, MlaCache,
    MlaCacheFormat, MlaCacheLayout, MlaDecode, ScaleRule, TensorRef, E4M3,
};

#[path = "input.rs"]
mod input;
use input::Input;

fn typed(r: Result<(), Error>) {
    if let Err(e) = r {
        assert!(
            matches!(e, Error::InvalidArgument { .. } | Error::OutOfMemory { .. }),
            "{e:?}"
        );
    }
}

fn layout(i: &mut Input) -> MlaCacheLayout {
    MlaCacheLayout {
        page_size: i.size(),
        latent_dim: if i.bool() { 128 } else { i.size() },
        rope_dim: if i.bool() { 16 } else { i.size() },
        format: if i.bool() {
            MlaCacheFormat::Fp8
        } else {
            MlaCacheFormat::Bf16
        },
    }
}

/// A cache of at most 1 MiB, or `None` (the constructor is fuzzed on every layout, but only
/// small valid ones are built).
fn cache(layout: MlaCacheLayout, pages: usize) -> Option<MlaCache> {
    let valid =
        layout.validate().is_ok() && pages > 0 && pages <= i32::MAX as usize / layout.page_size;
    if valid && pages.saturating_mul(layout.page_bytes()) > 1 << 20 {
        return None;
    }
    match MlaCache::new(layout, pages) {
        Ok(c) => Some(c),
        Err(e) => {
            typed(Err(e));
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input(data);
    match i.size() % 5 {
        0 => {
            let op = SparseAttention {
                batch: i.size(),
                tokens: i.size(),
                heads: i.size(),
                head_dim: if i.bool() { 64 } else { i.size() },
                dtype: [DType::BF16, DType::F16, DType::F32][i.size() % 3],
                softmax_scale: i.f32(),
                deterministic_backward: i.bool(),
            };
            let _ = (op.qkv_len(), op.lse_len());
            let tokens = 1 + i.size() % 300;
            if let Ok(mask) = BlockMask::dense(tokens, if i.bool() { 64 } else { 128 }) {
                let x = vec![bf16::ZERO; i.size() % 4096];
                let t = TensorRef::BF16(&x);
                typed(op.validate_args(&mask, t, t, t));
            }
        }
        1 => {
            let layout = layout(&mut i);
            let pages = i.size();
            let op = MlaAppend { tokens: i.size() };
            if let Some(cache) = cache(layout, pages) {
                let latent = vec![bf16::ONE; i.size() % 4096];
                let rope = vec![bf16::ONE; i.size() % 512];
                let slots = i.list(|i| i.i32());
                typed(op.validate_args(&cache, &latent, &rope, &slots));
            }
        }
        2 => {
            let layout = layout(&mut i);
            let op = MlaDecode {
                batch: i.size(),
                s_q: i.size(),
                heads: i.size(),
                max_pages: i.size(),
                softmax_scale: i.f32(),
                layout,
            };
            let _ = (op.q_len(), op.o_len(), op.lse_len(), op.capacity());
            typed(op.validate());
            let pages = i.size();
            if let Some(cache) = cache(layout, pages) {
                let q = vec![bf16::ONE; i.size() % 8192];
                let table = i.list(|i| i.i32());
                let lens = i.list(|i| i.i32());
                typed(op.validate_args(&cache, &q, &table, &lens));
            }
        }
        3 => {
            let op = Fp8Quantize {
                rows: i.size(),
                cols: i.size(),
                granularity: if i.bool() {
                    Fp8Granularity::Block128x128
                } else {
                    Fp8Granularity::PerToken1x128
                },
                scale_rule: if i.bool() {
                    ScaleRule::PowerOfTwo
                } else {
                    ScaleRule::Float
                },
            };
            let _ = (op.len(), op.scales_len());
            let x = i.list(|i| i.f32());
            typed(op.validate_args(TensorRef::F32(&x)));
        }
        _ => {
            let op = Fp8Gemm::new(i.size(), i.size(), i.size());
            let _ = (op.a_len(), op.d_len(), op.a_scales_len(), op.b_scales_len());
            let a = vec![E4M3::ZERO; i.size() % 4096];
            let b = vec![E4M3::ZERO; i.size() % 4096];
            let sa = i.list(|i| i.f32());
            let sb = i.list(|i| i.f32());
            typed(op.validate_args(&a, &sa, &b, &sb));
        }
    }
});
