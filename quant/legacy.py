"""The 32-value block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: ggml's exact bytes.

Without an importance vector ggml uses its reference quantizers (quantize_row_qN_ref):
one scale per block from the block's extreme value, values rounded by truncating
`x*id + offset + 0.5` (Q8_0: roundf, half away from zero). With one, Q4_0/Q5_0 search
the scale with make_qx_quants and Q4_1/Q5_1 with make_qkx3_quants, weighting each value
by `imatrix[j] * sqrt(sigma2 + x[j]^2)`, sigma2 being the row's mean square.

This numpy code is the readable reference, vectorized over blocks. The compiled helper
quant._kquants runs the same arithmetic faster and is used when it is built.
"""
import numpy as np

from ._threads import split_rows
from .backend import compiled_or_none
from .errors import QuantError
from .floats import _f16_bits
from .search import F32, make_qkx_quants, make_qx_quants, seq_sum
from .types import QuantType, type_size

QK = 32
BLOCK_BYTES = {name: type_size(QuantType[name]) for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")}
_CHUNK_BLOCKS = 1 << 14          # bounds the temporaries to a few MB per step
_CHUNK_BLOCKS_WEIGHTED = 1 << 11 # the weighted searches hold [candidates, 32, blocks] arrays
_FLT_MAX = np.finfo(np.float32).max


# ---------------------------------------------------------------- C conversions

def c_to_int8(v):
    """C's `(int8_t)` / `(uint8_t)` of a float32 on x86: truncate to int32 (NaN and
    out-of-range give INT_MIN), then keep the low byte. Returned as int32 in -128..127."""
    ok = np.abs(v) < F32(2147483648.0)                  # False for NaN and inf
    i = np.where(ok, v, F32(0)).astype(np.int64)        # astype truncates toward zero
    i = np.where(ok, i, -2147483648)
    return ((i & 0xFF) ^ 0x80) - 0x80


def c_roundf(v):
    """C roundf: half away from zero (numpy's round is half to even)."""
    a = np.abs(v)
    r = np.floor(a)
    r = r + (a - r >= F32(0.5))                         # a - r is exact below 2**23
    return np.copysign(r, v).astype(F32)


def fp16_bytes(v):
    """float32 [B] -> [B, 2] bytes of ggml's fp16."""
    return _f16_bits(np.ascontiguousarray(v, dtype=F32)).view(np.uint8).reshape(-1, 2)


# ---------------------------------------------------------------- block extremes

def signed_abs_max(x):
    """ggml's `if (amax < |v|) {amax = |v|; max = v}` from 0: the first value of largest
    magnitude; NaN never wins; 0 (positive) when every value is 0 or NaN."""
    a = np.abs(x)
    a = np.where(np.isnan(a), F32(-1), a)
    idx = np.argmax(a, axis=1)[:, None]
    amax = np.take_along_axis(a, idx, axis=1)[:, 0]
    vmax = np.take_along_axis(x, idx, axis=1)[:, 0]
    return np.where(amax > 0, vmax, F32(0)), np.maximum(amax, F32(0))


def min_max(x):
    """ggml's `if (v < min) min = v; if (v > max) max = v` from +-FLT_MAX: the first
    extreme value (so the sign of a zero is the first one's); NaN never wins."""
    nan = np.isnan(x)
    lo_src = np.where(nan, _FLT_MAX, x)
    hi_src = np.where(nan, -_FLT_MAX, x)
    lo = np.take_along_axis(lo_src, np.argmin(lo_src, axis=1)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(hi_src, np.argmax(hi_src, axis=1)[:, None], axis=1)[:, 0]
    return np.minimum(lo, _FLT_MAX), np.maximum(hi, -_FLT_MAX)


def q8_amax(x):
    """ggml's running `amax = MAX(amax, |v|)` with MAX(a, b) = a > b ? a : b: a NaN
    replaces the running value and the next value replaces the NaN."""
    a = np.abs(x)
    nan = np.isnan(a)
    if not nan.any():
        return np.maximum(a.max(axis=1), F32(0))
    n = x.shape[1]
    last_nan = np.where(nan.any(axis=1), n - 1 - np.argmax(nan[:, ::-1], axis=1), -1)
    after = np.arange(n)[None, :] > last_nan[:, None]
    amax = np.where(after, a, F32(0)).max(axis=1)
    return np.where(last_nan == n - 1, F32(np.nan), amax).astype(F32)


# ---------------------------------------------------------------- packing

def pack_nibbles(L, masked=True):
    """[B, 32] values 0..15 -> [B, 16]: byte j = L[j] | L[j+16] << 4 (Q4_0/Q4_1 do not mask)."""
    L = L.astype(np.uint8)
    if not masked:
        return L[:, :16] | (L[:, 16:] << 4)
    return (L[:, :16] & 0xF) | ((L[:, 16:] & 0xF) << 4)


def pack_fifth_bits(L):
    """[B, 32] values 0..31 -> [B, 4] little-endian u32 whose bit j is bit 4 of L[j]."""
    bits = ((L.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    return np.bitwise_or.reduce(bits, axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)


# ---------------------------------------------------------------- reference quantizers

def _symmetric_ref(x, nmax):
    """Q4_0 (nmax 8) and Q5_0 (nmax 16): d = max / -nmax; L = MIN(2nmax-1, (int8)(x*id + nmax + 0.5))."""
    vmax, _ = signed_abs_max(x)
    d = vmax / F32(-nmax)
    with np.errstate(divide="ignore", over="ignore"):
        idv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
    with np.errstate(invalid="ignore"):
        v = (x * idv[:, None]) + F32(nmax + 0.5)
    return d, np.minimum(c_to_int8(v), 2 * nmax - 1)


def _affine_ref(x, nmax):
    """Q4_1 (nmax 15) and Q5_1 (nmax 31): d = (max - min) / nmax; L = (int8)((x - min)*id + 0.5)."""
    lo, hi = min_max(x)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        d = (hi - lo) / F32(nmax)
        idv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
        v = ((x - lo[:, None]) * idv[:, None]) + F32(0.5)
    L = c_to_int8(v)
    return d, lo, (np.minimum(L, nmax) if nmax == 15 else L)


# ---------------------------------------------------------------- importance-weighted searches

def _row_sigma2(x):
    """Per row: sequential float32 sum of x*x over the row, divided by the row length."""
    return seq_sum(np.ascontiguousarray((x * x).T)) / F32(x.shape[1])


def _block_weights(x, imatrix):
    """imatrix[j] * sqrt(sigma2 + x[j]^2) for every value, as [blocks, 32]."""
    rows, n = x.shape
    with np.errstate(over="ignore", invalid="ignore"):
        sigma2 = _row_sigma2(x)
        w = imatrix[None, :] * np.sqrt(sigma2[:, None] + x * x)
    return w.reshape(-1, QK)


def _symmetric_weighted(xb, w, nmax):
    with np.errstate(all="ignore"):
        d, L = make_qx_quants(xb, nmax, 1, w)
    return d, L


def _affine_weighted(xb, w, nmax):
    with np.errstate(all="ignore"):
        d, the_min, L = make_qkx_quants(xb, w, nmax, -0.9, 0.05, 36, False, qkx3=True)
    return d, -the_min, L


# ---------------------------------------------------------------- block encoders

def _encode(name, xb, w):
    if name == "Q8_0":
        amax = q8_amax(xb)
        d = amax / F32(127)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            idv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
            q = c_to_int8(c_roundf(xb * idv[:, None]))
        return np.concatenate([fp16_bytes(d), q.astype(np.int8).view(np.uint8)], axis=1)
    nmax = {"Q4_0": 8, "Q5_0": 16, "Q4_1": 15, "Q5_1": 31}[name]
    if name in ("Q4_0", "Q5_0"):
        d, L = _symmetric_ref(xb, nmax) if w is None else _symmetric_weighted(xb, w, nmax)
        head = [fp16_bytes(d)]
    else:
        d, m, L = _affine_ref(xb, nmax) if w is None else _affine_weighted(xb, w, nmax)
        head = [fp16_bytes(d), fp16_bytes(m)]
    if name in ("Q5_0", "Q5_1"):
        head.append(pack_fifth_bits(L))
    return np.concatenate(head + [pack_nibbles(L, masked=name in ("Q5_0", "Q5_1"))], axis=1)


def quantize_numpy(name, x, imatrix=None):
    """Reference path: float32 [rows, n] (n a multiple of 32) -> uint8 [rows, n/32*bytes]."""
    x = np.ascontiguousarray(x, dtype=F32)
    rows, n = x.shape
    nbytes = BLOCK_BYTES[name]
    out = np.empty((rows, n // QK * nbytes), dtype=np.uint8)
    use_w = imatrix is not None and name != "Q8_0"      # ggml ignores it for Q8_0
    qw = check_imatrix(name, imatrix, n) if use_w else None
    rows_per_step = max(1, (_CHUNK_BLOCKS_WEIGHTED if use_w else _CHUNK_BLOCKS) * QK // max(n, 1))
    for s in range(0, rows, rows_per_step):
        xs = x[s:s + rows_per_step]
        w = _block_weights(xs, qw) if use_w else None
        out[s:s + rows_per_step] = _encode(name, xs.reshape(-1, QK), w).reshape(xs.shape[0], -1)
    return out


def check_imatrix(name, imatrix, n):
    qw = np.ascontiguousarray(np.asarray(imatrix, dtype=F32).reshape(-1))
    if qw.shape[0] != n:
        raise QuantError(f"{name}: importance vector has {qw.shape[0]} entries but rows have {n}; "
                         "use the imatrix entry recorded for this tensor")
    return qw


# ---------------------------------------------------------------- dequantizers (gguf-py's arithmetic)

def _f16(b):
    return np.ascontiguousarray(b).view(np.float16).astype(F32)


def _nibbles(qs):
    return np.concatenate([qs & 0xF, qs >> 4], axis=1)


def _fifth_bits(qh):
    u = np.ascontiguousarray(qh).view("<u4")
    return ((u >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def dequantize_blocks(name, blk):
    """uint8 [B, bytes] -> float32 [B, 32]."""
    if name == "Q8_0":
        return blk[:, 2:].view(np.int8).astype(F32) * _f16(blk[:, :2])
    if name == "Q4_0":
        return _f16(blk[:, :2]) * (_nibbles(blk[:, 2:]).astype(np.int8) - np.int8(8)).astype(F32)
    if name == "Q4_1":
        return (_f16(blk[:, :2]) * _nibbles(blk[:, 4:]).astype(F32)) + _f16(blk[:, 2:4])
    if name == "Q5_0":
        q = _nibbles(blk[:, 6:]) | (_fifth_bits(blk[:, 2:6]) << 4)
        return _f16(blk[:, :2]) * (q.astype(np.int8) - np.int8(16)).astype(F32)
    q = _nibbles(blk[:, 8:]) | (_fifth_bits(blk[:, 4:8]) << 4)
    return (_f16(blk[:, :2]) * q.astype(F32)) + _f16(blk[:, 2:4])


def dequantize(name, data):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    rows = data.shape[0]
    nbytes = BLOCK_BYTES[name]
    with np.errstate(invalid="ignore", over="ignore"):      # inf scales give inf/NaN, as in ggml
        return dequantize_blocks(name, data.reshape(-1, nbytes)).reshape(rows, -1)


# ---------------------------------------------------------------- public entry and registration

def has_compiled():
    return compiled_or_none() is not None


def _run_compiled(compiled, name, x, qw, threads):
    rows, n = x.shape
    out = np.empty((rows, n // QK * BLOCK_BYTES[name]), dtype=np.uint8)
    tid = int(QuantType[name])
    return split_rows(lambda xp, op, r: compiled.legacy(tid, xp, qw, op, r, n), x, out, threads)


def quantize(name, x, imatrix=None, threads=1, backend="auto"):
    """float32 [rows, n] (n a multiple of 32) -> ggml's `name` blocks, uint8 [rows, n/32*bytes].

    backend: "auto" (compiled kernels when built), "c" (require them) or "numpy"."""
    if name not in BLOCK_BYTES:
        raise QuantError(f"{name}: not a 32-value legacy type; use one of {', '.join(BLOCK_BYTES)}")
    x = np.ascontiguousarray(x, dtype=F32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] % QK:
        raise QuantError(f"{name}: rows of {x.shape[-1]} values cannot be cut into blocks of {QK}; "
                         "keep this tensor in F16")
    compiled = compiled_or_none(backend)
    if compiled is not None:
        qw = None if imatrix is None or name == "Q8_0" else check_imatrix(name, imatrix, x.shape[1])
        return _run_compiled(compiled, name, x, qw, threads)
    return quantize_numpy(name, x, imatrix)


def _register():
    from .registry import register
    for name in BLOCK_BYTES:
        register(QuantType[name],
                 lambda x, imatrix, threads, _n=name: quantize(_n, x, imatrix, threads),
                 lambda data, _n=name: dequantize(_n, data))


_register()
