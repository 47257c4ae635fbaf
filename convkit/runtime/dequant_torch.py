"""ggml block types to float32, in torch, on whatever device the bytes live on.

`dequantize(data, qtype)` takes the raw bytes of whole rows (uint8 [rows, bytes_per_row],
as `gguf.GGUFReader` gives them) and returns float32 [rows, row_length]. Each function
does the arithmetic of gguf-py's `gguf.quants` in the same order and in float32, so the
result equals `gguf.quants.dequantize` bit for bit (tests/test_runtime_dequant.py); the
point of doing it in torch is speed (vectorized, multithreaded, on the GPU when there is
one), since the runtime dequantizes every layer on every forward pass.
"""
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

QK_K = 256
_IQ4NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 at byte `start` (even) of each block, as float32 [n_blocks, 1]."""
    half = start // 2
    return blocks.view(torch.int16)[:, half:half + 1].contiguous().view(torch.float16).float()


def _fields(blocks: torch.Tensor, shift: int, mask: int) -> torch.Tensor:
    """(byte >> shift) & mask for every byte of every block, as int8 [n_blocks, block_bytes].

    Works on 16-bit words (both bytes at once), which vectorizes far better than bytes."""
    words = blocks.view(torch.int16)
    if shift:
        words = words >> shift
    return (words & (mask | mask << 8)).view(torch.int8)


def _unpack(blocks: torch.Tensor, start: int, groups: int, group: int, shifts, bits: int,
            out: torch.Tensor) -> torch.Tensor:
    """Spread packed fields into `out` [n, groups, len(shifts), group].

    Bytes start..start+groups*group hold `groups` runs of `group` bytes; for each shift s the
    field (byte >> s) & (2**bits - 1) of run g lands in out[:, g, index of s]."""
    n = blocks.shape[0]
    for i, s in enumerate(shifts):
        fields = _fields(blocks, s, (1 << bits) - 1)[:, start:start + groups * group]
        out[:, :, i].copy_(fields.view(n, groups, group))
    return out


def _last(op, a: torch.Tensor, b: torch.Tensor, dtype) -> torch.Tensor:
    """op(a, b) as the final step: in place for float32, else rounded once into `dtype`."""
    if dtype == torch.float32:
        return op(a, b, out=a)
    return op(a, b, out=torch.empty(a.shape, dtype=dtype, device=a.device))


def _q4_0(b, dtype):
    n = b.shape[0]
    q = _unpack(b, 2, 1, 16, (0, 4), 4, b.new_empty((n, 1, 2, 16), dtype=torch.float32)).view(n, 32)
    return _last(torch.mul, q.sub_(8), _f16(b, 0), dtype)


def _q4_1(b, dtype):
    n = b.shape[0]
    q = _unpack(b, 4, 1, 16, (0, 4), 4, b.new_empty((n, 1, 2, 16), dtype=torch.float32)).view(n, 32)
    return _last(torch.add, q.mul_(_f16(b, 0)), _f16(b, 2), dtype)


def _q5_quants(b, qh_at: int, qs_at: int) -> torch.Tensor:
    """Q5_0/Q5_1 quants 0..31 as int8 [n, 32]: nibbles plus the fifth bits of a little-endian u32."""
    n = b.shape[0]
    q = _unpack(b, qs_at, 1, 16, (0, 4), 4, b.new_empty((n, 1, 2, 16), dtype=torch.int8)).view(n, 32)
    words = b.view(torch.int16)[:, qh_at // 2:qh_at // 2 + 2].to(torch.int32) & 0xFFFF
    qh = words[:, :1] | (words[:, 1:] << 16)
    shifts = torch.arange(32, dtype=torch.int32, device=b.device)
    high = ((qh >> shifts) & 1).to(torch.int8)
    return q | (high << 4)


def _q5_0(b, dtype):
    q = _q5_quants(b, 2, 6).float()
    return _last(torch.mul, q.sub_(16), _f16(b, 0), dtype)


def _q5_1(b, dtype):
    q = _q5_quants(b, 4, 8).float()
    return _last(torch.add, q.mul_(_f16(b, 0)), _f16(b, 2), dtype)


def _q8_0(b, dtype):
    return _last(torch.mul, b[:, 2:].view(torch.int8).float(), _f16(b, 0), dtype)


def _q2_k(b, dtype):
    n = b.shape[0]
    scales = b[:, :16]
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = _unpack(b, 16, 2, 32, (0, 2, 4, 6), 2, b.new_empty((n, 2, 4, 32), dtype=torch.float32))
    return _last(torch.sub, q.view(n, 16, 16).mul_(dl), ml, dtype).view(n, QK_K)


def _q3_k(b, dtype):
    n = b.shape[0]
    scales = b[:, 96:108]
    d = _f16(b, 108)
    low = torch.cat([scales[:, :8] & 0x0F, scales[:, :8] >> 4], dim=1)
    high = torch.cat([(scales[:, 8:12] >> s) & 3 for s in (0, 2, 4, 6)], dim=1)
    dl = (d * ((low | (high << 4)).to(torch.int8) - 32).float()).reshape(n, 16, 1)
    q = _unpack(b, 32, 2, 32, (0, 2, 4, 6), 2, b.new_empty((n, 2, 4, 32), dtype=torch.int8))
    hmask = _unpack(b, 0, 1, 32, range(8), 1, b.new_empty((n, 1, 8, 32), dtype=torch.int8))
    q = (q.view(n, QK_K) - ((hmask.view(n, QK_K) ^ 1) << 2)).float()  # offset 4 where the bit is 0
    return _last(torch.mul, q.view(n, 16, 16), dl, dtype).view(n, QK_K)


def _k_scale_min(scales: torch.Tensor):
    """The 12 packed bytes of Q4_K/Q5_K -> 8 six-bit scales and 8 six-bit mins."""
    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mn


def _k_scales(b):
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    d = (_f16(b, 0) * sc.float()).reshape(n, 8, 1)
    dm = (_f16(b, 2) * mn.float()).reshape(n, 8, 1)
    return d, dm


def _q4_k(b, dtype):
    n = b.shape[0]
    d, dm = _k_scales(b)
    q = _unpack(b, 16, 4, 32, (0, 4), 4, b.new_empty((n, 4, 2, 32), dtype=torch.float32))
    return _last(torch.sub, q.view(n, 8, 32).mul_(d), dm, dtype).view(n, QK_K)


def _q5_k(b, dtype):
    n = b.shape[0]
    d, dm = _k_scales(b)
    q = _unpack(b, 48, 4, 32, (0, 4), 4, b.new_empty((n, 4, 2, 32), dtype=torch.int8))
    qh = _unpack(b, 16, 1, 32, range(8), 1, b.new_empty((n, 1, 8, 32), dtype=torch.int8))
    q = (q.view(n, QK_K) | (qh.view(n, QK_K) << 4)).float()
    return _last(torch.sub, q.view(n, 8, 32).mul_(d), dm, dtype).view(n, QK_K)


def _q6_k(b, dtype):
    n = b.shape[0]
    d = (_f16(b, 208) * b[:, 192:208].view(torch.int8).float()).reshape(n, 16, 1)
    low = _unpack(b, 0, 2, 64, (0, 4), 4, b.new_empty((n, 2, 2, 64), dtype=torch.int8))
    high = _unpack(b, 128, 2, 32, (0, 2, 4, 6), 2, b.new_empty((n, 2, 4, 32), dtype=torch.int8))
    q = (low.view(n, QK_K) | (high.view(n, QK_K) << 4)).float()
    return _last(torch.mul, q.sub_(32).view(n, 16, 16), d, dtype).view(n, QK_K)


def _iq4_nl(b, dtype):
    n = b.shape[0]
    table = torch.tensor(_IQ4NL_VALUES, dtype=torch.float32, device=b.device)
    idx = _unpack(b, 2, 1, 16, (0, 4), 4, b.new_empty((n, 1, 2, 16), dtype=torch.int8)).view(n, 32)
    return _last(torch.mul, table[idx.long()], _f16(b, 0), dtype)


def _iq4_xs(b, dtype):
    n = b.shape[0]
    d = _f16(b, 0)
    scales_h = b[:, 2:4].to(torch.int32)
    scales_h = scales_h[:, 0] | (scales_h[:, 1] << 8)
    high = torch.stack([(scales_h >> (2 * i)) & 3 for i in range(8)], dim=1)
    low = b[:, 4:8].reshape(n, 4, 1)
    low = torch.cat([low & 0x0F, low >> 4], dim=2).reshape(n, 8).to(torch.int32)
    dl = (d * ((low | (high << 4)).to(torch.int8) - 32).float()).reshape(n, 8, 1)
    table = torch.tensor(_IQ4NL_VALUES, dtype=torch.float32, device=b.device)
    idx = _unpack(b, 8, 8, 16, (0, 4), 4, b.new_empty((n, 8, 2, 16), dtype=torch.int8)).view(n, 8, 32)
    return _last(torch.mul, table[idx.long()], dl, dtype).view(n, QK_K)


def _trits(b, start: int, count: int, k: int) -> torch.Tensor:
    """ggml's base-3 digits: trit n of byte q is ((uint8)(q * 3^n) * 3) >> 8, minus 1;
    bytes start..start+count -> int32 [n_blocks, k, count]."""
    q = b[:, start:start + count].to(torch.int32).unsqueeze(1)
    pow3 = torch.tensor([1, 3, 9, 27, 81][:k], dtype=torch.int32, device=b.device).view(1, k, 1)
    return (((q * pow3) & 0xFF) * 3 >> 8) - 1


def _tq1_0(b, dtype):
    n = b.shape[0]
    q = torch.cat([_trits(b, 0, 32, 5).view(n, 160), _trits(b, 32, 16, 5).view(n, 80),
                   _trits(b, 48, 4, 4).view(n, 16)], dim=1).float()
    return _last(torch.mul, q, _f16(b, 52), dtype)


def _tq2_0(b, dtype):
    n = b.shape[0]
    q = _unpack(b, 0, 2, 32, (0, 2, 4, 6), 2, b.new_empty((n, 2, 4, 32), dtype=torch.float32)).view(n, QK_K)
    return _last(torch.mul, q.sub_(1), _f16(b, 64), dtype)


_FP4_VALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)


def _bits_to_float(bits: torch.Tensor) -> torch.Tensor:
    return bits.to(torch.int32).view(torch.float32)


def _fp4_codes(qs: torch.Tensor) -> torch.Tensor:
    """[..., k] bytes -> table values [..., 2k]: low nibbles first, then high ones."""
    table = torch.tensor(_FP4_VALUES, dtype=torch.float32, device=qs.device)
    return table[torch.cat([qs & 0x0F, qs >> 4], dim=-1).long()]


def _mxfp4(b, dtype):
    e = b[:, 0:1].to(torch.int32)
    # ggml_e8m0_to_fp32_half: 2^(e - 128), subnormal for e < 2
    d = _bits_to_float(torch.where(e < 2, 0x00200000 << e, (e - 1) << 23))
    return _last(torch.mul, _fp4_codes(b[:, 1:17]), d, dtype)


def _nvfp4(b, dtype):
    n = b.shape[0]
    u = b[:, 0:4].to(torch.int32)
    e, m = (u >> 3) & 0xF, (u & 7).float()
    # ggml_ue4m3_to_fp32: E4M3 halved (exact powers of two built from their bits)
    normal = (1 + m / 8) * _bits_to_float((e - 7 + 127).clamp(min=1) << 23)
    d = torch.where(e == 0, m * 2.0 ** -9, normal) * 0.5
    d = torch.where((u == 0) | (u == 0x7F), 0.0, d).view(n, 4, 1)
    return _last(torch.mul, _fp4_codes(b[:, 4:36].reshape(n, 4, 8)), d, dtype).view(n, 64)


def _q1_0(b, dtype):
    n = b.shape[0]
    d = _f16(b, 0)
    bits = (b[:, 2:18].to(torch.int32).unsqueeze(-1) >> torch.arange(8, device=b.device)) & 1
    out = torch.where(bits.view(n, 128).bool(), d, -d)
    return out if dtype == torch.float32 else out.to(dtype)


def _grid(cls, device) -> torch.Tensor:
    """gguf-py's grid of an i-quant class (float32 [points, 4 or 8]), on `device`."""
    cls.init_grid()
    return torch.from_numpy(cls.grid.reshape(cls.grid_shape)).to(device)


def _sign_bits(bits: torch.Tensor) -> torch.Tensor:
    """uint8/int [...] -> float32 [..., 8]: +1 / -1 per bit, low bit first."""
    b = (bits.to(torch.int32).unsqueeze(-1) >> torch.arange(8, device=bits.device)) & 1
    return 1 - 2 * b.float()


def _iq3_xxs(b, dtype):
    from gguf import quants

    n = b.shape[0]
    d = _f16(b, 0)
    ss = b[:, 66:98].reshape(n, 8, 4).to(torch.int64)
    ss = ss[..., 0] | ss[..., 1] << 8 | ss[..., 2] << 16 | ss[..., 3] << 24          # [n, 8] u32
    db = (d * (0.5 + (ss >> 28).float()) * 0.5).view(n, 8, 1, 1)
    pat = (ss.unsqueeze(-1) >> torch.tensor([0, 7, 14, 21], device=b.device)) & 0x7F
    ksigns = torch.frombuffer(bytearray(quants.IQ2_XXS.ksigns), dtype=torch.uint8).to(b.device)
    signs = _sign_bits(ksigns[pat]).view(n, 8, 8, 4)
    grid = _grid(quants.IQ3_XXS, b.device)[b[:, 2:66].long()].view(n, 8, 8, 4)
    return _last(torch.mul, db * grid, signs, dtype).view(n, QK_K)


def _iq3_s(b, dtype):
    from gguf import quants

    n = b.shape[0]
    d = _f16(b, 0)
    qh = (b[:, 66:74].to(torch.int64).unsqueeze(-1) >> torch.arange(8, device=b.device)) & 1
    idx = b[:, 2:66].to(torch.int64).view(n, 8, 8) | (qh << 8)
    signs = _sign_bits(b[:, 74:106]).view(n, 8, 8, 4)
    sc = b[:, 106:110].to(torch.int32)
    sc = torch.stack([sc & 0x0F, sc >> 4], dim=2).view(n, 8)
    db = (d * (1 + 2 * sc).float()).view(n, 8, 1, 1)
    grid = _grid(quants.IQ3_S, b.device)[idx].view(n, 8, 8, 4)
    return _last(torch.mul, db * grid, signs, dtype).view(n, QK_K)


def _u32(b, start: int, count: int) -> torch.Tensor:
    """`count` little-endian u32 from byte `start` of each block, as int64 [n, count]."""
    w = b[:, start:start + 4 * count].reshape(b.shape[0], count, 4).to(torch.int64)
    return w[..., 0] | w[..., 1] << 8 | w[..., 2] << 16 | w[..., 3] << 24


def _even_sign_table(device) -> torch.Tensor:
    from gguf import quants

    return torch.frombuffer(bytearray(quants.IQ2_XXS.ksigns), dtype=torch.uint8).to(device)


def _iq2_db(d, s):
    return d * (0.5 + s.float()) * 0.25


def _iq2_xxs(b, dtype):
    from gguf import quants

    n = b.shape[0]
    q = _u32(b, 2, 16).view(n, 8, 2)
    db = _iq2_db(_f16(b, 0), q[..., 1] >> 28).view(n, 8, 1, 1)
    pat = (q[..., 1:2] >> torch.tensor([0, 7, 14, 21], device=b.device)) & 0x7F
    signs = _sign_bits(_even_sign_table(b.device)[pat]).view(n, 8, 4, 8)
    idx = (q[..., 0:1] >> torch.tensor([0, 8, 16, 24], device=b.device)) & 0xFF
    grid = _grid(quants.IQ2_XXS, b.device)[idx].view(n, 8, 4, 8)
    return _last(torch.mul, db * grid, signs, dtype).view(n, QK_K)


def _iq2_scales(b, start: int) -> torch.Tensor:
    sc = b[:, start:start + 8].to(torch.int32)
    return torch.stack([sc & 0x0F, sc >> 4], dim=2).view(b.shape[0], 16)


def _iq2_xs(b, dtype):
    from gguf import quants

    n = b.shape[0]
    qs = b[:, 2:66].reshape(n, 32, 2).to(torch.int64)
    qs = qs[..., 0] | qs[..., 1] << 8
    db = _iq2_db(_f16(b, 0), _iq2_scales(b, 66)).view(n, 16, 1, 1)
    signs = _sign_bits(_even_sign_table(b.device)[qs >> 9]).view(n, 16, 2, 8)
    grid = _grid(quants.IQ2_XS, b.device)[qs & 511].view(n, 16, 2, 8)
    return _last(torch.mul, db * grid, signs, dtype).view(n, QK_K)


def _iq2_s(b, dtype):
    from gguf import quants

    n = b.shape[0]
    qh = (b[:, 66:74].to(torch.int64).unsqueeze(-1) >> torch.tensor([0, 2, 4, 6], device=b.device)) & 3
    idx = b[:, 2:34].to(torch.int64) | (qh.reshape(n, 32) << 8)
    db = _iq2_db(_f16(b, 0), _iq2_scales(b, 74)).view(n, 16, 1, 1)
    signs = _sign_bits(b[:, 34:66]).view(n, 16, 2, 8)
    grid = _grid(quants.IQ2_S, b.device)[idx].view(n, 16, 2, 8)
    return _last(torch.mul, db * grid, signs, dtype).view(n, QK_K)


def _iq1_values(b, dl, idx, negative, dtype):
    """dl [n, groups] * (grid[idx] + delta), delta = -1/8 where `negative`, else 1/8."""
    from gguf import quants

    n = b.shape[0]
    delta = torch.where(negative, -0.125, 0.125).unsqueeze(-1)
    grid = _grid(quants.IQ1_S, b.device)[idx]
    return _last(torch.mul, grid.add_(delta), dl.unsqueeze(-1), dtype).view(n, QK_K)


def _iq1_s(b, dtype):
    n = b.shape[0]
    qh = b[:, 34:50].reshape(n, 8, 2).to(torch.int64)
    qh = qh[..., 0] | qh[..., 1] << 8
    dl = _f16(b, 0) * (2 * ((qh >> 12) & 7) + 1).float()
    high = (qh.unsqueeze(-1) >> torch.tensor([0, 3, 6, 9], device=b.device)) & 7
    idx = b[:, 2:34].to(torch.int64) | (high.reshape(n, 32) << 8)
    neg = ((qh & 0x8000) != 0).repeat_interleave(4, dim=1)
    return _iq1_values(b, dl.repeat_interleave(4, dim=1), idx, neg, dtype)


def _iq1_m(b, dtype):
    n = b.shape[0]
    sc = b[:, 48:56].reshape(n, 4, 2).to(torch.int32)
    sc = sc[..., 0] | sc[..., 1] << 8
    bits = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
    d = bits.to(torch.int16).view(torch.float16).float().unsqueeze(1)
    s3 = ((sc.unsqueeze(-1) >> torch.tensor([0, 3, 6, 9], device=b.device)) & 7).reshape(n, 16)
    dl = d * (2 * s3 + 1).float()
    qh = b[:, 32:48].to(torch.int64)
    high = torch.stack([qh & 7, (qh >> 4) & 7], dim=2).reshape(n, 32)
    idx = b[:, :32].to(torch.int64) | (high << 8)
    neg = torch.stack([(qh & 0x08) != 0, (qh & 0x80) != 0], dim=2).reshape(n, 32)
    return _iq1_values(b, dl.repeat_interleave(2, dim=1), idx, neg, dtype)


BLOCK_DEQUANTIZERS = {
    T.Q4_0: _q4_0, T.Q4_1: _q4_1, T.Q5_0: _q5_0, T.Q5_1: _q5_1, T.Q8_0: _q8_0,
    T.Q2_K: _q2_k, T.Q3_K: _q3_k, T.Q4_K: _q4_k, T.Q5_K: _q5_k, T.Q6_K: _q6_k,
    T.IQ4_NL: _iq4_nl, T.IQ4_XS: _iq4_xs, T.TQ1_0: _tq1_0, T.TQ2_0: _tq2_0, T.MXFP4: _mxfp4,
    T.NVFP4: _nvfp4, T.Q1_0: _q1_0, T.IQ3_XXS: _iq3_xxs, T.IQ3_S: _iq3_s,
    T.IQ2_XXS: _iq2_xxs, T.IQ2_XS: _iq2_xs, T.IQ2_S: _iq2_s, T.IQ1_S: _iq1_s, T.IQ1_M: _iq1_m,
}
FLOAT_TYPES = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}


def _host_types() -> frozenset:
    """Types with no torch dequantizer here that quant or gguf-py dequantizes (IQ2/IQ3/IQ1, TQ,
    MXFP4, Q1_0...): read through numpy on the host, slower but exact."""
    import quant
    from gguf import quants

    known = set(quants._type_traits) | {info.qtype for info in quant.types()}
    return frozenset(t for t in known if t not in BLOCK_DEQUANTIZERS and t not in FLOAT_TYPES)


HOST_TYPES = _host_types()
SUPPORTED = frozenset(BLOCK_DEQUANTIZERS) | frozenset(FLOAT_TYPES) | HOST_TYPES


def _host_dequantize(data: torch.Tensor, qtype: T, dtype) -> torch.Tensor:
    """quant.dequantize when the quantization library has the type, else gguf-py's."""
    raw = data.cpu().numpy()
    try:
        import quant

        out = quant.dequantize(raw, qtype)
    except Exception:  # quant lacks the type (or is unavailable): gguf-py has every file type
        from gguf import quants

        out = quants.dequantize(raw, qtype)
    return torch.from_numpy(out).to(data.device, dtype)


def row_length(qtype, bytes_per_row: int) -> int:
    block, size = GGML_QUANT_SIZES[T(qtype)]
    return bytes_per_row // size * block


def dequantize(data: torch.Tensor, qtype, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [rows, bytes_per_row] of `qtype` blocks (or an F32/F16/BF16 tensor) -> [rows, n].

    Computed in float32 (gguf-py's values exactly) and rounded once to `dtype` at the end."""
    qtype = T(qtype)
    if qtype in FLOAT_TYPES:
        if data.dtype == torch.uint8:
            data = data.view(FLOAT_TYPES[qtype])
        return data.to(dtype)
    if qtype in HOST_TYPES:
        return _host_dequantize(data, qtype, dtype)
    block, size = GGML_QUANT_SIZES[qtype]
    rows = data.shape[0]
    if not data.is_contiguous() or data.storage_offset() % 2:
        data = data.clone()  # 16-bit views need contiguous, even-aligned bytes
    blocks = data.reshape(-1, size)
    return BLOCK_DEQUANTIZERS[qtype](blocks, dtype).reshape(rows, -1)
