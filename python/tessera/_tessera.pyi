"""Type stubs of the extension module (`tessera._tessera`). Use the `tessera` package's
functions: they take numpy arrays and torch tensors alike. The `cuda_*` functions are internal
(device addresses of tensors the package has checked)."""

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

class TesseraError(Exception):
    """Base class of every error Tessera raises."""

class InvalidArgumentError(TesseraError):
    """An argument does not satisfy the op's contract; the message names it. Nothing was
    written."""

class UnsupportedError(TesseraError):
    """The backend does not implement this op or variant."""

class BackendUnavailableError(TesseraError):
    """The backend cannot be used on this machine."""

class DeviceError(TesseraError):
    """The device or its driver failed."""

class OutOfMemoryError(DeviceError):
    """The device or the host could not provide the memory asked for."""

def info() -> Dict[str, Any]:
    """`{"version": str, "backends": [{"name", "compiled", "usable", "reason", "devices",
    "details", "software"}, ...]}`."""

class BlockMask:
    """A block-sparse attention mask: BSR over `ceil(tokens / block_size)` blocks per side.
    Each mask gets a key when it is built (`key`), by which `mask_from_key` finds it."""

    @staticmethod
    def from_bsr(tokens: int, block_size: int, indptr: npt.NDArray[np.int32],
                 indices: npt.NDArray[np.int32]) -> "BlockMask": ...
    @staticmethod
    def dense(tokens: int, block_size: int) -> "BlockMask": ...
    @property
    def tokens(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def num_blocks(self) -> int: ...
    @property
    def nnz(self) -> int: ...
    @property
    def density(self) -> float: ...
    @property
    def key(self) -> int:
        """Positive, given when the mask is built, never reused in the process (PyTorch's
        custom op `tessera::sparse_attention` takes it in place of the mask)."""
    def to_bsr(self) -> Tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
        """`(indptr, indices)`, int32."""
    def to_dense(self) -> npt.NDArray[np.bool_]:
        """bool `[num_blocks, num_blocks]`."""

def mask_from_key(key: int) -> Optional[BlockMask]:
    """The mask whose `key` this is (a `BlockMask` sharing its blocks and device copies), or
    `None` when no mask alive has that key (it was dropped, or never built)."""

class RadialMask(BlockMask):
    """The radial attention mask of `frames` frames of `tokens_per_frame` tokens, then
    `extra_tokens` dense tokens."""

    def __init__(self, frames: int, tokens_per_frame: int, extra_tokens: int = 0,
                 block_size: int = 128, decay: float = 0.95, sink: bool = False) -> None: ...
    @property
    def frames(self) -> int: ...
    @property
    def tokens_per_frame(self) -> int: ...
    @property
    def extra_tokens(self) -> int: ...
    @property
    def decay(self) -> float: ...
    @property
    def sink(self) -> bool: ...

class MlaCacheLayout:
    """Pages of `page_size` token records `[latent | rope]`, bf16 or DeepSeek-V3.2's FP8."""

    def __init__(self, page_size: int = 64, latent_dim: int = 512, rope_dim: int = 64,
                 format: str = "bf16") -> None: ...
    @property
    def page_size(self) -> int: ...
    @property
    def latent_dim(self) -> int: ...
    @property
    def rope_dim(self) -> int: ...
    @property
    def format(self) -> str: ...
    @property
    def token_bytes(self) -> int: ...
    @property
    def page_bytes(self) -> int: ...

class HostMlaCache:
    """A paged MLA cache in host memory (the numpy API of `tessera.MlaCache`)."""

    def __init__(self, layout: MlaCacheLayout, num_pages: int) -> None: ...
    @property
    def layout(self) -> MlaCacheLayout: ...
    @property
    def num_pages(self) -> int: ...
    @property
    def num_slots(self) -> int: ...
    def pages(self) -> npt.NDArray[np.uint8]: ...
    def read_token(self, slot: int) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
    def append(self, latent: npt.NDArray[np.float32], rope: npt.NDArray[np.float32],
               slots: npt.NDArray[np.int32], backend: str = "cpu") -> None: ...
    def decode(self, q: npt.NDArray[np.float32], block_table: npt.NDArray[np.int32],
               seq_lens: npt.NDArray[np.int32], softmax_scale: float,
               backend: str = "cpu") -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...

def sparse_attention(q: npt.NDArray[Any], k: npt.NDArray[Any], v: npt.NDArray[Any],
                     mask: BlockMask, softmax_scale: Optional[float] = None,
                     backend: str = "cpu") -> Tuple[npt.NDArray[Any], npt.NDArray[np.float32]]: ...
def fp8_quantize(x: npt.NDArray[Any], granularity: str = "1x128", power_of_two: bool = False,
                 backend: str = "cpu") -> Tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]: ...
def fp8_scales_shape(rows: int, cols: int, granularity: str) -> Tuple[int, int]: ...
def fp8_gemm(a: npt.NDArray[np.uint8], a_scales: npt.NDArray[np.float32],
             b: npt.NDArray[np.uint8], b_scales: npt.NDArray[np.float32],
             backend: str = "cpu") -> npt.NDArray[np.float32]: ...
def fp8_gemm_grouped(a: npt.NDArray[np.uint8], a_scales: npt.NDArray[np.float32],
                     b: npt.NDArray[np.uint8], b_scales: npt.NDArray[np.float32],
                     groups: npt.NDArray[np.int32], grouping: str = "contiguous",
                     backend: str = "cpu") -> npt.NDArray[np.float32]: ...

Span = Tuple[int, int]

def cuda_sparse_attention(device: int, stream: int, dtype: str,
                          shape: Tuple[int, int, int, int], softmax_scale: float,
                          mask: BlockMask, q: Span, k: Span, v: Span, o: Span,
                          lse: Span) -> None: ...
def cuda_fp8_quantize(device: int, stream: int, x_dtype: str, shape: Tuple[int, int],
                      granularity: str, power_of_two: bool, x: Span, values: Span,
                      scales: Span) -> None: ...
def cuda_fp8_gemm(device: int, stream: int, grouping: str, groups: int,
                  mnk: Tuple[int, int, int], a: Span, a_scales: Span, b: Span, b_scales: Span,
                  group_layout: Span, d: Span) -> None: ...
def cuda_mla_append(device: int, stream: int, layout: MlaCacheLayout, tokens: int, cache: Span,
                    latent: Span, rope: Span, slots: Span) -> None: ...
def cuda_mla_decode_workspace_len(device: int, layout: MlaCacheLayout,
                                  shape: Tuple[int, int, int, int], softmax_scale: float,
                                  max_seq_len: int) -> int: ...
def cuda_mla_decode(device: int, stream: int, layout: MlaCacheLayout,
                    shape: Tuple[int, int, int, int], softmax_scale: float, max_seq_len: int,
                    cache: Span, q: Span, block_table: Span, seq_lens: Span, o: Span, lse: Span,
                    workspace: Span) -> None: ...
