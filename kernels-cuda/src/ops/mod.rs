//! The ops: each module holds the device API (caller-owned buffers and stream) and the host
//! wrapper that [`crate::CudaBackend`]'s `Backend` implementation calls.

pub mod attention;
pub mod attention_backward;
pub mod fp8;
pub mod fp8_gemm;
pub mod mla;

use crate::runtime::driver_error;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use std::sync::Arc;
use tessera_core::{Error, Result};

/// Checks that a device buffer has exactly `expected` elements.
pub(crate) fn check_device_len(
    op: &'static str,
    arg: &str,
    expected: usize,
    got: usize,
) -> Result<()> {
    tessera_core::ops::check_len(op, arg, "device buffer", expected, got)
}

/// Uploads a host slice.
pub(crate) fn upload<T: DeviceRepr>(stream: &Arc<CudaStream>, host: &[T]) -> Result<CudaSlice<T>> {
    stream
        .clone_htod(host)
        .map_err(|e| driver_error("copying to the device", e))
}

/// Downloads a device buffer.
pub(crate) fn download<T: DeviceRepr + Default + Clone>(
    stream: &Arc<CudaStream>,
    dev: &CudaSlice<T>,
) -> Result<Vec<T>> {
    stream
        .clone_dtoh(dev)
        .map_err(|e| driver_error("copying from the device", e))
}

/// Converts a size to the i32 the kernels take, or says which argument is too large.
pub(crate) fn to_i32(op: &'static str, arg: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, arg, "at most 2^31 - 1", v.to_string()))
}
