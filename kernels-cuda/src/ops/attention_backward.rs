//! Block-sparse (radial) attention backward on CUDA.
//!
//! Three kernels launched in order on one stream (see [`crate::plan::attention_backward`]):
//! `delta = rowsum(dO ∘ O)`; dk and dv per 64 keys (`kernels/sparse_attention_backward.cu`,
//! `mma.sync`) or per key block of 128 (`kernels/sm90/sparse_attention_backward.cu`, wgmma,
//! sm_90a) over the transposed mask (the query blocks that attend each key block, built once by
//! [`DeviceBlockMask::new`]); dq per 64 queries or per query block of 128 over the mask. Each
//! output element is written once by one thread, with no atomics: the results are bitwise
//! deterministic. sm_80 and later, head_dim 64 or 128, f16 or bf16, mask block sizes 64 or 128,
//! any token count.
//!
//! On sm_90a the candidates also hold the fused-dq plans
//! ([`crate::plan::AttentionBackwardDq`]): the wgmma dk/dv pass computes dq too, adding its
//! f32 tiles into a workspace (`dq_accum`, allocated and zeroed on the stream per call), then a
//! conversion kernel writes dq. Their atomic mode's dq is not bitwise reproducible (the adds of
//! different key blocks race); it is the default pick unless the op asks for a deterministic
//! backward ([`SparseAttention::deterministic_backward`]), which picks the tile passes above.
//! The deterministic fused mode's dq is reproducible (each tile's adds in key-block order,
//! through turn counters and the transposed mask's ranks,
//! [`DeviceBlockMask::transposed_ranks`]).
//!
//! Device API: [`CudaBackend::sparse_attention_backward_on`] over [`AttentionBackwardBuffers`].

use super::attention::{
    check_block_size, token_tile_map, DeviceBlockMask, DeviceHalf, DeviceHalfMut, HalfElement,
};
use super::{check_device_len, download, to_i32, upload};
use crate::plan::attention_backward::{AttentionBackwardKernel, AttentionBackwardVariant};
use crate::plan::heuristics::{attention_backward_candidates, pick_attention_backward};
use crate::plan::{AttentionBackwardPlan, KernelArgs, LaunchOptions, TensorMap};
use crate::runtime::driver_error;
use crate::CudaBackend;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut};
use std::sync::Arc;
use tessera_core::ops::attention::{AttentionGradients, SparseAttention};
use tessera_core::{BlockMask, Error, Result, TensorRef};

const OP: &str = "sparse_attention_backward";

/// The device buffers of one attention backward call. Layouts as the forward's: q, k, v, o,
/// `d_o`, dq, dk, dv `[batch, tokens, heads, head_dim]` of the op's dtype (each starting on a
/// 16-byte boundary, as whole `cudarc` allocations do); lse f32 `[batch, heads, tokens]`
/// (natural log, as the forward wrote it); `delta` f32 `[batch, heads, tokens]`, a workspace the
/// call overwrites (`rowsum(d_o ∘ o)`).
#[derive(Debug)]
pub struct AttentionBackwardBuffers<'a> {
    /// The forward's queries.
    pub q: DeviceHalf<'a>,
    /// The forward's keys.
    pub k: DeviceHalf<'a>,
    /// The forward's values.
    pub v: DeviceHalf<'a>,
    /// The forward's output.
    pub o: DeviceHalf<'a>,
    /// The forward's log-sum-exp.
    pub lse: CudaView<'a, f32>,
    /// The gradient of the loss with respect to o.
    pub d_o: DeviceHalf<'a>,
    /// Workspace: `rowsum(d_o ∘ o)`.
    pub delta: CudaViewMut<'a, f32>,
    /// Output: the gradient with respect to q.
    pub dq: DeviceHalfMut<'a>,
    /// Output: the gradient with respect to k.
    pub dk: DeviceHalfMut<'a>,
    /// Output: the gradient with respect to v.
    pub dv: DeviceHalfMut<'a>,
}

impl AttentionBackwardBuffers<'_> {
    /// Checks the element types, lengths and alignment against `op`.
    fn check(&self, stream: &CudaStream, op: &SparseAttention) -> Result<()> {
        let inputs = [
            ("q", &self.q),
            ("k", &self.k),
            ("v", &self.v),
            ("o", &self.o),
            ("d_o", &self.d_o),
        ];
        for (arg, t) in inputs {
            if t.dtype() != op.dtype {
                return Err(Error::invalid(
                    OP,
                    arg,
                    format!("dtype {}", op.dtype),
                    t.dtype().name(),
                ));
            }
            check_device_len(OP, arg, op.qkv_len(), t.len())?;
            check_aligned(arg, t.address(stream))?;
        }
        for (arg, t) in [("dq", &self.dq), ("dk", &self.dk), ("dv", &self.dv)] {
            if t.dtype() != op.dtype {
                return Err(Error::invalid(
                    OP,
                    arg,
                    format!("dtype {}", op.dtype),
                    t.dtype().name(),
                ));
            }
            check_device_len(OP, arg, op.qkv_len(), t.len())?;
            check_aligned(arg, t.address(stream))?;
        }
        check_device_len(OP, "lse", op.lse_len(), self.lse.len())?;
        check_device_len(OP, "delta", op.lse_len(), self.delta.len())
    }
}

/// The device workspace of a fused-dq plan ([`crate::plan::AttentionBackwardWorkspace`]),
/// allocated and zeroed on the call's stream; dropping it frees it in stream order (cudarc's
/// asynchronous free where the driver has memory pools, else after a synchronization).
struct FusedDqWorkspace {
    /// f32 `dq_accum`, zeroed.
    dq_accum: CudaSlice<f32>,
    /// u32 `dq_turns`, zeroed (one element in the atomic mode, which never reads it).
    dq_turns: CudaSlice<u32>,
}

impl FusedDqWorkspace {
    /// Allocates and zeroes `sizes` on `stream`: [`Error::OutOfMemory`] when the memory is not
    /// there.
    fn new(
        stream: &Arc<CudaStream>,
        sizes: &crate::plan::AttentionBackwardWorkspace,
    ) -> Result<Self> {
        let dq_accum = stream
            .alloc_zeros::<f32>(sizes.dq_accum_len.max(1))
            .map_err(|e| driver_error("allocating the backward's dq_accum workspace", e))?;
        let dq_turns = stream
            .alloc_zeros::<u32>(sizes.dq_turns_len.max(1))
            .map_err(|e| driver_error("allocating the backward's dq_turns workspace", e))?;
        Ok(Self { dq_accum, dq_turns })
    }
}

fn check_aligned(arg: &str, address: u64) -> Result<()> {
    if address % 16 != 0 {
        return Err(Error::invalid(
            OP,
            arg,
            "a device address aligned to 16 bytes",
            format!("{address:#x}"),
        ));
    }
    Ok(())
}

fn add_half<'a>(args: &mut KernelArgs<'a>, t: &'a DeviceHalf<'_>) {
    match t {
        DeviceHalf::F16(x) => args.buffer(x),
        DeviceHalf::BF16(x) => args.buffer(x),
    };
}

fn add_half_mut<'a>(args: &mut KernelArgs<'a>, t: &'a mut DeviceHalfMut<'_>) {
    match t {
        DeviceHalfMut::F16(x) => args.buffer_mut(x),
        DeviceHalfMut::BF16(x) => args.buffer_mut(x),
    };
}

/// The scalar parameters of the tile kernels (dk/dv, dq and the dq conversion), checked and
/// computed once per call.
#[derive(Clone, Copy)]
struct TileScalars {
    tokens: i32,
    heads: i32,
    scale: f32,
    scale_log2: f32,
}

impl TileScalars {
    /// The last parameters of every dk/dv and dq tile kernel: int tokens, int heads, float
    /// scale, float scale_log2.
    fn push_tail<'a>(&'a self, args: &mut KernelArgs<'a>) {
        args.value(&self.tokens)
            .value(&self.heads)
            .value(&self.scale)
            .value(&self.scale_log2);
    }
}

/// The wgmma tile passes' last two parameters, `stream_a_map` and `stream_b_map`: the tensor
/// maps (64-token boxes, [`token_tile_map`]) of the tiles a pass streams, `a` and `b` (dk/dv: q
/// and d_o; dq: k and v). None for a `mma.sync` pass, which takes no maps. The buffers are
/// tracked for the launch through their pointer arguments, which every pass also takes.
fn stream_maps(
    variant: &AttentionBackwardVariant,
    op: &SparseAttention,
    stream: &CudaStream,
    a: &DeviceHalf<'_>,
    b: &DeviceHalf<'_>,
) -> Result<Option<[TensorMap; 2]>> {
    if variant.tile_kernel() != AttentionBackwardKernel::Wgmma {
        return Ok(None);
    }
    let map = |t: &DeviceHalf<'_>| token_tile_map(op, t.address(stream), 64);
    Ok(Some([map(a)?, map(b)?]))
}

/// The first parameters of every dk/dv kernel (two-pass and fused): q, k, v, d_o, lse, delta,
/// dk, dv.
fn key_value_args<'a>(
    stream: &'a Arc<CudaStream>,
    b: &'a mut AttentionBackwardBuffers<'_>,
) -> KernelArgs<'a> {
    let mut args = KernelArgs::new(stream);
    for t in [&b.q, &b.k, &b.v, &b.d_o] {
        add_half(&mut args, t);
    }
    args.buffer(&b.lse).buffer(&b.delta);
    add_half_mut(&mut args, &mut b.dk);
    add_half_mut(&mut args, &mut b.dv);
    args
}

impl CudaBackend {
    /// Block-sparse attention backward on `stream`, without synchronizing: from the forward's
    /// q, k, v, o and lse and the output gradient `d_o`, writes dq, dk and dv (see
    /// [`AttentionGradients`] for the math and [`AttentionBackwardBuffers`] for the layouts),
    /// using `delta` as workspace. Three kernels (delta, dk/dv over the transposed mask, dq over
    /// the mask); every element of dq, dk and dv is written (zero for keys no query attends).
    ///
    /// Checks the descriptor against the mask (as [`SparseAttention::validate`] does), the
    /// element types, the lengths and the alignment; the mask's block size must be 64 or 128
    /// (otherwise [`Error::Unsupported`]). Values are not checked: non-finite inputs give
    /// non-finite outputs.
    pub fn sparse_attention_backward_on(
        &self,
        stream: &Arc<CudaStream>,
        op: &SparseAttention,
        mask: &DeviceBlockMask,
        buffers: &mut AttentionBackwardBuffers<'_>,
    ) -> Result<()> {
        let plan = self.sparse_attention_backward_plan(op, mask.mask())?;
        self.sparse_attention_backward_plan_on(stream, op, plan, mask, buffers)
    }

    /// The backward plan for `op` with `mask` on this device: the default pick of
    /// [`attention_backward_candidates`] for [`SparseAttention::deterministic_backward`] (not
    /// tuned).
    pub fn sparse_attention_backward_plan(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
    ) -> Result<AttentionBackwardPlan> {
        op.validate(mask)?;
        check_block_size(mask.block_size())?;
        let candidates = attention_backward_candidates(op, mask.block_size(), &self.runtime.arch)?;
        Ok(candidates[pick_attention_backward(&candidates, op.deterministic_backward)])
    }

    /// [`CudaBackend::sparse_attention_backward_on`] with an explicit plan (a candidate of
    /// [`attention_backward_candidates`] for the op and the mask's block size), for tests and
    /// measurements. A fused-dq plan allocates its workspace
    /// ([`AttentionBackwardPlan::workspace`]) on `stream` and frees it in stream order;
    /// [`Error::OutOfMemory`] when that allocation fails, before any kernel is launched (no
    /// fallback to another plan). A [`crate::plan::AttentionBackwardDq::FusedAtomic`] plan's dq
    /// is not bitwise reproducible from run to run.
    pub fn sparse_attention_backward_plan_on(
        &self,
        stream: &Arc<CudaStream>,
        op: &SparseAttention,
        plan: AttentionBackwardPlan,
        mask: &DeviceBlockMask,
        buffers: &mut AttentionBackwardBuffers<'_>,
    ) -> Result<()> {
        op.validate(mask.mask())?;
        check_block_size(mask.block_size())?;
        let expected = attention_backward_candidates(op, mask.block_size(), &self.runtime.arch)?;
        if !expected.contains(&plan) {
            return Err(Error::invalid(
                OP,
                "plan",
                format!(
                    "a plan for head_dim {}, {} and block size {}",
                    op.head_dim,
                    op.dtype,
                    mask.block_size()
                ),
                format!("{plan:?}"),
            ));
        }
        buffers.check(stream, op)?;
        let tokens = to_i32(OP, "tokens", op.tokens)?;
        let heads = to_i32(OP, "heads", op.heads)?;
        let rows = (op.qkv_len() / op.head_dim) as i64;
        let scale = op.softmax_scale;
        let scale_log2 = op.softmax_scale * std::f32::consts::LOG2_E;
        let scalars = TileScalars {
            tokens,
            heads,
            scale,
            scale_log2,
        };
        let b = buffers;
        let fused_workspace = if plan.dq().is_fused() {
            Some(FusedDqWorkspace::new(stream, &plan.workspace(op)?)?)
        } else {
            None
        };

        // 1. delta = rowsum(d_o ∘ o).
        let grid = plan.delta.grid(op)?;
        let mut args = KernelArgs::new(stream);
        add_half(&mut args, &b.o);
        add_half(&mut args, &b.d_o);
        args.buffer_mut(&mut b.delta)
            .value(&tokens)
            .value(&heads)
            .value(&rows);
        // SAFETY: the kernel's parameters are (const u16* o, d_o, float* delta, int tokens, int
        // heads, long long rows) in this order; o and d_o hold rows * head_dim 16-bit elements
        // (rows = batch * tokens * heads) and start 16-byte aligned, delta batch * heads * tokens
        // floats (checked above). The grid has one CTA per 16 rows; rows past `rows` are neither
        // read nor written.
        unsafe { self.launch_kernel(&plan.delta, grid, args, LaunchOptions::default())? };

        if let Some(mut workspace) = fused_workspace {
            return self.fused_dq_passes_on(stream, op, plan, mask, b, &mut workspace, scalars);
        }

        // 2. dk, dv over the transposed mask.
        let grid = plan.key_value.grid(op)?;
        let maps = stream_maps(&plan.key_value, op, stream, &b.q, &b.d_o)?;
        let mut args = key_value_args(stream, b);
        args.buffer(mask.transposed_indptr())
            .buffer(mask.transposed_indices());
        scalars.push_tail(&mut args);
        if let Some([map_a, map_b]) = &maps {
            args.value(map_a).value(map_b);
        }
        // SAFETY: the kernel's parameters are (const u16* q, k, v, d_o, const float* lse, delta,
        // u16* dk, dv, const u32* t_indptr, t_indices, int tokens, int heads, float scale, float
        // scale_log2[, wgmma: the tensor maps of q and d_o]) in this order; the maps cover
        // exactly q and d_o (TMA reads zeros past them). The 16-bit tensors hold batch*tokens*heads*head_dim elements
        // and start 16-byte aligned, lse and delta batch*heads*tokens floats (checked above); the
        // transposed mask comes from a mask validated against the op (num_blocks + 1 row
        // pointers, sorted in-range columns), and the grid has one CTA per (64 keys, head,
        // batch) (`mma.sync`) or per (key block of 128, head, batch) (wgmma, whose plan is valid
        // only for blocks of 128), as the plan's grid says. Rows at or past `tokens` are neither
        // read nor written.
        unsafe { self.launch_kernel(&plan.key_value, grid, args, LaunchOptions::default())? };

        // 3. dq over the mask.
        let grid = plan.query.grid(op)?;
        let maps = stream_maps(&plan.query, op, stream, &b.k, &b.v)?;
        let mut args = KernelArgs::new(stream);
        for t in [&b.q, &b.k, &b.v, &b.d_o] {
            add_half(&mut args, t);
        }
        args.buffer(&b.lse).buffer(&b.delta);
        add_half_mut(&mut args, &mut b.dq);
        args.buffer(mask.indptr()).buffer(mask.indices());
        scalars.push_tail(&mut args);
        if let Some([map_a, map_b]) = &maps {
            args.value(map_a).value(map_b);
        }
        // SAFETY: the kernel's parameters are (const u16* q, k, v, d_o, const float* lse, delta,
        // u16* dq, const u32* indptr, indices, int tokens, int heads, float scale, float
        // scale_log2[, wgmma: the tensor maps of k and v, covering exactly them]) in this order, with the bounds checked as for step 2 and the mask
        // validated against the op (no empty row); one CTA per (64 queries, head, batch)
        // (`mma.sync`) or per (query block of 128, head, batch) (wgmma), as for step 2.
        unsafe { self.launch_kernel(&plan.query, grid, args, LaunchOptions::default()) }
    }

    /// Steps 2 and 3 of a fused-dq plan, after the delta pass: the dk/dv pass that also adds
    /// dq into the workspace's `dq_accum`, then `dq = scale * dq_accum`.
    #[allow(clippy::too_many_arguments)]
    fn fused_dq_passes_on(
        &self,
        stream: &Arc<CudaStream>,
        op: &SparseAttention,
        plan: AttentionBackwardPlan,
        mask: &DeviceBlockMask,
        b: &mut AttentionBackwardBuffers<'_>,
        workspace: &mut FusedDqWorkspace,
        scalars: TileScalars,
    ) -> Result<()> {
        let TileScalars {
            tokens,
            heads,
            scale,
            ..
        } = scalars;
        let FusedDqWorkspace { dq_accum, dq_turns } = workspace;

        // 2. dk, dv over the transposed mask, and dq added into dq_accum.
        let grid = plan.key_value.grid(op)?;
        let [map_a, map_b] =
            stream_maps(&plan.key_value, op, stream, &b.q, &b.d_o)?.ok_or_else(|| {
                Error::invalid(
                    OP,
                    "plan",
                    "a fused-dq plan on the wgmma kernel",
                    format!("{plan:?}"),
                )
            })?;
        let mut args = key_value_args(stream, b);
        args.buffer_mut(dq_accum)
            .buffer_mut(dq_turns)
            .buffer(mask.transposed_ranks())
            .buffer(mask.transposed_indptr())
            .buffer(mask.transposed_indices());
        scalars.push_tail(&mut args);
        args.value(&map_a).value(&map_b);
        // SAFETY: the kernel's parameters are (const u16* q, k, v, d_o, const float* lse, delta,
        // u16* dk, dv, float* dq_accum, u32* dq_turns, const u32* t_rank, t_indptr, t_indices,
        // int tokens, int heads, float scale, float scale_log2, the tensor maps of q and d_o) in
        // this order; the maps cover exactly q and d_o (TMA reads zeros past them). The tensors are
        // checked as for the two-pass plans; dq_accum holds the plan's workspace of
        // batch*heads*ceil(tokens/64)*64*head_dim floats (every 64 x 64 job the kernel adds
        // into, rows of the last tile past `tokens` included), dq_turns its
        // batch*heads*ceil(tokens/64)*(head_dim/64) counters in the deterministic mode (read
        // only there), both zeroed on this stream before the launch; t_rank is parallel to
        // t_indices (nnz entries, built with the transpose). The grid is one CTA per (key block
        // of 128, head, batch) (the plan is valid only for the wgmma kernel and blocks of 128);
        // the deterministic mode's turn waits are only on CTAs of lower linear index.
        unsafe { self.launch_kernel(&plan.key_value, grid, args, LaunchOptions::default())? };

        // 3. dq = scale * dq_accum.
        let grid = plan.query.grid(op)?;
        let groups = (op.qkv_len() / 8) as i64;
        let mut args = KernelArgs::new(stream);
        args.buffer(dq_accum);
        add_half_mut(&mut args, &mut b.dq);
        args.value(&tokens)
            .value(&heads)
            .value(&scale)
            .value(&groups);
        // SAFETY: the kernel's parameters are (const float* dq_accum, u16* dq, int tokens, int
        // heads, float scale, long long groups) in this order; dq holds batch*tokens*heads*
        // head_dim 16-bit elements starting 16-byte aligned (checked), groups is that over 8,
        // and the grid has ceil(groups / 256) CTAs of 256 threads (threads past groups return);
        // it reads dq_accum at the tiled layout's rows < tokens, all within its length.
        unsafe { self.launch_kernel(&plan.query, grid, args, LaunchOptions::default()) }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sparse_attention_backward_host(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
        q: TensorRef<'_>,
        k: TensorRef<'_>,
        v: TensorRef<'_>,
        o: TensorRef<'_>,
        lse: &[f32],
        d_o: TensorRef<'_>,
    ) -> Result<AttentionGradients> {
        op.validate_backward_args(mask, q, k, v, o, lse, d_o)?;
        check_block_size(mask.block_size())?;
        let stream = &self.runtime.stream;
        let dmask = DeviceBlockMask::new(stream, mask)?;
        let lse = upload(stream, lse)?;
        let mut delta = upload(stream, &vec![f32::NAN; op.lse_len()])?;
        match (q, k, v, o, d_o) {
            (
                TensorRef::F16(q),
                TensorRef::F16(k),
                TensorRef::F16(v),
                TensorRef::F16(o),
                TensorRef::F16(d_o),
            ) => self.backward_typed(stream, op, &dmask, [q, k, v, o, d_o], &lse, &mut delta),
            (
                TensorRef::BF16(q),
                TensorRef::BF16(k),
                TensorRef::BF16(v),
                TensorRef::BF16(o),
                TensorRef::BF16(d_o),
            ) => self.backward_typed(stream, op, &dmask, [q, k, v, o, d_o], &lse, &mut delta),
            // validate_backward_args checked that all five are of op.dtype, which is f16 or bf16.
            _ => Err(Error::invalid(
                OP,
                "q",
                "f16 or bf16 tensors of one dtype",
                q.dtype().name(),
            )),
        }
    }

    /// The host backward for one element type: the inputs uploaded, dq, dk, dv (NaN-filled, so
    /// that an element the kernels fail to write shows up) computed and downloaded.
    #[allow(clippy::too_many_arguments)]
    fn backward_typed<T: HalfElement>(
        &self,
        stream: &Arc<CudaStream>,
        op: &SparseAttention,
        mask: &DeviceBlockMask,
        [q, k, v, o, d_o]: [&[T]; 5],
        lse: &CudaSlice<f32>,
        delta: &mut CudaSlice<f32>,
    ) -> Result<AttentionGradients> {
        let (q, k, v) = (upload(stream, q)?, upload(stream, k)?, upload(stream, v)?);
        let (o, d_o) = (upload(stream, o)?, upload(stream, d_o)?);
        let nan = vec![T::NAN; op.qkv_len()];
        let (mut dq, mut dk, mut dv) = (
            upload(stream, &nan)?,
            upload(stream, &nan)?,
            upload(stream, &nan)?,
        );
        self.sparse_attention_backward_on(
            stream,
            op,
            mask,
            &mut AttentionBackwardBuffers {
                q: T::device(q.as_view()),
                k: T::device(k.as_view()),
                v: T::device(v.as_view()),
                o: T::device(o.as_view()),
                lse: lse.as_view(),
                d_o: T::device(d_o.as_view()),
                delta: delta.as_view_mut(),
                dq: T::device_mut(dq.as_view_mut()),
                dk: T::device_mut(dk.as_view_mut()),
                dv: T::device_mut(dv.as_view_mut()),
            },
        )?;
        Ok(AttentionGradients {
            dq: T::tensor(download(stream, &dq)?),
            dk: T::tensor(download(stream, &dk)?),
            dv: T::tensor(download(stream, &dv)?),
        })
    }
}
