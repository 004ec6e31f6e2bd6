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

/// A variant of the attention forward kernel: FlashAttention-2 style, one CTA of 4 warps per (64
/// query rows, head, batch), key tiles of 64 double-buffered in shared memory. sm_80 and later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttentionVariant {
    /// 64 or 128.
    pub head_dim: u32,
    /// Element type of q, k, v, o.
    pub dtype: HalfType,
    /// Mask block size: 64 or 128.
    pub block: u32,
}

impl AttentionVariant {
    /// The launch grid for `op`: (query tiles, heads, batch).
    pub fn grid(&self, op: &SparseAttention) -> Result<(u32, u32, u32)> {
        super::attention_backward::query_tile_grid("sparse_attention", op)
    }
}

impl KernelSpec for AttentionVariant {
    fn op(&self) -> &'static str {
        "sparse_attention"
    }

    fn source(&self) -> KernelSource {
        crate::kernels::SPARSE_ATTENTION
    }

    fn defines(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HEAD_DIM", self.head_dim.to_string()),
            (
                "ELEM_BF16",
                u8::from(self.dtype == HalfType::Bf16).to_string(),
            ),
            ("BLOCK", self.block.to_string()),
        ]
    }

    fn entry(&self) -> &'static str {
        "sparse_attention_fwd"
    }

    /// One warp per 16 query rows.
    fn threads(&self) -> u32 {
        ATTENTION_QUERY_TILE / 16 * 32
    }

    /// Two buffers of a K and a V tile of 64 rows, each row padded by 8 elements.
    fn smem_bytes(&self) -> u32 {
        2 * 2 * ATTENTION_KEY_TILE * (self.head_dim.saturating_add(8)) * 2
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
        };
        let op = SparseAttention::new(2, 130, 3, 64, DType::F16);
        assert_eq!(v.grid(&op).unwrap(), (3, 3, 2));
        let op = SparseAttention::new(1, 64, 70_000, 64, DType::F16);
        assert!(v.grid(&op).is_err());
    }
}
