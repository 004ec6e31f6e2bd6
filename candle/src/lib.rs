//! Tessera's ops inside [candle](https://github.com/huggingface/candle): candle `CustomOp`s (and
//! an `InplaceOp` for the cache append) over candle tensors
//! - on the CPU, where they run Tessera's f64 reference ([`tessera_reference::CpuBackend`]) on
//!   candle's storage (the inputs borrowed, no copy; the MLA ops copy the pages into the
//!   reference's cache and, for the append, back);
//! - on CUDA, with the cargo feature `cuda` (off by default: it turns on candle-core's `cuda`
//!   feature, whose kernels need nvcc to build), where they run Tessera's CUDA kernels on
//!   candle's `CudaStorage`: zero copy, on candle's stream, outputs allocated on candle's
//!   device, no synchronization. candle-core 0.11 and tessera-cuda use one cudarc (0.19), so
//!   candle's buffers and stream go to `tessera_cuda`'s `*_on` API as they are.
//!
//! - [`sparse_attention`]: block-sparse (radial) attention forward, q, k, v f16 or bf16
//!   `[batch, tokens, heads, head_dim]` → `(o, lse)`.
//! - [`fp8_quantize`] and [`fp8_gemm`]: DeepSeek-V3's block-scaled FP8 (E4M3 values as `u8`
//!   bits).
//! - [`MlaCache`]: a paged MLA cache owning its pages (a `u8` tensor), with
//!   [`MlaCache::append`] and the absorbed [`MlaCache::decode`].
//!
//! Layouts are Tessera's (the README's Layouts table); tensors must be contiguous (a strided
//! tensor is an error naming it: call `.contiguous()`); the outputs beyond candle's one (lse,
//! scales) are on the inputs' device. Errors are `candle_core::Error::Msg` carrying Tessera's
//! message, naming the argument.

#![warn(missing_docs)]

mod attention;
#[cfg(feature = "cuda")]
mod cuda;
mod fp8;
mod mla;
mod storage;

pub use attention::{sparse_attention, SparseAttentionOp};
pub use fp8::{fp8_gemm, fp8_quantize, Fp8GemmOp, Fp8QuantizeOp};
pub use mla::MlaCache;
