//! The cooperative-matrix decode shader (`mla_decode_coopmat.comp`): its specialization
//! constants, what it needs from the device, and its launch for a decode.
//!
//! One workgroup of 4 subgroups of 32 per (request, group of 16 query rows, key split). The 16
//! rows are the M dimension of every product (bf16 x bf16 -> f32, 16x16x16 in subgroup
//! scope): subgroup `s` keeps the query steps `s, s + 4, ...` of the 576-wide contraction as A
//! matrices in registers and the output column blocks `s, s + 4, ...` as f32 accumulators. Per
//! tile of keys the bf16 records go to shared memory as they are; the partial scores of the
//! four subgroups are summed by the softmax invocations (8 per row), whose bf16 probabilities
//! and rescale factors go back through shared memory to the `P · V` products. FP8 records are
//! decoded to bf16 (exactly) on their way into shared memory, where their latent width is a
//! multiple of 512 (each part of a record then starts at a 16-byte boundary).

use super::MlaCoopmatTiling;
use crate::device::{MatrixComponent, VulkanFeatures};
use crate::pipeline::{Shader, ShaderResources, SpecConstant, Specialization};
use std::marker::PhantomData;
use tessera_core::{Error, MlaCacheFormat, MlaDecode, Result};

/// Query rows per workgroup: the M dimension of the matrices.
pub(super) const ROWS: u64 = 16;
/// Subgroups (of 32) per workgroup.
const SUBGROUPS: u32 = 4;
/// Keys per shared-memory tile the shader can be built for, largest first.
pub(super) const KEY_TILES: [u32; 2] = [32, 16];

/// Every tiling the shader can be built with: each key tile, prefetched first.
pub(super) fn tilings() -> impl Iterator<Item = MlaCoopmatTiling> {
    KEY_TILES
        .into_iter()
        .flat_map(|key_tile| [true, false].map(|prefetch| MlaCoopmatTiling { key_tile, prefetch }))
}
/// Workgroups that run at once per compute unit (a guess for the split count: NVIDIA's SMs
/// hold up to four of 48 KiB of shared memory, fewer with the registers of a prefetched tile).
const RESIDENT_PER_COMPUTE_UNIT: u64 = 2;

/// Pass 1 of the decode, cooperative-matrix variant. Bindings: cache, q, block_table, seq_lens,
/// workspace. Specialization: [`MlaDecodeCoopmatSpec`].
pub const MLA_DECODE_COOPMAT: Shader<MlaDecodeCoopmatSpec> = Shader {
    name: "mla_decode_coopmat",
    spirv: spirv!("mla_decode_coopmat"),
    storage_buffers: 5,
    push_constant_bytes: 44,
    specialization: PhantomData,
};

/// The specialization constants of `mla_decode_coopmat.comp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MlaDecodeCoopmatSpec {
    /// Subgroups of 32 per workgroup.
    pub subgroups: u32,
    /// Keys per shared-memory tile (16 or 32).
    pub key_tile: u32,
    /// The layout's latent width (a multiple of 16).
    pub latent: u32,
    /// The layout's rope width (a multiple of 16).
    pub rope: u32,
    /// Fetch the next tile's records into registers while the current one is computed.
    pub prefetch: bool,
    /// FP8 records (else bf16).
    pub fp8: bool,
}

impl Default for MlaDecodeCoopmatSpec {
    /// The defaults of the shader source: DeepSeek-V3's layout, 4 subgroups, 32-key tiles,
    /// prefetched.
    fn default() -> Self {
        Self {
            subgroups: SUBGROUPS,
            key_tile: 32,
            latent: 512,
            rope: 64,
            prefetch: true,
            fp8: false,
        }
    }
}

impl Specialization for MlaDecodeCoopmatSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![
            SpecConstant::local_size_x(0, self.invocations()),
            SpecConstant::new(1, "KT", self.key_tile),
            SpecConstant::new(2, "LATENT", self.latent),
            SpecConstant::new(3, "ROPE", self.rope),
            SpecConstant::new(4, "PREFETCH", u32::from(self.prefetch)),
            SpecConstant::new(5, "FP8", u32::from(self.fp8)),
        ]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.invocations(),
            shared_memory_bytes: self.shared_memory_bytes(),
        }
    }
}

impl MlaDecodeCoopmatSpec {
    /// Invocations per workgroup.
    pub(crate) fn invocations(&self) -> u32 {
        32 * self.subgroups
    }

    /// The shader's shared memory (its header has the same sum): the tile's bf16 records
    /// (rows padded by 8 values), the subgroups' f32 partial scores (rows padded by 4), the
    /// bf16 probabilities (rows padded by 8), the keys' flags and a 16 x 16 f32 matrix of row
    /// factors.
    pub(crate) fn shared_memory_bytes(&self) -> u32 {
        let rows = ROWS as u32;
        let records = 2 * self.key_tile * (self.latent + self.rope + 8);
        let scores = 4 * self.subgroups * rows * (self.key_tile + 4);
        let probabilities = 2 * rows * (self.key_tile + 8);
        records + scores + probabilities + 4 * self.key_tile + 4 * rows * 16
    }
}

/// How the cooperative-matrix shader runs a decode: its specialization, the row groups and the
/// key splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CoopmatLaunch {
    pub spec: MlaDecodeCoopmatSpec,
    pub row_groups: u64,
    pub splits: u64,
}

/// Why the device cannot run the cooperative-matrix shader at all, if it cannot: it needs
/// bf16 x bf16 -> f32 16x16x16 matrices in subgroup scope (`VK_KHR_cooperative_matrix` and
/// `VK_KHR_shader_bfloat16`, enabled), subgroup shuffles, a subgroup size fixed at 32, 128
/// invocations per workgroup, and buffer offsets aligned to 16 bytes (it reads 16-byte words).
/// [`crate::VulkanSettings::portable`] rules it out too.
pub(super) fn unsupported(f: &VulkanFeatures, portable: bool) -> Option<String> {
    if let Some(reason) =
        crate::ops::cooperative_matrix_unsupported(f, portable, MatrixComponent::BF16)
    {
        Some(reason)
    } else if !f.bfloat16 {
        Some("VK_KHR_shader_bfloat16's bf16 matrices are not enabled".into())
    } else if !f.subgroup_shuffle {
        Some("no subgroup shuffles in compute shaders".into())
    } else if f.max_workgroup_invocations < 32 * SUBGROUPS {
        Some(format!(
            "{} invocations per workgroup, fewer than {}",
            f.max_workgroup_invocations,
            32 * SUBGROUPS
        ))
    } else if f.min_storage_buffer_offset_alignment % 16 != 0 {
        Some(format!(
            "minStorageBufferOffsetAlignment {}: the shader reads 16-byte words",
            f.min_storage_buffer_offset_alignment
        ))
    } else {
        None
    }
}

fn unsupported_error(reason: String) -> Error {
    super::shader_unsupported("the cooperative-matrix decode shader", reason)
}

/// Why `op` cannot run on the shader on this device (with `tiling`), if it cannot.
fn spec_for(
    f: &VulkanFeatures,
    op: &MlaDecode,
    tiling: &MlaCoopmatTiling,
) -> Result<MlaDecodeCoopmatSpec> {
    let l = &op.layout;
    let fp8 = l.format == MlaCacheFormat::Fp8;
    if fp8 && l.latent_dim % 512 != 0 {
        return Err(unsupported_error(format!(
            "FP8 records with latent_dim {}: the shader needs a multiple of 512 (16-byte parts)",
            l.latent_dim
        )));
    }
    // The layout's own rules (MlaCacheLayout::validate) make latent_dim and rope_dim multiples
    // of 16, the matrices' width.
    super::check_choice("tiling.key_tile", tiling.key_tile, &KEY_TILES)?;
    let spec = MlaDecodeCoopmatSpec {
        subgroups: SUBGROUPS,
        key_tile: tiling.key_tile,
        latent: l.latent_dim as u32,
        rope: l.rope_dim as u32,
        prefetch: tiling.prefetch,
        fp8,
    };
    if spec.shared_memory_bytes() > f.max_shared_memory_bytes {
        return Err(unsupported_error(format!(
            "{}-key tiles need {} bytes of shared memory for latent_dim + rope_dim = {}, the \
             device has {}",
            tiling.key_tile,
            spec.shared_memory_bytes(),
            l.qk_dim(),
            f.max_shared_memory_bytes
        )));
    }
    Ok(spec)
}

/// The default tiling: the largest key tile that fits the shared memory; prefetched for FP8
/// records only. On the H200 at h_q 16 (2026-12-01): bf16 records 1.2-1.3 TB/s loaded when
/// needed against 1.0-1.1 prefetched (72 registers of a prefetched tile cost more than the
/// overlap gains); FP8 records (44 registers) 740-810 GB/s prefetched against 655-692.
pub(super) fn default_tiling(f: &VulkanFeatures, op: &MlaDecode) -> Result<MlaCoopmatTiling> {
    let mut last = None;
    for key_tile in KEY_TILES {
        let tiling = MlaCoopmatTiling {
            key_tile,
            prefetch: op.layout.format == MlaCacheFormat::Fp8,
        };
        match spec_for(f, op, &tiling) {
            Ok(_) => return Ok(tiling),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| unsupported_error("no tiling fits".into())))
}

/// The launch of `op` with `tiling` on this device.
pub(super) fn launch(
    f: &VulkanFeatures,
    portable: bool,
    op: &MlaDecode,
    tiling: &MlaCoopmatTiling,
) -> Result<CoopmatLaunch> {
    if let Some(reason) = unsupported(f, portable) {
        return Err(unsupported_error(reason));
    }
    let spec = spec_for(f, op, tiling)?;
    let row_groups = ((op.s_q * op.heads) as u64).div_ceil(ROWS);
    Ok(CoopmatLaunch {
        spec,
        row_groups,
        splits: super::key_splits(f, op, row_groups, spec.key_tile, RESIDENT_PER_COMPUTE_UNIT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_and_shared_memory() {
        let spec = MlaDecodeCoopmatSpec::default();
        let v: Vec<(u32, u32)> = spec.constants().iter().map(|c| (c.id, c.value)).collect();
        assert_eq!(
            v,
            vec![(0, 128), (1, 32), (2, 512), (3, 64), (4, 1), (5, 0)]
        );
        // DeepSeek-V3, 32 keys: records 32 x 584 bf16, scores 4 x 16 x 36 f32, probabilities
        // 16 x 40 bf16, 32 flags, 16 x 16 f32 row factors: within NVIDIA's 48 KiB.
        assert_eq!(
            spec.shared_memory_bytes(),
            32 * 584 * 2 + 4 * 16 * 36 * 4 + 16 * 40 * 2 + 32 * 4 + 16 * 16 * 4
        );
        assert!(spec.shared_memory_bytes() <= 48 * 1024);
        let small = MlaDecodeCoopmatSpec {
            key_tile: 16,
            ..spec
        };
        assert_eq!(
            small.shared_memory_bytes(),
            16 * 584 * 2 + 4 * 16 * 20 * 4 + 16 * 24 * 2 + 16 * 4 + 16 * 16 * 4
        );
    }
}
