//! Block masks: `BlockMask` (any BSR mask) and its subclass `RadialMask` (the radial mask of a
//! video's frames), with the BSR arrays other frameworks take, and the registry that finds a mask
//! by its key (PyTorch's custom ops take plain values, so they receive `mask.key`).

use crate::arrays::{out, In};
use crate::errors::{invalid, IntoPyResult};
use numpy::PyArrayDyn;
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use tessera::cuda::{CudaBackend, DeviceBlockMask};

type Int32Array<'py> = Bound<'py, PyArrayDyn<i32>>;

/// The next key to give a mask: keys start at 1 and are never reused in a process.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// Every mask alive, by key. An entry is added when a mask is built and removed when the last
/// Python object sharing it is dropped (`SharedMask`'s `Drop`).
static REGISTRY: LazyLock<Mutex<HashMap<u64, Weak<SharedMask>>>> = LazyLock::new(Default::default);

fn registry() -> MutexGuard<'static, HashMap<u64, Weak<SharedMask>>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// One mask's data, shared by its Python object and those `mask_from_key` returns.
struct SharedMask {
    key: u64,
    mask: tessera::BlockMask,
    /// Uploaded copies, per CUDA device ordinal (made on first use by a CUDA tensor).
    device: Mutex<Vec<(usize, Arc<DeviceBlockMask>)>>,
}

impl Drop for SharedMask {
    fn drop(&mut self) {
        registry().remove(&self.key);
    }
}

/// A block-sparse attention mask over `tokens` queries and keys, in blocks of `block_size`
/// tokens: BSR over `ceil(tokens / block_size)` blocks per side (row r's key blocks are
/// `indices[indptr[r]:indptr[r + 1]]`, sorted). One mask serves every batch and head. Each mask
/// gets a key when it is built (`key`), by which `mask_from_key` finds it while it is alive.
#[pyclass(subclass, frozen, module = "tessera", name = "BlockMask")]
pub struct PyBlockMask {
    shared: Arc<SharedMask>,
}

impl PyBlockMask {
    /// A new mask with a new key, registered.
    pub fn new(mask: tessera::BlockMask) -> Self {
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(SharedMask {
            key,
            mask,
            device: Mutex::new(Vec::new()),
        });
        registry().insert(key, Arc::downgrade(&shared));
        Self { shared }
    }

    /// The mask with `key`, if one is alive (the lock is released before the mask is
    /// returned, so dropping it never waits on the registry it would lock).
    fn find(key: u64) -> Option<Self> {
        let found = registry().get(&key).and_then(Weak::upgrade);
        found.map(|shared| Self { shared })
    }

    /// The mask's blocks.
    pub fn mask(&self) -> &tessera::BlockMask {
        &self.shared.mask
    }

    /// The mask on `backend`'s device, uploaded once.
    pub fn on_device(
        &self,
        ordinal: usize,
        backend: &CudaBackend,
    ) -> PyResult<Arc<DeviceBlockMask>> {
        let mut uploaded = self.shared.device.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, m)) = uploaded.iter().find(|(o, _)| *o == ordinal) {
            return Ok(m.clone());
        }
        let m = Arc::new(backend.upload_block_mask(self.mask()).py()?);
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
        self.mask().tokens()
    }

    /// Block edge in tokens.
    #[getter]
    fn block_size(&self) -> usize {
        self.mask().block_size()
    }

    /// Blocks per side: `ceil(tokens / block_size)`.
    #[getter]
    fn num_blocks(&self) -> usize {
        self.mask().num_blocks()
    }

    /// Blocks that are on.
    #[getter]
    fn nnz(&self) -> usize {
        self.mask().nnz()
    }

    /// Fraction of blocks on: `nnz / num_blocks**2`.
    #[getter]
    fn density(&self) -> f64 {
        self.mask().density()
    }

    /// The mask's key: a positive int given when the mask is built, never reused in the process,
    /// the same for every object `mask_from_key` returns for it. PyTorch's custom op takes it in
    /// place of the mask.
    #[getter]
    fn key(&self) -> u64 {
        self.shared.key
    }

    /// The BSR arrays `(indptr, indices)`, int32 (FlexAttention's `BlockMask.from_kv_blocks`
    /// takes them as `kv_num_blocks = diff(indptr)` and the indices row by row).
    fn to_bsr<'py>(&self, py: Python<'py>) -> PyResult<(Int32Array<'py>, Int32Array<'py>)> {
        let i32s = |v: &[u32]| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
        let indptr = i32s(self.mask().indptr());
        let indices = i32s(self.mask().indices());
        let (np, ni) = (indptr.len(), indices.len());
        Ok((out(py, indptr, &[np])?, out(py, indices, &[ni])?))
    }

    /// The blocks as a bool array `[num_blocks, num_blocks]` (row: query block).
    fn to_dense<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<bool>>> {
        let n = self.mask().num_blocks();
        out(py, self.mask().to_dense_bitmap(), &[n, n])
    }

    fn __repr__(&self) -> String {
        format!(
            "BlockMask(tokens={}, block_size={}, num_blocks={}, nnz={}, density={:.4})",
            self.mask().tokens(),
            self.mask().block_size(),
            self.mask().num_blocks(),
            self.mask().nnz(),
            self.mask().density()
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
        let density = slf.as_super().mask().density();
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

/// The mask whose `key` this is, as a `BlockMask` sharing its blocks and device copies; `None`
/// when no mask alive has that key (it was dropped, or never built; keys are positive). Takes
/// any int64, as PyTorch's custom op passes it.
#[pyfunction]
fn mask_from_key(key: i64) -> Option<PyBlockMask> {
    u64::try_from(key).ok().and_then(PyBlockMask::find)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(mask_from_key, m)?)?;
    m.add_class::<PyBlockMask>()?;
    m.add_class::<PyRadialMask>()?;
    Ok(())
}
