//! The benchmark cases, defined once for every executor (`crate::bench_cuda`,
//! `crate::bench_vk`): the shapes of each suite, their keys (shared with the peers and the
//! report), their FLOP and byte counts, and the data patterns the inputs are filled with.

use half::bf16;
use serde_json::json;
use std::collections::BTreeMap;
use tessera::{
    BlockMask, DType, Fp8Gemm, Fp8Granularity, Fp8Quantize, GemmGrouping, MlaCacheFormat,
    MlaCacheLayout, MlaDecode, MlaDecodeVarlen, RadialMaskConfig, ScaleRule, SparseAttention,
};
use tessera_testing::Rng;

/// Bytes of operands the FP8 GEMM rotates over (about 4x the H200's L2), so that the cache does
/// not hold them across launches.
pub const ROTATE_BYTES: usize = 200 << 20;

/// An attention case: a published radial setting at a multiple of its frames.
#[derive(Clone, Debug)]
pub struct AttentionCase {
    /// `hunyuan` or `wan`.
    pub model: &'static str,
    /// Latent frames.
    pub frames: usize,
    /// Heads.
    pub heads: usize,
    /// The mask's configuration.
    pub config: RadialMaskConfig,
}

/// Head dimension of every attention case.
pub const ATTENTION_HEAD_DIM: usize = 128;

impl AttentionCase {
    /// The published setting `model` (`hunyuan` or `wan`) with `mult` times its frames.
    pub fn published(model: &'static str, mult: usize) -> Self {
        let (frames, heads, decay, sink) = match model {
            "hunyuan" => (30, 24, 0.95, false),
            _ => (18, 40, 0.2, true),
        };
        Self {
            model,
            frames: frames * mult,
            heads,
            config: RadialMaskConfig {
                frames: frames * mult,
                tokens_per_frame: 3840,
                extra_tokens: 0,
                block_size: 128,
                decay,
                sink,
            },
        }
    }

    /// The shape key shared with the peers.
    pub fn key(&self) -> String {
        format!(
            "{} F{} T{} h{}",
            self.model, self.frames, self.config.tokens_per_frame, self.heads
        )
    }

    /// The mask file name.
    pub fn mask_file(&self) -> String {
        format!("{}_F{}.json", self.model, self.frames)
    }

    /// The mask (radial, or dense over the same tokens), the op (bf16, batch 1), and the FLOP
    /// (every on block in full) and bytes (q, k, v, o) of one run.
    pub fn work(&self, radial: bool) -> Result<AttentionWork, String> {
        let tokens = self.config.tokens();
        let mask = if radial {
            self.config.build()
        } else {
            BlockMask::dense(tokens, self.config.block_size)
        }
        .map_err(|e| e.to_string())?;
        let op = SparseAttention::new(1, tokens, self.heads, ATTENTION_HEAD_DIM, DType::BF16);
        Ok(AttentionWork {
            flops: op.flops(&mask),
            bytes: 4.0 * 2.0 * op.qkv_len() as f64,
            mask,
            op,
        })
    }
}

/// The op name of the attention backward's records.
pub const ATTENTION_BACKWARD_OP: &str = "attention_backward";

/// The implementation names of our attention backward's records: the default (dq added in any
/// order where that is faster) and with [`SparseAttention::deterministic_backward`] set.
pub const ATTENTION_BACKWARD_IMPLS: [&str; 2] = ["tessera radial", "tessera radial deterministic"];

impl AttentionCase {
    /// The backward of the radial case: its mask and op, FLOP counted as
    /// [`SparseAttention::backward_flops`] (2.5 times the forward's), bytes q, k, v, o, dO read
    /// and dq, dk, dv written.
    pub fn backward_work(&self) -> Result<AttentionWork, String> {
        let forward = self.work(true)?;
        Ok(AttentionWork {
            flops: forward.op.backward_flops(&forward.mask),
            bytes: 8.0 * 2.0 * forward.op.qkv_len() as f64,
            ..forward
        })
    }
}

/// What one attention measurement runs.
pub struct AttentionWork {
    /// The mask.
    pub mask: BlockMask,
    /// The op.
    pub op: SparseAttention,
    /// FLOP of one run.
    pub flops: f64,
    /// Bytes of one run.
    pub bytes: f64,
}

impl AttentionWork {
    /// The record's params for `case` (every backend's attention rows, forward and backward):
    /// model, frames, tokens, heads, head_dim, the mask's density and nnz.
    pub fn params(&self, case: &AttentionCase) -> BTreeMap<String, serde_json::Value> {
        [
            ("model", json!(case.model)),
            ("frames", json!(case.frames)),
            ("tokens", json!(self.op.tokens)),
            ("heads", json!(case.heads)),
            ("head_dim", json!(self.op.head_dim)),
            ("density", json!(self.mask.density())),
            ("nnz", json!(self.mask.nnz())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// How the lengths of an MLA decode shape's requests vary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlaLengths {
    /// Every request `s_k` keys long.
    Uniform,
    /// Long-tailed: a fixed seeded log-uniform draw between [`MLA_SKEW_MIN`] and `s_k` keys
    /// (one request of each bound), as a serving batch mixes short and long conversations.
    Skewed,
}

/// The shortest request of a [`MlaLengths::Skewed`] shape.
pub const MLA_SKEW_MIN: usize = 64;

/// An MLA decode shape: pages of 64 (DeepSeek-V3's layout), the requests' lengths
/// ([`MlaLengths`]) and query counts (`s_q` each, or with `varlen` a fixed seeded draw in
/// `1..=s_q` per request, decoded through [`MlaDecodeVarlen`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaShape {
    /// Requests.
    pub batch: usize,
    /// Keys per request (the longest request for [`MlaLengths::Skewed`]).
    pub s_k: usize,
    /// Query heads.
    pub heads: usize,
    /// Query tokens per request (the most, with `varlen`).
    pub s_q: usize,
    /// FP8 cache (else bf16).
    pub fp8: bool,
    /// How the lengths vary over requests.
    pub lengths: MlaLengths,
    /// Query tokens per request vary (speculative decoding), through [`MlaDecodeVarlen`].
    pub varlen: bool,
}

impl MlaShape {
    /// A shape of `batch` requests of `s_k` keys and `s_q` queries each.
    pub fn uniform(batch: usize, s_k: usize, heads: usize, s_q: usize, fp8: bool) -> Self {
        Self {
            batch,
            s_k,
            heads,
            s_q,
            fp8,
            lengths: MlaLengths::Uniform,
            varlen: false,
        }
    }

    /// The cache layout.
    pub fn layout(&self) -> MlaCacheLayout {
        MlaCacheLayout {
            format: if self.fp8 {
                MlaCacheFormat::Fp8
            } else {
                MlaCacheFormat::Bf16
            },
            ..MlaCacheLayout::default()
        }
    }

    /// The uniform decode (block table of `ceil(s_k / 64)` columns); with `varlen`, the
    /// padded shape of [`MlaShape::varlen_op`].
    pub fn op(&self) -> MlaDecode {
        let layout = self.layout();
        MlaDecode {
            batch: self.batch,
            s_q: self.s_q,
            heads: self.heads,
            max_pages: self.s_k.div_ceil(layout.page_size),
            softmax_scale: 192f32.powf(-0.5),
            layout,
        }
    }

    /// The variable-length decode of [`MlaShape::query_counts`] (`max_s_q = s_q`).
    pub fn varlen_op(&self) -> MlaDecodeVarlen {
        let op = self.op();
        MlaDecodeVarlen {
            batch: op.batch,
            total_q: self.query_counts().iter().sum(),
            max_s_q: op.s_q,
            heads: op.heads,
            max_pages: op.max_pages,
            softmax_scale: op.softmax_scale,
            layout: op.layout,
        }
    }

    /// Keys of each request: `s_k` each, or the skewed draw (seed 41, log-uniform between
    /// [`MLA_SKEW_MIN`] and `s_k`; request 0 has `s_k`, request 1 [`MLA_SKEW_MIN`]).
    pub fn seq_lens(&self) -> Vec<usize> {
        match self.lengths {
            MlaLengths::Uniform => vec![self.s_k; self.batch],
            MlaLengths::Skewed => {
                let (lo, hi) = (MLA_SKEW_MIN.min(self.s_k), self.s_k);
                let mut rng = Rng::new(41);
                (0..self.batch)
                    .map(|b| match b {
                        0 => hi,
                        1 => lo,
                        _ => {
                            let t = rng.uniform_f32((lo as f32).ln(), (hi as f32).ln());
                            (t.exp().round() as usize).clamp(lo, hi)
                        }
                    })
                    .collect()
            }
        }
    }

    /// Query tokens of each request: `s_q` each, or with `varlen` a draw in `1..=s_q` (seed 43;
    /// request 0 has `s_q`).
    pub fn query_counts(&self) -> Vec<usize> {
        if !self.varlen {
            return vec![self.s_q; self.batch];
        }
        let mut rng = Rng::new(43);
        (0..self.batch)
            .map(|b| {
                if b == 0 {
                    self.s_q
                } else {
                    rng.range(1, self.s_q)
                }
            })
            .collect()
    }

    /// The offsets `cu_seqlens_q` of [`MlaShape::query_counts`] (`[batch + 1]`).
    pub fn cu_seqlens_q(&self) -> Vec<i32> {
        let mut cu = vec![0i32];
        for n in self.query_counts() {
            cu.push(cu[cu.len() - 1] + n as i32);
        }
        cu
    }

    /// Pages the shape's block table covers (`batch * ceil(s_k / 64)`; a skewed shape reads
    /// fewer).
    pub fn pages(&self) -> usize {
        self.batch * self.s_k.div_ceil(self.layout().page_size)
    }

    /// The shape key shared with the peers: `b128 sk8192 hq16 sq1 bf16` for uniform shapes,
    /// `b128 sk64-32768 skewed hq16 sq1-2 varlen bf16` for the others.
    pub fn key(&self) -> String {
        let s_k = match self.lengths {
            MlaLengths::Uniform => format!("sk{}", self.s_k),
            MlaLengths::Skewed => format!("sk{}-{} skewed", MLA_SKEW_MIN.min(self.s_k), self.s_k),
        };
        let s_q = if self.varlen {
            format!("sq1-{} varlen", self.s_q)
        } else {
            format!("sq{}", self.s_q)
        };
        format!(
            "b{} {s_k} hq{} {s_q} {}",
            self.batch,
            self.heads,
            if self.fp8 { "fp8" } else { "bf16" }
        )
    }

    /// Keys over all requests: the sum of [`MlaShape::seq_lens`].
    pub fn total_keys(&self) -> usize {
        self.seq_lens().iter().sum()
    }

    /// FLOP (`2 h (576 + 512) Σ_b n_b len_b`, `n_b` queries and `len_b` keys of request `b`:
    /// `2 b s_q h s_k (576 + 512)` for uniform shapes) and bytes (the cache read, q and o) of
    /// one run.
    pub fn flops_bytes(&self) -> (f64, f64) {
        let layout = self.layout();
        let lens = self.seq_lens();
        let counts = self.query_counts();
        let query_keys: usize = lens.iter().zip(&counts).map(|(l, n)| l * n).sum();
        let flops =
            2.0 * (self.heads * query_keys) as f64 * (layout.qk_dim() + layout.latent_dim) as f64;
        let queries: usize = counts.iter().sum();
        let q_o = queries * self.heads * (layout.qk_dim() + layout.latent_dim);
        let bytes = (lens.iter().sum::<usize>() * layout.token_bytes()) as f64 + 2.0 * q_o as f64;
        (flops, bytes)
    }

    /// The shape's parameters for its record.
    pub fn params(&self) -> BTreeMap<String, serde_json::Value> {
        let mut p: BTreeMap<String, serde_json::Value> = [
            ("b", json!(self.batch)),
            ("s_k", json!(self.s_k)),
            ("h_q", json!(self.heads)),
            ("s_q", json!(self.s_q)),
            ("cache", json!(if self.fp8 { "fp8" } else { "bf16" })),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if self.lengths == MlaLengths::Skewed {
            p.insert("lengths".into(), json!("skewed"));
            p.insert("total_keys".into(), json!(self.total_keys()));
        }
        if self.varlen {
            p.insert(
                "queries".into(),
                json!(self.query_counts().iter().sum::<usize>()),
            );
        }
        p
    }
}

/// The shape key of an FP8 GEMM.
pub fn gemm_key(m: usize, n: usize, k: usize) -> String {
    format!("M{m} N{n} K{k}")
}

/// FLOP (`2mnk`) and bytes (A, B, D and the scales) of one FP8 GEMM.
pub fn gemm_flops_bytes(op: &Fp8Gemm) -> (f64, f64) {
    let bytes =
        (op.m * op.k + op.n * op.k + 2 * op.m * op.n + 4 * (op.a_scales_len() + op.b_scales_len()))
            as f64;
    (op.flops(), bytes)
}

/// Operand sets the FP8 GEMM (plain or grouped) rotates over (1 to 16, at least
/// [`ROTATE_BYTES`] in all): each set is A, B and D in full.
pub fn gemm_sets(op: &Fp8Gemm) -> usize {
    let set_bytes = op.a_len() + op.b_len() + 2 * op.d_len();
    ROTATE_BYTES.div_ceil(set_bytes).clamp(1, 16)
}

/// The op name of grouped FP8 GEMM records.
pub const GROUPED_GEMM_OP: &str = "fp8_gemm_grouped";

/// A grouped FP8 GEMM case (mixture of experts, see [`GemmGrouping`]): `rows[g]` rows of
/// group `g` against its own B `[n, k]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupedGemmCase {
    /// Masked (each group has room for `room` rows; the counts are `rows`), else contiguous
    /// (the groups' rows stacked; each but the last a multiple of 128).
    pub masked: bool,
    /// Rows computed per group.
    pub rows: Vec<usize>,
    /// Masked only: rows each group has room for (at least every `rows[g]`).
    pub room: usize,
    /// Columns of D (rows of each group's B).
    pub n: usize,
    /// Reduction length.
    pub k: usize,
}

impl GroupedGemmCase {
    /// Contiguous groups of `rows` rows each.
    pub fn contiguous(rows: &[usize], n: usize, k: usize) -> Self {
        Self {
            masked: false,
            rows: rows.to_vec(),
            room: 0,
            n,
            k,
        }
    }

    /// Masked groups with room for `room` rows each, `rows` of them computed.
    pub fn masked(rows: &[usize], room: usize, n: usize, k: usize) -> Self {
        Self {
            masked: true,
            rows: rows.to_vec(),
            room,
            n,
            k,
        }
    }

    /// Rows computed over all groups.
    pub fn total_rows(&self) -> usize {
        self.rows.iter().sum()
    }

    /// The shape key, e.g. `contiguous 8 groups M18432 N4096 K7168` or
    /// `masked 8 groups of 4096 M18432 N4096 K7168` (M: rows computed over all groups).
    pub fn key(&self) -> String {
        let groups = self.rows.len();
        let plain = gemm_key(self.total_rows(), self.n, self.k);
        if self.masked {
            format!("masked {groups} groups of {} {plain}", self.room)
        } else {
            format!("contiguous {groups} groups {plain}")
        }
    }

    /// The shape of the plain GEMM with the same rows in all, `(M, N, K)`, to compare with.
    pub fn plain_twin(&self) -> (usize, usize, usize) {
        (self.total_rows(), self.n, self.k)
    }

    /// The op (its buffers' layouts: [`GemmGrouping`]).
    pub fn op(&self) -> Fp8Gemm {
        let groups = self.rows.len();
        if self.masked {
            Fp8Gemm::grouped(self.room, self.n, self.k, GemmGrouping::Masked { groups })
        } else {
            Fp8Gemm::grouped(
                self.total_rows(),
                self.n,
                self.k,
                GemmGrouping::Contiguous { groups },
            )
        }
    }

    /// The group layout the op takes: the `groups + 1` row offsets (contiguous) or the
    /// `groups` row counts (masked).
    pub fn group_layout(&self) -> Vec<i32> {
        if self.masked {
            self.rows.iter().map(|&r| r as i32).collect()
        } else {
            std::iter::once(0)
                .chain(self.rows.iter().scan(0, |at, &r| {
                    *at += r;
                    Some(*at as i32)
                }))
                .collect()
        }
    }

    /// FLOP (`2 x rows computed x n x k`) and bytes (A and D of the rows computed, B of every
    /// group, and the scales of those) of one run.
    pub fn flops_bytes(&self) -> (f64, f64) {
        let rows = self.total_rows();
        let groups = self.rows.len();
        let kb = self.k.div_ceil(128);
        let scales = rows * kb + groups * self.n.div_ceil(128) * kb;
        let bytes = rows * self.k + groups * self.n * self.k + 2 * rows * self.n + 4 * scales;
        (2.0 * (rows * self.n * self.k) as f64, bytes as f64)
    }

    /// The record's params: `layout` (`contiguous` or `masked`), `groups`, `rows` (per group),
    /// `total_rows`, `room` (masked), `n`, `k`, and `plain_shape` (the key of the plain GEMM to
    /// compare with).
    pub fn params(&self) -> BTreeMap<String, serde_json::Value> {
        let (m, n, k) = self.plain_twin();
        let mut params = BTreeMap::new();
        let layout = if self.masked { "masked" } else { "contiguous" };
        params.insert("layout".into(), json!(layout));
        params.insert("groups".into(), json!(self.rows.len()));
        params.insert("rows".into(), json!(self.rows));
        params.insert("total_rows".into(), json!(m));
        if self.masked {
            params.insert("room".into(), json!(self.room));
        }
        params.insert("n".into(), json!(n));
        params.insert("k".into(), json!(k));
        params.insert("plain_shape".into(), json!(gemm_key(m, n, k)));
        params
    }
}

/// The shapes of one suite.
pub struct Suite {
    /// FP8 GEMM (M, N, K).
    pub gemm: Vec<(usize, usize, usize)>,
    /// Grouped FP8 GEMM (mixture of experts); each one's plain twin
    /// ([`GroupedGemmCase::plain_twin`]) is in `gemm`.
    pub grouped_gemm: Vec<GroupedGemmCase>,
    /// FP8 quantizers (bf16 in).
    pub quantize: Vec<QuantizeCase>,
    /// MLA decode shapes.
    pub mla: Vec<MlaShape>,
    /// Radial attention cases (each also timed dense).
    pub attention: Vec<AttentionCase>,
}

/// The op name of quantizer records.
pub const QUANTIZE_OP: &str = "fp8_quantize";
/// The quantizer record's parameter holding the time (ms) of a device-to-device copy that moves
/// as many bytes in all (read + write) as the quantizer, timed the same way: the copy ceiling at
/// this size.
pub const QUANTIZE_COPY_MS_PARAM: &str = "copy_same_bytes_ms";

/// An FP8 quantizer case: a bf16 `[rows, cols]` matrix to E4M3 with f32 scales per group
/// (float rule). The bound is memory: bytes = bf16 in + E4M3 out + scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantizeCase {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Activations (1x128) or weights (128x128).
    pub granularity: Fp8Granularity,
}

impl QuantizeCase {
    /// The op.
    pub fn op(&self) -> Fp8Quantize {
        Fp8Quantize {
            rows: self.rows,
            cols: self.cols,
            granularity: self.granularity,
            scale_rule: ScaleRule::Float,
        }
    }

    /// The shape key, e.g. `4096x7168 bf16 1x128`.
    pub fn key(&self) -> String {
        let g = match self.granularity {
            Fp8Granularity::PerToken1x128 => "1x128",
            Fp8Granularity::Block128x128 => "128x128",
        };
        format!("{}x{} bf16 {g}", self.rows, self.cols)
    }

    /// (FLOP, bytes) of one run: no FLOP counted; bytes read and written.
    pub fn flops_bytes(&self) -> (f64, f64) {
        let op = self.op();
        let (sr, sc) = op.scales_shape();
        let elems = (self.rows * self.cols) as f64;
        (0.0, 2.0 * elems + elems + 4.0 * (sr * sc) as f64)
    }
}

impl Suite {
    /// The shapes of `name` for `backend`: `standard` (every shape of FACTS.md) or `quick` (a
    /// small subset, for testing; on Vulkan, shapes that run in seconds on lavapipe).
    pub fn named(name: &str, backend: &str) -> Result<Self, String> {
        match (name, backend) {
            ("standard", _) => Ok(Self::standard()),
            ("quick", "vulkan") => {
                let mut small = AttentionCase::published("hunyuan", 1);
                small.frames = 4;
                small.heads = 2;
                small.config = RadialMaskConfig {
                    frames: 4,
                    tokens_per_frame: 512,
                    ..small.config
                };
                let mla = |fp8| MlaShape::uniform(4, 1024, 16, 1, fp8);
                let grouped_gemm = quick_grouped();
                Ok(Self {
                    gemm: vec![(64, 2112, 7168), grouped_gemm[0].plain_twin()],
                    grouped_gemm,
                    quantize: quick_quantize(),
                    mla: vec![mla(false), mla(true)],
                    attention: vec![small],
                })
            }
            ("quick", _) => {
                let mla = |fp8| MlaShape::uniform(64, 4096, 128, 1, fp8);
                let skewed = MlaShape {
                    lengths: MlaLengths::Skewed,
                    ..MlaShape::uniform(64, 4096, 16, 2, false)
                };
                let grouped_gemm = quick_grouped();
                Ok(Self {
                    gemm: vec![
                        (64, 2112, 7168),
                        (4096, 7168, 2048),
                        grouped_gemm[0].plain_twin(),
                    ],
                    grouped_gemm,
                    quantize: quick_quantize(),
                    mla: vec![
                        mla(false),
                        mla(true),
                        skewed,
                        MlaShape {
                            varlen: true,
                            ..skewed
                        },
                    ],
                    attention: vec![AttentionCase::published("wan", 1)],
                })
            }
            (other, _) => Err(format!("--suite: expected standard or quick, got {other}")),
        }
    }

    fn standard() -> Self {
        let nk = [
            (2112, 7168),
            (24576, 1536),
            (32768, 512),
            (7168, 16384),
            (4096, 7168),
            (7168, 2048),
        ];
        let mut gemm: Vec<_> = [64, 128, 4096]
            .iter()
            .flat_map(|&m| nk.iter().map(move |&(n, k)| (m, n, k)))
            .collect();
        // Mixture of experts: 8 experts of 512 to 4096 rows (18432 in all), stacked or each in
        // a buffer with room for 4096; the plain GEMM of the same rows to compare with.
        let rows: Vec<usize> = (1..=8).map(|g| 512 * g).collect();
        let (n, k) = (4096, 7168);
        let grouped_gemm = vec![
            GroupedGemmCase::contiguous(&rows, n, k),
            GroupedGemmCase::masked(&rows, 4096, n, k),
        ];
        gemm.push(grouped_gemm[0].plain_twin());
        let mut mla = Vec::new();
        for fp8 in [false, true] {
            for batch in [64, 128] {
                for s_k in [4096, 8192, 32768] {
                    for heads in [16, 128] {
                        for s_q in [1, 2] {
                            mla.push(MlaShape::uniform(batch, s_k, heads, s_q, fp8));
                        }
                    }
                }
            }
        }
        // Skewed lengths (b 128, 64 to 32768 keys, long-tailed), each beside the uniform shape of
        // about the same total keys (the mean length rounded to a page); and speculative
        // decoding with 1 to 4 draft tokens per request.
        for fp8 in [false, true] {
            for heads in [16, 128] {
                let skewed = MlaShape {
                    lengths: MlaLengths::Skewed,
                    ..MlaShape::uniform(128, 32768, heads, 1, fp8)
                };
                let mean = skewed.total_keys().div_ceil(skewed.batch);
                mla.push(skewed);
                mla.push(MlaShape::uniform(
                    128,
                    mean.div_ceil(64) * 64,
                    heads,
                    1,
                    fp8,
                ));
                mla.push(MlaShape {
                    s_q: 4,
                    varlen: true,
                    ..skewed
                });
            }
        }
        let attention = ["hunyuan", "wan"]
            .iter()
            .flat_map(|m| [1, 2, 4].map(|x| AttentionCase::published(m, x)))
            .collect();
        // The quantizers at DeepSeek-V3's hidden size: 4096 tokens, and a 7168 x 7168 weight.
        let quantize = vec![
            QuantizeCase {
                rows: 4096,
                cols: 7168,
                granularity: Fp8Granularity::PerToken1x128,
            },
            QuantizeCase {
                rows: 7168,
                cols: 7168,
                granularity: Fp8Granularity::Block128x128,
            },
        ];
        Self {
            gemm,
            grouped_gemm,
            quantize,
            mla,
            attention,
        }
    }
}

/// The quick suite's quantizer: 256 x 1024 activations.
fn quick_quantize() -> Vec<QuantizeCase> {
    vec![QuantizeCase {
        rows: 256,
        cols: 1024,
        granularity: Fp8Granularity::PerToken1x128,
    }]
}

/// The quick suite's grouped cases: 2 groups of 256 and 384 rows, N 1024, K 1024, contiguous
/// and masked (room for 384 each); both have the same plain twin.
fn quick_grouped() -> Vec<GroupedGemmCase> {
    let rows = [256, 384];
    vec![
        GroupedGemmCase::contiguous(&rows, 1024, 1024),
        GroupedGemmCase::masked(&rows, 384, 1024, 1024),
    ]
}

/// The data every executor fills its inputs with (random, never zeros), each from its own
/// seed, so that the backends time the same values.
pub mod data {
    use super::*;

    /// Moderate E4M3 codes (`[2^-3, 2^4]`), a pattern of 4 Mi codes.
    pub fn gemm_codes() -> Vec<u8> {
        let mut rng = Rng::new(11);
        (0..1 << 22).map(|_| rng.moderate_e4m3()).collect()
    }

    /// 4096 scales in `[2^-8, 2^-6)`.
    pub fn gemm_scales() -> Vec<f32> {
        let mut rng = Rng::new(12);
        (0..4096)
            .map(|_| 2f32.powf(rng.uniform_f32(-8.0, -6.0)))
            .collect()
    }

    /// `n` bf16 values uniform in `[-amp, amp)`.
    pub fn bf16s(seed: u64, n: usize, amp: f32) -> Vec<bf16> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| bf16::from_f32(rng.uniform_f32(-amp, amp)))
            .collect()
    }

    /// 256 pages of valid records of `layout` (finite values; FP8 scales 2^-6), repeated to
    /// fill a cache.
    pub fn mla_cache_pattern(layout: &MlaCacheLayout) -> Vec<u8> {
        let tb = layout.token_bytes();
        let mut rng = Rng::new(21);
        let mut pattern = vec![0u8; 256 * layout.page_bytes()];
        for rec in pattern.chunks_exact_mut(tb) {
            layout
                .write_record(
                    rec,
                    &mut rng,
                    |r| r.uniform_f32(-1.0, 1.0),
                    Rng::moderate_e4m3,
                    1.0 / 64.0,
                )
                .expect("records of the layout's token_bytes");
        }
        pattern
    }

    /// A shuffled block table over pages `0..pages`, from `seed`.
    pub fn block_table(seed: u64, pages: usize) -> Vec<i32> {
        let mut table: Vec<i32> = (0..pages as i32).collect();
        Rng::new(seed).shuffle(&mut table);
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_suite_keeps_its_18_gemms_first_and_adds_the_grouped_twin() {
        let suite = Suite::named("standard", "cuda").unwrap();
        assert_eq!(suite.gemm.len(), 19);
        assert_eq!(suite.gemm[0], (64, 2112, 7168));
        assert_eq!(suite.gemm[17], (4096, 7168, 2048));
        assert_eq!(suite.gemm[18], (18432, 4096, 7168));
        let keys: Vec<String> = suite.grouped_gemm.iter().map(|c| c.key()).collect();
        assert_eq!(
            keys,
            [
                "contiguous 8 groups M18432 N4096 K7168",
                "masked 8 groups of 4096 M18432 N4096 K7168"
            ]
        );
    }

    #[test]
    fn every_grouped_case_is_valid_and_its_twin_is_in_the_suite() {
        for (name, backend) in [("standard", "cuda"), ("quick", "cuda"), ("quick", "vulkan")] {
            let suite = Suite::named(name, backend).unwrap();
            assert_eq!(suite.grouped_gemm.len(), 2, "{name} {backend}");
            for case in &suite.grouped_gemm {
                let op = case.op();
                op.validate().unwrap();
                op.validate_group_layout(&case.group_layout()).unwrap();
                assert!(suite.gemm.contains(&case.plain_twin()), "{}", case.key());
                let (m, n, k) = case.plain_twin();
                assert_eq!(case.params()["plain_shape"], gemm_key(m, n, k));
                // The FLOP of the rows computed equal the plain twin's.
                assert_eq!(case.flops_bytes().0, Fp8Gemm::new(m, n, k).flops());
            }
        }
    }

    #[test]
    fn skewed_and_varlen_mla_shapes() {
        let suite = Suite::named("standard", "cuda").unwrap();
        let skewed: Vec<&MlaShape> = suite
            .mla
            .iter()
            .filter(|s| s.lengths == MlaLengths::Skewed)
            .collect();
        assert_eq!(skewed.len(), 8);
        for s in &skewed {
            let lens = s.seq_lens();
            assert_eq!(lens.len(), 128);
            assert_eq!(*lens.iter().max().unwrap(), 32768);
            assert_eq!(*lens.iter().min().unwrap(), 64);
            // Long-tailed: the median well below the mean.
            let mut sorted = lens.clone();
            sorted.sort_unstable();
            assert!(sorted[64] * 3 / 2 < s.total_keys() / 128, "{sorted:?}");
            s.op().validate().unwrap();
            if s.varlen {
                let op = s.varlen_op();
                op.validate_cu_seqlens_q(&s.cu_seqlens_q()).unwrap();
                assert!(s.key().contains("sq1-4 varlen"), "{}", s.key());
            }
        }
        // Every key is distinct (the report joins on them).
        let mut keys: Vec<String> = suite.mla.iter().map(MlaShape::key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), suite.mla.len());
        assert_eq!(
            MlaShape::uniform(64, 4096, 16, 2, true).key(),
            "b64 sk4096 hq16 sq2 fp8"
        );
        // A uniform shape's FLOP and bytes as before.
        let u = MlaShape::uniform(2, 100, 4, 2, false);
        let (f, b) = u.flops_bytes();
        assert_eq!(f, 2.0 * (2 * 2 * 4 * 100) as f64 * 1088.0);
        assert_eq!(
            b,
            (200 * 1152) as f64 + 2.0 * (u.op().q_len() + u.op().o_len()) as f64
        );
    }

    #[test]
    fn grouped_layouts_and_bytes() {
        let c = GroupedGemmCase::contiguous(&[256, 384], 1024, 1024);
        assert_eq!(c.group_layout(), [0, 256, 640]);
        assert_eq!(c.op().total_rows(), 640);
        // A 640x1024 + B 2x1024x1024 + D 2x640x1024 + scales 4 x (640x8 + 2x8x8).
        let bytes = 640 * 1024 + 2 * 1024 * 1024 + 2 * 640 * 1024 + 4 * (640 * 8 + 2 * 8 * 8);
        assert_eq!(
            c.flops_bytes(),
            (2.0 * 640.0 * 1024.0 * 1024.0, bytes as f64)
        );
        let m = GroupedGemmCase::masked(&[256, 384], 384, 1024, 1024);
        assert_eq!(m.group_layout(), [256, 384]);
        assert_eq!(m.op().total_rows(), 768);
        // Bytes count the rows computed, not the room.
        assert_eq!(m.flops_bytes(), c.flops_bytes());
    }
}
