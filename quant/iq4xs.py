"""IQ4_XS: IQ4_NL's non-linear table in 256-value super-blocks with 6-bit block scales.

Layout of a super-block (136 bytes): fp16 d; u16 scales_h (2 high bits of each of the 8
block scales); 4 bytes scales_l (their low nibbles, two per byte); 128 bytes of 4-bit
indices, 16 per 32-value block (low nibbles = values 0..15, high = 16..31).

ggml (quantize_iq4_xs -> quantize_row_iq4_nl_impl(256, 32, ..., ntry 7)): weights are x^2,
or with an importance vector imatrix[j] * sqrt(sigma2 + x^2), sigma2 being twice the
super-block's mean square; each block finds its scale as IQ4_NL does (quant.iq4nl.
search_scales); the block scale of largest magnitude (the first one) sets d = -max/32;
block scale l = nearest_int(scale / d) in [-32, 31], stored as l + 32; every value then
takes the table entry nearest to x / (d * l), with d unrounded.

This numpy code is the readable reference; quant._kquants runs the same arithmetic.
"""
import numpy as np

from ._threads import split_rows
from .backend import compiled_or_none
from .iq4nl import KVALUES, best_index, search_scales
from .legacy import check_imatrix, fp16_bytes, pack_nibbles, signed_abs_max
from .search import F32, nearest_int, seq_sum
from .types import QuantType, block_size, type_size

QK_K = block_size(QuantType.IQ4_XS)
BLOCK_BYTES = type_size(QuantType.IQ4_XS)
QB = 32                               # values per block inside a super-block
_NB = QK_K // QB
_KV = KVALUES.astype(F32)
_CHUNK = 256                          # super-blocks per step: bounds the [tries, blocks, 32] arrays


def _superblocks(x, qw):
    """float32 [S, 256], importance [S, 256] or None -> uint8 [S, 136]."""
    S = x.shape[0]
    with np.errstate(all="ignore"):
        if qw is None:
            w = x * x
        else:
            sigma2 = seq_sum(np.ascontiguousarray((x * x).T)) * (F32(2) / F32(QK_K))
            w = qw * np.sqrt(sigma2[:, None] + x * x)
        xb = x.reshape(S * _NB, QB)
        scales = search_scales(xb, w.reshape(S * _NB, QB)).reshape(S, _NB)
        max_scale, _ = signed_abs_max(scales)
        d = (-max_scale / F32(32)).astype(F32)
        idv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
        ls = np.clip(nearest_int(idv[:, None] * scales), -32, 31)
        dl = (d[:, None] * ls.astype(F32)).astype(F32)
        idl = np.where(dl != 0, F32(1) / dl, F32(0)).astype(F32)
        L = best_index(idl.reshape(-1, 1) * xb)
    u = (ls + 32).astype(np.uint16)                                   # 6-bit, [S, 8]
    scales_l = ((u[:, 0::2] & 0xF) | ((u[:, 1::2] & 0xF) << 4)).astype(np.uint8)
    scales_h = ((u >> 4) << (2 * np.arange(_NB, dtype=np.uint16))).sum(axis=1).astype("<u2")
    return np.concatenate([fp16_bytes(d), scales_h.view(np.uint8).reshape(S, 2), scales_l,
                           pack_nibbles(L).reshape(S, _NB * 16)], axis=1)


def quantize_numpy(x, imatrix=None):
    x = np.ascontiguousarray(x, dtype=F32)
    rows, n = x.shape
    qw = None if imatrix is None else check_imatrix("IQ4_XS", imatrix, n)
    xs = x.reshape(-1, QK_K)
    nsb = n // QK_K
    out = np.empty((xs.shape[0], BLOCK_BYTES), dtype=np.uint8)
    for s in range(0, xs.shape[0], _CHUNK):
        e = min(s + _CHUNK, xs.shape[0])
        w = None if qw is None else qw.reshape(nsb, QK_K)[np.arange(s, e) % nsb]
        out[s:e] = _superblocks(xs[s:e], w)
    return out.reshape(rows, nsb * BLOCK_BYTES)


def dequantize(data):
    """gguf-py's arithmetic: d * (l - 32) in float32, times the table entry."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    rows = data.shape[0]
    blk = data.reshape(-1, BLOCK_BYTES)
    S = blk.shape[0]
    d = np.ascontiguousarray(blk[:, :2]).view(np.float16).astype(F32)            # [S, 1]
    scales_h = np.ascontiguousarray(blk[:, 2:4]).view("<u2").astype(np.int32)    # [S, 1]
    scales_l = blk[:, 4:8].astype(np.int32)
    ib = np.arange(_NB)
    ls = ((scales_l[:, ib // 2] >> (4 * (ib % 2))) & 0xF) | (((scales_h >> (2 * ib)) & 3) << 4)
    dl = (d * (ls - 32).astype(F32)).reshape(S, _NB, 1)
    qs = blk[:, 8:].reshape(S, _NB, 16)
    idx = np.concatenate([qs & 0xF, qs >> 4], axis=2)
    with np.errstate(invalid="ignore", over="ignore"):
        return (dl * _KV[idx]).reshape(rows, -1)


def has_compiled():
    compiled = compiled_or_none()
    return compiled is not None and hasattr(compiled, "iq4_xs")


def quantize(x, imatrix=None, threads=1, backend="auto"):
    """float32 [rows, n] (n a multiple of 256) -> IQ4_XS super-blocks, uint8 [rows, n/256*136]."""
    x = np.ascontiguousarray(x, dtype=F32)
    compiled = compiled_or_none(backend)
    if compiled is None or not hasattr(compiled, "iq4_xs"):
        return quantize_numpy(x, imatrix)
    rows, n = x.shape
    qw = None if imatrix is None else check_imatrix("IQ4_XS", imatrix, n)
    out = np.empty((rows, n // QK_K * BLOCK_BYTES), dtype=np.uint8)
    return split_rows(lambda xp, op, r: compiled.iq4_xs(xp, qw, op, r, n), x, out, threads)


def _register():
    from .registry import register
    register(QuantType.IQ4_XS, lambda x, imatrix, threads: quantize(x, imatrix, threads), dequantize)


_register()
