"""IQ4_XS against ggml: bytes of ggml_quantize_chunk (with and without an importance vector,
compiled and numpy), dequantization equal to ggml's and gguf-py's, and the runtime's torch
dequantization equal to both."""
import gguf
import numpy as np
import pytest
import torch

import quant
from oracle import ggml_dequantize, ggml_quantize
from quant import QuantType, iq4xs
from test_quant_legacy import CASES, _assert_same, _imatrices, _real_imatrix, _smollm2_sample

T = QuantType.IQ4_XS


def _wide(x):
    """Rows of a multiple of 256 values (the cases are 256 or 384 wide)."""
    n = x.shape[1] // 256 * 256
    return np.ascontiguousarray(x[:, :n])


FINITE = {k: _wide(v) for k, v in CASES.items() if k != "non_finite"}


def test_compiled_kernel_is_built():
    assert iq4xs.has_compiled(), "quant._kquants without iq4_xs: run `python setup.py build_ext --inplace`"


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("case", sorted(FINITE))
def test_bytes_match_ggml(case, backend):
    x = FINITE[case]
    rng = np.random.default_rng(7)
    for im_name, im in _imatrices(x.shape[1], rng).items():
        ours = iq4xs.quantize(x, im, backend=backend)
        _assert_same("IQ4_XS", ours, ggml_quantize(x, T, im), f"{backend} {case}/imatrix={im_name}")


def test_several_superblocks_per_row_and_importance_by_column():
    """Block i of every row takes imatrix[256*i:256*(i+1)]; rows of several super-blocks."""
    rng = np.random.default_rng(3)
    x = (rng.standard_t(3, (9, 1280)) * 0.05).astype(np.float32)
    x[4, 256:512] = 0                                   # one empty super-block among full ones
    x[5, 600] = 40.0                                    # an outlier sets one super-block's d
    im = _real_imatrix(1280, 9)
    for backend in ("c", "numpy"):
        for imatrix in (None, im):
            _assert_same("IQ4_XS", iq4xs.quantize(x, imatrix, backend=backend), ggml_quantize(x, T, imatrix),
                         f"{backend} imatrix={imatrix is not None}")


def test_smollm2_tensors_match_ggml():
    sample, whole = _smollm2_sample()
    for what, x in {**sample, **whole}.items():
        if x.shape[1] % 256:
            continue
        for im_name, im in (("none", None), ("gamma", _real_imatrix(x.shape[1], x.shape[1]))):
            ours = quant.quantize(x, "iq4_xs", imatrix=im, threads=2)
            _assert_same("IQ4_XS", ours, ggml_quantize(x, T, im), f"SmolLM2 {what} imatrix={im_name}")


def test_dequantize_matches_ggml_gguf_and_torch():
    from convkit.runtime.dequant_torch import dequantize as torch_dequantize

    x = np.concatenate([FINITE["heavy_tail"], FINITE["zeros"], FINITE["normal_1e-08"], FINITE["outlier"],
                        FINITE["normal_1e+30"]])
    data = ggml_quantize(x, T)
    ours = quant.dequantize(data, T)
    assert np.array_equal(ours.view(np.uint32), ggml_dequantize(data, T, x.shape[1]).view(np.uint32))
    assert np.array_equal(ours.view(np.uint32), gguf.quants.dequantize(data, T).view(np.uint32))
    back = torch_dequantize(torch.from_numpy(data), T).numpy()
    assert np.array_equal(back.view(np.uint32), ours.view(np.uint32))


def test_registered_and_refuses_rows_it_cannot_hold():
    info = quant.type_info("iq4_xs")
    assert (info.block_size, info.type_size) == gguf.GGML_QUANT_SIZES[T]
    with pytest.raises(quant.QuantError, match="576"):
        quant.quantize(np.zeros((2, 576), np.float32), "iq4_xs")
    with pytest.raises(quant.QuantError, match="importance vector"):
        quant.quantize(np.zeros((2, 512), np.float32), "iq4_xs", imatrix=np.ones(256, np.float32))
