//! The FP8 quantizers on CUDA (the kernel variants: [`QuantizeVariant`]).

use super::{check_device_len, download, to_i32, upload};
use crate::plan::tune::{scratch_buffer, time_each, ScratchRng, TUNE_ROTATE_BYTES};
use crate::plan::{KernelArgs, LaunchOptions, QuantizeShape, QuantizeVariant, TuneOutcome};
use crate::CudaBackend;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut};
use half::{bf16, f16};
use tessera_core::{DType, Error, Fp8Quantize, Fp8Quantized, Result, TensorRef, E4M3};

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

/// The tuner's scratch input, of one of the quantizers' input types.
enum ScratchInput {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
}

/// The plan key of quantizing `op` from input of `dtype` (after validating `op`).
fn quantize_shape(op: &Fp8Quantize, dtype: DType) -> Result<QuantizeShape> {
    op.validate()?;
    Ok(QuantizeShape {
        op: *op,
        input: dtype,
    })
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
        let variant = self.fp8_quantize_plan(op, x.dtype())?;
        self.fp8_quantize_variant_on(stream, op, variant, x, values, scales)
    }

    /// The quantizer variant for `op` on input of `dtype` on this device: the plan of its shape
    /// class (the heuristic's pick, or the tuned winner: see [`crate::plan::PlanCache`]).
    pub fn fp8_quantize_plan(&self, op: &Fp8Quantize, dtype: DType) -> Result<QuantizeVariant> {
        self.runtime.plans.plan(
            &quantize_shape(op, dtype)?,
            &mut |c: &[QuantizeVariant]| self.time_fp8_quantize(op, dtype, c),
        )
    }

    /// Times every quantizer candidate for `op` on input of `dtype` on scratch buffers and
    /// records the fastest as the plan of its shape class (see [`crate::plan::PlanCache::tune`]).
    pub fn tune_fp8_quantize(&self, op: &Fp8Quantize, dtype: DType) -> Result<TuneOutcome> {
        self.runtime.plans.tune(
            &quantize_shape(op, dtype)?,
            &mut |c: &[QuantizeVariant]| self.time_fp8_quantize(op, dtype, c),
        )
    }

    /// Launches `variant` on buffers the caller has checked against `op` (`x` and `values`
    /// `op.len()` elements, `scales` `op.scales_len()`).
    fn fp8_quantize_variant_on(
        &self,
        stream: &CudaStream,
        op: &Fp8Quantize,
        variant: QuantizeVariant,
        x: &DeviceInput<'_>,
        values: &mut CudaViewMut<'_, u8>,
        scales: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        const OP: &str = "fp8_quantize";
        let rows = to_i32(OP, "rows", op.rows)?;
        let cols = to_i32(OP, "cols", op.cols)?;
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

    /// Median milliseconds of each quantizer candidate for `op` on input of `dtype`, on scratch
    /// buffers of random values in [-3, 3) (never the caller's), rotated over
    /// [`TUNE_ROTATE_BYTES`] so that a small shape is not timed out of L2, on the backend's
    /// stream.
    fn time_fp8_quantize(
        &self,
        op: &Fp8Quantize,
        dtype: DType,
        candidates: &[QuantizeVariant],
    ) -> Result<Vec<f64>> {
        let stream = &self.runtime.stream;
        let mut rng = ScratchRng(0x9a47_1e55);
        let pattern: Vec<f32> = (0..1 << 16).map(|_| rng.uniform(-3.0, 3.0)).collect();
        let (n, ns) = (op.len(), op.scales_len());
        let set_bytes = n * (dtype.size_in_bytes() + 1) + 4 * ns;
        let sets = TUNE_ROTATE_BYTES.div_ceil(set_bytes.max(1)).clamp(1, 8);
        let x = match dtype {
            DType::F32 => ScratchInput::F32(scratch_buffer(stream, sets * n, &pattern)?),
            DType::F16 => {
                let p: Vec<f16> = pattern.iter().map(|&v| f16::from_f32(v)).collect();
                ScratchInput::F16(scratch_buffer(stream, sets * n, &p)?)
            }
            DType::BF16 => {
                let p: Vec<bf16> = pattern.iter().map(|&v| bf16::from_f32(v)).collect();
                ScratchInput::BF16(scratch_buffer(stream, sets * n, &p)?)
            }
            other => {
                return Err(Error::invalid(
                    "fp8_quantize",
                    "x",
                    "dtype f32, f16 or bf16",
                    other.name(),
                ))
            }
        };
        let mut values = scratch_buffer::<u8>(stream, sets * n, &[])?;
        let mut scales = scratch_buffer::<f32>(stream, sets * ns, &[])?;
        let mut run = 0usize;
        time_each(stream, candidates, |v| {
            let i = run % sets;
            run += 1;
            let range = i * n..(i + 1) * n;
            let x = match &x {
                ScratchInput::F32(b) => DeviceInput::F32(b.slice(range.clone())),
                ScratchInput::F16(b) => DeviceInput::F16(b.slice(range.clone())),
                ScratchInput::BF16(b) => DeviceInput::BF16(b.slice(range.clone())),
            };
            self.fp8_quantize_variant_on(
                stream,
                op,
                *v,
                &x,
                &mut values.slice_mut(range),
                &mut scales.slice_mut(i * ns..(i + 1) * ns),
            )
        })
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
