//! Per-architecture heuristics, in one place: for each op, the candidate variants for a shape on
//! an architecture (the first is always valid there: the fallback) and the default pick among
//! them. Tuning ([`super::PlanCache`]) may pick any other candidate.
//!
//! | op | candidates | default pick |
//! |---|---|---|
//! | FP8 GEMM | `mma.sync` tiles SMALL (fallback), LARGE, TINY, LARGE_DEEP where they fit; e4m3 mma on sm_89; on sm_90a also the wgmma tiles of [`wgmma_tiles`], and for m <= 256 [`wgmma_small_m_tiles`] (split-K, two CTAs per SM) | `mma.sync`: fewest waves over the SMs, then the fullest last wave, then the least padding; sm_90a: [`pick_wgmma`] |
//! | attention | the `mma.sync` kernel for (head_dim, dtype, block size) (fallback); on sm_90a with blocks of 128 also the Hopper kernel | the Hopper kernel where it is a candidate |
//! | attention backward | the delta, dk/dv and dq kernels for (head_dim, dtype, block size) with 1 buffer of streamed tiles (fallback), then 2 where they fit; on sm_90a with blocks of 128 also the Hopper tile passes ([`ATTENTION_BACKWARD_SM90_STAGES`]), then the Hopper fused-dq plans (dq in the dk/dv pass, then its conversion), atomic and deterministic, per stage count that fits | unless the op asks for a deterministic backward, the fused atomic plan with [`attention_backward_fused_stages`] where it is a candidate; else the Hopper tile passes (dq in its own pass) with the most stages where they are candidates, else the most buffers (not tuned: the plan is always this pick) |
//! | MLA decode | every `mma.sync` tiling whose shared memory fits, the smallest (16 rows, 32 keys, 2 stages) first; on sm_90a also the Hopper kernel for bf16 records of DeepSeek-V3's dims | the Hopper kernel for more than 16 rows `s_q * heads`; else the fewest rows per CTA that holds all rows, then the first that fits |
//! | FP8 quantize | per token the kernel for (input, rule) in both unit orders, the default first: interleaved for 16-bit inputs on sm_90, else contiguous; 128x128 the one kernel for (input, rule) | the first |

use super::attention::{
    AttentionKernel, AttentionShape, AttentionVariant, HalfType, ATTENTION_BLOCK_SIZES,
};
use super::attention_backward::{
    AttentionBackwardDq, AttentionBackwardKernel, AttentionBackwardPlan, AttentionBackwardTiles,
    AttentionBackwardVariant, ATTENTION_BACKWARD_SM90_STAGES, ATTENTION_BACKWARD_STAGES,
};
use super::cache::{bucket, PlannedOp, PlannedVariant, ShapeClass};
use super::gemm::{GemmVariant, MmaSyncGemm, WgmmaGemm};
use super::mla::{MlaDecodeKernel, MlaDecodeShape, MlaDecodeVariant, MLA_DECODE_TILINGS};
use super::quantize::{QuantizeShape, QuantizeVariant};
use super::{ArchFamily, ArchSpec, KernelSpec};
use tessera_core::{BackendKind, Error, Fp8Gemm, GemmGrouping, MlaCacheFormat, Result};

/// Waves of `ctas` CTAs over `slots` CTAs resident at once (SMs x CTAs per SM), and the fraction
/// of the last wave's slots in use (1.0 when it is full). `(0, 1.0)` for no CTA.
pub fn waves(ctas: u64, slots: u64) -> (u64, f64) {
    let slots = slots.max(1);
    if ctas == 0 {
        return (0, 1.0);
    }
    let waves = ctas.div_ceil(slots);
    let last = ctas - (waves - 1) * slots;
    (waves, last as f64 / slots as f64)
}

// ---- FP8 GEMM ---------------------------------------------------------------------------------

/// The `mma.sync` tiles of `arch`, fallback first: SMALL (96 KB, fits every family), LARGE,
/// TINY, LARGE_DEEP (128 KB: sm_80 and sm_90 only). The e4m3 mma on sm_89 only: sm_80/86 lack
/// it, and on sm_90 ptxas lowers it to a decode plus two 16-bit mma and four adds, so decoding
/// once per fragment is as fast (see `fp8_gemm.cu`).
pub fn mma_sync_tiles(arch: &ArchSpec) -> Vec<MmaSyncGemm> {
    let e4m3 = arch.fp8_mma && arch.family == ArchFamily::Sm86;
    [
        MmaSyncGemm::SMALL,
        MmaSyncGemm::LARGE,
        MmaSyncGemm::TINY,
        MmaSyncGemm::LARGE_DEEP,
    ]
    .into_iter()
    .map(|t| t.with_e4m3_mma(e4m3))
    .filter(|t| GemmVariant::MmaSync(*t).valid_on(arch).is_ok())
    .collect()
}

/// Every GEMM variant of `arch`, whatever the shape, fallback first: what [`gemm_candidates`]
/// chooses from, and what CI compiles ([`crate::kernels::plannable_specs`]). A new kind of GEMM
/// kernel adds its variants here.
pub fn gemm_variants(arch: &ArchSpec) -> Vec<GemmVariant> {
    let mut v: Vec<GemmVariant> = mma_sync_tiles(arch)
        .into_iter()
        .map(GemmVariant::MmaSync)
        .collect();
    v.extend(wgmma_tiles(arch).into_iter().map(GemmVariant::Wgmma));
    v
}

/// Column widths of the two-math-warpgroup Hopper tiles (128 rows): 160 and 192 are the fastest
/// per tile on the H200, 128 and 176 fill the SMs better for some N.
const WGMMA_WIDE_BN: [u32; 4] = [128, 160, 176, 192];
/// Column widths of the one-math-warpgroup Hopper tiles (64 rows, two accumulators), for small
/// M, where reading B is the bound and the tile count decides how many SMs stream it.
const WGMMA_NARROW_BN: [u32; 5] = [32, 56, 64, 96, 128];

/// The Hopper (wgmma) tiles on `arch` (none without wgmma and TMA): 128 x [`WGMMA_WIDE_BN`]
/// with one CTA or a 2-CTA cluster multicasting B, and 64 x [`WGMMA_NARROW_BN`]; each with as
/// many stages as the shared memory holds.
pub fn wgmma_tiles(arch: &ArchSpec) -> Vec<WgmmaGemm> {
    if !(arch.wgmma && arch.tma) {
        return Vec::new();
    }
    let smem = arch.max_smem_per_block;
    let mut v = Vec::new();
    for bn in WGMMA_WIDE_BN {
        for cluster_m in [1, 2] {
            v.extend(WgmmaGemm::fitted(128, bn, 2, cluster_m, 1, smem));
        }
    }
    for bn in WGMMA_NARROW_BN {
        v.extend(WgmmaGemm::fitted(64, bn, 1, 1, 2, smem));
    }
    v.retain(|t| GemmVariant::Wgmma(*t).valid_on(arch).is_ok());
    v
}

/// Largest m for which the GEMM's candidates include the small-M Hopper tiles of
/// [`wgmma_small_m_tiles`] (split-K, two CTAs per SM).
pub const SMALL_M_MAX: usize = 256;

/// Split-K Hopper tiles as (rows, columns, math warpgroups, accumulator sets, split): the ones
/// that won a small-M shape on the H200 (2026-11-30, dev/NOTES-fp8-gemm-sm90.md).
const WGMMA_SPLIT_K: [(u32, u32, u32, u32, u32); 7] = [
    (64, 32, 1, 2, 2),
    (64, 64, 1, 2, 2),
    (64, 64, 1, 2, 4),
    (64, 96, 1, 2, 4),
    (64, 128, 1, 2, 2),
    (128, 128, 2, 1, 2),
    (128, 128, 2, 1, 4),
];

/// Hopper tiles for small M (none without wgmma and TMA): the split-K tiles of
/// [`WGMMA_SPLIT_K`], and 64 x 32 / 64 x 64 at two CTAs per SM (also split 2 and 4 for 64 x 64).
pub fn wgmma_small_m_tiles(arch: &ArchSpec) -> Vec<WgmmaGemm> {
    if !(arch.wgmma && arch.tma) {
        return Vec::new();
    }
    let smem = arch.max_smem_per_block;
    let mut v = Vec::new();
    for (bm, bn, math_wg, acc, split) in WGMMA_SPLIT_K {
        v.extend(
            WgmmaGemm::fitted(bm, bn, math_wg, 1, acc, smem)
                .and_then(|t| t.with_split_k(split, smem)),
        );
    }
    for (bn, split) in [(32, 1), (64, 1), (64, 2), (64, 4)] {
        v.extend(
            WgmmaGemm::fitted(64, bn, 1, 1, 2, smem)
                .and_then(|t| t.with_split_k(split, smem))
                .and_then(|t| t.with_two_ctas_per_sm(arch)),
        );
    }
    v.retain(|t| GemmVariant::Wgmma(*t).valid_on(arch).is_ok());
    v
}

/// Clusters of `size` CTAs resident at once on `arch` with `ctas_per_sm` CTAs per SM: SMs
/// over the cluster size, less 10% above 2 CTAs (clusters stay within a GPC, whose SM counts
/// do not divide evenly: the H200 holds 39 clusters of 3, 30 of 4, 15 of 8).
pub fn cluster_slots(arch: &ArchSpec, size: u32, ctas_per_sm: u32) -> u64 {
    let ctas = arch.sm_count as u64 * ctas_per_sm.max(1) as u64;
    let size = size.max(1) as u64;
    let slots = if size <= 2 {
        ctas / size
    } else {
        ctas * 9 / (10 * size)
    };
    slots.max(1)
}

/// The kernel's GROUPING constant of an op: 0 one GEMM, 1 contiguous, 2 masked.
pub fn grouping_code(op: &Fp8Gemm) -> u32 {
    match op.grouping {
        GemmGrouping::Contiguous { .. } => 1,
        GemmGrouping::Masked { .. } => 2,
        _ => 0,
    }
}

/// Relative speed per tile of the 128-row Hopper tiles by width, measured on the H200 at
/// M 4096 (2026-11-30, bench/results/2026-11-30-h200-*): 192 is the fastest; 160 runs 5-16 %
/// slower per column than the wave count predicts (M18432 N4096 K7168, harness of 2026-12-02:
/// 0.909-0.928 ms at 192, 0.951-1.006 at 160; M4096 N7168 K16384, harness of session 22:
/// 877-945 us at 192, 988-1018 at 160, 852-931 at 176). Rated 0.92, so that 176 wins where the
/// tuner picks it (check-23: 176 at 4 of the 6 M 4096 shapes, 192 at the other 2, never 160).
fn wgmma_tile_efficiency(bn: u32) -> f64 {
    match bn {
        192 => 1.0,
        160 => 0.92,
        176 => 0.93,
        _ => 0.85,
    }
}

/// K blocks (of 128) up to which small-M GEMMs are planned like large ones (see [`pick_wgmma`]).
const SHORT_K_BLOCKS: u64 = 12;

/// K blocks (of 128) from which, and up to which, small-M GEMMs take 64 x 64 tiles at two CTAs
/// per SM (see [`pick_wgmma`]).
const TWO_CTA_K_BLOCKS: std::ops::RangeInclusive<u64> = 12..=16;

/// How much a split-K CTA's operand bytes weigh in the small-M pick against a whole tile's:
/// the cluster start and the reduction of the partials. Fitted to the tuner's picks on the H200
/// (check-23: M64 N7168 K16384 takes 64 x 56 without split, 35.3 us against 38.5 for 64 x 128
/// split 2, and M128 N4096 K7168 64 x 64 without split, 17.8 against 18.9; M64 N4096 K7168 keeps
/// 64 x 64 split 2 and M64 N2112 K7168 64 x 96 split 4): all four hold above 4/3 and below 1.5.
const SPLIT_K_BYTES_WEIGHT: f64 = 1.4;

/// Rounds (of two CTAs per SM) within which the 64 x 64 tiles of short K are picked.
const TWO_CTA_MAX_ROUNDS: u64 = 2;

/// K blocks (of 128) up to which small-M GEMMs first try the one-CTA 64-row tiles without
/// split of [`NO_SPLIT_WIDTHS`] (see [`pick_wgmma`]).
const NO_SPLIT_K_BLOCKS: u64 = 16;

/// The widths of the one-CTA 64-row tiles of short K, tried widest first.
const NO_SPLIT_WIDTHS: [u32; 2] = [128, 64];

/// Whether `tiles` persistent tiles over `sms` SMs fill their rounds well enough for the
/// one-CTA 64-row tiles of short K: at most `max_rounds` rounds, the last at least 90 % full,
/// or a single round on at least 40 % of the SMs.
fn no_split_rounds_fit(tiles: u64, sms: u64, max_rounds: u64) -> bool {
    let (rounds, fill) = waves(tiles, sms);
    rounds <= max_rounds && fill >= 0.9 || rounds == 1 && fill >= 0.4
}

/// Rounds of one-CTA 64-row tiles of short K allowed by [`no_split_rounds_fit`]: three where
/// one tile row covers M (m <= 64, each block of B read by one tile only), else two (64-row
/// tiles at M128 read every block of B twice, and lose to 128 x 192 at N24576 K1536).
fn no_split_max_rounds(m: usize) -> u64 {
    if m <= 64 {
        3
    } else {
        2
    }
}

/// The default pick among Hopper candidates: at one CTA per SM but for short K at small M
/// (below; the other two-per-SM tiles are left to the tuner). For m <= 128, bound by
/// streaming the operands through each SM: the least bytes a CTA reads, (rows + columns) x
/// 128 x its K blocks, times the waves of clusters (split-K tiles only where their clusters fit
/// in one wave, their bytes weighed by [`SPLIT_K_BYTES_WEIGHT`]), then the fullest last wave,
/// then the widest; B multicast clusters are left out. Otherwise (and for m <= 128 with K <=
/// 1536, outside the two-CTA rule below) the persistent 128-row tiles of least estimated time
/// (waves x width / measured per-tile efficiency), one CTA per cluster on a tie. `None` when
/// there is no Hopper candidate.
///
/// Short K at small M (m <= 128, at most [`NO_SPLIT_K_BLOCKS`]) first takes a one-CTA 64-row
/// tile without split, the widest of [`NO_SPLIT_WIDTHS`] whose tiles fill their rounds
/// ([`no_split_rounds_fit`], [`no_split_max_rounds`]): there a split-K tile's cluster start and
/// reduction cost as much as its loads, and a 128-row tile pads M64 (H200, every candidate timed
/// by `tessera tune --all-times`, bench/results/2026-12-02-h200-check-24: 64 x 128 takes 11.1
/// us at M64 N32768 K512 against 12.8 for 128 x 128, 10.5 at M64 N7168 K2048 against 10.7 for
/// 64 x 64 at two CTAs per SM, 10.6 at M128 N7168 K2048 against 12.3; 64 x 64 in three rounds
/// 15.4 at M64 N24576 K1536 against 16.9 for 64 x 64 at two CTAs per SM, where 192 tiles of
/// 64 x 128 leave half a second round: 17.5). Where none fills its rounds, K blocks in
/// [`TWO_CTA_K_BLOCKS`] go to 64 x 64 at two CTAs per SM without split where its tiles take at
/// most [`TWO_CTA_MAX_ROUNDS`] rounds (M128 N24576 K1536 takes neither: 64-row tiles lose to
/// 128 x 192 there, 18.6 and 22.4 against 17.9).
pub fn pick_wgmma(op: &Fp8Gemm, candidates: &[GemmVariant], arch: &ArchSpec) -> Option<usize> {
    let k_blocks = (op.k as u64).div_ceil(128);
    // Short K (<= 1536) costs the split-K tiles their per-tile start: there the 128-row tiles
    // won every tuned small-M shape on the H200 (2026-11-30 plans) but for the two rules above.
    let small_m = op.m <= 128;
    let small = small_m && k_blocks > SHORT_K_BLOCKS;
    // The 64-row tile `bn` wide at `ctas_per_sm` CTAs per SM, without split or cluster.
    let find_64_row = |bn: u32, ctas_per_sm: u32| {
        candidates.iter().position(|v| {
            matches!(v, GemmVariant::Wgmma(t)
                if (t.bm, t.bn, t.ctas_per_sm, t.split_k, t.cluster_m)
                    == (64, bn, ctas_per_sm, 1, 1))
        })
    };
    if small_m && k_blocks <= NO_SPLIT_K_BLOCKS {
        for bn in NO_SPLIT_WIDTHS {
            if let Some(i) = find_64_row(bn, 1) {
                let sms = arch.sm_count as u64;
                if no_split_rounds_fit(candidates[i].tiles(op), sms, no_split_max_rounds(op.m)) {
                    return Some(i);
                }
            }
        }
    }
    if small_m && TWO_CTA_K_BLOCKS.contains(&k_blocks) {
        if let Some(i) = find_64_row(64, 2) {
            let (rounds, _) = waves(candidates[i].tiles(op), arch.sm_count as u64 * 2);
            if rounds <= TWO_CTA_MAX_ROUNDS {
                return Some(i);
            }
        }
    }
    let mut best: Option<(usize, (f64, f64, u32))> = None;
    for (i, v) in candidates.iter().enumerate() {
        let GemmVariant::Wgmma(t) = v else { continue };
        if t.ctas_per_sm != 1 {
            continue;
        }
        if small && t.cluster_m != 1 || !small && (t.math_wg != 2 || t.split_k != 1) {
            continue;
        }
        let (w, fill) = waves(
            t.cluster_tiles(op),
            cluster_slots(arch, t.cluster_size(), t.ctas_per_sm),
        );
        if t.split_k > 1 && w > 1 {
            // Split-K grids are not persistent: a second wave of clusters costs a whole
            // start-up and drain (measured: always slower than a persistent tile).
            continue;
        }
        // Lower is better in every component.
        let key = if small {
            let per_cta = (t.bm + t.bn) as u64 * 128 * k_blocks.div_ceil(t.split_k as u64);
            let weight = if t.split_k > 1 {
                SPLIT_K_BYTES_WEIGHT
            } else {
                1.0
            };
            (w as f64 * per_cta as f64 * weight, -fill, u32::MAX - t.bn)
        } else {
            (
                w as f64 * t.bn as f64 / wgmma_tile_efficiency(t.bn),
                t.cluster_m as f64,
                0,
            )
        };
        if best.as_ref().is_none_or(|(_, b)| key < *b) {
            best = Some((i, key));
        }
    }
    best.map(|(i, _)| i)
}

/// The GEMM candidates for `op` on `arch`, the fallback first: every variant of
/// [`gemm_variants`] (each handles any shape), and for m <= [`SMALL_M_MAX`] the small-M tiles
/// of [`wgmma_small_m_tiles`].
pub fn gemm_candidates(op: &Fp8Gemm, arch: &ArchSpec) -> Result<Vec<GemmVariant>> {
    op.validate()?;
    let grouping = grouping_code(op);
    if grouping != 0 {
        // Grouped GEMMs: the Hopper tiles compiled for the grouping (no mma.sync kernel).
        let v: Vec<GemmVariant> = wgmma_tiles(arch)
            .into_iter()
            .filter_map(|t| t.for_grouping(grouping, arch.max_smem_per_block))
            .filter(|t| GemmVariant::Wgmma(*t).valid_on(arch).is_ok())
            .map(GemmVariant::Wgmma)
            .collect::<Vec<_>>();
        let mut unique: Vec<GemmVariant> = Vec::new();
        for c in v {
            if !unique.contains(&c) {
                unique.push(c);
            }
        }
        if unique.is_empty() {
            return Err(Error::Unsupported {
                op: "fp8_gemm_grouped",
                backend: BackendKind::Cuda,
                reason: format!(
                    "grouped GEMMs on the device run on the Hopper kernel (sm_90a), not on {arch}"
                ),
            });
        }
        return Ok(unique);
    }
    let mut v = gemm_variants(arch);
    if op.m <= SMALL_M_MAX {
        v.extend(
            wgmma_small_m_tiles(arch)
                .into_iter()
                .map(GemmVariant::Wgmma),
        );
    }
    if v.is_empty() {
        return Err(Error::Unsupported {
            op: "fp8_gemm",
            backend: BackendKind::Cuda,
            reason: format!("no GEMM tile fits {arch}"),
        });
    }
    Ok(v)
}

/// The default GEMM pick: the fewest waves over the SMs, then the fullest last wave, then the
/// least padding (output elements computed beyond m x n), then the earlier candidate.
pub fn pick_gemm(op: &Fp8Gemm, candidates: &[GemmVariant], arch: &ArchSpec) -> usize {
    if let Some(i) = pick_wgmma(op, candidates, arch) {
        return i;
    }
    let score = |v: &GemmVariant| {
        let tiles = v.tiles(op);
        let slots = arch.sm_count as u64 * v.ctas_per_sm(arch).max(1) as u64;
        let (w, fill) = waves(tiles, slots);
        let computed = tiles * v.tile_m() as u64 * v.tile_n() as u64;
        let padding = computed.saturating_sub(op.m as u64 * op.n as u64);
        (w, fill, padding)
    };
    let mut best = 0;
    for i in 1..candidates.len() {
        let (w, f, p) = score(&candidates[i]);
        let (bw, bf, bp) = score(&candidates[best]);
        let better = w < bw || (w == bw && (f > bf + 1e-9 || ((f - bf).abs() <= 1e-9 && p < bp)));
        if better {
            best = i;
        }
    }
    best
}

impl PlannedOp for Fp8Gemm {
    type Variant = GemmVariant;

    /// m rounded up to a power of two, n and k exact, the grouping and the groups rounded up
    /// to a power of two.
    fn shape_class(&self) -> ShapeClass {
        ShapeClass::Gemm {
            m_bucket: bucket(self.m),
            n: self.n as u64,
            k: self.k as u64,
            grouping: grouping_code(self) as u8,
            groups_bucket: bucket(self.grouping.groups()),
        }
    }

    fn candidates(&self, arch: &ArchSpec) -> Result<Vec<GemmVariant>> {
        gemm_candidates(self, arch)
    }

    fn heuristic(&self, candidates: &[GemmVariant], arch: &ArchSpec) -> usize {
        pick_gemm(self, candidates, arch)
    }

    fn wrap(v: GemmVariant) -> PlannedVariant {
        PlannedVariant::Gemm(v)
    }

    fn unwrap(v: &PlannedVariant) -> Option<GemmVariant> {
        match v {
            PlannedVariant::Gemm(g) => Some(*g),
            _ => None,
        }
    }
}

// ---- attention --------------------------------------------------------------------------------

/// The attention candidates: the `mma.sync` kernel for the op's head_dim, dtype and the mask's
/// block size ([`Error::Unsupported`] when it has none), then the Hopper kernel where it is valid
/// (sm_90a, blocks of 128).
pub fn attention_candidates(
    shape: &AttentionShape,
    arch: &ArchSpec,
) -> Result<Vec<AttentionVariant>> {
    let op = &shape.op;
    let unsupported = |reason: String| Error::Unsupported {
        op: "sparse_attention",
        backend: BackendKind::Cuda,
        reason,
    };
    let dtype = HalfType::of(op.dtype)
        .ok_or_else(|| unsupported(format!("dtype {}: f16 or bf16 only", op.dtype.name())))?;
    if !ATTENTION_BLOCK_SIZES.contains(&(shape.block_size as u32)) {
        return Err(unsupported(format!(
            "mask block size {}: the CUDA kernel supports 64 and 128",
            shape.block_size
        )));
    }
    let v = AttentionVariant {
        head_dim: u32::try_from(op.head_dim).unwrap_or(u32::MAX),
        dtype,
        block: shape.block_size as u32,
        kernel: AttentionKernel::MmaSync,
    };
    v.valid_on(arch)?;
    let sm90 = AttentionVariant {
        kernel: AttentionKernel::Wgmma,
        ..v
    };
    Ok(if sm90.valid_on(arch).is_ok() {
        vec![v, sm90]
    } else {
        vec![v]
    })
}

/// The default attention pick: the Hopper kernel where it is a candidate, else the first.
pub fn pick_attention(candidates: &[AttentionVariant]) -> usize {
    candidates
        .iter()
        .position(|c| c.kernel == AttentionKernel::Wgmma)
        .unwrap_or(0)
}

impl PlannedOp for AttentionShape<'_> {
    type Variant = AttentionVariant;

    /// head_dim, dtype and block size exact; tokens and batch x heads rounded up to powers of
    /// two; the mask's density rounded up to eighths.
    fn shape_class(&self) -> ShapeClass {
        ShapeClass::Attention {
            head_dim: self.op.head_dim as u64,
            half: HalfType::of(self.op.dtype),
            block: self.block_size as u64,
            tokens_bucket: bucket(self.op.tokens),
            batch_heads_bucket: bucket(self.op.batch.saturating_mul(self.op.heads)),
            density_eighths: (self.mask_density.clamp(0.0, 1.0) * 8.0).ceil() as u8,
        }
    }

    fn candidates(&self, arch: &ArchSpec) -> Result<Vec<AttentionVariant>> {
        attention_candidates(self, arch)
    }

    fn heuristic(&self, candidates: &[AttentionVariant], _arch: &ArchSpec) -> usize {
        pick_attention(candidates)
    }

    fn wrap(v: AttentionVariant) -> PlannedVariant {
        PlannedVariant::Attention(v)
    }

    fn unwrap(v: &PlannedVariant) -> Option<AttentionVariant> {
        match v {
            PlannedVariant::Attention(a) => Some(*a),
            _ => None,
        }
    }
}

// ---- attention backward -------------------------------------------------------------------------

/// The attention backward candidates for `op` with a mask of `block_size` on `arch`: the shape of
/// the `mma.sync` tile passes with 1 buffer of streamed tiles (the fallback: fits every family),
/// then with 2 where the shared memory holds them, then the Hopper tile passes for each of
/// [`ATTENTION_BACKWARD_SM90_STAGES`] where valid (sm_90a, blocks of 128), then the Hopper
/// fused-dq plans ([`AttentionBackwardDq::FusedAtomic`], then
/// [`AttentionBackwardDq::FusedDeterministic`], for each of those stage counts where the shared
/// memory holds them) ([`Error::Unsupported`] when the kernel has none). The atomic plans'
/// dq is not bitwise reproducible ([`AttentionBackwardPlan::is_deterministic`]):
/// [`pick_attention_backward`] picks them only when the op does not ask for a deterministic
/// backward.
pub fn attention_backward_candidates(
    op: &tessera_core::SparseAttention,
    block_size: usize,
    arch: &ArchSpec,
) -> Result<Vec<AttentionBackwardPlan>> {
    let unsupported = |reason: String| Error::Unsupported {
        op: "sparse_attention_backward",
        backend: BackendKind::Cuda,
        reason,
    };
    let dtype = HalfType::of(op.dtype)
        .ok_or_else(|| unsupported(format!("dtype {}: f16 or bf16 only", op.dtype.name())))?;
    if !ATTENTION_BLOCK_SIZES.contains(&(block_size as u32)) {
        return Err(unsupported(format!(
            "mask block size {block_size}: the CUDA kernel supports 64 and 128"
        )));
    }
    let plan = |kernel, stages, dq| {
        AttentionBackwardPlan::new(AttentionBackwardTiles {
            head_dim: u32::try_from(op.head_dim).unwrap_or(u32::MAX),
            dtype,
            block: block_size as u32,
            stages,
            kernel,
            dq,
        })
    };
    let fallback = plan(
        AttentionBackwardKernel::MmaSync,
        ATTENTION_BACKWARD_STAGES[0],
        AttentionBackwardDq::QueryPass,
    );
    fallback.valid_on(arch)?;
    let mut v = vec![fallback];
    let others = ATTENTION_BACKWARD_STAGES[1..]
        .iter()
        .map(|&s| {
            plan(
                AttentionBackwardKernel::MmaSync,
                s,
                AttentionBackwardDq::QueryPass,
            )
        })
        .chain(
            [
                AttentionBackwardDq::QueryPass,
                AttentionBackwardDq::FusedAtomic,
                AttentionBackwardDq::FusedDeterministic,
            ]
            .into_iter()
            .flat_map(|dq| {
                ATTENTION_BACKWARD_SM90_STAGES
                    .iter()
                    .map(move |&s| plan(AttentionBackwardKernel::Wgmma, s, dq))
            }),
        );
    v.extend(others.filter(|p| p.valid_on(arch).is_ok()));
    Ok(v)
}

/// Stages of the fused atomic backward that the default pick takes at `head_dim`: 2 at 128
/// (3 stages leave 231 KB of shared memory for little more overlap), 3 at 64. Measured on the
/// H200 (session 10, `attention_backward_timing`, 1 x 24 heads x 32768 tokens, random masks of
/// density 0.25 and dense, per-call workspace included): the two-pass plan's time over the
/// fused atomic plan's was 1.09-1.10 (2 stages) and 1.05-1.09 (3 stages) at head_dim 128,
/// 1.10-1.12 (2) and 1.13 (3) at 64.
pub fn attention_backward_fused_stages(head_dim: u32) -> u32 {
    if head_dim >= 128 {
        2
    } else {
        3
    }
}

/// The default attention backward pick for an op that asks for a bitwise deterministic dq
/// (`deterministic`, [`tessera_core::SparseAttention::deterministic_backward`]) or not.
/// Not deterministic: the fused atomic plan ([`AttentionBackwardDq::FusedAtomic`], 5 matmuls
/// instead of 7) with [`attention_backward_fused_stages`] where it is a candidate (sm_90a,
/// blocks of 128). Otherwise, and where there is none: the last candidate whose dq has its own
/// pass (the Hopper tile passes with the most stages where they are candidates, else the most
/// buffers of streamed tiles, so that loads overlap the math). The fused deterministic plan is
/// never the default: its turn waits cost more than the saved matmuls on sparse masks (0.83x the
/// two-pass plan at density 0.25; 1.07-1.10x on dense masks).
pub fn pick_attention_backward(candidates: &[AttentionBackwardPlan], deterministic: bool) -> usize {
    let two_pass = candidates
        .iter()
        .rposition(|p| p.dq() == AttentionBackwardDq::QueryPass)
        .unwrap_or(0);
    if deterministic {
        return two_pass;
    }
    candidates
        .iter()
        .position(|p| {
            matches!(p.key_value, AttentionBackwardVariant::KeyValue(t)
                if t.dq == AttentionBackwardDq::FusedAtomic
                    && t.stages == attention_backward_fused_stages(t.head_dim))
        })
        .unwrap_or(two_pass)
}

// ---- MLA decode -------------------------------------------------------------------------------

/// The MLA decode candidates for the op's layout: every tiling whose shared memory fits `arch`,
/// the smallest (16 rows, 32 keys, 2 stages) first; [`Error::Unsupported`] when none fits.
pub fn mla_decode_candidates(
    shape: &MlaDecodeShape,
    arch: &ArchSpec,
) -> Result<Vec<MlaDecodeVariant>> {
    let layout = &shape.op.layout;
    layout.validate()?;
    let fallback = MLA_DECODE_TILINGS[MLA_DECODE_TILINGS.len() - 1];
    let order = std::iter::once(fallback).chain(
        MLA_DECODE_TILINGS[..MLA_DECODE_TILINGS.len() - 1]
            .iter()
            .copied(),
    );
    let v: Vec<MlaDecodeVariant> = order
        .map(|t| MlaDecodeVariant::new(layout, t))
        .chain(MlaDecodeVariant::sm90_variants(layout))
        .filter(|v| v.valid_on(arch).is_ok())
        .collect();
    if v.is_empty() {
        let smallest = MlaDecodeVariant::new(layout, fallback);
        return Err(Error::Unsupported {
            op: "mla_decode",
            backend: BackendKind::Cuda,
            reason: format!(
                "qk_dim {} needs {} bytes of shared memory per block; the device allows {}",
                layout.qk_dim(),
                smallest.smem_bytes(),
                arch.max_smem_per_block
            ),
        });
    }
    Ok(v)
}

/// The default MLA decode pick: for the FP8 cache, the Hopper FP8 kernel where it is a
/// candidate, with 16 rows per CTA for at most 16 rows `s_q * heads`, else 32 (measured on the
/// H200 faster than the `mma.sync` kernel at every standard shape: 1.3x at 16 rows, 2.3x at 32,
/// 1.4x at 128); for bf16, the Hopper 64-row kernel where it is a candidate and the rows are
/// more than 16 (at 16 rows the `mma.sync` kernel's 16-row tiles stream the cache as fast
/// without padding the rows to 64; the transposed bf16 tilings are candidates, not yet
/// measured, so never the default); else the fewest rows per CTA that holds all rows (16, 32, else 64), then the
/// first tiling in [`MLA_DECODE_TILINGS`] from there that is a candidate.
pub fn pick_mla_decode(shape: &MlaDecodeShape, candidates: &[MlaDecodeVariant]) -> usize {
    let rows = shape.op.s_q * shape.op.heads;
    // The FP8 seesaw (64 rows per CTA, the codes converted into bf16 tiles by the producer
    // warpgroup) above 64 rows where the page size allows it (H200 harness, session 17: 355-392
    // TFLOPS at h_q 128, 1.4x the 32-row register-operand kernel's 238-273 in the same run).
    if shape.op.layout.format == MlaCacheFormat::Fp8 && rows > 64 {
        if let Some(i) = candidates
            .iter()
            .position(|c| c.kernel == MlaDecodeKernel::Wgmma && c.seesaw)
        {
            return i;
        }
    }
    // The FP8 register-operand sm90 kernels: 16 rows per CTA up to 16 rows (H200, check-12:
    // 0.71-0.89x the bf16 time at h_q 16 s_q 1, where the transposed FP8 kernel took 0.98-1.0x);
    // 32 (tile pairs) above 64 rows where the seesaw cannot run (check-13: 204-254 TFLOPS at h_q
    // 128, 1.03-1.12x the transposed kernel). From 17 to 64 rows the transposed kernel below
    // (check-13: the 32-row register-operand kernel at 0.90-1.05x its speed at h_q 16 s_q 2, 0.97x
    // at varlen h_q 16).
    if shape.op.layout.format == MlaCacheFormat::Fp8 && (rows <= 16 || rows > 64) {
        let row_slices = if rows <= 16 { 1 } else { 2 };
        if let Some(i) = candidates
            .iter()
            .position(|c| c.is_fp8_registers() && c.row_slices == row_slices)
        {
            return i;
        }
    }
    // The transposed sm90 kernel (16 or 32 query rows as the wgmma N, no padding): every FP8
    // shape, and bf16 up to 32 rows (H200, 2026-11-30: 3561-4456 GB/s at h_q 16 s_q 1 with 16
    // rows, 3272-4387 at s_q 2 with 32, against 3137-3660 for the 64-row kernel; see
    // dev/NOTES-mla-decode-sm90.md).
    if shape.op.layout.format == MlaCacheFormat::Fp8 || rows <= 32 {
        let row_slices = if rows <= 16 { 1 } else { 2 };
        if let Some(i) = candidates.iter().position(|c| {
            c.kernel == MlaDecodeKernel::Wgmma && c.is_transposed() && c.row_slices == row_slices
        }) {
            return i;
        }
    } else {
        // The 64-row kernel: its seesaw variant first where the page size allows it (listed first
        // by sm90_variants; H200 check-11: 462-559 TFLOPS at h_q 128, where the default schedule
        // ran at 354-389 in check-10).
        if let Some(i) = candidates
            .iter()
            .position(|c| c.kernel == MlaDecodeKernel::Wgmma && !c.is_transposed())
        {
            return i;
        }
    }
    let preferred = if rows <= 16 {
        4
    } else if rows <= 32 {
        2
    } else {
        0
    };
    MLA_DECODE_TILINGS[preferred..]
        .iter()
        .find_map(|t| {
            candidates
                .iter()
                .position(|c| c.kernel == MlaDecodeKernel::MmaSync && c.tiling() == *t)
        })
        .unwrap_or(0)
}

impl PlannedOp for MlaDecodeShape<'_> {
    type Variant = MlaDecodeVariant;

    /// The layout and `s_q * heads` exact; batch and the longest sequence rounded up to powers
    /// of two.
    fn shape_class(&self) -> ShapeClass {
        let l = &self.op.layout;
        ShapeClass::MlaDecode {
            format: l.format.into(),
            latent_dim: l.latent_dim as u64,
            rope_dim: l.rope_dim as u64,
            page_size: l.page_size as u64,
            rows: self.op.s_q.saturating_mul(self.op.heads) as u64,
            batch_bucket: bucket(self.op.batch),
            seq_bucket: bucket(self.max_seq_len),
        }
    }

    fn candidates(&self, arch: &ArchSpec) -> Result<Vec<MlaDecodeVariant>> {
        mla_decode_candidates(self, arch)
    }

    fn heuristic(&self, candidates: &[MlaDecodeVariant], _arch: &ArchSpec) -> usize {
        pick_mla_decode(self, candidates)
    }

    fn wrap(v: MlaDecodeVariant) -> PlannedVariant {
        PlannedVariant::MlaDecode(v)
    }

    fn unwrap(v: &PlannedVariant) -> Option<MlaDecodeVariant> {
        match v {
            PlannedVariant::MlaDecode(m) => Some(*m),
            _ => None,
        }
    }
}

// ---- FP8 quantize -----------------------------------------------------------------------------

/// The quantizer candidates ([`QuantizeVariant::candidates`]): per token both unit orders, the
/// one measured faster on the architecture first; 128x128 one kernel.
pub fn quantize_candidates(shape: &QuantizeShape, arch: &ArchSpec) -> Result<Vec<QuantizeVariant>> {
    let candidates = QuantizeVariant::candidates(&shape.op, shape.input, arch)?;
    for v in &candidates {
        v.valid_on(arch)?;
    }
    Ok(candidates)
}

impl PlannedOp for QuantizeShape {
    type Variant = QuantizeVariant;

    /// Input, rule and granularity exact; rows rounded up to a power of two, cols exact.
    fn shape_class(&self) -> ShapeClass {
        ShapeClass::Quantize {
            input: super::quantize::QuantizeInput::of(self.input),
            pow2: self.op.scale_rule == tessera_core::ScaleRule::PowerOfTwo,
            granularity: self.op.granularity.into(),
            rows_bucket: bucket(self.op.rows),
            cols: self.op.cols as u64,
        }
    }

    fn candidates(&self, arch: &ArchSpec) -> Result<Vec<QuantizeVariant>> {
        quantize_candidates(self, arch)
    }

    fn heuristic(&self, _candidates: &[QuantizeVariant], _arch: &ArchSpec) -> usize {
        0
    }

    fn wrap(v: QuantizeVariant) -> PlannedVariant {
        PlannedVariant::Quantize(v)
    }

    fn unwrap(v: &PlannedVariant) -> Option<QuantizeVariant> {
        match v {
            PlannedVariant::Quantize(q) => Some(*q),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::{
        DType, Fp8Granularity, Fp8Quantize, MlaCacheFormat, MlaCacheLayout, MlaDecode, ScaleRule,
        SparseAttention,
    };

    fn archs() -> Vec<ArchSpec> {
        [
            (8, 0, 108),
            (8, 6, 84),
            (8, 7, 16),
            (8, 9, 58),
            (9, 0, 132),
            (9, 0, 78),
            (10, 0, 148),
            (12, 0, 170),
        ]
        .iter()
        .map(|&(a, b, s)| ArchSpec::from_compute_capability(a, b, s).unwrap())
        .collect()
    }

    #[test]
    fn wave_arithmetic() {
        assert_eq!(waves(0, 132), (0, 1.0));
        assert_eq!(waves(1, 132), (1, 1.0 / 132.0));
        assert_eq!(waves(132, 132), (1, 1.0));
        assert_eq!(waves(133, 132), (2, 1.0 / 132.0));
        let (w, f) = waves(1792, 132);
        assert_eq!(w, 14);
        assert!((f - (1792.0 - 13.0 * 132.0) / 132.0).abs() < 1e-12);
        assert_eq!(waves(10, 0), (10, 1.0));
    }

    #[test]
    fn gemm_candidates_first_is_valid_and_picks_follow_the_waves() {
        for arch in archs() {
            for (m, n, k) in [
                (1, 8, 16),
                (37, 2112, 512),
                (100, 136, 400),
                (4096, 7168, 2048),
                (64, 24576, 1536),
                (129, 2112, 512),
            ] {
                let op = Fp8Gemm::new(m, n, k);
                let c = gemm_candidates(&op, &arch).unwrap();
                assert!(!c.is_empty());
                c[0].valid_on(&arch).unwrap();
                for v in &c {
                    v.valid_on(&arch).unwrap();
                }
                assert!(matches!(c[0], GemmVariant::MmaSync(_)));
                let pick = pick_gemm(&op, &c, &arch);
                assert!(pick < c.len());
            }
        }
        let h = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        // The mma.sync picks, on an H100-sized device without the Hopper kernel.
        let mma_only = ArchSpec {
            wgmma: false,
            ..h.clone()
        };
        let pick = |m, n, k| {
            let op = Fp8Gemm::new(m, n, k);
            let c = gemm_candidates(&op, &mma_only).unwrap();
            c[pick_gemm(&op, &c, &mma_only)]
        };
        let tile = |t: MmaSyncGemm| GemmVariant::MmaSync(t);
        // Large m: the large tile (fewest waves).
        assert_eq!(pick(4096, 7168, 2048), tile(MmaSyncGemm::LARGE));
        assert_eq!(pick(4096, 2112, 7168), tile(MmaSyncGemm::LARGE));
        // m 128, n 7168: 56 large tiles (0.42 of a wave) vs 112 small (0.85) vs 224 tiny (2 waves).
        assert_eq!(pick(128, 7168, 16384), tile(MmaSyncGemm::SMALL));
        // m 64, n 2112: 17 column tiles: the tiny tile doubles the CTAs in the one wave.
        assert_eq!(pick(64, 2112, 7168), tile(MmaSyncGemm::TINY));
        // m 64, n 24576: 192 CTAs of large or small tiles (2 waves) vs 384 tiny (3): the small
        // tile (no padded rows) over the large one.
        assert_eq!(pick(64, 24576, 1536), tile(MmaSyncGemm::SMALL));
        // With wgmma: the 128-row tiles of least estimated time for large m; for m <= 128 the
        // tiles whose CTAs read the least, split-K where its clusters fit in one wave.
        let hopper_pick = |m, n, k| {
            let op = Fp8Gemm::new(m, n, k);
            let c = gemm_candidates(&op, &h).unwrap();
            match c[pick_gemm(&op, &c, &h)] {
                GemmVariant::Wgmma(t) => t,
                other => panic!("{other:?}"),
            }
        };
        let wg = |m, n, k| {
            let t = hopper_pick(m, n, k);
            (t.bm, t.bn, t.cluster_m, t.split_k)
        };
        // 32 x 41 tiles of 128 x 176 (10 waves) over 32 x 38 of 192 (10) and 32 x 45 of 160
        // (11), as the tuner picked on the H200 (check-23).
        assert_eq!(wg(4096, 7168, 16384), (128, 176, 1, 1));
        assert_eq!(wg(4096, 2112, 7168), (128, 176, 1, 1));
        assert_eq!(wg(4096, 32768, 512), (128, 192, 1, 1));
        // 32 x 24 tiles of 128 x 176 (6 waves, 5.8 full) over 32 x 22 of 128 x 192 (6 waves,
        // 5.3 full) and 32 x 26 of 128 x 160 (7 waves).
        assert_eq!(wg(4096, 4096, 7168), (128, 176, 1, 1));
        assert_eq!(wg(4096, 24576, 1536), (128, 192, 1, 1));
        // Masked groups (counts unknown to the host: every group planned full): 8 x 32 x 22
        // tiles of 128 x 192, as the plain GEMM of 18432 rows picks.
        let masked = Fp8Gemm::grouped(4096, 4096, 7168, GemmGrouping::Masked { groups: 8 });
        let c = gemm_candidates(&masked, &h).unwrap();
        match c[pick_gemm(&masked, &c, &h)] {
            GemmVariant::Wgmma(t) => assert_eq!((t.bm, t.bn, t.grouping), (128, 192, 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(wg(18432, 4096, 7168), (128, 192, 1, 1));
        // 128 tiles of 64 x 56 in one wave read 1.97 MB each; 56 tiles of 64 x 128 split 2 read
        // 1.57 MB a CTA, weighed 1.4x for the split.
        assert_eq!(wg(64, 7168, 16384), (64, 56, 1, 1));
        // 2 x 64 tiles of 64 x 64 in one wave, over 64 x 128 split 2.
        assert_eq!(wg(128, 4096, 7168), (64, 64, 1, 1));
        // 22 tiles of 64 x 96, 4 splits: 22 clusters of 4 fit in one wave (about 29).
        assert_eq!(wg(64, 2112, 7168), (64, 96, 1, 4));
        assert_eq!(wg(128, 7168, 16384), (128, 128, 1, 2));
        // Split-K clusters that would take two waves are not picked: 64 tiles of 64 x 64 at 2
        // splits fit one wave, 64 x 96 at 4 splits (43 clusters of 4) would not.
        assert_eq!(wg(64, 4096, 7168), (64, 64, 1, 2));
        // Up to 16 K blocks: one-CTA 64 x 128 without split where its tiles fill their rounds
        // (56 and 112 tiles in one round; 256 in two, the second 94 % full).
        let per_sm = |m, n, k| {
            let t = hopper_pick(m, n, k);
            (t.bm, t.bn, t.ctas_per_sm, t.split_k)
        };
        assert_eq!(per_sm(64, 7168, 2048), (64, 128, 1, 1));
        assert_eq!(per_sm(128, 7168, 2048), (64, 128, 1, 1));
        assert_eq!(per_sm(64, 32768, 512), (64, 128, 1, 1));
        // 192 tiles of 64 x 128 leave the second round 45 % full; 384 of 64 x 64 fill three
        // rounds (91 %), allowed at m <= 64.
        assert_eq!(per_sm(64, 24576, 1536), (64, 64, 1, 1));
        // Neither fills its rounds (160 tiles of 64 x 128, 320 of 64 x 64: last rounds 21 % and
        // 42 % full): at 12..16 K blocks 64 x 64 at two CTAs per SM within two rounds (320
        // tiles over 264 slots).
        assert_eq!(per_sm(64, 20480, 2048), (64, 64, 2, 1));
        // 2 x 512 tiles of 64 x 64 at two per SM would take 4 rounds, 2 x 256 of 64 x 128 at
        // one per SM 4; 768 tiles would take 3 rounds: the 128-row tiles.
        assert_eq!(per_sm(128, 32768, 2048).0, 128);
        // 2 x 192 tiles of 64 x 128 fill three rounds (91 %), but M128 allows two.
        assert_eq!(wg(128, 24576, 1536), (128, 192, 1, 1));
        assert_eq!(wg(128, 32768, 512), (128, 128, 1, 1));
        // sm_89: the e4m3 mma, and no 128 KB tile.
        let l4 = ArchSpec::from_compute_capability(8, 9, 58).unwrap();
        let c = gemm_candidates(&Fp8Gemm::new(64, 2112, 512), &l4).unwrap();
        assert_eq!(c.len(), 3);
        assert!(c
            .iter()
            .all(|v| matches!(v, GemmVariant::MmaSync(t) if t.e4m3_mma)));
        // Invalid shapes are the op's typed error.
        assert!(gemm_candidates(&Fp8Gemm::new(0, 8, 16), &h).is_err());
    }

    #[test]
    fn attention_candidates_cover_the_kernel() {
        for arch in archs() {
            for head_dim in [64, 128] {
                for dtype in [DType::F16, DType::BF16] {
                    for block_size in [64, 128] {
                        let op = SparseAttention::new(1, 77, 3, head_dim, dtype);
                        let shape = AttentionShape {
                            op: &op,
                            block_size,
                            mask_density: 0.3,
                        };
                        let c = attention_candidates(&shape, &arch).unwrap();
                        // The mma.sync kernel first (the fallback); the Hopper kernel after it
                        // on sm_90a with blocks of 128, and then the default pick.
                        let hopper = arch.wgmma && block_size == 128;
                        assert_eq!(c.len(), 1 + usize::from(hopper));
                        assert_eq!(c[0].kernel, AttentionKernel::MmaSync);
                        for v in &c {
                            v.valid_on(&arch).unwrap();
                        }
                        assert_eq!(pick_attention(&c), usize::from(hopper));
                    }
                }
            }
        }
        let h = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let op = SparseAttention::new(1, 77, 3, 64, DType::F16);
        let bad = AttentionShape {
            op: &op,
            block_size: 32,
            mask_density: 1.0,
        };
        assert!(matches!(
            attention_candidates(&bad, &h),
            Err(Error::Unsupported { .. })
        ));
    }

    fn mla_op(layout: MlaCacheLayout, s_q: usize, heads: usize) -> MlaDecode {
        MlaDecode {
            batch: 3,
            s_q,
            heads,
            max_pages: 5,
            softmax_scale: 0.1,
            layout,
        }
    }

    fn mla_shape(op: &MlaDecode) -> MlaDecodeShape<'_> {
        MlaDecodeShape {
            op,
            max_seq_len: 300,
        }
    }

    #[test]
    fn mla_candidates_fit_and_the_pick_follows_the_rows() {
        let layouts = [
            MlaCacheLayout::default(),
            MlaCacheLayout {
                format: MlaCacheFormat::Fp8,
                ..MlaCacheLayout::default()
            },
            MlaCacheLayout {
                page_size: 1,
                latent_dim: 128,
                rope_dim: 0,
                format: MlaCacheFormat::Bf16,
            },
            MlaCacheLayout {
                page_size: 7,
                latent_dim: 1024,
                rope_dim: 256,
                format: MlaCacheFormat::Fp8,
            },
        ];
        for arch in archs() {
            for layout in layouts {
                for (s_q, heads) in [(1, 1), (1, 16), (2, 16), (1, 128), (3, 7)] {
                    let op = mla_op(layout, s_q, heads);
                    let shape = mla_shape(&op);
                    let smallest = MlaDecodeVariant::new(&layout, (1, 32, 2)).smem_bytes();
                    if smallest > arch.max_smem_per_block {
                        // The largest layouts fit only sm_90's 227 KB.
                        assert!(matches!(
                            mla_decode_candidates(&shape, &arch),
                            Err(Error::Unsupported { .. })
                        ));
                        assert_ne!(arch.nvrtc_target(), "sm_90a");
                        continue;
                    }
                    let c = mla_decode_candidates(&shape, &arch).unwrap();
                    c[0].valid_on(&arch).unwrap();
                    assert_eq!(c[0].tiling(), (1, 32, 2), "{layout:?} on {arch}");
                    let p = pick_mla_decode(&shape, &c);
                    assert!(c[p].fits_layout(&layout));
                }
            }
        }
        let h = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let ds = MlaCacheLayout::default();
        let pick = |s_q, heads| {
            let op = mla_op(ds, s_q, heads);
            let shape = mla_shape(&op);
            let c = mla_decode_candidates(&shape, &h).unwrap();
            c[pick_mla_decode(&shape, &c)].tiling()
        };
        // bf16 on sm_90a: the transposed Hopper kernel up to 32 rows (16 or 32 per CTA), the
        // 64-row one above.
        assert_eq!(pick(1, 16), (1, 64, 2));
        assert_eq!(pick(2, 16), (2, 64, 2));
        assert_eq!(pick(1, 128), crate::plan::mla::MLA_DECODE_SM90_TILING);
        // The transposed bf16 tilings are candidates on sm_90a.
        let op = mla_op(ds, 2, 16);
        let c = mla_decode_candidates(&mla_shape(&op), &h).unwrap();
        assert_eq!(
            c.iter().filter(|v| v.is_transposed()).count(),
            crate::plan::mla::MLA_DECODE_SM90_TRANSPOSED_TILINGS.len()
        );
        // The FP8 cache: on sm_90a the register-operand kernel's 16 rows per CTA up to 16 rows,
        // the 64-row seesaw above 64 (the 32-row register-operand kernel where pages are not of
        // 64s); the transposed kernel's 32 rows between; the mma.sync kernel elsewhere.
        let fp8 = MlaCacheLayout {
            format: MlaCacheFormat::Fp8,
            ..ds
        };
        let a100 = ArchSpec::from_compute_capability(8, 0, 108).unwrap();
        let pick_fp8 = |s_q, heads, arch: &ArchSpec| {
            let op = mla_op(fp8, s_q, heads);
            let shape = mla_shape(&op);
            let c = mla_decode_candidates(&shape, arch).unwrap();
            let v = c[pick_mla_decode(&shape, &c)];
            (v.kernel, v.tiling())
        };
        assert_eq!(
            pick_fp8(1, 16, &h),
            (
                MlaDecodeKernel::Wgmma,
                crate::plan::mla::MLA_DECODE_SM90_FP8_REGISTERS_TILINGS[0]
            )
        );
        let pairs = (
            MlaDecodeKernel::Wgmma,
            crate::plan::mla::MLA_DECODE_SM90_FP8_REGISTERS_TILINGS[1],
        );
        assert_eq!(pick_fp8(2, 16, &h), (MlaDecodeKernel::Wgmma, (2, 64, 2)));
        assert_eq!(pick_fp8(4, 16, &h), (MlaDecodeKernel::Wgmma, (2, 64, 2)));
        let seesaw = (
            MlaDecodeKernel::Wgmma,
            crate::plan::mla::MLA_DECODE_SM90_TILING,
        );
        assert_eq!(pick_fp8(5, 16, &h), seesaw);
        assert_eq!(pick_fp8(1, 128, &h), seesaw);
        let small_pages = MlaCacheLayout {
            page_size: 16,
            ..fp8
        };
        let op = mla_op(small_pages, 1, 128);
        let shape = mla_shape(&op);
        let c = mla_decode_candidates(&shape, &h).unwrap();
        let v = c[pick_mla_decode(&shape, &c)];
        assert_eq!((v.kernel, v.tiling()), pairs);
        assert_eq!(pick_fp8(1, 16, &a100).0, MlaDecodeKernel::MmaSync);
        assert_eq!(pick_fp8(1, 128, &a100).0, MlaDecodeKernel::MmaSync);
        // sm_89's 99 KB: only the smallest DeepSeek tiling fits.
        let l4 = ArchSpec::from_compute_capability(8, 9, 58).unwrap();
        let op = mla_op(ds, 1, 128);
        let shape = mla_shape(&op);
        let c = mla_decode_candidates(&shape, &l4).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[pick_mla_decode(&shape, &c)].tiling(), (1, 32, 2));
    }

    #[test]
    fn quantize_has_both_unit_orders_per_token_and_one_kernel_per_block() {
        for h in archs() {
            for input in [DType::F32, DType::F16, DType::BF16] {
                for (granularity, count) in [
                    (Fp8Granularity::PerToken1x128, 2),
                    (Fp8Granularity::Block128x128, 1),
                ] {
                    let shape = QuantizeShape {
                        op: Fp8Quantize {
                            rows: 3,
                            cols: 130,
                            granularity,
                            scale_rule: ScaleRule::Float,
                        },
                        input,
                    };
                    let c = quantize_candidates(&shape, &h).unwrap();
                    assert_eq!(c.len(), count);
                    assert_eq!(shape.heuristic(&c, &h), 0);
                    for v in &c {
                        v.valid_on(&h).unwrap();
                    }
                }
            }
        }
    }
}
