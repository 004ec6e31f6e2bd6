//! The benchmark cases, defined once for every executor (`crate::bench_cuda`,
//! `crate::bench_vk`): the shapes of each suite, their keys (shared with the peers and the
//! report), their FLOP and byte counts, and the data patterns the inputs are filled with.

use half::bf16;
use tessera::{
    BlockMask, DType, Fp8Gemm, MlaCacheFormat, MlaCacheLayout, MlaDecode, RadialMaskConfig,
    SparseAttention,
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

/// An MLA decode shape: pages of 64 (DeepSeek-V3's layout), one length for every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaShape {
    /// Requests.
    pub batch: usize,
    /// Keys per request.
    pub s_k: usize,
    /// Query heads.
    pub heads: usize,
    /// Query tokens per request.
    pub s_q: usize,
    /// FP8 cache (else bf16).
    pub fp8: bool,
}

impl MlaShape {
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

    /// The decode (block table of `ceil(s_k / 64)` columns).
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

    /// Pages the shape reads.
    pub fn pages(&self) -> usize {
        self.batch * self.s_k.div_ceil(self.layout().page_size)
    }

    /// The shape key shared with the peers.
    pub fn key(&self) -> String {
        format!(
            "b{} sk{} hq{} sq{} {}",
            self.batch,
            self.s_k,
            self.heads,
            self.s_q,
            if self.fp8 { "fp8" } else { "bf16" }
        )
    }

    /// FLOP (`2 b s_q h s_k (576 + 512)`) and bytes (the cache read, q and o) of one run.
    pub fn flops_bytes(&self) -> (f64, f64) {
        let layout = self.layout();
        let op = self.op();
        let flops = 2.0
            * (self.batch * self.s_q * self.heads * self.s_k) as f64
            * (layout.qk_dim() + layout.latent_dim) as f64;
        let bytes = (self.batch * self.s_k * layout.token_bytes()) as f64
            + 2.0 * (op.q_len() + op.o_len()) as f64;
        (flops, bytes)
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

/// Operand sets the FP8 GEMM rotates over (1 to 16, at least [`ROTATE_BYTES`] in all).
pub fn gemm_sets(op: &Fp8Gemm) -> usize {
    let set_bytes = op.m * op.k + op.n * op.k + 2 * op.m * op.n;
    ROTATE_BYTES.div_ceil(set_bytes).clamp(1, 16)
}

/// The shapes of one suite.
pub struct Suite {
    /// FP8 GEMM (M, N, K).
    pub gemm: Vec<(usize, usize, usize)>,
    /// MLA decode shapes.
    pub mla: Vec<MlaShape>,
    /// Radial attention cases (each also timed dense).
    pub attention: Vec<AttentionCase>,
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
                let mla = |fp8| MlaShape {
                    batch: 4,
                    s_k: 1024,
                    heads: 16,
                    s_q: 1,
                    fp8,
                };
                Ok(Self {
                    gemm: vec![(64, 2112, 7168)],
                    mla: vec![mla(false), mla(true)],
                    attention: vec![small],
                })
            }
            ("quick", _) => {
                let mla = |fp8| MlaShape {
                    batch: 64,
                    s_k: 4096,
                    heads: 128,
                    s_q: 1,
                    fp8,
                };
                Ok(Self {
                    gemm: vec![(64, 2112, 7168), (4096, 7168, 2048)],
                    mla: vec![mla(false), mla(true)],
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
        let gemm = [64, 128, 4096]
            .iter()
            .flat_map(|&m| nk.iter().map(move |&(n, k)| (m, n, k)))
            .collect();
        let mut mla = Vec::new();
        for fp8 in [false, true] {
            for batch in [64, 128] {
                for s_k in [4096, 8192, 32768] {
                    for heads in [16, 128] {
                        for s_q in [1, 2] {
                            mla.push(MlaShape {
                                batch,
                                s_k,
                                heads,
                                s_q,
                                fp8,
                            });
                        }
                    }
                }
            }
        }
        let attention = ["hunyuan", "wan"]
            .iter()
            .flat_map(|m| [1, 2, 4].map(|x| AttentionCase::published(m, x)))
            .collect();
        Self {
            gemm,
            mla,
            attention,
        }
    }
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
            match layout.format {
                MlaCacheFormat::Bf16 => {
                    for v in rec.chunks_exact_mut(2) {
                        v.copy_from_slice(
                            &bf16::from_f32(rng.uniform_f32(-1.0, 1.0)).to_le_bytes(),
                        );
                    }
                }
                MlaCacheFormat::Fp8 => {
                    let (latent, rest) = rec.split_at_mut(layout.latent_dim);
                    latent.iter_mut().for_each(|b| *b = rng.moderate_e4m3());
                    let (sc, rope) = rest.split_at_mut(4 * layout.fp8_groups());
                    for s in sc.chunks_exact_mut(4) {
                        s.copy_from_slice(&(1.0f32 / 64.0).to_le_bytes());
                    }
                    for v in rope.chunks_exact_mut(2) {
                        v.copy_from_slice(
                            &bf16::from_f32(rng.uniform_f32(-1.0, 1.0)).to_le_bytes(),
                        );
                    }
                }
            }
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
