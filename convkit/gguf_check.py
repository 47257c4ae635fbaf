"""A GGUF file's layout, parsed and checked completely before anything else reads it.

gguf-py's reader trusts the file: a string that is not UTF-8, a dimension of 0, an
offset that wraps around or two tensors at the same offset reach numpy or torch as
tracebacks or, worse, as a run that succeeds on the wrong bytes. This parser walks the
header with bounds on every count and length (derived from the file's size), and
checks what ggml's own loader (gguf.cpp) checks: known value and tensor types, UTF-8
strings, 1 to 4 dimensions each >= 1, rows of whole blocks, aligned offsets inside the
data section that do not overlap. Any failure is one ConvkitError naming the file.
"""
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from convkit.errors import ConvkitError

MAX_TENSORS = 1 << 20
MAX_KV = 1 << 20
MAX_DIMS = 4          # GGML_MAX_DIMS
MAX_NAME = 64         # GGML_MAX_NAME, terminator included
MAX_ARRAY_DEPTH = 2
DEFAULT_ALIGNMENT = 32

# GGUFValueType -> struct format of a scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_KNOWN_QTYPES = {int(t): t for t in gguf.GGMLQuantizationType if t in gguf.GGML_QUANT_SIZES}


@dataclass
class TensorInfo:
    name: str
    shape: tuple     # ggml order: row length first
    qtype: int
    offset: int      # absolute, from the start of the file
    nbytes: int


@dataclass
class Layout:
    version: int
    fields: dict     # key -> Python value (lists for arrays)
    types: dict      # key -> GGUFValueType id (arrays: (9, element type))
    tensors: list    # TensorInfo, in file order
    data_start: int
    alignment: int
    spans: dict = field(default_factory=dict)  # key -> (start, end): its value's bytes (type id excluded)


class _Cursor:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str):
        raise ConvkitError(f"{self.path}: {what} (at byte {self.pos}); the file is corrupt or truncated")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            self.fail(f"needs {n} more bytes but the file ends")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q")
        if n > len(self.data) - self.pos:
            self.fail(f"{what} claims {n} bytes, more than the file holds")
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.pos -= n - exc.start
            self.fail(f"{what} is not UTF-8 (byte {raw[exc.start:exc.start + 1].hex()})")

    def strings(self, count: int, key: str) -> list:
        """An array of strings (a vocab: 100k of them) in one tight loop; any problem is
        reported by the one-at-a-time path, with its exact message and position."""
        data, pos, size = self.data, self.pos, len(self.data)
        length = _U64.unpack_from
        out = []
        try:
            for _ in range(count):
                n = length(data, pos)[0]
                if n > size - pos - 8:
                    raise ValueError
                out.append(data[pos + 8:pos + 8 + n].decode("utf-8"))
                pos += 8 + n
        except (ValueError, struct.error):   # UnicodeDecodeError is a ValueError
            return [self.string(f"metadata {key!r}") for _ in range(count)]
        self.pos = pos
        return out

    def value(self, vtype: int, key: str, depth: int = 0):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string(f"metadata {key!r}")
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                self.fail(f"metadata {key!r} nests arrays too deeply")
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype not in _SCALARS and etype not in (_STRING, _ARRAY):
                self.fail(f"metadata {key!r} has arrays of unknown type {etype}")
            smallest = struct.calcsize(_SCALARS[etype]) if etype in _SCALARS else 8
            if count * smallest > len(self.data) - self.pos:
                self.fail(f"metadata {key!r} claims {count} elements, more than the file holds")
            if etype in _SCALARS:  # one unpack for the whole array, not one call per element
                fmt = _SCALARS[etype]
                return list(struct.unpack(f"{fmt[0]}{count}{fmt[1]}", self.take(count * smallest)))
            if etype == _STRING:
                return self.strings(count, key)
            return [self.value(etype, key, depth + 1) for _ in range(count)]
        self.fail(f"metadata {key!r} has unknown value type {vtype}")


def read_layout(path) -> Layout:
    """Parse and check the header, metadata and tensor directory of the GGUF at `path`."""
    path = Path(path)
    if not path.is_file():
        raise ConvkitError(f"{path}: no such file")
    size = path.stat().st_size
    if size < 24:
        raise ConvkitError(f"{path}: truncated GGUF file ({size} bytes); download it again")
    with open(path, "rb") as f:
        magic, version, n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF":
            raise ConvkitError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
        if version not in (2, 3):
            raise ConvkitError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        if n_tensors > MAX_TENSORS or n_tensors * 24 > size:
            raise ConvkitError(f"{path}: absurd tensor count {n_tensors} for a {size}-byte file; the file is corrupt")
        if n_kv > MAX_KV or n_kv * 9 > size:
            raise ConvkitError(f"{path}: absurd metadata count {n_kv} for a {size}-byte file; the file is corrupt")
        # the header is parsed from a map of the file: only the pages it touches are read
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as head:
            return _parse(head, path, size, version, n_tensors, n_kv)


def _parse(head, path: Path, size: int, version: int, n_tensors: int, n_kv: int) -> Layout:
    cur = _Cursor(head, path)
    cur.pos = 24
    fields, types, spans = {}, {}, {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        if key in fields:
            cur.fail(f"metadata key {key!r} appears twice")
        vtype = cur.unpack("<I")
        start = cur.pos
        fields[key] = cur.value(vtype, key)
        types[key] = (vtype, struct.unpack_from("<I", head, start)[0]) if vtype == _ARRAY else vtype
        spans[key] = (start, cur.pos)
    alignment = _alignment(fields, types, path)
    raw_tensors = []
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        if len(name.encode("utf-8")) >= MAX_NAME:
            cur.fail(f"tensor name {name[:80]!r} is longer than ggml's {MAX_NAME - 1} bytes")
        n_dims = cur.unpack("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            cur.fail(f"tensor {name!r} has {n_dims} dimensions (ggml allows 1 to {MAX_DIMS})")
        shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
        qtype, offset = cur.unpack("<I"), cur.unpack("<Q")
        raw_tensors.append((name, shape, qtype, offset))
    data_start = -(-cur.pos // alignment) * alignment
    if data_start > size:
        raise ConvkitError(f"{path}: the tensor data section starts at byte {data_start}, past the end of the "
                           f"{size}-byte file; the file is truncated")
    tensors = _check_tensors(raw_tensors, alignment, data_start, size, path)
    return Layout(version, fields, types, tensors, data_start, alignment, spans)


def _alignment(fields: dict, types: dict, path: Path) -> int:
    if "general.alignment" not in fields:
        return DEFAULT_ALIGNMENT
    value = fields["general.alignment"]
    if types["general.alignment"] != 4 or value == 0 or value & (value - 1):
        raise ConvkitError(f"{path}: general.alignment {value!r} is not a power of two stored as uint32; "
                           "the file is corrupt")
    return value


def _check_tensors(raw, alignment: int, data_start: int, size: int, path: Path) -> list:
    data_len = size - data_start
    tensors, seen = [], set()
    for name, shape, qtype, offset in raw:
        if name in seen:
            raise ConvkitError(f"{path}: tensor {name!r} appears twice; the file is corrupt")
        seen.add(name)
        if any(d < 1 for d in shape):
            raise ConvkitError(f"{path}: tensor {name!r} has a dimension of 0 ({list(shape)}); the file is corrupt")
        if qtype not in _KNOWN_QTYPES:
            raise ConvkitError(f"{path}: tensor {name!r} has unknown type id {qtype}; the file is corrupt or "
                               "from a newer ggml")
        block, type_size = gguf.GGML_QUANT_SIZES[_KNOWN_QTYPES[qtype]]
        count = 1
        for d in shape:
            count *= d
        if count >= 1 << 62:
            raise ConvkitError(f"{path}: tensor {name!r} claims {count} elements; the file is corrupt")
        if shape[0] % block:
            raise ConvkitError(f"{path}: tensor {name!r} has rows of {shape[0]} elements, not whole "
                               f"{_KNOWN_QTYPES[qtype].name} blocks of {block}; the file is corrupt")
        nbytes = count // block * type_size
        if offset % alignment:
            raise ConvkitError(f"{path}: tensor {name!r} is at offset {offset}, not a multiple of the "
                               f"alignment {alignment}; the file is corrupt")
        if offset > data_len or nbytes > data_len - offset:
            raise ConvkitError(f"{path}: tensor {name!r} (bytes {offset}..{offset + nbytes} of the data section) "
                               f"lies outside the {data_len}-byte data section; the file is truncated or corrupt")
        tensors.append(TensorInfo(name, shape, qtype, data_start + offset, nbytes))
    by_offset = sorted(tensors, key=lambda t: (t.offset, t.nbytes))
    for a, b in zip(by_offset, by_offset[1:]):
        if b.offset < a.offset + a.nbytes:
            raise ConvkitError(f"{path}: tensors {a.name!r} and {b.name!r} overlap; the file is corrupt")
    return tensors
