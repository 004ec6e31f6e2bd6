//! numpy arrays in and out: the element type, the shape and C-contiguity of each argument are
//! checked here, with errors naming it; values go to the host API as slices (no copy) and come
//! back as new arrays.

use crate::errors::invalid;
use half::{bf16, f16};
use numpy::{
    Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

/// The numpy name of an array's element type (for messages).
fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<PyUntypedArray>() {
        Ok(a) => a
            .dtype()
            .str()
            .map(|s| format!("dtype {s}"))
            .unwrap_or_else(|_| "an array".into()),
        Err(_) => format!(
            "a {}",
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "value".into())
        ),
    }
}

/// A read-only C-contiguous numpy array of `T` with its shape, named `arg` of `op`.
pub struct In<'py, T: Element> {
    array: PyReadonlyArrayDyn<'py, T>,
}

impl<'py, T: Element> In<'py, T> {
    /// `obj` as an array of `T` (`what` names the element type in messages, e.g. `float32`).
    pub fn new(op: &'static str, arg: &str, what: &str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let array = obj
            .cast::<PyArrayDyn<T>>()
            .map_err(|_| invalid(op, arg, format!("a numpy array of {what}"), dtype_name(obj)))?
            .readonly();
        if !array.is_c_contiguous() {
            return Err(invalid(
                op,
                arg,
                "a C-contiguous array (use numpy.ascontiguousarray)",
                format!("strides {:?}", array.strides()),
            ));
        }
        Ok(Self { array })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.array.shape()
    }

    /// The elements, row-major.
    pub fn slice(&self) -> &[T] {
        self.array
            .as_slice()
            .expect("checked C-contiguous when made")
    }
}

/// Checks that `shape` is `expected` (`names` spell the dimensions in messages).
pub fn check_shape(
    op: &'static str,
    arg: &str,
    shape: &[usize],
    expected: &[usize],
    names: &str,
) -> PyResult<()> {
    if shape != expected {
        return Err(invalid(
            op,
            arg,
            format!("shape {expected:?} ({names})"),
            format!("shape {shape:?}"),
        ));
    }
    Ok(())
}

/// Checks that `shape` has `ndim` dimensions and returns it.
pub fn check_ndim<'s>(
    op: &'static str,
    arg: &str,
    shape: &'s [usize],
    ndim: usize,
    names: &str,
) -> PyResult<&'s [usize]> {
    if shape.len() != ndim {
        return Err(invalid(
            op,
            arg,
            format!("{ndim} dimensions ({names})"),
            format!("shape {shape:?}"),
        ));
    }
    Ok(shape)
}

/// A 16-bit float input given as float16 (used as is) or float32 (rounded to bfloat16, numpy
/// having no bfloat16).
pub enum HalfIn<'py> {
    /// float16 elements.
    F16(In<'py, f16>),
    /// float32 elements, to be rounded to bf16.
    F32(In<'py, f32>),
}

impl<'py> HalfIn<'py> {
    pub fn new(op: &'static str, arg: &str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if obj.cast::<PyArrayDyn<f16>>().is_ok() {
            return In::<f16>::new(op, arg, "float16", obj).map(HalfIn::F16);
        }
        In::<f32>::new(
            op,
            arg,
            "float16 (run in f16) or float32 (rounded to bf16)",
            obj,
        )
        .map(HalfIn::F32)
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            HalfIn::F16(a) => a.shape(),
            HalfIn::F32(a) => a.shape(),
        }
    }

    pub fn is_f16(&self) -> bool {
        matches!(self, HalfIn::F16(_))
    }
}

/// float32 values rounded to bf16 (round to nearest even).
pub fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// bf16 values widened to float32 (exact).
pub fn from_bf16(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// A new numpy array of `shape` holding `values`.
pub fn out<'py, T: Element>(
    py: Python<'py>,
    values: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    numpy::PyArray1::from_vec(py, values).reshape(shape.to_vec())
}
