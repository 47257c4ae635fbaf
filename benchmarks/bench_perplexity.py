"""Perplexity throughput (tokens/s at ctx 512) on SmolLM2-135M, side by side, 2 threads.

ours: fp32, bf16 and ggml numerics (weights dequantized once, `--batch 2048` as
llama-perplexity's default -b: four chunks per pass; bf16 also one chunk per pass), against
llama_cpp.Llama on the same Q4_1 file and transformers in float32 on the same weights (HF
fixture). Prints tokens/s, ratios to llama.cpp, and the bf16 mode's share of the nominal
bf16 GEMM peak (REFERENCE.md 7) and of the peaks measured in the same run (bf16_peak.py).
Each contender evaluates the same chunks `--repeats` times and keeps its best time, so a
moment of load from another tenant of this shared machine does not decide a ratio.

    python benchmarks/bench_perplexity.py [--chunks 4] [--batch 2048] [--repeats 3] [--peak-gflops 770]
"""
import argparse
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_runtime import flops_per_token  # noqa: E402  (matrix-product FLOPs of a ctx-512 token)
from bf16_peak import gemm_peak, instruction_peak  # noqa: E402
from report import result  # noqa: E402


def our_ppl(model, tokens, plan, batch) -> float:
    from convkit.eval.perplexity import chunk_logits, perplexity_of_logits

    return perplexity_of_logits(chunk_logits(model, tokens, plan, batch)).ppl


def llama_cpp_ppl(llm, tokens, plan) -> float:
    from convkit.eval.perplexity import perplexity_of_logits
    from llama_peer import scored_logits

    return perplexity_of_logits(scored_logits(llm, tokens, plan)).ppl


def best_rate(evaluate, n_tokens: int, repeats: int) -> tuple[float, float]:
    """(tokens/s of the fastest of `repeats` runs of evaluate(), the PPL it returned)."""
    best, ppl = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        ppl = evaluate()
        best = min(best, time.perf_counter() - t)
    return n_tokens / best, ppl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2048,
                    help="our tokens per forward pass (llama-perplexity's default -b: 4 chunks of 512)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per contender; the best time counts")
    ap.add_argument("--peak-gflops", type=float, default=770.0, help="bf16 GEMM peak of this machine")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from realdata import python_docs_text, smollm2_gguf

    from convkit.eval.perplexity import chunk_logits, perplexity_of_logits, plan_chunks, tokenize_for_perplexity
    from convkit.runtime import ggml_numerics  # noqa: F401
    from convkit.runtime import load_model
    from convkit.runtime.tokenizer import load_tokenizer

    path = smollm2_gguf()
    tokens = tokenize_for_perplexity(load_tokenizer(path), python_docs_text())
    plan = plan_chunks(len(tokens), 512, args.chunks)
    n = plan.n_chunks * 512
    results = {}

    import llama_cpp  # first: torch's idle OpenMP threads slow llama.cpp's threads down

    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=512, n_threads=2, verbose=False)
    results["llama.cpp Q4_1"] = best_rate(functools.partial(llama_cpp_ppl, llm, tokens, plan), n, args.repeats)
    del llm

    for precision, numerics in (("fp32", None), ("bf16", None), ("fp32", "ggml")):
        model = load_model(path, precision=precision, dequantize_all=True, numerics=numerics)
        list(chunk_logits(model, tokens, plan_chunks(len(tokens), 512, 1)))  # warm-up
        label = f"ours {numerics or precision}"
        results[label] = best_rate(functools.partial(our_ppl, model, tokens, plan, args.batch), n, args.repeats)
        if precision == "bf16" and args.batch != 512:  # also one chunk per pass, for comparison
            results[f"{label} -b 512"] = best_rate(functools.partial(our_ppl, model, tokens, plan, 512), n,
                                                   args.repeats)
        config = model.config
        del model

    try:
        from transformers import LlamaForCausalLM

        from smollm2_fixture import smollm2_checkpoint
    except ImportError as exc:
        print(f"transformers row skipped: {exc}")
    else:
        hf = LlamaForCausalLM.from_pretrained(str(smollm2_checkpoint()), torch_dtype=torch.float32).eval()
        @torch.inference_mode()
        def transformers_ppl():
            out = []
            for i in range(plan.n_chunks):
                logits = hf(torch.tensor([plan.chunk(tokens, i)])).logits[0]
                out.append((logits[256:511].float(), torch.tensor(plan.targets(tokens, i))))
            return perplexity_of_logits(out).ppl

        results["transformers fp32"] = best_rate(transformers_ppl, n, args.repeats)

    base = results["llama.cpp Q4_1"][0]
    fpt = flops_per_token(config)
    print(f"{'case':20s} {'tokens/s':>9s} {'vs llama.cpp':>13s} {'PPL':>9s}  GFLOP/s (share of {args.peak_gflops:.0f})")
    for label, (rate, ppl) in results.items():
        gf = rate * fpt / 1e9
        print(f"{label:20s} {rate:9.1f} {rate / base:12.2f}x {ppl:9.4f}  {gf:6.1f} ({100 * gf / args.peak_gflops:.1f}%)")
        if label.startswith("ours"):
            for peer in ("llama.cpp Q4_1", "transformers fp32"):
                if peer in results:
                    result(f"{label} ctx 512", rate, peer, results[peer][0], "tokens/s")
    # the nominal peak is what we were given; these two are what this machine does today
    bf16 = results["ours bf16"][0] * fpt / 1e9
    instructions, gemm = instruction_peak(), gemm_peak()
    print(f"ours bf16 {bf16:.0f} GFLOP/s: {100 * bf16 / gemm:.0f}% of a 4096^3 bf16 GEMM in this run ({gemm:.0f} GFLOP/s)"
          + ("" if instructions is None else
             f", {100 * bf16 / instructions:.0f}% of the bf16 instruction peak ({instructions:.0f} GFLOP/s)"))


if __name__ == "__main__":
    main()
