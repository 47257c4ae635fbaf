"""TQ1_0 and TQ2_0: ternary super-blocks of 256 values (BitNet b1.58, TriLMs), ggml's exact bytes.

Both take d = max|x| of the super-block and store each value as round(x / d) in {-1, 0, 1}
(lroundf: half away from zero) plus one. ggml ignores an importance vector for them.
- TQ2_0 (66 bytes): 64 bytes of 2-bit fields, then fp16 d. Byte 32c + m holds values
  128c + 32n + m at bits 2n (n = 0..3).
- TQ1_0 (54 bytes): 48 bytes of five trits each, 4 bytes of four trits each, then fp16 d.
  A byte holds its trits as a base-3 number (first trit most significant) scaled to
  0..255 by ceil(q * 256 / 243). Bytes 0..31 take values m + 32n (n = 0..4), bytes 32..47
  values 160 + m + 16n, the 4 last bytes values 240 + j + 4n (n = 0..3, then one zero trit).
"""
import numpy as np

from .backend import quantize_in_blocks
from .legacy import c_roundf, fp16_bytes
from .search import F32
from .types import QuantType, block_size, type_size

QK_K = block_size(QuantType.TQ2_0)
_CHUNK = 4096                 # super-blocks per step


def _trits(x):
    """float32 [S, 256] -> (d [S], trits 0..2 as int32 [S, 256]) as ggml computes them."""
    with np.errstate(all="ignore"):
        d = np.max(np.abs(x), axis=1).astype(F32)
        idv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
        t = c_roundf(x * idv[:, None]).astype(np.int32) + 1
    return d, t


def _tq2_0(x):
    d, t = _trits(x)
    S = x.shape[0]
    t = (t & 3).reshape(S, 2, 4, 32)                                  # [chunk c, field n, m]
    qs = (t << (2 * np.arange(4))[None, None, :, None]).sum(axis=2).astype(np.uint8).reshape(S, 64)
    return np.concatenate([qs, fp16_bytes(d)], axis=1)


def _pack_base3(trits):
    """[..., k] trits (first most significant) -> bytes scaled as ggml does: ceil(q * 256 / 243)."""
    q = np.zeros(trits.shape[:-1], dtype=np.int32)
    for i in range(trits.shape[-1]):
        q = q * 3 + trits[..., i]
    return ((q * 256 + 242) // 243).astype(np.uint8)


def _tq1_0(x):
    d, t = _trits(x)
    S = x.shape[0]
    first = _pack_base3(np.moveaxis(t[:, :160].reshape(S, 5, 32), 1, 2))      # [S, 32]
    second = _pack_base3(np.moveaxis(t[:, 160:240].reshape(S, 5, 16), 1, 2))  # [S, 16]
    last = np.moveaxis(t[:, 240:].reshape(S, 4, 4), 1, 2)                     # [S, j, n]
    last = np.concatenate([last, np.zeros((S, 4, 1), np.int32)], axis=2)     # the fifth trit is 0
    return np.concatenate([first, second, _pack_base3(last), fp16_bytes(d)], axis=1)


def _quantize(blocks, qtype, x, threads, backend):
    return quantize_in_blocks(qtype, x, blocks, _CHUNK, threads, backend)


def quantize_tq2_0(x, imatrix=None, threads=1, backend="auto"):
    """float32 [rows, n] (n a multiple of 256) -> TQ2_0; an importance vector does not apply."""
    return _quantize(_tq2_0, QuantType.TQ2_0, x, threads, backend)


def quantize_tq1_0(x, imatrix=None, threads=1, backend="auto"):
    """float32 [rows, n] (n a multiple of 256) -> TQ1_0; an importance vector does not apply."""
    return _quantize(_tq1_0, QuantType.TQ1_0, x, threads, backend)


def _d(blk):
    return np.ascontiguousarray(blk[:, -2:]).view(np.float16).astype(F32)        # [S, 1]


def dequantize_tq2_0(data):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    blk = data.reshape(-1, type_size(QuantType.TQ2_0))
    qs = blk[:, :64].reshape(-1, 2, 1, 32)
    q = ((qs >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3).astype(np.int8) - 1
    with np.errstate(invalid="ignore"):          # an inf d times 0 is NaN, as in ggml
        return (q.reshape(blk.shape[0], QK_K).astype(F32) * _d(blk)).reshape(data.shape[0], -1)


def _unpack_base3(b, k):
    """ggml's digit extraction: trit n of byte b is ((uint8)(b * 3^n) * 3) >> 8; [..., bytes] -> [..., k, bytes]."""
    pow3 = np.array([1, 3, 9, 27, 81, 243], dtype=np.uint16)[:k]
    q = (b[..., None, :].astype(np.uint16) * pow3[:, None]) & 0xFF
    return ((q * 3) >> 8).astype(np.int8) - 1


def dequantize_tq1_0(data):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    blk = data.reshape(-1, type_size(QuantType.TQ1_0))
    S = blk.shape[0]
    parts = [_unpack_base3(blk[:, :32], 5).reshape(S, 160), _unpack_base3(blk[:, 32:48], 5).reshape(S, 80),
             _unpack_base3(blk[:, 48:52], 4).reshape(S, 16)]
    with np.errstate(invalid="ignore"):
        return (np.concatenate(parts, axis=1).astype(F32) * _d(blk)).reshape(data.shape[0], -1)


def _register():
    from .registry import register
    register(QuantType.TQ1_0, quantize_tq1_0, dequantize_tq1_0)
    register(QuantType.TQ2_0, quantize_tq2_0, dequantize_tq2_0)


_register()
