"""IQ4_NL: 32-value blocks of 4-bit indices into a fixed non-linear table, one fp16 scale.

ggml (quantize_iq4_nl -> quantize_row_iq4_nl_impl with ntry 7): weights are x^2, or with
an importance vector imatrix[j] * sqrt(sigma2 + x^2) where sigma2 is twice the block's
mean square; the scale starts at max/127 and 15 trial scales (itry - 127)/max may replace
it on a strict improvement of sumqx^2/sumq2; every value then takes the nearest table
entry for the final scale (best_index_int8).

This numpy code is the readable reference, vectorized over blocks; quant._kquants runs
the same arithmetic when it is built.
"""
import numpy as np

from ._threads import split_rows
from .backend import compiled_or_none
from .errors import QuantError
from .legacy import check_imatrix, fp16_bytes, pack_nibbles, signed_abs_max
from .search import F32, GROUP_MAX_EPS, seq_sum
from .types import QuantType, block_size, type_size

QK = block_size(QuantType.IQ4_NL)
BLOCK_BYTES = type_size(QuantType.IQ4_NL)
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_KV = KVALUES.astype(F32)
_NTRY = 7
_CHUNK_BLOCKS = 1 << 10           # bounds the [tries, blocks, 32] work arrays


def best_index(v):
    """ggml best_index_int8(16, KVALUES, v) for every element of float32 v."""
    mu = np.clip(np.searchsorted(_KV, v, side="right"), 1, 15)   # KV[mu-1] <= v < KV[mu]
    lower = (v - _KV[mu - 1]) < (_KV[mu] - v)
    idx = np.where(lower, mu - 1, mu)
    idx = np.where(v <= _KV[0], 0, idx)
    return np.where(v >= _KV[15], 15, idx)


def _sums(x, w, idv):
    """sumqx, sumq2 of ggml's loop for scales idv [..., B] over x, w [B, 32]."""
    with np.errstate(invalid="ignore", over="ignore"):
        q = _KV[best_index(idv[..., None] * x)]                       # [..., B, 32]
        wq = w * q
        sumqx = seq_sum(np.moveaxis(wq * x, -1, -2))
        sumq2 = seq_sum(np.moveaxis(wq * q, -1, -2))
    return sumqx, sumq2


def search_scales(x, w):
    """The scale of each 32-value block [B, 32] under weights w [B, 32], as ggml's
    quantize_row_iq4_nl_impl picks it (0 for a block below GROUP_MAX_EPS); float32 [B].
    IQ4_XS runs the same search on the blocks of its super-blocks."""
    with np.errstate(all="ignore"):
        vmax, amax = signed_abs_max(x)
        empty = amax < GROUP_MAX_EPS
        d = -vmax / F32(KVALUES[0])
        idv = F32(1) / d
        sumqx, sumq2 = _sums(x, w, idv)
        d = np.where(sumq2 > 0, sumqx / sumq2, F32(0)).astype(F32)
        best = d * sumqx
        trial = np.arange(-_NTRY, _NTRY + 1) + int(KVALUES[0])
        ids = trial.astype(F32)[:, None] / vmax[None, :]              # [15, B]
        c_sumqx, c_sumq2 = _sums(x, w, ids)
        for t in range(len(trial)):                                   # first strict improvement wins
            take = (c_sumq2[t] > 0) & (c_sumqx[t] * c_sumqx[t] > best * c_sumq2[t])
            d_t = c_sumqx[t] / c_sumq2[t]
            d = np.where(take, d_t, d)
            best = np.where(take, d_t * c_sumqx[t], best)
        return np.where(empty, F32(0), d).astype(F32)


def _blocks(x, qw):
    """float32 [B, 32], weights source qw [B, 32] or None -> uint8 [B, 18]."""
    with np.errstate(all="ignore"):
        if qw is None:
            w = x * x
        else:
            sigma2 = seq_sum(np.ascontiguousarray((x * x).T)) * (F32(2) / F32(QK))
            w = qw * np.sqrt(sigma2[:, None] + x * x)
        d = search_scales(x, w)
        idv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
        L = best_index(idv[:, None] * x)
    return np.concatenate([fp16_bytes(d), pack_nibbles(L)], axis=1)


def quantize_numpy(x, imatrix=None):
    x = np.ascontiguousarray(x, dtype=F32)
    rows, n = x.shape
    qw = None if imatrix is None else check_imatrix("IQ4_NL", imatrix, n)
    xb = x.reshape(-1, QK)
    out = np.empty((xb.shape[0], BLOCK_BYTES), dtype=np.uint8)
    nb = n // QK
    for s in range(0, xb.shape[0], _CHUNK_BLOCKS):
        e = min(s + _CHUNK_BLOCKS, xb.shape[0])
        w = None if qw is None else qw.reshape(nb, QK)[np.arange(s, e) % nb]
        out[s:e] = _blocks(xb[s:e], w)
    return out.reshape(rows, nb * BLOCK_BYTES)


def dequantize(data):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    rows = data.shape[0]
    blk = data.reshape(-1, BLOCK_BYTES)
    d = np.ascontiguousarray(blk[:, :2]).view(np.float16).astype(F32)
    qs = blk[:, 2:]
    idx = np.concatenate([qs & 0xF, qs >> 4], axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        return (d * _KV[idx]).reshape(rows, -1)


def has_compiled():
    return compiled_or_none() is not None


def quantize(x, imatrix=None, threads=1, backend="auto"):
    """float32 [rows, n] (n a multiple of 32) -> IQ4_NL blocks, uint8 [rows, n/32*18]."""
    x = np.ascontiguousarray(x, dtype=F32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] % QK:
        raise QuantError(f"IQ4_NL: rows of {x.shape[-1]} values cannot be cut into blocks of {QK}; "
                         "keep this tensor in F16")
    compiled = compiled_or_none(backend)
    if compiled is None:
        return quantize_numpy(x, imatrix)
    rows, n = x.shape
    qw = None if imatrix is None else check_imatrix("IQ4_NL", imatrix, n)
    out = np.empty((rows, n // QK * BLOCK_BYTES), dtype=np.uint8)
    tid = int(QuantType.IQ4_NL)
    return split_rows(lambda xp, op, r: compiled.legacy(tid, xp, qw, op, r, n), x, out, threads)


def _register():
    from .registry import register
    register(QuantType.IQ4_NL, lambda x, imatrix, threads: quantize(x, imatrix, threads), dequantize)


_register()
