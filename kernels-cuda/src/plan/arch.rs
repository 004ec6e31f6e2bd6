//! What each GPU architecture offers the kernels: one [`ArchSpec`] per device, read from the
//! driver where it reports a value, from per-family constants otherwise (and for tests and CI,
//! which have no GPU).

use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::CudaContext;
use serde::{Deserialize, Serialize};
use std::fmt;
use tessera_core::{BackendKind, Error, Result};

/// An architecture family: the granularity of the plan layer's heuristics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ArchFamily {
    /// sm_80 / sm_87 (A100, Orin): 163 KB of shared memory per block, no FP8 mma.
    Sm80,
    /// sm_86 / sm_89 (consumer Ampere, Ada, L4/L40): 99 KB of shared memory per block; FP8 mma on
    /// sm_89.
    Sm86,
    /// sm_90 (H100, H200, H20): 227 KB per block, wgmma, TMA, clusters. Architectures newer than
    /// the library knows also plan as this family, with a conservative spec (see
    /// [`ArchSpec::from_compute_capability`]).
    Sm90,
}

impl fmt::Display for ArchFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArchFamily::Sm80 => "sm80",
            ArchFamily::Sm86 => "sm86",
            ArchFamily::Sm90 => "sm90",
        })
    }
}

/// Shared memory the driver reserves per CTA on sm_80 and later, bytes (counted against the
/// per-SM capacity, not the per-block limit).
pub const RESERVED_SMEM_PER_CTA: u32 = 1024;

/// The largest cluster size every cluster-capable architecture allows without opting in.
pub const PORTABLE_CLUSTER_SIZE: u32 = 8;

/// What one device (or one architecture, without a device) offers the kernels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ArchSpec {
    /// The family whose heuristics apply.
    pub family: ArchFamily,
    /// The compute capability (major, minor).
    pub compute_capability: (u32, u32),
    /// Whether the compute capability is newer than the library knows (planned as
    /// [`ArchFamily::Sm90`] without arch-specific features).
    pub newer_than_known: bool,
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Largest dynamic shared memory one CTA may opt in to, bytes.
    pub max_smem_per_block: u32,
    /// Shared memory per SM, bytes (each CTA also uses [`RESERVED_SMEM_PER_CTA`]).
    pub max_smem_per_sm: u32,
    /// 32-bit registers per SM.
    pub registers_per_sm: u32,
    /// Resident threads per SM.
    pub max_threads_per_sm: u32,
    /// L2 cache, bytes.
    pub l2_bytes: u64,
    /// `wgmma.mma_async` (sm_90a only: not on later architectures).
    pub wgmma: bool,
    /// TMA (`cp.async.bulk.tensor`, tensor maps).
    pub tma: bool,
    /// Thread-block clusters (and distributed shared memory).
    pub clusters: bool,
    /// Programmatic dependent launch.
    pub programmatic_launch: bool,
    /// FP8 (e4m3) `mma.sync`.
    pub fp8_mma: bool,
}

/// The newest compute capability the library knows.
const NEWEST_KNOWN: (u32, u32) = (9, 0);

impl ArchSpec {
    /// The spec of compute capability `major.minor` with `sm_count` SMs, from constants (no GPU
    /// needed). sm_80 and newer; a capability newer than sm_90 is planned as sm_90 with a
    /// conservative spec: 99 KB of shared memory per block, 1536 threads per SM, no wgmma (an
    /// sm_90a instruction), compiled for the plain `sm_XY` target.
    pub fn from_compute_capability(major: u32, minor: u32, sm_count: u32) -> Result<Self> {
        if sm_count == 0 {
            return Err(Error::invalid(
                "arch_spec",
                "sm_count",
                "at least 1",
                "0".to_string(),
            ));
        }
        let cc = (major, minor);
        let newer = cc > NEWEST_KNOWN;
        let family = match cc {
            (8, 0) | (8, 7) => ArchFamily::Sm80,
            (8, 6) | (8, 9) => ArchFamily::Sm86,
            (9, 0) => ArchFamily::Sm90,
            _ if newer => ArchFamily::Sm90,
            _ => {
                return Err(Error::Unsupported {
                    op: "cuda backend",
                    backend: BackendKind::Cuda,
                    reason: format!(
                        "compute capability {major}.{minor}: Tessera's CUDA kernels need sm_80 \
                         (8.0), 8.6, 8.7, 8.9, 9.0 or newer"
                    ),
                })
            }
        };
        const KB: u32 = 1024;
        // (per block opt-in, per SM, threads per SM, L2 bytes)
        let (per_block, per_sm, threads, l2): (u32, u32, u32, u64) = match cc {
            (8, 0) => (163 * KB, 164 * KB, 2048, 40 << 20),
            (8, 7) => (163 * KB, 164 * KB, 1536, 4 << 20),
            (8, 6) => (99 * KB, 100 * KB, 1536, 6 << 20),
            (8, 9) => (99 * KB, 100 * KB, 1536, 72 << 20),
            (9, 0) => (227 * KB, 228 * KB, 2048, 50 << 20),
            _ => (99 * KB, 100 * KB, 1536, 24 << 20),
        };
        Ok(Self {
            family,
            compute_capability: cc,
            newer_than_known: newer,
            sm_count,
            max_smem_per_block: per_block,
            max_smem_per_sm: per_sm,
            registers_per_sm: 65536,
            max_threads_per_sm: threads,
            l2_bytes: l2,
            wgmma: cc == (9, 0),
            tma: major >= 9,
            clusters: major >= 9,
            programmatic_launch: major >= 9,
            fp8_mma: cc >= (8, 9),
        })
    }

    /// The spec of the context's device: the family's constants, with every size the driver
    /// reports (SMs, shared memory, registers, threads, L2) read from it.
    pub fn from_device(ctx: &CudaContext) -> Result<Self> {
        let device_error = |what: &str, e: cudarc::driver::DriverError| {
            crate::runtime::driver_error(&format!("reading {what}"), e)
        };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| device_error("the compute capability", e))?;
        let sm_count = ctx
            .attribute(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| device_error("the SM count", e))?;
        let mut spec = Self::from_compute_capability(
            major.max(0) as u32,
            minor.max(0) as u32,
            sm_count.max(1) as u32,
        )?;
        let read = |attr: Attr| ctx.attribute(attr).ok().filter(|&v| v > 0);
        if let Some(v) = read(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN) {
            spec.max_smem_per_block = v as u32;
        }
        if let Some(v) = read(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR) {
            spec.max_smem_per_sm = v as u32;
        }
        if let Some(v) = read(Attr::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR) {
            spec.registers_per_sm = v as u32;
        }
        if let Some(v) = read(Attr::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR) {
            spec.max_threads_per_sm = v as u32;
        }
        if let Some(v) = read(Attr::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE) {
            spec.l2_bytes = v as u64;
        }
        Ok(spec)
    }

    /// The NVRTC target: `sm_90a` on Hopper (wgmma, setmaxnreg), the plain `sm_XY` otherwise
    /// (also for architectures newer than the library knows: their arch-specific features are
    /// not used).
    pub fn nvrtc_target(&self) -> String {
        let (major, minor) = self.compute_capability;
        if self.wgmma {
            format!("sm_{major}{minor}a")
        } else {
            format!("sm_{major}{minor}")
        }
    }

    /// CTAs of `threads` threads and `smem` bytes of dynamic shared memory that fit on one SM at
    /// once by shared memory and threads (registers are the kernel's business: see each
    /// variant's occupancy).
    pub fn ctas_per_sm(&self, threads: u32, smem: u32) -> u32 {
        let by_threads = self.max_threads_per_sm / threads.max(1);
        let by_smem = if smem == 0 {
            u32::MAX
        } else {
            self.max_smem_per_sm / (smem + RESERVED_SMEM_PER_CTA)
        };
        by_threads.min(by_smem).min(32)
    }
}

impl fmt::Display for ArchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} SMs, {} KB shared memory per block)",
            self.nvrtc_target(),
            self.sm_count,
            self.max_smem_per_block / 1024
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_targets_and_flags() {
        let h200 = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        assert_eq!(h200.family, ArchFamily::Sm90);
        assert_eq!(h200.nvrtc_target(), "sm_90a");
        assert!(h200.wgmma && h200.tma && h200.clusters && h200.fp8_mma);
        assert_eq!(h200.max_smem_per_block, 232_448);

        let a100 = ArchSpec::from_compute_capability(8, 0, 108).unwrap();
        assert_eq!(
            (a100.family, a100.nvrtc_target()),
            (ArchFamily::Sm80, "sm_80".into())
        );
        assert!(!a100.wgmma && !a100.tma && !a100.fp8_mma);
        assert_eq!(a100.max_smem_per_block, 166_912);

        let l4 = ArchSpec::from_compute_capability(8, 9, 58).unwrap();
        assert_eq!(
            (l4.family, l4.nvrtc_target()),
            (ArchFamily::Sm86, "sm_89".into())
        );
        assert!(l4.fp8_mma && !l4.wgmma);
        assert_eq!(l4.max_smem_per_block, 101_376);
        let ga102 = ArchSpec::from_compute_capability(8, 6, 84).unwrap();
        assert!(!ga102.fp8_mma);

        // Newer than known: Hopper's heuristics, plain target, no sm_90a-only instructions,
        // conservative shared memory.
        for (major, minor) in [(10, 0), (12, 0)] {
            let b = ArchSpec::from_compute_capability(major, minor, 148).unwrap();
            assert_eq!(b.family, ArchFamily::Sm90);
            assert!(b.newer_than_known && !b.wgmma && b.tma && b.fp8_mma);
            assert_eq!(b.nvrtc_target(), format!("sm_{major}{minor}"));
            assert_eq!(b.max_smem_per_block, 101_376);
        }
    }

    #[test]
    fn old_architectures_and_zero_sms_are_errors() {
        for (major, minor) in [(7, 5), (7, 0), (8, 1), (6, 1)] {
            let e = ArchSpec::from_compute_capability(major, minor, 40).unwrap_err();
            assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        }
        assert!(ArchSpec::from_compute_capability(9, 0, 0).is_err());
    }

    #[test]
    fn occupancy_by_threads_and_shared_memory() {
        let h = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        assert_eq!(h.ctas_per_sm(256, 0), 8);
        assert_eq!(h.ctas_per_sm(256, 98_304), 2);
        assert_eq!(h.ctas_per_sm(128, 232_448), 1);
        let l4 = ArchSpec::from_compute_capability(8, 9, 58).unwrap();
        assert_eq!(l4.ctas_per_sm(256, 98_304), 1);
        assert_eq!(l4.ctas_per_sm(1024, 0), 1);
    }
}
