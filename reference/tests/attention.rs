//! Tests of the reference attention: hand-checked cases, block-sparse against dense with the
//! token-level mask, and log-sum-exp merging of split keys.

mod common;

use common::{assert_close, assert_lse_close, Rng};
use proptest::prelude::*;
use tessera_core::BlockMask;
use tessera_reference::attention::{
    attend, block_sparse_attention, dense_attention, merge_attention, AttentionResult,
    AttentionShape,
};

fn shape(
    batch: usize,
    q_tokens: usize,
    kv_tokens: usize,
    heads: usize,
    head_dim: usize,
) -> AttentionShape {
    AttentionShape {
        batch,
        q_tokens,
        kv_tokens,
        heads,
        head_dim,
    }
}

#[test]
fn one_key_returns_its_value_exactly() {
    let mut rng = Rng::new(1);
    let s = shape(2, 3, 1, 2, 5);
    let (q, k, v) = (
        rng.symmetric_vec(s.q_len()),
        rng.symmetric_vec(s.kv_len()),
        rng.symmetric_vec(s.kv_len()),
    );
    let scale = 0.7;
    let r = dense_attention(s, &q, &k, &v, scale, None);
    for b in 0..s.batch {
        for h in 0..s.heads {
            let kv = &k[s.kv_offset(b, 0, h)..][..s.head_dim];
            let value = &v[s.kv_offset(b, 0, h)..][..s.head_dim];
            for i in 0..s.q_tokens {
                let qo = s.q_offset(b, i, h);
                assert_eq!(
                    &r.o[qo..qo + s.head_dim],
                    value,
                    "softmax over one key is 1"
                );
                let score: f64 = scale
                    * q[qo..qo + s.head_dim]
                        .iter()
                        .zip(kv)
                        .map(|(a, b)| a * b)
                        .sum::<f64>();
                assert_eq!(
                    r.lse[s.lse_index(b, h, i)],
                    score,
                    "lse over one key is its score"
                );
            }
        }
    }
}

#[test]
fn uniform_scores_give_the_mean_value_and_ln_n_plus_score() {
    // Every key is the same vector, so every score is the same: p = 1/n, lse = ln(n) + score.
    let n = 7;
    let q = [0.5, -1.0, 2.0];
    let key = [1.0, 0.25, 0.75];
    let k: Vec<f64> = (0..n).flat_map(|_| key).collect();
    let v: Vec<f64> = (0..n * 3).map(|i| i as f64).collect();
    let scale = 0.5;
    let r = dense_attention(shape(1, 1, n, 1, 3), &q, &k, &v, scale, None);
    let score = scale * (0.5 * 1.0 - 0.25 + 2.0 * 0.75);
    assert!(
        (r.lse[0] - ((n as f64).ln() + score)).abs() < 1e-14,
        "lse {}",
        r.lse[0]
    );
    // Mean of v[j][c] = 3j + c over j in 0..7 is 9 + c.
    assert_close(&r.o, &[9.0, 10.0, 11.0], 1e-15, "o");
}

#[test]
fn two_keys_hand_checked() {
    // Scores 0 and ln 3: probabilities 1/4 and 3/4.
    let r = dense_attention(
        shape(1, 1, 2, 1, 1),
        &[1.0],
        &[0.0, 3f64.ln()],
        &[4.0, 8.0],
        1.0,
        None,
    );
    assert!((r.o[0] - 7.0).abs() < 1e-14, "o {}", r.o[0]);
    assert!((r.lse[0] - 4f64.ln()).abs() < 1e-15, "lse {}", r.lse[0]);
}

#[test]
fn huge_scores_do_not_overflow() {
    // exp(1000) overflows f64; the max-subtracted softmax does not.
    let r = dense_attention(
        shape(1, 1, 2, 1, 1),
        &[1.0],
        &[1000.0, 999.0],
        &[1.0, -1.0],
        1.0,
        None,
    );
    let e = (-1.0f64).exp();
    assert!((r.o[0] - (1.0 - e) / (1.0 + e)).abs() < 1e-15);
    assert!((r.lse[0] - (1000.0 + (1.0 + e).ln())).abs() < 1e-12);
}

#[test]
fn a_query_with_no_allowed_key_gets_zero_and_neg_inf() {
    let s = shape(1, 2, 3, 1, 2);
    let mut rng = Rng::new(2);
    let (q, k, v) = (
        rng.symmetric_vec(s.q_len()),
        rng.symmetric_vec(s.kv_len()),
        rng.symmetric_vec(s.kv_len()),
    );
    let mask = [false, false, false, true, false, true];
    let r = dense_attention(s, &q, &k, &v, 1.0, Some(&mask));
    assert_eq!(&r.o[..2], &[0.0, 0.0]);
    assert_eq!(r.lse[0], f64::NEG_INFINITY);
    assert!(r.lse[1].is_finite());
    // No keys at all behaves the same.
    let empty = dense_attention(shape(1, 2, 0, 1, 2), &q, &[], &[], 1.0, None);
    assert_eq!(empty.o, vec![0.0; 4]);
    assert_eq!(empty.lse, vec![f64::NEG_INFINITY; 2]);
    assert_eq!(attend(&[1.0], &[], 3, 1.0).o, vec![0.0; 3]);
}

#[test]
fn partial_last_block_attends_only_its_real_keys() {
    // 5 tokens in blocks of 2: block 2 holds only token 4. Block row 2 attends only block 2, so
    // query 4 sees exactly key 4; block row 0 attends blocks 0 and 2: keys {0, 1, 4}.
    let bitmap = [true, false, true, false, true, false, false, false, true];
    let mask = BlockMask::from_dense_bitmap(5, 2, &bitmap).unwrap();
    let s = shape(1, 5, 5, 1, 3);
    let mut rng = Rng::new(3);
    let (q, k, v) = (
        rng.symmetric_vec(s.q_len()),
        rng.symmetric_vec(s.kv_len()),
        rng.symmetric_vec(s.kv_len()),
    );
    let r = block_sparse_attention(s, &q, &k, &v, 0.5, &mask);
    assert_eq!(&r.o[12..15], &v[12..15], "query 4 sees only key 4");
    let explicit = {
        let keys: Vec<(&[f64], &[f64])> = [0, 1, 4]
            .iter()
            .map(|&j| (&k[3 * j..3 * j + 3], &v[3 * j..3 * j + 3]))
            .collect();
        attend(&q[0..3], &keys, 3, 0.5)
    };
    assert_close(&r.o[0..3], &explicit.o, 1e-15, "query 0");
    assert_eq!(r.lse[0], explicit.lse);
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

/// Splits `[batch, tokens, row]`-shaped data at token `at` into `[batch, at, row]` and
/// `[batch, tokens - at, row]`.
fn split_tokens<T: Copy>(
    x: &[T],
    batch: usize,
    tokens: usize,
    row: usize,
    at: usize,
) -> (Vec<T>, Vec<T>) {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for b in 0..batch {
        let seq = &x[b * tokens * row..(b + 1) * tokens * row];
        first.extend_from_slice(&seq[..at * row]);
        second.extend_from_slice(&seq[at * row..]);
    }
    (first, second)
}

fn assert_same_attention(got: &AttentionResult, want: &AttentionResult, rel: f64) {
    assert_close(&got.o, &want.o, rel, "o");
    assert_lse_close(&got.lse, &want.lse, rel, "lse");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Walking the BSR blocks gives the same result as dense attention under the expanded
    /// token mask, for any token count (partial last blocks included).
    #[test]
    fn block_sparse_equals_dense_with_token_mask(
        batch in 1usize..=3,
        heads in 1usize..=5,
        head_dim in 1usize..=16,
        tokens in 1usize..=70,
        block_size in 1usize..=16,
        density in 0.0f64..=1.0,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let mask = random_block_mask(&mut rng, tokens, block_size, density);
        let s = shape(batch, tokens, tokens, heads, head_dim);
        let (q, k, v) = (
            rng.symmetric_vec(s.q_len()),
            rng.symmetric_vec(s.kv_len()),
            rng.symmetric_vec(s.kv_len()),
        );
        let scale = (head_dim as f64).powf(-0.5) * 2.0;
        let sparse = block_sparse_attention(s, &q, &k, &v, scale, &mask);
        let dense = dense_attention(s, &q, &k, &v, scale, Some(&mask.to_token_mask()));
        assert_same_attention(&sparse, &dense, 1e-12);
        prop_assert!(sparse.lse.iter().all(|x| x.is_finite()), "every row has a block");
    }

    /// Attention over the keys split in two parts, merged by log-sum-exp, equals attention over
    /// all keys, including rows where one part (or both) is fully masked.
    #[test]
    fn merging_split_keys_by_lse_gives_the_whole(
        batch in 1usize..=3,
        heads in 1usize..=5,
        head_dim in 1usize..=16,
        q_tokens in 1usize..=20,
        kv_tokens in 0usize..=40,
        split in 0.0f64..=1.0,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let at = ((kv_tokens as f64 * split) as usize).min(kv_tokens);
        // Per query row: random keys, or the first part off, or the second part off, or all off.
        let mut mask = vec![false; q_tokens * kv_tokens];
        for i in 0..q_tokens {
            let mode = rng.below(4);
            for j in 0..kv_tokens {
                let on = match mode {
                    0 => rng.chance(0.6),
                    1 => j >= at && rng.chance(0.6),
                    2 => j < at && rng.chance(0.6),
                    _ => false,
                };
                mask[i * kv_tokens + j] = on;
            }
        }
        let s = shape(batch, q_tokens, kv_tokens, heads, head_dim);
        let (q, k, v) = (
            rng.symmetric_vec(s.q_len()),
            rng.symmetric_vec(s.kv_len()),
            rng.symmetric_vec(s.kv_len()),
        );
        let scale = 1.5;
        let whole = dense_attention(s, &q, &k, &v, scale, Some(&mask));

        let row = heads * head_dim;
        let (k1, k2) = split_tokens(&k, batch, kv_tokens, row, at);
        let (v1, v2) = split_tokens(&v, batch, kv_tokens, row, at);
        // The mask `[q_tokens, kv_tokens]` splits along its columns the same way.
        let (mask1, mask2) = split_tokens(&mask, q_tokens, kv_tokens, 1, at);
        let first = dense_attention(shape(batch, q_tokens, at, heads, head_dim), &q, &k1, &v1, scale, Some(&mask1));
        let second = dense_attention(
            shape(batch, q_tokens, kv_tokens - at, heads, head_dim), &q, &k2, &v2, scale, Some(&mask2),
        );
        let merged = merge_attention(s, &first, &second);
        assert_same_attention(&merged, &whole, 1e-12);
    }
}
