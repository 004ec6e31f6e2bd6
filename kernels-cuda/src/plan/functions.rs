//! Compiled modules and loaded functions, cached once per context.
//!
//! A module is compiled (or read from the disk cache) and loaded the first time one of its
//! variants is launched; each entry point is looked up once, and its dynamic shared-memory limit
//! is raised once, when it is first loaded. Launches then only read the cache.

use super::{ArchSpec, KernelSpec};
use crate::compile::{cached_cubin, KernelVariant};
use crate::runtime::driver_error;
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tessera_core::Result;

/// A loaded kernel function and the attributes set on it.
#[derive(Debug)]
pub struct LoadedFunction {
    /// The function.
    pub function: CudaFunction,
    /// The dynamic shared memory it may be launched with, bytes (its
    /// `MAX_DYNAMIC_SHARED_SIZE_BYTES`, set once at load).
    pub max_dynamic_smem: u32,
}

type FunctionKey = (KernelVariant, &'static str);

/// The modules and functions of one context (thread-safe).
#[derive(Debug)]
pub struct FunctionCache {
    ctx: Arc<CudaContext>,
    arch: ArchSpec,
    modules: Mutex<HashMap<KernelVariant, Arc<CudaModule>>>,
    functions: RwLock<HashMap<FunctionKey, Arc<LoadedFunction>>>,
}

impl FunctionCache {
    /// An empty cache for `ctx`, compiling for `arch`.
    pub fn new(ctx: Arc<CudaContext>, arch: ArchSpec) -> Self {
        Self {
            ctx,
            arch,
            modules: Mutex::new(HashMap::new()),
            functions: RwLock::new(HashMap::new()),
        }
    }

    /// The loaded function of `spec`: compiled, loaded and its shared-memory limit raised on
    /// first use, from the cache after.
    pub fn get(&self, spec: &(impl KernelSpec + ?Sized)) -> Result<Arc<LoadedFunction>> {
        let key: FunctionKey = (spec.kernel(), spec.entry());
        if let Some(f) = self
            .functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(f.clone());
        }
        let module = self.module(&key.0)?;
        let function = module
            .load_function(key.1)
            .map_err(|e| driver_error(&format!("finding {} in {}", key.1, key.0.label()), e))?;
        // A kernel compiled for a fixed size gets exactly that; one sized at run time (compiled
        // with 0 but launched with more) gets all the device allows beside its static shared
        // memory.
        let compiled = spec.compiled_smem_bytes();
        let max_dynamic_smem = if compiled == 0 && spec.smem_bytes() > 0 {
            let static_smem = function.shared_size_bytes().map_err(|e| {
                driver_error(&format!("reading the static shared memory of {}", key.1), e)
            })?;
            self.arch
                .max_smem_per_block
                .saturating_sub(static_smem.max(0) as u32)
        } else {
            compiled
        };
        if max_dynamic_smem > 0 {
            function
                .set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    max_dynamic_smem as i32,
                )
                .map_err(|e| {
                    driver_error(
                        &format!(
                            "allowing {max_dynamic_smem} bytes of shared memory for {}",
                            key.1
                        ),
                        e,
                    )
                })?;
        }
        let loaded = Arc::new(LoadedFunction {
            function,
            max_dynamic_smem,
        });
        let mut functions = self.functions.write().unwrap_or_else(|p| p.into_inner());
        // Another thread may have loaded it meanwhile: keep the first.
        Ok(functions.entry(key).or_insert(loaded).clone())
    }

    /// Number of functions loaded (for tests).
    pub fn len(&self) -> usize {
        self.functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether no function is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn module(&self, variant: &KernelVariant) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(variant) {
            return Ok(m.clone());
        }
        let (cubin, _) = cached_cubin(variant, &self.arch.nvrtc_target())?;
        let m = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .map_err(|e| driver_error(&format!("loading {}", variant.label()), e))?;
        modules.insert(variant.clone(), m.clone());
        Ok(m)
    }
}
