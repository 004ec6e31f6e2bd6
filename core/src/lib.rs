//! Shared foundation of Tessera: element types (FP8 with OCP semantics), op descriptors and
//! their validation, the radial block mask, and the [`Backend`] trait.
//!
//! Users normally depend on the `tessera` facade, which re-exports everything here together with
//! the backends. This crate exists so that the backend crates and the reference can share these
//! types while the facade re-exports them (cargo forbids the cycle otherwise).

#![warn(missing_docs)]

pub mod backend;
pub mod cache_dir;
pub mod error;
pub mod fp8;
pub mod mask;
pub mod ops;
pub mod radial;
pub mod tensor;

pub use backend::{Backend, DeviceFeatures, DeviceInfo};
pub use cache_dir::cache_root;
pub use error::{BackendKind, DriverCode, Error, Result};
pub use fp8::{E4M3, E5M2};
pub use half::{bf16, f16};
pub use mask::BlockMask;
pub use ops::attention::{AttentionGradients, AttentionOutput, SparseAttention};
pub use ops::fp8::{
    Fp8Gemm, Fp8Granularity, Fp8Quantize, Fp8Quantized, GemmGrouping, ScaleRule, GEMM_GROUP_ALIGN,
};
pub use ops::mla::{
    MlaAppend, MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeOutput,
    MlaDecodeVarlen, MLA_MAX_KV_SPLITS, MLA_MAX_QUERIES,
};
pub use radial::RadialMaskConfig;
pub use tensor::{DType, Tensor, TensorRef};
