//! Tessera's CUDA backend.
//!
//! The CUDA driver and NVRTC are loaded at run time (through `cudarc`), so the crate builds on any
//! machine; [`probe`] says what is there before anything is loaded, so a missing library is an
//! error, never a panic. Kernels are `.cu` files under `kernels/`, compiled by NVRTC for the
//! device's exact architecture and cached (see [`compile`]).
//!
//! Two APIs: the [`tessera_core::Backend`] trait over host slices (copies in and out, for tests,
//! the CLI and simple callers), and methods named `*_on` over caller-owned device buffers
//! (`cudarc` views) on a caller's stream, with no copies and no synchronization.

#![warn(missing_docs)]

pub mod compile;
pub mod kernels;
pub mod ops;
mod probe;
mod runtime;

pub use ops::attention::{DeviceBlockMask, DeviceHalf, DeviceHalfMut};
pub use ops::fp8::DeviceInput;
pub use ops::fp8_gemm::Fp8GemmTile;
pub use ops::mla::{MlaAppendBuffers, MlaDecodeBuffers, MlaDecodePlan};
pub use probe::{probe, CudaProbe};
pub use runtime::{arch_for, CudaRuntime};

use half::bf16;
use std::sync::Arc;
use tessera_core::ops::attention::{AttentionOutput, SparseAttention};
use tessera_core::{
    Backend, BackendKind, BlockMask, DeviceFeatures, DeviceInfo, Error, Fp8Gemm, Fp8Quantize,
    Fp8Quantized, MlaAppend, MlaCache, MlaDecode, MlaDecodeOutput, Result, TensorRef, E4M3,
};

/// The CUDA backend on one device.
#[derive(Debug)]
pub struct CudaBackend {
    device: DeviceInfo,
    runtime: CudaRuntime,
}

impl CudaBackend {
    /// Opens CUDA device 0, or says why it cannot.
    pub fn new() -> Result<Self> {
        Self::with_ordinal(0)
    }

    /// Opens CUDA device `ordinal`, or says why it cannot.
    pub fn with_ordinal(ordinal: usize) -> Result<Self> {
        let found = probe();
        let unavailable = |reason: String| Error::BackendUnavailable {
            backend: BackendKind::Cuda,
            reason,
        };
        if let Err(e) = &found.driver {
            return Err(unavailable(e.clone()));
        }
        if let Err(e) = &found.nvrtc {
            return Err(unavailable(e.clone()));
        }
        if ordinal >= found.devices.len() {
            return Err(unavailable(format!(
                "no CUDA device {ordinal} (the driver reports {})",
                found.devices.len()
            )));
        }
        let runtime = CudaRuntime::new(ordinal)?;
        let name = runtime
            .ctx
            .name()
            .unwrap_or_else(|_| found.devices[ordinal].clone());
        let (major, minor) = runtime.compute_capability;
        let device = DeviceInfo {
            backend: BackendKind::Cuda,
            name: format!(
                "{name} (sm_{major}{minor}, {} SMs, kernels for {})",
                runtime.sm_count, runtime.arch
            ),
            features: DeviceFeatures {
                matrix_units: major >= 8,
                native_fp8: (major, minor) >= (8, 9),
                subgroup_size: Some(32),
                shared_memory_bytes: None,
            },
        };
        Ok(Self { device, runtime })
    }

    /// The context, for callers that allocate their own buffers.
    pub fn context(&self) -> &Arc<cudarc::driver::CudaContext> {
        &self.runtime.ctx
    }

    /// The stream the host API uses.
    pub fn stream(&self) -> &Arc<cudarc::driver::CudaStream> {
        &self.runtime.stream
    }

    /// The NVRTC target, e.g. `sm_90a`.
    pub fn arch(&self) -> &str {
        &self.runtime.arch
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
        self.sparse_attention_host(op, mask, q, k, v)
    }

    fn mla_append(
        &self,
        op: &MlaAppend,
        cache: &mut MlaCache,
        latent: &[bf16],
        rope: &[bf16],
        slots: &[i32],
    ) -> Result<()> {
        self.mla_append_host(op, cache, latent, rope, slots)
    }

    fn mla_decode(
        &self,
        op: &MlaDecode,
        cache: &MlaCache,
        q: &[bf16],
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<MlaDecodeOutput> {
        self.mla_decode_host(op, cache, q, block_table, seq_lens)
    }

    fn fp8_quantize(&self, op: &Fp8Quantize, x: TensorRef<'_>) -> Result<Fp8Quantized> {
        self.fp8_quantize_host(op, x)
    }

    fn fp8_gemm(
        &self,
        op: &Fp8Gemm,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
    ) -> Result<Vec<bf16>> {
        self.fp8_gemm_host(op, a, a_scales, b, b_scales)
    }
}
