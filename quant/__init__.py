"""Block quantization with ggml's exact bytes (numpy only; an optional compiled helper).

    quantize(x, qtype, imatrix=None)        float32 [rows, n] -> uint8 [rows, bytes_per_row]
    dequantize(data, qtype, n_per_row=None) uint8 [rows, bytes_per_row] -> float32 [rows, n]
    type_info(qtype)                        block size, bytes per block, functions

`qtype` is a QuantType, a gguf.GGMLQuantizationType (same ids), an int, or a name
("q4_k", "Q8_0"). `imatrix` is the per-column importance vector of ggml's quantize_*
functions (float32 [n]); types whose ggml quantizer ignores it ignore it too.
"""
import importlib
import threading

import numpy as np

from .errors import QuantError
from .registry import TypeInfo, lookup, register, registered, registers, to_qtype
from .types import QuantType

__all__ = ["QuantError", "QuantType", "TypeInfo", "quantize", "dequantize", "type_info",
           "register", "registers", "to_qtype", "types"]

_BLOCK_MODULES = ("floats", "legacy", "iq4nl", "iq4xs", "kquants", "ternary", "mxfp4", "nvfp4", "q1_0")
_loaded = False
_load_lock = threading.Lock()


def _load_block_modules():
    """Import the block families once; each registers its types. A module that is not
    there is skipped (its types are then unavailable); one that is broken raises."""
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if _loaded:
            return
        for name in _BLOCK_MODULES:
            module = f"{__name__}.{name}"
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
        _loaded = True


def type_info(qtype) -> TypeInfo:
    _load_block_modules()
    return lookup(qtype)


def types() -> list:
    """Every type that quantize/dequantize accept, in id order."""
    _load_block_modules()
    return registered()


def _as_rows(x, info):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise QuantError(f"{info.name}: expected floating-point values, got {x.dtype}; "
                         "convert the tensor to float32 first")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    elif x.ndim != 2:
        x = x.reshape(-1, x.shape[-1])
    info.check_row_length(x.shape[1])
    return x


def quantize(x, qtype, imatrix=None, threads=1):
    """float32 [rows, n_per_row] -> uint8 [rows, bytes_per_row], the bytes ggml writes.

    threads > 1 splits the rows over threads where the compiled helper is built."""
    info = type_info(qtype)
    x = _as_rows(x, info)
    if imatrix is not None:
        imatrix = np.ascontiguousarray(np.asarray(imatrix, dtype=np.float32).reshape(-1))
        if imatrix.shape[0] != x.shape[1]:
            raise QuantError(f"{info.name}: importance vector has {imatrix.shape[0]} entries but rows "
                             f"have {x.shape[1]}; use the imatrix entry recorded for this tensor")
    if x.size == 0:
        return np.empty((x.shape[0], info.row_bytes(x.shape[1])), dtype=np.uint8)
    return info.quantize(x, imatrix, max(1, int(threads)))


def dequantize(data, qtype, n_per_row=None):
    """uint8 [rows, bytes_per_row] (or the same bytes in any shape with n_per_row) -> float32 [rows, n]."""
    info = type_info(qtype)
    data = np.asarray(data)
    data = np.ascontiguousarray(data).view(np.uint8) if data.dtype != np.uint8 else np.ascontiguousarray(data)
    if n_per_row is not None:
        info.check_row_length(int(n_per_row))
        rb = info.row_bytes(int(n_per_row))
        if data.size % rb:
            raise QuantError(f"{info.name}: {data.size} bytes are not whole rows of {n_per_row} values "
                             f"({rb} bytes each); check the tensor's type and shape")
        data = data.reshape(-1, rb)
    elif data.ndim != 2:
        data = data.reshape(1, -1) if data.ndim < 2 else data.reshape(-1, data.shape[-1])
    if data.shape[1] % info.type_size:
        raise QuantError(f"{info.name}: {data.shape[1]} bytes per row is not a whole number of "
                         f"{info.type_size}-byte blocks; check the tensor's type and shape")
    if data.size == 0:
        return np.empty((data.shape[0], data.shape[1] // info.type_size * info.block_size), dtype=np.float32)
    return info.dequantize(data)
