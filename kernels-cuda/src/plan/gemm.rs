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

/// A kernel variant of the block-scaled FP8 GEMM. Every arm is a candidate of the same op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GemmVariant {
    /// The `mma.sync` kernel (`kernels/fp8_gemm.cu`), sm_80 and later.
    MmaSync(MmaSyncGemm),
}

impl GemmVariant {
    /// Rows of D per output tile.
    pub fn tile_m(&self) -> u32 {
        match self {
            GemmVariant::MmaSync(t) => t.bm,
        }
    }

    /// Columns of D per output tile.
    pub fn tile_n(&self) -> u32 {
        match self {
            GemmVariant::MmaSync(_) => GEMM_TILE_N,
        }
    }

    /// Output tiles of `op` (one CTA each for the `mma.sync` kernel).
    pub fn tiles(&self, op: &Fp8Gemm) -> u64 {
        (op.m as u64).div_ceil(self.tile_m() as u64) * (op.n as u64).div_ceil(self.tile_n() as u64)
    }

    /// CTAs resident per SM. The `mma.sync` kernel is compiled with `__launch_bounds__(THREADS,
    /// 1)` and holds about 200 registers a thread, so the register file allows one CTA per SM
    /// whatever the shared memory would allow: counted as 1.
    pub fn ctas_per_sm(&self, _arch: &ArchSpec) -> u32 {
        match self {
            GemmVariant::MmaSync(_) => 1,
        }
    }

    /// The launch grid for `op`: one CTA per output tile, column tiles fastest.
    pub fn grid(&self, op: &Fp8Gemm) -> Result<(u32, u32, u32)> {
        let tiles = self.tiles(op);
        match u32::try_from(tiles).ok().filter(|&c| c <= i32::MAX as u32) {
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
        }
    }

    fn entry(&self) -> &'static str {
        match self {
            GemmVariant::MmaSync(_) => "fp8_gemm",
        }
    }

    fn threads(&self) -> u32 {
        match self {
            GemmVariant::MmaSync(t) => t.threads(),
        }
    }

    fn smem_bytes(&self) -> u32 {
        match self {
            GemmVariant::MmaSync(t) => t.smem_bytes(),
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
        let v = GemmVariant::MmaSync(MmaSyncGemm::SMALL);
        assert_eq!(
            v.grid(&Fp8Gemm::new(65, 2112, 512)).unwrap(),
            (2 * 17, 1, 1)
        );
        assert!(v.grid(&Fp8Gemm::new(usize::MAX / 4, 128, 16)).is_err());
    }
}
