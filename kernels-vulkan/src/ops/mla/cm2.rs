//! The `VK_NV_cooperative_matrix2` decode shader (`mla_decode_cm2.comp`): its specialization
//! constants, what it needs from the device, and its launch for a decode.
//!
//! One workgroup per (request, group of `rows` query rows, key split); the rows are the M
//! dimension of workgroup-scope bf16 x bf16 -> f32 products whose operands are loaded straight
//! from the paged cache by tensor addressing (the records transposed for the scores), with the
//! online softmax by row reductions and per-element operations. bf16 records only. The matrix
//! sizes must be multiples of the granularities the driver lists for the workgroup size
//! ([`crate::FlexibleMatrixConfig`]): on the H200, 32 rows at 128 and 256 invocations (a
//! 16-row product at 128 invocations silently gives zeros there, which is why the plan checks
//! the list rather than trusting the extension's presence).

use super::MlaCm2Tiling;
use crate::device::{FlexibleMatrixConfig, MatrixComponent, VulkanFeatures};
use crate::pipeline::{Shader, ShaderResources, SpecConstant, Specialization};
use std::marker::PhantomData;
use tessera_core::{Error, MlaCacheFormat, MlaDecode, Result};

/// Query rows per workgroup the shader is built for, with the workgroup size, the preferred
/// key tile and output columns per accumulator of each (measured on the H200, 2026-12-01, bf16
/// records: 32 rows with 128 invocations, 32 keys and 256 columns at s_q 2, h_q 16; 64 rows with
/// 256 invocations, 64 keys and 128 columns at h_q 128).
const ROW_CHOICES: [RowChoice; 2] = [
    RowChoice {
        rows: 32,
        invocations: 128,
        key_tile: 32,
        value_columns: 256,
    },
    RowChoice {
        rows: 64,
        invocations: 256,
        key_tile: 64,
        value_columns: 128,
    },
];

/// Key tiles the shader can be built for (each must divide the page size).
pub(super) const KEY_TILES: [u32; 3] = [64, 32, 16];

/// Columns of q and of the records per score product, largest first (one that divides
/// `latent_dim + rope_dim` is taken).
const SCORE_COLUMNS: [u32; 4] = [64, 48, 32, 16];

/// Workgroups that run at once per compute unit (for the split count; measured on the H200:
/// 4 fills it better than 2 at 32 rows, and no count changes much at 64).
const RESIDENT_PER_COMPUTE_UNIT: u64 = 4;

#[derive(Clone, Copy, Debug)]
struct RowChoice {
    rows: u32,
    invocations: u32,
    key_tile: u32,
    value_columns: u32,
}

/// Pass 1 of the decode, `VK_NV_cooperative_matrix2` variant. Bindings: cache, q, block_table,
/// seq_lens, workspace. Specialization: [`MlaDecodeCm2Spec`]. SPIR-V 1.6 (Vulkan 1.3).
pub const MLA_DECODE_CM2: Shader<MlaDecodeCm2Spec> = Shader {
    name: "mla_decode_cm2",
    spirv: spirv!("mla_decode_cm2"),
    storage_buffers: 5,
    push_constant_bytes: 44,
    specialization: PhantomData,
};

/// The specialization constants of `mla_decode_cm2.comp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MlaDecodeCm2Spec {
    /// Invocations per workgroup.
    pub invocations: u32,
    /// Keys per tile (divides the page size).
    pub key_tile: u32,
    /// The layout's latent width.
    pub latent: u32,
    /// The layout's rope width.
    pub rope: u32,
    /// Query rows per workgroup (the matrices' M).
    pub rows: u32,
    /// Columns of q and of the records per score product (divides `latent + rope`).
    pub score_columns: u32,
    /// Output columns per accumulator (divides `latent`).
    pub value_columns: u32,
}

impl Default for MlaDecodeCm2Spec {
    /// The defaults of the shader source: DeepSeek-V3's layout, 32 rows, 128 invocations,
    /// 32-key tiles, 64 score columns, 256 output columns per accumulator.
    fn default() -> Self {
        Self {
            invocations: 128,
            key_tile: 32,
            latent: 512,
            rope: 64,
            rows: 32,
            score_columns: 64,
            value_columns: 256,
        }
    }
}

impl Specialization for MlaDecodeCm2Spec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![
            SpecConstant::local_size_x(0, self.invocations),
            SpecConstant::new(1, "KT", self.key_tile),
            SpecConstant::new(2, "LATENT", self.latent),
            SpecConstant::new(3, "ROPE", self.rope),
            SpecConstant::new(4, "ROWS", self.rows),
            SpecConstant::new(5, "CD", self.score_columns),
            SpecConstant::new(6, "CV", self.value_columns),
        ]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.invocations,
            // No shared memory of its own (the driver's staging for the matrices is its own).
            shared_memory_bytes: 0,
        }
    }
}

impl MlaDecodeCm2Spec {
    /// Whether every product of the shader fits `config`'s granularities: scores `[rows, KT]`
    /// over `score_columns`, outputs `[rows, value_columns]` over `KT`.
    fn fits(&self, config: &FlexibleMatrixConfig) -> bool {
        config.fits(self.rows, self.key_tile, self.score_columns)
            && config.fits(self.rows, self.value_columns, self.key_tile)
    }
}

/// How the shader runs a decode: its specialization, the row groups and the key splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cm2Launch {
    pub spec: MlaDecodeCm2Spec,
    pub row_groups: u64,
    pub splits: u64,
}

/// Why the device cannot run the shader at all, if it cannot: it needs `VK_NV_cooperative_matrix2`
/// (enabled, with its flexible dimensions), bf16 matrices (`VK_KHR_shader_bfloat16`), Vulkan 1.3
/// (SPIR-V 1.6) and a workgroup-scope bf16 x bf16 -> f32 configuration for one of the shader's
/// workgroup sizes. [`crate::VulkanSettings::portable`] rules it out too.
pub(super) fn unsupported(f: &VulkanFeatures, portable: bool) -> Option<String> {
    if portable {
        Some("the context is portable (no vendor extensions)".into())
    } else if !f.cooperative_matrix2_nv {
        Some("VK_NV_cooperative_matrix2 is not enabled".into())
    } else if f.api_version < (1, 3, 0) {
        Some(format!(
            "Vulkan {}.{}: the shader is SPIR-V 1.6 (Vulkan 1.3)",
            f.api_version.0, f.api_version.1
        ))
    } else if !f.bfloat16 {
        Some("VK_KHR_shader_bfloat16's bf16 matrices are not enabled".into())
    } else if ROW_CHOICES
        .iter()
        .all(|c| config(f, c.invocations).is_none())
    {
        Some(format!(
            "no workgroup-scope bf16 x bf16 -> f32 configuration for {:?} invocations",
            ROW_CHOICES.map(|c| c.invocations)
        ))
    } else {
        None
    }
}

fn config(f: &VulkanFeatures, invocations: u32) -> Option<FlexibleMatrixConfig> {
    if invocations > f.max_workgroup_invocations {
        return None;
    }
    f.flexible_workgroup_config(invocations, MatrixComponent::BF16, MatrixComponent::F32)
}

fn unsupported_error(reason: String) -> Error {
    super::shader_unsupported("the cooperative-matrix-2 decode shader", reason)
}

/// The specialization for `op` with `tiling` on this device, or why there is none.
fn spec_for(f: &VulkanFeatures, op: &MlaDecode, tiling: &MlaCm2Tiling) -> Result<MlaDecodeCm2Spec> {
    let l = &op.layout;
    if l.format != MlaCacheFormat::Bf16 {
        return Err(unsupported_error(
            "FP8 records (the shader reads bf16 records)".into(),
        ));
    }
    let Some(choice) = ROW_CHOICES.iter().find(|c| c.rows == tiling.rows) else {
        let choices = ROW_CHOICES.map(|c| c.rows);
        return Err(super::choice_error("tiling.rows", tiling.rows, &choices));
    };
    super::check_choice("tiling.key_tile", tiling.key_tile, &KEY_TILES)?;
    if l.page_size % tiling.key_tile as usize != 0 {
        return Err(unsupported_error(format!(
            "{}-key tiles need a page size that is a multiple of it, not {}",
            tiling.key_tile, l.page_size
        )));
    }
    let Some(cfg) = config(f, choice.invocations) else {
        return Err(unsupported_error(format!(
            "no workgroup-scope bf16 x bf16 -> f32 configuration for {} invocations",
            choice.invocations
        )));
    };
    let d = l.qk_dim() as u32;
    let latent = l.latent_dim as u32;
    // The first score width dividing D and the widest output width (at most the choice's)
    // dividing the latent width whose products fit the configuration.
    let spec = SCORE_COLUMNS
        .iter()
        .filter(|&&cd| d % cd == 0)
        .flat_map(|&cd| {
            [256, 128, 64, 32, 16]
                .into_iter()
                .filter(|&cv| cv <= choice.value_columns && latent % cv == 0)
                .map(move |cv| MlaDecodeCm2Spec {
                    invocations: choice.invocations,
                    key_tile: tiling.key_tile,
                    latent,
                    rope: l.rope_dim as u32,
                    rows: choice.rows,
                    score_columns: cd,
                    value_columns: cv,
                })
        })
        .find(|spec| spec.fits(&cfg));
    spec.ok_or_else(|| {
        unsupported_error(format!(
            "{} rows with {}-key tiles do not fit the driver's granularities (M {}, N {}, K {}) \
             for latent_dim {} and rope_dim {}",
            choice.rows,
            tiling.key_tile,
            cfg.m_granularity,
            cfg.n_granularity,
            cfg.k_granularity,
            l.latent_dim,
            l.rope_dim
        ))
    })
}

/// The default tiling for `op`: 64 rows where a request has at least 64 query rows, else 32,
/// with the row choice's key tile or the largest smaller one that divides the page size and
/// fits the device's granularities; then the same with 32 rows.
pub(super) fn default_tiling(f: &VulkanFeatures, op: &MlaDecode) -> Result<MlaCm2Tiling> {
    let wanted = if op.s_q * op.heads >= 64 { 64 } else { 32 };
    let mut last = None;
    for choice in ROW_CHOICES.iter().rev().filter(|c| c.rows <= wanted) {
        for key_tile in KEY_TILES.into_iter().filter(|&k| k <= choice.key_tile) {
            let tiling = MlaCm2Tiling {
                rows: choice.rows,
                key_tile,
            };
            match spec_for(f, op, &tiling) {
                Ok(_) => return Ok(tiling),
                Err(e) => last = Some(e),
            }
        }
    }
    Err(last.unwrap_or_else(|| unsupported_error("no tiling fits".into())))
}

/// The launch of `op` with `tiling` on this device.
/// Every tiling the shader can be built with: each key tile, with each row choice.
pub(super) fn tilings() -> impl Iterator<Item = MlaCm2Tiling> {
    KEY_TILES.into_iter().flat_map(|key_tile| {
        ROW_CHOICES.iter().map(move |c| MlaCm2Tiling {
            rows: c.rows,
            key_tile,
        })
    })
}

pub(super) fn launch(
    f: &VulkanFeatures,
    portable: bool,
    op: &MlaDecode,
    tiling: &MlaCm2Tiling,
) -> Result<Cm2Launch> {
    if let Some(reason) = unsupported(f, portable) {
        return Err(unsupported_error(reason));
    }
    let spec = spec_for(f, op, tiling)?;
    let row_groups = ((op.s_q * op.heads) as u64).div_ceil(spec.rows as u64);
    Ok(Cm2Launch {
        spec,
        row_groups,
        splits: super::key_splits(f, op, row_groups, spec.key_tile, RESIDENT_PER_COMPUTE_UNIT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::MlaCacheLayout;

    fn h200_like() -> VulkanFeatures {
        let mut f = crate::ops::mla::h200_features();
        f.api_version = (1, 4, 0);
        f.bfloat16 = true;
        f.cooperative_matrix2_nv = true;
        f.cooperative_matrix_flexible = [(64, 16), (128, 32), (256, 32)]
            .iter()
            .map(|&(invocations, m)| FlexibleMatrixConfig {
                m_granularity: m,
                n_granularity: if invocations == 256 { 32 } else { 16 },
                k_granularity: 16,
                a: MatrixComponent::BF16,
                b: MatrixComponent::BF16,
                c: MatrixComponent::F32,
                result: MatrixComponent::F32,
                workgroup_scope: true,
                workgroup_invocations: invocations,
            })
            .collect();
        f
    }

    fn decode(heads: usize, s_q: usize, layout: MlaCacheLayout) -> MlaDecode {
        MlaDecode {
            batch: 2,
            s_q,
            heads,
            max_pages: 4,
            softmax_scale: 0.1,
            layout,
        }
    }

    #[test]
    fn constants_name_every_id() {
        let v: Vec<(u32, u32)> = MlaDecodeCm2Spec::default()
            .constants()
            .iter()
            .map(|c| (c.id, c.value))
            .collect();
        assert_eq!(
            v,
            vec![
                (0, 128),
                (1, 32),
                (2, 512),
                (3, 64),
                (4, 32),
                (5, 64),
                (6, 256)
            ]
        );
    }

    #[test]
    fn tilings_follow_the_rows_and_the_page_size() {
        let f = h200_like();
        assert_eq!(unsupported(&f, false), None);
        let v3 = MlaCacheLayout::default();
        let t = default_tiling(&f, &decode(16, 2, v3)).unwrap();
        assert_eq!((t.rows, t.key_tile), (32, 32));
        let t = default_tiling(&f, &decode(128, 1, v3)).unwrap();
        assert_eq!((t.rows, t.key_tile), (64, 64));
        let l = launch(&f, false, &decode(128, 1, v3), &t).unwrap();
        assert_eq!(l.row_groups, 2);
        assert_eq!(
            (
                l.spec.invocations,
                l.spec.score_columns,
                l.spec.value_columns
            ),
            (256, 64, 128)
        );
        // Pages of 16 keys: 16-key tiles, which do not fit N granularity 32 at 256 invocations
        // (refused, named), so 32 rows.
        let small = MlaCacheLayout {
            page_size: 16,
            ..v3
        };
        let t64 = MlaCm2Tiling {
            rows: 64,
            key_tile: 16,
        };
        let e = launch(&f, false, &decode(128, 1, small), &t64).unwrap_err();
        assert!(e.to_string().contains("granularities"), "{e}");
        let t = default_tiling(&f, &decode(128, 1, small)).unwrap();
        assert_eq!((t.rows, t.key_tile), (32, 16));
        // A 32-row tiling of 16-key tiles fits (N granularity 16 at 128 invocations).
        let t32 = MlaCm2Tiling {
            rows: 32,
            key_tile: 16,
        };
        assert!(launch(&f, false, &decode(128, 1, small), &t32).is_ok());
    }

    #[test]
    fn refusals_name_what_is_missing() {
        let f = h200_like();
        let v3 = MlaCacheLayout::default();
        let fp8 = MlaCacheLayout {
            format: MlaCacheFormat::Fp8,
            ..v3
        };
        let t = MlaCm2Tiling {
            rows: 32,
            key_tile: 32,
        };
        let e = launch(&f, false, &decode(16, 2, fp8), &t).unwrap_err();
        assert!(e.to_string().contains("FP8"), "{e}");
        let e = launch(&f, true, &decode(16, 2, v3), &t).unwrap_err();
        assert!(e.to_string().contains("portable"), "{e}");
        let bad = MlaCm2Tiling {
            rows: 16,
            key_tile: 32,
        };
        let e = launch(&f, false, &decode(16, 2, v3), &bad).unwrap_err();
        assert!(e.to_string().contains("tiling.rows"), "{e}");
        let bad = MlaCm2Tiling {
            rows: 32,
            key_tile: 128,
        };
        let e = launch(&f, false, &decode(16, 2, v3), &bad).unwrap_err();
        assert!(e.to_string().contains("tiling.key_tile"), "{e}");
        let odd_pages = MlaCacheLayout {
            page_size: 40,
            ..v3
        };
        let e = launch(&f, false, &decode(16, 2, odd_pages), &t).unwrap_err();
        assert!(e.to_string().contains("page size"), "{e}");
        let mut old = h200_like();
        old.api_version = (1, 2, 0);
        assert!(unsupported(&old, false).unwrap().contains("Vulkan 1.2"));
        let mut no_config = h200_like();
        no_config.cooperative_matrix_flexible.clear();
        assert!(unsupported(&no_config, false)
            .unwrap()
            .contains("no workgroup-scope"));
        let mut no_ext = h200_like();
        no_ext.cooperative_matrix2_nv = false;
        assert!(unsupported(&no_ext, false)
            .unwrap()
            .contains("VK_NV_cooperative_matrix2"));
    }
}
