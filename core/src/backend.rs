//! The `Backend` trait: every op on host data, implemented by every backend.

use crate::error::{BackendKind, Result};
use crate::fp8::E4M3;
use crate::mask::BlockMask;
use crate::ops::attention::{AttentionGradients, AttentionOutput, SparseAttention};
use crate::ops::fp8::{Fp8Gemm, Fp8Quantize, Fp8Quantized};
use crate::ops::mla::{MlaAppend, MlaCache, MlaDecode, MlaDecodeOutput, MlaDecodeVarlen};
use crate::tensor::TensorRef;
use half::bf16;

/// Optional device features, gathered in one place so callers and tests can ask what a backend
/// offers (more fields come with the GPU backends).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceFeatures {
    /// Tensor-core style matrix instructions (mma / wgmma / cooperative matrix) are used.
    pub matrix_units: bool,
    /// FP8 arithmetic in hardware (rather than decoded in software).
    pub native_fp8: bool,
    /// Subgroup / warp width, where it applies.
    pub subgroup_size: Option<u32>,
    /// Shared memory per workgroup in bytes, where it applies.
    pub shared_memory_bytes: Option<usize>,
}

/// A description of the device a backend runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Which backend.
    pub backend: BackendKind,
    /// The device's name as its driver reports it (e.g. `NVIDIA H200`).
    pub name: String,
    /// Optional features.
    pub features: DeviceFeatures,
}

/// Every op of Tessera over host memory: the convenience API used by tests, the `tessera`
/// command and callers that do not manage device memory. Each backend also has its own API over
/// device buffers and streams.
///
/// Every method validates its arguments first (see each descriptor's `validate_args`) and returns
/// [`crate::Error::InvalidArgument`] without touching any output on bad input.
pub trait Backend: Send + Sync {
    /// The device.
    fn device(&self) -> &DeviceInfo;

    /// Which backend this is.
    fn kind(&self) -> BackendKind {
        self.device().backend
    }

    /// Block-sparse attention forward; see [`SparseAttention`] for layouts.
    fn sparse_attention(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
        q: TensorRef<'_>,
        k: TensorRef<'_>,
        v: TensorRef<'_>,
    ) -> Result<AttentionOutput>;

    /// Block-sparse attention backward: the gradients of q, k and v (see
    /// [`AttentionGradients`] for the math) from the forward's inputs, its outputs `o` and `lse`
    /// (as [`Backend::sparse_attention`] returned them) and the gradient `d_o` of the loss with
    /// respect to o. Layouts: q, k, v, o, `d_o` `[batch, tokens, heads, head_dim]` of `op.dtype`,
    /// lse f32 `[batch, heads, tokens]` (natural log); validated by
    /// [`SparseAttention::validate_backward_args`]. Backends without a kernel for it return
    /// [`crate::Error::Unsupported`] (the default).
    #[allow(clippy::too_many_arguments)]
    fn sparse_attention_backward(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
        q: TensorRef<'_>,
        k: TensorRef<'_>,
        v: TensorRef<'_>,
        o: TensorRef<'_>,
        lse: &[f32],
        d_o: TensorRef<'_>,
    ) -> Result<AttentionGradients> {
        op.validate_backward_args(mask, q, k, v, o, lse, d_o)?;
        Err(crate::Error::Unsupported {
            op: "sparse_attention_backward",
            backend: self.device().backend,
            reason: "no attention backward kernel".to_string(),
        })
    }

    /// Writes tokens into the paged cache; see [`MlaAppend`] for layouts.
    fn mla_append(
        &self,
        op: &MlaAppend,
        cache: &mut MlaCache,
        latent: &[bf16],
        rope: &[bf16],
        slots: &[i32],
    ) -> Result<()>;

    /// Absorbed decode attention over the paged cache; see [`MlaDecode`] for layouts.
    fn mla_decode(
        &self,
        op: &MlaDecode,
        cache: &MlaCache,
        q: &[bf16],
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<MlaDecodeOutput>;

    /// Absorbed decode with a variable number of query tokens per request (`cu_seqlens_q`
    /// offsets into the packed queries); see [`MlaDecodeVarlen`] for layouts. Backends without a
    /// kernel for it return [`crate::Error::Unsupported`] (the default), after checking the
    /// descriptor.
    fn mla_decode_varlen(
        &self,
        op: &MlaDecodeVarlen,
        cache: &MlaCache,
        q: &[bf16],
        cu_seqlens_q: &[i32],
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<MlaDecodeOutput> {
        let _ = (cache, q, cu_seqlens_q, block_table, seq_lens);
        op.validate()?;
        Err(crate::Error::Unsupported {
            op: "mla_decode_varlen",
            backend: self.device().backend,
            reason: "no variable-length MLA decode kernel yet".to_string(),
        })
    }

    /// Quantizes to E4M3 with per-group scales; see [`Fp8Quantize`].
    fn fp8_quantize(&self, op: &Fp8Quantize, x: TensorRef<'_>) -> Result<Fp8Quantized>;

    /// Block-scaled FP8 GEMM, bf16 out; see [`Fp8Gemm`] for layouts. `op.grouping` must be
    /// [`crate::GemmGrouping::Single`] (grouped GEMMs: [`Backend::fp8_gemm_grouped`]).
    fn fp8_gemm(
        &self,
        op: &Fp8Gemm,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
    ) -> Result<Vec<bf16>>;

    /// Grouped block-scaled FP8 GEMM (mixture-of-experts), bf16 out; see
    /// [`crate::GemmGrouping`] for the layouts of A, B, their scales, D and `groups` (the
    /// offsets of `Contiguous` or the row counts of `Masked`). D's rows that a `Masked` group
    /// leaves out are NaN in the returned vector. Backends without a kernel for it return
    /// [`crate::Error::Unsupported`] (the default).
    fn fp8_gemm_grouped(
        &self,
        op: &Fp8Gemm,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
        groups: &[i32],
    ) -> Result<Vec<bf16>> {
        let _ = (a, a_scales, b, b_scales, groups);
        op.validate()?;
        Err(crate::Error::Unsupported {
            op: "fp8_gemm_grouped",
            backend: self.device().backend,
            reason: format!("no grouped GEMM kernel for {:?}", op.grouping),
        })
    }
}
