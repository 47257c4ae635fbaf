"""Which implementation quantizes: the compiled helper quant._kquants or the numpy reference.

Every block module asks here (`compiled_or_none(backend)`), so the choice and its error
live in one place. backend: "auto" (compiled when built), "c" (require it) or "numpy".
"""
from .errors import QuantError

try:                                    # optional: built by setup.py when a C compiler is there
    from . import _kquants as compiled
except ImportError:                     # pragma: no cover - depends on the build
    compiled = None

BACKENDS = ("auto", "c", "numpy")


def has_compiled() -> bool:
    return compiled is not None


def simple_kernel(qtype, x, nbytes_per_row, threads, backend="auto"):
    """The compiled TQ1_0 / TQ2_0 / MXFP4 kernel's bytes for float32 rows x, or None when
    the numpy path is to run (not built, or backend "numpy")."""
    import numpy as np

    from ._threads import split_rows

    compiled = compiled_or_none(backend)
    if compiled is None or not hasattr(compiled, "simple"):
        return None
    rows, n = x.shape
    out = np.empty((rows, nbytes_per_row), dtype=np.uint8)
    tid = int(qtype)
    return split_rows(lambda xp, op, r: compiled.simple(tid, xp, op, r, n), x, out, threads)


def quantize_in_blocks(qtype, x, blocks, chunk, threads=1, backend="auto", compiled_kernel=True):
    """float32 rows -> the bytes of a type that takes no importance vector: the compiled
    `simple` kernel when it is built (and `compiled_kernel`), else `blocks` (numpy,
    [blocks, block size] -> [blocks, bytes]) on `chunk` blocks at a time, which bounds
    its temporaries."""
    import numpy as np

    from .types import block_size, type_size

    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    qk, nbytes = block_size(qtype), type_size(qtype)
    row_bytes = n // qk * nbytes
    done = simple_kernel(qtype, x, row_bytes, threads, backend) if compiled_kernel else None
    if done is not None:
        return done
    xb = x.reshape(-1, qk)
    out = np.empty((xb.shape[0], nbytes), dtype=np.uint8)
    for s in range(0, xb.shape[0], chunk):
        out[s:s + chunk] = blocks(xb[s:s + chunk])
    return out.reshape(rows, row_bytes)


def compiled_or_none(backend: str = "auto"):
    """The compiled module to use for `backend`, or None for the numpy path."""
    if backend not in BACKENDS:
        raise QuantError(f"unknown backend '{backend}'; use one of: {', '.join(BACKENDS)}")
    if backend == "numpy":
        return None
    if compiled is None and backend == "c":
        raise QuantError("quant._kquants is not built; run `pip install -e .` with a C compiler")
    return compiled
