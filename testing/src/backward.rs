//! What the attention backward's tests on every device backend share: the random mask with an
//! unattended key block, and the assertions on the three gradients.

use crate::check::{backward_tolerance, gradient_errors};
use crate::Rng;
use tessera_core::ops::attention::AttentionGradients;
use tessera_core::{BlockMask, DType, SparseAttention, Tensor};

/// A random mask over `tokens` with about `density` of the blocks on and the diagonal always on
/// (no empty row); with `unattended` and at least 3 blocks, key block 1 is off in every row
/// (row 1 attends block 0 instead), so that no query attends it.
pub fn random_mask(
    rng: &mut Rng,
    tokens: usize,
    block: usize,
    density: f64,
    unattended: bool,
) -> BlockMask {
    let nb = tokens.div_ceil(block);
    let mut bitmap: Vec<bool> = (0..nb * nb)
        .map(|i| i / nb == i % nb || rng.chance(density))
        .collect();
    if unattended && nb >= 3 {
        for r in 0..nb {
            bitmap[r * nb + 1] = false;
        }
        bitmap[nb] = true; // row 1 keeps block 0
    }
    BlockMask::from_dense_bitmap(tokens, block, &bitmap).expect("a valid random mask")
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_f32_vec().iter().map(|&x| x as f64).collect()
}

/// Asserts every gradient of `got` is finite and within [`backward_tolerance`] of `want` by
/// [`gradient_errors`] (each error over the largest of the three reference norms), printing
/// each error; `what` names the case in the messages.
pub fn assert_gradients_match(
    got: &AttentionGradients,
    want: &AttentionGradients,
    dtype: DType,
    what: &str,
) {
    let tol = backward_tolerance(dtype);
    let (g, w) = (
        [f64s(&got.dq), f64s(&got.dk), f64s(&got.dv)],
        [f64s(&want.dq), f64s(&want.dk), f64s(&want.dv)],
    );
    let errors = gradient_errors([&g[0], &g[1], &g[2]], [&w[0], &w[1], &w[2]]);
    for (i, name) in ["dq", "dk", "dv"].into_iter().enumerate() {
        assert_eq!(g[i].len(), w[i].len(), "{what}: {name} length");
        let bad = g[i].iter().position(|x| !x.is_finite());
        assert!(
            bad.is_none(),
            "{what}: {name}[{}] is not finite",
            bad.unwrap_or(0)
        );
        let rel = errors[i];
        println!("{what}: {name} L2 error / largest gradient norm {rel:.2e}");
        assert!(
            rel <= tol,
            "{what}: {name} L2 error {rel} > {tol} (of the largest gradient norm)"
        );
    }
}

/// Asserts dk = dv = 0 for every key of block 1 of `block` tokens (attended by no query row in
/// a [`random_mask`] made with `unattended`), for the `[batch, tokens, heads, head_dim]`
/// gradients of `op`.
pub fn assert_unattended_block_zero(
    op: &SparseAttention,
    got: &AttentionGradients,
    block: usize,
    what: &str,
) {
    let row = op.heads * op.head_dim;
    let (dk, dv) = (got.dk.to_f32_vec(), got.dv.to_f32_vec());
    for t in block..(2 * block).min(op.tokens) {
        for b in 0..op.batch {
            let at = (b * op.tokens + t) * row;
            for g in [&dk, &dv] {
                assert!(
                    g[at..at + row].iter().all(|&e| e == 0.0),
                    "{what}: key {t} of an unattended block has a nonzero gradient"
                );
            }
        }
    }
}
