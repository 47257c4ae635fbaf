"""MXFP4: 32 values as 4-bit E2M1 codes under one power-of-two scale (E8M0), ggml's bytes.

Block (17 bytes): the exponent byte e, then 16 bytes of nibbles (low = values 0..15,
high = 16..31). ggml (quantize_row_mxfp4_ref; no importance vector): e = (uint8)(floor(
log2f(max|x|)) - 2 + 127), 0 for an all-zero block; d = 2^(e - 128) (ggml_e8m0_to_fp32_half);
each value takes the first code whose kvalues_mxfp4[code] * d is nearest to it.
"""
import numpy as np

from .backend import quantize_in_blocks
from .legacy import c_to_int8, pack_nibbles
from .search import F32
from .types import QuantType, type_size

BLOCK_BYTES = type_size(QuantType.MXFP4)
KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)
_KV = KVALUES.astype(F32)
_CHUNK = 1 << 13


def e8m0_half(e):
    """ggml_e8m0_to_fp32_half: 2^(e - 128) as float32, for uint8 e (subnormal for e < 2)."""
    e = np.asarray(e, dtype=np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << 23).astype(np.uint32)
    return bits.view(F32)


def _exponent(amax):
    """(uint8)(floorf(log2f(amax)) - 2 + 127): log2f correctly rounded to float32 (from float64),
    the float-to-uint8 cast as x86 does it (through int32, low byte kept)."""
    with np.errstate(divide="ignore"):
        lg = np.log2(amax.astype(np.float64)).astype(F32)
    e = np.floor(lg) - F32(2) + F32(127)
    return np.where(amax > 0, c_to_int8(e.astype(F32)) & 0xFF, 0).astype(np.uint8)


def nearest_codes(x, d):
    """best_index_mxfp4: for values x [B, k] and scales d [B], the first code whose
    kvalues_mxfp4[code] * d is nearest (NVFP4 uses it too)."""
    with np.errstate(all="ignore"):
        err = np.abs(_KV[None, None, :] * d[:, None, None] - x[:, :, None])     # [B, k, 16]
    return np.argmin(err, axis=2)                                               # first nearest


def _blocks(x):
    with np.errstate(all="ignore"):
        amax = np.max(np.abs(x), axis=1).astype(F32)
        e = _exponent(amax)
        d = e8m0_half(e)
        L = nearest_codes(x, d)
    return np.concatenate([e[:, None], pack_nibbles(L)], axis=1)


def quantize(x, imatrix=None, threads=1, backend="auto"):
    """float32 [rows, n] (n a multiple of 32) -> MXFP4; an importance vector does not apply."""
    return quantize_in_blocks(QuantType.MXFP4, x, _blocks, _CHUNK, threads, backend)


def dequantize(data):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    blk = data.reshape(-1, BLOCK_BYTES)
    d = e8m0_half(blk[:, 0])[:, None]
    qs = blk[:, 1:]
    idx = np.concatenate([qs & 0xF, qs >> 4], axis=1)
    return (_KV[idx] * d).reshape(data.shape[0], -1)


def _register():
    from .registry import register
    register(QuantType.MXFP4, quantize, dequantize)


_register()
