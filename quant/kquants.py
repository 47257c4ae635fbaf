"""K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, and Q8_K for activations): ggml's exact bytes.

Super-blocks of 256 values. Without an importance vector ggml uses its reference
quantizers (`quantize_row_qN_K_ref`); with one, the weighted `quantize_row_qN_K_impl`.
Both are reproduced here with numpy, vectorized across blocks (see quant.search for
the exactness rules). The compiled helper quant._kquants, when built, runs the same
arithmetic much faster; this module stays the readable reference.

Public functions: quantize_k(name, x, imatrix=None, threads=1, backend="auto") and
quantize_qN_k(x [rows, n] float32, imatrix=None [n], threads=1) -> uint8 [rows, n//256*bytes];
dequantize_qN_k(data uint8 [rows, nbytes]) -> float32 [rows, n]. Q2_K..Q6_K register
themselves with quant.registry (quant.quantize / quant.dequantize).
"""
import numpy as np

from ._threads import split_rows
from .backend import compiled_or_none
from .errors import QuantError
from .search import (F32, GROUP_MAX_EPS, make_q3_quants, make_qkx_quants, make_qp_quants,
                     make_qx_quants, nearest_int, seq_sum)
from .types import QuantType, block_size, type_size

QK_K = block_size(QuantType.Q4_K)
BLOCK_BYTES = {name: type_size(QuantType[name]) for name in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K")}
_CHUNK_BLOCKS = 512          # bounds the numpy work arrays ([candidates, n, groups]) to ~100 MB


# ---------------------------------------------------------------- shared helpers

def _as_rows(x, name):
    x = np.asarray(x, dtype=F32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] % QK_K:
        raise QuantError(f"{name}: rows of {x.shape[-1]} values cannot be cut into blocks of "
                         f"{QK_K}; use a type with 32-value blocks (Q4_0, Q8_0, ...) for this tensor")
    return np.ascontiguousarray(x)


def _weights_per_block(imatrix, rows, n, name):
    """ggml indexes the importance vector by column: block i of every row uses imatrix[256*i:]."""
    if imatrix is None:
        return None
    qw = np.asarray(imatrix, dtype=F32).reshape(-1)
    if qw.shape[0] != n:
        raise QuantError(f"{name}: importance vector has {qw.shape[0]} entries but rows have {n}; "
                         "use the imatrix entry recorded for this tensor")
    return qw.reshape(n // QK_K, QK_K)


def _run_blocks(x, imatrix, name, nbytes, block_fn):
    x = _as_rows(x, name)
    rows, n = x.shape
    xb = x.reshape(-1, QK_K)
    qw = _weights_per_block(imatrix, rows, n, name)
    out = np.empty((xb.shape[0], nbytes), dtype=np.uint8)
    for s in range(0, xb.shape[0], _CHUNK_BLOCKS):
        e = min(s + _CHUNK_BLOCKS, xb.shape[0])
        out[s:e] = block_fn(xb[s:e], None if qw is None else qw[np.arange(s, e) % qw.shape[0]])
    return out.reshape(rows, n // QK_K * nbytes)


def _fp16_bytes(v):
    return np.asarray(v, dtype=F32).astype(np.float16).view(np.uint8).reshape(-1, 2)


def _fp16_round(v):
    return np.asarray(v, dtype=F32).astype(np.float16).astype(F32)


def _max_positive(v):
    """ggml's running `if (v > best) best = v` from 0, per block (v is [B, k])."""
    return np.where(np.isnan(v), F32(0), v).max(axis=1).clip(min=0)


def _signed_abs_max(v):
    """ggml's running `if (|v| > amax) {amax = |v|; max = v}`: first value of largest |v|."""
    a = np.abs(v)
    a = np.where(np.isnan(a), F32(-1), a)          # `|v| > amax` never holds for NaN
    idx = np.argmax(a, axis=1)
    rows = np.arange(v.shape[0])
    found = a[rows, idx] > 0
    return np.where(found, v[rows, idx], F32(0)), np.where(found, a[rows, idx], F32(0))


def _pack_2bit(L):
    """[B, 256] values 0..3 -> [B, 64]: byte 32*h + l holds L[128h + l + 32*k] at bits 2k."""
    L = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def _seq_rows(t):
    """Sequential sum along the last axis of [G, n], in ggml's order."""
    return seq_sum(np.ascontiguousarray(t.T))


# ---------------------------------------------------------------- Q4_K / Q5_K scales

def _pack_scale_min_k4(ls, lm):
    """8 six-bit scales and mins [B, 8] uint8 -> ggml's 12-byte layout."""
    out = np.empty((ls.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


def _unpack_scale_min_k4(s):
    """ggml get_scale_min_k4 for j = 0..7 at once: (sc [B, 8], m [B, 8]) uint8."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


def _requant_affine(x, d16, dmin16, sc, m, L, nmax, sub):
    """Re-round every value with the stored (fp16 * 6-bit) scale and min; keep L where d == 0."""
    b = x.shape[0]
    d = (d16[:, None] * sc.astype(F32))                       # [B, nsub]
    dm = (dmin16[:, None] * m.astype(F32))
    xs = x.reshape(b, -1, sub)
    with np.errstate(divide="ignore", invalid="ignore"):
        l = np.clip(nearest_int((xs + dm[:, :, None]) / d[:, :, None]), 0, nmax)
    return np.where((d != 0)[:, :, None], l, L.reshape(b, -1, sub).astype(np.int32)).reshape(b, QK_K)


def _affine_k_scales(x, qw, nmax, ref_search, tag):
    """Q4_K/Q5_K: per 32-value sub-block search, then 6-bit scales. Returns header and L."""
    b = x.shape[0]
    xs = x.reshape(-1, 32)
    if qw is None:
        av_x = np.sqrt(_seq_rows(xs * xs) / F32(32))
        w = av_x[:, None] + np.abs(xs)
        rmin, rdelta, nstep = ref_search
        scales, mins, L = make_qkx_quants(xs, w, nmax, rmin, rdelta, nstep, False)
        scales, mins = scales.reshape(b, 8), mins.reshape(b, 8)
        max_scale, max_min = _max_positive(scales), _max_positive(mins)
        with np.errstate(divide="ignore"):
            inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
            inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
        ls = np.minimum(nearest_int(inv_scale[:, None] * scales).astype(np.uint8), 63)
        lm = np.minimum(nearest_int(inv_min[:, None] * mins).astype(np.uint8), 63)
        d16 = _fp16_bytes(max_scale / F32(63))
        dmin16 = _fp16_bytes(max_min / F32(63))
    else:
        sigma2 = F32(2) * _seq_rows(x * x) / F32(QK_K)
        xs3 = x.reshape(b, 8, 32)
        w = (qw.reshape(b, 8, 32) * np.sqrt(sigma2[:, None, None] + xs3 * xs3)).reshape(-1, 32)
        sw = _seq_rows(w).reshape(b, 8)
        scales, mins, L = make_qkx_quants(xs, w, nmax, -0.9, 0.05, 36, False, qkx3=True)
        d_block, ls = make_qp_quants(scales.reshape(b, 8), 63, sw)
        m_block, lm = make_qp_quants(mins.reshape(b, 8), 63, sw)
        if tag == "Q5_K":
            ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
        d16, dmin16 = _fp16_bytes(d_block), _fp16_bytes(m_block)
    packed = _pack_scale_min_k4(ls, lm)
    sc, m = _unpack_scale_min_k4(packed)
    d = d16.view(np.float16).reshape(-1).astype(F32)
    dmin = dmin16.view(np.float16).reshape(-1).astype(F32)
    L = _requant_affine(x, d, dmin, sc, m, L.reshape(b, QK_K), nmax, 32)
    return np.concatenate([d16, dmin16, packed], axis=1), L


def _q4_k_blocks(x, qw):
    header, L = _affine_k_scales(x, qw, 15, (-1.0, 0.1, 20), "Q4_K")
    L = L.astype(np.uint8).reshape(-1, 4, 2, 32)
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([header, qs], axis=1)


def _q5_k_blocks(x, qw):
    header, L = _affine_k_scales(x, qw, 31, (-0.5, 0.1, 15), "Q5_K")
    L = L.astype(np.uint8).reshape(-1, 4, 2, 32)           # [B, pair c, half, 32]
    ql = ((L[:, :, 0] & 0xF) | ((L[:, :, 1] & 0xF) << 4)).reshape(-1, 128)
    hi = (L >> 4).astype(np.uint8)                          # 5th bit of each value
    shifts = (2 * np.arange(4, dtype=np.uint8))[None, :, None]
    qh = ((hi[:, :, 0] << shifts) | (hi[:, :, 1] << (shifts + 1))).astype(np.uint8)
    qh = np.bitwise_or.reduce(qh, axis=1)
    return np.concatenate([header, qh, ql], axis=1)


# ---------------------------------------------------------------- Q6_K

def _q6_k_blocks(x, qw):
    b = x.shape[0]
    xs = x.reshape(-1, 16)
    scales, L = make_qx_quants(xs, 32, 1, None if qw is None else qw.reshape(-1, 16))
    scales = scales.reshape(b, 16)
    max_scale, max_abs = _signed_abs_max(scales)
    empty = max_abs < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-128) / max_scale
        d16 = _fp16_bytes(F32(1) / iscale)
        sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
        d = (d16.view(np.float16).reshape(-1).astype(F32)[:, None] * sc.astype(F32))  # [B, 16]
        l = np.clip(nearest_int(x.reshape(b, 16, 16) / d[:, :, None]), -32, 31) + 32
    L = np.where((d != 0)[:, :, None], l, L.reshape(b, 16, 16)).astype(np.uint8).reshape(b, 2, 4, 32)
    ql = np.concatenate([L[:, :, 0] & 0xF | ((L[:, :, 2] & 0xF) << 4),
                         L[:, :, 1] & 0xF | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(b, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(b, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d16], axis=1)
    out[empty] = 0
    return out


# ---------------------------------------------------------------- Q3_K

def _pack_q3_scales(l):
    """16 six-bit values [B, 16] (0..63) -> 12 bytes: low nibbles, then 2-bit high parts."""
    l = l.astype(np.uint8)
    out = np.empty((l.shape[0], 12), dtype=np.uint8)
    out[:, 0:8] = (l[:, 0:8] & 0xF) | ((l[:, 8:16] & 0xF) << 4)
    hi = (l >> 4).reshape(-1, 4, 4)                       # [B, j//4, j%4]
    out[:, 8:12] = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    return out


def _unpack_q3_scales(s):
    low = np.concatenate([s[:, 0:8] & 0xF, s[:, 0:8] >> 4], axis=1)
    hi = np.stack([(s[:, 8:12] >> (2 * k)) & 3 for k in range(4)], axis=1).reshape(-1, 16)
    return (low | (hi << 4)).astype(np.int32) - 32


def _q3_k_blocks(x, qw):
    b = x.shape[0]
    xs = x.reshape(-1, 16)
    if qw is None:
        scales, L = make_q3_quants(xs, 4)
        scales = scales.reshape(b, 16)
        max_scale, _ = _signed_abs_max(scales)
        has = max_scale != 0
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = F32(-32) / max_scale
            l = nearest_int(iscale[:, None] * scales).astype(np.int8).astype(np.int32)
            l = np.clip(l, -32, 31) + 32
            d16 = _fp16_bytes(np.where(has, F32(1) / iscale, F32(0)))
        packed = np.where(has[:, None], _pack_q3_scales(l), np.uint8(0))
    else:
        sigma2 = F32(2) * _seq_rows(x * x) / F32(QK_K)
        xs3 = x.reshape(b, 16, 16)
        w = (qw.reshape(b, 16, 16) * np.sqrt(sigma2[:, None, None] + xs3 * xs3)).reshape(-1, 16)
        sw = _seq_rows(w).reshape(b, 16)
        scales, L = make_qx_quants(xs, 4, 1, w)
        d_block, ls = make_qx_quants(scales.reshape(b, 16), 32, 1, sw)
        packed = _pack_q3_scales(ls)
        d16 = _fp16_bytes(d_block)
    sc = _unpack_q3_scales(packed)
    d = d16.view(np.float16).reshape(-1).astype(F32)[:, None] * sc.astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        l = np.clip(nearest_int(x.reshape(b, 16, 16) / d[:, :, None]), -4, 3) + 4
    L = np.where((d != 0)[:, :, None], l, L.reshape(b, 16, 16)).reshape(b, QK_K)
    high = L > 3
    hmask = np.zeros((b, 32), dtype=np.uint8)
    for bit in range(8):
        hmask |= (high[:, 32 * bit:32 * bit + 32].astype(np.uint8) << bit)
    L = np.where(high, L - 4, L)
    return np.concatenate([hmask, _pack_2bit(L), packed, d16], axis=1)


# ---------------------------------------------------------------- Q2_K

def _q2_k_blocks(x, qw):
    b = x.shape[0]
    xs = x.reshape(-1, 16)
    if qw is None:
        scales, mins, L = make_qkx_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
        scales, mins = scales.reshape(b, 16), mins.reshape(b, 16)
        max_scale, max_min = _max_positive(scales), _max_positive(mins)
        with np.errstate(divide="ignore", invalid="ignore"):
            ls = nearest_int((F32(15) / max_scale)[:, None] * scales)
            lm = nearest_int((F32(15) / max_min)[:, None] * mins)
        ls = np.where((max_scale > 0)[:, None], ls, 0)
        lm = np.where((max_min > 0)[:, None], lm, 0)
        packed = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(np.uint8)
        d16 = _fp16_bytes(np.where(max_scale > 0, max_scale / F32(15), F32(0)))
        dmin16 = _fp16_bytes(np.where(max_min > 0, max_min / F32(15), F32(0)))
    else:
        sigma2 = _seq_rows(x * x) / F32(QK_K)
        xs3 = x.reshape(b, 16, 16)
        w = (qw.reshape(b, 16, 16) * np.sqrt(sigma2[:, None, None] + xs3 * xs3)).reshape(-1, 16)
        sw = _seq_rows(w).reshape(b, 16)
        scales, mins, L = make_qkx_quants(xs, w, 3, -0.9, 0.05, 36, False, qkx3=True)
        dm, ls = make_qp_quants(scales.reshape(b, 16), 15, sw)
        mm, lm = make_qp_quants(mins.reshape(b, 16), 15, sw)
        packed = (ls | (lm << 4)).astype(np.uint8)
        d16, dmin16 = _fp16_bytes(dm), _fp16_bytes(mm)
    d = d16.view(np.float16).reshape(-1).astype(F32)
    dmin = dmin16.view(np.float16).reshape(-1).astype(F32)
    L = _requant_affine(x, d, dmin, packed & 0xF, packed >> 4, L.reshape(b, QK_K), 3, 16)
    return np.concatenate([packed, _pack_2bit(L), d16, dmin16], axis=1)


# ---------------------------------------------------------------- Q8_K (activations)

def _q8_k_blocks(x, qw):
    b = x.shape[0]
    vmax, amax = _signed_abs_max(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-127) / vmax
        q = np.minimum(nearest_int(iscale[:, None] * x), 127)
        d = np.where(amax != 0, F32(1) / iscale, F32(0)).astype(F32)
    q = np.where((amax != 0)[:, None], q, 0).astype(np.int8)
    bsums = q.reshape(b, 16, 16).astype(np.int32).sum(axis=2).astype(np.int16)
    return np.concatenate([d.view(np.uint8).reshape(b, 4), q.view(np.uint8),
                           bsums.view(np.uint8).reshape(b, 32)], axis=1)


# ---------------------------------------------------------------- public quantizers

_NUMPY_BLOCKS = {"Q2_K": _q2_k_blocks, "Q3_K": _q3_k_blocks, "Q4_K": _q4_k_blocks,
                 "Q5_K": _q5_k_blocks, "Q6_K": _q6_k_blocks, "Q8_K": _q8_k_blocks}


def has_compiled():
    return compiled_or_none() is not None


def _run_compiled(compiled, name, x, imatrix, threads):
    x = _as_rows(x, name)
    rows, n = x.shape
    qw = None
    if imatrix is not None and name != "Q8_K":
        qw = np.ascontiguousarray(np.asarray(imatrix, dtype=F32).reshape(-1))
        if qw.shape[0] != n:
            raise QuantError(f"{name}: importance vector has {qw.shape[0]} entries but rows have "
                             f"{n}; use the imatrix entry recorded for this tensor")
    out = np.empty((rows, n // QK_K * BLOCK_BYTES[name]), dtype=np.uint8)
    tid = int(QuantType[name])
    return split_rows(lambda xp, op, r: compiled.kquant(tid, xp, qw, op, r, n), x, out, threads)


def quantize_k(name, x, imatrix=None, threads=1, backend="auto"):
    """Quantize float32 rows [rows, n] (n a multiple of 256) to ggml's `name` blocks.

    backend: "auto" (compiled kernels when built), "c" (require them) or "numpy".
    """
    if name not in BLOCK_BYTES:
        raise QuantError(f"{name}: not a K-quant type; use one of {', '.join(BLOCK_BYTES)}")
    compiled = compiled_or_none(backend)
    if compiled is not None:
        return _run_compiled(compiled, name, x, imatrix, threads)
    with np.errstate(all="ignore"):
        return _run_blocks(x, None if name == "Q8_K" else imatrix, name, BLOCK_BYTES[name],
                           _NUMPY_BLOCKS[name])


def quantize_q2_k(x, imatrix=None, threads=1, backend="auto"):
    return quantize_k("Q2_K", x, imatrix, threads, backend)


def quantize_q3_k(x, imatrix=None, threads=1, backend="auto"):
    return quantize_k("Q3_K", x, imatrix, threads, backend)


def quantize_q4_k(x, imatrix=None, threads=1, backend="auto"):
    return quantize_k("Q4_K", x, imatrix, threads, backend)


def quantize_q5_k(x, imatrix=None, threads=1, backend="auto"):
    return quantize_k("Q5_K", x, imatrix, threads, backend)


def quantize_q6_k(x, imatrix=None, threads=1, backend="auto"):
    return quantize_k("Q6_K", x, imatrix, threads, backend)


def quantize_q8_k(x, imatrix=None, threads=1, backend="auto"):
    """Q8_K is ggml's activation format; an importance vector does not apply to it."""
    return quantize_k("Q8_K", x, None, threads, backend)


# ---------------------------------------------------------------- dequantizers

def _blocks_of(data, nbytes, name):
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim == 1:
        data = data[None, :]
    if data.shape[-1] % nbytes:
        raise QuantError(f"{name}: {data.shape[-1]} bytes per row is not a whole number of "
                         f"{nbytes}-byte blocks; check the tensor's type and shape")
    return (data.shape[0], data.shape[1] // nbytes * QK_K), data.reshape(-1, nbytes)


def _f16(b2):
    return np.ascontiguousarray(b2).view(np.float16).astype(F32)


def dequantize_q2_k(data):
    shape, blk = _blocks_of(data, 84, "Q2_K")
    sc, qs = blk[:, :16], blk[:, 16:80]
    d, dmin = _f16(blk[:, 80:82]), _f16(blk[:, 82:84])
    dl = d * (sc & 0xF).astype(F32)
    ml = dmin * (sc >> 4).astype(F32)
    q = (qs.reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    q = q.reshape(-1, 16, 16).astype(F32)
    return (dl[:, :, None] * q - ml[:, :, None]).reshape(shape)


def dequantize_q3_k(data):
    shape, blk = _blocks_of(data, 110, "Q3_K")
    hmask, qs, sc, d = blk[:, :32], blk[:, 32:96], blk[:, 96:108], _f16(blk[:, 108:110])
    dl = d * _unpack_q3_scales(sc).astype(F32)
    low = (qs.reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    high = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = low.reshape(-1, 8, 32).astype(np.int32) - 4 * (1 - high.astype(np.int32))
    return (dl[:, :, None] * q.reshape(-1, 16, 16).astype(F32)).reshape(shape)


def _dequantize_affine(data, nbytes, name, five_bit):
    shape, blk = _blocks_of(data, nbytes, name)
    d, dmin = _f16(blk[:, 0:2]), _f16(blk[:, 2:4])
    sc, m = _unpack_scale_min_k4(blk[:, 4:16])
    qs = blk[:, -128:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8)[None, None, :, None]
    q = (qs & 0xF).reshape(-1, 8, 32)
    if five_bit:
        qh = (blk[:, 16:48][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
        q = q | (qh << 4)
    dl = d * sc.astype(F32)
    ml = dmin * m.astype(F32)
    return (dl[:, :, None] * q.astype(F32) - ml[:, :, None]).reshape(shape)


def dequantize_q4_k(data):
    return _dequantize_affine(data, 144, "Q4_K", False)


def dequantize_q5_k(data):
    return _dequantize_affine(data, 176, "Q5_K", True)


def dequantize_q6_k(data):
    shape, blk = _blocks_of(data, 210, "Q6_K")
    ql, qh, sc, d = blk[:, :128], blk[:, 128:192], blk[:, 192:208], _f16(blk[:, 208:210])
    low = (ql.reshape(-1, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8)[None, None, :, None]) & 0xF
    low = low.reshape(-1, 2, 4, 32)
    high = (qh.reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    q = (low | (high << 4)).astype(np.int32) - 32
    dl = d * sc.view(np.int8).astype(F32)
    return (dl[:, :, None] * q.reshape(-1, 16, 16).astype(F32)).reshape(shape)


def dequantize_q8_k(data):
    shape, blk = _blocks_of(data, 292, "Q8_K")
    d = np.ascontiguousarray(blk[:, :4]).view(F32)
    q = blk[:, 4:260].view(np.int8).astype(F32)
    return (d * q).reshape(shape)


# ---------------------------------------------------------------- registry

def _register():
    """Q2_K..Q6_K become available through quant.quantize / quant.dequantize.

    Q8_K stays out: it is ggml's activation format and never stored in a model file.
    """
    from .registry import register

    for name, quantize, dequantize in (
            ("Q2_K", quantize_q2_k, dequantize_q2_k), ("Q3_K", quantize_q3_k, dequantize_q3_k),
            ("Q4_K", quantize_q4_k, dequantize_q4_k), ("Q5_K", quantize_q5_k, dequantize_q5_k),
            ("Q6_K", quantize_q6_k, dequantize_q6_k)):
        register(QuantType[name], quantize=quantize, dequantize=dequantize)


_register()
