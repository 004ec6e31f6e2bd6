//! Out of memory is `Error::OutOfMemory`, and the backend keeps working afterwards: a buffer of
//! 1 PiB (refused before the driver is asked: it exceeds the largest heap and the allocation
//! limits, so nothing is actually allocated, and the test is safe on lavapipe, whose heap is the
//! host's memory) and a host-API GEMM whose output (2 TiB) no device holds.

mod common;

use common::backend;
use tessera_core::{Backend, Error, Fp8Gemm, TensorRef, E4M3};
use tessera_vulkan::{Buffer, MemoryLocation};

fn assert_out_of_memory(e: &Error, bytes: Option<u64>) {
    match e {
        Error::OutOfMemory {
            requested_bytes, ..
        } => {
            if bytes.is_some() {
                assert_eq!(*requested_bytes, bytes, "{e}");
            }
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
}

/// A small op that must still work.
fn still_works(backend: &dyn Backend) {
    let op = tessera_core::Fp8Quantize {
        rows: 3,
        cols: 130,
        granularity: tessera_core::Fp8Granularity::PerToken1x128,
        scale_rule: tessera_core::ScaleRule::Float,
    };
    let x: Vec<f32> = (0..op.len()).map(|i| i as f32 / 7.0).collect();
    let got = backend.fp8_quantize(&op, TensorRef::F32(&x)).unwrap();
    let want = tessera_reference::fp8::quantize(&op, &x);
    assert_eq!(got.values, want.values);
}

#[test]
fn a_petabyte_buffer_is_out_of_memory() {
    let Some(backend) = backend() else { return };
    let f = backend.features();
    println!(
        "largest heap {} bytes, maxMemoryAllocationSize {}, maxBufferSize {:?}",
        f.largest_heap_bytes, f.max_memory_allocation_size, f.max_buffer_size
    );
    for location in [MemoryLocation::DeviceLocal, MemoryLocation::HostVisible] {
        let e = Buffer::new(backend.context(), 1 << 50, location)
            .expect_err("a 1 PiB buffer was allocated");
        assert_out_of_memory(&e, Some(1 << 50));
        assert!(e.is_out_of_memory());
        println!("{location:?}: {e}");
    }
    still_works(&backend);
}

#[test]
fn a_host_call_whose_output_no_device_holds_is_out_of_memory() {
    let Some(backend) = backend() else { return };
    // D = 2^20 x 2^20 bf16 = 2 TiB, from 16 MiB of inputs.
    let (m, n, k) = (1 << 20, 1 << 20, 16);
    let op = Fp8Gemm::new(m, n, k);
    let a = vec![E4M3::from_f32(0.5); m * k];
    let b = vec![E4M3::from_f32(0.5); n * k];
    let sa = vec![1.0f32; op.a_scales_len()];
    let sb = vec![1.0f32; op.b_scales_len()];
    let e = backend
        .fp8_gemm(&op, &a, &sa, &b, &sb)
        .expect_err("a 2 TiB output was allocated");
    assert_out_of_memory(&e, None);
    println!("{e}");
    still_works(&backend);
}

/// On a GPU: device-local buffers of 1 GiB until the driver refuses one, which must be
/// `OutOfMemory` with `VK_ERROR_OUT_OF_DEVICE_MEMORY`; then the memory is freed and the backend
/// works. Skipped on a CPU device (lavapipe), where this would exhaust the host's memory.
#[test]
fn exhausting_device_memory_is_out_of_memory_with_the_vk_result() {
    let Some(backend) = backend() else { return };
    if backend.features().device_type == "Cpu" {
        println!("skipped: a software device (its memory is the host's)");
        return;
    }
    let mut taken = Vec::new();
    let refused = loop {
        match Buffer::new(backend.context(), 1 << 30, MemoryLocation::DeviceLocal) {
            Ok(b) => taken.push(b),
            Err(e) => break e,
        }
        assert!(taken.len() < 4096, "4 TiB allocated without a refusal");
    };
    println!("refused after {} GiB: {refused}", taken.len());
    assert!(refused.is_out_of_memory(), "{refused:?}");
    let code = refused.driver_code();
    assert!(
        code.is_some_and(|c| c.is_out_of_memory()),
        "the driver's code is kept: {refused:?}"
    );
    drop(taken);
    still_works(&backend);
}
