"""GPTQ-style error feedback inside ggml's blocks: standard bytes, better chosen integers.

A linear layer computes y = W x. Given the second moment of its inputs over calibration
text, H = sum x x^T, the output error of a rounded weight row w + dw is dw^T H dw. GPTQ
(Frantar et al. 2022, after OBQ) rounds one input column at a time and moves the
rounding error of that column onto the columns not yet rounded, in proportion to the
inverse Hessian (its Cholesky factor U, Hinv = U^T U), so later columns compensate.

Here the grid is ggml's: for each block of columns (32 or 256 values of every row) the
block's scales are chosen by ggml's own importance-weighted search (quant.quantize with
diag(H) as the importance vector) on the current, error-updated weights; then the columns
of the block are rounded one by one on those scales, each column's error fed forward; the
integers go back into the block's bytes. The file is an ordinary GGUF of the same type.

Each supported type has a Layout: `decode(blocks) -> (a, b, q)` such that the block's
value i is a[i] * q[i] + b[i] with q[i] an integer in [qmin, qmax], and
`encode(blocks, q)` writing other integers into the same bytes (scales untouched).
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import QuantError
from .kquants import _pack_2bit, _unpack_q3_scales, _unpack_scale_min_k4
from .registry import to_qtype
from .types import QuantType

F32 = np.float32


def _f16(blk, at):
    return np.ascontiguousarray(blk[:, at:at + 2]).view(np.float16).astype(F32).reshape(-1, 1)


def _nibbles(qs, n):
    """[B, n/2] bytes -> [B, n]: low nibbles are values 0..n/2-1, high nibbles the rest."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.int32)


def _per(v, width):
    """Per-sub-block values [B, k] repeated over each sub-block's `width` elements."""
    return np.repeat(v.astype(F32), width, axis=1)


def _unpack_2bit(qs):
    """Inverse of kquants._pack_2bit: [B, 64] -> [B, 256] values 0..3."""
    q = (qs.reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    return q.reshape(-1, 256).astype(np.int32)


# ---------------------------------------------------------------- legacy blocks (32 values)

def _q4_0_decode(blk):
    d = _f16(blk, 0)
    q = _nibbles(blk[:, 2:18], 32)
    return np.broadcast_to(d, q.shape), np.broadcast_to(-8 * d, q.shape), q


def _q4_0_encode(blk, q):
    out = blk.copy()
    q = q.astype(np.uint8)
    out[:, 2:18] = q[:, :16] | (q[:, 16:] << 4)
    return out


def _q4_1_decode(blk):
    d, m = _f16(blk, 0), _f16(blk, 2)
    q = _nibbles(blk[:, 4:20], 32)
    return np.broadcast_to(d, q.shape), np.broadcast_to(m, q.shape), q


def _q4_1_encode(blk, q):
    out = blk.copy()
    q = q.astype(np.uint8)
    out[:, 4:20] = q[:, :16] | (q[:, 16:] << 4)
    return out


def _q5_0_decode(blk):
    d = _f16(blk, 0)
    qh = np.ascontiguousarray(blk[:, 2:6]).view("<u4").reshape(-1, 1)
    high = (qh >> np.arange(32, dtype=np.uint32)[None, :]) & 1
    q = _nibbles(blk[:, 6:22], 32) | (high.astype(np.int32) << 4)
    return np.broadcast_to(d, q.shape), np.broadcast_to(-16 * d, q.shape), q


def _q5_0_encode(blk, q):
    out = blk.copy()
    q = q.astype(np.uint32)
    qh = (((q >> 4) & 1) << np.arange(32, dtype=np.uint32)[None, :]).sum(axis=1, dtype=np.uint32)
    out[:, 2:6] = qh.astype("<u4").view(np.uint8).reshape(-1, 4)
    low = (q & 0xF).astype(np.uint8)
    out[:, 6:22] = low[:, :16] | (low[:, 16:] << 4)
    return out


def _q8_0_decode(blk):
    d = _f16(blk, 0)
    q = np.ascontiguousarray(blk[:, 2:34]).view(np.int8).astype(np.int32)
    return np.broadcast_to(d, q.shape), np.zeros(q.shape, F32), q


def _q8_0_encode(blk, q):
    out = blk.copy()
    out[:, 2:34] = q.astype(np.int8).view(np.uint8)
    return out


# ---------------------------------------------------------------- K-quants (256 values)

def _q4_k_decode(blk):
    d, dmin = _f16(blk, 0), _f16(blk, 2)
    sc, m = _unpack_scale_min_k4(blk[:, 4:16])
    qs = blk[:, 16:144].reshape(-1, 4, 32)
    q = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 256).astype(np.int32)  # [B, c, half, l]
    return _per(d * sc, 32), _per(-dmin * m, 32), q


def _q4_k_encode(blk, q):
    out = blk.copy()
    L = q.astype(np.uint8).reshape(-1, 4, 2, 32)
    out[:, 16:144] = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return out


def _q5_k_decode(blk):
    d, dmin = _f16(blk, 0), _f16(blk, 2)
    sc, m = _unpack_scale_min_k4(blk[:, 4:16])
    qh, ql = blk[:, 16:48], blk[:, 48:176].reshape(-1, 4, 32)
    low = np.stack([ql & 0xF, ql >> 4], axis=2)                              # [B, c, h, l]
    bit = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)  # [c, h]
    high = (qh[:, None, None, :] >> bit[None, :, :, None]) & 1
    q = (low | (high << 4)).reshape(-1, 256).astype(np.int32)
    return _per(d * sc, 32), _per(-dmin * m, 32), q


def _q5_k_encode(blk, q):
    out = blk.copy()
    L = q.astype(np.uint8).reshape(-1, 4, 2, 32)
    out[:, 48:176] = ((L[:, :, 0] & 0xF) | ((L[:, :, 1] & 0xF) << 4)).reshape(-1, 128)
    bit = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
    out[:, 16:48] = np.bitwise_or.reduce(((L >> 4) << bit[None, :, :, None]).reshape(-1, 8, 32), axis=1)
    return out


def _q6_k_decode(blk):
    ql, qh = blk[:, :128].reshape(-1, 2, 2, 32), blk[:, 128:192].reshape(-1, 2, 32)
    sc, d = blk[:, 192:208].view(np.int8), _f16(blk, 208)
    low = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    high = (qh[:, :, None, :] >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    q = (low | (high << 4)).reshape(-1, 256).astype(np.int32)                # [B, n, k, l]
    a = _per(d * sc.astype(F32), 16)
    return a, -32 * a, q


def _q6_k_encode(blk, q):
    out = blk.copy()
    L = q.astype(np.uint8).reshape(-1, 2, 4, 32)
    out[:, :128] = np.concatenate([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                                   (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(-1, 128)
    out[:, 128:192] = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
                       | ((L[:, :, 3] >> 4) << 6)).reshape(-1, 64)
    return out


def _q3_k_decode(blk):
    hmask, d = blk[:, :32], _f16(blk, 108)
    high = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1   # [B, bit, l]
    q = _unpack_2bit(blk[:, 32:96]) + 4 * high.reshape(-1, 256).astype(np.int32)
    a = _per(d * _unpack_q3_scales(blk[:, 96:108]).astype(F32), 16)
    return a, -4 * a, q


def _q3_k_encode(blk, q):
    out = blk.copy()
    high = (q > 3).astype(np.uint8).reshape(-1, 8, 32)
    out[:, :32] = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    out[:, 32:96] = _pack_2bit(np.where(q > 3, q - 4, q))
    return out


def _q2_k_decode(blk):
    sc = blk[:, :16]
    d, dmin = _f16(blk, 80), _f16(blk, 82)
    return _per(d * (sc & 0xF), 16), _per(-dmin * (sc >> 4), 16), _unpack_2bit(blk[:, 16:80])


def _q2_k_encode(blk, q):
    out = blk.copy()
    out[:, 16:80] = _pack_2bit(q)
    return out


@dataclass(frozen=True)
class Layout:
    decode: Callable
    encode: Callable
    qmin: int
    qmax: int


LAYOUTS = {
    QuantType.Q4_0: Layout(_q4_0_decode, _q4_0_encode, 0, 15),
    QuantType.Q4_1: Layout(_q4_1_decode, _q4_1_encode, 0, 15),
    QuantType.Q5_0: Layout(_q5_0_decode, _q5_0_encode, 0, 31),
    QuantType.Q8_0: Layout(_q8_0_decode, _q8_0_encode, -127, 127),
    QuantType.Q2_K: Layout(_q2_k_decode, _q2_k_encode, 0, 3),
    QuantType.Q3_K: Layout(_q3_k_decode, _q3_k_encode, 0, 7),
    QuantType.Q4_K: Layout(_q4_k_decode, _q4_k_encode, 0, 15),
    QuantType.Q5_K: Layout(_q5_k_decode, _q5_k_encode, 0, 31),
    QuantType.Q6_K: Layout(_q6_k_decode, _q6_k_encode, 0, 63),
}


def supports(qtype) -> bool:
    return to_qtype(qtype) in LAYOUTS


# ---------------------------------------------------------------- the error-feedback loop

def inverse_cholesky(hessian, damp: float = 0.01):
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1, float64; a column no
    input ever reached (diag 0) gets 1 on the diagonal, so its weights move nobody."""
    h = np.array(hessian, dtype=np.float64)
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    mean = diag[~dead].mean() if (~dead).any() else 1.0
    h[np.diag_indices_from(h)] += damp * mean
    hinv = np.linalg.inv(h)
    hinv = (hinv + hinv.T) / 2
    return np.linalg.cholesky(hinv).T


def quantize_gptq(w, hessian, qtype, *, importance=None, damp: float = 0.01, threads: int = 1, factor=None):
    """float32 rows [rows, n] -> ggml's `qtype` bytes [rows, n / block * block bytes].

    hessian: [n, n] sum of x x^T over calibration inputs; importance: the vector ggml's
    scale search weighs by (default diag(hessian)); factor: inverse_cholesky(hessian, damp)
    when the caller has it already (weights that share one input share it).
    """
    qtype = to_qtype(qtype)
    layout = LAYOUTS.get(qtype)
    if layout is None:
        raise QuantError(f"{qtype.name}: calibrated rounding supports {', '.join(t.name for t in LAYOUTS)}")
    from . import type_info  # the package loads every block family first

    info = type_info(qtype)
    W = np.array(w, dtype=F32).reshape(-1, np.shape(w)[-1])
    rows, n = W.shape
    info.check_row_length(n)
    if np.shape(hessian) != (n, n):
        raise QuantError(f"{qtype.name}: Hessian of shape {np.shape(hessian)} for rows of {n} values")
    U = np.asarray(inverse_cholesky(hessian, damp) if factor is None else factor, dtype=F32)
    imp = np.ascontiguousarray(np.diag(hessian) if importance is None else importance, dtype=F32)
    bs = info.block_size
    out = np.empty((rows, n // bs * info.type_size), dtype=np.uint8)
    for c0 in range(0, n, bs):
        c1 = c0 + bs
        Wb = np.ascontiguousarray(W[:, c0:c1])
        # the block's scales: ggml's own importance-weighted search on the updated weights
        blk = np.asarray(info.quantize(Wb, imp[c0:c1], threads)).reshape(rows, info.type_size)
        a, b, q0 = layout.decode(blk)
        Q = np.empty((rows, bs), dtype=np.int32)
        err = np.empty((rows, bs), dtype=F32)
        Ub = U[c0:c1, c0:c1]
        with np.errstate(divide="ignore", invalid="ignore"):
            for j in range(bs):
                x, aj, bj = Wb[:, j], a[:, j], b[:, j]
                q = np.clip(np.rint((x - bj) / aj), layout.qmin, layout.qmax)
                q = np.where(aj != 0, q, q0[:, j]).astype(np.int32)
                e = (x - (aj * q + bj)) / Ub[j, j]
                Wb[:, j + 1:] -= np.outer(e, Ub[j, j + 1:])
                Q[:, j], err[:, j] = q, e
        if c1 < n:
            W[:, c1:] -= err @ U[c0:c1, c1:]
        out[:, c0 // bs * info.type_size:c1 // bs * info.type_size] = layout.encode(blk, Q)
    return out
