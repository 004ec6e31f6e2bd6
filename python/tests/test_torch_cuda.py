"""The PyTorch layer on a CUDA GPU, against PyTorch references: sparse attention against SDPA with
the mask as a token mask, MLA decode against plain torch over the same pages, the FP8 GEMM
against the dequantized matmul; bit-exact quantizers and cache appends against the CPU
reference; zero copy on the current (side) stream, CUDA-graph capture and replay,
torch.compile; bad tensors named with nothing written. Every test skips, with the reason, where
there is no CUDA GPU for torch or for Tessera (run with `pytest -rs` to see it)."""

import math

import numpy as np
import pytest

import tessera

torch = pytest.importorskip("torch", reason="torch is not installed")


def _cuda_reason():
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    cuda = [b for b in tessera.info()["backends"] if b["name"] == "cuda"][0]
    if not cuda["usable"]:
        return f"Tessera's CUDA backend is not usable: {cuda['reason']}"
    return None


_REASON = _cuda_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=str(_REASON))

DEV = "cuda:0"


def _seeded(seed):
    return torch.Generator(device=DEV).manual_seed(seed)


def _randn(*shape, dtype=torch.bfloat16, seed=0):
    return torch.randn(*shape, device=DEV, generator=_seeded(seed)).to(dtype)


def _token_mask(mask):
    blocks = torch.from_numpy(mask.to_dense()).to(DEV)
    b, t = mask.block_size, mask.tokens
    return blocks.repeat_interleave(b, 0).repeat_interleave(b, 1)[:t, :t]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_sparse_attention_matches_sdpa_with_the_token_mask(dtype, head_dim):
    mask = tessera.RadialMask(frames=6, tokens_per_frame=300, extra_tokens=77, block_size=128)
    b, t, h = 2, mask.tokens, 4
    q, k, v = (_randn(b, t, h, head_dim, dtype=dtype, seed=s) for s in (1, 2, 3))
    o, lse = tessera.sparse_attention(q, k, v, mask)
    assert o.dtype == dtype and o.shape == q.shape and o.device == q.device
    tm = _token_mask(mask)
    qt, kt, vt = (x.transpose(1, 2).float() for x in (q, k, v))  # [b, h, t, d]
    want = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=tm)
    torch.testing.assert_close(o.float(), want.transpose(1, 2), atol=2e-2, rtol=2e-2)
    scores = (qt @ kt.transpose(-1, -2)) * head_dim ** -0.5
    want_lse = scores.masked_fill(~tm, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(lse, want_lse, atol=1e-2, rtol=1e-3)


def test_runs_on_the_current_side_stream_and_allocates_through_torch():
    mask = tessera.RadialMask(frames=4, tokens_per_frame=256, block_size=64)
    q, k, v = (_randn(1, mask.tokens, 2, 64, seed=s) for s in (4, 5, 6))
    want, _ = tessera.sparse_attention(q, k, v, mask)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        before = torch.cuda.memory_allocated()
        o, lse = tessera.sparse_attention(q, k, v, mask)
        assert torch.cuda.memory_allocated() - before >= o.numel() * 2 + lse.numel() * 4
    side.synchronize()
    assert torch.equal(o, want)


def _mla_inputs(fmt, seed=0):
    layout = dict(page_size=64, latent_dim=512, rope_dim=64, format=fmt)
    cache = tessera.MlaCache(num_pages=40, device=DEV, **layout)
    host = tessera.MlaCache(num_pages=40, **layout)
    tokens = 2000
    latent = _randn(tokens, 512, seed=seed + 1)
    rope = _randn(tokens, 64, seed=seed + 2)
    slots = torch.randperm(40 * 64, generator=torch.Generator().manual_seed(seed))[:tokens]
    slots = slots.to(torch.int32)
    cache.append(latent, rope, slots.to(DEV))
    host.append(latent.float().cpu().numpy(), rope.float().cpu().numpy(), slots.numpy())
    return cache, host


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_mla_append_gives_the_reference_bytes(fmt):
    cache, host = _mla_inputs(fmt)
    torch.cuda.synchronize()
    assert np.array_equal(cache.pages.cpu().numpy(), host.pages)


def _plain_mla_decode(pages, q, table, lens, scale, latent_dim=512):
    """Plain torch over a bf16 cache: gather each request's keys, masked softmax in float32."""
    batch, s_q, heads, width = q.shape
    keys = pages.view(torch.bfloat16).reshape(pages.shape[0], pages.shape[1], width).float()
    o = torch.zeros(batch, s_q, heads, latent_dim, device=q.device)
    lse = torch.full((batch, heads, s_q), float("-inf"), device=q.device)
    for b in range(batch):
        n = int(lens[b])
        kv = keys[table[b].long()].reshape(-1, width)[:n]
        s = torch.einsum("qhd,kd->hqk", q[b].float(), kv) * scale
        seen = n - (s_q - 1 - torch.arange(s_q, device=q.device))
        valid = torch.arange(n, device=q.device)[None, :] < seen[:, None]
        s = s.masked_fill(~valid[None], float("-inf"))
        lse[b] = s.logsumexp(-1)
        o[b] = torch.einsum("hqk,kd->qhd", s.softmax(-1).nan_to_num(0.0), kv[:, :latent_dim])
    return o, lse


@pytest.mark.parametrize("s_q", [1, 2])
def test_mla_decode_matches_plain_torch(s_q):
    cache, _ = _mla_inputs("bf16")
    batch, heads = 4, 16
    q = _randn(batch, s_q, heads, 576, seed=9)
    table = torch.stack([torch.randperm(40, generator=torch.Generator().manual_seed(b))[:20]
                         for b in range(batch)]).to(torch.int32).to(DEV)
    lens = torch.tensor([1280, 1, 700, 64], dtype=torch.int32, device=DEV)
    scale = 192 ** -0.5
    o, lse = cache.decode(q, table, lens, scale, max_seq_len=1280)
    want_o, want_lse = _plain_mla_decode(cache.pages, q, table, lens, scale)
    torch.testing.assert_close(o.float(), want_o, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse, want_lse, atol=1e-2, rtol=1e-3)


def test_fp8_mla_decode_matches_the_cpu_reference():
    cache, host = _mla_inputs("fp8", seed=5)
    q = _randn(2, 1, 16, 576, seed=10)
    table = torch.arange(40, dtype=torch.int32).reshape(2, 20)
    lens = torch.tensor([1200, 300], dtype=torch.int32)
    o, lse = cache.decode(q, table.to(DEV), lens.to(DEV), 0.07)
    want_o, want_lse = host.decode(q.float().cpu().numpy(), table.numpy(), lens.numpy(), 0.07)
    torch.testing.assert_close(o.float().cpu(), torch.from_numpy(want_o), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse.cpu(), torch.from_numpy(want_lse), atol=1e-2, rtol=1e-3)


@pytest.mark.parametrize("granularity", ["1x128", "128x128"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp8_quantize_gives_the_reference_bits(granularity, dtype):
    x = _randn(300, 1000, dtype=dtype, seed=11) * 3
    values, scales = tessera.fp8_quantize(x, granularity)
    assert values.dtype == torch.float8_e4m3fn and values.device == x.device
    want_v, want_s = tessera.fp8_quantize(x.cpu(), granularity)
    assert torch.equal(values.cpu().view(torch.uint8), want_v.view(torch.uint8))
    assert torch.equal(scales.cpu(), want_s)


def _dequantized(values, scales, rows_per_scale):
    v = values.float()
    s = scales.repeat_interleave(rows_per_scale, 0)[:v.shape[0]].repeat_interleave(128, 1)
    return v * s[:, :v.shape[1]]


@pytest.mark.parametrize("m", [64, 1000, 4096])
def test_fp8_gemm_matches_the_dequantized_matmul(m):
    n, k = 2112, 7168
    a, sa = tessera.fp8_quantize(_randn(m, k, seed=12), "1x128")
    b, sb = tessera.fp8_quantize(_randn(n, k, seed=13), "128x128")
    d = tessera.fp8_gemm(a, sa, b, sb)
    assert d.dtype == torch.bfloat16 and d.shape == (m, n)
    want = _dequantized(a, sa, 1) @ _dequantized(b, sb, 128).T
    torch.testing.assert_close(d.float(), want, atol=0.5, rtol=2e-2)


def test_grouped_fp8_gemm_is_each_group_alone():
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the grouped CUDA GEMM needs sm_90a (Hopper)")
    g, n, k = 4, 512, 1024
    offsets = torch.tensor([0, 256, 256, 640, 900], dtype=torch.int32)
    a, sa = tessera.fp8_quantize(_randn(900, k, seed=14), "1x128")
    parts = [tessera.fp8_quantize(_randn(n, k, seed=20 + i), "128x128") for i in range(g)]
    # (Stacked as bits: not every torch build concatenates float8 tensors.)
    b = torch.stack([p[0].view(torch.uint8) for p in parts]).view(torch.float8_e4m3fn)
    sb = torch.stack([p[1] for p in parts])
    d = tessera.fp8_gemm_grouped(a, sa, b, sb, offsets.to(DEV))
    for i in range(g):
        r0, r1 = int(offsets[i]), int(offsets[i + 1])
        if r1 > r0:
            want = tessera.fp8_gemm(a[r0:r1], sa[r0:r1], b[i], sb[i])
            torch.testing.assert_close(d[r0:r1].float(), want.float(), atol=0.5, rtol=2e-2)


def test_cuda_graph_capture_and_replay():
    mask = tessera.RadialMask(frames=3, tokens_per_frame=256, block_size=128)
    q, k, v = (_randn(1, mask.tokens, 2, 128, seed=s) for s in (30, 31, 32))
    a, sa = tessera.fp8_quantize(_randn(128, 512, seed=33), "1x128")
    w, sw = tessera.fp8_quantize(_randn(256, 512, seed=34), "128x128")

    def step():
        o, _ = tessera.sparse_attention(q, k, v, mask)
        return o, tessera.fp8_gemm(a, sa, w, sw)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compiles the kernels and uploads the mask before capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_o, out_d = step()
    q.copy_(_randn(1, mask.tokens, 2, 128, seed=40))
    a.view(torch.uint8).copy_(tessera.fp8_quantize(_randn(128, 512, seed=41), "1x128")[0]
                              .view(torch.uint8))
    graph.replay()
    torch.cuda.synchronize()
    want_o, want_d = step()
    assert torch.equal(out_o, want_o) and torch.equal(out_d, want_d)


def test_torch_compile():
    mask = tessera.RadialMask(frames=2, tokens_per_frame=256, block_size=64)
    w = tessera.fp8_quantize(_randn(128, 128, seed=50), "128x128")

    def layer(q, k, v):
        o, _ = tessera.sparse_attention(q, k, v, mask)
        x, s = tessera.fp8_quantize(o.reshape(-1, 128), "1x128")
        return tessera.fp8_gemm(x, s, *w).relu()

    q, k, v = (_randn(1, mask.tokens, 2, 64, seed=s) for s in (51, 52, 53))
    compiled = torch.compile(layer, fullgraph=True)
    # The first call of each mask is the compiled one (the op finds a mask by the key it got
    # when it was built; nothing is registered at the call).
    assert torch.equal(compiled(q, k, v), layer(q, k, v))

    def attend(q, k, v, mask):
        return tessera.sparse_attention(q, k, v, mask)[0] * 2

    compiled_attend = torch.compile(attend, fullgraph=True)
    for other in (tessera.BlockMask.dense(mask.tokens, 64),
                  tessera.RadialMask(frames=2, tokens_per_frame=256, block_size=64, decay=0.3)):
        assert torch.equal(compiled_attend(q, k, v, other), attend(q, k, v, other))


def test_bad_tensors_are_named_and_nothing_is_written():
    mask = tessera.BlockMask.dense(256, 64)
    q = _randn(1, 256, 2, 64)
    with pytest.raises(tessera.InvalidArgumentError, match="`k`.*cuda:0"):
        tessera.sparse_attention(q, q.cpu(), q, mask)
    with pytest.raises(tessera.InvalidArgumentError, match="`v`.*contiguous"):
        tessera.sparse_attention(q, q, _randn(1, 2, 256, 64).transpose(1, 2), mask)
    # Contiguous but 2 bytes off a 16-byte boundary: the raw API's alignment rule names it.
    base = _randn(q.numel() + 8)
    shifted = base[1:q.numel() + 1].view(q.shape)
    with pytest.raises(tessera.InvalidArgumentError, match="`q`.*aligned to 16 bytes"):
        tessera.sparse_attention(shifted, q, q, mask)
    cache = tessera.MlaCache(num_pages=4, page_size=64, device=DEV)
    before = cache.pages.clone()
    latent, rope = _randn(3, 512), _randn(3, 64)
    with pytest.raises(tessera.InvalidArgumentError, match="`slots`.*int32"):
        cache.append(latent, rope, torch.arange(3, device=DEV))
    with pytest.raises(tessera.InvalidArgumentError, match="`latent`.*bfloat16"):
        cache.append(latent.float(), rope, torch.arange(3, dtype=torch.int32, device=DEV))
    torch.cuda.synchronize()
    assert torch.equal(cache.pages, before)
    if torch.cuda.device_count() > 1:
        with pytest.raises(tessera.InvalidArgumentError, match="`rope`"):
            cache.append(latent, rope.to("cuda:1"), torch.arange(3, dtype=torch.int32,
                                                                 device=DEV))


def test_the_default_softmax_scale_is_head_dim_to_the_minus_half():
    mask = tessera.BlockMask.dense(128, 64)
    q, k, v = (_randn(1, 128, 1, 128, seed=s) for s in (60, 61, 62))
    o1, _ = tessera.sparse_attention(q, k, v, mask)
    o2, _ = tessera.sparse_attention(q, k, v, mask, softmax_scale=1 / math.sqrt(128))
    assert torch.equal(o1, o2)
