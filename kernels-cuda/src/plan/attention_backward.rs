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
//! of buffers of streamed tiles, the kernel, [`AttentionBackwardKernel`], and where dq is made,
//! [`AttentionBackwardDq`]); [`AttentionBackwardPlan`] is the three kernels of one call.
//!
//! The fused variant (wgmma only, [`AttentionBackwardDq::FusedAtomic`] /
//! [`AttentionBackwardDq::FusedDeterministic`]): pass 2 computes dq too (producer warps 2-3 add
//! each 64 x 64 f32 dQ tile into an f32 workspace `dq_accum` with one bulk reduction), and the
//! third kernel is [`AttentionBackwardVariant::ConvertDq`] (`PASS` 3: `dq = scale * dq_accum` in
//! the element type) instead of the dq pass. Its workspace: [`AttentionBackwardWorkspace`].

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
/// Threads per CTA of the fused variant's dq conversion (`PASS` 3): one thread per 8 outputs.
pub const ATTENTION_BACKWARD_CONVERT_THREADS: u32 = 256;
/// Rows of one query tile of the fused variant's `dq_accum` (and of its turn counters).
pub const ATTENTION_BACKWARD_DQ_TILE: u32 = 64;
/// Shared memory the fused dq adds to the wgmma dk/dv pass (`Bwd90Smem` in
/// `sm90/sparse_attention_backward.cu`): two bf16/f16 dS buffers of `[64][128]` (32 KiB), the
/// writer's two f32 dQ jobs of `[64][64]` (32 KiB) and its 4 mbarriers (32 bytes).
pub const ATTENTION_BACKWARD_FUSED_DQ_SMEM: u32 = 2 * 64 * 128 * 2 + 2 * 64 * 64 * 4 + 4 * 8;

/// Which kernel runs the two tile passes (the delta pass is always the `mma.sync` file's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionBackwardKernel {
    /// `kernels/sparse_attention_backward.cu`: `mma.sync`, one CTA of 4 warps per 64 resident
    /// rows, streamed tiles of 64 through cp.async; sm_80 and later.
    #[default]
    MmaSync,
    /// `kernels/sm90/sparse_attention_backward.cu`: wgmma, a producer warpgroup (TMA tiles,
    /// cp.async lse and delta) and two math warpgroups of 64 resident rows, one CTA per (mask block of 128, head, batch); sm_90a,
    /// mask blocks of 128.
    Wgmma,
}

/// Where dq is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionBackwardDq {
    /// Its own pass over the mask ([`AttentionBackwardVariant::Query`]), which recomputes S and
    /// dP: 7 matmuls in all; every element written once by one thread (bitwise deterministic).
    #[default]
    QueryPass,
    /// In the wgmma dk/dv pass (`BWD90_FUSED_DQ`, `BWD90_DQ_WRITER`: 5 matmuls), the 64 x 64 f32
    /// dQ tiles of the key blocks that attend a query tile added into `dq_accum` by
    /// `cp.reduce.async.bulk` in whatever order the CTAs run: dq may differ in its last bits
    /// from run to run (dk and dv do not). The default pick where it is a candidate, unless the
    /// op asks for a deterministic backward (see
    /// [`super::heuristics::pick_attention_backward`]).
    FusedAtomic,
    /// As [`AttentionBackwardDq::FusedAtomic`], but each tile of `dq_accum` receives its adds
    /// in increasing key-block order (`BWD90_DQ_DETERMINISTIC`: turn counters `dq_turns` and
    /// the transposed mask's ranks `t_rank`): dq is bitwise the same on every run (not bitwise
    /// the query pass's dq: another summation order).
    FusedDeterministic,
}

impl AttentionBackwardDq {
    /// Whether dq is computed by the dk/dv pass.
    pub fn is_fused(self) -> bool {
        self != AttentionBackwardDq::QueryPass
    }

    /// Whether dq is bitwise the same on every run for the same inputs (dk and dv always are).
    pub fn is_deterministic(self) -> bool {
        self != AttentionBackwardDq::FusedAtomic
    }
}

/// The one-dimensional grid of a pass with `per_cta` of `items` per CTA: at most `i32::MAX`
/// CTAs, else an error naming `arg` (the op's product that `items` is) and the most `unit` it can
/// have on CUDA.
fn linear_grid(items: usize, per_cta: usize, arg: &str, unit: &str) -> Result<(u32, u32, u32)> {
    let ctas = items.div_ceil(per_cta);
    let x = u32::try_from(ctas)
        .ok()
        .filter(|&x| x <= i32::MAX as u32)
        .ok_or_else(|| {
            Error::invalid(
                OP,
                arg,
                format!(
                    "at most {} {unit} on CUDA",
                    i32::MAX as u64 * per_cta as u64
                ),
                items.to_string(),
            )
        })?;
    Ok((x, 1, 1))
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
    /// Where dq is computed (fused: wgmma only); absent in plan files: its own pass.
    #[serde(default)]
    pub dq: AttentionBackwardDq,
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
    /// tiles' lse and delta (64 f32 each per stage), then two barriers (8 bytes) per stage; the
    /// fused dq pass adds [`ATTENTION_BACKWARD_FUSED_DQ_SMEM`].
    fn sm90_bytes(&self, with_lse: bool) -> u32 {
        let fused = if with_lse && self.dq.is_fused() {
            ATTENTION_BACKWARD_FUSED_DQ_SMEM
        } else {
            0
        };
        self.sm90_two_pass_bytes(with_lse) + fused
    }

    fn sm90_two_pass_bytes(&self, with_lse: bool) -> u32 {
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
    /// The fused variant's dq: `dq [batch, tokens, heads, head_dim] = scale * dq_accum` (the
    /// f32 tiled layout of [`AttentionBackwardWorkspace`]) in the element type, one thread per
    /// 8 outputs (`sparse_attention_bwd_dq_convert_tiled_sm90`).
    ConvertDq {
        /// 64 or 128.
        head_dim: u32,
        /// Element type of dq.
        dtype: HalfType,
    },
}

impl AttentionBackwardVariant {
    /// The kernel's `PASS` constant.
    pub fn pass(&self) -> u32 {
        match self {
            AttentionBackwardVariant::Delta { .. } => 0,
            AttentionBackwardVariant::KeyValue(_) => 1,
            AttentionBackwardVariant::Query(_) => 2,
            AttentionBackwardVariant::ConvertDq { .. } => 3,
        }
    }

    /// The tile passes' kernel (the delta pass: `mma.sync`; the dq conversion: the wgmma
    /// file's).
    pub fn tile_kernel(&self) -> AttentionBackwardKernel {
        match self {
            AttentionBackwardVariant::Delta { .. } => AttentionBackwardKernel::MmaSync,
            AttentionBackwardVariant::ConvertDq { .. } => AttentionBackwardKernel::Wgmma,
            AttentionBackwardVariant::KeyValue(t) | AttentionBackwardVariant::Query(t) => t.kernel,
        }
    }

    /// Whether this is the dk/dv pass that also computes dq (into `dq_accum`).
    pub fn fuses_dq(&self) -> bool {
        matches!(self, AttentionBackwardVariant::KeyValue(t) if t.dq.is_fused())
    }

    fn head_dim_and_dtype(&self) -> (u32, HalfType) {
        match *self {
            AttentionBackwardVariant::Delta { head_dim, dtype }
            | AttentionBackwardVariant::ConvertDq { head_dim, dtype } => (head_dim, dtype),
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
                linear_grid(
                    rows,
                    ATTENTION_BACKWARD_DELTA_ROWS as usize,
                    "batch * tokens * heads",
                    "rows",
                )
            }
            // One thread per 8 elements.
            AttentionBackwardVariant::ConvertDq { .. } => linear_grid(
                op.qkv_len(),
                ATTENTION_BACKWARD_CONVERT_THREADS as usize * 8,
                "batch * tokens * heads * head_dim",
                "elements",
            ),
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
        // The kernel's optional constants (default 0), rendered only where set, so that the
        // other variants' compile units are unchanged.
        if self.fuses_dq() {
            let deterministic = matches!(
                self,
                AttentionBackwardVariant::KeyValue(t) if t.dq == AttentionBackwardDq::FusedDeterministic
            );
            d.push(("BWD90_FUSED_DQ", "1".to_string()));
            d.push(("BWD90_DQ_WRITER", "1".to_string()));
            d.push((
                "BWD90_DQ_DETERMINISTIC",
                u8::from(deterministic).to_string(),
            ));
        }
        if let AttentionBackwardVariant::ConvertDq { .. } = self {
            d.push(("BWD90_DQ_WRITER", "1".to_string()));
        }
        d
    }

    fn entry(&self) -> &'static str {
        let wgmma = self.tile_kernel() == AttentionBackwardKernel::Wgmma;
        match self {
            AttentionBackwardVariant::Delta { .. } => "sparse_attention_bwd_delta",
            AttentionBackwardVariant::ConvertDq { .. } => {
                "sparse_attention_bwd_dq_convert_tiled_sm90"
            }
            AttentionBackwardVariant::KeyValue(t) if t.dq == AttentionBackwardDq::FusedAtomic => {
                "sparse_attention_bwd_fused_writer_sm90"
            }
            AttentionBackwardVariant::KeyValue(t)
                if t.dq == AttentionBackwardDq::FusedDeterministic =>
            {
                "sparse_attention_bwd_fused_writer_deterministic_sm90"
            }
            AttentionBackwardVariant::KeyValue(_) if wgmma => "sparse_attention_bwd_dkdv_sm90",
            AttentionBackwardVariant::KeyValue(_) => "sparse_attention_bwd_dkdv",
            AttentionBackwardVariant::Query(_) if wgmma => "sparse_attention_bwd_dq_sm90",
            AttentionBackwardVariant::Query(_) => "sparse_attention_bwd_dq",
        }
    }

    fn threads(&self) -> u32 {
        if let AttentionBackwardVariant::ConvertDq { .. } = self {
            return ATTENTION_BACKWARD_CONVERT_THREADS;
        }
        match self.tile_kernel() {
            AttentionBackwardKernel::MmaSync => ATTENTION_BACKWARD_THREADS,
            AttentionBackwardKernel::Wgmma => ATTENTION_BACKWARD_SM90_THREADS,
        }
    }

    /// Delta: none. dk/dv: K and V resident, `stages` pairs of Q and dO tiles, and per stage the
    /// tile's lse and delta (f32). dq: Q and dO resident, `stages` pairs of K and V tiles. The
    /// wgmma kernel: as `AttentionBackwardTiles::sm90_bytes` says (the fused dk/dv pass
    /// [`ATTENTION_BACKWARD_FUSED_DQ_SMEM`] more). The dq conversion: none.
    fn smem_bytes(&self) -> u32 {
        match self {
            AttentionBackwardVariant::Delta { .. } | AttentionBackwardVariant::ConvertDq { .. } => {
                0
            }
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
        if let AttentionBackwardVariant::ConvertDq { .. } = self {
            if !arch.wgmma {
                return Err(unsupported(format!(
                    "the fused attention backward's dq conversion is built with the Hopper \
                     kernels (sm_90a), which {} lacks",
                    arch.nvrtc_target()
                )));
            }
        }
        if let AttentionBackwardVariant::KeyValue(t) | AttentionBackwardVariant::Query(t) = self {
            if t.dq.is_fused() {
                if t.kernel != AttentionBackwardKernel::Wgmma {
                    return Err(unsupported(
                        "dq fused into the dk/dv pass: the Hopper (wgmma) kernel only".to_string(),
                    ));
                }
                if matches!(self, AttentionBackwardVariant::Query(_)) {
                    return Err(unsupported(
                        "the dq pass of a plan whose dk/dv pass computes dq (the plan's third \
                         kernel is the dq conversion)"
                            .to_string(),
                    ));
                }
            }
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
    /// dk and dv (and with a fused dq, dq into the f32 workspace `dq_accum`).
    pub key_value: AttentionBackwardVariant,
    /// dq: its own pass over the mask, or with a fused dq the conversion of `dq_accum`.
    pub query: AttentionBackwardVariant,
}

/// The device workspace of one fused-dq backward call (zero-length for the other plans),
/// allocated and zeroed on the stream by the launch:
/// - `dq_accum`: f32 `[batch][heads][ceil(tokens / 64) query tiles][head_dim / 64 column jobs]
///   [64 rows][64]`, element (row r, column c) of a job at `r * 64 + ((c / 8) ^ (r % 8)) * 8 +
///   c % 8` (the kernel's swizzled job layout; rows of the last tile past `tokens` receive
///   zeros and are never read), i.e. `batch * heads * ceil(tokens / 64) * 64 * head_dim` floats;
/// - `dq_turns` ([`AttentionBackwardDq::FusedDeterministic`] only): u32 `[batch][heads]
///   [ceil(tokens / 64)][head_dim / 64]`, the key blocks that have added into each job so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttentionBackwardWorkspace {
    /// f32 elements of `dq_accum`.
    pub dq_accum_len: usize,
    /// u32 elements of `dq_turns`.
    pub dq_turns_len: usize,
}

impl AttentionBackwardWorkspace {
    /// Bytes in all.
    pub fn bytes(&self) -> usize {
        self.dq_accum_len
            .saturating_mul(4)
            .saturating_add(self.dq_turns_len.saturating_mul(4))
    }
}

impl AttentionBackwardPlan {
    /// The plan whose tile passes have the shape `tiles` (with a fused dq: delta, the fused
    /// dk/dv/dq pass, the dq conversion).
    pub fn new(tiles: AttentionBackwardTiles) -> Self {
        let query = if tiles.dq.is_fused() {
            AttentionBackwardVariant::ConvertDq {
                head_dim: tiles.head_dim,
                dtype: tiles.dtype,
            }
        } else {
            AttentionBackwardVariant::Query(tiles)
        };
        Self {
            delta: AttentionBackwardVariant::Delta {
                head_dim: tiles.head_dim,
                dtype: tiles.dtype,
            },
            key_value: AttentionBackwardVariant::KeyValue(tiles),
            query,
        }
    }

    /// Where dq is computed.
    pub fn dq(&self) -> AttentionBackwardDq {
        match self.key_value {
            AttentionBackwardVariant::KeyValue(t) => t.dq,
            _ => AttentionBackwardDq::QueryPass,
        }
    }

    /// Whether dq, dk and dv are bitwise the same on every run for the same inputs (every plan
    /// but [`AttentionBackwardDq::FusedAtomic`]'s).
    pub fn is_deterministic(&self) -> bool {
        self.dq().is_deterministic()
    }

    /// The workspace this plan needs for `op` (see [`AttentionBackwardWorkspace`]): none
    /// unless dq is fused; an error naming the op's dims when its size overflows.
    pub fn workspace(&self, op: &SparseAttention) -> Result<AttentionBackwardWorkspace> {
        let dq = self.dq();
        if !dq.is_fused() {
            return Ok(AttentionBackwardWorkspace::default());
        }
        let tile = ATTENTION_BACKWARD_DQ_TILE as usize;
        let qtiles = op.tokens.div_ceil(tile);
        let overflow = || {
            Error::invalid(
                OP,
                "batch * heads * tokens * head_dim",
                "a dq workspace whose size in bytes fits in usize",
                format!(
                    "batch {} x heads {} x tokens {} x head_dim {}",
                    op.batch, op.heads, op.tokens, op.head_dim
                ),
            )
        };
        let jobs = [op.batch, op.heads, qtiles, op.head_dim / 64]
            .iter()
            .try_fold(1usize, |acc, &n| acc.checked_mul(n))
            .ok_or_else(overflow)?;
        let dq_accum_len = jobs
            .checked_mul(tile * 64)
            .filter(|n| n.checked_mul(8).is_some())
            .ok_or_else(overflow)?;
        Ok(AttentionBackwardWorkspace {
            dq_accum_len,
            dq_turns_len: if dq == AttentionBackwardDq::FusedDeterministic {
                jobs
            } else {
                0
            },
        })
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
            dq: AttentionBackwardDq::QueryPass,
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
        // Plans written before the fields existed read as the mma.sync kernel with a dq pass.
        let old: AttentionBackwardTiles =
            serde_json::from_str(r#"{"head_dim":64,"dtype":"f16","block":64,"stages":2}"#).unwrap();
        assert_eq!(old.kernel, AttentionBackwardKernel::MmaSync);
        assert_eq!(old.dq, AttentionBackwardDq::QueryPass);
    }

    fn fused(head_dim: u32, stages: u32, dq: AttentionBackwardDq) -> AttentionBackwardPlan {
        AttentionBackwardPlan::new(AttentionBackwardTiles {
            kernel: AttentionBackwardKernel::Wgmma,
            dq,
            ..tiles(head_dim, stages)
        })
    }

    #[test]
    fn fused_dq_variants() {
        let h200 = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let a100 = ArchSpec::from_compute_capability(8, 0, 108).unwrap();
        for (dq, entry, deterministic) in [
            (
                AttentionBackwardDq::FusedAtomic,
                "sparse_attention_bwd_fused_writer_sm90",
                "0",
            ),
            (
                AttentionBackwardDq::FusedDeterministic,
                "sparse_attention_bwd_fused_writer_deterministic_sm90",
                "1",
            ),
        ] {
            let plan = fused(128, 3, dq);
            assert_eq!(plan.dq(), dq);
            assert_eq!(plan.is_deterministic(), deterministic == "1");
            assert_eq!(
                plan.kernels().map(|k| k.entry()),
                [
                    "sparse_attention_bwd_delta",
                    entry,
                    "sparse_attention_bwd_dq_convert_tiled_sm90"
                ]
            );
            let kv = plan.key_value.kernel();
            let names: Vec<&str> = kv.defines.iter().map(|(a, _)| *a).collect();
            assert_eq!(
                names,
                [
                    "PASS",
                    "HEAD_DIM",
                    "ELEM_BF16",
                    "BLOCK",
                    "STAGES",
                    "BWD90_FUSED_DQ",
                    "BWD90_DQ_WRITER",
                    "BWD90_DQ_DETERMINISTIC",
                    "TESSERA_SMEM_BYTES",
                    "TESSERA_THREADS"
                ]
            );
            assert_eq!(kv.define_value("PASS"), Some("1"));
            assert_eq!(
                kv.define_value("BWD90_DQ_DETERMINISTIC"),
                Some(deterministic)
            );
            // The sizes the nvcc harness measured with (NOTES-sparse-attention-bwd-sm90.md): the
            // two-pass dk/dv pass's + 32 KiB of dS + 32 KiB of dQ jobs + 4 mbarriers.
            assert_eq!(plan.key_value.smem_bytes(), 230_992);
            assert_eq!(fused(64, 3, dq).key_value.smem_bytes(), 149_072);
            assert_eq!(
                fused(128, 2, dq).key_value.smem_bytes(),
                65536 + 2 * 32768 + 2 * 512 + 32 + 32768 + 32768 + 32
            );
            assert_eq!(plan.key_value.threads(), 384);
            let convert = plan.query.kernel();
            assert_eq!(
                convert
                    .defines
                    .iter()
                    .map(|(a, b)| format!("{a}={b}"))
                    .collect::<Vec<_>>(),
                [
                    "PASS=3",
                    "HEAD_DIM=128",
                    "ELEM_BF16=1",
                    "BWD90_DQ_WRITER=1",
                    "TESSERA_SMEM_BYTES=0",
                    "TESSERA_THREADS=256"
                ]
            );
            plan.valid_on(&h200).unwrap();
            fused(64, 2, dq).valid_on(&h200).unwrap();
            assert!(plan.valid_on(&a100).is_err());
            // The grids: the dk/dv pass as the two-pass one; the conversion one thread per 8
            // outputs, 256 per CTA.
            let op = SparseAttention::new(2, 300, 3, 128, DType::BF16);
            assert_eq!(plan.key_value.grid(&op).unwrap(), (3, 3, 2));
            assert_eq!(
                plan.query.grid(&op).unwrap(),
                ((2 * 300 * 3 * 128 / 8usize).div_ceil(256) as u32, 1, 1)
            );
        }
        // A fused dq is the wgmma kernel's, and has no dq pass.
        let mma = AttentionBackwardTiles {
            dq: AttentionBackwardDq::FusedAtomic,
            ..tiles(64, 2)
        };
        assert!(AttentionBackwardVariant::KeyValue(mma)
            .valid_on(&h200)
            .is_err());
        let wgmma = AttentionBackwardTiles {
            kernel: AttentionBackwardKernel::Wgmma,
            ..mma
        };
        assert!(AttentionBackwardVariant::Query(wgmma)
            .valid_on(&h200)
            .is_err());
        // The two-pass plans render none of the optional constants (their compile units are
        // unchanged) and are deterministic.
        let two_pass = fused(128, 3, AttentionBackwardDq::QueryPass);
        assert!(two_pass.is_deterministic());
        assert_eq!(
            two_pass.key_value.kernel().define_value("BWD90_FUSED_DQ"),
            None
        );
        assert_eq!(two_pass.key_value.entry(), "sparse_attention_bwd_dkdv_sm90");
    }

    #[test]
    fn fused_dq_workspace_sizes() {
        // 300 tokens: 5 query tiles of 64 (the last partial, allocated in full).
        let op = SparseAttention::new(2, 300, 3, 128, DType::BF16);
        let ws = fused(128, 3, AttentionBackwardDq::FusedDeterministic)
            .workspace(&op)
            .unwrap();
        assert_eq!(ws.dq_accum_len, 2 * 3 * 5 * 64 * 128);
        assert_eq!(ws.dq_turns_len, 2 * 3 * 5 * 2);
        assert_eq!(ws.bytes(), 4 * (2 * 3 * 5 * 64 * 128 + 2 * 3 * 5 * 2));
        let op64 = SparseAttention::new(1, 64, 2, 64, DType::F16);
        let atomic = fused(64, 3, AttentionBackwardDq::FusedAtomic)
            .workspace(&op64)
            .unwrap();
        assert_eq!(
            atomic,
            AttentionBackwardWorkspace {
                dq_accum_len: 2 * 64 * 64,
                dq_turns_len: 0
            }
        );
        // The two-pass plans need none.
        assert_eq!(
            AttentionBackwardPlan::new(tiles(128, 2))
                .workspace(&op)
                .unwrap(),
            AttentionBackwardWorkspace::default()
        );
        // A size that overflows is an error naming the dims, not a panic.
        let huge = SparseAttention::new(usize::MAX / 2, 1 << 20, 1 << 10, 128, DType::BF16);
        let e = fused(128, 3, AttentionBackwardDq::FusedAtomic)
            .workspace(&huge)
            .unwrap_err();
        assert!(e.to_string().contains("head_dim"), "{e}");
    }
}
