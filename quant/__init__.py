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

_BLOCK_MODULES = ("floats", "legacy", "iq4nl", "iq4xs", "kquants", "ternary", "mxfp4", "nvfp4", "q1_0", "iqgrid")
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
    _check_required_imatrix(info, imatrix)
    if x.size == 0:
        return np.empty((x.shape[0], info.row_bytes(x.shape[1])), dtype=np.uint8)
    return info.quantize(x, imatrix, max(1, int(threads)))


def _check_required_imatrix(info, imatrix):
    from .types import requires_imatrix

    if imatrix is None and requires_imatrix(info.qtype):
        raise QuantError(f"{info.name}: ggml quantizes this type only with an importance vector; "
                         "pass an imatrix (`convkit imatrix` makes one) or choose another type")


SOURCE_TYPES = {0: 4, 1: 2, 30: 2}   # F32, F16, BF16: bytes per value quantize_source reads


def reads_source(qtype, src_type) -> bool:
    """Whether quantize_source takes `src_type` values straight to `qtype` (the compiled helper
    is built and holds the type)."""
    from .backend import compiled_or_none

    compiled = compiled_or_none()
    return (compiled is not None and hasattr(compiled, "from_source") and int(src_type) in SOURCE_TYPES
            and compiled.geometry(int(type_info(qtype).qtype)) is not None)


def quantize_source(src, src_type, qtype, n_per_row, imatrix=None, threads=1, out=None):
    """Rows of F16, BF16 or F32 values as stored (uint8, whole rows) -> (the bytes of `qtype`,
    uint8 [rows, bytes_per_row], or into `out`; the first row holding an infinite or NaN value,
    or -1). The compiled helper widens a few rows at a time, so no float32 copy of the whole is
    made; the bytes equal quantize()'s of the same values. None where the helper is not built
    or does not hold `qtype` (quantize() is then the way)."""
    info = type_info(qtype)
    if not reads_source(info.qtype, src_type):
        return None
    from .backend import compiled
    n = int(n_per_row)
    info.check_row_length(n)
    src = np.asarray(src).reshape(-1).view(np.uint8)
    row_in = n * SOURCE_TYPES[int(src_type)]
    if src.size % row_in:
        raise QuantError(f"{info.name}: {src.size} source bytes are not whole rows of {n} values")
    src = src.reshape(-1, row_in)
    rows = src.shape[0]
    if imatrix is not None:
        imatrix = np.ascontiguousarray(np.asarray(imatrix, dtype=np.float32).reshape(-1))
        if imatrix.shape[0] != n:
            raise QuantError(f"{info.name}: importance vector has {imatrix.shape[0]} entries but rows "
                             f"have {n}; use the imatrix entry recorded for this tensor")
    _check_required_imatrix(info, imatrix)
    if out is None:
        out = np.empty((rows, info.row_bytes(n)), dtype=np.uint8)
    out = out.reshape(rows, info.row_bytes(n))
    tid, sid = int(info.qtype), int(src_type)
    from ._threads import row_results
    try:
        found = row_results(lambda sp, op, r: compiled.from_source(tid, sid, sp, imatrix, op, r, n),
                            src, out, max(1, int(threads)))
    except ValueError as exc:          # the grid types' search on values too large (ggml aborts)
        raise QuantError(f"{info.name}: {exc}; rescale the tensor or keep it in F16/F32") from None
    bad = [a + r for a, r in found if r >= 0]
    return out, (min(bad) if bad else -1)


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
