"""The PyTorch layer without a GPU: the custom ops on CPU tensors (the CPU reference) equal the
numpy API, their fake implementations give the right shapes (meta tensors, torch.compile,
opcheck), bad tensors are named, and the FlexAttention converter keeps the blocks. Skipped (with
the reason) where torch is not installed."""

import numpy as np
import pytest

import tessera

torch = pytest.importorskip("torch", reason="torch is not installed")

RNG = np.random.default_rng(3)


def test_sparse_attention_on_cpu_tensors_equals_the_numpy_api():
    mask = tessera.RadialMask(frames=2, tokens_per_frame=64, extra_tokens=5, block_size=64)
    shape = (1, mask.tokens, 2, 64)
    x = [RNG.standard_normal(shape).astype(np.float32) for _ in range(3)]
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v = (torch.from_numpy(a).to(dtype) for a in x)
        o, lse = tessera.sparse_attention(q, k, v, mask)
        assert o.dtype == dtype and o.shape == q.shape and lse.shape == (1, 2, mask.tokens)
        np_in = [t.numpy() if dtype == torch.float16 else t.float().numpy() for t in (q, k, v)]
        want_o, want_lse = tessera.sparse_attention(*np_in, mask)
        assert torch.equal(o, torch.from_numpy(want_o).to(dtype))
        assert torch.equal(lse, torch.from_numpy(want_lse))


def test_fake_implementations_give_shapes_on_meta_tensors():
    mask = tessera.BlockMask.dense(200, 64)
    q = torch.empty((2, 200, 3, 64), dtype=torch.bfloat16, device="meta")
    o, lse = tessera.sparse_attention(q, q, q, mask)
    assert o.shape == q.shape and o.dtype == torch.bfloat16 and lse.shape == (2, 3, 200)
    x = torch.empty((300, 500), dtype=torch.bfloat16, device="meta")
    values, scales = tessera.fp8_quantize(x, "128x128")
    assert values.shape == (300, 500) and values.dtype == torch.float8_e4m3fn
    assert scales.shape == (3, 4) and scales.dtype == torch.float32
    a = torch.empty((64, 256), dtype=torch.float8_e4m3fn, device="meta")
    b = torch.empty((128, 256), dtype=torch.float8_e4m3fn, device="meta")
    d = tessera.fp8_gemm(a, torch.empty((64, 2), device="meta"), b,
                         torch.empty((1, 2), device="meta"))
    assert d.shape == (64, 128) and d.dtype == torch.bfloat16


def test_torch_compile_traces_the_ops():
    mask = tessera.RadialMask(frames=2, tokens_per_frame=64, block_size=64)

    def layer(q, k, v, w):
        o, _ = tessera.sparse_attention(q, k, v, mask)
        values, scales = tessera.fp8_quantize(o.reshape(-1, 64 * 2), "1x128")
        return tessera.fp8_gemm(values, scales, *w)

    w = tessera.fp8_quantize(torch.randn(128, 128), "128x128")
    q, k, v = (torch.randn(1, 128, 2, 64).to(torch.bfloat16) for _ in range(3))
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(q, k, v, w), layer(q, k, v, w))


def test_compiled_attention_finds_masks_never_used_eagerly():
    # Each mask is built here and used first by the compiled function: its key, given when it
    # was built, is a constant of the graph that Dynamo guards (a second mask recompiles), and
    # the wrapper has no side effect to replay after the graph (torch 2.11 replayed the old
    # call-time registration after the graph ran, so the op could not find the mask).
    def attend(q, k, v, mask):
        o, lse = tessera.sparse_attention(q, k, v, mask)
        return o.float() * 2, lse

    q, k, v = (torch.randn(1, 192, 2, 64).to(torch.float16) for _ in range(3))
    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    masks = [tessera.RadialMask(frames=3, tokens_per_frame=64, block_size=64),
             tessera.BlockMask.dense(192, 64),
             tessera.RadialMask(frames=3, tokens_per_frame=64, block_size=64, decay=0.3)]
    got = [compiled(q, k, v, mask) for mask in masks]
    for mask, (o, lse) in zip(masks, got):
        want_o, want_lse = attend(q, k, v, mask)
        assert torch.equal(o, want_o) and torch.equal(lse, want_lse)
    assert not torch.equal(got[0][0], got[1][0])
    explained = torch._dynamo.explain(attend)(q, k, v, tessera.BlockMask.dense(192, 64))
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_the_op_names_a_key_of_no_live_mask():
    import gc

    q = torch.zeros(1, 64, 1, 64, dtype=torch.float16)
    mask = tessera.BlockMask.dense(64, 64)
    key = mask.key
    torch.ops.tessera.sparse_attention(q, q, q, key, 0.125)
    del mask
    gc.collect()
    for bad in (key, 0, -5):
        with pytest.raises(tessera.InvalidArgumentError,
                           match="`mask_key`.*dropped, or never built"):
            torch.ops.tessera.sparse_attention(q, q, q, bad, 0.125)


def test_opcheck_of_the_custom_ops():
    mask = tessera.BlockMask.dense(64, 64)
    q = torch.randn(1, 64, 1, 64).to(torch.float16)
    torch.library.opcheck(torch.ops.tessera.sparse_attention.default, (q, q, q, mask.key, 0.125))
    x = torch.randn(4, 256)
    torch.library.opcheck(torch.ops.tessera.fp8_quantize.default, (x, "1x128", False))
    a, sa = tessera.fp8_quantize(torch.randn(16, 128), "1x128")
    b, sb = tessera.fp8_quantize(torch.randn(32, 128), "128x128")
    # (uint8 bits: opcheck's schema test multiplies the inputs, which float8 does not support.)
    torch.library.opcheck(torch.ops.tessera.fp8_gemm.default,
                          (a.view(torch.uint8), sa, b.view(torch.uint8), sb))


def test_fp8_on_cpu_tensors_equals_the_numpy_api():
    x = RNG.standard_normal((96, 384)).astype(np.float32)
    values, scales = tessera.fp8_quantize(torch.from_numpy(x), "1x128")
    want_v, want_s = tessera.fp8_quantize(x, "1x128")
    assert values.dtype == torch.float8_e4m3fn
    assert np.array_equal(values.view(torch.uint8).numpy(), want_v)
    assert np.array_equal(scales.numpy(), want_s)
    b, sb = tessera.fp8_quantize(torch.randn(128, 384), "128x128")
    d = tessera.fp8_gemm(values, scales, b, sb)
    want = tessera.fp8_gemm(want_v, want_s, b.view(torch.uint8).numpy(), sb.numpy())
    assert d.dtype == torch.bfloat16 and torch.equal(d.float(), torch.from_numpy(want))


def test_bad_tensors_are_named():
    mask = tessera.BlockMask.dense(128, 64)
    q = torch.zeros(1, 128, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(tessera.InvalidArgumentError, match="`q`.*float16 or bfloat16"):
        tessera.sparse_attention(q.float(), q, q, mask)
    with pytest.raises(tessera.InvalidArgumentError, match="`k`.*contiguous"):
        tessera.sparse_attention(q, q.transpose(1, 2).contiguous().transpose(1, 2), q, mask)
    with pytest.raises(tessera.InvalidArgumentError, match="`v`.*on cpu"):
        tessera.sparse_attention(q, q, q.to("meta"), mask)
    with pytest.raises(tessera.InvalidArgumentError, match="`mask`"):
        tessera.sparse_attention(q, q, q, "radial")
    with pytest.raises(tessera.InvalidArgumentError, match="tokens"):
        tessera.sparse_attention(q[:, :100].contiguous(), q[:, :100].contiguous(),
                                 q[:, :100].contiguous(), mask)
    with pytest.raises(tessera.InvalidArgumentError, match="`b`.*float8_e4m3fn"):
        tessera.fp8_gemm(torch.zeros(64, 256, dtype=torch.uint8), torch.ones(64, 2),
                         torch.zeros(128, 256), torch.ones(1, 2))
    with pytest.raises(tessera.InvalidArgumentError, match="device"):
        tessera.MlaCache(num_pages=2, device="cpu")


def test_host_mla_cache_takes_cpu_tensors():
    cache = tessera.MlaCache(num_pages=2, page_size=16, latent_dim=128, rope_dim=64)
    latent = torch.randn(5, 128, dtype=torch.bfloat16)
    rope = torch.randn(5, 64, dtype=torch.bfloat16)
    cache.append(latent, rope, torch.arange(5, dtype=torch.int32))
    got_latent, got_rope = cache.read_token(2)
    assert np.array_equal(got_latent, latent[2].float().numpy())
    assert np.array_equal(got_rope, rope[2].float().numpy())


def test_flex_block_mask_has_the_same_blocks():
    mask = tessera.RadialMask(frames=3, tokens_per_frame=100, extra_tokens=20, block_size=64)
    flex = tessera.to_flex_block_mask(mask)
    dense = flex.to_dense()[0, 0].numpy().astype(bool)
    assert np.array_equal(dense, mask.to_dense())


def test_the_scales_shape_has_one_meaning():
    from tessera import _tessera, torch_ops

    for rows, cols in [(1, 1), (128, 128), (129, 300), (1000, 7168)]:
        for g in ("1x128", "128x128"):
            assert torch_ops._scales_shape(rows, cols, g) == _tessera.fp8_scales_shape(rows, cols, g)
