"""Q1_0: 128 values as their signs under one fp16 scale, ggml's bytes.

Block (18 bytes): fp16 d, then 16 bytes of bits (bit j % 8 of byte j / 8 is value j).
ggml (quantize_row_q1_0_ref; an importance vector is ignored): d = (sum of |x|, in order) /
128; the bit is set when x >= 0. Dequantization gives d or -d.
"""
import numpy as np

from .backend import quantize_in_blocks
from .legacy import fp16_bytes
from .search import F32, seq_sum
from .types import QuantType, block_size, type_size

QK = block_size(QuantType.Q1_0)
BLOCK_BYTES = type_size(QuantType.Q1_0)
_CHUNK = 1 << 13


def _blocks(x):
    with np.errstate(all="ignore"):
        d = seq_sum(np.ascontiguousarray(np.abs(x).T)) / F32(QK)
    bits = np.packbits(x >= 0, axis=1, bitorder="little")
    return np.concatenate([fp16_bytes(d.astype(F32)), bits], axis=1)


def quantize(x, imatrix=None, threads=1):
    """float32 [rows, n] (n a multiple of 128) -> Q1_0."""
    return quantize_in_blocks(QuantType.Q1_0, x, _blocks, _CHUNK, compiled_kernel=False)


def dequantize(data):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    blk = data.reshape(-1, BLOCK_BYTES)
    d = np.ascontiguousarray(blk[:, :2]).view(np.float16).astype(F32)
    bits = np.unpackbits(blk[:, 2:], axis=1, bitorder="little").astype(bool)
    return np.where(bits, d, -d).reshape(data.shape[0], -1)


def _register():
    from .registry import register
    register(QuantType.Q1_0, quantize, dequantize)


_register()
