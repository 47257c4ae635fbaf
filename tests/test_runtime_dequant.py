"""The runtime's torch dequantizers give gguf-py's floats bit for bit, for every type it reads."""
import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from convkit.runtime.dequant_torch import BLOCK_DEQUANTIZERS, dequantize
from convkit.runtime.linear import QTensor
from convkit.runtime.load import unpermute_index

# byte offsets of the fp16 scales inside one block: random bytes there could be NaN/inf
FP16_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.Q2_K: [80, 82],
               T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [210 - 2], T.IQ4_NL: [0], T.IQ4_XS: [0],
               T.TQ1_0: [52], T.TQ2_0: [64], T.MXFP4: [], T.NVFP4: [], T.Q1_0: [0],
               T.IQ3_XXS: [0], T.IQ3_S: [0], T.IQ2_XXS: [0], T.IQ2_XS: [0], T.IQ2_S: [0],
               T.IQ1_S: [0], T.IQ1_M: []}


def reference(data, qtype):
    """gguf-py's values; for a type gguf-py lacks (Q1_0) or reads wrongly (IQ1_M: it ignores the
    shift signs), quant's (equal to ggml's: tests/test_quant_*)."""
    if qtype in gguf.quants._type_traits and qtype != T.IQ1_M:
        return gguf.quants.dequantize(data, qtype)
    import quant
    return quant.dequantize(data, qtype)


def random_blocks(qtype, rows, row_length, seed=0):
    """Rows of random blocks (every bit pattern of the quants) with finite random fp16 scales."""
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[qtype]
    n = rows * row_length // block
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for at in FP16_FIELDS[qtype]:
        blocks[:, at:at + 2] = (rng.standard_normal((n, 1)) * 0.05).astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.int32), b.view(np.int32))


def test_every_block_type_is_covered():
    assert set(BLOCK_DEQUANTIZERS) == set(FP16_FIELDS)


@pytest.mark.parametrize("qtype", list(FP16_FIELDS), ids=lambda t: t.name)
def test_block_types_equal_gguf_py(qtype):
    data = random_blocks(qtype, rows=48, row_length=512)
    theirs = reference(data, qtype)
    ours = dequantize(torch.from_numpy(data), qtype).numpy()
    assert same_bits(ours, theirs)


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0], ids=lambda t: t.name)
def test_quantized_real_values_round_trip_like_gguf_py(qtype):
    weights = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32) * 0.02
    data = gguf.quants.quantize(weights, qtype)
    assert same_bits(dequantize(torch.from_numpy(data), qtype).numpy(), gguf.quants.dequantize(data, qtype))


@pytest.mark.parametrize("qtype", [T.F16, T.BF16], ids=lambda t: t.name)
def test_float_types(qtype):
    weights = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    stored = gguf.quants.quantize(weights, qtype) if qtype == T.BF16 else weights.astype(np.float16)
    theirs = gguf.quants.dequantize(stored, qtype) if qtype == T.BF16 else stored.astype(np.float32)
    assert same_bits(dequantize(torch.from_numpy(stored), qtype).numpy(), theirs)


def test_odd_offset_and_strided_rows_are_read_correctly():
    data = random_blocks(T.Q4_K, rows=6, row_length=256)
    shifted = torch.from_numpy(np.concatenate([np.zeros(1, np.uint8), data.ravel()]))[1:].view(6, -1)
    assert shifted.storage_offset() == 1
    assert same_bits(dequantize(shifted, T.Q4_K).numpy(), gguf.quants.dequantize(data, T.Q4_K))


def test_row_selection_keeps_each_row_exact():
    data = random_blocks(T.Q6_K, rows=16, row_length=256)
    qt = QTensor(torch.from_numpy(data), T.Q6_K)
    index = torch.tensor([3, 0, 15, 3])
    assert same_bits(qt.take_rows(index).dequantize(torch.float32).numpy(),
                     gguf.quants.dequantize(data, T.Q6_K)[index.numpy()])


def converter_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: interleave each head's rotary halves."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_index_inverts_the_converters_permutation():
    w = np.arange(3 * 64 * 5).reshape(3 * 64, 5)
    permuted = converter_permute(w, 3)
    assert not np.array_equal(permuted, w)
    assert np.array_equal(permuted[unpermute_index(3 * 64, 3).numpy()], w)


@pytest.mark.parametrize("qtype", list(FP16_FIELDS), ids=lambda t: t.name)
def test_bfloat16_output_is_the_float32_result_rounded_once(qtype):
    data = torch.from_numpy(random_blocks(qtype, rows=8, row_length=256, seed=3))
    assert torch.equal(dequantize(data, qtype, torch.bfloat16), dequantize(data, qtype).to(torch.bfloat16))


def test_types_without_a_torch_kernel_are_read_through_gguf_py():
    """IQ2_XXS has no torch dequantizer here; the runtime still reads it, exactly."""
    rng = np.random.default_rng(4)
    block, size = GGML_QUANT_SIZES[T.IQ2_XXS]
    data = rng.integers(0, 256, (4 * 2, size), dtype=np.uint8)
    data[:, 0:2] = (rng.standard_normal((8, 1)) * 0.05).astype(np.float16).view(np.uint8)
    data = data.reshape(4, -1)
    assert same_bits(dequantize(torch.from_numpy(data), T.IQ2_XXS).numpy(), gguf.quants.dequantize(data, T.IQ2_XXS))
