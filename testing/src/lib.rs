//! Tessera's test harness, kept out of the library's public API: [`Rng`], the one seeded
//! generator of every test and benchmark, and [`check`], the conformance checks that run an op
//! on a backend at a given shape and compare it with the f64 reference (used by the conformance
//! suite and by `tessera check`), and [`backward`], what the attention backward's tests on each
//! device backend share.

#![warn(missing_docs)]

pub mod backward;
pub mod check;
mod rng;

pub use rng::Rng;
