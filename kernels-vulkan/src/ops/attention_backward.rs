//! Block-sparse (radial) attention backward, portable path.
//!
//! Two shaders, recorded in order with a barrier between them (the same math and conventions
//! as the CUDA backward, see [`AttentionGradients`]):
//! - `sparse_attention_bwd_dq`: one workgroup per (query tile, head, batch), one invocation per
//!   query row, walks the mask row of its query block as the forward does, streaming K and V
//!   through shared memory; computes `delta = rowsum(dO ∘ o)` of its row (written to the
//!   `delta` workspace) and `dq = scale · dS k`;
//! - `sparse_attention_bwd_dkdv`: one workgroup per (key tile, head, batch), one invocation per
//!   key row, walks the TRANSPOSED mask row of its key block (the query blocks that attend it,
//!   uploaded once by [`VulkanBlockMask`]), streaming Q, dO, lse and delta through shared
//!   memory; computes `dv = Pᵀ dO` and `dk = scale · dSᵀ q` (zero for a key block no query
//!   attends).
//!
//! `P = exp(scale · q kᵀ - lse)` from the forward's lse, `dS = P ∘ (dO vᵀ - delta)`; f32
//! accumulation, f16/bf16 decoded exactly. Each output element is written once by one
//! invocation, with no atomics: the results are deterministic. Tiles: the rows per workgroup are
//! [`query_tile`] of the block size (64 for blocks of 64 and 128; any block size works), the
//! streamed tiles the largest of 32, 16, 8 rows that fit the device's shared memory.
//!
//! Device API: [`VulkanBackend::record_sparse_attention_backward`] over
//! [`AttentionBackwardRanges`].

use super::attention::{portable_shared_bytes, query_tile, streamed_tile, VulkanBlockMask};
use super::{bind_range, to_u32};
use crate::memory::{Buffer, BufferRange};
use crate::pipeline::{
    compute_barrier, linear_groups, Shader, ShaderResources, SpecConstant, Specialization,
};
use crate::VulkanBackend;
use ash::vk;
use half::{bf16, f16};
use std::marker::PhantomData;
use tessera_core::ops::attention::{AttentionGradients, SparseAttention};
use tessera_core::{BlockMask, DType, Error, Result, Tensor, TensorRef};

const OP: &str = "sparse_attention_backward";

/// The dq pass. Bindings: q, k, v, o, d_o, lse, mask, dq (written), delta (written); push
/// constants groups, tiles, tokens, heads, block size, blocks, nnz, scale · log2(e), scale.
/// Specialization: [`AttentionBackwardDqSpec`].
pub const SPARSE_ATTENTION_BWD_DQ: Shader<AttentionBackwardDqSpec> = Shader {
    name: "sparse_attention_bwd_dq",
    spirv: spirv!("sparse_attention_bwd_dq"),
    storage_buffers: 9,
    push_constant_bytes: 36,
    specialization: PhantomData,
};

/// The dk/dv pass. Bindings: q, k, v, d_o, lse, delta, the transposed mask, dk (written), dv
/// (written); push constants as [`SPARSE_ATTENTION_BWD_DQ`]. Specialization:
/// [`AttentionBackwardDkdvSpec`].
pub const SPARSE_ATTENTION_BWD_DKDV: Shader<AttentionBackwardDkdvSpec> = Shader {
    name: "sparse_attention_bwd_dkdv",
    spirv: spirv!("sparse_attention_bwd_dkdv"),
    storage_buffers: 9,
    push_constant_bytes: 36,
    specialization: PhantomData,
};

/// The specialization constants of `sparse_attention_bwd_dq.comp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionBackwardDqSpec {
    /// Query rows per workgroup, one invocation each (the workgroup size, `BQ`):
    /// [`query_tile`] of the block size.
    pub query_rows: u32,
    /// The head dimension (64 or 128).
    pub head_dim: u32,
    /// Keys per shared-memory tile (`BK`).
    pub key_tile: u32,
    /// bf16 tensors (else f16).
    pub bf16: bool,
}

impl Default for AttentionBackwardDqSpec {
    fn default() -> Self {
        Self {
            query_rows: 64,
            head_dim: 128,
            key_tile: 16,
            bf16: true,
        }
    }
}

impl Specialization for AttentionBackwardDqSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![
            SpecConstant::local_size_x(0, self.query_rows),
            SpecConstant::new(1, "HEAD_DIM", self.head_dim),
            SpecConstant::new(2, "BK", self.key_tile),
            SpecConstant::new(3, "IS_BF16", u32::from(self.bf16)),
        ]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.query_rows,
            shared_memory_bytes: portable_shared_bytes(self.head_dim, self.key_tile),
        }
    }
}

/// The specialization constants of `sparse_attention_bwd_dkdv.comp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionBackwardDkdvSpec {
    /// Key rows per workgroup, one invocation each (the workgroup size, `BKR`): [`query_tile`]
    /// of the block size.
    pub key_rows: u32,
    /// The head dimension (64 or 128).
    pub head_dim: u32,
    /// Queries per shared-memory tile (`BT`).
    pub query_tile: u32,
    /// bf16 tensors (else f16).
    pub bf16: bool,
}

impl Default for AttentionBackwardDkdvSpec {
    fn default() -> Self {
        Self {
            key_rows: 64,
            head_dim: 128,
            query_tile: 16,
            bf16: true,
        }
    }
}

impl Specialization for AttentionBackwardDkdvSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![
            SpecConstant::local_size_x(0, self.key_rows),
            SpecConstant::new(1, "HEAD_DIM", self.head_dim),
            SpecConstant::new(2, "BT", self.query_tile),
            SpecConstant::new(3, "IS_BF16", u32::from(self.bf16)),
        ]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.key_rows,
            shared_memory_bytes: dkdv_shared_bytes(self.head_dim, self.query_tile),
        }
    }
}

/// Shared memory of the dk/dv pass with `bt` queries per tile: Q and dO tiles of
/// `bt x head_dim` f32, and `bt` values of lse and of delta.
fn dkdv_shared_bytes(head_dim: u32, bt: u32) -> u32 {
    2 * bt.saturating_mul(head_dim).saturating_mul(4) + 2 * 4 * bt
}

/// The buffer ranges of one attention backward call ([`BufferRange`]s of storage buffers of the
/// backend's device), row-major: q, k, v, o, `d_o` (read) and dq, dk, dv (written)
/// `[batch, tokens, heads, head_dim]` of the op's dtype (`2 · batch · tokens · heads · head_dim`
/// bytes each); lse (read; natural log, as the forward wrote it) and `delta` (a workspace the
/// call overwrites with `rowsum(d_o ∘ o)`) f32 `[batch, heads, tokens]`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionBackwardRanges {
    /// The forward's queries.
    pub q: BufferRange,
    /// The forward's keys.
    pub k: BufferRange,
    /// The forward's values.
    pub v: BufferRange,
    /// The forward's output.
    pub o: BufferRange,
    /// The forward's log-sum-exp.
    pub lse: BufferRange,
    /// The gradient of the loss with respect to o.
    pub d_o: BufferRange,
    /// Workspace: `rowsum(d_o ∘ o)`.
    pub delta: BufferRange,
    /// Output: the gradient with respect to q.
    pub dq: BufferRange,
    /// Output: the gradient with respect to k.
    pub dk: BufferRange,
    /// Output: the gradient with respect to v.
    pub dv: BufferRange,
}

impl VulkanBackend {
    /// Records the block-sparse attention backward into `cmd`: from the forward's q, k, v, o
    /// and lse and the output gradient `d_o`, writes dq, dk and dv (see [`AttentionGradients`]
    /// for the math and [`AttentionBackwardRanges`] for the layouts), using `delta` as
    /// workspace. Two dispatches (dq and delta over the mask, then dk and dv over the
    /// transposed mask) with a barrier between them, recorded here; every element of dq, dk and
    /// dv is written (zero for keys no query attends). Portable path on every device, any mask
    /// block size.
    ///
    /// `mask` must live on this backend's device and cover `op.tokens`; every block row lists
    /// at least one key block. Shapes, types and sizes are checked
    /// ([`SparseAttention::validate`]); values are not: non-finite inputs give non-finite
    /// outputs.
    ///
    /// Synchronization: the caller records a barrier making the writes of the inputs visible
    /// to compute-shader reads before this, and one from compute-shader writes to whatever
    /// reads dq, dk and dv after it; then submits and keeps the buffers (and `mask`) alive until
    /// the work completes.
    ///
    /// # Safety
    /// `cmd` must be a command buffer of this backend's device ([`VulkanBackend::context`]) in
    /// the recording state, and the ranges must lie in live buffers of that device created with
    /// `STORAGE_BUFFER` usage.
    pub unsafe fn record_sparse_attention_backward(
        &self,
        cmd: vk::CommandBuffer,
        op: &SparseAttention,
        mask: &VulkanBlockMask,
        ranges: &AttentionBackwardRanges,
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
        let f = self.features();
        let elems = op.qkv_len() as u64;
        let bytes = 2 * elems;
        let stats = 4 * op.lse_len() as u64;
        let r = ranges;
        let q = bind_range(OP, "q", &r.q, bytes, f)?;
        let k = bind_range(OP, "k", &r.k, bytes, f)?;
        let v = bind_range(OP, "v", &r.v, bytes, f)?;
        let o = bind_range(OP, "o", &r.o, bytes, f)?;
        let lse = bind_range(OP, "lse", &r.lse, stats, f)?;
        let d_o = bind_range(OP, "d_o", &r.d_o, bytes, f)?;
        let delta = bind_range(OP, "delta", &r.delta, stats, f)?;
        let dq = bind_range(OP, "dq", &r.dq, bytes, f)?;
        let dk = bind_range(OP, "dk", &r.dk, bytes, f)?;
        let dv = bind_range(OP, "dv", &r.dv, bytes, f)?;
        let mask_range = bind_range(OP, "mask", &mask.buffer().range(), mask.bytes(), f)?;
        let mask_t = bind_range(
            OP,
            "mask",
            &mask.transposed_buffer().range(),
            mask.bytes(),
            f,
        )?;
        // The shaders index words of the tensors and elements of lse with 32-bit integers.
        to_u32(OP, "batch * tokens * heads * head_dim", elems)?;
        to_u32(OP, "batch * heads * tokens", op.lse_len() as u64)?;
        let block_size = mask.mask().block_size();
        let rows = query_tile(block_size);
        let tiles = op.tokens.div_ceil(rows as usize) as u64;
        let groups = tiles * op.heads as u64 * op.batch as u64;
        let groups_u32 = to_u32(OP, "workgroups", groups)?;
        let grid = linear_groups(groups, f.max_workgroup_count)?;
        let head_dim = op.head_dim as u32;
        let bf16 = op.dtype == DType::BF16;
        let dq_pass = self.pipelines().get(
            &SPARSE_ATTENTION_BWD_DQ,
            &AttentionBackwardDqSpec {
                query_rows: rows,
                head_dim,
                key_tile: streamed_tile(
                    OP,
                    head_dim,
                    f.max_shared_memory_bytes,
                    portable_shared_bytes,
                )?,
                bf16,
            },
        )?;
        let dkdv_pass = self.pipelines().get(
            &SPARSE_ATTENTION_BWD_DKDV,
            &AttentionBackwardDkdvSpec {
                key_rows: rows,
                head_dim,
                query_tile: streamed_tile(
                    OP,
                    head_dim,
                    f.max_shared_memory_bytes,
                    dkdv_shared_bytes,
                )?,
                bf16,
            },
        )?;
        let scale = op.softmax_scale;
        let scale_log2 = (scale as f64 * std::f64::consts::LOG2_E) as f32;
        let push = [
            groups_u32,
            tiles as u32,
            op.tokens as u32,
            op.heads as u32,
            block_size as u32,
            mask.mask().num_blocks() as u32,
            mask.mask().nnz() as u32,
            scale_log2.to_bits(),
            scale.to_bits(),
        ];
        // SAFETY: the caller guarantees that `cmd` records on this device and that the ranges
        // are valid storage buffers; the ranges were checked to hold what the shaders access,
        // and both mask buffers are this device's. The barrier makes the dq pass's delta
        // visible to the dk/dv pass.
        unsafe {
            dq_pass.record(
                cmd,
                &[q, k, v, o, d_o, lse, mask_range, dq, delta],
                &push,
                grid,
            )?;
            compute_barrier(self.context().device(), cmd);
            dkdv_pass.record(
                cmd,
                &[q, k, v, d_o, lse, delta, mask_t, dk, dv],
                &push,
                grid,
            )
        }
    }

    /// The host API: validates, uploads, runs, downloads.
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
        let ctx = self.context();
        let device_mask = VulkanBlockMask::new(self, mask)?;
        let upload = |t: TensorRef<'_>| Buffer::from_bytes(ctx, t.as_bytes());
        let (q_buf, k_buf, v_buf) = (upload(q)?, upload(k)?, upload(v)?);
        let (o_buf, do_buf) = (upload(o)?, upload(d_o)?);
        let lse_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(lse))?;
        let n = op.qkv_len();
        let nan16 = match op.dtype {
            DType::BF16 => bf16::NAN.to_bits(),
            _ => f16::NAN.to_bits(),
        };
        // Outputs (and the workspace) start as NaN so that an element the shaders fail to write
        // shows up.
        let nan_out = || Buffer::filled(ctx, 2 * n, &nan16.to_le_bytes());
        let (dq_buf, dk_buf, dv_buf) = (nan_out()?, nan_out()?, nan_out()?);
        let delta_buf = Buffer::filled(ctx, 4 * op.lse_len(), &f32::NAN.to_le_bytes())?;
        let ranges = AttentionBackwardRanges {
            q: q_buf.range(),
            k: k_buf.range(),
            v: v_buf.range(),
            o: o_buf.range(),
            lse: lse_buf.range(),
            d_o: do_buf.range(),
            delta: delta_buf.range(),
            dq: dq_buf.range(),
            dk: dk_buf.range(),
            dv: dv_buf.range(),
        };
        self.one_shot().run(|cmd| {
            // SAFETY: `cmd` is the backend's own command buffer, recording; the buffers are
            // live storage buffers of this device, kept until `run` has waited.
            unsafe { self.record_sparse_attention_backward(cmd, op, &device_mask, &ranges) }
        })?;
        let download = |buf: &Buffer| -> Result<Tensor> {
            let bytes = buf.read(0, 2 * n)?;
            let halves = bytes
                .chunks_exact(2)
                .map(|h| u16::from_le_bytes([h[0], h[1]]));
            Ok(match op.dtype {
                DType::BF16 => Tensor::BF16(halves.map(bf16::from_bits).collect()),
                _ => Tensor::F16(halves.map(f16::from_bits).collect()),
            })
        };
        Ok(AttentionGradients {
            dq: download(&dq_buf)?,
            dk: download(&dk_buf)?,
            dv: download(&dv_buf)?,
        })
    }
}
