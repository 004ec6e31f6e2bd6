//! The radial attention block-mask generator (FACTS.md §1; Radial Attention, arXiv 2506.19852).
//!
//! # The rule
//!
//! Video tokens are frame-major: `V = F·T` tokens (F frames of T tokens), then `E` extra tokens
//! (text). For every ordered frame pair (query frame i, key frame j) at temporal distance
//! `d = |i - j|`, a `T x T` token pattern says which query tokens of frame i attend which key
//! tokens of frame j ([`FramePairPattern`]):
//!
//! 1. attention sink: with [`RadialMaskConfig::sink`], key frame 0 is attended in full;
//! 2. frame decimation: far frames whose nominal width `λ = 2^bitlen(T) / 2^bitlen(d)` is below
//!    [`DECIMATION_THRESHOLD`] are kept only when `d` is a multiple of `128 / λ`
//!    ([`is_decimated`]); a decimated pair is empty;
//! 3. otherwise a band: query token r attends key token c iff `|c - r| <= w`, with the window
//!    width `w = T` for `d <= 1` (the whole frame) and `w = max(λ·δ, B)` beyond
//!    ([`window_width`]).
//!
//! Each pair's pattern is laid on the block grid where its tokens fall (frame i starts at token
//! `i·T`, i.e. `(i·T) mod B` rows into block row `floor(i·T / B)`), reduced to blocks by the
//! *strict shrink* rule and OR-ed into the global mask. Strict shrink: in a block, let `n_c` be
//! the number of pattern ones in column c; with `nz` the columns with `n_c > 0` and `hi` those
//! with `3·n_c > B`, the block is on iff `5·hi > 3·nz` (more than 60% of the touched columns are
//! more than a third full). Block rows and columns from `floor(V / B)` on (extra tokens and the
//! partial video tail) are fully on.
//!
//! # How it is computed
//!
//! Nothing token-level is materialised. Within one frame pair, the ones of a key column form an
//! interval of query rows (all rows, none, or the band `[c - w, c + w]`), so `n_c` of a block is
//! the length of an interval intersection: O(1) per column, O(B) per block, and only the blocks
//! that the band can reach are visited. A pair's block pattern depends only on its
//! [`FramePairPattern`] and on the two frames' offsets inside their first blocks, so it is
//! computed once per distinct `(pattern, row offset, column offset)` and reused: with T a
//! multiple of B there is one per distinct window. The HunyuanVideo mask (900 x 900 blocks)
//! builds in a few milliseconds.
//!
//! # Differences from the published generator
//!
//! Where T is a multiple of B (every published setting) the result equals the published
//! generator's (mit-han-lab/radial-attention, `gen_log_mask_shrinked`) block for block; the
//! published densities are test anchors. Tessera accepts any `T` and `E`, where the published
//! code either crashes or loses tokens, and guarantees what the kernels require:
//!
//! - the grid has `ceil(S / B)` blocks per side (published: `floor(S / B)`, which drops a partial
//!   last block); the partial last block row and column are fully on;
//! - each frame pair is laid on every block its tokens touch: `ceil((ρ + T) / B)` block rows for
//!   a frame starting `ρ` rows into its first block (likewise for columns). The published code
//!   keeps only `ceil(T / B)` of them and so silently drops the last few token rows and columns
//!   of a frame that straddles one block more, which can leave a block row empty. With T a
//!   multiple of B, `ρ = 0` and the two agree;
//! - every diagonal block is on. A frame pair whose tokens fill no more than a third of a block
//!   row can never turn a block on under strict shrink, so with `T <= B / 3` (several frames per
//!   block) whole block rows would otherwise be empty and their softmax undefined. With T a
//!   multiple of B the diagonal is already on (a frame attends itself densely).
//!
//! Arithmetic follows the published code exactly: decimation is decided in integers (`λ` is a
//! power of two, so `128 / λ` is exact), decimation applies at every distance including `d = 1`
//! (which empties adjacent-frame pairs when `T < 128`; `d = 0` is never decimated), the sink
//! bypasses both the window and decimation, and the window comparison `|c - r| <= w` is done in
//! 32-bit floats (PyTorch promotes an integer tensor compared with a Python float to its default
//! float32), so the band radius is `floor(f32(w))` ([`band_radius`]).

use std::collections::HashMap;
use std::ops::Range;

use crate::error::{Error, Result};
use crate::mask::BlockMask;

const OP: &str = "radial_mask";

/// The parameters of the radial attention mask (FACTS.md §1; Radial Attention, 2025).
///
/// Tokens are frame-major: `frames * tokens_per_frame` video tokens, then `extra_tokens` (text)
/// that attend and are attended densely.
#[derive(Clone, Debug, PartialEq)]
pub struct RadialMaskConfig {
    /// Number of (latent) frames F, at least 1.
    pub frames: usize,
    /// Tokens per frame T, at least 1.
    pub tokens_per_frame: usize,
    /// Extra dense tokens E after the video tokens (e.g. text), possibly 0.
    pub extra_tokens: usize,
    /// Block size B: 64 or 128.
    pub block_size: usize,
    /// Decay factor δ > 0 (finite): window width multiplier for distant frames.
    pub decay: f64,
    /// Whether frame 0 is an attention sink (every query frame attends all of key frame 0).
    pub sink: bool,
}

impl RadialMaskConfig {
    /// Total tokens S = F·T + E (saturating at `usize::MAX` for a configuration that fails
    /// [`Self::validate`]).
    pub fn tokens(&self) -> usize {
        self.video_tokens().saturating_add(self.extra_tokens)
    }

    /// Video tokens V = F·T (saturating like [`Self::tokens`]).
    pub fn video_tokens(&self) -> usize {
        self.frames.saturating_mul(self.tokens_per_frame)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "radial_mask";
        if self.frames == 0 {
            return Err(Error::invalid(OP, "frames", "at least 1", "0"));
        }
        if self.tokens_per_frame == 0 {
            return Err(Error::invalid(OP, "tokens_per_frame", "at least 1", "0"));
        }
        if self.block_size != 64 && self.block_size != 128 {
            return Err(Error::invalid(
                OP,
                "block_size",
                "64 or 128",
                self.block_size.to_string(),
            ));
        }
        if !(self.decay.is_finite() && self.decay > 0.0) {
            return Err(Error::invalid(
                OP,
                "decay",
                "a finite number > 0",
                self.decay.to_string(),
            ));
        }
        if self
            .frames
            .checked_mul(self.tokens_per_frame)
            .and_then(|v| v.checked_add(self.extra_tokens))
            .is_none_or(|s| s > u32::MAX as usize / 2)
        {
            return Err(Error::invalid(
                OP,
                "frames * tokens_per_frame + extra_tokens",
                "at most 2^31 tokens",
                "an overflowing count",
            ));
        }
        Ok(())
    }

    /// Builds the mask: see [`build_radial_mask`].
    pub fn build(&self) -> Result<BlockMask> {
        build_radial_mask(self)
    }
}

/// The nominal width `λ` below which far frames are decimated. The published generator
/// hard-codes 128 whatever the block size.
pub const DECIMATION_THRESHOLD: usize = 128;

/// `log2(DECIMATION_THRESHOLD)`.
const DECIMATION_THRESHOLD_LOG2: u32 = DECIMATION_THRESHOLD.trailing_zeros();

/// Number of binary digits of `n`: `bitlen(0) = 0`, `bitlen(1) = 1`, `bitlen(5) = 3`
/// (Python's `int.bit_length`).
pub fn bitlen(n: usize) -> u32 {
    usize::BITS - n.leading_zeros()
}

/// `log2 λ` for tokens per frame `T` and frame distance `d`, where
/// `λ = 2^bitlen(T) / 2^bitlen(d)` is the nominal window width (before the decay factor) of
/// frames at distance `d`: it halves each time the distance doubles.
fn log2_nominal_width(tokens_per_frame: usize, distance: usize) -> i32 {
    bitlen(tokens_per_frame) as i32 - bitlen(distance) as i32
}

/// The window width `w` (a real number of tokens) of frame pairs at distance `d`: the whole
/// frame `T` for `d <= 1`, else `max(λ·δ, B)` with `λ = 2^bitlen(T) / 2^bitlen(d)`.
///
/// Query token r of one frame attends key token c of the other iff `|c - r| <= w` (unless the
/// pair is decimated or is a sink pair, see [`frame_pair_pattern`]).
pub fn window_width(
    tokens_per_frame: usize,
    distance: usize,
    decay: f64,
    block_size: usize,
) -> f64 {
    if distance <= 1 {
        return tokens_per_frame as f64;
    }
    // λ is a power of two, and scaling by one is exact: this is the published arithmetic.
    let nominal = 2f64.powi(log2_nominal_width(tokens_per_frame, distance));
    (nominal * decay).max(block_size as f64)
}

/// The band radius in whole tokens for a window width `w`: `floor(f32(w))`, because the
/// published code compares integer distances with `w` in 32-bit floats. Saturates for
/// enormous widths.
pub fn band_radius(width: f64) -> usize {
    // `as` from float to integer saturates; `width` is finite and positive here.
    (width as f32).floor() as usize
}

/// Whether frame pairs at distance `d` are dropped by frame decimation: when
/// `λ = 2^bitlen(T) / 2^bitlen(d)` is below [`DECIMATION_THRESHOLD`], only distances that are
/// multiples of `k = 128 / λ` are kept. Distance 0 is never decimated; distance 1 is decimated
/// exactly when `T < 128`.
pub fn is_decimated(tokens_per_frame: usize, distance: usize) -> bool {
    // λ < 128  <=>  log2 λ < 7, and then k = 128 / λ = 2^(7 - log2 λ) exactly.
    let shortfall =
        DECIMATION_THRESHOLD_LOG2 as i32 - log2_nominal_width(tokens_per_frame, distance);
    if shortfall <= 0 {
        return false;
    }
    match 1usize.checked_shl(shortfall as u32) {
        Some(stride) => distance % stride != 0,
        // The stride exceeds every representable distance: only distance 0 is a multiple.
        None => distance != 0,
    }
}

/// Which query tokens of one frame attend which key tokens of another, before reduction to
/// blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FramePairPattern {
    /// Every query token attends every key token (a sink pair, or a band as wide as the frame).
    Full,
    /// Query token r attends key token c iff `|c - r| <= radius`, with `radius < T - 1`.
    Band {
        /// Half-width of the band in tokens ([`band_radius`] of the window width).
        radius: usize,
    },
    /// Nothing: the pair is decimated.
    Empty,
}

/// The token pattern between query frame `query_frame` and key frame `key_frame` under `config`
/// (see the [module documentation](self) for the rule). Frame indices may exceed the frame count:
/// only their distance matters, and whether the key frame is the sink.
pub fn frame_pair_pattern(
    config: &RadialMaskConfig,
    query_frame: usize,
    key_frame: usize,
) -> FramePairPattern {
    if config.sink && key_frame == 0 {
        return FramePairPattern::Full;
    }
    distance_pattern(config, query_frame.abs_diff(key_frame))
}

/// The pattern of the non-sink frame pairs at distance `distance`.
fn distance_pattern(config: &RadialMaskConfig, distance: usize) -> FramePairPattern {
    let tokens = config.tokens_per_frame;
    if is_decimated(tokens, distance) {
        return FramePairPattern::Empty;
    }
    let width = window_width(tokens, distance, config.decay, config.block_size);
    let radius = band_radius(width);
    if radius >= tokens.saturating_sub(1) {
        FramePairPattern::Full
    } else {
        FramePairPattern::Band { radius }
    }
}

/// The O(n log n) reference block count of the video part:
/// `(V / B) · max(T / B, 1) · (1 + log2 F)`, i.e. every video block row attends about one frame's
/// worth of key blocks per doubling of the temporal distance.
///
/// This is the shape of the paper's complexity claim, not an exact bound. For fixed T, B and δ
/// each doubling of F adds a bounded number of blocks per block row (a few frames' worth), so
/// [`video_block_count`] divided by this levels off at a small constant as F grows: 1.39 for
/// the HunyuanVideo setting, 1.00 for Wan2.1, at most about 3 for F up to 64 in the tests.
pub fn nlogn_reference(config: &RadialMaskConfig) -> f64 {
    let block = config.block_size as f64;
    let block_rows = config.video_tokens() as f64 / block;
    let blocks_per_frame = (config.tokens_per_frame as f64 / block).max(1.0);
    block_rows * blocks_per_frame * (1.0 + (config.frames as f64).log2())
}

/// Blocks on in the video x video part of `mask` (block rows and columns below `floor(V / B)`,
/// i.e. excluding the dense extra-token and tail blocks): the count that
/// [`nlogn_reference`] describes.
/// A configuration with block size 0 (invalid) has no video blocks.
pub fn video_block_count(mask: &BlockMask, config: &RadialMaskConfig) -> usize {
    let Some(border) = config.video_tokens().checked_div(config.block_size) else {
        return 0;
    };
    (0..border.min(mask.num_blocks()))
        .map(|r| mask.row(r).partition_point(|&c| (c as usize) < border))
        .sum()
}

/// Builds the radial block mask for `config`: `ceil(S / B)` blocks per side, `tokens() = S`.
///
/// See the [module documentation](self) for the rule, how it is computed and how it extends the
/// published generator. Fails with [`Error::InvalidArgument`] when the configuration is invalid
/// ([`RadialMaskConfig::validate`]) or the mask would have more than `u32::MAX` blocks on.
pub fn build_radial_mask(config: &RadialMaskConfig) -> Result<BlockMask> {
    config.validate()?;
    let block = config.block_size;
    let tokens = config.tokens();
    let num_blocks = tokens.div_ceil(block);
    let border = config.video_tokens() / block;

    // The dense tail alone (rows and columns >= border) must fit the u32 BSR indices: check
    // before allocating anything.
    let tail = num_blocks - border;
    let dense_tail = (tail as u128) * (num_blocks as u128) + (border as u128) * (tail as u128);
    if dense_tail + border as u128 > u32::MAX as u128 {
        return Err(too_many_blocks(format!(
            "at least {}",
            dense_tail + border as u128
        )));
    }

    let mut video = VideoBlocks::new(config, border);
    for row in 0..border {
        video.push(row, row);
    }
    for distance in 0..config.frames {
        let pattern = distance_pattern(config, distance);
        if pattern == FramePairPattern::Empty {
            continue;
        }
        for (query_frame, key_frame) in pairs_at_distance(config.frames, distance) {
            // Sink pairs are added below, in full.
            if !(config.sink && key_frame == 0) {
                video.add_pair(query_frame, key_frame, pattern);
            }
        }
    }
    if config.sink {
        for query_frame in 0..config.frames {
            video.add_pair(query_frame, 0, FramePairPattern::Full);
        }
    }
    let video_blocks = video.into_sorted();

    let mut indptr = Vec::with_capacity(num_blocks + 1);
    let mut indices: Vec<u32> = crate::mask::try_vec(
        video_blocks.len() + dense_tail as usize,
        "the radial mask's column indices",
    )?;
    indptr.push(0u32);
    let mut next = 0;
    for row in 0..num_blocks as u32 {
        if (row as usize) < border {
            let start = next;
            while next < video_blocks.len() && video_blocks[next].0 == row {
                next += 1;
            }
            indices.extend(video_blocks[start..next].iter().map(|&(_, column)| column));
            indices.extend(border as u32..num_blocks as u32);
        } else {
            indices.extend(0..num_blocks as u32);
        }
        let end = u32::try_from(indices.len())
            .map_err(|_| too_many_blocks(format!("more than {}", u32::MAX)))?;
        indptr.push(end);
    }
    BlockMask::from_bsr(tokens, block, indptr, indices)
}

fn too_many_blocks(got: String) -> Error {
    Error::invalid(
        OP,
        "frames * tokens_per_frame + extra_tokens",
        format!("a mask with at most {} blocks on", u32::MAX),
        got,
    )
}

/// Accumulates the on blocks `(row, column)` of the video x video part (unsorted, possibly
/// repeated), and caches each distinct frame pair's block pattern.
struct VideoBlocks<'a> {
    config: &'a RadialMaskConfig,
    /// `floor(V / B)`: block rows and columns from here on are dense and not recorded.
    border: usize,
    blocks: Vec<(u32, u32)>,
    /// On blocks `(row, column)` relative to the pair's first block, keyed by the pair's pattern
    /// and the offsets of the query and key frames inside their first blocks.
    pair_blocks: HashMap<(FramePairPattern, usize, usize), Vec<(usize, usize)>>,
}

impl<'a> VideoBlocks<'a> {
    fn new(config: &'a RadialMaskConfig, border: usize) -> Self {
        Self {
            config,
            border,
            blocks: Vec::new(),
            pair_blocks: HashMap::new(),
        }
    }

    /// Records block (row, column).
    fn push(&mut self, row: usize, column: usize) {
        record_block(&mut self.blocks, self.border, row, column);
    }

    /// ORs the blocks of frame pair (query_frame, key_frame) with this pattern into the mask.
    fn add_pair(&mut self, query_frame: usize, key_frame: usize, pattern: FramePairPattern) {
        if pattern == FramePairPattern::Empty {
            return;
        }
        let (tokens, block) = (self.config.tokens_per_frame, self.config.block_size);
        let (query_start, key_start) = (query_frame * tokens, key_frame * tokens);
        let rows = FrameAxis::new(query_start % block, tokens, block);
        let columns = FrameAxis::new(key_start % block, tokens, block);
        let on_blocks = self
            .pair_blocks
            .entry((pattern, rows.offset, columns.offset))
            .or_insert_with(|| pair_on_blocks(pattern, &rows, &columns, block));
        let (first_row, first_column) = (query_start / block, key_start / block);
        for &(a, b) in on_blocks.iter() {
            record_block(
                &mut self.blocks,
                self.border,
                first_row + a,
                first_column + b,
            );
        }
    }

    /// The recorded blocks, sorted by (row, column), each once.
    fn into_sorted(self) -> Vec<(u32, u32)> {
        let mut blocks = self.blocks;
        blocks.sort_unstable();
        blocks.dedup();
        blocks
    }
}

/// Records block (row, column) unless it lies in the dense part at or past `border` (which also
/// clips to the grid). `border` fits u32 (the token count is validated), so the casts are exact.
fn record_block(blocks: &mut Vec<(u32, u32)>, border: usize, row: usize, column: usize) {
    if row < border && column < border {
        blocks.push((row as u32, column as u32));
    }
}

/// The ordered frame pairs (query frame, key frame) at distance `distance` among `frames` frames.
fn pairs_at_distance(frames: usize, distance: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..frames.saturating_sub(distance)).flat_map(move |low| {
        let high = low + distance;
        std::iter::once((low, high)).chain((distance > 0).then_some((high, low)))
    })
}

/// One frame's tokens along one axis of the block grid: `len` tokens starting `offset` tokens
/// into the frame's first block.
struct FrameAxis {
    offset: usize,
    len: usize,
    block: usize,
}

impl FrameAxis {
    fn new(offset: usize, len: usize, block: usize) -> Self {
        Self { offset, len, block }
    }

    /// Blocks the frame touches: `ceil((offset + len) / B)`.
    fn blocks(&self) -> usize {
        (self.offset + self.len).div_ceil(self.block)
    }

    /// The frame's tokens (frame-relative indices) inside its `index`-th block.
    fn tokens_in(&self, index: usize) -> Range<usize> {
        let start = (index * self.block).max(self.offset) - self.offset;
        let end = ((index + 1) * self.block).min(self.offset + self.len) - self.offset;
        start..end
    }

    /// The block (relative to the first) holding frame token `token`.
    fn block_of(&self, token: usize) -> usize {
        (self.offset + token) / self.block
    }
}

/// Whether a column with `ones` pattern ones among a block's rows is "dense" for strict shrink:
/// more than a third of the block size.
fn is_dense_column(ones: usize, block: usize) -> bool {
    3 * ones > block
}

/// The strict shrink rule: a block is on iff more than 60% of its touched columns are dense.
fn strict_shrink_keeps(touched_columns: usize, dense_columns: usize) -> bool {
    5 * dense_columns > 3 * touched_columns
}

/// The on blocks `(row, column)` of one frame pair, relative to the pair's first block.
fn pair_on_blocks(
    pattern: FramePairPattern,
    rows: &FrameAxis,
    columns: &FrameAxis,
    block: usize,
) -> Vec<(usize, usize)> {
    let mut on = Vec::new();
    for a in 0..rows.blocks() {
        let query_tokens = rows.tokens_in(a);
        // A column's ones in this block row never exceed the frame's rows in it: with a third
        // of the block or less, no column is dense and no block can be on.
        if !is_dense_column(query_tokens.len(), block) {
            continue;
        }
        match pattern {
            FramePairPattern::Empty => {}
            FramePairPattern::Full => {
                // Every touched column holds all of the block row's query tokens, dense per the
                // check above, so every block the key frame touches is on.
                on.extend((0..columns.blocks()).map(|b| (a, b)));
            }
            FramePairPattern::Band { radius } => {
                // Key tokens within `radius` of some query token of this block row.
                let first_key = query_tokens.start.saturating_sub(radius);
                let last_key = (query_tokens.end - 1 + radius).min(columns.len - 1);
                for b in columns.block_of(first_key)..=columns.block_of(last_key) {
                    let (mut touched, mut dense) = (0, 0);
                    for key in columns.tokens_in(b) {
                        // Query tokens r with |key - r| <= radius, inside this block row.
                        let lo = key.saturating_sub(radius).max(query_tokens.start);
                        let hi = (key + radius + 1).min(query_tokens.end);
                        let ones = hi.saturating_sub(lo);
                        touched += usize::from(ones > 0);
                        dense += usize::from(is_dense_column(ones, block));
                    }
                    if strict_shrink_keeps(touched, dense) {
                        on.push((a, b));
                    }
                }
            }
        }
    }
    on
}
