//! MLA (multi-head latent attention): the paged latent cache, appending to it, and absorbed
//! decode attention over it.

use super::{check_len, check_scale, checked_product, saturating_product};
use crate::error::{Error, Result};
use crate::fp8::E4M3;
use half::bf16;

/// How one token is stored in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MlaCacheFormat {
    /// `[latent bf16 | rope bf16]`: `2 * (latent + rope)` bytes (1152 for DeepSeek-V3).
    #[default]
    Bf16,
    /// DeepSeek-V3.2's FP8 layout: `[latent e4m3 | latent/128 f32 scales | rope bf16]`
    /// (656 bytes for DeepSeek-V3). Each scale is [`mla_fp8_scale`] of its 128 values, a
    /// power of two. Decode kernels may rely on that: a record written with another scale is
    /// decoded with its values rounded toward zero to bf16 by the CUDA backend's Hopper 64-row
    /// kernel (up to 2^-7 of each), not exactly.
    Fp8,
}

/// The shape of a paged MLA cache: pages of `page_size` token records, each holding the
/// normalized latent `c_KV` (`latent_dim`) and the RoPE'd shared key `k_pe` (`rope_dim`).
///
/// Memory: `[num_pages, page_size, token_bytes]` bytes; token slot `s` is
/// page `s / page_size`, row `s % page_size`. Little-endian throughout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MlaCacheLayout {
    /// Tokens per page (FlashMLA's native size is 64), 1..=1024.
    pub page_size: usize,
    /// Latent width d_c: a multiple of 64 in 64..=1024 (of 128 for FP8). DeepSeek-V3: 512.
    pub latent_dim: usize,
    /// RoPE key width: a multiple of 16 in 0..=256. DeepSeek-V3: 64.
    pub rope_dim: usize,
    /// Storage format.
    pub format: MlaCacheFormat,
}

impl Default for MlaCacheLayout {
    /// DeepSeek-V3: pages of 64, latent 512, rope 64, bf16.
    fn default() -> Self {
        Self {
            page_size: 64,
            latent_dim: 512,
            rope_dim: 64,
            format: MlaCacheFormat::Bf16,
        }
    }
}

impl MlaCacheLayout {
    /// Width of a query / key row: `latent_dim + rope_dim` (576 for DeepSeek-V3). The sizes
    /// below saturate at `usize::MAX` for a layout that fails [`Self::validate`].
    pub fn qk_dim(&self) -> usize {
        self.latent_dim.saturating_add(self.rope_dim)
    }

    /// Bytes per token record.
    pub fn token_bytes(&self) -> usize {
        match self.format {
            MlaCacheFormat::Bf16 => self.qk_dim().saturating_mul(2),
            MlaCacheFormat::Fp8 => self
                .rope_offset()
                .saturating_add(self.rope_dim.saturating_mul(2)),
        }
    }

    /// Number of FP8 scale groups of 128 in the latent.
    pub fn fp8_groups(&self) -> usize {
        self.latent_dim / 128
    }

    /// Writes one token record (`rec`, [`Self::token_bytes`] long) from generators over a state
    /// `state` (an RNG): every bf16 value (a bf16 record's latent, and the rope of both formats) is
    /// `value(state)`; an FP8 record's latent bytes are `e4m3(state)` (E4M3 bits) and each of its group
    /// scales is `fp8_scale`. For test and scratch data (random records, NaN fill).
    pub fn write_record<G>(
        &self,
        rec: &mut [u8],
        state: &mut G,
        value: impl FnMut(&mut G) -> f32,
        e4m3: impl FnMut(&mut G) -> u8,
        fp8_scale: f32,
    ) -> Result<()> {
        check_len(
            "MlaCacheLayout::write_record",
            "rec",
            "token_bytes of the layout",
            self.token_bytes(),
            rec.len(),
        )?;
        self.write_checked_record(rec, state, value, e4m3, fp8_scale);
        Ok(())
    }

    /// [`Self::write_record`] on a record whose length the caller has checked.
    fn write_checked_record<G>(
        &self,
        rec: &mut [u8],
        state: &mut G,
        mut value: impl FnMut(&mut G) -> f32,
        mut e4m3: impl FnMut(&mut G) -> u8,
        fp8_scale: f32,
    ) {
        let (latent_end, rope_start) = match self.format {
            MlaCacheFormat::Bf16 => (0, 0),
            MlaCacheFormat::Fp8 => (self.latent_dim, self.rope_offset()),
        };
        rec[..latent_end].iter_mut().for_each(|b| *b = e4m3(state));
        for s in rec[latent_end..rope_start].chunks_exact_mut(4) {
            s.copy_from_slice(&fp8_scale.to_le_bytes());
        }
        for v in rec[rope_start..].chunks_exact_mut(2) {
            v.copy_from_slice(&bf16::from_f32(value(state)).to_le_bytes());
        }
    }

    /// Byte offset of the rope part in a token record.
    pub fn rope_offset(&self) -> usize {
        match self.format {
            MlaCacheFormat::Bf16 => self.latent_dim.saturating_mul(2),
            MlaCacheFormat::Fp8 => self
                .latent_dim
                .saturating_add(self.fp8_groups().saturating_mul(4)),
        }
    }

    /// Bytes per page.
    pub fn page_bytes(&self) -> usize {
        self.page_size.saturating_mul(self.token_bytes())
    }

    /// Checks the layout.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "mla_cache_layout";
        if !(1..=1024).contains(&self.page_size) {
            return Err(Error::invalid(
                OP,
                "page_size",
                "1..=1024",
                self.page_size.to_string(),
            ));
        }
        let align = match self.format {
            MlaCacheFormat::Bf16 => 64,
            MlaCacheFormat::Fp8 => 128,
        };
        if self.latent_dim == 0 || self.latent_dim > 1024 || self.latent_dim % align != 0 {
            return Err(Error::invalid(
                OP,
                "latent_dim",
                format!(
                    "a multiple of {align} in {align}..=1024 for the {:?} format",
                    self.format
                ),
                self.latent_dim.to_string(),
            ));
        }
        if self.rope_dim > 256 || self.rope_dim % 16 != 0 {
            return Err(Error::invalid(
                OP,
                "rope_dim",
                "a multiple of 16 in 0..=256",
                self.rope_dim.to_string(),
            ));
        }
        Ok(())
    }
}

/// The FP8 cache's scale for a group of 128 latent values with absolute maximum `amax`:
/// `amax / 448` (f32), at least `2^-126`, rounded up to a power of two. Values are stored as
/// `E4M3::from_f32(x / scale)` (exact division by a power of two, then rounding).
pub fn mla_fp8_scale(amax: f32) -> f32 {
    super::fp8::round_up_pow2((amax / E4M3::MAX).max(f32::MIN_POSITIVE))
}

/// A paged MLA cache in host memory, `[num_pages, page_size, token_bytes]` bytes
/// (see [`MlaCacheLayout`]).
#[derive(Clone, Debug, PartialEq)]
pub struct MlaCache {
    layout: MlaCacheLayout,
    num_pages: usize,
    bytes: Vec<u8>,
}

impl MlaCache {
    /// A zero-filled cache of `num_pages` pages.
    pub fn new(layout: MlaCacheLayout, num_pages: usize) -> Result<Self> {
        layout.validate()?;
        if num_pages == 0 || num_pages > i32::MAX as usize / layout.page_size {
            return Err(Error::invalid(
                "mla_cache",
                "num_pages",
                format!("1..={}", i32::MAX as usize / layout.page_size),
                num_pages.to_string(),
            ));
        }
        // At most 2^31 slots of at most 2.5 KiB: the product fits; the memory may not be there.
        let len = num_pages * layout.page_bytes();
        let mut bytes = crate::mask::try_vec(len, "the MLA cache")?;
        bytes.resize(len, 0);
        Ok(Self {
            layout,
            num_pages,
            bytes,
        })
    }

    /// Wraps existing bytes, which must be `num_pages * page_bytes` long.
    pub fn from_bytes(layout: MlaCacheLayout, num_pages: usize, bytes: Vec<u8>) -> Result<Self> {
        let mut cache = Self::new(layout, num_pages)?;
        if bytes.len() != cache.bytes.len() {
            return Err(Error::invalid(
                "mla_cache",
                "bytes",
                format!(
                    "{} bytes ([{num_pages}, {}, {}])",
                    cache.bytes.len(),
                    layout.page_size,
                    layout.token_bytes()
                ),
                format!("{} bytes", bytes.len()),
            ));
        }
        cache.bytes = bytes;
        Ok(cache)
    }

    /// The layout.
    pub fn layout(&self) -> &MlaCacheLayout {
        &self.layout
    }

    /// Pages.
    pub fn num_pages(&self) -> usize {
        self.num_pages
    }

    /// Token slots: `num_pages * page_size`.
    pub fn num_slots(&self) -> usize {
        self.num_pages * self.layout.page_size
    }

    /// All bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// All bytes, mutable (what a device backend downloads into).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// The record of token slot `slot`. Panics if `slot >= num_slots()`.
    pub fn token_record(&self, slot: usize) -> &[u8] {
        let tb = self.layout.token_bytes();
        &self.bytes[slot * tb..(slot + 1) * tb]
    }

    /// The record of token slot `slot`, mutable. Panics if `slot >= num_slots()`.
    pub fn token_record_mut(&mut self, slot: usize) -> &mut [u8] {
        let tb = self.layout.token_bytes();
        &mut self.bytes[slot * tb..(slot + 1) * tb]
    }

    /// Fills every slot with NaN (bf16 NaN, E4M3 NaN and NaN scales), as tests do for slots
    /// that must never be read.
    pub fn fill_nan(&mut self) {
        let layout = self.layout;
        for rec in self.bytes.chunks_exact_mut(layout.token_bytes()) {
            layout.write_checked_record(
                rec,
                &mut (),
                |_| f32::NAN,
                |_| E4M3::NAN.to_bits(),
                f32::NAN,
            );
        }
    }

    /// Decodes slot `slot` to f32: `(latent, rope)`, the FP8 latent multiplied by its scales.
    pub fn read_token(&self, slot: usize) -> (Vec<f32>, Vec<f32>) {
        let l = self.layout;
        let rec = self.token_record(slot);
        let bf = |b: &[u8]| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        let rope = rec[l.rope_offset()..].chunks_exact(2).map(bf).collect();
        let latent = match l.format {
            MlaCacheFormat::Bf16 => rec[..2 * l.latent_dim].chunks_exact(2).map(bf).collect(),
            MlaCacheFormat::Fp8 => {
                let scales: Vec<f32> = rec[l.latent_dim..l.rope_offset()]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                rec[..l.latent_dim]
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| E4M3(q).to_f32() * scales[i / 128])
                    .collect()
            }
        };
        (latent, rope)
    }
}

/// Appends tokens to a paged MLA cache (vLLM's slot mapping).
///
/// Layouts: `latent` bf16 `[tokens, latent_dim]`, `rope` bf16 `[tokens, rope_dim]`,
/// `slots` i32 `[tokens]`: token `t` is written to slot `slots[t]` (page `slot / page_size`,
/// row `slot % page_size`); a negative slot skips the token (padding). Slots must be distinct.
/// For the FP8 format the latent is quantized per 128 values with [`mla_fp8_scale`] and must be
/// finite (an infinity would make its group's scale infinite); the rope part is copied as bf16
/// in both formats, and the bf16 format copies the latent as it is.
///
/// # Determinism
/// Exact: every backend writes the reference's bytes (the FP8 group maximum is an integer
/// `atomicMax` on the bit patterns on Vulkan, which is order-independent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaAppend {
    /// Tokens to write (may be 0).
    pub tokens: usize,
}

impl MlaAppend {
    /// Checks the descriptor against a cache layout: `tokens * (latent_dim + rope_dim)`
    /// fits a `usize`. Backends' device APIs call it before their own limits.
    pub fn validate(&self, layout: &MlaCacheLayout) -> Result<()> {
        layout.validate()?;
        checked_product(
            "mla_append",
            "tokens * (latent_dim + rope_dim)",
            &[self.tokens, layout.qk_dim()],
        )?;
        Ok(())
    }

    /// Checks the arguments against the cache.
    pub fn validate_args(
        &self,
        cache: &MlaCache,
        latent: &[bf16],
        rope: &[bf16],
        slots: &[i32],
    ) -> Result<()> {
        const OP: &str = "mla_append";
        let l = cache.layout();
        self.validate(l)?;
        check_len(
            OP,
            "latent",
            &format!("[tokens {}, latent_dim {}]", self.tokens, l.latent_dim),
            self.tokens * l.latent_dim,
            latent.len(),
        )?;
        check_len(
            OP,
            "rope",
            &format!("[tokens {}, rope_dim {}]", self.tokens, l.rope_dim),
            self.tokens * l.rope_dim,
            rope.len(),
        )?;
        check_len(
            OP,
            "slots",
            &format!("[tokens {}]", self.tokens),
            self.tokens,
            slots.len(),
        )?;
        if l.format == MlaCacheFormat::Fp8 {
            if let Some(i) = latent.iter().position(|x| !x.to_f32().is_finite()) {
                return Err(Error::invalid(
                    OP,
                    format!("latent[{}][{}]", i / l.latent_dim, i % l.latent_dim),
                    "a finite value (the FP8 cache format quantizes it)",
                    latent[i].to_string(),
                ));
            }
        }
        let mut seen = std::collections::HashMap::new();
        for (t, &s) in slots.iter().enumerate() {
            if s < 0 {
                continue;
            }
            if s as usize >= cache.num_slots() {
                return Err(Error::invalid(
                    OP,
                    format!("slots[{t}]"),
                    format!("a slot in 0..{} (or negative to skip)", cache.num_slots()),
                    s.to_string(),
                ));
            }
            if let Some(first) = seen.insert(s, t) {
                return Err(Error::invalid(
                    OP,
                    format!("slots[{t}]"),
                    format!("distinct slots (slot {s} is already written by token {first})"),
                    s.to_string(),
                ));
            }
        }
        Ok(())
    }
}

/// Absorbed MLA decode: multi-query attention of `heads` query heads over one latent KV head
/// read from the paged cache.
///
/// For request `b`, query position `i` (of `s_q`) and head `h`, with `len = seq_lens[b]`, the
/// query sees the keys `0 .. len - (s_q - 1 - i)` (bottom-right causal alignment); key `j` is
/// slot `block_table[b][j / page_size] * page_size + j % page_size`, its key is
/// `[latent | rope]` and its value is `latent`.
/// `o = softmax(softmax_scale · q·key) · value`.
///
/// Layouts: `q` bf16 `[batch, s_q, heads, latent_dim + rope_dim]` (the absorbed
/// `[W_UKᵀ q_nope | q_pe]`); `block_table` i32 `[batch, max_pages]`; `seq_lens` i32 `[batch]`;
/// output `o` bf16 `[batch, s_q, heads, latent_dim]`; `lse` f32 `[batch, heads, s_q]` (natural
/// log). A query that sees no key (zero-length sequence, or `len < s_q - i`) gets `o = 0` and
/// `lse = -inf`.
///
/// Only the block-table entries covering `0 .. len` are read (and checked); the rest may hold
/// anything (e.g. -1).
///
/// # Determinism
/// Bitwise deterministic on every backend for the same inputs, device, driver and settings.
/// The GPU backends split long sequences over several workgroups / CTAs (split-KV): each split
/// writes its partial output and log-sum-exp to its own workspace slot, and a second pass
/// merges the splits in a fixed order (split 0, 1, ...); no float atomics. The split counts
/// depend only on the shape, the device (SM count, shared memory) and, on CUDA, the lengths
/// themselves (a schedule computed on the device: [`mla_kv_schedule`]), so the same call on a
/// different device model may round differently (within the conformance tolerances), and a
/// request's result may round differently when the other requests' lengths change.
#[derive(Clone, Debug, PartialEq)]
pub struct MlaDecode {
    /// Requests, at least 1.
    pub batch: usize,
    /// Query tokens per request (1 for plain decode, more for speculative decode): 1..=128.
    pub s_q: usize,
    /// Query heads h_q: 1..=128.
    pub heads: usize,
    /// Columns of the block table, at least 1.
    pub max_pages: usize,
    /// Softmax scale (DeepSeek-V3: 192^-0.5, times YaRN's mscale² for long contexts).
    pub softmax_scale: f32,
    /// The cache layout (must equal the cache's).
    pub layout: MlaCacheLayout,
}

impl MlaDecode {
    /// Elements of q (saturating at `usize::MAX` for a descriptor whose product overflows,
    /// which validation rejects; likewise below).
    pub fn q_len(&self) -> usize {
        saturating_product(&[self.batch, self.s_q, self.heads, self.layout.qk_dim()])
    }

    /// Elements of o.
    pub fn o_len(&self) -> usize {
        saturating_product(&[self.batch, self.s_q, self.heads, self.layout.latent_dim])
    }

    /// Elements of lse.
    pub fn lse_len(&self) -> usize {
        saturating_product(&[self.batch, self.heads, self.s_q])
    }

    /// Elements of the block table: `batch * max_pages`.
    pub fn block_table_len(&self) -> usize {
        saturating_product(&[self.batch, self.max_pages])
    }

    /// Key slots a request can address: `max_pages * page_size`.
    pub fn capacity(&self) -> usize {
        saturating_product(&[self.max_pages, self.layout.page_size])
    }

    /// Checks the descriptor on its own (everything [`Self::validate_args`] checks without the
    /// cache and the host arguments): the layout, `batch` and `max_pages` at least 1, `s_q` and
    /// `heads` in 1..=128, the scale finite and positive, and every size (`q`, the block table,
    /// `max_pages * page_size`) fitting a `usize`. Every backend calls it before its own limits.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "mla_decode";
        let dims = DecodeDims::of_uniform(self);
        dims.validate(OP, ("s_q", self.s_q))?;
        checked_product(
            OP,
            "batch * s_q * heads * (latent_dim + rope_dim)",
            &[self.batch, self.s_q, self.heads, self.layout.qk_dim()],
        )?;
        dims.validate_table_sizes(OP)
    }

    /// Checks the descriptor and the host arguments against the cache.
    pub fn validate_args(
        &self,
        cache: &MlaCache,
        q: &[bf16],
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<()> {
        const OP: &str = "mla_decode";
        self.validate()?;
        let dims = DecodeDims::of_uniform(self);
        dims.check_cache(OP, cache)?;
        check_len(
            OP,
            "q",
            &format!(
                "[batch {}, s_q {}, heads {}, latent+rope {}]",
                self.batch,
                self.s_q,
                self.heads,
                self.layout.qk_dim()
            ),
            self.q_len(),
            q.len(),
        )?;
        dims.validate_paging(OP, cache, block_table, seq_lens)
    }
}

/// Most query tokens per request of an MLA decode (`s_q`, `max_s_q`), and most query heads.
pub const MLA_MAX_QUERIES: usize = 128;

/// Most key splits of one request in a split-KV decode ([`mla_kv_splits`]).
pub const MLA_MAX_KV_SPLITS: usize = 64;

/// How many key splits a split-KV decode takes, the rule of every GPU backend: `base` blocks
/// (CTAs, workgroups) before splitting (requests x row groups x column chunks), each request
/// having `tiles` key tiles, on a device that runs `slots` blocks at once (SMs, or compute units
/// x blocks resident on each). The fewest splits whose blocks fill their waves to 85%, each
/// split keeping at least two key tiles and at most [`MLA_MAX_KV_SPLITS`] of them; else the
/// split count that fills the waves best (the first of equals). Fills are compared exactly (as
/// fractions).
///
/// The CUDA backend's device schedule ([`mla_kv_schedule`]) gives every request this count when
/// all requests are equally long.
pub fn mla_kv_splits(base: usize, tiles: usize, slots: usize) -> usize {
    let cap = (tiles / 2).clamp(1, MLA_MAX_KV_SPLITS);
    fill_waves_splits(base as u128, 1, cap, slots)
}

/// The wave-filling split count of [`mla_kv_splits`] for `work / per_split` blocks per split
/// (a fraction: [`mla_kv_schedule`] weighs requests of different lengths against the longest),
/// `1..=cap` splits, `slots` blocks at once. `s` splits make `s * work / per_split` blocks, which
/// run in `waves = max(1, ceil(blocks / slots))` waves and fill `blocks / (waves * slots)` of
/// them. Exact in `u128` for `work <= 2^64`, `per_split * slots <= 2^64` and `cap <= 64` (the
/// products compared stay below 2^128: a fill under 85% has at most 6 waves).
///
/// The CUDA kernel `kernels-cuda/kernels/mla_schedule.cu` (`mla_fill_waves_splits`) computes the
/// same, line by line.
fn fill_waves_splits(work: u128, per_split: u128, cap: usize, slots: usize) -> usize {
    let slots = slots.clamp(1, u32::MAX as usize) as u128;
    let per_wave = per_split.max(1) * slots;
    // (blocks, waves * slots), both scaled by per_split.
    let fill = |s: usize| {
        let blocks = s as u128 * work;
        let waves = blocks.div_ceil(per_wave).max(1);
        (blocks, waves * per_wave)
    };
    let mut best = (fill(1), 1);
    for s in 1..=cap {
        let (blocks, room) = fill(s);
        if 20 * blocks >= 17 * room {
            return s;
        }
        let ((best_blocks, best_room), _) = best;
        if blocks * best_room > best_blocks * room {
            best = ((blocks, room), s);
        }
    }
    best.1
}

/// One request as the split-KV schedule ([`mla_kv_schedule`]) weighs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MlaScheduleRequest {
    /// Key tiles of the request: `ceil(len / key_tile)` (0 for an empty request, or a length
    /// outside the block table, whose keys are not read).
    pub tiles: usize,
    /// Blocks (CTAs) each split of it runs: the row groups holding its queries times the
    /// column chunks; 0 for a request without queries (a variable-length request of none).
    pub blocks: usize,
}

/// The split-KV schedule of one decode launch ([`mla_kv_schedule`]): one piece length for the
/// whole batch, how many pieces (splits) each request takes, the order the `(request, split)`
/// units are launched in, and where the partial results of the split requests go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MlaKvSchedule {
    /// Key tiles per split: split `i` of a request covers its keys `i * tiles_per_split *
    /// key_tile ..` (the last split the rest). 0 when no request has keys.
    pub tiles_per_split: usize,
    /// `[batch]`: splits of each request, at least 1.
    pub splits: Vec<usize>,
    /// `(request, split)` in launch order: first every split of `tiles_per_split` tiles that
    /// is not a request's last (requests in order), then the last split of every request by
    /// decreasing bin of its tiles (ties by request index), so that the longest blocks start
    /// first (longest-processing-time order).
    pub units: Vec<(usize, usize)>,
    /// `[batch]`: the first workspace slot of each request of more than one split (its split
    /// `i` writes slot `first + i`; requests in order); `None` for a request of one split, which
    /// writes its outputs directly.
    pub ws_first: Vec<Option<usize>>,
    /// The requests of more than one split, in order (what the combine merges).
    pub split_requests: Vec<usize>,
}

impl MlaKvSchedule {
    /// Workspace slots the schedule uses: the splits of its requests of more than one split.
    pub fn ws_slots(&self) -> usize {
        self.split_requests.iter().map(|&b| self.splits[b]).sum()
    }
}

/// Bins of the launch order's sort key in [`mla_kv_schedule`].
pub const MLA_SCHEDULE_BINS: usize = 64;

/// The split-KV schedule of a decode from each request's length, the rule of the CUDA backend's
/// device schedule (`kernels-cuda/kernels/mla_schedule.cu` computes the same on the GPU from
/// `seq_lens` before each decode: keep the two line by line comparable). `slots` blocks run at
/// once; `max_units` (at least `requests.len()`; smaller counts as that) bounds the
/// `(request, split)` units (the launch's grid and workspace are sized for it, see
/// [`mla_kv_max_units`]).
///
/// 1. `t_max`: the most key tiles of a request with queries (`blocks > 0`); if 0, every request
///    takes one split. `work`: the sum of `tiles * blocks`; `cap = clamp(t_max / 2, 1,`
///    [`MLA_MAX_KV_SPLITS`]`)`.
/// 2. `s`, the splits of the longest request: the wave-filling count of [`mla_kv_splits`] for
///    `s * work / t_max` blocks (each request's blocks weighed by its share of the longest's
///    tiles). With equal lengths this is `mla_kv_splits(batch * blocks, t_max, slots)`.
/// 3. Every request is cut into pieces of `tiles_per_split = ceil(t_max / s)` tiles (the last
///    piece the rest): request `b` takes `ceil(tiles_b / tiles_per_split)` splits, at least 1
///    (1 without queries). With equal lengths these are the pieces of `mla_kv_splits`'s count
///    (a trailing empty split dropped), so the outputs do not change; with unequal lengths no
///    block is longer than the longest request's, and the pieces pack the slots.
/// 4. If the units exceed `max_units`, `s` becomes the largest smaller count whose units fit.
/// 5. Launch order: the splits that are not a request's last (all `tiles_per_split` long),
///    requests in order; then the last splits by decreasing bin
///    `rest_b * 64 / (tiles_per_split + 1)` of their tiles `rest_b` (0 without queries) of
///    [`MLA_SCHEDULE_BINS`], ties by request index. Workspace slots: the requests of more than one split, in order.
pub fn mla_kv_schedule(
    requests: &[MlaScheduleRequest],
    slots: usize,
    max_units: usize,
) -> MlaKvSchedule {
    let batch = requests.len();
    let max_units = max_units.max(batch);
    // 1. The longest request with queries.
    let t_max = requests
        .iter()
        .filter(|r| r.blocks > 0)
        .map(|r| r.tiles)
        .max()
        .unwrap_or(0);
    let splits_of = |tiles_per_split: usize, r: &MlaScheduleRequest| -> usize {
        if r.blocks == 0 || r.tiles == 0 {
            1
        } else {
            r.tiles.div_ceil(tiles_per_split)
        }
    };
    let mut tiles_per_split = t_max;
    if t_max > 0 {
        let work: u128 = requests
            .iter()
            .map(|r| r.tiles as u128 * r.blocks as u128)
            .sum();
        let cap = (t_max / 2).clamp(1, MLA_MAX_KV_SPLITS);
        // 2. The longest request's splits.
        let mut s = fill_waves_splits(work, t_max as u128, cap, slots);
        // 4. Within the units.
        let units = |s: usize| {
            requests
                .iter()
                .map(|r| splits_of(t_max.div_ceil(s), r))
                .sum::<usize>()
        };
        while s > 1 && units(s) > max_units {
            s -= 1;
        }
        // 3. The pieces.
        tiles_per_split = t_max.div_ceil(s);
    }
    let splits: Vec<usize> = requests
        .iter()
        .map(|r| splits_of(tiles_per_split, r))
        .collect();
    // 5. Launch order.
    let mut units: Vec<(usize, usize)> = (0..batch)
        .flat_map(|b| (0..splits[b] - 1).map(move |i| (b, i)))
        .collect();
    let rest = |b: usize| -> usize {
        if requests[b].blocks == 0 {
            0
        } else {
            requests[b].tiles - (splits[b] - 1) * tiles_per_split
        }
    };
    let bin =
        |b: usize| rest(b) as u128 * MLA_SCHEDULE_BINS as u128 / (tiles_per_split as u128 + 1);
    let mut last: Vec<usize> = (0..batch).collect();
    last.sort_by_key(|&b| std::cmp::Reverse(bin(b)));
    units.extend(last.into_iter().map(|b| (b, splits[b] - 1)));
    let mut ws_first = vec![None; batch];
    let mut split_requests = Vec::new();
    let mut ws = 0;
    for b in 0..batch {
        if splits[b] > 1 {
            ws_first[b] = Some(ws);
            ws += splits[b];
            split_requests.push(b);
        }
    }
    MlaKvSchedule {
        tiles_per_split,
        splits,
        units,
        ws_first,
        split_requests,
    }
}

/// The `(request, split)` units a decode launch of `batch` requests makes room for (its grid and
/// workspace), each split running `blocks` blocks, the longest request having `tiles_max` key
/// tiles, `slots` blocks running at once: `batch` when no request can be split (`tiles_max`
/// under 4: each split keeps two tiles); else the larger of `batch * mla_kv_splits(batch *
/// blocks, tiles_max, slots)` (every request `tiles_max` long: [`mla_kv_schedule`] gives them at
/// most that many splits, so equal lengths never meet the bound) and `batch + 2 * ceil(slots /
/// blocks)` (room to cut long requests into pieces that fill every slot twice over when the
/// others are short).
pub fn mla_kv_max_units(batch: usize, blocks: usize, tiles_max: usize, slots: usize) -> usize {
    if tiles_max / 2 <= 1 {
        return batch;
    }
    let blocks = blocks.max(1);
    let uniform = mla_kv_splits(batch.saturating_mul(blocks), tiles_max, slots);
    batch
        .saturating_mul(uniform)
        .max(batch.saturating_add(2 * slots.max(1).div_ceil(blocks)))
}

/// The workspace slots (partial results of one split) any [`mla_kv_schedule`] within
/// `max_units` units of `batch` requests uses at most: `min(max_units, 2 * (max_units -
/// batch))` (a request of `n > 1` splits takes `n` slots and `n - 1 >= n / 2` units beyond the
/// one every request has).
pub fn mla_kv_ws_slots(batch: usize, max_units: usize) -> usize {
    max_units.min(2 * max_units.saturating_sub(batch))
}

/// What the uniform and the variable-length decode share: the paging of the requests' keys and
/// the limits on it. One source of truth for both descriptors' validation.
struct DecodeDims {
    batch: usize,
    heads: usize,
    max_pages: usize,
    softmax_scale: f32,
    layout: MlaCacheLayout,
}

impl DecodeDims {
    fn of_uniform(op: &MlaDecode) -> Self {
        Self {
            batch: op.batch,
            heads: op.heads,
            max_pages: op.max_pages,
            softmax_scale: op.softmax_scale,
            layout: op.layout,
        }
    }

    fn of_varlen(op: &MlaDecodeVarlen) -> Self {
        Self {
            batch: op.batch,
            heads: op.heads,
            max_pages: op.max_pages,
            softmax_scale: op.softmax_scale,
            layout: op.layout,
        }
    }

    /// The layout, `batch` and `max_pages` at least 1, the query count `queries` (its name and
    /// value) and `heads` in 1..=[`MLA_MAX_QUERIES`], and the scale.
    fn validate(&self, op: &'static str, queries: (&str, usize)) -> Result<()> {
        self.layout.validate()?;
        if self.batch == 0 {
            return Err(Error::invalid(op, "batch", "at least 1", "0"));
        }
        let range = format!("1..={MLA_MAX_QUERIES}");
        if !(1..=MLA_MAX_QUERIES).contains(&queries.1) {
            return Err(Error::invalid(op, queries.0, &range, queries.1.to_string()));
        }
        if !(1..=MLA_MAX_QUERIES).contains(&self.heads) {
            return Err(Error::invalid(op, "heads", range, self.heads.to_string()));
        }
        if self.max_pages == 0 {
            return Err(Error::invalid(op, "max_pages", "at least 1", "0"));
        }
        check_scale(op, self.softmax_scale)?;
        Ok(())
    }

    /// The block table's sizes (`batch * max_pages`, `max_pages * page_size`) fit a `usize`.
    fn validate_table_sizes(&self, op: &'static str) -> Result<()> {
        checked_product(op, "batch * max_pages", &[self.batch, self.max_pages])?;
        checked_product(
            op,
            "max_pages * page_size",
            &[self.max_pages, self.layout.page_size],
        )?;
        Ok(())
    }

    /// The cache's layout is the op's.
    fn check_cache(&self, op: &'static str, cache: &MlaCache) -> Result<()> {
        if *cache.layout() != self.layout {
            return Err(Error::invalid(
                op,
                "cache",
                format!("layout {:?}", self.layout),
                format!("layout {:?}", cache.layout()),
            ));
        }
        Ok(())
    }

    /// The lengths of `block_table` (`[batch, max_pages]`) and `seq_lens` (`[batch]`), every
    /// length in `0..=max_pages * page_size`, and the block-table entries covering each
    /// request's keys in `0..num_pages` of `cache`.
    fn validate_paging(
        &self,
        op: &'static str,
        cache: &MlaCache,
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<()> {
        let l = self.layout;
        check_len(
            op,
            "block_table",
            &format!("[batch {}, max_pages {}]", self.batch, self.max_pages),
            saturating_product(&[self.batch, self.max_pages]),
            block_table.len(),
        )?;
        check_len(
            op,
            "seq_lens",
            &format!("[batch {}]", self.batch),
            self.batch,
            seq_lens.len(),
        )?;
        let capacity = saturating_product(&[self.max_pages, l.page_size]);
        for (b, &len) in seq_lens.iter().enumerate() {
            if len < 0 || len as usize > capacity {
                return Err(Error::invalid(
                    op,
                    format!("seq_lens[{b}]"),
                    format!(
                        "0..={capacity} (max_pages {} x page_size {})",
                        self.max_pages, l.page_size
                    ),
                    len.to_string(),
                ));
            }
            for p in 0..(len as usize).div_ceil(l.page_size) {
                let page = block_table[b * self.max_pages + p];
                if page < 0 || page as usize >= cache.num_pages() {
                    return Err(Error::invalid(
                        op,
                        format!("block_table[{b}][{p}]"),
                        format!("a page in 0..{}", cache.num_pages()),
                        page.to_string(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Output of [`MlaDecode`] and [`MlaDecodeVarlen`].
#[derive(Clone, Debug, PartialEq)]
pub struct MlaDecodeOutput {
    /// bf16 `[batch, s_q, heads, latent_dim]` ([`MlaDecodeVarlen`]: `[total_q, heads,
    /// latent_dim]`).
    pub o: Vec<bf16>,
    /// f32 `[batch, heads, s_q]` ([`MlaDecodeVarlen`]: `[heads, total_q]`), natural log; -inf
    /// where the query sees no key.
    pub lse: Vec<f32>,
}

/// Absorbed MLA decode with a variable number of query tokens per request (speculative decoding
/// with a different number of draft tokens per request), the queries of all requests packed
/// one after another and located by the offsets `cu_seqlens_q`.
///
/// Request `b` owns the query tokens `cu_seqlens_q[b] .. cu_seqlens_q[b + 1]`; with
/// `n = cu_seqlens_q[b + 1] - cu_seqlens_q[b]` of them (0 allowed: the request computes
/// nothing) and `len = seq_lens[b]`, its query `i` (of `n`) sees the keys
/// `0 .. len - (n - 1 - i)`: the same bottom-right causal alignment as [`MlaDecode`] with
/// `s_q = n`. Everything else (keys through the block table, values, scale, `o = 0` and
/// `lse = -inf` for a query that sees no key) is as in [`MlaDecode`]: each request's outputs
/// are those of an [`MlaDecode`] of that request alone with `s_q = n`
/// ([`MlaDecodeVarlen::request`]).
///
/// Layouts: `q` bf16 `[total_q, heads, latent_dim + rope_dim]`; `cu_seqlens_q` i32
/// `[batch + 1]`: `cu_seqlens_q[0] = 0`, non-decreasing, `cu_seqlens_q[batch] = total_q`, each
/// difference in `0..=max_s_q`; `block_table` i32 `[batch, max_pages]`; `seq_lens` i32
/// `[batch]`; output `o` bf16 `[total_q, heads, latent_dim]`; `lse` f32 `[heads, total_q]`
/// (natural log; FlashAttention's varlen layout). The block-table entries covering `0 .. len`
/// are checked for every request, also those with no queries.
///
/// `max_s_q` bounds the queries of every request (it need not be reached): GPU kernels are
/// planned for it, so that a fixed `(batch, total_q, max_s_q)` serves any offsets (CUDA graphs).
///
/// # Determinism
/// As [`MlaDecode`]; the GPU backends plan for the shape [`MlaDecodeVarlen::padded`] (CUDA's
/// device schedule then weighs each request by its queries and length).
#[derive(Clone, Debug, PartialEq)]
pub struct MlaDecodeVarlen {
    /// Requests, at least 1.
    pub batch: usize,
    /// Query tokens of all requests together: `cu_seqlens_q[batch]`, at most
    /// `batch * max_s_q` and `i32::MAX` (may be 0).
    pub total_q: usize,
    /// Most query tokens of one request: 1..=128.
    pub max_s_q: usize,
    /// Query heads h_q: 1..=128.
    pub heads: usize,
    /// Columns of the block table, at least 1.
    pub max_pages: usize,
    /// Softmax scale.
    pub softmax_scale: f32,
    /// The cache layout (must equal the cache's).
    pub layout: MlaCacheLayout,
}

impl MlaDecodeVarlen {
    /// Elements of q: `total_q * heads * (latent_dim + rope_dim)` (saturating at `usize::MAX`
    /// for a descriptor whose product overflows, which validation rejects; likewise below).
    pub fn q_len(&self) -> usize {
        saturating_product(&[self.total_q, self.heads, self.layout.qk_dim()])
    }

    /// Elements of o: `total_q * heads * latent_dim`.
    pub fn o_len(&self) -> usize {
        saturating_product(&[self.total_q, self.heads, self.layout.latent_dim])
    }

    /// Elements of lse: `heads * total_q`.
    pub fn lse_len(&self) -> usize {
        saturating_product(&[self.heads, self.total_q])
    }

    /// Elements of `cu_seqlens_q`: `batch + 1`.
    pub fn cu_seqlens_q_len(&self) -> usize {
        self.batch.saturating_add(1)
    }

    /// Elements of the block table: `batch * max_pages`.
    pub fn block_table_len(&self) -> usize {
        saturating_product(&[self.batch, self.max_pages])
    }

    /// The uniform decode of `max_s_q` queries for every request of the batch, with the same
    /// heads, paging, scale and layout: the shape GPU backends plan the kernel for (the rows a
    /// CTA may hold, the key splits).
    pub fn padded(&self) -> MlaDecode {
        MlaDecode {
            batch: self.batch,
            s_q: self.max_s_q,
            heads: self.heads,
            max_pages: self.max_pages,
            softmax_scale: self.softmax_scale,
            layout: self.layout,
        }
    }

    /// The uniform decode of one request of `s_q` queries with this op's heads, paging, scale
    /// and layout: request `b` of a varlen decode computes what this op computes for it alone
    /// (its row of the block table, its length, `s_q = n` of its queries; for `n >= 1`).
    pub fn request(&self, s_q: usize) -> MlaDecode {
        MlaDecode {
            batch: 1,
            s_q,
            ..self.padded()
        }
    }

    /// Checks the descriptor on its own: what [`MlaDecode::validate`] checks (with `max_s_q`
    /// for `s_q`), `total_q` at most `batch * max_s_q` and `i32::MAX`, and `q` fitting a
    /// `usize`.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "mla_decode_varlen";
        DecodeDims::of_varlen(self).validate(OP, ("max_s_q", self.max_s_q))?;
        let most = saturating_product(&[self.batch, self.max_s_q]).min(i32::MAX as usize);
        if self.total_q > most {
            return Err(Error::invalid(
                OP,
                "total_q",
                format!(
                    "at most {most} (batch {} x max_s_q {}, and i32::MAX)",
                    self.batch, self.max_s_q
                ),
                self.total_q.to_string(),
            ));
        }
        checked_product(
            OP,
            "total_q * heads * (latent_dim + rope_dim)",
            &[self.total_q, self.heads, self.layout.qk_dim()],
        )?;
        DecodeDims::of_varlen(self).validate_table_sizes(OP)
    }

    /// Checks the offsets: `batch + 1` of them, `cu_seqlens_q[0] = 0`, each request's count
    /// `cu_seqlens_q[b + 1] - cu_seqlens_q[b]` in `0..=max_s_q`, `cu_seqlens_q[batch] = total_q`.
    pub fn validate_cu_seqlens_q(&self, cu_seqlens_q: &[i32]) -> Result<()> {
        const OP: &str = "mla_decode_varlen";
        check_len(
            OP,
            "cu_seqlens_q",
            &format!("[batch + 1 = {}]", self.cu_seqlens_q_len()),
            self.cu_seqlens_q_len(),
            cu_seqlens_q.len(),
        )?;
        if cu_seqlens_q[0] != 0 {
            return Err(Error::invalid(
                OP,
                "cu_seqlens_q[0]",
                "0",
                cu_seqlens_q[0].to_string(),
            ));
        }
        for b in 0..self.batch {
            let (start, end) = (cu_seqlens_q[b] as i64, cu_seqlens_q[b + 1] as i64);
            let most = start.saturating_add(self.max_s_q.min(i32::MAX as usize) as i64);
            if !(start..=most).contains(&end) {
                return Err(Error::invalid(
                    OP,
                    format!("cu_seqlens_q[{}]", b + 1),
                    format!(
                        "{start}..={most} (request {b}'s queries: 0..=max_s_q {})",
                        self.max_s_q
                    ),
                    end.to_string(),
                ));
            }
        }
        let last = cu_seqlens_q[self.batch];
        if last as i64 != self.total_q as i64 {
            return Err(Error::invalid(
                OP,
                format!("cu_seqlens_q[{}]", self.batch),
                format!("total_q {}", self.total_q),
                last.to_string(),
            ));
        }
        Ok(())
    }

    /// Checks the descriptor and the host arguments against the cache.
    pub fn validate_args(
        &self,
        cache: &MlaCache,
        q: &[bf16],
        cu_seqlens_q: &[i32],
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<()> {
        const OP: &str = "mla_decode_varlen";
        self.validate()?;
        let dims = DecodeDims::of_varlen(self);
        dims.check_cache(OP, cache)?;
        check_len(
            OP,
            "q",
            &format!(
                "[total_q {}, heads {}, latent+rope {}]",
                self.total_q,
                self.heads,
                self.layout.qk_dim()
            ),
            self.q_len(),
            q.len(),
        )?;
        self.validate_cu_seqlens_q(cu_seqlens_q)?;
        dims.validate_paging(OP, cache, block_table, seq_lens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_record_fills_each_part_and_checks_the_length() {
        let mut next = 0.0f32;
        let count = |n: &mut f32| {
            *n += 1.0;
            *n
        };
        // bf16: latent then rope, in order.
        let bf = MlaCacheLayout::default();
        let mut rec = vec![0u8; bf.token_bytes()];
        bf.write_record(&mut rec, &mut next, count, |_| 0, 0.5)
            .unwrap();
        let half = |r: &[u8], i: usize| bf16::from_le_bytes([r[2 * i], r[2 * i + 1]]).to_f32();
        assert_eq!(half(&rec, 0), 1.0);
        assert_eq!(half(&rec, bf.qk_dim() - 1), bf.qk_dim() as f32);
        // FP8: e4m3 latent, the scale per group of 128, bf16 rope.
        let fp8 = MlaCacheLayout {
            format: MlaCacheFormat::Fp8,
            ..MlaCacheLayout::default()
        };
        let mut rec = vec![0u8; fp8.token_bytes()];
        let mut next = 0.0f32;
        fp8.write_record(&mut rec, &mut next, count, |_| 0x38, 0.25)
            .unwrap();
        assert!(rec[..fp8.latent_dim].iter().all(|&b| b == 0x38));
        let scales = &rec[fp8.latent_dim..fp8.rope_offset()];
        assert_eq!(scales.len(), 4 * fp8.fp8_groups());
        assert!(scales.chunks_exact(4).all(|s| s == 0.25f32.to_le_bytes()));
        let rope = &rec[fp8.rope_offset()..];
        assert_eq!(half(rope, 0), 1.0);
        assert_eq!(half(rope, fp8.rope_dim - 1), fp8.rope_dim as f32);
        // A record of another length is a typed error naming `rec`; nothing is written.
        let mut short = vec![7u8; fp8.token_bytes() - 1];
        let err = fp8
            .write_record(&mut short, &mut next, count, |_| 0, 1.0)
            .unwrap_err();
        assert!(err.to_string().contains("rec"), "{err}");
        assert!(short.iter().all(|&b| b == 7));
    }

    #[test]
    fn kv_splits_fill_the_slots() {
        // Enough blocks already: no split.
        assert_eq!(mla_kv_splits(128, 64, 132), 1);
        // Few blocks, long keys: split until the waves are full.
        let s = mla_kv_splits(4, 1024, 132);
        assert!(4 * s >= 112 && s <= MLA_MAX_KV_SPLITS, "{s}");
        assert_eq!(mla_kv_splits(64, 512, 264), 4);
        assert_eq!(mla_kv_splits(128, 512, 264), 2);
        // Each split keeps two tiles; never more than the cap; nothing degenerate.
        assert_eq!(mla_kv_splits(4, 3, 132), 1);
        assert_eq!(mla_kv_splits(1, 1, 132), 1);
        assert!(mla_kv_splits(1, 1 << 20, 264) <= MLA_MAX_KV_SPLITS);
        assert_eq!(mla_kv_splits(0, 0, 0), 1);
    }

    /// The rule before fills were compared exactly: f64 fills, a strict improvement by 1e-9.
    fn kv_splits_f64(base: usize, tiles: usize, slots: usize) -> usize {
        let slots = slots.max(1);
        let fill = |s: usize| {
            let blocks = base.saturating_mul(s).max(1);
            blocks as f64 / (blocks.div_ceil(slots) * slots) as f64
        };
        let cap = (tiles / 2).clamp(1, MLA_MAX_KV_SPLITS);
        let mut best = (fill(1), 1);
        for s in 1..=cap {
            let filled = fill(s);
            if filled >= 0.85 {
                return s;
            }
            if filled > best.0 + 1e-9 {
                best = (filled, s);
            }
        }
        best.1
    }

    #[test]
    fn exact_fills_keep_the_f64_rule() {
        for slots in [1, 2, 7, 58, 108, 132, 264, 1000] {
            for base in (0..=700).chain([1000, 5000, 1 << 20]) {
                for tiles in [0, 1, 2, 3, 4, 9, 40, 128, 1000] {
                    assert_eq!(
                        mla_kv_splits(base, tiles, slots),
                        kv_splits_f64(base, tiles, slots),
                        "base {base} tiles {tiles} slots {slots}"
                    );
                }
            }
        }
    }

    /// A seeded log-uniform draw of `n` lengths in `lo..=hi` (the first `hi`, the second `lo`),
    /// as the bench's skewed shapes.
    fn skewed_lens(n: usize, lo: usize, hi: usize, seed: u64) -> Vec<usize> {
        let mut x = seed;
        (0..n)
            .map(|b| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                match b {
                    0 => hi,
                    1 => lo,
                    _ => ((lo as f64).ln() + u * ((hi as f64).ln() - (lo as f64).ln()))
                        .exp()
                        .round() as usize,
                }
            })
            .collect()
    }

    fn requests(lens: &[usize], key_tile: usize, blocks: usize) -> Vec<MlaScheduleRequest> {
        lens.iter()
            .map(|&len| MlaScheduleRequest {
                tiles: len.div_ceil(key_tile),
                blocks,
            })
            .collect()
    }

    /// Checks what every schedule must hold: the pieces of `tiles_per_split` (1 split without
    /// queries or keys, at most [`MLA_MAX_KV_SPLITS`]), every `(request, split)` once, the
    /// splits that are not a request's last first (requests in order), then the last ones by
    /// decreasing bin; units and workspace slots within their bounds.
    fn check_schedule(reqs: &[MlaScheduleRequest], max_units: usize, sch: &MlaKvSchedule) {
        let batch = reqs.len();
        let t = sch.tiles_per_split;
        assert_eq!(sch.splits.len(), batch);
        for (r, &n) in reqs.iter().zip(&sch.splits) {
            let want = if r.blocks == 0 || r.tiles == 0 {
                1
            } else {
                r.tiles.div_ceil(t)
            };
            assert_eq!(n, want, "{r:?} in pieces of {t}");
            assert!(n <= MLA_MAX_KV_SPLITS);
        }
        assert!(t == 0 || t >= 2 || sch.splits.iter().all(|&n| n == 1));
        let total: usize = sch.splits.iter().sum();
        assert_eq!(sch.units.len(), total);
        assert!(total <= max_units.max(batch));
        let leads = total - batch;
        let want_leads: Vec<(usize, usize)> = (0..batch)
            .flat_map(|b| (0..sch.splits[b] - 1).map(move |i| (b, i)))
            .collect();
        assert_eq!(sch.units[..leads], want_leads[..]);
        let mut seen = vec![false; batch];
        let mut last_key = (u128::MAX, 0);
        for &(b, i) in &sch.units[leads..] {
            assert_eq!(i, sch.splits[b] - 1);
            assert!(!seen[b], "request {b} twice");
            seen[b] = true;
            let rest = if reqs[b].blocks == 0 {
                0
            } else {
                reqs[b].tiles - i * t
            };
            assert!(rest <= t.max(1));
            let key = (rest as u128 * 64 / (t as u128 + 1), b);
            assert!(key.0 < last_key.0 || (key.0 == last_key.0 && b > last_key.1));
            last_key = key;
        }
        assert!(sch.ws_slots() <= mla_kv_ws_slots(batch, max_units.max(batch)));
        let mut ws = 0;
        for b in 0..batch {
            assert_eq!(sch.ws_first[b], (sch.splits[b] > 1).then_some(ws));
            if sch.splits[b] > 1 {
                ws += sch.splits[b];
            }
        }
        let split: Vec<usize> = (0..batch).filter(|&b| sch.splits[b] > 1).collect();
        assert_eq!(sch.split_requests, split);
    }

    #[test]
    fn equal_lengths_take_the_uniform_splits() {
        for slots in [1, 58, 108, 132, 264] {
            for batch in [1, 2, 3, 4, 7, 16, 33, 64, 128, 200] {
                for blocks in [1, 2, 3, 4, 8] {
                    for tiles in [0, 1, 2, 3, 4, 5, 7, 12, 16, 33, 64, 82, 128, 512, 1000] {
                        // A plan made for this length or a longer one.
                        for plan_tiles in [tiles, tiles + 5, 4 * tiles + 100] {
                            let max_units = mla_kv_max_units(batch, blocks, plan_tiles, slots);
                            let reqs = vec![MlaScheduleRequest { tiles, blocks }; batch];
                            let sch = mla_kv_schedule(&reqs, slots, max_units);
                            check_schedule(&reqs, max_units, &sch);
                            let what = format!(
                                "slots {slots} batch {batch} blocks {blocks} tiles {tiles} \
                                 plan {plan_tiles}: {sch:?}"
                            );
                            if plan_tiles / 2 <= 1 {
                                assert!(sch.splits.iter().all(|&n| n == 1), "{what}");
                                continue;
                            }
                            // The pieces of the uniform count: split i covers keys from
                            // i * ceil(len / s) rounded up to a tile, as one count for all does.
                            let s = mla_kv_splits(batch * blocks, tiles, slots);
                            assert_eq!(sch.tiles_per_split, tiles.div_ceil(s), "{what}");
                            assert!(sch.splits.iter().all(|&n| n <= s), "{what}");
                        }
                    }
                }
            }
        }
        // The same count when no trailing split would be empty; else the empty ones dropped
        // (128 tiles in 29 splits of 5: 26 of them hold keys).
        let reqs = vec![
            MlaScheduleRequest {
                tiles: 116,
                blocks: 1
            };
            4
        ];
        let sch = mla_kv_schedule(&reqs, 132, mla_kv_max_units(4, 1, 116, 132));
        assert_eq!(mla_kv_splits(4, 116, 132), 29);
        assert_eq!((sch.tiles_per_split, sch.splits), (4, vec![29; 4]));
        let reqs = vec![
            MlaScheduleRequest {
                tiles: 128,
                blocks: 1
            };
            4
        ];
        let sch = mla_kv_schedule(&reqs, 132, mla_kv_max_units(4, 1, 128, 132));
        assert_eq!(mla_kv_splits(4, 128, 132), 29);
        assert_eq!((sch.tiles_per_split, sch.splits), (5, vec![26; 4]));
    }

    /// Greedy dispatch of the schedule's blocks in launch order onto `slots`, a block of split
    /// `i` of request `b` taking its key tiles (pieces of `tiles_per_split`) plus `overhead`:
    /// the makespan.
    fn makespan(
        lens: &[usize],
        key_tile: usize,
        blocks: usize,
        slots: usize,
        overhead: usize,
        sch: &MlaKvSchedule,
    ) -> usize {
        let mut free = vec![0usize; slots];
        let per_split = sch.tiles_per_split * key_tile;
        for &(b, i) in &sch.units {
            let (begin, end) = if sch.splits[b] == 1 {
                (0, lens[b])
            } else {
                (
                    (i * per_split).min(lens[b]),
                    ((i + 1) * per_split).min(lens[b]),
                )
            };
            let tiles = (end - begin).div_ceil(key_tile);
            for _ in 0..blocks {
                let slot = (0..slots).min_by_key(|&k| free[k]).unwrap();
                free[slot] += tiles + overhead;
            }
        }
        free.into_iter().max().unwrap()
    }

    #[test]
    fn skewed_lengths_balance_over_the_slots() {
        // The bench's skewed shapes: b 128, 64 to 32768 keys, 64-key tiles, 132 SMs; 2 blocks
        // per split (h_q 128: two 64-row groups) or 1 (h_q 16).
        let (key_tile, slots) = (64, 132);
        for seed in [41, 1, 2, 3, 4, 5] {
            let lens = skewed_lens(128, 64, 32768, seed);
            let total: usize = lens.iter().sum();
            let mean = total.div_ceil(128).div_ceil(key_tile) * key_tile;
            for blocks in [1, 2] {
                let reqs = requests(&lens, key_tile, blocks);
                let max_units = mla_kv_max_units(128, blocks, 32768 / key_tile, slots);
                let sch = mla_kv_schedule(&reqs, slots, max_units);
                check_schedule(&reqs, max_units, &sch);
                // Tiles per block: the longest close to the mean per slot.
                let work: usize = reqs.iter().map(|r| r.tiles * r.blocks).sum();
                let per_slot = work.div_ceil(slots);
                assert!(
                    sch.tiles_per_split * 10 <= per_slot * 12,
                    "seed {seed} blocks {blocks}: pieces of {} tiles, {per_slot} per slot",
                    sch.tiles_per_split
                );
                // The simulated time against equal lengths of the same total (one tile of
                // overhead per block): within 0.85x (0.87 to 0.98 for these draws: the
                // splits fill 85% of the waves, and the greedy dispatch of the shorter last
                // pieces leaves some slack).
                let uniform = vec![mean; 128];
                let ureqs = requests(&uniform, key_tile, blocks);
                let usch = mla_kv_schedule(&ureqs, slots, max_units);
                let t_skewed = makespan(&lens, key_tile, blocks, slots, 1, &sch);
                let t_uniform = makespan(&uniform, key_tile, blocks, slots, 1, &usch);
                assert!(
                    t_uniform * 100 >= t_skewed * 85,
                    "seed {seed} blocks {blocks}: skewed {t_skewed} uniform {t_uniform}"
                );
                // One split each, in request order (before the schedule): far from it.
                let one = MlaKvSchedule {
                    tiles_per_split: 32768 / key_tile,
                    splits: vec![1; 128],
                    units: (0..128).map(|b| (b, 0)).collect(),
                    ws_first: vec![None; 128],
                    split_requests: Vec::new(),
                };
                let t_one = makespan(&lens, key_tile, blocks, slots, 1, &one);
                assert!(t_one * 10 > t_uniform * 15, "{t_one} vs {t_uniform}");
            }
        }
    }

    #[test]
    fn one_long_request_spreads_over_the_slots() {
        // One request of 2048 tiles and 63 of one tile, 132 slots, one block per split.
        let mut lens = vec![64; 64];
        lens[5] = 2048 * 64;
        let reqs = requests(&lens, 64, 1);
        let max_units = mla_kv_max_units(64, 1, 2048, 132);
        assert_eq!(max_units, 64 + 2 * 132);
        let sch = mla_kv_schedule(&reqs, 132, max_units);
        check_schedule(&reqs, max_units, &sch);
        assert_eq!(sch.tiles_per_split, 32);
        assert_eq!(sch.splits[5], MLA_MAX_KV_SPLITS);
        assert!(sch
            .splits
            .iter()
            .enumerate()
            .all(|(b, &n)| b == 5 || n == 1));
        // The long request first, then the others in order; only it uses the workspace.
        assert_eq!(sch.units[0], (5, 0));
        assert_eq!(sch.units[63], (5, 63));
        assert_eq!(sch.units[64], (0, 0));
        assert_eq!(sch.split_requests, [5]);
        assert_eq!(sch.ws_first[5], Some(0));
        assert_eq!(sch.ws_slots(), 64);
    }

    #[test]
    fn the_unit_bound_lowers_the_splits() {
        // Four requests of 1000 tiles and 60 of one: unbounded, 28 splits each (172 units).
        let mut lens = vec![64; 64];
        for len in &mut lens[..4] {
            *len = 64 * 1000;
        }
        let reqs = requests(&lens, 64, 1);
        let free = mla_kv_schedule(&reqs, 132, usize::MAX);
        assert_eq!(free.units.len(), 4 * 28 + 60);
        let sch = mla_kv_schedule(&reqs, 132, 80);
        check_schedule(&reqs, 80, &sch);
        assert_eq!((sch.tiles_per_split, sch.splits[0]), (200, 5));
        assert_eq!(sch.units.len(), 80);
        // Never fewer units than requests, whatever the bound.
        let tight = mla_kv_schedule(&reqs, 132, 3);
        assert_eq!(tight.units.len(), 64);
    }

    #[test]
    fn requests_without_keys_or_queries_take_one_split() {
        let reqs = [
            MlaScheduleRequest {
                tiles: 0,
                blocks: 2,
            },
            MlaScheduleRequest {
                tiles: 5000,
                blocks: 0,
            },
            MlaScheduleRequest {
                tiles: 1,
                blocks: 2,
            },
            MlaScheduleRequest {
                tiles: 100,
                blocks: 2,
            },
        ];
        let sch = mla_kv_schedule(&reqs, 132, 1000);
        check_schedule(&reqs, 1000, &sch);
        // The request without queries does not count as the longest: 100 tiles in 50 pieces.
        assert_eq!(sch.tiles_per_split, 2);
        assert_eq!(sch.splits, [1, 1, 1, 50]);
        assert_eq!(sch.units[0], (3, 0));
        assert_eq!(sch.units[49..], [(3, 49), (2, 0), (0, 0), (1, 0)]);
        // Nothing to split at all.
        let none = [MlaScheduleRequest {
            tiles: 0,
            blocks: 1,
        }; 3];
        let sch = mla_kv_schedule(&none, 132, 1000);
        assert_eq!(sch.splits, [1, 1, 1]);
        assert_eq!(sch.units, [(0, 0), (1, 0), (2, 0)]);
        assert!(mla_kv_schedule(&[], 132, 0).units.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn every_schedule_holds_its_bounds(
            lens in proptest::collection::vec(0usize..20_000, 1..200),
            blocks in 0usize..4,
            slots in 1usize..300,
            extra in 0usize..300,
        ) {
            let reqs = requests(&lens, 64, blocks);
            let max_units = lens.len() + extra;
            let sch = mla_kv_schedule(&reqs, slots, max_units);
            check_schedule(&reqs, max_units, &sch);
        }
    }

    fn varlen(batch: usize, total_q: usize, max_s_q: usize) -> MlaDecodeVarlen {
        MlaDecodeVarlen {
            batch,
            total_q,
            max_s_q,
            heads: 2,
            max_pages: 2,
            softmax_scale: 0.1,
            layout: MlaCacheLayout {
                page_size: 4,
                latent_dim: 64,
                rope_dim: 16,
                format: MlaCacheFormat::Bf16,
            },
        }
    }

    #[test]
    fn varlen_errors_name_the_argument() {
        let arg = |r: Result<()>| r.unwrap_err().argument().map(str::to_string);
        assert_eq!(arg(varlen(2, 3, 0).validate()).as_deref(), Some("max_s_q"));
        assert_eq!(arg(varlen(2, 5, 2).validate()).as_deref(), Some("total_q"));
        assert_eq!(arg(varlen(0, 0, 2).validate()).as_deref(), Some("batch"));
        let op = varlen(3, 4, 2);
        assert!(op.validate_cu_seqlens_q(&[0, 2, 2, 4]).is_ok());
        let cu = |v: &[i32]| arg(op.validate_cu_seqlens_q(v));
        assert_eq!(cu(&[0, 2, 4]).as_deref(), Some("cu_seqlens_q"));
        assert_eq!(cu(&[1, 2, 2, 4]).as_deref(), Some("cu_seqlens_q[0]"));
        assert_eq!(cu(&[0, 3, 3, 4]).as_deref(), Some("cu_seqlens_q[1]"));
        assert_eq!(cu(&[0, 2, 1, 4]).as_deref(), Some("cu_seqlens_q[2]"));
        assert_eq!(cu(&[0, 1, 2, 3]).as_deref(), Some("cu_seqlens_q[3]"));
        // Paging is checked as for the uniform op, under this op's name.
        let cache = MlaCache::new(op.layout, 3).unwrap();
        let q = vec![bf16::ONE; op.q_len()];
        let e = op
            .validate_args(&cache, &q, &[0, 2, 2, 4], &[0, 1, -1, 0, 2, 7], &[8, 0, 5])
            .unwrap_err();
        assert_eq!(e.argument(), Some("block_table[2][1]"));
        assert!(e.to_string().starts_with("mla_decode_varlen"), "{e}");
        let e = op
            .validate_args(&cache, &q, &[0, 2, 2, 4], &[0; 6], &[9, 0, 0])
            .unwrap_err();
        assert_eq!(e.argument(), Some("seq_lens[0]"));
        assert!(op
            .validate_args(&cache, &q, &[0, 2, 2, 4], &[0, 1, -1, 0, 2, 1], &[8, 0, 5])
            .is_ok());
        // No queries at all is a valid call.
        let empty = varlen(2, 0, 1);
        assert!(empty
            .validate_args(&cache, &[], &[0, 0, 0], &[0; 4], &[3, 0])
            .is_ok());
        assert_eq!(op.padded().s_q, 2);
        assert_eq!(op.request(1).batch, 1);
    }
}
