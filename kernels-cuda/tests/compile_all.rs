//! Every kernel variant the plans can pick compiles with NVRTC for sm_80, sm_89 and sm_90a, and a
//! variant missing a constant (or with an unsupported one, or a shared-memory size that does not
//! match the kernel's layout) fails to compile with the kernel's own message. Needs NVRTC only,
//! no GPU: CI installs it from PyPI (`nvidia-cuda-nvrtc`). Without NVRTC the tests print
//! `skipped:` and pass, unless `TESSERA_REQUIRE_NVRTC=1`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tessera_core::{Error, MlaCacheFormat, MlaCacheLayout};
use tessera_cuda::compile::{cached_cubin_in, compile_cubin, KernelVariant};
use tessera_cuda::kernels::{ci_archs, plannable_variants};
use tessera_cuda::plan::{
    AttentionBackwardDq, AttentionBackwardKernel, AttentionBackwardPlan, AttentionBackwardTiles,
    AttentionBackwardVariant, AttentionKernel, AttentionVariant, GemmVariant, HalfType, KernelSpec,
    MlaAppendVariant, MlaCombineVariant, MlaDecodeVariant, MlaScheduleVariant, MmaSyncGemm,
    QuantizeGranularity, QuantizeInput, QuantizeVariant, UnitOrder,
};

/// Whether NVRTC is there; prints `skipped:` (or panics under `TESSERA_REQUIRE_NVRTC=1`) if not.
fn nvrtc_present() -> bool {
    if let Err(why) = &tessera_cuda::probe().nvrtc {
        if std::env::var("TESSERA_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("TESSERA_REQUIRE_NVRTC=1 but {why}");
        }
        println!("skipped: {why}");
        return false;
    }
    true
}

/// Compiles every job on all cores; returns the failures.
fn compile_in_parallel(jobs: &[(KernelVariant, String)]) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((v, arch)) = jobs.get(i) else { break };
                match compile_cubin(v, arch) {
                    Ok(cubin) if cubin.len() > 100 => {}
                    Ok(_) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{} for {arch}: empty cubin", v.label())),
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{} for {arch}: {e}", v.label())),
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

#[test]
fn every_plannable_variant_compiles_for_sm80_sm89_and_sm90a() {
    if !nvrtc_present() {
        return;
    }
    let mut jobs = Vec::new();
    for arch in ci_archs() {
        let target = arch.nvrtc_target();
        let variants = plannable_variants(&arch);
        println!("{target}: {} compile units", variants.len());
        jobs.extend(variants.into_iter().map(|v| (v, target.clone())));
    }
    let targets: Vec<String> = ci_archs().iter().map(|a| a.nvrtc_target()).collect();
    assert_eq!(targets, ["sm_80", "sm_89", "sm_90a"]);
    let start = std::time::Instant::now();
    let failures = compile_in_parallel(&jobs);
    println!(
        "compiled {} variant x architecture pairs in {:.1} s with {}",
        jobs.len(),
        start.elapsed().as_secs_f64(),
        tessera_cuda::probe().nvrtc.as_deref().unwrap_or("?")
    );
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The tile passes of the attention backward used by the error tests.
const BACKWARD_TILES: AttentionBackwardTiles = AttentionBackwardTiles {
    head_dim: 128,
    dtype: HalfType::Bf16,
    block: 128,
    stages: 2,
    kernel: AttentionBackwardKernel::MmaSync,
    dq: AttentionBackwardDq::QueryPass,
};

/// The Hopper tile passes of the attention backward, in the one-variant-per-source list.
const BACKWARD_TILES_SM90: AttentionBackwardTiles = AttentionBackwardTiles {
    stages: 3,
    kernel: AttentionBackwardKernel::Wgmma,
    ..BACKWARD_TILES
};

/// One variant of every kernel source, with every kind of constant.
fn one_variant_per_source() -> Vec<Box<dyn KernelSpec>> {
    let fp8 = MlaCacheLayout {
        format: MlaCacheFormat::Fp8,
        ..MlaCacheLayout::default()
    };
    let generic = MlaCacheLayout {
        latent_dim: 256,
        rope_dim: 32,
        ..MlaCacheLayout::default()
    };
    vec![
        Box::new(GemmVariant::MmaSync(MmaSyncGemm::LARGE)),
        Box::new(AttentionVariant {
            head_dim: 128,
            dtype: HalfType::Bf16,
            block: 64,
            kernel: AttentionKernel::MmaSync,
        }),
        Box::new(AttentionBackwardVariant::Delta {
            head_dim: 64,
            dtype: HalfType::F16,
        }),
        Box::new(AttentionBackwardVariant::KeyValue(BACKWARD_TILES)),
        Box::new(AttentionBackwardVariant::Query(BACKWARD_TILES)),
        Box::new(AttentionBackwardVariant::KeyValue(BACKWARD_TILES_SM90)),
        Box::new(AttentionBackwardVariant::Query(BACKWARD_TILES_SM90)),
        Box::new(MlaDecodeVariant::new(&fp8, (1, 64, 3))),
        Box::new(MlaDecodeVariant::new(&generic, (2, 32, 2))),
        Box::new(MlaDecodeVariant::new(&fp8, (4, 32, 3)).with_varlen(true)),
        Box::new(MlaDecodeVariant::wgmma(&fp8, (2, 64, 2))),
        Box::new(MlaAppendVariant),
        Box::new(MlaCombineVariant { varlen: false }),
        Box::new(MlaCombineVariant { varlen: true }),
        Box::new(MlaScheduleVariant { varlen: true }),
        Box::new(QuantizeVariant {
            input: QuantizeInput::F16,
            pow2: true,
            granularity: QuantizeGranularity::Block128x128,
            unit_order: UnitOrder::Contiguous,
        }),
        Box::new(QuantizeVariant {
            input: QuantizeInput::Bf16,
            pow2: false,
            granularity: QuantizeGranularity::PerToken1x128,
            unit_order: UnitOrder::Interleaved,
        }),
    ]
}

/// The compile error of `v` for sm_90a (panics if it compiles).
fn compile_error(v: &KernelVariant) -> String {
    match compile_cubin(v, "sm_90a") {
        Ok(_) => panic!("{} compiled", v.label()),
        Err(Error::Device { message, .. }) => message,
        Err(e) => panic!("{}: unexpected error {e}", v.label()),
    }
}

#[test]
fn a_missing_constant_fails_with_the_kernels_error() {
    if !nvrtc_present() {
        return;
    }
    let mut checked = 0;
    for spec in one_variant_per_source() {
        let full = spec.kernel();
        for (name, _) in &full.defines {
            let log = compile_error(&full.without_define(name));
            assert!(
                log.contains("#error") && log.contains(&format!("{name} is required")),
                "{} without {name}: the log does not name it:\n{log}",
                spec.label()
            );
            checked += 1;
        }
    }
    println!("{checked} missing constants each failed with their #error");
    assert!(checked >= 25);
}

#[test]
fn unsupported_constants_and_a_shared_memory_drift_fail_to_compile() {
    if !nvrtc_present() {
        return;
    }
    let set = |spec: &dyn KernelSpec, name: &str, value: &str| {
        let mut v = spec.kernel();
        for (k, val) in v.defines.iter_mut() {
            if *k == name {
                *val = value.to_string();
            }
        }
        v
    };
    let gemm = GemmVariant::MmaSync(MmaSyncGemm::LARGE);
    let attention = AttentionVariant {
        head_dim: 64,
        dtype: HalfType::F16,
        block: 128,
        kernel: AttentionKernel::MmaSync,
    };
    let mla = MlaDecodeVariant::new(&MlaCacheLayout::default(), (4, 32, 3));
    let quantize = QuantizeVariant {
        input: QuantizeInput::F32,
        pow2: false,
        granularity: QuantizeGranularity::PerToken1x128,
        unit_order: UnitOrder::Contiguous,
    };
    let smem = |s: &dyn KernelSpec| (s.smem_bytes() + 16).to_string();
    let mla_fp8_sm90 = MlaDecodeVariant::wgmma(
        &MlaCacheLayout {
            format: MlaCacheFormat::Fp8,
            ..MlaCacheLayout::default()
        },
        (1, 64, 2),
    );
    let dkdv_sm90 = AttentionBackwardVariant::KeyValue(BACKWARD_TILES_SM90);
    let dq_sm90 = AttentionBackwardVariant::Query(BACKWARD_TILES_SM90);
    // The fused-dq plan's dk/dv/dq pass and dq conversion.
    let fused = AttentionBackwardPlan::new(AttentionBackwardTiles {
        dq: AttentionBackwardDq::FusedDeterministic,
        ..BACKWARD_TILES_SM90
    });
    let (fused_sm90, convert_sm90) = (fused.key_value, fused.query);
    let cases: Vec<(KernelVariant, &str)> = vec![
        (set(&gemm, "BM", "48"), "BM must be"),
        (set(&gemm, "STAGES", "1"), "STAGES must be"),
        (
            set(&gemm, "TESSERA_SMEM_BYTES", &smem(&gemm)),
            "shared-memory size",
        ),
        (set(&gemm, "TESSERA_THREADS", "128"), "threads per CTA"),
        (set(&attention, "HEAD_DIM", "96"), "HEAD_DIM must be"),
        (
            set(&attention, "TESSERA_SMEM_BYTES", &smem(&attention)),
            "shared-memory size",
        ),
        (
            set(
                &AttentionBackwardVariant::KeyValue(BACKWARD_TILES),
                "STAGES",
                "3",
            ),
            "STAGES must be",
        ),
        (
            set(
                &AttentionBackwardVariant::Query(BACKWARD_TILES),
                "PASS",
                "3",
            ),
            "PASS must be",
        ),
        (
            set(
                &AttentionBackwardVariant::KeyValue(BACKWARD_TILES),
                "TESSERA_SMEM_BYTES",
                &smem(&AttentionBackwardVariant::KeyValue(BACKWARD_TILES)),
            ),
            "shared-memory size",
        ),
        (
            set(
                &AttentionBackwardVariant::Query(BACKWARD_TILES),
                "TESSERA_SMEM_BYTES",
                &smem(&AttentionBackwardVariant::Query(BACKWARD_TILES)),
            ),
            "shared-memory size",
        ),
        (
            set(
                &AttentionBackwardVariant::Delta {
                    head_dim: 128,
                    dtype: HalfType::Bf16,
                },
                "TESSERA_SMEM_BYTES",
                "16",
            ),
            "shared-memory size",
        ),
        (set(&mla, "KEY_TILE", "16"), "KEY_TILE must be"),
        (set(&mla, "VARLEN", "2"), "VARLEN must be"),
        (
            set(&MlaCombineVariant { varlen: true }, "VARLEN", "2"),
            "VARLEN must be",
        ),
        (
            set(&mla, "TESSERA_SMEM_BYTES", &smem(&mla)),
            "shared-memory size",
        ),
        (set(&mla_fp8_sm90, "ROWS", "64"), "ROWS must be 16 or 32"),
        (
            set(&mla_fp8_sm90, "TESSERA_SMEM_BYTES", &smem(&mla_fp8_sm90)),
            "shared-memory size",
        ),
        (set(&dkdv_sm90, "STAGES", "5"), "STAGES must be"),
        (set(&dq_sm90, "BLOCK", "64"), "mask blocks of 128"),
        (set(&dkdv_sm90, "TESSERA_THREADS", "128"), "3 warpgroups"),
        (
            set(&dq_sm90, "TESSERA_SMEM_BYTES", &smem(&dq_sm90)),
            "shared-memory size",
        ),
        (
            set(&dkdv_sm90, "TESSERA_SMEM_BYTES", &smem(&dkdv_sm90)),
            "shared-memory size",
        ),
        (
            set(&fused_sm90, "TESSERA_SMEM_BYTES", &smem(&fused_sm90)),
            "shared-memory size",
        ),
        (
            set(&fused_sm90, "BWD90_FUSED_DQ", "0"),
            "BWD90_DQ_WRITER is a variant of the fused dQ pass",
        ),
        (set(&convert_sm90, "TESSERA_THREADS", "128"), "256 threads"),
        (
            set(&convert_sm90, "TESSERA_SMEM_BYTES", "16"),
            "no dynamic shared memory",
        ),
        (set(&quantize, "IN_KIND", "3"), "IN_KIND must be"),
        (set(&quantize, "TESSERA_THREADS", "128"), "8 warps"),
        (
            set(&quantize, "GROUP_THREADS", "4"),
            "GROUP_THREADS must be 16 or 8",
        ),
        (set(&quantize, "GROUP_BATCH", "0"), "GROUP_BATCH must be in"),
        (
            set(&quantize, "MIN_CTAS_PER_SM", "9"),
            "MIN_CTAS_PER_SM must be in",
        ),
        (
            set(&quantize, "UNIT_ORDER", "2"),
            "UNIT_ORDER must be 0 (contiguous) or 1 (interleaved)",
        ),
        (
            set(&MlaCombineVariant::default(), "TESSERA_SMEM_BYTES", "16"),
            "no dynamic shared memory",
        ),
        (
            set(&MlaScheduleVariant::default(), "VARLEN", "2"),
            "VARLEN must be",
        ),
        (
            set(&MlaScheduleVariant::default(), "TESSERA_THREADS", "256"),
            "one CTA of 16 warps",
        ),
        (
            set(&MlaScheduleVariant::default(), "SCHEDULE_BINS", "600"),
            "SCHEDULE_BINS in 1..=512",
        ),
    ];
    for (v, expected) in cases {
        let log = compile_error(&v);
        assert!(
            log.contains(expected),
            "{}: expected {expected:?} in:\n{log}",
            v.label()
        );
    }
}

#[test]
fn disk_cache_serves_the_second_request() {
    if !nvrtc_present() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tessera-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let variant = MlaAppendVariant.kernel();
    let (first, compiled) = cached_cubin_in(&variant, "sm_90a", Some(&dir)).unwrap();
    assert!(compiled, "an empty cache must compile");
    let (second, compiled) = cached_cubin_in(&variant, "sm_90a", Some(&dir)).unwrap();
    assert!(
        !compiled,
        "the second request must come from the disk cache"
    );
    assert_eq!(first, second);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "one file per variant and arch"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cache_keys_differ_by_source_options_and_arch() {
    let mut variants: Vec<KernelVariant> = Vec::new();
    for arch in ci_archs() {
        for v in plannable_variants(&arch) {
            if !variants.contains(&v) {
                variants.push(v);
            }
        }
    }
    let keys: std::collections::HashSet<String> = variants
        .iter()
        .flat_map(|v| ["sm_90a", "sm_80"].map(|a| v.cache_key(a, (13, 0))))
        .collect();
    assert_eq!(
        keys.len(),
        2 * variants.len(),
        "two variants share a cache key"
    );
    assert_ne!(
        variants[0].cache_key("sm_90a", (13, 0)),
        variants[0].cache_key("sm_90a", (13, 1))
    );
}
