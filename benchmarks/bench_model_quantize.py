"""Whole-model quantization: `convkit quantize` against llama.cpp's `llama_model_quantize`.

Both start from the same F16 GGUF of SmolLM2 (made here by llama_model_quantize from the
model's Q4_1 file, cached in a temporary directory) and write the same file type with 2
threads, each in a child process whose wall time and peak RSS are measured. The tensor
data of the two outputs is compared too: a speed figure for different bytes means nothing.
Usage: python benchmarks/bench_model_quantize.py [--types q8_0,q4_0,q4_k_m,q6_k]
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gguf_lite  # noqa: E402
from report import measure, result  # noqa: E402

FILE_TYPES = {"f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q6_k": 18}
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--types", default="q8_0,q4_0,q4_k_m,q6_k")
    args = parser.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("peer : llama_cpp (llama-cpp-python) is not installed; nothing to compare")
        return
    from realdata import smollm2_gguf

    with tempfile.TemporaryDirectory(prefix="bench-model-quantize-") as tmp:
        tmp = Path(tmp)
        f16 = tmp / "smollm2-f16.gguf"
        rc = measure(peer_cmd(smollm2_gguf(), f16, FILE_TYPES["f16"]))[2]
        if rc != 0:
            raise SystemExit(f"making the F16 input failed (exit {rc})")
        print(f"input: {f16.name}, {f16.stat().st_size / 2**20:.0f} MiB; {THREADS} threads each")
        for name in args.types.split(","):
            ours_out, peer_out = tmp / f"ours-{name}.gguf", tmp / f"peer-{name}.gguf"
            ours = measure([sys.executable, "-m", "convkit", "quantize", str(f16), "--type", name,
                            "--threads", str(THREADS), "-o", str(ours_out), "--quiet"])
            peer = measure(peer_cmd(f16, peer_out, FILE_TYPES[name]))
            if ours[2] or peer[2]:
                print(f"{name}: exit codes ours {ours[2]}, peer {peer[2]}; no figures")
                continue
            same = same_tensor_data(ours_out, peer_out)
            print(f"{name}: ours {ours[0]:.2f} s, {ours[1]:.0f} MiB; llama_model_quantize {peer[0]:.2f} s, "
                  f"{peer[1]:.0f} MiB; tensor data {'identical' if same else 'DIFFERS'}")
            case = f"SmolLM2 F16 -> {name.upper()}" + ("" if same else " (BYTES DIFFER)")
            result(f"{case}, wall time", ours[0], "llama_model_quantize", peer[0], "s", higher_is_better=False)
            result(f"{case}, peak RSS", ours[1], "llama_model_quantize", peer[1], "MiB", higher_is_better=False)
            ours_out.unlink()
            peer_out.unlink()


if __name__ == "__main__":
    main()
