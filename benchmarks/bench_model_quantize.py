"""Whole-model quantization: `convkit quantize` against llama.cpp's `llama_model_quantize`.

Both start from the same F16 GGUF of SmolLM2 (made here by llama_model_quantize from the
model's Q4_1 file, cached in a temporary directory) and write the same file type with 2
threads, each in a child process whose wall time and peak RSS are measured. The tensor
data of the two outputs is compared too: a speed figure for different bytes means nothing.
The two sides run interleaved, --rounds times, and the best of each is reported (a shared,
loaded machine slows one run or another, not a side).

--synthetic-layers N also quantizes a larger input: bench_convert.py's Llama-shaped float32
checkpoint with N layers (20: 4.1 GiB) written under /tmp, converted once to an F16 GGUF
(about 2 GiB) by convkit, then quantized by both sides as above; deleted afterwards.
Usage: python benchmarks/bench_model_quantize.py [--types q8_0,q4_0,q4_k_m,q6_k] [--rounds 3]
       [--synthetic-layers 20]

Where the time went (SmolLM2 F16 -> Q8_0, 2 threads, 2.8 s wall on a loaded 2-core EPYC, per
phase timed in the process, cProfile for the shares): Python and imports 0.26 s; opening the
GGUF 0.75 s (the checked layout 0.11 s, then gguf-py's reader decoding the 49k-token vocab and
merges a second time 0.64 s); the mix 0.03 s; metadata 0.45 s (handed to gguf-py's writer as
Python values, packed once to check them and again to write them); reading tensors 0.05 s but
widening F16 to a float32 copy of each tensor 0.7 s (numpy, one thread, a freshly faulted-in
array per tensor); the kernels 0.32 s. Peak RSS 286-302 MiB: the float32 copy of the
embedding (113 MiB) beside its F16 bytes and two decoded vocabularies. Now: the layout alone
(string arrays parsed in one loop), metadata copied as its stored bytes, and each F16/BF16/F32
tensor read 8 MiB at a time into reused buffers and quantized straight from those bytes by the
compiled helper (widened a few rows at a time in cache), the next slice read and the last
one written on background threads meanwhile: ~1.1-1.4 s wall, ~86 MiB.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gguf_lite  # noqa: E402
from report import measure, result  # noqa: E402

FILE_TYPES = {"f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q6_k": 18, "iq3_s": 26, "iq3_m": 27}
THREADS = 2

# the peer, in its own process: llama_model_quantize(src, dst, ftype) with THREADS threads
PEER = """import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.nthread, p.allow_requantize = int(sys.argv[3]), int(sys.argv[4]), True
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))"""


def peer_cmd(src, dst, ftype):
    return [sys.executable, "-c", PEER, str(src), str(dst), str(ftype), str(THREADS)]


def same_tensor_data(a: Path, b: Path) -> bool:
    (_, ta), (_, tb) = gguf_lite.read(a), gguf_lite.read(b)
    return sorted(ta) == sorted(tb) and all(
        ta[n][:2] == tb[n][:2] and np.array_equal(ta[n][2], tb[n][2]) for n in tb)


def compare(label, f16, types, rounds, tmp):
    """Both sides on one F16 GGUF for every file type in `types`, interleaved, best of `rounds`."""
    print(f"input: {label}, {f16.stat().st_size / 2**20:.0f} MiB; {THREADS} threads each, best of {rounds}")
    for name in types:
        ours_out, peer_out = tmp / f"ours-{name}.gguf", tmp / f"peer-{name}.gguf"
        ours_runs, peer_runs, codes = [], [], set()
        for _ in range(rounds):
            ours = measure([sys.executable, "-m", "convkit", "quantize", str(f16), "--type", name,
                            "--threads", str(THREADS), "-o", str(ours_out), "--quiet"])
            peer = measure(peer_cmd(f16, peer_out, FILE_TYPES[name]))
            codes |= {ours[2], peer[2]}
            ours_runs.append(ours)
            peer_runs.append(peer)
        if codes != {0}:
            print(f"{name}: exit codes ours {[r[2] for r in ours_runs]}, peer {[r[2] for r in peer_runs]}; no figures")
            continue
        same = same_tensor_data(ours_out, peer_out)
        ours_s, peer_s = min(r[0] for r in ours_runs), min(r[0] for r in peer_runs)
        ours_m, peer_m = max(r[1] for r in ours_runs), max(r[1] for r in peer_runs)
        print(f"{name}: ours {ours_s:.2f} s, {ours_m:.0f} MiB; llama_model_quantize {peer_s:.2f} s, "
              f"{peer_m:.0f} MiB; ratio {peer_s / ours_s:.2f}; tensor data {'identical' if same else 'DIFFERS'}")
        case = f"{label} -> {name.upper()}" + ("" if same else " (BYTES DIFFER)")
        result(f"{case}, wall time", ours_s, "llama_model_quantize", peer_s, "s", higher_is_better=False)
        result(f"{case}, peak RSS", ours_m, "llama_model_quantize", peer_m, "MiB", higher_is_better=False)
        ours_out.unlink()
        peer_out.unlink()


def cpu_line() -> str:
    from convkit.sysinfo import cpu_info

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU: {cpu_info()['model'] or 'unknown'}, {cores} cores usable, load average {os.getloadavg()[0]:.1f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--types", default="q8_0,q4_0,q4_k_m,q6_k")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--synthetic-layers", type=int, default=0)
    args = parser.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("peer : llama_cpp (llama-cpp-python) is not installed; nothing to compare")
        return
    from realdata import smollm2_gguf

    print(cpu_line())
    types = args.types.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-model-quantize-") as tmp:
        tmp = Path(tmp)
        f16 = tmp / "smollm2-f16.gguf"
        rc = measure(peer_cmd(smollm2_gguf(), f16, FILE_TYPES["f16"]))[2]
        if rc != 0:
            raise SystemExit(f"making the F16 input failed (exit {rc})")
        compare("SmolLM2 F16", f16, types, args.rounds, tmp)
        f16.unlink()
    if args.synthetic_layers:
        from bench_convert import write_checkpoint

        with tempfile.TemporaryDirectory(dir="/tmp", prefix="bench-model-quantize-") as tmp:
            tmp = Path(tmp)
            model = tmp / "model"
            model.mkdir()
            size = write_checkpoint(model, args.synthetic_layers)
            f16 = tmp / "synthetic-f16.gguf"
            rc = measure([sys.executable, "-m", "convkit", "quantize", str(model), "--type", "f16",
                          "-o", str(f16), "--quiet"])[2]
            if rc != 0:
                raise SystemExit(f"making the synthetic F16 input failed (exit {rc})")
            for p in model.iterdir():
                if p.suffix == ".safetensors":
                    p.unlink()   # disk: only the F16 GGUF is needed from here on
            compare(f"synthetic {size / 2**30:.1f} GiB f32 checkpoint as F16", f16, types, args.rounds, tmp)


if __name__ == "__main__":
    main()
