//! The FP8 quantizers on CUDA (the kernel variants: [`QuantizeVariant`]).

use super::{check_device_len, download, to_i32, upload};
use crate::plan::{KernelArgs, LaunchOptions, QuantizeShape, QuantizeVariant};
use crate::CudaBackend;
use cudarc::driver::{CudaStream, CudaView, CudaViewMut};
use half::{bf16, f16};
use tessera_core::{DType, Fp8Quantize, Fp8Quantized, Result, TensorRef, E4M3};

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
        check_device_len(OP, "x", op.len(), x.len())?;
        check_device_len(OP, "values", op.len(), values.len())?;
        check_device_len(OP, "scales", op.scales_len(), scales.len())?;
        let rows = to_i32(OP, "rows", op.rows)?;
        let cols = to_i32(OP, "cols", op.cols)?;
        let shape = QuantizeShape {
            op: *op,
            input: x.dtype(),
        };
        // One candidate per (input, rule, granularity): the plan never times it, and a timer
        // that is called says so rather than pretend.
        let variant: QuantizeVariant =
            self.runtime
                .plans
                .plan(&shape, &mut |_: &[QuantizeVariant]| {
                    Err(tessera_core::Error::Unsupported {
                        op: OP,
                        backend: tessera_core::BackendKind::Cuda,
                        reason: "the quantizers have one candidate each: nothing to tune".into(),
                    })
                })?;
        let grid = variant.grid(op, &self.runtime.arch)?;
        let mut args = KernelArgs::new(stream);
        match x {
            DeviceInput::F32(v) => args.buffer(v),
            DeviceInput::F16(v) => args.buffer(v),
            DeviceInput::BF16(v) => args.buffer(v),
        };
        args.buffer_mut(values)
            .buffer_mut(scales)
            .value(&rows)
            .value(&cols);
        // SAFETY: the kernel's parameters are (const in_t*, u8*, float*, int, int) in this order;
        // the buffers hold rows*cols inputs and values and scales_shape() scales (checked above),
        // the grid covers every scale group once, and the kernel indexes only within those
        // bounds.
        unsafe { self.launch_kernel(&variant, grid, args, LaunchOptions::default()) }
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
