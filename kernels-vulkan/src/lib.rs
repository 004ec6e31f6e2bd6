//! Tessera's Vulkan backend.
//!
//! The Vulkan loader is opened at run time through `ash` (nothing is linked at build time, so the
//! crate builds on any machine without an SDK); [`probe`] lists what is there, and
//! [`VulkanBackend::new`] opens the best device (or the one `TESSERA_VULKAN_DEVICE` names) and
//! records what it offers in [`VulkanFeatures`]. The shaders are GLSL under `shaders/`, compiled
//! to SPIR-V by `ci/build-shaders.sh` and embedded (see the README's "Vulkan shaders" section).
//!
//! Modules: [`device`] (instance, device choice, features, queue), [`memory`] (buffers),
//! [`pipeline`] (shader modules, layouts, the pipeline cache, dispatch recording), [`ops`] (one
//! module per op: its shaders, device API and host wrapper), [`shaders`] (every embedded shader).
//!
//! Two APIs:
//! - the [`tessera_core::Backend`] trait over host slices: uploads into host-visible buffers,
//!   records into the backend's own command buffer, submits, waits and downloads (outputs are
//!   pre-filled with NaN so that anything left unwritten shows);
//! - the device API, `record_*` methods (e.g. [`VulkanBackend::record_fp8_gemm`]) that record
//!   dispatches into a caller's command buffer over caller-owned buffers ([`BufferRange`]).
//!   Descriptors are push descriptors, so nothing outlives the call on the backend's side. The
//!   caller inserts the barriers before (its writes of the inputs -> compute-shader reads) and
//!   after (compute-shader writes -> its reads of the outputs), submits on
//!   [`VulkanContext::queue`], and keeps the buffers alive until the work completes. Barriers
//!   between the passes of one op are recorded by the op.
//!
//! Ops: the FP8 quantizers, the block-scaled FP8 GEMM, block-sparse attention (forward and
//! backward), and the MLA cache append and paged
//! decode, on the portable path (32-bit storage words, subgroup arithmetic, no 8/16-bit
//! arithmetic), plus cooperative-matrix FP8 GEMM and sparse attention where the device offers
//! f16 16x16x16 matrices.

#![warn(missing_docs)]

/// Embeds `shaders/spv/<name>.spv`.
macro_rules! spirv {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/spv/",
            $name,
            ".spv"
        ))
    };
}

mod arith_check;
mod command;
pub mod device;
pub mod memory;
pub mod ops;
pub mod pipeline;
pub mod plan;
mod probe;

/// The `ash` version this crate is built on, for callers of the device API (`ash::vk` types).
pub use ash;
pub use device::{
    CooperativeMatrixShape, FlexibleMatrixConfig, MatrixComponent, VulkanContext, VulkanFeatures,
    VulkanSettings, DEVICE_ENV, PIPELINE_STATS_ENV,
};
pub use memory::{Buffer, BufferRange, MemoryLocation, DEVICE_LOCAL_MIN_BYTES};
pub use ops::attention::AttentionKernel;
pub use ops::fp8_gemm::Fp8GemmKernel;
pub use ops::mla::{
    MlaCm2Tiling, MlaCoopmatTiling, MlaDecodeKernel, MlaDecodePlan, MlaStreamTiling, MLA_DECODE_ENV,
};
pub use pipeline::{
    EmbeddedShader, PipelineCache, PipelineKey, Shader, ShaderResources, SpecConstant,
    Specialization, SPIRV_DIR_ENV,
};
pub use probe::{probe, VulkanDevice, VulkanProbe};

use ash::vk;
use half::bf16;
use std::sync::Arc;
use tessera_core::ops::attention::{AttentionGradients, AttentionOutput, SparseAttention};
use tessera_core::{
    Backend, BackendKind, BlockMask, DeviceFeatures, DeviceInfo, DriverCode, Error, Fp8Gemm,
    Fp8Quantize, Fp8Quantized, MlaAppend, MlaCache, MlaDecode, MlaDecodeOutput, Result, TensorRef,
    E4M3,
};

/// Every shader embedded in the crate, gathered from the op modules (the tests check them
/// against `shaders/spv/MANIFEST`).
pub mod shaders {
    use crate::pipeline::EmbeddedShader;

    /// Every embedded shader, with the specialization constants its Rust struct declares.
    pub fn all() -> Vec<EmbeddedShader> {
        vec![
            crate::ops::fp8::FP8_QUANTIZE_SCALES.describe(),
            crate::ops::fp8::FP8_QUANTIZE_CODES.describe(),
            crate::ops::fp8_gemm::FP8_GEMM.describe(),
            crate::ops::fp8_gemm::FP8_GEMM_COOPMAT.describe(),
            crate::ops::fp8_gemm::FP8_GEMM_COOPMAT_LARGE.describe(),
            crate::ops::mla::MLA_APPEND.describe(),
            crate::ops::mla::MLA_DECODE.describe(),
            crate::ops::mla::MLA_DECODE_STREAM.describe(),
            crate::ops::mla::MLA_DECODE_STREAM_ROLLED.describe(),
            crate::ops::mla::MLA_DECODE_COOPMAT.describe(),
            crate::ops::mla::MLA_DECODE_CM2.describe(),
            crate::ops::mla::MLA_COMBINE.describe(),
            crate::ops::attention::SPARSE_ATTENTION.describe(),
            crate::ops::attention::SPARSE_ATTENTION_COOPMAT.describe(),
            crate::ops::attention_backward::SPARSE_ATTENTION_BWD_DQ.describe(),
            crate::ops::attention_backward::SPARSE_ATTENTION_BWD_DKDV.describe(),
            crate::arith_check::CHECK_ARITH.describe(),
            crate::arith_check::CHECK_FLOAT_TYPES.describe(),
            crate::ops::copy::COPY_WORDS.describe(),
        ]
    }
}

/// Maps a Vulkan error to Tessera's error type, keeping the `VkResult`:
/// [`Error::OutOfMemory`] for `VK_ERROR_OUT_OF_DEVICE_MEMORY` / `VK_ERROR_OUT_OF_HOST_MEMORY`,
/// [`Error::Driver`] otherwise.
pub(crate) fn vk_error(what: &str, e: vk::Result) -> Error {
    vk_error_sized(what, e, None)
}

/// [`vk_error`] for an allocation of `requested_bytes`.
pub(crate) fn vk_error_sized(what: &str, e: vk::Result, requested_bytes: Option<u64>) -> Error {
    Error::from_driver(
        BackendKind::Vulkan,
        DriverCode::Vulkan(e.as_raw()),
        format!("{what}: {e}"),
        requested_bytes,
    )
}

/// The Vulkan backend on one device.
#[derive(Debug)]
pub struct VulkanBackend {
    info: DeviceInfo,
    one_shot: command::OneShot,
    pipelines: PipelineCache,
    plans: plan::VulkanPlans,
    ctx: Arc<VulkanContext>,
}

impl VulkanBackend {
    /// Opens the Vulkan device (see [`device`] for the choice), or says why it cannot:
    /// [`Error::BackendUnavailable`] when there is no loader, no device or no usable device,
    /// [`Error::Driver`] (with the `VkResult`) when the driver fails. The settings
    /// (`TESSERA_VULKAN_DEVICE`, `TESSERA_VULKAN_PORTABLE`, `TESSERA_VULKAN_SPIRV_DIR`) are
    /// read now, once ([`VulkanSettings::from_env`]).
    pub fn new() -> Result<Self> {
        Self::with_settings(VulkanSettings::from_env())
    }

    /// [`VulkanBackend::new`] with explicit settings (the environment is not read).
    pub fn with_settings(settings: VulkanSettings) -> Result<Self> {
        let ctx = Arc::new(VulkanContext::with_settings(settings)?);
        let f = ctx.features();
        let info = DeviceInfo {
            backend: BackendKind::Vulkan,
            name: f.summary(),
            features: DeviceFeatures {
                // Set below: whether the FP8 GEMM takes its cooperative-matrix path.
                matrix_units: false,
                native_fp8: false,
                subgroup_size: Some(f.subgroup_size),
                shared_memory_bytes: Some(f.max_shared_memory_bytes as usize),
            },
        };
        let mut backend = Self {
            info,
            one_shot: command::OneShot::new(&ctx)?,
            pipelines: PipelineCache::new(&ctx),
            plans: plan::VulkanPlans::load(&f.plan_key(), ctx.settings().plan_dir.as_deref()),
            ctx,
        };
        backend.info.name = format!("{}, {}", backend.info.name, backend.shader_paths());
        backend.info.features.matrix_units = backend.fp8_gemm_uses_cooperative_matrix();
        Ok(backend)
    }

    /// Which shader each op takes on this device, for `tessera info` and the device name:
    /// `FP8 GEMM: cooperative matrix|portable, attention: cooperative matrix|portable (head_dim
    /// 128, blocks of 64), MLA decode: [coopmat (where the layout fits), ][cm2 (bf16, 32+
    /// rows), ]stream|tiled` (the cooperative-matrix shaders where the device runs them, then
    /// the shader of the layouts they do not take; or the value of [`MLA_DECODE_ENV`] where it
    /// overrides the choice).
    pub fn shader_paths(&self) -> String {
        let path = |coopmat: bool| {
            if coopmat {
                "cooperative matrix"
            } else {
                "portable"
            }
        };
        let mla_path = match self.ctx.settings().mla_decode.as_deref() {
            Some(forced) => format!("{forced} ({MLA_DECODE_ENV})"),
            None => {
                // The plan's order: each shader where the device runs it, then the fallback.
                let mut shaders = Vec::new();
                if self.mla_decode_coopmat_unsupported().is_none() {
                    shaders.push("coopmat (where the layout fits)");
                }
                if self.mla_decode_cm2_unsupported().is_none() {
                    shaders.push("cm2 (bf16, 32+ rows)");
                }
                shaders.push(if self.mla_decode_stream_unsupported().is_none() {
                    "stream"
                } else {
                    "tiled"
                });
                shaders.join(", ")
            }
        };
        format!(
            "FP8 GEMM: {}, attention: {}, MLA decode: {mla_path}",
            path(self.fp8_gemm_uses_cooperative_matrix()),
            path(self.attention_uses_cooperative_matrix(64, 128)),
        )
    }

    /// The instance, device and queue: for callers of the device API, who allocate their
    /// buffers ([`Buffer::new`]) and command buffers on it.
    pub fn context(&self) -> &Arc<VulkanContext> {
        &self.ctx
    }

    /// The tuned plans of this device ([`plan::VulkanPlans`]: read when the backend was created,
    /// written by `tessera tune --backend vulkan`).
    pub fn plans(&self) -> &plan::VulkanPlans {
        &self.plans
    }

    /// What the device offers.
    pub fn features(&self) -> &VulkanFeatures {
        self.ctx.features()
    }

    /// The pipelines created so far (one per shader and specialization).
    pub fn pipelines(&self) -> &PipelineCache {
        &self.pipelines
    }

    /// Records with `record` into the backend's own command buffer, submits it and waits: a
    /// convenience for callers of the device API that do not manage command buffers (the host
    /// API runs this way). Calls are serialized.
    pub fn run_and_wait(&self, record: impl FnOnce(vk::CommandBuffer) -> Result<()>) -> Result<()> {
        self.one_shot.run(record)
    }

    pub(crate) fn one_shot(&self) -> &command::OneShot {
        &self.one_shot
    }
}

impl Backend for VulkanBackend {
    fn device(&self) -> &DeviceInfo {
        &self.info
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
