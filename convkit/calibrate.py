"""`convkit quantize --calibrate TEXT`: the model's own activations choose the rounding.

1. The unquantized model runs over the calibration text in llama.cpp's chunks (as
   `convkit imatrix` does); a forward pre-hook on every linear layer adds X^T X of its
   input (the full second moment, where an importance matrix keeps only the diagonal).
2. Each `blk.*` weight whose type quant.gptq supports is quantized with GPTQ error
   feedback inside ggml's blocks (quant/gptq.py) against its input's X^T X; every other
   tensor is quantized as `quantize --imatrix` would with the same text's importance
   vector (the diagonal over the token count), or without one where none was collected.
The file has the same file type, per-tensor types and size as the plain mix.
"""
import time
from pathlib import Path

import numpy as np
import torch

from convkit.errors import ConvkitError

DEFAULT_CTX = 512
# this fraction of the mean diagonal is added to X^T X; on the sample, 0.1 carried to text of
# another source better than GPTQ's 0.01 (benchmarks/bench_calibrate.py)
DAMP = 0.1


class HessianCollector:
    """Forward pre-hooks adding X^T X (float32 per pass, float64 in total) per linear input."""

    def __init__(self, model):
        from convkit.runtime.imatrix import MIN_ROWS, collected, linear_names

        self.min_rows = MIN_ROWS
        self.sums: dict[str, list] = {}  # GGUF name -> [float64 tensor [n, n], token count] (shared per input)
        self._handles = []
        for layer, names in linear_names(model):
            names = [n for n in names if collected(n, False)]
            if names:
                entry = [None, 0]
                for name in names:
                    self.sums[name] = entry
                self._handles.append(layer.register_forward_pre_hook(self._hook(entry)))

    def _hook(self, entry):
        def observe(_layer, args):
            x = args[0]
            rows = x.numel() // x.shape[-1]
            if rows < self.min_rows:  # as llama-imatrix: tiny products are not statistics
                return
            x = x.reshape(rows, x.shape[-1]).float()
            xtx = (x.T @ x).double()
            if entry[0] is None:
                entry[0] = xtx
            else:
                entry[0] += xtx
            entry[1] += rows
        return observe

    def statistics(self) -> dict:
        """{weight name: (float64 numpy X^T X [n, n], token count)}."""
        out, arrays = {}, {}
        for name, entry in self.sums.items():
            h, count = entry
            if h is None:
                continue
            if id(entry) not in arrays:  # one array per input, shared by the weights reading it
                arrays[id(entry)] = h.cpu().numpy()
                if not np.isfinite(arrays[id(entry)]).all():
                    raise ConvkitError(f"non-finite activations reach {name}; the model overflows in float32")
            out[name] = (arrays[id(entry)], count)
        return out

    def close(self):
        for h in self._handles:
            h.remove()
        self._handles = []


def collect_hessians(model_path, text_file: str, *, n_ctx: int = DEFAULT_CTX, n_chunks: int | None = None,
                     quiet: bool = False) -> dict:
    """X^T X of every `blk.*` linear input over `text_file`, in chunks of `n_ctx` tokens."""
    from convkit.eval.perplexity import ChunkPlan, read_text, tokenize_for_perplexity
    from convkit.runtime.open import open_model
    from convkit.progress import progress

    text = read_text(text_file)
    model, tok = open_model(str(model_path), "cpu", "fp32", "fp", True)
    n_ctx = min(n_ctx, model.config.context_limit)  # a model trained on shorter sequences: its own length
    tokens = tokenize_for_perplexity(tok, text)
    available = len(tokens) // n_ctx
    if available < 1:
        raise ConvkitError(f"{text_file}: the calibration text tokenizes to {len(tokens)} tokens, shorter than one "
                           f"chunk of {n_ctx}; give a longer text (100k tokens calibrate well)")
    plan = ChunkPlan(n_ctx, available if n_chunks is None else min(n_chunks, available),
                     tok.bos_id if tok.add_bos else None)
    collector = HessianCollector(model)
    bar = progress(total=plan.n_chunks, quiet=quiet, desc="calibrate", unit="chunk")
    try:
        with torch.inference_mode():
            for i in range(plan.n_chunks):
                model(torch.tensor([plan.chunk(tokens, i)], dtype=torch.long), logits_for=slice(-1, None))
                bar.update(1)
        return collector.statistics()
    finally:
        bar.close()
        collector.close()


def inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """quant.gptq.inverse_cholesky in torch (float64): the same factor, on torch's threads."""
    h = torch.from_numpy(np.array(h, dtype=np.float64))
    diag = torch.diagonal(h).clone()
    dead = diag <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    mean = diag[~dead].mean() if bool((~dead).any()) else torch.tensor(1.0, dtype=torch.float64)
    h.diagonal().add_(damp * mean)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky((hinv + hinv.T) / 2, upper=True).numpy()


def run_calibrated(source, plan, target, *, file_type: int, text_file: str, n_ctx: int = DEFAULT_CTX,
                   n_chunks: int | None = None, stats=None, threads: int = 1, quiet: bool = False) -> dict:
    """Write `plan` (convert_pipeline's) to `target`, the rounding chosen on `text_file`;
    `stats()`, when given, returns collect_hessians' result for that text."""
    import gguf

    from quant import gptq

    from convkit.convert_pipeline import plan_summary
    from convkit.gguf_out import encode, write_gguf
    from convkit.progress import progress

    start = time.perf_counter()
    stats = stats() if stats is not None else collect_hessians(source.path, text_file, n_ctx=n_ctx,
                                                                n_chunks=n_chunks, quiet=quiet)
    calibrated = 0
    factors = {}  # id of a shared X^T X -> its factor: q/k/v (and gate/up) read one input
    bar = progress(total=len(plan), quiet=quiet, unit="tensor", desc="quantize")

    def write_metadata(w):
        source.write_metadata(w)
        w.add_file_type(int(file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def produce(t):
        nonlocal calibrated
        values = source.read(t.name)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ConvkitError(f"{source.path}: tensor {t.name} holds NaN or infinite values; the weights are "
                               "corrupt, restore them from the model's source")
        entry = stats.get(t.name)
        if entry is None or t.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                                        gguf.GGMLQuantizationType.BF16):
            return encode(values, t.qtype, threads=threads)
        h, count = entry
        importance = (np.diag(h) / max(count, 1)).astype(np.float32)  # what an imatrix of this text holds
        if not gptq.supports(t.qtype):
            return encode(values, t.qtype, imatrix=importance, threads=threads)
        calibrated += 1
        if id(h) not in factors:
            factors.clear()
            factors[id(h)] = inverse_cholesky(h / max(count, 1), DAMP)
        rows = values.reshape(-1, values.shape[-1])
        return gptq.quantize_gptq(rows, h / max(count, 1), t.qtype, importance=importance, damp=DAMP,
                                  threads=threads, factor=factors[id(h)]).reshape(-1)

    try:
        write_gguf(target, source.arch_name, write_metadata, plan, produce,
                   inputs=source.inputs + (source.path, Path(text_file)), on_tensor=lambda t: bar.update(1))
    finally:
        bar.close()
    summary = plan_summary(plan)
    return {"output": str(target), "bytes": Path(target).stat().st_size, "bpw": summary["bpw"],
            "tensors": len(plan), "calibrated_tensors": calibrated, "seconds": round(time.perf_counter() - start, 2)}
