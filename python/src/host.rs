//! The ops over numpy arrays through Tessera's host API, on a backend chosen by name (`cpu`,
//! the f64 reference, by default; `cuda`, `vulkan`, or `auto` for the best one here). Inputs
//! are borrowed (no copy) and outputs are new arrays; the GIL is released while an op runs.
//!
//! numpy has no bfloat16 or FP8: bf16 tensors are given and returned as float32 (inputs rounded
//! to bf16, outputs widened exactly), FP8 E4M3 values as their uint8 bit patterns.

use crate::arrays::{check_ndim, check_shape, from_bf16, out, to_bf16, HalfIn, In};
use crate::errors::{invalid, IntoPyResult};
use crate::mask::PyBlockMask;
use half::bf16;
use numpy::PyArrayDyn;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex};
use tessera::{
    Backend, BackendKind, DType, Fp8Gemm, Fp8Granularity, Fp8Quantize, GemmGrouping, MlaAppend,
    MlaCacheFormat, MlaDecode, ScaleRule, SparseAttention, Tensor, TensorRef, E4M3,
};

type SharedBackend = Arc<dyn Backend>;

/// Backends opened so far, by the name they were asked by (opened once: a GPU backend compiles
/// and caches its kernels).
static OPENED: Mutex<Vec<(String, SharedBackend)>> = Mutex::new(Vec::new());

/// The backend named `name`: `cpu`, `cuda`, `vulkan`, or `auto` (CUDA, then Vulkan, then the
/// CPU reference; `TESSERA_BACKEND` forces one).
pub fn backend(name: &str) -> PyResult<SharedBackend> {
    let key = name.trim().to_ascii_lowercase();
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, b)) = opened.iter().find(|(k, _)| *k == key) {
        return Ok(b.clone());
    }
    let b: SharedBackend = if key == "auto" {
        Arc::from(tessera::best_available().py()?)
    } else {
        let kind = BackendKind::parse(&key)
            .map_err(|_| invalid("backend", "backend", "cpu, cuda, vulkan or auto", name))?;
        Arc::from(tessera::backend(kind).py()?)
    };
    opened.push((key, b.clone()));
    Ok(b)
}

type Array<'py, T> = Bound<'py, PyArrayDyn<T>>;

/// Block-sparse attention forward: q, k, v `[batch, tokens, heads, head_dim]` float16 (run in
/// f16) or float32 (rounded to bf16, run in bf16); returns `(o, lse)`: o of q's dtype and shape,
/// lse float32 `[batch, heads, tokens]` (natural log).
#[pyfunction]
#[pyo3(signature = (q, k, v, mask, softmax_scale = None, backend = "cpu"))]
#[allow(clippy::too_many_arguments)]
fn sparse_attention<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    mask: PyRef<'py, PyBlockMask>,
    softmax_scale: Option<f32>,
    backend: &str,
) -> PyResult<(Bound<'py, PyAny>, Array<'py, f32>)> {
    const OP: &str = "sparse_attention";
    let names = "batch, tokens, heads, head_dim";
    let q = HalfIn::new(OP, "q", q)?;
    let shape = check_ndim(OP, "q", q.shape(), 4, names)?.to_vec();
    let (k, v) = (HalfIn::new(OP, "k", k)?, HalfIn::new(OP, "v", v)?);
    for (arg, t) in [("k", &k), ("v", &v)] {
        if t.is_f16() != q.is_f16() {
            return Err(invalid(
                OP,
                arg,
                "the dtype of q",
                if t.is_f16() { "float16" } else { "float32" },
            ));
        }
        check_shape(OP, arg, t.shape(), &shape, names)?;
    }
    let dtype = if q.is_f16() { DType::F16 } else { DType::BF16 };
    let mut op = SparseAttention::new(shape[0], shape[1], shape[2], shape[3], dtype);
    if let Some(s) = softmax_scale {
        op.softmax_scale = s;
    }
    let b = self::backend(backend)?;
    let mask = mask.mask();
    let result = match (&q, &k, &v) {
        (HalfIn::F16(q), HalfIn::F16(k), HalfIn::F16(v)) => {
            let (q, k, v) = (q.slice(), k.slice(), v.slice());
            py.detach(|| {
                b.sparse_attention(
                    &op,
                    mask,
                    TensorRef::F16(q),
                    TensorRef::F16(k),
                    TensorRef::F16(v),
                )
            })
        }
        (HalfIn::F32(q), HalfIn::F32(k), HalfIn::F32(v)) => {
            let (q, k, v) = (to_bf16(q.slice()), to_bf16(k.slice()), to_bf16(v.slice()));
            py.detach(|| {
                b.sparse_attention(
                    &op,
                    mask,
                    TensorRef::BF16(&q),
                    TensorRef::BF16(&k),
                    TensorRef::BF16(&v),
                )
            })
        }
        _ => unreachable!("dtypes checked equal above"),
    }
    .py()?;
    let lse = out(py, result.lse, &[shape[0], shape[2], shape[1]])?;
    let o = match result.o {
        Tensor::F16(o) => out(py, o, &shape)?.into_any(),
        Tensor::BF16(o) => out(py, from_bf16(&o), &shape)?.into_any(),
        other => {
            return Err(invalid(
                OP,
                "o",
                "f16 or bf16 from the backend",
                other.dtype().name(),
            ))
        }
    };
    Ok((o, lse))
}

fn granularity(op: &'static str, name: &str) -> PyResult<Fp8Granularity> {
    match name {
        "1x128" => Ok(Fp8Granularity::PerToken1x128),
        "128x128" => Ok(Fp8Granularity::Block128x128),
        other => Err(invalid(
            op,
            "granularity",
            "\"1x128\" or \"128x128\"",
            other,
        )),
    }
}

/// FP8 E4M3 quantization of x `[rows, cols]` (float32 or float16) in groups of 1x128
/// (activations) or 128x128 (weights); returns `(values, scales)`: uint8 E4M3 bits
/// `[rows, cols]` and float32 scales (`[rows, ceil(cols/128)]` or
/// `[ceil(rows/128), ceil(cols/128)]`), `x ≈ values * scale` per group.
#[pyfunction]
#[pyo3(signature = (x, granularity = "1x128", power_of_two = false, backend = "cpu"))]
fn fp8_quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    granularity: &str,
    power_of_two: bool,
    backend: &str,
) -> PyResult<(Array<'py, u8>, Array<'py, f32>)> {
    const OP: &str = "fp8_quantize";
    let op_granularity = self::granularity(OP, granularity)?;
    let x = if x.cast::<numpy::PyArrayDyn<half::f16>>().is_ok() {
        HalfIn::F16(In::new(OP, "x", "float16", x)?)
    } else {
        HalfIn::F32(In::new(OP, "x", "float32 or float16", x)?)
    };
    let shape = check_ndim(OP, "x", x.shape(), 2, "rows, cols")?.to_vec();
    let op = Fp8Quantize {
        rows: shape[0],
        cols: shape[1],
        granularity: op_granularity,
        scale_rule: if power_of_two {
            ScaleRule::PowerOfTwo
        } else {
            ScaleRule::Float
        },
    };
    let b = self::backend(backend)?;
    let q = match &x {
        HalfIn::F32(a) => {
            let s = a.slice();
            py.detach(|| b.fp8_quantize(&op, TensorRef::F32(s)))
        }
        HalfIn::F16(a) => {
            let s = a.slice();
            py.detach(|| b.fp8_quantize(&op, TensorRef::F16(s)))
        }
    }
    .py()?;
    let (sr, sc) = op.scales_shape();
    let values: Vec<u8> = q.values.iter().map(|v| v.to_bits()).collect();
    Ok((out(py, values, &shape)?, out(py, q.scales, &[sr, sc])?))
}

/// The E4M3 operand `arg` (uint8 bits) as a slice of E4M3.
fn e4m3<'a>(a: &'a In<'_, u8>) -> &'a [E4M3] {
    bytemuck::cast_slice(a.slice())
}

/// Block-scaled FP8 GEMM `d = a · bᵀ` with DeepSeek-V3 scales: a uint8 (E4M3 bits) `[m, k]`,
/// a_scales float32 `[m, ceil(k/128)]`, b uint8 `[n, k]`, b_scales float32
/// `[ceil(n/128), ceil(k/128)]`; returns d `[m, n]` as float32 holding bf16 values.
#[pyfunction]
#[pyo3(signature = (a, a_scales, b, b_scales, backend = "cpu"))]
fn fp8_gemm<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    a_scales: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    b_scales: &Bound<'py, PyAny>,
    backend: &str,
) -> PyResult<Array<'py, f32>> {
    const OP: &str = "fp8_gemm";
    let a = In::<u8>::new(OP, "a", "uint8 (E4M3 bits)", a)?;
    let b = In::<u8>::new(OP, "b", "uint8 (E4M3 bits)", b)?;
    let sa = In::<f32>::new(OP, "a_scales", "float32", a_scales)?;
    let sb = In::<f32>::new(OP, "b_scales", "float32", b_scales)?;
    let ashape = check_ndim(OP, "a", a.shape(), 2, "m, k")?;
    let bshape = check_ndim(OP, "b", b.shape(), 2, "n, k")?;
    let (m, k, n) = (ashape[0], ashape[1], bshape[0]);
    check_shape(OP, "b", bshape, &[n, k], "n, k (k of a)")?;
    let kb = k.div_ceil(128);
    check_shape(OP, "a_scales", sa.shape(), &[m, kb], "m, ceil(k/128)")?;
    check_shape(
        OP,
        "b_scales",
        sb.shape(),
        &[n.div_ceil(128), kb],
        "ceil(n/128), ceil(k/128)",
    )?;
    let op = Fp8Gemm::new(m, n, k);
    let be = self::backend(backend)?;
    let (av, bv, sav, sbv) = (e4m3(&a), e4m3(&b), sa.slice(), sb.slice());
    let d = py.detach(|| be.fp8_gemm(&op, av, sav, bv, sbv)).py()?;
    out(py, from_bf16(&d), &[m, n])
}

/// Grouped block-scaled FP8 GEMM for mixture of experts. `grouping="contiguous"`: a `[m, k]`
/// (the groups' rows stacked, each group but the last padded to 128 rows), a_scales
/// `[m, ceil(k/128)]`, groups int32 `[G + 1]` row offsets, d `[m, n]`. `grouping="masked"`: a
/// `[G, m, k]`, a_scales `[G, m, ceil(k/128)]`, groups int32 `[G]` row counts, d `[G, m, n]`
/// (rows past a group's count are NaN). b uint8 `[G, n, k]`, b_scales float32
/// `[G, ceil(n/128), ceil(k/128)]`. Returns d as float32 holding bf16 values.
#[pyfunction]
#[pyo3(signature = (a, a_scales, b, b_scales, groups, grouping = "contiguous", backend = "cpu"))]
#[allow(clippy::too_many_arguments)]
fn fp8_gemm_grouped<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    a_scales: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    b_scales: &Bound<'py, PyAny>,
    groups: &Bound<'py, PyAny>,
    grouping: &str,
    backend: &str,
) -> PyResult<Array<'py, f32>> {
    const OP: &str = "fp8_gemm_grouped";
    let a = In::<u8>::new(OP, "a", "uint8 (E4M3 bits)", a)?;
    let b = In::<u8>::new(OP, "b", "uint8 (E4M3 bits)", b)?;
    let sa = In::<f32>::new(OP, "a_scales", "float32", a_scales)?;
    let sb = In::<f32>::new(OP, "b_scales", "float32", b_scales)?;
    let layout = In::<i32>::new(OP, "groups", "int32", groups)?;
    let bshape = check_ndim(OP, "b", b.shape(), 3, "groups, n, k")?;
    let (g, n, k) = (bshape[0], bshape[1], bshape[2]);
    let kb = k.div_ceil(128);
    check_shape(
        OP,
        "b_scales",
        sb.shape(),
        &[g, n.div_ceil(128), kb],
        "groups, ceil(n/128), ceil(k/128)",
    )?;
    let (op, d_shape) = match grouping {
        "contiguous" => {
            let ashape = check_ndim(OP, "a", a.shape(), 2, "m, k")?;
            let m = ashape[0];
            check_shape(OP, "a", ashape, &[m, k], "m, k (k of b)")?;
            check_shape(OP, "a_scales", sa.shape(), &[m, kb], "m, ceil(k/128)")?;
            check_shape(OP, "groups", layout.shape(), &[g + 1], "groups + 1 offsets")?;
            let op = Fp8Gemm::grouped(m, n, k, GemmGrouping::Contiguous { groups: g });
            (op, vec![m, n])
        }
        "masked" => {
            let ashape = check_ndim(OP, "a", a.shape(), 3, "groups, m, k")?;
            let m = ashape[1];
            check_shape(OP, "a", ashape, &[g, m, k], "groups, m, k (groups, k of b)")?;
            check_shape(
                OP,
                "a_scales",
                sa.shape(),
                &[g, m, kb],
                "groups, m, ceil(k/128)",
            )?;
            check_shape(OP, "groups", layout.shape(), &[g], "groups row counts")?;
            let op = Fp8Gemm::grouped(m, n, k, GemmGrouping::Masked { groups: g });
            (op, vec![g, m, n])
        }
        other => {
            return Err(invalid(
                OP,
                "grouping",
                "\"contiguous\" or \"masked\"",
                other,
            ))
        }
    };
    let be = self::backend(backend)?;
    let (av, bv, sav, sbv, gv) = (e4m3(&a), e4m3(&b), sa.slice(), sb.slice(), layout.slice());
    let d = py
        .detach(|| be.fp8_gemm_grouped(&op, av, sav, bv, sbv, gv))
        .py()?;
    out(py, from_bf16(&d), &d_shape)
}

/// The layout of a paged MLA cache: pages of `page_size` token records, each the latent
/// (`latent_dim`) and the RoPE key (`rope_dim`), stored as bf16 (`format="bf16"`) or in
/// DeepSeek-V3.2's FP8 layout (`format="fp8"`: e4m3 latent, f32 scale per 128, bf16 rope).
#[pyclass(frozen, module = "tessera", name = "MlaCacheLayout", eq)]
#[derive(Clone, PartialEq)]
pub struct PyMlaCacheLayout {
    pub layout: tessera::MlaCacheLayout,
}

#[pymethods]
impl PyMlaCacheLayout {
    #[new]
    #[pyo3(signature = (page_size = 64, latent_dim = 512, rope_dim = 64, format = "bf16"))]
    fn new(page_size: usize, latent_dim: usize, rope_dim: usize, format: &str) -> PyResult<Self> {
        let format = match format {
            "bf16" => MlaCacheFormat::Bf16,
            "fp8" => MlaCacheFormat::Fp8,
            other => return Err(invalid("mla_cache", "format", "\"bf16\" or \"fp8\"", other)),
        };
        let layout = tessera::MlaCacheLayout {
            page_size,
            latent_dim,
            rope_dim,
            format,
        };
        layout.validate().py()?;
        Ok(Self { layout })
    }

    /// Tokens per page.
    #[getter]
    fn page_size(&self) -> usize {
        self.layout.page_size
    }

    /// Latent width.
    #[getter]
    fn latent_dim(&self) -> usize {
        self.layout.latent_dim
    }

    /// RoPE key width.
    #[getter]
    fn rope_dim(&self) -> usize {
        self.layout.rope_dim
    }

    /// `"bf16"` or `"fp8"`.
    #[getter]
    fn format(&self) -> &'static str {
        match self.layout.format {
            MlaCacheFormat::Bf16 => "bf16",
            MlaCacheFormat::Fp8 => "fp8",
        }
    }

    /// Bytes of one token record (1152 for DeepSeek-V3 in bf16, 656 in FP8).
    #[getter]
    fn token_bytes(&self) -> usize {
        self.layout.token_bytes()
    }

    /// Bytes of one page.
    #[getter]
    fn page_bytes(&self) -> usize {
        self.layout.page_bytes()
    }

    fn __repr__(&self) -> String {
        format!(
            "MlaCacheLayout(page_size={}, latent_dim={}, rope_dim={}, format={:?})",
            self.layout.page_size,
            self.layout.latent_dim,
            self.layout.rope_dim,
            self.format()
        )
    }
}

/// A paged MLA cache in host memory, owning its pages (`[num_pages, page_size, token_bytes]`
/// bytes), for the numpy API.
#[pyclass(module = "tessera", name = "HostMlaCache")]
pub struct PyHostMlaCache {
    cache: tessera::MlaCache,
}

#[pymethods]
impl PyHostMlaCache {
    #[new]
    fn new(layout: &PyMlaCacheLayout, num_pages: usize) -> PyResult<Self> {
        Ok(Self {
            cache: tessera::MlaCache::new(layout.layout, num_pages).py()?,
        })
    }

    /// The layout.
    #[getter]
    fn layout(&self) -> PyMlaCacheLayout {
        PyMlaCacheLayout {
            layout: *self.cache.layout(),
        }
    }

    /// Pages.
    #[getter]
    fn num_pages(&self) -> usize {
        self.cache.num_pages()
    }

    /// Token slots: `num_pages * page_size`.
    #[getter]
    fn num_slots(&self) -> usize {
        self.cache.num_slots()
    }

    /// A copy of the pages, uint8 `[num_pages, page_size, token_bytes]`.
    fn pages<'py>(&self, py: Python<'py>) -> PyResult<Array<'py, u8>> {
        let l = self.cache.layout();
        out(
            py,
            self.cache.as_bytes().to_vec(),
            &[self.cache.num_pages(), l.page_size, l.token_bytes()],
        )
    }

    /// The token at `slot`, decoded: `(latent, rope)` float32.
    fn read_token<'py>(
        &self,
        py: Python<'py>,
        slot: usize,
    ) -> PyResult<(Array<'py, f32>, Array<'py, f32>)> {
        if slot >= self.cache.num_slots() {
            return Err(invalid(
                "mla_cache",
                "slot",
                format!("0..{}", self.cache.num_slots()),
                slot.to_string(),
            ));
        }
        let (latent, rope) = self.cache.read_token(slot);
        let (nl, nr) = (latent.len(), rope.len());
        Ok((out(py, latent, &[nl])?, out(py, rope, &[nr])?))
    }

    /// Writes token `t` of latent float32 `[tokens, latent_dim]` and rope float32
    /// `[tokens, rope_dim]` (rounded to bf16) to slot `slots[t]` (int32 `[tokens]`, distinct,
    /// `-1` skips; FP8 caches quantize each 128 latent values).
    #[pyo3(signature = (latent, rope, slots, backend = "cpu"))]
    fn append(
        &mut self,
        py: Python<'_>,
        latent: &Bound<'_, PyAny>,
        rope: &Bound<'_, PyAny>,
        slots: &Bound<'_, PyAny>,
        backend: &str,
    ) -> PyResult<()> {
        const OP: &str = "mla_append";
        let l = *self.cache.layout();
        let latent = In::<f32>::new(OP, "latent", "float32", latent)?;
        let rope = In::<f32>::new(OP, "rope", "float32", rope)?;
        let slots = In::<i32>::new(OP, "slots", "int32", slots)?;
        let tokens = check_ndim(OP, "slots", slots.shape(), 1, "tokens")?[0];
        check_shape(
            OP,
            "latent",
            latent.shape(),
            &[tokens, l.latent_dim],
            "tokens, latent_dim",
        )?;
        check_shape(
            OP,
            "rope",
            rope.shape(),
            &[tokens, l.rope_dim],
            "tokens, rope_dim",
        )?;
        let (lat, rp): (Vec<bf16>, Vec<bf16>) = (to_bf16(latent.slice()), to_bf16(rope.slice()));
        let b = backend_for(backend)?;
        let op = MlaAppend { tokens };
        let (cache, sl) = (&mut self.cache, slots.slice());
        py.detach(|| b.mla_append(&op, cache, &lat, &rp, sl)).py()
    }

    /// Absorbed MLA decode: q float32 `[batch, s_q, heads, latent_dim + rope_dim]` (rounded to
    /// bf16), block_table int32 `[batch, max_pages]`, seq_lens int32 `[batch]`; returns
    /// `(o, lse)`: float32 `[batch, s_q, heads, latent_dim]` (bf16 values) and
    /// `[batch, heads, s_q]` (natural log; -inf and o = 0 where a query sees no key).
    #[pyo3(signature = (q, block_table, seq_lens, softmax_scale, backend = "cpu"))]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        q: &Bound<'py, PyAny>,
        block_table: &Bound<'py, PyAny>,
        seq_lens: &Bound<'py, PyAny>,
        softmax_scale: f32,
        backend: &str,
    ) -> PyResult<(Array<'py, f32>, Array<'py, f32>)> {
        const OP: &str = "mla_decode";
        let l = *self.cache.layout();
        let q = In::<f32>::new(OP, "q", "float32", q)?;
        let table = In::<i32>::new(OP, "block_table", "int32", block_table)?;
        let lens = In::<i32>::new(OP, "seq_lens", "int32", seq_lens)?;
        let qs = check_ndim(
            OP,
            "q",
            q.shape(),
            4,
            "batch, s_q, heads, latent_dim + rope_dim",
        )?;
        let (batch, s_q, heads) = (qs[0], qs[1], qs[2]);
        check_shape(
            OP,
            "q",
            qs,
            &[batch, s_q, heads, l.qk_dim()],
            "batch, s_q, heads, latent_dim + rope_dim",
        )?;
        let ts = check_ndim(OP, "block_table", table.shape(), 2, "batch, max_pages")?;
        check_shape(OP, "block_table", ts, &[batch, ts[1]], "batch, max_pages")?;
        check_shape(OP, "seq_lens", lens.shape(), &[batch], "batch")?;
        let op = MlaDecode {
            batch,
            s_q,
            heads,
            max_pages: ts[1],
            softmax_scale,
            layout: l,
        };
        let qv = to_bf16(q.slice());
        let b = backend_for(backend)?;
        let (cache, tv, lv) = (&self.cache, table.slice(), lens.slice());
        let result = py.detach(|| b.mla_decode(&op, cache, &qv, tv, lv)).py()?;
        Ok((
            out(py, from_bf16(&result.o), &[batch, s_q, heads, l.latent_dim])?,
            out(py, result.lse, &[batch, heads, s_q])?,
        ))
    }

    fn __repr__(&self) -> String {
        format!(
            "HostMlaCache(num_pages={}, layout={})",
            self.cache.num_pages(),
            self.layout().__repr__()
        )
    }
}

fn backend_for(name: &str) -> PyResult<SharedBackend> {
    backend(name)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sparse_attention, m)?)?;
    m.add_function(wrap_pyfunction!(fp8_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(fp8_gemm, m)?)?;
    m.add_function(wrap_pyfunction!(fp8_gemm_grouped, m)?)?;
    m.add_class::<PyMlaCacheLayout>()?;
    m.add_class::<PyHostMlaCache>()?;
    Ok(())
}
