//! MLA paged-cache append and absorbed decode on CUDA.
//!
//! Kernels: `mla_append.cu` (one warp per token; bf16 copy or FP8 quantization per 128 values)
//! and `mla_decode.cu` (multi-query attention with one latent KV head on the tensor cores,
//! `mma.sync` bf16 with f32 accumulation, online softmax, split-KV over CTAs, one CTA tiling per
//! [`MlaDecodeVariant`]) with `mla_combine.cu` (the log-sum-exp combine of the splits). See the
//! `.cu` files for the tiling.
//!
//! Two APIs: [`CudaBackend::mla_append_on`] / [`CudaBackend::mla_decode_on`] /
//! [`CudaBackend::mla_decode_varlen_on`] over caller-owned device buffers (no copies, no
//! synchronization), and the host wrappers behind the [`tessera_core::Backend`] trait.
//!
//! The variable-length decode ([`MlaDecodeVarlen`]) runs the same kernels compiled with
//! `VARLEN 1`: planned as the uniform decode of `max_s_q` queries per request (the grid and
//! the workspace), each CTA reads its request's query offset and count from `cu_seqlens_q` on
//! the device (no host synchronization: a launch with fixed `(batch, total_q, max_s_q)` is
//! capturable in a CUDA graph and replayable with new offsets), and CTAs past a request's rows
//! exit at once.

use super::{check_device_len, to_i32, upload};
use crate::plan::tune::{scratch_buffer, time_each, ScratchRng};
use crate::plan::{
    KernelArgs, KernelSpec, LaunchOptions, MlaAppendVariant, MlaCombineVariant, MlaDecodeShape,
    MlaDecodeVariant, TuneOutcome,
};
use crate::runtime::driver_error;
use crate::CudaBackend;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DeviceRepr};
use half::bf16;
use std::sync::Arc;
use tessera_core::{
    Error, MlaAppend, MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeOutput,
    MlaDecodeVarlen, Result,
};

/// Device pointers must start on this many bytes (vector loads and `cp.async`).
const ALIGN: u64 = 16;

/// How a decode is spread over CTAs, from [`CudaBackend::mla_decode_plan`] (or
/// [`CudaBackend::mla_decode_varlen_plan`], whose `s_q` is `max_s_q` and whose variant has
/// `varlen` set): the kernel variant (its CTA tiling), the number of KV splits, and the
/// workspace the splits need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlaDecodePlan {
    batch: usize,
    s_q: usize,
    heads: usize,
    max_pages: usize,
    layout: MlaCacheLayout,
    variant: MlaDecodeVariant,
    row_groups: usize,
    col_chunks: usize,
    splits: usize,
}

impl MlaDecodePlan {
    /// Splits of each request's keys over CTAs (1: no workspace, no combine pass).
    pub fn splits(&self) -> usize {
        self.splits
    }

    /// Query rows (of `s_q * heads`) per CTA: 16, 32 or 64.
    pub fn rows_per_cta(&self) -> usize {
        self.variant.rows_per_cta() as usize
    }

    /// Keys per shared-memory tile.
    pub fn key_tile(&self) -> usize {
        self.variant.key_tile as usize
    }

    /// The decode kernel's variant.
    pub fn variant(&self) -> &MlaDecodeVariant {
        &self.variant
    }

    /// f32 elements of workspace [`CudaBackend::mla_decode_on`] needs: 0 with one split, else
    /// `splits * batch * s_q * heads * (latent_dim + 1)` (`s_q` is `max_s_q` for a varlen plan;
    /// partial outputs
    /// `[splits, batch, s_q * heads, latent_dim]`, then partial lse `[splits, batch, s_q * heads]`).
    pub fn workspace_len(&self) -> usize {
        if self.splits == 1 {
            0
        } else {
            self.splits * self.batch * self.s_q * self.heads * (self.layout.latent_dim + 1)
        }
    }

    /// CTAs of the decode kernel.
    fn ctas(&self) -> usize {
        self.batch * self.splits * self.col_chunks * self.row_groups
    }
}

/// Device buffers of [`CudaBackend::mla_append_on`].
#[derive(Debug)]
pub struct MlaAppendBuffers<'a> {
    /// The paged cache, u8 `[num_pages, page_size, token_bytes]` (see [`MlaCacheLayout`]).
    pub cache: CudaViewMut<'a, u8>,
    /// bf16 `[tokens, latent_dim]`.
    pub latent: CudaView<'a, bf16>,
    /// bf16 `[tokens, rope_dim]` (may be empty when `rope_dim` is 0).
    pub rope: CudaView<'a, bf16>,
    /// i32 `[tokens]`: the slot each token is written to; negative or out-of-range slots skip
    /// the token.
    pub slots: CudaView<'a, i32>,
}

/// Device buffers of [`CudaBackend::mla_decode_on`].
#[derive(Debug)]
pub struct MlaDecodeBuffers<'a> {
    /// The paged cache, u8 `[num_pages, page_size, token_bytes]` (see [`MlaCacheLayout`]).
    pub cache: CudaView<'a, u8>,
    /// bf16 `[batch, s_q, heads, latent_dim + rope_dim]`.
    pub q: CudaView<'a, bf16>,
    /// i32 `[batch, max_pages]`.
    pub block_table: CudaView<'a, i32>,
    /// i32 `[batch]`.
    pub seq_lens: CudaView<'a, i32>,
    /// Output bf16 `[batch, s_q, heads, latent_dim]`.
    pub o: CudaViewMut<'a, bf16>,
    /// Output f32 `[batch, heads, s_q]`, natural log.
    pub lse: CudaViewMut<'a, f32>,
    /// f32 scratch of at least [`MlaDecodePlan::workspace_len`] elements (any, even empty,
    /// when that is 0).
    pub workspace: CudaViewMut<'a, f32>,
}

/// Device buffers of [`CudaBackend::mla_decode_varlen_on`] (see [`MlaDecodeVarlen`]).
#[derive(Debug)]
pub struct MlaDecodeVarlenBuffers<'a> {
    /// The paged cache, u8 `[num_pages, page_size, token_bytes]` (see [`MlaCacheLayout`]).
    pub cache: CudaView<'a, u8>,
    /// bf16 `[total_q, heads, latent_dim + rope_dim]`.
    pub q: CudaView<'a, bf16>,
    /// i32 `[batch + 1]`: request `b`'s queries are `cu_seqlens_q[b] .. cu_seqlens_q[b + 1]`.
    pub cu_seqlens_q: CudaView<'a, i32>,
    /// i32 `[batch, max_pages]`.
    pub block_table: CudaView<'a, i32>,
    /// i32 `[batch]`.
    pub seq_lens: CudaView<'a, i32>,
    /// Output bf16 `[total_q, heads, latent_dim]`.
    pub o: CudaViewMut<'a, bf16>,
    /// Output f32 `[heads, total_q]`, natural log.
    pub lse: CudaViewMut<'a, f32>,
    /// f32 scratch of at least [`MlaDecodePlan::workspace_len`] elements (any, even empty,
    /// when that is 0).
    pub workspace: CudaViewMut<'a, f32>,
}

/// The device buffers of one decode launch, uniform or variable-length: what
/// [`CudaBackend::launch_mla_decode`] passes to the kernels.
struct DecodeLaunch<'s, 'a> {
    cache: &'s CudaView<'a, u8>,
    q: &'s CudaView<'a, bf16>,
    block_table: &'s CudaView<'a, i32>,
    seq_lens: &'s CudaView<'a, i32>,
    /// The offsets of a varlen launch; for a uniform one any i32 buffer (not read).
    cu_seqlens_q: &'s CudaView<'a, i32>,
    o: &'s mut CudaViewMut<'a, bf16>,
    lse: &'s mut CudaViewMut<'a, f32>,
    workspace: &'s mut CudaViewMut<'a, f32>,
}

/// Checks that a device buffer starts on [`ALIGN`] bytes (empty buffers are not read).
fn check_aligned<T, P: DevicePtr<T>>(
    op: &'static str,
    arg: &str,
    buf: &P,
    stream: &CudaStream,
) -> Result<()> {
    if buf.len() == 0 {
        return Ok(());
    }
    let (ptr, _sync) = buf.device_ptr(stream);
    if ptr % ALIGN != 0 {
        return Err(Error::invalid(
            op,
            arg,
            format!("a device address aligned to {ALIGN} bytes"),
            format!("{ptr:#x}"),
        ));
    }
    Ok(())
}

/// Checks a decode descriptor on its own (what [`MlaDecode::validate_args`] checks without the
/// host arguments).
fn check_decode_op(op: &MlaDecode) -> Result<()> {
    const OP: &str = "mla_decode";
    op.layout.validate()?;
    if op.batch == 0 {
        return Err(Error::invalid(OP, "batch", "at least 1", "0"));
    }
    if !(1..=128).contains(&op.s_q) {
        return Err(Error::invalid(OP, "s_q", "1..=128", op.s_q.to_string()));
    }
    if !(1..=128).contains(&op.heads) {
        return Err(Error::invalid(OP, "heads", "1..=128", op.heads.to_string()));
    }
    if op.max_pages == 0 {
        return Err(Error::invalid(OP, "max_pages", "at least 1", "0"));
    }
    if !(op.softmax_scale.is_finite() && op.softmax_scale > 0.0) {
        return Err(Error::invalid(
            OP,
            "softmax_scale",
            "a finite number > 0",
            op.softmax_scale.to_string(),
        ));
    }
    to_i32(OP, "batch", op.batch)?;
    to_i32(
        OP,
        "max_pages * page_size",
        op.max_pages * op.layout.page_size,
    )?;
    Ok(())
}

/// Checks a varlen decode descriptor on its own: [`MlaDecodeVarlen::validate`], then what
/// [`check_decode_op`] checks of its padded uniform shape.
fn check_varlen_op(op: &MlaDecodeVarlen) -> Result<()> {
    op.validate()?;
    check_decode_op(&op.padded())
}

/// Checks that a workspace of `len` f32 elements is enough for `plan`.
fn check_workspace(op: &'static str, plan: &MlaDecodePlan, len: usize) -> Result<()> {
    if len < plan.workspace_len() {
        return Err(Error::invalid(
            op,
            "workspace",
            format!(
                "at least {} elements (MlaDecodePlan::workspace_len)",
                plan.workspace_len()
            ),
            format!("{len} elements"),
        ));
    }
    Ok(())
}

/// Pages of a cache buffer of `bytes` bytes, which must be a positive whole number of pages of
/// at most `i32::MAX` slots.
fn cache_pages(op: &'static str, layout: &MlaCacheLayout, bytes: usize) -> Result<usize> {
    let page_bytes = layout.page_bytes();
    if bytes == 0 || bytes % page_bytes != 0 {
        return Err(Error::invalid(
            op,
            "cache",
            format!(
                "a positive multiple of {page_bytes} bytes ([num_pages, {}, {}])",
                layout.page_size,
                layout.token_bytes()
            ),
            format!("{bytes} bytes"),
        ));
    }
    let pages = bytes / page_bytes;
    to_i32(op, "cache slots", pages * layout.page_size)?;
    Ok(pages)
}

/// Uploads a host slice, at least one element long (a zero-length device allocation is not
/// allowed); view it with `.slice(0..host.len())`.
fn upload_nonempty<T: DeviceRepr + Copy + Default>(
    stream: &Arc<CudaStream>,
    host: &[T],
) -> Result<CudaSlice<T>> {
    if host.is_empty() {
        upload(stream, &[T::default()])
    } else {
        upload(stream, host)
    }
}

impl CudaBackend {
    /// Appends `op.tokens` tokens to a paged MLA cache on `stream`, without synchronizing.
    ///
    /// `bufs.cache` is u8 `[num_pages, page_size, token_bytes]` of `layout` (bytes as
    /// [`MlaCacheLayout`] says; `num_pages` is its length over `page_bytes`); `bufs.latent` bf16
    /// `[tokens, latent_dim]`, `bufs.rope` bf16 `[tokens, rope_dim]`, `bufs.slots` i32
    /// `[tokens]`. Token `t` is written to slot `slots[t]`; a negative slot, or one beyond the
    /// cache, skips the token (nothing outside the cache is ever written). The bytes written
    /// equal [`tessera_core`]'s reference bit for bit: the bf16 format copies, the FP8 format
    /// quantizes each 128 latent values with `mla_fp8_scale`.
    ///
    /// Checked: the layout, every length, 16-byte alignment of every buffer. Not checked (the
    /// values are on the device): distinct slots (with duplicates, which token lands is
    /// unspecified) and finite latents for FP8 (a non-finite value gives its group a non-finite
    /// scale). The host API checks both.
    pub fn mla_append_on(
        &self,
        stream: &CudaStream,
        op: &MlaAppend,
        layout: &MlaCacheLayout,
        bufs: &mut MlaAppendBuffers<'_>,
    ) -> Result<()> {
        const OP: &str = "mla_append";
        layout.validate()?;
        let pages = cache_pages(OP, layout, bufs.cache.len())?;
        check_device_len(
            OP,
            "latent",
            op.tokens * layout.latent_dim,
            bufs.latent.len(),
        )?;
        check_device_len(OP, "rope", op.tokens * layout.rope_dim, bufs.rope.len())?;
        check_device_len(OP, "slots", op.tokens, bufs.slots.len())?;
        check_aligned(OP, "cache", &bufs.cache, stream)?;
        check_aligned(OP, "latent", &bufs.latent, stream)?;
        check_aligned(OP, "rope", &bufs.rope, stream)?;
        if op.tokens == 0 {
            return Ok(());
        }
        let tokens = to_i32(OP, "tokens", op.tokens)?;
        let latent_dim = layout.latent_dim as i32;
        let rope_dim = layout.rope_dim as i32;
        let fmt: i32 = match layout.format {
            MlaCacheFormat::Bf16 => 0,
            MlaCacheFormat::Fp8 => 1,
        };
        let num_slots = to_i32(OP, "cache slots", pages * layout.page_size)?;
        let token_bytes = layout.token_bytes() as i32;
        let variant = MlaAppendVariant;
        let grid = variant.grid(op.tokens);
        let mut args = KernelArgs::new(stream);
        args.buffer(&bufs.latent)
            .buffer(&bufs.rope)
            .buffer(&bufs.slots)
            .buffer_mut(&mut bufs.cache)
            .value(&tokens)
            .value(&latent_dim)
            .value(&rope_dim)
            .value(&fmt)
            .value(&num_slots)
            .value(&token_bytes);
        // SAFETY: the parameters are (const u16*, const u16*, const int*, u8*, int x 6) in this
        // order; latent, rope and slots hold tokens x (latent_dim, rope_dim, 1) elements and the
        // cache num_slots x token_bytes bytes (checked above), all 16-byte aligned; the grid has
        // one warp per token; the kernel reads token t < tokens only and writes only records of
        // slots in 0..num_slots.
        unsafe { self.launch_kernel(&variant, grid, args, LaunchOptions::default()) }
    }

    /// Plans a decode: the kernel variant (the plan of the shape class: by default the CTA
    /// tiling by the rows `s_q * heads` and the shared memory the device allows, see
    /// [`crate::plan::heuristics::pick_mla_decode`]) and the number of KV splits (more when the
    /// batch alone does not fill the SMs and the keys are many). `max_seq_len` bounds the
    /// lengths the plan is used with (any length stays correct; it only guides the split count;
    /// pass `max_pages * page_size` if unknown).
    pub fn mla_decode_plan(&self, op: &MlaDecode, max_seq_len: usize) -> Result<MlaDecodePlan> {
        check_decode_op(op)?;
        let shape = MlaDecodeShape { op, max_seq_len };
        let variant = self
            .runtime
            .plans
            .plan(&shape, &mut |c: &[MlaDecodeVariant]| {
                self.time_mla_decode(op, max_seq_len, c)
            })?;
        self.mla_decode_plan_with(op, max_seq_len, variant)
    }

    /// [`CudaBackend::mla_decode_plan`] with an explicit kernel variant (any candidate of
    /// [`crate::plan::heuristics::mla_decode_candidates`] for the op's layout), for tests and
    /// tuning.
    pub fn mla_decode_plan_with(
        &self,
        op: &MlaDecode,
        max_seq_len: usize,
        variant: MlaDecodeVariant,
    ) -> Result<MlaDecodePlan> {
        const OP: &str = "mla_decode";
        check_decode_op(op)?;
        let layout = op.layout;
        if variant.varlen {
            return Err(Error::invalid(
                OP,
                "variant",
                "a variant for s_q queries per request (varlen false; a varlen plan comes from \
                 mla_decode_varlen_plan_with)",
                format!("{variant:?}"),
            ));
        }
        if !variant.fits_layout(&layout) {
            return Err(Error::invalid(
                OP,
                "variant",
                format!("a decode variant of the op's layout {layout:?}"),
                format!("{variant:?}"),
            ));
        }
        variant.valid_on(&self.runtime.arch)?;
        let rows = op.s_q * op.heads;
        let row_groups = rows.div_ceil(variant.rows_per_cta() as usize);
        let col_chunks = layout.latent_dim.div_ceil(variant.dv_chunk() as usize);
        let base = op.batch * row_groups * col_chunks;
        let tiles = max_seq_len
            .min(op.max_pages * layout.page_size)
            .div_ceil(variant.key_tile as usize);
        let sms = self.runtime.arch.sm_count.max(1) as usize;
        let splits = tessera_core::ops::mla::mla_kv_splits(base, tiles, sms);
        let plan = MlaDecodePlan {
            batch: op.batch,
            s_q: op.s_q,
            heads: op.heads,
            max_pages: op.max_pages,
            layout,
            variant,
            row_groups,
            col_chunks,
            splits,
        };
        to_i32(OP, "CTAs", plan.ctas())?;
        to_i32(OP, "batch * s_q * heads", op.batch * rows)?;
        Ok(plan)
    }

    /// Times every decode candidate for `op` and `max_seq_len` on scratch buffers and records
    /// the fastest as the plan of its shape class (see [`crate::plan::PlanCache::tune`]).
    pub fn tune_mla_decode(&self, op: &MlaDecode, max_seq_len: usize) -> Result<TuneOutcome> {
        check_decode_op(op)?;
        let shape = MlaDecodeShape { op, max_seq_len };
        self.runtime
            .plans
            .tune(&shape, &mut |c: &[MlaDecodeVariant]| {
                self.time_mla_decode(op, max_seq_len, c)
            })
    }

    /// Median milliseconds of each decode candidate, on scratch buffers (never the caller's) on
    /// the backend's stream: a cache of valid random records (at most 1 GiB, pages reused beyond
    /// it), a random block table, every request `max_seq_len` long, random queries.
    fn time_mla_decode(
        &self,
        op: &MlaDecode,
        max_seq_len: usize,
        candidates: &[MlaDecodeVariant],
    ) -> Result<Vec<f64>> {
        let stream = &self.runtime.stream;
        let layout = op.layout;
        let seq = max_seq_len.clamp(1, op.max_pages * layout.page_size);
        let pages_per_request = seq.div_ceil(layout.page_size);
        let pool_pages = (op.batch * pages_per_request)
            .min(((1usize << 30) / layout.page_bytes()).max(1))
            .max(1);
        let mut rng = ScratchRng(0x31a_dec0);
        let pattern_pages = pool_pages.min(64);
        let mut pattern = vec![0u8; pattern_pages * layout.page_bytes()];
        for rec in pattern.chunks_exact_mut(layout.token_bytes()) {
            match layout.format {
                MlaCacheFormat::Bf16 => {
                    for v in rec.chunks_exact_mut(2) {
                        v.copy_from_slice(&bf16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes());
                    }
                }
                MlaCacheFormat::Fp8 => {
                    let (latent, rest) = rec.split_at_mut(layout.latent_dim);
                    latent.iter_mut().for_each(|b| *b = rng.e4m3());
                    let (scales, rope) = rest.split_at_mut(4 * layout.fp8_groups());
                    for s in scales.chunks_exact_mut(4) {
                        s.copy_from_slice(&(1.0f32 / 64.0).to_le_bytes());
                    }
                    for v in rope.chunks_exact_mut(2) {
                        v.copy_from_slice(&bf16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes());
                    }
                }
            }
        }
        let cache_len = pool_pages * layout.page_bytes();
        let cache = scratch_buffer(stream, cache_len, &pattern)?;
        let table: Vec<i32> = (0..op.batch * op.max_pages)
            .map(|_| (rng.next_u64() % pool_pages as u64) as i32)
            .collect();
        let table = upload(stream, &table)?;
        let lens = upload(stream, &vec![seq as i32; op.batch])?;
        let q_pattern: Vec<bf16> = (0..1 << 16)
            .map(|_| bf16::from_f32(rng.uniform(-1.0, 1.0)))
            .collect();
        let q = scratch_buffer(stream, op.q_len(), &q_pattern)?;
        let mut o = scratch_buffer::<bf16>(stream, op.o_len(), &[])?;
        let mut lse = scratch_buffer::<f32>(stream, op.lse_len(), &[])?;
        let plans = candidates
            .iter()
            .map(|v| self.mla_decode_plan_with(op, max_seq_len, *v))
            .collect::<Result<Vec<_>>>()?;
        let ws_len = plans.iter().map(|p| p.workspace_len()).max().unwrap_or(0);
        let mut ws = scratch_buffer::<f32>(stream, ws_len, &[])?;
        time_each(stream, candidates, |v| {
            let plan = plans.iter().find(|p| p.variant() == v).ok_or_else(|| {
                Error::invalid("mla_decode", "variant", "a candidate", format!("{v:?}"))
            })?;
            let mut bufs = MlaDecodeBuffers {
                cache: cache.slice(0..cache_len),
                q: q.slice(0..op.q_len()),
                block_table: table.as_view(),
                seq_lens: lens.as_view(),
                o: o.slice_mut(0..op.o_len()),
                lse: lse.slice_mut(0..op.lse_len()),
                workspace: ws.as_view_mut(),
            };
            self.mla_decode_on(stream, op, plan, &mut bufs)
        })
    }

    /// Absorbed MLA decode over a paged cache on `stream`, without synchronizing (see
    /// [`MlaDecode`] for the function computed).
    ///
    /// Buffers ([`MlaDecodeBuffers`]): `cache` u8 `[num_pages, page_size, token_bytes]`, `q` bf16
    /// `[batch, s_q, heads, latent_dim + rope_dim]`, `block_table` i32 `[batch, max_pages]`,
    /// `seq_lens` i32 `[batch]`, outputs `o` bf16 `[batch, s_q, heads, latent_dim]` and `lse` f32
    /// `[batch, heads, s_q]` (natural log; a query that sees no key gets o = 0, lse = -inf), and
    /// `workspace` f32 of [`MlaDecodePlan::workspace_len`] elements. `plan` must come from
    /// [`CudaBackend::mla_decode_plan`] for the same op.
    ///
    /// Checked here: the descriptor, every length, 16-byte alignment, the plan. The table and
    /// lengths live on the device, so they are checked by the kernel, which never reads outside
    /// the cache: a length outside `0..=max_pages * page_size`, or a block-table entry in use
    /// (covering keys below the length) outside `0..num_pages`, is an error that the kernel
    /// signals by writing NaN to the o and lse of the request's queries (at least those sharing
    /// a CTA with the bad key) instead of reading the page. Entries past the length are never
    /// read.
    pub fn mla_decode_on(
        &self,
        stream: &CudaStream,
        op: &MlaDecode,
        plan: &MlaDecodePlan,
        bufs: &mut MlaDecodeBuffers<'_>,
    ) -> Result<()> {
        const OP: &str = "mla_decode";
        check_decode_op(op)?;
        let l = op.layout;
        if plan.variant.varlen
            || (
                plan.batch,
                plan.s_q,
                plan.heads,
                plan.max_pages,
                plan.layout,
            ) != (op.batch, op.s_q, op.heads, op.max_pages, l)
        {
            return Err(Error::invalid(
                OP,
                "plan",
                "a plan made for this op (mla_decode_plan)",
                format!("{plan:?}"),
            ));
        }
        let pages = cache_pages(OP, &l, bufs.cache.len())?;
        check_device_len(OP, "q", op.q_len(), bufs.q.len())?;
        check_device_len(
            OP,
            "block_table",
            op.batch * op.max_pages,
            bufs.block_table.len(),
        )?;
        check_device_len(OP, "seq_lens", op.batch, bufs.seq_lens.len())?;
        check_device_len(OP, "o", op.o_len(), bufs.o.len())?;
        check_device_len(OP, "lse", op.lse_len(), bufs.lse.len())?;
        check_workspace(OP, plan, bufs.workspace.len())?;
        check_aligned(OP, "cache", &bufs.cache, stream)?;
        check_aligned(OP, "q", &bufs.q, stream)?;
        check_aligned(OP, "o", &bufs.o, stream)?;
        if plan.splits > 1 {
            check_aligned(OP, "workspace", &bufs.workspace, stream)?;
        }

        self.launch_mla_decode(
            stream,
            plan,
            op.softmax_scale,
            pages,
            0,
            DecodeLaunch {
                cache: &bufs.cache,
                q: &bufs.q,
                block_table: &bufs.block_table,
                seq_lens: &bufs.seq_lens,
                cu_seqlens_q: &bufs.seq_lens,
                o: &mut bufs.o,
                lse: &mut bufs.lse,
                workspace: &mut bufs.workspace,
            },
        )
    }

    /// Plans a variable-length decode: the plan of the uniform decode of `max_s_q` queries per
    /// request ([`MlaDecodeVarlen::padded`], see [`CudaBackend::mla_decode_plan`]) with the
    /// kernel compiled for `cu_seqlens_q` offsets. The plan holds for any offsets of the op.
    pub fn mla_decode_varlen_plan(
        &self,
        op: &MlaDecodeVarlen,
        max_seq_len: usize,
    ) -> Result<MlaDecodePlan> {
        check_varlen_op(op)?;
        let mut plan = self.mla_decode_plan(&op.padded(), max_seq_len)?;
        plan.variant = plan.variant.with_varlen(true);
        Ok(plan)
    }

    /// [`CudaBackend::mla_decode_varlen_plan`] with an explicit tiling (any candidate of
    /// [`crate::plan::heuristics::mla_decode_candidates`] for the padded op; its `varlen` flag is
    /// set here), for tests and tuning.
    pub fn mla_decode_varlen_plan_with(
        &self,
        op: &MlaDecodeVarlen,
        max_seq_len: usize,
        variant: MlaDecodeVariant,
    ) -> Result<MlaDecodePlan> {
        check_varlen_op(op)?;
        let mut plan =
            self.mla_decode_plan_with(&op.padded(), max_seq_len, variant.with_varlen(false))?;
        plan.variant = plan.variant.with_varlen(true);
        Ok(plan)
    }

    /// Absorbed MLA decode with a variable number of queries per request, on `stream`, without
    /// synchronizing (see [`MlaDecodeVarlen`] for the function computed).
    ///
    /// Buffers ([`MlaDecodeVarlenBuffers`]): `cache` u8 `[num_pages, page_size, token_bytes]`,
    /// `q` bf16 `[total_q, heads, latent_dim + rope_dim]`, `cu_seqlens_q` i32 `[batch + 1]`,
    /// `block_table` i32 `[batch, max_pages]`, `seq_lens` i32 `[batch]`, outputs `o` bf16
    /// `[total_q, heads, latent_dim]` and `lse` f32 `[heads, total_q]`, and `workspace` f32 of
    /// [`MlaDecodePlan::workspace_len`] elements. `plan` must come from
    /// [`CudaBackend::mla_decode_varlen_plan`] for the same op. The offsets are read on the
    /// device (no synchronization; capturable in a CUDA graph and replayable with new offsets,
    /// lengths and tables).
    ///
    /// Checked here: the descriptor, every length, 16-byte alignment, the plan. On the device,
    /// as [`CudaBackend::mla_decode_on`] for the table and lengths; a request whose offsets are
    /// out of range (`cu_seqlens_q[b] < 0`, a count outside `0..=max_s_q`, or past `total_q`)
    /// is skipped: none of its queries' outputs are written (the host API checks the offsets).
    /// With `total_q = 0` nothing is launched.
    pub fn mla_decode_varlen_on(
        &self,
        stream: &CudaStream,
        op: &MlaDecodeVarlen,
        plan: &MlaDecodePlan,
        bufs: &mut MlaDecodeVarlenBuffers<'_>,
    ) -> Result<()> {
        const OP: &str = "mla_decode_varlen";
        check_varlen_op(op)?;
        let l = op.layout;
        if !plan.variant.varlen
            || (
                plan.batch,
                plan.s_q,
                plan.heads,
                plan.max_pages,
                plan.layout,
            ) != (op.batch, op.max_s_q, op.heads, op.max_pages, l)
        {
            return Err(Error::invalid(
                OP,
                "plan",
                "a plan made for this op (mla_decode_varlen_plan)",
                format!("{plan:?}"),
            ));
        }
        let pages = cache_pages(OP, &l, bufs.cache.len())?;
        check_device_len(OP, "q", op.q_len(), bufs.q.len())?;
        check_device_len(
            OP,
            "cu_seqlens_q",
            op.cu_seqlens_q_len(),
            bufs.cu_seqlens_q.len(),
        )?;
        check_device_len(
            OP,
            "block_table",
            op.block_table_len(),
            bufs.block_table.len(),
        )?;
        check_device_len(OP, "seq_lens", op.batch, bufs.seq_lens.len())?;
        check_device_len(OP, "o", op.o_len(), bufs.o.len())?;
        check_device_len(OP, "lse", op.lse_len(), bufs.lse.len())?;
        check_workspace(OP, plan, bufs.workspace.len())?;
        check_aligned(OP, "cache", &bufs.cache, stream)?;
        check_aligned(OP, "q", &bufs.q, stream)?;
        check_aligned(OP, "o", &bufs.o, stream)?;
        if plan.splits > 1 {
            check_aligned(OP, "workspace", &bufs.workspace, stream)?;
        }
        if op.total_q == 0 {
            return Ok(());
        }
        let total_q = to_i32(OP, "total_q", op.total_q)?;
        self.launch_mla_decode(
            stream,
            plan,
            op.softmax_scale,
            pages,
            total_q,
            DecodeLaunch {
                cache: &bufs.cache,
                q: &bufs.q,
                block_table: &bufs.block_table,
                seq_lens: &bufs.seq_lens,
                cu_seqlens_q: &bufs.cu_seqlens_q,
                o: &mut bufs.o,
                lse: &mut bufs.lse,
                workspace: &mut bufs.workspace,
            },
        )
    }

    /// Launches the decode kernel (and the combine with several splits) of `plan` over buffers
    /// the caller checked against the plan's op: `pages` whole pages of cache, `total_q` the
    /// packed query tokens of a varlen plan (unused for a uniform one).
    fn launch_mla_decode(
        &self,
        stream: &CudaStream,
        plan: &MlaDecodePlan,
        softmax_scale: f32,
        pages: usize,
        total_q: i32,
        bufs: DecodeLaunch<'_, '_>,
    ) -> Result<()> {
        const OP: &str = "mla_decode";
        let l = plan.layout;
        let i = |arg: &str, v: usize| to_i32(OP, arg, v);
        let (batch, s_q, heads) = (i("batch", plan.batch)?, plan.s_q as i32, plan.heads as i32);
        let max_pages = i("max_pages", plan.max_pages)?;
        let page_size = l.page_size as i32;
        let num_pages = i("num_pages", pages)?;
        let (latent, rope, token_bytes) = (
            l.latent_dim as i32,
            l.rope_dim as i32,
            l.token_bytes() as i32,
        );
        let splits = plan.splits as i32;
        let row_groups = plan.row_groups as i32;
        let col_chunks = plan.col_chunks as i32;
        let scale_log2 = softmax_scale * std::f32::consts::LOG2_E;

        let variant = plan.variant;
        let ctas = u32::try_from(plan.ctas()).map_err(|_| {
            Error::invalid(OP, "plan", "at most 2^31 - 1 CTAs", plan.ctas().to_string())
        })?;
        let mut args = KernelArgs::new(stream);
        args.buffer(bufs.q)
            .buffer(bufs.cache)
            .buffer(bufs.block_table)
            .buffer(bufs.seq_lens)
            .buffer(bufs.cu_seqlens_q)
            .buffer_mut(&mut *bufs.o)
            .buffer_mut(&mut *bufs.lse)
            .buffer_mut(&mut *bufs.workspace)
            .value(&batch)
            .value(&s_q)
            .value(&total_q)
            .value(&heads)
            .value(&max_pages)
            .value(&page_size)
            .value(&num_pages)
            .value(&latent)
            .value(&rope)
            .value(&token_bytes)
            .value(&splits)
            .value(&row_groups)
            .value(&col_chunks)
            .value(&scale_log2);
        // SAFETY: the parameters are (const u16*, const u8*, const int*, const int*, const int*,
        // u16*, float*, float*, int x 13, float) in this order. The callers checked the lengths
        // against the plan's op: q, o, lse, block_table, seq_lens (and cu_seqlens_q, batch + 1,
        // for a varlen plan: a uniform plan's kernel never reads it) match it, the cache holds
        // num_pages whole pages, the workspace holds the plan's splits x batch x s_q x heads x
        // (latent + 1) floats when splits > 1 (unused otherwise); pointers are 16-byte aligned.
        // The grid is the plan's CTAs, with the variant's dynamic shared memory (the variant
        // fits the op's layout: checked when the plan was made). The kernel reads block-table
        // entries only below each checked length, never dereferences a page outside
        // 0..num_pages, and (varlen) touches only query tokens of offsets within 0..=total_q.
        unsafe { self.launch_kernel(&variant, (ctas, 1, 1), args, LaunchOptions::default())? };

        if plan.splits > 1 {
            let combine = MlaCombineVariant {
                varlen: variant.varlen,
            };
            let rows = u32::try_from(plan.batch * plan.s_q * plan.heads).map_err(|_| {
                Error::invalid(OP, "batch * s_q * heads", "at most 2^32 - 1", "more")
            })?;
            let ws = bufs.workspace.as_view();
            let mut args = KernelArgs::new(stream);
            args.buffer(&ws)
                .buffer(bufs.cu_seqlens_q)
                .buffer_mut(&mut *bufs.o)
                .buffer_mut(&mut *bufs.lse)
                .value(&batch)
                .value(&s_q)
                .value(&total_q)
                .value(&heads)
                .value(&latent)
                .value(&splits);
            // SAFETY: the parameters are (const float*, const int*, u16*, float*, int x 6) in
            // this order; the workspace's first splits x batch x rows x latent floats are the
            // partial outputs and the next splits x batch x rows the partial lse (length checked
            // by the callers, written by the decode launch before on the same stream). One CTA
            // per (request, row of s_q * heads) writes that row of o and its lse entry only
            // (varlen: rows of the request's own queries, offsets within 0..=total_q).
            unsafe { self.launch_kernel(&combine, (rows, 1, 1), args, LaunchOptions::default())? };
        }
        Ok(())
    }

    pub(crate) fn mla_append_host(
        &self,
        op: &MlaAppend,
        cache: &mut MlaCache,
        latent: &[bf16],
        rope: &[bf16],
        slots: &[i32],
    ) -> Result<()> {
        op.validate_args(cache, latent, rope, slots)?;
        if op.tokens == 0 {
            return Ok(());
        }
        let stream = &self.runtime.stream;
        let layout = *cache.layout();
        let mut d_cache = upload(stream, cache.as_bytes())?;
        let d_latent = upload_nonempty(stream, latent)?;
        let d_rope = upload_nonempty(stream, rope)?;
        let d_slots = upload_nonempty(stream, slots)?;
        {
            let mut bufs = MlaAppendBuffers {
                cache: d_cache.as_view_mut(),
                latent: d_latent.slice(0..latent.len()),
                rope: d_rope.slice(0..rope.len()),
                slots: d_slots.slice(0..slots.len()),
            };
            self.mla_append_on(stream, op, &layout, &mut bufs)?;
        }
        stream
            .memcpy_dtoh(&d_cache, cache.as_bytes_mut())
            .map_err(|e| driver_error("copying from the device", e))?;
        stream
            .synchronize()
            .map_err(|e| driver_error("mla_append", e))
    }

    pub(crate) fn mla_decode_host(
        &self,
        op: &MlaDecode,
        cache: &MlaCache,
        q: &[bf16],
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<MlaDecodeOutput> {
        op.validate_args(cache, q, block_table, seq_lens)?;
        let stream = &self.runtime.stream;
        let max_len = seq_lens.iter().copied().max().unwrap_or(0).max(0) as usize;
        let plan = self.mla_decode_plan(op, max_len)?;
        let d_cache = upload(stream, cache.as_bytes())?;
        let d_q = upload(stream, q)?;
        let d_table = upload(stream, block_table)?;
        let d_lens = upload(stream, seq_lens)?;
        // Outputs start as NaN so that an element the kernel fails to write shows up.
        let mut d_o = upload(stream, &vec![bf16::NAN; op.o_len()])?;
        let mut d_lse = upload(stream, &vec![f32::NAN; op.lse_len()])?;
        let mut d_ws = stream
            .alloc_zeros::<f32>(plan.workspace_len().max(1))
            .map_err(|e| driver_error("allocating the decode workspace", e))?;
        {
            let mut bufs = MlaDecodeBuffers {
                cache: d_cache.as_view(),
                q: d_q.as_view(),
                block_table: d_table.as_view(),
                seq_lens: d_lens.as_view(),
                o: d_o.as_view_mut(),
                lse: d_lse.as_view_mut(),
                workspace: d_ws.as_view_mut(),
            };
            self.mla_decode_on(stream, op, &plan, &mut bufs)?;
        }
        Ok(MlaDecodeOutput {
            o: super::download(stream, &d_o)?,
            lse: super::download(stream, &d_lse)?,
        })
    }
}

impl CudaBackend {
    pub(crate) fn mla_decode_varlen_host(
        &self,
        op: &MlaDecodeVarlen,
        cache: &MlaCache,
        q: &[bf16],
        cu_seqlens_q: &[i32],
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<MlaDecodeOutput> {
        op.validate_args(cache, q, cu_seqlens_q, block_table, seq_lens)?;
        if op.total_q == 0 {
            return Ok(MlaDecodeOutput {
                o: Vec::new(),
                lse: Vec::new(),
            });
        }
        let stream = &self.runtime.stream;
        let max_len = seq_lens.iter().copied().max().unwrap_or(0).max(0) as usize;
        let plan = self.mla_decode_varlen_plan(op, max_len)?;
        let d_cache = upload(stream, cache.as_bytes())?;
        let d_q = upload(stream, q)?;
        let d_cu = upload(stream, cu_seqlens_q)?;
        let d_table = upload(stream, block_table)?;
        let d_lens = upload(stream, seq_lens)?;
        // Outputs start as NaN so that an element the kernel fails to write shows up.
        let mut d_o = upload(stream, &vec![bf16::NAN; op.o_len()])?;
        let mut d_lse = upload(stream, &vec![f32::NAN; op.lse_len()])?;
        let mut d_ws = stream
            .alloc_zeros::<f32>(plan.workspace_len().max(1))
            .map_err(|e| driver_error("allocating the decode workspace", e))?;
        {
            let mut bufs = MlaDecodeVarlenBuffers {
                cache: d_cache.as_view(),
                q: d_q.as_view(),
                cu_seqlens_q: d_cu.as_view(),
                block_table: d_table.as_view(),
                seq_lens: d_lens.as_view(),
                o: d_o.as_view_mut(),
                lse: d_lse.as_view_mut(),
                workspace: d_ws.as_view_mut(),
            };
            self.mla_decode_varlen_on(stream, op, &plan, &mut bufs)?;
        }
        Ok(MlaDecodeOutput {
            o: super::download(stream, &d_o)?,
            lse: super::download(stream, &d_lse)?,
        })
    }
}
