"""`convkit generate` on bad input: one line on stderr, exit code 2; and the sampler's rules."""
import json

import gguf
import numpy as np
import pytest
import torch

from convkit.cli import main
from convkit.runtime.sampling import Sampler, SamplingParams, apply_repeat_penalty, filter_top_k_top_p


def run(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convkit: error:"), err
    for w in words:
        assert w in lines[0], lines[0]


def tiny_gguf(path, arch="llama", matrix_type=gguf.GGMLQuantizationType.F32):
    """A two-layer model file; `matrix_type` is used for blk.0.attn_q.weight."""
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1); w.add_context_length(64); w.add_embedding_length(256)
    w.add_feed_forward_length(256); w.add_head_count(4); w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5); w.add_vocab_size(300)
    rng = np.random.default_rng(0)
    tensors = {"token_embd.weight": (300, 256), "output_norm.weight": (256,), "blk.0.attn_norm.weight": (256,),
               "blk.0.ffn_norm.weight": (256,)}
    for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        tensors[f"blk.0.{n}.weight"] = (256, 256)
    for name, shape in tensors.items():
        data = rng.standard_normal(shape).astype(np.float32)
        if name == "blk.0.attn_q.weight" and matrix_type != gguf.GGMLQuantizationType.F32:
            block, size = gguf.GGML_QUANT_SIZES[matrix_type]
            raw = rng.integers(0, 256, (shape[0], shape[1] // block * size), dtype=np.uint8)
            w.add_tensor(name, raw, raw_dtype=matrix_type)
        else:
            w.add_tensor(name, data)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def test_missing_model(capsys, tmp_path):
    code, _, err = run(capsys, "generate", str(tmp_path / "nope.gguf"), "-p", "hi")
    assert_one_line_error(code, err, "nope.gguf")


def test_unsupported_gguf_architecture(capsys, tmp_path):
    code, _, err = run(capsys, "generate", str(tiny_gguf(tmp_path / "m.gguf", arch="mamba")), "-p", "hi")
    assert_one_line_error(code, err, "m.gguf", "mamba", "llama")


def test_unsupported_tensor_type(capsys, tmp_path):
    """Q8_K exists only for activations: no file type holds it and nothing here reads it."""
    path = tiny_gguf(tmp_path / "q8k.gguf", matrix_type=gguf.GGMLQuantizationType.Q8_K)
    code, _, err = run(capsys, "generate", str(path), "-p", "hi")
    assert_one_line_error(code, err, "q8k.gguf", "Q8_K", "blk.0.attn_q.weight")


def test_unsupported_hf_architecture(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    code, _, err = run(capsys, "generate", str(tmp_path), "-p", "hi")
    assert_one_line_error(code, err, "config.json", "BertModel")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_gpu(capsys, tmp_path):
    code, _, err = run(capsys, "generate", str(tiny_gguf(tmp_path / "m.gguf")), "-p", "hi", "--device", "cuda")
    assert_one_line_error(code, err, "--device cuda", "--device cpu")


def test_unknown_precision(capsys, tmp_path):
    code, _, err = run(capsys, "generate", str(tiny_gguf(tmp_path / "m.gguf")), "-p", "hi", "--precision", "fp8")
    assert code == 2 and "fp8" in err


def test_not_a_model_file(capsys, tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\0" * 64)
    code, _, err = run(capsys, "generate", str(bad), "-p", "hi")
    assert_one_line_error(code, err, "model.bin")


def test_truncated_gguf(capsys, tmp_path):
    good = tiny_gguf(tmp_path / "m.gguf").read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(good[: len(good) // 3])
    code, _, err = run(capsys, "generate", str(bad), "-p", "hi")
    assert_one_line_error(code, err, "cut.gguf")


# --------------------------------------------------------------------- sampler rules
def test_repeat_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    out = apply_repeat_penalty(logits, [0, 1, 1], penalty=2.0, last_n=0)
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0]
    assert apply_repeat_penalty(logits, [0, 1, 3], penalty=2.0, last_n=1).tolist() == [2.0, -1.0, 0.5, 1.5]


def test_top_k_and_top_p_keep_the_expected_tokens():
    logits = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    assert torch.isfinite(filter_top_k_top_p(logits, 2, 1.0)).tolist() == [True, True, False, False, False]
    # 0.5 + 0.2 = 0.7 < 0.75, so the third token is needed to reach the mass
    assert torch.isfinite(filter_top_k_top_p(logits, 0, 0.75)).tolist() == [True, True, True, False, False]
    assert torch.isfinite(filter_top_k_top_p(logits, 0, 0.5)).tolist() == [True, False, False, False, False]


def test_sampler_greedy_and_seeded():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert Sampler(SamplingParams(temperature=0))(logits, []) == int(logits.argmax())
    assert Sampler(SamplingParams(temperature=1.0, top_k=1))(logits, []) == int(logits.argmax())
    draws = [Sampler(SamplingParams(temperature=1.5, top_k=0, top_p=1.0, seed=5))(logits, []) for _ in range(3)]
    assert len(set(draws)) == 1
    s = Sampler(SamplingParams(temperature=5.0, top_k=0, top_p=1.0, seed=5))
    assert len({s(logits, []) for _ in range(50)}) > 10  # a high temperature really samples


def test_model_without_tokenizer(capsys, tmp_path):
    code, _, err = run(capsys, "generate", str(tiny_gguf(tmp_path / "m.gguf")), "-p", "hi")
    assert_one_line_error(code, err, "m.gguf", "tokenizer")
