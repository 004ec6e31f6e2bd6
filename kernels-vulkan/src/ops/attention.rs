//! Block-sparse (radial) attention forward.
//!
//! Portable path: `sparse_attention` runs one workgroup of [`QUERY_TILE`] invocations per
//! (query tile, head, batch) (fewer for block sizes that 64 does not divide, see
//! [`query_tile`]), one invocation per query row with its query and output
//! accumulator in f32 registers; the keys of each block the mask lists go through shared memory
//! in tiles of `BK` keys (K and V decoded to f32, `2 · BK · head_dim · 4` bytes, `BK` the
//! largest of 32, 16, 8 that fits the device's shared memory), with the online softmax in f32.
//! The mask lives on the device as a [`VulkanBlockMask`], uploaded once and shared by every
//! call, batch and head.
//!
//! Cooperative-matrix path: `sparse_attention_coopmat` (same contract and outputs) runs one
//! workgroup of 4 subgroups of 32 per (64-query tile, head, batch), each subgroup owning 16
//! query rows. Per tile of `BKV` keys (64, 32 or 16: the largest whose shared memory fits, see
//! [`coopmat_key_tile`]; 32 at head_dim 128 and 64 at head_dim 64 on 48 KiB) K and V are staged
//! in shared memory as f16, the scores `Q Kᵀ` come from 16x16x16 f16 cooperative matrices
//! accumulating in f32 (Q stays in registers), go through shared memory for the online softmax
//! (f32, base 2; two invocations per row), and the probabilities, rounded to f16 as in every
//! flash attention, multiply V in cooperative matrices again; each 16x16 block of `P · V` goes
//! through shared memory into f32 output registers, where the softmax rescale (per row) and the
//! bf16 column factors (below) are applied. The path is taken where
//! [`VulkanBackend::attention_uses_cooperative_matrix`] says so (the device's matrices, a block
//! size that is a multiple of 64); every other call takes the portable path.
//!
//! bf16 inputs on the cooperative-matrix path: the matrices are f16 (no bf16 matrices are
//! assumed), so bf16 values are converted to f16 exactly by powers of two: query row `i` times
//! `2^-e_i`, key row `j` times `2^-f_j` and, per key tile, V column `d` times `2^-h_d`, each
//! exponent putting the row's (column's) largest magnitude in `[2^14, 2^15)`. The scores are
//! scaled back, `s_ij = S'_ij · 2^(e_i + f_j)`, as they go through shared memory, and each tile's
//! `P · V'` column by `2^h_d` as it is added to the f32 output. Error bound: bf16 has 8
//! significant bits and f16 11, so a scaled value is exact unless it lies below f16's normal
//! range, i.e. below `2^-17` of its row's (column's) largest magnitude; such a value is rounded
//! to the f16 subnormal grid with an error of at most `2^-25` times that largest magnitude
//! (values below `2^-126`, f32 subnormals, may be flushed to zero). For the scores this is at most
//! `2^-25 · max|q_i| · Σ_d |k_jd|` (or the same with q and k exchanged), for the output at most
//! `2^-25 · max_j |v_jd|` per column: far below the `2^-12` relative rounding of the
//! probabilities to f16 that every flash-attention kernel accepts, and below the bf16 rounding
//! of the output (`2^-9`). f16 inputs are used as they are (all exponents 0).

use super::{bind_range, to_u32};
use crate::device::VulkanContext;
use crate::memory::{Buffer, BufferRange};
use crate::pipeline::{linear_groups, Shader, ShaderResources, SpecConstant, Specialization};
use crate::VulkanBackend;
use ash::vk;
use half::{bf16, f16};
use std::marker::PhantomData;
use std::sync::Arc;
use tessera_core::ops::attention::{AttentionOutput, SparseAttention};
use tessera_core::{BackendKind, BlockMask, DType, Error, Result, Tensor, TensorRef};

const OP: &str = "sparse_attention";

/// Query rows per workgroup (one invocation each) for the usual block sizes (64 and 128): within
/// the 128 invocations every Vulkan device allows.
pub const QUERY_TILE: u32 = 64;

/// Query rows per workgroup for a mask's block size: the largest power of two up to
/// [`QUERY_TILE`] that divides it (a tile's rows must share one block row), e.g. 64 for 64 and
/// 128, 16 for 48, 4 for 100.
pub fn query_tile(block_size: usize) -> u32 {
    let pow2 = 1usize << block_size.trailing_zeros().min(QUERY_TILE.trailing_zeros());
    pow2 as u32
}

/// The portable shader. Bindings: q, k, v, mask, o, lse; push constants groups, tiles, tokens,
/// heads, block size, blocks, nnz, scale · log2(e). Specialization: [`SparseAttentionSpec`].
pub const SPARSE_ATTENTION: Shader<SparseAttentionSpec> = Shader {
    name: "sparse_attention",
    spirv: spirv!("sparse_attention"),
    storage_buffers: 6,
    push_constant_bytes: 32,
    specialization: PhantomData,
};

/// The cooperative-matrix shader (f16 matrices, f32 accumulation and softmax). Bindings and push
/// constants as [`SPARSE_ATTENTION`] (q, k, v are read as 16-byte vectors); 128 invocations (four
/// subgroups of 32). Specialization: [`SparseAttentionCoopmatSpec`].
pub const SPARSE_ATTENTION_COOPMAT: Shader<SparseAttentionCoopmatSpec> = Shader {
    name: "sparse_attention_coopmat",
    spirv: spirv!("sparse_attention_coopmat"),
    storage_buffers: 6,
    push_constant_bytes: 32,
    specialization: PhantomData,
};

/// The specialization constants of `sparse_attention.comp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SparseAttentionSpec {
    /// Query rows per workgroup, one invocation each (the workgroup size, `BQ`):
    /// [`query_tile`] of the block size.
    pub query_tile: u32,
    /// The head dimension (64 or 128).
    pub head_dim: u32,
    /// Keys per shared-memory tile (`BK`).
    pub key_tile: u32,
    /// bf16 tensors (else f16).
    pub bf16: bool,
}

impl Default for SparseAttentionSpec {
    fn default() -> Self {
        Self {
            query_tile: QUERY_TILE,
            head_dim: 128,
            key_tile: 16,
            bf16: true,
        }
    }
}

impl Specialization for SparseAttentionSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![
            SpecConstant::local_size_x(0, self.query_tile),
            SpecConstant::new(1, "HEAD_DIM", self.head_dim),
            SpecConstant::new(2, "BK", self.key_tile),
            SpecConstant::new(3, "IS_BF16", u32::from(self.bf16)),
        ]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.query_tile,
            shared_memory_bytes: portable_shared_bytes(self.head_dim, self.key_tile),
        }
    }
}

/// Shared memory of `sparse_attention` (and of the backward's dq pass, which streams the same
/// tiles) with `bk` keys per tile: K and V tiles of `bk x head_dim` f32.
pub(super) fn portable_shared_bytes(head_dim: u32, bk: u32) -> u32 {
    2 * bk.saturating_mul(head_dim).saturating_mul(4)
}

/// The specialization constants of `sparse_attention_coopmat.comp` (its workgroup is fixed at
/// 128 invocations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SparseAttentionCoopmatSpec {
    /// The head dimension (64 or 128).
    pub head_dim: u32,
    /// Keys per shared-memory tile (`BKV`): [`coopmat_key_tile`].
    pub key_tile: u32,
    /// bf16 tensors (else f16).
    pub bf16: bool,
}

impl Default for SparseAttentionCoopmatSpec {
    fn default() -> Self {
        Self {
            head_dim: 128,
            key_tile: 32,
            bf16: true,
        }
    }
}

impl Specialization for SparseAttentionCoopmatSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![
            SpecConstant::new(0, "HEAD_DIM", self.head_dim),
            SpecConstant::new(1, "BKV", self.key_tile),
            SpecConstant::new(2, "IS_BF16", u32::from(self.bf16)),
        ]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: 128,
            shared_memory_bytes: coopmat_shared_bytes(self.head_dim, self.key_tile),
        }
    }
}

/// Query rows per workgroup of the cooperative-matrix path (4 subgroups of 16 rows); the block
/// size must be a multiple of it.
pub const COOPMAT_QUERY_TILE: u32 = 64;

/// Shared memory of `sparse_attention_coopmat` with `bkv` keys per tile: K and V tiles of f16
/// rows padded to `head_dim + 8` (at least 64 rows in all, which hold Q at the start), per
/// subgroup 16 rows of f32 scores (padded to `bkv + 4`; room for at least two 16 x 20 scratches
/// of `P · V`) and of f16 probabilities (padded to `bkv + 8`), and the row and column factors.
pub fn coopmat_shared_bytes(head_dim: u32, bkv: u32) -> u32 {
    let kv_rows = (2 * bkv).max(COOPMAT_QUERY_TILE);
    let kv = 2 * kv_rows * (head_dim + 8);
    let scores = 4 * (16 * (bkv + 4)).max(2 * 16 * 20) * 4;
    let probs = 4 * 16 * (bkv + 8) * 2;
    let factors = 4 * (3 * COOPMAT_QUERY_TILE + bkv + 2 * head_dim);
    kv + scores + probs + factors
}

/// Keys per shared-memory tile of the cooperative-matrix path: the largest of 64, 32, 16 whose
/// [`coopmat_shared_bytes`] fit `max_shared`, or [`Error::Unsupported`] naming the need.
pub fn coopmat_key_tile(head_dim: u32, max_shared: u32) -> Result<u32> {
    [64u32, 32, 16]
        .into_iter()
        .find(|&bkv| coopmat_shared_bytes(head_dim, bkv) <= max_shared)
        .ok_or_else(|| Error::Unsupported {
            op: OP,
            backend: BackendKind::Vulkan,
            reason: format!(
                "the cooperative-matrix path at head_dim {head_dim} needs {} bytes of shared \
                 memory, the device has {max_shared}",
                coopmat_shared_bytes(head_dim, 16)
            ),
        })
}

/// A [`BlockMask`] on the device, uploaded once and used by any number of
/// [`VulkanBackend::record_sparse_attention`] calls (every batch and head share it).
///
/// Layout of the buffer (u32 words): `indptr` (`num_blocks + 1` entries), then `indices`
/// (`nnz` entries), as [`BlockMask::indptr`] and [`BlockMask::indices`]. The transposed mask
/// ([`BlockMask::transpose`]: block row `c` lists the query blocks that attend key block `c`),
/// which the backward's dk/dv pass walks, is built and uploaded once alongside, in the same
/// layout. A host copy of the mask is kept for validation.
pub struct VulkanBlockMask {
    mask: BlockMask,
    buffer: Buffer,
    transposed: Buffer,
    ctx: Arc<VulkanContext>,
}

impl std::fmt::Debug for VulkanBlockMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanBlockMask")
            .field("tokens", &self.mask.tokens())
            .field("block_size", &self.mask.block_size())
            .field("nnz", &self.mask.nnz())
            .finish()
    }
}

impl VulkanBlockMask {
    /// Uploads `mask` into a host-visible storage buffer of `backend`'s device.
    pub fn new(backend: &VulkanBackend, mask: &BlockMask) -> Result<Self> {
        Self::on_context(backend.context(), mask)
    }

    /// Uploads `mask` into a host-visible storage buffer of `ctx`'s device.
    pub fn on_context(ctx: &Arc<VulkanContext>, mask: &BlockMask) -> Result<Self> {
        let upload = |m: &BlockMask| {
            let words: Vec<u32> = m.indptr().iter().chain(m.indices()).copied().collect();
            Buffer::from_bytes(ctx, bytemuck::cast_slice(&words))
        };
        Ok(Self {
            mask: mask.clone(),
            buffer: upload(mask)?,
            transposed: upload(&mask.transpose())?,
            ctx: ctx.clone(),
        })
    }

    /// The mask it holds.
    pub fn mask(&self) -> &BlockMask {
        &self.mask
    }

    /// The device buffer: `indptr` then `indices`, u32.
    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    /// The device buffer of the transposed mask ([`BlockMask::transpose`]): `indptr` then
    /// `indices`, u32.
    pub fn transposed_buffer(&self) -> &Buffer {
        &self.transposed
    }

    /// Whether the mask was uploaded to `ctx`'s device.
    pub(crate) fn is_on(&self, ctx: &Arc<VulkanContext>) -> bool {
        Arc::ptr_eq(&self.ctx, ctx)
    }

    /// Bytes the shaders read of either buffer (the transpose has as many blocks and entries):
    /// `4 · (num_blocks + 1 + nnz)`.
    pub(crate) fn bytes(&self) -> u64 {
        4 * (self.mask.num_blocks() as u64 + 1 + self.mask.nnz() as u64)
    }
}

/// Rows per streamed tile of a portable attention shader: the largest of 32, 16, 8 whose
/// `shared_bytes(head_dim, rows)` fit `max_shared`, or [`Error::Unsupported`] for `op` naming
/// the need.
pub(super) fn streamed_tile(
    op: &'static str,
    head_dim: u32,
    max_shared: u32,
    shared_bytes: fn(u32, u32) -> u32,
) -> Result<u32> {
    [32u32, 16, 8]
        .into_iter()
        .find(|&t| shared_bytes(head_dim, t) <= max_shared)
        .ok_or_else(|| Error::Unsupported {
            op,
            backend: BackendKind::Vulkan,
            reason: format!(
                "head_dim {head_dim} needs {} bytes of shared memory, the device has {max_shared}",
                shared_bytes(head_dim, 8)
            ),
        })
}

/// The shader of a block-sparse attention forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKernel {
    /// `sparse_attention.comp`: any device with subgroup arithmetic.
    Portable,
    /// `sparse_attention_coopmat.comp`: f16 cooperative matrices (see
    /// [`VulkanBackend::attention_uses_cooperative_matrix`]).
    Coopmat,
}

impl AttentionKernel {
    /// `portable` or `coopmat`.
    pub fn name(&self) -> &'static str {
        match self {
            AttentionKernel::Portable => "portable",
            AttentionKernel::Coopmat => "coopmat",
        }
    }
}

impl VulkanBackend {
    /// The shader [`VulkanBackend::record_sparse_attention`] runs `op` with for a mask of
    /// `block_size` blocks: a plan stored for the shape class ([`crate::plan::VulkanPlans`],
    /// `tessera tune --backend vulkan --op attention`) where the device runs it, else the
    /// cooperative-matrix shader where it runs
    /// ([`VulkanBackend::attention_uses_cooperative_matrix`]), else the portable one.
    pub fn attention_plan(&self, op: &SparseAttention, mask: &BlockMask) -> AttentionKernel {
        let block_size = mask.block_size();
        if let Some(kernel) = self
            .plans()
            .attention(&crate::plan::AttentionClass::of(op, mask))
        {
            if self.attention_kernel_runs(kernel, block_size, op.head_dim) {
                return kernel;
            }
            log::info!("the stored attention plan {kernel:?} does not run here");
        }
        self.attention_candidates(op, mask)[0]
    }

    /// Whether this device runs `kernel` for a mask of `block_size` and this `head_dim` (the
    /// portable shader everywhere, the cooperative-matrix one where
    /// [`VulkanBackend::attention_uses_cooperative_matrix`]).
    fn attention_kernel_runs(
        &self,
        kernel: AttentionKernel,
        block_size: usize,
        head_dim: usize,
    ) -> bool {
        kernel == AttentionKernel::Portable
            || self.attention_uses_cooperative_matrix(block_size, head_dim)
    }

    /// Every shader this device runs `op` with for `mask`'s block size, the heuristic's pick
    /// first (the cooperative-matrix shader where it runs; what `tessera tune --backend vulkan
    /// --op attention` times).
    pub fn attention_candidates(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
    ) -> Vec<AttentionKernel> {
        [AttentionKernel::Coopmat, AttentionKernel::Portable]
            .into_iter()
            .filter(|&k| self.attention_kernel_runs(k, mask.block_size(), op.head_dim))
            .collect()
    }

    /// Whether [`VulkanBackend::record_sparse_attention`] (and the host API) takes the
    /// cooperative-matrix path by default for a mask of `block_size` and this `head_dim`, and
    /// whether [`AttentionKernel::Coopmat`] runs there at all: the device has
    /// 16x16x16 f16 x f16 -> f32 cooperative matrices in subgroup scope, f16 arithmetic, subgroup
    /// shuffles and a subgroup size fixed at 32, `TESSERA_VULKAN_PORTABLE` is not `1`,
    /// `block_size` is a multiple of 64 (so 64 and 128 qualify; other block sizes take the
    /// portable path, whose smaller query tiles fit them), `head_dim` is 64 or 128, and a key
    /// tile of at least 16 fits the shared memory ([`coopmat_key_tile`]). f16 and bf16 take the
    /// same path.
    pub fn attention_uses_cooperative_matrix(&self, block_size: usize, head_dim: usize) -> bool {
        let f = self.features();
        super::f16_cooperative_matrix_available(self.context())
            && f.subgroup_shuffle
            && f.max_workgroup_invocations >= 128
            && block_size > 0
            && block_size % COOPMAT_QUERY_TILE as usize == 0
            && matches!(head_dim, 64 | 128)
            && coopmat_key_tile(head_dim as u32, f.max_shared_memory_bytes).is_ok()
    }

    /// Records block-sparse attention into `cmd`: for each batch and head,
    /// `o = softmax(scale · q kᵀ + M) v` with `M` from `mask` (see [`SparseAttention`]), and
    /// `lse`, the natural-log log-sum-exp of each query row's scaled scores.
    ///
    /// Buffer ranges (see [`BufferRange`]), row-major: `q`, `k`, `v` and `o` (written)
    /// `[batch, tokens, heads, head_dim]` of `op.dtype` (f16 or bf16, `2 · batch · tokens ·
    /// heads · head_dim` bytes each), `lse` (written) f32 `[batch, heads, tokens]`. `mask` must
    /// live on this backend's device and cover `op.tokens`; every block row lists at least one
    /// key block. Shapes, types and sizes are checked ([`SparseAttention::validate`]); values
    /// are not.
    ///
    /// Synchronization: the caller records a barrier making the writes of q, k, v visible to
    /// compute-shader reads before this, and one from compute-shader writes to whatever reads
    /// `o` and `lse` after it; then submits and keeps the buffers (and `mask`) alive until the
    /// work completes.
    ///
    /// # Safety
    /// `cmd` must be a command buffer of this backend's device ([`VulkanBackend::context`]) in
    /// the recording state, and the ranges must lie in live buffers of that device created with
    /// `STORAGE_BUFFER` usage.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn record_sparse_attention(
        &self,
        cmd: vk::CommandBuffer,
        op: &SparseAttention,
        mask: &VulkanBlockMask,
        q: BufferRange,
        k: BufferRange,
        v: BufferRange,
        o: BufferRange,
        lse: BufferRange,
    ) -> Result<()> {
        let kernel = self.attention_plan(op, mask.mask());
        // SAFETY: forwarded from the caller.
        unsafe { self.record_sparse_attention_with(cmd, op, kernel, mask, q, k, v, o, lse) }
    }

    /// [`VulkanBackend::record_sparse_attention`] with the shader given (tests, tuning):
    /// [`Error::Unsupported`] where the device cannot run it for the mask's block size and
    /// `head_dim`.
    ///
    /// # Safety
    /// As [`VulkanBackend::record_sparse_attention`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn record_sparse_attention_with(
        &self,
        cmd: vk::CommandBuffer,
        op: &SparseAttention,
        kernel: AttentionKernel,
        mask: &VulkanBlockMask,
        q: BufferRange,
        k: BufferRange,
        v: BufferRange,
        o: BufferRange,
        lse: BufferRange,
    ) -> Result<()> {
        op.validate(mask.mask())?;
        if !mask.is_on(self.context()) {
            return Err(Error::invalid(
                OP,
                "mask",
                "a mask uploaded to this backend's device",
                "a mask of another Vulkan device",
            ));
        }
        let block_size = mask.mask().block_size();
        let coopmat = kernel == AttentionKernel::Coopmat;
        if !self.attention_kernel_runs(kernel, block_size, op.head_dim) {
            return Err(Error::Unsupported {
                op: OP,
                backend: tessera_core::BackendKind::Vulkan,
                reason: format!(
                    "the cooperative-matrix attention shader at block size {block_size}, \
                     head_dim {} (see attention_uses_cooperative_matrix)",
                    op.head_dim
                ),
            });
        }
        let bq = if coopmat {
            COOPMAT_QUERY_TILE
        } else {
            query_tile(block_size)
        };
        let f = self.features();
        if coopmat {
            // The cooperative-matrix shader reads q, k and v as 16-byte vectors.
            for (arg, range) in [("q", &q), ("k", &k), ("v", &v)] {
                if range.offset % 16 != 0 {
                    return Err(Error::invalid(
                        OP,
                        arg,
                        "an offset that is a multiple of 16 bytes",
                        range.offset.to_string(),
                    ));
                }
            }
        }
        let elems = op.qkv_len() as u64;
        let bytes = 2 * elems;
        let q = bind_range(OP, "q", &q, bytes, f)?;
        let k = bind_range(OP, "k", &k, bytes, f)?;
        let v = bind_range(OP, "v", &v, bytes, f)?;
        let o = bind_range(OP, "o", &o, bytes, f)?;
        let lse = bind_range(OP, "lse", &lse, 4 * op.lse_len() as u64, f)?;
        let mask_range = bind_range(OP, "mask", &mask.buffer.range(), mask.bytes(), f)?;
        // The shader indexes words of q, k, v, o and elements of lse with 32-bit integers.
        to_u32(OP, "batch * tokens * heads * head_dim", elems)?;
        to_u32(OP, "batch * heads * tokens", op.lse_len() as u64)?;
        let tiles = op.tokens.div_ceil(bq as usize) as u64;
        let groups = tiles * op.heads as u64 * op.batch as u64;
        let groups_u32 = to_u32(OP, "workgroups", groups)?;
        let grid = linear_groups(groups, f.max_workgroup_count)?;
        let head_dim = op.head_dim as u32;
        let bf16 = op.dtype == DType::BF16;
        let pipeline = if coopmat {
            let spec = SparseAttentionCoopmatSpec {
                head_dim,
                key_tile: coopmat_key_tile(head_dim, f.max_shared_memory_bytes)?,
                bf16,
            };
            self.pipelines().get(&SPARSE_ATTENTION_COOPMAT, &spec)?
        } else {
            let spec = SparseAttentionSpec {
                query_tile: bq,
                head_dim,
                key_tile: streamed_tile(
                    OP,
                    head_dim,
                    f.max_shared_memory_bytes,
                    portable_shared_bytes,
                )?,
                bf16,
            };
            self.pipelines().get(&SPARSE_ATTENTION, &spec)?
        };
        let scale_log2 = (op.softmax_scale as f64 * std::f64::consts::LOG2_E) as f32;
        // SAFETY: the caller guarantees that `cmd` records on this device and that the ranges
        // are valid storage buffers; the ranges were checked to hold what the shader accesses,
        // and the mask buffer is this device's.
        unsafe {
            pipeline.record(
                cmd,
                &[q, k, v, mask_range, o, lse],
                &[
                    groups_u32,
                    tiles as u32,
                    op.tokens as u32,
                    op.heads as u32,
                    block_size as u32,
                    mask.mask().num_blocks() as u32,
                    mask.mask().nnz() as u32,
                    scale_log2.to_bits(),
                ],
                grid,
            )
        }
    }

    /// The host API: validates, uploads, runs, downloads.
    pub(crate) fn sparse_attention_host(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
        q: TensorRef<'_>,
        k: TensorRef<'_>,
        v: TensorRef<'_>,
    ) -> Result<AttentionOutput> {
        op.validate_args(mask, q, k, v)?;
        let ctx = self.context();
        let device_mask = VulkanBlockMask::new(self, mask)?;
        let q_buf = Buffer::from_bytes(ctx, q.as_bytes())?;
        let k_buf = Buffer::from_bytes(ctx, k.as_bytes())?;
        let v_buf = Buffer::from_bytes(ctx, v.as_bytes())?;
        let n = op.qkv_len();
        let nan16 = match op.dtype {
            DType::BF16 => bf16::NAN.to_bits(),
            _ => f16::NAN.to_bits(),
        };
        // Outputs start as NaN so that an element the shader fails to write shows up.
        let o_buf = Buffer::filled(ctx, 2 * n, &nan16.to_le_bytes())?;
        let lse_buf = Buffer::filled(ctx, 4 * op.lse_len(), &f32::NAN.to_le_bytes())?;
        self.one_shot().run(|cmd| {
            // SAFETY: `cmd` is the backend's own command buffer, recording; the buffers are
            // live storage buffers of this device, kept until `run` has waited.
            unsafe {
                self.record_sparse_attention(
                    cmd,
                    op,
                    &device_mask,
                    q_buf.range(),
                    k_buf.range(),
                    v_buf.range(),
                    o_buf.range(),
                    lse_buf.range(),
                )
            }
        })?;
        let o_bytes = o_buf.read(0, 2 * n)?;
        let halves = o_bytes
            .chunks_exact(2)
            .map(|h| u16::from_le_bytes([h[0], h[1]]));
        let o = match op.dtype {
            DType::BF16 => Tensor::BF16(halves.map(bf16::from_bits).collect()),
            _ => Tensor::F16(halves.map(f16::from_bits).collect()),
        };
        let lse = lse_buf
            .read(0, 4 * op.lse_len())?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(AttentionOutput { o, lse })
    }
}
