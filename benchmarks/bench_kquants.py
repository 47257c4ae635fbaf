"""K-quant throughput, ours against ggml_quantize_chunk, same array, same thread count.

    python benchmarks/bench_kquants.py [--rows 512] [--cols 4096] [--repeat 3]

Prints MB/s of float32 input for each type, without and with an importance vector,
at 1 and 2 threads (ggml's rows are split over threads the way llama-quantize does).
"""
import argparse
import ctypes
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from quant import kquants  # noqa: E402
from realdata import ggml_base_library  # noqa: E402

GGML_IDS = {"Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}


def ggml_quantizer():
    lib = ctypes.CDLL(str(ggml_base_library()))
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_void_p]

    def run(name, x, imatrix, threads):
        rows, n = x.shape
        row_bytes = n // 256 * kquants.BLOCK_BYTES[name]
        out = np.empty((rows, row_bytes), dtype=np.uint8)
        qw = None if imatrix is None else imatrix.ctypes.data
        bounds = np.linspace(0, rows, threads + 1).astype(int)

        def part(a, b):   # ctypes releases the GIL during the call
            fn(GGML_IDS[name], x[a:b].ctypes.data, out[a:b].ctypes.data, 0, b - a, n, qw)

        if threads == 1:
            part(0, rows)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda ab: part(*ab), zip(bounds[:-1], bounds[1:])))
        return out

    return run


def best_time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    imatrix = (rng.gamma(0.7, 1.0, args.cols) + 1e-4).astype(np.float32)
    mb = x.nbytes / 1e6
    ggml = ggml_quantizer()
    print(f"{'type':6} {'imatrix':7} {'threads':>7} {'ours MB/s':>10} {'ggml MB/s':>10} {'ratio':>6}  same bytes")
    for name in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
        for im in (None, imatrix):
            for threads in (1, 2):
                t_ours, ours = best_time(lambda: kquants.quantize_k(name, x, im, threads=threads), args.repeat)
                t_ggml, ref = best_time(lambda: ggml(name, x, im, threads), args.repeat)
                print(f"{name:6} {'yes' if im is not None else 'no':7} {threads:7d} {mb / t_ours:10.1f} "
                      f"{mb / t_ggml:10.1f} {t_ggml / t_ours:6.2f}  {np.array_equal(ours, ref)}")


if __name__ == "__main__":
    main()
