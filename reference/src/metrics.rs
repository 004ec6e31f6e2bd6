//! Error metrics used to compare a backend's output with the reference.

/// Largest absolute difference (NaN anywhere gives NaN, so that it fails every tolerance).
pub fn max_abs_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "max_abs_error: lengths differ");
    let mut m = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        let d = (g - w).abs();
        if d.is_nan() {
            return f64::NAN;
        }
        m = m.max(d);
    }
    m
}

/// Relative L2 error `‖got - want‖ / max(‖want‖, tiny)` (NaN anywhere gives NaN).
pub fn relative_l2_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "relative_l2_error: lengths differ");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += (g - w) * (g - w);
        den += w * w;
    }
    num.sqrt() / den.sqrt().max(1e-300)
}

/// The GEMM agreement metric of the public FP8 anchor: `1 - 2·Σxy / Σ(x² + y²)`, in f64.
/// 0 for identical inputs; the anchor requires < 1e-3. Two all-zero inputs give 0.
pub fn gemm_difference(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "gemm_difference: lengths differ");
    let (mut xy, mut sq) = (0.0f64, 0.0f64);
    for (a, b) in x.iter().zip(y) {
        xy += a * b;
        sq += a * a + b * b;
    }
    if sq == 0.0 {
        return if xy.is_nan() { f64::NAN } else { 0.0 };
    }
    1.0 - 2.0 * xy / sq
}

/// Compares lse values: -inf must match -inf exactly; finite values by absolute difference.
/// Returns the largest difference (infinite if one side is -inf and the other is not).
pub fn lse_max_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lse_max_error: lengths differ");
    let mut m = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        let d = if *g == f64::NEG_INFINITY && *w == f64::NEG_INFINITY {
            0.0
        } else {
            (g - w).abs()
        };
        if d.is_nan() {
            return f64::NAN;
        }
        m = m.max(d);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_detect_differences() {
        assert_eq!(max_abs_error(&[1.0, 2.0], &[1.0, 2.5]), 0.5);
        assert!(max_abs_error(&[f64::NAN], &[0.0]).is_nan());
        assert_eq!(relative_l2_error(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((relative_l2_error(&[0.0, 0.0], &[3.0, 4.0]) - 1.0).abs() < 1e-15);
        assert_eq!(gemm_difference(&[1.0, -2.0], &[1.0, -2.0]), 0.0);
        assert!((gemm_difference(&[1.0], &[-1.0]) - 2.0).abs() < 1e-15);
        assert_eq!(
            lse_max_error(&[f64::NEG_INFINITY], &[f64::NEG_INFINITY]),
            0.0
        );
        assert!(lse_max_error(&[0.0], &[f64::NEG_INFINITY]).is_infinite());
    }
}
