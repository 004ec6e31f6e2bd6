//! The pure-Rust reference for every Tessera op: plain loops, f64 accumulation, written to be
//! read. Every backend is judged against it, and [`CpuBackend`] serves it through the
//! [`tessera_core::Backend`] trait.

#![warn(missing_docs)]

pub mod attention;
pub mod backend;
pub mod fp8;
pub mod metrics;
pub mod mla;

pub use backend::CpuBackend;
