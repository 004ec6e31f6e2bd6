//! Out of memory is `Error::OutOfMemory` with the CUDA code, and the backend keeps working
//! afterwards. Needs a CUDA device (prints `skipped:` otherwise); alone in its binary because it
//! fills the device's memory for a moment.

mod common;

use cudarc::driver::CudaSlice;
use half::bf16;
use tessera_core::{
    Backend, BlockMask, DType, DriverCode, Error, Fp8Granularity, Fp8Quantize, ScaleRule,
    SparseAttention, TensorRef,
};
use tessera_cuda::plan::heuristics::attention_backward_candidates;
use tessera_cuda::plan::AttentionBackwardPlan;
use tessera_cuda::{
    AttentionBackwardBuffers, CudaBackend, DeviceBlockMask, DeviceHalf, DeviceHalfMut,
};

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

    // The fused-dq attention backward (sm_90a) allocates its dq_accum workspace per call: its
    // buffers allocated and its kernels loaded (one run) before the memory is taken.
    let mut backward = FusedBackward::new(&backend);

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
    match &mut backward {
        Some(b) => {
            let e = b
                .run(&backend)
                .expect_err("the fused backward ran with the memory taken");
            assert!(e.is_out_of_memory(), "expected OutOfMemory, got {e:?}");
            println!("{e}");
        }
        None => println!("skipped: no fused-dq attention backward plan on this device"),
    }

    // Memory back: the same call works and gives the same result.
    drop(taken);
    stream.synchronize().unwrap();
    let after = backend.fp8_quantize(&op, TensorRef::F32(&x)).unwrap();
    assert_eq!(after, before);
    if let Some(b) = &mut backward {
        b.run(&backend).unwrap();
    }
}

/// A fused-dq attention backward call (bf16, head_dim 128, 4096 tokens, 16 heads: a 32 MiB
/// dq_accum) on buffers allocated once.
struct FusedBackward {
    op: SparseAttention,
    plan: AttentionBackwardPlan,
    mask: DeviceBlockMask,
    x: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
    delta: CudaSlice<f32>,
    grads: [CudaSlice<bf16>; 3],
}

impl FusedBackward {
    /// The buffers, and one run that compiles and loads the kernels; None without a fused-dq
    /// plan on the device.
    fn new(backend: &CudaBackend) -> Option<Self> {
        let op = SparseAttention::new(1, 4096, 16, 128, DType::BF16);
        let mask = BlockMask::dense(4096, 128).unwrap();
        let plan = attention_backward_candidates(&op, 128, backend.arch_spec())
            .unwrap()
            .into_iter()
            .find(|p| p.dq().is_fused())?;
        let stream = backend.stream();
        let x = stream.alloc_zeros::<bf16>(op.qkv_len()).unwrap();
        let mut b = Self {
            mask: DeviceBlockMask::new(stream, &mask).unwrap(),
            lse: stream.alloc_zeros::<f32>(op.lse_len()).unwrap(),
            delta: stream.alloc_zeros::<f32>(op.lse_len()).unwrap(),
            grads: [x.clone(), x.clone(), x.clone()],
            x,
            op,
            plan,
        };
        b.run(backend).unwrap();
        Some(b)
    }

    /// One backward call on the backend's stream, synchronized.
    fn run(&mut self, backend: &CudaBackend) -> tessera_core::Result<()> {
        let b = self;
        let stream = backend.stream();
        let [dq, dk, dv] = &mut b.grads;
        backend.sparse_attention_backward_plan_on(
            stream,
            &b.op,
            b.plan,
            &b.mask,
            &mut AttentionBackwardBuffers {
                q: DeviceHalf::BF16(b.x.as_view()),
                k: DeviceHalf::BF16(b.x.as_view()),
                v: DeviceHalf::BF16(b.x.as_view()),
                o: DeviceHalf::BF16(b.x.as_view()),
                lse: b.lse.as_view(),
                d_o: DeviceHalf::BF16(b.x.as_view()),
                delta: b.delta.as_view_mut(),
                dq: DeviceHalfMut::BF16(dq.as_view_mut()),
                dk: DeviceHalfMut::BF16(dk.as_view_mut()),
                dv: DeviceHalfMut::BF16(dv.as_view_mut()),
            },
        )?;
        stream.synchronize().unwrap();
        Ok(())
    }
}
