//! Tests of the reference MLA: the cache formats, absorbed decode over a paged cache against
//! the model's non-absorbed MLA and against dense attention, and the FP8 cache.
//!
//! The paged caches are built the way the public reference kernel's tests do: every slot is
//! first filled with NaN, the pages of each request are a random permutation of the cache's
//! pages, tokens are appended in a shuffled order with padding (negative slots) mixed in, and
//! zero-length requests occur. Any read of a slot decode should not touch shows up as NaN.

mod common;

use common::{assert_close, assert_lse_close, Rng};
use half::bf16;
use proptest::prelude::*;
use tessera_core::ops::mla::mla_fp8_scale;
use tessera_core::{
    Backend, MlaAppend, MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeVarlen, E4M3,
};
use tessera_reference::attention::{dense_attention, AttentionShape};
use tessera_reference::mla::{
    absorb_query, mla_append, mla_decode, mla_decode_varlen, mla_reference_mha, project_output,
    visible_keys, MlaDecodeResult, MlaWeights,
};
use tessera_reference::CpuBackend;

fn layout(
    page_size: usize,
    latent_dim: usize,
    rope_dim: usize,
    format: MlaCacheFormat,
) -> MlaCacheLayout {
    MlaCacheLayout {
        page_size,
        latent_dim,
        rope_dim,
        format,
    }
}

fn bf16s(values: &[f64]) -> Vec<bf16> {
    values.iter().map(|&v| bf16::from_f64(v)).collect()
}

fn widen(values: &[bf16]) -> Vec<f64> {
    values.iter().map(|v| v.to_f64()).collect()
}

/// The FP8 scales of a record, read from its bytes `[latent_dim .. rope_offset)`.
fn record_scales(cache: &MlaCache, slot: usize) -> Vec<f32> {
    let l = cache.layout();
    cache.token_record(slot)[l.latent_dim..l.rope_offset()]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The pages of a batch of requests: request `b` owns `ceil(lens[b] / page_size)` pages, drawn
/// from a random permutation of the cache's pages (with spare pages never used), and its
/// unused block-table entries hold -1.
struct Paging {
    lens: Vec<usize>,
    page_size: usize,
    num_pages: usize,
    max_pages: usize,
    block_table: Vec<i32>,
}

impl Paging {
    fn new(rng: &mut Rng, lens: Vec<usize>, page_size: usize) -> Self {
        let pages_of: Vec<usize> = lens.iter().map(|l| l.div_ceil(page_size)).collect();
        let used: usize = pages_of.iter().sum();
        let num_pages = used + 1 + rng.below(3);
        let max_pages = pages_of.iter().copied().max().unwrap_or(0) + rng.below(2);
        let max_pages = max_pages.max(1);
        let mut order: Vec<usize> = (0..num_pages).collect();
        rng.shuffle(&mut order);
        let mut block_table = vec![-1i32; lens.len() * max_pages];
        let mut next = order.into_iter();
        for (b, &pages) in pages_of.iter().enumerate() {
            for p in 0..pages {
                block_table[b * max_pages + p] = next.next().unwrap() as i32;
            }
        }
        Self {
            lens,
            page_size,
            num_pages,
            max_pages,
            block_table,
        }
    }

    fn slot(&self, b: usize, j: usize) -> usize {
        let page = self.block_table[b * self.max_pages + j / self.page_size] as usize;
        page * self.page_size + j % self.page_size
    }

    fn seq_lens_i32(&self) -> Vec<i32> {
        self.lens.iter().map(|&l| l as i32).collect()
    }
}

/// A NaN-filled cache with the requests' tokens appended at their slots. `latent`
/// (`[total_tokens, latent_dim]`) and `rope` (`[total_tokens, rope_dim]`) hold the tokens of
/// all requests packed in order; they are appended in a shuffled order, mixed with padding
/// tokens (slot -1) whose values are huge so that writing them anywhere would show.
fn build_cache(
    rng: &mut Rng,
    layout: MlaCacheLayout,
    paging: &Paging,
    latent: &[bf16],
    rope: &[bf16],
) -> MlaCache {
    let (ld, rd) = (layout.latent_dim, layout.rope_dim);
    let mut order: Vec<Option<(usize, usize)>> = Vec::new(); // (packed token, slot) or padding
    let mut packed = 0;
    for (b, &len) in paging.lens.iter().enumerate() {
        for j in 0..len {
            order.push(Some((packed, paging.slot(b, j))));
            packed += 1;
        }
    }
    order.extend((0..rng.below(4)).map(|_| None));
    rng.shuffle(&mut order);

    let (mut append_latent, mut append_rope, mut slots) = (Vec::new(), Vec::new(), Vec::new());
    for entry in &order {
        match *entry {
            Some((t, slot)) => {
                append_latent.extend_from_slice(&latent[t * ld..(t + 1) * ld]);
                append_rope.extend_from_slice(&rope[t * rd..(t + 1) * rd]);
                slots.push(slot as i32);
            }
            None => {
                append_latent.extend(std::iter::repeat_n(bf16::from_f32(1e30), ld));
                append_rope.extend(std::iter::repeat_n(bf16::from_f32(1e30), rd));
                slots.push(-1 - rng.below(5) as i32);
            }
        }
    }
    let mut cache = MlaCache::new(layout, paging.num_pages).unwrap();
    cache.fill_nan();
    let op = MlaAppend {
        tokens: slots.len(),
    };
    op.validate_args(&cache, &append_latent, &append_rope, &slots)
        .unwrap();
    mla_append(&mut cache, &append_latent, &append_rope, &slots);
    cache
}

/// The decode descriptor for a paging and layout; checks the arguments are valid.
fn decode_op(
    layout: MlaCacheLayout,
    paging: &Paging,
    s_q: usize,
    heads: usize,
    scale: f32,
) -> MlaDecode {
    MlaDecode {
        batch: paging.lens.len(),
        s_q,
        heads,
        max_pages: paging.max_pages,
        softmax_scale: scale,
        layout,
    }
}

fn decode(op: &MlaDecode, cache: &MlaCache, q: &[f64], paging: &Paging) -> MlaDecodeResult {
    let lens = paging.seq_lens_i32();
    op.validate_args(cache, &bf16s(q), &paging.block_table, &lens)
        .unwrap();
    mla_decode(op, cache, q, &paging.block_table, &lens)
}

/// Random request lengths in `0..=max_len`, a quarter of them zero.
fn random_lens(rng: &mut Rng, batch: usize, max_len: usize) -> Vec<usize> {
    (0..batch)
        .map(|_| {
            if rng.chance(0.25) {
                0
            } else {
                rng.below(max_len + 1)
            }
        })
        .collect()
}

/// Decode as dense attention, request by request: the single latent KV head is repeated for
/// every query head, and the bottom-right causal mask is built from its definition
/// (query i sees key j iff `j + s_q <= len + i`).
fn decode_as_dense_attention(
    s_q: usize,
    heads: usize,
    latent_dim: usize,
    q: &[f64],
    keys: &[Vec<Vec<f64>>],
    scale: f64,
) -> MlaDecodeResult {
    let qk_dim = q.len() / (keys.len() * s_q * heads);
    let (mut o, mut lse) = (Vec::new(), Vec::new());
    for (b, request_keys) in keys.iter().enumerate() {
        let len = request_keys.len();
        let shape = AttentionShape {
            batch: 1,
            q_tokens: s_q,
            kv_tokens: len,
            heads,
            head_dim: qk_dim,
        };
        let mut k = Vec::new();
        let mut v = Vec::new();
        for key in request_keys {
            for _ in 0..heads {
                k.extend_from_slice(key);
                // Values padded to qk_dim with zeros; only the latent part is kept below.
                v.extend_from_slice(&key[..latent_dim]);
                v.extend(std::iter::repeat_n(0.0, qk_dim - latent_dim));
            }
        }
        let mask: Vec<bool> = (0..s_q)
            .flat_map(|i| (0..len).map(move |j| j + s_q <= len + i))
            .collect();
        let q_b = &q[b * s_q * heads * qk_dim..(b + 1) * s_q * heads * qk_dim];
        let r = dense_attention(shape, q_b, &k, &v, scale, Some(&mask));
        for row in r.o.chunks_exact(qk_dim) {
            o.extend_from_slice(&row[..latent_dim]);
        }
        lse.extend_from_slice(&r.lse);
    }
    MlaDecodeResult { o, lse }
}

#[test]
fn visible_keys_is_bottom_right_causal() {
    assert_eq!(visible_keys(5, 1, 0), 5);
    assert_eq!(visible_keys(5, 3, 0), 3);
    assert_eq!(visible_keys(5, 3, 2), 5);
    assert_eq!(visible_keys(1, 3, 0), 0);
    assert_eq!(visible_keys(1, 3, 1), 0);
    assert_eq!(visible_keys(1, 3, 2), 1);
    assert_eq!(visible_keys(0, 1, 0), 0);
}

#[test]
fn bf16_append_writes_little_endian_records_and_skips_padding() {
    let l = layout(3, 64, 16, MlaCacheFormat::Bf16);
    let mut rng = Rng::new(7);
    let latent = bf16s(&rng.symmetric_vec(3 * 64));
    let rope = bf16s(&rng.symmetric_vec(3 * 16));
    let mut cache = MlaCache::new(l, 2).unwrap();
    cache.fill_nan();
    mla_append(&mut cache, &latent, &rope, &[4, -1, 0]);
    for (t, slot) in [(0, 4), (2, 0)] {
        let (lat, rp) = cache.read_token(slot);
        assert_eq!(
            lat,
            latent[t * 64..(t + 1) * 64]
                .iter()
                .map(|x| x.to_f32())
                .collect::<Vec<_>>()
        );
        assert_eq!(
            rp,
            rope[t * 16..(t + 1) * 16]
                .iter()
                .map(|x| x.to_f32())
                .collect::<Vec<_>>()
        );
        let record = cache.token_record(slot);
        assert_eq!(&record[0..2], &latent[t * 64].to_bits().to_le_bytes());
        assert_eq!(&record[128..130], &rope[t * 16].to_bits().to_le_bytes());
    }
    for slot in [1, 2, 3, 5] {
        let (lat, rp) = cache.read_token(slot);
        assert!(
            lat.iter().chain(&rp).all(|x| x.is_nan()),
            "slot {slot} must be untouched"
        );
    }
}

#[test]
fn fp8_append_writes_codes_power_of_two_scales_and_rope() {
    let l = layout(1, 256, 16, MlaCacheFormat::Fp8);
    // Group 0 has amax 448 (scale 1), group 1 amax 1 (scale: 1/448 rounded up to 2^-8).
    let mut latent = vec![0.0f64; 256];
    latent[0] = 448.0;
    latent[1] = -2.0;
    latent[128] = 1.0;
    latent[129] = 0.5;
    let rope: Vec<f64> = (0..16).map(|i| i as f64 * 0.25).collect();
    let mut cache = MlaCache::new(l, 1).unwrap();
    mla_append(&mut cache, &bf16s(&latent), &bf16s(&rope), &[0]);
    let record = cache.token_record(0);
    assert_eq!(record.len(), 256 + 2 * 4 + 16 * 2);
    assert_eq!(record[0], E4M3::MAX_CODE.to_bits());
    assert_eq!(record[1], E4M3::from_f32(-2.0).to_bits());
    assert_eq!(record[128], E4M3::from_f32(256.0).to_bits());
    assert_eq!(record_scales(&cache, 0), vec![1.0, 2f32.powi(-8)]);
    assert_eq!(
        &record[264..266],
        &bf16::from_f64(0.0).to_bits().to_le_bytes()
    );
    let (lat, rp) = cache.read_token(0);
    assert_eq!(
        lat.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        latent,
        "all values exact"
    );
    assert_eq!(rp.iter().map(|&x| x as f64).collect::<Vec<_>>(), rope);
}

#[test]
fn decode_over_one_key_returns_its_latent() {
    let l = layout(64, 64, 16, MlaCacheFormat::Bf16);
    let mut rng = Rng::new(8);
    let latent = bf16s(&rng.symmetric_vec(64));
    let rope = bf16s(&rng.symmetric_vec(16));
    let mut cache = MlaCache::new(l, 3).unwrap();
    cache.fill_nan();
    mla_append(&mut cache, &latent, &rope, &[2 * 64]);
    let op = MlaDecode {
        batch: 1,
        s_q: 1,
        heads: 2,
        max_pages: 1,
        softmax_scale: 0.125,
        layout: l,
    };
    let q = rng.symmetric_vec(op.q_len());
    let r = mla_decode(&op, &cache, &q, &[2], &[1]);
    let key: Vec<f64> = widen(&latent).into_iter().chain(widen(&rope)).collect();
    for h in 0..2 {
        assert_eq!(&r.o[h * 64..(h + 1) * 64], &widen(&latent)[..]);
        let score: f64 = 0.125
            * q[h * 80..(h + 1) * 80]
                .iter()
                .zip(&key)
                .map(|(a, b)| a * b)
                .sum::<f64>();
        assert_eq!(r.lse[h], score);
    }
}

#[test]
fn decode_of_unseen_queries_is_zero_and_neg_inf() {
    // Request 0 is empty (its block-table entry is -1); request 1 has 2 tokens and s_q = 3,
    // so its query 0 sees nothing, query 1 sees key 0, query 2 sees both.
    let l = layout(16, 64, 0, MlaCacheFormat::Bf16);
    let mut rng = Rng::new(9);
    let latent = bf16s(&rng.symmetric_vec(2 * 64));
    let mut cache = MlaCache::new(l, 2).unwrap();
    cache.fill_nan();
    mla_append(&mut cache, &latent, &[], &[16, 17]);
    let op = MlaDecode {
        batch: 2,
        s_q: 3,
        heads: 1,
        max_pages: 1,
        softmax_scale: 1.0,
        layout: l,
    };
    let q = rng.symmetric_vec(op.q_len());
    let block_table = [-1, 1];
    let seq_lens = [0, 2];
    op.validate_args(&cache, &bf16s(&q), &block_table, &seq_lens)
        .unwrap();
    let r = mla_decode(&op, &cache, &q, &block_table, &seq_lens);
    assert_eq!(&r.lse[..4], &[f64::NEG_INFINITY; 4]);
    assert!(r.lse[4..].iter().all(|x| x.is_finite()));
    assert!(r.o[..4 * 64].iter().all(|&x| x == 0.0));
    assert_eq!(
        &r.o[4 * 64..5 * 64],
        &widen(&latent[..64])[..],
        "query 1 sees only key 0"
    );
}

#[test]
fn absorption_hand_checked() {
    // One head, qk_nope 1, latent 2, rope 1, v_head 2.
    let w = MlaWeights {
        heads: 1,
        qk_nope_dim: 1,
        v_head_dim: 2,
        latent_dim: 2,
        rope_dim: 1,
        w_uk: vec![1.0, 2.0],
        w_uv: vec![1.0, 0.0, 3.0, -1.0],
    };
    // q = [q_nope 3 | q_pe 5] -> [3·1, 3·2 | 5].
    assert_eq!(absorb_query(&w, &[3.0, 5.0]), vec![3.0, 6.0, 5.0]);
    // o_latent [2, 7] -> [2, 3·2 - 7].
    assert_eq!(project_output(&w, &[2.0, 7.0]), vec![2.0, -1.0]);
    // One token c = [1, 1], k_pe = [0.5]: k = [W_UK c | k_pe] = [3 | 0.5], v = [1, 2];
    // the output over one key is v exactly, lse the score 3·3 + 5·0.5 = 11.5.
    let r = mla_reference_mha(&w, 1.0, 1, &[3.0, 5.0], &[1.0, 1.0], &[0.5], &[1]);
    assert_eq!(r.o, vec![1.0, 2.0]);
    assert_eq!(r.lse, vec![11.5]);
}

fn page_size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(3), Just(16), Just(64)]
}

/// Query counts per request for a varlen decode: `0..=max_s_q`, with 0, 1 and `max_s_q`
/// frequent; returns them and the offsets `cu_seqlens_q`.
fn random_query_counts(rng: &mut Rng, batch: usize, max_s_q: usize) -> (Vec<usize>, Vec<i32>) {
    let counts: Vec<usize> = (0..batch)
        .map(|_| match rng.below(4) {
            0 => 0,
            1 => 1,
            2 => max_s_q,
            _ => rng.below(max_s_q + 1),
        })
        .collect();
    let mut cu = vec![0i32];
    for &n in &counts {
        cu.push(cu.last().unwrap() + n as i32);
    }
    (counts, cu)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The variable-length decode equals decoding each request alone with the uniform op
    /// (`s_q` = its query count), bit for bit, on the reference and through the CPU backend;
    /// requests without queries read nothing (their pages may be NaN), both cache formats.
    #[test]
    fn varlen_decode_equals_each_request_alone(
        batch in 1usize..=5,
        heads in 1usize..=4,
        max_s_q in 1usize..=5,
        page_size in page_size(),
        fp8 in any::<bool>(),
        rope_dim in prop_oneof![Just(0usize), Just(16)],
        max_len in 0usize..=90,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let format = if fp8 { MlaCacheFormat::Fp8 } else { MlaCacheFormat::Bf16 };
        let l = layout(page_size, 128, rope_dim, format);
        let lens = random_lens(&mut rng, batch, max_len);
        let paging = Paging::new(&mut rng, lens, page_size);
        let total: usize = paging.lens.iter().sum();
        let latent = bf16s(&rng.symmetric_vec(total * l.latent_dim));
        let rope = bf16s(&rng.symmetric_vec(total * rope_dim));
        let cache = build_cache(&mut rng, l, &paging, &latent, &rope);
        let (counts, cu) = random_query_counts(&mut rng, batch, max_s_q);
        let total_q = *cu.last().unwrap() as usize;
        let op = MlaDecodeVarlen {
            batch,
            total_q,
            max_s_q,
            heads,
            max_pages: paging.max_pages,
            softmax_scale: 0.3,
            layout: l,
        };
        let qk = l.qk_dim();
        let q = bf16s(&rng.symmetric_vec(total_q * heads * qk));
        let lens = paging.seq_lens_i32();
        op.validate_args(&cache, &q, &cu, &paging.block_table, &lens).unwrap();
        let q64 = widen(&q);
        let varlen = mla_decode_varlen(&op, &cache, &q64, &cu, &paging.block_table, &lens);
        prop_assert_eq!(varlen.o.len(), op.o_len());
        prop_assert_eq!(varlen.lse.len(), op.lse_len());
        let cpu = CpuBackend::new();
        let through_backend = cpu
            .mla_decode_varlen(&op, &cache, &q, &cu, &paging.block_table, &lens)
            .unwrap();
        for (b, &n) in counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let start = cu[b] as usize;
            let alone = op.request(n);
            let table = &paging.block_table[b * paging.max_pages..(b + 1) * paging.max_pages];
            let q_b = &q[start * heads * qk..(start + n) * heads * qk];
            let r = mla_decode(&alone, &cache, &widen(q_b), table, &lens[b..b + 1]);
            let ld = l.latent_dim;
            prop_assert_eq!(
                &varlen.o[start * heads * ld..(start + n) * heads * ld],
                &r.o[..],
                "o of request {}", b
            );
            let single = cpu.mla_decode(&alone, &cache, q_b, table, &lens[b..b + 1]).unwrap();
            prop_assert_eq!(
                &through_backend.o[start * heads * ld..(start + n) * heads * ld],
                &single.o[..]
            );
            for h in 0..heads {
                for i in 0..n {
                    let got = varlen.lse[h * total_q + start + i];
                    let want = r.lse[h * n + i];
                    prop_assert_eq!(got.to_bits(), want.to_bits(), "lse of request {} head {} query {}", b, h, i);
                    prop_assert_eq!(
                        through_backend.lse[h * total_q + start + i].to_bits(),
                        single.lse[h * n + i].to_bits()
                    );
                }
            }
        }
    }

    /// Over a NaN-filled bf16 cache with a permuted block table:
    /// absorb_query -> mla_decode -> project_output equals the model's non-absorbed MLA on the
    /// same (bf16-rounded) latents, and mla_decode equals dense attention with the causal mask.
    #[test]
    fn absorbed_decode_equals_non_absorbed_mla(
        batch in 1usize..=3,
        heads in 1usize..=5,
        s_q in 1usize..=4,
        page_size in page_size(),
        latent_dim in prop_oneof![Just(64usize), Just(128)],
        rope_dim in prop_oneof![Just(0usize), Just(16)],
        qk_nope_dim in 1usize..=16,
        v_head_dim in 1usize..=16,
        max_len in 0usize..=150,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let l = layout(page_size, latent_dim, rope_dim, MlaCacheFormat::Bf16);
        let lens = random_lens(&mut rng, batch, max_len);
        let paging = Paging::new(&mut rng, lens, page_size);
        let total: usize = paging.lens.iter().sum();
        let latent = bf16s(&rng.symmetric_vec(total * latent_dim));
        let rope = bf16s(&rng.symmetric_vec(total * rope_dim));
        let cache = build_cache(&mut rng, l, &paging, &latent, &rope);

        let w_scale = (latent_dim as f64).powf(-0.5) * 2.0;
        let weights = MlaWeights {
            heads,
            qk_nope_dim,
            v_head_dim,
            latent_dim,
            rope_dim,
            w_uk: rng.symmetric_vec(heads * qk_nope_dim * latent_dim).iter().map(|x| x * w_scale).collect(),
            w_uv: rng.symmetric_vec(heads * v_head_dim * latent_dim).iter().map(|x| x * w_scale).collect(),
        };
        let softmax_scale = ((qk_nope_dim + rope_dim) as f32).powf(-0.5);
        let q = rng.symmetric_vec(batch * s_q * heads * weights.qk_head_dim());

        // Absorbed, over the paged cache.
        let op = decode_op(l, &paging, s_q, heads, softmax_scale);
        let absorbed_q = absorb_query(&weights, &q);
        let latent_out = decode(&op, &cache, &absorbed_q, &paging);
        prop_assert!(latent_out.o.iter().all(|x| !x.is_nan()), "decode read a NaN slot");
        let absorbed_o = project_output(&weights, &latent_out.o);

        // The model's MLA over the same (bf16) values, packed per request.
        let mha = mla_reference_mha(
            &weights, softmax_scale as f64, s_q, &q, &widen(&latent), &widen(&rope), &paging.lens,
        );
        assert_close(&absorbed_o, &mha.o, 1e-9, "o");
        assert_lse_close(&latent_out.lse, &mha.lse, 1e-9, "lse");

        // The same decode as plain dense attention with an explicit causal mask.
        let mut keys = Vec::new();
        let mut first = 0;
        for &len in &paging.lens {
            let request: Vec<Vec<f64>> = (first..first + len)
                .map(|t| {
                    let mut key = widen(&latent[t * latent_dim..(t + 1) * latent_dim]);
                    key.extend(widen(&rope[t * rope_dim..(t + 1) * rope_dim]));
                    key
                })
                .collect();
            first += len;
            keys.push(request);
        }
        let dense = decode_as_dense_attention(s_q, heads, latent_dim, &absorbed_q, &keys, softmax_scale as f64);
        assert_close(&latent_out.o, &dense.o, 1e-12, "latent o vs dense");
        assert_lse_close(&latent_out.lse, &dense.lse, 1e-12, "lse vs dense");
    }

    /// FP8 cache: each latent value reads back within E4M3's half-ULP bound of the scaled
    /// value, `|x - deq| <= scale · 2^(floor(log2 |x/scale|) - 4)` for `|x/scale| >= 2^-6` and
    /// `scale · 2^-10` below (x / scale is exact, the scale being a power of two, so rounding
    /// to E4M3 is the only error); scales are powers of two equal to `mla_fp8_scale(amax)`;
    /// rope is stored exactly.
    #[test]
    fn fp8_cache_round_trip_within_half_ulp(
        latent_dim in prop_oneof![Just(128usize), Just(256)],
        rope_dim in prop_oneof![Just(0usize), Just(16)],
        tokens in 1usize..=8,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let l = layout(3, latent_dim, rope_dim, MlaCacheFormat::Fp8);
        // Each group has its own magnitude; elements spread over 12 binades below it (E4M3
        // subnormals included); some groups are all zero.
        let mut latent = Vec::new();
        for _ in 0..tokens * latent_dim / 128 {
            let zero = rng.chance(0.1);
            let group_exp = rng.range_i32(-20, 10);
            for _ in 0..128 {
                let v = if zero { 0.0 } else { rng.symmetric() * 2f64.powi(group_exp - rng.range_i32(0, 12)) };
                latent.push(bf16::from_f64(v));
            }
        }
        let rope = bf16s(&rng.symmetric_vec(tokens * rope_dim));
        let mut cache = MlaCache::new(l, tokens.div_ceil(3) + 1).unwrap();
        cache.fill_nan();
        let mut slots: Vec<i32> = (0..cache.num_slots() as i32).collect();
        rng.shuffle(&mut slots);
        slots.truncate(tokens);
        mla_append(&mut cache, &latent, &rope, &slots);

        for (t, &slot) in slots.iter().enumerate() {
            let (deq, rp) = cache.read_token(slot as usize);
            prop_assert_eq!(rp, rope[t * rope_dim..(t + 1) * rope_dim].iter().map(|x| x.to_f32()).collect::<Vec<_>>());
            let scales = record_scales(&cache, slot as usize);
            for (g, &scale) in scales.iter().enumerate() {
                let group = &latent[t * latent_dim + g * 128..t * latent_dim + (g + 1) * 128];
                let amax = group.iter().map(|x| x.to_f32().abs()).fold(0.0f32, f32::max);
                prop_assert_eq!(scale, mla_fp8_scale(amax));
                prop_assert!(scale > 0.0 && scale.is_finite() && scale.to_bits() & 0x007f_ffff == 0,
                    "scale {} must be a power of two", scale);
                for (i, x) in group.iter().enumerate() {
                    let (x, s) = (x.to_f64(), scale as f64);
                    let t_abs = x.abs() / s;
                    prop_assert!(t_abs <= 448.0);
                    let half_ulp = if t_abs >= 2f64.powi(-6) { 2f64.powi(t_abs.log2().floor() as i32 - 4) } else { 2f64.powi(-10) };
                    let got = deq[g * 128 + i] as f64;
                    prop_assert!((x - got).abs() <= s * half_ulp,
                        "token {} group {} element {}: x {:e} read {:e} scale {:e}", t, g, i, x, got, s);
                }
            }
        }
    }

    /// Decode over an FP8 cache equals decode over a bf16 cache holding its dequantized values
    /// (exactly representable in bf16: 4 significant bits times a power of two).
    #[test]
    fn decode_over_fp8_cache_equals_decode_over_dequantized_values(
        batch in 1usize..=3,
        heads in 1usize..=5,
        s_q in 1usize..=4,
        page_size in page_size(),
        latent_dim in prop_oneof![Just(128usize), Just(256)],
        rope_dim in prop_oneof![Just(0usize), Just(16)],
        max_len in 0usize..=100,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let fp8_layout = layout(page_size, latent_dim, rope_dim, MlaCacheFormat::Fp8);
        let bf16_layout = layout(page_size, latent_dim, rope_dim, MlaCacheFormat::Bf16);
        let lens = random_lens(&mut rng, batch, max_len);
        let paging = Paging::new(&mut rng, lens, page_size);
        let total: usize = paging.lens.iter().sum();
        let latent = bf16s(&rng.symmetric_vec(total * latent_dim));
        let rope = bf16s(&rng.symmetric_vec(total * rope_dim));
        let fp8_cache = build_cache(&mut rng, fp8_layout, &paging, &latent, &rope);

        // The dequantized latents, in the same packed order, into a bf16 cache.
        let mut dequantized = Vec::with_capacity(latent.len());
        for (b, &len) in paging.lens.iter().enumerate() {
            for j in 0..len {
                let (values, _) = fp8_cache.read_token(paging.slot(b, j));
                for v in values {
                    let as_bf16 = bf16::from_f32(v);
                    prop_assert_eq!(as_bf16.to_f32(), v, "dequantized values are exact in bf16");
                    dequantized.push(as_bf16);
                }
            }
        }
        let bf16_cache = build_cache(&mut rng, bf16_layout, &paging, &dequantized, &rope);

        let softmax_scale = 192f32.powf(-0.5);
        let q = rng.symmetric_vec(batch * s_q * heads * (latent_dim + rope_dim));
        let from_fp8 = decode(&decode_op(fp8_layout, &paging, s_q, heads, softmax_scale), &fp8_cache, &q, &paging);
        let from_bf16 = decode(&decode_op(bf16_layout, &paging, s_q, heads, softmax_scale), &bf16_cache, &q, &paging);
        prop_assert!(from_fp8.o.iter().all(|x| !x.is_nan()), "decode read a NaN slot");
        assert_close(&from_fp8.o, &from_bf16.o, 1e-12, "o");
        assert_lse_close(&from_fp8.lse, &from_bf16.lse, 1e-12, "lse");
    }
}
