"""What `llama-imatrix` collects, gathered from the runtime's own matrix products.

llama.cpp's tools/imatrix/imatrix.cpp (IMatrixCollector::collect_imatrix) watches every
MUL_MAT of the compute graph and, for a weight named `blk.*` (and `output.weight` with
--process-output) whose product sees at least 16 float32 activation rows, adds each input
column's squared value over those rows to a float32 sum, and the number of rows to a count.

Every product of the runtime happens in a `QuantLinear` (linear.py), so a forward pre-hook
on each linear sees exactly the `src1` that ggml's MUL_MAT sees. Hooks are torch's own:
nothing runs on the forward path unless a collector is attached. The runtime fuses q/k/v
(and gate/up) into one product over the same input; llama.cpp runs them as separate
products of that same input, so the one sum is recorded under each of its GGUF names.
A tied output head is `token_embd.weight` in llama.cpp's graph, which it never collects.

Sums: llama.cpp adds x*x row by row in float32; here each product's column sums are one
float32 reduction (torch's, which is more accurate than a sequential sum) added to a
float32 total, so the two orders differ by float32 rounding only (about 1e-6 relative).
"""
from dataclasses import dataclass

import numpy as np
import torch

from convkit.errors import ConvkitError

from .linear import ConcatLinear, QuantLinear
from .model import Experts

MIN_ROWS = 16  # imatrix.cpp: "why are small batches ignored (<16 tokens)?"


def linear_names(model) -> list[tuple[QuantLinear, list[str]]]:
    """Each QuantLinear of `model` with the GGUF weight names llama.cpp multiplies by its input."""
    out = []

    def add(module, names):
        if isinstance(module, ConcatLinear):  # fused projections of different types: one part each
            for part, name in zip(module.parts, names):
                out.append((part, [name]))
        else:
            out.append((module, names))

    for block in model.blocks:
        if isinstance(block.mlp, Experts):  # llama-imatrix's per-expert statistics are not reproduced
            raise ConvkitError(f"{getattr(model, 'source', 'the model')}: a mixture-of-experts model; "
                               "importance matrices are collected for dense models only")
        p = f"blk.{block.layer}."
        qkv = ["attn_qkv"] if block.attn.fused_qkv else ["attn_q", "attn_k", "attn_v"]
        add(block.attn.qkv, [f"{p}{n}.weight" for n in qkv])
        add(block.attn.out, [f"{p}attn_output.weight"])
        up = ["ffn_gate", "ffn_up"] if block.mlp.gated else ["ffn_up"]
        add(block.mlp.up, [f"{p}{n}.weight" for n in up])
        add(block.mlp.down, [f"{p}ffn_down.weight"])
    tied = model.lm_head.weight is model.tok_embd.weight
    add(model.lm_head, ["token_embd.weight" if tied else "output.weight"])
    return out


def collected(name: str, process_output: bool) -> bool:
    """imatrix.cpp's filter on the weight's name."""
    return name.startswith("blk.") or (process_output and name == "output.weight")


@dataclass
class _Entry:
    sums: torch.Tensor  # float32 [in_features]
    count: int = 0


class ImatrixCollector:
    """Attach to a model; every product afterwards adds to the statistics until `close()`.

        with ImatrixCollector(model, process_output=False) as c:
            model(ids)
        stats = c.statistics()   # {name: (float32 sums [ne0], int count)}
    """

    def __init__(self, model, process_output: bool = False):
        self.entries: dict[str, _Entry] = {}
        self._handles = []
        for layer, names in linear_names(model):
            names = [n for n in names if collected(n, process_output)]
            if names:
                self._handles.append(layer.register_forward_pre_hook(self._hook(names)))

    def _hook(self, names):
        def observe(_layer, args):
            x = args[0]
            rows = x.numel() // x.shape[-1]
            if rows < MIN_ROWS:
                return
            sums = x.reshape(rows, x.shape[-1]).float().square().sum(0)
            for name in names:
                entry = self.entries.get(name)
                if entry is None:
                    self.entries[name] = _Entry(sums.clone(), rows)
                else:
                    entry.sums += sums
                    entry.count += rows
        return observe

    def statistics(self) -> dict:
        """{weight name: (float32 numpy sums [ne0], token count)}; non-finite sums are an error."""
        out = {}
        for name, e in self.entries.items():
            sums = e.sums.cpu().numpy().astype(np.float32)
            if not np.isfinite(sums).all():
                raise ConvkitError(f"non-finite activations reach {name} (as llama-imatrix, nothing is written); "
                                   f"the model overflows in this precision: use --precision fp32")
            out[name] = (sums, e.count)
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def collect(model, tokens: list[int], plan, *, process_output: bool = False, chunks_per_pass: int = 1,
            on_chunks=None) -> dict:
    """Evaluate `plan`'s chunks of `tokens` (convkit.eval.perplexity.ChunkPlan: llama.cpp's
    chunking, BOS swapped in when the model adds it) and return the collected statistics.
    `chunks_per_pass` chunks go through one forward pass; `on_chunks(n)` is told progress."""
    with ImatrixCollector(model, process_output) as collector:
        for start in range(0, plan.n_chunks, chunks_per_pass):
            idx = range(start, min(start + chunks_per_pass, plan.n_chunks))
            ids = torch.tensor([plan.chunk(tokens, i) for i in idx], dtype=torch.long)
            # llama-imatrix asks for every position's logits so that the output head sees all
            # tokens; without --process-output nothing there is collected, so one row will do
            model(ids, logits_for=None if process_output else slice(-1, None))
            if on_chunks is not None:
                on_chunks(len(idx))
        return collector.statistics()
