//! Block masks: `BlockMask` (any BSR mask) and its subclass `RadialMask` (the radial mask of a
//! video's frames), with the BSR arrays other frameworks take.

use crate::arrays::{out, In};
use crate::errors::{invalid, IntoPyResult};
use numpy::PyArrayDyn;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex};
use tessera::cuda::{CudaBackend, DeviceBlockMask};

type Int32Array<'py> = Bound<'py, PyArrayDyn<i32>>;

/// A block-sparse attention mask over `tokens` queries and keys, in blocks of `block_size`
/// tokens: BSR over `ceil(tokens / block_size)` blocks per side (row r's key blocks are
/// `indices[indptr[r]:indptr[r + 1]]`, sorted). One mask serves every batch and head.
#[pyclass(subclass, frozen, module = "tessera", name = "BlockMask")]
pub struct PyBlockMask {
    pub mask: tessera::BlockMask,
    /// Uploaded copies, per CUDA device ordinal (made on first use by a CUDA tensor).
    device: Mutex<Vec<(usize, Arc<DeviceBlockMask>)>>,
}

impl PyBlockMask {
    pub fn new(mask: tessera::BlockMask) -> Self {
        Self {
            mask,
            device: Mutex::new(Vec::new()),
        }
    }

    /// The mask on `backend`'s device, uploaded once.
    pub fn on_device(
        &self,
        ordinal: usize,
        backend: &CudaBackend,
    ) -> PyResult<Arc<DeviceBlockMask>> {
        let mut uploaded = self.device.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, m)) = uploaded.iter().find(|(o, _)| *o == ordinal) {
            return Ok(m.clone());
        }
        let m = Arc::new(backend.upload_block_mask(&self.mask).py()?);
        uploaded.push((ordinal, m.clone()));
        Ok(m)
    }
}

#[pymethods]
impl PyBlockMask {
    /// A mask from BSR arrays (`indptr`: `num_blocks + 1` int32, `indices`: int32, sorted per
    /// row, below `num_blocks`), checked.
    #[staticmethod]
    fn from_bsr(
        tokens: usize,
        block_size: usize,
        indptr: &Bound<'_, PyAny>,
        indices: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        const OP: &str = "block_mask";
        let to_u32 = |arg: &str, obj: &Bound<'_, PyAny>| -> PyResult<Vec<u32>> {
            let a = In::<i32>::new(OP, arg, "int32", obj)?;
            a.slice()
                .iter()
                .map(|&x| {
                    u32::try_from(x).map_err(|_| invalid(OP, arg, "entries >= 0", x.to_string()))
                })
                .collect()
        };
        let mask = tessera::BlockMask::from_bsr(
            tokens,
            block_size,
            to_u32("indptr", indptr)?,
            to_u32("indices", indices)?,
        )
        .py()?;
        Ok(Self::new(mask))
    }

    /// Every block on: dense attention in the sparse kernel.
    #[staticmethod]
    fn dense(tokens: usize, block_size: usize) -> PyResult<Self> {
        Ok(Self::new(
            tessera::BlockMask::dense(tokens, block_size).py()?,
        ))
    }

    /// Tokens covered (queries and keys).
    #[getter]
    fn tokens(&self) -> usize {
        self.mask.tokens()
    }

    /// Block edge in tokens.
    #[getter]
    fn block_size(&self) -> usize {
        self.mask.block_size()
    }

    /// Blocks per side: `ceil(tokens / block_size)`.
    #[getter]
    fn num_blocks(&self) -> usize {
        self.mask.num_blocks()
    }

    /// Blocks that are on.
    #[getter]
    fn nnz(&self) -> usize {
        self.mask.nnz()
    }

    /// Fraction of blocks on: `nnz / num_blocks**2`.
    #[getter]
    fn density(&self) -> f64 {
        self.mask.density()
    }

    /// The BSR arrays `(indptr, indices)`, int32 (FlexAttention's `BlockMask.from_kv_blocks`
    /// takes them as `kv_num_blocks = diff(indptr)` and the indices row by row).
    fn to_bsr<'py>(&self, py: Python<'py>) -> PyResult<(Int32Array<'py>, Int32Array<'py>)> {
        let i32s = |v: &[u32]| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
        let indptr = i32s(self.mask.indptr());
        let indices = i32s(self.mask.indices());
        let (np, ni) = (indptr.len(), indices.len());
        Ok((out(py, indptr, &[np])?, out(py, indices, &[ni])?))
    }

    /// The blocks as a bool array `[num_blocks, num_blocks]` (row: query block).
    fn to_dense<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<bool>>> {
        let n = self.mask.num_blocks();
        out(py, self.mask.to_dense_bitmap(), &[n, n])
    }

    fn __repr__(&self) -> String {
        format!(
            "BlockMask(tokens={}, block_size={}, num_blocks={}, nnz={}, density={:.4})",
            self.mask.tokens(),
            self.mask.block_size(),
            self.mask.num_blocks(),
            self.mask.nnz(),
            self.mask.density()
        )
    }
}

/// The radial attention mask (Radial Attention, 2025) of `frames` frames of `tokens_per_frame`
/// tokens then `extra_tokens` dense tokens (e.g. text): block-sparse, O(n log n), density
/// decaying with the temporal distance between frames (`decay`); `sink` makes frame 0 an
/// attention sink. A `BlockMask`.
#[pyclass(extends = PyBlockMask, frozen, module = "tessera", name = "RadialMask")]
pub struct PyRadialMask {
    config: tessera::RadialMaskConfig,
}

#[pymethods]
impl PyRadialMask {
    #[new]
    #[pyo3(signature = (frames, tokens_per_frame, extra_tokens = 0, block_size = 128, decay = 0.95, sink = false))]
    fn new(
        frames: usize,
        tokens_per_frame: usize,
        extra_tokens: usize,
        block_size: usize,
        decay: f64,
        sink: bool,
    ) -> PyResult<PyClassInitializer<Self>> {
        let config = tessera::RadialMaskConfig {
            frames,
            tokens_per_frame,
            extra_tokens,
            block_size,
            decay,
            sink,
        };
        let mask = config.build().py()?;
        Ok(PyClassInitializer::from(PyBlockMask::new(mask)).add_subclass(Self { config }))
    }

    /// Frames F.
    #[getter]
    fn frames(&self) -> usize {
        self.config.frames
    }

    /// Tokens per frame T.
    #[getter]
    fn tokens_per_frame(&self) -> usize {
        self.config.tokens_per_frame
    }

    /// Dense tokens after the video tokens.
    #[getter]
    fn extra_tokens(&self) -> usize {
        self.config.extra_tokens
    }

    /// The decay factor.
    #[getter]
    fn decay(&self) -> f64 {
        self.config.decay
    }

    /// Whether frame 0 is an attention sink.
    #[getter]
    fn sink(&self) -> bool {
        self.config.sink
    }

    fn __repr__(slf: PyRef<'_, Self>) -> String {
        let c = &slf.config;
        let density = slf.as_super().mask.density();
        format!(
            "RadialMask(frames={}, tokens_per_frame={}, extra_tokens={}, block_size={}, decay={}, sink={}, density={density:.4})",
            c.frames,
            c.tokens_per_frame,
            c.extra_tokens,
            c.block_size,
            if c.decay.fract() == 0.0 { format!("{:.1}", c.decay) } else { c.decay.to_string() },
            if c.sink { "True" } else { "False" }
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBlockMask>()?;
    m.add_class::<PyRadialMask>()?;
    Ok(())
}
