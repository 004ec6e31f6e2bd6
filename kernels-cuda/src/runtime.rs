//! The CUDA context, stream, architecture, kernel functions and plans behind
//! [`crate::CudaBackend`].

use crate::plan::{ArchSpec, FunctionCache, PlanCache};
use cudarc::driver::{CudaContext, CudaStream, DriverError};
use std::sync::Arc;
use tessera_core::{BackendKind, DriverCode, Error, Result};

/// Maps a driver error to Tessera's error type, keeping the `CUresult`:
/// [`Error::OutOfMemory`] for `CUDA_ERROR_OUT_OF_MEMORY`, [`Error::Driver`] otherwise.
pub(crate) fn driver_error(what: &str, e: DriverError) -> Error {
    Error::from_driver(
        BackendKind::Cuda,
        DriverCode::Cuda(e.0 as i32),
        format!("{what}: {e}"),
        None,
    )
}

/// The environment variable that makes the first use of each shape class time every candidate
/// and keep the fastest (`1`); read once, when the backend is created. That first call then
/// blocks while the candidates run on the backend's own stream (on scratch buffers): do not set
/// it while capturing CUDA graphs; run `tessera tune` beforehand instead.
pub const TUNE_ENV: &str = "TESSERA_TUNE";

/// A device context with its architecture, loaded functions and plans.
#[derive(Debug)]
pub struct CudaRuntime {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) device_name: String,
    pub(crate) arch: ArchSpec,
    pub(crate) functions: FunctionCache,
    pub(crate) plans: PlanCache,
}

impl CudaRuntime {
    /// Opens device `ordinal` (the caller has checked that the driver and NVRTC are present).
    pub fn new(ordinal: usize) -> Result<Self> {
        let ctx =
            CudaContext::new(ordinal).map_err(|e| driver_error("creating the CUDA context", e))?;
        let arch = ArchSpec::from_device(&ctx)?;
        let device_name = ctx
            .name()
            .map_err(|e| driver_error("reading the device name", e))?;
        let stream = ctx.default_stream();
        let tune = std::env::var(TUNE_ENV).is_ok_and(|v| v.trim() == "1");
        let plans = PlanCache::new(
            &device_name,
            arch.clone(),
            tune,
            PlanCache::default_file(&device_name, &arch),
        );
        Ok(Self {
            functions: FunctionCache::new(ctx.clone(), arch.clone()),
            ctx,
            stream,
            device_name,
            arch,
            plans,
        })
    }
}
