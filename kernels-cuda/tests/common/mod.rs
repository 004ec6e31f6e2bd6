//! Helpers shared by the CUDA crate's reliability tests: opening the backend or saying why the
//! test is skipped, and deterministic inputs.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use half::bf16;
use tessera_core::ops::fp8::FP8_GROUP;
use tessera_core::{Fp8Gemm, E4M3};
use tessera_cuda::CudaBackend;
use tessera_testing::Rng;

/// Whether a CUDA device is required here (`TESSERA_REQUIRE_BACKENDS` names `cuda`, or
/// `TESSERA_REQUIRE_CUDA=1`): the GPU machine's run sets it, so nothing is skipped there.
pub fn cuda_required() -> bool {
    std::env::var("TESSERA_REQUIRE_BACKENDS")
        .unwrap_or_default()
        .split(',')
        .any(|r| r.trim().eq_ignore_ascii_case("cuda"))
        || std::env::var("TESSERA_REQUIRE_CUDA").is_ok_and(|v| v.trim() == "1")
}

/// Whether this run is under compute-sanitizer (`TESSERA_SANITIZER_SMALL=1`, set by
/// ci/gpu-sanitize.sh): the tests with many large launches then run fewer and shorter cases, so
/// that racecheck's host memory and time stay bounded (its host process grew past 72 GB on the
/// full MLA variable-query test, session 8). Every kernel and path is still exercised.
pub fn under_sanitizer() -> bool {
    std::env::var("TESSERA_SANITIZER_SMALL").is_ok_and(|v| v.trim() == "1")
}

/// Opens CUDA device `ordinal`, or prints `skipped: <why>` (a failure when required).
pub fn backend_on(ordinal: usize) -> Option<CudaBackend> {
    match CudaBackend::with_ordinal(ordinal) {
        Ok(b) => Some(b),
        Err(e) => {
            if cuda_required() && ordinal == 0 {
                panic!("a CUDA device is required here but: {e}");
            }
            println!("skipped: {e}");
            None
        }
    }
}

/// Opens CUDA device 0, or prints `skipped: <why>`.
pub fn backend() -> Option<CudaBackend> {
    backend_on(0)
}

/// `n` bf16 values, normal, from `seed`.
pub fn bf16s(seed: u64, n: usize) -> Vec<bf16> {
    Rng::new(seed)
        .normals(n)
        .into_iter()
        .map(bf16::from_f32)
        .collect()
}

/// GEMM inputs: A and B of moderate E4M3 codes, scales in [2^-8, 2^-6).
pub struct GemmInputs {
    pub op: Fp8Gemm,
    pub a: Vec<E4M3>,
    pub a_scales: Vec<f32>,
    pub b: Vec<E4M3>,
    pub b_scales: Vec<f32>,
}

impl GemmInputs {
    pub fn new(op: Fp8Gemm, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut codes = |n: usize| -> Vec<E4M3> {
            (0..n)
                .map(|_| E4M3::from_bits(rng.moderate_e4m3()))
                .collect()
        };
        let a = codes(op.m * op.k);
        let b = codes(op.n * op.k);
        let mut rng = Rng::new(seed ^ 1);
        let mut scales = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| 2f32.powf(rng.uniform_f32(-8.0, -6.0)))
                .collect()
        };
        debug_assert_eq!(FP8_GROUP, 128);
        Self {
            a_scales: scales(op.a_scales_len()),
            b_scales: scales(op.b_scales_len()),
            op,
            a,
            b,
        }
    }
}

/// Bit patterns, for bitwise comparisons that treat NaN like any other value.
pub fn bits_bf16(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Bit patterns of f32 values.
pub fn bits_f32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
