//! MLA paged-cache append and absorbed decode on CUDA.

use crate::compile::KernelVariant;
use crate::CudaBackend;
use half::bf16;
use tessera_core::{MlaAppend, MlaCache, MlaDecode, MlaDecodeOutput, Result};

/// Every kernel variant of this module (compiled by CI for sm_90a and sm_80).
pub(crate) fn variants() -> Vec<KernelVariant> {
    Vec::new()
}

impl CudaBackend {
    pub(crate) fn mla_append_host(
        &self,
        op: &MlaAppend,
        cache: &mut MlaCache,
        latent: &[bf16],
        rope: &[bf16],
        slots: &[i32],
    ) -> Result<()> {
        op.validate_args(cache, latent, rope, slots)?;
        self.unsupported("mla_append")
    }

    pub(crate) fn mla_decode_host(
        &self,
        op: &MlaDecode,
        cache: &MlaCache,
        q: &[bf16],
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<MlaDecodeOutput> {
        op.validate_args(cache, q, block_table, seq_lens)?;
        self.unsupported("mla_decode")
    }
}
