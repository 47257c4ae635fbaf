"""K-quants against ggml itself: byte-identical blocks, with and without an importance vector.

The oracle is ggml_quantize_chunk (tests/oracle.py) and quantize_row_q8_K_ref in
llama-cpp-python's libggml-base.so, called through ctypes on the same float32 arrays.
"""
import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor

import gguf
import numpy as np
import pytest

from quant import kquants
from quant.errors import QuantError
import oracle
from realdata import smollm2_gguf

pytestmark = pytest.mark.oracle

K_TYPES = ["Q4_K", "Q6_K", "Q5_K", "Q3_K", "Q2_K"]
GGML_IDS = {"Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}


@functools.cache
def _q8_k_ref():
    fn = oracle.lib().quantize_row_q8_K_ref
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return fn


def ggml_quantize(name, x, imatrix=None):
    """ggml_quantize_chunk; big arrays are split over two threads like llama-quantize does."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    qtype = GGML_IDS[name]
    if rows < 64:
        return oracle.ggml_quantize(x, qtype, imatrix)
    out = np.zeros((rows, oracle.row_size(qtype, n)), dtype=np.uint8)
    halves = [(0, rows // 2), (rows // 2, rows - rows // 2)]
    with ThreadPoolExecutor(2) as pool:   # ctypes releases the GIL
        list(pool.map(lambda part: oracle.ggml_quantize(x, qtype, imatrix, part[0], part[1], out), halves))
    return out


def _cases():
    """Random data of several scales and the awkward rows: zeros, tiny, huge, one outlier."""
    rng = np.random.default_rng(1234)
    cases = {f"normal_{s:g}": (rng.standard_normal((4, 512)) * s).astype(np.float32)
             for s in (1e-8, 1e-3, 0.02, 1.0, 1e3, 6e4)}
    z = rng.standard_normal((4, 512)).astype(np.float32)
    z[0] = 0
    z[1, :300] = 0
    z[2, ::3] = 0
    z[3, 16:48] = 0
    cases["zeros"] = z
    cases["tiny"] = (rng.standard_normal((4, 512)) * 1e-30).astype(np.float32)
    cases["huge"] = (rng.standard_normal((4, 512)) * 1e30).astype(np.float32)
    o = (rng.standard_normal((4, 512)) * 0.01).astype(np.float32)
    o[:, 77] = 50
    o[2, 300] = -80
    cases["outlier"] = o
    u = rng.uniform(0, 1, (4, 512)).astype(np.float32)
    cases["positive"] = u
    cases["negative"] = -u
    cases["constant"] = np.full((2, 512), 0.37, np.float32)
    cases["heavy_tail"] = rng.standard_t(2, (8, 768)).astype(np.float32)
    bad = rng.standard_normal((4, 512)).astype(np.float32)     # ggml does not refuse these either
    bad[0, [0, 5, 32]] = np.nan
    bad[1, 7] = np.inf
    bad[2, 9] = -np.inf
    bad[3] = np.float32(3e38) * np.sign(bad[3])
    cases["non_finite"] = bad
    return cases


CASES = _cases()


def _imatrices(n, rng):
    return {"none": None,
            "random": (rng.random(n) * 3).astype(np.float32),
            "sparse": np.where(rng.random(n) < 0.3, 0, rng.random(n)).astype(np.float32)}


def _assert_same(name, ours, ref, what):
    same = (ours == ref).all(axis=1)
    if not same.all():
        row = int(np.flatnonzero(~same)[0])
        cols = np.flatnonzero(ours[row] != ref[row])[:8]
        pytest.fail(f"{name} {what}: {same.mean():.4f} of rows identical; row {row} bytes {cols} "
                    f"ours {ours[row][cols]} ggml {ref[row][cols]}")


def test_compiled_kernels_are_built():
    assert kquants.has_compiled(), "quant._kquants missing: run `pip install -e .`"


@pytest.mark.parametrize("name", K_TYPES)
def test_compiled_matches_ggml_on_awkward_data(name):
    rng = np.random.default_rng(7)
    for case, x in CASES.items():
        for im_name, im in _imatrices(x.shape[1], rng).items():
            ours = kquants.quantize_k(name, x, im, backend="c")
            _assert_same(name, ours, ggml_quantize(name, x, im), f"{case}/imatrix={im_name}")


@pytest.mark.parametrize("name", K_TYPES)
def test_numpy_reference_matches_ggml(name):
    rng = np.random.default_rng(8)
    for case in ("normal_0.02", "normal_1e-08", "zeros", "outlier", "huge", "heavy_tail", "non_finite"):
        x = CASES[case]
        for im_name, im in _imatrices(x.shape[1], rng).items():
            ours = kquants.quantize_k(name, x, im, backend="numpy")
            _assert_same(name, ours, ggml_quantize(name, x, im), f"numpy {case}/imatrix={im_name}")


@pytest.mark.parametrize("name", K_TYPES)
def test_threads_give_the_same_bytes(name):
    x = CASES["heavy_tail"]
    assert np.array_equal(kquants.quantize_k(name, x, threads=2), kquants.quantize_k(name, x))


@functools.cache
def _smollm2_rows_divisible_by_256():
    """Every 2-D tensor of SmolLM2 whose rows divide by 256 (the 30 ffn_down), as float32."""
    reader = gguf.GGUFReader(smollm2_gguf())
    tensors = [t for t in reader.tensors if len(t.shape) == 2 and int(t.shape[0]) % 256 == 0]
    assert len(tensors) == 30
    return np.concatenate([gguf.quants.dequantize(t.data, t.tensor_type) for t in tensors])


@pytest.mark.realdata
@pytest.mark.parametrize("name", K_TYPES)
def test_smollm2_tensors_match_ggml(name):
    x = _smollm2_rows_divisible_by_256()
    # an importance vector shaped like a real one: positive, uneven across columns
    imatrix = (np.random.default_rng(3).gamma(0.7, 1.0, x.shape[1]) + 1e-4).astype(np.float32)
    for im_name, im in (("none", None), ("gamma", imatrix)):
        ours = kquants.quantize_k(name, x, im, threads=2)
        _assert_same(name, ours, ggml_quantize(name, x, im), f"SmolLM2 ffn_down imatrix={im_name}")


@pytest.mark.realdata
@pytest.mark.parametrize("name", K_TYPES)
def test_numpy_reference_on_smollm2(name):
    x = _smollm2_rows_divisible_by_256()[:1152]          # blk.0 and blk.1 ffn_down
    imatrix = (np.random.default_rng(4).gamma(0.7, 1.0, x.shape[1]) + 1e-4).astype(np.float32)
    for im_name, im in (("none", None), ("gamma", imatrix)):
        ours = kquants.quantize_k(name, x, im, backend="numpy")
        _assert_same(name, ours, ggml_quantize(name, x, im), f"numpy SmolLM2 imatrix={im_name}")


@pytest.mark.parametrize("name", K_TYPES)
def test_dequantize_matches_gguf(name):
    x = np.concatenate([CASES["heavy_tail"][:, :512], CASES["zeros"], CASES["normal_1e-08"]])
    data = kquants.quantize_k(name, x)
    ours = getattr(kquants, f"dequantize_{name.lower()}")(data)
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[name])
    assert ours.dtype == np.float32 and ours.shape == x.shape
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_q8_k_matches_ggml(backend):
    x = np.concatenate([CASES["heavy_tail"][:, :512], CASES["zeros"], CASES["outlier"]])
    ref = np.zeros((x.shape[0], x.shape[1] // 256 * 292), dtype=np.uint8)
    _q8_k_ref()(x.ctypes.data, ref.ctypes.data, x.size)
    ours = kquants.quantize_k("Q8_K", x, backend=backend)
    _assert_same("Q8_K", ours, ref, backend)
    back = kquants.dequantize_q8_k(ours)
    d = ref.reshape(-1, 292)[:, :4].copy().view(np.float32)
    q = ref.reshape(-1, 292)[:, 4:260].view(np.int8).astype(np.float32)
    assert np.array_equal(back.reshape(-1, 256), d * q)


def test_refuses_rows_that_blocks_do_not_divide():
    with pytest.raises(QuantError, match="256"):
        kquants.quantize_q4_k(np.zeros((2, 576), np.float32))
    with pytest.raises(QuantError, match="importance vector"):
        kquants.quantize_q4_k(np.zeros((2, 512), np.float32), imatrix=np.ones(256, np.float32))
    with pytest.raises(QuantError, match="blocks"):
        kquants.dequantize_q6_k(np.zeros((1, 200), np.uint8))


@pytest.mark.parametrize("name", K_TYPES)
def test_registered_with_ggml_geometry(name):
    from quant.registry import lookup

    info = lookup(gguf.GGMLQuantizationType[name])
    assert (info.block_size, info.type_size) == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    x = CASES["heavy_tail"]
    im = np.linspace(0.1, 2.0, x.shape[1], dtype=np.float32)
    data = info.quantize(x, im, 2)
    _assert_same(name, data, ggml_quantize(name, x, im), "through the registry")
    assert np.array_equal(info.dequantize(data), gguf.quants.dequantize(data, gguf.GGMLQuantizationType[name]))
