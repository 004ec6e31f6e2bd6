//! Tests of the reference FP8 quantizer and block-scaled GEMM: hand-checked cases, the
//! half-ULP error bound of quantization, and the GEMM against dequantize-then-multiply.

mod common;

use common::Rng;
use proptest::prelude::*;
use tessera_core::ops::fp8::{fp8_scale, FP8_GROUP};
use tessera_core::{Fp8Gemm, Fp8Granularity, Fp8Quantize, ScaleRule, E4M3};
use tessera_reference::fp8::{dequantize, fp8_gemm, matmul_nt, quantize};

fn quantizer(
    rows: usize,
    cols: usize,
    granularity: Fp8Granularity,
    scale_rule: ScaleRule,
) -> Fp8Quantize {
    Fp8Quantize {
        rows,
        cols,
        granularity,
        scale_rule,
    }
}

/// Half the spacing of E4M3 values around `t = |x| / scale` (t <= 448): `2^(floor(log2 t) - 4)`
/// in the normal range (3 mantissa bits), `2^-10` in the subnormal range `t < 2^-6` (spacing
/// `2^-9`).
fn e4m3_half_ulp(t: f64) -> f64 {
    if t >= E4M3::MIN_POSITIVE_NORMAL as f64 {
        2f64.powi(t.log2().floor() as i32 - 4)
    } else {
        2f64.powi(-10)
    }
}

/// The worst error of one quantized element: `|x - q·s| <= s · half_ulp(|x|/s) + |x| · 2^-24`.
///
/// The first term is E4M3's round-to-nearest of `x / s`. The second is the f32 rounding of the
/// division `x / s` itself, which is exact for power-of-two scales (so that term is 0 there);
/// for float scales it also covers the double rounding (f32, then E4M3) landing on an E4M3
/// midpoint, and the saturation when `x / s` rounds a hair above 448.
fn quantization_bound(x: f32, scale: f32, rule: ScaleRule) -> f64 {
    let (x, s) = (x.abs() as f64, scale as f64);
    let division = match rule {
        ScaleRule::Float => x * 2f64.powi(-24),
        ScaleRule::PowerOfTwo => 0.0,
    };
    s * e4m3_half_ulp(x / s) + division
}

/// Random f32 values over a wide range of magnitudes: each row has its own magnitude and
/// elements spread over 12 binades below it (so that groups hold E4M3 subnormals), with some
/// exact zeros and some all-zero rows.
fn random_matrix(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let zero_row = rng.chance(0.1);
        let row_exp = rng.range_i32(-30, 30);
        for _ in 0..cols {
            let v = if zero_row || rng.chance(0.05) {
                0.0
            } else {
                rng.symmetric() * 2f64.powi(row_exp - rng.range_i32(0, 12))
            };
            x.push(v as f32);
        }
    }
    x
}

#[test]
fn exact_values_with_amax_448_round_trip() {
    // amax 448 gives scale 1 under both rules; E4M3 values are then stored exactly.
    let row: Vec<f32> = [448.0, -448.0, 1.0, 0.5, -3.5, 0.001953125, 0.0, 240.0].to_vec();
    for rule in [ScaleRule::Float, ScaleRule::PowerOfTwo] {
        let op = quantizer(1, row.len(), Fp8Granularity::PerToken1x128, rule);
        let q = quantize(&op, &row);
        assert_eq!(q.scales, vec![1.0]);
        let back = dequantize(&op, &q);
        assert_eq!(back, row.iter().map(|&v| v as f64).collect::<Vec<_>>());
    }
}

#[test]
fn block_scales_cover_partial_groups() {
    // 130 x 129 in 128x128 blocks: 2 x 2 scales, three of them over partial blocks. Each block
    // gets a distinct amax at one element.
    let (rows, cols) = (130, 129);
    let mut x = vec![0.0f32; rows * cols];
    let amax = [[1.0f32, 2.0], [4.0, 8.0]];
    for (br, amax_row) in amax.iter().enumerate() {
        for (bc, &a) in amax_row.iter().enumerate() {
            let (r, c) = (br * 128 + br, bc * 128 + bc); // (0,0), (0,129), (129,0), (129,129)
            x[r * cols + c.min(cols - 1)] = -a;
        }
    }
    let op = quantizer(rows, cols, Fp8Granularity::Block128x128, ScaleRule::Float);
    assert_eq!(op.scales_shape(), (2, 2));
    let q = quantize(&op, &x);
    let want: Vec<f32> = amax.iter().flatten().map(|&a| a / 448.0).collect();
    assert_eq!(q.scales, want);
    // Each amax element is stored as -448 (code 0xfe).
    assert_eq!(q.values.iter().filter(|v| v.to_bits() == 0xfe).count(), 4);

    let per_token = quantizer(rows, cols, Fp8Granularity::PerToken1x128, ScaleRule::Float);
    assert_eq!(quantize(&per_token, &x).scales.len(), rows * 2);
}

#[test]
fn all_zero_group_uses_the_amax_floor() {
    let op = quantizer(2, 3, Fp8Granularity::PerToken1x128, ScaleRule::PowerOfTwo);
    let q = quantize(&op, &[0.0; 6]);
    assert_eq!(q.scales, vec![fp8_scale(0.0, ScaleRule::PowerOfTwo); 2]);
    assert!(q.values.iter().all(|v| v.to_f32() == 0.0));
    assert_eq!(dequantize(&op, &q), vec![0.0; 6]);
}

#[test]
fn gemm_hand_checked_with_a_partial_k_block() {
    // K = 130: one full block and one of 2. A = 1, B = 2;
    // D = 0.5·1·(128·2) + 4·0.25·(2·2) = 128 + 4.
    let op = Fp8Gemm::new(1, 1, 130);
    let a = vec![E4M3::from_f32(1.0); 130];
    let b = vec![E4M3::from_f32(2.0); 130];
    let d = fp8_gemm(&op, &a, &[0.5, 4.0], &b, &[1.0, 0.25]);
    assert_eq!(d, vec![132.0]);
}

#[test]
fn gemm_picks_the_weight_scale_of_each_128_rows_of_b() {
    // N = 130: rows 0..128 of B use scale row 0, rows 128 and 129 scale row 1.
    let op = Fp8Gemm::new(1, 130, 16);
    let a = vec![E4M3::from_f32(1.0); 16];
    let b = vec![E4M3::from_f32(1.0); 130 * 16];
    let d = fp8_gemm(&op, &a, &[1.0], &b, &[2.0, 3.0]);
    assert!(d[..128].iter().all(|&x| x == 32.0));
    assert_eq!(&d[128..], &[48.0, 48.0]);
}

#[test]
fn matmul_nt_hand_checked() {
    // [[1, 2], [3, 4]] · [[5, 6], [7, 8]]ᵀ
    let d = matmul_nt(2, 2, 2, &[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]);
    assert_eq!(d, vec![17.0, 23.0, 39.0, 53.0]);
}

fn granularity() -> impl Strategy<Value = Fp8Granularity> {
    prop_oneof![
        Just(Fp8Granularity::PerToken1x128),
        Just(Fp8Granularity::Block128x128)
    ]
}

fn scale_rule() -> impl Strategy<Value = ScaleRule> {
    prop_oneof![Just(ScaleRule::Float), Just(ScaleRule::PowerOfTwo)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every group's scale is `fp8_scale` of its amax (a power of two under that rule), and
    /// every element dequantizes within E4M3's half-ULP bound (see [`quantization_bound`]).
    #[test]
    fn quantize_dequantize_error_within_half_ulp(
        rows in 1usize..=300,
        cols in 1usize..=300,
        granularity in granularity(),
        rule in scale_rule(),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let x = random_matrix(&mut rng, rows, cols);
        let op = quantizer(rows, cols, granularity, rule);
        let q = quantize(&op, &x);
        let (scale_rows, scale_cols) = op.scales_shape();
        prop_assert_eq!(q.values.len(), rows * cols);
        prop_assert_eq!(q.scales.len(), scale_rows * scale_cols);

        // Scales, from the amax of each group computed here.
        let mut amax = vec![0.0f32; scale_rows * scale_cols];
        for r in 0..rows {
            for c in 0..cols {
                let g = (r / op.group_rows()) * scale_cols + c / FP8_GROUP;
                amax[g] = amax[g].max(x[r * cols + c].abs());
            }
        }
        for (g, (&s, &a)) in q.scales.iter().zip(&amax).enumerate() {
            prop_assert_eq!(s, fp8_scale(a, rule), "scale {}", g);
            if rule == ScaleRule::PowerOfTwo {
                prop_assert_eq!(s.to_bits() & 0x007f_ffff, 0, "scale {} = {} is a power of two", g, s);
            }
        }

        let back = dequantize(&op, &q);
        for r in 0..rows {
            for c in 0..cols {
                let i = r * cols + c;
                let s = q.scales[(r / op.group_rows()) * scale_cols + c / FP8_GROUP];
                let err = (x[i] as f64 - back[i]).abs();
                let bound = quantization_bound(x[i], s, rule);
                prop_assert!(
                    err <= bound,
                    "x[{}][{}] = {:e}, scale {:e}: dequantized {:e}, error {:e} > bound {:e}",
                    r, c, x[i], s, back[i], err, bound
                );
            }
        }
    }

    /// The block-scaled GEMM equals the plain f64 product of the dequantized operands, to
    /// rounding: `|D - want| <= 1e-12 · Σ_k |A[m][k]|·|B[n][k]|` per element.
    #[test]
    fn gemm_equals_dequantize_then_matmul(
        m in 1usize..=20,
        n in 1usize..=300,
        k in 1usize..=300,
        rule_a in scale_rule(),
        rule_b in scale_rule(),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let qa = quantizer(m, k, Fp8Granularity::PerToken1x128, rule_a);
        let qb = quantizer(n, k, Fp8Granularity::Block128x128, rule_b);
        let a = quantize(&qa, &random_matrix(&mut rng, m, k));
        let b = quantize(&qb, &random_matrix(&mut rng, n, k));
        let d = fp8_gemm(&Fp8Gemm::new(m, n, k), &a.values, &a.scales, &b.values, &b.scales);

        let (a_deq, b_deq) = (dequantize(&qa, &a), dequantize(&qb, &b));
        let want = matmul_nt(m, n, k, &a_deq, &b_deq);
        let abs_a: Vec<f64> = a_deq.iter().map(|v| v.abs()).collect();
        let abs_b: Vec<f64> = b_deq.iter().map(|v| v.abs()).collect();
        let magnitude = matmul_nt(m, n, k, &abs_a, &abs_b);
        for i in 0..m * n {
            let tol = 1e-12 * magnitude[i];
            prop_assert!(
                (d[i] - want[i]).abs() <= tol,
                "D[{}][{}]: got {:e}, want {:e} (tolerance {:e})", i / n, i % n, d[i], want[i], tol
            );
        }
    }
}

// ---- grouped GEMM (mixture of experts) ----------------------------------------------------

use tessera_core::{Backend, GemmGrouping};
use tessera_reference::fp8::fp8_gemm_grouped;
use tessera_reference::CpuBackend;

/// Random E4M3 codes of moderate magnitude (no NaN) and scales near 2^-7.
fn grouped_inputs(rng: &mut Rng, op: &Fp8Gemm) -> (Vec<E4M3>, Vec<f32>, Vec<E4M3>, Vec<f32>) {
    let code = |rng: &mut Rng| E4M3::from_f32(rng.uniform_f32(-8.0, 8.0));
    let a = (0..op.a_len()).map(|_| code(rng)).collect();
    let b = (0..op.b_len()).map(|_| code(rng)).collect();
    let sa = (0..op.a_scales_len())
        .map(|_| rng.uniform_f32(0.005, 0.01))
        .collect();
    let sb = (0..op.b_scales_len())
        .map(|_| rng.uniform_f32(0.005, 0.01))
        .collect();
    (a, sa, b, sb)
}

/// The grouped GEMM computed independently: for each group, the plain GEMM of ALL rows of A
/// against that group's B, keeping the group's rows (rows no group computes stay NaN).
fn grouped_by_full_gemms(
    op: &Fp8Gemm,
    inputs: &(Vec<E4M3>, Vec<f32>, Vec<E4M3>, Vec<f32>),
    spans: &[(usize, usize)],
) -> Vec<f64> {
    let (a, sa, b, sb) = inputs;
    let rows = op.total_rows();
    let full = Fp8Gemm::new(rows, op.n, op.k);
    let (b_len, sb_len) = (op.n * op.k, op.n.div_ceil(128) * op.k.div_ceil(128));
    let mut want = vec![f64::NAN; op.d_len()];
    for (g, &(row0, count)) in spans.iter().enumerate() {
        let d = fp8_gemm(
            &full,
            a,
            sa,
            &b[g * b_len..(g + 1) * b_len],
            &sb[g * sb_len..(g + 1) * sb_len],
        );
        want[row0 * op.n..(row0 + count) * op.n]
            .copy_from_slice(&d[row0 * op.n..(row0 + count) * op.n]);
    }
    want
}

fn same_with_nans(got: &[f64], want: &[f64]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| (g.is_nan() && w.is_nan()) || (g - w).abs() <= 1e-12 * (1.0 + w.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Contiguous groups (padded to 128 rows, the last partial, some empty) equal one full
    /// GEMM per group restricted to the group's rows; the backend rounds them to bf16.
    #[test]
    fn contiguous_groups_equal_one_gemm_per_group(
        sizes in proptest::collection::vec(0usize..3, 1..4),
        tail in 0usize..100,
        n8 in 1usize..5,
        k16 in 1usize..12,
        seed in any::<u64>(),
    ) {
        let mut offsets = vec![0i32];
        for s in &sizes {
            offsets.push(offsets.last().unwrap() + (*s as i32) * 128);
        }
        *offsets.last_mut().unwrap() += tail as i32;
        let m = *offsets.last().unwrap() as usize;
        prop_assume!(m > 0);
        let groups = sizes.len();
        let op = Fp8Gemm::grouped(m, 8 * n8, 16 * k16, GemmGrouping::Contiguous { groups });
        let mut rng = Rng::new(seed);
        let inputs = grouped_inputs(&mut rng, &op);
        let spans: Vec<(usize, usize)> = (0..groups)
            .map(|g| (offsets[g] as usize, (offsets[g + 1] - offsets[g]) as usize))
            .collect();
        let (a, sa, b, sb) = &inputs;
        let got = fp8_gemm_grouped(&op, a, sa, b, sb, &offsets);
        prop_assert!(same_with_nans(&got, &grouped_by_full_gemms(&op, &inputs, &spans)));
        prop_assert!(got.iter().all(|x| x.is_finite()), "contiguous groups write every row");
        let via_backend = CpuBackend::new().fp8_gemm_grouped(&op, a, sa, b, sb, &offsets).unwrap();
        for (x, y) in via_backend.iter().zip(&got) {
            prop_assert_eq!(x.to_bits(), half::bf16::from_f64(*y).to_bits());
        }
    }

    /// Masked groups: only the first count rows of each group are computed (counts from 0 to
    /// m), the rest of D stays NaN.
    #[test]
    fn masked_groups_compute_only_their_counted_rows(
        counts in proptest::collection::vec(0usize..=40, 1..4),
        m in 1usize..41,
        n8 in 1usize..4,
        k16 in 1usize..10,
        seed in any::<u64>(),
    ) {
        let counts: Vec<i32> = counts.iter().map(|&c| c.min(m) as i32).collect();
        let groups = counts.len();
        let op = Fp8Gemm::grouped(m, 8 * n8, 16 * k16, GemmGrouping::Masked { groups });
        let mut rng = Rng::new(seed);
        let inputs = grouped_inputs(&mut rng, &op);
        let spans: Vec<(usize, usize)> = (0..groups).map(|g| (g * m, counts[g] as usize)).collect();
        let (a, sa, b, sb) = &inputs;
        let got = fp8_gemm_grouped(&op, a, sa, b, sb, &counts);
        prop_assert!(same_with_nans(&got, &grouped_by_full_gemms(&op, &inputs, &spans)));
        let computed: usize = counts.iter().map(|&c| c as usize).sum::<usize>() * op.n;
        prop_assert_eq!(got.iter().filter(|x| !x.is_nan()).count(), computed);
    }
}

#[test]
fn grouped_layouts_are_checked_with_the_argument_named() {
    let be = CpuBackend::new();
    let contiguous = Fp8Gemm::grouped(300, 8, 16, GemmGrouping::Contiguous { groups: 2 });
    let masked = Fp8Gemm::grouped(10, 8, 16, GemmGrouping::Masked { groups: 2 });
    let mut rng = Rng::new(7);
    for (op, bad, arg) in [
        (contiguous, vec![0, 128], "groups"),         // wrong length
        (contiguous, vec![1, 128, 300], "groups[0]"), // not from 0
        (contiguous, vec![0, 100, 300], "groups[1]"), // not a multiple of 128
        (contiguous, vec![0, 256, 299], "groups[2]"), // not ending at m
        (contiguous, vec![0, 256, 128], "groups[2]"), // decreasing
        (masked, vec![3, 11], "groups[1]"),           // more than m
        (masked, vec![-1, 2], "groups[0]"),           // negative
    ] {
        let (a, sa, b, sb) = grouped_inputs(&mut rng, &op);
        let e = be
            .fp8_gemm_grouped(&op, &a, &sa, &b, &sb, &bad)
            .unwrap_err();
        assert_eq!(e.argument(), Some(arg), "{op:?} {bad:?}: {e}");
    }
    // The plain entry point refuses a grouped op; the grouped one a plain op's missing layout.
    let (a, sa, b, sb) = grouped_inputs(&mut rng, &masked);
    let e = be.fp8_gemm(&masked, &a, &sa, &b, &sb).unwrap_err();
    assert_eq!(e.argument(), Some("grouping"));
    // Zero groups.
    let none = Fp8Gemm::grouped(10, 8, 16, GemmGrouping::Masked { groups: 0 });
    assert_eq!(none.validate().unwrap_err().argument(), Some("grouping"));
}
