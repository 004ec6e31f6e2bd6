//! The ops: each module holds its shaders, the device API (`record_*`: dispatches recorded into
//! a caller's command buffer over caller-owned buffers) and the host wrapper that
//! [`crate::VulkanBackend`]'s `Backend` implementation calls.

pub mod attention;
pub mod attention_backward;
pub mod copy;
pub mod fp8;
pub mod fp8_gemm;
pub mod mla;

use crate::device::{MatrixComponent, VulkanContext, VulkanFeatures};
use crate::memory::BufferRange;
use tessera_core::{BackendKind, Error, Result};

/// Set to `1` to keep the Vulkan backend on its portable shaders even where cooperative
/// matrices are available (to test that path on such a device).
pub const PORTABLE_ENV: &str = "TESSERA_VULKAN_PORTABLE";

/// Why the crate's cooperative-matrix shaders with A and B of type `ab` cannot run on this
/// device, or `None`: they need 16x16x16 `ab` x `ab` -> f32 cooperative matrices in subgroup
/// scope, a subgroup size fixed at 32 (the shaders split their work by subgroup), and the
/// context not opened with [`crate::VulkanSettings::portable`] ([`PORTABLE_ENV`] = `1`). Each
/// shader adds its own needs (arithmetic types, shared memory, shapes).
pub(crate) fn cooperative_matrix_unsupported(
    f: &VulkanFeatures,
    portable: bool,
    ab: MatrixComponent,
) -> Option<String> {
    if portable {
        Some(format!(
            "the portable shaders were asked for ({PORTABLE_ENV})"
        ))
    } else if !f.cooperative_matrix || !f.has_cooperative_matrix_16x16x16(ab, MatrixComponent::F32)
    {
        let t = format!("{ab:?}").to_lowercase();
        Some(format!(
            "no {t} x {t} -> f32 16x16x16 cooperative matrices in subgroup scope"
        ))
    } else if (f.subgroup_size, f.min_subgroup_size, f.max_subgroup_size) != (32, 32, 32) {
        Some(format!(
            "subgroup size {} ({}..{}): the cooperative-matrix shaders need a fixed 32",
            f.subgroup_size, f.min_subgroup_size, f.max_subgroup_size
        ))
    } else {
        None
    }
}

/// Why the f16 cooperative-matrix shaders (FP8 GEMM, attention) cannot run here, or `None`:
/// [`cooperative_matrix_unsupported`] of f16, and f16 arithmetic.
pub(crate) fn f16_cooperative_matrix_unsupported(ctx: &VulkanContext) -> Option<String> {
    let f = ctx.features();
    cooperative_matrix_unsupported(f, ctx.settings().portable, MatrixComponent::F16)
        .or_else(|| (!f.shader_float16).then(|| "no f16 arithmetic (shaderFloat16)".to_string()))
}

/// Whether the f16 cooperative-matrix shaders can run here
/// ([`f16_cooperative_matrix_unsupported`] is `None`).
pub(crate) fn f16_cooperative_matrix_available(ctx: &VulkanContext) -> bool {
    f16_cooperative_matrix_unsupported(ctx).is_none()
}

/// Checks a buffer range given to the device API and returns the part the shader binds:
/// `needed` bytes rounded up to whole 32-bit words, from the range's offset.
///
/// The range must hold at least that many bytes, start at a multiple of the device's
/// `minStorageBufferOffsetAlignment` and fit one storage descriptor (`maxStorageBufferRange`).
pub(crate) fn bind_range(
    op: &'static str,
    arg: &str,
    range: &BufferRange,
    needed: u64,
    features: &VulkanFeatures,
) -> Result<BufferRange> {
    let words = needed.div_ceil(4) * 4;
    if range.size < words {
        return Err(Error::invalid(
            op,
            arg,
            format!("a buffer range of at least {words} bytes"),
            format!("{} bytes", range.size),
        ));
    }
    let align = features.min_storage_buffer_offset_alignment.max(4);
    if range.offset % align != 0 {
        return Err(Error::invalid(
            op,
            arg,
            format!("an offset that is a multiple of {align} (minStorageBufferOffsetAlignment)"),
            range.offset.to_string(),
        ));
    }
    if words > features.max_storage_buffer_range as u64 {
        return Err(Error::Unsupported {
            op,
            backend: BackendKind::Vulkan,
            reason: format!(
                "`{arg}` needs {words} bytes in one storage buffer, the device allows {}",
                features.max_storage_buffer_range
            ),
        });
    }
    Ok(BufferRange::new(range.buffer, range.offset, words))
}

/// Converts a size to the u32 the shaders index with, or says which argument is too large.
pub(crate) fn to_u32(op: &'static str, arg: &str, v: u64) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Unsupported {
        op,
        backend: BackendKind::Vulkan,
        reason: format!("`{arg}` = {v} exceeds the shaders' 32-bit indexing (at most 2^32 - 1)"),
    })
}
