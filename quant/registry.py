"""The type registry: for each ggml type its block geometry and its two functions.

A block family registers itself with `register` (or the `registers` decorator):

    register(QuantType.Q4_0, block_size=32, type_size=18,
             quantize=quantize_q4_0, dequantize=dequantize_q4_0)

- `quantize(x, imatrix, threads)`: x is float32 C-contiguous [rows, n] with n already
  checked to be a multiple of block_size; imatrix is None or float32 [n]; returns uint8
  [rows, n // block_size * type_size].
- `dequantize(data)`: data is uint8 [rows, n // block_size * type_size]; returns float32
  [rows, n].

quant/__init__.py imports the block modules lazily, so a module that is missing or
broken only makes its own types unavailable.
"""
from dataclasses import dataclass
from typing import Callable

from .errors import QuantError
from .types import QuantType


@dataclass(frozen=True)
class TypeInfo:
    qtype: QuantType
    block_size: int          # values per block
    type_size: int           # bytes per block
    quantize: Callable
    dequantize: Callable

    @property
    def name(self) -> str:
        return self.qtype.name

    def row_bytes(self, n_per_row: int) -> int:
        return n_per_row // self.block_size * self.type_size

    def check_row_length(self, n_per_row: int) -> None:
        if n_per_row % self.block_size:
            raise QuantError(
                f"{self.name}: a row of {n_per_row} values cannot be cut into blocks of "
                f"{self.block_size}; choose a type whose block size divides {n_per_row} "
                f"(Q8_0, Q4_0, ... use 32) or keep this tensor in F16")


_TYPES: dict = {}


def register(qtype, block_size: int, type_size: int, quantize: Callable, dequantize: Callable) -> TypeInfo:
    """Make a type available to quant.quantize / quant.dequantize (later registrations win)."""
    info = TypeInfo(QuantType(int(qtype)), int(block_size), int(type_size), quantize, dequantize)
    _TYPES[info.qtype] = info
    return info


def registers(qtype, block_size: int, type_size: int, dequantize: Callable):
    """Decorator form of `register` for a quantize function."""
    def wrap(quantize):
        register(qtype, block_size, type_size, quantize, dequantize)
        return quantize
    return wrap


def to_qtype(qtype) -> QuantType:
    """QuantType from a QuantType, a gguf.GGMLQuantizationType, an int, or a name ("q4_k")."""
    if isinstance(qtype, str):
        try:
            return QuantType[qtype.strip().upper()]
        except KeyError:
            raise QuantError(f"unknown quantization type {qtype!r}; use one of "
                             f"{', '.join(t.name for t in QuantType)}") from None
    try:
        return QuantType(int(qtype))
    except (TypeError, ValueError):
        name = getattr(qtype, "name", qtype)
        raise QuantError(f"unsupported quantization type {name!r}; use one of "
                         f"{', '.join(t.name for t in QuantType)}") from None


def lookup(qtype) -> TypeInfo:
    t = to_qtype(qtype)
    info = _TYPES.get(t)
    if info is None:
        raise QuantError(f"{t.name}: quantization is not available for this type; use one of "
                         f"{', '.join(sorted(i.name for i in _TYPES.values()))}")
    return info


def registered() -> list:
    return sorted(_TYPES.values(), key=lambda i: int(i.qtype))
