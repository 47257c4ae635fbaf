"""What this CPU's bfloat16 arithmetic can reach at most, measured two ways, 2 threads.

- instruction peak: a loop of independent AVX512-BF16 dot products (`vdpbf16ps`: 32 pairs
  of bfloat16 multiplied and added into 16 floats, 64 FLOP each), one process per core,
  compiled here with the system's C compiler. No GEMM can go faster than this.
- GEMM: torch's bfloat16 matrix product, 4096 x 4096 x 4096, 2 threads.

bench_perplexity.py reports its bfloat16 throughput as a share of both, next to the share
of the nominal figure it is given.

    python benchmarks/bf16_peak.py
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LOOP = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define CHAINS 16  /* independent accumulators: enough to hide the instruction's latency */
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    __m512 acc[CHAINS];
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_setzero_ps();
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = a;  /* 1.0 in bfloat16 */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long k = 0; k < n; k++) {  /* -O3 unrolls the chains into registers */
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
        __asm__ volatile("" : "+v"(a));  /* keep the compiler from folding the loop */
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    float sum = 0;
    for (int i = 0; i < CHAINS; i++) sum += _mm512_reduce_add_ps(acc[i]);
    double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
    printf("%f %f\n", n * CHAINS * 64.0 / s / 1e9, sum);
    return 0;
}
"""


def instruction_peak(cores: int = 2, iterations: int = 100_000_000) -> float | None:
    """GFLOP/s of `cores` processes each running the vdpbf16ps loop at once, summed;
    None without a C compiler or without AVX512-BF16."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp, "peak.c"), Path(tmp, "peak")
        src.write_text(LOOP)
        if subprocess.run([cc, "-O3", "-march=native", "-o", str(exe), str(src)], capture_output=True).returncode:
            return None
        procs = [subprocess.Popen([str(exe), str(iterations)], stdout=subprocess.PIPE, text=True)
                 for _ in range(cores)]
        outputs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            return None  # no AVX512-BF16: the loop dies on an illegal instruction
    return sum(float(out.split()[0]) for out in outputs)


def gemm_peak(dtype=torch.bfloat16, size: int = 4096, repeats: int = 3) -> float:
    """GFLOP/s of torch's square matrix product in `dtype`, best of `repeats`, at torch's
    current thread count."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def main():
    torch.set_num_threads(2)
    peak = instruction_peak()
    print("bf16 instruction peak, 2 cores:", "unavailable" if peak is None else f"{peak:.0f} GFLOP/s")
    print(f"bf16 GEMM 4096^3, 2 threads:    {gemm_peak():.0f} GFLOP/s")


if __name__ == "__main__":
    sys.exit(main())
