//! Launching a variant: grid from the op, block, shared memory and cluster from the variant,
//! through `cuLaunchKernelEx` (clusters, programmatic dependent launch).
//!
//! Kernel arguments are a list of pointers to values, as the driver takes them ([`KernelArgs`]):
//! device buffers (their address, with cudarc's stream tracking kept for the launch: the launch
//! waits for earlier writes, and for earlier reads of written buffers, and is recorded as a read
//! or a write of each), and by-value arguments of any `DeviceRepr` type (scalars, or a 128-byte
//! [`super::TensorMap`]).

use super::functions::FunctionCache;
use super::{ArchSpec, KernelSpec};
use cudarc::driver::sys;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, SyncOnDrop};
use std::ffi::c_void;
use std::marker::PhantomData;
use tessera_core::{BackendKind, Error, Result};

enum Arg {
    /// A pointer to the caller's value.
    Value(*const c_void),
    /// An index into `KernelArgs::addresses`.
    Address(usize),
}

/// The arguments of one launch, in the kernel's parameter order, borrowed for `'a`.
///
/// Buffers are tracked as cudarc's own launches track them: [`KernelArgs::buffer`] (read by the
/// kernel) makes the stream wait for the buffer's last write and records the launch as a read;
/// [`KernelArgs::buffer_mut`] (written) waits for its last read and write and records a write.
/// The guards doing so live in the arguments and are dropped after the launch.
pub struct KernelArgs<'a> {
    stream: &'a CudaStream,
    args: Vec<Arg>,
    addresses: Vec<sys::CUdeviceptr>,
    guards: Vec<SyncOnDrop<'a>>,
    _values: PhantomData<&'a ()>,
}

impl<'a> KernelArgs<'a> {
    /// No arguments yet, for a launch on `stream`.
    pub fn new(stream: &'a CudaStream) -> Self {
        Self {
            stream,
            args: Vec::new(),
            addresses: Vec::new(),
            guards: Vec::new(),
            _values: PhantomData,
        }
    }

    /// A by-value argument (a scalar, or a struct such as a [`super::TensorMap`]): its bytes
    /// are copied into the kernel's parameter at launch.
    pub fn value<T: DeviceRepr>(&mut self, v: &'a T) -> &mut Self {
        self.args.push(Arg::Value(v as *const T as *const c_void));
        self
    }

    /// A device buffer the kernel reads: its address.
    pub fn buffer<T, B: DevicePtr<T>>(&mut self, buf: &'a B) -> &mut Self {
        let (ptr, guard) = buf.device_ptr(self.stream);
        self.addresses.push(ptr);
        self.args.push(Arg::Address(self.addresses.len() - 1));
        self.guards.push(guard);
        self
    }

    /// A device buffer the kernel writes (and may read): its address.
    pub fn buffer_mut<T, B: DevicePtrMut<T>>(&mut self, buf: &'a mut B) -> &mut Self {
        let (ptr, guard) = buf.device_ptr_mut(self.stream);
        self.addresses.push(ptr);
        self.args.push(Arg::Address(self.addresses.len() - 1));
        self.guards.push(guard);
        self
    }

    /// Tracks a buffer the kernel reads through something other than a pointer argument (e.g. a
    /// tensor map made from `address`), without adding an argument. Returns its address.
    pub fn track<T, B: DevicePtr<T>>(&mut self, buf: &'a B) -> sys::CUdeviceptr {
        let (ptr, guard) = buf.device_ptr(self.stream);
        self.guards.push(guard);
        ptr
    }

    /// Like [`KernelArgs::track`] for a buffer the kernel writes.
    pub fn track_mut<T, B: DevicePtrMut<T>>(&mut self, buf: &'a mut B) -> sys::CUdeviceptr {
        let (ptr, guard) = buf.device_ptr_mut(self.stream);
        self.guards.push(guard);
        ptr
    }

    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.args.len()
    }

    /// Whether there is no argument.
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// The stream the arguments were made for.
    pub fn stream(&self) -> &'a CudaStream {
        self.stream
    }

    /// The driver's `kernelParams`: one pointer per argument.
    fn params(&self) -> Vec<*mut c_void> {
        self.args
            .iter()
            .map(|a| match a {
                Arg::Value(p) => *p as *mut c_void,
                Arg::Address(i) => &self.addresses[*i] as *const sys::CUdeviceptr as *mut c_void,
            })
            .collect()
    }
}

/// Launch options beyond the variant's own configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaunchOptions {
    /// Programmatic dependent launch: the kernel may start before the previous kernel on the
    /// stream has finished (it must wait with `griddepcontrol.wait` before reading that
    /// kernel's output). sm_90 and later.
    pub programmatic_dependent_launch: bool,
}

fn unsupported(op: &'static str, reason: String) -> Error {
    Error::Unsupported {
        op,
        backend: BackendKind::Cuda,
        reason,
    }
}

/// Launches `spec` on the stream of `args` with `grid` CTAs: block, dynamic shared memory and
/// cluster from the variant, the function from `functions` (loaded once).
///
/// # Safety
/// `args` must match the kernel's parameters in number, order and types, and the kernel must
/// stay within the buffers given for the grid (what each op checks before calling this).
pub unsafe fn launch(
    functions: &FunctionCache,
    arch: &ArchSpec,
    spec: &(impl KernelSpec + ?Sized),
    grid: (u32, u32, u32),
    args: KernelArgs<'_>,
    options: LaunchOptions,
) -> Result<()> {
    let op = spec.op();
    spec.valid_on(arch)?;
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return Err(Error::invalid(
            op,
            "grid",
            "at least one CTA in each dimension",
            format!("{grid:?}"),
        ));
    }
    let cluster = spec.cluster_dims();
    if grid.0 % cluster.0 != 0 || grid.1 % cluster.1 != 0 || grid.2 % cluster.2 != 0 {
        return Err(Error::invalid(
            op,
            "grid",
            format!("a multiple of the cluster {cluster:?} in each dimension"),
            format!("{grid:?}"),
        ));
    }
    if options.programmatic_dependent_launch && !arch.programmatic_launch {
        return Err(unsupported(
            op,
            format!(
                "programmatic dependent launch needs sm_90 or newer, not {}",
                arch.nvrtc_target()
            ),
        ));
    }
    let loaded = functions.get(spec)?;
    let smem = spec.smem_bytes();
    if smem > loaded.max_dynamic_smem {
        return Err(unsupported(
            op,
            format!(
                "{} is launched with {smem} bytes of shared memory but its function allows {}",
                spec.label(),
                loaded.max_dynamic_smem
            ),
        ));
    }

    // SAFETY: a zeroed launch attribute is a valid value of this plain C struct (an id of 0,
    // CU_LAUNCH_ATTRIBUTE_IGNORE, and a zeroed union); only the fields set below are read.
    let zeroed = || unsafe { std::mem::zeroed::<sys::CUlaunchAttribute>() };
    let mut attrs: Vec<sys::CUlaunchAttribute> = Vec::new();
    if cluster != (1, 1, 1) {
        let mut a = zeroed();
        a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        a.value.clusterDim.x = cluster.0;
        a.value.clusterDim.y = cluster.1;
        a.value.clusterDim.z = cluster.2;
        attrs.push(a);
    }
    if options.programmatic_dependent_launch {
        let mut a = zeroed();
        a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        a.value.programmaticStreamSerializationAllowed = 1;
        attrs.push(a);
    }
    let stream = args.stream();
    let config = sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: spec.threads(),
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: stream.cu_stream(),
        attrs: if attrs.is_empty() {
            std::ptr::null_mut()
        } else {
            attrs.as_mut_ptr()
        },
        numAttrs: attrs.len() as u32,
    };
    let mut params = args.params();
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| crate::runtime::driver_error("binding the CUDA context", e))?;
    // SAFETY: `config` points at live attributes and the stream of the arguments; `params` holds
    // one pointer per kernel parameter, each to a value that outlives the call (borrowed by
    // `args` or held in it); the caller guarantees they match the kernel's parameters.
    let result = unsafe {
        sys::cuLaunchKernelEx(
            &config,
            loaded.function.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    };
    // The buffers' guards record the launch as their last read or write when dropped.
    drop(args);
    result
        .result()
        .map_err(|e| crate::runtime::driver_error(&format!("launching {}", spec.label()), e))
}
