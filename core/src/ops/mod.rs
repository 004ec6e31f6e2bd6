//! Op descriptors: the shapes, types and parameters of each operation, with validation.
//!
//! A descriptor is plain data. `validate*` methods check a descriptor and the host arguments of
//! a call against it, and return [`crate::Error::InvalidArgument`] naming the first argument that
//! is wrong. Every backend validates before touching any output.

pub mod attention;
pub mod fp8;
pub mod mla;

use crate::error::{Error, Result};

/// Checks that an argument holds exactly `expected` elements; `shape` describes them in the
/// error (e.g. `[m 4, k 128]`). Backends use it for their device-buffer APIs too.
pub fn check_len(
    op: &'static str,
    arg: &str,
    shape: &str,
    expected: usize,
    got: usize,
) -> Result<()> {
    if expected != got {
        return Err(Error::invalid(
            op,
            arg,
            format!("{expected} elements ({shape})"),
            format!("{got} elements"),
        ));
    }
    Ok(())
}

/// Checks that a softmax scale is finite and positive.
pub(crate) fn check_scale(op: &'static str, scale: f32) -> Result<()> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::invalid(
            op,
            "softmax_scale",
            "a finite number > 0",
            scale.to_string(),
        ));
    }
    Ok(())
}
