//! Tessera's Vulkan backend.
//!
//! The kernels come with their own issue; today this crate finds the Vulkan loader and its
//! devices at run time (nothing is linked at build time, so it builds on any machine) and reports
//! what it found, so that `tessera info` can say why Vulkan is or is not usable.

#![warn(missing_docs)]

mod probe;

pub use probe::{probe, VulkanDevice, VulkanProbe};

use half::bf16;
use tessera_core::ops::attention::{AttentionOutput, SparseAttention};
use tessera_core::{
    Backend, BackendKind, BlockMask, DeviceInfo, Error, Fp8Gemm, Fp8Quantize, Fp8Quantized,
    MlaAppend, MlaCache, MlaDecode, MlaDecodeOutput, Result, TensorRef, E4M3,
};

/// The Vulkan backend.
#[derive(Debug)]
pub struct VulkanBackend {
    device: DeviceInfo,
}

impl VulkanBackend {
    /// Opens a Vulkan device, or says why it cannot.
    pub fn new() -> Result<Self> {
        let found = probe();
        let reason = match (&found.loader, found.devices.first()) {
            (Err(e), _) => e.clone(),
            (Ok(_), None) => "the Vulkan loader reports no device (no ICD installed?)".to_string(),
            (Ok(_), Some(d)) => {
                format!(
                    "found {}, but the Vulkan kernels are not implemented yet",
                    d.name
                )
            }
        };
        Err(Error::BackendUnavailable {
            backend: BackendKind::Vulkan,
            reason,
        })
    }

    fn unsupported<T>(&self, op: &'static str) -> Result<T> {
        Err(Error::Unsupported {
            op,
            backend: BackendKind::Vulkan,
            reason: "the Vulkan kernels are not implemented yet".to_string(),
        })
    }
}

impl Backend for VulkanBackend {
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
