//! Helpers shared by the reference's integration tests: the workspace's seeded generator (so
//! that proptest only has to draw shapes and a seed) and tolerance checks.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

/// The seeded generator shared by every test of the workspace.
pub use tessera_testing::Rng;

/// Largest |x| (0 for an empty slice).
pub fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Asserts `|got - want| <= rel * max|want|` for every element (NaN fails), where the scale is
/// the largest magnitude of `want` (at least `f64::MIN_POSITIVE`), i.e. a relative error
/// against the size of the tensor.
pub fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let tol = rel * max_abs(want).max(f64::MIN_POSITIVE);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (error {err:e} > tolerance {tol:e})"
        );
    }
}

/// Asserts log-sum-exp values agree: -inf exactly where `want` is -inf, elsewhere
/// `|got - want| <= rel * max(1, |want|)`.
pub fn assert_lse_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if *w == f64::NEG_INFINITY {
            assert_eq!(*g, f64::NEG_INFINITY, "{what}[{i}]: want -inf");
            continue;
        }
        let tol = rel * w.abs().max(1.0);
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tolerance {tol:e})"
        );
    }
}
