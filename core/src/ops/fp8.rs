//! FP8 quantizers and the block-scaled FP8 GEMM (DeepSeek-V3 recipe).

use super::{check_len, checked_product, saturating_product};
use crate::error::{Error, Result};
use crate::fp8::E4M3;
use crate::tensor::{DType, TensorRef};

/// Quantization group edge along K (and along N for weights): 128.
pub const FP8_GROUP: usize = 128;
/// Smallest amax used for a scale, so that all-zero groups get a finite scale.
pub const FP8_AMAX_FLOOR: f32 = 1e-4;
/// The GEMM's K must be a multiple of this.
pub const GEMM_K_ALIGN: usize = 16;
/// The GEMM's N must be a multiple of this.
pub const GEMM_N_ALIGN: usize = 8;

/// How the scales are rounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ScaleRule {
    /// `s = max(amax, 1e-4) / 448` in f32.
    #[default]
    Float,
    /// The same, rounded up to a power of two (UE8M0-representable): x / s is then exact.
    PowerOfTwo,
}

/// Which elements share a scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fp8Granularity {
    /// Activations: one scale per row and 128 consecutive columns (1x128);
    /// scales `[rows, ceil(cols / 128)]`.
    PerToken1x128,
    /// Weights: one scale per 128x128 block; scales `[ceil(rows / 128), ceil(cols / 128)]`.
    Block128x128,
}

/// Rounds a positive finite f32 up to the next power of two (itself if it is one).
pub fn round_up_pow2(s: f32) -> f32 {
    let bits = s.to_bits();
    if bits & 0x007f_ffff == 0 {
        s
    } else {
        f32::from_bits((bits & 0x7f80_0000) + 0x0080_0000)
    }
}

/// The scale of a group with absolute maximum `amax`: `max(amax, 1e-4) / 448` (f32, correctly
/// rounded), optionally rounded up to a power of two. Elements are then stored as
/// `E4M3::from_f32(x / s)` (f32 division, correctly rounded) and read back as `q * s`.
pub fn fp8_scale(amax: f32, rule: ScaleRule) -> f32 {
    let s = amax.max(FP8_AMAX_FLOOR) / E4M3::MAX;
    match rule {
        ScaleRule::Float => s,
        ScaleRule::PowerOfTwo => round_up_pow2(s),
    }
}

/// Quantizes a `[rows, cols]` matrix to E4M3 with per-group f32 scales.
///
/// Layouts: input `[rows, cols]` (f32, f16 or bf16, all finite); output values E4M3
/// `[rows, cols]`; scales f32 as the [`Fp8Granularity`] says. Groups at the right and bottom
/// edges may be partial (cols or rows not a multiple of 128).
///
/// # Determinism
/// Exact: codes and scales equal the reference's bit for bit on every backend (a maximum and
/// correctly rounded f32 divisions, which no order changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fp8Quantize {
    /// Rows (tokens for activations, N for weights), at least 1.
    pub rows: usize,
    /// Columns (K), at least 1.
    pub cols: usize,
    /// Which elements share a scale.
    pub granularity: Fp8Granularity,
    /// How scales are rounded.
    pub scale_rule: ScaleRule,
}

impl Fp8Quantize {
    /// `(scale_rows, scale_cols)`.
    pub fn scales_shape(&self) -> (usize, usize) {
        let sc = self.cols.div_ceil(FP8_GROUP);
        match self.granularity {
            Fp8Granularity::PerToken1x128 => (self.rows, sc),
            Fp8Granularity::Block128x128 => (self.rows.div_ceil(FP8_GROUP), sc),
        }
    }

    /// Rows of data sharing one scale row: 1 or 128.
    pub fn group_rows(&self) -> usize {
        match self.granularity {
            Fp8Granularity::PerToken1x128 => 1,
            Fp8Granularity::Block128x128 => FP8_GROUP,
        }
    }

    /// Elements of the input and of the values: `rows * cols` (saturating at `usize::MAX` for
    /// a descriptor whose product overflows, which validation rejects).
    pub fn len(&self) -> usize {
        saturating_product(&[self.rows, self.cols])
    }

    /// Whether the descriptor has no elements (which validation rejects).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements of the scales: the product of [`Self::scales_shape`].
    pub fn scales_len(&self) -> usize {
        let (r, c) = self.scales_shape();
        saturating_product(&[r, c])
    }

    /// Checks the descriptor on its own: `rows` and `cols` at least 1, `rows * cols` fits a
    /// `usize`. Backends' device APIs call it before their own limits.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "fp8_quantize";
        if self.rows == 0 {
            return Err(Error::invalid(OP, "rows", "at least 1", "0"));
        }
        if self.cols == 0 {
            return Err(Error::invalid(OP, "cols", "at least 1", "0"));
        }
        checked_product(OP, "rows * cols", &[self.rows, self.cols])?;
        Ok(())
    }

    /// Checks the descriptor and the input (its type, length, and that it is all finite).
    pub fn validate_args(&self, x: TensorRef<'_>) -> Result<()> {
        const OP: &str = "fp8_quantize";
        self.validate()?;
        if !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::invalid(
                OP,
                "x",
                "dtype f32, f16 or bf16",
                x.dtype().name(),
            ));
        }
        let shape = format!("[rows {}, cols {}]", self.rows, self.cols);
        check_len(OP, "x", &shape, self.len(), x.len())?;
        if let Some(i) = x.first_non_finite() {
            return Err(Error::invalid(
                OP,
                format!("x[{}][{}]", i / self.cols, i % self.cols),
                "a finite value",
                x.get_f32(i).to_string(),
            ));
        }
        Ok(())
    }
}

/// Output of [`Fp8Quantize`].
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Quantized {
    /// E4M3 `[rows, cols]`.
    pub values: Vec<E4M3>,
    /// f32 scales, shape [`Fp8Quantize::scales_shape`].
    pub scales: Vec<f32>,
}

/// Group boundaries of [`GemmGrouping::Contiguous`] are multiples of this many rows (the
/// largest M tile of the kernels, so that no tile spans two groups).
pub const GEMM_GROUP_ALIGN: usize = 128;

/// How the rows of A are grouped, for mixture-of-experts: each group (expert) multiplies its
/// rows by its own B and sB. A grouped GEMM is run with [`crate::Backend::fp8_gemm_grouped`],
/// which takes the group layout (`groups: &[i32]`) described here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GemmGrouping {
    /// One GEMM: every row of A against all of B.
    #[default]
    Single,
    /// Contiguous (MoE prefill): the rows of all groups stacked in A `[m, k]`, sA
    /// `[m, ceil(k/128)]`, D `[m, n]`; group `g` owns rows `[groups[g], groups[g + 1])` of the
    /// `groups + 1` offsets (`offsets[0] = 0`, `offsets[groups] = m`, non-decreasing, each but
    /// the last a multiple of [`GEMM_GROUP_ALIGN`]: pad each group's rows). B `[groups, n, k]`,
    /// sB `[groups, ceil(n/128), ceil(k/128)]`. Every row of D is written.
    Contiguous {
        /// Number of groups, at least 1.
        groups: usize,
    },
    /// Masked (MoE decode, fixed shapes for CUDA graphs): each group has room for `m` rows:
    /// A `[groups, m, k]`, sA `[groups, m, ceil(k/128)]`, D `[groups, m, n]`; the layout gives
    /// `groups` row counts (each in `0..=m`): only the first `counts[g]` rows of group `g` are
    /// computed, and D's rows at or past them are left as they were. B and sB as for
    /// `Contiguous`.
    Masked {
        /// Number of groups, at least 1.
        groups: usize,
    },
}

impl GemmGrouping {
    /// Number of groups (1 for [`GemmGrouping::Single`]).
    pub fn groups(&self) -> usize {
        match *self {
            GemmGrouping::Single => 1,
            GemmGrouping::Contiguous { groups } | GemmGrouping::Masked { groups } => groups,
        }
    }
}

/// Block-scaled FP8 GEMM, `D = A · Bᵀ` with DeepSeek-V3 scaling (grouped for mixture-of-experts
/// with [`GemmGrouping`]: each group's rows against its own B):
/// `D[m][n] = Σ_kb sA[m][kb] · sB[n/128][kb] · Σ_{k in block kb} A[m][k] · B[n][k]`,
/// accumulated in f32 (promoted at least every 128 of K), rounded to bf16.
///
/// Layouts (row-major): A E4M3 `[m, k]` (K-major); sA f32 `[m, ceil(k/128)]`;
/// B E4M3 `[n, k]` (K-major); sB f32 `[ceil(n/128), ceil(k/128)]`; D bf16 `[m, n]`.
///
/// # Determinism
/// Bitwise deterministic on every backend for the same inputs, device, driver and settings:
/// each output tile is computed by one workgroup / CTA that walks K in order (no split-K, no
/// atomics). The tile shape (and so the summation order inside a K block) depends on the shape
/// and the device, so different devices or paths may round differently (within tolerance).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fp8Gemm {
    /// Rows of A and D, at least 1.
    pub m: usize,
    /// Rows of B, columns of D: a positive multiple of [`GEMM_N_ALIGN`].
    pub n: usize,
    /// Reduction length: a positive multiple of [`GEMM_K_ALIGN`].
    pub k: usize,
    /// Grouping of the rows of A.
    pub grouping: GemmGrouping,
}

impl Fp8Gemm {
    /// A plain (ungrouped) GEMM.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Self {
            m,
            n,
            k,
            grouping: GemmGrouping::Single,
        }
    }

    /// A grouped GEMM (see [`GemmGrouping`]): for `Contiguous`, `m` is the total of the
    /// groups' rows; for `Masked`, the rows each group has room for.
    pub fn grouped(m: usize, n: usize, k: usize, grouping: GemmGrouping) -> Self {
        Self { m, n, k, grouping }
    }

    /// Rows of A and D over all groups: `m`, times the groups for `Masked`.
    pub fn total_rows(&self) -> usize {
        match self.grouping {
            GemmGrouping::Masked { groups } => saturating_product(&[groups, self.m]),
            _ => self.m,
        }
    }

    /// Elements of A: rows ([`Fp8Gemm::total_rows`]) x `k` (saturating at `usize::MAX` for a
    /// descriptor whose product overflows, which validation rejects; likewise below).
    pub fn a_len(&self) -> usize {
        saturating_product(&[self.total_rows(), self.k])
    }

    /// Elements of B: groups x `n * k`.
    pub fn b_len(&self) -> usize {
        saturating_product(&[self.grouping.groups(), self.n, self.k])
    }

    /// Elements of D: rows x `n`.
    pub fn d_len(&self) -> usize {
        saturating_product(&[self.total_rows(), self.n])
    }

    /// Elements of sA: rows x `ceil(k/128)`.
    pub fn a_scales_len(&self) -> usize {
        saturating_product(&[self.total_rows(), self.k.div_ceil(FP8_GROUP)])
    }

    /// Elements of sB: groups x `ceil(n/128) * ceil(k/128)`.
    pub fn b_scales_len(&self) -> usize {
        saturating_product(&[
            self.grouping.groups(),
            self.n.div_ceil(FP8_GROUP),
            self.k.div_ceil(FP8_GROUP),
        ])
    }

    /// The plain GEMM entry points take only [`GemmGrouping::Single`]: a typed error otherwise.
    pub fn require_single(&self) -> Result<()> {
        if self.grouping != GemmGrouping::Single {
            return Err(Error::invalid(
                "fp8_gemm",
                "grouping",
                "GemmGrouping::Single (grouped GEMMs go through fp8_gemm_grouped)",
                format!("{:?}", self.grouping),
            ));
        }
        Ok(())
    }

    /// The plain GEMM of group `g` (its rows: `rows`), for backends that run groups one by one.
    pub fn group_gemm(&self, rows: usize) -> Fp8Gemm {
        Fp8Gemm::new(rows, self.n, self.k)
    }

    /// The rows each group computes, as (first row of A / sA / D over all groups, rows), from a
    /// group layout that [`Fp8Gemm::validate_group_layout`] accepted (one span for `Single`).
    pub fn group_spans(&self, layout: &[i32]) -> Vec<(usize, usize)> {
        match self.grouping {
            GemmGrouping::Contiguous { groups } => (0..groups)
                .map(|g| {
                    let lo = layout[g] as usize;
                    (lo, layout[g + 1] as usize - lo)
                })
                .collect(),
            GemmGrouping::Masked { groups } => (0..groups)
                .map(|g| (g * self.m, layout[g] as usize))
                .collect(),
            GemmGrouping::Single => vec![(0, self.m)],
        }
    }

    /// Length of the group layout [`crate::Backend::fp8_gemm_grouped`] takes: `groups + 1`
    /// offsets (`Contiguous`), `groups` counts (`Masked`), 0 (`Single`).
    pub fn group_layout_len(&self) -> usize {
        match self.grouping {
            GemmGrouping::Single => 0,
            GemmGrouping::Contiguous { groups } => groups.saturating_add(1),
            GemmGrouping::Masked { groups } => groups,
        }
    }

    /// Checks the group layout (offsets or counts, see [`GemmGrouping`]) against the shape.
    pub fn validate_group_layout(&self, layout: &[i32]) -> Result<()> {
        const OP: &str = "fp8_gemm";
        check_len(
            OP,
            "groups",
            &format!("[{}] for {:?}", self.group_layout_len(), self.grouping),
            self.group_layout_len(),
            layout.len(),
        )?;
        match self.grouping {
            GemmGrouping::Single => Ok(()),
            GemmGrouping::Contiguous { groups } => {
                let last = groups;
                for (g, &o) in layout.iter().enumerate() {
                    let ok = o >= 0
                        && (o as usize) <= self.m
                        && (g == 0 || o >= layout[g - 1])
                        && (g != 0 || o == 0)
                        && (g != last || o as usize == self.m)
                        && (g == last || (o as usize) % GEMM_GROUP_ALIGN == 0);
                    if !ok {
                        return Err(Error::invalid(
                            OP,
                            format!("groups[{g}]"),
                            format!(
                                "offsets from 0 to m {} in order, each but the last a multiple of {GEMM_GROUP_ALIGN}",
                                self.m
                            ),
                            o.to_string(),
                        ));
                    }
                }
                Ok(())
            }
            GemmGrouping::Masked { .. } => {
                if let Some(g) = layout.iter().position(|&c| c < 0 || c as usize > self.m) {
                    return Err(Error::invalid(
                        OP,
                        format!("groups[{g}]"),
                        format!("a row count in 0..={}", self.m),
                        layout[g].to_string(),
                    ));
                }
                Ok(())
            }
        }
    }

    /// 2·m·n·k.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// Checks the shape: m at least 1, n and k positive multiples of their alignments, and
    /// `m * k`, `n * k` and `m * n` fit a `usize`.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "fp8_gemm";
        if self.m == 0 {
            return Err(Error::invalid(OP, "m", "at least 1", "0"));
        }
        if self.n == 0 || self.n % GEMM_N_ALIGN != 0 {
            return Err(Error::invalid(
                OP,
                "n",
                format!("a positive multiple of {GEMM_N_ALIGN}"),
                self.n.to_string(),
            ));
        }
        if self.k == 0 || self.k % GEMM_K_ALIGN != 0 {
            return Err(Error::invalid(
                OP,
                "k",
                format!("a positive multiple of {GEMM_K_ALIGN}"),
                self.k.to_string(),
            ));
        }
        let groups = self.grouping.groups();
        if groups == 0 {
            return Err(Error::invalid(OP, "grouping", "at least 1 group", "0"));
        }
        if let GemmGrouping::Masked { groups } = self.grouping {
            checked_product(OP, "groups * m", &[groups, self.m])?;
        }
        let rows = self.total_rows();
        let masked = matches!(self.grouping, GemmGrouping::Masked { .. });
        let (rows_k, rows_n) = if masked {
            ("groups * m * k", "groups * m * n")
        } else {
            ("m * k", "m * n")
        };
        checked_product(OP, rows_k, &[rows, self.k])?;
        checked_product(OP, "groups * n * k", &[groups, self.n, self.k])?;
        checked_product(OP, rows_n, &[rows, self.n])?;
        Ok(())
    }

    /// Checks the shape and the host arguments (lengths; scales finite and > 0).
    pub fn validate_args(
        &self,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
    ) -> Result<()> {
        const OP: &str = "fp8_gemm";
        self.validate()?;
        let kb = self.k.div_ceil(FP8_GROUP);
        let (rows, groups) = (self.total_rows(), self.grouping.groups());
        check_len(
            OP,
            "a",
            &format!("[rows {rows}, k {}]", self.k),
            self.a_len(),
            a.len(),
        )?;
        check_len(
            OP,
            "a_scales",
            &format!("[rows {rows}, ceil(k/128) {kb}]"),
            self.a_scales_len(),
            a_scales.len(),
        )?;
        check_len(
            OP,
            "b",
            &format!("[groups {groups}, n {}, k {}]", self.n, self.k),
            self.b_len(),
            b.len(),
        )?;
        check_len(
            OP,
            "b_scales",
            &format!(
                "[groups {groups}, ceil(n/128) {}, ceil(k/128) {kb}]",
                self.n.div_ceil(FP8_GROUP)
            ),
            self.b_scales_len(),
            b_scales.len(),
        )?;
        for (arg, scales) in [("a_scales", a_scales), ("b_scales", b_scales)] {
            if let Some(i) = scales.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(Error::invalid(
                    OP,
                    format!("{arg}[{}][{}]", i / kb, i % kb),
                    "a finite scale > 0",
                    scales[i].to_string(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales() {
        assert_eq!(fp8_scale(448.0, ScaleRule::Float), 1.0);
        assert_eq!(fp8_scale(0.0, ScaleRule::Float), 1e-4 / 448.0);
        assert_eq!(fp8_scale(448.0, ScaleRule::PowerOfTwo), 1.0);
        assert_eq!(fp8_scale(449.0, ScaleRule::PowerOfTwo), 2.0);
        assert_eq!(fp8_scale(300.0, ScaleRule::PowerOfTwo), 1.0);
        assert_eq!(round_up_pow2(0.75), 1.0);
        assert_eq!(round_up_pow2(0.5), 0.5);
    }

    #[test]
    fn gemm_errors_name_the_argument() {
        assert_eq!(
            Fp8Gemm::new(1, 12, 16).validate().unwrap_err().argument(),
            Some("n")
        );
        assert_eq!(
            Fp8Gemm::new(1, 16, 24).validate().unwrap_err().argument(),
            Some("k")
        );
        let g = Fp8Gemm::new(2, 8, 16);
        let a = vec![E4M3::ZERO; 32];
        let b = vec![E4M3::ZERO; 128];
        let e = g
            .validate_args(&a, &[1.0, f32::NAN], &b, &[1.0])
            .unwrap_err();
        assert_eq!(e.argument(), Some("a_scales[1][0]"));
        let e = g
            .validate_args(&a[..31], &[1.0, 1.0], &b, &[1.0])
            .unwrap_err();
        assert_eq!(e.argument(), Some("a"));
    }
}
