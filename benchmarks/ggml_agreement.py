"""How closely `--numerics ggml` reproduces llama.cpp's perplexity, over many chunks.

Our ggml numerics do ggml's arithmetic but not in its summation order, so the two PPLs
agree only statistically (see the README's limitations): per 512-token chunk they differ
by about 0.6%, and the difference of the means shrinks with the number of chunks. This
script measures it on SmolLM2: its own Q4_1 file and our Q4_K_M and Q8_0 files (made from
the test fixture's checkpoint), each evaluated by `llama_cpp.Llama(logits_all=True)` and by
us in ggml and in float32 numerics on the same chunks of the Python docs.

For each file it prints the three PPLs, our relative difference to llama.cpp, and the
standard error of that difference from the paired per-chunk values. Not part of run_all
(it is an accuracy check, not a speed comparison; 128 chunks take about 20 minutes).

    python benchmarks/ggml_agreement.py [--chunks 128] [--files q4_1,q4_k_m,q8_0]
"""
import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def llama_cpp_chunk_nll(path, tokens, plan) -> np.ndarray:
    """Mean NLL per chunk as llama-perplexity scores it, from llama.cpp's own logits."""
    import llama_cpp

    from convkit.eval.perplexity import token_nll
    from llama_peer import scored_logits

    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=plan.n_ctx, n_threads=2, verbose=False)
    return np.array([float(token_nll(logits, targets).mean()) for logits, targets in scored_logits(llm, tokens, plan)])


def our_chunk_nll(path, tokens, plan, numerics) -> np.ndarray:
    from convkit.eval.perplexity import chunk_logits, token_nll
    from convkit.runtime import load_model

    model = load_model(path, dequantize_all=True, numerics=numerics)
    return np.array([float(token_nll(c.logits, c.targets).mean()) for c in chunk_logits(model, tokens, plan)])


def compare(label, reference, ours) -> str:
    """PPL from per-chunk mean NLLs (chunks score the same count), and the paired difference."""
    diff = ours - reference
    rel = 100 * (math.exp(diff.mean()) - 1)
    se = 100 * diff.std(ddof=1) / math.sqrt(len(diff))
    return f"{label} {math.exp(ours.mean()):.4f} ({rel:+.3f}% +/- {se:.3f}%)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=128)
    ap.add_argument("--files", default="q4_1,q4_k_m,q8_0", help="q4_1 is SmolLM2's own file; others are ours")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from realdata import python_docs_text, smollm2_gguf
    from smollm2_fixture import smollm2_checkpoint

    from convkit.quantization import quantize_model
    from convkit.eval.perplexity import plan_chunks, tokenize_for_perplexity
    from convkit.runtime import ggml_numerics  # noqa: F401  (registers "ggml")
    from convkit.runtime.tokenizer import load_tokenizer

    own = smollm2_gguf()
    tokens = tokenize_for_perplexity(load_tokenizer(own), python_docs_text())
    plan = plan_chunks(len(tokens), 512, args.chunks)
    print(f"SmolLM2-135M, {plan.n_chunks} chunks of {plan.n_ctx} tokens of the Python docs")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.files.split(","):
            if name == "q4_1":
                path = own
            else:
                path = Path(tmp) / f"smollm2.{name}.gguf"
                quantize_model(smollm2_checkpoint(), name, path, quiet=True)
            reference = llama_cpp_chunk_nll(path, tokens, plan)  # first: torch's idle threads slow it down
            ggml = our_chunk_nll(path, tokens, plan, "ggml")
            fp32 = our_chunk_nll(path, tokens, plan, None)
            print(f"{name:7s} llama.cpp {math.exp(reference.mean()):.4f} | {compare('ggml', reference, ggml)} | "
                  f"{compare('fp32', reference, fp32)}", flush=True)


if __name__ == "__main__":
    main()
