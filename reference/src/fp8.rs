//! FP8 quantizers and the block-scaled GEMM in f64.

use tessera_core::ops::fp8::{Fp8Gemm, Fp8Quantize, Fp8Quantized};
use tessera_core::E4M3;

/// Quantizes `x` (`[rows, cols]`, finite) per group: scale = `fp8_scale(amax of the group)`,
/// value = `E4M3::from_f32(x / scale)`.
pub fn quantize(op: &Fp8Quantize, x: &[f32]) -> Fp8Quantized {
    let _ = (op, x);
    todo!()
}

/// `q · scale` per element, `[rows, cols]`.
pub fn dequantize(op: &Fp8Quantize, q: &Fp8Quantized) -> Vec<f64> {
    let _ = (op, q);
    todo!()
}

/// The block-scaled GEMM in f64: `D[m][n] = Σ_kb sA[m][kb]·sB[n/128][kb]·Σ_k A[m][k]·B[n][k]`,
/// `[m, n]` (not rounded to bf16).
pub fn fp8_gemm(op: &Fp8Gemm, a: &[E4M3], a_scales: &[f32], b: &[E4M3], b_scales: &[f32]) -> Vec<f64> {
    let _ = (op, a, a_scales, b, b_scales);
    todo!()
}

/// Plain `D = A · Bᵀ` in f64: A `[m, k]`, B `[n, k]`, D `[m, n]`.
pub fn matmul_nt(m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    let _ = (m, n, k, a, b);
    todo!()
}
