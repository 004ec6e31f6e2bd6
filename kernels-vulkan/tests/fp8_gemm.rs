//! The FP8 GEMM through the host API on whichever path the device takes (cooperative matrix with
//! both tilings where offered, else portable), against the f64 reference: partial tiles in M
//! and N, K not a multiple of 128, N across 128-column scale blocks, every E4M3 code (subnormals
//! and ±448 included) and NaN inputs, which must reach exactly their row or column of D; then
//! every shader the device offers, each as the shapes' stored plan.

use half::bf16;
use tessera_core::{Backend, Fp8Gemm, E4M3};
use tessera_reference::{fp8 as ref_fp8, metrics};
use tessera_vulkan::plan::Fp8GemmClass;
use tessera_vulkan::{Fp8GemmKernel, VulkanBackend};

mod common;
use common::backend;

/// A hash-based stream of E4M3 codes covering all finite values (NaN codes mapped to ±448).
fn codes(n: usize, seed: u32) -> Vec<E4M3> {
    (0..n)
        .map(|i| {
            let h = (i as u32)
                .wrapping_add(seed.wrapping_mul(0x9e37_79b9))
                .wrapping_mul(2_654_435_761);
            let c = (h >> 24) as u8;
            E4M3::from_bits(if c & 0x7f == 0x7f { c - 1 } else { c })
        })
        .collect()
}

/// Positive scales of varied (not only power-of-two) values.
fn scales(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ seed).wrapping_mul(2_246_822_519).rotate_left(7);
            2f32.powi((h % 9) as i32 - 8) * (1.0 + (h >> 16) as f32 / 65536.0)
        })
        .collect()
}

/// The shapes: (m, n, k): one element; small tiles with partial edges; the large tiling (m >=
/// 512) with partial tiles, K = 400 (a partial last 128-block), N crossing scale blocks.
const SHAPES: [(usize, usize, usize); 4] =
    [(1, 8, 16), (63, 136, 144), (600, 264, 400), (512, 128, 128)];

/// Runs the GEMM of `(m, n, k)` (inputs from `case`) through the host API and compares it with
/// the reference, NaN in one row of A and one column of B included.
fn check(backend: &VulkanBackend, case: usize, (m, n, k): (usize, usize, usize)) {
    let op = Fp8Gemm::new(m, n, k);
    let kb = k.div_ceil(128);
    let mut a = codes(m * k, 2 * case as u32);
    let a_scales = scales(m * kb, 3 + case as u32);
    let mut b = codes(n * k, 5 * case as u32 + 1);
    let b_scales = scales(n.div_ceil(128) * kb, 7 + case as u32);
    // NaN in one element of A (row m - 1) and of B (column 0), when there is room.
    let nan_row = m - 1;
    if m > 1 {
        a[nan_row * k + k / 2] = E4M3::NAN;
        b[k - 1] = E4M3::NAN;
    }
    let got: Vec<f64> = backend
        .fp8_gemm(&op, &a, &a_scales, &b, &b_scales)
        .unwrap()
        .iter()
        .map(|x: &bf16| x.to_f64())
        .collect();
    let want = ref_fp8::fp8_gemm(&op, &a, &a_scales, &b, &b_scales);
    let mut finite_got = Vec::new();
    let mut finite_want = Vec::new();
    for r in 0..m {
        for c in 0..n {
            let (g, w) = (got[r * n + c], want[r * n + c]);
            let nan_expected = m > 1 && (r == nan_row || c == 0);
            assert_eq!(
                g.is_nan(),
                nan_expected,
                "m{m} n{n} k{k}: D[{r}][{c}] = {g}, want {w}"
            );
            assert_eq!(w.is_nan(), nan_expected);
            if !nan_expected {
                finite_got.push(g);
                finite_want.push(w);
            }
        }
    }
    let diff = metrics::gemm_difference(&finite_got, &finite_want);
    let rel = metrics::relative_l2_error(&finite_got, &finite_want);
    println!("m{m} n{n} k{k}: 1-2Σxy/Σ(x²+y²) {diff:.2e}, rel_l2 {rel:.2e}");
    assert!(diff <= 1e-5, "m{m} n{n} k{k}: gemm difference {diff:e}");
    assert!(rel <= 8e-3, "m{m} n{n} k{k}: rel_l2 {rel:e}");
}

#[test]
fn gemm_matches_the_reference_on_both_tilings_and_propagates_nan() {
    let Some(backend) = backend() else { return };
    let path = if backend.fp8_gemm_uses_cooperative_matrix() {
        "cooperative matrix"
    } else {
        "portable"
    };
    println!("{}: fp8_gemm on the {path} path", backend.features().name);
    for (case, &shape) in SHAPES.iter().enumerate() {
        check(&backend, case, shape);
    }
}

/// Every shader the device runs each shape with, each made the shape's stored plan (so the host
/// API takes it), against the reference; the plan takes a stored shader only where it runs.
#[test]
fn every_gemm_candidate_matches_the_reference_as_the_stored_plan() {
    let Some(b) = common::backend() else {
        return;
    };
    for (case, &(m, n, k)) in SHAPES.iter().enumerate() {
        let op = Fp8Gemm::new(m, n, k);
        let candidates = b.fp8_gemm_candidates(&op).unwrap();
        assert_eq!(
            candidates[0],
            b.fp8_gemm_plan(&op).unwrap(),
            "the heuristic's first"
        );
        assert_eq!(
            candidates.len(),
            if b.fp8_gemm_uses_cooperative_matrix() {
                3
            } else {
                1
            }
        );
        for &kernel in &candidates {
            b.plans().set_fp8_gemm(Fp8GemmClass::of(&op), kernel);
            assert_eq!(b.fp8_gemm_plan(&op).unwrap(), kernel);
            println!("{}:", kernel.name());
            check(&b, case, (m, n, k));
        }
        // A stored shader the device cannot run: the heuristic's instead.
        for kernel in Fp8GemmKernel::ALL {
            if let Some(why) = b.fp8_gemm_kernel_unsupported(kernel) {
                b.plans().set_fp8_gemm(Fp8GemmClass::of(&op), kernel);
                assert_eq!(b.fp8_gemm_plan(&op).unwrap(), candidates[0], "{why}");
            }
        }
    }
}
