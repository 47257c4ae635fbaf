"""TQ1_0, TQ2_0, MXFP4, NVFP4 and Q1_0 against ggml: the bytes of ggml_quantize_chunk (which
takes no importance vector for them, so one given changes nothing), dequantization equal to
ggml's, gguf-py's (where it has the type) and the runtime's."""
import gguf
import numpy as np
import pytest
import torch

import quant
from oracle import ggml_dequantize, ggml_quantize
from quant import QuantType
from test_quant_legacy import CASES, _assert_same, _smollm2_sample

NAMES = ["TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0"]
COMPILED = ("TQ1_0", "TQ2_0", "MXFP4", "NVFP4")          # Q1_0 is numpy only


def quantize(name, x, backend, threads=1):
    from quant import mxfp4, nvfp4, q1_0, ternary
    if name not in COMPILED:
        assert backend == "numpy"
        return q1_0.quantize(x, None, threads=threads)
    fn = {"TQ1_0": ternary.quantize_tq1_0, "TQ2_0": ternary.quantize_tq2_0, "MXFP4": mxfp4.quantize,
          "NVFP4": nvfp4.quantize}[name]
    return fn(x, None, threads=threads, backend=backend)
FINITE = {k: np.ascontiguousarray(v[:, :256]) for k, v in CASES.items() if k != "non_finite"}


# every kernel each type has: the compiled one and the numpy twin (Q1_0 has only the twin)
KERNELS = [(name, backend) for name in NAMES for backend in ("c", "numpy") if backend == "numpy" or name in COMPILED]


@pytest.mark.parametrize("name,backend", KERNELS)
@pytest.mark.parametrize("case", sorted(FINITE))
def test_bytes_match_ggml(name, case, backend):
    x = FINITE[case]
    ref = ggml_quantize(x, QuantType[name])
    _assert_same(name, quantize(name, x, backend), ref, f"{backend} {case}")
    im = np.random.default_rng(1).uniform(0.1, 3, x.shape[1]).astype(np.float32)
    _assert_same(name, quant.quantize(x, name, imatrix=im, threads=3), ref, f"{case} with an ignored imatrix")


def test_mxfp4_exponent_edges():
    """Block maxima at, just below and just above powers of two, across the exponent range
    (where floor(log2f) decides e), and subnormal maxima (where the cast to uint8 wraps)."""
    rng = np.random.default_rng(5)
    powers = np.float32(2.0) ** np.arange(-149, 127, 3).astype(np.float32)
    rows = []
    for p in powers:
        for m in (np.float32(1), np.nextafter(np.float32(1), np.float32(0)), np.float32(1.5), np.float32(1.9999999)):
            r = (rng.uniform(-1, 1, 32) * p * m).astype(np.float32)
            r[rng.integers(32)] = p * m
            rows.append(r)
    x = np.stack(rows)
    for backend in ("c", "numpy"):
        _assert_same("MXFP4", quantize("MXFP4", x, backend), ggml_quantize(x, QuantType.MXFP4), f"{backend} exponent edges")


def test_nvfp4_scale_rounding():
    """Sub-block maxima swept over E4M3's range, on and beside its rounding points, with the
    subnormal scales and the saturation at 448 * 6 (ggml_fp32_to_ue4m3's branches)."""
    rng = np.random.default_rng(9)
    maxima = [np.float32(6) * np.float32(2.0) ** np.float32(e) * np.float32(m)
              for e in range(-12, 10) for m in (1.0, 1.0625, 1.0625 + 2 ** -20, 1.9375, 1.96875, 1.999)]
    maxima += [np.float32(v) for v in (1e-30, 6 * 2.0 ** -10, 6 * 2.0 ** -9.5, 6 * 2.0 ** -12, 3000.0, 1e9)]
    rows = []
    for amax in maxima:
        r = (rng.uniform(-1, 1, 64) * amax).astype(np.float32)
        r[rng.integers(16)] = amax
        r[16 + rng.integers(16)] = -amax
        rows.append(r)
    x = np.stack(rows)
    for backend in ("c", "numpy"):
        _assert_same("NVFP4", quantize("NVFP4", x, backend), ggml_quantize(x, QuantType.NVFP4), f"{backend} scale sweep")


@pytest.mark.parametrize("name", NAMES)
def test_smollm2_tensors_match_ggml(name):
    sample, whole = _smollm2_sample()
    block = gguf.GGML_QUANT_SIZES[QuantType[name]][0]
    for what, x in {**sample, **whole}.items():
        if x.shape[1] % block == 0:
            _assert_same(name, quant.quantize(x, name, threads=2), ggml_quantize(x, QuantType[name]), f"SmolLM2 {what}")


@pytest.mark.parametrize("name", NAMES)
def test_dequantize_matches_ggml_gguf_and_torch(name):
    from convkit.runtime.dequant_torch import dequantize as torch_dequantize

    qtype = QuantType[name]
    x = np.concatenate([FINITE["heavy_tail"], FINITE["zeros"], FINITE["normal_1e-08"], FINITE["outlier"],
                        FINITE["ties"], FINITE["normal_60000"]])
    data = ggml_quantize(x, qtype)
    ours = quant.dequantize(data, qtype)
    assert np.array_equal(ours.view(np.uint32), ggml_dequantize(data, qtype, x.shape[1]).view(np.uint32))
    if qtype in gguf.quants._type_traits:
        assert np.array_equal(ours.view(np.uint32), gguf.quants.dequantize(data, qtype).view(np.uint32))
    back = torch_dequantize(torch.from_numpy(data), qtype).numpy()
    assert np.array_equal(back.view(np.uint32), ours.view(np.uint32))


@pytest.mark.parametrize("name,n", [("TQ1_0", 576), ("TQ2_0", 96), ("MXFP4", 48), ("NVFP4", 96), ("Q1_0", 576)])
def test_rows_the_block_does_not_hold_are_refused(name, n):
    with pytest.raises(quant.QuantError, match=rf"\b{n}\b"):
        quant.quantize(np.zeros((2, n), np.float32), name)


def test_compiled_kernels_are_built():
    from quant.backend import compiled_or_none
    assert hasattr(compiled_or_none("c"), "simple"), "quant._kquants without TQ/MXFP4: run `python setup.py build_ext --inplace`"
