//! MLA on the Vulkan backend beyond the conformance suite: the largest layouts (latent 1024,
//! rope 256: the smallest key tile), the smallest (latent 64, no rope), and the device API's
//! behaviour with bad values (out-of-range pages, lengths and slots), for both decode shaders:
//! nothing outside the buffers is touched, and the queries that see a bad page get NaN.

use half::bf16;
use tessera_core::{
    Backend, Error, MlaAppend, MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeOutput,
};
use tessera_reference::metrics::{lse_max_error, relative_l2_error};
use tessera_reference::mla as ref_mla;
use tessera_vulkan::{Buffer, MlaDecodeKernel, VulkanBackend, VulkanSettings};

mod common;
use common::backend;

/// Deterministic values in about [-2, 2].
fn values(n: usize, seed: u32) -> Vec<bf16> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ seed.wrapping_mul(0x9e37_79b9))
                .wrapping_mul(2_654_435_761)
                .rotate_left(13);
            let u = (h >> 8) as f32 / (1 << 24) as f32 - 0.5;
            bf16::from_f32(u * (1 + (i % 4)) as f32)
        })
        .collect()
}

/// A cache of `num_pages` NaN-filled pages with every slot written through the backend; checked byte for byte against the reference.
fn filled_cache(b: &VulkanBackend, layout: MlaCacheLayout, num_pages: usize) -> MlaCache {
    let slots_n = num_pages * layout.page_size;
    let mut cache = MlaCache::new(layout, num_pages).unwrap();
    cache.fill_nan();
    let mut want = cache.clone();
    // Every slot in reverse order, then one padding token.
    let mut slots: Vec<i32> = (0..slots_n as i32).rev().collect();
    slots.push(-1);
    let tokens = slots.len();
    let latent = values(tokens * layout.latent_dim, 1);
    let rope = values(tokens * layout.rope_dim, 2);
    b.mla_append(&MlaAppend { tokens }, &mut cache, &latent, &rope, &slots)
        .unwrap();
    ref_mla::mla_append(&mut want, &latent, &rope, &slots);
    assert!(cache == want, "{layout:?}: cache bytes differ");
    cache
}

fn check_decode(got: &MlaDecodeOutput, want: &ref_mla::MlaDecodeResult, what: &str) {
    let o: Vec<f64> = got.o.iter().map(|x| x.to_f64()).collect();
    let lse: Vec<f64> = got.lse.iter().map(|&x| x as f64).collect();
    let e = relative_l2_error(&o, &want.o);
    assert!(e <= 1e-2, "{what}: o rel_l2 {e:e}");
    let e = lse_max_error(&lse, &want.lse);
    assert!(e <= 2e-3, "{what}: lse max error {e:e}");
}

#[test]
fn extreme_layouts_match_reference() {
    let Some(b) = backend() else { return };
    // The host API with the default decode shader, and with the tiled one.
    let tiled = VulkanBackend::with_settings(VulkanSettings {
        mla_decode: Some("tiled".into()),
        ..VulkanSettings::from_env()
    })
    .unwrap();
    for (latent_dim, rope_dim, format) in [
        (1024, 256, MlaCacheFormat::Bf16),
        (1024, 256, MlaCacheFormat::Fp8),
        (64, 0, MlaCacheFormat::Bf16),
        (128, 0, MlaCacheFormat::Fp8),
    ] {
        let layout = MlaCacheLayout {
            page_size: 7,
            latent_dim,
            rope_dim,
            format,
        };
        let cache = filled_cache(&b, layout, 6);
        let op = MlaDecode {
            batch: 3,
            s_q: 3,
            heads: 5,
            max_pages: 4,
            softmax_scale: 0.05,
            layout,
        };
        let q = values(op.q_len(), 3);
        let block_table = [5, 2, 0, -1, 1, -1, -1, -1, 3, 4, 1, 0];
        let seq_lens = [19, 1, 28];
        let q64: Vec<f64> = q.iter().map(|x| x.to_f64()).collect();
        let want = ref_mla::mla_decode(&op, &cache, &q64, &block_table, &seq_lens);
        for backend in [&b, &tiled] {
            let plan = backend.mla_decode_plan(&op).unwrap();
            let got = backend
                .mla_decode(&op, &cache, &q, &block_table, &seq_lens)
                .unwrap();
            check_decode(&got, &want, &format!("{layout:?} {plan}"));
        }
    }
}

#[test]
fn device_api_stays_in_bounds_with_bad_values() {
    let Some(b) = backend() else { return };
    let ctx = b.context();
    let layout = MlaCacheLayout {
        page_size: 4,
        latent_dim: 128,
        rope_dim: 16,
        format: MlaCacheFormat::Fp8,
    };
    let cache = filled_cache(&b, layout, 2);

    // Append: an out-of-range slot is skipped, the other token is written.
    let latent = values(2 * 128, 7);
    let rope = values(2 * 16, 8);
    let mut want = cache.clone();
    ref_mla::mla_append(&mut want, &latent, &rope, &[-1, 5]);
    let cache_buf = Buffer::from_bytes(ctx, cache.as_bytes()).unwrap();
    let latent_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(&latent)).unwrap();
    let rope_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(&rope)).unwrap();
    let slots_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(&[8i32, 5])).unwrap();
    b.run_and_wait(|cmd| {
        // SAFETY: the backend's own command buffer, recording; live storage buffers of its
        // device, kept until the work has completed.
        unsafe {
            b.record_mla_append(
                cmd,
                &layout,
                2,
                &MlaAppend { tokens: 2 },
                latent_buf.range(),
                rope_buf.range(),
                slots_buf.range(),
                cache_buf.range(),
            )
        }
    })
    .unwrap();
    let bytes = cache_buf.read(0, cache.as_bytes().len()).unwrap();
    assert!(bytes == want.as_bytes(), "append with a bad slot");

    // Decode: request 0's second page is out of range (its last query sees it: NaN; its first
    // does not), request 1's length exceeds the table (clamped to 8 keys).
    let op = MlaDecode {
        batch: 2,
        s_q: 2,
        heads: 3,
        max_pages: 2,
        softmax_scale: 0.1,
        layout,
    };
    let q = values(op.q_len(), 9);
    // The default shader through record_mla_decode, then the tiled one through its plan (the
    // streaming shader's tilings are in tests/mla_stream.rs).
    let tiled = b.mla_decode_plan_with(&op, MlaDecodeKernel::Tiled).unwrap();
    for plan in [None, Some(&tiled)] {
        let what = plan.map_or("the default shader".into(), |p| p.to_string());
        let run = |table: &[i32], lens: &[i32]| {
            let q_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(&q)).unwrap();
            let bt_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(table)).unwrap();
            let lens_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(lens)).unwrap();
            let o_buf = Buffer::filled(ctx, 2 * op.o_len(), &[0xff]).unwrap();
            let lse_buf = Buffer::filled(ctx, 4 * op.lse_len(), &[0xff]).unwrap();
            let work = match plan {
                Some(p) => p.workspace_bytes() as usize,
                None => b.mla_decode_workspace_bytes(&op).unwrap() as usize,
            };
            let work_buf = Buffer::filled(ctx, work, &[0]).unwrap();
            b.run_and_wait(|cmd| {
                // SAFETY: as above.
                unsafe {
                    match plan {
                        Some(p) => b.record_mla_decode_planned(
                            cmd,
                            p,
                            2,
                            cache_buf.range(),
                            q_buf.range(),
                            bt_buf.range(),
                            lens_buf.range(),
                            o_buf.range(),
                            lse_buf.range(),
                            work_buf.range(),
                        ),
                        None => b.record_mla_decode(
                            cmd,
                            &op,
                            2,
                            cache_buf.range(),
                            q_buf.range(),
                            bt_buf.range(),
                            lens_buf.range(),
                            o_buf.range(),
                            lse_buf.range(),
                            work_buf.range(),
                        ),
                    }
                }
            })
            .unwrap();
            let o = o_buf.read(0, 2 * op.o_len()).unwrap();
            let lse = lse_buf.read(0, 4 * op.lse_len()).unwrap();
            let o: Vec<f64> = o
                .chunks_exact(2)
                .map(|h| bf16::from_bits(u16::from_le_bytes([h[0], h[1]])).to_f64())
                .collect();
            let lse: Vec<f64> = lse
                .chunks_exact(4)
                .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]) as f64)
                .collect();
            (o, lse)
        };
        let (o, lse) = run(&[1, 1000, 0, 1], &[5, 1_000_000]);
        let q64: Vec<f64> = q.iter().map(|x| x.to_f64()).collect();
        let want = ref_mla::mla_decode(&op, &want, &q64, &[1, 0, 0, 1], &[5, 8]);
        let (rows, lat) = (op.s_q * op.heads, layout.latent_dim);
        for row in 0..2 * rows {
            let (b_idx, i, h) = (row / rows, (row % rows) / op.heads, row % op.heads);
            let o_row = &o[row * lat..(row + 1) * lat];
            let lse_at = lse[(b_idx * op.heads + h) * op.s_q + i];
            if b_idx == 0 && i == 1 {
                assert!(
                    o_row.iter().all(|x| x.is_nan()),
                    "{what}: row {row}: NaN expected"
                );
                assert!(lse_at.is_nan(), "{what}: row {row}: NaN lse expected");
            } else {
                let e = relative_l2_error(o_row, &want.o[row * lat..(row + 1) * lat]);
                assert!(e <= 1e-2, "{what}: row {row}: o rel_l2 {e:e}");
                let w = want.lse[(b_idx * op.heads + h) * op.s_q + i];
                assert!(
                    (lse_at - w).abs() <= 2e-3,
                    "{what}: row {row}: lse {lse_at} vs {w}"
                );
            }
        }
        // Negative lengths: no key, o = 0 and lse = -inf.
        let (o, lse) = run(&[0, 1, 0, 1], &[-3, 0]);
        assert!(o.iter().all(|&x| x == 0.0), "{what}");
        assert!(lse.iter().all(|&x| x == f64::NEG_INFINITY), "{what}");
    }

    // A workspace too small is refused before anything is recorded.
    let big = Buffer::filled(ctx, 1 << 16, &[0]).unwrap();
    let small = Buffer::filled(ctx, 4, &[0]).unwrap();
    let result = b.run_and_wait(|cmd| {
        // SAFETY: as above (nothing is recorded: the arguments are refused).
        unsafe {
            b.record_mla_decode(
                cmd,
                &op,
                2,
                cache_buf.range(),
                big.range(),
                big.range(),
                big.range(),
                big.range(),
                big.range(),
                small.range(),
            )
        }
    });
    match result {
        Err(Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "workspace"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn fp8_append_is_exact_at_the_extremes() {
    let Some(b) = backend() else { return };
    let layout = MlaCacheLayout {
        page_size: 3,
        latent_dim: 256,
        rope_dim: 16,
        format: MlaCacheFormat::Fp8,
    };
    // Every finite bf16 magnitude class: subnormals only (scale 2^-126), tiny values next to a
    // large one (quotients below E4M3's range, or subnormal in f32), the largest finite values,
    // zeros of both signs, and exact powers of two.
    let groups: Vec<Vec<bf16>> = vec![
        (0..128).map(|i| bf16::from_bits(1 + i as u16)).collect(),
        (0..128)
            .map(|i| bf16::from_bits(if i == 0 { 0x7f7f } else { i as u16 | 0x8000 }))
            .collect(),
        (0..128)
            .map(|i| bf16::from_bits(0x3f80 + 3 * i as u16))
            .collect(),
        (0..128)
            .map(|i| match i % 4 {
                0 => bf16::ZERO,
                1 => bf16::NEG_ZERO,
                2 => bf16::from_f32(2f32.powi(i / 4 - 16)),
                _ => bf16::from_bits(0x0080 + i as u16),
            })
            .collect(),
        (0..128)
            .map(|i| bf16::from_f32((i as f32 - 64.0) * 7.0))
            .collect(),
        (0..128)
            .map(|i| bf16::from_bits(0x0100 + 0x40 * i as u16))
            .collect(),
    ];
    let latent: Vec<bf16> = groups.concat();
    let tokens = latent.len() / 256;
    let rope = values(tokens * 16, 5);
    let mut cache = MlaCache::new(layout, 2).unwrap();
    cache.fill_nan();
    let mut want = cache.clone();
    let slots: Vec<i32> = (0..tokens as i32).map(|t| 5 - t).collect();
    b.mla_append(&MlaAppend { tokens }, &mut cache, &latent, &rope, &slots)
        .unwrap();
    ref_mla::mla_append(&mut want, &latent, &rope, &slots);
    assert!(cache == want, "FP8 records differ at the extremes");
}
