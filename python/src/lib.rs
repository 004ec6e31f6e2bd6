//! The `tessera._tessera` extension module behind the `tessera` Python package.
//!
//! Two layers, both thin: numpy arrays on any backend through the host API ([`host`]: the CPU
//! reference by default, so it works on every machine), and device addresses of PyTorch tensors
//! on CUDA through the raw device-pointer API ([`cuda`]: the Python package checks the tensors'
//! device, dtype, shape and contiguity, and passes their addresses, lengths and the current
//! stream). Errors are Python exceptions carrying Tessera's message ([`errors`]).

mod arrays;
mod cuda;
mod errors;
mod host;
mod mask;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// The backends this build has and what it finds on this machine: a dict with `version` and
/// `backends`, a list of dicts (`name`, `compiled`, `usable`, `reason`, `devices`, `software`).
#[pyfunction]
fn info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("version", env!("CARGO_PKG_VERSION"))?;
    let list = PyList::empty(py);
    for status in tessera::probe_all() {
        let b = PyDict::new(py);
        b.set_item("name", status.kind.name())?;
        b.set_item("compiled", status.compiled)?;
        b.set_item("usable", status.usable.is_ok())?;
        b.set_item("reason", status.usable.err())?;
        b.set_item("devices", status.devices)?;
        b.set_item("details", status.details)?;
        b.set_item("software", status.software)?;
        list.append(b)?;
    }
    out.set_item("backends", list)?;
    Ok(out)
}

/// The extension module.
#[pymodule]
fn _tessera(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(info, m)?)?;
    errors::register(m)?;
    mask::register(m)?;
    host::register(m)?;
    cuda::register(m)?;
    Ok(())
}
