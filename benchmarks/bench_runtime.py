"""Forward throughput at ctx 512 on SmolLM2-135M: the runtime against transformers and llama.cpp.

    python benchmarks/bench_runtime.py [--chunks 3] [--rounds 3] [--threads 2] [--no-memory]

Each case evaluates chunks of 512 tokens of Python documentation from an empty cache,
with logits for every position (what perplexity needs), on the same machine and thread
count. Cases run interleaved for --rounds rounds and the best round counts, so load from
other processes hurts every case alike. Printed per case: tokens/s, ratio to llama.cpp
and to transformers, and for our cases the share of the bf16 GEMM peak (770 GFLOP/s on
the reference machine, and the peak measured in this run). Then peak resident memory of
per-layer dequantization against dequantize-all (one subprocess each; --no-memory skips it).
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

STATED_BF16_PEAK = 770e9
STATED_FP32_PEAK = 175e9
CTX = 512


def flops_per_token(config) -> float:
    """Matrix-product FLOPs per token of a ctx-512 chunk (weights, plus causal attention)."""
    c = config
    per_layer = c.hidden_size * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.n_heads * c.head_dim * c.hidden_size
    per_layer += 3 * c.hidden_size * c.ffn_size
    weights = c.n_layers * per_layer + c.hidden_size * c.vocab_size
    attention = c.n_layers * 2 * c.n_heads * c.head_dim * (CTX / 2)  # QK and AV over half the context on average
    return 2 * (weights + attention)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def chunks_of_text(n_chunks: int):
    from realdata import python_docs_text, smollm2_gguf

    from convkit.runtime.tokenizer import load_tokenizer

    ids = load_tokenizer(smollm2_gguf()).encode(python_docs_text())
    return [ids[i * CTX:(i + 1) * CTX] for i in range(n_chunks)]


def build_cases(names, threads):
    import torch

    from realdata import smollm2_gguf
    from smollm2_fixture import smollm2_checkpoint

    from convkit.runtime import load_model

    cases = {}
    for name in names:
        if name == "llama.cpp":
            import llama_cpp

            llm = llama_cpp.Llama(model_path=str(smollm2_gguf()), n_ctx=CTX, n_batch=CTX, n_ubatch=CTX,
                                  logits_all=True, n_threads=threads, n_threads_batch=threads, verbose=False)

            def run(chunk, llm=llm):
                llm.reset()
                llm.eval(chunk)
            cases[name] = run
        elif name == "transformers fp32":
            from transformers import AutoModelForCausalLM

            hf = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint(), dtype=torch.float32).eval()

            def run(chunk, hf=hf):
                with torch.inference_mode():
                    hf(torch.tensor([chunk])).logits
            cases[name] = run
        else:  # "ours fp32 q4_1", "ours bf16 q4_1 dequantize-all", "ours fp32 hf"
            parts = name.split()
            source = smollm2_checkpoint() if parts[2] == "hf" else smollm2_gguf()
            model = load_model(source, precision=parts[1], dequantize_all="dequantize-all" in parts)

            def run(chunk, model=model):
                model(torch.tensor([chunk]))
            cases[name] = (run, model.config)
    return cases


OUR_CASES = ["ours fp32 q4_1", "ours fp32 q4_1 dequantize-all", "ours bf16 q4_1",
             "ours bf16 q4_1 dequantize-all", "ours fp32 hf"]


def throughput(args):
    import torch

    torch.set_num_threads(args.threads)
    chunks = chunks_of_text(args.chunks)
    names = ["llama.cpp", "transformers fp32"] + OUR_CASES
    cases = build_cases(names, args.threads)
    best = {n: float("inf") for n in names}
    for _ in range(args.rounds):
        for name in names:
            case = cases[name]
            fn = case[0] if isinstance(case, tuple) else case
            fn(chunks[0])  # warm
            best[name] = min(best[name], sum(_timed(lambda: fn(c)) for c in chunks))
    tokens = CTX * len(chunks)
    rate = {n: tokens / t for n, t in best.items()}
    from bf16_peak import gemm_peak, instruction_peak

    bf16_peak, fp32_peak = gemm_peak(torch.bfloat16) * 1e9, gemm_peak(torch.float32) * 1e9
    instructions = instruction_peak()
    print(f"SmolLM2-135M, ctx {CTX}, {len(chunks)} chunks, {args.threads} threads, best of {args.rounds} rounds "
          f"(load average {os.getloadavg()[0]:.2f})")
    print(f"GEMM peak measured now: bf16 {bf16_peak / 1e9:.0f} GFLOP/s, fp32 {fp32_peak / 1e9:.0f} GFLOP/s "
          f"(stated: 770 / 175); bf16 instruction peak "
          + ("unavailable" if instructions is None else f"{instructions:.0f} GFLOP/s (bf16_peak.py)"))
    print(f"{'case':34s} {'tok/s':>8s} {'x llama.cpp':>12s} {'x transformers':>15s} {'GFLOP/s':>8s} "
          f"{'% of 770':>9s} {'% of measured':>14s}")
    report = {}
    for name in names:
        line = f"{name:34s} {rate[name]:8.0f} {rate[name] / rate['llama.cpp']:12.2f} " \
               f"{rate[name] / rate['transformers fp32']:15.2f}"
        entry = {"tokens_per_s": rate[name], "vs_llama_cpp": rate[name] / rate["llama.cpp"],
                 "vs_transformers": rate[name] / rate["transformers fp32"]}
        case = cases[name]
        if isinstance(case, tuple):
            flops = flops_per_token(case[1]) * rate[name]
            measured = bf16_peak if "bf16" in name else fp32_peak
            line += f" {flops / 1e9:8.0f} {100 * flops / STATED_BF16_PEAK:8.1f}% {100 * flops / measured:13.1f}%"
            entry.update(gflops=flops / 1e9, share_of_770=flops / STATED_BF16_PEAK, share_of_measured=flops / measured)
        print(line)
        report[name] = entry
        if name in OUR_CASES:
            for peer in ("llama.cpp", "transformers fp32"):
                result(f"{name} ctx {CTX}", rate[name], peer, rate[peer], "tokens/s")
    if args.json:
        print(json.dumps(report, indent=2))


# ------------------------------------------------------------------------------ memory
def _status_mib(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak (VmHWM) to the current RSS
        f.write("5")


def _memory_child(mode: str, precision: str) -> None:
    import gc

    import torch

    from realdata import smollm2_gguf

    from convkit.runtime import load_model

    torch.set_num_threads(2)
    torch.randn(64, 64) @ torch.randn(64, 64)  # load the GEMM libraries before the baseline
    gc.collect()
    base = _status_mib("VmRSS")
    _reset_peak()
    model = load_model(smollm2_gguf(), precision=precision, dequantize_all=mode == "dequantize-all")
    gc.collect()
    load_peak, loaded = _status_mib("VmHWM"), _status_mib("VmRSS")
    _reset_peak()
    with torch.inference_mode():
        model(torch.randint(0, model.config.vocab_size, (1, CTX)))
    print(json.dumps({"base": base, "load_peak": load_peak, "loaded": loaded, "forward_peak": _status_mib("VmHWM")}))


def memory(args):
    from realdata import smollm2_gguf

    file_mib = smollm2_gguf().stat().st_size / 2 ** 20
    print(f"\nresident memory above the process baseline (torch imported), one {CTX}-token forward; "
          f"file {file_mib:.0f} MiB")
    for precision in ("fp32", "bf16"):
        peaks = {}
        for mode in ("per-layer", "dequantize-all"):
            out = subprocess.run([sys.executable, __file__, "--memory-child", mode, precision],
                                 capture_output=True, text=True, check=True).stdout
            m = json.loads(out.strip().splitlines()[-1])
            peaks[mode] = m["forward_peak"] - m["base"]
            print(f"  {precision} {mode:15s} loaded {m['loaded'] - m['base']:5.0f} MiB (peak while loading "
                  f"{m['load_peak'] - m['base']:4.0f}), peak in forward {m['forward_peak'] - m['base']:5.0f} MiB")
        result(f"{precision} per-layer forward peak memory", peaks["per-layer"], "ours dequantize-all",
               peaks["dequantize-all"], "MiB", higher_is_better=False)
    # what per-layer needs beyond the file: the largest dense matrix (the tied 49152x576 head),
    # one layer's matrices, activations and the float32 logits
    print(f"  reference sizes: largest dense matrix (output head, fp32) {49152 * 576 * 4 / 2 ** 20:.0f} MiB, "
          f"one layer's matrices (fp32) {(576 * 960 + 576 * 576 + 3 * 576 * 1536) * 4 / 2 ** 20:.1f} MiB, "
          f"logits (fp32) {CTX * 49152 * 4 / 2 ** 20:.0f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return _memory_child(*args.memory_child)
    if not args.no_throughput:
        throughput(args)
    if not args.no_memory:
        memory(args)


if __name__ == "__main__":
    main()
