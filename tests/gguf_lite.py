"""A small GGUF v3 reader for tests: metadata as Python values, tensors as byte views.

gguf.GGUFReader builds a numpy view per vocabulary string (seconds per SmolLM2 file);
comparing files only needs the decoded values and the raw tensor bytes.
"""
import struct

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


class _Cursor:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self):
        n = self.take("<Q")
        self.pos += n
        return bytes(self.data[self.pos - n:self.pos]).decode("utf-8")

    def value(self, vtype):
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            sub, n = self.take("<I"), self.take("<Q")
            if sub in _SCALARS and sub != 7:
                dt = np.dtype(_SCALARS[sub])
                out = np.frombuffer(self.data, dt, n, self.pos).tolist()
                self.pos += n * dt.itemsize
                return out
            return [self.value(sub) for _ in range(n)]
        return self.take(_SCALARS[vtype])


def read(path):
    """(metadata {key: value}, tensors {name: (ggml type, ggml shape, bytes)}) of a GGUF file."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    c = _Cursor(data)
    magic, version, n_tensors, n_kv = c.take("<4s"), c.take("<I"), c.take("<Q"), c.take("<Q")
    assert magic == b"GGUF" and version == 3
    meta = {}
    for _ in range(n_kv):
        key = c.string()
        meta[key] = c.value(c.take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        shape = tuple(c.take("<Q") for _ in range(c.take("<I")))
        infos.append((name, c.take("<I"), shape, c.take("<Q")))
    align = meta.get("general.alignment", 32)
    start = -(-c.pos // align) * align
    tensors = {}
    for name, qtype, shape, off in infos:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        nbytes = int(np.prod(shape, dtype=np.int64)) // block * size
        tensors[name] = (qtype, shape, data[start + off:start + off + nbytes])
    return meta, tensors
