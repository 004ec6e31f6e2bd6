//! Op descriptors: the shapes, types and parameters of each operation, with validation.
//!
//! A descriptor is plain data. `validate*` methods check a descriptor and the host arguments of
//! a call against it, and return [`crate::Error::InvalidArgument`] naming the first argument that
//! is wrong. Every backend validates before touching any output.

pub mod attention;
pub mod fp8;
pub mod mla;

use crate::error::{Error, Result};

/// `n` rounded up to a power of two (1 for 0): how the backends' plan caches bucket a size
/// (m, tokens, batch, ...) into a shape class.
pub fn size_bucket(n: usize) -> u64 {
    (n.max(1) as u64)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
}

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

/// The most elements a tensor may have: `isize::MAX / 4`, so that a tensor of any element
/// type (at most 4 bytes) fits in memory's address range, and byte counts computed from element
/// counts never overflow.
pub const MAX_ELEMENTS: usize = isize::MAX as usize / 4;

/// The product of `factors` (an element count), or an [`Error::InvalidArgument`] naming the
/// product (`what`, e.g. `batch * tokens * heads * head_dim`) when it exceeds
/// [`MAX_ELEMENTS`] (or overflows).
pub fn checked_product(op: &'static str, what: &str, factors: &[usize]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| {
            Error::invalid(
                op,
                what,
                format!("at most {MAX_ELEMENTS} elements (isize::MAX / 4)"),
                factors
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join(" * "),
            )
        })
}

/// The product of `factors`, saturating at `usize::MAX`: the element counts of a descriptor
/// that fails validation (a saturated count never equals a slice's length, so length checks
/// still fail with a typed error instead of overflowing).
pub(crate) fn saturating_product(factors: &[usize]) -> usize {
    factors.iter().fold(1usize, |acc, &f| acc.saturating_mul(f))
}
