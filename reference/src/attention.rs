//! Dense and block-sparse attention in f64.

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

/// Output of the reference attention: `o` like q, `lse` `[batch, heads, q_tokens]` natural log.
/// A query row that may attend no key has `o = 0` and `lse = -inf`.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionResult {
    /// `[batch, q_tokens, heads, head_dim]`.
    pub o: Vec<f64>,
    /// `[batch, heads, q_tokens]`.
    pub lse: Vec<f64>,
}

/// Dense attention `softmax(scale · q kᵀ) v` with an optional token mask, row-major
/// `[q_tokens, kv_tokens]` (true = may attend), shared by every batch and head.
pub fn dense_attention(
    shape: AttentionShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    scale: f64,
    token_mask: Option<&[bool]>,
) -> AttentionResult {
    let _ = (shape, q, k, v, scale, token_mask);
    todo!()
}

/// Block-sparse attention: queries of block row r attend only the keys of the blocks
/// `mask.row(r)`, skipping the padded keys of a partial last block. Requires
/// `q_tokens == kv_tokens == mask.tokens()`.
pub fn block_sparse_attention(
    shape: AttentionShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    scale: f64,
    mask: &BlockMask,
) -> AttentionResult {
    let _ = (shape, q, k, v, scale, mask);
    todo!()
}
