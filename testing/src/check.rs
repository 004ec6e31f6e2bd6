//! Conformance checks: run an op on a backend at a random shape and compare it with the
//! reference (llama.cpp's `test-backend-ops` idea). Used by `tessera check` and by the
//! conformance test suite that every backend instantiates.
//!
//! Each case is plain data (a shape and a seed), so a failure can be replayed. Inputs are drawn
//! from a seeded generator, rounded to the storage type, and the reference runs in f64 on the
//! very same rounded inputs: the only differences left are the backend's own arithmetic and the
//! rounding of its outputs. Tolerances are the constants below.

use crate::Rng;
use std::time::Instant;
use tessera_core::{
    bf16, Backend, BackendKind, BlockMask, DType, Error, Fp8Gemm, Fp8Granularity, Fp8Quantize,
    MlaAppend, MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, RadialMaskConfig, Result,
    ScaleRule, SparseAttention, Tensor,
};
use tessera_reference::{attention as ref_attn, fp8 as ref_fp8, metrics, mla as ref_mla};

/// Relative L2 error allowed on an attention or MLA output stored in bf16 (8 significant bits:
/// the rounding alone gives about 2^-9 / sqrt(3) = 1.1e-3; kernels that round probabilities to
/// bf16 before the second matmul add about as much again).
pub const TOL_REL_L2_BF16: f64 = 1e-2;
/// Relative L2 error allowed on an attention output stored in f16 (11 significant bits).
pub const TOL_REL_L2_F16: f64 = 3e-3;
/// Largest absolute error allowed on a log-sum-exp (f32, natural log).
pub const TOL_LSE_ABS: f64 = 2e-3;
/// Relative L2 error allowed on a gradient of the attention backward in bf16: P and dS are
/// rounded to bf16 for the tensor cores (as P is in the forward), and the errors of dS add up
/// over every key (for dq) or query (for dk) of a row.
pub const TOL_REL_L2_BWD_BF16: f64 = 3e-2;
/// Relative L2 error allowed on a gradient of the attention backward in f16.
pub const TOL_REL_L2_BWD_F16: f64 = 1e-2;
/// `1 - 2Σxy/Σ(x²+y²)` allowed between the backend's bf16 GEMM output and the f64 reference on
/// the same FP8 inputs (bf16 rounding alone gives about 1e-6).
pub const TOL_GEMM_DIFF: f64 = 1e-5;

/// One measured error and its bound.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// What is measured, e.g. `o rel_l2`.
    pub name: &'static str,
    /// The error (NaN fails).
    pub error: f64,
    /// The largest error that passes.
    pub tolerance: f64,
}

impl Metric {
    /// Whether the error is within the tolerance (NaN never is).
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance
    }
}

/// The result of one case on one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckOutcome {
    /// The op.
    pub op: &'static str,
    /// The shape, in words.
    pub shape: String,
    /// The metrics; the case passes when all pass.
    pub metrics: Vec<Metric>,
    /// Seconds the backend call took (host API, transfers included).
    pub seconds: f64,
}

impl CheckOutcome {
    /// Whether every metric passed.
    pub fn passed(&self) -> bool {
        self.metrics.iter().all(Metric::passed)
    }

    /// The first failing metric, if any.
    pub fn first_failure(&self) -> Option<&Metric> {
        self.metrics.iter().find(|m| !m.passed())
    }
}

/// How the attention mask of a case is made.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskSpec {
    /// The radial mask of this configuration.
    Radial(RadialMaskConfig),
    /// A random block mask over `tokens` with about `density` of the blocks on (at least one
    /// per block row, always the diagonal).
    Random {
        /// Tokens (need not be a multiple of the block size).
        tokens: usize,
        /// 64 or 128.
        block_size: usize,
        /// Fraction of blocks on.
        density: f64,
    },
}

impl MaskSpec {
    /// Builds the mask (random masks from `seed`).
    pub fn build(&self, seed: u64) -> Result<BlockMask> {
        match self {
            MaskSpec::Radial(cfg) => cfg.build(),
            MaskSpec::Random {
                tokens,
                block_size,
                density,
            } => {
                let mut rng = Rng::new(seed ^ 0x6d61_736b);
                let nb = tokens.div_ceil(*block_size);
                let bitmap: Vec<bool> = (0..nb * nb)
                    .map(|i| i / nb == i % nb || rng.uniform() < *density)
                    .collect();
                BlockMask::from_dense_bitmap(*tokens, *block_size, &bitmap)
            }
        }
    }
}

/// A sparse-attention case.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionCase {
    /// Batch.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// 64 or 128.
    pub head_dim: usize,
    /// f16 or bf16.
    pub dtype: DType,
    /// The mask.
    pub mask: MaskSpec,
    /// Seed of the inputs.
    pub seed: u64,
}

impl AttentionCase {
    /// Runs the case on `backend` and compares with the reference.
    pub fn run(&self, backend: &dyn Backend) -> Result<CheckOutcome> {
        let mask = self.mask.build(self.seed)?;
        let op = SparseAttention::new(
            self.batch,
            mask.tokens(),
            self.heads,
            self.head_dim,
            self.dtype,
        );
        let mut rng = Rng::new(self.seed);
        let mut input = || Tensor::from_f32(self.dtype, &rng.normals(op.qkv_len()));
        let (q, k, v) = (input(), input(), input());
        let (out, seconds) = timed(backend, || {
            backend.sparse_attention(&op, &mask, q.as_ref(), k.as_ref(), v.as_ref())
        })?;
        let shape = ref_attn::AttentionShape {
            batch: op.batch,
            q_tokens: op.tokens,
            kv_tokens: op.tokens,
            heads: op.heads,
            head_dim: op.head_dim,
        };
        let f64s = |t: &Tensor| t.to_f32_vec().iter().map(|&x| x as f64).collect::<Vec<_>>();
        let want = ref_attn::block_sparse_attention(
            shape,
            &f64s(&q),
            &f64s(&k),
            &f64s(&v),
            op.softmax_scale as f64,
            &mask,
        );
        let got_o = f64s(&out.o);
        let got_lse: Vec<f64> = out.lse.iter().map(|&x| x as f64).collect();
        check_lengths(
            backend.kind(),
            "sparse_attention",
            &[
                ("o", got_o.len(), want.o.len()),
                ("lse", got_lse.len(), want.lse.len()),
            ],
        )?;
        let tol = if self.dtype == DType::F16 {
            TOL_REL_L2_F16
        } else {
            TOL_REL_L2_BF16
        };
        Ok(CheckOutcome {
            op: "sparse_attention",
            shape: format!(
                "b{} t{} h{} d{} {} B{} density {:.2}",
                op.batch,
                op.tokens,
                op.heads,
                op.head_dim,
                self.dtype,
                mask.block_size(),
                mask.density()
            ),
            metrics: vec![
                Metric {
                    name: "o rel_l2",
                    error: metrics::relative_l2_error(&got_o, &want.o),
                    tolerance: tol,
                },
                Metric {
                    name: "lse max_abs",
                    error: metrics::lse_max_error(&got_lse, &want.lse),
                    tolerance: TOL_LSE_ABS,
                },
            ],
            seconds,
        })
    }
}

/// An attention backward case: the backend's own forward gives o and lse, then its backward
/// with a random output gradient is compared with the f64 reference backward from the very same
/// q, k, v, o, lse and dO (so only the backward is judged).
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionBackwardCase {
    /// The shape, mask and inputs, as for the forward.
    pub forward: AttentionCase,
}

impl AttentionBackwardCase {
    /// Runs the case on `backend` and compares with the reference.
    pub fn run(&self, backend: &dyn Backend) -> Result<CheckOutcome> {
        let c = &self.forward;
        let mask = c.mask.build(c.seed)?;
        let op = SparseAttention::new(c.batch, mask.tokens(), c.heads, c.head_dim, c.dtype);
        let mut rng = Rng::new(c.seed);
        let mut input = || Tensor::from_f32(c.dtype, &rng.normals(op.qkv_len()));
        let (q, k, v, d_o) = (input(), input(), input(), input());
        let f = backend.sparse_attention(&op, &mask, q.as_ref(), k.as_ref(), v.as_ref())?;
        let (got, seconds) = timed(backend, || {
            backend.sparse_attention_backward(
                &op,
                &mask,
                q.as_ref(),
                k.as_ref(),
                v.as_ref(),
                f.o.as_ref(),
                &f.lse,
                d_o.as_ref(),
            )
        })?;
        let shape = ref_attn::AttentionShape {
            batch: op.batch,
            q_tokens: op.tokens,
            kv_tokens: op.tokens,
            heads: op.heads,
            head_dim: op.head_dim,
        };
        let f64s = |t: &Tensor| t.to_f32_vec().iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (qf, kf, vf, of, dof) = (f64s(&q), f64s(&k), f64s(&v), f64s(&f.o), f64s(&d_o));
        let lse: Vec<f64> = f.lse.iter().map(|&x| x as f64).collect();
        let want = ref_attn::block_sparse_attention_backward(
            shape,
            ref_attn::BackwardInputs {
                q: &qf,
                k: &kf,
                v: &vf,
                o: &of,
                lse: &lse,
                d_o: &dof,
            },
            op.softmax_scale as f64,
            &mask,
        );
        let (dq, dk, dv) = (f64s(&got.dq), f64s(&got.dk), f64s(&got.dv));
        check_lengths(
            backend.kind(),
            "sparse_attention_backward",
            &[
                ("dq", dq.len(), want.dq.len()),
                ("dk", dk.len(), want.dk.len()),
                ("dv", dv.len(), want.dv.len()),
            ],
        )?;
        let tolerance = backward_tolerance(c.dtype);
        let [e_dq, e_dk, e_dv] = gradient_errors([&dq, &dk, &dv], [&want.dq, &want.dk, &want.dv]);
        let metric = |name, error| Metric {
            name,
            error,
            tolerance,
        };
        Ok(CheckOutcome {
            op: "attention_backward",
            shape: format!(
                "b{} t{} h{} d{} {} B{} density {:.2}",
                op.batch,
                op.tokens,
                op.heads,
                op.head_dim,
                c.dtype,
                mask.block_size(),
                mask.density()
            ),
            metrics: vec![
                metric("dq rel_l2 vs max norm", e_dq),
                metric("dk rel_l2 vs max norm", e_dk),
                metric("dv rel_l2 vs max norm", e_dv),
            ],
            seconds,
        })
    }
}

/// The attention backward's tolerance on [`gradient_errors`] for inputs of `dtype`.
pub fn backward_tolerance(dtype: DType) -> f64 {
    if dtype == DType::F16 {
        TOL_REL_L2_BWD_F16
    } else {
        TOL_REL_L2_BWD_BF16
    }
}

/// The L2 error of each of the three gradients `got` (dq, dk, dv) against `want`, over the
/// largest of the three reference norms: one gradient can be zero in exact arithmetic (dq where
/// every query attends a single key: P = 1, so dS = dO·v - dO·o = 0) while a kernel's f32 sums
/// leave rounding-sized values there. A NaN anywhere gives NaN (which fails any tolerance).
pub fn gradient_errors(got: [&[f64]; 3], want: [&[f64]; 3]) -> [f64; 3] {
    let norm = |x: &mut dyn Iterator<Item = f64>| x.map(|v| v * v).sum::<f64>().sqrt();
    let largest = want
        .iter()
        .map(|w| norm(&mut w.iter().copied()))
        .fold(0.0f64, f64::max)
        .max(1e-300);
    std::array::from_fn(|i| norm(&mut got[i].iter().zip(want[i]).map(|(g, w)| g - w)) / largest)
}

/// `[3, 0, 7]`, or `8x2048` when all lengths are equal.
fn compact_lens(lens: &[usize]) -> String {
    match lens {
        [first, rest @ ..] if rest.len() > 1 && rest.iter().all(|l| l == first) => {
            format!("{}x{first}", lens.len())
        }
        _ => format!("{lens:?}"),
    }
}

/// Runs a backend call and times it. Device backends run it twice and report the second call,
/// so that kernel compilation and module loading stay out of the time; the CPU runs it once.
/// The result of the last call is the one checked.
fn timed<T>(backend: &dyn Backend, mut call: impl FnMut() -> Result<T>) -> Result<(T, f64)> {
    if backend.kind() != BackendKind::Cpu {
        call()?;
    }
    let start = Instant::now();
    let out = call()?;
    Ok((out, start.elapsed().as_secs_f64()))
}

fn check_lengths(
    backend: BackendKind,
    op: &'static str,
    items: &[(&str, usize, usize)],
) -> Result<()> {
    for &(name, got, want) in items {
        if got != want {
            return Err(Error::Device {
                backend,
                message: format!(
                    "{op}: backend returned {got} elements of {name}, expected {want}"
                ),
            });
        }
    }
    Ok(())
}

/// An MLA case: tokens appended through the backend into a NaN-filled cache with a permuted
/// block table, then decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct MlaCase {
    /// Cache layout.
    pub layout: MlaCacheLayout,
    /// Query tokens per request.
    pub s_q: usize,
    /// Query heads.
    pub heads: usize,
    /// Length of each request (0 allowed); the batch is its length.
    pub seq_lens: Vec<usize>,
    /// Seed of the inputs and of the page permutation.
    pub seed: u64,
}

impl MlaCase {
    /// Runs append and decode on `backend` and compares both with the reference: the cache
    /// bytes written must be identical, the decode within tolerance.
    pub fn run(&self, backend: &dyn Backend) -> Result<CheckOutcome> {
        let l = self.layout;
        let mut rng = Rng::new(self.seed);
        let batch = self.seq_lens.len();
        let pages_of = |len: usize| len.div_ceil(l.page_size);
        let max_pages = self
            .seq_lens
            .iter()
            .map(|&n| pages_of(n))
            .max()
            .unwrap_or(0)
            .max(1);
        // One spare page that nobody uses, then a random permutation of all pages.
        let num_pages = self.seq_lens.iter().map(|&n| pages_of(n)).sum::<usize>() + 1;
        let mut perm: Vec<i32> = (0..num_pages as i32).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, rng.range(0, i));
        }
        let mut block_table = vec![-1i32; batch * max_pages];
        let mut next = 0;
        for (b, &len) in self.seq_lens.iter().enumerate() {
            for p in 0..pages_of(len) {
                block_table[b * max_pages + p] = perm[next];
                next += 1;
            }
        }
        // Tokens in order of requests; slot from the block table.
        let total: usize = self.seq_lens.iter().sum();
        let latent: Vec<bf16> = rng
            .normals(total * l.latent_dim)
            .iter()
            .map(|&x| bf16::from_f32(x))
            .collect();
        let rope: Vec<bf16> = rng
            .normals(total * l.rope_dim)
            .iter()
            .map(|&x| bf16::from_f32(x))
            .collect();
        let mut slots = Vec::with_capacity(total);
        for (b, &len) in self.seq_lens.iter().enumerate() {
            for j in 0..len {
                let page = block_table[b * max_pages + j / l.page_size];
                slots.push(page * l.page_size as i32 + (j % l.page_size) as i32);
            }
        }
        let append = MlaAppend { tokens: total };
        let mut cache = MlaCache::new(l, num_pages)?;
        cache.fill_nan();
        let mut want_cache = cache.clone();
        let ((), append_seconds) = timed(backend, || {
            backend.mla_append(&append, &mut cache, &latent, &rope, &slots)
        })?;
        ref_mla::mla_append(&mut want_cache, &latent, &rope, &slots);
        let mismatched_bytes = cache
            .as_bytes()
            .iter()
            .zip(want_cache.as_bytes())
            .filter(|(a, b)| a != b)
            .count();

        let op = MlaDecode {
            batch,
            s_q: self.s_q,
            heads: self.heads,
            max_pages,
            softmax_scale: 192f32.powf(-0.5),
            layout: l,
        };
        let q: Vec<bf16> = rng
            .normals(op.q_len())
            .iter()
            .map(|&x| bf16::from_f32(x))
            .collect();
        let lens: Vec<i32> = self.seq_lens.iter().map(|&n| n as i32).collect();
        // Decode the reference's cache, so that a wrong append does not hide a right decode.
        let (out, decode_seconds) = timed(backend, || {
            backend.mla_decode(&op, &want_cache, &q, &block_table, &lens)
        })?;
        let seconds = append_seconds + decode_seconds;
        let q64: Vec<f64> = q.iter().map(|x| x.to_f64()).collect();
        let want = ref_mla::mla_decode(&op, &want_cache, &q64, &block_table, &lens);
        let got_o: Vec<f64> = out.o.iter().map(|x| x.to_f64()).collect();
        let got_lse: Vec<f64> = out.lse.iter().map(|&x| x as f64).collect();
        check_lengths(
            backend.kind(),
            "mla_decode",
            &[
                ("o", got_o.len(), want.o.len()),
                ("lse", got_lse.len(), want.lse.len()),
            ],
        )?;
        Ok(CheckOutcome {
            op: "mla_append+decode",
            shape: format!(
                "b{} s_q{} h{} lens {} {:?} page {} latent {} rope {}",
                batch,
                self.s_q,
                self.heads,
                compact_lens(&self.seq_lens),
                l.format,
                l.page_size,
                l.latent_dim,
                l.rope_dim
            ),
            metrics: vec![
                Metric {
                    name: "cache bytes differing",
                    error: mismatched_bytes as f64,
                    tolerance: 0.0,
                },
                Metric {
                    name: "o rel_l2",
                    error: metrics::relative_l2_error(&got_o, &want.o),
                    tolerance: TOL_REL_L2_BF16,
                },
                Metric {
                    name: "lse max_abs",
                    error: metrics::lse_max_error(&got_lse, &want.lse),
                    tolerance: TOL_LSE_ABS,
                },
            ],
            seconds,
        })
    }
}

/// An FP8 quantizer case.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeCase {
    /// The quantizer.
    pub op: Fp8Quantize,
    /// Type of the input (f32, f16 or bf16).
    pub input: DType,
    /// Seed.
    pub seed: u64,
}

impl QuantizeCase {
    /// Runs it: codes and scales must equal the reference's bit for bit.
    pub fn run(&self, backend: &dyn Backend) -> Result<CheckOutcome> {
        let mut rng = Rng::new(self.seed);
        // Rows of different magnitudes, so that the scales differ.
        let cols = self.op.cols;
        let x: Vec<f32> = (0..self.op.rows)
            .flat_map(|_| {
                let mag = 2f64.powi(rng.range(0, 16) as i32 - 8);
                (0..cols)
                    .map(|_| (rng.normal() * mag) as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        let x = Tensor::from_f32(self.input, &x);
        let (got, seconds) = timed(backend, || backend.fp8_quantize(&self.op, x.as_ref()))?;
        let want = ref_fp8::quantize(&self.op, &x.to_f32_vec());
        check_lengths(
            backend.kind(),
            "fp8_quantize",
            &[
                ("values", got.values.len(), want.values.len()),
                ("scales", got.scales.len(), want.scales.len()),
            ],
        )?;
        let codes = got
            .values
            .iter()
            .zip(&want.values)
            .filter(|(a, b)| a != b)
            .count();
        let scales = got
            .scales
            .iter()
            .zip(&want.scales)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        Ok(CheckOutcome {
            op: "fp8_quantize",
            shape: format!(
                "{}x{} {} {:?} {:?}",
                self.op.rows, self.op.cols, self.input, self.op.granularity, self.op.scale_rule
            ),
            metrics: vec![
                Metric {
                    name: "codes differing",
                    error: codes as f64,
                    tolerance: 0.0,
                },
                Metric {
                    name: "scales differing",
                    error: scales as f64,
                    tolerance: 0.0,
                },
            ],
            seconds,
        })
    }
}

/// A block-scaled FP8 GEMM case.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmCase {
    /// The GEMM.
    pub op: Fp8Gemm,
    /// Seed.
    pub seed: u64,
}

impl GemmCase {
    /// Runs it against the f64 reference on the same FP8 inputs.
    pub fn run(&self, backend: &dyn Backend) -> Result<CheckOutcome> {
        let Fp8Gemm { m, n, k, .. } = self.op;
        let mut rng = Rng::new(self.seed);
        let qa = Fp8Quantize {
            rows: m,
            cols: k,
            granularity: Fp8Granularity::PerToken1x128,
            scale_rule: ScaleRule::Float,
        };
        let qb = Fp8Quantize {
            rows: n,
            cols: k,
            granularity: Fp8Granularity::Block128x128,
            scale_rule: ScaleRule::Float,
        };
        let a = ref_fp8::quantize(&qa, &rng.normals(m * k));
        let b = ref_fp8::quantize(&qb, &rng.normals(n * k));
        let (got, seconds) = timed(backend, || {
            backend.fp8_gemm(&self.op, &a.values, &a.scales, &b.values, &b.scales)
        })?;
        let want = ref_fp8::fp8_gemm(&self.op, &a.values, &a.scales, &b.values, &b.scales);
        let got: Vec<f64> = got.iter().map(|x| x.to_f64()).collect();
        check_lengths(backend.kind(), "fp8_gemm", &[("d", got.len(), want.len())])?;
        Ok(CheckOutcome {
            op: "fp8_gemm",
            shape: format!("m{m} n{n} k{k}"),
            metrics: vec![
                Metric {
                    name: "1-2Σxy/Σ(x²+y²)",
                    error: metrics::gemm_difference(&got, &want),
                    tolerance: TOL_GEMM_DIFF,
                },
                Metric {
                    name: "d rel_l2",
                    error: metrics::relative_l2_error(&got, &want),
                    tolerance: TOL_REL_L2_BF16,
                },
            ],
            seconds,
        })
    }
}

/// Any case.
#[derive(Clone, Debug, PartialEq)]
pub enum Case {
    /// Sparse attention.
    Attention(AttentionCase),
    /// MLA append + decode.
    Mla(MlaCase),
    /// FP8 quantizer.
    Quantize(QuantizeCase),
    /// FP8 GEMM.
    Gemm(GemmCase),
    /// Sparse attention backward.
    AttentionBackward(AttentionBackwardCase),
}

impl Case {
    /// Runs the case on `backend`.
    pub fn run(&self, backend: &dyn Backend) -> Result<CheckOutcome> {
        match self {
            Case::Attention(c) => c.run(backend),
            Case::Mla(c) => c.run(backend),
            Case::Quantize(c) => c.run(backend),
            Case::Gemm(c) => c.run(backend),
            Case::AttentionBackward(c) => c.run(backend),
        }
    }
}

/// The cases of `tessera check`: every op, several random shapes each (odd sizes, partial
/// blocks, zero-length sequences, both cache formats, both FP8 granularities). `quick` keeps a
/// few small ones.
pub fn standard_cases(quick: bool, seed: u64) -> Vec<Case> {
    let mut rng = Rng::new(seed);
    let reps = if quick { 2 } else { 6 };
    let mut cases = Vec::new();
    // Radial masks of the two published kinds, scaled down, and random masks with partial blocks.
    cases.push(Case::Attention(AttentionCase {
        batch: 1,
        heads: 2,
        head_dim: 128,
        dtype: DType::BF16,
        mask: MaskSpec::Radial(RadialMaskConfig {
            frames: 6,
            tokens_per_frame: 128,
            extra_tokens: 0,
            block_size: 64,
            decay: 0.95,
            sink: false,
        }),
        seed: rng.next_u64(),
    }));
    cases.push(Case::Attention(AttentionCase {
        batch: 1,
        heads: 1,
        head_dim: 64,
        dtype: DType::F16,
        mask: MaskSpec::Radial(RadialMaskConfig {
            frames: 5,
            tokens_per_frame: 100,
            extra_tokens: 37,
            block_size: 64,
            decay: 0.2,
            sink: true,
        }),
        seed: rng.next_u64(),
    }));
    if !quick {
        // One medium, model-like shape per op, whose time is worth reading.
        cases.push(Case::Attention(AttentionCase {
            batch: 1,
            heads: 4,
            head_dim: 128,
            dtype: DType::BF16,
            mask: MaskSpec::Radial(RadialMaskConfig {
                frames: 8,
                tokens_per_frame: 256,
                extra_tokens: 0,
                block_size: 64,
                decay: 0.2,
                sink: true,
            }),
            seed: rng.next_u64(),
        }));
        cases.push(Case::Mla(MlaCase {
            layout: MlaCacheLayout::default(),
            s_q: 1,
            heads: 16,
            seq_lens: vec![2048; 8],
            seed: rng.next_u64(),
        }));
        cases.push(Case::Mla(MlaCase {
            layout: MlaCacheLayout {
                format: MlaCacheFormat::Fp8,
                ..MlaCacheLayout::default()
            },
            s_q: 2,
            heads: 16,
            seq_lens: vec![2048; 8],
            seed: rng.next_u64(),
        }));
        cases.push(Case::Quantize(QuantizeCase {
            op: Fp8Quantize {
                rows: 2048,
                cols: 7168,
                granularity: Fp8Granularity::PerToken1x128,
                scale_rule: ScaleRule::Float,
            },
            input: DType::BF16,
            seed: rng.next_u64(),
        }));
        cases.push(Case::Gemm(GemmCase {
            op: Fp8Gemm::new(128, 2048, 2048),
            seed: rng.next_u64(),
        }));
    }
    for _ in 0..reps {
        let block_size = rng.pick(&[64, 128]);
        cases.push(Case::Attention(AttentionCase {
            batch: rng.range(1, 2),
            heads: rng.range(1, 3),
            head_dim: rng.pick(&[64, 128]),
            dtype: rng.pick(&[DType::F16, DType::BF16]),
            mask: MaskSpec::Random {
                tokens: rng.range(1, if quick { 200 } else { 400 }),
                block_size,
                density: 0.4,
            },
            seed: rng.next_u64(),
        }));
    }
    for i in 0..reps {
        let format = if i % 2 == 0 {
            MlaCacheFormat::Bf16
        } else {
            MlaCacheFormat::Fp8
        };
        let batch = rng.range(1, 4);
        let mut seq_lens: Vec<usize> = (0..batch)
            .map(|_| rng.range(0, if quick { 150 } else { 300 }))
            .collect();
        if i == 0 {
            seq_lens[0] = 0; // a zero-length sequence
        }
        cases.push(Case::Mla(MlaCase {
            layout: MlaCacheLayout {
                page_size: rng.pick(&[1, 16, 64]),
                latent_dim: if i < 2 { 512 } else { rng.pick(&[128, 256]) },
                rope_dim: if i < 2 { 64 } else { rng.pick(&[0, 32]) },
                format,
            },
            s_q: rng.range(1, 3),
            heads: rng.pick(&[1, 3, 16, if quick { 16 } else { 128 }]),
            seq_lens,
            seed: rng.next_u64(),
        }));
    }
    for i in 0..reps {
        let granularity = if i % 2 == 0 {
            Fp8Granularity::PerToken1x128
        } else {
            Fp8Granularity::Block128x128
        };
        cases.push(Case::Quantize(QuantizeCase {
            op: Fp8Quantize {
                rows: rng.range(1, 300),
                cols: rng.range(1, 400),
                granularity,
                scale_rule: if i % 4 < 2 {
                    ScaleRule::Float
                } else {
                    ScaleRule::PowerOfTwo
                },
            },
            input: rng.pick(&[DType::F32, DType::BF16, DType::F16]),
            seed: rng.next_u64(),
        }));
    }
    for _ in 0..reps {
        cases.push(Case::Gemm(GemmCase {
            op: Fp8Gemm::new(
                rng.range(1, 130),
                8 * rng.range(1, 40),
                16 * rng.range(1, if quick { 20 } else { 40 }),
            ),
            seed: rng.next_u64(),
        }));
    }
    cases
}

/// The attention backward cases of `tessera check`, kept apart from [`standard_cases`] (a
/// backend without the backward may return [`Error::Unsupported`]; the CPU reference, CUDA and
/// Vulkan all have it), drawn from their own generator so that the standard cases of a seed
/// stay what they were: a radial mask with extra (text) tokens, and random masks with partial
/// last blocks.
pub fn backward_cases(quick: bool, seed: u64) -> Vec<Case> {
    let mut rng = Rng::new(seed ^ 0x6277_6421);
    let mut cases = vec![Case::AttentionBackward(AttentionBackwardCase {
        forward: AttentionCase {
            batch: 1,
            heads: 2,
            head_dim: 128,
            dtype: DType::BF16,
            mask: MaskSpec::Radial(RadialMaskConfig {
                frames: 4,
                tokens_per_frame: 100,
                extra_tokens: 37,
                block_size: 64,
                decay: 0.5,
                sink: true,
            }),
            seed: rng.next_u64(),
        },
    })];
    for _ in 0..if quick { 2 } else { 4 } {
        cases.push(Case::AttentionBackward(AttentionBackwardCase {
            forward: AttentionCase {
                batch: rng.range(1, 2),
                heads: rng.range(1, 3),
                head_dim: rng.pick(&[64, 128]),
                dtype: rng.pick(&[DType::F16, DType::BF16]),
                mask: MaskSpec::Random {
                    tokens: rng.range(1, if quick { 200 } else { 400 }),
                    block_size: rng.pick(&[64, 128]),
                    density: 0.4,
                },
                seed: rng.next_u64(),
            },
        }));
    }
    cases
}
