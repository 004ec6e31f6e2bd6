//! The block-scaled FP8 GEMM on CUDA.

use crate::compile::KernelVariant;
use crate::CudaBackend;
use half::bf16;
use tessera_core::{Fp8Gemm, Result, E4M3};

/// Every kernel variant of this module (compiled by CI for sm_90a and sm_80).
pub(crate) fn variants() -> Vec<KernelVariant> {
    Vec::new()
}

impl CudaBackend {
    pub(crate) fn fp8_gemm_host(
        &self,
        op: &Fp8Gemm,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
    ) -> Result<Vec<bf16>> {
        op.validate_args(a, a_scales, b, b_scales)?;
        self.unsupported("fp8_gemm")
    }
}
