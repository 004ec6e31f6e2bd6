//! MLA paged-cache append and absorbed decode on CUDA.
//!
//! Kernels: `mla_append.cu` (one warp per token; bf16 copy or FP8 quantization per 128 values)
//! and `mla_decode.cu` (multi-query attention with one latent KV head on the tensor cores,
//! `mma.sync` bf16 with f32 accumulation, online softmax, split-KV over CTAs with a
//! log-sum-exp combine). See the `.cu` files for the tiling.
//!
//! Two APIs: [`CudaBackend::mla_append_on`] / [`CudaBackend::mla_decode_on`] over caller-owned
//! device buffers (no copies, no synchronization), and the host wrappers behind the
//! [`tessera_core::Backend`] trait.

use super::{check_device_len, launch_error, to_i32, upload};
use crate::compile::{KernelSource, KernelVariant};
use crate::runtime::driver_error;
use crate::CudaBackend;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use half::bf16;
use std::sync::Arc;
use tessera_core::{
    Error, MlaAppend, MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeOutput, Result,
};

/// `mla_append.cu`: writes tokens into the paged cache (both formats, run-time layout).
pub const MLA_APPEND: KernelSource = KernelSource {
    file: "mla_append.cu",
    code: include_str!("../../kernels/mla_append.cu"),
};

/// `mla_decode.cu`: absorbed paged decode (split-KV) and the split combine.
pub const MLA_DECODE: KernelSource = KernelSource {
    file: "mla_decode.cu",
    code: include_str!("../../kernels/mla_decode.cu"),
};

/// Threads per decode CTA (8 warps).
const DECODE_THREADS: u32 = 256;
/// Threads per combine CTA.
const COMBINE_THREADS: u32 = 128;
/// Tokens per append CTA (one warp each).
const APPEND_TOKENS_PER_CTA: usize = 8;
/// Most splits of one request's keys.
const MAX_SPLITS: usize = 64;
/// Device pointers must start on this many bytes (vector loads and `cp.async`).
const ALIGN: u64 = 16;

/// The append kernel (one variant for every layout).
pub fn append_variant() -> KernelVariant {
    KernelVariant::new(MLA_APPEND)
}

/// Whether a layout has the specialized DeepSeek-V3 decode (latent 512, rope 64, compile-time).
fn is_deepseek(layout: &MlaCacheLayout) -> bool {
    layout.latent_dim == 512 && layout.rope_dim == 64
}

/// Output columns each decode CTA computes: the whole latent for DeepSeek's 512, else 256
/// (larger latents are split over CTAs that each recompute the scores).
fn dv_chunk(layout: &MlaCacheLayout) -> usize {
    if is_deepseek(layout) {
        512
    } else {
        256
    }
}

/// The decode kernel for a layout: per cache format, a DeepSeek-V3 variant (latent 512, rope
/// 64 as compile-time constants) and a generic one (dims at run time).
pub fn decode_variant(layout: &MlaCacheLayout) -> KernelVariant {
    let fmt = match layout.format {
        MlaCacheFormat::Bf16 => 0,
        MlaCacheFormat::Fp8 => 1,
    };
    let v = KernelVariant::new(MLA_DECODE).define("FMT", fmt);
    if is_deepseek(layout) {
        v.define("LATENT", 512)
            .define("ROPE", 64)
            .define("DV_CHUNK", 512)
    } else {
        v.define("LATENT", 0)
            .define("ROPE", 0)
            .define("DV_CHUNK", 256)
    }
}

/// Every kernel variant of this module (compiled by CI for sm_90a and sm_80).
pub(crate) fn variants() -> Vec<KernelVariant> {
    let mut v = vec![append_variant()];
    for format in [MlaCacheFormat::Bf16, MlaCacheFormat::Fp8] {
        for (latent_dim, rope_dim) in [(512, 64), (128, 0)] {
            v.push(decode_variant(&MlaCacheLayout {
                page_size: 64,
                latent_dim,
                rope_dim,
                format,
            }));
        }
    }
    v
}

/// A CTA tiling of the decode kernel (one entry point of `mla_decode.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tiling {
    /// Query rows per CTA (16, 32 or 64).
    rows: usize,
    /// Keys per shared-memory tile.
    keys: usize,
    /// Key tiles in the cp.async pipeline.
    stages: usize,
    /// The entry point.
    entry: &'static str,
}

const fn tiling(rows: usize, keys: usize, stages: usize, entry: &'static str) -> Tiling {
    Tiling {
        rows,
        keys,
        stages,
        entry,
    }
}

/// Every tiling, in order of preference for many rows; fewer rows start further down (see
/// [`CudaBackend::mla_decode_plan`]). The first that fits the device's shared memory is used.
const TILINGS: [Tiling; 7] = [
    tiling(64, 32, 3, "mla_decode_r4n32s3"),
    tiling(64, 32, 2, "mla_decode_r4n32s2"),
    tiling(32, 32, 4, "mla_decode_r2n32s4"),
    tiling(32, 32, 2, "mla_decode_r2n32s2"),
    tiling(16, 64, 3, "mla_decode_r1n64s3"),
    tiling(16, 64, 2, "mla_decode_r1n64s2"),
    tiling(16, 32, 2, "mla_decode_r1n32s2"),
];

/// Dynamic shared memory of a decode CTA (the same sum as in `mla_decode.cu`): Q `[M][qk+8]`
/// bf16 (none for the DeepSeek variant with 16 rows, which keeps Q in registers and stages it in
/// a key buffer), key tiles `[N][qk+8]` bf16 (`stages` of them for bf16 caches, one for FP8),
/// FP8 raw records `stages x [N][token_bytes rounded up to 16]`, P `[M][N+8]` bf16, the exchange
/// `[8 / (M/16)][M]` f32.
fn decode_smem_bytes(layout: &MlaCacheLayout, t: &Tiling) -> usize {
    let pitch = 2 * (layout.qk_dim() + 8);
    let (key_tiles, raw) = match layout.format {
        MlaCacheFormat::Bf16 => (t.stages, 0),
        MlaCacheFormat::Fp8 => (
            1,
            t.stages * t.keys * layout.token_bytes().div_ceil(16) * 16,
        ),
    };
    let q_in_registers = is_deepseek(layout) && t.rows == 16;
    let q = if q_in_registers { 0 } else { t.rows * pitch };
    let col_warps = 8 / (t.rows / 16);
    q + key_tiles * t.keys * pitch + raw + t.rows * (t.keys + 8) * 2 + col_warps * t.rows * 4
}

/// The number of KV splits: one CTA runs per SM at a time, so the CTAs should fill whole
/// waves. Takes the fewest splits (each keeping at least two key tiles) whose CTAs fill their
/// waves to 85%, else the best filling found.
fn choose_splits(base_ctas: usize, tiles: usize, sms: usize) -> usize {
    let fill = |s: usize| {
        let ctas = base_ctas * s;
        ctas as f64 / (ctas.div_ceil(sms) * sms) as f64
    };
    let cap = (tiles / 2).clamp(1, MAX_SPLITS);
    let mut best = (fill(1), 1);
    for s in 1..=cap {
        let f = fill(s);
        if f >= 0.85 {
            return s;
        }
        if f > best.0 + 1e-9 {
            best = (f, s);
        }
    }
    best.1
}

/// How a decode is spread over CTAs, from [`CudaBackend::mla_decode_plan`]: the tiling, the
/// number of KV splits, and the workspace the splits need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlaDecodePlan {
    batch: usize,
    s_q: usize,
    heads: usize,
    max_pages: usize,
    layout: MlaCacheLayout,
    rows_per_cta: usize,
    key_tile: usize,
    entry: &'static str,
    smem_bytes: usize,
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
        self.rows_per_cta
    }

    /// Keys per shared-memory tile.
    pub fn key_tile(&self) -> usize {
        self.key_tile
    }

    /// f32 elements of workspace [`CudaBackend::mla_decode_on`] needs: 0 with one split, else
    /// `splits * batch * s_q * heads * (latent_dim + 1)` (partial outputs
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
        let func = self.runtime.function(&append_variant(), "mla_append")?;
        let cfg = LaunchConfig {
            grid_dim: (op.tokens.div_ceil(APPEND_TOKENS_PER_CTA) as u32, 1, 1),
            block_dim: (32 * APPEND_TOKENS_PER_CTA as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&bufs.latent)
            .arg(&bufs.rope)
            .arg(&bufs.slots)
            .arg(&mut bufs.cache)
            .arg(&tokens)
            .arg(&latent_dim)
            .arg(&rope_dim)
            .arg(&fmt)
            .arg(&num_slots)
            .arg(&token_bytes);
        // SAFETY: the parameters are (const u16*, const u16*, const int*, u8*, int x 6) in this
        // order; latent, rope and slots hold tokens x (latent_dim, rope_dim, 1) elements and the
        // cache num_slots x token_bytes bytes (checked above), all 16-byte aligned; the kernel
        // reads token t < tokens only and writes only records of slots in 0..num_slots.
        unsafe { launch.launch(cfg) }.map_err(|e| launch_error("mla_append", e))?;
        Ok(())
    }

    /// Plans a decode: the CTA tiling (by the rows `s_q * heads` and the shared memory the
    /// device allows) and the number of KV splits (more when the batch alone does not fill the
    /// SMs and the keys are many). `max_seq_len` bounds the lengths the plan is used with (any
    /// length stays correct; it only guides the split count; pass `max_pages * page_size` if
    /// unknown).
    pub fn mla_decode_plan(&self, op: &MlaDecode, max_seq_len: usize) -> Result<MlaDecodePlan> {
        const OP: &str = "mla_decode";
        check_decode_op(op)?;
        let layout = op.layout;
        let rows = op.s_q * op.heads;
        let max_smem = self
            .runtime
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| driver_error("reading the shared-memory limit", e))?
            .max(0) as usize;
        // Prefer the fewest rows per CTA that holds all rows, then the largest that fits.
        let preferred = if rows <= 16 {
            4
        } else if rows <= 32 {
            2
        } else {
            0
        };
        let smallest = TILINGS[TILINGS.len() - 1];
        let (t, smem_bytes) = TILINGS[preferred..]
            .iter()
            .map(|t| (*t, decode_smem_bytes(&layout, t)))
            .find(|(_, bytes)| *bytes <= max_smem)
            .ok_or_else(|| Error::Unsupported {
                op: OP,
                backend: tessera_core::BackendKind::Cuda,
                reason: format!(
                    "qk_dim {} needs {} bytes of shared memory per block; the device allows {max_smem}",
                    layout.qk_dim(),
                    decode_smem_bytes(&layout, &smallest)
                ),
            })?;
        let (rows_per_cta, key_tile, entry) = (t.rows, t.keys, t.entry);
        let row_groups = rows.div_ceil(rows_per_cta);
        let col_chunks = layout.latent_dim.div_ceil(dv_chunk(&layout));
        let base = op.batch * row_groups * col_chunks;
        let tiles = max_seq_len
            .min(op.max_pages * layout.page_size)
            .div_ceil(key_tile);
        let sms = self.runtime.sm_count.max(1);
        let splits = choose_splits(base, tiles, sms);
        let plan = MlaDecodePlan {
            batch: op.batch,
            s_q: op.s_q,
            heads: op.heads,
            max_pages: op.max_pages,
            layout,
            rows_per_cta,
            key_tile,
            entry,
            smem_bytes,
            row_groups,
            col_chunks,
            splits,
        };
        to_i32(OP, "CTAs", plan.ctas())?;
        to_i32(OP, "batch * s_q * heads", op.batch * rows)?;
        Ok(plan)
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
        if (
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
        if bufs.workspace.len() < plan.workspace_len() {
            return Err(Error::invalid(
                OP,
                "workspace",
                format!(
                    "at least {} elements (MlaDecodePlan::workspace_len)",
                    plan.workspace_len()
                ),
                format!("{} elements", bufs.workspace.len()),
            ));
        }
        check_aligned(OP, "cache", &bufs.cache, stream)?;
        check_aligned(OP, "q", &bufs.q, stream)?;
        check_aligned(OP, "o", &bufs.o, stream)?;
        if plan.splits > 1 {
            check_aligned(OP, "workspace", &bufs.workspace, stream)?;
        }

        let i = |arg: &str, v: usize| to_i32(OP, arg, v);
        let (batch, s_q, heads) = (i("batch", op.batch)?, op.s_q as i32, op.heads as i32);
        let max_pages = i("max_pages", op.max_pages)?;
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
        let scale_log2 = op.softmax_scale * std::f32::consts::LOG2_E;

        let variant = decode_variant(&l);
        let func = self.runtime.function(&variant, plan.entry)?;
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            plan.smem_bytes as i32,
        )
        .map_err(|e| driver_error("raising the shared-memory limit of mla_decode", e))?;
        let cfg = LaunchConfig {
            grid_dim: (plan.ctas() as u32, 1, 1),
            block_dim: (DECODE_THREADS, 1, 1),
            shared_mem_bytes: plan.smem_bytes as u32,
        };
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&bufs.q)
            .arg(&bufs.cache)
            .arg(&bufs.block_table)
            .arg(&bufs.seq_lens)
            .arg(&mut bufs.o)
            .arg(&mut bufs.lse)
            .arg(&mut bufs.workspace)
            .arg(&batch)
            .arg(&s_q)
            .arg(&heads)
            .arg(&max_pages)
            .arg(&page_size)
            .arg(&num_pages)
            .arg(&latent)
            .arg(&rope)
            .arg(&token_bytes)
            .arg(&splits)
            .arg(&row_groups)
            .arg(&col_chunks)
            .arg(&scale_log2);
        // SAFETY: the parameters are (const u16*, const u8*, const int*, const int*, u16*, float*,
        // float*, int x 12, float) in this order. Lengths were checked above: q, o, lse,
        // block_table and seq_lens match the op, the cache holds num_pages whole pages, the
        // workspace holds the plan's splits x batch x rows x (latent + 1) floats when splits > 1
        // (unused otherwise); pointers are 16-byte aligned. The grid is the plan's CTAs with the
        // plan's dynamic shared memory (limit raised above). The kernel reads block-table
        // entries only below each checked length and never dereferences a page outside
        // 0..num_pages.
        unsafe { launch.launch(cfg) }.map_err(|e| launch_error(plan.entry, e))?;

        if plan.splits > 1 {
            let func = self.runtime.function(&variant, "mla_combine")?;
            let cfg = LaunchConfig {
                grid_dim: ((op.batch * op.s_q * op.heads) as u32, 1, 1),
                block_dim: (COMBINE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let ws = bufs.workspace.as_view();
            let mut launch = stream.launch_builder(&func);
            launch
                .arg(&ws)
                .arg(&mut bufs.o)
                .arg(&mut bufs.lse)
                .arg(&batch)
                .arg(&s_q)
                .arg(&heads)
                .arg(&latent)
                .arg(&splits);
            // SAFETY: the parameters are (const float*, u16*, float*, int x 5) in this order; the
            // workspace's first splits x batch x rows x latent floats are the partial outputs
            // and the next splits x batch x rows the partial lse (length checked above, written
            // by the decode launch before on the same stream). One CTA per (request, row)
            // writes that row of o and its lse entry only.
            unsafe { launch.launch(cfg) }.map_err(|e| launch_error("mla_combine", e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_fill_the_sms() {
        // Enough CTAs already: no split.
        assert_eq!(choose_splits(128, 64, 132), 1);
        // Few requests with long sequences: split until the waves are full.
        let s = choose_splits(4, 1024, 132);
        assert!((29..=33).contains(&s), "{s}");
        // Short sequences are not split below two tiles per split.
        assert_eq!(choose_splits(4, 3, 132), 1);
        assert_eq!(choose_splits(1, 1, 132), 1);
        assert!(choose_splits(1, 10_000, 132) <= MAX_SPLITS);
    }

    #[test]
    fn shared_memory_matches_the_kernel_layout() {
        let by_entry = |e: &str| *TILINGS.iter().find(|t| t.entry == e).unwrap();
        let ds = MlaCacheLayout::default();
        // Q 64 x 584 bf16, three key tiles 32 x 584, P 64 x 40, exchange 2 x 64 f32.
        assert_eq!(
            decode_smem_bytes(&ds, &by_entry("mla_decode_r4n32s3")),
            64 * 1168 + 3 * 32 * 1168 + 64 * 80 + 2 * 64 * 4
        );
        // 16 rows: Q in registers, staged in a key buffer.
        assert_eq!(
            decode_smem_bytes(&ds, &by_entry("mla_decode_r1n64s3")),
            3 * 64 * 1168 + 16 * 144 + 8 * 16 * 4
        );
        let fp8 = MlaCacheLayout {
            format: MlaCacheFormat::Fp8,
            ..ds
        };
        assert_eq!(fp8.token_bytes(), 656);
        assert_eq!(
            decode_smem_bytes(&fp8, &by_entry("mla_decode_r1n64s3")),
            64 * 1168 + 3 * 64 * 656 + 16 * 144 + 8 * 16 * 4
        );
        let generic = MlaCacheLayout {
            latent_dim: 256,
            rope_dim: 32,
            ..fp8
        };
        assert_eq!(generic.token_bytes(), 328);
        assert_eq!(
            decode_smem_bytes(&generic, &by_entry("mla_decode_r1n64s2")),
            16 * 592 + 64 * 592 + 2 * 64 * 336 + 16 * 144 + 8 * 16 * 4
        );
        // The DeepSeek tilings fit an H100/H200 block (227 KB); the largest layout fits with
        // the smallest tiling.
        for t in [
            by_entry("mla_decode_r4n32s3"),
            by_entry("mla_decode_r2n32s4"),
            by_entry("mla_decode_r1n64s3"),
        ] {
            assert!(decode_smem_bytes(&ds, &t) <= 232_448, "{t:?}");
            assert!(decode_smem_bytes(&fp8, &t) <= 232_448, "{t:?}");
        }
        let smallest = TILINGS[TILINGS.len() - 1];
        let big = MlaCacheLayout {
            page_size: 1,
            latent_dim: 1024,
            rope_dim: 256,
            format: MlaCacheFormat::Fp8,
        };
        assert!(decode_smem_bytes(&big, &smallest) <= 232_448);
        let big16 = MlaCacheLayout {
            format: MlaCacheFormat::Bf16,
            ..big
        };
        assert!(decode_smem_bytes(&big16, &smallest) <= 232_448);
    }

    #[test]
    fn every_layout_has_a_listed_variant() {
        let listed = variants();
        for format in [MlaCacheFormat::Bf16, MlaCacheFormat::Fp8] {
            for (latent_dim, rope_dim) in [(512, 64), (128, 0), (1024, 256), (512, 16), (256, 64)] {
                let l = MlaCacheLayout {
                    page_size: 16,
                    latent_dim,
                    rope_dim,
                    format,
                };
                assert!(listed.contains(&decode_variant(&l)), "{l:?}");
            }
        }
        assert!(listed.contains(&append_variant()));
    }
}
