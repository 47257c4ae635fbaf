"""Streaming GGUF output: header, metadata and tensor table first, then one tensor at a time.

Built on gguf.GGUFWriter; the file appears only when complete (convkit.atomic).
"""
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import gguf
import numpy as np

import quant
from convkit.atomic import atomic_path
from convkit.errors import ConvkitError


@dataclass
class PlannedTensor:
    name: str
    shape: tuple          # numpy order (row length last)
    qtype: int            # ggml type id

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(self.qtype)]
        n = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        return n // block * size


def encode(values: np.ndarray, qtype: int, imatrix=None, threads: int = 1) -> np.ndarray:
    """float32 numpy-order tensor -> the bytes ggml stores for `qtype` (uint8, flat)."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint8)
    rows = values.reshape(-1, values.shape[-1]) if values.ndim else values.reshape(1, 1)
    return np.asarray(quant.quantize(rows, int(qtype), imatrix=imatrix, threads=threads)).reshape(-1)


class MetadataWriter(gguf.GGUFWriter):
    """gguf-py's writer used only to collect metadata (its add_* API), plus values already
    encoded in GGUF form: a GGUF input's vocab is copied as bytes instead of being decoded
    into 100k Python strings and packed again one by one."""

    def __init__(self, arch_name: str):
        super().__init__(None, arch_name)

    def add_encoded(self, key: str, vtype, payload: bytes) -> None:
        """`payload`: the value's bytes exactly as GGUF stores them after the type id."""
        self.kv_data[0][key] = gguf.GGUFValue(_Encoded(payload), gguf.GGUFValueType(vtype))

    def encoded_kv(self, target) -> bytes:
        """Every key and value in GGUF form, in insertion order; a value that does not fit its
        type (a negative count in a uint32, a float32 of 1e300) is an error here, before the
        output opens."""
        parts = []
        for key, val in self.kv_data[0].items():
            parts.append(self._pack_val(key, gguf.GGUFValueType.STRING, add_vtype=False))
            if isinstance(val.value, _Encoded):
                parts.append(struct.pack("<I", int(val.type)))
                parts.append(val.value)
                continue
            try:
                parts.append(self._pack_val(val.value, val.type, add_vtype=True, sub_type=val.sub_type))
            except (struct.error, OverflowError, ValueError, TypeError) as exc:
                raise ConvkitError(f"{target}: metadata {key} = {str(val.value)[:60]} does not fit GGUF type "
                                   f"{val.type.name} ({exc}); the input's config.json or tokenizer files hold a "
                                   "value out of range") from None
        return b"".join(parts)

    def alignment(self) -> int:
        val = self.kv_data[0].get(gguf.Keys.General.ALIGNMENT)
        if val is None:
            return gguf.GGUF_DEFAULT_ALIGNMENT
        value = struct.unpack("<I", val.value)[0] if isinstance(val.value, _Encoded) else int(val.value)
        return value if value > 0 and not value & (value - 1) else gguf.GGUF_DEFAULT_ALIGNMENT


class _Encoded(bytes):
    """A metadata value already in GGUF form."""


def _pad(n: int, align: int) -> int:
    return -n % align


def header_bytes(w: MetadataWriter, plan, target) -> bytes:
    """Header, metadata and tensor table (gguf-py's layout: offsets padded to the alignment),
    padded so the first tensor starts aligned."""
    align = w.alignment()
    kv = w.encoded_kv(target)
    ti, offset = [], 0
    for t in plan:
        dims = tuple(reversed(tuple(t.shape) or (1,)))  # ggml order: row length first
        name = t.name.encode("utf-8")
        ti.append(struct.pack(f"<Q{len(name)}sI{len(dims)}QIQ", len(name), name, len(dims), *dims, t.qtype, offset))
        offset += t.nbytes + _pad(t.nbytes, align)
    head = struct.pack("<IIQQ", gguf.GGUF_MAGIC, gguf.GGUF_VERSION, len(plan), len(w.kv_data[0])) + kv + b"".join(ti)
    return head + bytes(_pad(len(head), align))


def write_gguf(target, arch_name: str, write_metadata, plan, produce, *, inputs=(), on_tensor=None):
    """write_metadata(writer) adds the KV pairs; produce(planned) returns its uint8 bytes, or an
    iterable of consecutive uint8 pieces of them (a tensor streamed a few rows at a time).

    Each piece is written by a background thread while the next one is produced; a piece's
    memory must stay untouched until the piece after the next is asked for (a producer that
    reuses memory alternates between two buffers)."""
    # metadata and tensor table are built in memory first: an error in them (a damaged
    # tokenizer file, say) stops the run before the output file is opened
    w = MetadataWriter(arch_name)
    write_metadata(w)
    for t in plan:
        gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.qtype)]  # a known type id
    head = header_bytes(w, plan, target)
    align = w.alignment()
    with atomic_path(target, inputs=inputs) as tmp, open(tmp, "wb", buffering=0) as f, _Writes(f) as out:
        out.put(head)
        for t in plan:
            data = produce(t)
            written = 0
            for piece in ((data,) if isinstance(data, np.ndarray) else data):
                out.put(piece)
                written += piece.nbytes
            if written != t.nbytes:
                raise AssertionError(f"{t.name}: produced {written} bytes, planned {t.nbytes}")
            if _pad(written, align):
                out.put(bytes(_pad(written, align)))
            if on_tensor:
                on_tensor(t)


class _Writes:
    """Writes to `f` on one background thread, at most one in flight: writing overlaps the
    quantization of the next piece (the write releases the GIL). A failed write is raised by
    the next put or on leaving; leaving always waits for the last write first."""

    def __init__(self, f):
        self.f, self.pending, self.pool = f, None, None

    def __enter__(self):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="gguf-write")
        return self

    def put(self, data) -> None:
        self.wait()
        self.pending = self.pool.submit(_write_all, self.f, data)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def __exit__(self, exc_type, *_):
        try:
            self.wait()
        except Exception:
            if exc_type is None:
                raise
        finally:
            self.pool.shutdown(wait=True)


def _write_all(f, data) -> None:
    """One unbuffered write per piece (no copy through a buffer); a write may take less than
    asked (Linux stops at 2 GiB per call), so it loops."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[f.write(view):]
