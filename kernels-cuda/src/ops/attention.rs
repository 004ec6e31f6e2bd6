//! Block-sparse (radial) attention on CUDA.

use crate::compile::KernelVariant;
use crate::CudaBackend;
use tessera_core::ops::attention::{AttentionOutput, SparseAttention};
use tessera_core::{BlockMask, Result, TensorRef};

/// Every kernel variant of this module (compiled by CI for sm_90a and sm_80).
pub(crate) fn variants() -> Vec<KernelVariant> {
    Vec::new()
}

impl CudaBackend {
    pub(crate) fn sparse_attention_host(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
        q: TensorRef<'_>,
        k: TensorRef<'_>,
        v: TensorRef<'_>,
    ) -> Result<AttentionOutput> {
        op.validate_args(mask, q, k, v)?;
        self.unsupported("sparse_attention")
    }
}
