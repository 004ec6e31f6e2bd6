//! The attention backward on the Vulkan device against the f64 reference: fixed shapes
//! (partial last blocks, both block sizes, both head dims, f16 and bf16, a key block no query
//! attends, rows with one block), determinism, random masks and token counts, a block size other
//! than 64 and 128, and the device API (caller's buffers, typed errors naming the argument). The
//! reference runs from the same q, k, v, o, lse and dO (the Vulkan forward's o and lse), so only
//! the backward is compared. The host API's outputs start as NaN: an element the shaders fail to
//! write shows up. Prints `skipped:` and passes without a Vulkan device.

mod common;

use half::f16;
use tessera_core::ops::attention::AttentionGradients;
use tessera_core::{DType, SparseAttention, Tensor};
use tessera_reference::CpuBackend;
use tessera_testing::backward::{
    assert_gradients_match, assert_unattended_block_zero, random_mask, BackwardInputs as Inputs,
};
use tessera_testing::Rng;
use tessera_vulkan::ops::attention::VulkanBlockMask;
use tessera_vulkan::ops::attention_backward::AttentionBackwardRanges;
use tessera_vulkan::{Buffer, BufferRange, MemoryLocation};

#[test]
fn backward_matches_the_reference_at_fixed_shapes() {
    let Some(be) = common::backend() else { return };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(0x7b4c);
    for head_dim in [64, 128] {
        for dtype in [DType::F16, DType::BF16] {
            for (block, tokens, density) in [
                (64, 200, 0.4),
                (128, 300, 0.5),
                (64, 64, 1.0),
                (128, 77, 1.0),
                (64, 330, 0.0),
            ] {
                let m = random_mask(&mut rng, tokens, block, density, true);
                let op = SparseAttention::new(2, tokens, 2, head_dim, dtype);
                let x = Inputs::new(&be, op, m, &mut rng);
                let what = format!("d{head_dim} {dtype} B{block} t{tokens}");
                let got = x.backward(&be);
                assert_gradients_match(&got, &x.backward(&cpu), dtype, &what);
                assert_eq!(got, x.backward(&be), "{what}: not deterministic");
                if tokens.div_ceil(block) >= 3 {
                    assert_unattended_block_zero(&x.op, &got, block, &what);
                }
            }
        }
    }
}

/// Random token counts (mostly not multiples of the block), masks, batch and heads.
#[test]
fn backward_matches_the_reference_at_random_shapes() {
    let Some(be) = common::backend() else { return };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(0x5eed_bac4);
    for case in 0..10 {
        let tokens = rng.range(1, 300);
        let block = if rng.chance(0.5) { 128 } else { 64 };
        let head_dim = if rng.chance(0.5) { 128 } else { 64 };
        let dtype = if rng.chance(0.5) {
            DType::BF16
        } else {
            DType::F16
        };
        let (batch, heads) = (rng.range(1, 2), rng.range(1, 3));
        let density = rng.uniform();
        let unattended = rng.chance(0.5);
        let m = random_mask(&mut rng, tokens, block, density, unattended);
        let op = SparseAttention::new(batch, tokens, heads, head_dim, dtype);
        let x = Inputs::new(&be, op, m, &mut rng);
        let what = format!("case {case}: t{tokens} B{block} d{head_dim} {dtype} b{batch} h{heads}");
        assert_gradients_match(&x.backward(&be), &x.backward(&cpu), dtype, &what);
    }
}

/// The portable path takes any block size (the workgroup's rows are the largest power of two up
/// to 64 dividing it): 48 and 100, with partial last blocks.
#[test]
fn backward_takes_other_block_sizes() {
    let Some(be) = common::backend() else { return };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(48);
    for (block, tokens) in [(48, 170), (100, 250)] {
        let m = random_mask(&mut rng, tokens, block, 0.5, true);
        let op = SparseAttention::new(1, tokens, 2, 64, DType::F16);
        let x = Inputs::new(&be, op, m, &mut rng);
        let what = format!("B{block} t{tokens}");
        let got = x.backward(&be);
        assert_gradients_match(&got, &x.backward(&cpu), DType::F16, &what);
        assert_unattended_block_zero(&x.op, &got, block, &what);
    }
}

/// The device API over the caller's buffers gives the host API's bits; bad ranges and a mask of
/// another token count are typed errors naming the argument.
#[test]
fn device_api_matches_the_host_api_and_names_bad_arguments() {
    let Some(be) = common::backend() else { return };
    let ctx = be.context();
    let mut rng = Rng::new(0xde71ce);
    let tokens = 150;
    let m = random_mask(&mut rng, tokens, 64, 0.5, true);
    let op = SparseAttention::new(1, tokens, 2, 64, DType::F16);
    let x = Inputs::new(&be, op.clone(), m.clone(), &mut rng);
    let want = x.backward(&be);
    let device_mask = VulkanBlockMask::new(&be, &m).unwrap();
    let half_bytes = |t: &Tensor| -> Vec<u8> {
        match t {
            Tensor::F16(v) => bytemuck::cast_slice::<f16, u8>(v).to_vec(),
            _ => unreachable!(),
        }
    };
    let upload = |t: &Tensor| Buffer::from_bytes(ctx, &half_bytes(t)).unwrap();
    let (q, k, v, o, d_o) = (
        upload(&x.q),
        upload(&x.k),
        upload(&x.v),
        upload(&x.o),
        upload(&x.d_o),
    );
    let lse = Buffer::from_bytes(ctx, bytemuck::cast_slice(&x.lse)).unwrap();
    let n = op.qkv_len();
    let stats_bytes = 4 * op.lse_len() as u64;
    let out = || Buffer::new(ctx, 2 * n as u64, MemoryLocation::HostVisible).unwrap();
    let (dq, dk, dv) = (out(), out(), out());
    let delta = Buffer::new(ctx, stats_bytes, MemoryLocation::DeviceLocal).unwrap();
    let ranges = AttentionBackwardRanges {
        q: q.range(),
        k: k.range(),
        v: v.range(),
        o: o.range(),
        lse: lse.range(),
        d_o: d_o.range(),
        delta: delta.range(),
        dq: dq.range(),
        dk: dk.range(),
        dv: dv.range(),
    };
    be.run_and_wait(|cmd| {
        // SAFETY: `cmd` is the backend's command buffer, recording; the buffers are live storage
        // buffers of its device, kept until the work has completed.
        unsafe { be.record_sparse_attention_backward(cmd, &op, &device_mask, &ranges) }
    })
    .unwrap();
    let read = |b: &Buffer| -> Tensor {
        Tensor::F16(
            b.read(0, 2 * n)
                .unwrap()
                .chunks_exact(2)
                .map(|h| f16::from_bits(u16::from_le_bytes([h[0], h[1]])))
                .collect(),
        )
    };
    let got = AttentionGradients {
        dq: read(&dq),
        dk: read(&dk),
        dv: read(&dv),
    };
    assert_eq!(got, want, "the device API differs from the host API");

    let other =
        VulkanBlockMask::new(&be, &random_mask(&mut rng, tokens + 1, 64, 0.5, false)).unwrap();
    let expect = |r: tessera_core::Result<()>, arg: &str| match r {
        Err(tessera_core::Error::InvalidArgument { arg: got, .. }) => assert_eq!(got, arg),
        other => panic!("expected InvalidArgument naming {arg}, got {other:?}"),
    };
    let short = |r: BufferRange| BufferRange::new(r.buffer, r.offset, r.size - 4);
    be.run_and_wait(|cmd| {
        // SAFETY: every call fails validation before recording anything.
        unsafe {
            expect(
                be.record_sparse_attention_backward(cmd, &op, &other, &ranges),
                "mask",
            );
            for arg in ["q", "o", "lse", "d_o", "delta", "dq", "dk", "dv"] {
                let mut bad = ranges;
                let field = match arg {
                    "q" => &mut bad.q,
                    "o" => &mut bad.o,
                    "lse" => &mut bad.lse,
                    "d_o" => &mut bad.d_o,
                    "delta" => &mut bad.delta,
                    "dq" => &mut bad.dq,
                    "dk" => &mut bad.dk,
                    _ => &mut bad.dv,
                };
                *field = short(*field);
                expect(
                    be.record_sparse_attention_backward(cmd, &op, &device_mask, &bad),
                    arg,
                );
            }
        }
        Ok(())
    })
    .unwrap();
}
