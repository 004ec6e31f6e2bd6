"""PyTorch integration: each op is a ``torch.library`` custom op (``torch.ops.tessera.*``) with a
fake implementation (shapes and dtypes only) for ``torch.compile``, running

- on CUDA tensors: zero copy through Tessera's raw device-pointer API, on
  ``torch.cuda.current_stream()`` of the tensors' device, with outputs allocated by torch (its
  caching allocator, and the graph's pool under CUDA-graph capture);
- on CPU tensors: through the CPU reference (copies to numpy and back).

The public functions check every tensor first (type, dtype, device, shape, contiguity) and raise
:class:`tessera.InvalidArgumentError` naming it; Tessera checks the lengths and addresses again
before launching. Imported only when a tensor is passed to a ``tessera`` function.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch

from . import _tessera
from ._tessera import BlockMask, InvalidArgumentError, MlaCacheLayout

_FP8 = getattr(torch, "float8_e4m3fn", None)

def _fail(op: str, arg: str, expected: str, got: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{op}: invalid argument `{arg}`: expected {expected}, got {got}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check(op: str, arg: str, t: Any, dtypes: Sequence[torch.dtype], ndim: Optional[int] = None,
           device: Optional[torch.device] = None, names: str = "") -> torch.Tensor:
    """Checks one tensor argument and returns it."""
    if not isinstance(t, torch.Tensor):
        raise _fail(op, arg, "a torch.Tensor", type(t).__name__)
    if t.dtype not in dtypes:
        want = " or ".join(_dtype_name(d) for d in dtypes)
        raise _fail(op, arg, f"dtype {want}", _dtype_name(t.dtype))
    if device is not None and t.device != device:
        raise _fail(op, arg, f"a tensor on {device} (the device of the first tensor)",
                    f"a tensor on {t.device}")
    if t.device.type not in ("cuda", "cpu", "meta"):
        raise _fail(op, arg, "a CUDA or CPU tensor", f"a tensor on {t.device}")
    if ndim is not None and t.dim() != ndim:
        raise _fail(op, arg, f"{ndim} dimensions ({names})", f"shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise _fail(op, arg, "a contiguous tensor (call .contiguous())",
                    f"strides {tuple(t.stride())} for shape {tuple(t.shape)}")
    return t


def _check_shape(op: str, arg: str, t: torch.Tensor, shape: Sequence[int], names: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise _fail(op, arg, f"shape {tuple(shape)} ({names})", f"shape {tuple(t.shape)}")


def _span(t: torch.Tensor) -> Tuple[int, int]:
    return (t.data_ptr(), t.numel())


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _half_dtype(t: torch.Tensor) -> str:
    return {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32"}[t.dtype]


def _numpy_float(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as numpy: float16 stays float16, other floats become float32."""
    t = t.detach()
    return t.numpy() if t.dtype == torch.float16 else t.float().numpy()


def _bits(t: torch.Tensor) -> torch.Tensor:
    """An FP8 tensor's uint8 bit patterns (the same memory)."""
    return t if t.dtype == torch.uint8 else t.view(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Sparse attention


def _mask_of_key(op: str, mask_key: int) -> BlockMask:
    """The mask whose ``key`` this is (the extension's registry, filled when a mask is built)."""
    mask = _tessera.mask_from_key(mask_key)
    if mask is None:
        raise _fail(op, "mask_key", "the key of a live tessera.BlockMask (its `key` property)",
                    f"{mask_key}: no mask alive has that key (the mask was dropped, or never "
                    "built)")
    return mask


@torch.library.custom_op("tessera::sparse_attention", mutates_args=())
def _sparse_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_key: int,
                         softmax_scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    mask = _mask_of_key("sparse_attention", mask_key)
    b, t, h, d = q.shape
    if q.device.type == "cuda":
        o = torch.empty_like(q)
        lse = torch.empty((b, h, t), dtype=torch.float32, device=q.device)
        _tessera.cuda_sparse_attention(
            q.device.index, _stream(q.device), _half_dtype(q), (b, t, h, d), softmax_scale, mask,
            _span(q), _span(k), _span(v), _span(o), _span(lse))
        return o, lse
    o_np, lse_np = _tessera.sparse_attention(_numpy_float(q), _numpy_float(k), _numpy_float(v),
                                             mask, softmax_scale, "cpu")
    return torch.from_numpy(o_np).to(q.dtype), torch.from_numpy(lse_np)


@_sparse_attention_op.register_fake
def _(q, k, v, mask_key, softmax_scale):
    b, t, h, _d = q.shape
    return torch.empty_like(q), q.new_empty((b, h, t), dtype=torch.float32)


def sparse_attention(q, k, v, mask, softmax_scale: float):
    op = "sparse_attention"
    if not isinstance(mask, BlockMask):
        raise _fail(op, "mask", "a tessera.BlockMask (e.g. RadialMask)", type(mask).__name__)
    names = "batch, tokens, heads, head_dim"
    q = _check(op, "q", q, (torch.float16, torch.bfloat16), 4, names=names)
    for arg, t in (("k", k), ("v", v)):
        _check(op, arg, t, (q.dtype,), 4, q.device, names)
        _check_shape(op, arg, t, q.shape, names)
    # The op takes the mask by its key (a custom op's arguments are tensors and plain values),
    # given when the mask was built: reading it has no side effect, so under torch.compile the
    # key is a constant of the traced graph and the op finds the mask in the extension's
    # registry for as long as the mask is alive.
    return torch.ops.tessera.sparse_attention(q, k, v, mask.key, softmax_scale)


# ---------------------------------------------------------------------------------------------
# FP8 quantization and GEMM


_GRANULARITIES = ("1x128", "128x128")


def _scales_shape(rows, cols, granularity: str):
    """The scales' shape, with ceiling divisions that symbolic sizes support (the extension's
    ``fp8_scales_shape`` says the same: a test checks it)."""
    group_rows = 1 if granularity == "1x128" else 128
    return ((rows + group_rows - 1) // group_rows, (cols + 127) // 128)


@torch.library.custom_op("tessera::fp8_quantize", mutates_args=())
def _fp8_quantize_op(x: torch.Tensor, granularity: str,
                     power_of_two: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    rows, cols = x.shape
    if x.device.type == "cuda":
        values = torch.empty((rows, cols), dtype=torch.uint8, device=x.device)
        scales = torch.empty(_scales_shape(rows, cols, granularity), dtype=torch.float32,
                             device=x.device)
        _tessera.cuda_fp8_quantize(x.device.index, _stream(x.device), _half_dtype(x),
                                   (rows, cols), granularity, power_of_two, _span(x),
                                   _span(values), _span(scales))
    else:
        v, s = _tessera.fp8_quantize(_numpy_float(x), granularity, power_of_two, "cpu")
        values, scales = torch.from_numpy(v), torch.from_numpy(s)
    return (values.view(_FP8) if _FP8 is not None else values), scales


@_fp8_quantize_op.register_fake
def _(x, granularity, power_of_two):
    rows, cols = x.shape
    shape = _scales_shape(rows, cols, granularity)
    values = x.new_empty((rows, cols), dtype=_FP8 if _FP8 is not None else torch.uint8)
    return values, x.new_empty(shape, dtype=torch.float32)


def fp8_quantize(x, granularity: str, power_of_two: bool):
    op = "fp8_quantize"
    _check(op, "x", x, (torch.float32, torch.float16, torch.bfloat16), 2, names="rows, cols")
    if granularity not in _GRANULARITIES:
        raise _fail(op, "granularity", '"1x128" or "128x128"', repr(granularity))
    return torch.ops.tessera.fp8_quantize(x, granularity, power_of_two)


_E4M3 = (torch.uint8,) + ((_FP8,) if _FP8 is not None else ())


@torch.library.custom_op("tessera::fp8_gemm", mutates_args=())
def _fp8_gemm_op(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                 b_scales: torch.Tensor) -> torch.Tensor:
    (m, k), n = a.shape, b.shape[0]
    if a.device.type == "cuda":
        d = torch.empty((m, n), dtype=torch.bfloat16, device=a.device)
        _tessera.cuda_fp8_gemm(a.device.index, _stream(a.device), "single", 1, (m, n, k),
                               _span(a), _span(a_scales), _span(b), _span(b_scales), (0, 0),
                               _span(d))
        return d
    d_np = _tessera.fp8_gemm(_bits(a).numpy(), a_scales.numpy(), _bits(b).numpy(),
                             b_scales.numpy(), "cpu")
    return torch.from_numpy(d_np).to(torch.bfloat16)


@_fp8_gemm_op.register_fake
def _(a, a_scales, b, b_scales):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.bfloat16)


def fp8_gemm(a, a_scales, b, b_scales):
    op = "fp8_gemm"
    a = _check(op, "a", a, _E4M3, 2, names="m, k")
    b = _check(op, "b", b, _E4M3, 2, a.device, "n, k")
    (m, k), n = a.shape, b.shape[0]
    kb = -(-k // 128)
    _check_shape(op, "b", b, (n, k), "n, k (k of a)")
    _check_shape(op, "a_scales", _check(op, "a_scales", a_scales, (torch.float32,), 2, a.device,
                                        "m, ceil(k/128)"), (m, kb), "m, ceil(k/128)")
    _check_shape(op, "b_scales", _check(op, "b_scales", b_scales, (torch.float32,), 2, a.device,
                                        "ceil(n/128), ceil(k/128)"),
                 (-(-n // 128), kb), "ceil(n/128), ceil(k/128)")
    return torch.ops.tessera.fp8_gemm(a, a_scales, b, b_scales)


@torch.library.custom_op("tessera::fp8_gemm_grouped", mutates_args=())
def _fp8_gemm_grouped_op(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                         b_scales: torch.Tensor, groups: torch.Tensor,
                         grouping: str) -> torch.Tensor:
    g, n, k = b.shape
    m = a.shape[0] if grouping == "contiguous" else a.shape[1]
    d_shape = (m, n) if grouping == "contiguous" else (g, m, n)
    if a.device.type == "cuda":
        d = torch.empty(d_shape, dtype=torch.bfloat16, device=a.device)
        _tessera.cuda_fp8_gemm(a.device.index, _stream(a.device), grouping, g, (m, n, k),
                               _span(a), _span(a_scales), _span(b), _span(b_scales),
                               _span(groups), _span(d))
        return d
    d_np = _tessera.fp8_gemm_grouped(_bits(a).numpy(), a_scales.numpy(), _bits(b).numpy(),
                                     b_scales.numpy(), groups.numpy(), grouping, "cpu")
    return torch.from_numpy(d_np).to(torch.bfloat16)


@_fp8_gemm_grouped_op.register_fake
def _(a, a_scales, b, b_scales, groups, grouping):
    g, n, _k = b.shape
    if grouping == "contiguous":
        return a.new_empty((a.shape[0], n), dtype=torch.bfloat16)
    return a.new_empty((g, a.shape[1], n), dtype=torch.bfloat16)


def fp8_gemm_grouped(a, a_scales, b, b_scales, groups, grouping: str):
    op = "fp8_gemm_grouped"
    if grouping not in ("contiguous", "masked"):
        raise _fail(op, "grouping", '"contiguous" or "masked"', repr(grouping))
    b = _check(op, "b", b, _E4M3, 3, names="groups, n, k")
    g, n, k = b.shape
    kb = -(-k // 128)
    sa_shape: Tuple[int, ...]
    layout_shape: Tuple[int, ...]
    if grouping == "contiguous":
        a = _check(op, "a", a, _E4M3, 2, b.device, "m, k")
        m = a.shape[0]
        _check_shape(op, "a", a, (m, k), "m, k (k of b)")
        sa_shape, layout_shape = (m, kb), (g + 1,)
    else:
        a = _check(op, "a", a, _E4M3, 3, b.device, "groups, m, k")
        m = a.shape[1]
        _check_shape(op, "a", a, (g, m, k), "groups, m, k")
        sa_shape, layout_shape = (g, m, kb), (g,)
    _check(op, "a_scales", a_scales, (torch.float32,), len(sa_shape), b.device)
    _check_shape(op, "a_scales", a_scales, sa_shape, "rows of a, ceil(k/128)")
    _check(op, "b_scales", b_scales, (torch.float32,), 3, b.device)
    _check_shape(op, "b_scales", b_scales, (g, -(-n // 128), kb),
                 "groups, ceil(n/128), ceil(k/128)")
    _check(op, "groups", groups, (torch.int32,), 1, b.device)
    _check_shape(op, "groups", groups, layout_shape, "the group layout")
    return torch.ops.tessera.fp8_gemm_grouped(a, a_scales, b, b_scales, groups, grouping)


# ---------------------------------------------------------------------------------------------
# MLA cache


def new_pages(layout: MlaCacheLayout, num_pages: int, device: Any) -> torch.Tensor:
    device = torch.device(device)
    if device.type != "cuda":
        raise _fail("mla_cache", "device", "a CUDA device (or None for a host cache)",
                    str(device))
    if num_pages < 1:
        raise _fail("mla_cache", "num_pages", "at least 1", str(num_pages))
    return torch.zeros((num_pages, layout.page_size, layout.token_bytes), dtype=torch.uint8,
                       device=device)


@torch.library.custom_op("tessera::mla_append", mutates_args=("pages",))
def _mla_append_op(pages: torch.Tensor, latent: torch.Tensor, rope: torch.Tensor,
                   slots: torch.Tensor, page_size: int, latent_dim: int, rope_dim: int,
                   format: str) -> None:
    layout = MlaCacheLayout(page_size, latent_dim, rope_dim, format)
    _tessera.cuda_mla_append(pages.device.index, _stream(pages.device), layout, slots.shape[0],
                             _span(pages), _span(latent), _span(rope), _span(slots))


@_mla_append_op.register_fake
def _(pages, latent, rope, slots, page_size, latent_dim, rope_dim, format):
    return None


def mla_append(pages: torch.Tensor, layout: MlaCacheLayout, latent, rope, slots) -> None:
    op = "mla_append"
    slots = _check(op, "slots", slots, (torch.int32,), 1, pages.device, "tokens")
    tokens = slots.shape[0]
    _check(op, "latent", latent, (torch.bfloat16,), 2, pages.device, "tokens, latent_dim")
    _check_shape(op, "latent", latent, (tokens, layout.latent_dim), "tokens, latent_dim")
    _check(op, "rope", rope, (torch.bfloat16,), 2, pages.device, "tokens, rope_dim")
    _check_shape(op, "rope", rope, (tokens, layout.rope_dim), "tokens, rope_dim")
    torch.ops.tessera.mla_append(pages, latent, rope, slots, layout.page_size, layout.latent_dim,
                                 layout.rope_dim, layout.format)


@torch.library.custom_op("tessera::mla_decode", mutates_args=())
def _mla_decode_op(pages: torch.Tensor, q: torch.Tensor, block_table: torch.Tensor,
                   seq_lens: torch.Tensor, page_size: int, latent_dim: int, rope_dim: int,
                   format: str, softmax_scale: float,
                   max_seq_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    layout = MlaCacheLayout(page_size, latent_dim, rope_dim, format)
    batch, s_q, heads, _ = q.shape
    shape = (batch, s_q, heads, block_table.shape[1])
    dev = q.device
    o = torch.empty((batch, s_q, heads, latent_dim), dtype=torch.bfloat16, device=dev)
    lse = torch.empty((batch, heads, s_q), dtype=torch.float32, device=dev)
    ws_len = _tessera.cuda_mla_decode_workspace_len(dev.index, layout, shape, softmax_scale,
                                                    max_seq_len)
    ws = torch.empty((max(ws_len, 1),), dtype=torch.float32, device=dev)
    _tessera.cuda_mla_decode(dev.index, _stream(dev), layout, shape, softmax_scale, max_seq_len,
                             _span(pages), _span(q), _span(block_table), _span(seq_lens),
                             _span(o), _span(lse), _span(ws))
    return o, lse


@_mla_decode_op.register_fake
def _(pages, q, block_table, seq_lens, page_size, latent_dim, rope_dim, format, softmax_scale,
      max_seq_len):
    batch, s_q, heads, _ = q.shape
    return (q.new_empty((batch, s_q, heads, latent_dim), dtype=torch.bfloat16),
            q.new_empty((batch, heads, s_q), dtype=torch.float32))


def mla_decode(pages: torch.Tensor, layout: MlaCacheLayout, q, block_table, seq_lens,
               softmax_scale: float, max_seq_len: Optional[int]):
    op = "mla_decode"
    names = "batch, s_q, heads, latent_dim + rope_dim"
    q = _check(op, "q", q, (torch.bfloat16,), 4, pages.device, names)
    batch, s_q, heads, width = q.shape
    _check_shape(op, "q", q, (batch, s_q, heads, layout.latent_dim + layout.rope_dim), names)
    _check(op, "block_table", block_table, (torch.int32,), 2, pages.device, "batch, max_pages")
    _check_shape(op, "block_table", block_table, (batch, block_table.shape[1]),
                 "batch, max_pages")
    _check(op, "seq_lens", seq_lens, (torch.int32,), 1, pages.device, "batch")
    _check_shape(op, "seq_lens", seq_lens, (batch,), "batch")
    if max_seq_len is None:
        max_seq_len = block_table.shape[1] * layout.page_size
    return torch.ops.tessera.mla_decode(pages, q, block_table, seq_lens, layout.page_size,
                                        layout.latent_dim, layout.rope_dim, layout.format,
                                        softmax_scale, int(max_seq_len))


# ---------------------------------------------------------------------------------------------
# FlexAttention


def to_flex_block_mask(mask: BlockMask, batch: Optional[int], heads: Optional[int], device: Any):
    from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask

    if not isinstance(mask, BlockMask):
        raise _fail("to_flex_block_mask", "mask", "a tessera.BlockMask", type(mask).__name__)
    indptr, indices = mask.to_bsr()
    nb, tokens = mask.num_blocks, mask.tokens
    counts = np.diff(indptr).astype(np.int32)
    rows = np.repeat(np.arange(nb), counts)
    cols = np.arange(len(indices)) - indptr[rows]
    kv_indices = np.zeros((nb, nb), dtype=np.int32)
    kv_indices[rows, cols] = indices
    b, h = batch or 1, heads or 1
    kv_num_blocks = torch.from_numpy(counts).to(device).expand(b, h, nb).contiguous()
    kv_indices_t = torch.from_numpy(kv_indices).to(device).expand(b, h, nb, nb).contiguous()

    def within_tokens(b, h, q_idx, kv_idx):
        return (q_idx < tokens) & (kv_idx < tokens)

    return FlexBlockMask.from_kv_blocks(kv_num_blocks, kv_indices_t, BLOCK_SIZE=mask.block_size,
                                        mask_mod=within_tokens, seq_lengths=(tokens, tokens))
