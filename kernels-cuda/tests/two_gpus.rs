//! Two GPUs in one process: one backend per device, both busy at once from two threads, each
//! output equal to a run on one GPU alone. Prints `skipped: fewer than 2 CUDA devices` on a
//! machine with fewer.

mod common;

use common::{bf16s, bits_bf16, bits_f32, GemmInputs};
use std::sync::{Arc, Barrier};
use tessera_core::{
    Backend, BlockMask, DType, Fp8Gemm, MlaCache, MlaCacheLayout, MlaDecode, SparseAttention,
    TensorRef,
};
use tessera_cuda::CudaBackend;

/// Every op once; the bit patterns of the outputs.
fn run_all(backend: &CudaBackend) -> Vec<Vec<u32>> {
    let gemm = GemmInputs::new(Fp8Gemm::new(512, 1024, 2048), 3);
    let d = backend
        .fp8_gemm(&gemm.op, &gemm.a, &gemm.a_scales, &gemm.b, &gemm.b_scales)
        .unwrap();
    let mask = BlockMask::dense(1000, 128).unwrap();
    let op = SparseAttention::new(2, 1000, 4, 128, DType::BF16);
    let qkv = bf16s(4, op.qkv_len());
    let t = TensorRef::BF16(&qkv);
    let att = backend.sparse_attention(&op, &mask, t, t, t).unwrap();
    let layout = MlaCacheLayout::default();
    let mut cache = MlaCache::new(layout, 64).unwrap();
    let tokens = 64 * layout.page_size;
    let latent = bf16s(5, tokens * layout.latent_dim);
    let rope = bf16s(6, tokens * layout.rope_dim);
    let slots: Vec<i32> = (0..tokens as i32).collect();
    backend
        .mla_append(
            &tessera_core::MlaAppend { tokens },
            &mut cache,
            &latent,
            &rope,
            &slots,
        )
        .unwrap();
    let decode = MlaDecode {
        batch: 2,
        s_q: 1,
        heads: 16,
        max_pages: 32,
        softmax_scale: 0.07,
        layout,
    };
    let q = bf16s(7, decode.q_len());
    let table: Vec<i32> = (0..64).collect();
    let out = backend
        .mla_decode(&decode, &cache, &q, &table, &[2048, 1500])
        .unwrap();
    let widen = |v: Vec<u16>| v.into_iter().map(u32::from).collect::<Vec<u32>>();
    vec![
        widen(bits_bf16(&d)),
        bits_f32(&att.lse),
        widen(bits_bf16(&out.o)),
        bits_f32(&out.lse),
        cache.as_bytes().iter().map(|&b| b as u32).collect(),
    ]
}

#[test]
fn two_gpus_at_once_match_one_gpu() {
    let devices = tessera_cuda::probe().devices.len();
    if devices < 2 {
        println!("skipped: fewer than 2 CUDA devices ({devices} found)");
        return;
    }
    let (Some(first), Some(second)) = (common::backend_on(0), common::backend_on(1)) else {
        return;
    };
    // Each device alone, one after the other.
    let want = [run_all(&first), run_all(&second)];
    let start = Arc::new(Barrier::new(2));
    let handles: Vec<_> = [first, second]
        .into_iter()
        .map(|b| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let name = b.device().name.clone();
                (name, run_all(&b))
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (name, got) = h.join().expect("a device's thread failed");
        assert_eq!(
            got, want[i],
            "device {i} ({name}) busy at the same time as the other differs from it alone"
        );
    }
    // Both devices are the same model on the GPU machine: then they agree with each other too.
    if want[0].len() == want[1].len() {
        println!("devices agree with each other: {}", want[0] == want[1]);
    }
}
