"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, F16, BF16, F32 against ggml itself.

Bytes must equal ggml_quantize_chunk from llama-cpp-python's libggml-base.so on the same
float32 array, with and without an importance vector, for the compiled kernels and for
the numpy reference: awkward synthetic rows and real SmolLM2 weights.
"""
import functools

import gguf
import numpy as np
import pytest

from oracle import ggml_dequantize, ggml_quantize
from quant import QuantType, iq4nl, legacy
from quant import floats as qfloats
from realdata import smollm2_gguf

BLOCK_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"]


def quantize(name, x, imatrix=None, backend="c", threads=1):
    if name == "IQ4_NL":
        return iq4nl.quantize(x, imatrix, threads=threads, backend=backend)
    return legacy.quantize(name, x, imatrix, threads=threads, backend=backend)


def _cases():
    """Random data of several scales and the awkward rows: zeros, tiny, huge, one outlier."""
    rng = np.random.default_rng(1234)
    cases = {f"normal_{s:g}": (rng.standard_normal((6, 256)) * s).astype(np.float32)
             for s in (1e-41, 1e-38, 1e-30, 1e-8, 1e-3, 0.02, 1.0, 1e3, 6e4, 1e30)}
    z = rng.standard_normal((5, 256)).astype(np.float32)
    z[0] = 0
    z[1, :100] = 0
    z[2, ::3] = 0
    z[3, 0] = -0.0
    z[3, 1:32] = 0
    z[4, 32:64] = -0.0
    z[4, 40] = 0.0
    cases["zeros"] = z
    o = (rng.standard_normal((4, 256)) * 0.01).astype(np.float32)
    o[:, 77] = 50
    o[2, 200] = -80
    o[3, 5] = 1e6
    cases["outlier"] = o
    u = rng.uniform(0, 1, (4, 256)).astype(np.float32)
    cases["positive"] = u
    cases["negative"] = -u
    cases["constant"] = np.concatenate([np.full((1, 256), 0.37, np.float32), np.full((1, 256), -0.37, np.float32)])
    cases["ties"] = (rng.integers(-16, 17, (4, 256)) / np.float32(16)).astype(np.float32)
    cases["heavy_tail"] = rng.standard_t(2, (8, 384)).astype(np.float32)
    bad = rng.standard_normal((5, 256)).astype(np.float32)      # ggml does not refuse these either
    bad[0, [0, 5, 32, 63]] = np.nan
    bad[1, 7] = np.inf
    bad[2, 9] = -np.inf
    bad[3] = np.float32(3e38) * np.sign(bad[3])
    bad[4, 31] = np.nan
    bad[4, 64:96] = np.nan
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
    assert legacy.has_compiled() and iq4nl.has_compiled(), "quant._kquants missing: run `pip install -e .`"


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_matches_ggml_on_awkward_data(name, backend):
    rng = np.random.default_rng(7)
    for case, x in CASES.items():
        for im_name, im in _imatrices(x.shape[1], rng).items():
            ours = quantize(name, x, im, backend=backend)
            _assert_same(name, ours, ggml_quantize(x, QuantType[name], im), f"{backend} {case}/imatrix={im_name}")


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_threads_give_the_same_bytes(name):
    x = CASES["heavy_tail"]
    assert np.array_equal(quantize(name, x, threads=2), quantize(name, x))


@functools.cache
def _smollm2():
    """Every 2-D tensor of SmolLM2 as float32 (gguf-py's dequantization of the Q4_1 file)."""
    reader = gguf.GGUFReader(smollm2_gguf())
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type)
            for t in reader.tensors if len(t.shape) == 2}


def _smollm2_sample():
    """16 rows (fixed seed) of every 2-D tensor, grouped by row length, plus whole tensors."""
    tensors = _smollm2()
    assert len(tensors) == 30 * 7 + 1
    rng = np.random.default_rng(11)
    by_width = {}
    for name in sorted(tensors):
        w = tensors[name]
        by_width.setdefault(w.shape[1], []).append(w[np.sort(rng.choice(w.shape[0], 16, replace=False))])
    sample = {f"sample_{n}": np.concatenate(parts) for n, parts in by_width.items()}
    whole = {name: tensors[name] for name in ("blk.0.attn_q.weight", "blk.0.ffn_down.weight",
                                              "blk.17.ffn_gate.weight", "blk.29.attn_v.weight")}
    return sample, whole


def _real_imatrix(n, seed):
    """Shaped like a real one: positive and uneven across columns."""
    return (np.random.default_rng(seed).gamma(0.7, 1.0, n) + 1e-4).astype(np.float32)


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_smollm2_tensors_match_ggml(name):
    sample, whole = _smollm2_sample()
    for what, x in {**sample, **whole}.items():
        for im_name, im in (("none", None), ("gamma", _real_imatrix(x.shape[1], x.shape[1]))):
            ours = quantize(name, x, im, threads=2)
            _assert_same(name, ours, ggml_quantize(x, QuantType[name], im), f"SmolLM2 {what} imatrix={im_name}")


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_numpy_reference_on_smollm2(name):
    sample, _ = _smollm2_sample()
    for what, x in sample.items():
        x = x[::4]
        for im_name, im in (("none", None), ("gamma", _real_imatrix(x.shape[1], 5))):
            ours = quantize(name, x, im, backend="numpy")
            _assert_same(name, ours, ggml_quantize(x, QuantType[name], im), f"numpy SmolLM2 {what} imatrix={im_name}")


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_dequantize_matches_gguf_and_ggml(name):
    x = np.concatenate([CASES["heavy_tail"][:, :256], CASES["zeros"], CASES["normal_1e-08"], CASES["outlier"]])
    data = quantize(name, x)
    dequantize = iq4nl.dequantize if name == "IQ4_NL" else functools.partial(legacy.dequantize, name)
    ours = dequantize(data)
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[name])
    assert ours.dtype == np.float32 and ours.shape == x.shape
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    assert np.array_equal(ours.view(np.uint32), ggml_dequantize(data, QuantType[name], x.shape[1]).view(np.uint32))


def _float_cases():
    rng = np.random.default_rng(5)
    x = np.concatenate([CASES[k].reshape(-1, 64) for k in
                        ("normal_1e-41", "normal_1e-08", "normal_1", "normal_60000", "normal_1e+30",
                         "zeros", "non_finite")])
    bits = rng.integers(0, 2**32, (4, 64), dtype=np.uint64).astype(np.uint32)   # every pattern, NaN payloads too
    bits[0, :4] = [0x7F800001, 0xFFC00001, 0x7FFFFFFF, 0x7F807FFF]
    bits[1, :6] = [0x477FF000, 0x477FEFFF, 0x33000000, 0x33000001, 0x38800000, 0x387FFFFF]
    bits[2, :4] = [0x3F808000, 0x3F818000, 0x3F808001, 0x7F7FFFFF]
    return np.concatenate([x, bits.view(np.float32)])


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
def test_float_types_match_ggml(name):
    x = _float_cases()
    quantize_fn = getattr(qfloats, f"quantize_{name.lower()}")
    ours = quantize_fn(x)
    _assert_same(name, ours, ggml_quantize(x, QuantType[name]), "bit patterns")
    if name != "F32":
        _assert_same(name, quantize_fn(x, backend="numpy"), ours, "numpy reference")
    back = getattr(qfloats, f"dequantize_{name.lower()}")(ours)
    theirs = gguf.quants.dequantize(ours.view(np.uint8) if name != "F16" else ours.view(np.float16),
                                    gguf.GGMLQuantizationType[name]).reshape(back.shape)
    assert np.array_equal(back.view(np.uint32), np.asarray(theirs, np.float32).view(np.uint32))
    if name == "F32":                                   # ggml has no to_float for F32: it is the identity
        assert np.array_equal(back.view(np.uint32), x.view(np.uint32))
    else:
        assert np.array_equal(back.view(np.uint32), ggml_dequantize(ours, QuantType[name], x.shape[1]).view(np.uint32))
