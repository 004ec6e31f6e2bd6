//! Fuzzing of core's public entry points: every descriptor, mask builder and cache constructor
//! with arbitrary values, 0, 1, values near the integer limits and products that overflow
//! `usize`, `u32` and `i32`. Each call must return a typed error or a correct result, never
//! panic (each call runs under `catch_unwind`, so a panic fails with the input that caused it).
//!
//! Work that would be legitimately huge (a valid mask of billions of blocks, a cache of
//! terabytes) is not attempted: such inputs are checked by validation only.

use proptest::prelude::*;
use proptest::test_runner::Config;
use std::panic::{catch_unwind, AssertUnwindSafe};
use tessera_core::ops::attention::SparseAttention;
use tessera_core::radial::{
    band_radius, bitlen, frame_pair_pattern, is_decimated, nlogn_reference, video_block_count,
    window_width,
};
use tessera_core::{
    bf16, BackendKind, BlockMask, DType, Error, Fp8Gemm, Fp8Granularity, Fp8Quantize, MlaAppend,
    MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeVarlen, RadialMaskConfig,
    ScaleRule, TensorRef, E4M3, E5M2,
};

/// Runs `f`, turning a panic into a test failure that shows `input`.
fn no_panic<T>(input: &dyn std::fmt::Debug, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("panicked on {input:?}: {msg}")
        }
    }
}

/// An error is acceptable when it is typed: bad input, or memory that is not there.
fn typed(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument { .. } | Error::OutOfMemory { .. })
}

/// Sizes: the edges (0, 1, 2), small values, and values near every integer limit.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0usize..=4,
        3 => 0usize..=300,
        1 => Just(63usize),
        1 => Just(64usize),
        1 => Just(127usize),
        1 => Just(128usize),
        1 => Just(1024usize),
        1 => Just(65535usize),
        1 => Just(65536usize),
        1 => Just(i32::MAX as usize),
        1 => Just(i32::MAX as usize + 1),
        1 => Just(u32::MAX as usize),
        1 => Just(u32::MAX as usize + 1),
        1 => Just(1usize << 40),
        1 => Just(usize::MAX / 2),
        1 => Just(usize::MAX / 2 + 1),
        1 => Just(usize::MAX - 1),
        1 => Just(usize::MAX),
        1 => any::<usize>(),
    ]
}

/// Floats: ordinary values and every special one.
fn float32() -> impl Strategy<Value = f32> {
    prop_oneof![
        3 => -4.0f32..4.0,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::MIN_POSITIVE),
        1 => Just(f32::MAX),
        1 => Just(1e-45f32),
        1 => any::<f32>(),
    ]
}

fn float64() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => 0.01f64..4.0,
        1 => Just(0.0f64),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(-1.0f64),
        1 => Just(f64::MAX),
        1 => Just(f64::MIN_POSITIVE),
        1 => any::<f64>(),
    ]
}

fn slot() -> impl Strategy<Value = i32> {
    prop_oneof![
        3 => -2i32..40,
        1 => Just(i32::MIN),
        1 => Just(i32::MAX),
        1 => any::<i32>(),
    ]
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F16),
        Just(DType::BF16),
        Just(DType::E4M3),
        Just(DType::E5M2),
    ]
}

fn layout() -> impl Strategy<Value = MlaCacheLayout> {
    (
        prop_oneof![3 => Just(1usize), 3 => Just(4usize), 3 => Just(64usize), 1 => size()],
        prop_oneof![3 => Just(128usize), 2 => Just(64usize), 1 => size()],
        prop_oneof![3 => Just(16usize), 2 => Just(0usize), 1 => size()],
        prop_oneof![Just(MlaCacheFormat::Bf16), Just(MlaCacheFormat::Fp8)],
    )
        .prop_map(|(page_size, latent_dim, rope_dim, format)| MlaCacheLayout {
            page_size,
            latent_dim,
            rope_dim,
            format,
        })
}

/// A small cache of the layout, if the layout is valid and small (otherwise `None`, after
/// checking that the constructor does not panic on it).
fn small_cache(layout: MlaCacheLayout, num_pages: usize) -> Option<MlaCache> {
    let small = layout.validate().is_ok()
        && num_pages
            .checked_mul(layout.page_bytes())
            .is_some_and(|b| b <= 1 << 20);
    let invalid = layout.validate().is_err()
        || num_pages == 0
        || num_pages > i32::MAX as usize / layout.page_size;
    if !(small || invalid) {
        return None;
    }
    match no_panic(&(layout, num_pages), || MlaCache::new(layout, num_pages)) {
        Ok(cache) => {
            assert!(small, "{layout:?} x {num_pages} pages was accepted");
            assert_eq!(cache.as_bytes().len(), num_pages * layout.page_bytes());
            Some(cache)
        }
        Err(e) => {
            assert!(typed(&e), "{e:?}");
            assert!(invalid, "{layout:?} x {num_pages} rejected: {e}");
            None
        }
    }
}

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn block_mask_from_bsr(
        tokens in size(),
        block_size in size(),
        indptr in prop::collection::vec(prop_oneof![0u32..8, any::<u32>()], 0..8),
        indices in prop::collection::vec(prop_oneof![0u32..8, any::<u32>()], 0..8),
    ) {
        let input = (tokens, block_size, &indptr, &indices);
        let r = no_panic(&input, || {
            BlockMask::from_bsr(tokens, block_size, indptr.clone(), indices.clone())
        });
        match r {
            Ok(m) => {
                // A valid mask answers every query without panicking.
                no_panic(&input, || {
                    let nb = m.num_blocks();
                    for r in 0..nb {
                        for &c in m.row(r) {
                            assert!(m.contains(r, c as usize));
                        }
                    }
                    assert_eq!(m.nnz(), m.indices().len());
                    let _ = m.density();
                    if nb <= 64 {
                        assert_eq!(m.to_dense_bitmap().iter().filter(|&&b| b).count(), m.nnz());
                    }
                });
            }
            Err(e) => prop_assert!(typed(&e), "{e:?}"),
        }
    }

    #[test]
    fn block_mask_dense_and_bitmap(tokens in size(), block_size in size(), bits in prop::collection::vec(any::<bool>(), 0..40)) {
        let input = (tokens, block_size);
        // A valid dense mask with more than 2^12 blocks per side is legitimately huge: only
        // shapes that must fail or are small are built.
        let nb = tokens.checked_div(block_size).map(|_| tokens.div_ceil(block_size));
        let huge_but_valid = nb.is_some_and(|nb| nb > 4096 && nb.checked_mul(nb).is_some_and(|n| n <= u32::MAX as usize));
        if !huge_but_valid {
            match no_panic(&input, || BlockMask::dense(tokens, block_size)) {
                Ok(m) => prop_assert_eq!(m.nnz(), m.num_blocks() * m.num_blocks()),
                Err(e) => prop_assert!(typed(&e), "{e:?}"),
            }
        }
        match no_panic(&input, || BlockMask::from_dense_bitmap(tokens, block_size, &bits)) {
            Ok(m) => prop_assert_eq!(m.to_dense_bitmap(), bits),
            Err(e) => prop_assert!(typed(&e), "{e:?}"),
        }
    }

    #[test]
    fn radial_mask_config(
        frames in size(),
        tokens_per_frame in size(),
        extra_tokens in size(),
        block_size in prop_oneof![3 => Just(64usize), 3 => Just(128usize), 1 => size()],
        decay in float64(),
        sink in any::<bool>(),
    ) {
        let config = RadialMaskConfig { frames, tokens_per_frame, extra_tokens, block_size, decay, sink };
        let valid = no_panic(&config, || config.validate());
        // The arithmetic helpers take any values.
        no_panic(&config, || {
            let _ = config.tokens();
            let _ = config.video_tokens();
            let _ = nlogn_reference(&config);
            let _ = bitlen(frames);
            let _ = is_decimated(tokens_per_frame, frames);
            let _ = window_width(tokens_per_frame, frames, decay, block_size);
            let _ = band_radius(window_width(tokens_per_frame, frames, decay, block_size));
            let _ = frame_pair_pattern(&config, frames, extra_tokens);
            if let Ok(m) = BlockMask::dense(64, 64) {
                let _ = video_block_count(&m, &config);
            }
        });
        match valid {
            Err(e) => {
                prop_assert!(typed(&e), "{e:?}");
                let built = no_panic(&config, || config.build());
                prop_assert!(built.is_err(), "an invalid config built a mask");
            }
            Ok(()) => {
                // Building is bounded by the token count: build the moderate ones in full.
                if config.tokens() <= 1 << 15 && frames <= 256 {
                    let m = no_panic(&config, || config.build());
                    match m {
                        Ok(m) => {
                            prop_assert_eq!(m.tokens(), config.tokens());
                            for r in 0..m.num_blocks() {
                                prop_assert!(m.contains(r, r), "block ({r}, {r}) is off");
                            }
                        }
                        Err(e) => prop_assert!(typed(&e), "{e:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn sparse_attention_descriptor(
        batch in size(), tokens in size(), heads in size(),
        head_dim in prop_oneof![2 => Just(64usize), 2 => Just(128usize), 1 => size()],
        dtype in dtype(),
        scale in float32(),
        mask_tokens in 1usize..200,
        block_size in prop_oneof![Just(64usize), Just(128usize)],
        len in prop_oneof![0usize..64, Just(100 * 2 * 64)],
    ) {
        let op = SparseAttention { batch, tokens, heads, head_dim, dtype, softmax_scale: scale, deterministic_backward: batch % 2 == 0 };
        let mask = BlockMask::dense(mask_tokens, block_size).unwrap();
        no_panic(&op, || {
            let _ = op.qkv_len();
            let _ = op.lse_len();
            let _ = op.flops(&mask);
        });
        let x = vec![bf16::ZERO; len];
        let r = no_panic(&op, || op.validate_args(&mask, TensorRef::BF16(&x), TensorRef::BF16(&x), TensorRef::BF16(&x)));
        if let Err(e) = &r {
            prop_assert!(typed(e), "{e:?}");
        } else {
            prop_assert_eq!(op.qkv_len(), len);
        }
        // The backward's arguments: o, lse and d_o on top of the forward's.
        let _ = no_panic(&op, || op.backward_flops(&mask));
        let lse = vec![0f32; len / 64];
        let t = TensorRef::BF16(&x);
        match no_panic(&op, || op.validate_backward_args(&mask, t, t, t, t, &lse, t)) {
            Err(e) => prop_assert!(typed(&e), "{e:?}"),
            Ok(()) => {
                prop_assert_eq!(op.qkv_len(), len);
                prop_assert_eq!(op.lse_len(), lse.len());
            }
        }
    }

    #[test]
    fn mla_append_descriptor(
        layout in layout(),
        num_pages in prop_oneof![1usize..6, size()],
        tokens in prop_oneof![0usize..4, size()],
        latent_len in prop_oneof![0usize..600, size().prop_map(|s| s % 4096)],
        rope_len in 0usize..80,
        slots in prop::collection::vec(slot(), 0..6),
        poison in any::<bool>(),
    ) {
        let Some(mut cache) = small_cache(layout, num_pages) else { return Ok(()); };
        let before = cache.clone();
        let mut latent = vec![bf16::from_f32(0.5); latent_len];
        if poison && !latent.is_empty() {
            latent[latent_len / 2] = bf16::INFINITY;
        }
        let rope = vec![bf16::ONE; rope_len];
        let op = MlaAppend { tokens };
        let input = (&op, layout, num_pages, latent_len, rope_len, &slots);
        match no_panic(&input, || op.validate_args(&cache, &latent, &rope, &slots)) {
            Ok(()) => {
                prop_assert_eq!(latent.len(), tokens * layout.latent_dim);
                prop_assert_eq!(slots.len(), tokens);
            }
            Err(e) => {
                prop_assert!(typed(&e), "{e:?}");
                prop_assert_eq!(&cache, &before);
            }
        }
        // The cache's own accessors on every slot.
        no_panic(&input, || {
            for s in 0..cache.num_slots().min(8) {
                let _ = cache.read_token(s);
            }
            cache.fill_nan();
        });
    }

    #[test]
    fn mla_decode_descriptor(
        layout in layout(),
        num_pages in prop_oneof![1usize..6, size()],
        batch in prop_oneof![1usize..4, size()],
        s_q in prop_oneof![1usize..4, size()],
        heads in prop_oneof![1usize..4, size()],
        max_pages in prop_oneof![1usize..4, size()],
        scale in float32(),
        q_len in prop_oneof![0usize..4000, size().prop_map(|s| s % 8192)],
        block_table in prop::collection::vec(slot(), 0..16),
        seq_lens in prop::collection::vec(slot(), 0..5),
    ) {
        let op = MlaDecode { batch, s_q, heads, max_pages, softmax_scale: scale, layout };
        no_panic(&op, || {
            let _ = (op.q_len(), op.o_len(), op.lse_len(), op.block_table_len(), op.capacity());
            let _ = layout.qk_dim();
            let _ = layout.token_bytes();
            let _ = layout.page_bytes();
            let _ = layout.rope_offset();
        });
        let descriptor = no_panic(&op, || op.validate());
        if let Err(e) = &descriptor {
            prop_assert!(typed(e), "{e:?}");
        }
        let Some(cache) = small_cache(layout, num_pages) else { return Ok(()); };
        let q = vec![bf16::ONE; q_len];
        let input = (&op, num_pages, q_len, &block_table, &seq_lens);
        match no_panic(&input, || op.validate_args(&cache, &q, &block_table, &seq_lens)) {
            Ok(()) => {
                prop_assert!(descriptor.is_ok());
                prop_assert_eq!(q.len(), op.q_len());
                prop_assert_eq!(block_table.len(), op.block_table_len());
                // Every page a valid call reads is in the cache.
                for (b, &len) in seq_lens.iter().enumerate() {
                    for p in 0..(len as usize).div_ceil(layout.page_size) {
                        let page = block_table[b * max_pages + p];
                        prop_assert!(page >= 0 && (page as usize) < cache.num_pages());
                    }
                }
            }
            Err(e) => prop_assert!(typed(&e), "{e:?}"),
        }
    }

    #[test]
    fn mla_decode_varlen_descriptor(
        layout in layout(),
        num_pages in prop_oneof![1usize..6, size()],
        batch in prop_oneof![1usize..4, size()],
        total_q in prop_oneof![0usize..8, size()],
        max_s_q in prop_oneof![1usize..4, size()],
        heads in prop_oneof![1usize..4, size()],
        max_pages in prop_oneof![1usize..4, size()],
        scale in float32(),
        q_len in prop_oneof![0usize..4000, size().prop_map(|s| s % 8192)],
        cu_seqlens_q in prop::collection::vec(slot(), 0..6),
        block_table in prop::collection::vec(slot(), 0..16),
        seq_lens in prop::collection::vec(slot(), 0..5),
    ) {
        let op = MlaDecodeVarlen { batch, total_q, max_s_q, heads, max_pages, softmax_scale: scale, layout };
        no_panic(&op, || {
            let _ = (op.q_len(), op.o_len(), op.lse_len(), op.block_table_len(), op.cu_seqlens_q_len());
            let _ = (op.padded(), op.request(1));
        });
        let descriptor = no_panic(&op, || op.validate());
        if let Err(e) = &descriptor {
            prop_assert!(typed(e), "{e:?}");
        }
        if let Err(e) = no_panic(&op, || op.validate_cu_seqlens_q(&cu_seqlens_q)) {
            prop_assert!(typed(&e), "{e:?}");
        }
        let Some(cache) = small_cache(layout, num_pages) else { return Ok(()); };
        let q = vec![bf16::ONE; q_len];
        let input = (&op, num_pages, q_len, &cu_seqlens_q, &block_table, &seq_lens);
        match no_panic(&input, || op.validate_args(&cache, &q, &cu_seqlens_q, &block_table, &seq_lens)) {
            Ok(()) => {
                prop_assert!(descriptor.is_ok());
                prop_assert_eq!(q.len(), op.q_len());
                prop_assert_eq!(cu_seqlens_q[0], 0);
                prop_assert_eq!(cu_seqlens_q[batch] as usize, total_q);
                for w in cu_seqlens_q.windows(2) {
                    prop_assert!(w[0] <= w[1] && (w[1] - w[0]) as usize <= max_s_q);
                }
            }
            Err(e) => prop_assert!(typed(&e), "{e:?}"),
        }
    }

    #[test]
    fn fp8_quantize_descriptor(
        rows in size(), cols in size(),
        block in any::<bool>(), pow2 in any::<bool>(),
        values in prop::collection::vec(float32(), 0..40),
    ) {
        let op = Fp8Quantize {
            rows,
            cols,
            granularity: if block { Fp8Granularity::Block128x128 } else { Fp8Granularity::PerToken1x128 },
            scale_rule: if pow2 { ScaleRule::PowerOfTwo } else { ScaleRule::Float },
        };
        no_panic(&op, || {
            let _ = (op.len(), op.scales_len(), op.scales_shape(), op.group_rows());
        });
        match no_panic(&op, || op.validate_args(TensorRef::F32(&values))) {
            Ok(()) => {
                prop_assert_eq!(values.len(), rows * cols);
                prop_assert!(values.iter().all(|v| v.is_finite()));
            }
            Err(e) => prop_assert!(typed(&e), "{e:?}"),
        }
        // The conversions take every value.
        no_panic(&values, || {
            for &v in &values {
                let _ = E4M3::from_f32(v).to_f32();
                let _ = E5M2::from_f32(v).to_f32();
                let _ = tessera_core::ops::fp8::fp8_scale(v.abs(), op.scale_rule);
            }
        });
    }

    #[test]
    fn fp8_gemm_descriptor(
        m in size(),
        n in prop_oneof![Just(8usize), Just(16usize), size()],
        k in prop_oneof![Just(16usize), Just(128usize), size()],
        a_len in 0usize..600,
        sa in prop::collection::vec(float32(), 0..6),
        b_len in 0usize..600,
        sb in prop::collection::vec(float32(), 0..3),
    ) {
        let op = Fp8Gemm::new(m, n, k);
        no_panic(&op, || {
            let _ = (op.a_len(), op.b_len(), op.d_len(), op.a_scales_len(), op.b_scales_len(), op.flops());
        });
        let a = vec![E4M3::ZERO; a_len];
        let b = vec![E4M3::ZERO; b_len];
        match no_panic(&op, || op.validate_args(&a, &sa, &b, &sb)) {
            Ok(()) => {
                prop_assert_eq!(a.len(), m * k);
                prop_assert_eq!(b.len(), n * k);
            }
            Err(e) => prop_assert!(typed(&e), "{e:?}"),
        }
    }

    #[test]
    fn names_and_bytes(name in ".{0,12}", bytes in prop::collection::vec(any::<u8>(), 0..64), num_pages in size()) {
        let _ = no_panic(&name, || BackendKind::parse(&name));
        let layout = MlaCacheLayout { page_size: 1, latent_dim: 64, rope_dim: 0, format: MlaCacheFormat::Bf16 };
        if num_pages <= 1 << 10 || num_pages > i32::MAX as usize {
            if let Err(e) = no_panic(&num_pages, || MlaCache::from_bytes(layout, num_pages, bytes.clone())) {
                prop_assert!(typed(&e), "{e:?}");
            }
        }
    }
}

/// The defects fuzzing found, each pinned by a plain test (they panicked or overflowed before
/// the checked arithmetic).
#[test]
fn overflowing_products_are_typed_errors() {
    let e = SparseAttention::new(usize::MAX, 64, 2, 64, DType::BF16)
        .validate(&BlockMask::dense(64, 64).unwrap())
        .unwrap_err();
    assert_eq!(e.argument(), Some("batch * tokens * heads * head_dim"));
    let e = Fp8Gemm::new(usize::MAX / 2, 8, 16).validate().unwrap_err();
    assert_eq!(e.argument(), Some("m * k"));
    let q = Fp8Quantize {
        rows: 1 << 33,
        cols: 1 << 33,
        granularity: Fp8Granularity::PerToken1x128,
        scale_rule: ScaleRule::Float,
    };
    assert_eq!(
        q.validate_args(TensorRef::F32(&[])).unwrap_err().argument(),
        Some("rows * cols")
    );
    let layout = MlaCacheLayout::default();
    let cache = MlaCache::new(layout, 1).unwrap();
    let op = MlaDecode {
        batch: usize::MAX / 4,
        s_q: 1,
        heads: 1,
        max_pages: 8,
        softmax_scale: 0.1,
        layout,
    };
    let e = op.validate_args(&cache, &[], &[], &[]).unwrap_err();
    assert_eq!(
        e.argument(),
        Some("batch * s_q * heads * (latent_dim + rope_dim)")
    );
    let e = MlaAppend {
        tokens: usize::MAX / 2,
    }
    .validate_args(&cache, &[], &[], &[])
    .unwrap_err();
    assert_eq!(e.argument(), Some("tokens * (latent_dim + rope_dim)"));
    // indptr pointing past the indices (but ending right): rejected, not sliced out of range.
    let e = BlockMask::from_bsr(4, 1, vec![0, 10, 2, 2, 2], vec![0, 1]).unwrap_err();
    assert_eq!(e.argument(), Some("indptr[1]"));
    // num_blocks + 1 overflowing usize.
    assert!(BlockMask::from_bsr(usize::MAX, 1, vec![0], vec![]).is_err());
    // num_blocks^2 overflowing.
    assert_eq!(
        BlockMask::dense(usize::MAX, 1).unwrap_err().argument(),
        Some("tokens")
    );
    assert!(BlockMask::from_dense_bitmap(usize::MAX, 1, &[]).is_err());
}
