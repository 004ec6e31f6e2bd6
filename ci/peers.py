#!/usr/bin/env python3
"""Peers of Tessera's kernels, timed with PyTorch on the GPU machine at the same shapes as
`tessera bench`, written as JSON in the same schema (bench/src/schema.rs):

  {"header": {tool, device, date, commit, backend, suite, ceilings: {copy_gbps, matmul_tflops,
   matmul_impl}, notes}, "records": [{op, shape, impl, params, time_ms, min_ms, reps, tflops,
   gbps, pct_matmul, pct_copy, error}]}

  fp8_gemm    cublas tensorwise   torch._scaled_mm, one scale per tensor
              cublas block        torch._scaled_mm, 1x128 activations x 128x128 weights
              ... (host)          the same, each call timed alone on the host clock with a
                                  synchronize (launch overheads included; for comparison with
                                  FACTS.md only)
              ... (idle events)   the same, each call between two CUDA events recorded on an
                                  idle GPU (the events see the host dispatch; FACTS.md only)
  mla_decode  torch               absorbed decode written plainly: bmm, softmax (f32), bmm, over a
                                  contiguous bf16 cache [b, s_k, 576] (no paging, no causal mask
                                  for s_q = 2); bf16 shapes only
  attention   flex radial         FlexAttention (torch.compile) with the very same BSR mask that
                                  `tessera bench --masks DIR` wrote (full blocks, no mask_mod)
              cudnn dense         SDPA, cuDNN backend
              flash dense         SDPA, flash backend
  attention_backward              the backward only of the same three (same keys and params):
              flex radial         one untimed forward on q, k, v that require grad (flex:
              cudnn dense         FlexAttention, torch.compile, on the same BSR mask, then one
              flash dense         untimed backward where its backward compiles; dense: SDPA with
                                  the backend forced), then the warm-up and timed launches, each
                                  torch.autograd.grad(out, (q, k, v), dO, retain_graph=True): the
                                  backward's kernels only (dq, dk, dv new each launch, from
                                  torch's cache; the forward's saved tensors reused; no .grad
                                  accumulated). FLOP 2.5 x the forward's, as
                                  SparseAttention::backward_flops in core; bytes q, k, v, o, dO
                                  read and dq, dk, dv written, as the bench's backward rows.
                                  fwd+bwd (tessera report) = the `attention` row + this row.

  tessera (python)                Tessera itself, timed here in the same process through the
                                  installed `tessera` Python package (its torch custom ops on
                                  torch.cuda tensors, zero copy on torch's current stream, outputs
                                  from torch's allocator), with the same timing function as the
                                  peers: fp8_gemm on the very operand sets of the cublas rows
                                  (checked against their dequantized product first), mla_decode
                                  on a paged bf16 cache (pages of 64, shuffled block table, as
                                  `tessera bench`), attention on the same radial BSR mask, q, k, v
                                  [1, S, h, 128] (labelled `tessera (python) radial`) and on a
                                  dense mask of the same tokens (`tessera (python) dense`, every
                                  block counted in full, as `tessera dense`). Without
                                  the package (or without its CUDA backend) these rows are
                                  skipped, saying `skipped: ...`.

Timing as in `tessera bench`: a warm-up launch (a second when the first took under 50 ms), then
3..100 launches (about 0.3 s) each between two CUDA events, median and minimum; for launches under
10 ms a GPU sleep kernel is queued first so that host dispatch is not timed; FP8 GEMM rotates
over >= 200 MB of operand sets; ceilings (copy, bf16 matmul) measured in the same run.

  python3 ci/peers.py --masks DIR --json peers.json [--suite standard|quick] [--only OP]
      [--backward-peers 'cudnn dense,flex radial,flash dense']
"""

import argparse
import datetime
import gc
import json
import math
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

BUDGET_S = 0.3
ROTATE_BYTES = 200 << 20
FP8 = torch.float8_e4m3fn
DEV = "cuda"

GEMM_NK = [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]


# The impl label of the rows timed through the `tessera` Python package, in this process; the
# attention rows say radial or dense (`tessera report` compares a peer whose label says radial
# with our radial row, any other with our dense one).
TESSERA_PY = "tessera (python)"
TESSERA_PY_ATTENTION = f"{TESSERA_PY} radial"
TESSERA_PY_ATTENTION_DENSE = f"{TESSERA_PY} dense"


def gemm_key(m, n, k):
    """The shape key of an FP8 GEMM, as gemm_key in bench/src/cases.rs."""
    return f"M{m} N{n} K{k}"


def mla_key(b, s_k, h, s_q):
    """The shape key of a uniform bf16 MLA decode, as MlaShape::key in bench/src/cases.rs."""
    return f"b{b} sk{s_k} hq{h} sq{s_q} bf16"


MLA_PAGE = 64


def mla_block_table(batch, s_k, seed=31):
    """The block table of a paged decode of `batch` requests of `s_k` keys over
    batch * ceil(s_k / 64) pages: every page used once, in a shuffled order (as `tessera bench`
    lays its table out), as a list of `batch` rows of ceil(s_k / 64) page indices."""
    import random

    per = -(-s_k // MLA_PAGE)
    pages = list(range(batch * per))
    random.Random(seed).shuffle(pages)
    return [pages[r * per:(r + 1) * per] for r in range(batch)]


def import_tessera():
    """(tessera, None) when the installed `tessera` Python package imports and its CUDA backend
    is usable here; otherwise (None, why), and the rows timed through it are skipped."""
    try:
        import tessera
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken extension
        return None, (f"the tessera Python package does not import ({type(e).__name__}: {e}); "
                      "install the pack's wheel (ci/gpu-bench.sh does)")
    try:
        backends = {b["name"]: b for b in tessera.info()["backends"]}
    except Exception as e:  # noqa: BLE001
        return None, f"tessera.info() failed: {type(e).__name__}: {e}"
    cuda = backends.get("cuda")
    if cuda is None or not cuda.get("usable"):
        reason = cuda.get("reason") if cuda else "not compiled in"
        return None, f"tessera {getattr(tessera, '__version__', '?')}: its CUDA backend is not usable: {reason}"
    return tessera, None


def warm_up(launch):
    """One untimed launch of a Tessera row before measure(): the first call of a shape loads
    (or NVRTC-compiles) its kernels, plans it and uploads the mask, which would otherwise make
    time_launches' first estimate, and so its repetition count, that of a slow launch."""
    launch(-1)
    torch.cuda.synchronize()


def skipped_line(op, reason):
    """The line that says the Tessera rows of `op` were not timed (ci/gpu-bench.sh fails on it)."""
    return f"skipped: {TESSERA_PY} {op} rows: {reason}"


def suite(name):
    if name == "standard":
        gemm = [(m, n, k) for m in (64, 128, 4096) for (n, k) in GEMM_NK]
        # The plain twin of the grouped (mixture-of-experts) rows of `tessera bench`.
        gemm.append((18432, 4096, 7168))
        mla = [(b, s, h, q) for b in (64, 128) for s in (4096, 8192, 32768) for h in (16, 128) for q in (1, 2)]
        att = [(model, base * x) for model, base in (("hunyuan", 30), ("wan", 18)) for x in (1, 2, 4)]
    elif name == "quick":
        gemm = [(64, 2112, 7168), (4096, 7168, 2048)]
        mla = [(64, 4096, 128, 1)]
        att = [("wan", 18)]
    else:
        sys.exit(f"--suite: expected standard or quick, got {name}")
    return gemm, mla, att


def heads_of(model):
    return 24 if model == "hunyuan" else 40


ATTENTION_HEAD_DIM = 128
ATTENTION_BLOCK = 128
TOKENS_PER_FRAME = 3840
# SparseAttention::backward_flops in core: the backward counts 2.5 times the forward's FLOP
# (5 matmuls against 2).
BACKWARD_FLOP_FACTOR = 2.5


def attention_key(model, frames):
    """The shape key of an attention case, as AttentionCase::key in bench/src/cases.rs."""
    return f"{model} F{frames} T{TOKENS_PER_FRAME} h{heads_of(model)}"


def attention_flops(heads, tokens, nnz=None, backward=False):
    """FLOP of one attention run over q, k, v [1, heads, tokens, 128]: 4 x 128 x 128 x d x heads
    per on block of the mask (nnz blocks), dense (nnz None) every block; times
    BACKWARD_FLOP_FACTOR for the backward (SparseAttention::flops and ::backward_flops)."""
    d = ATTENTION_HEAD_DIM
    if nnz is None:
        forward = 4.0 * tokens * tokens * d * heads
    else:
        forward = 4.0 * ATTENTION_BLOCK * ATTENTION_BLOCK * d * heads * nnz
    return forward * (BACKWARD_FLOP_FACTOR if backward else 1.0)


def attention_bytes(heads, tokens, backward=False):
    """Bytes of one bf16 attention run: q, k, v, o (forward); q, k, v, o, dO read and dq, dk, dv
    written (backward), as AttentionCase::work and ::backward_work."""
    return (8 if backward else 4) * 2.0 * tokens * heads * ATTENTION_HEAD_DIM


def read_radial_mask(masks_dir, model, frames, tokens):
    """The radial mask `tessera bench --masks DIR` wrote for (model, frames), checked: its JSON
    (tokens, block_size 128, blocks, nnz, density, indptr, indices), or RuntimeError naming
    the file and what is wrong."""
    path = os.path.join(masks_dir, f"{model}_F{frames}.json") if masks_dir else None
    if not path or not os.path.exists(path):
        raise RuntimeError(f"mask file {path} missing (run tessera bench --masks DIR first)")
    with open(path) as f:
        mj = json.load(f)
    if mj["tokens"] != tokens or mj["block_size"] != ATTENTION_BLOCK:
        raise RuntimeError(f"mask {path}: tokens {mj['tokens']} block {mj['block_size']}, expected {tokens}, {ATTENTION_BLOCK}")
    nb, indptr, indices = mj["blocks"], mj["indptr"], mj["indices"]
    if len(indptr) != nb + 1 or indptr[0] != 0 or indptr[-1] != len(indices) or int(mj["nnz"]) != len(indices):
        raise RuntimeError(f"mask {path}: indptr of {len(indptr)} entries ending at {indptr[-1] if indptr else None} for {nb} blocks, {len(indices)} indices, nnz {mj['nnz']}")
    if any(b < a for a, b in zip(indptr, indptr[1:])):
        raise RuntimeError(f"mask {path}: indptr decreases")
    if indices and (min(indices) < 0 or max(indices) >= nb):
        raise RuntimeError(f"mask {path}: indices out of range 0..{nb}")
    return mj


def flex_block_mask(mj):
    """FlexAttention's BlockMask of a radial mask JSON (read_radial_mask): every on block full,
    (mask, how) with how the construction used."""
    from torch.nn.attention.flex_attention import BlockMask

    nb = mj["blocks"]
    indptr = torch.tensor(mj["indptr"], dtype=torch.int64)
    indices = torch.tensor(mj["indices"], dtype=torch.int64)
    counts = indptr[1:] - indptr[:-1]
    # FlexAttention wants kv_indices [B, H, q_blocks, kv_blocks]: each row's on columns
    # first (ascending), the rest ignored.
    rows = torch.repeat_interleave(torch.arange(nb), counts)
    cols = torch.arange(indices.numel()) - torch.repeat_interleave(indptr[:-1], counts)
    kv_idx = torch.zeros(nb, nb, dtype=torch.int32)
    kv_idx[rows, cols] = indices.to(torch.int32)
    full_num = counts.to(torch.int32).view(1, 1, nb).to(DEV)
    full_idx = kv_idx.view(1, 1, nb, nb).to(DEV)
    try:
        bm = BlockMask.from_kv_blocks(torch.zeros_like(full_num), torch.zeros_like(full_idx),
                                      full_num, full_idx, BLOCK_SIZE=ATTENTION_BLOCK)
        return bm, "full blocks"
    except Exception:  # noqa: BLE001 - older signature: partial blocks with no mask_mod
        return BlockMask.from_kv_blocks(full_num, full_idx, BLOCK_SIZE=ATTENTION_BLOCK), "partial blocks, noop mask_mod"


def attention_inputs(model, frames):
    """(key, heads, tokens, params, q, k, v) of an attention case: bf16 [1, heads, tokens, 128]
    uniform in [-2, 2)."""
    h = heads_of(model)
    d = ATTENTION_HEAD_DIM
    tokens = frames * TOKENS_PER_FRAME
    base = {"model": model, "frames": frames, "tokens": tokens, "heads": h, "head_dim": d}
    q = torch.empty(1, h, tokens, d, device=DEV, dtype=torch.bfloat16).uniform_(-2, 2)
    k = torch.empty_like(q).uniform_(-2, 2)
    v = torch.empty_like(q).uniform_(-2, 2)
    return attention_key(model, frames), h, tokens, base, q, k, v


def free_memory():
    """Drops what the last case left (cycles, torch's cached blocks) before the next one."""
    gc.collect()
    try:
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 - a spoilt context: later rows will say so
        pass
    torch.cuda.empty_cache()


def time_launches(launch):
    """(median ms, min ms, reps) of launch(i)."""
    i = 0
    t = time.perf_counter()
    launch(i)
    i += 1
    torch.cuda.synchronize()
    est = time.perf_counter() - t
    if est < 0.05:
        t = time.perf_counter()
        launch(i)
        i += 1
        torch.cuda.synchronize()
        est = time.perf_counter() - t
    reps = int(min(100, max(3, BUDGET_S / max(est, 1e-6))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    # Small launches from Python can be bound by the host's dispatch (the GPU waits between the
    # events for the next launch). Keep the GPU busy for a while first so that the host queues
    # every timed launch ahead of it and the events measure the GPU's work only.
    if est < 0.01:
        try:
            torch.cuda._sleep(int(2e6 * min(reps * 0.2, 20)))  # about reps x 0.2 ms (2e6 cycles ~ 1 ms at 1.98 GHz)
        except Exception:  # noqa: BLE001 - private API: timing stays correct, only less tight
            pass
    for s, e in events:
        s.record()
        launch(i)
        i += 1
        e.record()
    torch.cuda.synchronize()
    ms = sorted(s.elapsed_time(e) for s, e in events)
    return ms[len(ms) // 2], ms[0], reps


def time_host(launch, reps=50):
    """(median ms, min ms, reps) of launch(i) each timed alone on the host clock, with a
    synchronize after it (so launch and dispatch overheads are included): the way an earlier
    measurement may have been taken, kept to explain differences, not as the peer's number."""
    launch(0)
    torch.cuda.synchronize()
    ms = []
    for i in range(reps):
        t = time.perf_counter()
        launch(i + 1)
        torch.cuda.synchronize()
        ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    return ms[len(ms) // 2], ms[0], reps


def time_idle_events(launch, reps=50):
    """(median ms, min ms, reps) of launch(i) between two CUDA events recorded on an idle GPU
    (a synchronize before each): the events then also see the host's dispatch of the launch.
    Kept, like time_host, only to explain differences with earlier measurements."""
    launch(0)
    torch.cuda.synchronize()
    ms = []
    for i in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        s.record()
        launch(i + 1)
        e.record()
        e.synchronize()
        ms.append(s.elapsed_time(e))
    ms.sort()
    return ms[len(ms) // 2], ms[0], reps


class Out:
    def __init__(self, path, header):
        self.path = path
        self.data = {"header": header, "records": []}

    def add(self, rec, flops, nbytes):
        c = self.data["header"]["ceilings"]
        t = rec.get("time_ms")
        if t:
            rec["tflops"] = flops / (t * 1e-3) / 1e12
            rec["gbps"] = nbytes / (t * 1e-3) / 1e9
            rec["pct_matmul"] = 100 * rec["tflops"] / c["matmul_tflops"] if c.get("matmul_tflops") else None
            rec["pct_copy"] = 100 * rec["gbps"] / c["copy_gbps"] if c.get("copy_gbps") else None
        for k in ("time_ms", "min_ms", "tflops", "gbps", "pct_matmul", "pct_copy", "error"):
            rec.setdefault(k, None)
        rec.setdefault("reps", 0)
        self.data["records"].append(rec)
        shown = f"{rec['time_ms']:.4f} ms" if rec["time_ms"] else f"error: {str(rec['error'])[:200]}"
        extra = f"  {rec['tflops']:.1f} TFLOPS {rec['gbps']:.0f} GB/s" if rec["time_ms"] else ""
        print(f"{rec['op']:<18} {rec['shape']:<28} {rec['impl']:<18} {shown}{extra}", flush=True)
        self.save()

    def save(self):
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f, indent=1)
            os.replace(tmp, self.path)


def measure(op, shape, impl, params, launch, timer=None):
    rec = {"op": op, "shape": shape, "impl": impl, "params": params}
    try:
        med, mn, reps = (timer or time_launches)(launch)
        rec.update(time_ms=med, min_ms=mn, reps=reps)
    except Exception as e:  # noqa: BLE001 - any failure is recorded, the run goes on
        rec["error"] = f"{type(e).__name__}: {e}".strip()[:1000]
        try:
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001 - a spoilt context: later rows will say so
            pass
    return rec


def ceilings():
    c = {"copy_gbps": None, "matmul_tflops": None, "matmul_impl": ""}
    n = 1 << 30
    src = torch.ones(n, dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    med, _, _ = time_launches(lambda i: dst.copy_(src))
    c["copy_gbps"] = 2 * n / (med * 1e-3) / 1e9
    del src, dst
    m = 8192
    a = torch.randn(m, m, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(m, m, device=DEV, dtype=torch.bfloat16)
    med, _, _ = time_launches(lambda i: torch.matmul(a, b))
    c["matmul_tflops"] = 2 * m**3 / (med * 1e-3) / 1e12
    c["matmul_impl"] = "torch.matmul bf16 8192^3 (cuBLAS)"
    return c


def fp8_random(rows, cols):
    x = torch.empty(rows, cols, device=DEV, dtype=torch.bfloat16).uniform_(-2.0, 2.0)
    return (x * 64).to(FP8)  # moderate magnitudes, no zeros dominating


def block_scaled_mm():
    """The argument layouts to try for torch's block-scaled recipe, as (name, prepare, call):
    prepare(sa [m, kb], sb [n/128, kb]) -> (scale_a, scale_b) runs once per operand set, outside
    the timed region (so layout copies are not timed), call(a, b_nk, scale_a, scale_b) -> bf16 is
    what is timed. The first layout that torch accepts (and that matches a dequantized matmul)
    is used."""

    def pad4(s):
        kb = s.shape[1]
        if kb % 4:
            s = F.pad(s, (0, 4 - kb % 4))
        return s

    def colmajor(s):
        return s.t().contiguous().t()

    def call(a, b, sa, sb):
        return torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)

    return [
        ("scale_b=pad4(sb).t()", lambda sa, sb: (colmajor(sa), pad4(sb).t()), call),
        ("scale_b=sb.t()", lambda sa, sb: (colmajor(sa), sb.t()), call),
        ("scale_b=colmajor(sb.t())", lambda sa, sb: (colmajor(sa), colmajor(sb.t())), call),
    ]


def dequantized_gemm(a, b, sa, sb):
    """The float32 reference of a block-scaled FP8 GEMM d = (a * sa) @ (b * sb)^T: sa per row and
    128 of K, sb per 128 x 128 block."""
    n, k = b.shape
    rep_a = sa.repeat_interleave(128, dim=1)[:, :k]
    rep_b = sb.repeat_interleave(128, dim=0)[:n].repeat_interleave(128, dim=1)[:, :k]
    return (a.float() * rep_a) @ (b.float() * rep_b).t()


def relative_error(d, ref):
    return ((d.float() - ref).norm() / ref.norm()).item()


def tessera_gemm(tess, key, params, bufs):
    """The Tessera (python) row of an FP8 GEMM over the cublas rows' operand sets (fp8 a [m, k],
    b [n, k], f32 sa [m, kb], sb [n/128, kb]: Tessera's own layouts), after a check of the first
    set against the dequantized product."""
    a, b, sa, sb = bufs[0]
    try:
        rel = relative_error(tess.fp8_gemm(a, sa, b, sb), dequantized_gemm(a, b, sa, sb))
        if not rel < 2e-2:
            raise RuntimeError(f"relative error {rel:.3g} against the dequantized product")
    except Exception as e:  # noqa: BLE001 - recorded, the run goes on
        return {"op": "fp8_gemm", "shape": key, "impl": TESSERA_PY, "params": params,
                "error": f"{type(e).__name__}: {e}"[:1000]}

    def launch(i):
        a, b, sa, sb = bufs[i % len(bufs)]
        tess.fp8_gemm(a, sa, b, sb)

    return measure("fp8_gemm", key, TESSERA_PY, params, launch)


def bench_gemm(out, shapes, tess=(None, "not asked")):
    one = torch.ones((), device=DEV, dtype=torch.float32)
    if tess[0] is None:
        print(skipped_line("fp8_gemm", tess[1]), flush=True)
    variants = block_scaled_mm()
    chosen = None
    for (m, n, k) in shapes:
        key = gemm_key(m, n, k)
        set_bytes = m * k + n * k + 2 * m * n
        sets = max(1, min(16, math.ceil(ROTATE_BYTES / set_bytes)))
        kb = (k + 127) // 128
        bufs = []
        for _ in range(sets):
            bufs.append((
                fp8_random(m, k),
                fp8_random(n, k),
                torch.empty(m, kb, device=DEV).uniform_(2**-8, 2**-6),
                torch.empty((n + 127) // 128, kb, device=DEV).uniform_(2**-8, 2**-6),
            ))
        flops = 2.0 * m * n * k
        nbytes = m * k + n * k + 2 * m * n + 4 * (m * kb + ((n + 127) // 128) * kb)
        params = {"m": m, "n": n, "k": k, "sets": sets}

        def tensorwise(i):
            a, b, _, _ = bufs[i % sets]
            torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

        out.add(measure("fp8_gemm", key, "cublas tensorwise", params, tensorwise), flops, nbytes)
        out.add(measure("fp8_gemm", key, "cublas tensorwise (host)", params, tensorwise, time_host), flops, nbytes)
        out.add(measure("fp8_gemm", key, "cublas tensorwise (idle events)", params, tensorwise, time_idle_events), flops, nbytes)

        # The block recipe: find the argument layout torch accepts (once), check it against a
        # dequantized matmul, then time it.
        errors = []
        fn = None
        for name, prepare, v in ([chosen] if chosen else variants):
            try:
                a, b, sa, sb = bufs[0]
                d = v(a, b, *prepare(sa, sb)).float()
                if chosen is None:
                    rel = relative_error(d, dequantized_gemm(a, b, sa, sb))
                    if not rel < 2e-2:
                        raise RuntimeError(f"layout {name}: relative error {rel:.3g} against the dequantized product")
                fn, chosen = v, (name, prepare, v)
                break
            except Exception as e:  # noqa: BLE001
                errors.append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
        if fn is None:
            rec = {"op": "fp8_gemm", "shape": key, "impl": "cublas block", "params": params, "error": " | ".join(errors)[:1000]}
            out.add(rec, flops, nbytes)
        else:
            prepared = [(a, b, *chosen[1](sa, sb)) for (a, b, sa, sb) in bufs]

            def block(i, fn=fn):
                fn(*prepared[i % sets])

            params = dict(params, layout=chosen[0])
            out.add(measure("fp8_gemm", key, "cublas block", params, block), flops, nbytes)
            out.add(measure("fp8_gemm", key, "cublas block (host)", params, block, time_host), flops, nbytes)
            out.add(measure("fp8_gemm", key, "cublas block (idle events)", params, block, time_idle_events), flops, nbytes)
        if tess[0] is not None:
            out.add(tessera_gemm(tess[0], key, {"m": m, "n": n, "k": k, "sets": sets}, bufs), flops, nbytes)
        prepared = None  # noqa: F841 - drops the operand sets' last references
        del bufs
        torch.cuda.empty_cache()


def tessera_mla(tess, key, b, s_k, h, s_q, scale):
    """The Tessera (python) row of a uniform bf16 MLA decode: a tessera.MlaCache on the GPU
    (pages of 64 filled uniform in [-1, 1)), the shuffled block table of mla_block_table, every
    request s_k keys, q [b, s_q, h, 576] uniform in [-1, 1)."""
    params = {"b": b, "s_k": s_k, "h_q": h, "s_q": s_q, "cache": "bf16 paged 64"}
    try:
        table = mla_block_table(b, s_k)
        cache = tess.MlaCache(b * len(table[0]), page_size=MLA_PAGE, format="bf16", device=DEV)
        cache.pages.view(torch.bfloat16).uniform_(-1, 1)
        block_table = torch.tensor(table, dtype=torch.int32, device=DEV)
        seq_lens = torch.full((b,), s_k, dtype=torch.int32, device=DEV)
        q = torch.empty(b, s_q, h, 576, device=DEV, dtype=torch.bfloat16).uniform_(-1, 1)

        def launch(i):
            return cache.decode(q, block_table, seq_lens, scale)

        warm_up(launch)
        return measure("mla_decode", key, TESSERA_PY, params, launch)
    except Exception as e:  # noqa: BLE001 - out of memory included
        return {"op": "mla_decode", "shape": key, "impl": TESSERA_PY, "params": params,
                "error": f"{type(e).__name__}: {e}"[:1000]}


def bench_mla(out, shapes, tess=(None, "not asked"), key_filter=None):
    scale = 192 ** -0.5
    if tess[0] is None:
        print(skipped_line("mla_decode", tess[1]), flush=True)
    for (b, s_k, h, s_q) in shapes:
        key = mla_key(b, s_k, h, s_q)
        if key_filter is not None and key_filter not in key:
            continue
        params = {"b": b, "s_k": s_k, "h_q": h, "s_q": s_q, "cache": "bf16 contiguous"}
        flops = 2.0 * b * s_q * h * s_k * (576 + 512)
        nbytes = b * s_k * 1152 + 2 * b * s_q * h * (576 + 512)
        try:
            kv = torch.empty(b, s_k, 576, device=DEV, dtype=torch.bfloat16).uniform_(-1, 1)
            q = torch.empty(b, s_q * h, 576, device=DEV, dtype=torch.bfloat16).uniform_(-1, 1)

            def run(i):
                s = torch.bmm(q, kv.transpose(1, 2))
                p = torch.softmax(s.float() * scale, dim=-1).to(torch.bfloat16)
                return torch.bmm(p, kv[:, :, :512])

            rec = measure("mla_decode", key, "torch", params, run)
        except Exception as e:  # noqa: BLE001
            rec = {"op": "mla_decode", "shape": key, "impl": "torch", "params": params, "error": f"{type(e).__name__}: {e}"[:1000]}
        out.add(rec, flops, nbytes)
        kv = q = run = None
        free_memory()
        if tess[0] is not None:
            out.add(tessera_mla(tess[0], key, b, s_k, h, s_q, scale), flops, nbytes)
            free_memory()


def compiled_flex():
    """(torch.compile'd flex_attention, None) or (None, the reason it is unavailable)."""
    try:
        import torch._dynamo
        torch._dynamo.config.cache_size_limit = 64
        from torch.nn.attention.flex_attention import flex_attention
        return torch.compile(flex_attention, dynamic=False), None
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


def tessera_attention(tess, model, frames, masks_dir, dense=False):
    """(record, flops) of a Tessera (python) row of an attention case: tessera.sparse_attention
    on the radial mask `tessera bench --masks` wrote (tessera.BlockMask.from_bsr of its BSR), or
    with `dense` on tessera.BlockMask.dense of the same tokens (FLOP of every block in full, as
    the bench's `tessera dense`), q, k, v bf16 [1, S, h, 128] (Tessera's layout) uniform in
    [-2, 2)."""
    import numpy as np

    h, d = heads_of(model), ATTENTION_HEAD_DIM
    tokens = frames * TOKENS_PER_FRAME
    key = attention_key(model, frames)
    impl = TESSERA_PY_ATTENTION_DENSE if dense else TESSERA_PY_ATTENTION
    base = {"model": model, "frames": frames, "tokens": tokens, "heads": h, "head_dim": d}
    try:
        if dense:
            mask = tess.BlockMask.dense(tokens, ATTENTION_BLOCK)
            density, nnz = mask.density, mask.nnz
        else:
            mj = read_radial_mask(masks_dir, model, frames, tokens)
            mask = tess.BlockMask.from_bsr(tokens, ATTENTION_BLOCK, np.asarray(mj["indptr"], dtype=np.int32),
                                           np.asarray(mj["indices"], dtype=np.int32))
            density, nnz = mj["density"], int(mj["nnz"])
        params = dict(base, density=density, nnz=nnz, layout="q, k, v [1, S, h, 128]")
        q, k, v = (torch.empty(1, tokens, h, d, device=DEV, dtype=torch.bfloat16).uniform_(-2, 2) for _ in range(3))

        def launch(i):
            return tess.sparse_attention(q, k, v, mask)

        warm_up(launch)
        rec = measure("attention", key, impl, params, launch)
        return rec, attention_flops(h, tokens, nnz)
    except Exception as e:  # noqa: BLE001 - out of memory included
        return {"op": "attention", "shape": key, "impl": impl, "params": base,
                "error": f"{type(e).__name__}: {e}"[:1000]}, 0.0


def bench_attention(out, cases, masks_dir, tess=(None, "not asked")):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    flex, flex_error = compiled_flex()
    if tess[0] is None:
        print(skipped_line("attention", tess[1]), flush=True)

    # Dense first (for every case), then Tessera on the radial mask, FlexAttention last: a
    # failure there (a device-side assert spoils the CUDA context) then costs only the flex rows.
    for model, frames in cases:
        key, h, tokens, base, q, k, v = attention_inputs(model, frames)
        dense_flops = attention_flops(h, tokens)
        nbytes = attention_bytes(h, tokens)
        for name, backend in (("cudnn dense", SDPBackend.CUDNN_ATTENTION), ("flash dense", SDPBackend.FLASH_ATTENTION)):
            def run(i, backend=backend):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v)

            out.add(measure("attention", key, name, dict(base), run), dense_flops, nbytes)
        q = k = v = None
        torch.cuda.empty_cache()

    if tess[0] is not None:
        for model, frames in cases:
            for dense in (False, True):
                rec, flops = tessera_attention(tess[0], model, frames, masks_dir, dense)
                out.add(rec, flops, attention_bytes(heads_of(model), frames * TOKENS_PER_FRAME))
                rec = None
                free_memory()

    for model, frames in cases:
        key, h, tokens, base, q, k, v = attention_inputs(model, frames)
        nbytes = attention_bytes(h, tokens)
        try:
            if flex is None:
                raise RuntimeError(f"FlexAttention unavailable: {flex_error}")
            mj = read_radial_mask(masks_dir, model, frames, tokens)
            bm, how = flex_block_mask(mj)
            nnz = int(mj["nnz"])
            params = dict(base, density=mj["density"], nnz=nnz, block_mask=how)
            rec = measure("attention", key, "flex radial", params, lambda i: flex(q, k, v, block_mask=bm))
            flops = attention_flops(h, tokens, nnz)
        except Exception as e:  # noqa: BLE001
            rec = {"op": "attention", "shape": key, "impl": "flex radial", "params": base, "error": f"{type(e).__name__}: {e}"[:1000]}
            flops = 0.0
        out.add(rec, flops, nbytes)
        bm = q = k = v = None
        torch.cuda.empty_cache()


def backward_launch(forward, q, k, v):
    """Runs out = forward(q', k', v') once, q', k', v' leaf copies of q, k, v that require grad,
    and returns launch(i) = torch.autograd.grad(out, (q', k', v'), dO, retain_graph=True) with
    dO uniform in [-2, 2): each launch runs the backward only (the forward's graph and saved
    tensors are kept and reused; dq, dk, dv are new each time and dropped, no .grad is
    accumulated). The forward itself is not timed."""
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    o = forward(qg, kg, vg)
    d_o = torch.empty_like(o).uniform_(-2, 2)

    def launch(i):
        return torch.autograd.grad(o, (qg, kg, vg), d_o, retain_graph=True)

    return launch


ATTENTION_BACKWARD_OP = "attention_backward"


BACKWARD_PEERS = ("cudnn dense", "flex radial", "flash dense")


def bench_attention_backward(out, cases, masks_dir, peers=BACKWARD_PEERS):
    """The attention_backward rows of `peers`, in that order (by default cuDNN's dense backward for
    every case, then FlexAttention's on the radial mask, then flash's dense backward: the rows the
    issue's targets need first; a flex failure that spoils the CUDA context then costs only the
    flash rows). Every case is
    freed before the next; an error (out of memory included) becomes the record's error."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    flex, flex_error = compiled_flex() if "flex radial" in peers else (None, "not asked for")
    op = ATTENTION_BACKWARD_OP

    def dense_case(model, frames, name, backend):
        key, h, tokens, base, q, k, v = attention_inputs(model, frames)

        def forward(qg, kg, vg):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qg, kg, vg)

        return measure(op, key, name, dict(base), backward_launch(forward, q, k, v)), attention_flops(h, tokens, backward=True)

    def flex_case(model, frames):
        key, h, tokens, base, q, k, v = attention_inputs(model, frames)
        if flex is None:
            raise RuntimeError(f"FlexAttention unavailable: {flex_error}")
        mj = read_radial_mask(masks_dir, model, frames, tokens)
        bm, how = flex_block_mask(mj)
        nnz = int(mj["nnz"])
        params = dict(base, density=mj["density"], nnz=nnz, block_mask=how)
        launch = backward_launch(lambda qg, kg, vg: flex(qg, kg, vg, block_mask=bm), q, k, v)
        launch(0)  # compiles the backward outside the timed launches
        torch.cuda.synchronize()
        return measure(op, key, "flex radial", params, launch), attention_flops(h, tokens, nnz, backward=True)

    case_of = {
        "cudnn dense": lambda m, f: dense_case(m, f, "cudnn dense", SDPBackend.CUDNN_ATTENTION),
        "flex radial": flex_case,
        "flash dense": lambda m, f: dense_case(m, f, "flash dense", SDPBackend.FLASH_ATTENTION),
    }
    # In the order asked for (by default cuDNN, FlexAttention, flash), every case of each peer.
    runs = [(m, f, name, lambda m=m, f=f, c=case_of[name]: c(m, f)) for name in peers for m, f in cases]
    for model, frames, name, run in runs:
        h, tokens = heads_of(model), frames * TOKENS_PER_FRAME
        try:
            rec, flops = run()
        except Exception as e:  # noqa: BLE001 - out of memory included: recorded, freed, next case
            params = {"model": model, "frames": frames, "tokens": tokens, "heads": h, "head_dim": ATTENTION_HEAD_DIM}
            rec = {"op": op, "shape": attention_key(model, frames), "impl": name, "params": params, "error": f"{type(e).__name__}: {e}"[:1000]}
            flops = 0.0
        out.add(rec, flops, attention_bytes(h, tokens, backward=True))
        rec = run = None
        free_memory()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="output JSON file")
    ap.add_argument("--masks", help="folder of the radial masks written by `tessera bench --masks`")
    ap.add_argument("--suite", default="standard", choices=["standard", "quick"])
    ap.add_argument("--only", help="only ops whose name contains this")
    ap.add_argument("--mla-shapes", help="only the MLA decode shapes whose key contains this (as `tessera bench --mla-shapes`)")
    ap.add_argument("--backward-peers", default=",".join(BACKWARD_PEERS),
                    help=f"attention_backward: the peers to time, comma-separated (default: {','.join(BACKWARD_PEERS)})")
    ap.add_argument("--commit", default=os.environ.get("TESSERA_COMMIT", "unknown"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("peers.py: no CUDA device visible to torch")
    gemm, mla, att = suite(args.suite)
    tess = import_tessera()
    wants = lambda op: args.only is None or args.only in op  # noqa: E731
    backward_peers = tuple(p.strip() for p in args.backward_peers.split(",") if p.strip())
    unknown = [p for p in backward_peers if p not in BACKWARD_PEERS]
    if unknown:
        sys.exit(f"peers.py: --backward-peers: unknown {unknown}; known: {', '.join(BACKWARD_PEERS)}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}) on {torch.cuda.get_device_name(0)}", flush=True)
    if tess[0] is not None:
        print(f"tessera {tess[0].__version__} from {tess[0].__file__}: timed in this process as `{TESSERA_PY}`", flush=True)
    else:
        print(skipped_line("all", tess[1]), flush=True)
    c = ceilings()
    print(f"ceilings: copy {c['copy_gbps']:.0f} GB/s, matmul {c['matmul_tflops']:.0f} TFLOPS", flush=True)
    header = {
        "tool": "peers",
        "device": torch.cuda.get_device_name(0),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "commit": args.commit,
        "backend": f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})",
        "suite": args.suite,
        "ceilings": c,
        "notes": [
            "peers: ci/peers.py; cublas = torch._scaled_mm; mla torch = bmm + f32 softmax + bmm on a contiguous bf16 cache (no paging); flex radial = FlexAttention (torch.compile) on the same BSR; SDPA dense with the cuDNN and flash backends; q, k, v [1, h, S, 128]",
            f"{TESSERA_PY}: Tessera timed in this process through its Python package (torch custom ops, zero copy, torch's current stream), same timing function as the peers; fp8_gemm on the cublas rows' operand sets, mla_decode on a paged bf16 cache (pages of 64, shuffled table), attention on the same BSR mask (radial) and a dense mask (dense) with q, k, v [1, S, h, 128]"
            + ("" if tess[0] is not None else f" -- not run: {tess[1]}"),
            "peers attention_backward: after one forward with q, k, v requiring grad (and one untimed backward), each timed launch is torch.autograd.grad(out, (q, k, v), dO, retain_graph=True), the backward only; FLOP 2.5 x the forward's (as Tessera's); the dense peers' fwd+bwd in the report adds their inference forward row (no lse kept), a little faster than a training forward",
        ],
    }
    out = Out(args.json, header)
    out.save()
    t0 = time.time()
    for op, fn in (("fp8_gemm", lambda: bench_gemm(out, gemm, tess)), ("mla_decode", lambda: bench_mla(out, mla, tess, args.mla_shapes)),
                   ("attention", lambda: bench_attention(out, att, args.masks, tess)),
                   (ATTENTION_BACKWARD_OP, lambda: bench_attention_backward(out, att, args.masks, backward_peers))):
        if wants(op):
            try:
                fn()
            except Exception:  # noqa: BLE001
                traceback.print_exc()
            print(f"-- {op} done at {time.time() - t0:.1f} s", flush=True)
    out.save()


if __name__ == "__main__":
    main()
