//! Tessera's CUDA backend.
//!
//! The kernels come with their own issue; today this crate finds the CUDA driver and NVRTC at
//! run time (nothing is linked at build time, so it builds on any machine) and reports what it
//! found, so that `tessera info` can say why CUDA is or is not usable.

#![warn(missing_docs)]

mod probe;

pub use probe::{probe, CudaProbe};

use half::bf16;
use tessera_core::ops::attention::{AttentionOutput, SparseAttention};
use tessera_core::{
    Backend, BackendKind, BlockMask, DeviceInfo, Error, Fp8Gemm, Fp8Quantize, Fp8Quantized,
    MlaAppend, MlaCache, MlaDecode, MlaDecodeOutput, Result, TensorRef, E4M3,
};

/// The CUDA backend.
#[derive(Debug)]
pub struct CudaBackend {
    device: DeviceInfo,
}

impl CudaBackend {
    /// Opens the first CUDA device, or says why it cannot.
    pub fn new() -> Result<Self> {
        let found = probe();
        let reason = match (&found.driver, &found.nvrtc, found.devices.first()) {
            (Err(e), _, _) => e.clone(),
            (_, Err(e), _) => e.clone(),
            (Ok(_), Ok(_), None) => "the CUDA driver reports no device".to_string(),
            (Ok(_), Ok(_), Some(name)) => {
                format!("found {name}, but the CUDA kernels are not implemented yet")
            }
        };
        Err(Error::BackendUnavailable {
            backend: BackendKind::Cuda,
            reason,
        })
    }

    fn unsupported<T>(&self, op: &'static str) -> Result<T> {
        Err(Error::Unsupported {
            op,
            backend: BackendKind::Cuda,
            reason: "the CUDA kernels are not implemented yet".to_string(),
        })
    }
}

impl Backend for CudaBackend {
    fn device(&self) -> &DeviceInfo {
        &self.device
    }

    fn sparse_attention(
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

    fn mla_append(
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

    fn mla_decode(
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

    fn fp8_quantize(&self, op: &Fp8Quantize, x: TensorRef<'_>) -> Result<Fp8Quantized> {
        op.validate_args(x)?;
        self.unsupported("fp8_quantize")
    }

    fn fp8_gemm(
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
