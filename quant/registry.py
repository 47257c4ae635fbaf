"""The type registry: for each ggml type its block geometry and its two functions.

A block family registers itself with `register`; the block geometry comes from
quant/types.py (gguf-py's table), never from the caller:

    register(QuantType.Q4_0, quantize=quantize_q4_0, dequantize=dequantize_q4_0)

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
from .types import QuantType, block_size, type_size


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


def register(qtype, quantize: Callable, dequantize: Callable) -> TypeInfo:
    """Make a type available to quant.quantize / quant.dequantize (later registrations win)."""
    qtype = QuantType(int(qtype))
    info = TypeInfo(qtype, block_size(qtype), type_size(qtype), quantize, dequantize)
    _TYPES[info.qtype] = info
    return info


def registers(qtype, dequantize: Callable):
    """Decorator form of `register` for a quantize function."""
    def wrap(quantize):
        register(qtype, quantize, dequantize)
        return quantize
    return wrap


def _names() -> str:
    return ", ".join(i.name.lower() for i in registered())


def to_qtype(qtype) -> QuantType:
    """QuantType from a QuantType (gguf.GGMLQuantizationType), an int, or a name ("q4_k")."""
    if isinstance(qtype, str):
        try:
            return QuantType[qtype.strip().upper()]
        except KeyError:
            raise QuantError(f"unknown tensor type '{qtype.strip()}'; use one of: {_names()}") from None
    try:
        return QuantType(int(qtype))
    except (TypeError, ValueError):
        name = getattr(qtype, "name", qtype)
        raise QuantError(f"unknown tensor type '{name}'; use one of: {_names()}") from None


def lookup(qtype) -> TypeInfo:
    t = to_qtype(qtype)
    info = _TYPES.get(t)
    if info is None:
        raise QuantError(f"tensor type {t.name.lower()} cannot be quantized by convkit yet; "
                         f"use one of: {_names()}")
    return info


def registered() -> list:
    return sorted(_TYPES.values(), key=lambda i: int(i.qtype))
