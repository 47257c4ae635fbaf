"""Row splitting over threads for the compiled kernels (they release the GIL)."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_pool = None
_lock = threading.Lock()


def _shared_pool(threads):
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(max(threads, 2), thread_name_prefix="quant")
        return _pool


def split_rows(kernel, x, out, threads, *args):
    """kernel(x_part, out_part, rows_part, *args) over `threads` contiguous row ranges."""
    rows = x.shape[0]
    threads = max(1, min(int(threads or 1), rows))
    if threads == 1:
        kernel(x, out, rows, *args)
        return out
    bounds = np.linspace(0, rows, threads + 1).astype(int)
    jobs = [_shared_pool(threads).submit(kernel, x[a:b], out[a:b], b - a, *args)
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    for job in jobs:
        job.result()
    return out


def row_results(kernel, x, out, threads, *args) -> list:
    """split_rows, keeping what each part's kernel returns: [(first row of the part, result)]."""
    rows = x.shape[0]
    threads = max(1, min(int(threads or 1), rows))
    if threads == 1:
        return [(0, kernel(x, out, rows, *args))]
    bounds = np.linspace(0, rows, threads + 1).astype(int)
    jobs = [(a, _shared_pool(threads).submit(kernel, x[a:b], out[a:b], b - a, *args))
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return [(a, job.result()) for a, job in jobs]
