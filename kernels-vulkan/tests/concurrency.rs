//! One `VulkanBackend` shared by 8 threads: each records the quantizers and the GEMM into its
//! own command buffer (device API) and submits on the backend's queue, interleaved with host-API
//! calls (attention, MLA append and decode) from the same threads; every output equals the
//! single-threaded run bit for bit. Then the pipeline cache is hammered: 16 threads ask a fresh
//! backend for the same pipelines at once. Runs on lavapipe in CI (small shapes).

mod common;

use common::{backend, Commands};
use std::sync::{Arc, Barrier};
use tessera_core::{
    bf16, Backend, BlockMask, DType, Fp8Gemm, Fp8Granularity, Fp8Quantize, MlaAppend, MlaCache,
    MlaCacheFormat, MlaCacheLayout, MlaDecode, ScaleRule, SparseAttention, TensorRef,
};
use tessera_testing::Rng;
use tessera_vulkan::{Buffer, MemoryLocation, VulkanBackend};

const THREADS: usize = 8;
const ROUNDS: usize = 2;

/// Quantize A (f32) and B (bf16), then D = A·Bᵀ, all through the device API in one command
/// buffer of this thread: the bytes of A's codes, A's scales and D.
fn device_api_round(backend: &VulkanBackend, seed: u64) -> Vec<Vec<u8>> {
    let (m, n, k) = (40 + seed as usize, 64, 160);
    let qa = Fp8Quantize {
        rows: m,
        cols: k,
        granularity: Fp8Granularity::PerToken1x128,
        scale_rule: ScaleRule::Float,
    };
    let qb = Fp8Quantize {
        rows: n,
        cols: k,
        granularity: Fp8Granularity::Block128x128,
        scale_rule: ScaleRule::PowerOfTwo,
    };
    let mut rng = Rng::new(seed);
    let xa = rng.normals(m * k);
    let xb: Vec<bf16> = rng.normals(n * k).into_iter().map(bf16::from_f32).collect();
    let ctx = backend.context();
    let buffer = |bytes: &[u8]| Buffer::from_bytes(ctx, bytes).unwrap();
    let zeros = |len: usize| {
        Buffer::new(ctx, len.div_ceil(4) as u64 * 4, MemoryLocation::HostVisible).unwrap()
    };
    let xa_buf = buffer(bytemuck::cast_slice(&xa));
    let xb_buf = buffer(bytemuck::cast_slice(&xb));
    let (a, sa) = (zeros(qa.len()), zeros(4 * qa.scales_len()));
    let (b, sb) = (zeros(qb.len()), zeros(4 * qb.scales_len()));
    let d = zeros(2 * m * n);
    let mut cmds = Commands::new(backend);
    // SAFETY: `cmds.cmd` is recording on the backend's device; the buffers are live storage
    // buffers of that device, kept until the work has completed (waited for below).
    unsafe {
        backend
            .record_fp8_quantize(
                cmds.cmd,
                &qa,
                DType::F32,
                xa_buf.range(),
                a.range(),
                sa.range(),
            )
            .unwrap();
        backend
            .record_fp8_quantize(
                cmds.cmd,
                &qb,
                DType::BF16,
                xb_buf.range(),
                b.range(),
                sb.range(),
            )
            .unwrap();
        cmds.barrier();
        backend
            .record_fp8_gemm(
                cmds.cmd,
                &Fp8Gemm::new(m, n, k),
                a.range(),
                sa.range(),
                b.range(),
                sb.range(),
                d.range(),
            )
            .unwrap();
    }
    cmds.submit_and_wait(backend);
    vec![
        a.read(0, qa.len()).unwrap(),
        sa.read(0, 4 * qa.scales_len()).unwrap(),
        d.read(0, 2 * m * n).unwrap(),
    ]
}

/// Attention, MLA append and decode through the host API: the bit patterns of the outputs.
fn host_api_round(backend: &dyn Backend, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed + 1000);
    let mask = BlockMask::dense(100 + seed as usize, 64).unwrap();
    let op = SparseAttention::new(1, mask.tokens(), 2, 64, DType::BF16);
    let qkv: Vec<bf16> = rng
        .normals(op.qkv_len())
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let t = TensorRef::BF16(&qkv);
    let att = backend.sparse_attention(&op, &mask, t, t, t).unwrap();
    let layout = MlaCacheLayout {
        page_size: 16,
        latent_dim: 128,
        rope_dim: 16,
        format: if seed % 2 == 0 {
            MlaCacheFormat::Bf16
        } else {
            MlaCacheFormat::Fp8
        },
    };
    let mut cache = MlaCache::new(layout, 4).unwrap();
    let tokens = 50;
    let latent: Vec<bf16> = rng
        .normals(tokens * 128)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let rope: Vec<bf16> = rng
        .normals(tokens * 16)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let slots: Vec<i32> = (0..tokens as i32).collect();
    backend
        .mla_append(&MlaAppend { tokens }, &mut cache, &latent, &rope, &slots)
        .unwrap();
    let decode = MlaDecode {
        batch: 1,
        s_q: 1,
        heads: 4,
        max_pages: 4,
        softmax_scale: 0.1,
        layout,
    };
    let q: Vec<bf16> = rng
        .normals(decode.q_len())
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let out = backend
        .mla_decode(&decode, &cache, &q, &[0, 1, 2, 3], &[tokens as i32])
        .unwrap();
    vec![
        att.o.to_f32_vec().iter().map(|x| x.to_bits()).collect(),
        att.lse.iter().map(|x| x.to_bits()).collect(),
        cache.as_bytes().iter().map(|&b| b as u32).collect(),
        out.o.iter().map(|x| x.to_bits() as u32).collect(),
        out.lse.iter().map(|x| x.to_bits()).collect(),
    ]
}

#[test]
fn eight_threads_match_one_thread() {
    let Some(backend) = backend() else { return };
    let seeds = 3;
    let want_device: Vec<_> = (0..seeds).map(|s| device_api_round(&backend, s)).collect();
    let want_host: Vec<_> = (0..seeds).map(|s| host_api_round(&backend, s)).collect();
    let backend = Arc::new(backend);
    let (want_device, want_host) = (Arc::new(want_device), Arc::new(want_host));
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (backend, want_device, want_host, start) = (
                backend.clone(),
                want_device.clone(),
                want_host.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                for round in 0..ROUNDS {
                    let s = (t + round) % seeds as usize;
                    assert_eq!(
                        device_api_round(&backend, s as u64),
                        want_device[s],
                        "thread {t}: device API round {s}"
                    );
                    assert_eq!(
                        host_api_round(backend.as_ref(), s as u64),
                        want_host[s],
                        "thread {t}: host API round {s}"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a thread failed");
    }
}

#[test]
fn pipeline_cache_hammered_from_many_threads() {
    let Some(reference) = backend() else { return };
    // One thread: how many pipelines the rounds create.
    let want = host_api_round(&reference, 1);
    let created = reference.pipelines().len();
    drop(reference);
    // A fresh backend, 16 threads asking for the same pipelines at once.
    let fresh = Arc::new(VulkanBackend::new().unwrap());
    let start = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (fresh, start) = (fresh.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                host_api_round(fresh.as_ref(), 1)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("a thread failed"), want);
    }
    assert_eq!(
        fresh.pipelines().len(),
        created,
        "each pipeline is created once however many threads ask"
    );
}
