//! Block-sparse (radial) attention on CUDA.
//!
//! Two kernels, chosen by the launch plan ([`crate::plan::AttentionKernel`]):
//! - `kernels/sparse_attention.cu`, FlashAttention-2 style: one CTA of 4 warps per (64 query rows,
//!   head, batch), warps of 16 query rows, the row's key blocks walked in tiles of 64 keys with
//!   `mma.sync` and an online softmax in f32. sm_80 and later, head_dim 64 or 128, f16 or bf16,
//!   mask block sizes 64 or 128: the fallback everywhere.
//! - `kernels/sm90/sparse_attention.cu` (sm_90a, mask blocks of 128): wgmma, a producer
//!   thread filling Q and the K and V tiles through TMA (3-D tensor maps) and mbarriers, two math warpgroups of 64
//!   query rows whose next Q Kᵀ overlaps the softmax of the previous block; one CTA per (block
//!   row, head, batch), the rows of a head in bins of length, longest first. The default on
//!   Hopper.
//!
//! Device API: upload the mask once as a [`DeviceBlockMask`], wrap the tensors as
//! [`DeviceHalf`] / [`DeviceHalfMut`] and call [`CudaBackend::sparse_attention_on`].

use super::{check_device_len, download, to_i32, upload};
use crate::plan::attention::{AttentionKernel, ATTENTION_BLOCK_SIZES, ATTENTION_SM90_QUERY_TILE};
use crate::plan::tune::{scratch_buffer, time_each, ScratchRng};
use crate::plan::{
    AttentionShape, AttentionVariant, KernelArgs, LaunchOptions, PlannedOp, TensorMap, TmaDtype,
    TmaSwizzle, TuneOutcome,
};
use crate::CudaBackend;
use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DeviceRepr, SyncOnDrop,
};
use half::{bf16, f16};
use std::sync::Arc;
use tessera_core::ops::attention::{AttentionOutput, SparseAttention};
use tessera_core::{BackendKind, BlockMask, DType, Error, Result, Tensor, TensorRef};

const OP: &str = "sparse_attention";

/// Mask block sizes the CUDA kernel supports.
pub const SUPPORTED_BLOCK_SIZES: [usize; 2] = [
    ATTENTION_BLOCK_SIZES[0] as usize,
    ATTENTION_BLOCK_SIZES[1] as usize,
];

pub(crate) fn check_block_size(block_size: usize) -> Result<()> {
    if SUPPORTED_BLOCK_SIZES.contains(&block_size) {
        Ok(())
    } else {
        Err(Error::Unsupported {
            op: OP,
            backend: BackendKind::Cuda,
            reason: format!("mask block size {block_size}: the CUDA kernel supports 64 and 128"),
        })
    }
}

/// A [`BlockMask`] uploaded to the device once, for any number of
/// [`CudaBackend::sparse_attention_on`] and [`CudaBackend::sparse_attention_backward_on`] calls
/// (every batch, head and layer that shares it): the mask and its transpose
/// ([`BlockMask::transpose`], which the backward's dk/dv pass walks) with its ranks
/// ([`transposed_ranks`], the deterministic fused-dq backward's add order), built once here.
///
/// It keeps the host mask too (a few bytes per block), so that each call can validate the
/// descriptor against it without reading the device.
#[derive(Debug)]
pub struct DeviceBlockMask {
    mask: BlockMask,
    indptr: CudaSlice<u32>,
    indices: CudaSlice<u32>,
    transposed_indptr: CudaSlice<u32>,
    transposed_indices: CudaSlice<u32>,
    transposed_ranks: CudaSlice<u32>,
    row_order: CudaSlice<u32>,
}

/// The rank of each entry of the transposed mask (`t = mask.transpose()`) in its query
/// block's row of `mask`: `nnz` u32, parallel to `t.indices()`; entry `e` of row `kb` of `t`,
/// query block `qb = t.indices()[e]`, holds the position of `kb` in `mask.row(qb)` (sorted),
/// i.e. how many key blocks before `kb` attend `qb`. The deterministic fused-dq backward adds
/// key block `kb`'s dQ tiles of `qb` after exactly that many others (its turn).
pub fn transposed_ranks(mask: &BlockMask, transposed: &BlockMask) -> Vec<u32> {
    // Query blocks are visited in increasing order, as BlockMask::transpose fills its rows, so
    // each key block's next transposed entry is the one of this query block.
    let mut next: Vec<u32> = transposed.indptr().to_vec();
    let mut ranks = vec![0u32; transposed.indices().len()];
    for qb in 0..mask.num_blocks() {
        for (rank, &kb) in mask.row(qb).iter().enumerate() {
            let slot = &mut next[kb as usize];
            ranks[*slot as usize] = rank as u32;
            *slot += 1;
        }
    }
    ranks
}

/// Length bins of the Hopper forward kernel's row order ([`rows_by_length_bins`]).
const ROW_ORDER_LENGTH_BINS: u64 = 24;

/// The mask's block rows in the order the Hopper forward kernel's CTAs take them (within each
/// head): in [`ROW_ORDER_LENGTH_BINS`] bins of row length, each 1/24 of the longest row's
/// blocks wide, the longest bin first and by position within a bin. The long rows go first, so
/// that they do not run last, and the CTAs that run together are neighbouring rows of about the
/// same length, which walk nearly the same key blocks at the same time and finish together. On
/// the radial masks this is 1-3 % faster than exact longest-first order at the hunyuan shapes
/// and the same at wan (kernels-cuda/dev/NOTES-sparse-attention-sm90.md, session 24).
fn rows_by_length_bins(mask: &BlockMask) -> Vec<u32> {
    let indptr = mask.indptr();
    let len = |r: u32| u64::from(indptr[r as usize + 1] - indptr[r as usize]);
    let mut rows: Vec<u32> = (0..mask.num_blocks() as u32).collect();
    let longest = rows.iter().map(|&r| len(r)).max().unwrap_or(0);
    // sort_by_key is stable: rows of one bin keep their positional order.
    rows.sort_by_key(|&r| std::cmp::Reverse(len(r) * ROW_ORDER_LENGTH_BINS / (longest + 1)));
    rows
}

/// Uploads BSR column indices; an empty allocation is not allowed, so a mask with no block
/// (which no op accepts) gets a one-element placeholder.
fn upload_indices(stream: &Arc<CudaStream>, indices: &[u32]) -> Result<CudaSlice<u32>> {
    if indices.is_empty() {
        upload(stream, &[0u32])
    } else {
        upload(stream, indices)
    }
}

impl DeviceBlockMask {
    /// Uploads `mask` and its transpose on `stream` (asynchronously with respect to the host;
    /// later work on the stream sees them).
    pub fn new(stream: &Arc<CudaStream>, mask: &BlockMask) -> Result<Self> {
        let transposed = mask.transpose();
        Ok(Self {
            mask: mask.clone(),
            indptr: upload(stream, mask.indptr())?,
            indices: upload_indices(stream, mask.indices())?,
            transposed_indptr: upload(stream, transposed.indptr())?,
            transposed_indices: upload_indices(stream, transposed.indices())?,
            transposed_ranks: upload_indices(stream, &transposed_ranks(mask, &transposed))?,
            row_order: upload_indices(stream, &rows_by_length_bins(mask))?,
        })
    }

    /// The block rows in the Hopper forward kernel's CTA order on the device, `num_blocks` u32:
    /// by length bins, longest first, by position within a bin (`rows_by_length_bins`).
    pub fn row_order(&self) -> &CudaSlice<u32> {
        &self.row_order
    }

    /// The host mask it was made from.
    pub fn mask(&self) -> &BlockMask {
        &self.mask
    }

    /// Tokens covered (queries and keys).
    pub fn tokens(&self) -> usize {
        self.mask.tokens()
    }

    /// Block edge in tokens.
    pub fn block_size(&self) -> usize {
        self.mask.block_size()
    }

    /// Blocks per side: `ceil(tokens / block_size)`.
    pub fn num_blocks(&self) -> usize {
        self.mask.num_blocks()
    }

    /// The BSR row pointer on the device, `num_blocks + 1` u32.
    pub fn indptr(&self) -> &CudaSlice<u32> {
        &self.indptr
    }

    /// The BSR column indices on the device, `nnz` u32 (one placeholder element when `nnz` is 0).
    pub fn indices(&self) -> &CudaSlice<u32> {
        &self.indices
    }

    /// The transposed mask's BSR row pointer on the device, `num_blocks + 1` u32: row `c` lists
    /// the query blocks that attend key block `c`.
    pub fn transposed_indptr(&self) -> &CudaSlice<u32> {
        &self.transposed_indptr
    }

    /// The transposed mask's BSR column indices (query blocks, sorted within each row) on the
    /// device, `nnz` u32 (one placeholder element when `nnz` is 0).
    pub fn transposed_indices(&self) -> &CudaSlice<u32> {
        &self.transposed_indices
    }

    /// [`transposed_ranks`] on the device, `nnz` u32 parallel to
    /// [`DeviceBlockMask::transposed_indices`] (one placeholder element when `nnz` is 0).
    pub fn transposed_ranks(&self) -> &CudaSlice<u32> {
        &self.transposed_ranks
    }
}

/// A read-only device tensor of 16-bit floats: q, k or v of [`CudaBackend::sparse_attention_on`].
/// Its variant is its element type and must be the op's `dtype`.
#[derive(Debug)]
pub enum DeviceHalf<'a> {
    /// f16 elements.
    F16(CudaView<'a, f16>),
    /// bf16 elements.
    BF16(CudaView<'a, bf16>),
}

/// A writable device tensor of 16-bit floats: o of [`CudaBackend::sparse_attention_on`].
#[derive(Debug)]
pub enum DeviceHalfMut<'a> {
    /// f16 elements.
    F16(CudaViewMut<'a, f16>),
    /// bf16 elements.
    BF16(CudaViewMut<'a, bf16>),
}

/// The 16-bit element types of attention (f16, bf16): what the host wrappers need to run one
/// code path for both.
pub(crate) trait HalfElement: DeviceRepr + Default + Clone + Copy {
    /// The NaN that output buffers start as (an element a kernel fails to write shows up).
    const NAN: Self;
    /// A device tensor of this type.
    fn device(view: CudaView<'_, Self>) -> DeviceHalf<'_>;
    /// A writable device tensor of this type.
    fn device_mut(view: CudaViewMut<'_, Self>) -> DeviceHalfMut<'_>;
    /// A host tensor of this type.
    fn tensor(values: Vec<Self>) -> Tensor;
}

impl HalfElement for f16 {
    const NAN: Self = f16::NAN;
    fn device(view: CudaView<'_, Self>) -> DeviceHalf<'_> {
        DeviceHalf::F16(view)
    }
    fn device_mut(view: CudaViewMut<'_, Self>) -> DeviceHalfMut<'_> {
        DeviceHalfMut::F16(view)
    }
    fn tensor(values: Vec<Self>) -> Tensor {
        Tensor::F16(values)
    }
}

impl HalfElement for bf16 {
    const NAN: Self = bf16::NAN;
    fn device(view: CudaView<'_, Self>) -> DeviceHalf<'_> {
        DeviceHalf::BF16(view)
    }
    fn device_mut(view: CudaViewMut<'_, Self>) -> DeviceHalfMut<'_> {
        DeviceHalfMut::BF16(view)
    }
    fn tensor(values: Vec<Self>) -> Tensor {
        Tensor::BF16(values)
    }
}

/// The TMA tensor map through which the Hopper attention kernels read a `[batch, tokens, heads,
/// head_dim]` tensor of `op`'s dtype at `address`: the 3-D tensor (heads x head_dim, tokens,
/// batch), boxes of `box_tokens` tokens x 64 columns with the 128-byte swizzle, so that tokens at
/// or past `tokens` of a batch read as zeros (`sm90/sparse_attention.cu`: 128-token boxes;
/// `sm90/sparse_attention_backward.cu`: 64).
pub(crate) fn token_tile_map(
    op: &SparseAttention,
    address: u64,
    box_tokens: u32,
) -> Result<TensorMap> {
    let dtype = match op.dtype {
        DType::BF16 => TmaDtype::BF16,
        _ => TmaDtype::F16,
    };
    let row = (op.heads * op.head_dim) as u64;
    TensorMap::tiled_3d(
        address,
        dtype,
        [row, op.tokens as u64, op.batch as u64],
        [2 * row, 2 * row * op.tokens as u64],
        [64, box_tokens, 1],
        TmaSwizzle::B128,
    )
}

impl DeviceHalf<'_> {
    /// The buffer's address on `stream`, and the guard that records the stream's read of it
    /// when dropped (for a launch that reads it through a tensor map, not a pointer argument).
    pub(crate) fn device_ptr<'s>(&'s self, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
        match self {
            DeviceHalf::F16(x) => x.device_ptr(stream),
            DeviceHalf::BF16(x) => x.device_ptr(stream),
        }
    }

    pub(crate) fn dtype(&self) -> DType {
        match self {
            DeviceHalf::F16(_) => DType::F16,
            DeviceHalf::BF16(_) => DType::BF16,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            DeviceHalf::F16(v) => v.len(),
            DeviceHalf::BF16(v) => v.len(),
        }
    }

    pub(crate) fn address(&self, stream: &CudaStream) -> u64 {
        match self {
            DeviceHalf::F16(v) => v.device_ptr(stream).0,
            DeviceHalf::BF16(v) => v.device_ptr(stream).0,
        }
    }
}

impl DeviceHalfMut<'_> {
    pub(crate) fn dtype(&self) -> DType {
        match self {
            DeviceHalfMut::F16(_) => DType::F16,
            DeviceHalfMut::BF16(_) => DType::BF16,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            DeviceHalfMut::F16(v) => v.len(),
            DeviceHalfMut::BF16(v) => v.len(),
        }
    }

    pub(crate) fn address(&self, stream: &CudaStream) -> u64 {
        match self {
            DeviceHalfMut::F16(v) => v.device_ptr(stream).0,
            DeviceHalfMut::BF16(v) => v.device_ptr(stream).0,
        }
    }
}

impl CudaBackend {
    /// Block-sparse attention forward on `stream`, without synchronizing: reads `q`, `k`, `v`
    /// (`[batch, tokens, heads, head_dim]`, all of `op.dtype`) and writes `o` (same layout and
    /// type) and `lse` (f32 `[batch, heads, tokens]`, natural log) for every query row.
    ///
    /// Checks the descriptor against the mask (as [`SparseAttention::validate`] does), the
    /// element types, the lengths, and that q, k, v and o start on 16-byte boundaries (the
    /// kernel moves 16 bytes at a time; whole `cudarc` allocations always do). The mask's block
    /// size must be 64 or 128 (otherwise [`Error::Unsupported`]). Values are not checked:
    /// non-finite inputs give non-finite outputs.
    #[allow(clippy::too_many_arguments)]
    pub fn sparse_attention_on(
        &self,
        stream: &CudaStream,
        op: &SparseAttention,
        mask: &DeviceBlockMask,
        q: &DeviceHalf<'_>,
        k: &DeviceHalf<'_>,
        v: &DeviceHalf<'_>,
        o: &mut DeviceHalfMut<'_>,
        lse: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        op.validate(mask.mask())?;
        check_block_size(mask.block_size())?;
        let variant = self.sparse_attention_plan(op, mask.mask())?;
        self.sparse_attention_variant_on(stream, op, variant, mask, q, k, v, o, lse)
    }

    /// [`CudaBackend::sparse_attention_on`] with an explicit variant (a candidate of
    /// [`crate::plan::heuristics::attention_candidates`] for the op and the mask's block size),
    /// for tests and tuning.
    #[allow(clippy::too_many_arguments)]
    pub fn sparse_attention_variant_on(
        &self,
        stream: &CudaStream,
        op: &SparseAttention,
        variant: AttentionVariant,
        mask: &DeviceBlockMask,
        q: &DeviceHalf<'_>,
        k: &DeviceHalf<'_>,
        v: &DeviceHalf<'_>,
        o: &mut DeviceHalfMut<'_>,
        lse: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        op.validate(mask.mask())?;
        check_block_size(mask.block_size())?;
        let expected = AttentionShape {
            op,
            block_size: mask.block_size(),
            mask_density: mask.mask().density(),
        }
        .candidates(&self.runtime.arch)?;
        if !expected.contains(&variant) {
            return Err(Error::invalid(
                OP,
                "variant",
                format!(
                    "a variant for head_dim {}, {} and block size {}",
                    op.head_dim,
                    op.dtype,
                    mask.block_size()
                ),
                format!("{variant:?}"),
            ));
        }
        for (arg, t) in [("q", q), ("k", k), ("v", v)] {
            if t.dtype() != op.dtype {
                return Err(Error::invalid(
                    OP,
                    arg,
                    format!("dtype {}", op.dtype),
                    t.dtype().name(),
                ));
            }
            check_device_len(OP, arg, op.qkv_len(), t.len())?;
        }
        if o.dtype() != op.dtype {
            return Err(Error::invalid(
                OP,
                "o",
                format!("dtype {}", op.dtype),
                o.dtype().name(),
            ));
        }
        check_device_len(OP, "o", op.qkv_len(), o.len())?;
        check_device_len(OP, "lse", op.lse_len(), lse.len())?;
        let addresses = [
            ("q", q.address(stream)),
            ("k", k.address(stream)),
            ("v", v.address(stream)),
            ("o", o.address(stream)),
        ];
        for (arg, address) in addresses {
            if address % 16 != 0 {
                return Err(Error::invalid(
                    OP,
                    arg,
                    "a device address aligned to 16 bytes",
                    format!("{address:#x}"),
                ));
            }
        }
        let tokens = to_i32(OP, "tokens", op.tokens)?;
        let heads = to_i32(OP, "heads", op.heads)?;
        // batch is no kernel argument, but it must fit the grid's i32 arithmetic.
        to_i32(OP, "batch", op.batch)?;
        let scale_log2 = op.softmax_scale * std::f32::consts::LOG2_E;
        // Offsets are computed in 64 bits; the grid's y and z dimensions hold heads and batch
        // (checked by `grid`).
        let grid = variant.grid(op)?;
        let wgmma = variant.kernel == AttentionKernel::Wgmma;
        // The wgmma kernel reads q, k and v through TMA tensor maps of 128-token boxes. (Their
        // guards record the launch's reads when dropped, after the launch.)
        let (q_address, _q_read) = q.device_ptr(stream);
        let (k_address, _k_read) = k.device_ptr(stream);
        let (v_address, _v_read) = v.device_ptr(stream);
        let map = |address| token_tile_map(op, address, ATTENTION_SM90_QUERY_TILE);
        let maps = if wgmma {
            Some([map(q_address)?, map(k_address)?, map(v_address)?])
        } else {
            None
        };
        let mut args = KernelArgs::new(stream);
        match &maps {
            Some([q_map, k_map, v_map]) => {
                args.value(q_map).value(k_map).value(v_map);
            }
            None => {
                for t in [q, k, v] {
                    match t {
                        DeviceHalf::F16(x) => args.buffer(x),
                        DeviceHalf::BF16(x) => args.buffer(x),
                    };
                }
            }
        }
        match o {
            DeviceHalfMut::F16(x) => args.buffer_mut(x),
            DeviceHalfMut::BF16(x) => args.buffer_mut(x),
        };
        args.buffer_mut(lse)
            .buffer(&mask.indptr)
            .buffer(&mask.indices);
        if wgmma {
            args.buffer(&mask.row_order);
        }
        args.value(&tokens).value(&heads).value(&scale_log2);
        // SAFETY: the kernel's parameters are (const u16* q, k, v, or for wgmma three 128-byte
        // tensor maps q_map, k_map, v_map; u16* o, float* lse, const u32* indptr, indices,
        // [wgmma: const u32* row_order,] int tokens, int heads, float scale_log2) in this order.
        // q, k, v and o hold batch*tokens*heads*head_dim 16-bit elements and start 16-byte
        // aligned, lse batch*heads*tokens floats (all checked above); the maps cover exactly q,
        // k and v (TMA reads zeros past them). The mask was validated against the op
        // (num_blocks + 1 row pointers, sorted in-range columns), row_order is a permutation of
        // its block rows, and the grid has one CTA per (64 query rows, head, batch), or for
        // wgmma one per (block row, head, batch) (checked by `grid`). The kernels read and write
        // only within those bounds (rows at or past `tokens` are neither read nor written).
        unsafe { self.launch_kernel(&variant, grid, args, LaunchOptions::default()) }
    }

    /// The attention variant for `op` with `mask` on this device (the plan of its shape class).
    pub fn sparse_attention_plan(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
    ) -> Result<AttentionVariant> {
        check_block_size(mask.block_size())?;
        let shape = AttentionShape {
            op,
            block_size: mask.block_size(),
            mask_density: mask.density(),
        };
        self.runtime
            .plans
            .plan(&shape, &mut |c: &[AttentionVariant]| {
                self.time_sparse_attention(op, mask, c)
            })
    }

    /// Times every attention candidate for `op` with `mask` on scratch buffers and records the
    /// fastest as the plan of its shape class (see [`crate::plan::PlanCache::tune`]).
    pub fn tune_sparse_attention(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
    ) -> Result<TuneOutcome> {
        op.validate(mask)?;
        check_block_size(mask.block_size())?;
        let shape = AttentionShape {
            op,
            block_size: mask.block_size(),
            mask_density: mask.density(),
        };
        self.runtime
            .plans
            .tune(&shape, &mut |c: &[AttentionVariant]| {
                self.time_sparse_attention(op, mask, c)
            })
    }

    /// Median milliseconds of each candidate for `op` with `mask`, on scratch buffers of random
    /// values in [-2, 2) (never the caller's) on the backend's stream.
    fn time_sparse_attention(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
        candidates: &[AttentionVariant],
    ) -> Result<Vec<f64>> {
        op.validate(mask)?;
        let stream = &self.runtime.stream;
        let dmask = DeviceBlockMask::new(stream, mask)?;
        let mut rng = ScratchRng(0xa77e_0001);
        let values: Vec<f32> = (0..1 << 20).map(|_| rng.uniform(-2.0, 2.0)).collect();
        let mut lse = scratch_buffer::<f32>(stream, op.lse_len(), &[])?;
        let n = op.qkv_len();
        match op.dtype {
            DType::F16 => {
                let pattern: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                let q = scratch_buffer(stream, n, &pattern)?;
                let k = scratch_buffer(stream, n, &pattern[7..])?;
                let v = scratch_buffer(stream, n, &pattern[13..])?;
                let mut o = scratch_buffer::<f16>(stream, n, &[])?;
                time_each(stream, candidates, |c| {
                    self.sparse_attention_variant_on(
                        stream,
                        op,
                        *c,
                        &dmask,
                        &DeviceHalf::F16(q.slice(0..n)),
                        &DeviceHalf::F16(k.slice(0..n)),
                        &DeviceHalf::F16(v.slice(0..n)),
                        &mut DeviceHalfMut::F16(o.slice_mut(0..n)),
                        &mut lse.slice_mut(0..op.lse_len()),
                    )
                })
            }
            _ => {
                let pattern: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
                let q = scratch_buffer(stream, n, &pattern)?;
                let k = scratch_buffer(stream, n, &pattern[7..])?;
                let v = scratch_buffer(stream, n, &pattern[13..])?;
                let mut o = scratch_buffer::<bf16>(stream, n, &[])?;
                time_each(stream, candidates, |c| {
                    self.sparse_attention_variant_on(
                        stream,
                        op,
                        *c,
                        &dmask,
                        &DeviceHalf::BF16(q.slice(0..n)),
                        &DeviceHalf::BF16(k.slice(0..n)),
                        &DeviceHalf::BF16(v.slice(0..n)),
                        &mut DeviceHalfMut::BF16(o.slice_mut(0..n)),
                        &mut lse.slice_mut(0..op.lse_len()),
                    )
                })
            }
        }
    }

    pub(crate) fn sparse_attention_host(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
        q: TensorRef<'_>,
        k: TensorRef<'_>,
        v: TensorRef<'_>,
    ) -> Result<AttentionOutput> {
        op.validate_args(mask, q, k, v)?;
        check_block_size(mask.block_size())?;
        let stream = &self.runtime.stream;
        let dmask = DeviceBlockMask::new(stream, mask)?;
        // Outputs start as NaN so that an element the kernel fails to write shows up.
        let mut lse = upload(stream, &vec![f32::NAN; op.lse_len()])?;
        let o = match (q, k, v) {
            (TensorRef::F16(q), TensorRef::F16(k), TensorRef::F16(v)) => {
                self.sparse_attention_typed(stream, op, &dmask, [q, k, v], &mut lse)?
            }
            (TensorRef::BF16(q), TensorRef::BF16(k), TensorRef::BF16(v)) => {
                self.sparse_attention_typed(stream, op, &dmask, [q, k, v], &mut lse)?
            }
            // validate_args checked that all three are of op.dtype, which is f16 or bf16.
            _ => {
                return Err(Error::invalid(
                    OP,
                    "q",
                    "f16 or bf16 tensors of one dtype",
                    q.dtype().name(),
                ))
            }
        };
        Ok(AttentionOutput {
            o,
            lse: download(stream, &lse)?,
        })
    }

    /// The host forward for one element type: q, k, v uploaded, o (NaN-filled) computed and
    /// downloaded; lse written into `lse`.
    fn sparse_attention_typed<T: HalfElement>(
        &self,
        stream: &Arc<CudaStream>,
        op: &SparseAttention,
        mask: &DeviceBlockMask,
        [q, k, v]: [&[T]; 3],
        lse: &mut CudaSlice<f32>,
    ) -> Result<Tensor> {
        let (q, k, v) = (upload(stream, q)?, upload(stream, k)?, upload(stream, v)?);
        let mut o = upload(stream, &vec![T::NAN; op.qkv_len()])?;
        self.sparse_attention_on(
            stream,
            op,
            mask,
            &T::device(q.as_view()),
            &T::device(k.as_view()),
            &T::device(v.as_view()),
            &mut T::device_mut(o.as_view_mut()),
            &mut lse.as_view_mut(),
        )?;
        Ok(T::tensor(download(stream, &o)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_testing::backward::random_mask;
    use tessera_testing::Rng;

    /// The rank of every transposed entry, by brute force: the position of the key block in
    /// its query block's row, found by a linear search.
    fn brute_force_ranks(mask: &BlockMask, transposed: &BlockMask) -> Vec<u32> {
        let mut ranks = Vec::new();
        for kb in 0..transposed.num_blocks() {
            for &qb in transposed.row(kb) {
                let row = mask.row(qb as usize);
                let rank = row
                    .iter()
                    .position(|&c| c as usize == kb)
                    .expect("a transposed entry is an entry of the mask");
                ranks.push(rank as u32);
            }
        }
        ranks
    }

    #[test]
    fn row_order_is_a_permutation_by_length_bins_then_position() {
        let mut rng = Rng::new(0x51e7);
        for (tokens, block) in [(1, 64), (300, 128), (1000, 64), (5000, 128)] {
            for density in [0.0, 0.05, 0.3, 1.0] {
                let mask = random_mask(&mut rng, tokens, block, density, true);
                let order = rows_by_length_bins(&mask);
                let mut sorted = order.clone();
                sorted.sort_unstable();
                let all: Vec<u32> = (0..mask.num_blocks() as u32).collect();
                assert_eq!(
                    sorted, all,
                    "a permutation of the rows (t{tokens} B{block} d{density})"
                );
                let longest = (0..mask.num_blocks())
                    .map(|r| mask.row(r).len())
                    .max()
                    .unwrap_or(0);
                let bin = |r: u32| {
                    mask.row(r as usize).len() as u64 * ROW_ORDER_LENGTH_BINS / (longest as u64 + 1)
                };
                for pair in order.windows(2) {
                    let (a, b) = (pair[0], pair[1]);
                    assert!(
                        bin(a) > bin(b) || (bin(a) == bin(b) && a < b),
                        "rows {a}, {b} out of order"
                    );
                }
            }
        }
        // Rows of 1..=48 blocks in a lower-triangular mask: bins of about two lengths (bin =
        // length * 24 / 49), the longest bin first, within it the shorter (earlier) row first.
        let nb = 48;
        let bitmap: Vec<bool> = (0..nb * nb).map(|i| i % nb <= i / nb).collect();
        let mask = BlockMask::from_dense_bitmap(nb * 64, 64, &bitmap).unwrap();
        let order = rows_by_length_bins(&mask);
        assert_eq!(&order[..4], &[46, 47, 44, 45]);
        assert_eq!(&order[nb - 2..], &[0, 1]);
    }

    #[test]
    fn transposed_ranks_are_each_key_blocks_position_in_its_query_row() {
        let mut rng = Rng::new(0x7a4c);
        for (tokens, block) in [(1, 64), (64, 64), (300, 128), (1000, 64), (2049, 128)] {
            for density in [0.0, 0.1, 0.5, 1.0] {
                for unattended in [false, true] {
                    let mask = random_mask(&mut rng, tokens, block, density, unattended);
                    let t = mask.transpose();
                    let ranks = transposed_ranks(&mask, &t);
                    assert_eq!(ranks.len(), mask.nnz());
                    assert_eq!(ranks, brute_force_ranks(&mask, &t), "t{tokens} B{block}");
                    // Per query block, its key blocks' ranks are 0..row length, once each.
                    let mut seen = vec![Vec::new(); mask.num_blocks()];
                    for kb in 0..t.num_blocks() {
                        let range = t.indptr()[kb] as usize..t.indptr()[kb + 1] as usize;
                        for e in range {
                            seen[t.indices()[e] as usize].push(ranks[e]);
                        }
                    }
                    for (qb, mut r) in seen.into_iter().enumerate() {
                        r.sort_unstable();
                        let want: Vec<u32> = (0..mask.row(qb).len() as u32).collect();
                        assert_eq!(r, want, "query block {qb}");
                    }
                }
            }
        }
        // A lower-triangular mask: key block kb is the kb-th block of every row that has it.
        let nb = 5;
        let bitmap: Vec<bool> = (0..nb * nb).map(|i| i % nb <= i / nb).collect();
        let mask = BlockMask::from_dense_bitmap(nb * 64, 64, &bitmap).unwrap();
        let t = mask.transpose();
        let ranks = transposed_ranks(&mask, &t);
        for kb in 0..nb {
            let range = t.indptr()[kb] as usize..t.indptr()[kb + 1] as usize;
            assert!(ranks[range].iter().all(|&r| r as usize == kb));
        }
    }
}
