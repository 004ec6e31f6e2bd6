//! Dense and block-sparse attention in f64.
//!
//! Everything here is built on [`attend`], the softmax attention of one query over an explicit
//! list of (key, value) pairs: a numerically stable two-pass softmax (subtract the largest score,
//! exponentiate, normalize) accumulated in f64. The functions over whole tensors only decide
//! *which* keys each query sees.

use tessera_core::BlockMask;

/// Shape of an attention problem. Layouts (row-major): q `[batch, q_tokens, heads, head_dim]`,
/// k and v `[batch, kv_tokens, heads, head_dim]`, o like q, lse `[batch, heads, q_tokens]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch size.
    pub batch: usize,
    /// Query tokens per sequence.
    pub q_tokens: usize,
    /// Key / value tokens per sequence.
    pub kv_tokens: usize,
    /// Heads.
    pub heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

impl AttentionShape {
    /// Elements of q and o: `batch * q_tokens * heads * head_dim`.
    pub fn q_len(&self) -> usize {
        self.batch * self.q_tokens * self.heads * self.head_dim
    }

    /// Elements of k and v: `batch * kv_tokens * heads * head_dim`.
    pub fn kv_len(&self) -> usize {
        self.batch * self.kv_tokens * self.heads * self.head_dim
    }

    /// Elements of lse: `batch * heads * q_tokens`.
    pub fn lse_len(&self) -> usize {
        self.batch * self.heads * self.q_tokens
    }

    /// Offset of the `head_dim` elements of query `token` of head `head` in batch `batch` in q
    /// (and o), layout `[batch, q_tokens, heads, head_dim]`.
    pub fn q_offset(&self, batch: usize, token: usize, head: usize) -> usize {
        ((batch * self.q_tokens + token) * self.heads + head) * self.head_dim
    }

    /// Offset of the `head_dim` elements of key / value `token` of head `head` in batch `batch`
    /// in k and v, layout `[batch, kv_tokens, heads, head_dim]`.
    pub fn kv_offset(&self, batch: usize, token: usize, head: usize) -> usize {
        ((batch * self.kv_tokens + token) * self.heads + head) * self.head_dim
    }

    /// Index of the log-sum-exp of query `token` of head `head` in batch `batch`, layout
    /// `[batch, heads, q_tokens]`.
    pub fn lse_index(&self, batch: usize, head: usize, token: usize) -> usize {
        (batch * self.heads + head) * self.q_tokens + token
    }

    fn check_inputs(&self, q: &[f64], k: &[f64], v: &[f64]) {
        assert_eq!(
            q.len(),
            self.q_len(),
            "q must be [batch, q_tokens, heads, head_dim]"
        );
        assert_eq!(
            k.len(),
            self.kv_len(),
            "k must be [batch, kv_tokens, heads, head_dim]"
        );
        assert_eq!(
            v.len(),
            self.kv_len(),
            "v must be [batch, kv_tokens, heads, head_dim]"
        );
    }
}

/// Output of the reference attention: `o` like q, `lse` `[batch, heads, q_tokens]` natural log.
/// A query row that may attend no key has `o = 0` and `lse = -inf`.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionResult {
    /// `[batch, q_tokens, heads, head_dim]`.
    pub o: Vec<f64>,
    /// `[batch, heads, q_tokens]`.
    pub lse: Vec<f64>,
}

/// The attention of one query: its output row and the log-sum-exp of its scaled scores.
#[derive(Clone, Debug, PartialEq)]
pub struct AttendedRow {
    /// `softmax(scores) · values`, `value_dim` elements; all zero when there is no key.
    pub o: Vec<f64>,
    /// `ln Σ_j exp(score_j)` (natural log); -inf when there is no key.
    pub lse: f64,
}

/// Softmax attention of one query over an explicit list of `(key, value)` pairs:
/// `score_j = scale · query·key_j`, `o = Σ_j softmax(score)_j · value_j`,
/// `lse = ln Σ_j exp(score_j)`.
///
/// Every key has `query.len()` elements and every value `value_dim` elements. The softmax is
/// computed stably in f64: `m = max_j score_j`, `p_j = exp(score_j - m)`,
/// `o = Σ p_j value_j / Σ p_j`, `lse = m + ln Σ p_j`. With no pairs, `o = 0` and `lse = -inf`.
/// A NaN anywhere in the inputs makes `o` and `lse` NaN.
pub fn attend(
    query: &[f64],
    keys_values: &[(&[f64], &[f64])],
    value_dim: usize,
    scale: f64,
) -> AttendedRow {
    let mut o = vec![0.0; value_dim];
    if keys_values.is_empty() {
        return AttendedRow {
            o,
            lse: f64::NEG_INFINITY,
        };
    }
    let scores: Vec<f64> = keys_values
        .iter()
        .map(|(key, _)| scale * dot(query, key))
        .collect();
    let max_score = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for ((_, value), score) in keys_values.iter().zip(&scores) {
        assert_eq!(
            value.len(),
            value_dim,
            "every value must have value_dim elements"
        );
        let p = (score - max_score).exp();
        sum += p;
        for (acc, x) in o.iter_mut().zip(value.iter()) {
            *acc += p * x;
        }
    }
    for acc in &mut o {
        *acc /= sum;
    }
    AttendedRow {
        o,
        lse: max_score + sum.ln(),
    }
}

/// `Σ_i a[i]·b[i]` in f64. Panics if the lengths differ.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Runs [`attend`] for every batch, head and query, with the keys `keys_of(query_token)`
/// (ascending key token indices), and assembles the tensors.
fn attention_over_keys(
    shape: AttentionShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    scale: f64,
    keys_of: impl Fn(usize) -> Vec<usize>,
) -> AttentionResult {
    shape.check_inputs(q, k, v);
    let d = shape.head_dim;
    let mut o = vec![0.0; shape.q_len()];
    let mut lse = vec![0.0; shape.lse_len()];
    for i in 0..shape.q_tokens {
        let keys = keys_of(i);
        for b in 0..shape.batch {
            for h in 0..shape.heads {
                let qo = shape.q_offset(b, i, h);
                let pairs: Vec<(&[f64], &[f64])> = keys
                    .iter()
                    .map(|&j| {
                        let kvo = shape.kv_offset(b, j, h);
                        (&k[kvo..kvo + d], &v[kvo..kvo + d])
                    })
                    .collect();
                let row = attend(&q[qo..qo + d], &pairs, d, scale);
                o[qo..qo + d].copy_from_slice(&row.o);
                lse[shape.lse_index(b, h, i)] = row.lse;
            }
        }
    }
    AttentionResult { o, lse }
}

/// Dense attention `softmax(scale · q kᵀ) v` with an optional token mask, row-major
/// `[q_tokens, kv_tokens]` (true = may attend), shared by every batch and head.
///
/// Layouts (row-major): q `[batch, q_tokens, heads, head_dim]`, k and v
/// `[batch, kv_tokens, heads, head_dim]`; output o `[batch, q_tokens, heads, head_dim]` and lse
/// `[batch, heads, q_tokens]` (natural log). A query with no allowed key (or `kv_tokens = 0`)
/// gets `o = 0` and `lse = -inf`.
///
/// # Panics
/// If a slice's length does not match `shape`.
pub fn dense_attention(
    shape: AttentionShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    scale: f64,
    token_mask: Option<&[bool]>,
) -> AttentionResult {
    if let Some(mask) = token_mask {
        assert_eq!(
            mask.len(),
            shape.q_tokens * shape.kv_tokens,
            "token_mask must be [q_tokens, kv_tokens]"
        );
    }
    let allowed = |i: usize, j: usize| token_mask.is_none_or(|m| m[i * shape.kv_tokens + j]);
    attention_over_keys(shape, q, k, v, scale, |i| {
        (0..shape.kv_tokens).filter(|&j| allowed(i, j)).collect()
    })
}

/// Block-sparse attention: queries of block row r attend only the keys of the blocks
/// `mask.row(r)`, skipping the padded keys of a partial last block. Requires
/// `q_tokens == kv_tokens == mask.tokens()`.
///
/// Layouts as [`dense_attention`]: q, k, v and o `[batch, tokens, heads, head_dim]`, lse
/// `[batch, heads, tokens]` (natural log). The key set is enumerated block by block from the BSR
/// arrays (never through the token-level mask), so comparing with
/// `dense_attention(.., Some(&mask.to_token_mask()))` checks the block walk. A block row with no
/// block gives `o = 0`, `lse = -inf`.
///
/// # Panics
/// If the token counts differ from `mask.tokens()` or a slice's length does not match `shape`.
pub fn block_sparse_attention(
    shape: AttentionShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    scale: f64,
    mask: &BlockMask,
) -> AttentionResult {
    assert_eq!(
        shape.q_tokens,
        mask.tokens(),
        "q_tokens must equal mask.tokens()"
    );
    assert_eq!(
        shape.kv_tokens,
        mask.tokens(),
        "kv_tokens must equal mask.tokens()"
    );
    let (tokens, block) = (mask.tokens(), mask.block_size());
    attention_over_keys(shape, q, k, v, scale, |i| {
        block_keys(mask, i / block, tokens)
    })
}

/// Gradients of the reference attention backward, f64, in the layouts of q, k and v:
/// dq `[batch, q_tokens, heads, head_dim]`, dk and dv `[batch, kv_tokens, heads, head_dim]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionBackwardResult {
    /// `[batch, q_tokens, heads, head_dim]`.
    pub dq: Vec<f64>,
    /// `[batch, kv_tokens, heads, head_dim]`.
    pub dk: Vec<f64>,
    /// `[batch, kv_tokens, heads, head_dim]`.
    pub dv: Vec<f64>,
}

/// The forward's tensors a backward pass reads: its inputs, its outputs and the gradient of the
/// loss with respect to o. Layouts as [`AttentionShape`]: q, o, `d_o`
/// `[batch, q_tokens, heads, head_dim]`; k, v `[batch, kv_tokens, heads, head_dim]`; lse
/// `[batch, heads, q_tokens]` (natural log).
#[derive(Clone, Copy, Debug)]
pub struct BackwardInputs<'a> {
    /// Queries.
    pub q: &'a [f64],
    /// Keys.
    pub k: &'a [f64],
    /// Values.
    pub v: &'a [f64],
    /// The forward's output.
    pub o: &'a [f64],
    /// The forward's log-sum-exp (natural log).
    pub lse: &'a [f64],
    /// Gradient of the loss with respect to o.
    pub d_o: &'a [f64],
}

/// The backward of [`attention_over_keys`] for the keys `keys_of(query_token)`: with
/// `p_j = exp(scale · q·k_j - lse)` (the forward's probabilities, from its lse), `D = d_o·o`,
/// `dp_j = d_o·v_j` and `ds_j = p_j (dp_j - D)`, each query adds `scale · ds_j k_j` to its dq,
/// `scale · ds_j q` to `dk_j` and `p_j d_o` to `dv_j`. A query with no key adds nothing (its dq
/// is 0, whatever its lse).
fn attention_backward_over_keys(
    shape: AttentionShape,
    x: BackwardInputs<'_>,
    scale: f64,
    keys_of: impl Fn(usize) -> Vec<usize>,
) -> AttentionBackwardResult {
    shape.check_inputs(x.q, x.k, x.v);
    assert_eq!(x.o.len(), shape.q_len(), "o must be like q");
    assert_eq!(x.d_o.len(), shape.q_len(), "d_o must be like q");
    assert_eq!(
        x.lse.len(),
        shape.lse_len(),
        "lse must be [batch, heads, q_tokens]"
    );
    let d = shape.head_dim;
    let mut dq = vec![0.0; shape.q_len()];
    let mut dk = vec![0.0; shape.kv_len()];
    let mut dv = vec![0.0; shape.kv_len()];
    for i in 0..shape.q_tokens {
        let keys = keys_of(i);
        for b in 0..shape.batch {
            for h in 0..shape.heads {
                let qo = shape.q_offset(b, i, h);
                let query = &x.q[qo..qo + d];
                let d_o = &x.d_o[qo..qo + d];
                let lse = x.lse[shape.lse_index(b, h, i)];
                let delta = dot(d_o, &x.o[qo..qo + d]);
                for &j in &keys {
                    let kvo = shape.kv_offset(b, j, h);
                    let key = &x.k[kvo..kvo + d];
                    let p = (scale * dot(query, key) - lse).exp();
                    let ds = p * (dot(d_o, &x.v[kvo..kvo + d]) - delta);
                    for c in 0..d {
                        dq[qo + c] += scale * ds * key[c];
                        dk[kvo + c] += scale * ds * query[c];
                        dv[kvo + c] += p * d_o[c];
                    }
                }
            }
        }
    }
    AttentionBackwardResult { dq, dk, dv }
}

/// The backward of [`dense_attention`] with the same optional token mask `[q_tokens,
/// kv_tokens]` (true = may attend): the gradients of q, k and v given the forward's `o` and
/// `lse` and the gradient `d_o` of the loss with respect to o (see [`BackwardInputs`] for the
/// layouts). A query with no allowed key gets dq = 0 and adds nothing to dk and dv.
///
/// # Panics
/// If a slice's length does not match `shape`.
pub fn dense_attention_backward(
    shape: AttentionShape,
    x: BackwardInputs<'_>,
    scale: f64,
    token_mask: Option<&[bool]>,
) -> AttentionBackwardResult {
    if let Some(mask) = token_mask {
        assert_eq!(
            mask.len(),
            shape.q_tokens * shape.kv_tokens,
            "token_mask must be [q_tokens, kv_tokens]"
        );
    }
    let allowed = |i: usize, j: usize| token_mask.is_none_or(|m| m[i * shape.kv_tokens + j]);
    attention_backward_over_keys(shape, x, scale, |i| {
        (0..shape.kv_tokens).filter(|&j| allowed(i, j)).collect()
    })
}

/// The backward of [`block_sparse_attention`]: queries of block row r take gradients from the
/// keys of the blocks `mask.row(r)` only (padded keys of a partial last block never count), and
/// the keys of a block get gradients only from the query rows that attend it. Layouts as
/// [`BackwardInputs`], with `q_tokens == kv_tokens == mask.tokens()`.
///
/// A block row with no block (where the forward gives `o = 0`, `lse = -inf`) gets `dq = 0`
/// and adds nothing to dk and dv; a key block that no row attends gets `dk = dv = 0`.
///
/// # Panics
/// If the token counts differ from `mask.tokens()` or a slice's length does not match `shape`.
pub fn block_sparse_attention_backward(
    shape: AttentionShape,
    x: BackwardInputs<'_>,
    scale: f64,
    mask: &BlockMask,
) -> AttentionBackwardResult {
    assert_eq!(
        shape.q_tokens,
        mask.tokens(),
        "q_tokens must equal mask.tokens()"
    );
    assert_eq!(
        shape.kv_tokens,
        mask.tokens(),
        "kv_tokens must equal mask.tokens()"
    );
    let (tokens, block) = (mask.tokens(), mask.block_size());
    attention_backward_over_keys(shape, x, scale, |i| block_keys(mask, i / block, tokens))
}

/// The key tokens of the blocks of block row `block_row`, ascending, without the padded keys of
/// a partial last block.
fn block_keys(mask: &BlockMask, block_row: usize, tokens: usize) -> Vec<usize> {
    let block = mask.block_size();
    let mut keys = Vec::new();
    for &block_col in mask.row(block_row) {
        let first = block_col as usize * block;
        let end = (first + block).min(tokens); // a partial last block has no padded keys
        keys.extend(first..end);
    }
    keys
}

/// Merges two partial attention results over disjoint key sets of the same queries into the
/// result over their union (as split-KV kernels do), by log-sum-exp:
/// `lse = ln(e^{lse1} + e^{lse2})`, `o = (e^{lse1} o1 + e^{lse2} o2) / (e^{lse1} + e^{lse2})`.
///
/// Layouts: o `[batch, q_tokens, heads, head_dim]`, lse `[batch, heads, q_tokens]` as given by
/// `shape` (whose `kv_tokens` is not used). Computed stably relative to `max(lse1, lse2)`; a
/// side with `lse = -inf` (no key) contributes nothing, and when both are -inf the result is
/// `o = 0`, `lse = -inf`.
///
/// # Panics
/// If a length does not match `shape`.
pub fn merge_attention(
    shape: AttentionShape,
    first: &AttentionResult,
    second: &AttentionResult,
) -> AttentionResult {
    for part in [first, second] {
        assert_eq!(
            part.o.len(),
            shape.q_len(),
            "o must be [batch, q_tokens, heads, head_dim]"
        );
        assert_eq!(
            part.lse.len(),
            shape.lse_len(),
            "lse must be [batch, heads, q_tokens]"
        );
    }
    let d = shape.head_dim;
    let mut o = vec![0.0; shape.q_len()];
    let mut lse = vec![0.0; shape.lse_len()];
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            for i in 0..shape.q_tokens {
                let li = shape.lse_index(b, h, i);
                let (lse1, lse2) = (first.lse[li], second.lse[li]);
                let m = lse1.max(lse2);
                if m == f64::NEG_INFINITY {
                    lse[li] = f64::NEG_INFINITY;
                    continue; // o stays 0
                }
                let (w1, w2) = ((lse1 - m).exp(), (lse2 - m).exp());
                lse[li] = m + (w1 + w2).ln();
                let qo = shape.q_offset(b, i, h);
                let rows = first.o[qo..qo + d].iter().zip(&second.o[qo..qo + d]);
                for (out, (o1, o2)) in o[qo..qo + d].iter_mut().zip(rows) {
                    *out = (w1 * o1 + w2 * o2) / (w1 + w2);
                }
            }
        }
    }
    AttentionResult { o, lse }
}
