"""Block products (quant.qdot): the compiled paths against their numpy twin (bit for bit),
against ggml's own vec_dot and the runtime's `--numerics ggml` emulation (up to the order
of float additions), on random and on SmolLM2's rows, and in `convkit generate`."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

import quant
from convkit.runtime import quantized_products
from convkit.runtime.ggml_numerics import GgmlNumerics, quantize_q8_0, quantize_q8_1, quantize_q8_k
from convkit.runtime.linear import QTensor, QuantLinear
from quant import qdot
from realdata import smollm2_gguf

TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
compiled = pytest.mark.skipif(not qdot.compiled_types(), reason="quant._qdot is not built")


def _weights(qtype, rows, n, seed):
    g = np.random.default_rng(seed)
    w = (g.standard_normal((rows, n)) * 0.05).astype(np.float32)
    return np.asarray(quant.quantize(w, qtype)).reshape(rows, -1)


def _activations(tokens, n, seed):
    g = np.random.default_rng(seed)
    x = g.standard_normal((tokens, n)).astype(np.float32)
    x[:, 7] *= 40  # an outlier channel, as real hidden states have
    x[0, :32] = 0  # an all-zero block
    if tokens > 1:
        x[1, 5] = -np.abs(x[1]).max() * 2  # a negative extreme (Q8_K's sign rule)
    return x


def _width(qtype):  # 18 blocks of 32 (not a multiple of 8: the vector paths' tail) or 2 of 256
    return 512 if quant.type_info(qtype).block_size == 256 else 576


def _every_path(qtype, w, x):
    """{path: result} for every compiled path this CPU can run (the best one last)."""
    results = {}
    try:
        for isa in ("scalar", "avx2", "avx512vnni"):
            try:
                assert qdot.set_isa(isa) == isa
            except ValueError:  # not on this CPU
                continue
            results[isa] = qdot.matmul(qtype, w, x, threads=2)
    finally:
        qdot.set_isa("best")
    return results


def _emulated(qtype, w, x):
    """The runtime's torch emulation of ggml (dequantized weight, one float32 GEMM)."""
    layer = QuantLinear(QTensor(torch.from_numpy(np.ascontiguousarray(w)), qtype))
    saved = quantized_products.MAX_ROWS, quantized_products.MAX_TILED_ROWS
    quantized_products.MAX_ROWS = quantized_products.MAX_TILED_ROWS = 0
    try:
        return GgmlNumerics().linear(layer, torch.from_numpy(x)).numpy(), layer.dense_weight(torch.float32).numpy()
    finally:
        quantized_products.MAX_ROWS, quantized_products.MAX_TILED_ROWS = saved


def _order_bound(dense, x):
    """How far two float32 sums of the same n products may differ when added in different
    orders: recursive summation errs by at most (n-1) * 2^-24 * sum|terms| each (plus the
    rounding of the products), so two orders differ by at most twice that."""
    n = x.shape[1]
    return 2 * (n + 1) * 2.0 ** -24 * (np.abs(x) * 1.01) @ np.abs(dense).T + 1e-30


def test_twin_quantizes_activations_as_ggml_numerics():
    # ggml_numerics' activation quantizers are checked against ggml's bytes in test_numerics_ggml
    x = _activations(4, 512, 0)
    x[2, 32:64] = np.float32(127.0)
    x[2, 33] = np.float32(2.5)  # on a rounding boundary
    q, d, _ = qdot.quantize_q8_0(x)
    tq, td, _ = quantize_q8_0(torch.from_numpy(x))
    assert np.array_equal(q, tq.numpy()) and np.array_equal(d, td.float().numpy()[..., 0])
    q, d, s = qdot.quantize_q8_1(x)
    tq, td, ts = quantize_q8_1(torch.from_numpy(x))
    assert np.array_equal(s, ts.float().numpy()[..., 0])
    q, d, bsums = qdot.quantize_q8_k(x)
    tq, td = quantize_q8_k(torch.from_numpy(x))
    assert np.array_equal(q, tq.numpy()) and np.array_equal(d, td.numpy()[..., 0])
    assert np.array_equal(bsums, tq.numpy().reshape(4, -1, 16, 16).sum(-1))


@compiled
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("tokens", [1, 5, 8, 19])
def test_compiled_paths_equal_the_twin_bit_for_bit(qtype, tokens):
    n = _width(qtype)
    w = _weights(qtype, 67, n, int(qtype))
    x = _activations(tokens, n, tokens)
    twin = qdot.matmul_reference(qtype, w, x)
    paths = _every_path(qtype, w, x)
    assert "scalar" in paths
    for isa, got in paths.items():
        assert np.array_equal(got.view(np.uint32), twin.view(np.uint32)), f"{isa} path"
    assert np.array_equal(qdot.matmul(qtype, w, x, threads=1).view(np.uint32), twin.view(np.uint32))


@compiled
def test_long_rows_keep_one_running_sum():
    n = 32 * 280  # more blocks than the helper holds at once
    w = _weights(T.Q8_0, 5, n, 1)
    x = _activations(2, n, 2)
    twin = qdot.matmul_reference(T.Q8_0, w, x)
    assert all(np.array_equal(got, twin) for got in _every_path(T.Q8_0, w, x).values())


@compiled
@pytest.mark.parametrize("forced", ["scalar", "avx2"])
def test_forced_path_by_environment_gives_the_same_bits(tmp_path, forced):
    levels = ["scalar", "avx2", "avx512vnni"]
    expected = levels[min(levels.index(forced), levels.index(qdot.isa()))]
    qtype, n = T.Q4_K, 512
    w, x = _weights(qtype, 40, n, 3), _activations(3, n, 4)
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "x.npy", x)
    script = ("import sys, numpy as np; from quant import qdot; d = sys.argv[1]; "
              "print(qdot.isa()); np.save(d + '/y.npy', qdot.matmul(12, np.load(d + '/w.npy'), np.load(d + '/x.npy')))")
    env = dict(os.environ, CONVKIT_QDOT_ISA=forced)
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == expected
    assert np.array_equal(np.load(tmp_path / "y.npy"), qdot.matmul(qtype, w, x))


def test_unknown_forced_path_is_one_line_and_exit_2():
    """A misspelt CONVKIT_QDOT_ISA must not silently run (and measure) the best path instead."""
    env = dict(os.environ, CONVKIT_QDOT_ISA="avx512")
    run = subprocess.run([sys.executable, "-m", "convkit", "env"], env=env, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "CONVKIT_QDOT_ISA='avx512'" in run.stderr
    assert "avx2" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_twin_equals_ggml_numerics_up_to_summation_order(qtype):
    n = _width(qtype)
    w, x = _weights(qtype, 33, n, 5), _activations(3, n, 6)
    emulated, dense = _emulated(qtype, w, x)
    twin = qdot.matmul_reference(qtype, w, x)
    assert np.all(np.abs(twin - emulated) <= _order_bound(dense, x)), qtype.name
    # the activations are quantized: a plain float product is visibly further away
    assert np.abs(x @ dense.T - emulated).max() > 20 * np.abs(twin - emulated).max()


@pytest.mark.oracle
@compiled
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_compiled_equals_ggml_vec_dot_up_to_summation_order(qtype):
    from test_numerics_ggml import ggml_matmul

    n = _width(qtype)
    w, x = _weights(qtype, 24, n, 7), _activations(3, n, 8)
    ref = ggml_matmul(w, qtype, x)  # ggml's own kernels for this CPU (their order of additions)
    _, dense = _emulated(qtype, w, x)
    ours = qdot.matmul(qtype, w, x)
    assert np.all(np.abs(ours - ref) <= _order_bound(dense, x)), qtype.name


def _smollm2_rows():
    """Real weight rows: SmolLM2's own Q4_1 and Q8_0 tensors, and its first layer's float
    weights quantized to the other types (quant's quantizers give ggml's bytes)."""
    from gguf import GGUFReader

    reader = GGUFReader(smollm2_gguf())
    tensors = {t.name: t for t in reader.tensors}
    out = []
    for name, rows in (("blk.0.attn_q.weight", None), ("blk.0.ffn_down.weight", None),
                       ("token_embd.weight", 700)):
        t = tensors[name]
        data = np.asarray(t.data)
        out.append((name, T(t.tensor_type), np.ascontiguousarray(data[:rows] if rows else data)))
    down = tensors["blk.0.ffn_down.weight"]  # rows of 1536: whole blocks of 256 too
    floats = quant.dequantize(np.asarray(down.data), T(down.tensor_type)).reshape(down.data.shape[0], -1)[:256]
    for qtype in (T.Q4_0, T.Q5_0, T.Q4_K, T.Q6_K):
        out.append((f"ffn_down as {qtype.name}", qtype, np.asarray(quant.quantize(floats, qtype)).reshape(256, -1)))
    return out


@compiled
def test_real_smollm2_rows():
    g = np.random.default_rng(9)
    for name, qtype, w in _smollm2_rows():
        n = quant.type_info(qtype).block_size * w.shape[1] // quant.type_info(qtype).type_size
        x = (g.standard_normal((2, n)) * np.linspace(0.1, 3, n)).astype(np.float32)
        twin = qdot.matmul_reference(qtype, w, x)
        paths = _every_path(qtype, w, x)
        assert all(np.array_equal(got, twin) for got in paths.values()), name
        best = paths[qdot.isa()]
        emulated, dense = _emulated(qtype, w, x)
        assert np.all(np.abs(best - emulated) <= _order_bound(dense, x)), name


def _generate(*args):
    cmd = [sys.executable, "-m", "convkit", "generate", str(smollm2_gguf()), "-p", "The Linux kernel is",
           "-n", "32", "--greedy", "--json", *args]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def _teacher_forced(model, prompt, tokens):
    """Logits [len(tokens), vocab] of one decoding step per token along a fixed sequence."""
    cache = model.new_cache(max_len=len(prompt) + len(tokens))
    out = [model(torch.tensor([prompt]), cache)[0, -1]]
    for t in tokens[:-1]:
        out.append(model(torch.tensor([[t]]), cache)[0, -1])
    return torch.stack(out).numpy()


@pytest.mark.oracle
@compiled
def test_generate_default_uses_block_products_and_tracks_llama_cpp(monkeypatch):
    import llama_cpp

    from convkit.runtime import load_model

    ours = _generate()
    assert ours["numerics"].startswith("ggml (block products")
    path = str(smollm2_gguf())
    llm = llama_cpp.Llama(model_path=path, n_ctx=128, n_threads=2, verbose=False, logits_all=True)
    prompt = llm.tokenize(b"The Linux kernel is", add_bos=True, special=True)
    tokens = ours["tokens"]
    llm.eval(prompt + tokens[:-1])
    peer = np.array(llm.scores[len(prompt) - 1:len(prompt) - 1 + len(tokens)], dtype=np.float32)
    model = load_model(path, numerics="ggml")
    blocks = _teacher_forced(model, prompt, tokens)
    assert list(blocks.argmax(1)) == tokens  # the CLI's greedy choices are these logits'
    monkeypatch.setattr(quantized_products, "MAX_ROWS", 0)  # the torch emulation of the same arithmetic
    monkeypatch.setattr(quantized_products, "MAX_TILED_ROWS", 0)
    emulated = _teacher_forced(model, prompt, tokens)
    # Quantizing activations to Q8 makes the logits jump when a value crosses a rounding
    # boundary, so two orders of float additions already differ visibly; the emulation's
    # distance to llama.cpp (test_numerics_ggml checks it by PPL) is the yardstick.
    yardstick = np.abs(emulated - peer).max()
    assert np.abs(blocks - peer).max() <= 2 * yardstick
    top2 = np.sort(peer, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * yardstick  # steps where llama.cpp's choice is not a near tie
    assert clear.sum() >= 3
    assert np.array_equal(blocks.argmax(1)[clear], peer.argmax(1)[clear])


@compiled
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_prompt_rows_use_tiled_products_and_dense_products_get_threads_back(qtype):
    n = _width(qtype)
    layer = QuantLinear(QTensor(torch.from_numpy(_weights(qtype, 24, n, 6)), qtype))
    prompt = torch.from_numpy(_activations(40, n, 5))
    assert (qtype in qdot.tiled_types()) == (qdot.isa() != "scalar")
    assert quantized_products.usable(layer, prompt) == (qtype in qdot.tiled_types())
    assert not quantized_products.usable(layer, torch.from_numpy(_activations(100, n, 5)))
    if qtype in qdot.tiled_types():  # a prompt's rows: the block products, bit for bit
        want = qdot.matmul_reference(qtype, layer.weight.data.numpy(), prompt.numpy())
        got = GgmlNumerics().linear(layer, prompt).numpy()
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with quantized_products.few_rows():
            assert torch.get_num_threads() == 1
            with quantized_products.all_threads():
                assert torch.get_num_threads() == 2
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
