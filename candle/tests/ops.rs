//! The candle ops on CPU tensors give the CPU reference's bits (they run it, zero copy), and
//! bad tensors are errors naming the argument with nothing written.

use candle_core::{DType, Device, Tensor};
use half::bf16;
use tessera_candle::{fp8_gemm, fp8_quantize, sparse_attention, MlaCache};
use tessera_core::{
    Backend, BlockMask, Fp8Gemm, Fp8Granularity, Fp8Quantize, MlaAppend, MlaCacheLayout, MlaDecode,
    RadialMaskConfig, ScaleRule, SparseAttention, TensorRef, E4M3,
};
use tessera_reference::CpuBackend;
use tessera_testing::Rng;

fn bf16s(seed: u64, n: usize) -> Vec<bf16> {
    Rng::new(seed)
        .normals(n)
        .into_iter()
        .map(bf16::from_f32)
        .collect()
}

fn radial() -> BlockMask {
    RadialMaskConfig {
        frames: 3,
        tokens_per_frame: 64,
        extra_tokens: 10,
        block_size: 64,
        decay: 0.95,
        sink: false,
    }
    .build()
    .unwrap()
}

#[test]
fn sparse_attention_gives_the_reference_bits() {
    let mask = radial();
    let (b, t, h, d) = (2, mask.tokens(), 2, 64);
    let n = b * t * h * d;
    let (q, k, v) = (bf16s(1, n), bf16s(2, n), bf16s(3, n));
    let tensor = |x: &[bf16]| Tensor::from_slice(x, (b, t, h, d), &Device::Cpu).unwrap();
    let (o, lse) = sparse_attention(&tensor(&q), &tensor(&k), &tensor(&v), &mask, None).unwrap();
    let want = CpuBackend::new()
        .sparse_attention(
            &SparseAttention::new(b, t, h, d, tessera_core::DType::BF16),
            &mask,
            TensorRef::BF16(&q),
            TensorRef::BF16(&k),
            TensorRef::BF16(&v),
        )
        .unwrap();
    assert_eq!(o.dims(), &[b, t, h, d]);
    assert_eq!(lse.dims(), &[b, h, t]);
    let got: Vec<bf16> = o.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(tessera_core::Tensor::BF16(got), want.o);
    assert_eq!(
        lse.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.lse
    );
}

#[test]
fn bad_attention_tensors_are_named() {
    let mask = BlockMask::dense(128, 64).unwrap();
    let q = Tensor::zeros((1, 128, 2, 64), DType::BF16, &Device::Cpu).unwrap();
    let f32q = q.to_dtype(DType::F32).unwrap();
    let e = sparse_attention(&f32q, &q, &q, &mask, None).unwrap_err();
    assert!(e.to_string().contains("`q`"), "{e}");
    let strided = Tensor::zeros((1, 2, 128, 64), DType::BF16, &Device::Cpu)
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    let e = sparse_attention(&q, &strided, &q, &mask, None).unwrap_err();
    assert!(
        e.to_string().contains("`k`") && e.to_string().contains("contiguous"),
        "{e}"
    );
    let f16v = q.to_dtype(DType::F16).unwrap();
    let e = sparse_attention(&q, &q, &f16v, &mask, None).unwrap_err();
    assert!(e.to_string().contains("`v`"), "{e}");
}

#[test]
fn fp8_quantize_and_gemm_give_the_reference_bits() {
    let (m, n, k) = (40, 256, 384);
    let x: Vec<f32> = Rng::new(5).normals(m * k);
    let w: Vec<f32> = Rng::new(6).normals(n * k);
    let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
    let wt = Tensor::from_slice(&w, (n, k), &Device::Cpu).unwrap();
    let (a, sa) = fp8_quantize(&xt, Fp8Granularity::PerToken1x128, ScaleRule::Float).unwrap();
    let (b, sb) = fp8_quantize(&wt, Fp8Granularity::Block128x128, ScaleRule::Float).unwrap();
    let cpu = CpuBackend::new();
    let qa = cpu
        .fp8_quantize(
            &Fp8Quantize {
                rows: m,
                cols: k,
                granularity: Fp8Granularity::PerToken1x128,
                scale_rule: ScaleRule::Float,
            },
            TensorRef::F32(&x),
        )
        .unwrap();
    let a_bits: Vec<u8> = a.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(
        a_bits,
        qa.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(
        sa.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        qa.scales
    );
    let d = fp8_gemm(&a, &sa, &b, &sb).unwrap();
    assert_eq!(d.dims(), &[m, n]);
    let b_bits: Vec<u8> = b.flatten_all().unwrap().to_vec1().unwrap();
    let e4 = |bits: &[u8]| bits.iter().map(|&x| E4M3::from_bits(x)).collect::<Vec<_>>();
    let want = cpu
        .fp8_gemm(
            &Fp8Gemm::new(m, n, k),
            &e4(&a_bits),
            &qa.scales,
            &e4(&b_bits),
            &sb.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        )
        .unwrap();
    assert_eq!(d.flatten_all().unwrap().to_vec1::<bf16>().unwrap(), want);
    let e = fp8_gemm(&a, &sa, &b, &sa).unwrap_err();
    assert!(e.to_string().contains("b_scales"), "{e}");
}

#[test]
fn mla_cache_append_and_decode_give_the_reference_bits() {
    let layout = MlaCacheLayout {
        page_size: 16,
        latent_dim: 128,
        rope_dim: 64,
        format: tessera_core::MlaCacheFormat::Fp8,
    };
    let cache = MlaCache::new(layout, 4, &Device::Cpu).unwrap();
    let tokens = 30;
    let latent = bf16s(7, tokens * 128);
    let rope = bf16s(8, tokens * 64);
    let slots: Vec<i64> = (0..tokens as i64).map(|t| (t * 5) % 64).collect();
    let dev = &Device::Cpu;
    cache
        .append(
            &Tensor::from_slice(&latent, (tokens, 128), dev).unwrap(),
            &Tensor::from_slice(&rope, (tokens, 64), dev).unwrap(),
            &Tensor::from_slice(&slots, tokens, dev).unwrap(),
        )
        .unwrap();
    let mut want = tessera_core::MlaCache::new(layout, 4).unwrap();
    let slots32: Vec<i32> = slots.iter().map(|&s| s as i32).collect();
    let cpu = CpuBackend::new();
    cpu.mla_append(&MlaAppend { tokens }, &mut want, &latent, &rope, &slots32)
        .unwrap();
    let pages: Vec<u8> = cache.pages().flatten_all().unwrap().to_vec1().unwrap();
    assert!(pages == want.as_bytes());

    let op = MlaDecode {
        batch: 2,
        s_q: 2,
        heads: 4,
        max_pages: 4,
        softmax_scale: 0.1,
        layout,
    };
    let q = bf16s(9, op.q_len());
    let table: Vec<i64> = vec![0, 1, 2, 3, 3, 2, 1, 0];
    let lens: Vec<i64> = vec![30, 1];
    let (o, lse) = cache
        .decode(
            &Tensor::from_slice(&q, (2, 2, 4, 192), dev).unwrap(),
            &Tensor::from_slice(&table, (2, 4), dev).unwrap(),
            &Tensor::from_slice(&lens, 2, dev).unwrap(),
            0.1,
        )
        .unwrap();
    let table32: Vec<i32> = table.iter().map(|&x| x as i32).collect();
    let want_out = cpu.mla_decode(&op, &want, &q, &table32, &[30, 1]).unwrap();
    assert_eq!(
        o.flatten_all().unwrap().to_vec1::<bf16>().unwrap(),
        want_out.o
    );
    assert_eq!(
        lse.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want_out.lse
    );

    // A slot out of range is named and nothing is written.
    let before = pages;
    let e = cache
        .append(
            &Tensor::from_slice(&latent[..128], (1, 128), dev).unwrap(),
            &Tensor::from_slice(&rope[..64], (1, 64), dev).unwrap(),
            &Tensor::from_slice(&[1000i64], 1, dev).unwrap(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("slots"), "{e}");
    let after: Vec<u8> = cache.pages().flatten_all().unwrap().to_vec1().unwrap();
    assert!(after == before);
}

#[test]
fn mla_indices_may_be_i32_or_i64_on_the_cpu() {
    let layout = MlaCacheLayout {
        page_size: 16,
        latent_dim: 128,
        rope_dim: 64,
        format: tessera_core::MlaCacheFormat::Bf16,
    };
    let dev = &Device::Cpu;
    let (a, b) = (
        MlaCache::new(layout, 2, dev).unwrap(),
        MlaCache::new(layout, 2, dev).unwrap(),
    );
    let latent = Tensor::from_slice(&bf16s(1, 20 * 128), (20, 128), dev).unwrap();
    let rope = Tensor::from_slice(&bf16s(2, 20 * 64), (20, 64), dev).unwrap();
    let slots: Vec<i32> = (0..20).rev().collect();
    a.append(
        &latent,
        &rope,
        &Tensor::from_slice(&slots, 20, dev).unwrap(),
    )
    .unwrap();
    let slots64: Vec<i64> = slots.iter().map(|&s| s as i64).collect();
    b.append(
        &latent,
        &rope,
        &Tensor::from_slice(&slots64, 20, dev).unwrap(),
    )
    .unwrap();
    let bytes = |c: &MlaCache| c.pages().flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert!(bytes(&a) == bytes(&b));

    let q = Tensor::from_slice(&bf16s(3, 2 * 4 * 192), (1, 2, 4, 192), dev).unwrap();
    let (o32, lse32) = a
        .decode(
            &q,
            &Tensor::from_slice(&[1i32, 0], (1, 2), dev).unwrap(),
            &Tensor::from_slice(&[20i32], 1, dev).unwrap(),
            0.1,
        )
        .unwrap();
    let (o64, lse64) = a
        .decode(
            &q,
            &Tensor::from_slice(&[1i64, 0], (1, 2), dev).unwrap(),
            &Tensor::from_slice(&[20i64], 1, dev).unwrap(),
            0.1,
        )
        .unwrap();
    assert!(lse32.device().is_cpu());
    assert_eq!(
        o32.flatten_all().unwrap().to_vec1::<bf16>().unwrap(),
        o64.flatten_all().unwrap().to_vec1::<bf16>().unwrap()
    );
    assert_eq!(
        lse32.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        lse64.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );

    // An index that does not fit i32, or of another dtype: named.
    let e = a
        .decode(
            &q,
            &Tensor::from_slice(&[1i64 << 40, 0], (1, 2), dev).unwrap(),
            &Tensor::from_slice(&[20i64], 1, dev).unwrap(),
            0.1,
        )
        .unwrap_err();
    assert!(e.to_string().contains("block_table"), "{e}");
    let e = a
        .decode(
            &q,
            &Tensor::from_slice(&[1i32, 0], (1, 2), dev).unwrap(),
            &Tensor::from_slice(&[20f32], 1, dev).unwrap(),
            0.1,
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("seq_lens") && e.to_string().contains("i32 or i64"),
        "{e}"
    );
}
