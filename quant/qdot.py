"""Matrix products on ggml blocks, the way ggml's CPU backend computes them.

`matmul(qtype, w, x)` returns y[t, r] = dot(weight row r, x[t]) for a weight kept as raw
blocks (uint8 [rows, bytes_per_row]) and float32 activations x [tokens, n]:

1. each activation row is quantized to the weight type's vec_dot type: Q8_0 for
   Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1, Q8_K for the K-quants (the rounding of ggml-cpu's x86
   quantize_row_q8_*: half to even);
2. per block, integer dot products of the weight's and the activation's values (exact);
3. the blocks are combined in float32 in the order of ggml's generic `ggml_vec_dot_*`
   (ggml-cpu/quants.c): one running sum over 32-value blocks; for the K-quants 8 lane
   sums (value i goes to lane i mod 8) and the mins term, added up at the end.

The functions below are the readable reference, vectorized over rows and tokens with
numpy and looping over blocks in ggml's order. The compiled helper quant._qdot computes
the same numbers bit for bit (its vector paths only do the integer parts faster) and is
used when it is built. It takes the best path the CPU has (avx512vnni, avx2, scalar);
CONVKIT_QDOT_ISA=avx2 or =scalar makes it use a lower one.
"""
import os

import numpy as np

from . import iq4nl
from .errors import QuantError
from .types import QuantType as T, block_size, type_size

try:
    from . import _qdot as _compiled
except ImportError:  # no compiler at install time: the numpy path below
    _compiled = None

ACTIVATION = {T.Q4_0: "q8_0", T.Q5_0: "q8_0", T.Q8_0: "q8_0", T.IQ4_NL: "q8_0", T.Q4_1: "q8_1", T.Q5_1: "q8_1",
              T.Q2_K: "q8_k", T.Q3_K: "q8_k", T.Q4_K: "q8_k", T.Q5_K: "q8_k", T.Q6_K: "q8_k"}
BLOCK = {t: (block_size(t), type_size(t)) for t in ACTIVATION}
F32 = np.float32


def supported(qtype) -> bool:
    """Whether a quantized product exists for `qtype` (compiled or not)."""
    return qtype in ACTIVATION


COMPILED_TYPES = frozenset(T(t) for t in _compiled.types()) if _compiled is not None else frozenset()
# compiled_matmul(type_id, w, rows, x, tokens, n, out, threads): no checks beyond the helper's own
compiled_matmul = _compiled.matmul if _compiled is not None else None


ISA_VARIABLE = "CONVKIT_QDOT_ISA"
ISAS = ("scalar", "avx2", "avx512vnni")


def forced_isa() -> str | None:
    """The lower path CONVKIT_QDOT_ISA asks for, or None. A value the helper does not know
    is an error: ignoring it would silently measure or test a path the user did not ask for."""
    value = os.environ.get(ISA_VARIABLE) or None
    if value is not None and value not in ISAS:
        raise QuantError(f"{ISA_VARIABLE}={value!r} is not one of {', '.join(ISAS)}: "
                         f"unset it, or name the path to force")
    return value


def compiled_types() -> frozenset:
    """The types the compiled helper has a product for (empty when it is not built)."""
    forced_isa()
    return COMPILED_TYPES


_tiled: frozenset | None = None  # cache of tiled_types(), reset by set_isa


def tiled_types() -> frozenset:
    """The types whose compiled product on the current path computes several activation rows
    per pass over a weight row (fast for a prompt's rows too, not only for decoding)."""
    global _tiled
    forced_isa()
    if _tiled is None:
        _tiled = frozenset(T(t) for t in _compiled.tiled_types()) if _compiled is not None else frozenset()
    return _tiled


def isa() -> str:
    """The instruction set the compiled products use ('scalar', 'avx2', 'avx512vnni'), or 'numpy'."""
    forced_isa()
    return _compiled.isa() if _compiled is not None else "numpy"


# ------------------------------------------------------------------ activations
def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(F32)


def quantize_q8_0(x: np.ndarray):
    """x float32 [tokens, n] -> q int32 [tokens, n/32, 32], d float32 [tokens, n/32] (fp16 values),
    d32 (d before its fp16 rounding)."""
    b = x.astype(F32).reshape(x.shape[0], -1, 32)
    amax = np.abs(b).max(-1)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, F32(127) / np.where(amax > 0, amax, F32(1)), F32(0)).astype(F32)
    q = np.rint(b * inv[..., None]).astype(np.int32)
    d32 = (amax / F32(127)).astype(F32)
    return q, _f16(d32), d32


def quantize_q8_1(x: np.ndarray):
    """As Q8_0, plus s = fp16(d * sum(q)) with d before its fp16 rounding."""
    q, d, d32 = quantize_q8_0(x)
    s = _f16(d32 * q.sum(-1).astype(F32))
    return q, d, s


def quantize_q8_k(x: np.ndarray):
    """Per 256 values, the first value of largest magnitude maps to -127; d = 1/iscale.
    Returns q int32 [tokens, nb, 256], d float32 [tokens, nb], bsums int32 [tokens, nb, 16]."""
    b = x.astype(F32).reshape(x.shape[0], -1, 256)
    extreme = np.take_along_axis(b, np.abs(b).argmax(-1)[..., None], -1)[..., 0]
    nonzero = extreme != 0
    iscale = np.where(nonzero, F32(-127) / np.where(nonzero, extreme, F32(1)), F32(0)).astype(F32)
    q = np.minimum(np.rint(iscale[..., None] * b), 127).astype(np.int32)
    d = np.where(nonzero, F32(1) / np.where(nonzero, iscale, F32(1)), F32(0)).astype(F32)
    return q, d, q.reshape(*q.shape[:2], 16, 16).sum(-1)


# ------------------------------------------------------------------ weights
def _blocks(w: np.ndarray, qtype) -> np.ndarray:
    size = BLOCK[qtype][1]
    return np.ascontiguousarray(w, dtype=np.uint8).reshape(w.shape[0], -1, size)


def _half(blocks: np.ndarray, at: int) -> np.ndarray:
    return blocks[..., at:at + 2].copy().view(np.float16)[..., 0].astype(F32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 values: low nibbles are values 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], -1).astype(np.int32)


def weight_values(w: np.ndarray, qtype):
    """The integers of each 32-value block [rows, nb, 32] and the block's fp16 fields."""
    b = _blocks(w, qtype)
    if qtype == T.Q4_0:
        return _nibbles(b[..., 2:18]) - 8, {"d": _half(b, 0)}
    if qtype == T.Q4_1:
        return _nibbles(b[..., 4:20]), {"d": _half(b, 0), "m": _half(b, 2)}
    if qtype == T.Q5_0:
        qh = b[..., 2:6].copy().view("<u4")[..., 0]
        high = ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32) << 4
        return (_nibbles(b[..., 6:22]) | high) - 16, {"d": _half(b, 0)}
    if qtype == T.Q5_1:
        qh = b[..., 4:8].copy().view("<u4")[..., 0]
        high = ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32) << 4
        return _nibbles(b[..., 8:24]) | high, {"d": _half(b, 0), "m": _half(b, 2)}
    if qtype == T.Q8_0:
        return b[..., 2:34].view(np.int8).astype(np.int32), {"d": _half(b, 0)}
    if qtype == T.IQ4_NL:
        return iq4nl.KVALUES.astype(np.int32)[_nibbles(b[..., 2:18])], {"d": _half(b, 0)}
    raise ValueError(f"no 32-value product for {qtype!r}")


def q4_k_values(w: np.ndarray):
    """Q4_K: values [rows, nb, 256], scales and mins [rows, nb, 8] (6-bit), d and dmin."""
    b = _blocks(w, T.Q4_K)
    sc = b[..., 4:16].astype(np.int32)
    scales = np.concatenate([sc[..., 0:4] & 63, (sc[..., 8:12] & 0x0F) | ((sc[..., 0:4] >> 6) << 4)], -1)
    mins = np.concatenate([sc[..., 4:8] & 63, (sc[..., 8:12] >> 4) | ((sc[..., 4:8] >> 6) << 4)], -1)
    qs = b[..., 16:144].reshape(*b.shape[:2], 4, 32)
    values = np.stack([qs & 0x0F, qs >> 4], -2).reshape(*b.shape[:2], 256).astype(np.int32)
    return values, scales, mins, _half(b, 0), _half(b, 2)


def q5_k_values(w: np.ndarray):
    """Q5_K: as Q4_K (scales and mins the same), with each value's fifth bit from qh: bit 2j of
    qh[l] for value l of 32-value sub-block 2j, bit 2j + 1 for sub-block 2j + 1."""
    b = _blocks(w, T.Q5_K)
    sc = b[..., 4:16].astype(np.int32)
    scales = np.concatenate([sc[..., 0:4] & 63, (sc[..., 8:12] & 0x0F) | ((sc[..., 0:4] >> 6) << 4)], -1)
    mins = np.concatenate([sc[..., 4:8] & 63, (sc[..., 8:12] >> 4) | ((sc[..., 4:8] >> 6) << 4)], -1)
    qh = b[..., 16:48].astype(np.int32)
    qs = b[..., 48:176].reshape(*b.shape[:2], 4, 32).astype(np.int32)
    high = np.stack([(qh >> k) & 1 for k in range(8)], -2)  # [rows, nb, 8 sub-blocks, 32]
    low = np.stack([qs & 0x0F, qs >> 4], -2).reshape(*b.shape[:2], 8, 32)
    values = (low | (high << 4)).reshape(*b.shape[:2], 256)
    return values, scales, mins, _half(b, 0), _half(b, 2)


def q3_k_values(w: np.ndarray):
    """Q3_K: values [rows, nb, 256] in -4..3 (2 bits, minus 4 where the hmask bit is clear),
    scales [rows, nb, 16] in -32..31, d."""
    b = _blocks(w, T.Q3_K)
    hm = b[..., 0:32].astype(np.int32)
    q3 = b[..., 32:96].reshape(*b.shape[:2], 2, 32).astype(np.int32)
    low = np.stack([(q3 >> (2 * s)) & 3 for s in range(4)], -2)  # [rows, nb, 2, 4, 32]
    high = np.stack([(hm >> bit) & 1 for bit in range(8)], -2).reshape(*b.shape[:2], 2, 4, 32)
    values = (low - 4 * (1 - high)).reshape(*b.shape[:2], 256)
    a = b[..., 96:108].copy().view("<u4").astype(np.uint32)
    tmp = a[..., 2]
    m1, m2 = np.uint32(0x03030303), np.uint32(0x0F0F0F0F)
    words = np.stack([(a[..., 0] & m2) | (((tmp >> 0) & m1) << 4), (a[..., 1] & m2) | (((tmp >> 2) & m1) << 4),
                      ((a[..., 0] >> 4) & m2) | (((tmp >> 4) & m1) << 4),
                      ((a[..., 1] >> 4) & m2) | (((tmp >> 6) & m1) << 4)], -1).astype("<u4")
    scales = words.view(np.int8).astype(np.int32) - 32
    return values, scales, _half(b, 108)


def q2_k_values(w: np.ndarray):
    """Q2_K: values [rows, nb, 256] in 0..3, 4-bit scales and mins [rows, nb, 16], d and dmin."""
    b = _blocks(w, T.Q2_K)
    sc = b[..., 0:16].astype(np.int32)
    q2 = b[..., 16:80].reshape(*b.shape[:2], 2, 32).astype(np.int32)
    values = np.stack([(q2 >> (2 * j)) & 3 for j in range(4)], -2).reshape(*b.shape[:2], 256)
    return values, sc & 0xF, sc >> 4, _half(b, 80), _half(b, 82)


def _q2_k_matmul(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """ggml_vec_dot_q2_K_q8_K: one integer sum per block, sumf += dall * isum - dmin * summs."""
    q, dx, bsums = quantize_q8_k(x)
    values, scales, mins, dw, dmin = q2_k_values(w)
    sumf = np.zeros((values.shape[0], q.shape[0]), F32)
    for i in range(values.shape[1]):
        prod = (values[:, None, i, :] * q[None, :, i, :]).reshape(values.shape[0], q.shape[0], 16, 16).sum(-1)
        isum = (prod * scales[:, None, i, :]).sum(-1).astype(F32)
        summs = (bsums[None, :, i, :] * mins[:, None, i, :]).sum(-1).astype(F32)
        dall, dm = dx[None, :, i] * dw[:, i, None], dx[None, :, i] * dmin[:, i, None]
        sumf = sumf + (dall * isum - dm * summs)
    return sumf.T


def q6_k_values(w: np.ndarray):
    """Q6_K: values [rows, nb, 256] in -32..31, int8 scales [rows, nb, 16], d."""
    b = _blocks(w, T.Q6_K)
    ql = b[..., 0:128].reshape(*b.shape[:2], 2, 64).astype(np.int32)
    qh = b[..., 128:192].reshape(*b.shape[:2], 2, 32).astype(np.int32)
    parts = [(ql[..., 0:32] & 0xF) | (((qh >> 0) & 3) << 4), (ql[..., 32:64] & 0xF) | (((qh >> 2) & 3) << 4),
             (ql[..., 0:32] >> 4) | (((qh >> 4) & 3) << 4), (ql[..., 32:64] >> 4) | (((qh >> 6) & 3) << 4)]
    values = np.stack(parts, -2).reshape(*b.shape[:2], 256) - 32
    return values, b[..., 192:208].view(np.int8).astype(np.int32), _half(b, 208)


# ------------------------------------------------------------------ products (reference)
def _legacy_matmul(qtype, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    values, fields = weight_values(w, qtype)
    if qtype in (T.Q4_1, T.Q5_1):
        q, dx, sx = quantize_q8_1(x)
    else:
        q, dx, _ = quantize_q8_0(x)
    isum = np.einsum("rbj,tbj->rtb", values, q)  # [rows, tokens, nb], exact integers
    dw = fields["d"]
    sumf = np.zeros(isum.shape[:2], F32)
    for i in range(isum.shape[2]):  # ggml's running sum over blocks, float32 throughout
        s = isum[:, :, i].astype(F32)
        wd, xd = dw[:, i, None], dx[None, :, i]
        if qtype == T.Q4_0:
            sumf = sumf + s * wd * xd
        elif qtype in (T.Q4_1, T.Q5_1):
            sumf = sumf + ((wd * xd) * s + fields["m"][:, i, None] * sx[None, :, i])
        elif qtype == T.IQ4_NL:
            sumf = sumf + (xd * wd) * s
        elif qtype == T.Q5_0:
            sumf = sumf + (wd * xd) * s
        else:  # Q8_0
            sumf = sumf + s * (wd * xd)
    return sumf.T


def _lanes(prod: np.ndarray, scale_per_value: np.ndarray) -> np.ndarray:
    """[rows, tokens, 256] products, [rows, 1, 256] scales -> [rows, tokens, 8] lane sums."""
    return (prod * scale_per_value).reshape(*prod.shape[:2], 32, 8).sum(-2)


def _kquant_matmul(qtype, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    q, dx, bsums = quantize_q8_k(x)
    if qtype in (T.Q4_K, T.Q5_K):
        values, scales, mins, dw, dmin = q4_k_values(w) if qtype == T.Q4_K else q5_k_values(w)
        per_value = np.repeat(scales, 32, -1)
    else:
        values, scales, dw = q6_k_values(w) if qtype == T.Q6_K else q3_k_values(w)
        per_value = np.repeat(scales, 16, -1)
    rows, tokens = values.shape[0], q.shape[0]
    sums = np.zeros((rows, tokens, 8), F32)
    sumf = np.zeros((rows, tokens), F32)
    for i in range(values.shape[1]):
        prod = values[:, None, i, :] * q[None, :, i, :]
        aux32 = _lanes(prod, per_value[:, None, i, :]).astype(F32)
        d = dw[:, i, None] * dx[None, :, i]
        sums = sums + d[..., None] * aux32
        if qtype in (T.Q4_K, T.Q5_K):
            sumi = (bsums[None, :, i, :] * np.repeat(mins[:, None, i, :], 2, -1)).sum(-1).astype(F32)
            sumf = sumf - (dmin[:, i, None] * dx[None, :, i]) * sumi
    for lane in range(8):
        sumf = sumf + sums[..., lane]
    return sumf.T


def matmul_reference(qtype, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """numpy: y [tokens, rows] float32 for raw blocks w [rows, bytes] and x [tokens, n]."""
    qtype = T(qtype)
    if qtype not in ACTIVATION:
        raise ValueError(f"no quantized product for {qtype.name}")
    x = np.atleast_2d(np.asarray(x, F32))
    if qtype == T.Q2_K:
        return np.ascontiguousarray(_q2_k_matmul(w, x))
    if qtype in (T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
        return np.ascontiguousarray(_kquant_matmul(qtype, w, x))
    return np.ascontiguousarray(_legacy_matmul(qtype, w, x))


def matmul(qtype, w: np.ndarray, x: np.ndarray, out: np.ndarray | None = None,
           threads: int | None = None) -> np.ndarray:
    """y [tokens, rows] float32; the compiled helper when built, else matmul_reference.
    `w` (uint8 [rows, bytes_per_row], C-contiguous) is read in place, never copied."""
    qtype = T(qtype)
    x = np.ascontiguousarray(x, F32)
    if x.ndim == 1:
        x = x[None]
    if qtype not in COMPILED_TYPES:
        y = matmul_reference(qtype, w, x)
        if out is not None:
            out[...] = y
            return out
        return y
    rows = w.shape[0]
    if out is None:
        out = np.empty((x.shape[0], rows), F32)
    _compiled.matmul(int(qtype), w, rows, x, x.shape[0], x.shape[1], out,
                     int(threads or os.cpu_count() or 1))
    return out


def set_isa(name: str) -> str:
    """'scalar', 'avx2', 'avx512vnni' (ValueError where the CPU lacks it) or 'best', for tests
    that compare the compiled paths; returns the one in use."""
    global _tiled
    if _compiled is None:
        return "numpy"
    _tiled = None
    return _compiled.set_isa(name)
