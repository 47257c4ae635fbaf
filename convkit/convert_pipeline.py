"""The conversion pipeline shared by `convkit quantize` and `convkit convert`.

A source (HF checkpoint or GGUF) yields GGUF tensor names, shapes and float32 values one
at a time; a plan gives each tensor its type; the writer streams them into the output.
"""
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np

from convkit import gguf_in, gguf_model
from convkit.arch import architecture_for
from convkit.checkpoint import open_checkpoint
from convkit.errors import ConvkitError
from convkit.gguf_out import PlannedTensor, encode, write_gguf
from convkit.gguf_vocab import write_vocab

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

    def write_metadata(w):
        w.add_type("model")
        w.add_name(_model_name(ckpt))
        arch.write_hparams(w)
        write_vocab(w, ckpt.directory, ckpt.config, reads_prefix_space=arch.reads_prefix_space)

    hp = {"n_layer": arch.n_layer, "n_head": getattr(arch, "n_head", 1), "n_head_kv": getattr(arch, "n_head_kv", 1),
          "n_expert": arch.n_expert}
    files = tuple({e.file for e in ckpt.tensors.values()})
    return Source(ckpt.directory, arch.name, tensors, read, write_metadata, hp, files)


def _model_name(ckpt) -> str:
    name = ckpt.config.get("_name_or_path") or ckpt.directory.name
    return str(name).rstrip("/").split("/")[-1]


def _gguf_source(path: Path) -> Source:
    reader = gguf_in.open_gguf(path)
    arch_name = reader.layout.fields["general.architecture"]  # checked by open_gguf
    by_name = {t.name: t for t in reader.tensors}
    tensors = [(t.name, gguf_in.numpy_shape(t), int(t.tensor_type)) for t in reader.tensors]

    def write_metadata(w):
        for key, f in reader.fields.items():
            if key.startswith(SKIP_KEYS):
                continue
            vtype = f.types[0]
            sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, f.contents(), vtype, sub_type=sub)

    meta = gguf_model.Meta(reader.layout, path)
    n_head = meta.int(f"{arch_name}.attention.head_count", 1)
    hp = {"n_layer": meta.int(f"{arch_name}.block_count", 0, low=0), "n_head": n_head,
          "n_head_kv": meta.int(f"{arch_name}.attention.head_count_kv", n_head),
          "n_expert": meta.int(f"{arch_name}.expert_count", 0, low=0)}
    return Source(path, arch_name, tensors, lambda name: gguf_in.read_f32(path, by_name[name]), write_metadata, hp, (path,))


def make_plan(source: Source, types: dict) -> list:
    return [PlannedTensor(name, shape, int(types[name])) for name, shape, _ in source.tensors]


def plan_summary(plan) -> dict:
    total = sum(t.nbytes for t in plan)
    elements = sum(int(np.prod(t.shape, dtype=np.int64)) for t in plan)
    return {"tensors": [{"name": t.name, "shape": list(t.shape), "type": gguf.GGMLQuantizationType(t.qtype).name,
                         "bytes": t.nbytes} for t in plan],
            "total_bytes": total, "bpw": round(total * 8 / max(elements, 1), 4)}


def run(source: Source, plan, target, *, file_type: int, imatrix=None, threads=1, quiet=False) -> dict:
    from convkit.progress import progress

    target = Path(target)
    start = time.perf_counter()
    bar = progress(total=len(plan), quiet=quiet, unit="tensor", desc="quantize")

    def write_metadata(w):
        source.write_metadata(w)
        w.add_file_type(int(file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def produce(t):
        bar.set_postfix_str(t.name, refresh=False)
        with np.errstate(over="ignore", invalid="ignore"):  # damaged blocks: reported below, not warned
            values = source.read(t.name)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            # llama.cpp's quantize rejects such rows too (ggml_validate_row_data)
            raise ConvkitError(f"{source.path}: tensor {t.name} holds NaN or infinite values; the weights are "
                               "corrupt, restore them from the model's source")
        weights = None
        if imatrix is not None and t.qtype != gguf.GGMLQuantizationType.F32:
            from quant.imatrix import importance_for
            weights = importance_for(imatrix, t.name, t.shape)
            weights = None if weights is None else weights.reshape(-1)
        return encode(values, t.qtype, imatrix=weights, threads=threads)

    try:
        write_gguf(target, source.arch_name, write_metadata, plan, produce,
                   inputs=source.inputs + (source.path,), on_tensor=lambda t: bar.update(1))
    finally:
        bar.close()
    summary = plan_summary(plan)
    return {"output": str(target), "bytes": target.stat().st_size, "bpw": summary["bpw"],
            "tensors": len(plan), "seconds": round(time.perf_counter() - start, 2)}
