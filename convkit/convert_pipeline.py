"""The conversion pipeline shared by `convkit quantize` and `convkit convert`.

A source (HF checkpoint or GGUF) yields GGUF tensor names, shapes and float32 values one
at a time; a plan gives each tensor its type; the writer streams them into the output.
"""
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np

import quant
from convkit import gguf_in, gguf_model
from convkit.arch import architecture_for
from convkit.checkpoint import open_checkpoint
from convkit.errors import ConvkitError
from convkit.gguf_out import PlannedTensor, encode, write_gguf

SKIP_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


@dataclass
class Source:
    path: Path
    arch_name: str
    tensors: list            # (gguf name, numpy shape, source ggml type)
    read: Callable           # gguf name -> float32 array (numpy order)
    write_metadata: Callable  # writer -> None (everything but file type and quantization version)
    hparams: dict            # n_layer, n_head, n_head_kv
    inputs: tuple
    stored: Callable = None  # gguf name -> (offset, nbytes, ggml type) of its bytes in `path`, or None
    parts: Callable = None   # gguf name -> zero-argument readers of its consecutive parts (experts), or None


def open_source(path) -> Source:
    path = Path(path)
    if not path.exists():
        raise ConvkitError(f"{path}: no such file or directory")
    if path.is_file() and gguf_in.is_gguf(path):
        return _gguf_source(path)
    return _hf_source(path)


def _hf_source(path: Path) -> Source:
    ckpt = open_checkpoint(path)
    arch = architecture_for(ckpt.config, ckpt.directory / "config.json")
    derived = dict(arch.extra_tensors())  # derived from config.json, written first as llama.cpp does
    names = arch.map_checkpoint(ckpt)  # checked against the architecture before any work
    tensors = [(name, tuple(np.shape(values())), gguf.GGMLQuantizationType.F32) for name, values in derived.items()]
    tensors += [(name, arch.transformed_shape(name, arch.source_shape(ckpt, hf)), gguf.GGMLQuantizationType.F32)
                for name, hf in names.items()]

    def read(name):
        if name in derived:
            return derived[name]()
        return arch.transform(name, arch.read_source(ckpt, names[name]))

    def parts(name):
        # a layer's experts are separate tensors in the checkpoint and one stacked tensor in
        # GGUF: read (and quantize) them one by one rather than gathering the stack
        hf = names.get(name)
        if not isinstance(hf, tuple):
            return None
        return [functools.partial(_read_expert, arch, ckpt, name, member) for member in hf]

    def write_metadata(w):
        w.add_type("model")
        w.add_name(_model_name(ckpt))
        arch.write_hparams(w)
        arch.write_vocab(w, ckpt.directory, ckpt.config)

    hp = {"n_layer": arch.n_layer, "n_head": getattr(arch, "n_head", 1), "n_head_kv": getattr(arch, "n_head_kv", 1),
          "n_expert": arch.n_expert}
    files = tuple({e.file for e in ckpt.tensors.values()})
    return Source(ckpt.directory, arch.name, tensors, read, write_metadata, hp, files, parts=parts)


def _read_expert(arch, ckpt, name, member) -> np.ndarray:
    """One expert's matrix as float32, transformed as it is within the stacked tensor."""
    return arch.transform(name, ckpt.read(member)[None])[0]


def _model_name(ckpt) -> str:
    name = ckpt.config.get("_name_or_path") or ckpt.directory.name
    return str(name).rstrip("/").split("/")[-1]


def _gguf_source(path: Path) -> Source:
    # the checked layout is all this needs: gguf-py's reader would decode every vocab string
    # a second time, and the metadata is copied as the bytes it is stored as
    layout = gguf_in.open_layout(path)
    arch_name = layout.fields["general.architecture"]  # checked by open_layout
    by_name = {t.name: t for t in layout.tensors}
    tensors = [(t.name, tuple(reversed(t.shape)), t.qtype) for t in layout.tensors]

    def write_metadata(w):
        with open(path, "rb") as f:
            head = f.read(layout.data_start)
        for key, (start, end) in layout.spans.items():
            if key.startswith(SKIP_KEYS):
                continue
            vtype = layout.types[key]
            w.add_encoded(key, vtype[0] if isinstance(vtype, tuple) else vtype, head[start:end])

    def stored(name):
        t = by_name[name]
        return t.offset, t.nbytes, t.qtype

    meta = gguf_model.Meta(layout, path)
    n_head = meta.int(f"{arch_name}.attention.head_count", 1)
    hp = {"n_layer": meta.int(f"{arch_name}.block_count", 0, low=0), "n_head": n_head,
          "n_head_kv": meta.int(f"{arch_name}.attention.head_count_kv", n_head),
          "n_expert": meta.int(f"{arch_name}.expert_count", 0, low=0)}
    return Source(path, arch_name, tensors, lambda name: gguf_in.read_stored(path, by_name[name]), write_metadata,
                  hp, (path,), stored)


def make_plan(source: Source, types: dict) -> list:
    return [PlannedTensor(name, shape, int(types[name])) for name, shape, _ in source.tensors]


def plan_summary(plan) -> dict:
    total = sum(t.nbytes for t in plan)
    elements = sum(int(np.prod(t.shape, dtype=np.int64)) for t in plan)
    return {"tensors": [{"name": t.name, "shape": list(t.shape), "type": gguf.GGMLQuantizationType(t.qtype).name,
                         "bytes": t.nbytes} for t in plan],
            "total_bytes": total, "bpw": round(total * 8 / max(elements, 1), 4)}


STREAM_BYTES = 8 << 20   # source bytes per slice of a streamed tensor
_READER = ThreadPoolExecutor(1, thread_name_prefix="gguf-read")   # reads the next slice ahead


def _read_exactly(f, buf, offset: int, path) -> None:
    """buf filled from `offset` of the unbuffered file f (read on _READER's one thread only)."""
    view = memoryview(buf)
    f.seek(offset)
    while view.nbytes:
        got = f.readinto(view)
        if not got:
            raise ConvkitError(f"{path}: the file ended while reading tensor data; it was truncated while "
                               "being read")
        view = view[got:]


def run(source: Source, plan, target, *, file_type: int, imatrix=None, threads=1, quiet=False) -> dict:
    from convkit.progress import progress

    target = Path(target)
    start = time.perf_counter()
    bar = progress(total=len(plan), quiet=quiet, unit="tensor", desc="quantize")

    def write_metadata(w):
        source.write_metadata(w)
        w.add_file_type(int(file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def importance(t):
        if imatrix is None or t.qtype == gguf.GGMLQuantizationType.F32:
            return None
        from quant.imatrix import importance_for
        return importance_for(imatrix, t.name, t.shape)   # [n_expert, row length]

    def produce(t):
        bar.set_postfix_str(t.name, refresh=False)
        if source.stored is not None:
            offset, nbytes, src_type = source.stored(t.name)
            if quant.reads_source(t.qtype, src_type) and len(t.shape) > 0:
                return streamed(t, offset, nbytes, src_type)
        parts = source.parts(t.name) if source.parts is not None else None
        if parts is not None:
            return by_part(t, parts)
        values = checked(t, source.read)
        weights = importance(t)
        if weights is not None and len(t.shape) >= 3:   # one vector per expert
            return np.concatenate([encode(v, t.qtype, imatrix=w, threads=threads) for v, w in
                                   zip(values.reshape(len(weights), -1, t.shape[-1]), weights)])
        return encode(values, t.qtype, imatrix=weights, threads=threads)

    def checked(t, read):
        with np.errstate(over="ignore", invalid="ignore"):  # damaged blocks: reported below, not warned
            values = read(t.name) if read is source.read else read()
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            not_finite(t)
        return values

    def by_part(t, parts):
        """The tensor's parts (a layer's experts) read, quantized and written one at a time,
        each with its own importance vector, as llama.cpp quantizes expert by expert."""
        weights = importance(t)
        for i, part in enumerate(parts):
            yield encode(checked(t, part), t.qtype, imatrix=None if weights is None else weights[i],
                         threads=threads)

    def not_finite(t):
        # llama.cpp's quantize rejects such rows too (ggml_validate_row_data)
        raise ConvkitError(f"{source.path}: tensor {t.name} holds NaN or infinite values; the weights are "
                           "corrupt, restore them from the model's source")

    buffers = {}
    files = []   # the source, opened once for every streamed tensor

    def opened():
        if not files:
            files.append(open(source.path, "rb", buffering=0))
        return files[0]

    turn = [0]   # which output buffer is next: alternates across tensors too

    def buffer(key, size):
        if key not in buffers or buffers[key].size < size:
            buffers[key] = np.empty(size, dtype=np.uint8)
        return buffers[key][:size]

    def streamed(t, offset, nbytes, src_type):
        """The tensor's stored F16/BF16/F32 rows a slice at a time, quantized straight from the
        stored bytes (no float32 copy). Two slices alternate: while one is quantized, the next
        is read and the last one's output is written (writer thread), so memory follows the
        slice, not the tensor."""
        n = t.shape[-1]
        rows = int(np.prod(t.shape[:-1], dtype=np.int64))
        row_in, row_out = nbytes // rows, t.nbytes // rows
        step = max(1, STREAM_BYTES // row_in)
        weights = importance(t)
        # with an importance vector per expert, no slice spans two experts
        per = rows if weights is None else rows // len(weights)
        slices = [(r, min(step, end - r)) for end in range(per, rows + 1, per or 1)
                  for r in range(end - per, end, step)]
        f = opened()

        def read(i):
            r, k = slices[i]
            buf = buffer(f"in{i % 2}", k * row_in)
            _read_exactly(f, buf, offset + r * row_in, source.path)
            return buf

        ahead = _READER.submit(read, 0)
        try:
            for i, (r, k) in enumerate(slices):
                src = ahead.result()
                ahead = _READER.submit(read, i + 1) if i + 1 < len(slices) else None
                turn[0] ^= 1
                out, bad = quant.quantize_source(src, src_type, t.qtype, n, threads=threads,
                                                 imatrix=None if weights is None else weights[r // per],
                                                 out=buffer(f"out{turn[0]}", k * row_out))
                if bad >= 0:
                    not_finite(t)
                yield out
        finally:
            if ahead is not None:   # an error: the read in flight finishes before f closes or its buffer is reused
                ahead.exception()

    try:
        write_gguf(target, source.arch_name, write_metadata, plan, produce,
                   inputs=source.inputs + (source.path,), on_tensor=lambda t: bar.update(1))
    finally:
        bar.close()
        for f in files:
            f.close()
    summary = plan_summary(plan)
    return {"output": str(target), "bytes": target.stat().st_size, "bpw": summary["bpw"],
            "tensors": len(plan), "seconds": round(time.perf_counter() - start, 2)}
