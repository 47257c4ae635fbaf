"""The public API of quant: names and ids, the registry, refusals, round trips, memory.

Bytes are checked against ggml_quantize_chunk (libggml-base.so) and dequantized values
against gguf-py's dequantize, for every registered type (the K-quants included).
"""
import tracemalloc

import gguf
import numpy as np
import pytest

import quant
from oracle import ggml_dequantize, ggml_quantize
from quant import QuantError, QuantType

ALL_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0",
             "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def _data(rows=6, n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(3, (rows, n)) * 0.05).astype(np.float32)
    x[1, :40] = 0
    x[2, 100] = 7.5
    return x


def test_ids_are_ggmls():
    for t in QuantType:
        assert int(t) == int(gguf.GGMLQuantizationType[t.name]), t.name


def test_every_type_is_registered_with_ggmls_geometry():
    names = {info.name for info in quant.types()}
    assert set(ALL_TYPES) <= names
    for name in ALL_TYPES:
        info = quant.type_info(name)
        assert (info.block_size, info.type_size) == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]


@pytest.mark.parametrize("spelling", ["q4_k", "Q4_K", " q4_K ", 12, QuantType.Q4_K, gguf.GGMLQuantizationType.Q4_K,
                                      np.int64(12)])
def test_type_spellings(spelling):
    assert quant.type_info(spelling).qtype is QuantType.Q4_K


@pytest.mark.parametrize("bad", ["q4_9", 4, 99, "Q8_1", None, 1.5j])
def test_unknown_types_are_refused(bad):
    with pytest.raises(QuantError):
        quant.type_info(bad)


@pytest.mark.parametrize("name,n", [("Q4_0", 48), ("Q8_0", 100), ("Q4_K", 576), ("IQ4_NL", 16), ("Q6_K", 32)])
def test_row_lengths_the_block_does_not_divide_are_refused(name, n):
    with pytest.raises(QuantError, match=rf"{name}.*\b{n}\b"):
        quant.quantize(np.zeros((2, n), np.float32), name)


def test_bad_importance_vector_and_bad_bytes_are_refused():
    with pytest.raises(QuantError, match="importance vector"):
        quant.quantize(np.zeros((2, 64), np.float32), "Q4_0", imatrix=np.ones(32, np.float32))
    with pytest.raises(QuantError, match="blocks"):
        quant.dequantize(np.zeros((1, 19), np.uint8), "Q4_0")
    with pytest.raises(QuantError, match="rows"):
        quant.dequantize(np.zeros(40, np.uint8), "Q4_0", n_per_row=64)
    with pytest.raises(QuantError, match="floating"):
        quant.quantize(np.zeros((2, 64), np.int32), "Q8_0")


@pytest.mark.parametrize("name", ALL_TYPES)
def test_quantize_matches_ggml_and_round_trips_like_gguf(name):
    x = _data()
    imatrix = (np.random.default_rng(1).gamma(0.7, 1.0, x.shape[1]) + 1e-4).astype(np.float32)
    for im in (None, imatrix):
        ours = quant.quantize(x, name, imatrix=im)
        assert ours.dtype == np.uint8 and ours.shape == (x.shape[0], quant.type_info(name).row_bytes(x.shape[1]))
        assert np.array_equal(ours, ggml_quantize(x, QuantType[name], im)), f"{name} imatrix={im is not None}"
    back = quant.dequantize(ours, name)
    assert back.dtype == np.float32 and back.shape == x.shape
    gtype = gguf.GGMLQuantizationType[name]
    if gtype in gguf.quants._type_traits or name in ("F32", "F16"):       # gguf-py has no Q1_0
        theirs = gguf.quants.dequantize(ours.view(np.float16) if name == "F16" else ours, gtype)
        assert np.array_equal(back.view(np.uint32), np.asarray(theirs, np.float32).reshape(x.shape).view(np.uint32))
    if name != "F32":
        assert np.array_equal(back.view(np.uint32), ggml_dequantize(ours, gtype, x.shape[1]).view(np.uint32))


@pytest.mark.parametrize("name", ["Q4_0", "Q8_0", "IQ4_NL", "Q4_K", "F16"])
def test_shapes_threads_and_flat_bytes(name):
    x = _data()
    ref = quant.quantize(x, name)
    assert np.array_equal(quant.quantize(x, name, threads=2), ref)
    assert np.array_equal(quant.quantize(x[0], name), ref[:1])                    # one row as 1-D
    flat = quant.dequantize(ref.reshape(-1), name, n_per_row=x.shape[1])          # bytes of a whole tensor
    assert np.array_equal(flat, quant.dequantize(ref, name))
    assert flat.shape == x.shape


@pytest.mark.parametrize("name", ["Q4_0", "IQ4_NL", "Q4_K", "F16"])
def test_empty_tensors_keep_their_shape(name):
    info = quant.type_info(name)
    assert quant.quantize(np.zeros((0, 512), np.float32), name).shape == (0, info.row_bytes(512))
    assert quant.quantize(np.zeros((3, 0), np.float32), name).shape == (3, 0)
    assert quant.dequantize(np.zeros((0, info.row_bytes(512)), np.uint8), name).shape == (0, 512)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_1", "Q8_0", "IQ4_NL", "Q4_K", "Q6_K", "F16", "BF16"])
def test_memory_is_a_small_constant_times_the_input(name):
    """Peak allocation while quantizing, over the float32 size of the tensor (stated: <= 1.5)."""
    x = (np.random.default_rng(2).standard_normal((512, 2048)) * 0.02).astype(np.float32)
    imatrix = np.ones(x.shape[1], np.float32)
    for im in (None, imatrix):
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            out = quant.quantize(x, name, imatrix=im)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak <= 1.5 * x.nbytes, f"{name}: peak {peak / x.nbytes:.2f}x the input"
        del out


@pytest.mark.parametrize("name", ALL_TYPES)
def test_bytes_do_not_depend_on_the_thread_count(name):
    x = _data(rows=11, n=512, seed=3)
    im = np.random.default_rng(4).uniform(0.1, 2.0, 512).astype(np.float32)
    for imatrix in (None, im):
        one = quant.quantize(x, name, imatrix=imatrix, threads=1)
        for threads in (2, 3, 8, 16):
            assert np.array_equal(quant.quantize(x, name, imatrix=imatrix, threads=threads), one), (name, threads)


def test_compiled_helper_writes_ggmls_geometry():
    """The C kernels carry their block layouts; each must agree with gguf-py's table."""
    from quant.backend import compiled_or_none

    compiled = compiled_or_none("c")
    checked = 0
    for info in quant.types():
        geometry = compiled.geometry(int(info.qtype))
        if geometry is not None and info.block_size > 1:
            assert tuple(geometry) == gguf.GGML_QUANT_SIZES[info.qtype], info.name
            checked += 1
    assert compiled.geometry(int(QuantType.Q8_K)) == gguf.GGML_QUANT_SIZES[QuantType.Q8_K]
    assert checked >= 14
