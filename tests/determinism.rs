//! Determinism: every op run twice on the same inputs, on the same backend and device, gives
//! bitwise-identical outputs (the guarantee each op's documentation states: no path of Tessera
//! accumulates floats with atomics, except the attention backward's dq when the op does not ask
//! for determinism; the MLA decode's split-KV partials are merged in a fixed
//! order, and the split count depends only on the shape and the device). The shapes include an
//! MLA decode long enough to be split, and partial blocks everywhere; the attention backward
//! runs from the forward's outputs, with [`SparseAttention::deterministic_backward`] set (without
//! it, dq may be added in any order where that is faster: CUDA on sm_90a).
//!
//! Runs on the CPU reference and on Vulkan (lavapipe in CI); on CUDA where there is a device
//! (prints `skipped:` otherwise).

mod common;

use common::open_or_skip;
use tessera::{
    bf16, Backend, BackendKind, BlockMask, DType, Error, Fp8Gemm, Fp8Granularity, Fp8Quantize,
    MlaAppend, MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeVarlen,
    RadialMaskConfig, ScaleRule, SparseAttention, Tensor,
};
use tessera_testing::Rng;

/// Every output of every op, as bit patterns.
fn run_all(backend: &dyn Backend) -> Vec<(String, Vec<u32>)> {
    let mut out = Vec::new();
    let mut rng = Rng::new(77);
    let f32_bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let bf16_bits = |v: &[bf16]| v.iter().map(|x| x.to_bits() as u32).collect::<Vec<u32>>();

    // Attention: a radial mask with partial blocks, both element types.
    let mask = RadialMaskConfig {
        frames: 3,
        tokens_per_frame: 100,
        extra_tokens: 21,
        block_size: 64,
        decay: 0.5,
        sink: true,
    }
    .build()
    .unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let op =
            SparseAttention::new(1, mask.tokens(), 2, 64, dtype).with_deterministic_backward(true);
        let x = Tensor::from_f32(dtype, &rng.normals(op.qkv_len()));
        let r = backend
            .sparse_attention(&op, &mask, x.as_ref(), x.as_ref(), x.as_ref())
            .unwrap();
        out.push((format!("attention {dtype} o"), f32_bits(&r.o.to_f32_vec())));
        out.push((format!("attention {dtype} lse"), f32_bits(&r.lse)));
        // The backward from the forward's o and lse.
        let d_o = Tensor::from_f32(dtype, &rng.normals(op.qkv_len()));
        let g = backend
            .sparse_attention_backward(
                &op,
                &mask,
                x.as_ref(),
                x.as_ref(),
                x.as_ref(),
                r.o.as_ref(),
                &r.lse,
                d_o.as_ref(),
            )
            .unwrap();
        for (name, t) in [("dq", &g.dq), ("dk", &g.dk), ("dv", &g.dv)] {
            out.push((
                format!("attention backward {dtype} {name}"),
                f32_bits(&t.to_f32_vec()),
            ));
        }
    }
    let dense = BlockMask::dense(200, 128).unwrap();
    let op = SparseAttention::new(1, 200, 1, 128, DType::BF16);
    let x = Tensor::from_f32(DType::BF16, &rng.normals(op.qkv_len()));
    let r = backend
        .sparse_attention(&op, &dense, x.as_ref(), x.as_ref(), x.as_ref())
        .unwrap();
    out.push(("attention dense o".into(), f32_bits(&r.o.to_f32_vec())));
    // The backward with blocks of 128 and head_dim 128 (where CUDA on sm_90a has the fused-dq
    // plans), deterministic on request.
    let op = op.with_deterministic_backward(true);
    let g = backend
        .sparse_attention_backward(
            &op,
            &dense,
            x.as_ref(),
            x.as_ref(),
            x.as_ref(),
            r.o.as_ref(),
            &r.lse,
            x.as_ref(),
        )
        .unwrap();
    for (name, t) in [("dq", &g.dq), ("dk", &g.dk), ("dv", &g.dv)] {
        out.push((
            format!("attention dense backward {name}"),
            f32_bits(&t.to_f32_vec()),
        ));
    }

    // MLA: append, then a decode long enough to be split over several workgroups / CTAs.
    for format in [MlaCacheFormat::Bf16, MlaCacheFormat::Fp8] {
        let layout = MlaCacheLayout {
            page_size: 64,
            latent_dim: 512,
            rope_dim: 64,
            format,
        };
        let tokens: usize = 1500;
        let pages = tokens.div_ceil(64);
        let mut cache = MlaCache::new(layout, pages).unwrap();
        let bf = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<_>>();
        let latent = bf(rng.normals(tokens * 512));
        let rope = bf(rng.normals(tokens * 64));
        let mut slots: Vec<i32> = (0..tokens as i32).collect();
        rng.shuffle(&mut slots);
        backend
            .mla_append(&MlaAppend { tokens }, &mut cache, &latent, &rope, &slots)
            .unwrap();
        out.push((
            format!("mla append {format:?}"),
            cache.as_bytes().iter().map(|&b| b as u32).collect(),
        ));
        let op = MlaDecode {
            batch: 1,
            s_q: 2,
            heads: 16,
            max_pages: pages,
            softmax_scale: 192f32.powf(-0.5),
            layout,
        };
        let q = bf(rng.normals(op.q_len()));
        let table: Vec<i32> = (0..pages as i32).collect();
        let r = backend
            .mla_decode(&op, &cache, &q, &table, &[tokens as i32])
            .unwrap();
        out.push((format!("mla decode {format:?} o"), bf16_bits(&r.o)));
        out.push((format!("mla decode {format:?} lse"), f32_bits(&r.lse)));

        // The variable-length decode: two requests over the same pages, 3 and 1 queries
        // (backends without it say Unsupported, and have nothing to compare).
        let varlen = MlaDecodeVarlen {
            batch: 2,
            total_q: 4,
            max_s_q: 3,
            heads: 16,
            max_pages: pages,
            softmax_scale: 192f32.powf(-0.5),
            layout,
        };
        let q = bf(rng.normals(varlen.q_len()));
        let tables = [table.clone(), table].concat();
        let lens = [tokens as i32, 700];
        match backend.mla_decode_varlen(&varlen, &cache, &q, &[0, 3, 4], &tables, &lens) {
            Ok(r) => {
                out.push((format!("mla decode varlen {format:?} o"), bf16_bits(&r.o)));
                out.push((
                    format!("mla decode varlen {format:?} lse"),
                    f32_bits(&r.lse),
                ));
            }
            Err(Error::Unsupported { .. }) => {}
            Err(e) => panic!("mla_decode_varlen: {e}"),
        }
    }

    // FP8 quantizers and the GEMM.
    for (granularity, scale_rule) in [
        (Fp8Granularity::PerToken1x128, ScaleRule::Float),
        (Fp8Granularity::Block128x128, ScaleRule::PowerOfTwo),
    ] {
        let op = Fp8Quantize {
            rows: 150,
            cols: 333,
            granularity,
            scale_rule,
        };
        let x = Tensor::from_f32(DType::BF16, &rng.normals(op.len()));
        let r = backend.fp8_quantize(&op, x.as_ref()).unwrap();
        out.push((
            format!("quantize {granularity:?} values"),
            r.values.iter().map(|v| v.to_bits() as u32).collect(),
        ));
        out.push((
            format!("quantize {granularity:?} scales"),
            f32_bits(&r.scales),
        ));
    }
    let op = Fp8Gemm::new(130, 264, 400);
    let quantize = |rows, granularity, rng: &mut Rng| {
        let q = Fp8Quantize {
            rows,
            cols: op.k,
            granularity,
            scale_rule: ScaleRule::Float,
        };
        tessera::reference::fp8::quantize(&q, &rng.normals(q.len()))
    };
    let a = quantize(op.m, Fp8Granularity::PerToken1x128, &mut rng);
    let b = quantize(op.n, Fp8Granularity::Block128x128, &mut rng);
    let d = backend
        .fp8_gemm(&op, &a.values, &a.scales, &b.values, &b.scales)
        .unwrap();
    out.push(("gemm d".into(), bf16_bits(&d)));
    out
}

fn twice_identical(kind: BackendKind) {
    let Some(backend) = open_or_skip(kind) else {
        return;
    };
    let first = run_all(backend.as_ref());
    let second = run_all(backend.as_ref());
    assert_eq!(first.len(), second.len());
    for ((name, a), (_, b)) in first.iter().zip(&second) {
        let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differing,
            0,
            "{kind} {name}: {differing} of {} elements differ between two runs",
            a.len()
        );
    }
    println!(
        "{kind}: {} outputs bitwise identical across two runs",
        first.len()
    );
}

#[test]
fn cpu_is_deterministic() {
    twice_identical(BackendKind::Cpu);
}

#[test]
fn vulkan_is_deterministic() {
    twice_identical(BackendKind::Vulkan);
}

#[test]
fn cuda_is_deterministic() {
    twice_identical(BackendKind::Cuda);
}
