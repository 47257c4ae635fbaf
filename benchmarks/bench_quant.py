"""Quantization throughput for every type: ours against ggml_quantize_chunk, same array.

    python benchmarks/bench_quant.py [--cols 4096] [--seconds 0.15] [--repeat 5] [--types Q4_0,Q4_K]

Prints MB/s of float32 input at 1 and 2 threads, without and with an importance vector,
and whether the bytes are identical. ggml's threads split the rows and call
ggml_quantize_chunk on each part, as llama-quantize does; ours split rows the same way.
Rows per case are chosen so that one ggml run takes about --seconds.
"""
import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import quant  # noqa: E402
from oracle import lib, row_size  # noqa: E402
from quant import QuantType  # noqa: E402
from quant.types import requires_imatrix  # noqa: E402
from report import result  # noqa: E402

TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL",
         "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0",
         "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"]
# ggml ignores an importance vector for these
NO_IMATRIX = ("F16", "BF16", "Q8_0", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0")


def ggml_quantize(name, x, imatrix, threads, pool):
    rows, n = x.shape
    tid = int(QuantType[name])
    out = np.empty((rows, row_size(tid, n)), dtype=np.uint8)
    qw = None if imatrix is None else imatrix.ctypes.data
    fn = lib().ggml_quantize_chunk

    def part(a, b):   # ctypes releases the GIL during the call
        fn(tid, x[a:b].ctypes.data, out[a:b].ctypes.data, 0, b - a, n, qw)

    if threads == 1:
        part(0, rows)
    else:
        bounds = np.linspace(0, rows, threads + 1).astype(int)
        list(pool.map(lambda ab: part(*ab), zip(bounds[:-1], bounds[1:])))
    return out


def best_time(fn, repeat):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=0.15)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    # enough rows that the fast types run for milliseconds, not microseconds (timer and
    # thread start-up noise), while the slow ones stop at --seconds per call
    big = (rng.standard_normal((8192, args.cols)) * 0.02).astype(np.float32)
    imatrix = (rng.gamma(0.7, 1.0, args.cols) + 1e-4).astype(np.float32)
    pool = ThreadPoolExecutor(2)
    print(f"{'type':7} {'imatrix':7} {'threads':>7} {'rows':>5} {'ours MB/s':>10} {'ggml MB/s':>10} "
          f"{'ratio':>6}  same bytes")
    for name in args.types.split(","):
        for im in (None, imatrix):
            if im is not None and name in NO_IMATRIX:
                continue
            if im is None and requires_imatrix(QuantType[name]):   # ggml asserts one is given
                continue
            probe = big[:16]
            t, _ = best_time(lambda: ggml_quantize(name, probe, im, 1, pool), 3)   # warm, then time
            rows = int(np.clip(16 * args.seconds / max(t, 1e-6), 16, big.shape[0])) // 16 * 16
            x = big[:rows]
            mb = x.nbytes / 1e6
            for threads in (1, 2):
                t_ours, ours = best_time(lambda: quant.quantize(x, name, im, threads=threads), args.repeat)
                t_ggml, ref = best_time(lambda: ggml_quantize(name, x, im, threads, pool), args.repeat)
                same = np.array_equal(ours, ref)
                print(f"{name:7} {'yes' if im is not None else 'no':7} {threads:7d} {rows:5d} "
                      f"{mb / t_ours:10.1f} {mb / t_ggml:10.1f} {t_ggml / t_ours:6.2f}  {same}", flush=True)
                case = f"{name}{' imatrix' if im is not None else ''} {threads} thread{'s' if threads > 1 else ''}"
                result(case + ("" if same else " (BYTES DIFFER)"), mb / t_ours, "ggml_quantize_chunk",
                       mb / t_ggml, "MB/s")


if __name__ == "__main__":
    main()
