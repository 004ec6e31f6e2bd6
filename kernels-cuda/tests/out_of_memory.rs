//! Out of memory is `Error::OutOfMemory` with the CUDA code, and the backend keeps working
//! afterwards. Needs a CUDA device (prints `skipped:` otherwise); alone in its binary because it
//! fills the device's memory for a moment.

mod common;

use cudarc::driver::CudaSlice;
use tessera_core::{Backend, DriverCode, Error, Fp8Granularity, Fp8Quantize, ScaleRule, TensorRef};

#[test]
fn out_of_memory_is_typed_and_the_backend_keeps_working() {
    let Some(backend) = common::backend() else {
        return;
    };
    let stream = backend.stream().clone();
    let op = Fp8Quantize {
        rows: 4096,
        cols: 4096,
        granularity: Fp8Granularity::PerToken1x128,
        scale_rule: ScaleRule::Float,
    };
    let x: Vec<f32> = (0..op.len())
        .map(|i| (i % 977) as f32 / 97.0 - 5.0)
        .collect();
    // Compiled and loaded before the memory is taken, so that the failure is an allocation.
    let before = backend.fp8_quantize(&op, TensorRef::F32(&x)).unwrap();

    // 1 PiB at once: more than any GPU has. The driver says CUDA_ERROR_OUT_OF_MEMORY.
    let huge = stream.alloc_zeros::<u8>(1 << 50);
    let e = huge.expect_err("1 PiB was allocated");
    assert_eq!(e.0 as i32, DriverCode::CUDA_ERROR_OUT_OF_MEMORY, "{e}");

    // Take (nearly) all the memory, then ask the host API for 100 MiB more.
    let mut taken: Vec<CudaSlice<u8>> = Vec::new();
    for chunk in [1usize << 30, 1 << 26, 1 << 22] {
        while let Ok(b) = stream.alloc_zeros::<u8>(chunk) {
            taken.push(b);
        }
    }
    let (free, total) = backend.context().mem_get_info().unwrap();
    println!("took {} buffers; {free} of {total} bytes left", taken.len());
    let e = backend
        .fp8_quantize(&op, TensorRef::F32(&x))
        .expect_err("the quantizer ran with the memory taken");
    match &e {
        Error::OutOfMemory { code, .. } => {
            assert_eq!(
                *code,
                Some(DriverCode::Cuda(DriverCode::CUDA_ERROR_OUT_OF_MEMORY))
            )
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert!(e.is_out_of_memory());
    println!("{e}");

    // Memory back: the same call works and gives the same result.
    drop(taken);
    stream.synchronize().unwrap();
    let after = backend.fp8_quantize(&op, TensorRef::F32(&x)).unwrap();
    assert_eq!(after, before);
}
