//! The block-scaled FP8 GEMM (DeepSeek-V3 recipe), bf16 out.
//!
//! Portable path: `fp8_gemm` tiles D in 64x64 blocks per workgroup of 256 invocations, stages
//! 32-wide K slices of A and B through shared memory (decoded from E4M3 with integer operations,
//! 16 KiB), sums each 128-wide K block in f32 and adds it to the total with its two scales.
//!
//! Cooperative-matrix path: `fp8_gemm_coopmat` (same contract) decodes E4M3 to f16 (exactly,
//! as the value times 2^-8, two bytes per integer operation) into shared memory and multiplies
//! with 16x16x16 f16 cooperative matrices accumulating in f32, the next K step's global loads in
//! flight meanwhile; at the end of each 128-wide K block the sums are scaled into f32 total
//! matrices element by element (each element's row known from a probe matrix). Two tilings: 64x64 tiles of D (4 subgroups, K
//! steps of 128) for small M, 128x128 (8 subgroups, K steps of 64) from M = [`LARGE_TILE_M`]
//! (`fp8_gemm_coopmat_large`). It is chosen where the device offers that shape in subgroup scope
//! with a fixed subgroup size of 32 (see [`VulkanBackend::fp8_gemm_uses_cooperative_matrix`]);
//! `TESSERA_VULKAN_PORTABLE=1` turns it off, so that both paths can be tested on one device.

use super::{bind_range, to_u32};
use crate::memory::{Buffer, BufferRange};
use crate::pipeline::{Shader, ShaderResources, SpecConstant, Specialization};
use crate::VulkanBackend;
use ash::vk;
use half::bf16;
use std::marker::PhantomData;
use tessera_core::ops::fp8::FP8_GROUP;
use tessera_core::{Error, Fp8Gemm, GemmGrouping, Result, E4M3};

const OP: &str = "fp8_gemm";

/// Rows and columns of D per workgroup (the shader's `BM`, `BN`).
const TILE: usize = 64;

/// The portable GEMM. Bindings: A, sA, B, sB, D; push constants m, n, k. No specialization
/// constants ([`Fp8GemmSpec`]).
pub const FP8_GEMM: Shader<Fp8GemmSpec> = Shader {
    name: "fp8_gemm",
    spirv: spirv!("fp8_gemm"),
    storage_buffers: 5,
    push_constant_bytes: 12,
    specialization: PhantomData,
};

/// The cooperative-matrix GEMM (f16 operands, f32 accumulation), 64x64 tiles of D. Bindings
/// and push constants as [`FP8_GEMM`]; 128 invocations (four subgroups of 32). No
/// specialization constants ([`Fp8GemmCoopmatSpec`]).
pub const FP8_GEMM_COOPMAT: Shader<Fp8GemmCoopmatSpec> = Shader {
    name: "fp8_gemm_coopmat",
    spirv: spirv!("fp8_gemm_coopmat"),
    storage_buffers: 5,
    push_constant_bytes: 12,
    specialization: PhantomData,
};

/// The cooperative-matrix GEMM with 128x128 tiles of D: 256 invocations (eight subgroups of 32).
/// No specialization constants ([`Fp8GemmCoopmatLargeSpec`]).
pub const FP8_GEMM_COOPMAT_LARGE: Shader<Fp8GemmCoopmatLargeSpec> = Shader {
    name: "fp8_gemm_coopmat_large",
    spirv: spirv!("fp8_gemm_coopmat_large"),
    storage_buffers: 5,
    push_constant_bytes: 12,
    specialization: PhantomData,
};

/// `fp8_gemm.comp` has no specialization constants (its tiling is fixed in the source).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fp8GemmSpec;

impl Specialization for Fp8GemmSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        Vec::new()
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: 256,
            // Two 32 x 64 tiles of f32.
            shared_memory_bytes: 2 * 32 * 64 * 4,
        }
    }
}

/// The `fp8_gemm_coopmat` build of `fp8_gemm_coopmat.comp` (64x64 tiles) has no
/// specialization constants (its tiling comes from macros).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fp8GemmCoopmatSpec;

impl Specialization for Fp8GemmCoopmatSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        Vec::new()
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: 128,
            // A and B tiles of 64 x (128 + 8) f16, a 16 x 16 f32 scratch per subgroup, 64 row
            // scales.
            shared_memory_bytes: 2 * 64 * 136 * 2 + 4 * 256 * 4 + 64 * 4,
        }
    }
}

/// The `fp8_gemm_coopmat_large` build of `fp8_gemm_coopmat.comp` (128x128 tiles) has no
/// specialization constants (its tiling comes from macros).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fp8GemmCoopmatLargeSpec;

impl Specialization for Fp8GemmCoopmatLargeSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        Vec::new()
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: 256,
            // A and B tiles of 128 x (64 + 8) f16, a 16 x 16 f32 scratch per subgroup, 128 row
            // scales.
            shared_memory_bytes: 2 * 128 * 72 * 2 + 8 * 256 * 4 + 128 * 4,
        }
    }
}

/// From this M on, the cooperative-matrix path uses 128x128 tiles of D
/// ([`FP8_GEMM_COOPMAT_LARGE`]): below it, 64x64 tiles keep more workgroups in flight.
pub const LARGE_TILE_M: usize = 512;

pub use super::PORTABLE_ENV;

/// The shader of an FP8 GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fp8GemmKernel {
    /// `fp8_gemm.comp`: any device with subgroup arithmetic; 64x64 tiles of D.
    Portable,
    /// `fp8_gemm_coopmat.comp`: f16 cooperative matrices, 64x64 tiles.
    Coopmat,
    /// `fp8_gemm_coopmat_large`: the same shader built for 128x128 tiles.
    CoopmatLarge,
}

impl Fp8GemmKernel {
    /// Every kernel, the portable one first.
    pub const ALL: [Fp8GemmKernel; 3] = [
        Fp8GemmKernel::Portable,
        Fp8GemmKernel::Coopmat,
        Fp8GemmKernel::CoopmatLarge,
    ];

    /// `portable`, `coopmat` or `coopmat_large`.
    pub fn name(&self) -> &'static str {
        match self {
            Fp8GemmKernel::Portable => "portable",
            Fp8GemmKernel::Coopmat => "coopmat",
            Fp8GemmKernel::CoopmatLarge => "coopmat_large",
        }
    }

    /// The side of the square tile of D each workgroup computes.
    fn tile(&self) -> usize {
        match self {
            Fp8GemmKernel::CoopmatLarge => 2 * TILE,
            _ => TILE,
        }
    }
}

impl VulkanBackend {
    /// Whether [`VulkanBackend::record_fp8_gemm`] uses the cooperative-matrix shader here: the
    /// device has 16x16x16 f16 x f16 -> f32 cooperative matrices in subgroup scope, f16
    /// arithmetic, a fixed subgroup size of 32 and 24 KiB of shared memory, and
    /// `TESSERA_VULKAN_PORTABLE` is not `1`.
    pub fn fp8_gemm_uses_cooperative_matrix(&self) -> bool {
        self.fp8_gemm_kernel_unsupported(Fp8GemmKernel::Coopmat)
            .is_none()
            && self
                .fp8_gemm_kernel_unsupported(Fp8GemmKernel::CoopmatLarge)
                .is_none()
    }

    /// Why this device cannot run `kernel`, or `None` when it can (the cooperative-matrix
    /// builds: see [`VulkanBackend::fp8_gemm_uses_cooperative_matrix`]; the portable one runs
    /// everywhere).
    pub fn fp8_gemm_kernel_unsupported(&self, kernel: Fp8GemmKernel) -> Option<String> {
        let f = self.features();
        let resources = match kernel {
            Fp8GemmKernel::Portable => return None,
            Fp8GemmKernel::Coopmat => Fp8GemmCoopmatSpec.resources(),
            Fp8GemmKernel::CoopmatLarge => Fp8GemmCoopmatLargeSpec.resources(),
        };
        if let Some(reason) = super::f16_cooperative_matrix_unsupported(self.context()) {
            return Some(reason);
        }
        (f.max_shared_memory_bytes < resources.shared_memory_bytes
            || f.max_workgroup_invocations < resources.invocations)
            .then(|| {
                format!(
                    "needs {} bytes of shared memory and {} invocations per workgroup",
                    resources.shared_memory_bytes, resources.invocations
                )
            })
    }

    /// The shader [`VulkanBackend::record_fp8_gemm`] runs `op` with: a plan stored for the op's
    /// shape class ([`crate::plan::VulkanPlans`], `tessera tune --backend vulkan --op gemm`)
    /// where the device runs it, else the cooperative-matrix shader where the device runs it
    /// (128x128 tiles from M = [`LARGE_TILE_M`]), else the portable one.
    pub fn fp8_gemm_plan(&self, op: &Fp8Gemm) -> Result<Fp8GemmKernel> {
        op.validate()?;
        if let Some(kernel) = self.plans().fp8_gemm(&crate::plan::Fp8GemmClass::of(op)) {
            if self.fp8_gemm_kernel_unsupported(kernel).is_none() {
                return Ok(kernel);
            }
            log::info!("the stored FP8 GEMM plan {kernel:?} does not run here");
        }
        Ok(self.fp8_gemm_heuristic(op))
    }

    /// The shader [`VulkanBackend::fp8_gemm_plan`] takes without a stored plan.
    fn fp8_gemm_heuristic(&self, op: &Fp8Gemm) -> Fp8GemmKernel {
        if !self.fp8_gemm_uses_cooperative_matrix() {
            Fp8GemmKernel::Portable
        } else if op.m >= LARGE_TILE_M {
            Fp8GemmKernel::CoopmatLarge
        } else {
            Fp8GemmKernel::Coopmat
        }
    }

    /// Every shader this device runs `op` with, the heuristic's pick first (what `tessera tune
    /// --backend vulkan --op gemm` times).
    pub fn fp8_gemm_candidates(&self, op: &Fp8Gemm) -> Result<Vec<Fp8GemmKernel>> {
        op.validate()?;
        let first = self.fp8_gemm_heuristic(op);
        Ok(std::iter::once(first)
            .chain(
                Fp8GemmKernel::ALL
                    .into_iter()
                    .filter(|&k| k != first && self.fp8_gemm_kernel_unsupported(k).is_none()),
            )
            .collect())
    }

    /// Records `D = A · Bᵀ` with block scales into `cmd`:
    /// `D[m][n] = Σ_kb sA[m][kb] · sB[n/128][kb] · Σ_{k in block kb} A[m][k] · B[n][k]`,
    /// accumulated in f32 per 128-wide K block, rounded to bf16 (nearest even).
    ///
    /// Buffer ranges (see [`BufferRange`]), row-major: `a` E4M3 `[m, k]` (`m · k` bytes),
    /// `a_scales` f32 `[m, ceil(k/128)]`, `b` E4M3 `[n, k]`, `b_scales` f32
    /// `[ceil(n/128), ceil(k/128)]`, `d` bf16 `[m, n]` (`2 · m · n` bytes, written). Each range
    /// holds at least that many bytes, rounded up to a multiple of 4. The shape must satisfy
    /// [`Fp8Gemm::validate`] (n a multiple of 8, k of 16); scale values are not checked.
    ///
    /// Synchronization: the caller records a barrier making the writes of the inputs visible to
    /// compute-shader reads before this, and one from compute-shader writes to whatever reads
    /// `d` after it; then submits and keeps the buffers alive until the work completes.
    ///
    /// # Safety
    /// `cmd` must be a command buffer of this backend's device ([`VulkanBackend::context`]) in
    /// the recording state, and the ranges must lie in live buffers of that device created with
    /// `STORAGE_BUFFER` usage.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn record_fp8_gemm(
        &self,
        cmd: vk::CommandBuffer,
        op: &Fp8Gemm,
        a: BufferRange,
        a_scales: BufferRange,
        b: BufferRange,
        b_scales: BufferRange,
        d: BufferRange,
    ) -> Result<()> {
        let kernel = self.fp8_gemm_plan(op)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.record_fp8_gemm_with(cmd, op, kernel, a, a_scales, b, b_scales, d) }
    }

    /// [`VulkanBackend::record_fp8_gemm`] with the shader given (tests, tuning):
    /// [`Error::Unsupported`] where the device cannot run it.
    ///
    /// # Safety
    /// As [`VulkanBackend::record_fp8_gemm`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn record_fp8_gemm_with(
        &self,
        cmd: vk::CommandBuffer,
        op: &Fp8Gemm,
        kernel: Fp8GemmKernel,
        a: BufferRange,
        a_scales: BufferRange,
        b: BufferRange,
        b_scales: BufferRange,
        d: BufferRange,
    ) -> Result<()> {
        op.validate()?;
        if let Some(reason) = self.fp8_gemm_kernel_unsupported(kernel) {
            return Err(Error::Unsupported {
                op: OP,
                backend: tessera_core::BackendKind::Vulkan,
                reason: format!("the {} shader {reason}", kernel.name()),
            });
        }
        if op.grouping != GemmGrouping::Single {
            return Err(Error::Unsupported {
                op: OP,
                backend: tessera_core::BackendKind::Vulkan,
                reason: format!("grouping {:?}", op.grouping),
            });
        }
        let f = self.features();
        let (m, n, k) = (op.m as u64, op.n as u64, op.k as u64);
        let a = bind_range(OP, "a", &a, m * k, f)?;
        let a_scales = bind_range(OP, "a_scales", &a_scales, 4 * op.a_scales_len() as u64, f)?;
        let b = bind_range(OP, "b", &b, n * k, f)?;
        let b_scales = bind_range(OP, "b_scales", &b_scales, 4 * op.b_scales_len() as u64, f)?;
        let d = bind_range(OP, "d", &d, 2 * m * n, f)?;
        // The shaders index bytes of A and B and elements of D with 32-bit integers.
        to_u32(OP, "m * k", m * k)?;
        to_u32(OP, "n * k", n * k)?;
        to_u32(OP, "m * n", m * n)?;
        let tile = kernel.tile();
        let groups_x = op.n.div_ceil(tile) as u64;
        let groups_y = op.m.div_ceil(tile) as u64;
        if groups_x > f.max_workgroup_count[0] as u64 || groups_y > f.max_workgroup_count[1] as u64
        {
            return Err(Error::Unsupported {
                op: OP,
                backend: tessera_core::BackendKind::Vulkan,
                reason: format!(
                    "{groups_x} x {groups_y} workgroups exceed the device's limits {:?}",
                    f.max_workgroup_count
                ),
            });
        }
        let pipelines = self.pipelines();
        let pipeline = match kernel {
            Fp8GemmKernel::CoopmatLarge => {
                pipelines.get(&FP8_GEMM_COOPMAT_LARGE, &Fp8GemmCoopmatLargeSpec)?
            }
            Fp8GemmKernel::Coopmat => pipelines.get(&FP8_GEMM_COOPMAT, &Fp8GemmCoopmatSpec)?,
            Fp8GemmKernel::Portable => pipelines.get(&FP8_GEMM, &Fp8GemmSpec)?,
        };
        // SAFETY: the caller guarantees that `cmd` records on this device and that the ranges
        // are valid storage buffers; the ranges were checked to hold what the shader accesses.
        unsafe {
            pipeline.record(
                cmd,
                &[a, a_scales, b, b_scales, d],
                &[m as u32, n as u32, k as u32],
                [groups_x as u32, groups_y as u32, 1],
            )
        }
    }

    /// The host API: validates, uploads, runs, downloads.
    pub(crate) fn fp8_gemm_host(
        &self,
        op: &Fp8Gemm,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
    ) -> Result<Vec<bf16>> {
        op.validate_args(a, a_scales, b, b_scales)?;
        debug_assert_eq!(FP8_GROUP, 128);
        let ctx = self.context();
        let a_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(a))?;
        let sa_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(a_scales))?;
        let b_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(b))?;
        let sb_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(b_scales))?;
        let len = op.m * op.n;
        // D starts as NaN so that an element the shader fails to write shows up.
        let d_buf = Buffer::filled(ctx, 2 * len, &bf16::NAN.to_bits().to_le_bytes())?;
        self.one_shot().run(|cmd| {
            // SAFETY: `cmd` is the backend's own command buffer, recording; the buffers are
            // live storage buffers of this device, kept until `run` has waited.
            unsafe {
                self.record_fp8_gemm(
                    cmd,
                    op,
                    a_buf.range(),
                    sa_buf.range(),
                    b_buf.range(),
                    sb_buf.range(),
                    d_buf.range(),
                )
            }
        })?;
        let bytes = d_buf.read(0, 2 * len)?;
        Ok(bytes
            .chunks_exact(2)
            .map(|h| bf16::from_bits(u16::from_le_bytes([h[0], h[1]])))
            .collect())
    }
}
