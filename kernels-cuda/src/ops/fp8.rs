//! FP8 quantizers and the block-scaled GEMM on CUDA.

use super::{check_device_len, download, launch_error, to_i32, upload};
use crate::compile::{KernelSource, KernelVariant};
use crate::CudaBackend;
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::{bf16, f16};
use tessera_core::{
    DType, Error, Fp8Granularity, Fp8Quantize, Fp8Quantized, Result, ScaleRule, TensorRef, E4M3,
};

/// `fp8_quantize.cu`: the two FP8 quantizers.
pub const FP8_QUANTIZE: KernelSource = KernelSource {
    file: "fp8_quantize.cu",
    code: include_str!("../../kernels/fp8_quantize.cu"),
};

/// The quantizer for an input type and scale rule.
pub fn quantize_variant(input: DType, rule: ScaleRule) -> KernelVariant {
    let kind = match input {
        DType::F16 => 1,
        DType::BF16 => 2,
        _ => 0,
    };
    KernelVariant::new(FP8_QUANTIZE)
        .define("IN_KIND", kind)
        .define("POW2", u8::from(rule == ScaleRule::PowerOfTwo))
}

/// Every quantizer variant.
pub(crate) fn variants() -> Vec<KernelVariant> {
    let mut v = Vec::new();
    for input in [DType::F32, DType::F16, DType::BF16] {
        for rule in [ScaleRule::Float, ScaleRule::PowerOfTwo] {
            v.push(quantize_variant(input, rule));
        }
    }
    v
}

/// A read-only device tensor of one of the quantizers' input types.
#[derive(Debug)]
pub enum DeviceInput<'a> {
    /// f32 elements.
    F32(CudaView<'a, f32>),
    /// f16 elements.
    F16(CudaView<'a, f16>),
    /// bf16 elements.
    BF16(CudaView<'a, bf16>),
}

impl DeviceInput<'_> {
    fn dtype(&self) -> DType {
        match self {
            DeviceInput::F32(_) => DType::F32,
            DeviceInput::F16(_) => DType::F16,
            DeviceInput::BF16(_) => DType::BF16,
        }
    }

    fn len(&self) -> usize {
        match self {
            DeviceInput::F32(v) => v.len(),
            DeviceInput::F16(v) => v.len(),
            DeviceInput::BF16(v) => v.len(),
        }
    }
}

impl CudaBackend {
    /// Quantizes `x` (`[rows, cols]`) into `values` (E4M3 bytes, `[rows, cols]`) and `scales`
    /// (f32, [`Fp8Quantize::scales_shape`]) on `stream`, without synchronizing. Shapes are
    /// checked; values are not (non-finite inputs give non-finite scales: use the host API,
    /// which rejects them, when the input is untrusted).
    pub fn fp8_quantize_on(
        &self,
        stream: &CudaStream,
        op: &Fp8Quantize,
        x: &DeviceInput<'_>,
        values: &mut CudaViewMut<'_, u8>,
        scales: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        const OP: &str = "fp8_quantize";
        // rows and cols at least 1 and rows * cols representable (before anything is launched:
        // rows = 0 would launch an empty grid, which the driver rejects).
        op.validate()?;
        let (sr, sc) = op.scales_shape();
        check_device_len(OP, "x", op.len(), x.len())?;
        check_device_len(OP, "values", op.len(), values.len())?;
        check_device_len(OP, "scales", op.scales_len(), scales.len())?;
        let rows = to_i32(OP, "rows", op.rows)?;
        let cols = to_i32(OP, "cols", op.cols)?;
        // Grid limits: x up to 2^31 - 1 blocks, y up to 65535.
        let grid_x = |arg: &str, blocks: usize| {
            u32::try_from(blocks)
                .ok()
                .filter(|&b| b <= i32::MAX as u32)
                .ok_or_else(|| {
                    Error::invalid(
                        OP,
                        arg,
                        "at most 2^31 - 1 thread blocks",
                        blocks.to_string(),
                    )
                })
        };
        let variant = quantize_variant(x.dtype(), op.scale_rule);
        let (entry, cfg) = match op.granularity {
            Fp8Granularity::PerToken1x128 => {
                // One warp per (row, group of 128 columns), 8 warps per block; rows * sc fits
                // since it is at most rows * cols.
                let blocks = grid_x("rows * ceil(cols / 128) / 8", (op.rows * sc).div_ceil(8))?;
                (
                    "fp8_quantize_1x128",
                    LaunchConfig {
                        grid_dim: (blocks, 1, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: 0,
                    },
                )
            }
            Fp8Granularity::Block128x128 => {
                let blocks_x = grid_x("ceil(cols / 128)", sc)?;
                let blocks_y = u32::try_from(sr)
                    .ok()
                    .filter(|&b| b <= 65535)
                    .ok_or_else(|| {
                        Error::invalid(
                            OP,
                            "rows",
                            "at most 65535 * 128 rows with 128x128 blocks (the grid's y limit)",
                            op.rows.to_string(),
                        )
                    })?;
                (
                    "fp8_quantize_128x128",
                    LaunchConfig {
                        grid_dim: (blocks_x, blocks_y, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: 0,
                    },
                )
            }
        };
        let func = self.runtime.function(&variant, entry)?;
        let mut launch = stream.launch_builder(&func);
        match x {
            DeviceInput::F32(v) => launch.arg(v),
            DeviceInput::F16(v) => launch.arg(v),
            DeviceInput::BF16(v) => launch.arg(v),
        };
        launch.arg(values).arg(scales).arg(&rows).arg(&cols);
        // SAFETY: the kernel's parameters are (const in_t*, u8*, float*, int, int) in this order;
        // the buffers hold rows*cols inputs and values and scales_shape() scales (checked above),
        // and the kernel indexes only within those bounds.
        unsafe { launch.launch(cfg) }.map_err(|e| launch_error(entry, e))?;
        Ok(())
    }

    pub(crate) fn fp8_quantize_host(
        &self,
        op: &Fp8Quantize,
        x: TensorRef<'_>,
    ) -> Result<Fp8Quantized> {
        op.validate_args(x)?;
        let stream = &self.runtime.stream;
        let (sr, sc) = op.scales_shape();
        // Outputs start as NaN so that an element the kernel fails to write shows up.
        let mut values = upload(stream, &vec![E4M3::NAN.to_bits(); op.rows * op.cols])?;
        let mut scales = upload(stream, &vec![f32::NAN; sr * sc])?;
        match x {
            TensorRef::F32(h) => {
                let d = upload(stream, h)?;
                self.fp8_quantize_on(
                    stream,
                    op,
                    &DeviceInput::F32(d.as_view()),
                    &mut values.as_view_mut(),
                    &mut scales.as_view_mut(),
                )?
            }
            TensorRef::F16(h) => {
                let d = upload(stream, h)?;
                self.fp8_quantize_on(
                    stream,
                    op,
                    &DeviceInput::F16(d.as_view()),
                    &mut values.as_view_mut(),
                    &mut scales.as_view_mut(),
                )?
            }
            TensorRef::BF16(h) => {
                let d = upload(stream, h)?;
                self.fp8_quantize_on(
                    stream,
                    op,
                    &DeviceInput::BF16(d.as_view()),
                    &mut values.as_view_mut(),
                    &mut scales.as_view_mut(),
                )?
            }
            other => {
                return Err(tessera_core::Error::invalid(
                    "fp8_quantize",
                    "x",
                    "dtype f32, f16 or bf16",
                    other.dtype().name(),
                ))
            }
        }
        let values = download(stream, &values)?;
        Ok(Fp8Quantized {
            values: values.into_iter().map(E4M3::from_bits).collect(),
            scales: download(stream, &scales)?,
        })
    }
}
