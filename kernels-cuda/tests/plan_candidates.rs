//! Every candidate the plans can pick on this GPU, run at small and odd shapes against the f64
//! reference: each candidate is pinned as the plan of its shape class
//! ([`tessera_cuda::plan::PlanCache::pin`]) and run through the backend's host API, whose outputs
//! start as NaN (an element a kernel fails to write shows up). Prints `skipped:` and passes
//! without a CUDA device.

mod common;

use half::bf16;
use tessera_core::{
    Backend, BlockMask, DType, Fp8Gemm, Fp8Granularity, Fp8Quantize, GemmGrouping, MlaAppend,
    MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeVarlen, ScaleRule,
    SparseAttention, Tensor, E4M3,
};
use tessera_cuda::plan::{AttentionShape, KernelSpec, MlaDecodeShape, PlannedOp, QuantizeShape};
use tessera_cuda::CudaBackend;
use tessera_reference::{attention as ref_attn, metrics, mla as ref_mla, CpuBackend};

/// The workspace's one seeded generator, with the E4M3 codes these tests use.
struct Rng(tessera_testing::Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(tessera_testing::Rng::new(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.0.uniform_f32(lo, hi)
    }

    fn e4m3(&mut self) -> E4M3 {
        E4M3::from_bits(self.0.moderate_e4m3())
    }
}

/// Opens CUDA device 0, or prints `skipped: <why>` (a failure where CUDA is required).
fn backend() -> Option<CudaBackend> {
    common::backend()
}

/// (1 - 2Σxy/Σ(x²+y²), rel_l2, all finite).
fn compare(got: &[f64], want: &[f64]) -> (f64, f64, bool) {
    let finite = got.iter().all(|x| x.is_finite());
    let (xy, sq) = got.iter().zip(want).fold((0.0, 0.0), |(xy, sq), (g, w)| {
        (xy + g * w, sq + g * g + w * w)
    });
    (
        1.0 - 2.0 * xy / sq.max(1e-300),
        metrics::relative_l2_error(got, want),
        finite,
    )
}

#[test]
fn every_gemm_candidate_matches_the_reference() {
    let Some(be) = backend() else { return };
    let mut runs = 0;
    for (i, &(m, n, k)) in [
        (37, 2112, 512),
        (100, 2112, 512),
        (1, 8, 16),
        (65, 136, 144),
        (129, 264, 400),
        (200, 392, 48),
    ]
    .iter()
    .enumerate()
    {
        let op = Fp8Gemm::new(m, n, k);
        let mut rng = Rng::new(100 + i as u64);
        let a: Vec<E4M3> = (0..m * k).map(|_| rng.e4m3()).collect();
        let b: Vec<E4M3> = (0..n * k).map(|_| rng.e4m3()).collect();
        let scale = |rng: &mut Rng| 2f32.powf(rng.uniform(-8.0, -6.0));
        let sa: Vec<f32> = (0..op.a_scales_len()).map(|_| scale(&mut rng)).collect();
        let sb: Vec<f32> = (0..op.b_scales_len()).map(|_| scale(&mut rng)).collect();
        let want = tessera_reference::fp8::fp8_gemm(&op, &a, &sa, &b, &sb);
        for c in op.candidates(be.arch_spec()).unwrap() {
            be.plans().pin(&op, c).unwrap();
            let got: Vec<f64> = be
                .fp8_gemm(&op, &a, &sa, &b, &sb)
                .unwrap()
                .iter()
                .map(|x| x.to_f64())
                .collect();
            let (diff, rel, finite) = compare(&got, &want);
            println!(
                "gemm m{m} n{n} k{k} {}: diff {diff:.2e} rel {rel:.2e}",
                c.label()
            );
            assert!(finite, "{} m{m} n{n} k{k}: non-finite output", c.label());
            assert!(
                diff <= 1e-5 && rel <= 1e-2,
                "{} m{m} n{n} k{k}: diff {diff:e} rel {rel:e}",
                c.label()
            );
            runs += 1;
        }
    }
    println!("{runs} GEMM candidate runs passed");
}

/// Grouped GEMMs (mixture of experts): every candidate for contiguous and masked groups, with
/// empty, full and partial groups, and many groups (the kernel looks a tile's group up: a binary
/// search over contiguous offsets, a scan over masked counts); the rows a masked group leaves out
/// must stay NaN.
#[test]
fn every_grouped_gemm_candidate_matches_the_reference() {
    let Some(be) = backend() else { return };
    // 37 contiguous groups over 4500 rows (offsets: multiples of 128, some equal: empty
    // groups) and 33 masked groups of up to 96 rows (counts 0..=96).
    let mut layout_rng = Rng::new(299);
    let mut offsets: Vec<i32> = (0..36)
        .map(|_| (layout_rng.next() % 36) as i32 * 128)
        .collect();
    offsets.push(0);
    offsets.sort_unstable();
    offsets.push(4500);
    let counts: Vec<i32> = (0..33).map(|_| (layout_rng.next() % 97) as i32).collect();
    let cases: [(Fp8Gemm, Vec<i32>); 5] = [
        (
            Fp8Gemm::grouped(4500, 136, 256, GemmGrouping::Contiguous { groups: 37 }),
            offsets,
        ),
        (
            Fp8Gemm::grouped(96, 264, 128, GemmGrouping::Masked { groups: 33 }),
            counts,
        ),
        (
            Fp8Gemm::grouped(484, 264, 400, GemmGrouping::Contiguous { groups: 4 }),
            vec![0, 128, 128, 384, 484],
        ),
        (
            Fp8Gemm::grouped(200, 2112, 512, GemmGrouping::Masked { groups: 3 }),
            vec![0, 200, 77],
        ),
        (
            Fp8Gemm::grouped(64, 136, 144, GemmGrouping::Masked { groups: 2 }),
            vec![1, 63],
        ),
    ];
    let mut runs = 0;
    for (i, (op, layout)) in cases.iter().enumerate() {
        let mut rng = Rng::new(300 + i as u64);
        let a: Vec<E4M3> = (0..op.a_len()).map(|_| rng.e4m3()).collect();
        let b: Vec<E4M3> = (0..op.b_len()).map(|_| rng.e4m3()).collect();
        let scale = |rng: &mut Rng| 2f32.powf(rng.uniform(-8.0, -6.0));
        let sa: Vec<f32> = (0..op.a_scales_len()).map(|_| scale(&mut rng)).collect();
        let sb: Vec<f32> = (0..op.b_scales_len()).map(|_| scale(&mut rng)).collect();
        let want = tessera_reference::fp8::fp8_gemm_grouped(op, &a, &sa, &b, &sb, layout);
        let check = |got: &[bf16], what: &str| {
            let skipped = want.iter().zip(got).all(|(w, g)| w.is_nan() == g.is_nan());
            assert!(
                skipped,
                "{what}: written rows differ from the group layout's"
            );
            let (g, w): (Vec<f64>, Vec<f64>) = got
                .iter()
                .zip(&want)
                .filter(|(_, w)| !w.is_nan())
                .map(|(g, w)| (g.to_f64(), *w))
                .unzip();
            let (diff, rel, finite) = compare(&g, &w);
            println!("{what}: diff {diff:.2e} rel {rel:.2e}");
            assert!(
                finite && diff <= 1e-5 && rel <= 1e-2,
                "{what}: diff {diff:e} rel {rel:e}"
            );
        };
        if !be.arch_spec().wgmma {
            // No grouped kernel: the host API runs one plain GEMM per group.
            let got = be.fp8_gemm_grouped(op, &a, &sa, &b, &sb, layout).unwrap();
            check(&got, &format!("{:?} group by group", op.grouping));
            runs += 1;
            continue;
        }
        for c in op.candidates(be.arch_spec()).unwrap() {
            be.plans().pin(op, c).unwrap();
            let got = be.fp8_gemm_grouped(op, &a, &sa, &b, &sb, layout).unwrap();
            check(&got, &format!("{:?} m{} {}", op.grouping, op.m, c.label()));
            runs += 1;
        }
    }
    println!("{runs} grouped GEMM candidate runs passed");
}

#[test]
fn every_attention_candidate_matches_the_reference() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(7);
    for head_dim in [64, 128] {
        for dtype in [DType::F16, DType::BF16] {
            for (block, tokens) in [(64usize, 200usize), (128, 300), (128, 129), (128, 128)] {
                let blocks = tokens.div_ceil(block);
                // A random mask with the diagonal always on (no empty row).
                let bitmap: Vec<bool> = (0..blocks * blocks)
                    .map(|i| i / blocks == i % blocks || rng.next() % 3 == 0)
                    .collect();
                let mask = BlockMask::from_dense_bitmap(tokens, block, &bitmap).unwrap();
                let op = SparseAttention::new(2, tokens, 3, head_dim, dtype);
                let input = |rng: &mut Rng| {
                    let x: Vec<f32> = (0..op.qkv_len()).map(|_| rng.uniform(-2.0, 2.0)).collect();
                    Tensor::from_f32(dtype, &x)
                };
                let (q, k, v) = (input(&mut rng), input(&mut rng), input(&mut rng));
                let f64s =
                    |t: &Tensor| t.to_f32_vec().iter().map(|&x| x as f64).collect::<Vec<_>>();
                let shape = ref_attn::AttentionShape {
                    batch: op.batch,
                    q_tokens: tokens,
                    kv_tokens: tokens,
                    heads: op.heads,
                    head_dim,
                };
                let want = ref_attn::block_sparse_attention(
                    shape,
                    &f64s(&q),
                    &f64s(&k),
                    &f64s(&v),
                    op.softmax_scale as f64,
                    &mask,
                );
                let plan_shape = AttentionShape {
                    op: &op,
                    block_size: block,
                    mask_density: mask.density(),
                };
                for c in plan_shape.candidates(be.arch_spec()).unwrap() {
                    be.plans().pin(&plan_shape, c).unwrap();
                    let out = be
                        .sparse_attention(&op, &mask, q.as_ref(), k.as_ref(), v.as_ref())
                        .unwrap();
                    let got_o = f64s(&out.o);
                    let got_lse: Vec<f64> = out.lse.iter().map(|&x| x as f64).collect();
                    let rel = metrics::relative_l2_error(&got_o, &want.o);
                    let lse = metrics::lse_max_error(&got_lse, &want.lse);
                    let tol = if dtype == DType::F16 { 3e-3 } else { 1e-2 };
                    println!("attention d{head_dim} {dtype} B{block} t{tokens} {}: rel {rel:.2e} lse {lse:.2e}", c.label());
                    assert!(got_o.iter().all(|x| x.is_finite()), "{}", c.label());
                    assert!(
                        rel <= tol && lse <= 2e-3,
                        "{}: rel {rel} lse {lse}",
                        c.label()
                    );
                }
            }
        }
    }
}

/// A cache of `lens` requests filled through the reference append, with a shuffled block table.
fn mla_inputs(
    layout: MlaCacheLayout,
    lens: &[usize],
    rng: &mut Rng,
) -> (MlaCache, Vec<i32>, usize, Vec<bf16>, Vec<bf16>, Vec<i32>) {
    let pages_of = |n: usize| n.div_ceil(layout.page_size);
    let max_pages = lens.iter().map(|&n| pages_of(n)).max().unwrap_or(0).max(1);
    let num_pages = lens.iter().map(|&n| pages_of(n)).sum::<usize>() + 1;
    let mut perm: Vec<i32> = (0..num_pages as i32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut table = vec![-1i32; lens.len() * max_pages];
    let mut next = 0;
    for (b, &len) in lens.iter().enumerate() {
        for p in 0..pages_of(len) {
            table[b * max_pages + p] = perm[next];
            next += 1;
        }
    }
    let total: usize = lens.iter().sum();
    let latent: Vec<bf16> = (0..total * layout.latent_dim)
        .map(|_| bf16::from_f32(rng.uniform(-2.0, 2.0)))
        .collect();
    let rope: Vec<bf16> = (0..total * layout.rope_dim)
        .map(|_| bf16::from_f32(rng.uniform(-2.0, 2.0)))
        .collect();
    let mut slots = Vec::new();
    for (b, &len) in lens.iter().enumerate() {
        for j in 0..len {
            slots.push(
                table[b * max_pages + j / layout.page_size] * layout.page_size as i32
                    + (j % layout.page_size) as i32,
            );
        }
    }
    let mut cache = MlaCache::new(layout, num_pages).unwrap();
    cache.fill_nan();
    ref_mla::mla_append(&mut cache, &latent, &rope, &slots);
    (cache, table, max_pages, latent, rope, slots)
}

#[test]
fn every_mla_candidate_matches_the_reference() {
    let Some(be) = backend() else { return };
    // DeepSeek-V3's dims in both formats (FP8 also with pages of 16, smaller than a key tile:
    // on sm_90a the Hopper FP8 kernel's 16- and 32-row variants are candidates), run-time dims.
    let layouts = [
        MlaCacheLayout::default(),
        MlaCacheLayout {
            format: MlaCacheFormat::Fp8,
            ..MlaCacheLayout::default()
        },
        MlaCacheLayout {
            page_size: 16,
            format: MlaCacheFormat::Fp8,
            ..MlaCacheLayout::default()
        },
        MlaCacheLayout {
            page_size: 16,
            latent_dim: 256,
            rope_dim: 32,
            format: MlaCacheFormat::Bf16,
        },
        MlaCacheLayout {
            page_size: 7,
            latent_dim: 128,
            rope_dim: 0,
            format: MlaCacheFormat::Fp8,
        },
    ];
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(11);
    // (s_q, heads, lens): odd rows and lengths with an empty request; one long request alone,
    // which the plan splits over CTAs (the combine kernel runs); 4 x 33 rows (three 64-row
    // groups, the last partial) at lengths around a 64-key tile; skewed lengths from 0 to
    // thousands in one batch, which the device schedule splits unevenly (long requests in many
    // pieces, short ones whole, around 1, 63, 64, 65 keys).
    let shapes: [(usize, usize, &[usize]); 5] = [
        (2, 5, &[77, 0, 300]),
        (1, 16, &[1500]),
        (4, 33, &[63, 64, 65, 1]),
        (1, 16, &[0, 1, 63, 64, 65, 3500, 7, 1200, 2, 2000, 64, 4000]),
        (2, 32, &[4000, 65, 0, 900, 63, 1, 2500, 64]),
    ];
    for layout in layouts {
        for &(s_q, heads, lens) in &shapes {
            let (cache, table, max_pages, latent, rope, slots) = mla_inputs(layout, lens, &mut rng);
            // The append (one variant): bytes equal to the reference's.
            let mut appended = MlaCache::new(layout, cache.num_pages()).unwrap();
            appended.fill_nan();
            let mut want_appended = appended.clone();
            let append = MlaAppend {
                tokens: slots.len(),
            };
            be.mla_append(&append, &mut appended, &latent, &rope, &slots)
                .unwrap();
            cpu.mla_append(&append, &mut want_appended, &latent, &rope, &slots)
                .unwrap();
            assert!(
                appended.as_bytes() == want_appended.as_bytes(),
                "append {layout:?}"
            );

            let op = MlaDecode {
                batch: lens.len(),
                s_q,
                heads,
                max_pages,
                softmax_scale: 192f32.powf(-0.5),
                layout,
            };
            let q: Vec<bf16> = (0..op.q_len())
                .map(|_| bf16::from_f32(rng.uniform(-2.0, 2.0)))
                .collect();
            let lens_i32: Vec<i32> = lens.iter().map(|&n| n as i32).collect();
            let q64: Vec<f64> = q.iter().map(|x| x.to_f64()).collect();
            let want = ref_mla::mla_decode(&op, &cache, &q64, &table, &lens_i32);
            let max_len = lens.iter().copied().max().unwrap_or(0);
            let shape = MlaDecodeShape {
                op: &op,
                max_seq_len: max_len,
            };
            for c in shape.candidates(be.arch_spec()).unwrap() {
                be.plans().pin(&shape, c).unwrap();
                let splits = be.mla_decode_plan(&op, max_len).unwrap().splits();
                let out = be.mla_decode(&op, &cache, &q, &table, &lens_i32).unwrap();
                let got_o: Vec<f64> = out.o.iter().map(|x| x.to_f64()).collect();
                let got_lse: Vec<f64> = out.lse.iter().map(|&x| x as f64).collect();
                let rel = metrics::relative_l2_error(&got_o, &want.o);
                let lse = metrics::lse_max_error(&got_lse, &want.lse);
                println!(
                    "mla {:?} latent {} rope {} s_q {s_q} h {heads} lens {lens:?} {} splits {splits}: rel {rel:.2e} lse {lse:.2e}",
                    layout.format, layout.latent_dim, layout.rope_dim, c.label()
                );
                assert!(got_o.iter().all(|x| x.is_finite()), "{}", c.label());
                assert!(
                    rel <= 1e-2 && lse <= 2e-3,
                    "{}: rel {rel} lse {lse}",
                    c.label()
                );
            }
        }
    }
}

/// The variable-length decode (`cu_seqlens_q` offsets) on every candidate tiling: random query
/// counts from 0 to `max_s_q` per request (zero-length requests and requests without queries
/// among them), one long request that the plan splits over CTAs (the varlen combine runs),
/// skewed lengths split unevenly by the device schedule, both cache formats and a
/// run-time-dims layout; outputs start as NaN and must all be written.
#[test]
fn every_mla_varlen_candidate_matches_the_reference() {
    let Some(be) = backend() else { return };
    let layouts = [
        MlaCacheLayout::default(),
        MlaCacheLayout {
            page_size: 128,
            format: MlaCacheFormat::Fp8,
            ..MlaCacheLayout::default()
        },
        MlaCacheLayout {
            page_size: 16,
            latent_dim: 256,
            rope_dim: 32,
            format: MlaCacheFormat::Fp8,
        },
    ];
    let mut rng = Rng::new(12);
    // (max_s_q, heads, lens, query counts); the last two with skewed lengths (0 to thousands,
    // around a 64-key tile), a long request without queries among them.
    let cases: [(usize, usize, &[usize], &[usize]); 5] = [
        (4, 5, &[77, 0, 300, 64, 1, 65], &[3, 2, 0, 4, 1, 4]),
        (2, 16, &[1500, 63], &[2, 1]),
        (3, 128, &[40, 200, 0], &[1, 3, 0]),
        (
            4,
            8,
            &[0, 1, 63, 64, 65, 2500, 3, 900, 4000],
            &[2, 4, 0, 1, 3, 4, 1, 2, 3],
        ),
        (
            2,
            16,
            &[3000, 64, 3500, 1, 65, 0, 63],
            &[2, 1, 0, 2, 1, 2, 2],
        ),
    ];
    // Under the sanitizer, the cases of at most 1500 keys a request (the first three).
    let small = common::under_sanitizer();
    for layout in layouts {
        for &(max_s_q, heads, lens, counts) in &cases {
            if small && lens.iter().any(|&n| n > 1500) {
                continue;
            }
            let (cache, table, max_pages, ..) = mla_inputs(layout, lens, &mut rng);
            let mut cu = vec![0i32];
            for &n in counts {
                cu.push(cu.last().unwrap() + n as i32);
            }
            let op = MlaDecodeVarlen {
                batch: lens.len(),
                total_q: *cu.last().unwrap() as usize,
                max_s_q,
                heads,
                max_pages,
                softmax_scale: 192f32.powf(-0.5),
                layout,
            };
            let q: Vec<bf16> = (0..op.q_len())
                .map(|_| bf16::from_f32(rng.uniform(-2.0, 2.0)))
                .collect();
            let lens_i32: Vec<i32> = lens.iter().map(|&n| n as i32).collect();
            let q64: Vec<f64> = q.iter().map(|x| x.to_f64()).collect();
            let want = ref_mla::mla_decode_varlen(&op, &cache, &q64, &cu, &table, &lens_i32);
            let max_len = lens.iter().copied().max().unwrap_or(0);
            let padded = op.padded();
            let shape = MlaDecodeShape {
                op: &padded,
                max_seq_len: max_len,
            };
            for c in shape.candidates(be.arch_spec()).unwrap() {
                be.plans().pin(&shape, c).unwrap();
                let plan = be.mla_decode_varlen_plan(&op, max_len).unwrap();
                assert!(plan.variant().varlen && plan.variant().tiling() == c.tiling());
                let out = be
                    .mla_decode_varlen(&op, &cache, &q, &cu, &table, &lens_i32)
                    .unwrap();
                let got_o: Vec<f64> = out.o.iter().map(|x| x.to_f64()).collect();
                let got_lse: Vec<f64> = out.lse.iter().map(|&x| x as f64).collect();
                let rel = metrics::relative_l2_error(&got_o, &want.o);
                let lse = metrics::lse_max_error(&got_lse, &want.lse);
                println!(
                    "mla varlen {:?} latent {} max_s_q {max_s_q} h {heads} counts {counts:?} lens {lens:?} {} splits {}: rel {rel:.2e} lse {lse:.2e}",
                    layout.format, layout.latent_dim, c.label(), plan.splits()
                );
                assert!(got_o.iter().all(|x| x.is_finite()), "{}", c.label());
                assert!(
                    got_lse
                        .iter()
                        .zip(&want.lse)
                        .all(|(g, w)| !g.is_nan() && (g.is_finite() == w.is_finite())),
                    "{}: lse not written or -inf mismatch",
                    c.label()
                );
                assert!(
                    rel <= 1e-2 && lse <= 2e-3,
                    "{}: rel {rel} lse {lse}",
                    c.label()
                );
            }
        }
    }
}

#[test]
fn every_quantizer_matches_the_reference_bit_for_bit() {
    let Some(be) = backend() else { return };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(5);
    // Columns not a multiple of 8 take the scalar path, the others the vector path (a partial
    // last group of 40 columns; whole groups). 1600 x 7168 (per token only): enough groups that
    // each warp of the persistent grid walks several batches (on the H200, 5 units of 4 groups
    // per warp for 16-bit inputs and 14 units of 2 for f32), through both of its batch buffers.
    // Per token the candidates are both unit orders (contiguous ranges and interleaved, with
    // their batch sizes): each is pinned and checked.
    let per_token = [Fp8Granularity::PerToken1x128];
    let both = [Fp8Granularity::PerToken1x128, Fp8Granularity::Block128x128];
    for (rows, cols, granularities) in [
        (131, 300, &both[..]),
        (131, 296, &both[..]),
        (3, 1024, &both[..]),
        (1600, 7168, &per_token[..]),
    ] {
        for input in [DType::F32, DType::F16, DType::BF16] {
            for &granularity in granularities {
                for scale_rule in [ScaleRule::Float, ScaleRule::PowerOfTwo] {
                    let op = Fp8Quantize {
                        rows,
                        cols,
                        granularity,
                        scale_rule,
                    };
                    let x: Vec<f32> = (0..op.rows * op.cols)
                        .map(|_| rng.uniform(-3.0, 3.0))
                        .collect();
                    let x = Tensor::from_f32(input, &x);
                    let shape = QuantizeShape { op, input };
                    for c in shape.candidates(be.arch_spec()).unwrap() {
                        be.plans().pin(&shape, c).unwrap();
                        let got = be.fp8_quantize(&op, x.as_ref()).unwrap();
                        let want = cpu.fp8_quantize(&op, x.as_ref()).unwrap();
                        assert!(
                            got == want,
                            "{} {input} {granularity:?} {scale_rule:?} {rows}x{cols}",
                            c.label()
                        );
                    }
                }
            }
        }
    }
}
