//! FP8 quantizers and the block-scaled GEMM in f64.
//!
//! Quantization follows the DeepSeek-V3 recipe as [`tessera_core::ops::fp8`] specifies it: each
//! group (1x128 for activations, 128x128 for weights; partial at the right and bottom edges)
//! gets the scale `s = fp8_scale(amax, rule)` and its elements are stored as
//! `E4M3::from_f32(x / s)` (f32 division, then round to nearest even with saturation). A stored
//! value reads back as `q · s`.

use std::ops::Range;
use tessera_core::ops::fp8::{fp8_scale, Fp8Gemm, Fp8Quantize, Fp8Quantized, FP8_GROUP};
use tessera_core::E4M3;

/// Index range of group `index` of `size` along a dimension of `len`, clipped at the end
/// (the last group may be partial).
fn group_range(index: usize, size: usize, len: usize) -> Range<usize> {
    index * size..((index + 1) * size).min(len)
}

/// Index in the scales (layout [`Fp8Quantize::scales_shape`]) of the scale of element
/// `(row, col)`.
fn scale_index(op: &Fp8Quantize, row: usize, col: usize) -> usize {
    let (_, scale_cols) = op.scales_shape();
    (row / op.group_rows()) * scale_cols + col / FP8_GROUP
}

/// Quantizes `x` (`[rows, cols]`, finite) per group: scale = `fp8_scale(amax of the group)`,
/// value = `E4M3::from_f32(x / scale)`.
///
/// Layouts (row-major): `x` f32 `[rows, cols]`; output values E4M3 `[rows, cols]`; scales f32
/// `[rows, ceil(cols/128)]` for 1x128 groups, `[ceil(rows/128), ceil(cols/128)]` for 128x128
/// blocks (see [`Fp8Quantize::scales_shape`]).
///
/// # Panics
/// If `x.len() != rows * cols`.
pub fn quantize(op: &Fp8Quantize, x: &[f32]) -> Fp8Quantized {
    assert_eq!(x.len(), op.rows * op.cols, "x must be [rows, cols]");
    let (scale_rows, scale_cols) = op.scales_shape();
    let mut values = vec![E4M3::ZERO; x.len()];
    let mut scales = vec![0.0f32; scale_rows * scale_cols];
    for group_row in 0..scale_rows {
        let rows = group_range(group_row, op.group_rows(), op.rows);
        for group_col in 0..scale_cols {
            let cols = group_range(group_col, FP8_GROUP, op.cols);
            let mut amax = 0.0f32;
            for r in rows.clone() {
                for c in cols.clone() {
                    amax = amax.max(x[r * op.cols + c].abs());
                }
            }
            let scale = fp8_scale(amax, op.scale_rule);
            scales[group_row * scale_cols + group_col] = scale;
            for r in rows.clone() {
                for c in cols.clone() {
                    let i = r * op.cols + c;
                    values[i] = E4M3::from_f32(x[i] / scale);
                }
            }
        }
    }
    Fp8Quantized { values, scales }
}

/// `q · scale` per element, `[rows, cols]`.
///
/// Layouts: `q.values` E4M3 `[rows, cols]`, `q.scales` f32 as
/// [`Fp8Quantize::scales_shape`]; output f64 `[rows, cols]` (exact: a 4-bit significand times
/// an f32).
///
/// # Panics
/// If the lengths do not match `op`.
pub fn dequantize(op: &Fp8Quantize, q: &Fp8Quantized) -> Vec<f64> {
    let (scale_rows, scale_cols) = op.scales_shape();
    assert_eq!(
        q.values.len(),
        op.rows * op.cols,
        "values must be [rows, cols]"
    );
    assert_eq!(
        q.scales.len(),
        scale_rows * scale_cols,
        "scales must be scales_shape()"
    );
    let mut out = vec![0.0; op.rows * op.cols];
    for r in 0..op.rows {
        for c in 0..op.cols {
            let i = r * op.cols + c;
            out[i] = q.values[i].to_f32() as f64 * q.scales[scale_index(op, r, c)] as f64;
        }
    }
    out
}

/// The block-scaled GEMM in f64: `D[m][n] = Σ_kb sA[m][kb]·sB[n/128][kb]·Σ_k A[m][k]·B[n][k]`,
/// `[m, n]` (not rounded to bf16).
///
/// Layouts (row-major): A E4M3 `[m, k]`; sA f32 `[m, ceil(k/128)]`; B E4M3 `[n, k]`; sB f32
/// `[ceil(n/128), ceil(k/128)]`; D f64 `[m, n]`. The inner sum over each block of 128 of K (the
/// last one partial when 128 does not divide k) is exact in f64; the scaled block sums are then
/// added in order of `kb`. The shape is taken from `op` without its alignment checks, so any
/// `m, n, k >= 1` works.
///
/// # Panics
/// If a length does not match `op`.
pub fn fp8_gemm(
    op: &Fp8Gemm,
    a: &[E4M3],
    a_scales: &[f32],
    b: &[E4M3],
    b_scales: &[f32],
) -> Vec<f64> {
    let (m, n, k) = (op.m, op.n, op.k);
    let k_blocks = k.div_ceil(FP8_GROUP);
    assert_eq!(a.len(), m * k, "a must be [m, k]");
    assert_eq!(
        a_scales.len(),
        m * k_blocks,
        "a_scales must be [m, ceil(k/128)]"
    );
    assert_eq!(b.len(), n * k, "b must be [n, k]");
    assert_eq!(
        b_scales.len(),
        n.div_ceil(FP8_GROUP) * k_blocks,
        "b_scales must be [ceil(n/128), ceil(k/128)]"
    );
    let mut d = vec![0.0; m * n];
    for row in 0..m {
        for col in 0..n {
            let mut total = 0.0f64;
            for kb in 0..k_blocks {
                let mut block_sum = 0.0f64;
                for kk in group_range(kb, FP8_GROUP, k) {
                    block_sum += a[row * k + kk].to_f32() as f64 * b[col * k + kk].to_f32() as f64;
                }
                let scale_a = a_scales[row * k_blocks + kb] as f64;
                let scale_b = b_scales[(col / FP8_GROUP) * k_blocks + kb] as f64;
                total += scale_a * scale_b * block_sum;
            }
            d[row * n + col] = total;
        }
    }
    d
}

/// The grouped GEMM in f64 (see [`GemmGrouping`] for the layouts): one [`fp8_gemm`] per group
/// on the group's rows of A and sA and its own B and sB. Rows of D that a `Masked` group leaves
/// out are NaN. `groups` is the group layout (offsets or counts), already validated.
///
/// # Panics
/// If a length does not match `op` or the layout is not valid for it.
pub fn fp8_gemm_grouped(
    op: &Fp8Gemm,
    a: &[E4M3],
    a_scales: &[f32],
    b: &[E4M3],
    b_scales: &[f32],
    groups: &[i32],
) -> Vec<f64> {
    let (n, k) = (op.n, op.k);
    let kb = k.div_ceil(FP8_GROUP);
    let (b_len, sb_len) = (n * k, n.div_ceil(FP8_GROUP) * kb);
    let mut d = vec![f64::NAN; op.d_len()];
    for (g, (row0, rows)) in op.group_spans(groups).into_iter().enumerate() {
        if rows == 0 {
            continue;
        }
        let part = fp8_gemm(
            &op.group_gemm(rows),
            &a[row0 * k..(row0 + rows) * k],
            &a_scales[row0 * kb..(row0 + rows) * kb],
            &b[g * b_len..(g + 1) * b_len],
            &b_scales[g * sb_len..(g + 1) * sb_len],
        );
        d[row0 * n..(row0 + rows) * n].copy_from_slice(&part);
    }
    d
}

/// Plain `D = A · Bᵀ` in f64: A `[m, k]`, B `[n, k]`, D `[m, n]` (all row-major),
/// `D[i][j] = Σ_l A[i][l]·B[j][l]` summed in order of `l`.
///
/// # Panics
/// If a length does not match.
pub fn matmul_nt(m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    assert_eq!(a.len(), m * k, "a must be [m, k]");
    assert_eq!(b.len(), n * k, "b must be [n, k]");
    let mut d = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            d[i * n + j] = (0..k).map(|l| a[i * k + l] * b[j * k + l]).sum();
        }
    }
    d
}
