"""F32, F16 and BF16 rows, rounded exactly as ggml rounds them.

- F16: round to nearest even, overflow to infinity, every NaN becomes a quiet NaN 0x7e00
  with its sign (ggml_compute_fp32_to_fp16).
- BF16: round to nearest even on the upper 16 bits; a NaN keeps its upper bits and is
  forced quiet (ggml_compute_fp32_to_bf16).

The numpy code is the readable reference; quant._kquants converts faster when built.
"""
import numpy as np

from ._threads import split_rows
from .backend import compiled_or_none
from .registry import register
from .types import QuantType

_CHUNK = 1 << 16     # values per step: bounds the temporaries


def quantize_f32(x, imatrix=None, threads=1):
    return np.array(x, dtype=np.float32, order="C").view(np.uint8)    # a copy, never a view of x


def _compiled_rows(compiled, qtype, x, threads):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((x.shape[0], 2 * x.shape[1]), dtype=np.uint8)
    tid = int(qtype)
    return split_rows(lambda xp, op, rows: compiled.legacy(tid, xp, None, op, rows, x.shape[1]),
                      x, out, threads)


def dequantize_f32(data):
    return np.ascontiguousarray(data, dtype=np.uint8).view(np.float32)


def _f16_bits(x):
    bits = x.view(np.uint32)
    with np.errstate(over="ignore", invalid="ignore"):
        h = x.astype(np.float16).view(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    if nan.any():
        h = np.where(nan, ((bits >> 16) & 0x8000) | 0x7E00, h).astype(np.uint16)
    return h


def _bf16_bits(x):
    bits = x.view(np.uint32)
    rounded = ((bits.astype(np.uint64) + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((bits >> 16) | 64).astype(np.uint16), rounded)


def _rowwise(x, convert):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, dtype=np.uint16)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for s in range(0, flat_in.size, _CHUNK):
        flat_out[s:s + _CHUNK] = convert(flat_in[s:s + _CHUNK])
    return out.view(np.uint8)


def quantize_f16(x, imatrix=None, threads=1, backend="auto"):
    compiled = compiled_or_none(backend)
    if compiled is not None and np.ndim(x) == 2:
        return _compiled_rows(compiled, QuantType.F16, x, threads)
    return _rowwise(x, _f16_bits)


def dequantize_f16(data):
    return np.ascontiguousarray(data, dtype=np.uint8).view(np.float16).astype(np.float32)


def quantize_bf16(x, imatrix=None, threads=1, backend="auto"):
    compiled = compiled_or_none(backend)
    if compiled is not None and np.ndim(x) == 2:
        return _compiled_rows(compiled, QuantType.BF16, x, threads)
    return _rowwise(x, _bf16_bits)


def dequantize_bf16(data):
    bits = np.ascontiguousarray(data, dtype=np.uint8).view(np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


register(QuantType.F32, quantize_f32, dequantize_f32)
register(QuantType.F16, quantize_f16, dequantize_f16)
register(QuantType.BF16, quantize_bf16, dequantize_bf16)
