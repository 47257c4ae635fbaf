"""Importance matrices: llama.cpp's imatrix files, read and written, and the vectors they give.

`llama-imatrix` writes two formats:
- GGUF (the default): per weight `<name>.in_sum2` (float32 [nmat, ne0], the summed squares of
  the activations) and `<name>.counts` (float32 [nmat], how many activations were summed),
  with keys `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`;
- legacy `.dat`: int32 entry count; per entry int32 name length, name, int32 ncall,
  int32 nval, float32 values (already divided by the count, times ncall); then int32 chunk
  count, int32 dataset name length, dataset name.
`llama-quantize` turns either into one float32 vector per weight: in_sum2 / counts per
matrix (1 where a matrix saw nothing), or values / ncall for the legacy file.

Only numpy and the standard library: the small GGUF subset needed here is read and written
by this module itself, in the byte layout of ggml's gguf writer.
"""
import struct
from dataclasses import dataclass, field

import numpy as np

from .errors import QuantError
from .types import QuantType

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
GGUF_ALIGNMENT = 32
GGML_MAX_NAME = 64
GGML_TYPE_F32 = int(QuantType.F32)
DEFAULT_CHUNK_SIZE = 512           # llama-imatrix: n_ctx 512 / n_parallel 1

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIX_SUMS = ".in_sum2"
SUFFIX_COUNTS = ".counts"


@dataclass
class Imatrix:
    """What one imatrix file holds.

    sums[name]: float32 [nmat, ne0]; counts[name]: int64 [nmat] (nmat > 1 for expert tensors).
    For a legacy file, sums[name] is [1, nval] of stored values and counts[name] is [ncall].
    """
    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    datasets: list = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False
    has_metadata: bool = True

    def names(self):
        return sorted(self.sums, key=str.encode)

    def importance(self, include=(), exclude=()) -> dict:
        """{weight name: float32 vector of ne0 * nmat}, as llama-quantize derives it.

        include / exclude: substrings of names to keep or drop (--include-weights /
        --exclude-weights); they cannot be used together."""
        if include and exclude:
            raise QuantError("include and exclude weights cannot be used together; pick one")
        vectors = {}
        for name in self.names():
            if exclude and any(part in name for part in exclude):
                continue
            if include and not any(part in name for part in include):
                continue
            vectors[name] = self._vector(name)
        return vectors

    def _vector(self, name):
        sums = np.asarray(self.sums[name], dtype=np.float32)
        counts = np.asarray(self.counts[name], dtype=np.int64)
        if self.legacy:
            ncall = int(counts[0]) if counts.size else 0
            flat = sums.reshape(-1)
            return flat / np.float32(ncall) if ncall > 0 else flat.copy()
        rows = sums.reshape(counts.size, -1)
        count = counts.astype(np.float32)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(count > 0, rows / np.where(count > 0, count, 1), np.float32(1))
        return out.astype(np.float32).reshape(-1)

    def to_raw(self, chunk_size=None) -> "Imatrix":
        """A legacy matrix as raw sums and counts, the way llama-imatrix --in-file converts it."""
        if not self.legacy:
            return self
        chunk_size = int(chunk_size or self.chunk_size or DEFAULT_CHUNK_SIZE)
        sums, counts = {}, {}
        for name in self.names():
            sums[name] = (np.asarray(self.sums[name], np.float32).reshape(1, -1)
                          * np.float32(chunk_size))
            counts[name] = np.asarray(self.counts[name][:1], np.int64) * chunk_size
        max_count = max((int(c.max()) for c in counts.values() if c.size), default=0)
        return Imatrix(sums, counts, list(self.datasets), max_count // chunk_size, chunk_size)


# ---------------------------------------------------------------- reading

def read_imatrix(path) -> Imatrix:
    """Read either format; a file that is not GGUF is read as legacy, as llama.cpp does."""
    try:
        data = open(path, "rb").read()
    except OSError as err:
        raise QuantError(f"{path}: cannot read the imatrix file ({err.strerror}); check the path") from None
    if data[:4] == GGUF_MAGIC:
        return _read_gguf(path, data)
    return _read_legacy(path, data)


def load_importance(path, include=(), exclude=()) -> dict:
    """llama-quantize's --imatrix: the per-weight vectors, with its checks on the file."""
    imatrix = read_imatrix(path)
    if not imatrix.legacy and not imatrix.has_metadata:
        raise QuantError(f"{path}: missing imatrix metadata ({KEY_DATASETS}, {KEY_CHUNK_COUNT}, "
                         f"{KEY_CHUNK_SIZE}); regenerate it with llama-imatrix")
    vectors = imatrix.importance(include, exclude)
    for name, vec in vectors.items():
        if not np.isfinite(vec).all():
            raise QuantError(f"{path}: the importance of {name} holds a non-finite value; "
                             f"regenerate the imatrix")
    return vectors


def importance_for(vectors: dict, name: str, shape) -> "np.ndarray | None":
    """The vector llama-quantize hands the quantizer for one weight, [n_expert, ne0], or None.

    shape is numpy order (row length last; an expert tensor is [n_expert, rows, ne0]). A weight
    the matrix does not cover gets None; a vector of the wrong size is an error, except for
    token embeddings, which llama.cpp then quantizes without one."""
    vec = vectors.get(name)
    if vec is None:
        return None
    ne0 = int(shape[-1])
    n_expert = int(shape[-3]) if len(shape) >= 3 else 1
    if vec.size != ne0 * n_expert:
        if name in ("token_embd.weight", "per_layer_token_embd.weight"):
            return None
        raise QuantError(f"imatrix size {vec.size} is different from tensor size {ne0 * n_expert} "
                         f"for {name}; use an imatrix computed for this model")
    return vec.reshape(n_expert, ne0)


class _Cursor:
    def __init__(self, path, data, what):
        self.path, self.data, self.pos, self.what = path, data, 0, what

    def take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            raise QuantError(f"{self.path}: the {self.what} imatrix file ends early at byte {self.pos}; "
                             f"the file is truncated or not an imatrix")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def at_end(self):
        return self.pos >= len(self.data)


def _read_legacy(path, data) -> Imatrix:
    cur = _Cursor(path, data, "legacy")
    if len(data) < 4 or (n_entries := cur.unpack("i")) < 1:
        raise QuantError(f"{path}: no data in the imatrix file; regenerate it with llama-imatrix")
    out = Imatrix(legacy=True, has_metadata=False)
    for i in range(n_entries):
        name = cur.take(cur.unpack("i")).split(b"\0")[0].decode("utf-8", "replace")
        ncall = cur.unpack("i")
        nval = cur.unpack("i")
        if nval < 1:
            raise QuantError(f"{path}: entry {i} has {nval} values; the imatrix file is damaged")
        out.sums[name] = np.frombuffer(cur.take(4 * nval), "<f4").astype(np.float32).reshape(1, nval)
        out.counts[name] = np.array([ncall], np.int64)
    if not cur.at_end():            # chunk count and dataset name are optional
        try:
            out.chunk_count = cur.unpack("i")
            length = cur.unpack("i")
            if length > 0:
                out.datasets.append(cur.take(length).split(b"\0")[0].decode("utf-8", "replace"))
        except QuantError:
            pass
    return out


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def _read_value(cur, vtype):
    if vtype in _SCALARS:
        return cur.unpack(_SCALARS[vtype])
    if vtype == _STRING:
        return cur.take(cur.unpack("Q")).decode("utf-8", "replace")
    if vtype == _ARRAY:
        item_type = cur.unpack("i")
        return [_read_value(cur, item_type) for _ in range(cur.unpack("Q"))]
    raise QuantError(f"{cur.path}: unknown GGUF value type {vtype}; the file is damaged")


def _read_gguf(path, data) -> Imatrix:
    cur = _Cursor(path, data, "GGUF")
    cur.take(4)
    version = cur.unpack("I")
    if version not in (2, 3):
        raise QuantError(f"{path}: GGUF version {version} is not supported; regenerate the imatrix")
    n_tensors, n_kv = cur.unpack("q"), cur.unpack("q")
    kv, kv_types = {}, {}
    for _ in range(n_kv):
        key = cur.take(cur.unpack("Q")).decode("utf-8", "replace")
        vtype = cur.unpack("i")
        item_type = None
        if vtype == _ARRAY:
            item_type = cur.unpack("i")
            kv[key] = [_read_value(cur, item_type) for _ in range(cur.unpack("Q"))]
        else:
            kv[key] = _read_value(cur, vtype)
        kv_types[key] = (vtype, item_type)
    infos = []
    for _ in range(n_tensors):
        name = cur.take(cur.unpack("Q")).decode("utf-8", "replace")
        ne = [cur.unpack("q") for _ in range(cur.unpack("I"))]
        infos.append((name, ne, cur.unpack("i"), cur.unpack("Q")))
    alignment = int(kv.get("general.alignment", GGUF_ALIGNMENT))
    data_start = -(-cur.pos // alignment) * alignment

    tensors = {}
    for name, ne, ttype, offset in infos:
        n = int(np.prod(ne, dtype=np.int64)) if ne else 1
        start = data_start + offset
        if ttype != GGML_TYPE_F32:
            tensors[name] = (None, ttype)
            continue
        if start + 4 * n > len(data):
            raise QuantError(f"{path}: tensor {name} lies past the end of the file; the file is truncated")
        tensors[name] = (np.frombuffer(data, "<f4", n, start).astype(np.float32), ttype)

    out = Imatrix()
    if kv_types.get(KEY_DATASETS) == (_ARRAY, _STRING):
        out.datasets = list(kv[KEY_DATASETS])
    out.has_metadata = all(k in kv for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE))
    out.chunk_count = int(kv.get(KEY_CHUNK_COUNT, 0))
    out.chunk_size = int(kv.get(KEY_CHUNK_SIZE, 0))

    pairs = {}
    for tname in tensors:
        for suffix, slot in ((SUFFIX_SUMS, 0), (SUFFIX_COUNTS, 1)):
            if tname.endswith(suffix) and len(tname) > len(suffix):
                pairs.setdefault(tname[:-len(suffix)], [None, None])[slot] = tname
    if not infos:
        raise QuantError(f"{path}: no data in the imatrix file; regenerate it with llama-imatrix")
    for name in sorted(pairs, key=str.encode):
        sums_name, counts_name = pairs[name]
        if sums_name is None or counts_name is None:
            raise QuantError(f"{path}: mismatched sums and counts for {name}; the file is damaged")
        (sums, _), (counts, _) = tensors[sums_name], tensors[counts_name]
        if sums is None or counts is None:
            raise QuantError(f"{path}: sums and counts for {name} must be F32; regenerate the imatrix")
        nmat = counts.size
        if nmat == 0 or sums.size % nmat:
            raise QuantError(f"{path}: {name} has {sums.size} sums for {nmat} counts; the file is damaged")
        out.sums[name] = sums.reshape(nmat, -1)
        out.counts[name] = np.array([_lround(c) for c in counts], np.int64)
    return out


def _lround(x):
    """C lround: halves away from zero."""
    x = float(x)
    return int(np.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


# ---------------------------------------------------------------- writing

def write_imatrix(path, imatrix: Imatrix, fmt: str = "gguf", chunk_size=None, dataset=None) -> None:
    """Write as llama-imatrix does: fmt "gguf" (what llama-quantize reads by default) or "dat".

    chunk_size: tokens per chunk (n_ctx / n_parallel), used when a legacy matrix becomes raw or a
    raw one becomes legacy; default the matrix's own, else 512. dataset: the name the legacy
    trailer records (default the last dataset)."""
    if fmt == "gguf":
        blob = gguf_bytes(imatrix.to_raw(chunk_size))
    elif fmt == "dat":
        blob = legacy_bytes(imatrix, chunk_size, dataset)
    else:
        raise QuantError(f"unknown imatrix format '{fmt}'; use gguf or dat")
    with open(path, "wb") as f:
        f.write(blob)


def legacy_bytes(imatrix: Imatrix, chunk_size=None, dataset=None) -> bytes:
    """The .dat layout of IMatrixCollector::save_imatrix_legacy."""
    chunk_size = int(chunk_size or imatrix.chunk_size or DEFAULT_CHUNK_SIZE)
    entries = []
    for name in imatrix.names():
        counts = np.asarray(imatrix.counts[name], np.int64)
        sums = np.asarray(imatrix.sums[name], np.float32).reshape(-1)
        if imatrix.legacy:
            entries.append((name, int(counts[0]), sums))
            continue
        if counts.size == 0 or not counts.any():
            continue                # no data at all: llama-imatrix skips the entry
        ncall = (int(counts.max()) + chunk_size - 1) // chunk_size
        per_row = np.repeat(counts.astype(np.float32), sums.size // counts.size)
        values = sums.copy()
        empty = per_row == 0
        values[empty], per_row[empty] = 1.0, 1.0       # partial data: stored as 1
        entries.append((name, ncall, (values / per_row) * np.float32(ncall)))
    parts = [struct.pack("<i", len(entries))]
    for name, ncall, values in entries:
        raw = name.encode()
        parts += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, values.size),
                  values.astype("<f4").tobytes()]
    if dataset is None:
        dataset = imatrix.datasets[-1] if imatrix.datasets else ""
    raw = dataset.encode()
    parts += [struct.pack("<i", imatrix.chunk_count), struct.pack("<i", len(raw)), raw]
    return b"".join(parts)


def gguf_bytes(imatrix: Imatrix) -> bytes:
    """The GGUF layout of IMatrixCollector::save_imatrix, written by ggml's gguf writer."""
    if imatrix.legacy:
        raise QuantError("a legacy imatrix must be converted with to_raw() before it is written as GGUF")
    kv = [_kv_str("general.type", "imatrix"),
          _kv_str_array(KEY_DATASETS, imatrix.datasets),
          _kv_u32(KEY_CHUNK_COUNT, imatrix.chunk_count),
          _kv_u32(KEY_CHUNK_SIZE, imatrix.chunk_size)]
    tensors = []
    for name in imatrix.names():
        counts = np.asarray(imatrix.counts[name], np.int64)
        sums = np.asarray(imatrix.sums[name], np.float32).reshape(-1)
        nmat = counts.size
        if sums.size == 0 or nmat == 0:
            continue
        tensors.append((name + SUFFIX_SUMS, [sums.size // nmat, nmat], sums))
        tensors.append((name + SUFFIX_COUNTS, [1, nmat], counts.astype(np.float32)))

    head = [GGUF_MAGIC, struct.pack("<Iqq", GGUF_VERSION, len(tensors), len(kv))] + kv
    offset = 0
    for tname, ne, values in tensors:
        if len(tname.encode()) >= GGML_MAX_NAME:
            raise QuantError(f"imatrix tensor name {tname} is longer than ggml's {GGML_MAX_NAME - 1} "
                             f"bytes; shorten the weight name")
        while len(ne) > 1 and ne[-1] == 1:      # ggml_n_dims: trailing ones are not written
            ne = ne[:-1]
        head += [_string(tname), struct.pack("<I", len(ne)), struct.pack(f"<{len(ne)}q", *ne),
                 struct.pack("<iQ", GGML_TYPE_F32, offset)]
        offset += _pad(4 * values.size)
    blob = bytearray(b"".join(head))
    blob += bytes(_pad(len(blob)) - len(blob))
    for _, _, values in tensors:
        raw = values.astype("<f4").tobytes()
        blob += raw + bytes(_pad(len(raw)) - len(raw))
    return bytes(blob)


def _pad(n):
    return -(-n // GGUF_ALIGNMENT) * GGUF_ALIGNMENT


def _string(text):
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv_str(key, value):
    return _string(key) + struct.pack("<i", _STRING) + _string(value)


def _kv_u32(key, value):
    return _string(key) + struct.pack("<iI", 4, value)


def _kv_str_array(key, values):
    return (_string(key) + struct.pack("<iiQ", _ARRAY, _STRING, len(values))
            + b"".join(_string(v) for v in values))


def from_statistics(stats: dict, datasets=(), chunk_count=0, chunk_size=DEFAULT_CHUNK_SIZE) -> Imatrix:
    """An Imatrix from collected statistics {name: (sum of squares [nmat, ne0] or [ne0], counts [nmat])}."""
    out = Imatrix(datasets=list(datasets), chunk_count=int(chunk_count), chunk_size=int(chunk_size))
    for name, (sums, counts) in stats.items():
        counts = np.atleast_1d(np.asarray(counts, np.int64))
        sums = np.asarray(sums, np.float32)
        if sums.size % counts.size:
            raise QuantError(f"{name}: {sums.size} sums do not split into {counts.size} matrices")
        out.sums[name] = sums.reshape(counts.size, -1)
        out.counts[name] = counts
    return out
