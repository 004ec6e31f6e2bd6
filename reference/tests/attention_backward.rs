//! Tests of the reference attention backward: block-sparse against dense with the token-level
//! mask, against finite differences of the forward, empty mask rows, partial last blocks, and
//! the CPU backend's argument checks.

mod common;

use common::{assert_close, max_abs, Rng};
use proptest::prelude::*;
use tessera_core::{Backend, BlockMask, DType, SparseAttention, Tensor, TensorRef};
use tessera_reference::attention::{
    block_sparse_attention, block_sparse_attention_backward, dense_attention,
    dense_attention_backward, AttentionBackwardResult, AttentionShape, BackwardInputs,
};
use tessera_reference::CpuBackend;

fn square(batch: usize, tokens: usize, heads: usize, head_dim: usize) -> AttentionShape {
    AttentionShape {
        batch,
        q_tokens: tokens,
        kv_tokens: tokens,
        heads,
        head_dim,
    }
}

/// A random block mask over `tokens` with about `density` of the blocks on and at least one
/// block in every row.
fn random_block_mask(rng: &mut Rng, tokens: usize, block_size: usize, density: f64) -> BlockMask {
    let nb = tokens.div_ceil(block_size);
    let mut bitmap: Vec<bool> = (0..nb * nb).map(|_| rng.chance(density)).collect();
    for r in 0..nb {
        if !bitmap[r * nb..(r + 1) * nb].contains(&true) {
            bitmap[r * nb + rng.below(nb)] = true;
        }
    }
    BlockMask::from_dense_bitmap(tokens, block_size, &bitmap).unwrap()
}

/// Random q, k, v and an output gradient for a square shape.
struct Problem {
    shape: AttentionShape,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    d_o: Vec<f64>,
}

impl Problem {
    fn random(rng: &mut Rng, shape: AttentionShape) -> Self {
        Self {
            shape,
            q: rng.symmetric_vec(shape.q_len()),
            k: rng.symmetric_vec(shape.kv_len()),
            v: rng.symmetric_vec(shape.kv_len()),
            d_o: rng.symmetric_vec(shape.q_len()),
        }
    }

    /// The loss `Σ d_o ∘ o` of the sparse forward at (q, k, v): its gradients are what the
    /// backward computes for this `d_o`.
    fn loss(&self, q: &[f64], k: &[f64], v: &[f64], scale: f64, mask: &BlockMask) -> f64 {
        let r = block_sparse_attention(self.shape, q, k, v, scale, mask);
        r.o.iter().zip(&self.d_o).map(|(o, g)| o * g).sum()
    }

    fn sparse_backward(&self, scale: f64, mask: &BlockMask) -> AttentionBackwardResult {
        let f = block_sparse_attention(self.shape, &self.q, &self.k, &self.v, scale, mask);
        block_sparse_attention_backward(self.shape, self.inputs(&f.o, &f.lse), scale, mask)
    }

    fn inputs<'a>(&'a self, o: &'a [f64], lse: &'a [f64]) -> BackwardInputs<'a> {
        BackwardInputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            o,
            lse,
            d_o: &self.d_o,
        }
    }

    /// Central differences of [`Problem::loss`] with respect to every element of q, k and v.
    fn finite_differences(&self, scale: f64, mask: &BlockMask) -> AttentionBackwardResult {
        let h = 1e-5;
        let grad = |which: usize| -> Vec<f64> {
            let base = [&self.q, &self.k, &self.v][which];
            (0..base.len())
                .map(|i| {
                    let mut args = [self.q.clone(), self.k.clone(), self.v.clone()];
                    args[which][i] = base[i] + h;
                    let up = self.loss(&args[0], &args[1], &args[2], scale, mask);
                    args[which][i] = base[i] - h;
                    let down = self.loss(&args[0], &args[1], &args[2], scale, mask);
                    (up - down) / (2.0 * h)
                })
                .collect()
        };
        AttentionBackwardResult {
            dq: grad(0),
            dk: grad(1),
            dv: grad(2),
        }
    }
}

/// Asserts every gradient element within `rel` times the largest magnitude of all three wanted
/// gradients: one scale for dq, dk and dv, since the error of a central difference follows the
/// loss's size, not that of the smallest gradient (with two tokens dq can be 1e-5 while dv is
/// O(1)).
fn assert_same_gradients(got: &AttentionBackwardResult, want: &AttentionBackwardResult, rel: f64) {
    let scale = max_abs(&want.dq)
        .max(max_abs(&want.dk))
        .max(max_abs(&want.dv))
        .max(f64::MIN_POSITIVE);
    let tol = rel * scale;
    for (what, g, w) in [
        ("dq", &got.dq, &want.dq),
        ("dk", &got.dk, &want.dk),
        ("dv", &got.dv, &want.dv),
    ] {
        assert_eq!(g.len(), w.len(), "{what}: lengths differ");
        for (i, (g, w)) in g.iter().zip(w.iter()).enumerate() {
            let err = (g - w).abs();
            assert!(
                err <= tol,
                "{what}[{i}]: got {g}, want {w} (error {err:e} > tolerance {tol:e})"
            );
        }
    }
}

#[test]
fn finite_differences_agree_on_a_partial_last_block() {
    // 7 tokens in blocks of 3: block 2 holds only token 6. Block row 2 attends blocks 0 and 2,
    // block row 0 attends block 2 only, block row 1 attends blocks 1 and 2: token 6 is a query
    // and a key of the partial block.
    let bitmap = [false, false, true, false, true, true, true, false, true];
    let mask = BlockMask::from_dense_bitmap(7, 3, &bitmap).unwrap();
    let mut rng = Rng::new(11);
    let p = Problem::random(&mut rng, square(2, 7, 2, 3));
    let scale = 0.8;
    let got = p.sparse_backward(scale, &mask);
    let want = p.finite_differences(scale, &mask);
    assert_same_gradients(&got, &want, 1e-7);
    // The partial block's token has non-zero gradients as a query and as a key.
    let s = p.shape;
    for b in 0..s.batch {
        for h in 0..s.heads {
            let at = s.q_offset(b, 6, h);
            for (name, g) in [("dq", &got.dq), ("dk", &got.dk), ("dv", &got.dv)] {
                assert!(
                    max_abs(&g[at..at + s.head_dim]) > 1e-6,
                    "{name} of token 6 (batch {b}, head {h}) vanished"
                );
            }
        }
    }
}

#[test]
fn an_empty_block_row_gives_zero_gradients_and_an_unattended_key_block_too() {
    // 6 tokens in blocks of 2. Block row 1 attends nothing: the forward gives its queries o = 0
    // and lse = -inf, and the backward gives them dq = 0 and takes nothing from them. Key block
    // 2 is attended by no row: dk = dv = 0 there.
    let bitmap = [true, true, false, false, false, false, true, true, false];
    let mask = BlockMask::from_dense_bitmap(6, 2, &bitmap).unwrap();
    let mut rng = Rng::new(12);
    let p = Problem::random(&mut rng, square(1, 6, 2, 4));
    let scale = 0.6;
    let f = block_sparse_attention(p.shape, &p.q, &p.k, &p.v, scale, &mask);
    let s = p.shape;
    for h in 0..s.heads {
        for t in [2, 3] {
            assert_eq!(f.lse[s.lse_index(0, h, t)], f64::NEG_INFINITY);
            let at = s.q_offset(0, t, h);
            assert_eq!(&f.o[at..at + 4], &[0.0; 4]);
        }
    }
    let g = p.sparse_backward(scale, &mask);
    for h in 0..s.heads {
        for t in [2, 3] {
            let at = s.q_offset(0, t, h);
            assert_eq!(&g.dq[at..at + 4], &[0.0; 4], "dq of query {t}");
        }
        for t in [4, 5] {
            let at = s.kv_offset(0, t, h);
            assert_eq!(&g.dk[at..at + 4], &[0.0; 4], "dk of key {t}");
            assert_eq!(&g.dv[at..at + 4], &[0.0; 4], "dv of key {t}");
        }
    }
    // The rest agrees with finite differences (the empty row's loss term is constant).
    assert_same_gradients(&g, &p.finite_differences(scale, &mask), 1e-7);
}

#[test]
fn cpu_backend_rounds_the_reference_and_checks_its_arguments() {
    let mut rng = Rng::new(13);
    let (batch, tokens, heads, head_dim) = (1, 70, 2, 64);
    let mask = random_block_mask(&mut rng, tokens, 64, 0.7);
    let op = SparseAttention::new(batch, tokens, heads, head_dim, DType::BF16);
    let x: Vec<Tensor> = (0..4)
        .map(|_| Tensor::from_f64(DType::BF16, &rng.symmetric_vec(op.qkv_len())))
        .collect();
    let cpu = CpuBackend::new();
    let f = cpu
        .sparse_attention(&op, &mask, x[0].as_ref(), x[1].as_ref(), x[2].as_ref())
        .unwrap();
    let g = cpu
        .sparse_attention_backward(
            &op,
            &mask,
            x[0].as_ref(),
            x[1].as_ref(),
            x[2].as_ref(),
            f.o.as_ref(),
            &f.lse,
            x[3].as_ref(),
        )
        .unwrap();
    let to64 = |t: &Tensor| -> Vec<f64> { t.to_f32_vec().iter().map(|&v| v as f64).collect() };
    let (q, k, v, d_o, o) = (
        to64(&x[0]),
        to64(&x[1]),
        to64(&x[2]),
        to64(&x[3]),
        to64(&f.o),
    );
    let lse: Vec<f64> = f.lse.iter().map(|&v| v as f64).collect();
    let want = block_sparse_attention_backward(
        square(batch, tokens, heads, head_dim),
        BackwardInputs {
            q: &q,
            k: &k,
            v: &v,
            o: &o,
            lse: &lse,
            d_o: &d_o,
        },
        op.softmax_scale as f64,
        &mask,
    );
    // Rounding to bf16 once: within 2^-8 of each value.
    for (got, want, name) in [
        (&g.dq, &want.dq, "dq"),
        (&g.dk, &want.dk, "dk"),
        (&g.dv, &want.dv, "dv"),
    ] {
        assert_eq!(got.dtype(), DType::BF16, "{name}");
        for (i, (a, b)) in got.to_f32_vec().iter().zip(want).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= b.abs() / 256.0 + 1e-30,
                "{name}[{i}]"
            );
        }
    }

    // Arguments: each wrong one is named.
    let t = x[0].as_ref();
    let call = |o: TensorRef<'_>, lse: &[f32], d_o: TensorRef<'_>| {
        cpu.sparse_attention_backward(&op, &mask, t, t, t, o, lse, d_o)
            .unwrap_err()
            .argument()
            .map(str::to_string)
    };
    let short = Tensor::from_f64(DType::BF16, &vec![0.0; op.qkv_len() - 1]);
    let f16 = Tensor::from_f64(DType::F16, &vec![0.0; op.qkv_len()]);
    assert_eq!(call(short.as_ref(), &f.lse, t).as_deref(), Some("o"));
    assert_eq!(call(t, &f.lse, f16.as_ref()).as_deref(), Some("d_o"));
    assert_eq!(call(t, &f.lse[1..], t).as_deref(), Some("lse"));
    let e = cpu
        .sparse_attention_backward(&op, &mask, short.as_ref(), t, t, t, &f.lse, t)
        .unwrap_err();
    assert_eq!(e.argument(), Some("q"));
    let other = random_block_mask(&mut rng, tokens + 1, 64, 1.0);
    let e = cpu
        .sparse_attention_backward(&op, &other, t, t, t, t, &f.lse, t)
        .unwrap_err();
    assert_eq!(e.argument(), Some("mask"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Walking the BSR blocks (and, for keys, the query rows that attend them) gives the same
    /// gradients as the dense backward under the expanded token mask, for any token count.
    #[test]
    fn block_sparse_backward_equals_dense_with_token_mask(
        batch in 1usize..=2,
        heads in 1usize..=3,
        head_dim in 1usize..=12,
        tokens in 1usize..=50,
        block_size in 1usize..=16,
        density in 0.0f64..=1.0,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let mask = random_block_mask(&mut rng, tokens, block_size, density);
        let p = Problem::random(&mut rng, square(batch, tokens, heads, head_dim));
        let scale = (head_dim as f64).powf(-0.5) * 2.0;
        let f = block_sparse_attention(p.shape, &p.q, &p.k, &p.v, scale, &mask);
        let sparse = block_sparse_attention_backward(p.shape, p.inputs(&f.o, &f.lse), scale, &mask);
        let token_mask = mask.to_token_mask();
        let d = dense_attention(p.shape, &p.q, &p.k, &p.v, scale, Some(&token_mask));
        let dense = dense_attention_backward(p.shape, p.inputs(&d.o, &d.lse), scale, Some(&token_mask));
        assert_same_gradients(&sparse, &dense, 1e-12);
    }

    /// The gradients are the derivatives of `Σ d_o ∘ o`: central differences of the forward
    /// in f64 agree, on small shapes with partial last blocks.
    #[test]
    fn gradients_equal_finite_differences(
        heads in 1usize..=2,
        head_dim in 1usize..=4,
        tokens in 1usize..=9,
        block_size in 1usize..=4,
        density in 0.0f64..=1.0,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let mask = random_block_mask(&mut rng, tokens, block_size, density);
        let p = Problem::random(&mut rng, square(1, tokens, heads, head_dim));
        let scale = 0.9;
        let got = p.sparse_backward(scale, &mask);
        let want = p.finite_differences(scale, &mask);
        assert_same_gradients(&got, &want, 1e-7);
    }

    /// Tokens of a partial last block: their gradients, as queries and as keys, equal those of
    /// the same problem padded to whole blocks with keys that no query may attend and queries
    /// whose gradients are discarded (what a kernel with padded tiles computes).
    #[test]
    fn partial_last_block_matches_the_padded_problem(
        head_dim in 1usize..=6,
        whole_blocks in 0usize..=3,
        block_size in 2usize..=8,
        tail_cut in 1usize..=7,
        density in 0.0f64..=1.0,
        seed in any::<u64>(),
    ) {
        let tail_cut = tail_cut.min(block_size - 1);
        let padded = (whole_blocks + 1) * block_size;
        let tokens = padded - tail_cut;
        let mut rng = Rng::new(seed);
        let mask = random_block_mask(&mut rng, tokens, block_size, density);
        let p = Problem::random(&mut rng, square(1, tokens, 1, head_dim));
        let scale = 1.1;
        let got = p.sparse_backward(scale, &mask);

        // The padded problem: zero-padded q, k, v, d_o; a token mask that never lets a query
        // attend a padded key, and gives padded queries the keys of their block row.
        let pad = |x: &[f64]| {
            let mut y = x.to_vec();
            y.resize(padded * head_dim, 0.0);
            y
        };
        let padded_mask = BlockMask::from_bsr(padded, block_size, mask.indptr().to_vec(), mask.indices().to_vec()).unwrap();
        let mut token_mask = padded_mask.to_token_mask();
        for i in 0..padded {
            for j in tokens..padded {
                token_mask[i * padded + j] = false;
            }
        }
        let s = square(1, padded, 1, head_dim);
        let (q, k, v, d_o) = (pad(&p.q), pad(&p.k), pad(&p.v), pad(&p.d_o));
        let f = dense_attention(s, &q, &k, &v, scale, Some(&token_mask));
        let want = dense_attention_backward(
            s,
            BackwardInputs { q: &q, k: &k, v: &v, o: &f.o, lse: &f.lse, d_o: &d_o },
            scale,
            Some(&token_mask),
        );
        let n = tokens * head_dim;
        assert_close(&got.dq, &want.dq[..n], 1e-12, "dq");
        assert_close(&got.dk, &want.dk[..n], 1e-12, "dk");
        assert_close(&got.dv, &want.dv[..n], 1e-12, "dv");
        // Padded keys get nothing.
        prop_assert!(want.dk[n..].iter().chain(&want.dv[n..]).all(|&x| x == 0.0));
    }
}
