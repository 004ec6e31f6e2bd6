//! Tessera's errors as Python exceptions: one class per kind of [`tessera::Error`], all
//! subclasses of `TesseraError`, each carrying Tessera's message (which names the op, the
//! argument, what was expected and what was given).

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    tessera,
    TesseraError,
    PyException,
    "Base class of every error Tessera raises."
);
create_exception!(
    tessera,
    InvalidArgumentError,
    TesseraError,
    "An argument does not satisfy the op's contract (dtype, shape, device, stride, value); the message names it. Nothing was written."
);
create_exception!(
    tessera,
    UnsupportedError,
    TesseraError,
    "The backend does not implement this op or variant."
);
create_exception!(
    tessera,
    BackendUnavailableError,
    TesseraError,
    "The backend cannot be used on this machine (no driver, no device, no compiler)."
);
create_exception!(
    tessera,
    DeviceError,
    TesseraError,
    "The device or its driver failed (the message keeps the driver's status code)."
);
create_exception!(
    tessera,
    OutOfMemoryError,
    DeviceError,
    "The device or the host could not provide the memory asked for; the backend stays usable."
);

/// The Python exception of a Tessera error.
pub fn to_py(e: tessera::Error) -> PyErr {
    let message = e.to_string();
    match e {
        tessera::Error::InvalidArgument { .. } => InvalidArgumentError::new_err(message),
        tessera::Error::Unsupported { .. } => UnsupportedError::new_err(message),
        tessera::Error::BackendUnavailable { .. } => BackendUnavailableError::new_err(message),
        tessera::Error::OutOfMemory { .. } => OutOfMemoryError::new_err(message),
        _ => DeviceError::new_err(message),
    }
}

/// `Result<T>` of Tessera as a Python result.
pub trait IntoPyResult<T> {
    /// Maps the error with [`to_py`].
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for tessera::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// An [`InvalidArgumentError`] in Tessera's format.
pub fn invalid(
    op: &'static str,
    arg: impl Into<String>,
    expected: impl Into<String>,
    got: impl Into<String>,
) -> PyErr {
    to_py(tessera::Error::invalid(op, arg, expected, got))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TesseraError", py.get_type::<TesseraError>())?;
    m.add(
        "InvalidArgumentError",
        py.get_type::<InvalidArgumentError>(),
    )?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add(
        "BackendUnavailableError",
        py.get_type::<BackendUnavailableError>(),
    )?;
    m.add("DeviceError", py.get_type::<DeviceError>())?;
    m.add("OutOfMemoryError", py.get_type::<OutOfMemoryError>())?;
    Ok(())
}
