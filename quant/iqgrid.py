"""Grid types: IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M (ggml's "i-quants" whose
groups of values are grid points).

A 256-value super-block holds an fp16 d and blocks of 32 or 16 values, each with a 3- or
4-bit scale; every group of 4 (IQ3) or 8 (IQ2, IQ1) values is one point of a fixed grid (its
index is stored). IQ3/IQ2: the signs are stored apart, value = d * block scale * grid
coordinate * sign; IQ1: the grid holds -1, 0, 1 and a shift of +-1/8 is added.

- IQ3_XXS (98 bytes): d; 64 grid indices (256-point grid); per block a u32 holding four 7-bit
  sign patterns (the 8th sign of each 8 makes the count of minus signs even) and the scale
  in its top 4 bits; block scale (0.5 + s) * 0.5.
- IQ3_S (110 bytes): d; 64 low index bytes; 8 bytes of 9th index bits (512-point grid);
  32 bytes of signs, one bit per value; 4 bytes of two 4-bit scales; block scale 1 + 2s.
- IQ2_XXS (66 bytes): d; per 32-value block two u32: four 8-bit grid indices (256 points of
  8), then four 7-bit sign patterns and the scale; block scale (0.5 + s) * 0.25.
- IQ2_XS (74 bytes): d; 32 u16 of a 9-bit index and 7 sign bits; 8 bytes of two 4-bit
  scales of 16-value blocks; block scale (0.5 + s) * 0.25.
- IQ2_S (82 bytes): d; 32 low index bytes; 32 sign bytes; 8 bytes of 2 high index bits
  (1024 points); 8 bytes of two 4-bit scales of 16-value blocks; block scale (0.5 + s) * 0.25.
- IQ1_S (50 bytes): d; 32 low index bytes (2048 points of 8 levels -1, 0, 1); per 32-value
  block a u16: 3 high bits per group, a 3-bit scale and the sign of the shift delta = 1/8;
  value = d * (2s + 1) * (level + delta).
- IQ1_M (56 bytes): 32 low index bytes; per 16-value block a byte of two 3-bit high parts and
  two shift signs; 8 bytes of 3-bit block scales with the fp16 d spread over their top nibbles.
  gguf-py's IQ1_M dequantizer ignores the shift signs (an operator-precedence slip); this one
  reads them as ggml does.

ggml quantizes IQ2_XXS, IQ2_XS and IQ1_S only with an importance vector
(ggml_quantize_requires_imatrix); quantize refuses them without one.

The grids are data that gguf-py ships (gguf.quants.IQ3_XXS.grid_hex ...), read here once:
coordinates for dequantization, and for the compiled quantizer each point's levels l
(coordinate index: 3 bits for IQ3's 8 levels, 2 for the 3 of IQ2/IQ1) packed into one code.
The quantizer is ggml's grid search, in C only
(quant/_kquants_grid.h builds the neighbour tables from the codes at first use); a numpy
twin of that search would take minutes per tensor.

On rows whose values are so large that the weights overflow (|x| > 1.8e19) ggml's search
finds no grid point and aborts the process for most of these types; quantize raises
QuantError there instead (and gives ggml's bytes where ggml writes some).
"""
import functools

import numpy as np
from gguf import quants as gguf_quants

from .backend import compiled_or_none
from .errors import QuantError
from .legacy import check_imatrix
from .types import QuantType, block_size, requires_imatrix, type_size

F32 = np.float32
QK_K = 256
GRID_TYPES = (QuantType.IQ3_XXS, QuantType.IQ3_S, QuantType.IQ2_XXS, QuantType.IQ2_XS, QuantType.IQ2_S,
              QuantType.IQ1_S, QuantType.IQ1_M)
NEEDS_IMATRIX = tuple(t for t in GRID_TYPES if requires_imatrix(t))
_GGUF_CLASS = {t: getattr(gguf_quants, t.name) for t in GRID_TYPES}


@functools.cache
def grid_levels(qtype) -> np.ndarray:
    """uint8 [points, 4 or 8]: each grid point's coordinate indices into the class's grid_map,
    decoded from gguf-py's grid_hex (hex digits; `bits` per index, 8 // (8 // bits) apart in
    a byte, lowest first)."""
    cls = _GGUF_CLASS[QuantType(int(qtype))]
    bits = _bits(qtype)
    digits = np.frombuffer(cls.grid_hex, dtype=np.uint8).reshape(-1, 2)
    nibble = np.where(digits > 0x40, digits + 9, digits) & 0x0F
    packed = (nibble[:, 0] << 4) | nibble[:, 1]
    shifts = np.arange(0, 8, 8 // (8 // bits), dtype=np.uint8)
    levels = (packed[:, None] >> shifts) & ((1 << bits) - 1)
    return levels.reshape(cls.grid_shape).astype(np.uint8)


def _bits(qtype) -> int:
    """Bits per grid coordinate index: 3 for the 8 IQ3 levels, 2 for the 3 IQ2 ones."""
    return int(np.ceil(np.log2(len(_GGUF_CLASS[QuantType(int(qtype))].grid_map))))


@functools.cache
def grid_values(qtype) -> np.ndarray:
    """float32 [points, 4 or 8]: the coordinates dequantization multiplies (gguf-py's grid_map)."""
    cls = _GGUF_CLASS[QuantType(int(qtype))]
    return np.asarray(cls.grid_map, dtype=F32)[grid_levels(qtype)]


def grid_codes(qtype) -> np.ndarray:
    """uint16 [points]: the levels packed l0 | l1 << b | l2 << 2b ..., b bits each (3 for IQ3,
    2 for IQ2/IQ1), the quantizer's point codes."""
    lv = grid_levels(qtype).astype(np.uint16)
    shifts = (_bits(qtype) * np.arange(lv.shape[1])).astype(np.uint16)
    return (lv << shifts).sum(axis=1).astype(np.uint16)


_handed_over = set()


def _compiled(qtype, backend="auto"):
    """The compiled module with this type's grid handed over, or a QuantError."""
    compiled = compiled_or_none(backend)
    name = QuantType(int(qtype)).name
    if compiled is None or not hasattr(compiled, "grid"):
        raise QuantError(f"{name}: quantizing needs the compiled helper quant._kquants; "
                         "reinstall convkit with a C compiler (pip install -e .)")
    if qtype not in _handed_over:
        compiled.grid_codes(int(qtype), np.ascontiguousarray(grid_codes(qtype)))
        _handed_over.add(qtype)
    return compiled


def has_compiled() -> bool:
    compiled = compiled_or_none()
    return compiled is not None and hasattr(compiled, "grid")


def quantize(qtype, x, imatrix=None, threads=1, backend="auto"):
    """float32 [rows, n] (n a multiple of 256) -> ggml's bytes of a grid type."""
    from ._threads import row_results

    qtype = QuantType(int(qtype))
    x = np.ascontiguousarray(x, dtype=F32)
    rows, n = x.shape
    qw = None if imatrix is None else check_imatrix(qtype.name, imatrix, n)
    if qw is None and qtype in NEEDS_IMATRIX:
        raise QuantError(f"{qtype.name}: ggml quantizes this type only with an importance vector; "
                         "pass an imatrix (`convkit imatrix` makes one) or choose another type")
    compiled = _compiled(qtype, backend)
    out = np.empty((rows, n // QK_K * type_size(qtype)), dtype=np.uint8)
    tid = int(qtype)
    found = row_results(lambda xp, op, r: compiled.grid(tid, xp, qw, op, r, n), x, out, max(1, int(threads)))
    bad = [a + r for a, r in found if r >= 0]
    if bad:
        raise QuantError(f"{qtype.name}: row {min(bad)} holds values too large for the grid search "
                         f"(largest magnitude {float(np.abs(x[min(bad)]).max()):.3g}); ggml aborts on such "
                         "rows too: rescale the tensor or keep it in F16/F32")
    return out


def _signs_from_bits(bits):
    """uint8 [...] -> float32 [..., 8]: +1 / -1 for each bit, low bit first."""
    b = (bits[..., None] >> np.arange(8, dtype=np.uint8)) & 1
    return np.where(b == 0, F32(1), F32(-1))


@functools.cache
def _even_signs() -> np.ndarray:
    """ggml's ksigns_iq2xs: 7 sign bits -> 8, the 8th making the count of ones even."""
    k = np.arange(128, dtype=np.uint8)
    parity = np.unpackbits(k[:, None], axis=1).sum(axis=1) & 1
    return (k | (parity.astype(np.uint8) << 7)).astype(np.uint8)


def dequantize_iq3_xxs(data):
    """gguf-py's arithmetic: d * (0.5 + s) * 0.5, times the grid coordinate, times the sign."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    rows = data.shape[0]
    blk = data.reshape(-1, type_size(QuantType.IQ3_XXS))
    S = blk.shape[0]
    d = np.ascontiguousarray(blk[:, :2]).view(np.float16).astype(F32)                 # [S, 1]
    qs = blk[:, 2:66].reshape(S, 8, 8)
    ss = np.ascontiguousarray(blk[:, 66:98]).view("<u4")                               # [S, 8]
    db = (d * (F32(0.5) + (ss >> 28).astype(F32)) * F32(0.5)).reshape(S, 8, 1, 1)
    pat = ((ss[:, :, None] >> np.array([0, 7, 14, 21], dtype=np.uint32)) & 0x7F).astype(np.uint8)
    signs = _signs_from_bits(_even_signs()[pat]).reshape(S, 8, 8, 4)                  # [S, blk, grp, 4]
    grid = grid_values(QuantType.IQ3_XXS)[qs]                                          # [S, 8, 8, 4]
    with np.errstate(invalid="ignore", over="ignore"):
        return (db * grid * signs).reshape(rows, -1)


def dequantize_iq3_s(data):
    """gguf-py's arithmetic: d * (1 + 2 s), times the grid coordinate, times the sign."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    rows = data.shape[0]
    blk = data.reshape(-1, type_size(QuantType.IQ3_S))
    S = blk.shape[0]
    d = np.ascontiguousarray(blk[:, :2]).view(np.float16).astype(F32)                 # [S, 1]
    qh = ((blk[:, 66:74, None] >> np.arange(8, dtype=np.uint8)) & 1).astype(np.uint16)  # [S, 8, 8]
    idx = blk[:, 2:66].reshape(S, 8, 8).astype(np.uint16) | (qh << 8)
    signs = _signs_from_bits(blk[:, 74:106]).reshape(S, 8, 8, 4)
    sc = blk[:, 106:110, None] >> np.array([0, 4], dtype=np.uint8)
    sc = (sc & 0x0F).reshape(S, 8)
    db = (d * (1 + 2 * sc).astype(F32)).reshape(S, 8, 1, 1)
    grid = grid_values(QuantType.IQ3_S)[idx]
    with np.errstate(invalid="ignore", over="ignore"):
        return (db * grid * signs).reshape(rows, -1)


def _grid_blocks(data, qtype, db, idx, signs):
    """db [S, blocks] * grid[idx] [S, blocks, groups, dim] * signs, in gguf-py's order."""
    S = idx.shape[0]
    grid = grid_values(qtype)[idx]
    with np.errstate(invalid="ignore", over="ignore"):
        out = db.reshape(S, -1, 1, 1) * grid.reshape(S, db.shape[1], -1, grid.shape[-1]) * signs.reshape(
            S, db.shape[1], -1, grid.shape[-1])
    return out.reshape(data.shape[0], -1)


def _iq2_scale(d, s):
    return d * (F32(0.5) + s.astype(F32)) * F32(0.25)


def dequantize_iq2_xxs(data):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    blk = data.reshape(-1, type_size(QuantType.IQ2_XXS))
    S = blk.shape[0]
    d = np.ascontiguousarray(blk[:, :2]).view(np.float16).astype(F32)
    q = np.ascontiguousarray(blk[:, 2:66]).view("<u4").reshape(S, 8, 2)
    db = _iq2_scale(d, q[..., 1] >> 28)                                                # [S, 8]
    idx = np.ascontiguousarray(q[..., 0]).view(np.uint8).reshape(S, 8, 4)
    pat = ((q[..., 1:2] >> np.array([0, 7, 14, 21], dtype=np.uint32)) & 0x7F).astype(np.uint8)
    return _grid_blocks(data, QuantType.IQ2_XXS, db, idx, _signs_from_bits(_even_signs()[pat]))


def dequantize_iq2_xs(data):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    blk = data.reshape(-1, type_size(QuantType.IQ2_XS))
    S = blk.shape[0]
    d = np.ascontiguousarray(blk[:, :2]).view(np.float16).astype(F32)
    qs = np.ascontiguousarray(blk[:, 2:66]).view("<u2").reshape(S, 32)
    sc = blk[:, 66:74, None] >> np.array([0, 4], dtype=np.uint8)
    db = _iq2_scale(d, (sc & 0x0F).reshape(S, 16))
    signs = _signs_from_bits(_even_signs()[(qs >> 9).astype(np.uint8)])
    return _grid_blocks(data, QuantType.IQ2_XS, db, qs & 511, signs)


def dequantize_iq2_s(data):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    blk = data.reshape(-1, type_size(QuantType.IQ2_S))
    S = blk.shape[0]
    d = np.ascontiguousarray(blk[:, :2]).view(np.float16).astype(F32)
    qh = (blk[:, 66:74, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3
    idx = blk[:, 2:34].astype(np.uint16) | (qh.reshape(S, 32).astype(np.uint16) << 8)
    sc = blk[:, 74:82, None] >> np.array([0, 4], dtype=np.uint8)
    db = _iq2_scale(d, (sc & 0x0F).reshape(S, 16))
    return _grid_blocks(data, QuantType.IQ2_S, db, idx, _signs_from_bits(blk[:, 34:66]))


def _iq1_values(data, qtype, dl, idx, negative):
    """dl [S, groups] * (grid[idx] + delta), delta = -1/8 where `negative`, else 1/8 (ggml's order)."""
    delta = np.where(negative, F32(-0.125), F32(0.125)).astype(F32)
    grid = grid_values(qtype)[idx]                                                    # [S, groups, 8]
    with np.errstate(invalid="ignore", over="ignore"):
        return (dl[..., None] * (grid + delta[..., None])).reshape(data.shape[0], -1)


def dequantize_iq1_s(data):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    blk = data.reshape(-1, type_size(QuantType.IQ1_S))
    S = blk.shape[0]
    d = np.ascontiguousarray(blk[:, :2]).view(np.float16).astype(F32)                # [S, 1]
    qh = np.ascontiguousarray(blk[:, 34:50]).view("<u2")                              # [S, 8]
    dl = d * (2 * ((qh >> 12) & 7) + 1).astype(F32)
    high = (qh[:, :, None] >> np.array([0, 3, 6, 9], dtype=np.uint16)) & 7
    idx = blk[:, 2:34].astype(np.uint16) | (high.reshape(S, 32) << 8)
    neg = np.repeat((qh & 0x8000) != 0, 4, axis=1)
    return _iq1_values(data, QuantType.IQ1_S, np.repeat(dl, 4, axis=1), idx, neg)


def dequantize_iq1_m(data):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    blk = data.reshape(-1, type_size(QuantType.IQ1_M))
    S = blk.shape[0]
    sc = np.ascontiguousarray(blk[:, 48:56]).view("<u2")                              # [S, 4]
    dbits = ((sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00)
             | (sc[:, 3] & 0xF000)).astype(np.uint16)
    d = dbits.view(np.float16).astype(F32)[:, None]
    s3 = ((sc[:, :, None] >> np.array([0, 3, 6, 9], dtype=np.uint16)) & 7).reshape(S, 16)
    dl = d * (2 * s3 + 1).astype(F32)                                                  # [S, 16]
    qh = blk[:, 32:48]
    high = np.stack([qh & 7, (qh >> 4) & 7], axis=2).reshape(S, 32).astype(np.uint16)
    idx = blk[:, :32].astype(np.uint16) | (high << 8)
    neg = np.stack([(qh & 0x08) != 0, (qh & 0x80) != 0], axis=2).reshape(S, 32)
    return _iq1_values(data, QuantType.IQ1_M, np.repeat(dl, 2, axis=1), idx, neg)


DEQUANTIZE = {QuantType.IQ1_S: dequantize_iq1_s, QuantType.IQ1_M: dequantize_iq1_m,
              QuantType.IQ3_XXS: dequantize_iq3_xxs, QuantType.IQ3_S: dequantize_iq3_s,
              QuantType.IQ2_XXS: dequantize_iq2_xxs, QuantType.IQ2_XS: dequantize_iq2_xs,
              QuantType.IQ2_S: dequantize_iq2_s}


def _register():
    from .registry import register
    compiled = compiled_or_none()
    for t in GRID_TYPES:
        if compiled is not None and hasattr(compiled, "grid"):
            _compiled(t)               # hand the codes over now (cheap): quantize_source may stream the type
        assert block_size(t) == QK_K
        register(t, functools.partial(lambda t, x, imatrix, threads: quantize(t, x, imatrix, threads), t),
                 DEQUANTIZE[t])


_register()
