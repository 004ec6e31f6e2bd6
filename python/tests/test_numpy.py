"""The numpy API on the CPU reference (and on Vulkan where a device is there), against plain numpy
references, and its bad-input errors (named argument, nothing written)."""

import math

import numpy as np
import pytest

import tessera

RNG = np.random.default_rng(7)


def bf16_round(x):
    """float32 -> nearest bf16 (ties to even), as float32."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def e4m3_to_float(bits):
    bits = np.asarray(bits, dtype=np.uint8).astype(np.int32)
    sign = np.where(bits & 0x80, -1.0, 1.0)
    exp = (bits >> 3) & 0xF
    mant = bits & 0x7
    normal = (1 + mant / 8.0) * np.exp2(exp - 7.0)
    sub = (mant / 8.0) * 2.0 ** -6
    out = sign * np.where(exp == 0, sub, normal)
    return np.where((bits & 0x7F) == 0x7F, np.nan, out)


def test_info_lists_the_cpu_backend():
    info = tessera.info()
    assert info["version"] == tessera.__version__
    names = {b["name"]: b for b in info["backends"]}
    assert names["cpu"]["usable"] is True
    assert set(names) == {"cpu", "cuda", "vulkan"}


def test_radial_mask_builds_and_exports_bsr():
    mask = tessera.RadialMask(frames=4, tokens_per_frame=200, extra_tokens=77, block_size=64)
    assert isinstance(mask, tessera.BlockMask)
    assert mask.tokens == 877 and mask.num_blocks == math.ceil(877 / 64)
    assert 0 < mask.density < 1
    indptr, indices = mask.to_bsr()
    assert indptr.dtype == np.int32 and indices.dtype == np.int32
    assert len(indptr) == mask.num_blocks + 1 and indptr[-1] == mask.nnz == len(indices)
    dense = mask.to_dense()
    assert dense.shape == (mask.num_blocks, mask.num_blocks) and dense.sum() == mask.nnz
    for r in range(mask.num_blocks):
        assert list(np.flatnonzero(dense[r])) == list(indices[indptr[r]:indptr[r + 1]])
    again = tessera.BlockMask.from_bsr(mask.tokens, 64, indptr, indices)
    assert again.nnz == mask.nnz and again.density == mask.density
    assert "RadialMask(frames=4" in repr(mask)


def test_bad_masks_are_named():
    with pytest.raises(tessera.InvalidArgumentError, match="block_size"):
        tessera.RadialMask(frames=2, tokens_per_frame=64, block_size=48)
    with pytest.raises(tessera.InvalidArgumentError, match="indptr"):
        tessera.BlockMask.from_bsr(128, 64, np.array([0, 1], np.int32), np.array([0], np.int32))
    with pytest.raises(tessera.InvalidArgumentError, match="indices"):
        tessera.BlockMask.from_bsr(128, 64, np.array([0, 1, 2], np.int32),
                                   np.array([0, 0], np.float32))


def test_each_mask_gets_a_key_when_it_is_built():
    from tessera import _tessera

    radial = tessera.RadialMask(frames=2, tokens_per_frame=64, block_size=64)
    dense = tessera.BlockMask.dense(128, 64)
    bsr = tessera.BlockMask.from_bsr(128, 64, *radial.to_bsr())
    keys = [m.key for m in (radial, dense, bsr)]
    assert all(isinstance(k, int) and k > 0 for k in keys) and len(set(keys)) == 3
    with pytest.raises(AttributeError):
        radial.key = keys[1]
    found = _tessera.mask_from_key(radial.key)
    assert isinstance(found, tessera.BlockMask) and found.key == radial.key
    assert np.array_equal(found.to_dense(), radial.to_dense())
    # A found mask keeps the blocks alive; the key is gone with the last object holding them.
    key = dense.key
    found = _tessera.mask_from_key(key)
    del dense
    assert _tessera.mask_from_key(key).nnz == found.nnz
    del found
    assert _tessera.mask_from_key(key) is None
    assert _tessera.mask_from_key(0) is None and _tessera.mask_from_key(-1) is None
    assert _tessera.mask_from_key(2**63 - 1) is None


def reference_attention(q, k, v, token_mask, scale):
    """q, k, v [b, t, h, d] float64; token_mask [t, t] bool."""
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    s = np.where(token_mask[None, None], s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - m)
    denom = p.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", p / denom, v)
    lse = (m + np.log(denom))[..., 0]
    return o, lse


def token_mask(mask):
    t, b = mask.tokens, mask.block_size
    blocks = mask.to_dense()
    return np.repeat(np.repeat(blocks, b, 0), b, 1)[:t, :t]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_sparse_attention_matches_numpy(dtype):
    mask = tessera.RadialMask(frames=3, tokens_per_frame=64, extra_tokens=10, block_size=64)
    b, t, h, d = 1, mask.tokens, 2, 64
    q, k, v = (RNG.standard_normal((b, t, h, d)).astype(dtype) for _ in range(3))
    o, lse = tessera.sparse_attention(q, k, v, mask)
    assert o.dtype == dtype and o.shape == q.shape
    assert lse.dtype == np.float32 and lse.shape == (b, h, t)
    cast = (lambda x: x.astype(np.float64)) if dtype == np.float16 else (
        lambda x: bf16_round(x).astype(np.float64))
    want_o, want_lse = reference_attention(cast(q), cast(k), cast(v), token_mask(mask),
                                           d ** -0.5)
    tol = 2e-3 if dtype == np.float16 else 1e-2
    np.testing.assert_allclose(o.astype(np.float64), want_o, atol=tol, rtol=tol)
    np.testing.assert_allclose(lse, want_lse, atol=1e-4, rtol=1e-4)


def test_sparse_attention_bad_inputs_are_named():
    mask = tessera.BlockMask.dense(128, 64)
    q = np.zeros((1, 128, 2, 64), np.float16)
    with pytest.raises(tessera.InvalidArgumentError, match="`q`.*float16"):
        tessera.sparse_attention(q.astype(np.float64), q, q, mask)
    with pytest.raises(tessera.InvalidArgumentError, match="`k`.*shape"):
        tessera.sparse_attention(q, q[:, :64], q, mask)
    with pytest.raises(tessera.InvalidArgumentError, match="`v`.*dtype of q"):
        tessera.sparse_attention(q, q, q.astype(np.float32), mask)
    strided = np.zeros((1, 128, 4, 64), np.float16)[:, :, ::2]
    with pytest.raises(tessera.InvalidArgumentError, match="`k`.*C-contiguous"):
        tessera.sparse_attention(q, strided, q, mask)
    with pytest.raises(tessera.InvalidArgumentError, match="`q`.*4 dimensions"):
        tessera.sparse_attention(q[0], q, q, mask)
    with pytest.raises(tessera.InvalidArgumentError, match="tokens"):
        tessera.sparse_attention(q[:, :100].copy(), q[:, :100].copy(), q[:, :100].copy(), mask)
    with pytest.raises(tessera.InvalidArgumentError, match="backend"):
        tessera.sparse_attention(q, q, q, mask, backend="tpu")


@pytest.mark.parametrize("granularity", ["1x128", "128x128"])
def test_fp8_quantize_matches_the_recipe(granularity):
    x = (RNG.standard_normal((130, 300)) * 3).astype(np.float32)
    values, scales = tessera.fp8_quantize(x, granularity)
    assert values.dtype == np.uint8 and values.shape == x.shape
    gr = 1 if granularity == "1x128" else 128
    assert scales.shape == (math.ceil(130 / gr), math.ceil(300 / 128))
    for i in range(0, 130, 37):
        for j in range(0, 300, 61):
            block = x[i // gr * gr:(i // gr + 1) * gr, j // 128 * 128:(j // 128 + 1) * 128]
            s = max(np.abs(block).max(), 1e-4) / 448
            assert scales[i // gr, j // 128] == pytest.approx(s, rel=1e-6)
    back = e4m3_to_float(values) * np.repeat(np.repeat(scales, gr, 0), 128, 1)[:130, :300]
    np.testing.assert_allclose(back, x, rtol=0.07, atol=scales.max() * 2 ** -9 * 448)
    _, pow2 = tessera.fp8_quantize(x, granularity, power_of_two=True)
    assert np.all(np.log2(pow2) == np.round(np.log2(pow2)))


def test_fp8_gemm_matches_numpy():
    m, n, k = 70, 256, 384
    a, sa = tessera.fp8_quantize(RNG.standard_normal((m, k)).astype(np.float32), "1x128")
    b, sb = tessera.fp8_quantize(RNG.standard_normal((n, k)).astype(np.float32), "128x128")
    d = tessera.fp8_gemm(a, sa, b, sb)
    assert d.dtype == np.float32 and d.shape == (m, n)
    assert np.array_equal(bf16_round(d), d)  # bf16 values
    deq_a = e4m3_to_float(a) * np.repeat(sa, 128, 1)[:, :k]
    deq_b = e4m3_to_float(b) * np.repeat(np.repeat(sb, 128, 0), 128, 1)[:n, :k]
    np.testing.assert_allclose(d, deq_a @ deq_b.T, rtol=1e-2, atol=1e-2)


def test_fp8_gemm_grouped_contiguous_is_each_group_alone():
    g, n, k = 2, 128, 256
    offsets = np.array([0, 128, 200], np.int32)
    a, sa = tessera.fp8_quantize(RNG.standard_normal((200, k)).astype(np.float32))
    bs = [tessera.fp8_quantize(RNG.standard_normal((n, k)).astype(np.float32), "128x128")
          for _ in range(g)]
    b = np.stack([x[0] for x in bs])
    sb = np.stack([x[1] for x in bs])
    d = tessera.fp8_gemm_grouped(a, sa, b, sb, offsets)
    for i in range(g):
        r0, r1 = offsets[i], offsets[i + 1]
        want = tessera.fp8_gemm(a[r0:r1], sa[r0:r1], b[i], sb[i])
        np.testing.assert_array_equal(d[r0:r1], want)
    with pytest.raises(tessera.InvalidArgumentError, match="groups"):
        tessera.fp8_gemm_grouped(a, sa, b, sb, np.array([0, 100, 200], np.int32))


def test_fp8_gemm_bad_inputs_are_named():
    a = np.zeros((64, 256), np.uint8)
    sa = np.ones((64, 2), np.float32)
    b = np.zeros((128, 256), np.uint8)
    sb = np.ones((1, 2), np.float32)
    with pytest.raises(tessera.InvalidArgumentError, match="`a`.*uint8"):
        tessera.fp8_gemm(a.astype(np.int8), sa, b, sb)
    with pytest.raises(tessera.InvalidArgumentError, match="`b_scales`.*shape"):
        tessera.fp8_gemm(a, sa, b, np.ones((2, 2), np.float32))
    with pytest.raises(tessera.InvalidArgumentError, match="`a_scales`.*C-contiguous"):
        tessera.fp8_gemm(a, np.ones((2, 64), np.float32).T, b, sb)
    with pytest.raises(tessera.InvalidArgumentError, match="granularity"):
        tessera.fp8_quantize(np.zeros((4, 4), np.float32), "1x64")


def mla_reference(cache, q, table, lens, scale):
    """Absorbed MLA decode in float64 over the cache's decoded tokens."""
    layout = cache.layout
    batch, s_q, heads, _ = q.shape
    o = np.zeros((batch, s_q, heads, layout.latent_dim))
    lse = np.full((batch, heads, s_q), -np.inf)
    for b in range(batch):
        keys = []
        for t in range(lens[b]):
            slot = table[b, t // layout.page_size] * layout.page_size + t % layout.page_size
            latent, rope = cache.read_token(int(slot))
            keys.append(np.concatenate([latent, rope]))
        keys = np.array(keys, dtype=np.float64)
        for i in range(s_q):
            seen = lens[b] - (s_q - 1 - i)
            if seen <= 0:
                continue
            kk = keys[:seen]
            s = q[b, i].astype(np.float64) @ kk.T * scale  # [heads, seen]
            m = s.max(-1, keepdims=True)
            p = np.exp(s - m)
            o[b, i] = (p / p.sum(-1, keepdims=True)) @ kk[:, :layout.latent_dim]
            lse[b, :, i] = (m + np.log(p.sum(-1, keepdims=True)))[:, 0]
    return o, lse


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_mla_cache_append_and_decode(fmt):
    cache = tessera.MlaCache(num_pages=6, page_size=16, latent_dim=256, rope_dim=64, format=fmt)
    assert cache.num_slots == 96
    assert cache.pages.shape == (6, 16, cache.layout.token_bytes)
    tokens = 50
    latent = RNG.standard_normal((tokens, 256)).astype(np.float32)
    rope = RNG.standard_normal((tokens, 64)).astype(np.float32)
    slots = ((np.arange(tokens) * 7) % 96).astype(np.int32)
    cache.append(latent, rope, slots)
    got_latent, got_rope = cache.read_token(int(slots[3]))
    np.testing.assert_array_equal(got_rope, bf16_round(rope[3]))
    if fmt == "bf16":
        np.testing.assert_array_equal(got_latent, bf16_round(latent[3]))
    else:
        np.testing.assert_allclose(got_latent, latent[3], rtol=0.07, atol=0.05)
    q = RNG.standard_normal((2, 2, 4, 320)).astype(np.float32)
    table = np.array([[0, 1, 2, 3], [5, 4, 3, 2]], np.int32)
    lens = np.array([40, 1], np.int32)
    o, lse = cache.decode(q, table, lens, softmax_scale=0.06)
    assert o.shape == (2, 2, 4, 256) and lse.shape == (2, 4, 2)
    want_o, want_lse = mla_reference(cache, bf16_round(q), table, lens, 0.06)
    np.testing.assert_allclose(o, want_o, atol=2e-2, rtol=2e-2)
    np.testing.assert_allclose(lse, want_lse, atol=1e-3, rtol=1e-3)
    # Request 1's first query sees no key.
    assert np.all(lse[1, :, 0] == -np.inf) and np.all(o[1, 0] == 0)


def test_mla_bad_inputs_are_named_and_write_nothing():
    cache = tessera.MlaCache(num_pages=2, page_size=16, latent_dim=128, rope_dim=64)
    before = cache.pages
    latent = np.ones((3, 128), np.float32)
    rope = np.ones((3, 64), np.float32)
    with pytest.raises(tessera.InvalidArgumentError, match="`slots`.*int32"):
        cache.append(latent, rope, np.arange(3))
    with pytest.raises(tessera.InvalidArgumentError, match="`rope`.*shape"):
        cache.append(latent, rope[:, :32].copy(), np.arange(3, dtype=np.int32))
    with pytest.raises(tessera.InvalidArgumentError, match="slots"):
        cache.append(latent, rope, np.array([0, 40, 1], np.int32))  # slot 40 > 31
    with pytest.raises(tessera.InvalidArgumentError, match="slots"):
        cache.append(latent, rope, np.array([1, 1, 2], np.int32))  # duplicate
    np.testing.assert_array_equal(cache.pages, before)
    q = np.zeros((1, 1, 4, 192), np.float32)
    with pytest.raises(tessera.InvalidArgumentError, match="block_table"):
        cache.decode(q, np.array([[0, 2]], np.int32), np.array([20], np.int32), 0.1)
    with pytest.raises(tessera.InvalidArgumentError, match="`q`.*shape"):
        cache.decode(q[..., :100].copy(), np.array([[0, 1]], np.int32), np.array([20], np.int32),
                     0.1)
    with pytest.raises(tessera.InvalidArgumentError, match="format"):
        tessera.MlaCache(num_pages=1, format="int8")


def test_errors_are_tessera_errors():
    assert issubclass(tessera.InvalidArgumentError, tessera.TesseraError)
    assert issubclass(tessera.OutOfMemoryError, tessera.DeviceError)
    try:
        tessera.fp8_quantize(np.zeros((0, 4), np.float32))
    except tessera.TesseraError as e:
        assert "fp8_quantize" in str(e) and "rows" in str(e)
    else:
        raise AssertionError("no error")


def vulkan_usable():
    return any(b["name"] == "vulkan" and b["usable"] for b in tessera.info()["backends"])


def test_vulkan_backend_gives_the_reference_bits():
    if not vulkan_usable():
        pytest.skip("no Vulkan device (lavapipe or a GPU)")
    x = RNG.standard_normal((64, 256)).astype(np.float32)
    for want, got in zip(tessera.fp8_quantize(x), tessera.fp8_quantize(x, backend="vulkan")):
        np.testing.assert_array_equal(want, got)
