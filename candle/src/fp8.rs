//! DeepSeek-V3's block-scaled FP8 as candle ops: the quantizer (`CustomOp1`) and the GEMM
//! (`CustomOp3` over A, its scales and B, with B's scales in the op). E4M3 values are `u8`
//! tensors of their bits.

use crate::storage::{candle_error, check_shape, dims, f32s, invalid, storage_dtype, u8s};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Storage, Tensor};
use std::sync::Mutex;
use tessera_core::{Backend, Fp8Gemm, Fp8Granularity, Fp8Quantize, ScaleRule, TensorRef, E4M3};
use tessera_reference::CpuBackend;

/// FP8 E4M3 quantization of x (f32, f16 or bf16 `[rows, cols]`) → values (u8 E4M3 bits, same
/// shape); the scales (f32, [`Fp8Quantize::scales_shape`]) are kept for
/// [`Fp8QuantizeOp::take_scales`]. [`fp8_quantize`] returns both.
pub struct Fp8QuantizeOp {
    granularity: Fp8Granularity,
    scale_rule: ScaleRule,
    scales: Mutex<Option<(Vec<f32>, [usize; 2])>>,
}

impl Fp8QuantizeOp {
    /// The quantizer with these groups (1x128 activations, 128x128 weights) and scale rule.
    pub fn new(granularity: Fp8Granularity, scale_rule: ScaleRule) -> Self {
        Self {
            granularity,
            scale_rule,
            scales: Mutex::new(None),
        }
    }

    /// The scales of the last forward as a CPU tensor.
    pub fn take_scales(&self) -> candle_core::Result<Tensor> {
        let taken = self.scales.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (values, shape) =
            taken.ok_or_else(|| candle_core::Error::Msg("no forward has run".into()))?;
        Tensor::from_vec(values, &shape, &candle_core::Device::Cpu)
    }
}

impl CustomOp1 for Fp8QuantizeOp {
    fn name(&self) -> &'static str {
        "tessera_fp8_quantize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        const OP: &str = "fp8_quantize";
        let shape = dims(OP, "x", l, 2, "rows, cols")?.to_vec();
        let op = Fp8Quantize {
            rows: shape[0],
            cols: shape[1],
            granularity: self.granularity,
            scale_rule: self.scale_rule,
        };
        let x = match s {
            CpuStorage::F32(v) => TensorRef::F32(contiguous_slice(OP, v, l)?),
            CpuStorage::F16(v) => TensorRef::F16(contiguous_slice(OP, v, l)?),
            CpuStorage::BF16(v) => TensorRef::BF16(contiguous_slice(OP, v, l)?),
            other => {
                return Err(invalid(
                    OP,
                    "x",
                    "dtype f32, f16 or bf16",
                    format!("dtype {}", storage_dtype(other)),
                ))
            }
        };
        let out = CpuBackend::new()
            .fp8_quantize(&op, x)
            .map_err(candle_error)?;
        let (sr, sc) = op.scales_shape();
        *self.scales.lock().unwrap_or_else(|p| p.into_inner()) = Some((out.scales, [sr, sc]));
        let values = out.values.iter().map(|v| v.to_bits()).collect();
        Ok((CpuStorage::U8(values), Shape::from(shape)))
    }
}

fn contiguous_slice<'a, T>(
    op: &'static str,
    v: &'a [T],
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(invalid(
            op,
            "x",
            "a contiguous tensor (call .contiguous())",
            format!("strides {:?}", l.stride()),
        )),
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
/// `[m, ceil(k/128)]`, b u8 E4M3 `[n, k]`; `b_scales` (f32 `[ceil(n/128), ceil(k/128)]`) is
/// the op's. Output bf16 `[m, n]`.
pub struct Fp8GemmOp {
    b_scales: Tensor,
}

impl Fp8GemmOp {
    /// The GEMM with B's scales.
    pub fn new(b_scales: Tensor) -> Self {
        Self { b_scales }
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
        const OP: &str = "fp8_gemm";
        let ad = dims(OP, "a", l1, 2, "m, k")?;
        let bd = dims(OP, "b", l3, 2, "n, k")?;
        let (m, k, n) = (ad[0], ad[1], bd[0]);
        check_shape(OP, "b", l3, &[n, k], "n, k (k of a)")?;
        let kb = k.div_ceil(128);
        check_shape(OP, "a_scales", l2, &[m, kb], "m, ceil(k/128)")?;
        let (storage, sl) = self.b_scales.storage_and_layout();
        let Storage::Cpu(sb_storage) = &*storage else {
            return Err(invalid(OP, "b_scales", "a CPU tensor", "another device"));
        };
        check_shape(
            OP,
            "b_scales",
            sl,
            &[n.div_ceil(128), kb],
            "ceil(n/128), ceil(k/128)",
        )?;
        let a: &[E4M3] = bytemuck_e4m3(u8s(OP, "a", s1, l1)?);
        let b: &[E4M3] = bytemuck_e4m3(u8s(OP, "b", s3, l3)?);
        let sa = f32s(OP, "a_scales", s2, l2)?;
        let sb = f32s(OP, "b_scales", sb_storage, sl)?;
        let d = CpuBackend::new()
            .fp8_gemm(&Fp8Gemm::new(m, n, k), a, sa, b, sb)
            .map_err(candle_error)?;
        Ok((CpuStorage::BF16(d), Shape::from((m, n))))
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
