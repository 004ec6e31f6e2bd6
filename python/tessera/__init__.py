"""Tessera: GPU kernels for radial sparse attention, the MLA paged KV cache and block-scaled FP8
GEMM (DeepSeek-V3's recipe), checked against a pure-Rust f64 reference.

Every op takes either numpy arrays or ``torch.Tensor``\\ s:

- numpy arrays run through Tessera's host API on the backend named by ``backend`` (``"cpu"``,
  the f64 reference, by default; ``"cuda"``, ``"vulkan"``, or ``"auto"`` for the best one
  here). numpy has no bfloat16 or FP8: bf16 data is given and returned as float32 (inputs
  rounded to bf16), E4M3 values as their uint8 bit patterns.
- CUDA tensors run on their device, zero copy, on ``torch.cuda.current_stream()``, with outputs
  allocated by torch; each op is a ``torch.library`` custom op (``torch.ops.tessera.*``) with a
  fake implementation, so it works under ``torch.compile`` and in CUDA-graph capture (make one
  call of each shape before capturing: the first call compiles the kernel and uploads the mask).
  CPU tensors run on the CPU reference.

Layouts are dense and row-major (C-contiguous); a tensor that is not is an
:class:`InvalidArgumentError` naming it (call ``.contiguous()``), as is a wrong dtype, shape or
device. Errors carry Tessera's message: the op, the argument, what was expected and what was
given. Nothing is written when an argument is rejected.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Optional, Tuple

from . import _tessera
from ._tessera import (
    BackendUnavailableError,
    BlockMask,
    DeviceError,
    InvalidArgumentError,
    MlaCacheLayout,
    OutOfMemoryError,
    RadialMask,
    TesseraError,
    UnsupportedError,
    info,
)

__all__ = [
    "BackendUnavailableError",
    "BlockMask",
    "DeviceError",
    "InvalidArgumentError",
    "MlaCache",
    "MlaCacheLayout",
    "OutOfMemoryError",
    "RadialMask",
    "TesseraError",
    "UnsupportedError",
    "fp8_gemm",
    "fp8_gemm_grouped",
    "fp8_quantize",
    "info",
    "sparse_attention",
    "to_flex_block_mask",
]

__version__ = info()["version"]


def _is_tensor(x: Any) -> bool:
    """Whether ``x`` is a ``torch.Tensor`` (without importing torch when it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


_TORCH_LAYER = None


def _torch_layer():
    """The PyTorch layer (imports torch_ops on the first tensor passed; torch.compile traces the
    later calls, which read the global)."""
    global _TORCH_LAYER
    if _TORCH_LAYER is None:
        from . import torch_ops

        _TORCH_LAYER = torch_ops
    return _TORCH_LAYER


def sparse_attention(q, k, v, mask: BlockMask, softmax_scale: Optional[float] = None,
                     backend: str = "cpu"):
    """Block-sparse (radial) attention forward.

    ``q``, ``k``, ``v``: ``[batch, tokens, heads, head_dim]`` (head_dim 64 or 128 on CUDA), one
    dtype: float16 or bfloat16 tensors; float16 (run in f16) or float32 (rounded to bf16)
    arrays. ``mask``: a :class:`BlockMask` (e.g. :class:`RadialMask`) of ``tokens`` tokens, one
    for every batch and head. ``softmax_scale`` defaults to ``head_dim ** -0.5``.

    Returns ``(o, lse)``: ``o`` like ``q`` (float32 arrays hold bf16 values), ``lse`` float32
    ``[batch, heads, tokens]`` (natural log of each row's softmax denominator).
    """
    if softmax_scale is None:
        shape = getattr(q, "shape", None)
        if shape is None or len(shape) != 4:
            raise InvalidArgumentError(
                "sparse_attention: invalid argument `q`: expected 4 dimensions "
                f"(batch, tokens, heads, head_dim), got {_describe(q)}")
        softmax_scale = 1.0 / math.sqrt(shape[3])
    if _is_tensor(q):
        return _torch_layer().sparse_attention(q, k, v, mask, float(softmax_scale))
    return _tessera.sparse_attention(q, k, v, mask, softmax_scale, backend)


def fp8_quantize(x, granularity: str = "1x128", power_of_two: bool = False,
                 backend: str = "cpu"):
    """FP8 E4M3 quantization with DeepSeek-V3's fine-grained scales.

    ``x``: ``[rows, cols]`` float32, float16 (or bfloat16 tensors). ``granularity``: ``"1x128"``
    (activations: one scale per row and 128 columns) or ``"128x128"`` (weights).
    ``power_of_two`` rounds each scale up to a power of two.

    Returns ``(values, scales)``: values ``[rows, cols]`` (``torch.float8_e4m3fn`` tensors,
    uint8 E4M3 bits for arrays) and float32 scales ``[rows, ceil(cols/128)]`` or
    ``[ceil(rows/128), ceil(cols/128)]``, with ``x ≈ values * scale`` per group and
    ``scale = max(amax, 1e-4) / 448``.
    """
    if _is_tensor(x):
        return _torch_layer().fp8_quantize(x, granularity, bool(power_of_two))
    return _tessera.fp8_quantize(x, granularity, power_of_two, backend)


def fp8_gemm(a, a_scales, b, b_scales, backend: str = "cpu"):
    """Block-scaled FP8 GEMM, ``d = a · bᵀ`` with the scales applied per 128 of K.

    ``a``: E4M3 ``[m, k]`` (``torch.float8_e4m3fn`` or uint8 bits), ``a_scales`` float32
    ``[m, ceil(k/128)]``, ``b``: E4M3 ``[n, k]``, ``b_scales`` float32
    ``[ceil(n/128), ceil(k/128)]``; ``n`` a multiple of 8, ``k`` of 16 (what
    :func:`fp8_quantize` gives: ``a`` with ``"1x128"``, ``b`` with ``"128x128"``).

    Returns ``d`` ``[m, n]``: bfloat16 tensors, float32 arrays holding bf16 values.
    """
    if _is_tensor(a):
        return _torch_layer().fp8_gemm(a, a_scales, b, b_scales)
    return _tessera.fp8_gemm(a, a_scales, b, b_scales, backend)


def fp8_gemm_grouped(a, a_scales, b, b_scales, groups, grouping: str = "contiguous",
                     backend: str = "cpu"):
    """Grouped block-scaled FP8 GEMM for mixture of experts: each group's rows of ``a`` against
    its own ``b``.

    ``grouping="contiguous"``: ``a`` ``[m, k]`` (the groups' rows stacked, every group but the
    last padded to a multiple of 128 rows), ``a_scales`` ``[m, ceil(k/128)]``, ``groups`` int32
    ``[G + 1]`` row offsets, ``d`` ``[m, n]``. ``grouping="masked"``: ``a`` ``[G, m, k]``,
    ``a_scales`` ``[G, m, ceil(k/128)]``, ``groups`` int32 ``[G]`` row counts, ``d``
    ``[G, m, n]`` (rows past a group's count are not computed: NaN for arrays, unspecified for
    tensors). ``b`` ``[G, n, k]``, ``b_scales`` ``[G, ceil(n/128), ceil(k/128)]``. On CUDA it
    needs a Hopper GPU (sm_90a), and the group layout, read on the device, must be valid
    (arrays are checked).
    """
    if _is_tensor(a):
        return _torch_layer().fp8_gemm_grouped(a, a_scales, b, b_scales, groups, grouping)
    return _tessera.fp8_gemm_grouped(a, a_scales, b, b_scales, groups, grouping, backend)


class MlaCache:
    """A paged MLA (DeepSeek-V2/V3 multi-head latent attention) KV cache that owns its pages.

    ``MlaCache(num_pages, page_size=64, latent_dim=512, rope_dim=64, format="bf16",
    device=None)``: pages of ``page_size`` token records ``[latent | rope]`` (``format="fp8"``:
    DeepSeek-V3.2's 656-byte layout). With ``device=None`` the pages live in host memory and the
    methods take numpy arrays (``backend`` picks the backend); with a CUDA ``device`` (e.g.
    ``"cuda:0"``) they are a ``torch.uint8`` tensor ``[num_pages, page_size, token_bytes]`` on
    it and the methods take CUDA tensors.

    Token slot ``s`` is page ``s // page_size``, row ``s % page_size``; a request's block table
    lists its pages.
    """

    def __init__(self, num_pages: int, page_size: int = 64, latent_dim: int = 512,
                 rope_dim: int = 64, format: str = "bf16", device: Any = None,
                 backend: str = "cpu"):
        self.layout = MlaCacheLayout(page_size, latent_dim, rope_dim, format)
        self.backend = backend
        self._host: Optional[_tessera.HostMlaCache]
        self._pages: Any
        if device is None:
            self._host = _tessera.HostMlaCache(self.layout, num_pages)
            self._pages = None
        else:
            self._host = None
            self._pages = _torch_layer().new_pages(self.layout, num_pages, device)
        self.num_pages = int(num_pages)

    @property
    def num_slots(self) -> int:
        """Token slots: ``num_pages * page_size``."""
        return self.num_pages * self.layout.page_size

    @property
    def pages(self):
        """The pages, uint8 ``[num_pages, page_size, token_bytes]``: the cache's own tensor on a
        device, a copy (numpy) in host memory."""
        return self._host.pages() if self._host is not None else self._pages

    @property
    def device(self):
        """The pages' device (``None`` in host memory)."""
        return None if self._pages is None else self._pages.device

    def append(self, latent, rope, slots) -> None:
        """Writes token ``t`` (``latent`` ``[tokens, latent_dim]``, ``rope``
        ``[tokens, rope_dim]``: bfloat16 tensors, or float32 arrays rounded to bf16) to slot
        ``slots[t]`` (int32 ``[tokens]``, distinct; negative skips the token). An FP8 cache
        quantizes each 128 latent values with a power-of-two scale."""
        if self._host is not None:
            self._host.append(_host_array(latent, "float32"), _host_array(rope, "float32"),
                              _host_array(slots, "int32"), self.backend)
        else:
            _torch_layer().mla_append(self._pages, self.layout, latent, rope, slots)

    def decode(self, q, block_table, seq_lens, softmax_scale: float,
               max_seq_len: Optional[int] = None):
        """Absorbed MLA decode: ``q`` ``[batch, s_q, heads, latent_dim + rope_dim]``
        (``[W_UKᵀ q_nope | q_pe]``; bfloat16 tensor or float32 array), ``block_table`` int32
        ``[batch, max_pages]``, ``seq_lens`` int32 ``[batch]``; query ``i`` of a request sees keys
        ``0 .. len - (s_q - 1 - i)``. ``max_seq_len`` bounds the lengths (it only guides how the
        keys are split over the GPU; default ``max_pages * page_size``).

        Returns ``(o, lse)``: ``o`` ``[batch, s_q, heads, latent_dim]`` (bfloat16 tensor,
        float32 array of bf16 values) and ``lse`` float32 ``[batch, heads, s_q]`` (natural log;
        ``-inf`` and ``o = 0`` where a query sees no key). On CUDA the table and lengths are
        checked by the kernel: a bad entry gives NaN outputs for its request."""
        if self._host is not None:
            return self._host.decode(_host_array(q, "float32"), _host_array(block_table, "int32"),
                                     _host_array(seq_lens, "int32"), float(softmax_scale),
                                     self.backend)
        return _torch_layer().mla_decode(self._pages, self.layout, q, block_table, seq_lens,
                                       float(softmax_scale), max_seq_len)

    def read_token(self, slot: int):
        """The token at ``slot`` decoded to float32 ``(latent, rope)`` (host caches)."""
        if self._host is None:
            raise UnsupportedError("read_token: read the pages of a device cache with `pages`")
        return self._host.read_token(slot)

    def __repr__(self) -> str:
        where = "host" if self._pages is None else str(self._pages.device)
        return f"MlaCache(num_pages={self.num_pages}, layout={self.layout!r}, device={where})"


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else type(x).__name__


def _host_array(x: Any, dtype: str):
    """CPU torch tensors become numpy arrays (float tensors as float32, bf16 included); numpy
    arrays and anything else are passed on as they are (the extension checks them)."""
    if _is_tensor(x):
        if x.device.type != "cpu":
            raise InvalidArgumentError(
                f"mla_cache: a host cache takes numpy arrays or CPU tensors, got a tensor on "
                f"{x.device} (make the cache with device=...)")
        if x.is_floating_point() and dtype == "float32":
            x = x.float()
        return x.detach().numpy()
    return x


def to_flex_block_mask(mask: BlockMask, batch: Optional[int] = None,
                       heads: Optional[int] = None, device: Any = "cpu"):
    """The mask as FlexAttention's ``torch.nn.attention.flex_attention.BlockMask`` (the same
    blocks; padded keys past ``mask.tokens`` are masked by a ``mask_mod``), for comparing with
    or running through ``flex_attention``. ``batch``/``heads`` of ``None`` broadcast."""
    return _torch_layer().to_flex_block_mask(mask, batch, heads, device)
