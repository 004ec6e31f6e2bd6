//! The candle ops on CUDA tensors (feature `cuda`) against the same calls on CPU tensors (the f64
//! reference): within Tessera's conformance tolerances, bit for bit where the op is exact (the
//! quantizer, the cache append); every output (lse and scales included) stays on the device; bad
//! tensors are errors naming the argument, with nothing written. Prints `skipped: ...` and
//! returns without a CUDA device, unless one is required (`TESSERA_REQUIRE_CUDA=1` or
//! `TESSERA_REQUIRE_BACKENDS` naming cuda, as on the GPU machine's run), where that fails.

use candle_core::{DType, Device, Tensor};
use half::bf16;
use tessera_candle::{fp8_gemm, fp8_quantize, sparse_attention, MlaCache, SparseAttentionOp};
use tessera_core::{
    BlockMask, Fp8Granularity, MlaCacheFormat, MlaCacheLayout, RadialMaskConfig, ScaleRule,
};
use tessera_reference::metrics;
use tessera_testing::check::{TOL_GEMM_DIFF, TOL_LSE_ABS, TOL_REL_L2_BF16, TOL_REL_L2_F16};
use tessera_testing::Rng;

/// Whether a CUDA device is required here (the GPU machine's run sets it).
fn cuda_required() -> bool {
    std::env::var("TESSERA_REQUIRE_BACKENDS")
        .unwrap_or_default()
        .split(',')
        .any(|r| r.trim().eq_ignore_ascii_case("cuda"))
        || std::env::var("TESSERA_REQUIRE_CUDA").is_ok_and(|v| v.trim() == "1")
}

/// candle's CUDA device 0, or `skipped: <why>` (a failure when required).
fn cuda() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            if cuda_required() {
                panic!("a CUDA device is required here but candle cannot open one: {e}");
            }
            println!("skipped: no CUDA device for candle: {e}");
            None
        }
    }
}

/// The elements as f64 (copied to the CPU first).
fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn on_cuda(t: &Tensor) -> bool {
    t.device().is_cuda()
}

fn radial() -> BlockMask {
    RadialMaskConfig {
        frames: 3,
        tokens_per_frame: 100,
        extra_tokens: 20,
        block_size: 64,
        decay: 0.95,
        sink: false,
    }
    .build()
    .unwrap()
}

#[test]
fn sparse_attention_on_cuda_matches_the_cpu() {
    let Some(gpu) = cuda() else {
        return;
    };
    let mask = radial();
    for (dtype, head_dim, tol) in [
        (DType::BF16, 64, TOL_REL_L2_BF16),
        (DType::BF16, 128, TOL_REL_L2_BF16),
        (DType::F16, 128, TOL_REL_L2_F16),
    ] {
        let shape = (2, mask.tokens(), 3, head_dim);
        let mut rng = Rng::new(head_dim as u64);
        let mut input = || {
            Tensor::from_vec(
                rng.normals(2 * mask.tokens() * 3 * head_dim),
                shape,
                &Device::Cpu,
            )
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
        };
        let (q, k, v) = (input(), input(), input());
        let (o, lse) = sparse_attention(&q, &k, &v, &mask, None).unwrap();
        let gpu_in = |t: &Tensor| t.to_device(&gpu).unwrap();
        // One op for two calls: the mask is uploaded once and the second call gives the same
        // bits.
        let op = SparseAttentionOp::new(mask.clone(), None);
        let o_gpu = gpu_in(&q)
            .apply_op3_no_bwd(&gpu_in(&k), &gpu_in(&v), &op)
            .unwrap();
        let lse_gpu = op.take_lse().unwrap();
        assert!(on_cuda(&o_gpu) && on_cuda(&lse_gpu));
        assert_eq!(o_gpu.dims(), o.dims());
        assert_eq!(o_gpu.dtype(), dtype);
        assert_eq!(lse_gpu.dims(), lse.dims());
        let err = metrics::relative_l2_error(&f64s(&o_gpu), &f64s(&o));
        assert!(err <= tol, "{dtype:?} d{head_dim}: o rel_l2 {err} > {tol}");
        let err = metrics::lse_max_error(&f64s(&lse_gpu), &f64s(&lse));
        assert!(err <= TOL_LSE_ABS, "{dtype:?} d{head_dim}: lse {err}");
        let again = gpu_in(&q)
            .apply_op3_no_bwd(&gpu_in(&k), &gpu_in(&v), &op)
            .unwrap();
        assert_eq!(f64s(&again), f64s(&o_gpu), "a second call differs");
    }
}

#[test]
fn bad_cuda_attention_tensors_are_named() {
    let Some(gpu) = cuda() else {
        return;
    };
    let mask = BlockMask::dense(128, 64).unwrap();
    let q = Tensor::zeros((1, 128, 2, 64), DType::BF16, &gpu).unwrap();
    let e = sparse_attention(&q.to_dtype(DType::F32).unwrap(), &q, &q, &mask, None).unwrap_err();
    assert!(e.to_string().contains("`q`"), "{e}");
    let strided = Tensor::zeros((1, 2, 128, 64), DType::BF16, &gpu)
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    let e = sparse_attention(&q, &strided, &q, &mask, None).unwrap_err();
    assert!(
        e.to_string().contains("`k`") && e.to_string().contains("contiguous"),
        "{e}"
    );
    let e = sparse_attention(&q, &q, &q.to_dtype(DType::F16).unwrap(), &mask, None).unwrap_err();
    assert!(e.to_string().contains("`v`"), "{e}");
    let short = Tensor::zeros((1, 64, 2, 64), DType::BF16, &gpu).unwrap();
    let e = sparse_attention(&short, &short, &short, &mask, None).unwrap_err();
    assert!(e.to_string().contains("`mask`"), "{e}");
}

#[test]
fn fp8_quantize_and_gemm_on_cuda_match_the_cpu() {
    let Some(gpu) = cuda() else {
        return;
    };
    let (m, n, k) = (40, 256, 384);
    let x = Tensor::from_vec(Rng::new(5).normals(m * k), (m, k), &Device::Cpu).unwrap();
    let w = Tensor::from_vec(Rng::new(6).normals(n * k), (n, k), &Device::Cpu).unwrap();
    for input in [DType::F32, DType::BF16, DType::F16] {
        let x = x.to_dtype(input).unwrap();
        for (t, g) in [
            (&x, Fp8Granularity::PerToken1x128),
            (&w, Fp8Granularity::Block128x128),
        ] {
            let (values, scales) = fp8_quantize(t, g, ScaleRule::PowerOfTwo).unwrap();
            let (values_gpu, scales_gpu) =
                fp8_quantize(&t.to_device(&gpu).unwrap(), g, ScaleRule::PowerOfTwo).unwrap();
            assert!(on_cuda(&values_gpu) && on_cuda(&scales_gpu));
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            assert!(bits(&values_gpu) == bits(&values), "{input:?} {g:?}: codes");
            let f32s = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let to_bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(to_bits(f32s(&scales_gpu)), to_bits(f32s(&scales)));
        }
    }
    let (a, sa) = fp8_quantize(&x, Fp8Granularity::PerToken1x128, ScaleRule::Float).unwrap();
    let (b, sb) = fp8_quantize(&w, Fp8Granularity::Block128x128, ScaleRule::Float).unwrap();
    let d = fp8_gemm(&a, &sa, &b, &sb).unwrap();
    let gpu_in = |t: &Tensor| t.to_device(&gpu).unwrap();
    let d_gpu = fp8_gemm(&gpu_in(&a), &gpu_in(&sa), &gpu_in(&b), &gpu_in(&sb)).unwrap();
    assert!(on_cuda(&d_gpu));
    assert_eq!(d_gpu.dims(), &[m, n]);
    assert_eq!(d_gpu.dtype(), DType::BF16);
    let diff = metrics::gemm_difference(&f64s(&d_gpu), &f64s(&d));
    assert!(diff <= TOL_GEMM_DIFF, "d differs from the CPU's: {diff}");

    // B's scales on the CPU with a on the GPU, or of the wrong shape: named.
    let e = fp8_gemm(&gpu_in(&a), &gpu_in(&sa), &gpu_in(&b), &sb).unwrap_err();
    assert!(e.to_string().contains("b_scales"), "{e}");
    let e = fp8_gemm(&gpu_in(&a), &gpu_in(&sa), &gpu_in(&b), &gpu_in(&sa)).unwrap_err();
    assert!(e.to_string().contains("b_scales"), "{e}");
    let e = fp8_gemm(&gpu_in(&a), &gpu_in(&sb), &gpu_in(&b), &gpu_in(&sb)).unwrap_err();
    assert!(e.to_string().contains("a_scales"), "{e}");
}

fn bf16s(seed: u64, n: usize) -> Vec<bf16> {
    Rng::new(seed)
        .normals(n)
        .into_iter()
        .map(bf16::from_f32)
        .collect()
}

#[test]
fn mla_cache_on_cuda_matches_the_cpu() {
    let Some(gpu) = cuda() else {
        return;
    };
    for format in [MlaCacheFormat::Bf16, MlaCacheFormat::Fp8] {
        let layout = MlaCacheLayout {
            format,
            ..MlaCacheLayout::default()
        };
        let (num_pages, tokens) = (8, 300);
        let cpu_cache = MlaCache::new(layout, num_pages, &Device::Cpu).unwrap();
        let gpu_cache = MlaCache::new(layout, num_pages, &gpu).unwrap();
        assert!(on_cuda(gpu_cache.pages()));
        let latent = Tensor::from_vec(bf16s(7, tokens * 512), (tokens, 512), &Device::Cpu).unwrap();
        let rope = Tensor::from_vec(bf16s(8, tokens * 64), (tokens, 64), &Device::Cpu).unwrap();
        // Two requests of 150 tokens: request 0 on pages 0..3, request 1 on pages 4..7.
        let slots: Vec<i32> = (0..tokens as i32)
            .map(|t| if t < 150 { t } else { 256 + t - 150 })
            .collect();
        cpu_cache
            .append(
                &latent,
                &rope,
                &Tensor::from_vec(slots.clone(), tokens, &Device::Cpu).unwrap(),
            )
            .unwrap();
        gpu_cache
            .append(
                &latent.to_device(&gpu).unwrap(),
                &rope.to_device(&gpu).unwrap(),
                &Tensor::from_vec(slots, tokens, &gpu).unwrap(),
            )
            .unwrap();
        let bytes = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        assert!(
            bytes(gpu_cache.pages()) == bytes(cpu_cache.pages()),
            "{format:?}: the pages differ"
        );

        let (batch, s_q, heads) = (2, 2, 16);
        let q = Tensor::from_vec(
            bf16s(9, batch * s_q * heads * 576),
            (batch, s_q, heads, 576),
            &Device::Cpu,
        )
        .unwrap();
        let table: Vec<i32> = vec![0, 1, 2, 3, 4, 5, 6, 7];
        let lens: Vec<i32> = vec![150, 97];
        let scale = 192f32.powf(-0.5);
        // i64 indices on the CPU, i32 on CUDA.
        let (o, lse) = cpu_cache
            .decode(
                &q,
                &Tensor::from_vec(
                    table.iter().map(|&x| x as i64).collect::<Vec<_>>(),
                    (batch, 4),
                    &Device::Cpu,
                )
                .unwrap(),
                &Tensor::from_vec(
                    lens.iter().map(|&x| x as i64).collect::<Vec<_>>(),
                    batch,
                    &Device::Cpu,
                )
                .unwrap(),
                scale,
            )
            .unwrap();
        let table_gpu = Tensor::from_vec(table, (batch, 4), &gpu).unwrap();
        let lens_gpu = Tensor::from_vec(lens, batch, &gpu).unwrap();
        let (o_gpu, lse_gpu) = gpu_cache
            .decode(&q.to_device(&gpu).unwrap(), &table_gpu, &lens_gpu, scale)
            .unwrap();
        assert!(on_cuda(&o_gpu) && on_cuda(&lse_gpu));
        assert_eq!(o_gpu.dims(), &[batch, s_q, heads, 512]);
        assert_eq!(lse_gpu.dims(), &[batch, heads, s_q]);
        let err = metrics::relative_l2_error(&f64s(&o_gpu), &f64s(&o));
        assert!(err <= TOL_REL_L2_BF16, "{format:?}: o rel_l2 {err}");
        let err = metrics::lse_max_error(&f64s(&lse_gpu), &f64s(&lse));
        assert!(err <= TOL_LSE_ABS, "{format:?}: lse {err}");

        // i64 indices on CUDA, a cache on another device than q, a bad latent: named, and
        // nothing is written.
        let before = bytes(gpu_cache.pages());
        let table_i64 = Tensor::zeros((batch, 4), DType::I64, &gpu).unwrap();
        let e = gpu_cache
            .decode(&q.to_device(&gpu).unwrap(), &table_i64, &lens_gpu, scale)
            .unwrap_err();
        assert!(
            e.to_string().contains("block_table") && e.to_string().contains("i32"),
            "{e}"
        );
        let e = cpu_cache
            .decode(&q.to_device(&gpu).unwrap(), &table_gpu, &lens_gpu, scale)
            .unwrap_err();
        assert!(e.to_string().contains("cache"), "{e}");
        let slot = Tensor::from_vec(vec![5i32], 1, &gpu).unwrap();
        let e = gpu_cache
            .append(
                &Tensor::zeros((1, 512), DType::F32, &gpu).unwrap(),
                &Tensor::zeros((1, 64), DType::BF16, &gpu).unwrap(),
                &slot,
            )
            .unwrap_err();
        assert!(e.to_string().contains("latent"), "{e}");
        let e = gpu_cache
            .append(
                &Tensor::zeros((1, 512), DType::BF16, &gpu).unwrap(),
                &Tensor::zeros((1, 64), DType::BF16, &gpu).unwrap(),
                &Tensor::from_vec(vec![5i64], 1, &gpu).unwrap(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("slots"), "{e}");
        assert!(bytes(gpu_cache.pages()) == before, "a rejected call wrote");
    }
}
