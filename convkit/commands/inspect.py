"""`convkit inspect FILE`: metadata, tensor table, type summary and bits per weight (GGUF or safetensors)."""
from collections import Counter
from pathlib import Path

import click
import numpy as np

from convkit.output import emit


def _short(value):
    if isinstance(value, list):
        return f"[{len(value)} items]" if len(value) > 8 else value
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    return value


def _gguf(path):
    from convkit import gguf_in
    reader = gguf_in.open_gguf(path, check_model=False)  # shows a file as it is
    meta = {k: _short(f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = [{"name": t.name, "shape": list(gguf_in.numpy_shape(t)), "type": t.tensor_type.name,
                "bytes": int(t.n_bytes)} for t in reader.tensors]
    return meta, tensors


def _safetensors(path):
    from convkit.checkpoint import read_safetensors_header
    entries = read_safetensors_header(path)
    return {}, [{"name": e.name, "shape": list(e.shape), "type": e.dtype, "bytes": e.nbytes}
                for e in sorted(entries, key=lambda e: e.name)]


@click.command("inspect")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def inspect_cmd(file, as_json):
    """Show what FILE (GGUF or safetensors) holds."""
    from convkit import gguf_in
    meta, tensors = _gguf(file) if gguf_in.is_gguf(file) else _safetensors(file)
    total = sum(t["bytes"] for t in tensors)
    elements = sum(int(np.prod(t["shape"], dtype=np.int64)) for t in tensors)
    result = {"file": str(file), "metadata": meta, "tensors": tensors,
              "types": dict(sorted(Counter(t["type"] for t in tensors).items())),
              "total_bytes": total, "bpw": round(total * 8 / max(elements, 1), 4)}
    lines = [f"{k} = {v}" for k, v in meta.items()]
    lines += [f"{t['name']:<40} {'x'.join(map(str, t['shape'])):>14} {t['type']:>6} {t['bytes']:>12}" for t in tensors]
    lines.append("types: " + ", ".join(f"{k} {v}" for k, v in result["types"].items()))
    lines.append(f"{len(tensors)} tensors, {total / 2**20:.2f} MiB, {result['bpw']} bits per weight")
    emit(result, as_json=as_json, text="\n".join(lines))
