"""Grid types (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M) against ggml: bytes of ggml_quantize_chunk
with and without an importance vector (with one only, for the types ggml quantizes only with
one), on awkward rows and SmolLM2's tensors; dequantization equal to ggml's, gguf-py's and the
runtime's torch one; rows too large for the search refused where ggml aborts."""
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import quant
from oracle import ggml_dequantize, ggml_quantize
from quant import QuantType, iqgrid
from test_quant_legacy import CASES, _assert_same, _imatrices, _real_imatrix, _smollm2_sample

TYPES = [QuantType.IQ3_XXS, QuantType.IQ3_S, QuantType.IQ2_XXS, QuantType.IQ2_XS, QuantType.IQ2_S,
         QuantType.IQ1_S, QuantType.IQ1_M]
# rows whose squares overflow float32: ggml's search finds no grid point and aborts
ABORTS = ("normal_1e+30",)


def _with_and_without(qtype, imatrix):
    """The importance vectors to test a type with: none too, unless ggml requires one."""
    return (imatrix,) if qtype in iqgrid.NEEDS_IMATRIX else (None, imatrix)


def _wide(x):
    """Rows of a multiple of 256 values (the cases are 256 or 384 wide)."""
    return np.ascontiguousarray(x[:, :x.shape[1] // 256 * 256])


FINITE = {k: _wide(v) for k, v in CASES.items() if k != "non_finite" and k not in ABORTS}


def test_compiled_kernel_is_built():
    assert iqgrid.has_compiled(), "quant._kquants without grid: run `python setup.py build_ext --inplace`"


def test_grids_are_gguf_py_grids():
    """The levels decoded here give back gguf-py's own grid (the one its dequantizer uses)."""
    for t in TYPES:
        cls = getattr(gguf.quants, t.name)
        cls.init_grid()
        assert np.array_equal(iqgrid.grid_values(t), cls.grid.reshape(cls.grid_shape))
        assert len(set(iqgrid.grid_codes(t).tolist())) == cls.grid_shape[0]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("case", sorted(FINITE))
def test_bytes_match_ggml(case, qtype):
    x = FINITE[case]
    rng = np.random.default_rng(7)
    for im_name, im in _imatrices(x.shape[1], rng).items():
        if im is None and qtype in iqgrid.NEEDS_IMATRIX:
            continue
        _assert_same(qtype.name, quant.quantize(x, qtype, imatrix=im), ggml_quantize(x, qtype, im),
                     f"{case}/imatrix={im_name}")


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_several_superblocks_per_row_and_importance_by_column(qtype):
    """Super-block i of every row takes imatrix[256*i:256*(i+1)]; an empty block among full ones
    (IQ3_S then moves the later blocks' indices and signs up, as ggml does)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_t(3, (9, 1280)) * 0.05).astype(np.float32)
    x[4, 256:512] = 0                                   # an empty super-block
    x[6, 288:320] = 0                                   # an empty 32-value block inside one
    x[5, 600] = 40.0                                    # an outlier sets one super-block's d
    im = _real_imatrix(1280, 9)
    im[:32] = 0                                         # columns of no importance
    for imatrix in _with_and_without(qtype, im):
        ours = quant.quantize(x, qtype, imatrix=imatrix, threads=3)
        _assert_same(qtype.name, ours, ggml_quantize(x, qtype, imatrix), f"imatrix={imatrix is not None}")


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_smollm2_tensors_match_ggml(qtype):
    sample, whole = _smollm2_sample()
    for what, x in {**sample, **whole}.items():
        if x.shape[1] % 256:
            continue
        for im in _with_and_without(qtype, _real_imatrix(x.shape[1], x.shape[1])):
            im_name = "none" if im is None else "gamma"
            ours = quant.quantize(x, qtype, imatrix=im, threads=2)
            _assert_same(qtype.name, ours, ggml_quantize(x, qtype, im), f"SmolLM2 {what} imatrix={im_name}")


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_streamed_source_gives_the_same_bytes(qtype):
    x = (np.random.default_rng(5).standard_normal((6, 512)) * 0.03).astype(np.float16)
    im = _real_imatrix(512, 2)
    if qtype in iqgrid.NEEDS_IMATRIX:
        with pytest.raises(quant.QuantError, match="importance vector"):
            quant.quantize_source(x.view(np.uint8), 1, qtype, 512)
    out, bad = quant.quantize_source(x.view(np.uint8), 1, qtype, 512, imatrix=im, threads=2)
    assert bad == -1
    assert np.array_equal(out, ggml_quantize(x.astype(np.float32), qtype, im))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_matches_ggml_gguf_and_torch(qtype):
    from convkit.runtime.dequant_torch import dequantize as torch_dequantize

    x = np.concatenate([FINITE["heavy_tail"], FINITE["zeros"], FINITE["normal_1e-08"], FINITE["outlier"],
                        FINITE["normal_60000"]])
    for im in _with_and_without(qtype, _real_imatrix(x.shape[1], 1)):
        data = ggml_quantize(x, qtype, im)
        ours = quant.dequantize(data, qtype)
        assert np.array_equal(ours.view(np.uint32), ggml_dequantize(data, qtype, x.shape[1]).view(np.uint32))
        if qtype != QuantType.IQ1_M:        # gguf-py's IQ1_M ignores the shift signs; ggml's is the truth
            assert np.array_equal(ours.view(np.uint32), gguf.quants.dequantize(data, qtype).view(np.uint32))
        back = torch_dequantize(torch.from_numpy(data), qtype).numpy()
        assert np.array_equal(back.view(np.uint32), ours.view(np.uint32))


_GGML_ON_HUGE = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from oracle import ggml_quantize
from test_quant_iqgrid import huge_rows
x, im = huge_rows({qtype})
sys.stdout.write(ggml_quantize(x, {qtype}, im).tobytes().hex())
"""


def huge_rows(qtype):
    """Rows of which one holds a value whose square overflows float32, and the importance."""
    x = FINITE["normal_1"].copy()
    x[3, 17] = 3e19
    return x, (np.ones(256, np.float32) if qtype in iqgrid.NEEDS_IMATRIX else None)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_values_too_large_follow_ggml(qtype):
    """Where ggml aborts the process (GGML_ASSERT: no grid point compares below FLT_MAX), we
    refuse the row; where it writes bytes (IQ2_XXS: the block scale comes out NaN and the
    block is skipped), ours are those bytes."""
    x, im = huge_rows(qtype)
    code = _GGML_ON_HUGE.format(tests=str(Path(__file__).parent), qtype=int(qtype))
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}       # no debugger attached on the abort
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, env=env)
    if ran.returncode != 0:
        assert b"GGML_ASSERT" in ran.stderr
        with pytest.raises(quant.QuantError, match="row 3 holds values too large"):
            quant.quantize(x, qtype, imatrix=im)
        with pytest.raises(quant.QuantError, match="too large"):
            quant.quantize_source(x.view(np.uint8), 0, qtype, 256, imatrix=im)
    else:
        theirs = np.frombuffer(bytes.fromhex(ran.stdout.decode()), np.uint8).reshape(x.shape[0], -1)
        _assert_same(qtype.name, quant.quantize(x, qtype, imatrix=im), theirs, "huge value")


def test_registered_and_refuses_rows_it_cannot_hold():
    for t in TYPES:
        info = quant.type_info(t)
        assert (info.block_size, info.type_size) == gguf.GGML_QUANT_SIZES[t]
        with pytest.raises(quant.QuantError, match="576"):
            quant.quantize(np.zeros((2, 576), np.float32), t)
        with pytest.raises(quant.QuantError, match="importance vector"):
            quant.quantize(np.zeros((2, 512), np.float32), t, imatrix=np.ones(256, np.float32))


@pytest.mark.parametrize("qtype", iqgrid.NEEDS_IMATRIX, ids=lambda t: t.name)
def test_types_ggml_quantizes_only_with_an_importance_vector_refuse_without(qtype):
    with pytest.raises(quant.QuantError, match="only with an importance vector"):
        quant.quantize(np.ones((2, 256), np.float32), qtype)
