//! The launch-plan layer: how every CUDA op chooses, compiles and launches its kernel.
//!
//! - [`ArchSpec`] says what the device offers (SMs, shared memory, registers, wgmma, TMA...),
//!   read from the driver, or built from a compute capability for tests and CI.
//! - A **variant** is a typed description of one compiled kernel function: [`GemmVariant`],
//!   [`AttentionVariant`], [`AttentionBackwardVariant`], [`MlaDecodeVariant`], [`MlaAppendVariant`], [`MlaCombineVariant`],
//!   [`MlaScheduleVariant`], [`QuantizeVariant`]. Each implements [`KernelSpec`]: it renders its NVRTC constants and its
//!   entry name, knows its threads per CTA, dynamic shared memory and cluster shape, and checks
//!   that it can run on an architecture ([`KernelSpec::valid_on`]). The shared-memory size is
//!   computed here once and passed to the kernel as `TESSERA_SMEM_BYTES` (threads as
//!   `TESSERA_THREADS`); each kernel `static_assert`s them against its own layout, and
//!   `#error`s on a missing or unsupported constant, so a host/kernel mismatch fails to compile
//!   in CI.
//! - [`heuristics`] lists, per op and architecture family, the **candidates** for a shape (the
//!   first always valid on that architecture: the fallback) and the default pick (for the GEMM:
//!   fewest waves, then the fullest last wave).
//! - [`PlanCache`] remembers the pick per (op, [`ShapeClass`]) for one device and architecture:
//!   the heuristic's, or with `TESSERA_TUNE=1` (or `tessera tune`) the fastest candidate timed
//!   on the device, persisted as JSON next to the NVRTC disk cache.
//! - [`FunctionCache`] loads each variant's function once per context and sets its shared-memory
//!   limit once; [`crate::CudaBackend::launch_kernel`] launches it through `cuLaunchKernelEx`
//!   (clusters, programmatic dependent launch) with [`KernelArgs`] (device buffers with cudarc's
//!   stream tracking, and by-value arguments such as a [`TensorMap`]).
//!
//! # Adding a kernel variant
//! 1. Write the kernel in `kernels/` (required constants checked with `#ifndef X #error`, no
//!    defaults; `static_assert` its shared memory against `TESSERA_SMEM_BYTES` and its threads
//!    against `TESSERA_THREADS`). Declare its [`crate::compile::KernelSource`] in
//!    [`crate::kernels`], with [`crate::compile::KernelSource::with_headers`] if it needs shared
//!    headers beyond `common.cuh` (e.g. `sm90/hopper.cuh`).
//! 2. Describe it: a struct with its parameters and an `impl KernelSpec` (or, for another kind of
//!    an existing op, e.g. a wgmma GEMM, a new arm of that op's enum such as [`GemmVariant`],
//!    filling in each `match`: the compiler lists them).
//! 3. Add it to the op's candidates in [`heuristics`] for the architectures it runs on (after
//!    the fallback; for the GEMM in [`heuristics::gemm_variants`], which is also what CI
//!    compiles), and to the op's launch code in `ops/` (its arguments and grid: a new arm of
//!    the `match` in `CudaBackend::fp8_gemm_variant_on`, building its [`KernelArgs`], e.g. with
//!    a [`TensorMap`] by value, and launching with [`crate::CudaBackend::launch_kernel`]).
//! 4. CI then compiles it for sm_80, sm_89 and sm_90a wherever it is a candidate
//!    (`tests/compile_all.rs`), and the GPU test `tests/plan_candidates.rs` runs it against the
//!    reference.

pub mod arch;
pub mod attention;
pub mod attention_backward;
pub mod cache;
pub mod functions;
pub mod gemm;
pub mod heuristics;
pub mod launch;
pub mod mla;
pub mod quantize;
pub mod tensor_map;
pub mod tune;
pub mod util;

pub use arch::{ArchFamily, ArchSpec};
pub use attention::{AttentionKernel, AttentionShape, AttentionVariant, HalfType};
pub use attention_backward::{
    AttentionBackwardDq, AttentionBackwardKernel, AttentionBackwardPlan, AttentionBackwardTiles,
    AttentionBackwardVariant, AttentionBackwardWorkspace,
};
pub use cache::{
    PlanCache, PlanOrigin, PlannedOp, PlannedVariant, ShapeClass, Timer, PLAN_FORMAT_VERSION,
};
pub use functions::{FunctionCache, LoadedFunction};
pub use gemm::{GemmVariant, MmaSyncGemm, WgmmaGemm, GEMM_TILE_N};
pub use launch::{KernelArgs, LaunchOptions};
pub use mla::{
    CacheFormat, MlaAppendVariant, MlaCombineVariant, MlaDecodeKernel, MlaDecodeShape,
    MlaDecodeVariant, MlaScheduleVariant,
};
pub use quantize::{
    QuantizeGranularity, QuantizeInput, QuantizeLaunch, QuantizeShape, QuantizeVariant, UnitOrder,
};
pub use tensor_map::{TensorMap, TmaDtype, TmaSwizzle};
pub use tune::TuneOutcome;
pub use util::GpuSleepVariant;

use crate::compile::{KernelSource, KernelVariant};
use arch::PORTABLE_CLUSTER_SIZE;
use tessera_core::{BackendKind, Error, Result};

/// One compiled kernel function, described by its parameters.
///
/// Implementations render everything that the kernel must agree on from their own fields, so
/// there is one source of truth per fact: the constants ([`KernelSpec::defines`]), the entry
/// point, the threads per CTA, the dynamic shared memory and the cluster shape.
pub trait KernelSpec: std::fmt::Debug {
    /// The op, for error messages (e.g. `fp8_gemm`).
    fn op(&self) -> &'static str;
    /// The `.cu` source.
    fn source(&self) -> KernelSource;
    /// The kernel's own compile-time constants, in a fixed order (the plan layer adds
    /// `TESSERA_SMEM_BYTES` and `TESSERA_THREADS`).
    fn defines(&self) -> Vec<(&'static str, String)>;
    /// The entry point's name.
    fn entry(&self) -> &'static str;
    /// Threads per CTA (a one-dimensional block).
    fn threads(&self) -> u32;
    /// Dynamic shared memory per CTA at launch, bytes.
    fn smem_bytes(&self) -> u32;
    /// The `TESSERA_SMEM_BYTES` the kernel is compiled with: [`KernelSpec::smem_bytes`], or 0
    /// for a kernel whose layout depends on run-time dims (it then checks the launch's size on
    /// the device, and its function's limit is raised to the device's maximum).
    fn compiled_smem_bytes(&self) -> u32 {
        self.smem_bytes()
    }
    /// Cluster dimensions; `(1, 1, 1)` is no cluster. The launch sets them as a launch
    /// attribute, so the kernel must not also declare `__cluster_dims__`.
    fn cluster_dims(&self) -> (u32, u32, u32) {
        (1, 1, 1)
    }
    /// Checks that the variant can run on `arch` (instructions, shared memory, threads,
    /// cluster size): [`Error::Unsupported`] saying what is missing otherwise.
    fn valid_on(&self, arch: &ArchSpec) -> Result<()>;

    /// The compile unit: source and constants, `TESSERA_SMEM_BYTES` and `TESSERA_THREADS` last.
    fn kernel(&self) -> KernelVariant {
        let mut v = KernelVariant::new(self.source());
        v.defines = self.defines();
        v.define("TESSERA_SMEM_BYTES", self.compiled_smem_bytes())
            .define("TESSERA_THREADS", self.threads())
    }

    /// A short name: the file, the constants and the entry point.
    fn label(&self) -> String {
        format!("{}:{}", self.kernel().label(), self.entry())
    }
}

/// The checks every variant shares: at most 1024 threads and the SM's thread limit, shared
/// memory within the per-block limit, a cluster only where the architecture has them and of at
/// most [`PORTABLE_CLUSTER_SIZE`] CTAs.
pub fn check_resources(spec: &(impl KernelSpec + ?Sized), arch: &ArchSpec) -> Result<()> {
    let unsupported = |reason: String| Error::Unsupported {
        op: spec.op(),
        backend: BackendKind::Cuda,
        reason,
    };
    let threads = spec.threads();
    if threads == 0 || threads > 1024 || threads > arch.max_threads_per_sm {
        return Err(unsupported(format!(
            "{} needs {threads} threads per CTA; {} allows {}",
            spec.label(),
            arch.nvrtc_target(),
            arch.max_threads_per_sm.min(1024)
        )));
    }
    let smem = spec.smem_bytes();
    if smem > arch.max_smem_per_block {
        return Err(unsupported(format!(
            "{} needs {smem} bytes of shared memory per block; {} allows {}",
            spec.label(),
            arch.nvrtc_target(),
            arch.max_smem_per_block
        )));
    }
    let (x, y, z) = spec.cluster_dims();
    let cluster = x.saturating_mul(y).saturating_mul(z);
    if cluster == 0 {
        return Err(unsupported(format!(
            "{} has an empty cluster {:?}",
            spec.label(),
            (x, y, z)
        )));
    }
    if cluster > 1 && !arch.clusters {
        return Err(unsupported(format!(
            "{} needs clusters of {cluster} CTAs; {} has no clusters",
            spec.label(),
            arch.nvrtc_target()
        )));
    }
    if cluster > PORTABLE_CLUSTER_SIZE {
        return Err(unsupported(format!(
            "{} needs clusters of {cluster} CTAs; at most {PORTABLE_CLUSTER_SIZE} are portable",
            spec.label()
        )));
    }
    Ok(())
}
