//! Device memory: buffers and the ranges of them that the device API takes.

mod buffer;

pub use buffer::{Buffer, BufferRange, MemoryLocation, DEVICE_LOCAL_MIN_BYTES};
