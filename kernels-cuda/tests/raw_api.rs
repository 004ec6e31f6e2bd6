//! The raw device-pointer API (`*_raw`, `kernels-cuda/src/raw.rs`): every op on device
//! addresses and a `CUstream` of the caller gives the host API's bits, and bad spans (null,
//! misaligned, host memory, wrong length) or a stream of another context are typed errors naming
//! the argument, with nothing written. Needs a CUDA device (prints `skipped:` otherwise).

mod common;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr};
use half::bf16;
use std::sync::Arc;
use tessera_core::{
    Backend, DType, Error, Fp8Gemm, Fp8Granularity, Fp8Quantize, MlaAppend, MlaCache,
    MlaCacheLayout, MlaDecode, MlaDecodeVarlen, RadialMaskConfig, ScaleRule, SparseAttention,
    TensorRef,
};
use tessera_cuda::{
    AttentionBackwardSpans, CudaBackend, DeviceSpan, MlaAppendSpans, MlaDecodeSpans,
    MlaDecodeVarlenSpans,
};

fn span<T>(stream: &CudaStream, s: &CudaSlice<T>) -> DeviceSpan {
    DeviceSpan::new(s.device_ptr(stream).0, s.len())
}

fn upload<T: DeviceRepr>(stream: &Arc<CudaStream>, v: &[T]) -> CudaSlice<T> {
    stream.clone_htod(v).unwrap()
}

fn setup() -> Option<(CudaBackend, Arc<CudaStream>)> {
    let backend = common::backend()?;
    // A stream of the caller's, not the backend's.
    let stream = backend.context().new_stream().unwrap();
    Some((backend, stream))
}

#[test]
fn attention_on_raw_pointers_matches_the_host_api() {
    let Some((backend, stream)) = setup() else {
        return;
    };
    let mask = RadialMaskConfig {
        frames: 3,
        tokens_per_frame: 100,
        extra_tokens: 20,
        block_size: 64,
        decay: 0.95,
        sink: false,
    }
    .build()
    .unwrap();
    let op = SparseAttention::new(2, mask.tokens(), 3, 64, DType::BF16);
    let q = common::bf16s(1, op.qkv_len());
    let k = common::bf16s(2, op.qkv_len());
    let v = common::bf16s(3, op.qkv_len());
    let want = backend
        .sparse_attention(
            &op,
            &mask,
            TensorRef::BF16(&q),
            TensorRef::BF16(&k),
            TensorRef::BF16(&v),
        )
        .unwrap();
    let dmask = backend.upload_block_mask(&mask).unwrap();
    let (dq, dk, dv) = (
        upload(&stream, &q),
        upload(&stream, &k),
        upload(&stream, &v),
    );
    let o = upload(&stream, &vec![bf16::NAN; op.qkv_len()]);
    let lse = upload(&stream, &vec![f32::NAN; op.lse_len()]);
    // SAFETY: the spans are live allocations of the stated lengths on this device; the stream
    // is synchronized before they are read or dropped.
    unsafe {
        backend
            .sparse_attention_raw(
                stream.cu_stream(),
                &op,
                &dmask,
                span(&stream, &dq),
                span(&stream, &dk),
                span(&stream, &dv),
                span(&stream, &o),
                span(&stream, &lse),
            )
            .unwrap();
    }
    stream.synchronize().unwrap();
    let got_o: Vec<bf16> = stream.clone_dtoh(&o).unwrap();
    let want_o: Vec<bf16> = match &want.o {
        tessera_core::Tensor::BF16(v) => v.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(common::bits_bf16(&got_o), common::bits_bf16(&want_o));
    assert_eq!(
        common::bits_f32(&stream.clone_dtoh(&lse).unwrap()),
        common::bits_f32(&want.lse)
    );

    // Bad spans: typed errors naming the argument, o untouched.
    let before = stream.clone_dtoh(&o).unwrap();
    let host = vec![bf16::ZERO; op.qkv_len()];
    let good = span(&stream, &dq);
    let cases = [
        ("q", DeviceSpan::new(0, op.qkv_len())),
        ("q", DeviceSpan::new(good.address + 2, op.qkv_len())),
        ("q", DeviceSpan::new(good.address + 1, op.qkv_len() - 1)),
        ("q", DeviceSpan::new(host.as_ptr() as u64, op.qkv_len())),
        ("q", DeviceSpan::new(good.address, op.qkv_len() - 1)),
    ];
    for (arg, bad) in cases {
        // SAFETY: the bad spans are rejected before anything is launched (what is tested); the
        // others are live allocations.
        let e = unsafe {
            backend.sparse_attention_raw(
                stream.cu_stream(),
                &op,
                &dmask,
                bad,
                span(&stream, &dk),
                span(&stream, &dv),
                span(&stream, &o),
                span(&stream, &lse),
            )
        }
        .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument { arg: a, .. } if a == arg),
            "{bad:?}: {e}"
        );
    }
    stream.synchronize().unwrap();
    assert_eq!(
        common::bits_bf16(&stream.clone_dtoh(&o).unwrap()),
        common::bits_bf16(&before)
    );
}

/// The bf16 values of a host tensor (the ops here run in bf16).
fn bf16_values(t: &tessera_core::Tensor) -> Vec<bf16> {
    match t {
        tessera_core::Tensor::BF16(v) => v.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn attention_backward_on_raw_pointers_matches_the_host_api() {
    let Some((backend, stream)) = setup() else {
        return;
    };
    let mask = RadialMaskConfig {
        frames: 3,
        tokens_per_frame: 90,
        extra_tokens: 7,
        block_size: 64,
        decay: 0.95,
        sink: true,
    }
    .build()
    .unwrap();
    let op = SparseAttention::new(1, mask.tokens(), 2, 64, DType::BF16);
    let q = common::bf16s(11, op.qkv_len());
    let k = common::bf16s(12, op.qkv_len());
    let v = common::bf16s(13, op.qkv_len());
    let d_o = common::bf16s(14, op.qkv_len());
    let fwd = backend
        .sparse_attention(
            &op,
            &mask,
            TensorRef::BF16(&q),
            TensorRef::BF16(&k),
            TensorRef::BF16(&v),
        )
        .unwrap();
    let o = bf16_values(&fwd.o);
    let want = backend
        .sparse_attention_backward(
            &op,
            &mask,
            TensorRef::BF16(&q),
            TensorRef::BF16(&k),
            TensorRef::BF16(&v),
            TensorRef::BF16(&o),
            &fwd.lse,
            TensorRef::BF16(&d_o),
        )
        .unwrap();
    let dmask = backend.upload_block_mask(&mask).unwrap();
    let inputs = [&q, &k, &v, &o, &d_o].map(|x| upload(&stream, x));
    let lse = upload(&stream, &fwd.lse);
    let delta = upload(&stream, &vec![f32::NAN; op.lse_len()]);
    let grads = [(); 3].map(|_| upload(&stream, &vec![bf16::NAN; op.qkv_len()]));
    let spans = AttentionBackwardSpans {
        q: span(&stream, &inputs[0]),
        k: span(&stream, &inputs[1]),
        v: span(&stream, &inputs[2]),
        o: span(&stream, &inputs[3]),
        lse: span(&stream, &lse),
        d_o: span(&stream, &inputs[4]),
        delta: span(&stream, &delta),
        dq: span(&stream, &grads[0]),
        dk: span(&stream, &grads[1]),
        dv: span(&stream, &grads[2]),
    };
    // SAFETY: the spans are live allocations of the stated lengths on this device; the stream
    // is synchronized before they are read or dropped.
    unsafe {
        backend
            .sparse_attention_backward_raw(stream.cu_stream(), &op, &dmask, &spans)
            .unwrap();
    }
    stream.synchronize().unwrap();
    for (got, want) in grads.iter().zip([&want.dq, &want.dk, &want.dv]) {
        assert_eq!(
            common::bits_bf16(&stream.clone_dtoh(got).unwrap()),
            common::bits_bf16(&bf16_values(want))
        );
    }

    // Bad spans: typed errors naming the argument, the gradients untouched.
    let before = stream.clone_dtoh(&grads[0]).unwrap();
    let host = vec![bf16::ZERO; op.qkv_len()];
    let cases = [
        (
            "d_o",
            AttentionBackwardSpans {
                d_o: DeviceSpan::new(0, op.qkv_len()),
                ..spans
            },
        ),
        (
            "dk",
            AttentionBackwardSpans {
                dk: DeviceSpan::new(spans.dk.address + 2, op.qkv_len()),
                ..spans
            },
        ),
        (
            "delta",
            AttentionBackwardSpans {
                delta: DeviceSpan::new(spans.delta.address, op.lse_len() - 1),
                ..spans
            },
        ),
        (
            "o",
            AttentionBackwardSpans {
                o: DeviceSpan::new(host.as_ptr() as u64, op.qkv_len()),
                ..spans
            },
        ),
    ];
    for (arg, bad) in cases {
        // SAFETY: the bad spans are rejected before anything is launched (what is tested); the
        // others are live allocations.
        let e =
            unsafe { backend.sparse_attention_backward_raw(stream.cu_stream(), &op, &dmask, &bad) }
                .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument { arg: a, .. } if a == arg),
            "{arg}: {e}"
        );
    }
    stream.synchronize().unwrap();
    assert_eq!(
        common::bits_bf16(&stream.clone_dtoh(&grads[0]).unwrap()),
        common::bits_bf16(&before)
    );
}

#[test]
fn quantize_and_gemm_on_raw_pointers_match_the_host_api() {
    let Some((backend, stream)) = setup() else {
        return;
    };
    let (m, n, k) = (96, 256, 384);
    let x: Vec<f32> = common::bf16s(7, m * k).iter().map(|v| v.to_f32()).collect();
    let quantize = Fp8Quantize {
        rows: m,
        cols: k,
        granularity: Fp8Granularity::PerToken1x128,
        scale_rule: ScaleRule::Float,
    };
    let want_q = backend.fp8_quantize(&quantize, TensorRef::F32(&x)).unwrap();
    let dx = upload(&stream, &x);
    let values = upload(&stream, &vec![0u8; m * k]);
    let scales = upload(&stream, &vec![f32::NAN; quantize.scales_len()]);
    // SAFETY: live allocations of the stated lengths; synchronized before reading.
    unsafe {
        backend
            .fp8_quantize_raw(
                stream.cu_stream(),
                &quantize,
                DType::F32,
                span(&stream, &dx),
                span(&stream, &values),
                span(&stream, &scales),
            )
            .unwrap();
    }
    stream.synchronize().unwrap();
    let want_values: Vec<u8> = want_q.values.iter().map(|v| v.to_bits()).collect();
    assert_eq!(stream.clone_dtoh(&values).unwrap(), want_values);
    assert_eq!(
        common::bits_f32(&stream.clone_dtoh(&scales).unwrap()),
        common::bits_f32(&want_q.scales)
    );

    let op = Fp8Gemm::new(m, n, k);
    let inputs = common::GemmInputs::new(op, 11);
    let want = backend
        .fp8_gemm(
            &op,
            &inputs.a,
            &inputs.a_scales,
            &inputs.b,
            &inputs.b_scales,
        )
        .unwrap();
    let bytes = |v: &[tessera_core::E4M3]| v.iter().map(|x| x.to_bits()).collect::<Vec<u8>>();
    let da = upload(&stream, &bytes(&inputs.a));
    let db = upload(&stream, &bytes(&inputs.b));
    let dsa = upload(&stream, &inputs.a_scales);
    let dsb = upload(&stream, &inputs.b_scales);
    let d = upload(&stream, &vec![bf16::NAN; m * n]);
    // SAFETY: live allocations of the stated lengths; synchronized before reading.
    unsafe {
        backend
            .fp8_gemm_raw(
                stream.cu_stream(),
                &op,
                span(&stream, &da),
                span(&stream, &dsa),
                span(&stream, &db),
                span(&stream, &dsb),
                span(&stream, &d),
            )
            .unwrap();
    }
    stream.synchronize().unwrap();
    assert_eq!(
        common::bits_bf16(&stream.clone_dtoh(&d).unwrap()),
        common::bits_bf16(&want)
    );
    // A wrong length of d is named.
    let short = DeviceSpan::new(span(&stream, &d).address, m * n - 8);
    // SAFETY: rejected before launch; the rest are live allocations.
    let e = unsafe {
        backend.fp8_gemm_raw(
            stream.cu_stream(),
            &op,
            span(&stream, &da),
            span(&stream, &dsa),
            span(&stream, &db),
            span(&stream, &dsb),
            short,
        )
    }
    .unwrap_err();
    assert_eq!(e.argument(), Some("d"), "{e}");
}

#[test]
fn mla_append_and_decode_on_raw_pointers_match_the_host_api() {
    let Some((backend, stream)) = setup() else {
        return;
    };
    let layout = MlaCacheLayout {
        page_size: 16,
        ..MlaCacheLayout::default()
    };
    let (pages, tokens) = (6, 70);
    let append = MlaAppend { tokens };
    let latent = common::bf16s(21, tokens * layout.latent_dim);
    let rope = common::bf16s(22, tokens * layout.rope_dim);
    let slots: Vec<i32> = (0..tokens as i32).map(|t| (t * 7) % 96).collect();
    let mut want_cache = MlaCache::new(layout, pages).unwrap();
    backend
        .mla_append(&append, &mut want_cache, &latent, &rope, &slots)
        .unwrap();
    let cache = upload(&stream, &vec![0u8; pages * layout.page_bytes()]);
    let (dl, dr, ds) = (
        upload(&stream, &latent),
        upload(&stream, &rope),
        upload(&stream, &slots),
    );
    // SAFETY: live allocations of the stated lengths; synchronized before reading.
    unsafe {
        backend
            .mla_append_raw(
                stream.cu_stream(),
                &append,
                &layout,
                &MlaAppendSpans {
                    cache: span(&stream, &cache),
                    latent: span(&stream, &dl),
                    rope: span(&stream, &dr),
                    slots: span(&stream, &ds),
                },
            )
            .unwrap();
    }
    stream.synchronize().unwrap();
    assert!(stream.clone_dtoh(&cache).unwrap() == want_cache.as_bytes());

    let op = MlaDecode {
        batch: 2,
        s_q: 1,
        heads: 16,
        max_pages: 3,
        softmax_scale: 0.07,
        layout,
    };
    let q = common::bf16s(23, op.q_len());
    let table = vec![0, 1, 2, 5, 4, 3];
    let lens = vec![40, 33];
    let want = backend
        .mla_decode(&op, &want_cache, &q, &table, &lens)
        .unwrap();
    let plan = backend.mla_decode_plan(&op, 40).unwrap();
    let (dq, dt, dn) = (
        upload(&stream, &q),
        upload(&stream, &table),
        upload(&stream, &lens),
    );
    let o = upload(&stream, &vec![bf16::NAN; op.o_len()]);
    let lse = upload(&stream, &vec![f32::NAN; op.lse_len()]);
    let ws = upload(&stream, &vec![0f32; plan.workspace_len().max(1)]);
    let mut spans = MlaDecodeSpans {
        cache: span(&stream, &cache),
        q: span(&stream, &dq),
        block_table: span(&stream, &dt),
        seq_lens: span(&stream, &dn),
        o: span(&stream, &o),
        lse: span(&stream, &lse),
        workspace: span(&stream, &ws),
    };
    // SAFETY: live allocations of the stated lengths; synchronized before reading.
    unsafe {
        backend
            .mla_decode_raw(stream.cu_stream(), &op, &plan, &spans)
            .unwrap();
    }
    stream.synchronize().unwrap();
    // The host API plans with the longest length too: the same plan, the same bits.
    assert_eq!(
        common::bits_bf16(&stream.clone_dtoh(&o).unwrap()),
        common::bits_bf16(&want.o)
    );
    assert_eq!(
        common::bits_f32(&stream.clone_dtoh(&lse).unwrap()),
        common::bits_f32(&want.lse)
    );
    // The block table as a host pointer is named.
    spans.block_table = DeviceSpan::new(table.as_ptr() as u64, table.len());
    // SAFETY: rejected before launch.
    let e = unsafe { backend.mla_decode_raw(stream.cu_stream(), &op, &plan, &spans) }.unwrap_err();
    assert_eq!(e.argument(), Some("block_table"), "{e}");

    // The same cache through the variable-length decode: 2 and 1 queries.
    let varlen = MlaDecodeVarlen {
        batch: 2,
        total_q: 3,
        max_s_q: 2,
        heads: 16,
        max_pages: 3,
        softmax_scale: 0.07,
        layout,
    };
    let cu = vec![0, 2, 3];
    let vq = common::bf16s(24, varlen.q_len());
    let want = backend
        .mla_decode_varlen(&varlen, &want_cache, &vq, &cu, &table, &lens)
        .unwrap();
    let plan = backend.mla_decode_varlen_plan(&varlen, 40).unwrap();
    let (dvq, dcu) = (upload(&stream, &vq), upload(&stream, &cu));
    let o = upload(&stream, &vec![bf16::NAN; varlen.o_len()]);
    let lse = upload(&stream, &vec![f32::NAN; varlen.lse_len()]);
    let ws = upload(&stream, &vec![0f32; plan.workspace_len().max(1)]);
    let mut spans = MlaDecodeVarlenSpans {
        cache: span(&stream, &cache),
        q: span(&stream, &dvq),
        cu_seqlens_q: span(&stream, &dcu),
        block_table: span(&stream, &dt),
        seq_lens: span(&stream, &dn),
        o: span(&stream, &o),
        lse: span(&stream, &lse),
        workspace: span(&stream, &ws),
    };
    // SAFETY: live allocations of the stated lengths; synchronized before reading.
    unsafe {
        backend
            .mla_decode_varlen_raw(stream.cu_stream(), &varlen, &plan, &spans)
            .unwrap();
    }
    stream.synchronize().unwrap();
    assert_eq!(
        common::bits_bf16(&stream.clone_dtoh(&o).unwrap()),
        common::bits_bf16(&want.o)
    );
    assert_eq!(
        common::bits_f32(&stream.clone_dtoh(&lse).unwrap()),
        common::bits_f32(&want.lse)
    );
    // Offsets one short are named.
    spans.cu_seqlens_q = DeviceSpan::new(spans.cu_seqlens_q.address, 2);
    // SAFETY: rejected before launch.
    let e = unsafe { backend.mla_decode_varlen_raw(stream.cu_stream(), &varlen, &plan, &spans) }
        .unwrap_err();
    assert_eq!(e.argument(), Some("cu_seqlens_q"), "{e}");
}
