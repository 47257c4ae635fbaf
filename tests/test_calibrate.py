"""`convkit quantize --calibrate`: GPTQ error feedback inside ggml's blocks (quant/gptq.py,
convkit/calibrate.py) writes standard files that llama.cpp runs as its own."""
from pathlib import Path

import gguf
import gguf.quants
import numpy as np
import pytest

import quant
from quant.gptq import LAYOUTS, quantize_gptq

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "tiny-llama"


@pytest.mark.parametrize("qtype", sorted(LAYOUTS, key=int), ids=lambda t: t.name)
def test_layout_reads_and_writes_ggml_blocks(qtype):
    """decode gives value = a * q + b equal to gguf-py's dequantization of ggml's bytes, and
    encode(decode) writes those bytes back unchanged."""
    info = quant.type_info(qtype)
    rng = np.random.default_rng(int(qtype))
    x = (rng.standard_normal((6, 512)) * rng.uniform(0.05, 3, (6, 1))).astype(np.float32)
    x[0, :32] = 0  # an empty block (zero scale)
    imp = rng.uniform(0.1, 3, 512).astype(np.float32)
    data = np.asarray(quant.quantize(x, qtype, imatrix=imp))
    blocks = data.reshape(-1, info.type_size)
    layout = LAYOUTS[qtype]
    a, b, q = layout.decode(blocks)
    assert q.min() >= layout.qmin and q.max() <= layout.qmax
    peer = gguf.quants.dequantize(data, gguf.GGMLQuantizationType(int(qtype))).reshape(-1, info.block_size)
    assert np.allclose(a * q + b, peer, rtol=1e-6, atol=1e-7)
    assert np.array_equal(layout.encode(blocks, q), blocks)
    # other integers land where ggml reads them
    q2 = rng.integers(layout.qmin, layout.qmax + 1, size=q.shape)
    moved = layout.encode(blocks, q2).reshape(data.shape)
    want = a * q2 + b
    assert np.allclose(gguf.quants.dequantize(moved, gguf.GGMLQuantizationType(int(qtype))).reshape(want.shape),
                       want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["Q4_0", "Q5_0", "Q4_K", "Q6_K", "Q3_K", "Q2_K"])
def test_error_feedback_lowers_the_output_error(name):
    """On inputs with correlated columns, GPTQ's ||(W - Q) X|| is below that of ggml's own
    importance-weighted rounding with the same inputs' diagonal (the imatrix)."""
    rng = np.random.default_rng(7)
    n = 512
    mix = rng.standard_normal((n, n)) * 0.3 + np.eye(n)
    X = (rng.standard_normal((2048, n)) @ mix * rng.uniform(0.2, 3, n)).astype(np.float32)
    H = X.T.astype(np.float64) @ X
    W = rng.standard_normal((64, n)).astype(np.float32)
    plain = quant.dequantize(quant.quantize(W, name, imatrix=np.diag(H).astype(np.float32)), name)
    ours = quant.dequantize(quantize_gptq(W, H, name), name)
    err = lambda Q: float(np.mean(((W - Q) @ X.T) ** 2))  # noqa: E731
    assert err(ours) < 0.8 * err(plain), (err(ours), err(plain))


def _calibration_text(tmp_path, chars):
    from convkit.samples import split_pydoc_topics

    path = tmp_path / "calib.txt"
    path.write_text(split_pydoc_topics()[0][:chars], encoding="utf-8")
    return path


def _run(args, capsys):
    from convkit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(args)
    return exit_.value.code, capsys.readouterr()


@pytest.fixture(scope="module")
def calibrated_pair(tmp_path_factory):
    """The sample at Q4_K_M, calibrated on two chunks of pydoc text, and the plain mix."""
    from convkit.cli import main

    tmp = tmp_path_factory.mktemp("calib")
    text = _calibration_text(tmp, 12000)
    ours, plain = tmp / "ours.gguf", tmp / "plain.gguf"
    for args in (["--calibrate", str(text), "-o", str(ours)], ["-o", str(plain)]):
        with pytest.raises(SystemExit) as exit_:
            main(["quantize", str(SAMPLE), "--type", "q4_k_m", "--quiet", *args])
        assert exit_.value.code == 0
    return ours, plain


def test_calibrated_file_has_the_mix_types_and_size(calibrated_pair):
    ours, plain = calibrated_pair
    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(plain)
    assert ours.stat().st_size == plain.stat().st_size
    assert [(t.name, t.tensor_type, list(t.shape)) for t in a.tensors] == \
           [(t.name, t.tensor_type, list(t.shape)) for t in b.tensors]
    changed = {t.name for t, u in zip(a.tensors, b.tensors) if not np.array_equal(t.data, u.data)}
    # the blk.* products are calibrated; the embedding, norms and untied head are not touched
    assert changed and all(n.startswith("blk.") and not n.endswith("_norm.weight") for n in changed), changed
    assert any(n.endswith("ffn_down.weight") for n in changed) and any(n.endswith("attn_q.weight") for n in changed)


def test_llama_cpp_runs_the_calibrated_file_as_our_runtime_does(calibrated_pair):
    """llama.cpp loads the file; our runtime (llama.cpp's numerics) gives its logits, as
    close as for the plain file (the yardstick: float orders differ, not the weights read)."""
    import llama_cpp
    import torch

    from convkit.runtime import load_model

    ours_file, plain_file = calibrated_pair
    tokens = list(range(100, 164))
    distance = {}
    for path in (ours_file, plain_file):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
        llm.eval(tokens)
        peer = np.array(llm.scores[:len(tokens)], dtype=np.float32)
        llm.close()
        model = load_model(path, numerics="ggml")
        with torch.no_grad():
            mine = model(torch.tensor([tokens]))[0].numpy()
        assert (mine.argmax(1) == peer.argmax(1)).mean() >= 0.95
        distance[path] = np.abs(mine - peer).max() / np.abs(peer).max()
    print(distance)
    assert distance[ours_file] <= max(2 * distance[plain_file], 1e-3), distance


def test_calibration_text_shorter_than_one_chunk_is_one_line(tmp_path, capsys):
    text = _calibration_text(tmp_path, 300)
    out = tmp_path / "out.gguf"
    code, captured = _run(["quantize", str(SAMPLE), "--type", "q4_k_m", "--calibrate", str(text), "-o", str(out)],
                          capsys)
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "shorter than one chunk" in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == [text]


def test_calibrate_and_imatrix_together_is_one_line(tmp_path, capsys):
    text = _calibration_text(tmp_path, 300)
    code, captured = _run(["quantize", str(SAMPLE), "--type", "q4_k_m", "--calibrate", str(text), "--imatrix",
                           str(text), "-o", str(tmp_path / "o.gguf")], capsys)
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not both" in err, err
    assert not (tmp_path / "o.gguf").exists()
