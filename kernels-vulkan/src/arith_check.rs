//! `check_arith.comp`: runs the integer-exact helpers of `shaders/common.glsl` element-wise, so
//! that the tests compare each with the reference (Rust's IEEE division, `E4M3::from_f32`,
//! `half`) on many and adversarial inputs. Only the tests use it.
//!
//! `check_float_types.comp`: the f32 -> bf16 / E4M3 / E5M2 conversions of the GLSL types of
//! `GL_EXT_bfloat16` and `GL_EXT_float_e4m3`/`e5m2`, the proof that the shader toolchain
//! compiles them. Embedded and checked against its source, not dispatched yet (it needs a device
//! with `VK_KHR_shader_bfloat16` and `VK_EXT_shader_float8` enabled).

use crate::pipeline::{Shader, ShaderResources, SpecConstant, Specialization};
use std::marker::PhantomData;

/// Bindings: a, b, out (u32 each); push constants: count, function. No specialization
/// constants ([`CheckArithSpec`]).
pub(crate) const CHECK_ARITH: Shader<CheckArithSpec> = Shader {
    name: "check_arith",
    spirv: spirv!("check_arith"),
    storage_buffers: 3,
    push_constant_bytes: 8,
    specialization: PhantomData,
};

/// `check_arith.comp` has no specialization constants (64 invocations per workgroup).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct CheckArithSpec;

impl Specialization for CheckArithSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        Vec::new()
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: 64,
            shared_memory_bytes: 0,
        }
    }
}

/// Bindings: values (f32), result (u32: bf16 bits in 0..16, E4M3 in 16..24, E5M2 in 24..32);
/// push constants: count. No specialization constants ([`CheckFloatTypesSpec`]).
pub(crate) const CHECK_FLOAT_TYPES: Shader<CheckFloatTypesSpec> = Shader {
    name: "check_float_types",
    spirv: spirv!("check_float_types"),
    storage_buffers: 2,
    push_constant_bytes: 4,
    specialization: PhantomData,
};

/// `check_float_types.comp` has no specialization constants (64 invocations per workgroup).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct CheckFloatTypesSpec;

impl Specialization for CheckFloatTypesSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        Vec::new()
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: 64,
            shared_memory_bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CheckArithSpec, CHECK_ARITH};
    use crate::memory::Buffer;
    use crate::pipeline::linear_groups;
    use crate::VulkanBackend;
    use half::{bf16, f16};
    use tessera_core::E4M3;
    use tessera_testing::Rng;

    const DIV: u32 = 0;
    const TO_E4M3: u32 = 1;
    const FROM_E4M3: u32 = 2;
    const F16_TO_F32: u32 = 3;
    const TO_BF16: u32 = 4;
    const F16_TO_F32_FAST: u32 = 5;
    const TO_F16: u32 = 6;

    fn backend() -> Option<VulkanBackend> {
        match VulkanBackend::new() {
            Ok(b) => Some(b),
            Err(e) => {
                // The GPU machine's run sets it: there a missing device fails.
                if std::env::var("TESSERA_REQUIRE_VULKAN").is_ok_and(|v| v.trim() == "1") {
                    panic!("TESSERA_REQUIRE_VULKAN=1 but {e}");
                }
                println!("skipped: {e}");
                None
            }
        }
    }

    /// Runs function `func` of the shader on every element.
    fn run(backend: &VulkanBackend, func: u32, a: &[u32], b: &[u32]) -> Vec<u32> {
        assert_eq!(a.len(), b.len());
        let ctx = backend.context();
        let in_a = Buffer::from_bytes(ctx, bytemuck::cast_slice(a)).unwrap();
        let in_b = Buffer::from_bytes(ctx, bytemuck::cast_slice(b)).unwrap();
        let out = Buffer::filled(ctx, 4 * a.len(), &[0xff]).unwrap();
        let pipeline = backend
            .pipelines()
            .get(&CHECK_ARITH, &CheckArithSpec)
            .unwrap();
        let groups = linear_groups(
            (a.len() as u64).div_ceil(64),
            backend.features().max_workgroup_count,
        )
        .unwrap();
        backend
            .run_and_wait(|cmd| {
                // SAFETY: the backend's own recording command buffer and live buffers that
                // hold `a.len()` words each.
                unsafe {
                    pipeline.record(
                        cmd,
                        &[in_a.range(), in_b.range(), out.range()],
                        &[a.len() as u32, func],
                        groups,
                    )
                }
            })
            .unwrap();
        out.read(0, 4 * a.len())
            .unwrap()
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect()
    }

    /// A finite f32 with a random sign, mantissa and a biased exponent in `lo..=hi`.
    fn f32_bits(rng: &mut Rng, lo: u32, hi: u32) -> u32 {
        let r = rng.next_u32();
        let e = lo + (rng.next_u32() % (hi - lo + 1));
        (r & 0x8000_0000) | (e << 23) | (r & 0x007f_ffff)
    }

    fn compare(what: &str, inputs: &[(u32, u32)], got: &[u32], want: impl Fn(u32, u32) -> u32) {
        let mut bad = Vec::new();
        for (&(a, b), &g) in inputs.iter().zip(got) {
            let w = want(a, b);
            let both_nan = f32::from_bits(w).is_nan() && f32::from_bits(g).is_nan();
            if g != w && !(what.ends_with("f32") && both_nan) {
                bad.push(format!("{a:#010x} {b:#010x}: got {g:#x}, want {w:#x}"));
            }
        }
        assert!(
            bad.is_empty(),
            "{what}: {} of {} differ, e.g. {:?}",
            bad.len(),
            inputs.len(),
            &bad[..bad.len().min(8)]
        );
    }

    #[test]
    fn division_is_correctly_rounded() {
        let Some(backend) = backend() else { return };
        let mut rng = Rng::new(1);
        let mut inputs = Vec::new();
        // Any finite x (subnormals and zeros included) by any positive normal s.
        for _ in 0..200_000 {
            inputs.push((
                f32_bits(&mut rng, 0, 254),
                f32_bits(&mut rng, 1, 254) & 0x7fff_ffff,
            ));
        }
        // The quantizers' range: |x / s| up to about 448, scales from amax / 448.
        for _ in 0..200_000 {
            let x = f32_bits(&mut rng, 100, 160);
            let amax = f32::from_bits(f32_bits(&mut rng, 100, 160) & 0x7fff_ffff)
                .max(f32::from_bits(x).abs());
            inputs.push((x, (amax.max(1e-4) / 448.0).to_bits()));
        }
        // Subnormal quotients, where ties are possible (powers of two and near them).
        for _ in 0..100_000 {
            let s = f32_bits(&mut rng, 200, 254) & 0x7fff_ffff;
            let s = if rng.next_u32() % 2 == 0 {
                s & 0xff80_0000
            } else {
                s
            };
            inputs.push((f32_bits(&mut rng, 0, 80), s));
        }
        for x in [
            0u32,
            0x8000_0000,
            1,
            0x8000_0001,
            0x007f_ffff,
            0x7f7f_ffff,
            0xff7f_ffff,
        ] {
            for s in [
                0x0080_0000u32,
                0x3f80_0000,
                0x3f80_0001,
                0x7f7f_ffff,
                0x4b00_0000,
            ] {
                inputs.push((x, s));
            }
        }
        let (a, b): (Vec<u32>, Vec<u32>) = inputs.iter().copied().unzip();
        let got = run(&backend, DIV, &a, &b);
        compare("x / s as f32", &inputs, &got, |a, b| {
            (f32::from_bits(a) / f32::from_bits(b)).to_bits()
        });
    }

    #[test]
    fn e4m3_encoding_matches_the_reference() {
        let Some(backend) = backend() else { return };
        let mut rng = Rng::new(2);
        let mut xs: Vec<u32> = Vec::new();
        // Every code's value, the midpoints between neighbours, and one ULP either side.
        for code in 0..=0x7eu8 {
            let v = E4M3(code).to_f32();
            let next = if code < 0x7e {
                E4M3(code + 1).to_f32()
            } else {
                480.0
            };
            let mid = (v + next) / 2.0;
            for x in [
                v,
                mid,
                mid.next_up(),
                mid.next_down(),
                v.next_up(),
                v.next_down(),
            ] {
                xs.push(x.to_bits());
                xs.push((-x).to_bits());
            }
        }
        // Specials and the edges of the ranges.
        for x in [
            0.0f32,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            448.0,
            464.0,
            1e30,
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
            2f32.powi(-10),
            2f32.powi(-11),
        ] {
            xs.push(x.to_bits());
            xs.push((-x).to_bits());
        }
        for _ in 0..200_000 {
            xs.push(rng.next_u32());
            xs.push(f32_bits(&mut rng, 110, 136));
        }
        let inputs: Vec<(u32, u32)> = xs.iter().map(|&x| (x, 0)).collect();
        let got = run(&backend, TO_E4M3, &xs, &vec![0; xs.len()]);
        compare("f32 -> e4m3", &inputs, &got, |a, _| {
            E4M3::from_f32(f32::from_bits(a)).to_bits() as u32
        });
    }

    #[test]
    fn decoders_are_exact() {
        let Some(backend) = backend() else { return };
        let codes: Vec<u32> = (0..256).collect();
        let inputs: Vec<(u32, u32)> = codes.iter().map(|&c| (c, 0)).collect();
        let got = run(&backend, FROM_E4M3, &codes, &vec![0; 256]);
        compare("e4m3 -> f32", &inputs, &got, |a, _| {
            E4M3(a as u8).to_f32().to_bits()
        });

        let halves: Vec<u32> = (0..65536).collect();
        let inputs: Vec<(u32, u32)> = halves.iter().map(|&h| (h, 0)).collect();
        let got = run(&backend, F16_TO_F32, &halves, &vec![0; 65536]);
        compare("f16 -> f32", &inputs, &got, |a, _| {
            f16::from_bits(a as u16).to_f32().to_bits()
        });
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        let Some(backend) = backend() else { return };
        let mut rng = Rng::new(3);
        let mut xs: Vec<u32> = (0..200_000).map(|_| f32_bits(&mut rng, 1, 254)).collect();
        // Exact ties (low half 0x8000) with even and odd upper halves, and NaN / infinity.
        for _ in 0..10_000 {
            xs.push((f32_bits(&mut rng, 1, 250) & 0xffff_0000) | 0x8000);
        }
        xs.extend([
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f7f_ffff,
            0,
            0x8000_0000,
        ]);
        let inputs: Vec<(u32, u32)> = xs.iter().map(|&x| (x, 0)).collect();
        let got = run(&backend, TO_BF16, &xs, &vec![0; xs.len()]);
        compare("f32 -> bf16", &inputs, &got, |a, _| {
            bf16::from_f32(f32::from_bits(a)).to_bits() as u32
        });
    }

    #[test]
    fn fast_f16_decoder_is_exact() {
        let Some(backend) = backend() else { return };
        let halves: Vec<u32> = (0..65536).collect();
        let inputs: Vec<(u32, u32)> = halves.iter().map(|&h| (h, 0)).collect();
        let got = run(&backend, F16_TO_F32_FAST, &halves, &vec![0; 65536]);
        compare("f16 (fast) -> f32", &inputs, &got, |a, _| {
            f16::from_bits(a as u16).to_f32().to_bits()
        });
    }

    #[test]
    fn f16_rounding_is_nearest_even() {
        let Some(backend) = backend() else { return };
        let mut rng = Rng::new(5);
        // Random f32 over the whole range, then over the f16 range (normal and subnormal).
        let mut xs: Vec<u32> = (0..100_000).map(|_| f32_bits(&mut rng, 1, 254)).collect();
        xs.extend((0..200_000).map(|_| f32_bits(&mut rng, 98, 144)));
        // Exact ties and their neighbours at every f16 exponent (normal: 13 dropped bits;
        // subnormal: more), and the edges: largest f16, the overflow tie 65520, infinities,
        // NaN, zeros, f32 subnormals, 2^-25 (the tie to zero) and around it.
        for e in 98u32..=142 {
            for _ in 0..200 {
                let base = (e << 23) | (rng.next_u32() & 0x7f_e000);
                let shift = if e >= 113 { 13 } else { 13 + 113 - e }.min(24);
                let tie = 1u32 << (shift - 1);
                let body = base & !((1u32 << shift.min(23)) - 1) & 0x7fff_ffff;
                for x in [body | tie, (body | tie) - 1, (body | tie) + 1] {
                    xs.push(x);
                    xs.push(x | 0x8000_0000);
                }
            }
        }
        xs.extend([
            0x477f_e000,
            0x477f_efff,
            0x477f_f000,
            0x477f_f001,
            0x4780_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0xffc0_0001,
            0x7f7f_ffff,
            0,
            0x8000_0000,
            1,
            0x807f_ffff,
            0x3300_0000,
            0x3300_0001,
            0x32ff_ffff,
            0x3380_0000,
            0x387f_e000,
            0x387f_f000,
        ]);
        let inputs: Vec<(u32, u32)> = xs.iter().map(|&x| (x, 0)).collect();
        let got = run(&backend, TO_F16, &xs, &vec![0; xs.len()]);
        compare("f32 -> f16", &inputs, &got, |a, _| {
            let x = f32::from_bits(a);
            if x.is_nan() {
                (a >> 16) & 0x8000 | 0x7e00
            } else {
                f16::from_f32(x).to_bits() as u32
            }
        });
    }
}
