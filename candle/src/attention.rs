//! Block-sparse (radial) attention as a candle `CustomOp3` over q, k, v.

use crate::storage::{candle_error, check_shape, dims, halfs, invalid, Half};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use std::sync::Mutex;
use tessera_core::{Backend, BlockMask, DType, SparseAttention};
use tessera_reference::CpuBackend;

const OP: &str = "sparse_attention";

/// The attention forward as a candle op: q, k, v f16 or bf16 `[batch, tokens, heads,
/// head_dim]` (one dtype) → o (same); the log-sum-exp of each row (f32
/// `[batch, heads, tokens]`) is kept for [`SparseAttentionOp::take_lse`] (candle ops have one
/// output). [`sparse_attention`] returns both.
pub struct SparseAttentionOp {
    mask: BlockMask,
    softmax_scale: Option<f32>,
    lse: Mutex<Option<(Vec<f32>, [usize; 3])>>,
}

impl SparseAttentionOp {
    /// The op for `mask` (one mask for every batch and head); `softmax_scale` defaults to
    /// `head_dim^-0.5`.
    pub fn new(mask: BlockMask, softmax_scale: Option<f32>) -> Self {
        Self {
            mask,
            softmax_scale,
            lse: Mutex::new(None),
        }
    }

    /// The lse of the last forward, f32 `[batch, heads, tokens]`, as a CPU tensor.
    pub fn take_lse(&self) -> candle_core::Result<Tensor> {
        let taken = self.lse.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (values, shape) =
            taken.ok_or_else(|| candle_core::Error::Msg("no forward has run".into()))?;
        Tensor::from_vec(values, &shape, &candle_core::Device::Cpu)
    }
}

impl CustomOp3 for SparseAttentionOp {
    fn name(&self) -> &'static str {
        "tessera_sparse_attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let names = "batch, tokens, heads, head_dim";
        let shape = dims(OP, "q", l1, 4, names)?.to_vec();
        check_shape(OP, "k", l2, &shape, names)?;
        check_shape(OP, "v", l3, &shape, names)?;
        let (q, k, v) = (
            halfs(OP, "q", s1, l1)?,
            halfs(OP, "k", s2, l2)?,
            halfs(OP, "v", s3, l3)?,
        );
        let dtype = match q {
            Half::F16(_) => DType::F16,
            Half::BF16(_) => DType::BF16,
        };
        let mut op = SparseAttention::new(shape[0], shape[1], shape[2], shape[3], dtype);
        if let Some(s) = self.softmax_scale {
            op.softmax_scale = s;
        }
        // The descriptor's validation names q, k or v of another dtype than q's.
        let out = CpuBackend::new()
            .sparse_attention(
                &op,
                &self.mask,
                q.tensor_ref(),
                k.tensor_ref(),
                v.tensor_ref(),
            )
            .map_err(candle_error)?;
        *self.lse.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((out.lse, [shape[0], shape[2], shape[1]]));
        let o = match out.o {
            tessera_core::Tensor::F16(o) => CpuStorage::F16(o),
            tessera_core::Tensor::BF16(o) => CpuStorage::BF16(o),
            other => return Err(invalid(OP, "o", "f16 or bf16", other.dtype().name())),
        };
        Ok((o, Shape::from(shape)))
    }
}

/// Block-sparse attention forward: `(o, lse)` for q, k, v f16 or bf16
/// `[batch, tokens, heads, head_dim]`, o of q's dtype and shape, lse f32
/// `[batch, heads, tokens]` (natural log).
pub fn sparse_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    softmax_scale: Option<f32>,
) -> candle_core::Result<(Tensor, Tensor)> {
    let op = SparseAttentionOp::new(mask.clone(), softmax_scale);
    let o = q.apply_op3_no_bwd(k, v, &op)?;
    Ok((o, op.take_lse()?))
}
