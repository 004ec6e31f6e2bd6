//! The block-scaled FP8 GEMM on CUDA (DeepSeek-V3 recipe), on the tensor cores with `mma.sync`.
//!
//! `D[m][n] = Σ_kb sA[m][kb] · sB[n/128][kb] · Σ_{k in block kb} A[m][k] · B[n][k]`, the partial
//! products of each 128-wide K block promoted (scaled and added) into f32 accumulators, D rounded
//! to bf16 once. The kernels are the variants of [`GemmVariant`]: the `mma.sync` kernel
//! (`kernels/fp8_gemm.cu`, sm_80+) and the Hopper kernel (`kernels/sm90/fp8_gemm.cu`: TMA, wgmma,
//! warp-specialized and persistent), each in several tiles; the plan layer picks one per shape
//! class.

use super::{check_device_len, download, to_i32, upload};
use crate::plan::tune::{scratch_buffer, time_each, ScratchRng, TUNE_ROTATE_BYTES};
use crate::plan::{
    GemmVariant, KernelArgs, LaunchOptions, TensorMap, TmaDtype, TmaSwizzle, TuneOutcome, WgmmaGemm,
};
use crate::CudaBackend;
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr};
use half::bf16;
use tessera_core::{Error, Fp8Gemm, GemmGrouping, Result, E4M3};

/// The device buffers of one GEMM launch (the group layout only for grouped ops).
struct GemmBuffers<'a, 'b> {
    a: &'a CudaView<'b, u8>,
    a_scales: &'a CudaView<'b, f32>,
    b: &'a CudaView<'b, u8>,
    b_scales: &'a CudaView<'b, f32>,
    groups: Option<&'a CudaView<'b, i32>>,
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

/// The tensor maps of the Hopper kernel: A and B in boxes of 128 bytes of K by the tile's rows
/// (B split between the CTAs of a cluster), 128-byte swizzled as wgmma reads them; D in boxes of
/// one epilogue slab (`epi_swizzle` bytes) by a math warpgroup's rows (unused by the kernel when
/// it stores from registers: then any valid map of D).
fn wgmma_tensor_maps(
    op: &Fp8Gemm,
    t: &WgmmaGemm,
    a: u64,
    b: u64,
    d: u64,
) -> Result<[TensorMap; 3]> {
    // Rows of A and D over all groups; rows of B over all groups.
    let (m, n, k) = (op.total_rows() as u64, op.n as u64, op.k as u64);
    let b_rows = op.grouping.groups() as u64 * n;
    let map_a = TensorMap::tiled(a, TmaDtype::U8, k, m, k, 128, t.bm, TmaSwizzle::B128)?;
    let map_b = TensorMap::tiled(
        b,
        TmaDtype::U8,
        k,
        b_rows,
        k,
        128,
        t.bn / t.cluster_m,
        TmaSwizzle::B128,
    )?;
    let wg_rows = t.bm / t.math_wg;
    let (box_n, swizzle) = match t.epi_swizzle {
        128 => (64, TmaSwizzle::B128),
        64 => (32, TmaSwizzle::B64),
        32 => (16, TmaSwizzle::B32),
        _ => (8, TmaSwizzle::None),
    };
    let map_d = TensorMap::tiled(d, TmaDtype::BF16, n, m, 2 * n, box_n, wg_rows, swizzle)?;
    Ok([map_a, map_b, map_d])
}

/// A valid group layout for timing a grouped op: `groups` equal groups of rows (multiples of 128,
/// the last taking the rest) for `Contiguous`, every group full for `Masked`; empty otherwise.
fn even_group_layout(op: &Fp8Gemm) -> Vec<i32> {
    match op.grouping {
        GemmGrouping::Contiguous { groups } => {
            let per = (op.m / groups.max(1)) / 128 * 128;
            let mut v: Vec<i32> = (0..groups).map(|g| (g * per) as i32).collect();
            v.push(op.m as i32);
            v
        }
        GemmGrouping::Masked { groups } => vec![op.m as i32; groups],
        _ => Vec::new(),
    }
}

impl CudaBackend {
    /// Block-scaled FP8 GEMM on `stream`, without synchronizing: `d = (a · bᵀ)` with the
    /// DeepSeek-V3 block scales (see [`Fp8Gemm`]), with the variant the plan picks for the
    /// shape ([`CudaBackend::fp8_gemm_plan`]).
    ///
    /// Layouts (row-major): `a` E4M3 bytes `[m, k]` (K contiguous); `a_scales` f32
    /// `[m, ceil(k/128)]`; `b` E4M3 bytes `[n, k]` (K contiguous); `b_scales` f32
    /// `[ceil(n/128), ceil(k/128)]`; `d` bf16 `[m, n]`, every element written. `a`, `b` and `d`
    /// must start on 16-byte boundaries (any buffer cudarc allocates does).
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
        op.require_single()?;
        let variant = self.fp8_gemm_plan(op)?;
        self.fp8_gemm_variant_on(stream, op, variant, a, a_scales, b, b_scales, d)
    }

    /// Grouped block-scaled FP8 GEMM (mixture of experts) on `stream`, without synchronizing:
    /// each group's rows of `a` against its own `b` (see [`GemmGrouping`] for the layouts of
    /// every buffer), with the variant the plan picks for the shape. `groups` holds the group
    /// layout on the device (`Contiguous`: the `groups + 1` row offsets; `Masked`: the `groups`
    /// row counts, which may change between launches: the launch reads them on the device, so a
    /// captured CUDA graph replays with new counts). Needs the Hopper kernel (sm_90a):
    /// [`Error::Unsupported`] elsewhere. The counts/offsets are not checked on the device:
    /// they must be valid ([`Fp8Gemm::validate_group_layout`]); the host API checks them.
    /// `a`, `b` and `d` must start on 16-byte boundaries.
    #[allow(clippy::too_many_arguments)]
    pub fn fp8_gemm_grouped_on(
        &self,
        stream: &CudaStream,
        op: &Fp8Gemm,
        a: &CudaView<'_, u8>,
        a_scales: &CudaView<'_, f32>,
        b: &CudaView<'_, u8>,
        b_scales: &CudaView<'_, f32>,
        groups: &CudaView<'_, i32>,
        d: &mut CudaViewMut<'_, bf16>,
    ) -> Result<()> {
        if op.grouping == GemmGrouping::Single {
            return Err(Error::invalid(
                "fp8_gemm_grouped",
                "grouping",
                "Contiguous or Masked (one GEMM goes through fp8_gemm_on)",
                "Single",
            ));
        }
        let variant = self.fp8_gemm_plan(op)?;
        self.fp8_gemm_grouped_variant_on(stream, op, variant, a, a_scales, b, b_scales, groups, d)
    }

    /// [`CudaBackend::fp8_gemm_grouped_on`] with an explicit variant, for tests and tuning.
    #[allow(clippy::too_many_arguments)]
    pub fn fp8_gemm_grouped_variant_on(
        &self,
        stream: &CudaStream,
        op: &Fp8Gemm,
        variant: GemmVariant,
        a: &CudaView<'_, u8>,
        a_scales: &CudaView<'_, f32>,
        b: &CudaView<'_, u8>,
        b_scales: &CudaView<'_, f32>,
        groups: &CudaView<'_, i32>,
        d: &mut CudaViewMut<'_, bf16>,
    ) -> Result<()> {
        let bufs = GemmBuffers {
            a,
            a_scales,
            b,
            b_scales,
            groups: Some(groups),
        };
        self.launch_gemm(stream, op, variant, &bufs, d)
    }

    /// The GEMM variant for `op` on this device: the plan of its shape class (the heuristic's
    /// pick, or the tuned winner: see [`crate::plan::PlanCache`]).
    pub fn fp8_gemm_plan(&self, op: &Fp8Gemm) -> Result<GemmVariant> {
        op.validate()?;
        self.runtime
            .plans
            .plan(op, &mut |c: &[GemmVariant]| self.time_fp8_gemm(op, c))
    }

    /// Times every GEMM candidate for `op` on scratch buffers and records the fastest as the
    /// plan of its shape class (see [`crate::plan::PlanCache::tune`]).
    pub fn tune_fp8_gemm(&self, op: &Fp8Gemm) -> Result<TuneOutcome> {
        op.validate()?;
        self.runtime
            .plans
            .tune(op, &mut |c: &[GemmVariant]| self.time_fp8_gemm(op, c))
    }

    /// [`CudaBackend::fp8_gemm_on`] with an explicit variant (any candidate of
    /// [`crate::plan::heuristics::gemm_candidates`], or another variant valid on this device),
    /// for tests and tuning.
    #[allow(clippy::too_many_arguments)]
    pub fn fp8_gemm_variant_on(
        &self,
        stream: &CudaStream,
        op: &Fp8Gemm,
        variant: GemmVariant,
        a: &CudaView<'_, u8>,
        a_scales: &CudaView<'_, f32>,
        b: &CudaView<'_, u8>,
        b_scales: &CudaView<'_, f32>,
        d: &mut CudaViewMut<'_, bf16>,
    ) -> Result<()> {
        op.require_single()?;
        let bufs = GemmBuffers {
            a,
            a_scales,
            b,
            b_scales,
            groups: None,
        };
        self.launch_gemm(stream, op, variant, &bufs, d)
    }

    /// Checks the buffers against `op` and launches `variant`.
    fn launch_gemm(
        &self,
        stream: &CudaStream,
        op: &Fp8Gemm,
        variant: GemmVariant,
        bufs: &GemmBuffers<'_, '_>,
        d: &mut CudaViewMut<'_, bf16>,
    ) -> Result<()> {
        const OP: &str = "fp8_gemm";
        op.validate()?;
        let GemmBuffers {
            a,
            a_scales,
            b,
            b_scales,
            groups,
        } = *bufs;
        check_device_len(OP, "a", op.a_len(), a.len())?;
        check_device_len(OP, "a_scales", op.a_scales_len(), a_scales.len())?;
        check_device_len(OP, "b", op.b_len(), b.len())?;
        check_device_len(OP, "b_scales", op.b_scales_len(), b_scales.len())?;
        check_device_len(OP, "d", op.d_len(), d.len())?;
        if let Some(g) = groups {
            check_device_len(OP, "groups", op.group_layout_len(), g.len())?;
        }
        {
            let (pa, _ra) = a.device_ptr(stream);
            let (pb, _rb) = b.device_ptr(stream);
            let (pd, _rd) = d.device_ptr(stream);
            check_align(OP, "a", pa, 16)?;
            check_align(OP, "b", pb, 16)?;
            check_align(OP, "d", pd, 16)?;
        }
        let m = to_i32(OP, "m", op.m)?;
        let n = to_i32(OP, "n", op.n)?;
        let k = to_i32(OP, "k", op.k)?;
        // Rows over all groups, and B's rows over all groups, must fit the kernels' i32 indexing.
        to_i32(OP, "rows", op.total_rows())?;
        to_i32(OP, "groups * n", op.grouping.groups().saturating_mul(op.n))?;
        let num_groups = to_i32(OP, "groups", op.grouping.groups())?;
        // The kernels index with 32-bit row/column counts and 64-bit offsets.
        let grid = variant.grid(op, self.arch_spec())?;
        match variant {
            GemmVariant::MmaSync(_) => {
                if op.grouping != GemmGrouping::Single {
                    return Err(Error::invalid(
                        OP,
                        "variant",
                        "a Hopper (wgmma) variant compiled for the grouping",
                        format!("{variant:?}"),
                    ));
                }
                let mut args = KernelArgs::new(stream);
                args.buffer(a)
                    .buffer(a_scales)
                    .buffer(b)
                    .buffer(b_scales)
                    .buffer_mut(d)
                    .value(&m)
                    .value(&n)
                    .value(&k);
                // SAFETY: the kernel's parameters are (const u8* A, const float* sA, const u8* B,
                // const float* sB, u16* D, int m, int n, int k) in this order; the buffers hold
                // m*k, m*ceil(k/128), n*k, ceil(n/128)*ceil(k/128) and m*n elements (checked
                // above), A and B are 16-byte and D 4-byte aligned (checked above), n is a
                // multiple of 8 and k of 16 (validate), the grid has one CTA per output tile,
                // and the kernel reads and writes only inside those bounds (rows >= m, columns
                // >= n and K >= k are masked). bf16 and u16 have the same layout.
                unsafe { self.launch_kernel(&variant, grid, args, LaunchOptions::default()) }
            }
            GemmVariant::Wgmma(t) => {
                if t.grouping != crate::plan::heuristics::grouping_code(op) {
                    return Err(Error::invalid(
                        OP,
                        "variant",
                        format!("a variant compiled for {:?}", op.grouping),
                        format!("{variant:?}"),
                    ));
                }
                let no_groups: u64 = 0;
                let mut args = KernelArgs::new(stream);
                let pa = args.track(a);
                let pb = args.track(b);
                let pd = args.track_mut(d);
                let maps = wgmma_tensor_maps(op, &t, pa, pb, pd)?;
                args.value(&maps[0])
                    .value(&maps[1])
                    .value(&maps[2])
                    .buffer(a_scales)
                    .buffer(b_scales)
                    .value(&pd)
                    .value(&m)
                    .value(&n)
                    .value(&k);
                match groups {
                    Some(g) => args.buffer(g),
                    None => args.value(&no_groups),
                };
                args.value(&num_groups);
                // SAFETY: the kernel's parameters are (TmaDesc A, TmaDesc B, TmaDesc D,
                // const float* sA, const float* sB, u16* D, int m, int n, int k,
                // const int* groups, int num_groups) in this order; the maps cover exactly A
                // [rows, k], B [groups * n, k] and D [rows, n] (whose lengths and 16-byte
                // alignment are checked above; the maps' own preconditions are checked when
                // encoding), TMA reads past their edges as zeros and stores clip at them; sA and
                // sB hold rows*ceil(k/128) and groups*ceil(n/128)*ceil(k/128) floats (checked)
                // and the kernel reads them only for rows < rows and scale rows within the
                // group; the group layout has the length the grouping needs (checked; null and
                // unread for one GEMM) and valid values (the caller's contract, checked by the
                // host API); the direct-store epilogue masks rows past the tile's end and
                // columns >= n; the grid is whole clusters. A, B and D are tracked for the
                // stream by `track` above.
                unsafe { self.launch_kernel(&variant, grid, args, LaunchOptions::default()) }
            }
        }
    }

    /// Median milliseconds of each candidate for `op`, on scratch buffers of random E4M3 codes
    /// and scales (never the caller's), on the backend's stream.
    fn time_fp8_gemm(&self, op: &Fp8Gemm, candidates: &[GemmVariant]) -> Result<Vec<f64>> {
        let stream = &self.runtime.stream;
        let mut rng = ScratchRng(0x7e55_e7a0);
        let codes: Vec<u8> = (0..1 << 20).map(|_| rng.e4m3()).collect();
        let scales: Vec<f32> = (0..4096)
            .map(|_| 2f32.powf(rng.uniform(-8.0, -6.0)))
            .collect();
        // Operand sets rotated over at least TUNE_ROTATE_BYTES, so that a small shape is not
        // timed out of L2 (as no caller's data would be); each set starts 16-byte aligned.
        let (a_len, sa_len, b_len, sb_len, d_len) = (
            op.a_len(),
            op.a_scales_len(),
            op.b_len(),
            op.b_scales_len(),
            op.d_len(),
        );
        let set_bytes = a_len + b_len + 2 * d_len + 4 * (sa_len + sb_len);
        let sets = TUNE_ROTATE_BYTES.div_ceil(set_bytes.max(1)).clamp(1, 8);
        let a = scratch_buffer(stream, sets * a_len, &codes)?;
        let sa = scratch_buffer(stream, sets * sa_len, &scales)?;
        let b = scratch_buffer(stream, sets * b_len, &codes[1..])?;
        let sb = scratch_buffer(stream, sets * sb_len, &scales[1..])?;
        let mut d = scratch_buffer::<bf16>(stream, sets * d_len, &[])?;
        // A grouped op is timed on an even layout: equal groups (contiguous), full groups (masked).
        let layout = even_group_layout(op);
        let groups = upload(stream, &layout)?;
        let mut run = 0usize;
        time_each(stream, candidates, |v| {
            let i = run % sets;
            run += 1;
            let (a, sa) = (
                a.slice(i * a_len..(i + 1) * a_len),
                sa.slice(i * sa_len..(i + 1) * sa_len),
            );
            let (b, sb) = (
                b.slice(i * b_len..(i + 1) * b_len),
                sb.slice(i * sb_len..(i + 1) * sb_len),
            );
            let mut d = d.slice_mut(i * d_len..(i + 1) * d_len);
            if op.grouping == GemmGrouping::Single {
                self.fp8_gemm_variant_on(stream, op, *v, &a, &sa, &b, &sb, &mut d)
            } else {
                let g = groups.as_view();
                self.fp8_gemm_grouped_variant_on(stream, op, *v, &a, &sa, &b, &sb, &g, &mut d)
            }
        })
    }

    pub(crate) fn fp8_gemm_grouped_host(
        &self,
        op: &Fp8Gemm,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
        groups: &[i32],
    ) -> Result<Vec<bf16>> {
        op.validate_args(a, a_scales, b, b_scales)?;
        op.validate_group_layout(groups)?;
        if op.grouping == GemmGrouping::Single {
            return self.fp8_gemm_host(op, a, a_scales, b, b_scales);
        }
        if !self.arch_spec().wgmma {
            return self.fp8_gemm_grouped_by_group(op, a, a_scales, b, b_scales, groups);
        }
        let stream = &self.runtime.stream;
        let a_bytes: Vec<u8> = a.iter().map(|x| x.to_bits()).collect();
        let b_bytes: Vec<u8> = b.iter().map(|x| x.to_bits()).collect();
        let da = upload(stream, &a_bytes)?;
        let dsa = upload(stream, a_scales)?;
        let db = upload(stream, &b_bytes)?;
        let dsb = upload(stream, b_scales)?;
        let dg = upload(stream, groups)?;
        // D starts as NaN: rows a masked group leaves out stay NaN, and an element the kernel
        // fails to write shows up.
        let mut dd = upload(stream, &vec![bf16::NAN; op.d_len()])?;
        self.fp8_gemm_grouped_on(
            stream,
            op,
            &da.as_view(),
            &dsa.as_view(),
            &db.as_view(),
            &dsb.as_view(),
            &dg.as_view(),
            &mut dd.as_view_mut(),
        )?;
        download(stream, &dd)
    }

    /// The host API's grouped GEMM where there is no grouped kernel (before sm_90a): one plain
    /// GEMM per group on its rows (the layout is on the host here).
    fn fp8_gemm_grouped_by_group(
        &self,
        op: &Fp8Gemm,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
        groups: &[i32],
    ) -> Result<Vec<bf16>> {
        let (n, k) = (op.n, op.k);
        let kb = k.div_ceil(128);
        let (b_len, sb_len) = (n * k, n.div_ceil(128) * kb);
        let mut d = vec![bf16::NAN; op.d_len()];
        for (g, (row0, rows)) in op.group_spans(groups).into_iter().enumerate() {
            if rows == 0 {
                continue;
            }
            let part = self.fp8_gemm_host(
                &op.group_gemm(rows),
                &a[row0 * k..(row0 + rows) * k],
                &a_scales[row0 * kb..(row0 + rows) * kb],
                &b[g * b_len..(g + 1) * b_len],
                &b_scales[g * sb_len..(g + 1) * sb_len],
            )?;
            d[row0 * n..(row0 + rows) * n].copy_from_slice(&part);
        }
        Ok(d)
    }

    pub(crate) fn fp8_gemm_host(
        &self,
        op: &Fp8Gemm,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
    ) -> Result<Vec<bf16>> {
        op.require_single()?;
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
