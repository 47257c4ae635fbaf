"""NVFP4: 64 values in four sub-blocks of 16, each with an unsigned E4M3 scale, 4-bit E2M1 codes.

Block (36 bytes): 4 scale bytes (UE4M3), then 32 bytes of nibbles, 8 per sub-block (low =
values 0..7 of the sub-block, high = 8..15). ggml (quantize_row_nvfp4_ref; no importance
vector): per sub-block ue = ggml_fp32_to_ue4m3(max|x| / 6), d = ggml_ue4m3_to_fp32(ue) (the
E4M3 value halved, as MXFP4's table is doubled), and each value takes the first code of
kvalues_mxfp4 whose value times d is nearest.
"""
import numpy as np

from .backend import quantize_in_blocks
from .mxfp4 import nearest_codes
from .search import F32
from .types import QuantType, type_size

SUB = 16
BLOCK_BYTES = type_size(QuantType.NVFP4)
_KV = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=F32)
_CHUNK = 1 << 13


def to_ue4m3(x):
    """ggml_fp32_to_ue4m3 for float32 x: round on the fourth mantissa bit, saturate at 0x7E."""
    x = np.asarray(x, dtype=F32)
    pos = x > 0
    x = np.where(x > F32(448), F32(448), np.where(pos, x, F32(0))).astype(F32)
    bits = x.view(np.uint32)
    exp = ((bits >> 23) & 0xFF).astype(np.int32) - 127 + 7
    man = ((bits >> 20) & 7).astype(np.int32) + ((bits >> 19) & 1).astype(np.int32)
    carry = man > 7
    exp = np.where(carry, exp + 1, exp)
    man = np.where(carry, 0, man)
    normal = np.where(exp >= 15, 0x7E, (exp << 3) | man)
    sub = np.minimum((x * F32(512) + F32(0.5)).astype(np.int32), 7)      # (int) truncates
    sub = np.where(sub < 1, 0, sub)
    code = np.where(exp - carry <= 0, sub, normal)                       # the exponent before rounding decides
    return np.where(pos, code, 0).astype(np.uint8)


def from_ue4m3(u):
    """ggml_ue4m3_to_fp32: the E4M3 value times 0.5 (0 for codes 0 and 0x7F)."""
    u = np.asarray(u).astype(np.int64)
    exp, man = (u >> 3) & 0xF, u & 7
    raw = np.where(exp == 0, man * 2.0 ** -9, (1 + man / 8.0) * np.exp2(exp - 7.0))
    return np.where((u == 0) | (u == 0x7F), 0.0, raw * 0.5).astype(F32)


def _blocks(x):
    B = x.shape[0]
    xs = x.reshape(B * 4, SUB)
    with np.errstate(all="ignore"):
        amax = np.max(np.abs(xs), axis=1).astype(F32)
        ue = to_ue4m3(amax / F32(6))
        d = from_ue4m3(ue)
        L = nearest_codes(xs, d)
    qs = L[:, :8] | (L[:, 8:] << 4)
    return np.concatenate([ue.reshape(B, 4), qs.astype(np.uint8).reshape(B, 32)], axis=1)


def quantize(x, imatrix=None, threads=1, backend="auto"):
    """float32 [rows, n] (n a multiple of 64) -> NVFP4; an importance vector does not apply."""
    return quantize_in_blocks(QuantType.NVFP4, x, _blocks, _CHUNK, threads, backend)


def dequantize(data):
    data = np.ascontiguousarray(data, dtype=np.uint8)
    blk = data.reshape(-1, BLOCK_BYTES)
    d = from_ue4m3(blk[:, :4]).reshape(-1, 4, 1)
    qs = blk[:, 4:].reshape(-1, 4, 8)
    idx = np.concatenate([qs & 0xF, qs >> 4], axis=2)
    return (_KV[idx] * d).reshape(data.shape[0], -1)


def _register():
    from .registry import register
    register(QuantType.NVFP4, quantize, dequantize)


_register()
