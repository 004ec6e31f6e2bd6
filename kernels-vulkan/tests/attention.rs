//! Sparse attention on the Vulkan device against the f64 reference: a few fixed shapes (partial
//! last blocks, both block sizes, both head dims, f16 and bf16), through the host API and the
//! device API (one mask uploaded once, used by two calls in one command buffer); random shapes
//! and edge cases on whichever path the device takes, bf16 inputs far outside f16's range (the
//! cooperative-matrix path's power-of-two scaling), and which path is taken.

use half::f16;
use std::time::Instant;
use tessera_core::ops::attention::SparseAttention;
use tessera_core::{Backend, BlockMask, DType, Tensor};
use tessera_reference::attention as ref_attn;
use tessera_vulkan::ops::attention::VulkanBlockMask;
use tessera_vulkan::ops::PORTABLE_ENV;
use tessera_vulkan::MatrixComponent;
use tessera_vulkan::{Buffer, MemoryLocation, VulkanBackend};

mod common;
use common::backend;

/// Deterministic values in about [-2, 2].
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ seed.wrapping_mul(0x9e37_79b9))
                .wrapping_mul(2_654_435_761)
                .rotate_left(13);
            ((h >> 8) as f32 / (1 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

/// A mask with a pseudo-random pattern, every row non-empty (the diagonal is always on).
fn mask(tokens: usize, block: usize, seed: u32) -> BlockMask {
    let nb = tokens.div_ceil(block);
    let bitmap: Vec<bool> = (0..nb * nb)
        .map(|i| i / nb == i % nb || (i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 30 != 0)
        .collect();
    BlockMask::from_dense_bitmap(tokens, block, &bitmap).unwrap()
}

fn tensor(dtype: DType, v: &[f32]) -> Tensor {
    Tensor::from_f32(dtype, v)
}

/// (relative L2 error of o, largest absolute error of lse) against the reference.
fn errors(
    op: &SparseAttention,
    mask: &BlockMask,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &[f32],
    lse: &[f32],
) -> (f64, f64) {
    let shape = ref_attn::AttentionShape {
        batch: op.batch,
        q_tokens: op.tokens,
        kv_tokens: op.tokens,
        heads: op.heads,
        head_dim: op.head_dim,
    };
    let f64s = |t: &Tensor| -> Vec<f64> { t.to_f32_vec().iter().map(|&x| x as f64).collect() };
    let want = ref_attn::block_sparse_attention(
        shape,
        &f64s(q),
        &f64s(k),
        &f64s(v),
        op.softmax_scale as f64,
        mask,
    );
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in o.iter().zip(&want.o) {
        num += (g as f64 - w).powi(2);
        den += w * w;
    }
    let lse_err = lse
        .iter()
        .zip(&want.lse)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(
            0.0f64,
            |a, e| if e.is_nan() { f64::INFINITY } else { a.max(e) },
        );
    ((num / den).sqrt(), lse_err)
}

#[test]
fn host_api_matches_reference() {
    let Some(backend) = backend() else { return };
    let cases = [
        // batch, tokens, heads, head_dim, block, dtype
        (1, 64, 1, 64, 64, DType::F16),
        (2, 150, 3, 128, 64, DType::BF16),
        (1, 300, 2, 64, 128, DType::F16),
        (2, 77, 1, 128, 128, DType::F16),
        (1, 200, 2, 128, 128, DType::BF16),
        (1, 1, 1, 64, 64, DType::BF16),
        // Other block sizes (query tiles of 16 and 4 rows).
        (1, 100, 2, 64, 48, DType::F16),
        (2, 230, 1, 128, 100, DType::BF16),
    ];
    for (i, &(batch, tokens, heads, head_dim, block, dtype)) in cases.iter().enumerate() {
        let op = SparseAttention::new(batch, tokens, heads, head_dim, dtype);
        let m = mask(tokens, block, i as u32);
        let n = op.qkv_len();
        let q = tensor(dtype, &values(n, 3 * i as u32));
        let k = tensor(dtype, &values(n, 3 * i as u32 + 1));
        let v = tensor(dtype, &values(n, 3 * i as u32 + 2));
        let start = Instant::now();
        let out = backend
            .sparse_attention(&op, &m, q.as_ref(), k.as_ref(), v.as_ref())
            .unwrap();
        let secs = start.elapsed().as_secs_f64();
        let (o_err, lse_err) = errors(&op, &m, &q, &k, &v, &out.o.to_f32_vec(), &out.lse);
        println!(
            "b{batch} t{tokens} h{heads} d{head_dim} B{block} {dtype}: o rel_l2 {o_err:.2e}, \
             lse max abs {lse_err:.2e}, {:.1} ms",
            secs * 1e3
        );
        let tol = if dtype == DType::F16 { 3e-3 } else { 1e-2 };
        assert!(o_err <= tol, "o rel_l2 {o_err:e}");
        assert!(lse_err <= 2e-3, "lse {lse_err:e}");
    }
}

#[test]
fn device_api_with_an_uploaded_mask() {
    let Some(backend) = backend() else { return };
    let ctx = backend.context();
    let (batch, tokens, heads, head_dim) = (1, 130, 2, 64);
    let op = SparseAttention::new(batch, tokens, heads, head_dim, DType::F16);
    let m = mask(tokens, 64, 7);
    let device_mask = VulkanBlockMask::new(&backend, &m).unwrap();
    let n = op.qkv_len();
    let inputs: Vec<Tensor> = (0..4)
        .map(|s| tensor(DType::F16, &values(n, 40 + s)))
        .collect();
    let bytes = |t: &Tensor| -> Vec<u8> {
        match t {
            Tensor::F16(x) => bytemuck::cast_slice::<f16, u8>(x).to_vec(),
            _ => unreachable!(),
        }
    };
    let upload = |t: &Tensor| Buffer::from_bytes(ctx, &bytes(t)).unwrap();
    let (q, k, v1, v2) = (
        upload(&inputs[0]),
        upload(&inputs[1]),
        upload(&inputs[2]),
        upload(&inputs[3]),
    );
    let o_bytes = (2 * n as u64).div_ceil(4) * 4;
    let lse_bytes = 4 * op.lse_len() as u64;
    let outs: Vec<(Buffer, Buffer)> = (0..2)
        .map(|_| {
            (
                Buffer::new(ctx, o_bytes, MemoryLocation::HostVisible).unwrap(),
                Buffer::new(ctx, lse_bytes, MemoryLocation::HostVisible).unwrap(),
            )
        })
        .collect();
    backend
        .run_and_wait(|cmd| {
            for (v, (o, lse)) in [&v1, &v2].into_iter().zip(&outs) {
                // SAFETY: `cmd` is the backend's command buffer, recording; the buffers are
                // live storage buffers of its device, kept until the work has completed.
                unsafe {
                    backend.record_sparse_attention(
                        cmd,
                        &op,
                        &device_mask,
                        q.range(),
                        k.range(),
                        v.range(),
                        o.range(),
                        lse.range(),
                    )?;
                }
            }
            Ok(())
        })
        .unwrap();
    for (i, (o, lse)) in outs.iter().enumerate() {
        let o: Vec<f32> = o
            .read(0, 2 * n)
            .unwrap()
            .chunks_exact(2)
            .map(|h| f16::from_bits(u16::from_le_bytes([h[0], h[1]])).to_f32())
            .collect();
        let lse: Vec<f32> = lse
            .read(0, lse_bytes as usize)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (o_err, lse_err) = errors(&op, &m, &inputs[0], &inputs[1], &inputs[2 + i], &o, &lse);
        assert!(o_err <= 3e-3, "o rel_l2 {o_err:e}");
        assert!(lse_err <= 2e-3, "lse {lse_err:e}");
    }

    // A mask over another token count is rejected, naming the mask; short ranges name theirs.
    let other = VulkanBlockMask::new(&backend, &mask(tokens + 1, 64, 7)).unwrap();
    let (o, lse) = &outs[0];
    let expect = |r: tessera_core::Result<()>, arg: &str| match r {
        Err(tessera_core::Error::InvalidArgument { arg: got, .. }) => assert_eq!(got, arg),
        other => panic!("expected InvalidArgument naming {arg}, got {other:?}"),
    };
    backend
        .run_and_wait(|cmd| {
            // SAFETY: every call fails validation before recording anything.
            unsafe {
                expect(
                    backend.record_sparse_attention(
                        cmd,
                        &op,
                        &other,
                        q.range(),
                        k.range(),
                        v1.range(),
                        o.range(),
                        lse.range(),
                    ),
                    "mask",
                );
                expect(
                    backend.record_sparse_attention(
                        cmd,
                        &op,
                        &device_mask,
                        q.range(),
                        k.slice(0, 2 * n as u64 - 4),
                        v1.range(),
                        o.range(),
                        lse.range(),
                    ),
                    "k",
                );
                expect(
                    backend.record_sparse_attention(
                        cmd,
                        &op,
                        &device_mask,
                        q.range(),
                        k.range(),
                        v1.range(),
                        o.range(),
                        lse.slice(0, lse_bytes - 4),
                    ),
                    "lse",
                );
            }
            Ok(())
        })
        .unwrap();
}

/// The path the host API takes for a block size and head dim, for the test logs.
fn path(backend: &VulkanBackend, block: usize, head_dim: usize) -> &'static str {
    if backend.attention_uses_cooperative_matrix(block, head_dim) {
        "cooperative matrix"
    } else {
        "portable"
    }
}

/// Runs one case through the host API (outputs pre-filled with NaN) and checks it against the
/// reference with the conformance tolerances; returns the errors.
fn check_case(
    backend: &VulkanBackend,
    op: &SparseAttention,
    m: &BlockMask,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    label: &str,
) -> (f64, f64) {
    let out = backend
        .sparse_attention(op, m, q.as_ref(), k.as_ref(), v.as_ref())
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let (o_err, lse_err) = errors(op, m, q, k, v, &out.o.to_f32_vec(), &out.lse);
    println!(
        "{label} [{}]: o rel_l2 {o_err:.2e}, lse max abs {lse_err:.2e}",
        backend.attention_plan(op, m).name()
    );
    let tol = if op.dtype == DType::F16 { 3e-3 } else { 1e-2 };
    assert!(o_err <= tol, "{label}: o rel_l2 {o_err:e}");
    assert!(lse_err <= 2e-3, "{label}: lse {lse_err:e}");
    (o_err, lse_err)
}

/// Every block on: each query row sees the partial last block when the token count is not a
/// multiple of the block size.
fn dense_mask(tokens: usize, block: usize) -> BlockMask {
    let nb = tokens.div_ceil(block);
    BlockMask::from_dense_bitmap(tokens, block, &vec![true; nb * nb]).unwrap()
}

#[test]
fn cooperative_matrix_path_is_taken_where_offered() {
    let Some(backend) = backend() else { return };
    let f = backend.features();
    // Block sizes that 64 does not divide always take the portable path.
    for (block, d) in [(48, 64), (100, 128), (32, 64)] {
        assert!(!backend.attention_uses_cooperative_matrix(block, d));
    }
    let offered = f.cooperative_matrix
        && f.has_cooperative_matrix_16x16x16(MatrixComponent::F16, MatrixComponent::F32)
        && f.shader_float16
        && f.subgroup_shuffle
        && (f.min_subgroup_size, f.max_subgroup_size) == (32, 32);
    let portable = backend.context().settings().portable;
    let shapes = [(64, 64), (64, 128), (128, 64), (128, 128)];
    if !offered {
        println!("skipped: no cooperative matrix (f16 16x16x16, subgroup 32) on this device");
        for (block, d) in shapes {
            assert!(!backend.attention_uses_cooperative_matrix(block, d));
        }
        return;
    }
    if portable {
        println!("{PORTABLE_ENV}=1: the portable path is forced");
        for (block, d) in shapes {
            assert!(!backend.attention_uses_cooperative_matrix(block, d));
        }
        return;
    }
    for (block, d) in shapes {
        assert!(
            backend.attention_uses_cooperative_matrix(block, d),
            "block {block}, head_dim {d}: expected the cooperative-matrix path"
        );
    }
    println!("cooperative-matrix path for block sizes 64 and 128, head_dim 64 and 128");
}

#[test]
fn random_shapes_and_edge_cases_match_reference() {
    let Some(backend) = backend() else { return };
    let mut cases: Vec<(usize, usize, usize, usize, usize, DType, bool)> = vec![
        // batch, tokens, heads, head_dim, block, dtype, dense mask
        (1, 1, 1, 128, 64, DType::F16, true), // one query, one key
        (1, 64, 2, 64, 64, DType::BF16, true), // exactly one block
        (1, 100, 1, 128, 128, DType::BF16, true), // one partial block
        (1, 65, 1, 64, 64, DType::F16, true), // a last block of one key
        (2, 129, 2, 128, 128, DType::F16, true), // a last block of one key, block 128
        (1, 191, 1, 64, 64, DType::BF16, true), // every row sees a partial block
    ];
    // Pseudo-random shapes with odd token counts.
    let mut state = 0x2545_f491_u32;
    let mut next = |n: u32| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % n) as usize
    };
    for i in 0..8 {
        let tokens = 2 * next(200) + 1;
        let block = [64, 128][next(2)];
        let head_dim = [64, 128][next(2)];
        let dtype = [DType::F16, DType::BF16][i % 2];
        cases.push((
            1 + next(2),
            tokens,
            1 + next(3),
            head_dim,
            block,
            dtype,
            next(3) == 0,
        ));
    }
    for (i, &(batch, tokens, heads, head_dim, block, dtype, dense)) in cases.iter().enumerate() {
        let op = SparseAttention::new(batch, tokens, heads, head_dim, dtype);
        let m = if dense {
            dense_mask(tokens, block)
        } else {
            mask(tokens, block, 100 + i as u32)
        };
        let n = op.qkv_len();
        let seed = 1000 + 3 * i as u32;
        let q = tensor(dtype, &values(n, seed));
        let k = tensor(dtype, &values(n, seed + 1));
        let v = tensor(dtype, &values(n, seed + 2));
        let label = format!(
            "b{batch} t{tokens} h{heads} d{head_dim} B{block} {dtype} density {:.2}",
            m.density()
        );
        check_case(&backend, &op, &m, &q, &k, &v, &label);
    }
}

#[test]
fn bf16_far_outside_f16_range_matches_reference() {
    let Some(backend) = backend() else { return };
    // q rows times 2^40 · (1, 2 or 4), k times 2^-40, v columns times 2^-60 · (1, 2, 4 or 8):
    // f16 holds none of these, so only the exact power-of-two scaling of the
    // cooperative-matrix path (or the portable path's f32) passes.
    for (tokens, head_dim, block) in [(150, 128, 64), (77, 64, 128)] {
        let op = SparseAttention::new(1, tokens, 2, head_dim, DType::BF16);
        let m = mask(tokens, block, 5);
        let n = op.qkv_len();
        let row = |i: usize| i / head_dim; // token * heads + head
        let q: Vec<f32> = values(n, 70)
            .iter()
            .enumerate()
            .map(|(i, &x)| x * 2f32.powi(40 + (row(i) % 3) as i32))
            .collect();
        let k: Vec<f32> = values(n, 71).iter().map(|&x| x * 2f32.powi(-40)).collect();
        let v: Vec<f32> = values(n, 72)
            .iter()
            .enumerate()
            .map(|(i, &x)| x * 2f32.powi(-60 + (i % 4) as i32))
            .collect();
        let (q, k, v) = (
            tensor(DType::BF16, &q),
            tensor(DType::BF16, &k),
            tensor(DType::BF16, &v),
        );
        let label = format!("wide range t{tokens} d{head_dim} B{block} bf16");
        check_case(&backend, &op, &m, &q, &k, &v, &label);
    }
}

#[test]
fn growing_scores_and_values_match_reference() {
    let Some(backend) = backend() else { return };
    // Key j times 1 + j/32 and value j times 2^(j/16) (bf16) or 2^(j/64) (f16): the rows'
    // score maxima grow across the key tiles (by far more than 2^8) and so do the value
    // columns, so the online softmax's rescaling and, for bf16 on the cooperative-matrix path,
    // the value columns' power-of-two exponents change from tile to tile.
    for (dtype, head_dim, block) in [
        (DType::BF16, 128, 64),
        (DType::BF16, 64, 128),
        (DType::F16, 128, 128),
        (DType::F16, 64, 64),
    ] {
        let (tokens, heads) = (301, 2);
        let op = SparseAttention::new(1, tokens, heads, head_dim, dtype);
        let m = dense_mask(tokens, block);
        let n = op.qkv_len();
        let token = |i: usize| (i / head_dim / heads) as f32;
        let rate = if dtype == DType::BF16 { 16.0 } else { 64.0 };
        let q = values(n, 80);
        let k: Vec<f32> = values(n, 81)
            .iter()
            .enumerate()
            .map(|(i, &x)| x * (1.0 + token(i) / 32.0))
            .collect();
        let v: Vec<f32> = values(n, 82)
            .iter()
            .enumerate()
            .map(|(i, &x)| x * (token(i) / rate).exp2())
            .collect();
        let (q, k, v) = (tensor(dtype, &q), tensor(dtype, &k), tensor(dtype, &v));
        let label = format!("growing t{tokens} d{head_dim} B{block} {dtype}");
        check_case(&backend, &op, &m, &q, &k, &v, &label);
    }
}

/// Dense attention at 8192 tokens x 24 heads, head_dim 128, blocks of 128 (the CUDA kernel's
/// reference shape), f16 and bf16, on the path the device takes: wall-clock time per call of 5
/// calls recorded into one command buffer, over device-local buffers (their contents do not
/// matter for the time). On a real GPU: `cargo test --release -p tessera-vulkan --test attention
/// -- --ignored --nocapture`, with and without `TESSERA_VULKAN_PORTABLE=1`.
#[test]
#[ignore = "timing at model size, for real GPUs"]
fn dense_attention_timing() {
    let Some(backend) = backend() else { return };
    let ctx = backend.context();
    let (tokens, heads, head_dim, block) = (8192, 24, 128, 128);
    let m = dense_mask(tokens, block);
    let device_mask = VulkanBlockMask::new(&backend, &m).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let op = SparseAttention::new(1, tokens, heads, head_dim, dtype);
        let bytes = 2 * op.qkv_len() as u64;
        let buffer = |n: u64| Buffer::new(ctx, n, MemoryLocation::DeviceLocal).unwrap();
        let (q, k, v, o) = (buffer(bytes), buffer(bytes), buffer(bytes), buffer(bytes));
        let lse = buffer(4 * op.lse_len() as u64);
        let run = |calls: usize| -> f64 {
            let start = Instant::now();
            backend
                .run_and_wait(|cmd| {
                    for _ in 0..calls {
                        // SAFETY: `cmd` is the backend's command buffer, recording; the buffers
                        // are live storage buffers of its device, kept until the work is done.
                        unsafe {
                            backend.record_sparse_attention(
                                cmd,
                                &op,
                                &device_mask,
                                q.range(),
                                k.range(),
                                v.range(),
                                o.range(),
                                lse.range(),
                            )?;
                        }
                    }
                    Ok(())
                })
                .unwrap();
            start.elapsed().as_secs_f64()
        };
        run(1); // pipeline creation, warm-up
        let calls = 5;
        let secs = run(calls) / calls as f64;
        let flops = 4.0 * (tokens as f64).powi(2) * head_dim as f64 * heads as f64;
        println!(
            "dense t{tokens} h{heads} d{head_dim} B{block} {dtype} [{}]: {:.2} ms, {:.1} TFLOPS",
            path(&backend, block, head_dim),
            secs * 1e3,
            flops / secs / 1e12
        );
    }
}

/// Every shader the device runs each shape with, each made the shape's stored plan (so the host
/// API takes it), against the reference; a stored shader the device cannot run is not taken.
#[test]
fn every_attention_candidate_matches_the_reference_as_the_stored_plan() {
    use tessera_vulkan::plan::AttentionClass;
    use tessera_vulkan::AttentionKernel;
    let Some(b) = common::backend() else {
        return;
    };
    // (tokens, heads, head_dim, block, dtype): both block sizes and head dims, partial blocks,
    // and a block size only the portable shader takes.
    let shapes = [
        (191, 2, 64, 64, DType::BF16),
        (300, 1, 128, 128, DType::F16),
        (100, 2, 64, 48, DType::BF16),
    ];
    for (i, &(tokens, heads, head_dim, block, dtype)) in shapes.iter().enumerate() {
        let op = SparseAttention::new(1, tokens, heads, head_dim, dtype);
        let m = mask(tokens, block, 300 + i as u32);
        let n = op.qkv_len();
        let seed = 3000 + 3 * i as u32;
        let (q, k, v) = (
            tensor(dtype, &values(n, seed)),
            tensor(dtype, &values(n, seed + 1)),
            tensor(dtype, &values(n, seed + 2)),
        );
        let candidates = b.attention_candidates(&op, &m);
        assert_eq!(
            candidates[0],
            b.attention_plan(&op, &m),
            "the heuristic's first"
        );
        let coopmat_runs = b.attention_uses_cooperative_matrix(block, head_dim);
        assert_eq!(candidates.len(), if coopmat_runs { 2 } else { 1 });
        let class = AttentionClass::of(&op, &m);
        for &kernel in &candidates {
            b.plans().set_attention(class, kernel);
            assert_eq!(b.attention_plan(&op, &m), kernel);
            let label = format!(
                "t{tokens} h{heads} d{head_dim} B{block} {dtype} {}",
                kernel.name()
            );
            check_case(&b, &op, &m, &q, &k, &v, &label);
        }
        if !coopmat_runs {
            b.plans().set_attention(class, AttentionKernel::Coopmat);
            assert_eq!(b.attention_plan(&op, &m), AttentionKernel::Portable);
        }
    }
}
