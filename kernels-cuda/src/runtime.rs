//! The CUDA context, stream and module cache behind [`crate::CudaBackend`].

use crate::compile::{cached_cubin, KernelVariant};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DriverError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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

/// The NVRTC target for a compute capability: `sm_90a` on Hopper (wgmma, setmaxnreg),
/// `sm_100a` on Blackwell, plain `sm_XY` before.
pub fn arch_for(major: i32, minor: i32) -> String {
    if major >= 9 {
        format!("sm_{major}{minor}a")
    } else {
        format!("sm_{major}{minor}")
    }
}

/// A device context with its compiled kernels.
#[derive(Debug)]
pub struct CudaRuntime {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) arch: String,
    pub(crate) compute_capability: (i32, i32),
    pub(crate) sm_count: usize,
    modules: Mutex<HashMap<KernelVariant, Arc<CudaModule>>>,
}

impl CudaRuntime {
    /// Opens device `ordinal` (the caller has checked that the driver and NVRTC are present).
    pub fn new(ordinal: usize) -> Result<Self> {
        let ctx =
            CudaContext::new(ordinal).map_err(|e| driver_error("creating the CUDA context", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| driver_error("reading the compute capability", e))?;
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|e| driver_error("reading the SM count", e))? as usize;
        let stream = ctx.default_stream();
        Ok(Self {
            ctx,
            stream,
            arch: arch_for(major, minor),
            compute_capability: (major, minor),
            sm_count,
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// The kernel `entry` of `variant`, compiling (or reading from the disk cache) on first use.
    pub fn function(&self, variant: &KernelVariant, entry: &str) -> Result<CudaFunction> {
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match modules.get(variant) {
                Some(m) => m.clone(),
                None => {
                    let (cubin, _) = cached_cubin(variant, &self.arch)?;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
                        .map_err(|e| driver_error(&format!("loading {}", variant.label()), e))?;
                    modules.insert(variant.clone(), m.clone());
                    m
                }
            }
        };
        module
            .load_function(entry)
            .map_err(|e| driver_error(&format!("finding {entry} in {}", variant.label()), e))
    }
}
