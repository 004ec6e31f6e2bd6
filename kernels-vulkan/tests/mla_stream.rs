//! The MLA decode's shaders, each forced through [`VulkanBackend::mla_decode_plan_with`] and
//! compared with the f64 reference: the streaming shader (`mla_decode_stream`, both builds) at
//! random shapes and tilings (h_q 1..=32, s_q 1..=4, lengths 0, 1, 63, 64, 65 and random, pages
//! of 16 and 64 in permuted block tables, NaN in every unused slot, latent 256 and 512, bf16
//! and FP8 records), the tiled shader at such shapes, the cooperative-matrix shader (every
//! tiling, bf16 and FP8 records) where the device has bf16 cooperative matrices, the
//! cooperative-matrix-2 shader (every tiling the device's granularities allow, bf16 records)
//! where it has `VK_NV_cooperative_matrix2`, the default choice, and the
//! `TESSERA_VULKAN_MLA_DECODE` override. On lavapipe the random shapes also run
//! at subgroup sizes 4 and 16 (`LP_NATIVE_VECTOR_WIDTH`, in a child process), beside the default
//! 8.

use half::bf16;
use tessera_core::{Error, MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeOutput};
use tessera_reference::metrics::{lse_max_error, relative_l2_error};
use tessera_reference::mla as ref_mla;
use tessera_testing::check::{TOL_LSE_ABS, TOL_REL_L2_BF16};
use tessera_testing::Rng;
use tessera_vulkan::{
    Buffer, MatrixComponent, MlaCm2Tiling, MlaCoopmatTiling, MlaDecodeKernel, MlaDecodePlan,
    MlaStreamTiling, VulkanBackend, VulkanFeatures, VulkanSettings,
};

mod common;
use common::{backend, vulkan_required};

/// One decode: its layout, requests and inputs (a cache written by the reference, NaN in every
/// slot no request uses, pages in a random order).
struct Case {
    op: MlaDecode,
    cache: MlaCache,
    q: Vec<bf16>,
    block_table: Vec<i32>,
    seq_lens: Vec<i32>,
}

impl Case {
    fn new(layout: MlaCacheLayout, s_q: usize, heads: usize, lens: &[usize], seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let pages_of = |len: usize| len.div_ceil(layout.page_size);
        let max_pages = lens.iter().map(|&n| pages_of(n)).max().unwrap_or(0).max(1);
        // Two spare pages nobody uses (NaN), then a random permutation of all pages.
        let num_pages = lens.iter().map(|&n| pages_of(n)).sum::<usize>() + 2;
        let mut perm: Vec<i32> = (0..num_pages as i32).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, rng.range(0, i));
        }
        let mut block_table = vec![-1i32; lens.len() * max_pages];
        let mut next = 0;
        for (b, &len) in lens.iter().enumerate() {
            for p in 0..pages_of(len) {
                block_table[b * max_pages + p] = perm[next];
                next += 1;
            }
        }
        let total: usize = lens.iter().sum();
        let normals = |rng: &mut Rng, n: usize| -> Vec<bf16> {
            rng.normals(n).iter().map(|&x| bf16::from_f32(x)).collect()
        };
        let latent = normals(&mut rng, total * layout.latent_dim);
        let rope = normals(&mut rng, total * layout.rope_dim);
        let mut slots = Vec::with_capacity(total);
        for (b, &len) in lens.iter().enumerate() {
            for j in 0..len {
                let page = block_table[b * max_pages + j / layout.page_size];
                slots.push(page * layout.page_size as i32 + (j % layout.page_size) as i32);
            }
        }
        let mut cache = MlaCache::new(layout, num_pages).unwrap();
        cache.fill_nan();
        ref_mla::mla_append(&mut cache, &latent, &rope, &slots);
        let op = MlaDecode {
            batch: lens.len(),
            s_q,
            heads,
            max_pages,
            softmax_scale: 192f32.powf(-0.5),
            layout,
        };
        let q = normals(&mut rng, op.q_len());
        Self {
            op,
            cache,
            q,
            block_table,
            seq_lens: lens.iter().map(|&n| n as i32).collect(),
        }
    }

    /// Runs `plan` (of this case's op) through the device API.
    fn run(&self, b: &VulkanBackend, plan: &MlaDecodePlan) -> MlaDecodeOutput {
        let ctx = b.context();
        let op = &self.op;
        let cache = Buffer::from_bytes(ctx, self.cache.as_bytes()).unwrap();
        let q = Buffer::from_bytes(ctx, bytemuck::cast_slice(&self.q)).unwrap();
        let table = Buffer::from_bytes(ctx, bytemuck::cast_slice(&self.block_table)).unwrap();
        let lens = Buffer::from_bytes(ctx, bytemuck::cast_slice(&self.seq_lens)).unwrap();
        let o = Buffer::filled(ctx, 2 * op.o_len(), &bf16::NAN.to_bits().to_le_bytes()).unwrap();
        let lse = Buffer::filled(ctx, 4 * op.lse_len(), &f32::NAN.to_le_bytes()).unwrap();
        let work = Buffer::filled(
            ctx,
            plan.workspace_bytes() as usize,
            &f32::NAN.to_le_bytes(),
        )
        .unwrap();
        b.run_and_wait(|cmd| {
            // SAFETY: the backend's own command buffer, recording; live storage buffers of its
            // device, kept until the work has completed.
            unsafe {
                b.record_mla_decode_planned(
                    cmd,
                    plan,
                    self.cache.num_pages(),
                    cache.range(),
                    q.range(),
                    table.range(),
                    lens.range(),
                    o.range(),
                    lse.range(),
                    work.range(),
                )
            }
        })
        .unwrap();
        let o = o.read(0, 2 * op.o_len()).unwrap();
        let lse = lse.read(0, 4 * op.lse_len()).unwrap();
        MlaDecodeOutput {
            o: o.chunks_exact(2)
                .map(|h| bf16::from_bits(u16::from_le_bytes([h[0], h[1]])))
                .collect(),
            lse: lse
                .chunks_exact(4)
                .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
                .collect(),
        }
    }

    /// Runs `kernel` and compares with the reference: o within the bf16 tolerance (relative L2
    /// over the whole output and over each request that sees keys), lse within its absolute
    /// tolerance, and exactly `o = 0`, `lse = -inf` for every query that sees no key.
    fn check(&self, b: &VulkanBackend, kernel: MlaDecodeKernel) -> Result<(), String> {
        let plan = b
            .mla_decode_plan_with(&self.op, kernel)
            .map_err(|e| e.to_string())?;
        let got = self.run(b, &plan);
        let q64: Vec<f64> = self.q.iter().map(|x| x.to_f64()).collect();
        let want = ref_mla::mla_decode(
            &self.op,
            &self.cache,
            &q64,
            &self.block_table,
            &self.seq_lens,
        );
        let o: Vec<f64> = got.o.iter().map(|x| x.to_f64()).collect();
        let lse: Vec<f64> = got.lse.iter().map(|&x| x as f64).collect();
        let what = format!("{plan} on {:?} lens {:?}", self.op, self.seq_lens);
        let e = relative_l2_error(&o, &want.o);
        if e.is_nan() || e > TOL_REL_L2_BF16 {
            return Err(format!("{what}: o rel_l2 {e:e}"));
        }
        let per_request = o.len() / self.op.batch;
        for (r, (got_r, want_r)) in o
            .chunks(per_request)
            .zip(want.o.chunks(per_request))
            .enumerate()
        {
            if want_r.iter().any(|&x| x != 0.0) {
                let e = relative_l2_error(got_r, want_r);
                if e.is_nan() || e > TOL_REL_L2_BF16 {
                    return Err(format!("{what}: request {r}: o rel_l2 {e:e}"));
                }
            }
        }
        let e = lse_max_error(&lse, &want.lse);
        if e.is_nan() || e > TOL_LSE_ABS {
            return Err(format!("{what}: lse max error {e:e}"));
        }
        // Queries that see no key: exactly o = 0 and lse = -inf.
        let (s_q, heads, latent) = (self.op.s_q, self.op.heads, self.op.layout.latent_dim);
        for (bi, &len) in self.seq_lens.iter().enumerate() {
            for i in 0..s_q {
                if len as i64 - (s_q - 1 - i) as i64 > 0 {
                    continue;
                }
                for h in 0..heads {
                    let row = (bi * s_q + i) * heads + h;
                    let at = (bi * heads + h) * s_q + i;
                    if got.o[row * latent..(row + 1) * latent]
                        .iter()
                        .any(|x| x.to_f32() != 0.0)
                        || got.lse[at] != f32::NEG_INFINITY
                    {
                        return Err(format!(
                            "{what}: request {bi} query {i} head {h} sees no key: o must be 0, \
                             lse -inf (lse {})",
                            got.lse[at]
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A random shape: h_q 1..=32, s_q 1..=4, 1 to 3 requests with lengths among 0, 1, 63, 64, 65
/// and random ones up to 160, pages of 16 or 64, latent 256 or 512, rope 0, 16 or 64, bf16 or
/// FP8 records.
fn random_case(rng: &mut Rng, seed: u64) -> Case {
    let layout = MlaCacheLayout {
        page_size: [16, 64][rng.below(2)],
        latent_dim: [256, 512][rng.below(2)],
        rope_dim: [0, 16, 64][rng.below(3)],
        format: [MlaCacheFormat::Bf16, MlaCacheFormat::Fp8][rng.below(2)],
    };
    let heads = [1, 2, 3, 5, 8, 16, 16, 32][rng.below(8)];
    let s_q = rng.range(1, 4);
    let batch = rng.range(1, 3);
    let lens: Vec<usize> = (0..batch)
        .map(|_| match rng.below(6) {
            0 => 0,
            1 => 1,
            2 => 63,
            3 => 64,
            4 => 65,
            _ => rng.range(2, 160),
        })
        .collect();
    Case::new(layout, s_q, heads, &lens, seed)
}

/// A random tiling of the streaming shader that fits `op` on this device: any rows per team
/// and key tile, prefetched or not, the build by the default's rule (unrolled loops only
/// where lavapipe compiles them quickly).
fn random_tiling(b: &VulkanBackend, op: &MlaDecode, rng: &mut Rng) -> MlaDecodeKernel {
    let default = match b.mla_decode_plan(op).unwrap().kernel() {
        MlaDecodeKernel::Stream(t) => t,
        // bf16 records on a device with bf16 matrices: the streaming shader as a GPU builds it.
        MlaDecodeKernel::Coopmat(_) | MlaDecodeKernel::Cm2(_) => MlaStreamTiling {
            rows_per_team: 4,
            key_tile: 8,
            prefetch: true,
            unrolled: true,
        },
        MlaDecodeKernel::Tiled => panic!("the streaming shader is supported, and the default"),
    };
    for _ in 0..16 {
        let tiling = MlaStreamTiling {
            rows_per_team: [1, 2, 4][rng.below(3)],
            key_tile: [4, 8, 16][rng.below(3)],
            prefetch: rng.below(2) == 0,
            unrolled: default.unrolled,
        };
        if b.mla_decode_plan_with(op, MlaDecodeKernel::Stream(tiling))
            .is_ok()
        {
            return MlaDecodeKernel::Stream(tiling);
        }
    }
    MlaDecodeKernel::Stream(default)
}

/// Cases of the random-shape test: `TESSERA_MLA_STREAM_CASES` overrides.
fn case_count(default: usize) -> usize {
    std::env::var("TESSERA_MLA_STREAM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The backend if it can run `shader` (`unsupported` is `None`), else `None` after printing
/// `skipped: <why>`. Where `offered` says what the device has that the shader needs (e.g. `lists
/// bf16 matrices`) and `TESSERA_REQUIRE_VULKAN=1` (the GPU machine), not being able to run it
/// is a failure.
fn backend_running(
    shader: &str,
    unsupported: impl Fn(&VulkanBackend) -> Option<String>,
    offered: impl Fn(&VulkanFeatures) -> Option<&'static str>,
) -> Option<VulkanBackend> {
    let b = backend()?;
    let Some(why) = unsupported(&b) else {
        return Some(b);
    };
    if let Some(what) = offered(b.features()) {
        if vulkan_required() && !b.context().settings().portable {
            panic!("the device {what}, but the {shader} decode cannot run: {why}");
        }
    }
    println!("skipped: {why}");
    None
}

/// [`backend_running`] the streaming shader (skipped wherever it cannot run).
fn stream_backend() -> Option<VulkanBackend> {
    backend_running("stream", |b| b.mla_decode_stream_unsupported(), |_| None)
}

#[test]
fn stream_random_shapes_match_reference() {
    let Some(b) = stream_backend() else { return };
    println!("subgroup size {}", b.features().subgroup_size);
    let mut rng = Rng::new(0x5eed_0001);
    for i in 0..case_count(24) {
        let case = random_case(&mut rng, 1000 + i as u64);
        // The default tiling, then a random one.
        let default = b.mla_decode_plan(&case.op).unwrap().kernel();
        case.check(&b, default).unwrap();
        let tiling = random_tiling(&b, &case.op, &mut rng);
        case.check(&b, tiling).unwrap();
    }
}

#[test]
fn tiled_shader_matches_reference_on_the_same_shapes() {
    let Some(b) = backend() else { return };
    let mut rng = Rng::new(0x5eed_0002);
    for i in 0..case_count(24) / 3 {
        let case = random_case(&mut rng, 2000 + i as u64);
        case.check(&b, MlaDecodeKernel::Tiled).unwrap();
    }
}

#[test]
fn unrolled_build_matches_reference() {
    let Some(b) = stream_backend() else { return };
    // Small layouts (lavapipe compiles the unrolled build of large ones for minutes): every
    // rows-per-team and key tile, prefetched or not, both formats, several tiles per split.
    let mut seed = 77;
    for (format, latent_dim, rope_dim) in [
        (MlaCacheFormat::Bf16, 64, 16),
        (MlaCacheFormat::Fp8, 128, 16),
    ] {
        for (rows_per_team, key_tile, prefetch) in [(4, 8, true), (4, 16, false), (1, 4, true)] {
            let layout = MlaCacheLayout {
                page_size: 16,
                latent_dim,
                rope_dim,
                format,
            };
            seed += 1;
            let case = Case::new(layout, 2, 8, &[65, 0, 37], seed);
            let tiling = MlaStreamTiling {
                rows_per_team,
                key_tile,
                prefetch,
                unrolled: true,
            };
            case.check(&b, MlaDecodeKernel::Stream(tiling)).unwrap();
        }
    }
}

#[test]
fn deepseek_shapes_match_reference() {
    let Some(b) = stream_backend() else { return };
    // DeepSeek-V3's layout at the benchmark's head counts (16 with s_q 1 and 2, 32, and 128 in
    // row groups), both formats, pages of 64, with the shader the plan picks for each.
    for format in [MlaCacheFormat::Bf16, MlaCacheFormat::Fp8] {
        let layout = MlaCacheLayout {
            format,
            ..MlaCacheLayout::default()
        };
        let coopmat = b.mla_decode_coopmat_unsupported().is_none();
        let cm2 = b.mla_decode_cm2_unsupported().is_none();
        for (heads, s_q) in [(16, 1), (16, 2), (32, 1), (128, 1)] {
            let case = Case::new(layout, s_q, heads, &[130, 64, 1], 5 + heads as u64);
            let plan = b.mla_decode_plan(&case.op).unwrap();
            if coopmat {
                assert_eq!(plan.kernel().name(), "coopmat", "{plan}");
                assert_eq!(plan.rows_per_workgroup(), 16, "{plan}");
            } else if cm2 && format == MlaCacheFormat::Bf16 && heads * s_q >= 32 {
                assert_eq!(plan.kernel().name(), "cm2", "{plan}");
                assert!(plan.rows_per_workgroup() >= 32, "{plan}");
            } else {
                assert_eq!(plan.kernel().name(), "stream", "{plan}");
                assert!(plan.rows_per_workgroup() <= 32, "{plan}");
            }
            case.check(&b, plan.kernel()).unwrap();
        }
    }
}

#[test]
fn plans_say_what_runs_and_refuse_bad_tilings() {
    let Some(b) = stream_backend() else { return };
    let op = MlaDecode {
        batch: 64,
        s_q: 2,
        heads: 16,
        max_pages: 64,
        softmax_scale: 0.1,
        // FP8 records of latent 256: the streaming shader on every device.
        layout: MlaCacheLayout {
            format: MlaCacheFormat::Fp8,
            latent_dim: 256,
            ..MlaCacheLayout::default()
        },
    };
    let plan = b.mla_decode_plan(&op).unwrap();
    // Every row of a request shares one pass over its keys.
    assert_eq!(plan.rows_per_workgroup(), 32, "{plan}");
    assert_eq!(plan.workgroups(), 64 * plan.splits());
    assert_eq!(
        plan.workspace_bytes(),
        4 * 64 * plan.splits() * 32 * (256 + 1)
    );
    assert_eq!(
        b.mla_decode_workspace_bytes(&op).unwrap(),
        plan.workspace_bytes()
    );
    assert!(plan.to_string().starts_with("stream ("), "{plan}");
    let tiled = b.mla_decode_plan_with(&op, MlaDecodeKernel::Tiled).unwrap();
    assert_eq!(tiled.kernel(), MlaDecodeKernel::Tiled);
    assert!(tiled.to_string().starts_with("tiled, "), "{tiled}");

    let with = |rows_per_team, key_tile| {
        b.mla_decode_plan_with(
            &op,
            MlaDecodeKernel::Stream(MlaStreamTiling {
                rows_per_team,
                key_tile,
                prefetch: false,
                unrolled: false,
            }),
        )
    };
    match with(3, 8) {
        Err(Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "tiling.rows_per_team"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match with(4, 32) {
        Err(Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "tiling.key_tile"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    // Latent 1024 + rope 256 in 16-key f32 tiles: 80 KiB of shared memory.
    let wide = MlaDecode {
        layout: MlaCacheLayout {
            latent_dim: 1024,
            rope_dim: 256,
            ..MlaCacheLayout::default()
        },
        ..op.clone()
    };
    let shared = b.features().max_shared_memory_bytes;
    if shared < 16 * 1280 * 4 {
        let wide_plan = b.mla_decode_plan_with(
            &wide,
            MlaDecodeKernel::Stream(MlaStreamTiling {
                rows_per_team: 4,
                key_tile: 16,
                prefetch: false,
                unrolled: false,
            }),
        );
        assert!(
            matches!(wide_plan, Err(Error::Unsupported { .. })),
            "{wide_plan:?}"
        );
    }
    // The default fits any layout.
    b.mla_decode_plan(&wide).unwrap();
}

#[test]
fn the_override_setting_picks_the_shader() {
    let Some(b) = stream_backend() else { return };
    drop(b);
    let open = |value: &str| {
        VulkanBackend::with_settings(VulkanSettings {
            mla_decode: Some(value.to_string()),
            ..VulkanSettings::from_env()
        })
        .unwrap()
    };
    let op = MlaDecode {
        batch: 2,
        s_q: 1,
        heads: 16,
        max_pages: 4,
        softmax_scale: 0.1,
        layout: MlaCacheLayout::default(),
    };
    let kernel = |b: &VulkanBackend| b.mla_decode_plan(&op).map(|p| p.kernel());
    assert_eq!(kernel(&open("tiled")).unwrap(), MlaDecodeKernel::Tiled);
    assert_eq!(kernel(&open(" stream ")).unwrap().name(), "stream");
    assert_eq!(
        kernel(&open("stream:2,4,1,0")).unwrap(),
        MlaDecodeKernel::Stream(MlaStreamTiling {
            rows_per_team: 2,
            key_tile: 4,
            prefetch: true,
            unrolled: false,
        })
    );
    // The cooperative-matrix shader: parsed everywhere, planned where the device has it.
    let with_coopmat = open("coopmat:16,0");
    let coopmat = with_coopmat.mla_decode_plan(&op);
    match with_coopmat.mla_decode_coopmat_unsupported() {
        None => assert_eq!(
            coopmat.unwrap().kernel(),
            MlaDecodeKernel::Coopmat(MlaCoopmatTiling {
                key_tile: 16,
                prefetch: false,
            })
        ),
        Some(_) => assert!(
            matches!(coopmat, Err(Error::Unsupported { .. })),
            "{coopmat:?}"
        ),
    }
    drop(with_coopmat);
    // The cooperative-matrix-2 shader: the same.
    let with_cm2 = open("cm2:64,32");
    let cm2 = with_cm2.mla_decode_plan(&op);
    match with_cm2.mla_decode_cm2_unsupported() {
        None => assert_eq!(
            cm2.unwrap().kernel(),
            MlaDecodeKernel::Cm2(MlaCm2Tiling {
                rows: 64,
                key_tile: 32,
            })
        ),
        Some(_) => assert!(matches!(cm2, Err(Error::Unsupported { .. })), "{cm2:?}"),
    }
    drop(with_cm2);
    for bad in [
        "fast",
        "stream:4,8",
        "stream:4,8,2,1",
        "stream:a,8,1,1",
        "coopmat:32",
        "coopmat:32,2",
        "cm2:64",
        "cm2:x,32",
    ] {
        match kernel(&open(bad)) {
            Err(Error::InvalidArgument { arg, .. }) => {
                assert_eq!(arg, tessera_vulkan::MLA_DECODE_ENV, "{bad}")
            }
            other => panic!("{bad}: expected InvalidArgument, got {other:?}"),
        }
    }
}

/// [`backend_running`] the cooperative-matrix shader (a failure on the GPU machine where the
/// device lists bf16 16x16x16 matrices in subgroup scope).
fn coopmat_backend() -> Option<VulkanBackend> {
    backend_running(
        "coopmat",
        |b| b.mla_decode_coopmat_unsupported(),
        |f| {
            f.has_cooperative_matrix_16x16x16(MatrixComponent::BF16, MatrixComponent::F32)
                .then_some("lists bf16 matrices")
        },
    )
}

/// Every tiling of the cooperative-matrix shader.
const COOPMAT_TILINGS: [MlaCoopmatTiling; 4] = [
    MlaCoopmatTiling {
        key_tile: 32,
        prefetch: true,
    },
    MlaCoopmatTiling {
        key_tile: 32,
        prefetch: false,
    },
    MlaCoopmatTiling {
        key_tile: 16,
        prefetch: true,
    },
    MlaCoopmatTiling {
        key_tile: 16,
        prefetch: false,
    },
];

#[test]
fn coopmat_random_shapes_match_reference() {
    let Some(b) = coopmat_backend() else { return };
    let mut rng = Rng::new(0x5eed_0003);
    let mut ran = 0;
    for i in 0..case_count(24) {
        let case = random_case(&mut rng, 3000 + i as u64);
        let layout = case.op.layout;
        let kernel = MlaDecodeKernel::Coopmat(COOPMAT_TILINGS[i % COOPMAT_TILINGS.len()]);
        // bf16 records, and FP8 ones whose parts start at 16-byte boundaries.
        if layout.format == MlaCacheFormat::Bf16 || layout.latent_dim % 512 == 0 {
            case.check(&b, kernel).unwrap();
            ran += 1;
        } else {
            let plan = b.mla_decode_plan_with(&case.op, kernel);
            assert!(matches!(plan, Err(Error::Unsupported { .. })), "{plan:?}");
        }
    }
    assert!(ran >= 8, "only {ran} cases ran");
}

#[test]
fn coopmat_every_tiling_at_deepseek_shapes() {
    let Some(b) = coopmat_backend() else { return };
    // Both record formats; long enough for several tiles per split, lengths that end inside a
    // tile, an empty request, s_q 1..=3 (rows that see fewer keys), 16, 24 (a partial row
    // group) and 128 heads.
    let mut seed = 600;
    for (tiling, format) in COOPMAT_TILINGS
        .into_iter()
        .flat_map(|t| [(t, MlaCacheFormat::Bf16), (t, MlaCacheFormat::Fp8)])
    {
        let layout = MlaCacheLayout {
            format,
            ..MlaCacheLayout::default()
        };
        for (heads, s_q, lens) in [
            (16, 1, vec![1000, 33, 0]),
            (16, 2, vec![257, 64]),
            (24, 3, vec![95, 1, 130]),
            (128, 1, vec![300]),
        ] {
            seed += 1;
            let case = Case::new(layout, s_q, heads, &lens, seed);
            case.check(&b, MlaDecodeKernel::Coopmat(tiling)).unwrap();
        }
    }
}

#[test]
fn coopmat_refuses_what_it_cannot_run() {
    let Some(b) = coopmat_backend() else { return };
    let op = |format, latent_dim, rope_dim| MlaDecode {
        batch: 2,
        s_q: 1,
        heads: 16,
        max_pages: 4,
        softmax_scale: 0.1,
        layout: MlaCacheLayout {
            format,
            latent_dim,
            rope_dim,
            ..MlaCacheLayout::default()
        },
    };
    let tiling = MlaDecodeKernel::Coopmat(COOPMAT_TILINGS[0]);
    // FP8 records of latent 256 (parts off 16-byte boundaries): the streaming shader.
    let fp8 = op(MlaCacheFormat::Fp8, 256, 64);
    let plan = b.mla_decode_plan_with(&fp8, tiling);
    assert!(matches!(plan, Err(Error::Unsupported { .. })), "{plan:?}");
    let default = b.mla_decode_plan(&fp8).unwrap();
    assert_eq!(default.kernel().name(), "stream", "{default}");
    // Latent 1024 + rope 256: 32-key tiles need 90 KiB of shared memory, 16-key ones fit 48.
    let wide = op(MlaCacheFormat::Bf16, 1024, 256);
    if b.features().max_shared_memory_bytes < 90 * 1024 {
        let plan = b.mla_decode_plan_with(&wide, tiling);
        assert!(matches!(plan, Err(Error::Unsupported { .. })), "{plan:?}");
    }
    b.mla_decode_plan(&wide).unwrap();
    let bad = b.mla_decode_plan_with(
        &op(MlaCacheFormat::Bf16, 512, 64),
        MlaDecodeKernel::Coopmat(MlaCoopmatTiling {
            key_tile: 64,
            prefetch: true,
        }),
    );
    match bad {
        Err(Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "tiling.key_tile"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let plan = b
        .mla_decode_plan(&op(MlaCacheFormat::Bf16, 512, 64))
        .unwrap();
    assert!(
        plan.to_string()
            .starts_with("coopmat (32-key tiles), 16 rows"),
        "{plan}"
    );
}

/// [`backend_running`] the cooperative-matrix-2 shader (a failure on the GPU machine where the
/// device has `VK_NV_cooperative_matrix2` enabled).
fn cm2_backend() -> Option<VulkanBackend> {
    backend_running(
        "cm2",
        |b| b.mla_decode_cm2_unsupported(),
        |f| {
            f.cooperative_matrix2_nv
                .then_some("has VK_NV_cooperative_matrix2")
        },
    )
}

/// Every tiling of the cooperative-matrix-2 shader (the device's granularities may refuse some:
/// on the H200, 16-key tiles at 64 rows).
const CM2_TILINGS: [MlaCm2Tiling; 6] = [
    MlaCm2Tiling {
        rows: 32,
        key_tile: 32,
    },
    MlaCm2Tiling {
        rows: 64,
        key_tile: 64,
    },
    MlaCm2Tiling {
        rows: 32,
        key_tile: 64,
    },
    MlaCm2Tiling {
        rows: 32,
        key_tile: 16,
    },
    MlaCm2Tiling {
        rows: 64,
        key_tile: 32,
    },
    MlaCm2Tiling {
        rows: 64,
        key_tile: 16,
    },
];

/// Runs `kernel` on `case` where the plan accepts it; `Ok(false)` where the plan refuses it as
/// unsupported (a page size the key tile does not divide, a granularity), which it must say.
fn check_if_planned(
    b: &VulkanBackend,
    case: &Case,
    kernel: MlaDecodeKernel,
) -> Result<bool, String> {
    match b.mla_decode_plan_with(&case.op, kernel) {
        Ok(_) => case.check(b, kernel).map(|()| true),
        Err(Error::Unsupported { reason, .. }) => {
            assert!(
                reason.contains("page size") || reason.contains("granularities"),
                "{kernel}: {reason}"
            );
            Ok(false)
        }
        Err(e) => Err(format!("{kernel}: {e}")),
    }
}

#[test]
fn cm2_random_shapes_match_reference() {
    let Some(b) = cm2_backend() else { return };
    let mut rng = Rng::new(0x5eed_0004);
    let mut ran = 0;
    for i in 0..case_count(24) {
        let case = random_case(&mut rng, 4000 + i as u64);
        let kernel = MlaDecodeKernel::Cm2(CM2_TILINGS[i % CM2_TILINGS.len()]);
        if case.op.layout.format == MlaCacheFormat::Fp8 {
            let plan = b.mla_decode_plan_with(&case.op, kernel);
            assert!(matches!(plan, Err(Error::Unsupported { .. })), "{plan:?}");
        } else if check_if_planned(&b, &case, kernel).unwrap() {
            ran += 1;
        }
    }
    assert!(ran >= 6, "only {ran} cases ran");
}

#[test]
fn cm2_every_tiling_at_deepseek_shapes() {
    let Some(b) = cm2_backend() else { return };
    // Long enough for several tiles per split, lengths that end inside a tile, an empty
    // request, s_q 1..=3 (rows that see fewer keys), 16 rows (half a 32-row group), 72 (partial
    // groups) and 128 heads; a bad page (-1 in the table) in the last case.
    let mut seed = 700;
    let mut ran = 0;
    for tiling in CM2_TILINGS {
        for (heads, s_q, lens) in [
            (16, 2, vec![1000, 33, 0]),
            (16, 1, vec![257, 64]),
            (24, 3, vec![95, 1, 130]),
            (128, 1, vec![300]),
            (128, 2, vec![130, 0, 65]),
        ] {
            seed += 1;
            let case = Case::new(MlaCacheLayout::default(), s_q, heads, &lens, seed);
            ran += usize::from(check_if_planned(&b, &case, MlaDecodeKernel::Cm2(tiling)).unwrap());
        }
    }
    assert!(ran >= 10, "only {ran} cases ran");
}

#[test]
fn cm2_plans_only_without_coopmat_and_refuses_what_it_cannot_run() {
    let Some(b) = cm2_backend() else { return };
    let op = |format, heads, s_q| MlaDecode {
        batch: 4,
        s_q,
        heads,
        max_pages: 8,
        softmax_scale: 0.1,
        layout: MlaCacheLayout {
            format,
            ..MlaCacheLayout::default()
        },
    };
    let plan = |format, heads, s_q| {
        b.mla_decode_plan(&op(format, heads, s_q))
            .unwrap()
            .to_string()
    };
    let bf16 = MlaCacheFormat::Bf16;
    // The cooperative-matrix shader where it runs (faster at every row count on the H200),
    // else cm2 from 32 rows of bf16 records; FP8 records: never cm2.
    let coopmat = b.mla_decode_coopmat_unsupported().is_none();
    for (heads, s_q, cm2_plan) in [
        (16, 2, "cm2 (32-key tiles), 32 rows"),
        (128, 1, "cm2 (64-key tiles), 64 rows"),
    ] {
        let p = plan(bf16, heads, s_q);
        if coopmat {
            assert!(p.starts_with("coopmat (32-key tiles), 16 rows"), "{p}");
        } else {
            assert!(p.starts_with(cm2_plan), "{p}");
        }
    }
    assert!(
        !plan(bf16, 16, 1).starts_with("cm2"),
        "{}",
        plan(bf16, 16, 1)
    );
    assert!(!plan(MlaCacheFormat::Fp8, 128, 1).starts_with("cm2"));
    let t = MlaDecodeKernel::Cm2(CM2_TILINGS[0]);
    let fp8 = b.mla_decode_plan_with(&op(MlaCacheFormat::Fp8, 128, 1), t);
    assert!(matches!(fp8, Err(Error::Unsupported { .. })), "{fp8:?}");
    for (rows, key_tile, arg) in [(16, 32, "tiling.rows"), (32, 128, "tiling.key_tile")] {
        let bad = b.mla_decode_plan_with(
            &op(bf16, 16, 2),
            MlaDecodeKernel::Cm2(MlaCm2Tiling { rows, key_tile }),
        );
        match bad {
            Err(Error::InvalidArgument { arg: a, .. }) => assert_eq!(a, arg),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
}

/// Reruns [`stream_random_shapes_match_reference`] in a child process with lavapipe's vectors
/// set to 128 and 512 bits (subgroups of 4 and 16): the butterfly's steps and the lanes'
/// columns depend on the subgroup size. A width that does not give its subgroup size on this
/// machine is reported and skipped.
#[test]
fn stream_random_shapes_at_other_subgroup_sizes() {
    const CHILD: &str = "TESSERA_MLA_STREAM_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return; // the child itself
    }
    let Some(b) = stream_backend() else { return };
    if !b.features().name.starts_with("llvmpipe") {
        println!(
            "skipped: the subgroup size is set only on lavapipe ({})",
            b.features().name
        );
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for (bits, subgroup) in [(128, 4), (512, 16)] {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "stream_random_shapes_match_reference",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LP_NATIVE_VECTOR_WIDTH", bits.to_string())
            .env(CHILD, "1")
            .env("TESSERA_MLA_STREAM_CASES", "8")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{bits}-bit vectors:\n{text}");
        // (The harness may print the test's name on the same line.)
        let got = text
            .split("subgroup size ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("none");
        if got == subgroup.to_string() {
            println!("subgroups of {subgroup}: passed");
        } else {
            println!("skipped: {bits}-bit vectors give subgroups of {got} here, not {subgroup}");
        }
    }
}

/// The backend without stored plans or the override setting (the heuristic decides), where it
/// opens and runs the streaming shader (as [`stream_backend`]; one backend opened).
fn heuristic_backend() -> Option<VulkanBackend> {
    let b = common::backend_with(|s| s.mla_decode = None)?;
    match b.mla_decode_stream_unsupported() {
        Some(why) => {
            println!("skipped: {why}");
            None
        }
        None => Some(b),
    }
}

#[test]
fn every_candidate_matches_reference() {
    let Some(b) = heuristic_backend() else { return };
    let fp8 = MlaCacheLayout {
        format: MlaCacheFormat::Fp8,
        ..MlaCacheLayout::default()
    };
    let cases = [
        Case::new(MlaCacheLayout::default(), 2, 16, &[63, 64, 65, 1], 71),
        Case::new(fp8, 1, 5, &[77, 0, 130], 72),
    ];
    for case in &cases {
        let candidates = b.mla_decode_candidates(&case.op).unwrap();
        // The heuristic's pick first, no repeats.
        assert_eq!(
            candidates[0],
            b.mla_decode_plan(&case.op).unwrap().kernel(),
            "{:?}",
            case.op
        );
        for (i, k) in candidates.iter().enumerate() {
            assert!(!candidates[..i].contains(k), "{k:?} twice");
        }
        println!("{:?}: {} candidates", case.op, candidates.len());
        for &k in &candidates {
            case.check(&b, k).unwrap();
        }
    }
}

#[test]
fn a_stored_plan_is_used_where_it_runs() {
    use tessera_vulkan::plan::MlaDecodeClass;
    let Some(b) = heuristic_backend() else { return };
    let op = |batch| MlaDecode {
        batch,
        s_q: 2,
        heads: 16,
        max_pages: 3,
        softmax_scale: 0.1,
        layout: MlaCacheLayout::default(),
    };
    let candidates = b.mla_decode_candidates(&op(4)).unwrap();
    let heuristic = candidates[0];
    let Some(&other) = candidates.last().filter(|&&k| k != heuristic) else {
        println!("skipped: one candidate only on this device");
        return;
    };
    b.plans().set_mla_decode(MlaDecodeClass::of(&op(4)), other);
    assert_eq!(b.mla_decode_plan(&op(4)).unwrap().kernel(), other);
    // The same class (batch 3 rounds up to 4), another class.
    assert_eq!(b.mla_decode_plan(&op(3)).unwrap().kernel(), other);
    assert_eq!(
        b.mla_decode_plan(&op(5)).unwrap().kernel(),
        b.mla_decode_candidates(&op(5)).unwrap()[0]
    );
    // A stored plan the device cannot run for the op: the heuristic instead.
    let invalid = MlaDecodeKernel::Stream(MlaStreamTiling {
        rows_per_team: 3,
        key_tile: 8,
        prefetch: true,
        unrolled: false,
    });
    b.plans()
        .set_mla_decode(MlaDecodeClass::of(&op(4)), invalid);
    assert_eq!(b.mla_decode_plan(&op(4)).unwrap().kernel(), heuristic);
    // The setting overrides a stored plan.
    drop(b);
    let with_setting = VulkanBackend::with_settings(VulkanSettings {
        mla_decode: Some("tiled".into()),
        plan_dir: None,
        ..VulkanSettings::from_env()
    })
    .unwrap();
    with_setting
        .plans()
        .set_mla_decode(MlaDecodeClass::of(&op(4)), other);
    assert_eq!(
        with_setting.mla_decode_plan(&op(4)).unwrap().kernel(),
        MlaDecodeKernel::Tiled
    );
}
