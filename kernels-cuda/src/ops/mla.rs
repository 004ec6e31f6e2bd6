//! MLA paged-cache append and absorbed decode on CUDA.
//!
//! Kernels: `mla_append.cu` (one warp per token; bf16 copy or FP8 quantization per 128 values)
//! and `mla_decode.cu` (multi-query attention with one latent KV head on the tensor cores,
//! `mma.sync` bf16 with f32 accumulation, online softmax, split-KV over CTAs, one CTA tiling per
//! [`MlaDecodeVariant`]; `sm90/mla_decode.cu` on wgmma) with `mla_schedule.cu` (the split-KV
//! schedule, computed on the device from the lengths before the decode) and `mla_combine.cu`
//! (the log-sum-exp combine of the splits). See the `.cu` files for the tiling.
//!
//! Two APIs: [`CudaBackend::mla_append_on`] / [`CudaBackend::mla_decode_on`] /
//! [`CudaBackend::mla_decode_varlen_on`] over caller-owned device buffers (no copies, no
//! allocation, no synchronization: a decode step is capturable in a CUDA graph and replayable
//! with new lengths, see [`CudaBackend::mla_decode_on`]), and the host wrappers behind the
//! [`tessera_core::Backend`] trait.
//!
//! The variable-length decode ([`MlaDecodeVarlen`]) runs the same kernels compiled with
//! `VARLEN 1`: planned as the uniform decode of `max_s_q` queries per request (the grid and
//! the workspace), each CTA reads its request's query offset and count from `cu_seqlens_q` on
//! the device (no host synchronization: a launch with fixed `(batch, total_q, max_s_q)` is
//! capturable in a CUDA graph and replayable with new offsets), and CTAs past a request's rows
//! exit at once.

use super::{check_device_len, to_i32, upload};
use crate::plan::mla::{MLA_COMBINE_CTAS_PER_SM, MLA_COMBINE_ROWS_PER_CTA};
use crate::plan::tune::{scratch_buffer, time_each, ScratchRng};
use crate::plan::{
    KernelArgs, KernelSpec, LaunchOptions, MlaAppendVariant, MlaCombineVariant, MlaDecodeShape,
    MlaDecodeVariant, MlaScheduleVariant, TensorMap, TmaDtype, TmaSwizzle, TuneOutcome,
};
use crate::runtime::driver_error;
use crate::CudaBackend;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DeviceRepr};
use half::bf16;
use std::sync::Arc;
use tessera_core::ops::mla::{MlaKvSchedule, MlaScheduleRequest};
use tessera_core::{
    Error, MlaAppend, MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeOutput,
    MlaDecodeVarlen, Result,
};

/// Device pointers must start on this many bytes (vector loads and `cp.async`).
const ALIGN: u64 = 16;

/// How a decode is spread over CTAs, from [`CudaBackend::mla_decode_plan`] (or
/// [`CudaBackend::mla_decode_varlen_plan`], whose `s_q` is `max_s_q` and whose variant has
/// `varlen` set): the kernel variant (its CTA tiling), the room for key splits, and the
/// workspace they need.
///
/// How each request's keys are split is decided on the device, from the lengths, by a small
/// kernel launched before the decode (`mla_schedule.cu`, the rule of
/// [`tessera_core::ops::mla::mla_kv_schedule`]): one piece length for the batch, long requests in
/// several pieces, short ones in one, the pieces launched longest first. The plan fixes what that
/// needs from the host: the grid (room for [`MlaDecodePlan::max_units`] `(request, split)`
/// units) and the workspace.
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
    max_units: usize,
    slots: usize,
}

impl MlaDecodePlan {
    /// Splits of every request when all are `max_seq_len` long
    /// ([`tessera_core::ops::mla::mla_kv_splits`]; the device schedule cuts such requests into
    /// the same pieces). Unequal lengths split the longer requests more and the shorter ones
    /// less, within [`MlaDecodePlan::max_units`].
    pub fn splits(&self) -> usize {
        self.splits
    }

    /// `(request, split)` units the launch holds ([`tessera_core::ops::mla::mla_kv_max_units`]):
    /// `batch` when no request can be split (`max_seq_len` under 4 key tiles: no schedule, no
    /// workspace, no combine), else the grid's units (CTAs past the schedule's units exit at
    /// once).
    pub fn max_units(&self) -> usize {
        self.max_units
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

    /// f32 elements of workspace [`CudaBackend::mla_decode_on`] needs: 0 when no request can be
    /// split, else the partial results of `ws_slots = mla_kv_ws_slots(batch, max_units)` splits
    /// (partial outputs `[ws_slots, s_q * heads, latent_dim]`, then partial lse
    /// `[ws_slots, s_q * heads]`; `s_q` is `max_s_q` for a varlen plan), rounded up to 4
    /// elements, then the split-KV schedule, i32 (4 + 3 batch + (batch odd) + 2 max_units of
    /// them, see `kernels/mla_work.cuh`).
    pub fn workspace_len(&self) -> usize {
        if self.scheduled() {
            self.schedule_offset() + self.schedule_len()
        } else {
            0
        }
    }

    /// Whether a request can be split: the launch runs the schedule and the combine.
    fn scheduled(&self) -> bool {
        self.max_units > self.batch
    }

    /// Workspace slots of one split's partial results.
    fn ws_slots(&self) -> usize {
        if self.scheduled() {
            tessera_core::ops::mla::mla_kv_ws_slots(self.batch, self.max_units)
        } else {
            0
        }
    }

    /// Where the schedule starts in the workspace: after the partial results, on 16 bytes.
    fn schedule_offset(&self) -> usize {
        (self.ws_slots() * self.s_q * self.heads * (self.layout.latent_dim + 1)).next_multiple_of(4)
    }

    /// i32 elements of the schedule (`MlaSchedule` in `kernels/mla_work.cuh`).
    fn schedule_len(&self) -> usize {
        4 + 3 * self.batch + self.batch % 2 + 2 * self.max_units
    }

    /// CTAs of the decode kernel.
    fn ctas(&self) -> usize {
        self.max_units * self.col_chunks * self.row_groups
    }

    /// CTAs of the combine: one per (request that may be split, 4 rows), at most
    /// [`MLA_COMBINE_CTAS_PER_SM`] per SM (the CTAs stride over the rest); a request of `n > 1`
    /// splits takes `n - 1` units beyond the one every request has.
    fn combine_ctas(&self) -> usize {
        let requests = self.batch.min(self.max_units - self.batch);
        let items = requests * (self.s_q * self.heads).div_ceil(MLA_COMBINE_ROWS_PER_CTA as usize);
        items.min(self.slots * MLA_COMBINE_CTAS_PER_SM as usize)
    }

    /// The requests as the schedule weighs them, for lengths `seq_lens` and each request's
    /// queries (`query_counts`; `None`: `s_q` each): key tiles (0 for a length outside
    /// `0..=max_pages * page_size`) and blocks per split (row groups holding its queries x column
    /// chunks).
    fn schedule_requests(
        &self,
        seq_lens: &[i32],
        query_counts: Option<&[usize]>,
    ) -> Vec<MlaScheduleRequest> {
        let capacity = self.max_pages * self.layout.page_size;
        let rows_per_cta = self.rows_per_cta();
        seq_lens
            .iter()
            .enumerate()
            .map(|(b, &len)| {
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= capacity)
                    .unwrap_or(0);
                let n_q = query_counts.map_or(self.s_q, |c| c.get(b).copied().unwrap_or(0));
                MlaScheduleRequest {
                    tiles: len.div_ceil(self.key_tile()),
                    blocks: (n_q * self.heads).div_ceil(rows_per_cta) * self.col_chunks,
                }
            })
            .collect()
    }

    /// The split-KV schedule the device computes for lengths `seq_lens` (`[batch]`) and, for a
    /// varlen plan, each request's queries `query_counts` (`[batch]`, each in `0..=max_s_q`;
    /// `None`: `s_q` each): [`tessera_core::ops::mla::mla_kv_schedule`] of the plan's requests,
    /// on the host (for tests and inspection; a plan without a schedule, `max_units == batch`,
    /// runs every request in one split in request order).
    pub fn host_schedule(&self, seq_lens: &[i32], query_counts: Option<&[usize]>) -> MlaKvSchedule {
        let requests = self.schedule_requests(seq_lens, query_counts);
        tessera_core::ops::mla::mla_kv_schedule(&requests, self.slots, self.max_units)
    }

    /// The split-KV schedule the last launch of this plan wrote, read from its workspace
    /// (downloaded: `workspace` f32 of at least [`MlaDecodePlan::workspace_len`] elements), for
    /// tests: it equals [`MlaDecodePlan::host_schedule`] of the launch's lengths. An error for a
    /// plan without a schedule or a short workspace.
    pub fn read_schedule(&self, workspace: &[f32]) -> Result<MlaKvSchedule> {
        const OP: &str = "mla_decode";
        if !self.scheduled() {
            return Err(Error::invalid(
                OP,
                "plan",
                "a plan that can split requests (max_units > batch)",
                format!("max_units {} for batch {}", self.max_units, self.batch),
            ));
        }
        check_workspace(OP, self, workspace.len())?;
        let ints: Vec<i32> = workspace[self.schedule_offset()..self.workspace_len()]
            .iter()
            .map(|x| x.to_bits() as i32)
            .collect();
        let batch = self.batch;
        let count = |v: i32, most: usize, what: &str| {
            usize::try_from(v)
                .ok()
                .filter(|&n| n <= most)
                .ok_or_else(|| {
                    Error::invalid(
                        OP,
                        "workspace",
                        format!("{what} in 0..={most}"),
                        v.to_string(),
                    )
                })
        };
        let units = count(ints[0], self.max_units, "the schedule's units")?;
        let split_requests = count(ints[1], batch, "the schedule's split requests")?;
        let tiles_per_split = count(ints[2], i32::MAX as usize, "the schedule's piece")?;
        let req = &ints[4..4 + 2 * batch];
        let unit_base = 4 + 3 * batch + batch % 2;
        let index = |v: i32| count(v, usize::MAX, "an index");
        let mut splits = Vec::with_capacity(batch);
        let mut ws_first = Vec::with_capacity(batch);
        for b in 0..batch {
            let n = index(req[2 * b])?;
            splits.push(n);
            ws_first.push(if n > 1 {
                Some(index(req[2 * b + 1])?)
            } else {
                None
            });
        }
        Ok(MlaKvSchedule {
            tiles_per_split,
            splits,
            ws_first,
            split_requests: ints[4 + 2 * batch..4 + 2 * batch + split_requests]
                .iter()
                .map(|&b| index(b))
                .collect::<Result<_>>()?,
            units: (0..units)
                .map(|u| {
                    Ok((
                        index(ints[unit_base + 2 * u])?,
                        index(ints[unit_base + 2 * u + 1])?,
                    ))
                })
                .collect::<Result<_>>()?,
        })
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
        let blocks = row_groups * col_chunks;
        let tiles = max_seq_len
            .min(op.max_pages * layout.page_size)
            .div_ceil(variant.key_tile as usize);
        let slots = self.runtime.arch.sm_count.max(1) as usize;
        let splits = tessera_core::ops::mla::mla_kv_splits(op.batch * blocks, tiles, slots);
        let max_units = tessera_core::ops::mla::mla_kv_max_units(op.batch, blocks, tiles, slots);
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
            max_units,
            slots,
        };
        to_i32(OP, "CTAs", plan.ctas())?;
        to_i32(OP, "schedule units", plan.max_units)?;
        to_i32(OP, "combine CTAs", plan.combine_ctas())?;
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
            layout.write_record(
                rec,
                &mut rng,
                |r| r.uniform(-1.0, 1.0),
                ScratchRng::e4m3,
                1.0 / 64.0,
            )?;
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
    ///
    /// Launches, in order on `stream`: the split-KV schedule (one CTA reading `seq_lens` and
    /// writing the workspace's tail: how many pieces each request's keys are cut into, see
    /// [`MlaDecodePlan`]), the decode, the combine of the split requests; with
    /// `max_units == batch` only the decode. Nothing is read back to the host.
    ///
    /// # CUDA graphs
    /// The call is capturable (`CudaStream::begin_capture` .. `end_capture` on `stream`) and the
    /// graph replays with new contents of every buffer (lengths, table, queries, cache), the
    /// same buffers and the same op and plan. The caller must:
    /// - make one call with the plan outside the capture first: it compiles and loads the
    ///   kernels (NVRTC, module loading), which a capture does not allow;
    /// - capture on a stream of its own (`CudaContext::new_stream`), not the legacy default
    ///   stream;
    /// - pass buffers without cudarc's event tracking (allocated after
    ///   `CudaContext::disable_event_tracking`, their uses then ordered by the caller): with it,
    ///   each launch waits on the event of every buffer's last write and records a new one, and
    ///   a wait on an event recorded before the capture is not capturable;
    /// - keep the workspace (of [`MlaDecodePlan::workspace_len`]) for the graph's life; the
    ///   schedule lives in it, so two graphs replayed concurrently need two workspaces.
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
        if plan.scheduled() {
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
    /// lengths and tables, as [`CudaBackend::mla_decode_on`] says).
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
        if plan.scheduled() {
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

    /// Launches the decode of `plan` over buffers the caller checked against the plan's op:
    /// the split-KV schedule (when a request can be split), the decode kernel, the combine (when
    /// a request can be split), in this order on `stream`; `pages` whole pages of cache,
    /// `total_q` the packed query tokens of a varlen plan (unused for a uniform one).
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
        let ws_slots = i("workspace slots", plan.ws_slots())?;
        let row_groups = plan.row_groups as i32;
        let col_chunks = plan.col_chunks as i32;
        let scale_log2 = softmax_scale * std::f32::consts::LOG2_E;
        let variant = plan.variant;
        // With a schedule, the decode and the combine are launched programmatically (sm_90+):
        // each starts its CTAs while the grid before it finishes, and waits for that grid's
        // output in the kernel (mla_cta_work, mla_combine: griddepcontrol.wait).
        let after_previous = LaunchOptions {
            programmatic_dependent_launch: self.runtime.arch.programmatic_launch,
        };

        // The workspace: the splits' partial results, then the schedule (i32).
        let (mut partials, mut rest) = bufs.workspace.split_at_mut(if plan.scheduled() {
            plan.schedule_offset()
        } else {
            0
        });
        // SAFETY: the schedule is plain i32 data of the size of the f32 it overlays, in the
        // workspace's tail (the callers checked it holds workspace_len elements), 16-byte aligned
        // (the workspace is, and the offset is a multiple of 4 elements).
        let mut schedule = if plan.scheduled() {
            Some(
                unsafe { rest.transmute_mut::<i32>(plan.schedule_len()) }.ok_or_else(|| {
                    Error::invalid(
                        OP,
                        "workspace",
                        format!("{} elements", plan.workspace_len()),
                        "fewer",
                    )
                })?,
            )
        } else {
            None
        };

        if let Some(schedule) = schedule.as_mut() {
            let key_tile = variant.key_tile as i32;
            let rows_per_cta = variant.rows_per_cta() as i32;
            let slots = i("SMs", plan.slots)?;
            let max_units = i("schedule units", plan.max_units)?;
            let spec = MlaScheduleVariant {
                varlen: variant.varlen,
            };
            let mut args = KernelArgs::new(stream);
            args.buffer(bufs.seq_lens)
                .buffer(bufs.cu_seqlens_q)
                .buffer_mut(schedule)
                .value(&batch)
                .value(&s_q)
                .value(&total_q)
                .value(&heads)
                .value(&max_pages)
                .value(&page_size)
                .value(&key_tile)
                .value(&rows_per_cta)
                .value(&col_chunks)
                .value(&slots)
                .value(&max_units);
            // SAFETY: the parameters are (const int*, const int*, int*, int x 11) in this order;
            // seq_lens holds batch lengths (and cu_seqlens_q, batch + 1 offsets, for a varlen
            // plan: a uniform plan's kernel never reads it), the schedule
            // 4 + 3 batch + batch % 2 + 2 max_units i32 (its layout in mla_work.cuh), which the
            // one CTA writes within: at most max_units units (max_units >= batch, the plan's
            // grid bounds keep its sums within i32).
            unsafe { self.launch_kernel(&spec, (1, 1, 1), args, LaunchOptions::default())? };
        }
        let schedule_read = match schedule.as_ref() {
            Some(s) => s.as_view(),
            None => bufs.seq_lens.slice(..),
        };

        let ctas = u32::try_from(plan.ctas()).map_err(|_| {
            Error::invalid(OP, "plan", "at most 2^31 - 1 CTAs", plan.ctas().to_string())
        })?;
        // The seesaw reads the cache through tensor maps (MlaCacheMap in mla_work.cuh; its pages
        // are multiples of 64 keys): bf16 records as [records][qk] bf16, boxes of 64 keys x 64
        // dims, 128-byte swizzle; FP8 records as [records][token bytes] bytes, boxes of 64 keys x
        // 128 bytes (128-byte swizzle: codes, rope) and 64 keys x 16 bytes (no swizzle: scales).
        // Every other variant gets unused ones. (The guard records the launch's read of the
        // cache when dropped, after the launch.)
        let (cache_address, _cache_read) = bufs.cache.device_ptr(stream);
        let records = (pages * l.page_size) as u64;
        let record_bytes = l.token_bytes() as u64;
        let byte_map = |box_inner, swizzle| {
            TensorMap::tiled(
                cache_address,
                TmaDtype::U8,
                record_bytes,
                records,
                record_bytes,
                box_inner,
                64,
                swizzle,
            )
        };
        let (cache_map, scale_map) = match (variant.seesaw, l.format) {
            (false, _) => (TensorMap::unused(), TensorMap::unused()),
            (true, MlaCacheFormat::Bf16) => (
                TensorMap::tiled(
                    cache_address,
                    TmaDtype::BF16,
                    (l.latent_dim + l.rope_dim) as u64,
                    records,
                    record_bytes,
                    64,
                    64,
                    TmaSwizzle::B128,
                )?,
                TensorMap::unused(),
            ),
            (true, MlaCacheFormat::Fp8) => (
                byte_map(128, TmaSwizzle::B128)?,
                byte_map(16, TmaSwizzle::None)?,
            ),
        };
        let mut args = KernelArgs::new(stream);
        args.buffer(bufs.q)
            .buffer(bufs.cache)
            .buffer(bufs.block_table)
            .buffer(bufs.seq_lens)
            .buffer(bufs.cu_seqlens_q)
            .buffer(&schedule_read)
            .buffer_mut(&mut *bufs.o)
            .buffer_mut(&mut *bufs.lse)
            .buffer_mut(&mut partials)
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
            .value(&ws_slots)
            .value(&row_groups)
            .value(&col_chunks)
            .value(&scale_log2);
        args.value(&cache_map).value(&scale_map);
        // SAFETY: the parameters are (const u16*, const u8*, const int*, const int*, const int*,
        // const int*, u16*, float*, float*, int x 13, float, two 128-byte tensor maps) in this
        // order; the seesaw's maps cover exactly the cache's pages * page_size records (its
        // copies past them read zeros), the other kernels never read theirs. The callers checked
        // the lengths against the plan's op: q, o, lse, block_table, seq_lens (and cu_seqlens_q,
        // batch + 1, for a varlen plan: a uniform plan's kernel never reads it) match it, the
        // cache holds num_pages whole pages; with ws_slots > 0 the schedule was written just
        // before on this stream (a programmatic launch: every CTA reads it only after
        // griddepcontrol.wait, first thing in mla_cta_work) and the partials hold
        // ws_slots x s_q x heads x (latent + 1) floats, of which each split writes its slot (a
        // request's slots are its first slot + split, within ws_slots: mla_kv_ws_slots); with
        // ws_slots 0 neither is read (the schedule argument is a stand-in, every request one
        // split writing o and lse). Pointers are
        // 16-byte aligned. The grid is the plan's max_units x col_chunks x row_groups CTAs (CTAs
        // past the schedule's units exit), with the variant's dynamic shared memory (the variant
        // fits the op's layout: checked when the plan was made). The kernel reads block-table
        // entries only below each checked length, never dereferences a page outside
        // 0..num_pages, and (varlen) touches only query tokens of offsets within 0..=total_q.
        let decode_options = if plan.scheduled() {
            after_previous
        } else {
            LaunchOptions::default()
        };
        unsafe { self.launch_kernel(&variant, (ctas, 1, 1), args, decode_options)? };

        if plan.scheduled() {
            let combine = MlaCombineVariant {
                varlen: variant.varlen,
            };
            let ctas = u32::try_from(plan.combine_ctas()).map_err(|_| {
                Error::invalid(OP, "batch * s_q * heads", "at most 2^32 - 1", "more")
            })?;
            let partials = partials.as_view();
            let mut args = KernelArgs::new(stream);
            args.buffer(&partials)
                .buffer(bufs.cu_seqlens_q)
                .buffer(&schedule_read)
                .buffer_mut(&mut *bufs.o)
                .buffer_mut(&mut *bufs.lse)
                .value(&batch)
                .value(&s_q)
                .value(&total_q)
                .value(&heads)
                .value(&latent)
                .value(&ws_slots);
            // SAFETY: the parameters are (const float*, const int*, const int*, u16*, float*,
            // int x 6) in this order; the partials hold ws_slots x rows x latent partial outputs
            // then ws_slots x rows partial lse (rows = s_q * heads; length checked by the
            // callers, written by the decode launch before on the same stream, read only after
            // the kernel's griddepcontrol.wait, its first statement), the schedule its
            // requests of several splits (at most min(batch, max_units - batch)) and their slots.
            // The CTAs stride over the (split request, 4 rows) items, a warp writing its row of o
            // and its lse entry only (varlen: rows of the request's own queries, offsets within
            // 0..=total_q).
            unsafe { self.launch_kernel(&combine, (ctas, 1, 1), args, after_previous)? };
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

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ops::mla::{mla_kv_max_units, mla_kv_ws_slots};

    /// A plan of `batch` requests of `s_q * heads` rows for DeepSeek-V3's layout with the
    /// Hopper tiling (64 rows per CTA, 64-key tiles) on 132 SMs, made for `max_seq_len`.
    fn plan(batch: usize, s_q: usize, heads: usize, max_seq_len: usize) -> MlaDecodePlan {
        let layout = MlaCacheLayout::default();
        let variant = MlaDecodeVariant::sm90(&layout);
        let row_groups = (s_q * heads).div_ceil(64);
        let tiles = max_seq_len.div_ceil(64);
        MlaDecodePlan {
            batch,
            s_q,
            heads,
            max_pages: max_seq_len.div_ceil(64).max(1),
            layout,
            variant,
            row_groups,
            col_chunks: 1,
            splits: tessera_core::ops::mla::mla_kv_splits(batch * row_groups, tiles, 132),
            max_units: mla_kv_max_units(batch, row_groups, tiles, 132),
            slots: 132,
        }
    }

    /// What `mla_schedule.cu` writes for `sch` (the layout of `MlaSchedule` in mla_work.cuh),
    /// as the f32 bits of a workspace of `plan`.
    fn encode(plan: &MlaDecodePlan, sch: &MlaKvSchedule) -> Vec<f32> {
        let batch = plan.batch;
        let mut ints = vec![-7i32; plan.schedule_len()];
        ints[0] = sch.units.len() as i32;
        ints[1] = sch.split_requests.len() as i32;
        ints[2] = sch.tiles_per_split as i32;
        ints[3] = 0;
        for b in 0..batch {
            ints[4 + 2 * b] = sch.splits[b] as i32;
            ints[4 + 2 * b + 1] = sch.ws_first[b].map_or(-1, |f| f as i32);
        }
        for (i, &b) in sch.split_requests.iter().enumerate() {
            ints[4 + 2 * batch + i] = b as i32;
        }
        let units = 4 + 3 * batch + batch % 2;
        for (u, &(b, i)) in sch.units.iter().enumerate() {
            ints[units + 2 * u] = b as i32;
            ints[units + 2 * u + 1] = i as i32;
        }
        let mut ws = vec![f32::NAN; plan.schedule_offset()];
        ws.extend(ints.iter().map(|&v| f32::from_bits(v as u32)));
        assert_eq!(ws.len(), plan.workspace_len());
        ws
    }

    #[test]
    fn the_workspace_holds_the_partials_then_the_schedule() {
        // b 128, h 128, 32768 keys: two row groups of 64, one split each at the longest length,
        // room for 128 + 2 * 66 units; their partials, then the schedule on 16 bytes.
        let p = plan(128, 1, 128, 32768);
        assert_eq!((p.splits(), p.max_units()), (1, 128 + 132));
        assert_eq!(p.ws_slots(), mla_kv_ws_slots(128, 260));
        assert_eq!(p.ws_slots(), 260);
        assert_eq!(p.schedule_offset(), 260 * 128 * 513);
        assert_eq!(p.schedule_len(), 4 + 3 * 128 + 2 * 260);
        assert_eq!(p.workspace_len(), 260 * 128 * 513 + 4 + 384 + 520);
        assert_eq!((p.ctas(), p.combine_ctas()), (520, 132 * 8));
        assert_eq!(plan(4, 1, 128, 32768).combine_ctas(), 4 * 32);
        // An odd batch pads the units to 8 bytes; the schedule starts on 16.
        let p = plan(7, 3, 5, 5000);
        assert_eq!(p.schedule_offset() % 4, 0);
        assert_eq!(p.schedule_len(), 4 + 21 + 1 + 2 * p.max_units());
        // Too short to split: no schedule, no workspace, no combine.
        let p = plan(4, 1, 16, 150);
        assert_eq!((p.max_units(), p.workspace_len()), (4, 0));
        assert!(p.read_schedule(&[]).is_err());
    }

    #[test]
    fn a_written_schedule_reads_back() {
        for (batch, s_q, heads) in [(128, 1, 128), (7, 3, 5), (1, 1, 16), (600, 2, 16)] {
            let p = plan(batch, s_q, heads, 20000);
            let lens: Vec<i32> = (0..batch)
                .map(|b| match b % 7 {
                    0 => 20000,
                    1 => 0,
                    2 => 65,
                    3 => -1,
                    4 => 63,
                    5 => 1 + (b as i32 * 37) % 9000,
                    _ => 25000,
                })
                .collect();
            let sch = p.host_schedule(&lens, None);
            // Bad lengths (-1, past the table) have no tiles: one split each.
            for (len, &n) in lens.iter().zip(&sch.splits) {
                if !(0..=20000).contains(len) {
                    assert_eq!(n, 1);
                }
            }
            let ws = encode(&p, &sch);
            assert_eq!(p.read_schedule(&ws).unwrap(), sch);
            assert!(p.read_schedule(&ws[..ws.len() - 1]).is_err());
            // A corrupt count is an error, not a panic.
            let mut bad = ws.clone();
            bad[p.schedule_offset()] = f32::from_bits(u32::MAX);
            assert!(p.read_schedule(&bad).is_err());
            // Queries per request: none takes one split and counts no work.
            let counts: Vec<usize> = (0..batch).map(|b| b % 3).collect();
            let sch = p.host_schedule(&lens, Some(&counts));
            for (&n_q, &n) in counts.iter().zip(&sch.splits) {
                if n_q == 0 {
                    assert_eq!(n, 1);
                }
            }
        }
    }
}
