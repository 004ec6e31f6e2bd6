//! The ops on device addresses for the PyTorch path: the package's Python layer checks each
//! `torch.Tensor` (CUDA device, dtype, shape, contiguity), allocates the outputs through torch,
//! and passes `(data_ptr, numel)` pairs and `torch.cuda.current_stream().cuda_stream`; these
//! functions build the op descriptor and call the raw device-pointer API of the CUDA backend,
//! which checks every length against the descriptor and every address (null, alignment, memory
//! of this device) before launching on that stream. Nothing here allocates, copies or
//! synchronizes (the mask is uploaded once per device, with a wait, on first use).
//!
//! These functions are internal (`tessera._tessera.cuda_*`): given addresses that are not live
//! tensors of the stated lengths they would read or write arbitrary device memory. The Python
//! layer only passes tensors it holds for the duration of the call.

use crate::errors::{invalid, IntoPyResult};
use crate::host::PyMlaCacheLayout;
use crate::mask::PyBlockMask;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex};
use tessera::cuda::{CudaBackend, DeviceSpan, MlaAppendSpans, MlaDecodeSpans, RawStream};
use tessera::{
    DType, Fp8Gemm, Fp8Granularity, Fp8Quantize, GemmGrouping, MlaAppend, MlaDecode, ScaleRule,
    SparseAttention,
};

/// CUDA backends opened so far, by device ordinal.
static OPENED: Mutex<Vec<(usize, Arc<CudaBackend>)>> = Mutex::new(Vec::new());

/// The CUDA backend of device `ordinal`, opened once.
fn backend(py: Python<'_>, ordinal: usize) -> PyResult<Arc<CudaBackend>> {
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, b)) = opened.iter().find(|(o, _)| *o == ordinal) {
        return Ok(b.clone());
    }
    let b = Arc::new(py.detach(|| CudaBackend::with_ordinal(ordinal)).py()?);
    opened.push((ordinal, b.clone()));
    Ok(b)
}

/// A `(data_ptr, numel)` pair of a tensor.
type Span = (u64, usize);

fn span(s: Span) -> DeviceSpan {
    DeviceSpan::new(s.0, s.1)
}

fn stream_of(handle: usize) -> RawStream {
    handle as RawStream
}

fn half_dtype(op: &'static str, name: &str) -> PyResult<DType> {
    match name {
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        "f32" => Ok(DType::F32),
        other => Err(invalid(op, "dtype", "f16, bf16 or f32", other)),
    }
}

/// Sparse attention on device tensors (see the module doc).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_sparse_attention(
    py: Python<'_>,
    device: usize,
    stream: usize,
    dtype: &str,
    shape: (usize, usize, usize, usize),
    softmax_scale: f32,
    mask: PyRef<'_, PyBlockMask>,
    q: Span,
    k: Span,
    v: Span,
    o: Span,
    lse: Span,
) -> PyResult<()> {
    const OP: &str = "sparse_attention";
    let backend = backend(py, device)?;
    let dmask = mask.on_device(device, &backend)?;
    let (batch, tokens, heads, head_dim) = shape;
    let mut op = SparseAttention::new(batch, tokens, heads, head_dim, half_dtype(OP, dtype)?);
    op.softmax_scale = softmax_scale;
    py.detach(|| {
        // SAFETY: the Python layer passes live, contiguous tensors of this device with these
        // lengths, o and lse freshly allocated (overlapping nothing), held until the call
        // returns; the stream is torch's current stream of the device. Lengths, addresses and
        // the stream are checked by the raw API.
        unsafe {
            backend.sparse_attention_raw(
                stream_of(stream),
                &op,
                &dmask,
                span(q),
                span(k),
                span(v),
                span(o),
                span(lse),
            )
        }
    })
    .py()
}

/// FP8 quantization on device tensors.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_fp8_quantize(
    py: Python<'_>,
    device: usize,
    stream: usize,
    x_dtype: &str,
    shape: (usize, usize),
    granularity: &str,
    power_of_two: bool,
    x: Span,
    values: Span,
    scales: Span,
) -> PyResult<()> {
    const OP: &str = "fp8_quantize";
    let backend = backend(py, device)?;
    let op = Fp8Quantize {
        rows: shape.0,
        cols: shape.1,
        granularity: match granularity {
            "1x128" => Fp8Granularity::PerToken1x128,
            "128x128" => Fp8Granularity::Block128x128,
            other => {
                return Err(invalid(
                    OP,
                    "granularity",
                    "\"1x128\" or \"128x128\"",
                    other,
                ))
            }
        },
        scale_rule: if power_of_two {
            ScaleRule::PowerOfTwo
        } else {
            ScaleRule::Float
        },
    };
    let x_dtype = half_dtype(OP, x_dtype)?;
    py.detach(|| {
        // SAFETY: as in cuda_sparse_attention (values and scales freshly allocated).
        unsafe {
            backend.fp8_quantize_raw(
                stream_of(stream),
                &op,
                x_dtype,
                span(x),
                span(values),
                span(scales),
            )
        }
    })
    .py()
}

/// The values of [`Fp8Quantize::scales_shape`] for a quantization, so that the Python layer
/// allocates the scales Tessera expects (one source for the shape).
#[pyfunction]
fn fp8_scales_shape(rows: usize, cols: usize, granularity: &str) -> PyResult<(usize, usize)> {
    let granularity = match granularity {
        "1x128" => Fp8Granularity::PerToken1x128,
        "128x128" => Fp8Granularity::Block128x128,
        other => {
            return Err(invalid(
                "fp8_quantize",
                "granularity",
                "\"1x128\" or \"128x128\"",
                other,
            ))
        }
    };
    Ok(Fp8Quantize {
        rows,
        cols,
        granularity,
        scale_rule: ScaleRule::Float,
    }
    .scales_shape())
}

/// FP8 GEMM on device tensors; `grouping` is `"single"`, `"contiguous"` or `"masked"` (then
/// `group_layout` is the device int32 layout and `groups` its group count).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_fp8_gemm(
    py: Python<'_>,
    device: usize,
    stream: usize,
    grouping: &str,
    groups: usize,
    mnk: (usize, usize, usize),
    a: Span,
    a_scales: Span,
    b: Span,
    b_scales: Span,
    group_layout: Span,
    d: Span,
) -> PyResult<()> {
    const OP: &str = "fp8_gemm";
    let backend = backend(py, device)?;
    let (m, n, k) = mnk;
    let grouping = match grouping {
        "single" => GemmGrouping::Single,
        "contiguous" => GemmGrouping::Contiguous { groups },
        "masked" => GemmGrouping::Masked { groups },
        other => {
            return Err(invalid(
                OP,
                "grouping",
                "\"single\", \"contiguous\" or \"masked\"",
                other,
            ))
        }
    };
    let op = Fp8Gemm::grouped(m, n, k, grouping);
    py.detach(|| {
        let stream = stream_of(stream);
        // SAFETY: as in cuda_sparse_attention (d freshly allocated); the group layout of a
        // grouped GEMM was checked on the host by the Python layer's caller contract (see
        // `fp8_gemm_grouped`'s doc: it is read on the device).
        unsafe {
            if grouping == GemmGrouping::Single {
                backend.fp8_gemm_raw(
                    stream,
                    &op,
                    span(a),
                    span(a_scales),
                    span(b),
                    span(b_scales),
                    span(d),
                )
            } else {
                backend.fp8_gemm_grouped_raw(
                    stream,
                    &op,
                    span(a),
                    span(a_scales),
                    span(b),
                    span(b_scales),
                    span(group_layout),
                    span(d),
                )
            }
        }
    })
    .py()
}

/// MLA append on device tensors (the cache is mutated in place).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_mla_append(
    py: Python<'_>,
    device: usize,
    stream: usize,
    layout: PyRef<'_, PyMlaCacheLayout>,
    tokens: usize,
    cache: Span,
    latent: Span,
    rope: Span,
    slots: Span,
) -> PyResult<()> {
    let backend = backend(py, device)?;
    let layout = layout.layout;
    let spans = MlaAppendSpans {
        cache: span(cache),
        latent: span(latent),
        rope: span(rope),
        slots: span(slots),
    };
    py.detach(|| {
        // SAFETY: as in cuda_sparse_attention; the cache is the MlaCache's own tensor, which
        // no input aliases (they are the caller's separate tensors).
        unsafe { backend.mla_append_raw(stream_of(stream), &MlaAppend { tokens }, &layout, &spans) }
    })
    .py()
}

fn decode_op(
    layout: &PyMlaCacheLayout,
    shape: (usize, usize, usize, usize),
    softmax_scale: f32,
) -> MlaDecode {
    let (batch, s_q, heads, max_pages) = shape;
    MlaDecode {
        batch,
        s_q,
        heads,
        max_pages,
        softmax_scale,
        layout: layout.layout,
    }
}

/// f32 elements of workspace a decode of this shape needs on `device` (0: none).
#[pyfunction]
fn cuda_mla_decode_workspace_len(
    py: Python<'_>,
    device: usize,
    layout: PyRef<'_, PyMlaCacheLayout>,
    shape: (usize, usize, usize, usize),
    softmax_scale: f32,
    max_seq_len: usize,
) -> PyResult<usize> {
    let backend = backend(py, device)?;
    let op = decode_op(&layout, shape, softmax_scale);
    Ok(backend
        .mla_decode_plan(&op, max_seq_len)
        .py()?
        .workspace_len())
}

/// MLA decode on device tensors; `shape` is `(batch, s_q, heads, max_pages)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_mla_decode(
    py: Python<'_>,
    device: usize,
    stream: usize,
    layout: PyRef<'_, PyMlaCacheLayout>,
    shape: (usize, usize, usize, usize),
    softmax_scale: f32,
    max_seq_len: usize,
    cache: Span,
    q: Span,
    block_table: Span,
    seq_lens: Span,
    o: Span,
    lse: Span,
    workspace: Span,
) -> PyResult<()> {
    let backend = backend(py, device)?;
    let op = decode_op(&layout, shape, softmax_scale);
    let spans = MlaDecodeSpans {
        cache: span(cache),
        q: span(q),
        block_table: span(block_table),
        seq_lens: span(seq_lens),
        o: span(o),
        lse: span(lse),
        workspace: span(workspace),
    };
    py.detach(|| {
        let plan = backend.mla_decode_plan(&op, max_seq_len)?;
        // SAFETY: as in cuda_sparse_attention (o, lse and workspace freshly allocated, the
        // workspace of `cuda_mla_decode_workspace_len` for the same arguments: the same plan).
        unsafe { backend.mla_decode_raw(stream_of(stream), &op, &plan, &spans) }
    })
    .py()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cuda_sparse_attention, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fp8_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(fp8_scales_shape, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fp8_gemm, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_mla_append, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_mla_decode_workspace_len, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_mla_decode, m)?)?;
    Ok(())
}
