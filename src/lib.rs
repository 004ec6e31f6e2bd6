//! # Tessera
//!
//! GPU kernels for the three efficiency ideas behind affordable frontier models, for Rust:
//! radial block-sparse attention for long video, the MLA compressed (paged, optionally FP8) KV
//! cache with absorbed decode, and block-scaled FP8 GEMM (DeepSeek-V3 recipe). Each op runs on
//! CUDA, Vulkan or the pure-Rust CPU reference through one [`Backend`] trait.
//!
//! ```
//! use tessera::{Backend, RadialMaskConfig, SparseAttention, DType, TensorRef, bf16};
//!
//! let backend = tessera::best_available()?; // CUDA, then Vulkan, then the CPU reference
//! let mask = RadialMaskConfig {
//!     frames: 4, tokens_per_frame: 64, extra_tokens: 0, block_size: 64, decay: 1.0, sink: false,
//! }
//! .build()?;
//! let op = SparseAttention::new(1, mask.tokens(), 2, 64, DType::BF16);
//! let x = vec![bf16::from_f32(0.1); op.qkv_len()];
//! let out = backend.sparse_attention(&op, &mask, TensorRef::BF16(&x), TensorRef::BF16(&x), TensorRef::BF16(&x))?;
//! assert_eq!(out.lse.len(), op.lse_len());
//! # Ok::<(), tessera::Error>(())
//! ```

#![warn(missing_docs)]

pub mod discovery;

pub use discovery::{
    backend, best_available, forced_backend, probe_all, BackendStatus, BACKEND_ENV,
};
pub use tessera_core::*;
pub use tessera_reference as reference;
pub use tessera_reference::CpuBackend;

/// The CUDA backend (feature `cuda`).
#[cfg(feature = "cuda")]
pub use tessera_cuda as cuda;

/// The Vulkan backend (feature `vulkan`).
#[cfg(feature = "vulkan")]
pub use tessera_vulkan as vulkan;

/// The README's Rust example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
