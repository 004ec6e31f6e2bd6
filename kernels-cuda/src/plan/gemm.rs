//! The block-scaled FP8 GEMM's kernel variants.
//!
//! Every kind of GEMM kernel is an arm of [`GemmVariant`]; all of them compute the same
//! function (see [`tessera_core::Fp8Gemm`]) and are candidates of the same op.

use super::{check_resources, ArchSpec, KernelSpec};
use crate::compile::KernelSource;
use serde::{Deserialize, Serialize};
use tessera_core::{BackendKind, Error, Fp8Gemm, Result};

/// Columns of D per CTA of the `mma.sync` kernel (one 128-wide scale block of B).
pub const GEMM_TILE_N: u32 = 128;

/// K per pipeline stage of the `mma.sync` kernel (one scale block).
const MMA_SYNC_TILE_K: u32 = 128;

/// A CTA tile of the `mma.sync` kernel (`kernels/fp8_gemm.cu`): `bm x 128` outputs per CTA,
/// `warps_m x warps_n` warps, `stages` shared-memory buffers of one 128-wide K block each.
/// Runs on sm_80 and later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MmaSyncGemm {
    /// Rows of D per CTA: 32, 64 or 128.
    pub bm: u32,
    /// Warps along M.
    pub warps_m: u32,
    /// Warps along N.
    pub warps_n: u32,
    /// Pipeline depth (K blocks in shared memory at once), 2..=8.
    pub stages: u32,
    /// `mma.m16n8k32` e4m3 (sm_89+) instead of decoding to 16-bit for `mma.m16n8k16`.
    pub e4m3_mma: bool,
}

impl MmaSyncGemm {
    /// 128 x 128 outputs per CTA, 8 warps (4 along M x 2 along N, each 32 x 64), 3 stages: for
    /// large m (on the H200 12% faster than 2 x 4 warps of 64 x 32 at m 4096, n 7168, k 2048).
    pub const LARGE: Self = Self::tile(128, 4, 2, 3);
    /// 64 x 128 outputs per CTA, 8 warps (each 32 x 32), 4 stages: for small m, where the large
    /// tile would leave SMs idle.
    pub const SMALL: Self = Self::tile(64, 2, 4, 4);
    /// 32 x 128 outputs per CTA, 8 warps (each 16 x 32), 4 stages: twice the CTAs of
    /// [`MmaSyncGemm::SMALL`] when m is at most a few tiles (decode-sized GEMMs).
    pub const TINY: Self = Self::tile(32, 2, 4, 4);
    /// [`MmaSyncGemm::LARGE`] with 4 stages (128 KB of shared memory: not on sm_86/sm_89).
    pub const LARGE_DEEP: Self = Self::tile(128, 4, 2, 4);

    /// A tile with the decoding path (`e4m3_mma` false).
    pub const fn tile(bm: u32, warps_m: u32, warps_n: u32, stages: u32) -> Self {
        Self {
            bm,
            warps_m,
            warps_n,
            stages,
            e4m3_mma: false,
        }
    }

    /// The same tile with `e4m3_mma` set.
    pub const fn with_e4m3_mma(self, e4m3_mma: bool) -> Self {
        Self { e4m3_mma, ..self }
    }

    /// Threads per CTA.
    pub fn threads(&self) -> u32 {
        self.warps_m.saturating_mul(self.warps_n).saturating_mul(32)
    }

    /// Dynamic shared memory per CTA, bytes: `stages` x (A tile + B tile) of 128 bytes of K per
    /// row.
    pub fn smem_bytes(&self) -> u32 {
        self.stages
            .saturating_mul(self.bm.saturating_add(GEMM_TILE_N))
            .saturating_mul(MMA_SYNC_TILE_K)
    }

    /// Checks the kernel's compile-time constraints (what `fp8_gemm.cu` rejects with `#error`
    /// and `static_assert`): bm 32, 64 or 128, warps 1..=8 per side splitting bm and 128 into
    /// m16 tiles and even n8 tiles, tiles split evenly over the threads, 2..=8 stages.
    pub fn check_shape(&self) -> Result<()> {
        let threads = self.threads();
        let ok = [32, 64, 128].contains(&self.bm)
            && (1..=8).contains(&self.warps_m)
            && (1..=8).contains(&self.warps_n)
            && (2..=8).contains(&self.stages)
            && threads <= 1024
            && self.bm % (16 * self.warps_m) == 0
            && GEMM_TILE_N % (16 * self.warps_n) == 0
            && (self.bm * 8) % threads == 0
            && (GEMM_TILE_N * 8) % threads == 0;
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "fp8_gemm",
                "variant",
                "an mma.sync tile the kernel supports (see MmaSyncGemm::check_shape)",
                format!("{self:?}"),
            ))
        }
    }
}

/// K per pipeline stage of the Hopper kernel (one scale block, 128 bytes of e4m3 per row).
const WGMMA_TILE_K: u32 = 128;

/// A tile of the Hopper kernel (`kernels/sm90/fp8_gemm.cu`, sm_90a: TMA, wgmma, a producer
/// warpgroup and `math_wg` math warpgroups, persistent over the output tiles; see the kernel's
/// header comment for the design). The fields are the kernel's constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WgmmaGemm {
    /// Rows of D per tile: 64 per math warpgroup (`64 * math_wg`).
    pub bm: u32,
    /// Columns of D per tile: a multiple of 8 in 8..=256 (the wgmma N), 16 with `cluster_m` 2.
    pub bn: u32,
    /// Shared-memory pipeline stages of one 128-deep K block each, 2..=16.
    pub stages: u32,
    /// Math warpgroups: 1 or 2.
    pub math_wg: u32,
    /// The epilogue's shared-memory swizzle in bytes, for a TMA store of D (32, 64 or 128,
    /// dividing `2 * bn`), or 0 for stores straight from registers.
    pub epi_swizzle: u32,
    /// CTAs per cluster along M sharing (multicasting) the B tile: 1 or 2.
    pub cluster_m: u32,
    /// Accumulator sets per math warpgroup: 1, or 2 (the next K block issued before the current
    /// one is promoted; one math warpgroup only: two lack the registers).
    pub acc_stages: u32,
    /// The op's grouping (a compile-time constant of the kernel): 0 one GEMM, 1 contiguous
    /// groups, 2 masked groups (see [`tessera_core::GemmGrouping`]); grouped tiles take one CTA
    /// per cluster. A masked tile stores a warpgroup's rows by TMA when all are below the
    /// group's count, and copies the rest row by row from its epilogue tile.
    pub grouping: u32,
    /// CTAs along x of a cluster splitting K (1..=8; for small M, where too few tiles leave
    /// SMs idle): rank r computes a partial tile over its share of the K blocks and the cluster
    /// sums the partials through distributed shared memory in rank order (deterministic). Above
    /// 1 it needs `cluster_m` 1, `grouping` 0 and `epi_swizzle` 0, and the grid is one cluster
    /// per tile (not persistent).
    pub split_k: u32,
    /// CTAs per SM the kernel is compiled and sized for: 1, or 2 (one math warpgroup, `bn` <= 64
    /// for the 128 registers a thread that leaves, each CTA in half of the SM's shared memory).
    pub ctas_per_sm: u32,
}

impl WgmmaGemm {
    /// Largest wgmma N (`bn`) per math-warpgroup count and accumulator sets that fits the
    /// registers (`acc_stages + 1` arrays of `bn / 2` floats per thread, next to ~30 others:
    /// ptxas gives the math warpgroups of a 384-thread CTA about 208 registers).
    fn max_bn(math_wg: u32, acc_stages: u32) -> u32 {
        match (math_wg, acc_stages) {
            (1, 1) => 256,
            (1, 2) => 128,
            (2, 1) => 192,
            _ => 0,
        }
    }

    /// The widest epilogue swizzle for `bn` (0 when a bf16 row is not a multiple of 32 bytes).
    pub fn epi_swizzle_for(bn: u32) -> u32 {
        [128, 64, 32]
            .into_iter()
            .find(|s| (2 * bn) % s == 0)
            .unwrap_or(0)
    }

    /// Dynamic shared memory for `stages` stages, bytes: the epilogue tile (bf16, when stored
    /// by TMA), per stage the A and B tiles, the activation scales and 4 weight scales, the
    /// stage's two barriers, and 1024 bytes to align the swizzled tiles. The kernel
    /// `static_assert`s the same layout.
    fn smem_for(&self, stages: u32) -> u32 {
        let d = if self.epi_swizzle != 0 {
            self.bm.saturating_mul(self.bn).saturating_mul(2)
        } else {
            0
        };
        let stage = self
            .bm
            .saturating_add(self.bn)
            .saturating_mul(WGMMA_TILE_K)
            .saturating_add(self.bm.saturating_mul(4))
            .saturating_add(16 + 16);
        d.saturating_add(stages.saturating_mul(stage))
            .saturating_add(1024)
    }

    /// A tile with as many stages as fit `max_smem` (at most 16), the widest epilogue swizzle;
    /// `None` if two stages do not fit.
    pub fn fitted(
        bm: u32,
        bn: u32,
        math_wg: u32,
        cluster_m: u32,
        acc_stages: u32,
        max_smem: u32,
    ) -> Option<Self> {
        let mut t = Self {
            bm,
            bn,
            stages: 2,
            math_wg,
            epi_swizzle: Self::epi_swizzle_for(bn),
            cluster_m,
            acc_stages,
            grouping: 0,
            split_k: 1,
            ctas_per_sm: 1,
        };
        if t.smem_for(2) > max_smem {
            return None;
        }
        t.grow_stages(max_smem);
        Some(t)
    }

    /// Adds stages while they fit `max_smem` (at most 16).
    fn grow_stages(&mut self, max_smem: u32) {
        while self.stages < 16 && self.smem_for(self.stages + 1) <= max_smem {
            self.stages += 1;
        }
    }

    /// The same tile splitting K over a cluster of `split_k` CTAs (see [`WgmmaGemm::split_k`]):
    /// stores from registers, re-fitted to `max_smem`. `None` if the tile cannot split (a 2-CTA
    /// B multicast cluster or a grouping).
    pub fn with_split_k(self, split_k: u32, max_smem: u32) -> Option<Self> {
        if self.cluster_m != 1 || self.grouping != 0 {
            return None;
        }
        let mut t = Self {
            split_k,
            epi_swizzle: 0,
            ..self
        };
        t.grow_stages(max_smem);
        Some(t)
    }

    /// The same tile for two CTAs per SM on `arch`: as many stages as fit half of the SM's
    /// shared memory (less the driver's reservation per CTA). `None` if two stages do not fit.
    pub fn with_two_ctas_per_sm(self, arch: &super::ArchSpec) -> Option<Self> {
        let half = (arch.max_smem_per_sm / 2)
            .saturating_sub(super::arch::RESERVED_SMEM_PER_CTA)
            .min(arch.max_smem_per_block);
        let mut t = Self {
            ctas_per_sm: 2,
            stages: 2,
            ..self
        };
        if t.smem_for(2) > half {
            return None;
        }
        t.grow_stages(half);
        Some(t)
    }

    /// CTAs per cluster: the B-multicast pair or the split-K group (one of the two is 1).
    pub fn cluster_size(&self) -> u32 {
        self.cluster_m.saturating_mul(self.split_k)
    }

    /// The persistent kernel's units of work for `op`: clusters of `cluster_m` vertically
    /// adjacent tiles (the last cluster row may be partial), times the groups of a masked op
    /// (whose tiles are enumerated per group).
    pub fn cluster_tiles(&self, op: &Fp8Gemm) -> u64 {
        let groups = match op.grouping {
            tessera_core::GemmGrouping::Masked { groups } => groups as u64,
            _ => 1,
        };
        (op.m as u64)
            .div_ceil(self.bm as u64)
            .div_ceil(self.cluster_m.max(1) as u64)
            .saturating_mul((op.n as u64).div_ceil(self.bn as u64))
            .saturating_mul(groups)
    }

    /// The same tile for an op of `grouping` (0, 1, 2: see [`WgmmaGemm::grouping`]), re-fitted
    /// to `max_smem`; `None` if the tile
    /// cannot serve it (a 2-CTA cluster).
    pub fn for_grouping(self, grouping: u32, max_smem: u32) -> Option<Self> {
        if grouping == 0 {
            return Some(self);
        }
        if self.cluster_m != 1 {
            return None;
        }
        let mut t = Self::fitted(self.bm, self.bn, self.math_wg, 1, self.acc_stages, max_smem)?;
        t.grouping = grouping;
        Some(t)
    }

    /// Threads per CTA: a producer warpgroup and the math warpgroups.
    pub fn threads(&self) -> u32 {
        self.math_wg.saturating_add(1).saturating_mul(128)
    }

    /// Dynamic shared memory per CTA, bytes.
    pub fn smem_bytes(&self) -> u32 {
        self.smem_for(self.stages)
    }

    /// Checks the kernel's compile-time constraints (what `sm90/fp8_gemm.cu` rejects).
    pub fn check_shape(&self) -> Result<()> {
        let sub = if self.math_wg == 0 {
            0
        } else {
            self.bm / (64 * self.math_wg)
        };
        let ok = (1..=2).contains(&self.math_wg)
            && self.bm % (64 * self.math_wg.max(1)) == 0
            && (1..=2).contains(&sub)
            && self.bn % 8 == 0
            && (8..=Self::max_bn(self.math_wg, self.acc_stages)).contains(&self.bn)
            && (2..=16).contains(&self.stages)
            && (self.epi_swizzle == 0
                || ([32, 64, 128].contains(&self.epi_swizzle)
                    && (2 * self.bn) % self.epi_swizzle == 0))
            && (self.cluster_m == 1 || (self.cluster_m == 2 && self.bn % 16 == 0))
            && (self.acc_stages == 1 || (self.acc_stages == 2 && sub == 1))
            && (sub == 1 || self.acc_stages == 1)
            && self.grouping <= 2
            && (self.grouping == 0 || self.cluster_m == 1)
            && (1..=8).contains(&self.split_k)
            && (self.split_k == 1
                || (self.cluster_m == 1
                    && self.grouping == 0
                    && self.epi_swizzle == 0
                    // The f32 partial tile fits in the drained stage buffers.
                    && self.bm as u64 * self.bn as u64 * 4
                        <= self.stages as u64 * (self.bm + self.bn) as u64 * WGMMA_TILE_K as u64))
            && (self.ctas_per_sm == 1
                || (self.ctas_per_sm == 2 && self.math_wg == 1 && self.bn <= 64));
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "fp8_gemm",
                "variant",
                "a wgmma tile the kernel supports (see WgmmaGemm::check_shape)",
                format!("{self:?}"),
            ))
        }
    }
}

/// A kernel variant of the block-scaled FP8 GEMM. Every arm is a candidate of the same op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GemmVariant {
    /// The `mma.sync` kernel (`kernels/fp8_gemm.cu`), sm_80 and later.
    MmaSync(MmaSyncGemm),
    /// The Hopper kernel (`kernels/sm90/fp8_gemm.cu`), sm_90a.
    Wgmma(WgmmaGemm),
}

impl GemmVariant {
    /// Rows of D per output tile.
    pub fn tile_m(&self) -> u32 {
        match self {
            GemmVariant::MmaSync(t) => t.bm,
            GemmVariant::Wgmma(t) => t.bm,
        }
    }

    /// Columns of D per output tile.
    pub fn tile_n(&self) -> u32 {
        match self {
            GemmVariant::MmaSync(_) => GEMM_TILE_N,
            GemmVariant::Wgmma(t) => t.bn,
        }
    }

    /// Output tiles of `op` (one CTA each for the `mma.sync` kernel; the persistent Hopper
    /// kernel's CTAs loop over them, clusters of `cluster_m` taking `cluster_m` tiles at a time).
    pub fn tiles(&self, op: &Fp8Gemm) -> u64 {
        (op.m as u64).div_ceil(self.tile_m() as u64) * (op.n as u64).div_ceil(self.tile_n() as u64)
    }

    /// CTAs resident per SM. The `mma.sync` kernel is compiled with `__launch_bounds__(THREADS,
    /// 1)` and holds about 200 registers a thread, so the register file allows one CTA per SM
    /// whatever the shared memory would allow: counted as 1. The Hopper kernel: its
    /// [`WgmmaGemm::ctas_per_sm`].
    pub fn ctas_per_sm(&self, _arch: &ArchSpec) -> u32 {
        match self {
            GemmVariant::MmaSync(_) => 1,
            GemmVariant::Wgmma(t) => t.ctas_per_sm,
        }
    }

    /// The launch grid for `op` on `arch`: for the `mma.sync` kernel one CTA per output tile;
    /// for the persistent Hopper kernel at most `ctas_per_sm` CTAs per SM (whole clusters), and
    /// for one GEMM no more than its rounds of tiles need (1216 tiles over 132 SMs: 10 rounds,
    /// 122 CTAs); with split-K one cluster of `split_k` CTAs per tile.
    pub fn grid(&self, op: &Fp8Gemm, arch: &ArchSpec) -> Result<(u32, u32, u32)> {
        let tiles = self.tiles(op);
        let ctas = match self {
            GemmVariant::MmaSync(_) => tiles,
            GemmVariant::Wgmma(t) if t.split_k > 1 => {
                t.cluster_tiles(op).saturating_mul(t.split_k as u64)
            }
            GemmVariant::Wgmma(t) => {
                let cm = t.cluster_m.max(1) as u64;
                let slots = arch.sm_count as u64 * t.ctas_per_sm.max(1) as u64;
                let units = t.cluster_tiles(op);
                let mut clusters = units.min((slots / cm).max(1));
                if t.grouping == 0 {
                    // As few clusters as keep the same rounds of tiles: the SMs left idle
                    // lower the power drawn, and at the H200's power cap the others run
                    // faster (harness, 128 x 192 at M4096 N7168 K16384, 100 launches: 122
                    // CTAs 826-866 us against 913-950 for 132). Grouped ops keep every
                    // slot: their tiles (masked: counts on the device) may be fewer.
                    let rounds = units.div_ceil(clusters.max(1));
                    clusters = units.div_ceil(rounds.max(1));
                }
                clusters * cm
            }
        };
        match u32::try_from(ctas).ok().filter(|&c| c <= i32::MAX as u32) {
            Some(c) => Ok((c, 1, 1)),
            None => Err(Error::invalid(
                "fp8_gemm",
                "m",
                "at most 2^31 - 1 output tiles",
                tiles.to_string(),
            )),
        }
    }
}

impl KernelSpec for GemmVariant {
    fn op(&self) -> &'static str {
        "fp8_gemm"
    }

    fn source(&self) -> KernelSource {
        match self {
            GemmVariant::MmaSync(_) => crate::kernels::FP8_GEMM,
            GemmVariant::Wgmma(_) => crate::kernels::FP8_GEMM_SM90,
        }
    }

    fn defines(&self) -> Vec<(&'static str, String)> {
        match self {
            GemmVariant::MmaSync(t) => vec![
                ("BM", t.bm.to_string()),
                ("WARPS_M", t.warps_m.to_string()),
                ("WARPS_N", t.warps_n.to_string()),
                ("STAGES", t.stages.to_string()),
                ("E4M3_MMA", u8::from(t.e4m3_mma).to_string()),
            ],
            GemmVariant::Wgmma(t) => vec![
                ("BLOCK_M", t.bm.to_string()),
                ("BLOCK_N", t.bn.to_string()),
                ("STAGES", t.stages.to_string()),
                ("MATH_WG", t.math_wg.to_string()),
                ("EPI_SWIZZLE", t.epi_swizzle.to_string()),
                ("CLUSTER_M", t.cluster_m.to_string()),
                ("ACC_STAGES", t.acc_stages.to_string()),
                ("GROUPING", t.grouping.to_string()),
                ("SPLIT_K", t.split_k.to_string()),
                ("CTAS_PER_SM", t.ctas_per_sm.to_string()),
            ],
        }
    }

    fn entry(&self) -> &'static str {
        match self {
            GemmVariant::MmaSync(_) => "fp8_gemm",
            GemmVariant::Wgmma(_) => "fp8_gemm_sm90_kernel",
        }
    }

    fn threads(&self) -> u32 {
        match self {
            GemmVariant::MmaSync(t) => t.threads(),
            GemmVariant::Wgmma(t) => t.threads(),
        }
    }

    fn smem_bytes(&self) -> u32 {
        match self {
            GemmVariant::MmaSync(t) => t.smem_bytes(),
            GemmVariant::Wgmma(t) => t.smem_bytes(),
        }
    }

    fn cluster_dims(&self) -> (u32, u32, u32) {
        match self {
            GemmVariant::MmaSync(_) => (1, 1, 1),
            GemmVariant::Wgmma(t) => (t.cluster_size(), 1, 1),
        }
    }

    fn valid_on(&self, arch: &ArchSpec) -> Result<()> {
        match self {
            GemmVariant::MmaSync(t) => {
                t.check_shape()?;
                if t.e4m3_mma && !arch.fp8_mma {
                    return Err(Error::Unsupported {
                        op: "fp8_gemm",
                        backend: BackendKind::Cuda,
                        reason: format!(
                            "{} uses the e4m3 mma, which {} lacks (sm_89+)",
                            self.label(),
                            arch.nvrtc_target()
                        ),
                    });
                }
            }
            GemmVariant::Wgmma(t) => {
                t.check_shape()?;
                if !(arch.wgmma && arch.tma) {
                    return Err(Error::Unsupported {
                        op: "fp8_gemm",
                        backend: BackendKind::Cuda,
                        reason: format!(
                            "{} needs wgmma and TMA (sm_90a), which {} lacks",
                            self.label(),
                            arch.nvrtc_target()
                        ),
                    });
                }
                let per_sm = t.ctas_per_sm.saturating_mul(
                    t.smem_bytes()
                        .saturating_add(super::arch::RESERVED_SMEM_PER_CTA),
                );
                if per_sm > arch.max_smem_per_sm {
                    return Err(Error::Unsupported {
                        op: "fp8_gemm",
                        backend: BackendKind::Cuda,
                        reason: format!(
                            "{} needs {per_sm} bytes of shared memory per SM for {} CTAs; {} has {}",
                            self.label(),
                            t.ctas_per_sm,
                            arch.nvrtc_target(),
                            arch.max_smem_per_sm
                        ),
                    });
                }
            }
        }
        check_resources(self, arch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines_entry_threads_and_shared_memory() {
        let v = GemmVariant::MmaSync(MmaSyncGemm::LARGE);
        let k = v.kernel();
        assert_eq!(k.source.file, "fp8_gemm.cu");
        let d: Vec<(&str, &str)> = k.defines.iter().map(|(a, b)| (*a, b.as_str())).collect();
        assert_eq!(
            d,
            [
                ("BM", "128"),
                ("WARPS_M", "4"),
                ("WARPS_N", "2"),
                ("STAGES", "3"),
                ("E4M3_MMA", "0"),
                ("TESSERA_SMEM_BYTES", "98304"),
                ("TESSERA_THREADS", "256"),
            ]
        );
        assert_eq!(v.entry(), "fp8_gemm");
        assert_eq!(v.cluster_dims(), (1, 1, 1));
        let t = GemmVariant::MmaSync(MmaSyncGemm::TINY.with_e4m3_mma(true));
        assert_eq!(t.kernel().define_value("E4M3_MMA"), Some("1"));
        assert_eq!(t.smem_bytes(), 4 * 160 * 128);
        assert_eq!(MmaSyncGemm::LARGE_DEEP.smem_bytes(), 131_072);
    }

    #[test]
    fn validity_by_shape_arch_and_shared_memory() {
        let h = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let a100 = ArchSpec::from_compute_capability(8, 0, 108).unwrap();
        let l4 = ArchSpec::from_compute_capability(8, 9, 58).unwrap();
        for t in [
            MmaSyncGemm::LARGE,
            MmaSyncGemm::SMALL,
            MmaSyncGemm::TINY,
            MmaSyncGemm::LARGE_DEEP,
        ] {
            GemmVariant::MmaSync(t).valid_on(&h).unwrap();
            GemmVariant::MmaSync(t).valid_on(&a100).unwrap();
        }
        // 128 KB does not fit sm_89's 99 KB per block.
        let e = GemmVariant::MmaSync(MmaSyncGemm::LARGE_DEEP)
            .valid_on(&l4)
            .unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported { reason, .. } if reason.contains("131072 bytes")),
            "{e}"
        );
        // The e4m3 mma needs sm_89.
        let e4m3 = GemmVariant::MmaSync(MmaSyncGemm::SMALL.with_e4m3_mma(true));
        assert!(e4m3.valid_on(&a100).is_err());
        e4m3.valid_on(&l4).unwrap();
        let l = MmaSyncGemm::LARGE;
        for bad in [
            MmaSyncGemm { bm: 0, ..l },
            MmaSyncGemm { bm: 48, ..l },
            MmaSyncGemm { warps_m: 0, ..l },
            MmaSyncGemm { warps_n: 3, ..l },
            MmaSyncGemm { stages: 1, ..l },
            MmaSyncGemm { stages: 9, ..l },
            MmaSyncGemm {
                warps_m: u32::MAX,
                ..l
            },
            MmaSyncGemm {
                stages: u32::MAX,
                ..l
            },
        ] {
            assert!(GemmVariant::MmaSync(bad).valid_on(&h).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grid_counts_tiles() {
        let h = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let v = GemmVariant::MmaSync(MmaSyncGemm::SMALL);
        assert_eq!(
            v.grid(&Fp8Gemm::new(65, 2112, 512), &h).unwrap(),
            (2 * 17, 1, 1)
        );
        assert!(v.grid(&Fp8Gemm::new(usize::MAX / 4, 128, 16), &h).is_err());
        // The persistent kernel: one CTA per SM at most, whole clusters.
        let wide = WgmmaGemm::fitted(128, 160, 2, 2, 1, h.max_smem_per_block).unwrap();
        let w = GemmVariant::Wgmma(wide);
        assert_eq!(
            w.grid(&Fp8Gemm::new(4096, 7168, 16384), &h).unwrap(),
            (132, 1, 1)
        );
        // 1216 tiles of 128 x 192 take 10 rounds over 132 SMs, which 122 CTAs keep.
        let t192 = WgmmaGemm::fitted(128, 192, 2, 1, 1, h.max_smem_per_block).unwrap();
        assert_eq!(
            GemmVariant::Wgmma(t192)
                .grid(&Fp8Gemm::new(4096, 7168, 16384), &h)
                .unwrap(),
            (122, 1, 1)
        );
        // Grouped: every slot (masked groups' counts are on the device).
        let masked = Fp8Gemm::grouped(
            4096,
            7168,
            16384,
            tessera_core::GemmGrouping::Masked { groups: 1 },
        );
        let g192 = t192.for_grouping(2, h.max_smem_per_block).unwrap();
        assert_eq!(
            GemmVariant::Wgmma(g192).grid(&masked, &h).unwrap(),
            (132, 1, 1)
        );
        // 3 row tiles make 2 cluster rows; 14 column tiles: 28 clusters of 2.
        assert_eq!(
            w.grid(&Fp8Gemm::new(300, 2240, 512), &h).unwrap(),
            (56, 1, 1)
        );
    }

    #[test]
    fn wgmma_tiles_render_and_fit() {
        let h = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let t = WgmmaGemm::fitted(128, 160, 2, 1, 1, h.max_smem_per_block).unwrap();
        assert_eq!(t.epi_swizzle, 64);
        assert_eq!(t.stages, 5);
        // 40960 (D) + 5 x (36864 + 512 + 32) + 1024, what the harness measured with.
        assert_eq!(t.smem_bytes(), 229_024);
        let v = GemmVariant::Wgmma(t);
        assert_eq!(v.threads(), 384);
        assert_eq!(v.entry(), "fp8_gemm_sm90_kernel");
        let k = v.kernel();
        assert_eq!(k.source.file, "sm90/fp8_gemm.cu");
        assert_eq!(k.define_value("BLOCK_N"), Some("160"));
        assert_eq!(k.define_value("TESSERA_SMEM_BYTES"), Some("229024"));
        assert_eq!(k.define_value("TESSERA_THREADS"), Some("384"));
        v.valid_on(&h).unwrap();
        let narrow = WgmmaGemm::fitted(64, 56, 1, 1, 2, h.max_smem_per_block).unwrap();
        assert_eq!(narrow.epi_swizzle, 0);
        assert_eq!(GemmVariant::Wgmma(narrow).threads(), 256);
        GemmVariant::Wgmma(narrow).valid_on(&h).unwrap();
        assert_eq!(
            GemmVariant::Wgmma(WgmmaGemm { cluster_m: 2, ..t }).cluster_dims(),
            (2, 1, 1)
        );
        // Not on architectures without wgmma.
        let a100 = ArchSpec::from_compute_capability(8, 0, 108).unwrap();
        assert!(v.valid_on(&a100).is_err());
        // Shapes the kernel rejects.
        for bad in [
            WgmmaGemm { bn: 100, ..t },
            WgmmaGemm { bn: 200, ..t },
            WgmmaGemm { bm: 64, ..t },
            WgmmaGemm { acc_stages: 2, ..t },
            WgmmaGemm {
                epi_swizzle: 128,
                ..t
            },
            WgmmaGemm { stages: 1, ..t },
            WgmmaGemm { math_wg: 3, ..t },
            WgmmaGemm { cluster_m: 4, ..t },
            WgmmaGemm {
                bn: 136,
                cluster_m: 2,
                epi_swizzle: 16,
                ..t
            },
            WgmmaGemm { bn: 144, ..narrow },
            WgmmaGemm { grouping: 3, ..t },
            WgmmaGemm {
                grouping: 1,
                cluster_m: 2,
                ..t
            },
            WgmmaGemm {
                grouping: 2,
                cluster_m: 2,
                ..t
            },
        ] {
            assert!(GemmVariant::Wgmma(bad).valid_on(&h).is_err(), "{bad:?}");
        }
        // Too much shared memory for the device.
        assert!(WgmmaGemm::fitted(128, 192, 2, 1, 1, 100_000).is_none());
        // Grouped tiles: one CTA per cluster; masked ones keep the TMA-store epilogue tile.
        let smem = h.max_smem_per_block;
        let masked = t.for_grouping(2, smem).unwrap();
        let contiguous = t.for_grouping(1, smem).unwrap();
        assert_eq!(
            (masked.grouping, masked.epi_swizzle, masked.stages),
            (2, contiguous.epi_swizzle, contiguous.stages)
        );
        GemmVariant::Wgmma(masked).valid_on(&h).unwrap();
        assert_eq!(
            GemmVariant::Wgmma(masked).kernel().define_value("GROUPING"),
            Some("2")
        );
        assert!(WgmmaGemm { cluster_m: 2, ..t }
            .for_grouping(1, smem)
            .is_none());
        assert_eq!(t.for_grouping(1, smem).unwrap().epi_swizzle, 64);
    }

    #[test]
    fn split_k_and_two_ctas_per_sm() {
        let h = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let smem = h.max_smem_per_block;
        let t = WgmmaGemm::fitted(64, 64, 1, 1, 2, smem).unwrap();
        let split = t.with_split_k(4, smem).unwrap();
        assert_eq!((split.split_k, split.epi_swizzle), (4, 0));
        let v = GemmVariant::Wgmma(split);
        v.valid_on(&h).unwrap();
        assert_eq!(v.cluster_dims(), (4, 1, 1));
        assert_eq!(v.kernel().define_value("SPLIT_K"), Some("4"));
        assert_eq!(v.kernel().define_value("CTAS_PER_SM"), Some("1"));
        // One cluster of 4 per tile (not persistent): 33 column tiles.
        assert_eq!(
            v.grid(&Fp8Gemm::new(64, 2112, 7168), &h).unwrap(),
            (132, 1, 1)
        );
        assert_eq!(
            v.grid(&Fp8Gemm::new(4096, 2112, 7168), &h).unwrap(),
            (64 * 33 * 4, 1, 1)
        );
        // Two CTAs per SM: half the SM's shared memory each, a persistent grid of at most 2 per
        // SM (384 tiles take 2 rounds of 264, which 192 CTAs keep).
        let two = t.with_two_ctas_per_sm(&h).unwrap();
        assert!(2 * (two.smem_bytes() + 1024) <= h.max_smem_per_sm);
        let v2 = GemmVariant::Wgmma(two);
        v2.valid_on(&h).unwrap();
        assert_eq!(v2.kernel().define_value("CTAS_PER_SM"), Some("2"));
        assert_eq!(
            v2.grid(&Fp8Gemm::new(64, 24576, 1536), &h).unwrap(),
            (192, 1, 1)
        );
        // What the kernel rejects.
        let wide = WgmmaGemm::fitted(128, 160, 2, 2, 1, smem).unwrap();
        assert!(wide.with_split_k(2, smem).is_none());
        for bad in [
            WgmmaGemm {
                split_k: 0,
                ..split
            },
            WgmmaGemm {
                split_k: 9,
                ..split
            },
            WgmmaGemm {
                epi_swizzle: 128,
                ..split
            },
            WgmmaGemm {
                grouping: 1,
                ..split
            },
            WgmmaGemm {
                ctas_per_sm: 3,
                ..two
            },
            WgmmaGemm { bn: 128, ..two },
            WgmmaGemm {
                ctas_per_sm: 2,
                ..wide
            },
            // Two CTAs of this one do not fit an SM's shared memory.
            WgmmaGemm {
                ctas_per_sm: 2,
                ..t
            },
        ] {
            assert!(GemmVariant::Wgmma(bad).valid_on(&h).is_err(), "{bad:?}");
        }
    }
}
