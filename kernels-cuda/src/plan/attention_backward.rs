//! The block-sparse attention backward's variants: three passes, each its own compile unit (the
//! kernels' `PASS` constant).
//!
//! 1. [`AttentionBackwardVariant::Delta`]: `delta = rowsum(dO ∘ O)`, f32 `[batch, heads, tokens]`
//!    (`kernels/sparse_attention_backward.cu`).
//! 2. [`AttentionBackwardVariant::KeyValue`]: one CTA per (64 keys, head, batch) (`mma.sync`) or
//!    per (128 keys, head, batch) (wgmma) over the transposed mask's row of its key block: dk
//!    and dv.
//! 3. [`AttentionBackwardVariant::Query`]: one CTA per (64 or 128 queries, head, batch) over the
//!    mask's row of its query block, as the forward: dq.
//!
//! The two tile passes share [`AttentionBackwardTiles`] (head_dim, dtype, block size, the number
//! of buffers of streamed tiles and the kernel, [`AttentionBackwardKernel`]);
//! [`AttentionBackwardPlan`] is the three kernels of one call.

use super::attention::{HalfType, ATTENTION_BLOCK_SIZES, ATTENTION_KEY_TILE, ATTENTION_QUERY_TILE};
use super::{check_resources, ArchSpec, KernelSpec};
use crate::compile::KernelSource;
use serde::{Deserialize, Serialize};
use tessera_core::{BackendKind, Error, Result, SparseAttention};

const OP: &str = "sparse_attention_backward";

/// Threads per CTA of every pass (4 warps).
pub const ATTENTION_BACKWARD_THREADS: u32 = 128;
/// Rows of o and dO reduced per CTA of the delta pass (8 lanes per row).
pub const ATTENTION_BACKWARD_DELTA_ROWS: u32 = ATTENTION_BACKWARD_THREADS / 8;
/// Buffers of streamed tiles the `mma.sync` tile passes can have: 1 (load, then compute) or 2
/// (the next tile loads while this one is computed).
pub const ATTENTION_BACKWARD_STAGES: [u32; 2] = [1, 2];
/// Threads per CTA of the wgmma tile passes: a producer warpgroup and two math warpgroups.
pub const ATTENTION_BACKWARD_SM90_THREADS: u32 = 384;
/// Resident rows per CTA of the wgmma tile passes (one mask block of 128).
pub const ATTENTION_BACKWARD_SM90_ROWS: u32 = 128;
/// Buffers of streamed 64-row tiles the wgmma tile passes can have (tiles in flight).
pub const ATTENTION_BACKWARD_SM90_STAGES: [u32; 2] = [2, 3];

/// Which kernel runs the two tile passes (the delta pass is always the `mma.sync` file's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionBackwardKernel {
    /// `kernels/sparse_attention_backward.cu`: `mma.sync`, one CTA of 4 warps per 64 resident
    /// rows, streamed tiles of 64 through cp.async; sm_80 and later.
    #[default]
    MmaSync,
    /// `kernels/sm90/sparse_attention_backward.cu`: wgmma, a cp.async producer warpgroup and two
    /// math warpgroups of 64 resident rows, one CTA per (mask block of 128, head, batch); sm_90a,
    /// mask blocks of 128.
    Wgmma,
}

/// The shape of the two tile passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttentionBackwardTiles {
    /// 64 or 128.
    pub head_dim: u32,
    /// Element type of every tensor.
    pub dtype: HalfType,
    /// Mask block size: 64 or 128.
    pub block: u32,
    /// Buffers of streamed tiles: 1 or 2 for `mma.sync` ([`ATTENTION_BACKWARD_STAGES`]), 2 or 3
    /// for wgmma ([`ATTENTION_BACKWARD_SM90_STAGES`]).
    pub stages: u32,
    /// The kernel; absent in plan files: the `mma.sync` one.
    #[serde(default)]
    pub kernel: AttentionBackwardKernel,
}

impl AttentionBackwardTiles {
    /// Bytes of one 64-row tile in shared memory (rows padded by 8 elements).
    fn tile_bytes(&self) -> u32 {
        ATTENTION_KEY_TILE * self.head_dim.saturating_add(8) * 2
    }

    /// Bytes of the two resident tiles and the `stages` pairs of streamed tiles.
    fn half_bytes(&self) -> u32 {
        (2 + 2 * self.stages.min(2)) * self.tile_bytes()
    }

    /// The wgmma kernel's shared memory (`Bwd90Smem` in `sm90/sparse_attention_backward.cu`):
    /// two resident `[128][head_dim]` regions, `stages` pairs of streamed `[64][head_dim]`
    /// tiles (all 16-bit, 128-byte swizzled in 64-column blocks), for dk/dv (`with_lse`) the
    /// tiles' lse and delta (64 f32 each per stage), then two barriers (8 bytes) per stage.
    fn sm90_bytes(&self, with_lse: bool) -> u32 {
        let stages = self.stages.min(4);
        let row_bytes = self.head_dim.min(256) * 2;
        2 * ATTENTION_BACKWARD_SM90_ROWS * row_bytes
            + 2 * stages * ATTENTION_KEY_TILE * row_bytes
            + if with_lse {
                2 * stages * ATTENTION_KEY_TILE * 4
            } else {
                0
            }
            + 2 * stages * 8
    }
}

/// One kernel of the attention backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionBackwardVariant {
    /// `delta = rowsum(dO ∘ O)`: 16 rows per CTA, 8 lanes per row.
    Delta {
        /// 64 or 128.
        head_dim: u32,
        /// Element type of o and dO.
        dtype: HalfType,
    },
    /// dk and dv per 64 (`mma.sync`) or 128 (wgmma) keys, over the transposed mask.
    KeyValue(AttentionBackwardTiles),
    /// dq per 64 (`mma.sync`) or 128 (wgmma) queries, over the mask.
    Query(AttentionBackwardTiles),
}

impl AttentionBackwardVariant {
    /// The kernel's `PASS` constant.
    pub fn pass(&self) -> u32 {
        match self {
            AttentionBackwardVariant::Delta { .. } => 0,
            AttentionBackwardVariant::KeyValue(_) => 1,
            AttentionBackwardVariant::Query(_) => 2,
        }
    }

    /// The tile passes' kernel (the delta pass: `mma.sync`).
    pub fn tile_kernel(&self) -> AttentionBackwardKernel {
        match self {
            AttentionBackwardVariant::Delta { .. } => AttentionBackwardKernel::MmaSync,
            AttentionBackwardVariant::KeyValue(t) | AttentionBackwardVariant::Query(t) => t.kernel,
        }
    }

    fn head_dim_and_dtype(&self) -> (u32, HalfType) {
        match *self {
            AttentionBackwardVariant::Delta { head_dim, dtype } => (head_dim, dtype),
            AttentionBackwardVariant::KeyValue(t) | AttentionBackwardVariant::Query(t) => {
                (t.head_dim, t.dtype)
            }
        }
    }

    /// The launch grid for `op`: the delta pass `(ceil(batch * tokens * heads / 16), 1, 1)`;
    /// the tile passes (64-row tiles, heads, batch), as the `mma.sync` forward, or with wgmma
    /// (mask blocks of 128, heads, batch).
    pub fn grid(&self, op: &SparseAttention) -> Result<(u32, u32, u32)> {
        match self {
            AttentionBackwardVariant::Delta { .. } => {
                let rows = op.qkv_len() / op.head_dim.max(1);
                let ctas = rows.div_ceil(ATTENTION_BACKWARD_DELTA_ROWS as usize);
                let x = u32::try_from(ctas)
                    .ok()
                    .filter(|&x| x <= i32::MAX as u32)
                    .ok_or_else(|| {
                        Error::invalid(
                            OP,
                            "batch * tokens * heads",
                            format!(
                                "at most {} rows on CUDA",
                                i32::MAX as u64 * ATTENTION_BACKWARD_DELTA_ROWS as u64
                            ),
                            rows.to_string(),
                        )
                    })?;
                Ok((x, 1, 1))
            }
            _ if self.tile_kernel() == AttentionBackwardKernel::Wgmma => {
                row_tile_grid(OP, op, ATTENTION_BACKWARD_SM90_ROWS)
            }
            _ => query_tile_grid(OP, op),
        }
    }
}

/// The grid of one CTA per (64-row tile, head, batch) for `op`, as the forward's kernel and the
/// backward's tile passes launch it.
pub fn query_tile_grid(op_name: &'static str, op: &SparseAttention) -> Result<(u32, u32, u32)> {
    row_tile_grid(op_name, op, ATTENTION_QUERY_TILE)
}

/// The grid of one CTA per (`rows`-row tile, head, batch) for `op`.
fn row_tile_grid(
    op_name: &'static str,
    op: &SparseAttention,
    rows: u32,
) -> Result<(u32, u32, u32)> {
    // The grid's y and z dimensions hold heads and batch.
    for (arg, n) in [("heads", op.heads), ("batch", op.batch)] {
        if n > 65535 {
            return Err(Error::invalid(
                op_name,
                arg,
                "at most 65535 on CUDA",
                n.to_string(),
            ));
        }
    }
    let tiles = op.tokens.div_ceil(rows as usize);
    let x = u32::try_from(tiles).map_err(|_| {
        Error::invalid(
            op_name,
            "tokens",
            "at most 2^32 - 1 row tiles",
            op.tokens.to_string(),
        )
    })?;
    Ok((x, op.heads as u32, op.batch as u32))
}

impl KernelSpec for AttentionBackwardVariant {
    fn op(&self) -> &'static str {
        OP
    }

    fn source(&self) -> KernelSource {
        match self.tile_kernel() {
            AttentionBackwardKernel::MmaSync => crate::kernels::SPARSE_ATTENTION_BACKWARD,
            AttentionBackwardKernel::Wgmma => crate::kernels::SPARSE_ATTENTION_BACKWARD_SM90,
        }
    }

    fn defines(&self) -> Vec<(&'static str, String)> {
        let (head_dim, dtype) = self.head_dim_and_dtype();
        let mut d = vec![
            ("PASS", self.pass().to_string()),
            ("HEAD_DIM", head_dim.to_string()),
            ("ELEM_BF16", u8::from(dtype == HalfType::Bf16).to_string()),
        ];
        if let AttentionBackwardVariant::KeyValue(t) | AttentionBackwardVariant::Query(t) = self {
            d.push(("BLOCK", t.block.to_string()));
            d.push(("STAGES", t.stages.to_string()));
        }
        d
    }

    fn entry(&self) -> &'static str {
        let wgmma = self.tile_kernel() == AttentionBackwardKernel::Wgmma;
        match self {
            AttentionBackwardVariant::Delta { .. } => "sparse_attention_bwd_delta",
            AttentionBackwardVariant::KeyValue(_) if wgmma => "sparse_attention_bwd_dkdv_sm90",
            AttentionBackwardVariant::KeyValue(_) => "sparse_attention_bwd_dkdv",
            AttentionBackwardVariant::Query(_) if wgmma => "sparse_attention_bwd_dq_sm90",
            AttentionBackwardVariant::Query(_) => "sparse_attention_bwd_dq",
        }
    }

    fn threads(&self) -> u32 {
        match self.tile_kernel() {
            AttentionBackwardKernel::MmaSync => ATTENTION_BACKWARD_THREADS,
            AttentionBackwardKernel::Wgmma => ATTENTION_BACKWARD_SM90_THREADS,
        }
    }

    /// Delta: none. dk/dv: K and V resident, `stages` pairs of Q and dO tiles, and per stage the
    /// tile's lse and delta (f32). dq: Q and dO resident, `stages` pairs of K and V tiles. The
    /// wgmma kernel: as `AttentionBackwardTiles::sm90_bytes` says.
    fn smem_bytes(&self) -> u32 {
        match self {
            AttentionBackwardVariant::Delta { .. } => 0,
            AttentionBackwardVariant::KeyValue(t) if t.kernel == AttentionBackwardKernel::Wgmma => {
                t.sm90_bytes(true)
            }
            AttentionBackwardVariant::Query(t) if t.kernel == AttentionBackwardKernel::Wgmma => {
                t.sm90_bytes(false)
            }
            AttentionBackwardVariant::KeyValue(t) => {
                t.half_bytes() + t.stages.min(2) * 2 * ATTENTION_KEY_TILE * 4
            }
            AttentionBackwardVariant::Query(t) => t.half_bytes(),
        }
    }

    fn valid_on(&self, arch: &ArchSpec) -> Result<()> {
        let (head_dim, _) = self.head_dim_and_dtype();
        let unsupported = |reason: String| Error::Unsupported {
            op: OP,
            backend: BackendKind::Cuda,
            reason,
        };
        if !tessera_core::ops::attention::SUPPORTED_HEAD_DIMS.contains(&(head_dim as usize)) {
            return Err(unsupported(format!(
                "head_dim {head_dim}: the CUDA kernel supports 64 or 128"
            )));
        }
        if let AttentionBackwardVariant::KeyValue(t) | AttentionBackwardVariant::Query(t) = self {
            if t.kernel == AttentionBackwardKernel::Wgmma {
                if !arch.wgmma {
                    return Err(unsupported(format!(
                        "the Hopper attention backward needs wgmma (sm_90a), which {} lacks",
                        arch.nvrtc_target()
                    )));
                }
                if t.block != ATTENTION_BACKWARD_SM90_ROWS
                    || !ATTENTION_BACKWARD_SM90_STAGES.contains(&t.stages)
                {
                    return Err(unsupported(format!(
                        "mask block size {} with {} stages: the Hopper attention backward takes \
                         blocks of {} and {:?} stages",
                        t.block,
                        t.stages,
                        ATTENTION_BACKWARD_SM90_ROWS,
                        ATTENTION_BACKWARD_SM90_STAGES
                    )));
                }
            } else if !ATTENTION_BLOCK_SIZES.contains(&t.block)
                || !ATTENTION_BACKWARD_STAGES.contains(&t.stages)
            {
                return Err(unsupported(format!(
                    "mask block size {} with {} stages: the CUDA kernel supports block sizes 64 \
                     or 128 and 1 or 2 stages",
                    t.block, t.stages
                )));
            }
        }
        check_resources(self, arch)
    }
}

/// The three kernels of one backward call, launched in this order: delta, dk/dv, dq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttentionBackwardPlan {
    /// `delta = rowsum(dO ∘ O)`.
    pub delta: AttentionBackwardVariant,
    /// dk and dv.
    pub key_value: AttentionBackwardVariant,
    /// dq.
    pub query: AttentionBackwardVariant,
}

impl AttentionBackwardPlan {
    /// The plan whose tile passes have the shape `tiles`.
    pub fn new(tiles: AttentionBackwardTiles) -> Self {
        Self {
            delta: AttentionBackwardVariant::Delta {
                head_dim: tiles.head_dim,
                dtype: tiles.dtype,
            },
            key_value: AttentionBackwardVariant::KeyValue(tiles),
            query: AttentionBackwardVariant::Query(tiles),
        }
    }

    /// The three kernels, in launch order.
    pub fn kernels(&self) -> [AttentionBackwardVariant; 3] {
        [self.delta, self.key_value, self.query]
    }

    /// Checks that every kernel can run on `arch`.
    pub fn valid_on(&self, arch: &ArchSpec) -> Result<()> {
        self.kernels().iter().try_for_each(|k| k.valid_on(arch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::DType;

    fn tiles(head_dim: u32, stages: u32) -> AttentionBackwardTiles {
        AttentionBackwardTiles {
            head_dim,
            dtype: HalfType::Bf16,
            block: 128,
            stages,
            kernel: AttentionBackwardKernel::MmaSync,
        }
    }

    #[test]
    fn defines_and_sizes() {
        let plan = AttentionBackwardPlan::new(tiles(128, 2));
        let d = |v: &AttentionBackwardVariant| -> Vec<(String, String)> {
            v.kernel()
                .defines
                .iter()
                .map(|(a, b)| (a.to_string(), b.clone()))
                .collect()
        };
        let kv = d(&plan.key_value);
        let names: Vec<&str> = kv.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            names,
            [
                "PASS",
                "HEAD_DIM",
                "ELEM_BF16",
                "BLOCK",
                "STAGES",
                "TESSERA_SMEM_BYTES",
                "TESSERA_THREADS"
            ]
        );
        // 6 tiles of 64 x 136 16-bit elements, and lse + delta of 64 rows for 2 stages.
        assert_eq!(
            plan.key_value.smem_bytes(),
            6 * 64 * 136 * 2 + 2 * 2 * 64 * 4
        );
        assert_eq!(plan.query.smem_bytes(), 6 * 64 * 136 * 2);
        assert_eq!(plan.delta.smem_bytes(), 0);
        assert_eq!(plan.delta.kernel().define_value("BLOCK"), None);
        assert_eq!(plan.query.kernel().define_value("PASS"), Some("2"));
        assert_eq!(
            plan.kernels().map(|k| k.entry()),
            [
                "sparse_attention_bwd_delta",
                "sparse_attention_bwd_dkdv",
                "sparse_attention_bwd_dq"
            ]
        );
        // Two stages of head_dim 128 exceed an L4's 99 KiB; one fits; sm_80 and sm_90 take two.
        let l4 = ArchSpec::from_compute_capability(8, 9, 58).unwrap();
        assert!(plan.valid_on(&l4).is_err());
        AttentionBackwardPlan::new(tiles(128, 1))
            .valid_on(&l4)
            .unwrap();
        for (major, minor) in [(8, 0), (9, 0)] {
            let arch = ArchSpec::from_compute_capability(major, minor, 100).unwrap();
            plan.valid_on(&arch).unwrap();
        }
        assert!(AttentionBackwardPlan::new(tiles(128, 3))
            .valid_on(&l4)
            .is_err());
        assert!(AttentionBackwardPlan::new(tiles(96, 1))
            .valid_on(&l4)
            .is_err());
    }

    #[test]
    fn grids() {
        let plan = AttentionBackwardPlan::new(tiles(64, 1));
        let op = SparseAttention::new(2, 130, 3, 64, DType::F16);
        assert_eq!(plan.key_value.grid(&op).unwrap(), (3, 3, 2));
        assert_eq!(plan.query.grid(&op).unwrap(), (3, 3, 2));
        // 2 * 130 * 3 = 780 rows of 16 per CTA.
        assert_eq!(plan.delta.grid(&op).unwrap(), (49, 1, 1));
        let op = SparseAttention::new(1, 64, 70_000, 64, DType::F16);
        assert!(plan.query.grid(&op).is_err());
    }

    #[test]
    fn sm90_variants() {
        let t = AttentionBackwardTiles {
            kernel: AttentionBackwardKernel::Wgmma,
            ..tiles(128, 3)
        };
        let plan = AttentionBackwardPlan::new(t);
        // K and V 2 x 32 KiB, 3 stages of Q and dO tiles of 16 KiB, lse and delta of 64 rows per
        // stage, 2 barriers per stage.
        assert_eq!(
            plan.key_value.smem_bytes(),
            65536 + 3 * 32768 + 3 * 512 + 48
        );
        assert_eq!(plan.query.smem_bytes(), 65536 + 3 * 32768 + 48);
        assert_eq!(plan.key_value.threads(), 384);
        assert_eq!(plan.delta.threads(), 128);
        assert_eq!(
            plan.kernels().map(|k| k.entry()),
            [
                "sparse_attention_bwd_delta",
                "sparse_attention_bwd_dkdv_sm90",
                "sparse_attention_bwd_dq_sm90"
            ]
        );
        let op = SparseAttention::new(2, 300, 3, 128, DType::BF16);
        assert_eq!(plan.key_value.grid(&op).unwrap(), (3, 3, 2));
        assert_eq!(plan.query.grid(&op).unwrap(), (3, 3, 2));
        let h200 = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        plan.valid_on(&h200).unwrap();
        let a100 = ArchSpec::from_compute_capability(8, 0, 108).unwrap();
        assert!(plan.valid_on(&a100).is_err());
        for bad in [
            AttentionBackwardTiles { block: 64, ..t },
            AttentionBackwardTiles { stages: 1, ..t },
            AttentionBackwardTiles { stages: 5, ..t },
        ] {
            assert!(AttentionBackwardPlan::new(bad).valid_on(&h200).is_err());
        }
        // Plans written before the field existed read as the mma.sync kernel.
        let old: AttentionBackwardTiles =
            serde_json::from_str(r#"{"head_dim":64,"dtype":"f16","block":64,"stages":2}"#).unwrap();
        assert_eq!(old.kernel, AttentionBackwardKernel::MmaSync);
    }
}
