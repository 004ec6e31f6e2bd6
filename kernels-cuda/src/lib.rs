//! Tessera's CUDA backend.
//!
//! The CUDA driver and NVRTC are loaded at run time (through `cudarc`), so the crate builds on any
//! machine; [`probe`] says what is there before anything is loaded, so a missing library is an
//! error, never a panic. Kernels are `.cu` files under `kernels/`, compiled by NVRTC for the
//! device's exact architecture and cached (see [`compile`]); every op chooses, loads and launches
//! its kernel through the launch-plan layer ([`plan`]).
//!
//! Three APIs: the [`tessera_core::Backend`] trait over host slices (copies in and out, for
//! tests, the CLI and simple callers), methods named `*_on` over caller-owned device buffers
//! (`cudarc` views) on a caller's stream, with no copies and no synchronization, and the same
//! ops as `unsafe` methods named `*_raw` over device addresses and a `CUstream` ([`raw`]) for
//! frameworks that own their memory (PyTorch, candle, C).

#![warn(missing_docs)]

pub mod compile;
pub mod kernels;
pub mod ops;
pub mod plan;
mod probe;
pub mod raw;
mod runtime;

pub use ops::attention::{DeviceBlockMask, DeviceHalf, DeviceHalfMut};
pub use ops::attention_backward::AttentionBackwardBuffers;
pub use ops::fp8::DeviceInput;
pub use ops::mla::{MlaAppendBuffers, MlaDecodeBuffers, MlaDecodePlan, MlaDecodeVarlenBuffers};
pub use plan::{ArchSpec, GemmVariant, MmaSyncGemm, TuneOutcome};
pub use probe::{probe, CudaProbe};
pub use raw::{
    AttentionBackwardSpans, DeviceSpan, MlaAppendSpans, MlaDecodeSpans, MlaDecodeVarlenSpans,
    RawStream,
};
pub use runtime::{CudaRuntime, TUNE_ENV};

use half::bf16;
use std::sync::Arc;
use tessera_core::ops::attention::{AttentionGradients, AttentionOutput, SparseAttention};
use tessera_core::{
    Backend, BackendKind, BlockMask, DeviceFeatures, DeviceInfo, Error, Fp8Gemm, Fp8Quantize,
    Fp8Quantized, MlaAppend, MlaCache, MlaDecode, MlaDecodeOutput, MlaDecodeVarlen, Result,
    TensorRef, E4M3,
};

/// The CUDA backend on one device.
#[derive(Debug)]
pub struct CudaBackend {
    device: DeviceInfo,
    runtime: CudaRuntime,
    /// The raw API's handle on the same context, without cudarc's event tracking.
    raw_ctx: Arc<cudarc::driver::CudaContext>,
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
        let runtime = CudaRuntime::new(ordinal).map_err(|e| match e {
            // An architecture without kernels (before sm_80) makes the backend unavailable.
            Error::Unsupported { reason, .. } => unavailable(reason),
            other => other,
        })?;
        let arch = &runtime.arch;
        let (major, minor) = arch.compute_capability;
        let device = DeviceInfo {
            backend: BackendKind::Cuda,
            name: format!(
                "{} (sm_{major}{minor}, {} SMs, kernels for {})",
                runtime.device_name,
                arch.sm_count,
                arch.nvrtc_target()
            ),
            features: DeviceFeatures {
                matrix_units: true,
                native_fp8: arch.fp8_mma,
                subgroup_size: Some(32),
                shared_memory_bytes: None,
            },
        };
        let raw_ctx = raw::untracked_context(ordinal)?;
        Ok(Self {
            device,
            runtime,
            raw_ctx,
        })
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
    pub fn arch(&self) -> String {
        self.runtime.arch.nvrtc_target()
    }

    /// What the device offers the kernels (SMs, shared memory, wgmma, TMA...).
    pub fn arch_spec(&self) -> &ArchSpec {
        &self.runtime.arch
    }

    /// The plans of this device: which variant each op runs per shape class (see
    /// [`plan::PlanCache`]); [`plan::PlanCache::save`] writes the tuned ones.
    pub fn plans(&self) -> &plan::PlanCache {
        &self.runtime.plans
    }

    /// The loaded kernel functions of this context.
    pub fn functions(&self) -> &plan::FunctionCache {
        &self.runtime.functions
    }

    /// Launches kernel variant `spec` with `grid` CTAs on the stream of `args` (see
    /// [`plan::KernelArgs`]): block, dynamic shared memory and cluster from the variant, the
    /// function loaded once per context, through `cuLaunchKernelEx`. Checks first that the
    /// variant is valid on this device and that the grid is a whole number of clusters.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number, order and types, and the kernel
    /// must stay within the buffers it is given for this grid.
    pub unsafe fn launch_kernel(
        &self,
        spec: &(impl plan::KernelSpec + ?Sized),
        grid: (u32, u32, u32),
        args: plan::KernelArgs<'_>,
        options: plan::LaunchOptions,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe {
            plan::launch::launch(
                &self.runtime.functions,
                &self.runtime.arch,
                spec,
                grid,
                args,
                options,
            )
        }
    }

    /// Queues a busy-wait of `duration` on `stream` (one warp spinning on the GPU's global
    /// timer), without synchronizing: a benchmark queues it before timed launches so that the
    /// host runs ahead of the GPU and the events around each launch measure the GPU's work
    /// rather than the host's dispatch. Holds the stream, not the device.
    pub fn gpu_sleep_on(
        &self,
        stream: &cudarc::driver::CudaStream,
        duration: std::time::Duration,
    ) -> Result<()> {
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let mut args = plan::KernelArgs::new(stream);
        args.value(&ns);
        // SAFETY: the kernel's one parameter is an unsigned long long (u64); it touches no
        // memory.
        unsafe {
            self.launch_kernel(
                &plan::GpuSleepVariant,
                (1, 1, 1),
                args,
                plan::LaunchOptions::default(),
            )
        }
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
        self.sparse_attention_backward_host(op, mask, q, k, v, o, lse, d_o)
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

    fn mla_decode_varlen(
        &self,
        op: &MlaDecodeVarlen,
        cache: &MlaCache,
        q: &[bf16],
        cu_seqlens_q: &[i32],
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<MlaDecodeOutput> {
        self.mla_decode_varlen_host(op, cache, q, cu_seqlens_q, block_table, seq_lens)
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

    fn fp8_gemm_grouped(
        &self,
        op: &Fp8Gemm,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
        groups: &[i32],
    ) -> Result<Vec<bf16>> {
        self.fp8_gemm_grouped_host(op, a, a_scales, b, b_scales, groups)
    }
}
