"""Importance-matrix collection throughput (tokens/s) on SmolLM2-135M, side by side.

The same chunks (ctx 512) of the same text, the same Q4_1 file, the same threads:
- llama.cpp collecting as llama-imatrix does: its graph callback asks for every `blk.*`
  MUL_MAT and the activations are summed (in numpy, as one reduction per product; the
  C++ tool's loop costs about the same). llama.cpp's default attention (flash attention
  on auto), one chunk per decode (llama-imatrix -b 512: its fastest setting);
- llama.cpp evaluating the same chunks without the callback: a lower bound on
  llama-imatrix's time (the graph is not split at every product);
- ours (`convkit imatrix`'s collect) in fp32, bf16 and ggml numerics, weights dequantized once.
Each contender runs `--repeats` times, in turn with the others, and keeps its best time
(the machine is shared). llama.cpp's times include loading the file (mmap, a few ms) and
creating its context.

    python benchmarks/bench_imatrix.py [--chunks 4] [--repeats 2] [--threads 2]
"""
import argparse
import functools
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from report import result  # noqa: E402


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16") if f in flags]
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, {' '.join(simd)}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="runs per contender; the best time counts")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from llama_imatrix import llama_imatrix
    from realdata import python_docs_text, smollm2_gguf

    from convkit.eval.perplexity import plan_chunks, tokenize_for_perplexity
    from convkit.runtime import ggml_numerics  # noqa: F401  (registers "ggml")
    from convkit.runtime import load_model
    from convkit.runtime.imatrix import collect
    from convkit.runtime.tokenizer import load_tokenizer

    path = smollm2_gguf()
    tok = load_tokenizer(path)
    tokens = tokenize_for_perplexity(tok, python_docs_text())
    plan = plan_chunks(len(tokens), 512, args.chunks, tok.bos_id if tok.add_bos else None)
    n = plan.n_chunks * plan.n_ctx
    print(f"CPU: {cpu_model()}; {args.threads} threads; {plan.n_chunks} chunks of {plan.n_ctx} tokens; {path.name}")
    runs = {
        "llama.cpp imatrix (callback)": functools.partial(llama_imatrix, path, tokens, plan, threads=args.threads,
                                                          flash_attn=None, exact=False),
        "llama.cpp eval only": functools.partial(llama_imatrix, path, tokens, plan, threads=args.threads,
                                                 flash_attn=None, collect=False),
    }
    for precision, numerics in (("fp32", None), ("bf16", None), ("fp32", "ggml")):
        model = load_model(path, precision=precision, dequantize_all=True, numerics=numerics)
        runs[f"ours {numerics or precision}"] = functools.partial(collect, model, tokens, plan)
    # round robin, best time of each: a burst of load from another tenant of this shared
    # machine then slows one run of each contender, not all runs of one
    best = {label: float("inf") for label in runs}
    for _ in range(args.repeats):
        for label, run in runs.items():
            t = time.perf_counter()
            run()
            best[label] = min(best[label], time.perf_counter() - t)
    rates = {label: n / seconds for label, seconds in best.items()}
    peer, bound = rates["llama.cpp imatrix (callback)"], rates["llama.cpp eval only"]
    print(f"{'case':30s} {'tokens/s':>9s} {'vs imatrix':>11s} {'vs eval only':>13s}")
    for label, rate in rates.items():
        print(f"{label:30s} {rate:9.1f} {rate / peer:10.2f}x {rate / bound:12.2f}x")
        if label.startswith("ours"):
            result(f"imatrix {label} ctx 512", rate, "llama.cpp imatrix callback", peer, "tokens/s")
            result(f"imatrix {label} ctx 512", rate, "llama.cpp eval only", bound, "tokens/s")


if __name__ == "__main__":
    main()
