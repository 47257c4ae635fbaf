"""ggml itself, through ctypes on llama-cpp-python's libggml-base.so: the byte oracle.

ggml_quantize(x, qtype, imatrix=None) -> uint8 [rows, bytes_per_row] from
ggml_quantize_chunk; ggml_dequantize(data, qtype, n) -> float32 from the type's to_float.
qtype is any int-like ggml type id (quant.QuantType, gguf.GGMLQuantizationType, int).
"""
import ctypes
import functools

import numpy as np

from realdata import ggml_base_library


class _TypeTraits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@functools.cache
def lib():
    lib = ctypes.CDLL(str(ggml_base_library()))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    return lib


def row_size(qtype, n_per_row):
    return int(lib().ggml_row_size(int(qtype), int(n_per_row)))


def ggml_quantize(x, qtype, imatrix=None, start_row=0, nrows=None, out=None):
    """ggml_quantize_chunk on float32 [rows, n]; returns uint8 [rows, row_size].

    start_row/nrows/out let a caller quantize a slice of rows into a shared output, as
    llama.cpp's threads do."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    rows, n = x.shape
    qtype = int(qtype)
    if out is None:
        out = np.zeros((rows, row_size(qtype, n)), dtype=np.uint8)
    qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    nrows = rows - start_row if nrows is None else nrows
    lib().ggml_quantize_init(qtype)
    lib().ggml_quantize_chunk(qtype, x.ctypes.data, out.ctypes.data, start_row * n, nrows, n,
                              None if qw is None else qw.ctypes.data)
    return out


def ggml_dequantize(data, qtype, n):
    """The type's to_float on uint8 rows [rows, row_size]; returns float32 [rows, n]."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if data.ndim == 1:
        data = data[None, :]
    traits = lib().ggml_get_type_traits(int(qtype)).contents
    if not traits.to_float:
        raise RuntimeError(f"ggml type {int(qtype)} has no to_float")
    out = np.empty((data.shape[0], n), dtype=np.float32)
    _TO_FLOAT(traits.to_float)(data.ctypes.data, out.ctypes.data, out.size)
    return out
