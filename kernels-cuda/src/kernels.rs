//! The kernel sources, and every compile unit the plans can pick on an architecture.

use crate::compile::{KernelHeader, KernelSource, KernelVariant};
use crate::plan::attention::ATTENTION_BLOCK_SIZES;
use crate::plan::heuristics::{attention_backward_candidates, gemm_variants, wgmma_small_m_tiles};
use crate::plan::mla::MLA_DECODE_TILINGS;
use crate::plan::{
    ArchSpec, AttentionKernel, AttentionVariant, HalfType, KernelSpec, MlaAppendVariant,
    MlaCombineVariant, MlaDecodeVariant, MlaScheduleVariant, QuantizeGranularity, QuantizeInput,
    QuantizeVariant,
};
use tessera_core::{DType, MlaCacheFormat, MlaCacheLayout, SparseAttention};

/// `fp8_gemm.cu`: the block-scaled FP8 GEMM on `mma.sync`.
pub const FP8_GEMM: KernelSource =
    KernelSource::new("fp8_gemm.cu", include_str!("../kernels/fp8_gemm.cu"));

/// `sm90/hopper.cuh`: the header-free Hopper primitives (mbarrier, TMA, wgmma, clusters...).
pub const HOPPER: KernelHeader = KernelHeader {
    file: "sm90/hopper.cuh",
    code: include_str!("../kernels/sm90/hopper.cuh"),
};

/// `sm90/wgmma.cuh`: the wgmma wrappers for every N (generated: `tests/generated_wgmma.rs`).
pub const WGMMA: KernelHeader = KernelHeader {
    file: "sm90/wgmma.cuh",
    code: include_str!("../kernels/sm90/wgmma.cuh"),
};

/// `sm90/fp8_gemm.cu`: the block-scaled FP8 GEMM on TMA and wgmma (sm_90a).
pub const FP8_GEMM_SM90: KernelSource = KernelSource::new(
    "sm90/fp8_gemm.cu",
    include_str!("../kernels/sm90/fp8_gemm.cu"),
)
.with_headers(&[HOPPER, WGMMA]);

/// `fp8_quantize.cu`: the two FP8 quantizers.
pub const FP8_QUANTIZE: KernelSource = KernelSource::new(
    "fp8_quantize.cu",
    include_str!("../kernels/fp8_quantize.cu"),
);

/// `attention_constants.cuh`: the checks of the constants every attention kernel takes
/// (HEAD_DIM, ELEM_BF16).
pub const ATTENTION_CONSTANTS: KernelHeader = KernelHeader {
    file: "attention_constants.cuh",
    code: include_str!("../kernels/attention_constants.cuh"),
};

/// `attention_tiles.cuh`: the mma.sync tile steps the attention forward and backward share
/// (row loads, weights x rows).
pub const ATTENTION_TILES: KernelHeader = KernelHeader {
    file: "attention_tiles.cuh",
    code: include_str!("../kernels/attention_tiles.cuh"),
};

/// `sparse_attention.cu`: the block-sparse attention forward kernel.
pub const SPARSE_ATTENTION: KernelSource = KernelSource::new(
    "sparse_attention.cu",
    include_str!("../kernels/sparse_attention.cu"),
)
.with_headers(&[ATTENTION_CONSTANTS, ATTENTION_TILES]);

/// `sm90/sparse_attention.cu`: the block-sparse attention forward on wgmma (sm_90a, mask
/// blocks of 128).
pub const SPARSE_ATTENTION_SM90: KernelSource = KernelSource::new(
    "sm90/sparse_attention.cu",
    include_str!("../kernels/sm90/sparse_attention.cu"),
)
.with_headers(&[ATTENTION_CONSTANTS, HOPPER, WGMMA]);

/// `sparse_attention_backward.cu`: the block-sparse attention backward (delta, dk/dv and dq
/// passes, one compile unit each).
pub const SPARSE_ATTENTION_BACKWARD: KernelSource = KernelSource::new(
    "sparse_attention_backward.cu",
    include_str!("../kernels/sparse_attention_backward.cu"),
)
.with_headers(&[ATTENTION_CONSTANTS, ATTENTION_TILES]);

/// `sm90/sparse_attention_backward.cu`: the block-sparse attention backward's dk/dv and dq
/// passes on wgmma (sm_90a, mask blocks of 128; the delta pass is the file above's).
pub const SPARSE_ATTENTION_BACKWARD_SM90: KernelSource = KernelSource::new(
    "sm90/sparse_attention_backward.cu",
    include_str!("../kernels/sm90/sparse_attention_backward.cu"),
)
.with_headers(&[ATTENTION_CONSTANTS, HOPPER, WGMMA]);

/// `mla_append.cu`: writes tokens into the paged cache (both formats, run-time layout).
pub const MLA_APPEND: KernelSource =
    KernelSource::new("mla_append.cu", include_str!("../kernels/mla_append.cu"));

/// `mla_work.cuh`: what one MLA decode CTA works on (its request's queries, this split's keys),
/// shared by both decode kernels.
pub const MLA_WORK: KernelHeader = KernelHeader {
    file: "mla_work.cuh",
    code: include_str!("../kernels/mla_work.cuh"),
};

/// `sm90/mla_tiles.cuh`: copying bf16 cache records into the Hopper decode kernels' swizzled key
/// tiles (cp.async), shared by both of them.
pub const MLA_TILES_SM90: KernelHeader = KernelHeader {
    file: "sm90/mla_tiles.cuh",
    code: include_str!("../kernels/sm90/mla_tiles.cuh"),
};

/// `mla_decode.cu`: absorbed paged decode (split-KV), one CTA tiling per compile.
pub const MLA_DECODE: KernelSource =
    KernelSource::new("mla_decode.cu", include_str!("../kernels/mla_decode.cu"))
        .with_headers(&[MLA_WORK]);

/// `sm90/mla_decode.cu`: the absorbed paged decode on wgmma (sm_90a, bf16 records of
/// DeepSeek-V3's dims).
pub const MLA_DECODE_SM90: KernelSource = KernelSource::new(
    "sm90/mla_decode.cu",
    include_str!("../kernels/sm90/mla_decode.cu"),
)
.with_headers(&[MLA_WORK, HOPPER, MLA_TILES_SM90, WGMMA]);

/// `sm90/mla_decode_fp8.cu`: the transposed absorbed paged decode on wgmma (sm_90a, DeepSeek-V3's
/// dims, 16 or 32 query rows per CTA) into bf16 key tiles: dequantized from the FP8 cache
/// (`FMT 1`) or copied from the bf16 cache by cp.async (`FMT 0`).
pub const MLA_DECODE_SM90_FP8: KernelSource = KernelSource::new(
    "sm90/mla_decode_fp8.cu",
    include_str!("../kernels/sm90/mla_decode_fp8.cu"),
)
.with_headers(&[MLA_WORK, HOPPER, MLA_TILES_SM90, WGMMA]);

/// `sm90/mla_fp8_rs.cuh`: what the two FP8 register-operand decode kernels share (fragment
/// permutations, conversions, wgmma wrappers, the producer warpgroup, the staging of Q).
pub const MLA_FP8_RS_SM90: KernelHeader = KernelHeader {
    file: "sm90/mla_fp8_rs.cuh",
    code: include_str!("../kernels/sm90/mla_fp8_rs.cuh"),
};

/// `sm90/mla_decode_fp8_rs.cu`: the absorbed paged decode over the FP8 cache on wgmma (sm_90a,
/// DeepSeek-V3's dims, 16 query rows per CTA) with the cache operand of both products converted
/// straight into registers from raw records copied in bulk; the two math warpgroups on
/// alternating tiles.
pub const MLA_DECODE_SM90_FP8_RS: KernelSource = KernelSource::new(
    "sm90/mla_decode_fp8_rs.cu",
    include_str!("../kernels/sm90/mla_decode_fp8_rs.cu"),
)
.with_headers(&[MLA_WORK, HOPPER, MLA_FP8_RS_SM90]);

/// `sm90/mla_decode_fp8_rs_pairs.cu`: as `sm90/mla_decode_fp8_rs.cu` with 32 query rows per CTA,
/// tiles in pairs (each math warpgroup S of one tile of the pair, O^T of half the dims over both).
pub const MLA_DECODE_SM90_FP8_RS_PAIRS: KernelSource = KernelSource::new(
    "sm90/mla_decode_fp8_rs_pairs.cu",
    include_str!("../kernels/sm90/mla_decode_fp8_rs_pairs.cu"),
)
.with_headers(&[MLA_WORK, HOPPER, MLA_FP8_RS_SM90]);

/// `mla_combine.cu`: the log-sum-exp combine of the decode's KV splits.
pub const MLA_COMBINE: KernelSource =
    KernelSource::new("mla_combine.cu", include_str!("../kernels/mla_combine.cu"))
        .with_headers(&[MLA_WORK]);

/// `mla_schedule.cu`: the split-KV schedule of a decode, computed on the device from the lengths.
pub const MLA_SCHEDULE: KernelSource = KernelSource::new(
    "mla_schedule.cu",
    include_str!("../kernels/mla_schedule.cu"),
)
.with_headers(&[MLA_WORK]);

/// `gpu_sleep.cu`: a busy-wait that holds a stream (for benchmarks; see
/// [`crate::CudaBackend::gpu_sleep_on`]).
pub const GPU_SLEEP: KernelSource =
    KernelSource::new("gpu_sleep.cu", include_str!("../kernels/gpu_sleep.cu"));

/// The MLA layouts whose compile units cover every decode variant: DeepSeek-V3's (compile-time
/// dims) and the smallest run-time-dims layout of each format (every other layout shares its
/// compile units; the smallest fits the most tilings).
fn representative_mla_layouts() -> Vec<MlaCacheLayout> {
    let mut v = Vec::new();
    for format in [MlaCacheFormat::Bf16, MlaCacheFormat::Fp8] {
        v.push(MlaCacheLayout {
            format,
            ..MlaCacheLayout::default()
        });
        v.push(MlaCacheLayout {
            page_size: 64,
            latent_dim: 128,
            rope_dim: 0,
            format,
        });
    }
    v
}

/// Every variant the plans can pick on `arch` (any shape, heuristic or tuned), with the append
/// and combine kernels: what CI compiles for sm_80, sm_89 and sm_90a.
pub fn plannable_specs(arch: &ArchSpec) -> Vec<Box<dyn KernelSpec>> {
    let mut v: Vec<Box<dyn KernelSpec>> = Vec::new();
    for g in gemm_variants(arch) {
        v.push(Box::new(g));
    }
    for t in wgmma_small_m_tiles(arch) {
        v.push(Box::new(crate::plan::GemmVariant::Wgmma(t)));
    }
    for head_dim in tessera_core::ops::attention::SUPPORTED_HEAD_DIMS {
        for dtype in [HalfType::F16, HalfType::Bf16] {
            for block in ATTENTION_BLOCK_SIZES {
                for kernel in [AttentionKernel::MmaSync, AttentionKernel::Wgmma] {
                    let a = AttentionVariant {
                        head_dim: head_dim as u32,
                        dtype,
                        block,
                        kernel,
                    };
                    if a.valid_on(arch).is_ok() {
                        v.push(Box::new(a));
                    }
                }
            }
        }
    }
    // The attention backward: every kernel of every candidate plan (the candidates depend on
    // the head dimension, the element type and the mask's block size only).
    for head_dim in tessera_core::ops::attention::SUPPORTED_HEAD_DIMS {
        for dtype in [DType::F16, DType::BF16] {
            for block in ATTENTION_BLOCK_SIZES {
                let op = SparseAttention::new(1, 1, 1, head_dim, dtype);
                for plan in attention_backward_candidates(&op, block as usize, arch)
                    .into_iter()
                    .flatten()
                {
                    for k in plan.kernels() {
                        v.push(Box::new(k));
                    }
                }
            }
        }
    }
    for layout in representative_mla_layouts() {
        let tilings = MLA_DECODE_TILINGS.map(|t| MlaDecodeVariant::new(&layout, t));
        for d in tilings
            .into_iter()
            .chain(MlaDecodeVariant::sm90_variants(&layout))
        {
            if d.valid_on(arch).is_ok() {
                v.push(Box::new(d));
                v.push(Box::new(d.with_varlen(true)));
            }
        }
    }
    v.push(Box::new(MlaAppendVariant));
    v.push(Box::new(crate::plan::GpuSleepVariant));
    v.push(Box::new(MlaCombineVariant { varlen: false }));
    v.push(Box::new(MlaCombineVariant { varlen: true }));
    v.push(Box::new(MlaScheduleVariant { varlen: false }));
    v.push(Box::new(MlaScheduleVariant { varlen: true }));
    for input in [QuantizeInput::F32, QuantizeInput::F16, QuantizeInput::Bf16] {
        for pow2 in [false, true] {
            for granularity in [
                QuantizeGranularity::PerToken1x128,
                QuantizeGranularity::Block128x128,
            ] {
                for q in QuantizeVariant::candidates_of(input, pow2, granularity, arch) {
                    v.push(Box::new(q));
                }
            }
        }
    }
    v
}

/// The compile units of [`plannable_specs`], without repeats (entry points of one unit, such as
/// the two quantizers, compile once).
pub fn plannable_variants(arch: &ArchSpec) -> Vec<KernelVariant> {
    let mut v: Vec<KernelVariant> = Vec::new();
    for s in plannable_specs(arch) {
        let k = s.kernel();
        if !v.contains(&k) {
            v.push(k);
        }
    }
    v
}

/// The architectures CI compiles every plannable variant for: sm_80 (A100), sm_89 (L4/L40,
/// Ada) and sm_90a (H100/H200).
pub fn ci_archs() -> Vec<ArchSpec> {
    [(8, 0, 108), (8, 9, 58), (9, 0, 132)]
        .iter()
        .filter_map(|&(major, minor, sms)| {
            ArchSpec::from_compute_capability(major, minor, sms).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{
        AttentionBackwardDq, AttentionBackwardKernel, AttentionBackwardVariant, AttentionShape,
        MlaDecodeShape, PlannedOp, QuantizeShape,
    };
    use tessera_core::{
        DType, Fp8Gemm, Fp8Granularity, Fp8Quantize, MlaDecode, ScaleRule, SparseAttention,
    };

    #[test]
    fn every_candidate_of_sample_shapes_is_plannable() {
        for arch in ci_archs() {
            let units = plannable_variants(&arch);
            let has = |s: &dyn KernelSpec| units.contains(&s.kernel());
            for (m, n, k) in [(1, 8, 16), (77, 2112, 512), (4096, 7168, 2048)] {
                for c in Fp8Gemm::new(m, n, k).candidates(&arch).unwrap() {
                    assert!(has(&c), "{c:?} on {arch}");
                }
            }
            let attention_op = SparseAttention::new(1, 100, 2, 128, DType::BF16);
            let attention = AttentionShape {
                op: &attention_op,
                block_size: 128,
                mask_density: 0.5,
            };
            for c in attention.candidates(&arch).unwrap() {
                assert!(has(&c));
            }
            for head_dim in [64, 128] {
                for dtype in [DType::F16, DType::BF16] {
                    for block in [64, 128] {
                        let op = SparseAttention::new(1, 100, 2, head_dim, dtype);
                        let plans = crate::plan::heuristics::attention_backward_candidates(
                            &op, block, &arch,
                        )
                        .unwrap();
                        // Two buffers of streamed tiles everywhere but head_dim 128 on sm_89;
                        // on sm_90a with blocks of 128 also the Hopper tile passes (2 and 3
                        // stages) and the fused-dq plans (atomic and deterministic, 2 and 3
                        // stages).
                        let deep = head_dim == 64 || arch.nvrtc_target() != "sm_89";
                        let hopper = if arch.wgmma && block == 128 { 2 + 4 } else { 0 };
                        assert_eq!(plans.len(), if deep { 2 } else { 1 } + hopper, "{arch}");
                        for k in plans.iter().flat_map(|p| p.kernels()) {
                            assert!(has(&k), "{k:?} on {arch}");
                        }
                        // The deterministic pick: the Hopper tile passes with 3 stages where
                        // they are.
                        let pick_for = |deterministic| {
                            plans[crate::plan::heuristics::pick_attention_backward(
                                &plans,
                                deterministic,
                            )]
                        };
                        let pick = pick_for(true);
                        let want = if hopper > 0 {
                            AttentionBackwardKernel::Wgmma
                        } else {
                            AttentionBackwardKernel::MmaSync
                        };
                        assert_eq!(pick.key_value.tile_kernel(), want, "{arch}");
                        // ... with its own dq pass, the most stages, and deterministic.
                        assert_eq!(pick.dq(), AttentionBackwardDq::QueryPass, "{arch}");
                        assert!(pick.is_deterministic());
                        // Without the request: the fused atomic plan where it is a candidate
                        // (2 stages at head_dim 128, 3 at 64), else the same pick.
                        let fast = pick_for(false);
                        if hopper > 0 {
                            assert_eq!(fast.dq(), AttentionBackwardDq::FusedAtomic, "{arch}");
                            let stages = if head_dim == 128 { 2 } else { 3 };
                            assert_eq!(fast, plans[if head_dim == 128 { 4 } else { 5 }], "{arch}");
                            assert!(matches!(fast.key_value,
                                AttentionBackwardVariant::KeyValue(t) if t.stages == stages));
                        } else {
                            assert_eq!(fast, pick, "{arch}");
                        }
                        if hopper > 0 {
                            assert_eq!(pick, plans[3], "{arch}");
                            let fused: Vec<_> = plans[4..].iter().map(|p| p.dq()).collect();
                            assert_eq!(
                                fused,
                                [
                                    AttentionBackwardDq::FusedAtomic,
                                    AttentionBackwardDq::FusedAtomic,
                                    AttentionBackwardDq::FusedDeterministic,
                                    AttentionBackwardDq::FusedDeterministic
                                ]
                            );
                        }
                    }
                }
            }
            for layout in [
                MlaCacheLayout::default(),
                MlaCacheLayout {
                    page_size: 3,
                    latent_dim: 256,
                    rope_dim: 32,
                    format: MlaCacheFormat::Fp8,
                },
            ] {
                let op = MlaDecode {
                    batch: 2,
                    s_q: 2,
                    heads: 16,
                    max_pages: 4,
                    softmax_scale: 0.1,
                    layout,
                };
                let shape = MlaDecodeShape {
                    op: &op,
                    max_seq_len: 100,
                };
                for c in shape.candidates(&arch).unwrap() {
                    assert!(has(&c), "{c:?} on {arch}");
                    assert!(has(&c.with_varlen(true)), "{c:?} varlen on {arch}");
                }
            }
            for granularity in [Fp8Granularity::Block128x128, Fp8Granularity::PerToken1x128] {
                let q = QuantizeShape {
                    op: Fp8Quantize {
                        rows: 5,
                        cols: 300,
                        granularity,
                        scale_rule: ScaleRule::PowerOfTwo,
                    },
                    input: DType::F16,
                };
                for c in q.candidates(&arch).unwrap() {
                    assert!(has(&c), "{c:?} on {arch}");
                }
            }
            assert!(has(&MlaAppendVariant));
            assert!(has(&crate::plan::GpuSleepVariant));
            assert!(has(&MlaCombineVariant { varlen: false }));
            assert!(has(&MlaCombineVariant { varlen: true }));
        }
    }
}
