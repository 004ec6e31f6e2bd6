//! The device API of the FP8 quantizer validates its descriptor before launching (it did not:
//! rows = 0 launched an empty grid and came back as a driver error, and `(rows * sc) as u32`
//! truncated the grid without a check), and fuzzed descriptors never panic or fault. Needs a
//! CUDA device (prints `skipped:` otherwise).

mod common;

use cudarc::driver::CudaSlice;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tessera_core::{Backend, Error, Fp8Granularity, Fp8Quantize, ScaleRule, TensorRef};
use tessera_cuda::DeviceInput;

fn quantize(rows: usize, cols: usize, block: bool) -> Fp8Quantize {
    Fp8Quantize {
        rows,
        cols,
        granularity: if block {
            Fp8Granularity::Block128x128
        } else {
            Fp8Granularity::PerToken1x128
        },
        scale_rule: ScaleRule::Float,
    }
}

#[test]
fn zero_and_overflowing_shapes_are_rejected_before_launch() {
    let Some(backend) = common::backend() else {
        return;
    };
    let stream = backend.stream().clone();
    let x: CudaSlice<f32> = stream.alloc_zeros(16).unwrap();
    let mut values: CudaSlice<u8> = stream.alloc_zeros(16).unwrap();
    let mut scales: CudaSlice<f32> = stream.alloc_zeros(16).unwrap();
    for (rows, cols, arg) in [
        (0, 16, "rows"),
        (16, 0, "cols"),
        (0, 0, "rows"),
        (usize::MAX / 2, 4, "rows * cols"),
        (1 << 40, 1 << 40, "rows * cols"),
    ] {
        for block in [false, true] {
            let op = quantize(rows, cols, block);
            let e = backend
                .fp8_quantize_on(
                    &stream,
                    &op,
                    &DeviceInput::F32(x.as_view()),
                    &mut values.as_view_mut(),
                    &mut scales.as_view_mut(),
                )
                .unwrap_err();
            assert!(
                matches!(&e, Error::InvalidArgument { arg: a, .. } if a == arg),
                "{rows}x{cols}: {e:?}"
            );
        }
    }
    // The backend still works.
    let op = quantize(2, 8, false);
    let out = backend
        .fp8_quantize(&op, TensorRef::F32(&[1.0; 16]))
        .unwrap();
    assert_eq!(out.values.len(), 16);
    stream.synchronize().unwrap();
}

/// Shapes near the limits with small device buffers: every call is a typed error (the length
/// checks) or, for the few shapes that fit, a result; never a panic or a driver error.
#[test]
fn fuzzed_device_api_arguments_are_typed_errors() {
    let Some(backend) = common::backend() else {
        return;
    };
    let stream = backend.stream().clone();
    let size = prop_oneof![
        4 => 0usize..40,
        1 => Just(i32::MAX as usize),
        1 => Just(i32::MAX as usize + 1),
        1 => Just(u32::MAX as usize + 1),
        1 => Just(usize::MAX),
        1 => any::<usize>(),
    ];
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(size.clone(), size, any::<bool>(), 0usize..64, 0usize..64),
            |(rows, cols, block, x_len, v_len)| {
                let op = quantize(rows, cols, block);
                let x: CudaSlice<f32> = stream.clone_htod(&vec![0.5f32; x_len.max(1)]).unwrap();
                let mut values: CudaSlice<u8> = stream.alloc_zeros(v_len.max(1)).unwrap();
                let mut scales: CudaSlice<f32> =
                    stream.alloc_zeros(op.scales_len().clamp(1, 64)).unwrap();
                let r = backend.fp8_quantize_on(
                    &stream,
                    &op,
                    &DeviceInput::F32(x.slice(0..x_len)),
                    &mut values.slice_mut(0..v_len),
                    &mut scales.as_view_mut(),
                );
                match r {
                    Ok(()) => {
                        prop_assert!(
                            rows.checked_mul(cols) == Some(x_len) && x_len == v_len && x_len > 0
                        );
                        stream
                            .synchronize()
                            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
                    }
                    Err(e) => prop_assert!(
                        matches!(e, Error::InvalidArgument { .. }),
                        "{rows}x{cols}: {e:?}"
                    ),
                }
                Ok(())
            },
        )
        .unwrap();
    stream.synchronize().unwrap();
}
