//! What the attention backward's tests on every device backend share: the random mask with an
//! unattended key block, the inputs (with the backend's own forward outputs), and the assertions
//! on the three gradients.

use crate::check::{backward_tolerance, gradient_errors};
use crate::Rng;
use tessera_core::ops::attention::AttentionGradients;
use tessera_core::{Backend, BlockMask, DType, SparseAttention, Tensor};

/// The backward's inputs: q, k, v, dO of random values in [-2, 2) (`[batch, tokens, heads,
/// head_dim]` of `op.dtype`) and the o and lse of one forward on the backend under test, so that
/// every backend's backward (the reference's included) runs from the same o and lse and only the
/// backward is compared.
pub struct BackwardInputs {
    /// The attention op.
    pub op: SparseAttention,
    /// Its block mask.
    pub mask: BlockMask,
    /// Queries.
    pub q: Tensor,
    /// Keys.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
    /// The forward's output on the backend under test.
    pub o: Tensor,
    /// The forward's lse, f32 `[batch, heads, tokens]`.
    pub lse: Vec<f32>,
    /// The gradient of the loss with respect to o.
    pub d_o: Tensor,
}

impl BackwardInputs {
    /// Random q, k, v and dO from `rng`, then o and lse from `forward`'s forward (panics if it
    /// fails: a test helper).
    pub fn new(forward: &dyn Backend, op: SparseAttention, mask: BlockMask, rng: &mut Rng) -> Self {
        let mut input = || {
            let x: Vec<f32> = (0..op.qkv_len())
                .map(|_| rng.uniform_f32(-2.0, 2.0))
                .collect();
            Tensor::from_f32(op.dtype, &x)
        };
        let (q, k, v, d_o) = (input(), input(), input(), input());
        let f = forward
            .sparse_attention(&op, &mask, q.as_ref(), k.as_ref(), v.as_ref())
            .unwrap();
        Self {
            op,
            mask,
            q,
            k,
            v,
            o: f.o,
            lse: f.lse,
            d_o,
        }
    }

    /// The gradients from `be`'s backward through the [`Backend`] trait (panics if it fails).
    pub fn backward(&self, be: &dyn Backend) -> AttentionGradients {
        be.sparse_attention_backward(
            &self.op,
            &self.mask,
            self.q.as_ref(),
            self.k.as_ref(),
            self.v.as_ref(),
            self.o.as_ref(),
            &self.lse,
            self.d_o.as_ref(),
        )
        .unwrap()
    }
}

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
