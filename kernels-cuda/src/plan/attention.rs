//! The block-sparse attention kernel's variants (`kernels/sparse_attention.cu`).

use super::{check_resources, ArchSpec, KernelSpec};
use crate::compile::KernelSource;
use serde::{Deserialize, Serialize};
use tessera_core::{BackendKind, DType, Error, Result, SparseAttention};

/// Query rows per CTA (a mask block row of 128 is two CTAs).
pub const ATTENTION_QUERY_TILE: u32 = 64;
/// Keys per tile of the kernel's inner loop.
pub const ATTENTION_KEY_TILE: u32 = 64;
/// Mask block sizes the kernel supports.
pub const ATTENTION_BLOCK_SIZES: [u32; 2] = [64, 128];

/// A 16-bit float type of attention tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HalfType {
    /// IEEE f16.
    F16,
    /// bfloat16.
    Bf16,
}

impl HalfType {
    /// The half type of `dtype`, if it is f16 or bf16.
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F16 => Some(HalfType::F16),
            DType::BF16 => Some(HalfType::Bf16),
            _ => None,
        }
    }
}

/// Threads per CTA of the Hopper forward kernel: a producer warpgroup and two math warpgroups.
pub const ATTENTION_SM90_THREADS: u32 = 384;
/// Query rows per CTA of the Hopper forward kernel (one mask block row of 128).
pub const ATTENTION_SM90_QUERY_TILE: u32 = 128;
/// K and V tiles in flight in the Hopper forward kernel (3: the dense mask runs 1-3 % faster
/// than with 2, radial masks the same; 2026-12-01 harness, H200).
pub const ATTENTION_SM90_STAGES: u32 = 3;

/// Which forward kernel a variant runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKernel {
    /// `kernels/sparse_attention.cu`: FlashAttention-2 style on `mma.sync`, one CTA of 4 warps
    /// per (64 query rows, head, batch), key tiles of 64 double-buffered; sm_80 and later.
    #[default]
    MmaSync,
    /// `kernels/sm90/sparse_attention.cu`: wgmma, TMA loads issued by one producer thread, two
    /// math warpgroups, one CTA per (mask block row of 128, head, batch), block rows in bins of
    /// length, longest first ([`crate::ops::attention::DeviceBlockMask::row_order`]); sm_90a, mask
    /// blocks of 128.
    Wgmma,
}

/// A variant of the attention forward kernel ([`AttentionKernel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttentionVariant {
    /// 64 or 128.
    pub head_dim: u32,
    /// Element type of q, k, v, o.
    pub dtype: HalfType,
    /// Mask block size: 64 or 128.
    pub block: u32,
    /// The kernel; absent in plan files: the `mma.sync` one.
    #[serde(default)]
    pub kernel: AttentionKernel,
}

impl AttentionVariant {
    /// The launch grid for `op`: `mma.sync`: (query tiles of 64, heads, batch); wgmma: one
    /// linear dimension of (block rows x heads x batch) CTAs.
    pub fn grid(&self, op: &SparseAttention) -> Result<(u32, u32, u32)> {
        match self.kernel {
            AttentionKernel::MmaSync => {
                super::attention_backward::query_tile_grid("sparse_attention", op)
            }
            AttentionKernel::Wgmma => {
                let ctas = op
                    .tokens
                    .div_ceil(ATTENTION_SM90_QUERY_TILE as usize)
                    .checked_mul(op.heads)
                    .and_then(|x| x.checked_mul(op.batch))
                    .filter(|&x| x <= i32::MAX as usize)
                    .ok_or_else(|| {
                        Error::invalid(
                            "sparse_attention",
                            "batch * heads * ceil(tokens / 128)",
                            "at most 2^31 - 1 CTAs",
                            format!("{} x {} x {} block rows", op.batch, op.heads, op.tokens),
                        )
                    })?;
                Ok((ctas as u32, 1, 1))
            }
        }
    }
}

impl KernelSpec for AttentionVariant {
    fn op(&self) -> &'static str {
        "sparse_attention"
    }

    fn source(&self) -> KernelSource {
        match self.kernel {
            AttentionKernel::MmaSync => crate::kernels::SPARSE_ATTENTION,
            AttentionKernel::Wgmma => crate::kernels::SPARSE_ATTENTION_SM90,
        }
    }

    fn defines(&self) -> Vec<(&'static str, String)> {
        let mut d = vec![
            ("HEAD_DIM", self.head_dim.to_string()),
            (
                "ELEM_BF16",
                u8::from(self.dtype == HalfType::Bf16).to_string(),
            ),
            ("BLOCK", self.block.to_string()),
        ];
        if self.kernel == AttentionKernel::Wgmma {
            d.push(("STAGES", ATTENTION_SM90_STAGES.to_string()));
        }
        d
    }

    fn entry(&self) -> &'static str {
        match self.kernel {
            AttentionKernel::MmaSync => "sparse_attention_fwd",
            AttentionKernel::Wgmma => "sparse_attention_fwd_sm90",
        }
    }

    /// `mma.sync`: one warp per 16 query rows; wgmma: three warpgroups.
    fn threads(&self) -> u32 {
        match self.kernel {
            AttentionKernel::MmaSync => ATTENTION_QUERY_TILE / 16 * 32,
            AttentionKernel::Wgmma => ATTENTION_SM90_THREADS,
        }
    }

    /// `mma.sync`: two buffers of a K and a V tile of 64 rows, each row padded by 8 elements.
    /// wgmma (`AttnSm90Smem` in `sm90/sparse_attention.cu`): Q `[128][head_dim]`, then
    /// `ATTENTION_SM90_STAGES` K tiles and as many V tiles `[128][head_dim]`, all 16-bit and
    /// 128-byte swizzled in 64-column blocks, then four barriers (8 bytes) per stage and Q's.
    fn smem_bytes(&self) -> u32 {
        match self.kernel {
            AttentionKernel::MmaSync => {
                2 * 2 * ATTENTION_KEY_TILE * (self.head_dim.saturating_add(8)) * 2
            }
            AttentionKernel::Wgmma => {
                let tile = 128 * self.head_dim.saturating_mul(2);
                ATTENTION_SM90_QUERY_TILE * self.head_dim * 2
                    + 2 * ATTENTION_SM90_STAGES * tile
                    + 4 * ATTENTION_SM90_STAGES * 8
                    + 8
            }
        }
    }

    fn valid_on(&self, arch: &ArchSpec) -> Result<()> {
        if !tessera_core::ops::attention::SUPPORTED_HEAD_DIMS.contains(&(self.head_dim as usize))
            || !ATTENTION_BLOCK_SIZES.contains(&self.block)
        {
            return Err(Error::Unsupported {
                op: "sparse_attention",
                backend: BackendKind::Cuda,
                reason: format!(
                    "head_dim {} with mask block size {}: the CUDA kernel supports head_dim 64 or \
                     128 and block sizes 64 or 128",
                    self.head_dim, self.block
                ),
            });
        }
        if self.kernel == AttentionKernel::Wgmma {
            if !arch.wgmma {
                return Err(Error::Unsupported {
                    op: "sparse_attention",
                    backend: BackendKind::Cuda,
                    reason: format!(
                        "the Hopper attention kernel needs wgmma (sm_90a), which {} lacks",
                        arch.nvrtc_target()
                    ),
                });
            }
            if self.block != ATTENTION_SM90_QUERY_TILE {
                return Err(Error::Unsupported {
                    op: "sparse_attention",
                    backend: BackendKind::Cuda,
                    reason: format!(
                        "mask block size {}: the Hopper attention kernel takes blocks of {}",
                        self.block, ATTENTION_SM90_QUERY_TILE
                    ),
                });
            }
        }
        check_resources(self, arch)
    }
}

/// The shape an attention plan is made for: the op and its mask's block size and density.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape<'a> {
    /// The op.
    pub op: &'a SparseAttention,
    /// The mask's block size.
    pub block_size: usize,
    /// The mask's density (blocks on over all blocks).
    pub mask_density: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines_and_sizes() {
        let v = AttentionVariant {
            head_dim: 128,
            dtype: HalfType::Bf16,
            block: 64,
            kernel: AttentionKernel::MmaSync,
        };
        let k = v.kernel();
        let d: Vec<(&str, &str)> = k.defines.iter().map(|(a, b)| (*a, b.as_str())).collect();
        assert_eq!(
            d,
            [
                ("HEAD_DIM", "128"),
                ("ELEM_BF16", "1"),
                ("BLOCK", "64"),
                ("TESSERA_SMEM_BYTES", "69632"),
                ("TESSERA_THREADS", "128"),
            ]
        );
        assert_eq!(v.entry(), "sparse_attention_fwd");
        let f16 = AttentionVariant {
            head_dim: 64,
            dtype: HalfType::F16,
            block: 128,
            kernel: AttentionKernel::MmaSync,
        };
        assert_eq!(f16.smem_bytes(), 4 * 64 * 72 * 2);
        assert_eq!(f16.kernel().define_value("ELEM_BF16"), Some("0"));
        let a100 = ArchSpec::from_compute_capability(8, 0, 108).unwrap();
        f16.valid_on(&a100).unwrap();
        assert!(AttentionVariant { block: 32, ..f16 }
            .valid_on(&a100)
            .is_err());
        assert!(AttentionVariant {
            head_dim: 96,
            ..f16
        }
        .valid_on(&a100)
        .is_err());
    }

    #[test]
    fn grid() {
        let v = AttentionVariant {
            head_dim: 64,
            dtype: HalfType::F16,
            block: 64,
            kernel: AttentionKernel::MmaSync,
        };
        let op = SparseAttention::new(2, 130, 3, 64, DType::F16);
        assert_eq!(v.grid(&op).unwrap(), (3, 3, 2));
        let op = SparseAttention::new(1, 64, 70_000, 64, DType::F16);
        assert!(v.grid(&op).is_err());
        let sm90 = AttentionVariant {
            block: 128,
            kernel: AttentionKernel::Wgmma,
            ..v
        };
        let op = SparseAttention::new(2, 300, 3, 64, DType::F16);
        assert_eq!(sm90.grid(&op).unwrap(), (3 * 3 * 2, 1, 1));
        let op = SparseAttention::new(1 << 20, 1 << 20, 1 << 10, 64, DType::F16);
        assert!(sm90.grid(&op).is_err());
    }

    #[test]
    fn sm90_variant() {
        let v = AttentionVariant {
            head_dim: 128,
            dtype: HalfType::Bf16,
            block: 128,
            kernel: AttentionKernel::Wgmma,
        };
        // Q 32 KiB, three stages of K and V tiles of 32 KiB, 4 barriers per stage and Q's.
        assert_eq!(v.smem_bytes(), 32768 + 6 * 32768 + 3 * 4 * 8 + 8);
        assert_eq!(v.threads(), 384);
        assert_eq!(v.entry(), "sparse_attention_fwd_sm90");
        let h200 = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        v.valid_on(&h200).unwrap();
        assert!(AttentionVariant { block: 64, ..v }.valid_on(&h200).is_err());
        let a100 = ArchSpec::from_compute_capability(8, 0, 108).unwrap();
        assert!(v.valid_on(&a100).is_err());
        // Plans written before the field existed read as the mma.sync kernel.
        let old: AttentionVariant =
            serde_json::from_str(r#"{"head_dim":64,"dtype":"f16","block":64}"#).unwrap();
        assert_eq!(old.kernel, AttentionKernel::MmaSync);
    }
}
