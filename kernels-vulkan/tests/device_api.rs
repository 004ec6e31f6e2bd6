//! The device API: the caller owns the buffers and the command buffer, records the quantizers
//! and the GEMM with its own barriers, submits on the backend's queue and waits on its own fence.
//! Results must equal the host API's (and the reference's).

use tessera_core::ops::fp8::FP8_GROUP;
use tessera_core::{DType, Error, Fp8Gemm, Fp8Granularity, Fp8Quantize, ScaleRule, E4M3};
use tessera_reference::fp8 as ref_fp8;
use tessera_vulkan::ops::copy::{CopyWordsSpec, COPY_WORDS};
use tessera_vulkan::ops::mla::{MlaDecodeSpec, MLA_DECODE};
use tessera_vulkan::{Buffer, BufferRange, MemoryLocation};

mod common;
use common::{backend, Commands};

/// Deterministic values of varying magnitude.
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ seed)
                .wrapping_mul(2_654_435_761)
                .rotate_left(13);
            let u = (h >> 8) as f32 / (1 << 24) as f32 - 0.5;
            u * (1 + (i % 7)) as f32
        })
        .collect()
}

#[test]
fn quantize_then_gemm_in_one_command_buffer() {
    let Some(backend) = backend() else { return };
    let ctx = backend.context();
    let (m, n, k) = (70, 136, 272);
    let qa = Fp8Quantize {
        rows: m,
        cols: k,
        granularity: Fp8Granularity::PerToken1x128,
        scale_rule: ScaleRule::Float,
    };
    let qb = Fp8Quantize {
        rows: n,
        cols: k,
        granularity: Fp8Granularity::Block128x128,
        scale_rule: ScaleRule::PowerOfTwo,
    };
    let xa = values(m * k, 1);
    let xb: Vec<half::bf16> = values(n * k, 2)
        .iter()
        .map(|&v| half::bf16::from_f32(v))
        .collect();
    let kb = k.div_ceil(FP8_GROUP);
    let sa_len = m * kb;
    let sb_len = n.div_ceil(FP8_GROUP) * kb;

    // Inputs in one buffer, outputs in another, each at offsets aligned as the device asks.
    let align = backend
        .features()
        .min_storage_buffer_offset_alignment
        .max(4);
    let place = |sizes: &[usize]| -> (Vec<u64>, u64) {
        let mut offsets = Vec::new();
        let mut at = 0u64;
        for &s in sizes {
            at = at.div_ceil(align) * align;
            offsets.push(at);
            at += (s as u64).div_ceil(4) * 4;
        }
        (offsets, at)
    };
    let in_sizes = [4 * m * k, 2 * n * k];
    let out_sizes = [m * k, 4 * sa_len, n * k, 4 * sb_len, 2 * m * n];
    let (in_off, in_len) = place(&in_sizes);
    let (out_off, out_len) = place(&out_sizes);
    let mut inputs = Buffer::new(ctx, in_len, MemoryLocation::HostVisible).unwrap();
    inputs.write(in_off[0], bytemuck::cast_slice(&xa)).unwrap();
    inputs.write(in_off[1], bytemuck::cast_slice(&xb)).unwrap();
    let outputs = Buffer::new(ctx, out_len, MemoryLocation::HostVisible).unwrap();
    let r_in = |i: usize| inputs.slice(in_off[i], in_sizes[i] as u64);
    let r_out = |i: usize| outputs.slice(out_off[i], (out_sizes[i] as u64).div_ceil(4) * 4);

    let mut cmds = Commands::new(&backend);
    // SAFETY: `cmds.cmd` is recording on the backend's device; the ranges lie in live storage
    // buffers of that device, kept until the work has completed.
    unsafe {
        backend
            .record_fp8_quantize(cmds.cmd, &qa, DType::F32, r_in(0), r_out(0), r_out(1))
            .unwrap();
        backend
            .record_fp8_quantize(cmds.cmd, &qb, DType::BF16, r_in(1), r_out(2), r_out(3))
            .unwrap();
        cmds.barrier();
        backend
            .record_fp8_gemm(
                cmds.cmd,
                &Fp8Gemm::new(m, n, k),
                r_out(0),
                r_out(1),
                r_out(2),
                r_out(3),
                r_out(4),
            )
            .unwrap();
    }
    cmds.submit_and_wait(&backend);

    let read = |i: usize| outputs.read(out_off[i], out_sizes[i]).unwrap();
    let f32s = |b: Vec<u8>| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect()
    };
    let want_a = ref_fp8::quantize(&qa, &xa);
    let xb32: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
    let want_b = ref_fp8::quantize(&qb, &xb32);
    let codes = |b: Vec<u8>| -> Vec<E4M3> { b.into_iter().map(E4M3::from_bits).collect() };
    assert_eq!(codes(read(0)), want_a.values, "A codes");
    assert_eq!(f32s(read(1)), want_a.scales, "A scales");
    assert_eq!(codes(read(2)), want_b.values, "B codes");
    assert_eq!(f32s(read(3)), want_b.scales, "B scales");

    let d: Vec<half::bf16> = read(4)
        .chunks_exact(2)
        .map(|h| half::bf16::from_bits(u16::from_le_bytes([h[0], h[1]])))
        .collect();
    let want = ref_fp8::fp8_gemm(
        &Fp8Gemm::new(m, n, k),
        &want_a.values,
        &want_a.scales,
        &want_b.values,
        &want_b.scales,
    );
    let (mut xy, mut sq) = (0.0f64, 0.0f64);
    for (g, w) in d.iter().zip(&want) {
        let g = g.to_f64();
        xy += g * w;
        sq += g * g + w * w;
    }
    let diff = 1.0 - 2.0 * xy / sq;
    assert!(diff <= 1e-5, "gemm difference {diff:e}");
}

#[test]
fn bad_ranges_are_rejected() {
    let Some(backend) = backend() else { return };
    let ctx = backend.context();
    let op = Fp8Quantize {
        rows: 3,
        cols: 5,
        granularity: Fp8Granularity::PerToken1x128,
        scale_rule: ScaleRule::Float,
    };
    let buf = Buffer::new(ctx, 4096, MemoryLocation::HostVisible).unwrap();
    let align = backend
        .features()
        .min_storage_buffer_offset_alignment
        .max(4);
    let mut cmds = Commands::new(&backend);
    let expect = |r: tessera_core::Result<()>, arg: &str| match r {
        Err(Error::InvalidArgument { arg: got, .. }) => assert_eq!(got, arg),
        other => panic!("expected InvalidArgument naming {arg}, got {other:?}"),
    };
    let ok = |offset: u64, size: u64| BufferRange::new(buf.handle(), offset, size);
    // SAFETY: every call fails validation before recording anything.
    unsafe {
        expect(
            backend.record_fp8_quantize(
                cmds.cmd,
                &op,
                DType::F32,
                ok(0, 59),
                ok(align, 16),
                ok(2 * align, 12),
            ),
            "x",
        );
        expect(
            backend.record_fp8_quantize(
                cmds.cmd,
                &op,
                DType::F32,
                ok(0, 60),
                ok(align + 2, 16),
                ok(2 * align, 12),
            ),
            "values",
        );
        expect(
            backend.record_fp8_quantize(
                cmds.cmd,
                &op,
                DType::E4M3,
                ok(0, 60),
                ok(align, 16),
                ok(2 * align, 12),
            ),
            "x",
        );
        expect(
            backend.record_fp8_gemm(
                cmds.cmd,
                &Fp8Gemm::new(2, 8, 24),
                ok(0, 64),
                ok(0, 64),
                ok(0, 64),
                ok(0, 64),
                ok(0, 64),
            ),
            "k",
        );
        expect(
            backend.record_fp8_gemm(
                cmds.cmd,
                &Fp8Gemm::new(2, 8, 32),
                ok(0, 64),
                ok(0, 8),
                ok(0, 256),
                ok(0, 4),
                ok(0, 30),
            ),
            "d",
        );
    }
    cmds.submit_and_wait(&backend);
}

/// A specialization beyond the device's limits is refused with `Error::Unsupported` naming the
/// shader and the limit, before any pipeline is made.
#[test]
fn specializations_beyond_the_device_limits_are_unsupported() {
    let Some(backend) = backend() else { return };
    let f = backend.features();
    let before = backend.pipelines().len();
    let too_wide = CopyWordsSpec {
        workgroup_size: f.max_workgroup_invocations + 1,
    };
    match backend.pipelines().get(&COPY_WORDS, &too_wide) {
        Err(Error::Unsupported { reason, .. }) => assert!(
            reason.starts_with("copy_words needs") && reason.contains("invocations per workgroup"),
            "{reason}"
        ),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // Four query rows of a record wider than the shared memory.
    let too_large = MlaDecodeSpec {
        latent_dim: f.max_shared_memory_bytes / 4,
        ..MlaDecodeSpec::default()
    };
    match backend.pipelines().get(&MLA_DECODE, &too_large) {
        Err(Error::Unsupported { reason, .. }) => assert!(
            reason.starts_with("mla_decode needs") && reason.contains("bytes of shared memory"),
            "{reason}"
        ),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert_eq!(backend.pipelines().len(), before);
}
