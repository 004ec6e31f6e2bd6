//! The block-scaled FP8 GEMM on CUDA (DeepSeek-V3 recipe), on the tensor cores with `mma.sync`.
//!
//! `D[m][n] = Σ_kb sA[m][kb] · sB[n/128][kb] · Σ_{k in block kb} A[m][k] · B[n][k]`, the partial
//! products of each 128-wide K block promoted (scaled and added) into f32 accumulators, D rounded
//! to bf16 once. See `kernels/fp8_gemm.cu` for the kernel design.

use super::{check_device_len, download, launch_error, to_i32, upload};
use crate::compile::{KernelSource, KernelVariant};
use crate::runtime::driver_error;
use crate::CudaBackend;
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr, LaunchConfig, PushKernelArg};
use half::bf16;
use tessera_core::{BackendKind, Error, Fp8Gemm, GemmGrouping, Result, E4M3};

/// `fp8_gemm.cu`: the block-scaled FP8 GEMM.
pub const FP8_GEMM: KernelSource = KernelSource {
    file: "fp8_gemm.cu",
    code: include_str!("../../kernels/fp8_gemm.cu"),
};

/// Columns of D per CTA (one 128-wide scale block of B).
const TILE_N: usize = 128;

/// A CTA tile shape of the GEMM kernel: `bm x 128` outputs per CTA, `warps_m x warps_n` warps,
/// `stages` shared-memory buffers of one 128-wide K block each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fp8GemmTile {
    /// Rows of D per CTA.
    pub bm: usize,
    /// Warps along M.
    pub warps_m: usize,
    /// Warps along N.
    pub warps_n: usize,
    /// Pipeline depth (K blocks in shared memory at once).
    pub stages: usize,
}

impl Fp8GemmTile {
    /// 128 x 128 outputs per CTA, 8 warps (4 along M x 2 along N, each 32 x 64), 3 stages: for
    /// large m (on the H200 12% faster than 2 x 4 warps of 64 x 32 at m 4096, n 7168, k 2048).
    pub const LARGE: Self = Self {
        bm: 128,
        warps_m: 4,
        warps_n: 2,
        stages: 3,
    };
    /// 64 x 128 outputs per CTA, 8 warps (each 32 x 32), 4 stages: for small m, where the large
    /// tile would leave SMs idle.
    pub const SMALL: Self = Self {
        bm: 64,
        warps_m: 2,
        warps_n: 4,
        stages: 4,
    };

    /// Threads per CTA.
    pub fn threads(&self) -> usize {
        self.warps_m.saturating_mul(self.warps_n).saturating_mul(32)
    }

    /// Dynamic shared memory per CTA, in bytes.
    pub fn shared_bytes(&self) -> usize {
        self.stages
            .saturating_mul(self.bm.saturating_add(TILE_N))
            .saturating_mul(128)
    }

    /// Checks the shape against the kernel's constraints (`bm` a multiple of 16 · `warps_m`, 128 a
    /// multiple of 16 · `warps_n`, tiles split evenly over the threads, at most 1024 threads, at
    /// least 2 stages, at most 227 KB of shared memory).
    pub fn validate(&self) -> Result<()> {
        let threads = self.threads();
        let ok = (1..=1024).contains(&threads)
            && (1..=1024).contains(&self.bm)
            && (2..=64).contains(&self.stages)
            && self.bm % (16 * self.warps_m) == 0
            && TILE_N % (16 * self.warps_n) == 0
            && (self.bm * 8) % threads == 0
            && (TILE_N * 8) % threads == 0
            && self.shared_bytes() <= 227 * 1024;
        if !ok {
            return Err(Error::invalid(
                "fp8_gemm",
                "tile",
                "a tile the kernel supports (see Fp8GemmTile::validate)",
                format!("{self:?}"),
            ));
        }
        Ok(())
    }

    /// The kernel variant of this tile.
    pub fn variant(&self) -> KernelVariant {
        KernelVariant::new(FP8_GEMM)
            .define("BM", self.bm)
            .define("WARPS_M", self.warps_m)
            .define("WARPS_N", self.warps_n)
            .define("STAGES", self.stages)
    }

    /// The tile the library picks for a shape on a device with `sm_count` SMs: the large tile
    /// when it gives at least one CTA per SM, else the small one.
    pub fn for_shape(op: &Fp8Gemm, sm_count: usize) -> Self {
        let ctas = op.m.div_ceil(Self::LARGE.bm) * op.n.div_ceil(TILE_N);
        if ctas >= sm_count {
            Self::LARGE
        } else {
            Self::SMALL
        }
    }
}

/// Every kernel variant of this module (compiled by CI for sm_90a and sm_80).
pub(crate) fn variants() -> Vec<KernelVariant> {
    [Fp8GemmTile::LARGE, Fp8GemmTile::SMALL]
        .iter()
        .map(Fp8GemmTile::variant)
        .collect()
}

/// Checks that a device buffer starts on an `align`-byte boundary.
fn check_align(op: &'static str, arg: &str, ptr: u64, align: u64) -> Result<()> {
    if ptr % align != 0 {
        return Err(Error::invalid(
            op,
            arg,
            format!("a device address aligned to {align} bytes"),
            format!("{ptr:#x}"),
        ));
    }
    Ok(())
}

impl CudaBackend {
    /// Block-scaled FP8 GEMM on `stream`, without synchronizing: `d = (a · bᵀ)` with the
    /// DeepSeek-V3 block scales (see [`Fp8Gemm`]), choosing the tile with
    /// [`Fp8GemmTile::for_shape`].
    ///
    /// Layouts (row-major): `a` E4M3 bytes `[m, k]` (K contiguous); `a_scales` f32
    /// `[m, ceil(k/128)]`; `b` E4M3 bytes `[n, k]` (K contiguous); `b_scales` f32
    /// `[ceil(n/128), ceil(k/128)]`; `d` bf16 `[m, n]`, every element written. `a` and `b` must
    /// start on 16-byte boundaries and `d` on a 4-byte boundary (any buffer cudarc allocates does).
    /// Shapes and alignment are checked; values are not (scales should be finite and > 0).
    #[allow(clippy::too_many_arguments)]
    pub fn fp8_gemm_on(
        &self,
        stream: &CudaStream,
        op: &Fp8Gemm,
        a: &CudaView<'_, u8>,
        a_scales: &CudaView<'_, f32>,
        b: &CudaView<'_, u8>,
        b_scales: &CudaView<'_, f32>,
        d: &mut CudaViewMut<'_, bf16>,
    ) -> Result<()> {
        self.fp8_gemm_tile_on(
            stream,
            op,
            Fp8GemmTile::for_shape(op, self.runtime.sm_count),
            a,
            a_scales,
            b,
            b_scales,
            d,
        )
    }

    /// [`CudaBackend::fp8_gemm_on`] with an explicit tile (one of [`Fp8GemmTile::LARGE`] and
    /// [`Fp8GemmTile::SMALL`], or any shape the kernel's compile-time checks accept), for tuning.
    #[allow(clippy::too_many_arguments)]
    pub fn fp8_gemm_tile_on(
        &self,
        stream: &CudaStream,
        op: &Fp8Gemm,
        tile: Fp8GemmTile,
        a: &CudaView<'_, u8>,
        a_scales: &CudaView<'_, f32>,
        b: &CudaView<'_, u8>,
        b_scales: &CudaView<'_, f32>,
        d: &mut CudaViewMut<'_, bf16>,
    ) -> Result<()> {
        const OP: &str = "fp8_gemm";
        op.validate()?;
        tile.validate()?;
        if op.grouping != GemmGrouping::Single {
            return Err(Error::Unsupported {
                op: OP,
                backend: BackendKind::Cuda,
                reason: format!("grouping {:?} has no CUDA kernel yet", op.grouping),
            });
        }
        check_device_len(OP, "a", op.m * op.k, a.len())?;
        check_device_len(OP, "a_scales", op.a_scales_len(), a_scales.len())?;
        check_device_len(OP, "b", op.n * op.k, b.len())?;
        check_device_len(OP, "b_scales", op.b_scales_len(), b_scales.len())?;
        check_device_len(OP, "d", op.m * op.n, d.len())?;
        {
            let (pa, _ra) = a.device_ptr(stream);
            let (pb, _rb) = b.device_ptr(stream);
            let (pd, _rd) = d.device_ptr(stream);
            check_align(OP, "a", pa, 16)?;
            check_align(OP, "b", pb, 16)?;
            check_align(OP, "d", pd, 4)?;
        }
        let m = to_i32(OP, "m", op.m)?;
        let n = to_i32(OP, "n", op.n)?;
        let k = to_i32(OP, "k", op.k)?;
        let ctas = op.m.div_ceil(tile.bm) * op.n.div_ceil(TILE_N);
        let grid = u32::try_from(ctas)
            .ok()
            .filter(|&c| c <= i32::MAX as u32)
            .ok_or_else(|| {
                Error::invalid(OP, "m", "at most 2^31 - 1 output tiles", ctas.to_string())
            })?;
        // The kernel indexes with 32-bit row/column counts and 64-bit offsets: m * k, n * k and
        // m * n fit in i64 since each factor fits in i32.
        let entry = "fp8_gemm";
        let func = self.runtime.function(&tile.variant(), entry)?;
        let smem = tile.shared_bytes();
        if smem > 48 * 1024 {
            func.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(|e| driver_error("raising the shared-memory limit of fp8_gemm", e))?;
        }
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (tile.threads() as u32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(a)
            .arg(a_scales)
            .arg(b)
            .arg(b_scales)
            .arg(d)
            .arg(&m)
            .arg(&n)
            .arg(&k);
        // SAFETY: the kernel's parameters are (const u8* A, const float* sA, const u8* B,
        // const float* sB, u16* D, int m, int n, int k) in this order; the buffers hold m*k,
        // m*ceil(k/128), n*k, ceil(n/128)*ceil(k/128) and m*n elements (checked above), A and B
        // are 16-byte and D 4-byte aligned (checked above), n is a multiple of 8 and k of 16
        // (validate), and the kernel reads and writes only inside those bounds (rows >= m,
        // columns >= n and K >= k are masked). bf16 and u16 have the same layout.
        unsafe { launch.launch(cfg) }.map_err(|e| launch_error(entry, e))?;
        Ok(())
    }

    pub(crate) fn fp8_gemm_host(
        &self,
        op: &Fp8Gemm,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
    ) -> Result<Vec<bf16>> {
        op.validate_args(a, a_scales, b, b_scales)?;
        let stream = &self.runtime.stream;
        let a_bytes: Vec<u8> = a.iter().map(|x| x.to_bits()).collect();
        let b_bytes: Vec<u8> = b.iter().map(|x| x.to_bits()).collect();
        let da = upload(stream, &a_bytes)?;
        let dsa = upload(stream, a_scales)?;
        let db = upload(stream, &b_bytes)?;
        let dsb = upload(stream, b_scales)?;
        // D starts as NaN so that an element the kernel fails to write shows up.
        let mut dd = upload(stream, &vec![bf16::NAN; op.m * op.n])?;
        self.fp8_gemm_on(
            stream,
            op,
            &da.as_view(),
            &dsa.as_view(),
            &db.as_view(),
            &dsb.as_view(),
            &mut dd.as_view_mut(),
        )?;
        download(stream, &dd)
    }
}
