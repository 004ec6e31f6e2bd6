//! DeepSeek-V3's block-scaled FP8 as candle ops: the quantizer (`CustomOp1`) and the GEMM
//! (`CustomOp3` over A, its scales and B, with B's scales in the op). E4M3 values are `u8`
//! tensors of their bits.

use crate::storage::{
    candle_error, check_shape, contiguous_range, dims, f32s, invalid, storage_dtype, u8s,
    SideOutput,
};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Storage, Tensor};
use tessera_core::{Backend, Fp8Gemm, Fp8Granularity, Fp8Quantize, ScaleRule, TensorRef, E4M3};
use tessera_reference::CpuBackend;

/// FP8 E4M3 quantization of x (f32, f16 or bf16 `[rows, cols]`) → values (u8 E4M3 bits, same
/// shape); the scales (f32, [`Fp8Quantize::scales_shape`], on x's device) are kept for
/// [`Fp8QuantizeOp::take_scales`]. [`fp8_quantize`] returns both.
pub struct Fp8QuantizeOp {
    granularity: Fp8Granularity,
    scale_rule: ScaleRule,
    scales: SideOutput,
}

impl Fp8QuantizeOp {
    /// The quantizer with these groups (1x128 activations, 128x128 weights) and scale rule.
    pub fn new(granularity: Fp8Granularity, scale_rule: ScaleRule) -> Self {
        Self {
            granularity,
            scale_rule,
            scales: SideOutput::new(),
        }
    }

    /// The scales of the last forward, on x's device.
    pub fn take_scales(&self) -> candle_core::Result<Tensor> {
        self.scales.take()
    }

    /// The descriptor of a quantization of x (`[rows, cols]`).
    fn descriptor(&self, l: &Layout) -> candle_core::Result<Fp8Quantize> {
        let shape = dims(QUANTIZE, "x", l, 2, "rows, cols")?;
        Ok(Fp8Quantize {
            rows: shape[0],
            cols: shape[1],
            granularity: self.granularity,
            scale_rule: self.scale_rule,
        })
    }
}

const QUANTIZE: &str = "fp8_quantize";
const GEMM: &str = "fp8_gemm";

impl CustomOp1 for Fp8QuantizeOp {
    fn name(&self) -> &'static str {
        "tessera_fp8_quantize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.descriptor(l)?;
        let (start, end) = contiguous_range(QUANTIZE, "x", l)?;
        let x = match s {
            CpuStorage::F32(v) => TensorRef::F32(&v[start..end]),
            CpuStorage::F16(v) => TensorRef::F16(&v[start..end]),
            CpuStorage::BF16(v) => TensorRef::BF16(&v[start..end]),
            other => {
                return Err(invalid(
                    QUANTIZE,
                    "x",
                    "dtype f32, f16 or bf16",
                    format!("dtype {}", storage_dtype(other)),
                ))
            }
        };
        let out = CpuBackend::new()
            .fp8_quantize(&op, x)
            .map_err(candle_error)?;
        self.scales
            .set(Storage::Cpu(CpuStorage::F32(out.scales)), op.scales_shape());
        let values = out.values.iter().map(|v| v.to_bits()).collect();
        Ok((CpuStorage::U8(values), Shape::from((op.rows, op.cols))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda::{quantizer_input, CudaCall};
        let op = self.descriptor(l)?;
        let x = quantizer_input(QUANTIZE, "x", s, l)?;
        op.validate().map_err(candle_error)?;
        let call = CudaCall::new(QUANTIZE, s)?;
        let mut values = call.output::<u8>(op.len())?;
        let mut scales = call.output::<f32>(op.scales_len())?;
        call.backend
            .fp8_quantize_on(
                &call.stream,
                &op,
                &x,
                &mut values.slice_mut(0..op.len()),
                &mut scales.slice_mut(0..op.scales_len()),
            )
            .map_err(candle_error)?;
        self.scales
            .set(Storage::Cuda(call.cuda_storage(scales)), op.scales_shape());
        Ok((call.cuda_storage(values), Shape::from((op.rows, op.cols))))
    }
}

/// FP8 quantization: `(values, scales)`, values u8 E4M3 bits `[rows, cols]`, scales f32
/// `[rows, ceil(cols/128)]` (1x128) or `[ceil(rows/128), ceil(cols/128)]` (128x128).
pub fn fp8_quantize(
    x: &Tensor,
    granularity: Fp8Granularity,
    scale_rule: ScaleRule,
) -> candle_core::Result<(Tensor, Tensor)> {
    let op = Fp8QuantizeOp::new(granularity, scale_rule);
    let values = x.apply_op1_no_bwd(&op)?;
    Ok((values, op.take_scales()?))
}

/// The block-scaled GEMM as a candle op over (a, a_scales, b): a u8 E4M3 `[m, k]`, a_scales f32
/// `[m, ceil(k/128)]`, b u8 E4M3 `[n, k]`; `b_scales` (f32 `[ceil(n/128), ceil(k/128)]`, on
/// a's device) is the op's. Output bf16 `[m, n]`.
pub struct Fp8GemmOp {
    b_scales: Tensor,
}

impl Fp8GemmOp {
    /// The GEMM with B's scales.
    pub fn new(b_scales: Tensor) -> Self {
        Self { b_scales }
    }

    /// Checks the shapes of a, a_scales, b and B's scales (`sl`); the descriptor.
    fn descriptor(
        l1: &Layout,
        l2: &Layout,
        l3: &Layout,
        sl: &Layout,
    ) -> candle_core::Result<Fp8Gemm> {
        let ad = dims(GEMM, "a", l1, 2, "m, k")?;
        let bd = dims(GEMM, "b", l3, 2, "n, k")?;
        let (m, k, n) = (ad[0], ad[1], bd[0]);
        check_shape(GEMM, "b", l3, &[n, k], "n, k (k of a)")?;
        let kb = k.div_ceil(128);
        check_shape(GEMM, "a_scales", l2, &[m, kb], "m, ceil(k/128)")?;
        check_shape(
            GEMM,
            "b_scales",
            sl,
            &[n.div_ceil(128), kb],
            "ceil(n/128), ceil(k/128)",
        )?;
        Ok(Fp8Gemm::new(m, n, k))
    }
}

impl CustomOp3 for Fp8GemmOp {
    fn name(&self) -> &'static str {
        "tessera_fp8_gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (storage, sl) = self.b_scales.storage_and_layout();
        let op = Self::descriptor(l1, l2, l3, sl)?;
        let Storage::Cpu(sb_storage) = &*storage else {
            return Err(invalid(
                GEMM,
                "b_scales",
                "a CPU tensor (a's device)",
                "another device",
            ));
        };
        let a: &[E4M3] = bytemuck_e4m3(u8s(GEMM, "a", s1, l1)?);
        let b: &[E4M3] = bytemuck_e4m3(u8s(GEMM, "b", s3, l3)?);
        let sa = f32s(GEMM, "a_scales", s2, l2)?;
        let sb = f32s(GEMM, "b_scales", sb_storage, sl)?;
        let d = CpuBackend::new()
            .fp8_gemm(&op, a, sa, b, sb)
            .map_err(candle_error)?;
        Ok((CpuStorage::BF16(d), Shape::from((op.m, op.n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda::{f32_view, u8_view, CudaCall};
        let (storage, sl) = self.b_scales.storage_and_layout();
        let op = Self::descriptor(l1, l2, l3, sl)?;
        let call = CudaCall::new(GEMM, s1)?;
        let sb_storage = call.same_gpu("b_scales", &storage)?;
        let a = u8_view(GEMM, "a", s1, l1)?;
        let sa = f32_view(GEMM, "a_scales", s2, l2)?;
        let b = u8_view(GEMM, "b", s3, l3)?;
        let sb = f32_view(GEMM, "b_scales", sb_storage, sl)?;
        op.validate().map_err(candle_error)?;
        let len = op.m * op.n;
        let mut d = call.output::<half::bf16>(len)?;
        call.backend
            .fp8_gemm_on(
                &call.stream,
                &op,
                &a,
                &sa,
                &b,
                &sb,
                &mut d.slice_mut(0..len),
            )
            .map_err(candle_error)?;
        Ok((call.cuda_storage(d), Shape::from((op.m, op.n))))
    }
}

/// E4M3 bits as E4M3 values (the same bytes: `E4M3` is a plain `u8`).
fn bytemuck_e4m3(bits: &[u8]) -> &[E4M3] {
    bytemuck::cast_slice(bits)
}

/// Block-scaled FP8 GEMM `d = a · bᵀ` with DeepSeek-V3's scales: bf16 `[m, n]`.
pub fn fp8_gemm(
    a: &Tensor,
    a_scales: &Tensor,
    b: &Tensor,
    b_scales: &Tensor,
) -> candle_core::Result<Tensor> {
    a.apply_op3_no_bwd(a_scales, b, &Fp8GemmOp::new(b_scales.clone()))
}
