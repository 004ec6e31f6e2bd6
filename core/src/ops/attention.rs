//! Block-sparse (radial) attention.

use super::{check_len, check_scale, checked_product, saturating_product};
use crate::error::{Error, Result};
use crate::mask::BlockMask;
use crate::tensor::{DType, TensorRef};

const OP: &str = "sparse_attention";
const BACKWARD_OP: &str = "sparse_attention_backward";

/// Head dimensions every backend supports.
pub const SUPPORTED_HEAD_DIMS: [usize; 2] = [64, 128];

/// Block-sparse attention forward: for each batch and head,
/// `o = softmax(scale · q kᵀ + M) v`, where `M` is 0 on the blocks the [`BlockMask`] has on and
/// -inf elsewhere (padded keys of a partial last block are always -inf).
///
/// Layouts (row-major):
/// - `q`, `k`, `v`, `o`: `[batch, tokens, heads, head_dim]`, all of [`Self::dtype`]
///   (f16 or bf16);
/// - `lse`: f32 `[batch, heads, tokens]`, natural-log log-sum-exp of the scaled scores of each
///   query row over the keys it attends.
///
/// Every block row of the mask must have at least one block (otherwise the row's softmax is
/// empty; validation rejects such masks).
///
/// # Determinism
/// Bitwise deterministic on every backend: the same inputs on the same device, driver and
/// settings give the same bits. Each query tile is computed by one workgroup / CTA that visits
/// its key blocks in mask order; no float is accumulated with atomics (the Vulkan
/// cooperative-matrix path takes a column maximum with an integer `atomicMax` on the bit
/// patterns, which is order-independent). Results may differ between devices or between the
/// CUDA, Vulkan portable and cooperative-matrix paths (within the conformance tolerances).
///
/// The backward ([`crate::Backend::sparse_attention_backward`]) is bitwise deterministic in
/// the same way for dk and dv, and for dq when [`Self::deterministic_backward`] is set; when it
/// is not (the default), a backend may add the f32 partial sums of dq in whatever order its
/// CTAs run, where that is faster (CUDA on sm_90a), and dq may then differ in its last bits
/// from run to run.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseAttention {
    /// Batch size, at least 1.
    pub batch: usize,
    /// Tokens per sequence (queries = keys), equal to the mask's `tokens`.
    pub tokens: usize,
    /// Heads (the mask is shared by all), at least 1.
    pub heads: usize,
    /// Head dimension, one of [`SUPPORTED_HEAD_DIMS`].
    pub head_dim: usize,
    /// Element type of q, k, v and o: f16 or bf16.
    pub dtype: DType,
    /// Softmax scale, finite and > 0 (usually `head_dim^-0.5`).
    pub softmax_scale: f32,
    /// The backward only: dq bitwise the same on every run (its partial sums added in a fixed
    /// order) even where another order is faster. `false` in [`Self::new`]: the fastest dq,
    /// reproducible within the conformance tolerances but not bit for bit. The forward, dk
    /// and dv are bitwise deterministic either way.
    pub deterministic_backward: bool,
}

impl SparseAttention {
    /// A descriptor with the usual scale `head_dim^-0.5`.
    pub fn new(batch: usize, tokens: usize, heads: usize, head_dim: usize, dtype: DType) -> Self {
        Self {
            batch,
            tokens,
            heads,
            head_dim,
            dtype,
            softmax_scale: (head_dim as f32).powf(-0.5),
            deterministic_backward: false,
        }
    }

    /// The descriptor with [`Self::deterministic_backward`] set to `deterministic`.
    pub fn with_deterministic_backward(self, deterministic: bool) -> Self {
        Self {
            deterministic_backward: deterministic,
            ..self
        }
    }

    /// Elements of q, k, v and o: `batch * tokens * heads * head_dim` (saturating at
    /// `usize::MAX` for a descriptor whose product overflows, which validation rejects).
    pub fn qkv_len(&self) -> usize {
        saturating_product(&[self.batch, self.tokens, self.heads, self.head_dim])
    }

    /// Elements of lse: `batch * heads * tokens` (saturating like [`Self::qkv_len`]).
    pub fn lse_len(&self) -> usize {
        saturating_product(&[self.batch, self.heads, self.tokens])
    }

    /// Floating-point operations of the masked computation (2 matmuls, multiply-add = 2),
    /// counting every on block in full.
    pub fn flops(&self, mask: &BlockMask) -> f64 {
        let b = mask.block_size() as f64;
        4.0 * self.batch as f64
            * self.heads as f64
            * mask.nnz() as f64
            * b
            * b
            * self.head_dim as f64
    }

    /// Checks the descriptor and the mask.
    pub fn validate(&self, mask: &BlockMask) -> Result<()> {
        for (arg, v) in [
            ("batch", self.batch),
            ("tokens", self.tokens),
            ("heads", self.heads),
        ] {
            if v == 0 {
                return Err(Error::invalid(OP, arg, "at least 1", "0"));
            }
        }
        if !SUPPORTED_HEAD_DIMS.contains(&self.head_dim) {
            return Err(Error::invalid(
                OP,
                "head_dim",
                format!("one of {SUPPORTED_HEAD_DIMS:?}"),
                self.head_dim.to_string(),
            ));
        }
        if !matches!(self.dtype, DType::F16 | DType::BF16) {
            return Err(Error::invalid(
                OP,
                "dtype",
                "f16 or bf16",
                self.dtype.name(),
            ));
        }
        check_scale(OP, self.softmax_scale)?;
        checked_product(
            OP,
            "batch * tokens * heads * head_dim",
            &[self.batch, self.tokens, self.heads, self.head_dim],
        )?;
        if mask.tokens() != self.tokens {
            return Err(Error::invalid(
                OP,
                "mask",
                format!("a mask over tokens = {}", self.tokens),
                format!("a mask over {} tokens", mask.tokens()),
            ));
        }
        if let Some(r) = (0..mask.num_blocks()).find(|&r| mask.row(r).is_empty()) {
            return Err(Error::invalid(
                OP,
                format!("mask block row {r}"),
                "at least one key block per block row",
                "an empty row",
            ));
        }
        Ok(())
    }

    /// Checks the descriptor, the mask and the host tensors.
    pub fn validate_args(
        &self,
        mask: &BlockMask,
        q: TensorRef<'_>,
        k: TensorRef<'_>,
        v: TensorRef<'_>,
    ) -> Result<()> {
        self.validate(mask)?;
        let shape = format!(
            "[batch {}, tokens {}, heads {}, head_dim {}]",
            self.batch, self.tokens, self.heads, self.head_dim
        );
        for (arg, t) in [("q", q), ("k", k), ("v", v)] {
            if t.dtype() != self.dtype {
                return Err(Error::invalid(
                    OP,
                    arg,
                    format!("dtype {}", self.dtype),
                    t.dtype().name(),
                ));
            }
            check_len(OP, arg, &shape, self.qkv_len(), t.len())?;
        }
        Ok(())
    }
}

impl SparseAttention {
    /// Floating-point operations of the backward pass counted as usual (5 matmuls over every on
    /// block: S = q kᵀ recomputed, dP = dO vᵀ, dv = Pᵀ dO, dq = dS k, dk = dSᵀ q): 2.5 times
    /// [`Self::flops`]. Kernels that recompute S and dP for a separate dq pass do more work than
    /// this counts.
    pub fn backward_flops(&self, mask: &BlockMask) -> f64 {
        2.5 * self.flops(mask)
    }

    /// Checks the descriptor, the mask and the host tensors of the backward pass
    /// ([`crate::Backend::sparse_attention_backward`]): `q`, `k`, `v`, the forward's `o` and the
    /// output gradient `d_o` are `[batch, tokens, heads, head_dim]` of [`Self::dtype`], and the
    /// forward's `lse` is f32 `[batch, heads, tokens]` (natural log). The mask is checked as for
    /// the forward (every block row non-empty).
    #[allow(clippy::too_many_arguments)]
    pub fn validate_backward_args(
        &self,
        mask: &BlockMask,
        q: TensorRef<'_>,
        k: TensorRef<'_>,
        v: TensorRef<'_>,
        o: TensorRef<'_>,
        lse: &[f32],
        d_o: TensorRef<'_>,
    ) -> Result<()> {
        self.validate_args(mask, q, k, v)?;
        let shape = format!(
            "[batch {}, tokens {}, heads {}, head_dim {}]",
            self.batch, self.tokens, self.heads, self.head_dim
        );
        for (arg, t) in [("o", o), ("d_o", d_o)] {
            if t.dtype() != self.dtype {
                return Err(Error::invalid(
                    BACKWARD_OP,
                    arg,
                    format!("dtype {}", self.dtype),
                    t.dtype().name(),
                ));
            }
            check_len(BACKWARD_OP, arg, &shape, self.qkv_len(), t.len())?;
        }
        check_len(
            BACKWARD_OP,
            "lse",
            &format!(
                "f32 [batch {}, heads {}, tokens {}]",
                self.batch, self.heads, self.tokens
            ),
            self.lse_len(),
            lse.len(),
        )
    }
}

/// Output of [`SparseAttention`].
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionOutput {
    /// `[batch, tokens, heads, head_dim]` in the op's dtype.
    pub o: crate::tensor::Tensor,
    /// f32 `[batch, heads, tokens]`, natural log.
    pub lse: Vec<f32>,
}

/// Output of the attention backward ([`crate::Backend::sparse_attention_backward`]): the
/// gradients of a scalar loss with respect to q, k and v, given its gradient `d_o` with respect
/// to the forward's o.
///
/// With `P = softmax(scale · q kᵀ + M)` (the forward's probabilities, recomputed from its lse),
/// `dP = d_o vᵀ`, `D = rowsum(d_o ∘ o)` and `dS = P ∘ (dP - D)`:
/// `dq = scale · dS k`, `dk = scale · dSᵀ q`, `dv = Pᵀ d_o`. Keys of blocks the mask has off, and
/// padded keys of a partial last block, contribute nothing; a key that no query attends gets
/// zero `dk` and `dv`.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionGradients {
    /// `[batch, tokens, heads, head_dim]` in the op's dtype (the layout of q).
    pub dq: crate::tensor::Tensor,
    /// `[batch, tokens, heads, head_dim]` in the op's dtype (the layout of k).
    pub dk: crate::tensor::Tensor,
    /// `[batch, tokens, heads, head_dim]` in the op's dtype (the layout of v).
    pub dv: crate::tensor::Tensor,
}
