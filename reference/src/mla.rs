//! MLA in f64: cache append, absorbed decode over the paged cache, and the non-absorbed
//! (per-head expanded) MLA of the model definition that proves absorption correct.
//!
//! In the model (DeepSeek-V2/V3), each token `j` of a request is cached as its normalized latent
//! `c_j` (`latent_dim`) and its RoPE'd shared key `k_pe_j` (`rope_dim`). Head `h` of the model
//! attends with
//! - key `k[h][j] = [W_UK[h]·c_j | k_pe_j]` (`qk_nope_dim + rope_dim`),
//! - value `v[h][j] = W_UV[h]·c_j` (`v_head_dim`),
//! - query `q[h] = [q_nope[h] | q_pe[h]]`.
//!
//! Since `q_nope·(W_UK c) = (W_UKᵀ q_nope)·c` and `Σ_j p_j W_UV c_j = W_UV Σ_j p_j c_j`, the same
//! attention is computed on the cache directly by absorbing `W_UK` into the query
//! ([`absorb_query`]), attending with key `[c_j | k_pe_j]` and value `c_j` ([`mla_decode`]), and
//! projecting the latent output with `W_UV` ([`project_output`]). [`mla_reference_mha`] computes
//! the model's form, so the two can be compared.

use crate::attention::attend;
use half::bf16;
use tessera_core::ops::mla::mla_fp8_scale;
use tessera_core::{MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeVarlen, E4M3};

/// FP8 cache scale groups hold this many latent values.
const FP8_CACHE_GROUP: usize = 128;

/// Writes bf16 values little-endian into `out` (two bytes each).
fn write_bf16s(out: &mut [u8], values: &[bf16]) {
    assert_eq!(out.len(), 2 * values.len());
    for (bytes, v) in out.chunks_exact_mut(2).zip(values) {
        bytes.copy_from_slice(&v.to_bits().to_le_bytes());
    }
}

/// Encodes one token's latent in the FP8 cache format into `out`
/// (`[latent e4m3 | latent_dim/128 f32 scales LE]`): per group of 128 values,
/// `scale = mla_fp8_scale(amax)` and `q = E4M3::from_f32(x / scale)` (exact division by a power
/// of two, then round to nearest even).
fn write_fp8_latent(out: &mut [u8], latent: &[bf16]) {
    let latent_dim = latent.len();
    assert_eq!(out.len(), latent_dim + 4 * (latent_dim / FP8_CACHE_GROUP));
    let (codes, scales) = out.split_at_mut(latent_dim);
    for (g, group) in latent.chunks_exact(FP8_CACHE_GROUP).enumerate() {
        let amax = group
            .iter()
            .map(|x| x.to_f32().abs())
            .fold(0.0f32, f32::max);
        let scale = mla_fp8_scale(amax);
        for (i, x) in group.iter().enumerate() {
            codes[g * FP8_CACHE_GROUP + i] = E4M3::from_f32(x.to_f32() / scale).to_bits();
        }
        scales[4 * g..4 * g + 4].copy_from_slice(&scale.to_le_bytes());
    }
}

/// Writes tokens to their slots (negative slots skipped); FP8 caches quantize each 128 latent
/// values with [`mla_fp8_scale`]. Arguments must be valid
/// ([`tessera_core::MlaAppend::validate_args`]).
///
/// Layouts: `latent` bf16 `[tokens, latent_dim]`, `rope` bf16 `[tokens, rope_dim]`, `slots`
/// `[tokens]` (`tokens = slots.len()`). Token `t` goes to the record of slot `slots[t]`:
/// - bf16 format: `[latent bf16 | rope bf16]`, little-endian;
/// - FP8 format: `[latent e4m3 | latent_dim/128 f32 scales LE | rope bf16 LE]`, each group of
///   128 latent values with `scale = mla_fp8_scale(amax of the group)` and
///   `q = E4M3::from_f32(x / scale)`.
///
/// Only the records of the given slots are written.
///
/// # Panics
/// If the lengths do not match or a slot is beyond the cache.
pub fn mla_append(cache: &mut MlaCache, latent: &[bf16], rope: &[bf16], slots: &[i32]) {
    let layout = *cache.layout();
    let (latent_dim, rope_dim) = (layout.latent_dim, layout.rope_dim);
    assert_eq!(
        latent.len(),
        slots.len() * latent_dim,
        "latent must be [tokens, latent_dim]"
    );
    assert_eq!(
        rope.len(),
        slots.len() * rope_dim,
        "rope must be [tokens, rope_dim]"
    );
    for (t, &slot) in slots.iter().enumerate() {
        let Ok(slot) = usize::try_from(slot) else {
            continue; // a negative slot is padding
        };
        let token_latent = &latent[t * latent_dim..(t + 1) * latent_dim];
        let token_rope = &rope[t * rope_dim..(t + 1) * rope_dim];
        let record = cache.token_record_mut(slot);
        let (latent_part, rope_part) = record.split_at_mut(layout.rope_offset());
        match layout.format {
            MlaCacheFormat::Bf16 => write_bf16s(latent_part, token_latent),
            MlaCacheFormat::Fp8 => write_fp8_latent(latent_part, token_latent),
        }
        write_bf16s(rope_part, token_rope);
    }
}

/// Number of keys query `query` (of `s_q`) of a request of `seq_len` tokens sees under MLA
/// decode's bottom-right causal alignment: `seq_len - (s_q - 1 - query)`, or 0 when that is
/// negative. The last query sees all `seq_len` keys.
pub fn visible_keys(seq_len: usize, s_q: usize, query: usize) -> usize {
    (seq_len + query + 1).saturating_sub(s_q)
}

/// Output of the reference decode.
#[derive(Clone, Debug, PartialEq)]
pub struct MlaDecodeResult {
    /// `[batch, s_q, heads, latent_dim]` ([`mla_decode_varlen`]: `[total_q, heads, latent_dim]`).
    pub o: Vec<f64>,
    /// `[batch, heads, s_q]` ([`mla_decode_varlen`]: `[heads, total_q]`), natural log; -inf
    /// where the query sees no key.
    pub lse: Vec<f64>,
}

/// Absorbed decode over the paged cache (see [`MlaDecode`]); q `[batch, s_q, heads, qk_dim]`.
/// Arguments must be valid ([`MlaDecode::validate_args`]).
///
/// For request `b` with `len = seq_lens[b]`, query `i` and head `h` attend the keys
/// `j < visible_keys(len, s_q, i)`; key `j` is read from slot
/// `block_table[b][j / page_size] * page_size + j % page_size` (decoded with
/// [`MlaCache::read_token`]), its key is `[latent | rope]` and its value is `latent`, scores are
/// scaled by `op.softmax_scale`.
///
/// Layouts: q f64 `[batch, s_q, heads, latent_dim + rope_dim]` (the absorbed
/// `[W_UKᵀ q_nope | q_pe]`); `block_table` `[batch, max_pages]`; `seq_lens` `[batch]`; output o
/// `[batch, s_q, heads, latent_dim]`, lse `[batch, heads, s_q]` (natural log). A query that sees
/// no key gets `o = 0` and `lse = -inf`. Only the slots of keys `0 .. len` of each request are
/// read, and only the block-table entries covering them.
///
/// # Panics
/// If the arguments are inconsistent (what [`MlaDecode::validate_args`] rejects).
pub fn mla_decode(
    op: &MlaDecode,
    cache: &MlaCache,
    q: &[f64],
    block_table: &[i32],
    seq_lens: &[i32],
) -> MlaDecodeResult {
    let layout = op.layout;
    assert_eq!(
        *cache.layout(),
        layout,
        "the cache's layout must be op.layout"
    );
    assert_eq!(
        q.len(),
        op.q_len(),
        "q must be [batch, s_q, heads, latent_dim + rope_dim]"
    );
    assert_eq!(
        block_table.len(),
        op.batch * op.max_pages,
        "block_table must be [batch, max_pages]"
    );
    assert_eq!(seq_lens.len(), op.batch, "seq_lens must be [batch]");
    let (latent_dim, qk_dim) = (layout.latent_dim, layout.qk_dim());
    let scale = op.softmax_scale as f64;
    let mut o = vec![0.0; op.o_len()];
    let mut lse = vec![0.0; op.lse_len()];
    for b in 0..op.batch {
        let len = usize::try_from(seq_lens[b]).expect("seq_lens must be >= 0");
        let keys = request_keys(
            cache,
            &block_table[b * op.max_pages..(b + 1) * op.max_pages],
            len,
        );
        let pairs: Vec<(&[f64], &[f64])> = keys
            .iter()
            .map(|key| (&key[..], &key[..latent_dim]))
            .collect();
        for i in 0..op.s_q {
            let visible = &pairs[..visible_keys(len, op.s_q, i)];
            for h in 0..op.heads {
                let row = (b * op.s_q + i) * op.heads + h;
                let attended = attend(
                    &q[row * qk_dim..(row + 1) * qk_dim],
                    visible,
                    latent_dim,
                    scale,
                );
                o[row * latent_dim..(row + 1) * latent_dim].copy_from_slice(&attended.o);
                lse[(b * op.heads + h) * op.s_q + i] = attended.lse;
            }
        }
    }
    MlaDecodeResult { o, lse }
}

/// The keys `0 .. len` of one request as f64 `[latent | rope]` (a key's value is its latent
/// prefix): key `j` is slot `table_row[j / page_size] * page_size + j % page_size`.
fn request_keys(cache: &MlaCache, table_row: &[i32], len: usize) -> Vec<Vec<f64>> {
    let layout: MlaCacheLayout = *cache.layout();
    (0..len)
        .map(|j| {
            let page = table_row[j / layout.page_size];
            let page = usize::try_from(page).expect("block-table entries in use must be >= 0");
            let (latent, rope) = cache.read_token(page * layout.page_size + j % layout.page_size);
            latent.iter().chain(&rope).map(|&x| x as f64).collect()
        })
        .collect()
}

/// Absorbed decode with a variable number of queries per request (see [`MlaDecodeVarlen`]).
/// Arguments must be valid ([`MlaDecodeVarlen::validate_args`]).
///
/// Request `b` owns the query tokens `t` in `cu_seqlens_q[b] .. cu_seqlens_q[b + 1]` (`n` of
/// them); its query `i = t - cu_seqlens_q[b]` and head `h` attend the keys
/// `j < visible_keys(seq_lens[b], n, i)`, read as in [`mla_decode`].
///
/// Layouts: q f64 `[total_q, heads, latent_dim + rope_dim]`; `cu_seqlens_q` `[batch + 1]`;
/// `block_table` `[batch, max_pages]`; `seq_lens` `[batch]`; output o
/// `[total_q, heads, latent_dim]`, lse `[heads, total_q]` (natural log). A query that sees no
/// key gets `o = 0` and `lse = -inf`. A request with no queries reads nothing.
///
/// # Panics
/// If the arguments are inconsistent (what [`MlaDecodeVarlen::validate_args`] rejects).
pub fn mla_decode_varlen(
    op: &MlaDecodeVarlen,
    cache: &MlaCache,
    q: &[f64],
    cu_seqlens_q: &[i32],
    block_table: &[i32],
    seq_lens: &[i32],
) -> MlaDecodeResult {
    let layout = op.layout;
    assert_eq!(
        *cache.layout(),
        layout,
        "the cache's layout must be op.layout"
    );
    assert_eq!(
        q.len(),
        op.q_len(),
        "q must be [total_q, heads, latent_dim + rope_dim]"
    );
    assert_eq!(
        cu_seqlens_q.len(),
        op.batch + 1,
        "cu_seqlens_q must be [batch + 1]"
    );
    assert_eq!(
        block_table.len(),
        op.batch * op.max_pages,
        "block_table must be [batch, max_pages]"
    );
    assert_eq!(seq_lens.len(), op.batch, "seq_lens must be [batch]");
    let (latent_dim, qk_dim) = (layout.latent_dim, layout.qk_dim());
    let scale = op.softmax_scale as f64;
    let mut o = vec![0.0; op.o_len()];
    let mut lse = vec![0.0; op.lse_len()];
    for b in 0..op.batch {
        let start = usize::try_from(cu_seqlens_q[b]).expect("cu_seqlens_q must be >= 0");
        let end = usize::try_from(cu_seqlens_q[b + 1]).expect("cu_seqlens_q must be >= 0");
        let n = end
            .checked_sub(start)
            .expect("cu_seqlens_q must not decrease");
        if n == 0 {
            continue;
        }
        let len = usize::try_from(seq_lens[b]).expect("seq_lens must be >= 0");
        let keys = request_keys(
            cache,
            &block_table[b * op.max_pages..(b + 1) * op.max_pages],
            len,
        );
        let pairs: Vec<(&[f64], &[f64])> = keys
            .iter()
            .map(|key| (&key[..], &key[..latent_dim]))
            .collect();
        for i in 0..n {
            let t = start + i;
            let visible = &pairs[..visible_keys(len, n, i)];
            for h in 0..op.heads {
                let row = t * op.heads + h;
                let attended = attend(
                    &q[row * qk_dim..(row + 1) * qk_dim],
                    visible,
                    latent_dim,
                    scale,
                );
                o[row * latent_dim..(row + 1) * latent_dim].copy_from_slice(&attended.o);
                lse[h * op.total_q + t] = attended.lse;
            }
        }
    }
    MlaDecodeResult { o, lse }
}

/// The per-head up-projections of MLA, in f64.
///
/// Layouts (row-major): `w_uk` `[heads, qk_nope_dim, latent_dim]`, so that
/// `k_nope[h][d] = Σ_l w_uk[h][d][l]·c[l]`; `w_uv` `[heads, v_head_dim, latent_dim]`, so that
/// `v[h][e] = Σ_l w_uv[h][e][l]·c[l]`. (DeepSeek-V3: 128 heads, qk_nope 128, v_head 128,
/// latent 512, rope 64.)
#[derive(Clone, Debug, PartialEq)]
pub struct MlaWeights {
    /// Query heads.
    pub heads: usize,
    /// Width of the non-RoPE part of each head's query and key.
    pub qk_nope_dim: usize,
    /// Width of each head's value (and output).
    pub v_head_dim: usize,
    /// Width of the cached latent `c`.
    pub latent_dim: usize,
    /// Width of the RoPE part of the query and of the shared key `k_pe`.
    pub rope_dim: usize,
    /// `W_UK`, `[heads, qk_nope_dim, latent_dim]`.
    pub w_uk: Vec<f64>,
    /// `W_UV`, `[heads, v_head_dim, latent_dim]`.
    pub w_uv: Vec<f64>,
}

impl MlaWeights {
    /// Width of the model's per-head query and key: `qk_nope_dim + rope_dim` (192 for
    /// DeepSeek-V3).
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_dim + self.rope_dim
    }

    /// Width of the absorbed per-head query and of a cached key: `latent_dim + rope_dim`
    /// (576 for DeepSeek-V3).
    pub fn absorbed_dim(&self) -> usize {
        self.latent_dim + self.rope_dim
    }

    /// Row `d` of `W_UK[h]`: `latent_dim` elements.
    pub fn w_uk_row(&self, h: usize, d: usize) -> &[f64] {
        let start = (h * self.qk_nope_dim + d) * self.latent_dim;
        &self.w_uk[start..start + self.latent_dim]
    }

    /// Row `e` of `W_UV[h]`: `latent_dim` elements.
    pub fn w_uv_row(&self, h: usize, e: usize) -> &[f64] {
        let start = (h * self.v_head_dim + e) * self.latent_dim;
        &self.w_uv[start..start + self.latent_dim]
    }

    fn check(&self) {
        assert_eq!(
            self.w_uk.len(),
            self.heads * self.qk_nope_dim * self.latent_dim,
            "w_uk must be [heads, qk_nope_dim, latent_dim]"
        );
        assert_eq!(
            self.w_uv.len(),
            self.heads * self.v_head_dim * self.latent_dim,
            "w_uv must be [heads, v_head_dim, latent_dim]"
        );
    }
}

/// `Σ_i a[i]·b[i]` in f64.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Absorbs `W_UK` into model queries: for each query row and head,
/// `q~_nope[h][l] = Σ_d W_UK[h][d][l]·q_nope[h][d]`, giving `[q~_nope | q_pe]`.
///
/// Layouts: `q` `[rows, heads, qk_nope_dim + rope_dim]` (per head `[q_nope | q_pe]`; `rows` is
/// any leading extent, e.g. `batch * s_q`); output `[rows, heads, latent_dim + rope_dim]`, the
/// query [`mla_decode`] takes.
///
/// # Panics
/// If the weights are inconsistent or `q.len()` is not a multiple of `heads * qk_head_dim()`.
pub fn absorb_query(weights: &MlaWeights, q: &[f64]) -> Vec<f64> {
    weights.check();
    let (heads, nope, in_dim, out_dim) = (
        weights.heads,
        weights.qk_nope_dim,
        weights.qk_head_dim(),
        weights.absorbed_dim(),
    );
    assert_eq!(
        q.len() % (heads * in_dim),
        0,
        "q must be [rows, heads, qk_nope_dim + rope_dim]"
    );
    let head_rows = q.len() / in_dim; // rows * heads
    let mut out = vec![0.0; head_rows * out_dim];
    for hr in 0..head_rows {
        let h = hr % heads;
        let q_head = &q[hr * in_dim..(hr + 1) * in_dim];
        let (q_nope, q_pe) = q_head.split_at(nope);
        let out_head = &mut out[hr * out_dim..(hr + 1) * out_dim];
        let (absorbed, out_pe) = out_head.split_at_mut(weights.latent_dim);
        for (l, a) in absorbed.iter_mut().enumerate() {
            *a = (0..nope)
                .map(|d| weights.w_uk_row(h, d)[l] * q_nope[d])
                .sum();
        }
        out_pe.copy_from_slice(q_pe);
    }
    out
}

/// Projects latent attention outputs to the model's value space:
/// `o[h][e] = Σ_l W_UV[h][e][l]·o_latent[h][l]`.
///
/// Layouts: `o_latent` `[rows, heads, latent_dim]` (e.g. [`mla_decode`]'s o with
/// `rows = batch * s_q`); output `[rows, heads, v_head_dim]`.
///
/// # Panics
/// If the weights are inconsistent or `o_latent.len()` is not a multiple of
/// `heads * latent_dim`.
pub fn project_output(weights: &MlaWeights, o_latent: &[f64]) -> Vec<f64> {
    weights.check();
    let (heads, latent_dim, v_dim) = (weights.heads, weights.latent_dim, weights.v_head_dim);
    assert_eq!(
        o_latent.len() % (heads * latent_dim),
        0,
        "o_latent must be [rows, heads, latent_dim]"
    );
    let head_rows = o_latent.len() / latent_dim;
    let mut out = vec![0.0; head_rows * v_dim];
    for hr in 0..head_rows {
        let h = hr % heads;
        let latent = &o_latent[hr * latent_dim..(hr + 1) * latent_dim];
        for e in 0..v_dim {
            out[hr * v_dim + e] = dot(weights.w_uv_row(h, e), latent);
        }
    }
    out
}

/// Output of [`mla_reference_mha`].
#[derive(Clone, Debug, PartialEq)]
pub struct MlaMhaResult {
    /// `[batch, s_q, heads, v_head_dim]`.
    pub o: Vec<f64>,
    /// `[batch, heads, s_q]`, natural log; -inf where the query sees no key.
    pub lse: Vec<f64>,
}

/// MLA as the model defines it (non-absorbed, per-head expanded keys and values), for
/// `batch = seq_lens.len()` requests of `s_q` queries each.
///
/// For request `b`, head `h` and key token `j`: `k[h][j] = [W_UK[h]·c_j | k_pe_j]`,
/// `v[h][j] = W_UV[h]·c_j`; query `i` (`q[h] = [q_nope | q_pe]`) attends the keys
/// `j < visible_keys(seq_lens[b], s_q, i)` (bottom-right causal) with scores
/// `softmax_scale · q[h]·k[h][j]`, and `o[h] = softmax · v[h]`.
///
/// Layouts (row-major): `q` `[batch, s_q, heads, qk_nope_dim + rope_dim]`; `latent`
/// `[total_tokens, latent_dim]` and `rope` `[total_tokens, rope_dim]` hold the requests' tokens
/// packed one after another (request `b` is rows `Σ_{b'<b} seq_lens[b'] ..` of length
/// `seq_lens[b]`, `total_tokens = Σ seq_lens`), not paged; output o
/// `[batch, s_q, heads, v_head_dim]`, lse `[batch, heads, s_q]` (natural log). A query that
/// sees no key gets `o = 0` and `lse = -inf`.
///
/// # Panics
/// If a length does not match.
pub fn mla_reference_mha(
    weights: &MlaWeights,
    softmax_scale: f64,
    s_q: usize,
    q: &[f64],
    latent: &[f64],
    rope: &[f64],
    seq_lens: &[usize],
) -> MlaMhaResult {
    weights.check();
    let (heads, nope, latent_dim, rope_dim, v_dim) = (
        weights.heads,
        weights.qk_nope_dim,
        weights.latent_dim,
        weights.rope_dim,
        weights.v_head_dim,
    );
    let qk_dim = weights.qk_head_dim();
    let batch = seq_lens.len();
    let total_tokens: usize = seq_lens.iter().sum();
    assert_eq!(
        q.len(),
        batch * s_q * heads * qk_dim,
        "q must be [batch, s_q, heads, qk_nope_dim + rope_dim]"
    );
    assert_eq!(
        latent.len(),
        total_tokens * latent_dim,
        "latent must be [total_tokens, latent_dim]"
    );
    assert_eq!(
        rope.len(),
        total_tokens * rope_dim,
        "rope must be [total_tokens, rope_dim]"
    );

    let mut o = vec![0.0; batch * s_q * heads * v_dim];
    let mut lse = vec![0.0; batch * heads * s_q];
    let mut first_token = 0;
    for (b, &len) in seq_lens.iter().enumerate() {
        let tokens = first_token..first_token + len;
        first_token += len;
        for h in 0..heads {
            // The expanded keys [k_nope | k_pe] and values of this head, one per token.
            let keys: Vec<Vec<f64>> = tokens
                .clone()
                .map(|t| {
                    let c = &latent[t * latent_dim..(t + 1) * latent_dim];
                    let k_pe = &rope[t * rope_dim..(t + 1) * rope_dim];
                    let mut key: Vec<f64> =
                        (0..nope).map(|d| dot(weights.w_uk_row(h, d), c)).collect();
                    key.extend_from_slice(k_pe);
                    key
                })
                .collect();
            let values: Vec<Vec<f64>> = tokens
                .clone()
                .map(|t| {
                    let c = &latent[t * latent_dim..(t + 1) * latent_dim];
                    (0..v_dim).map(|e| dot(weights.w_uv_row(h, e), c)).collect()
                })
                .collect();
            let pairs: Vec<(&[f64], &[f64])> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| (&k[..], &v[..]))
                .collect();
            for i in 0..s_q {
                let row = (b * s_q + i) * heads + h;
                let visible = &pairs[..visible_keys(len, s_q, i)];
                let attended = attend(
                    &q[row * qk_dim..(row + 1) * qk_dim],
                    visible,
                    v_dim,
                    softmax_scale,
                );
                o[row * v_dim..(row + 1) * v_dim].copy_from_slice(&attended.o);
                lse[(b * heads + h) * s_q + i] = attended.lse;
            }
        }
    }
    MlaMhaResult { o, lse }
}
