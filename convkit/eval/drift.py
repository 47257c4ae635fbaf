"""Drift report: what each quantization type costs, measured against the unquantized model.

For every requested type the model is quantized once (through `convkit quantize`, into a
cache directory, reused while it is newer than the model) and evaluated on the same chunks
of the same text as the original; the original's log-probabilities are computed once and
kept in the cache as a base-logits file (kld.py), with the exact NLL of each scored token
beside it so that PPL(base) and ΔPPL are not biased by the file's 16-nat clipping. Each row of the table is llama.cpp's
perplexity scoreboard for one type: file size, bits per weight, PPL, PPL - PPL(base),
mean KL divergence and the same-top-token rate.
"""
import functools
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convkit.errors import ConvkitError
from convkit.eval.kld import LogitsFile
from convkit.eval.perplexity import PerplexityAccumulator

DEFAULT_TYPES = "f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0,q3_k_m,q2_k"
FLOAT_TYPES = ("f32", "f16", "bf16")


def parse_types(spec: str) -> list[str]:
    """The file types of --types, each one that `convkit quantize --type` takes (checked
    here, before any model is run)."""
    from quant.errors import QuantError
    from quant.mixes import file_type_names, parse_file_type

    types = [t.strip().lower() for t in spec.split(",") if t.strip()]
    unknown = []
    for t in types:
        try:
            parse_file_type(t)
        except QuantError:
            unknown.append(t)
    if unknown or not types:
        raise ConvkitError(f"--types {spec}: unknown type {', '.join(unknown) or '(none given)'}; "
                           f"choose from {', '.join(file_type_names())}")
    return list(dict.fromkeys(types))


def quantized_path(cache: Path, model: Path, qtype: str) -> Path:
    stem = model.stem if model.is_file() else model.name
    return cache / f"{stem}.{qtype}.gguf"


def quantize_cached(model: Path, qtype: str, cache: Path, quiet: bool, method: str = "", **options) -> Path:
    """The model quantized to `qtype` in the cache (with `options` for convkit.quantization's
    quantize_model, under a name of `method`); made when missing or stale."""
    from convkit.quantization import available_cores, quantize_model, render_done

    out = quantized_path(cache, model, qtype if not method else f"{qtype}.{method}")
    inputs = [model] + [Path(options[k]) for k in ("imatrix", "calibrate") if options.get(k) is not None]
    if out.exists() and all(out.stat().st_mtime >= model_mtime(p) for p in inputs):
        return out
    result = quantize_model(model, qtype, out, threads=available_cores(), quiet=quiet, **options)
    if not quiet:
        print(render_done(result), file=sys.stderr)
    return out


def model_mtime(path: Path) -> float:
    if path.is_dir():
        return max((p.stat().st_mtime for p in path.iterdir() if p.is_file()), default=0.0)
    return path.stat().st_mtime


def gguf_size(path: Path) -> tuple[int, int]:
    """(file bytes, weights in the file) for bits per weight."""
    from convkit.gguf_in import GGUFFileReader

    reader = GGUFFileReader(path)
    n = sum(int(t.n_elements) for t in reader.tensors)
    return path.stat().st_size, n


@dataclass
class DriftRow:
    type: str
    file: str
    size_bytes: int
    bpw: float
    ppl: float
    ppl_err: float
    delta_ppl: float
    delta_ppl_err: float
    kld: float
    kld_err: float
    kld_p99: float
    same_top: float
    same_top_err: float
    delta_p_rms: float
    method: str = ""  # "", or with --calibrate: "imatrix" (llama.cpp at its best) / "calibrated" (ours)

    @property
    def label(self) -> str:
        return f"{self.type} {self.method}".strip()


def row_from_summary(qtype: str, path: Path, s: dict, method: str = "") -> DriftRow:
    size, n = gguf_size(path)
    return DriftRow(qtype, str(path), size, 8.0 * size / n, s["ppl"], s["ppl_err"], s["delta_ppl"],
                    s["delta_ppl_err"], s["kld_mean"], s["kld_mean_err"], s["kld_p99"], s["same_top"],
                    s["same_top_err"], s["delta_p_rms"], method)


HEADER = ("type", "size", "bpw", "PPL", "ΔPPL", "KLD", "same top-1")


def _fixed(x: float, digits: int, sign: str = "") -> str:
    """x to `digits` decimals, with no "-0.0000" for a value that rounds to zero."""
    return f"{round(x, digits) + 0.0:{sign}.{digits}f}"


def _cells(r: DriftRow) -> tuple:
    return (r.label, f"{r.size_bytes / 2**20:.1f} MiB", f"{r.bpw:.2f}", f"{r.ppl:.4f} ± {r.ppl_err:.4f}",
            f"{_fixed(r.delta_ppl, 4, '+')} ± {r.delta_ppl_err:.4f}", f"{_fixed(r.kld, 6)} ± {r.kld_err:.6f}",
            f"{100 * r.same_top:.2f} ± {100 * r.same_top_err:.2f} %")


def text_table(rows: list[DriftRow], base_ppl: float, base_err: float) -> str:
    cells = [HEADER] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(HEADER))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [f"base PPL = {base_ppl:.4f} ± {base_err:.4f}"])


def markdown_table(rows: list[DriftRow], base_ppl: float, base_err: float) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines + ["", f"Base PPL = {base_ppl:.4f} ± {base_err:.4f}"])


def plot(rows: list[DriftRow], target, title: str) -> None:
    """KLD and ΔPPL against bits per weight (log scale on the quality axes), each type labelled."""
    try:
        import matplotlib
    except ImportError:
        raise ConvkitError("--plot needs matplotlib, which is not installed; `pip install matplotlib` "
                           "or drop --plot") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from convkit.atomic import atomic_path

    fig, (kld_ax, ppl_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    # KLD spans decades: log scale; a type with no divergence at all (f16 of a bf16 model)
    # cannot sit on it and is named in the axis title instead
    shown = [r for r in rows if r.kld > 0]
    lossless = [r.label for r in rows if r.kld <= 0]
    methods = list(dict.fromkeys(r.method for r in rows))  # with --calibrate: llama.cpp's and ours
    for method in methods:
        series = [r for r in shown if r.method == method]
        kld_ax.errorbar([r.bpw for r in series], [r.kld for r in series], yerr=[r.kld_err for r in series],
                        fmt="o-", capsize=3, label=method or None)
    kld_ax.set_yscale("log")
    kld_ax.set_ylabel("mean KL divergence from the base (nats)")
    if lossless:
        kld_ax.set_title(f"KLD 0 (not shown): {', '.join(lossless)}", fontsize=9)
    # ΔPPL can be of either sign and is noisy: linear, with its uncertainty
    for method in methods:
        series = [r for r in rows if r.method == method]
        ppl_ax.errorbar([r.bpw for r in series], [r.delta_ppl for r in series],
                        yerr=[r.delta_ppl_err for r in series], fmt="o-", capsize=3, label=method or None)
    if len(methods) > 1:
        kld_ax.legend(fontsize=8)
    ppl_ax.axhline(0.0, color="grey", linewidth=0.8)
    ppl_ax.set_ylabel("PPL - PPL(base)")
    for ax, points in ((kld_ax, [(r, r.kld) for r in shown]), (ppl_ax, [(r, r.delta_ppl) for r in rows])):
        for r, y in points:
            ax.annotate(r.type, (r.bpw, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel("bits per weight")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    target = Path(target)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=target.suffix.lstrip(".") or "png", dpi=120, metadata={"Software": None})
    plt.close(fig)


def as_json(rows: list[DriftRow], base: dict) -> str:
    return json.dumps({"base": base, "types": [r.__dict__ for r in rows]}, indent=2, sort_keys=True)


class BaseLogits:
    """The unquantized model's evaluation, cached: llama.cpp's base-logits file (for KLD)
    and, beside it, the exact NLL of every scored token (float64), which the 16-bit file
    clips for tokens far below the top one."""

    def __init__(self, cache: Path, digest: str):
        self.logits = cache / f"base-{digest}.logits"
        self.nll = cache / f"base-{digest}.nll"

    def fresh(self, model: Path) -> bool:
        return all(p.exists() and p.stat().st_mtime >= model_mtime(model) for p in (self.logits, self.nll))

    @property
    def file(self):
        return LogitsFile(self.logits)

    def nll_by_chunk(self):
        f = self.file
        nll = np.fromfile(self.nll, dtype="<f8")
        if nll.size != f.n_chunks * f.rows:
            raise ConvkitError(f"{self.nll}: {nll.size} values where {f.n_chunks * f.rows} are expected; "
                               f"delete it and run again")
        return nll.reshape(f.n_chunks, f.rows)

    def accumulator(self):
        """The base model's PPL from the cached NLLs (no model run)."""
        acc = PerplexityAccumulator()
        acc.add(torch.from_numpy(self.nll_by_chunk().reshape(-1)))
        return acc


def evaluate(model_path, tokens, plan, batch, device, numerics, dequantize_all, base=None,
             base_target=None, quiet=False, label=""):
    """Run one model over the plan: PPL accumulator, and KLD against `base` (a BaseLogits),
    or, with `base_target`, the model's logits and exact NLLs saved as the base."""
    from convkit.atomic import atomic_open
    from convkit.eval import kld as kldmod
    from convkit.eval.perplexity import chunk_logits, token_nll
    from convkit.progress import progress
    from convkit.runtime.open import open_model

    net, _ = open_model(model_path, device, "fp32", numerics, dequantize_all)
    acc, kacc = PerplexityAccumulator(), kldmod.KLDAccumulator()
    bar = progress(total=plan.n_chunks, quiet=quiet, desc=label, unit="chunk")
    if base_target is not None:
        nlls = []
        with atomic_open(base_target.logits, "wb") as f:
            writer = kldmod.LogitsWriter(f, plan.n_ctx, net.config.vocab_size, plan.n_chunks, tokens)
            for c in chunk_logits(net, tokens, plan, batch):
                nlls.append(token_nll(c.logits, c.targets))
                acc.add(nlls[-1])
                writer.add(c.logits)
                bar.update(1)
        with atomic_open(base_target.nll, "wb") as f:
            f.write(torch.stack(nlls).numpy().astype("<f8").tobytes())
    else:
        base_file, nll_base = base.file, base.nll_by_chunk()
        for c in chunk_logits(net, tokens, plan, batch):
            acc.add(token_nll(c.logits, c.targets))
            kacc.add(c.logits, base_file.chunk(c.index), c.targets, nll_base=torch.from_numpy(nll_base[c.index]))
            bar.update(1)
    bar.close()
    return acc, kacc


def _digest(text: str, prefix: str = "") -> str:
    return hashlib.sha256(prefix.encode() + text.encode()).hexdigest()[:16]


def run_drift(model: Path, qtypes: list[str], text_file: str, *, n_ctx=512, n_chunks=None, batch=None,
              cache: Path | None = None, device="cpu", numerics="fp", dequantize_all=False, calibrate=None, imatrix=None,
              quiet=False, report=None) -> tuple[list[DriftRow], dict]:
    """(rows, base summary): MODEL quantized to each type and scored against itself on `text_file`.

    With `calibrate` (a text), each type gives two rows on the same chunks: llama.cpp at its
    best (an importance matrix of that text, then --imatrix) and ours (--calibrate). With
    `imatrix` (a file), every type is quantized with it (the types llama.cpp only makes with
    one, iq2_m and below, need it)."""
    if imatrix is not None and calibrate is not None:
        raise ConvkitError("--calibrate makes its own importance matrix; give --calibrate or --imatrix, not both")
    from convkit.eval.perplexity import plan_chunks, read_text, tokenize_for_perplexity
    from convkit.quantization import make_plan
    from convkit.runtime.load import check_model
    from convkit.runtime.tokenizer import load_tokenizer

    text = read_text(text_file)
    calib_text = read_text(calibrate) if calibrate is not None else None
    config = check_model(model)
    # each type's whole plan (imatrix needed, rows no block of it holds) before hours of work
    for qtype in qtypes:
        make_plan(model, qtype, imatrix, calibrated=calibrate is not None)
    tok = load_tokenizer(model, config.vocab_size)
    tokens = tokenize_for_perplexity(tok, text)
    if n_ctx > config.context_limit:
        raise ConvkitError(f"--ctx {n_ctx} is longer than {model}'s context of {config.context_limit}; "
                           f"use --ctx {config.context_limit} or less")
    plan = plan_chunks(len(tokens), n_ctx, n_chunks, tok.bos_id if tok.add_bos else None, source=text_file)
    cache = cache or model.parent / f"{model.name}.drift"
    cache.mkdir(parents=True, exist_ok=True)
    base = BaseLogits(cache, _digest(text, "%d:%d:" % (n_ctx, plan.n_chunks)))
    if base.fresh(model):
        base_acc = base.accumulator()
    else:
        base_acc, _ = evaluate(model, tokens, plan, batch, device, "fp", dequantize_all,
                               base_target=base, quiet=quiet, label="base")
    variants = [("", {})]
    if imatrix is not None:  # a row name of its own: a cached file made without it is not reused
        variants = [("imatrix", {"imatrix": imatrix})]
    if calibrate is not None:
        variants = _calibration_variants(model, calibrate, calib_text, cache, device, quiet)
    rows = []
    for qtype in qtypes:
        # float files hold no rounding to choose: one row, as without --calibrate
        for method, options in (variants if qtype not in FLOAT_TYPES else [("", {})]):
            path = quantize_cached(model, qtype, cache, quiet, method, **options)
            _, kacc = evaluate(path, tokens, plan, batch, device, numerics, dequantize_all, base=base,
                               quiet=quiet, label=f"{qtype} {method}".strip())
            rows.append(row_from_summary(qtype, path, kacc.summary(), method))
            if report is not None:
                report(rows[-1])
    summary = {"model": str(model), "ppl": base_acc.ppl, "ppl_err": base_acc.uncertainty, "n_ctx": n_ctx,
               "chunks": plan.n_chunks, "scored_tokens": base_acc.count, "numerics": numerics, "text": text_file}
    if calibrate is not None:
        summary["calibration_text"] = str(calibrate)
    if imatrix is not None:
        summary["imatrix"] = str(imatrix)
    return rows, summary


def _calibration_variants(model, calibrate, calib_text, cache, device, quiet):
    """[(method, quantize options)]: an importance matrix of the calibration text (made once,
    kept in the cache) for llama.cpp's row, and our calibrated rounding (its statistics
    collected once for every type, and only if some calibrated file is not cached)."""
    from convkit.calibrate import collect_hessians
    from convkit.importance import make_imatrix

    digest = _digest(calib_text)
    stem = model.stem if model.is_file() else model.name
    matrix = cache / f"{stem}.imatrix-{digest}.gguf"
    if not (matrix.exists() and matrix.stat().st_mtime >= model_mtime(model)):
        make_imatrix(str(model), str(calibrate), str(matrix), device=device, quiet=quiet)
    statistics = functools.cache(lambda: collect_hessians(model, str(calibrate), quiet=quiet))
    return [("imatrix", {"imatrix": matrix}), ("calibrated", {"calibrate": calibrate, "calibration": statistics})]
