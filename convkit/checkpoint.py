"""Hugging Face checkpoints: safetensors (one file or sharded), config.json, tokenizer files.

Every safetensors header is checked here before the `safetensors` library sees the file,
so a truncated or hostile file gives one clear ConvkitError instead of a traceback or a
huge allocation. Tensors are then read lazily, one at a time, from memory maps.
"""
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convkit.errors import ConvkitError
from convkit.hf_config import read_config_file

# safetensors dtype -> (numpy dtype used to read it, bytes per element)
DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2),
          "F64": (np.float64, 8), "I64": (np.int64, 8), "I32": (np.int32, 4),
          "I16": (np.int16, 2), "I8": (np.int8, 1), "U8": (np.uint8, 1), "BOOL": (np.bool_, 1)}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


@dataclass
class TensorEntry:
    name: str
    dtype: str
    shape: tuple
    file: Path
    start: int  # absolute offset in the file
    nbytes: int


@dataclass
class Checkpoint:
    directory: Path
    config: dict
    tensors: dict = field(default_factory=dict)  # name -> TensorEntry, in file order

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32 (numpy order), read from a memory map."""
        entry = self.tensors[name]
        np_dtype, _ = DTYPES[entry.dtype]
        raw = np.memmap(entry.file, dtype=np.uint8, mode="r", offset=entry.start, shape=(entry.nbytes,)) \
            if entry.nbytes else np.zeros(0, np.uint8)
        values = raw.view(np_dtype)
        if entry.dtype == "BF16":
            wide = values.astype(np.uint32)
            wide <<= 16   # in place: one float32-sized copy, not two
            values = wide.view(np.float32)
        return np.asarray(values, dtype=np.float32).reshape(entry.shape)

    def read_raw(self, name: str) -> np.ndarray:
        """The tensor as stored (BF16 as uint16), in memory of its own rather than pages of a map."""
        entry = self.tensors[name]
        np_dtype, size = DTYPES[entry.dtype]
        raw = np.fromfile(entry.file, dtype=np.uint8, count=entry.nbytes, offset=entry.start)
        if raw.size != entry.nbytes:
            raise ConvkitError(f"{entry.file}: the file ends inside tensor {name!r}; it changed while being read")
        return raw.view(np_dtype).reshape(entry.shape)

    def json_file(self, name: str):
        path = self.directory / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConvkitError(f"{path}: not valid JSON ({exc}); restore the file from the model's source")


def read_safetensors_header(path: Path) -> list:
    """Validate a safetensors file's header; return its TensorEntry list in offset order."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise ConvkitError(f"{path}: truncated safetensors file ({size} bytes); download it again")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER:
            raise ConvkitError(f"{path}: header length {n} is absurd (limit {MAX_HEADER}); the file is corrupt")
        if 8 + n > size:
            raise ConvkitError(f"{path}: header length {n} is larger than the file ({size} bytes); "
                               "the file is truncated or corrupt")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ConvkitError(f"{path}: the safetensors header is not JSON; the file is corrupt") from None
    if not isinstance(header, dict):
        raise ConvkitError(f"{path}: the safetensors header is not a JSON object; the file is corrupt")
    data_start, data_len = 8 + n, size - 8 - n
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise ConvkitError(f"{path}: the safetensors __metadata__ is not a JSON object; the file is corrupt")
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise ConvkitError(f"{path}: tensor {name!r} lacks dtype/shape/data_offsets; the file is corrupt")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ConvkitError(f"{path}: tensor {name!r} has dtype {str(dtype)[:40]!r}, which convkit does not know "
                               f"(known: {', '.join(DTYPES)})")
        if (not isinstance(shape, list) or not all(_is_int(d) and 0 <= d < 2**40 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) and o >= 0 for o in offsets)):
            raise ConvkitError(f"{path}: tensor {name!r} has a malformed shape or data_offsets; the file is corrupt")
        begin, end = offsets
        count = int(np.prod(shape, dtype=object)) if shape else 1
        if end < begin or end > data_len:
            raise ConvkitError(f"{path}: tensor {name!r} points outside the file (bytes {begin}..{end} of "
                               f"{data_len}); the file is truncated or corrupt")
        if end - begin != count * DTYPES[dtype][1]:
            raise ConvkitError(f"{path}: tensor {name!r}: shape {shape} needs {count * DTYPES[dtype][1]} bytes "
                               f"but its offsets span {end - begin}; the file is corrupt")
        entries.append(TensorEntry(name, dtype, tuple(shape), path, data_start + begin, end - begin))
    _check_coverage(entries, data_start, data_len, path)
    return entries


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_coverage(entries: list, data_start: int, data_len: int, path: Path) -> None:
    """The tensors tile the data section exactly, as the safetensors format requires: a hole
    or a byte left over means the header and the data disagree (a header length one byte
    off shifts every tensor by a byte and still "fits")."""
    end = 0
    for entry in sorted(entries, key=lambda e: (e.start, e.nbytes)):
        begin = entry.start - data_start
        if begin < end:
            other = next(e.name for e in entries if e is not entry and e.start - data_start < end
                         and e.start + e.nbytes > entry.start)
            raise ConvkitError(f"{path}: tensors {other!r} and {entry.name!r} overlap; the file is corrupt")
        if begin > end:
            raise ConvkitError(f"{path}: bytes {end}..{begin} of the data section belong to no tensor "
                               f"(before {entry.name!r}); the header and the data disagree, the file is corrupt")
        end = begin + entry.nbytes
    if end != data_len:
        raise ConvkitError(f"{path}: the tensors cover {end} bytes of a {data_len}-byte data section; "
                           "the header and the data disagree, the file is corrupt")


def _shard_files(directory: Path) -> list:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
            if not all(isinstance(f, str) and f and Path(f).name == f for f in files):
                raise ValueError("shard names must be plain file names")
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise ConvkitError(f"{index}: not a valid safetensors index (needs a weight_map of tensor names to "
                               "shard file names beside it)") from None
        for name in files:
            if not (directory / name).is_file():
                raise ConvkitError(f"{index}: shard {name} is missing; download it beside the index")
        return [directory / name for name in files]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(directory.glob("*.safetensors"))
    if found:
        return found
    raise ConvkitError(f"{directory}: no model.safetensors or model.safetensors.index.json; "
                       "point convkit at a Hugging Face model directory")


def open_checkpoint(path) -> Checkpoint:
    """Open a model directory (or its model.safetensors); validate headers and config.json."""
    path = Path(path)
    if not path.exists():
        raise ConvkitError(f"{path}: no such file or directory")
    if path.is_file():
        directory, files = path.parent, [path]
    else:
        directory, files = path, _shard_files(path)
    config = read_config_file(directory / "config.json")
    ckpt = Checkpoint(directory, config)
    for file in files:
        for entry in read_safetensors_header(file):
            if entry.name in ckpt.tensors:
                raise ConvkitError(f"{file}: tensor {entry.name!r} appears in two shards; the index is inconsistent")
            ckpt.tensors[entry.name] = entry
    # convert_hf_to_gguf walks the tensors in each file's header (sorted-name) order
    ckpt.tensors = {name: ckpt.tensors[name] for name in sorted(ckpt.tensors, key=lambda n: (
        files.index(ckpt.tensors[n].file), n))}
    return ckpt

