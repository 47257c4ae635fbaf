"""Products that read a weight's ggml blocks directly, for the few activation rows of a
decoding step.

A decoding step reads every weight once for one activation row, so its speed is the
speed of reading the weights: dequantizing them to float32 first reads the blocks and
then writes and reads 4 bytes per value again (5.7x the bytes of Q4_1). quant.qdot
instead quantizes the activation row to Q8 per block and sums integer products block by
block, as ggml's CPU backend does, so its results are `--numerics ggml`'s (up to the
order of float additions: quant.qdot keeps ggml's, the torch emulation sums in one GEMM).

With more activation rows (a prompt), a dense float GEMM on the dequantized weight pays
the dequantization once for all rows. Where quant.qdot has a tiled product for the type
(several activation rows per pass over the weight, quant.qdot.tiled_types()), the block
products stay as fast as that GEMM up to a prompt of MAX_TILED_ROWS rows on the CPUs
measured (benchmarks/bench_generate.py), and they are ggml's own arithmetic; otherwise
MAX_ROWS is where the GEMM becomes faster.
"""
from contextlib import contextmanager

import torch

from quant import qdot

MAX_ROWS = 16  # activation rows (batch x positions) up to which the block products are used
MAX_TILED_ROWS = 64  # the same for the types with a tiled product
_NONE = ()
_threads: int | None = None  # the block products' thread count while torch runs on one (see few_rows)


@contextmanager
def few_rows():
    """A forward pass of few rows: torch's ops on such small tensors gain nothing from
    threads, and torch's OpenMP threads waiting at their barriers would compete with the
    block products' threads for the cores; so torch runs single-threaded meanwhile and the
    block products use the threads torch had."""
    global _threads
    before = torch.get_num_threads()
    if before == 1 or _threads is not None:
        yield
        return
    _threads = before
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        _threads = None


def _blocks_of(layer):
    """(type id, weight blocks as a numpy view) when quant.qdot has a compiled product for the
    layer's weight on CPU, else (); found once per layer, since a decoding step asks 121 times."""
    found = getattr(layer, "_qdot_blocks", None)
    if found is None:
        w = layer.weight.data
        found = _NONE
        if (w.device.type == "cpu" and w.dtype == torch.uint8 and w.is_contiguous()
                and layer.weight.qtype in qdot.compiled_types()):
            found = (int(layer.weight.qtype), w.numpy(), layer.out_features)
        layer._qdot_blocks = found
    return found


def few_rows_limit() -> int:
    """The most activation rows any layer runs on block products (see few_rows)."""
    return max(MAX_ROWS, MAX_TILED_ROWS if qdot.tiled_types() else 0)


def usable(layer, x: torch.Tensor) -> bool:
    """Whether `layer(x)` can run on the compiled block products."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.numel() == 0:
        return False
    found = _blocks_of(layer)
    if found == _NONE:
        return False
    limit = MAX_TILED_ROWS if layer.weight.qtype in qdot.tiled_types() else MAX_ROWS
    return x.numel() <= limit * x.shape[-1]


@contextmanager
def all_threads():
    """Inside few_rows, a product that does not run on block products (a dense GEMM) gets
    torch's threads back for its duration."""
    if _threads is None:
        yield
        return
    torch.set_num_threads(_threads)
    try:
        yield
    finally:
        torch.set_num_threads(1)


def block_product(layer, x: torch.Tensor) -> torch.Tensor:
    """x @ W.T + b with W's blocks read in place (ggml's arithmetic, float32 out)."""
    type_id, blocks, out_features = _blocks_of(layer)
    n = x.shape[-1]
    rows = x.reshape(-1, n).contiguous()
    out = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    qdot.compiled_matmul(type_id, blocks, out_features, rows.numpy(), rows.shape[0], n, out.numpy(),
                         _threads or torch.get_num_threads())
    if layer.bias is not None:
        out += layer.bias
    return out.view(*x.shape[:-1], out_features)


def has_block_products(model) -> bool:
    """Whether any matrix of `model` has a compiled block product (then ggml numerics is fast)."""
    from .linear import QuantLinear

    return any(isinstance(m, QuantLinear) and _blocks_of(m) != _NONE for m in model.modules())
