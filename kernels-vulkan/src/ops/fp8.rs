//! The FP8 quantizers (1x128 per token, 128x128 blocks; float or power-of-two scales), bit-exact
//! with the reference.
//!
//! Two passes: `fp8_quantize_scales` (one workgroup per group: amax with subgroup and shared
//! memory reductions, then the scale) and `fp8_quantize_codes` (one invocation per 4 output
//! codes). The quotient `x / s` and every conversion use integer arithmetic (see
//! `shaders/common.glsl`), so codes and scales equal the reference's on every device.

use super::{bind_range, to_u32};
use crate::memory::{Buffer, BufferRange};
use crate::pipeline::{
    compute_barrier, linear_groups, Shader, ShaderResources, SpecConstant, Specialization,
};
use crate::VulkanBackend;
use ash::vk;
use std::marker::PhantomData;
use tessera_core::ops::fp8::FP8_AMAX_FLOOR;
use tessera_core::{DType, Error, Fp8Quantize, Fp8Quantized, Result, ScaleRule, TensorRef, E4M3};

const OP: &str = "fp8_quantize";

/// Invocations per workgroup of both passes (the minimum every Vulkan device supports).
const WORKGROUP: u32 = 128;

/// Pass 1: the scales. Bindings: x, scales. Specialization: [`Fp8QuantizeScalesSpec`].
pub const FP8_QUANTIZE_SCALES: Shader<Fp8QuantizeScalesSpec> = Shader {
    name: "fp8_quantize_scales",
    spirv: spirv!("fp8_quantize_scales"),
    storage_buffers: 2,
    push_constant_bytes: 24,
    specialization: PhantomData,
};

/// Pass 2: the codes. Bindings: x, scales, values. Specialization: [`Fp8QuantizeCodesSpec`].
pub const FP8_QUANTIZE_CODES: Shader<Fp8QuantizeCodesSpec> = Shader {
    name: "fp8_quantize_codes",
    spirv: spirv!("fp8_quantize_codes"),
    storage_buffers: 3,
    push_constant_bytes: 16,
    specialization: PhantomData,
};

/// The element type of the quantizers' input (the shaders' `IN_KIND`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Fp8InputKind {
    /// f32 (`IN_KIND` 0).
    #[default]
    F32,
    /// f16, two per 32-bit word (`IN_KIND` 1).
    F16,
    /// bf16, two per 32-bit word (`IN_KIND` 2).
    Bf16,
}

impl Fp8InputKind {
    /// The kind of an input type, or [`Error::InvalidArgument`] naming `x` for a type the
    /// quantizers do not take.
    pub fn of(input: DType) -> Result<Self> {
        match input {
            DType::F32 => Ok(Self::F32),
            DType::F16 => Ok(Self::F16),
            DType::BF16 => Ok(Self::Bf16),
            other => Err(Error::invalid(
                OP,
                "x",
                "dtype f32, f16 or bf16",
                other.name(),
            )),
        }
    }

    /// The value of the shaders' `IN_KIND`.
    fn code(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Bf16 => 2,
        }
    }
}

/// The specialization constants of `fp8_quantize_scales.comp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fp8QuantizeScalesSpec {
    /// Invocations per workgroup.
    pub workgroup_size: u32,
    /// The input's element type.
    pub input: Fp8InputKind,
    /// Round each scale up to a power of two.
    pub power_of_two_scales: bool,
    /// Most subgroups per workgroup (`workgroup_size` / the device's smallest subgroup size):
    /// the length of the shader's reduction array.
    pub max_subgroups: u32,
}

impl Default for Fp8QuantizeScalesSpec {
    fn default() -> Self {
        Self {
            workgroup_size: WORKGROUP,
            input: Fp8InputKind::F32,
            power_of_two_scales: false,
            max_subgroups: 32,
        }
    }
}

impl Specialization for Fp8QuantizeScalesSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![
            SpecConstant::local_size_x(0, self.workgroup_size),
            SpecConstant::new(1, "IN_KIND", self.input.code()),
            SpecConstant::new(2, "POW2", u32::from(self.power_of_two_scales)),
            SpecConstant::new(3, "MAX_SUBGROUPS", self.max_subgroups),
        ]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.workgroup_size,
            shared_memory_bytes: 4 * self.max_subgroups,
        }
    }
}

/// The specialization constants of `fp8_quantize_codes.comp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fp8QuantizeCodesSpec {
    /// Invocations per workgroup.
    pub workgroup_size: u32,
    /// The input's element type.
    pub input: Fp8InputKind,
}

impl Default for Fp8QuantizeCodesSpec {
    fn default() -> Self {
        Self {
            workgroup_size: WORKGROUP,
            input: Fp8InputKind::F32,
        }
    }
}

impl Specialization for Fp8QuantizeCodesSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![
            SpecConstant::local_size_x(0, self.workgroup_size),
            SpecConstant::new(1, "IN_KIND", self.input.code()),
        ]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.workgroup_size,
            shared_memory_bytes: 0,
        }
    }
}

impl VulkanBackend {
    /// Records the quantizer into `cmd`: `x` (`[rows, cols]` of `input`: f32, f16 or bf16,
    /// packed little-endian) into `values` (E4M3 `[rows, cols]`, one byte each) and `scales`
    /// (f32, [`Fp8Quantize::scales_shape`], row-major), as two dispatches with a barrier
    /// between them.
    ///
    /// Buffer ranges (see [`BufferRange`]): `x` holds at least `rows · cols · size_of(input)`
    /// bytes, `values` at least `rows · cols`, each rounded up to a multiple of 4 (the shaders
    /// read and write 32-bit words; the padding bytes of `values` are written as 0), and
    /// `scales` at least `4 · scale_rows · scale_cols`. Shapes, types and ranges are checked;
    /// values are not (non-finite inputs give non-finite scales: the host API rejects them).
    ///
    /// Synchronization: the caller records a barrier making the writes of `x` visible to
    /// compute-shader reads before this, and one from compute-shader writes to whatever reads
    /// `values` and `scales` after it; then submits and keeps the buffers alive until the work
    /// completes.
    ///
    /// # Safety
    /// `cmd` must be a command buffer of this backend's device ([`VulkanBackend::context`]) in
    /// the recording state, and the ranges must lie in live buffers of that device created with
    /// `STORAGE_BUFFER` usage.
    pub unsafe fn record_fp8_quantize(
        &self,
        cmd: vk::CommandBuffer,
        op: &Fp8Quantize,
        input: DType,
        x: BufferRange,
        values: BufferRange,
        scales: BufferRange,
    ) -> Result<()> {
        op.validate()?;
        let input_kind = Fp8InputKind::of(input)?;
        let f = self.features();
        let n = op.rows as u64 * op.cols as u64;
        let (sr, sc) = op.scales_shape();
        let groups = sr as u64 * sc as u64;
        let x = bind_range(OP, "x", &x, n * input.size_in_bytes() as u64, f)?;
        let values = bind_range(OP, "values", &values, n, f)?;
        let scales = bind_range(OP, "scales", &scales, 4 * groups, f)?;
        // Element indices are 32-bit in the shaders (and f16 inputs are read in pairs).
        to_u32(OP, "rows * cols", n + 4)?;
        let rows = to_u32(OP, "rows", op.rows as u64)?;
        let cols = to_u32(OP, "cols", op.cols as u64)?;
        let words = n.div_ceil(4);
        let scales_spec = Fp8QuantizeScalesSpec {
            workgroup_size: WORKGROUP,
            input: input_kind,
            power_of_two_scales: op.scale_rule == ScaleRule::PowerOfTwo,
            max_subgroups: WORKGROUP.div_ceil(f.min_subgroup_size.max(1)),
        };
        let codes_spec = Fp8QuantizeCodesSpec {
            workgroup_size: WORKGROUP,
            input: input_kind,
        };
        let scales_pass = self.pipelines().get(&FP8_QUANTIZE_SCALES, &scales_spec)?;
        let codes_pass = self.pipelines().get(&FP8_QUANTIZE_CODES, &codes_spec)?;
        let group_rows = op.group_rows() as u32;
        let scale_groups = linear_groups(groups, f.max_workgroup_count)?;
        let code_groups = linear_groups(words.div_ceil(WORKGROUP as u64), f.max_workgroup_count)?;
        // SAFETY: the caller guarantees that `cmd` records on this device and that the ranges
        // are valid storage buffers; the ranges were checked to hold what the shaders access.
        unsafe {
            scales_pass.record(
                cmd,
                &[x, scales],
                &[
                    rows,
                    cols,
                    group_rows,
                    groups as u32,
                    FP8_AMAX_FLOOR.to_bits(),
                    E4M3::MAX.to_bits(),
                ],
                scale_groups,
            )?;
            compute_barrier(self.context().device(), cmd);
            codes_pass.record(
                cmd,
                &[x, scales, values],
                &[rows, cols, group_rows, words as u32],
                code_groups,
            )?;
        }
        Ok(())
    }

    /// The host API: validates, uploads, runs, downloads.
    pub(crate) fn fp8_quantize_host(
        &self,
        op: &Fp8Quantize,
        x: TensorRef<'_>,
    ) -> Result<Fp8Quantized> {
        op.validate_args(x)?;
        let ctx = self.context();
        let (sr, sc) = op.scales_shape();
        let n = op.rows * op.cols;
        let x_buf = Buffer::from_bytes(ctx, x.as_bytes())?;
        // Outputs start as NaN so that an element the shaders fail to write shows up.
        let values = Buffer::filled(ctx, n, &[E4M3::NAN.to_bits()])?;
        let scales = Buffer::filled(ctx, 4 * sr * sc, &f32::NAN.to_le_bytes())?;
        self.one_shot().run(|cmd| {
            // SAFETY: `cmd` is the backend's own command buffer, recording; the buffers are
            // live storage buffers of this device, kept until `run` has waited.
            unsafe {
                self.record_fp8_quantize(
                    cmd,
                    op,
                    x.dtype(),
                    x_buf.range(),
                    values.range(),
                    scales.range(),
                )
            }
        })?;
        let codes = values.read(0, n)?;
        let scale_bytes = scales.read(0, 4 * sr * sc)?;
        Ok(Fp8Quantized {
            values: codes.into_iter().map(E4M3::from_bits).collect(),
            scales: scale_bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        })
    }
}
