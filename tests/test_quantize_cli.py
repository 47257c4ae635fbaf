"""`convkit quantize` / `convert` CLI behaviour: dry-run plan, --json, determinism, atomicity."""
import json

import gguf
import numpy as np
import pytest

from convkit.cli import main
from test_bad_checkpoints import _tiny_model


@pytest.fixture
def model(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    return _tiny_model(d)


def _run(args):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    return exit_.value.code


def test_dry_run_json_plan(model, tmp_path, capsys):
    out = tmp_path / "o.gguf"
    assert _run(["quantize", str(model), "--type", "q8_0", "--dry-run", "--json", "-o", str(out)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not out.exists()
    by_name = {t["name"]: t for t in plan["tensors"]}
    assert by_name["blk.0.attn_q.weight"] == {"name": "blk.0.attn_q.weight", "shape": [64, 64], "type": "Q8_0",
                                              "bytes": 64 * 2 * 34}
    assert by_name["output_norm.weight"]["type"] == "F32"
    assert plan["total_bytes"] == sum(t["bytes"] for t in plan["tensors"])
    n = sum(int(np.prod(t["shape"])) for t in plan["tensors"])
    assert plan["bpw"] == round(plan["total_bytes"] * 8 / n, 4)


def test_output_matches_plan_and_is_deterministic(model, tmp_path, capsys):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert _run(["quantize", str(model), "--type", "q4_0", "-o", str(a), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bytes"] == a.stat().st_size and result["tensors"] == 11
    assert _run(["quantize", str(model), "--type", "q4_0", "-o", str(b), "--threads", "2", "--quiet"]) == 0
    assert a.read_bytes() == b.read_bytes()
    reader = gguf.GGUFReader(a)
    assert reader.fields["general.file_type"].contents() == 2
    assert reader.fields["general.quantization_version"].contents() == 2


def test_overrides(model, tmp_path, capsys):
    assert _run(["quantize", str(model), "--type", "q4_0", "--tensor-type", "ffn_down=q8_0",
                 "--token-embedding-type", "f16", "--dry-run", "--json"]) == 0
    plan = {t["name"]: t["type"] for t in json.loads(capsys.readouterr().out)["tensors"]}
    assert plan["blk.0.ffn_down.weight"] == "Q8_0" and plan["token_embd.weight"] == "F16"


def test_convert_outtypes(model, tmp_path):
    from safetensors.numpy import load_file
    out = tmp_path / "f16.gguf"
    assert _run(["convert", str(model), "--outtype", "f16", "-o", str(out), "--quiet"]) == 0
    reader = gguf.GGUFReader(out)
    src = load_file(str(model / "model.safetensors"))
    t = {t.name: t for t in reader.tensors}["blk.0.ffn_up.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.F16
    np.testing.assert_array_equal(np.asarray(t.data).reshape(128, 64),
                                  src["model.layers.0.mlp.up_proj.weight"].astype(np.float16))


def test_interrupted_write_leaves_nothing(model, tmp_path, monkeypatch):
    from convkit import convert_pipeline

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_pipeline, "encode", boom)
    out = tmp_path / "o.gguf"
    assert _run(["quantize", str(model), "--type", "q8_0", "-o", str(out)]) == 130
    assert list(tmp_path.iterdir()) == [model]


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"])
def test_llama_cpp_loads_tiny_models(model, tmp_path, arch):
    import llama_cpp
    from safetensors.numpy import load_file, save_file
    from test_bad_checkpoints import CONFIG

    if arch == "Qwen2ForCausalLM":  # q/k/v biases
        tensors = load_file(str(model / "model.safetensors"))
        for proj, n in (("q", 64), ("k", 32), ("v", 32)):
            tensors[f"model.layers.0.self_attn.{proj}_proj.bias"] = np.linspace(-1, 1, n, dtype=np.float32)
        save_file(tensors, str(model / "model.safetensors"))
    (model / "config.json").write_text(json.dumps({**CONFIG, "architectures": [arch], "rope_theta": 10000.0}))
    out = tmp_path / "tiny.gguf"
    assert _run(["quantize", str(model), "--type", "q8_0", "-o", str(out), "--quiet"]) == 0
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=16, logits_all=True, verbose=False)
    llm.eval([1, 2, 3])
    assert np.isfinite(np.asarray(llm.scores[:3])).all()
    llm.close()


def test_llama_cpp_loads_tiny_gpt2(model, tmp_path):
    """GPT-2's Conv1D weights are stored [in, out]: the converter transposes them."""
    import llama_cpp
    from safetensors.numpy import save_file

    h, v, ff, ctx = 64, 32, 256, 128
    rng = np.random.default_rng(0)

    def f(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    tensors = {"wte.weight": f(v, h), "wpe.weight": f(ctx, h), "ln_f.weight": f(h), "ln_f.bias": f(h),
               "h.0.ln_1.weight": f(h), "h.0.ln_1.bias": f(h), "h.0.attn.c_attn.weight": f(h, 3 * h),
               "h.0.attn.c_attn.bias": f(3 * h), "h.0.attn.c_proj.weight": f(h, h), "h.0.attn.c_proj.bias": f(h),
               "h.0.ln_2.weight": f(h), "h.0.ln_2.bias": f(h), "h.0.mlp.c_fc.weight": f(h, ff),
               "h.0.mlp.c_fc.bias": f(ff), "h.0.mlp.c_proj.weight": f(ff, h), "h.0.mlp.c_proj.bias": f(h)}
    save_file(tensors, str(model / "model.safetensors"))
    (model / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "n_ctx": ctx, "n_positions": ctx, "n_embd": h, "n_head": 4,
        "n_layer": 1, "layer_norm_epsilon": 1e-5, "vocab_size": v}))
    out = tmp_path / "gpt2.gguf"
    assert _run(["convert", str(model), "--outtype", "f32", "-o", str(out), "--quiet"]) == 0
    qkv = {t.name: t for t in gguf.GGUFReader(out).tensors}["blk.0.attn_qkv.weight"]
    np.testing.assert_array_equal(np.asarray(qkv.data).reshape(3 * h, h), tensors["h.0.attn.c_attn.weight"].T)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=16, logits_all=True, verbose=False)
    llm.eval([1, 2, 3])
    assert np.isfinite(np.asarray(llm.scores[:3])).all()
    llm.close()


def test_sentencepiece_vocab_tokenizes_like_sentencepiece(model, tmp_path):
    """tokenizer.model -> "llama" vocab: llama.cpp's tokenization equals sentencepiece's."""
    import llama_cpp
    import sentencepiece as spm
    from safetensors.numpy import load_file, save_file
    from realdata import python_docs_text
    from test_bad_checkpoints import CONFIG

    (model / "tokenizer.json").unlink()
    text = python_docs_text()[:200000]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_prefix=str(model / "tokenizer"),
                                   vocab_size=600, model_type="bpe", byte_fallback=True,
                                   character_coverage=0.995, minloglevel=2, num_threads=1)
    (model / "config.json").write_text(json.dumps({**CONFIG, "vocab_size": 600}))
    tensors = load_file(str(model / "model.safetensors"))
    tensors["model.embed_tokens.weight"] = np.zeros((600, 64), np.float32)
    save_file(tensors, str(model / "model.safetensors"))
    out = tmp_path / "sp.gguf"
    assert _run(["quantize", str(model), "--type", "q8_0", "-o", str(out), "--quiet"]) == 0
    sp = spm.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=16, verbose=False, vocab_only=True)
    # sentencepiece's default normalizer folds whitespace runs into one space; llama.cpp does not
    # normalize, so the samples are given already folded
    for sample in ("the function returns", "Return a new list with 3 items: é ∑", " ".join(text[5000:5400].split())):
        assert llm.tokenize(sample.encode(), add_bos=False) == sp.encode(sample), sample
    llm.close()


def test_sharded_bf16_f16_checkpoint(model, tmp_path):
    """Two shards with an index, bf16 and f16 tensors: read lazily, widened exactly to f32."""
    import torch
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    tensors = {k: torch.from_numpy(v) for k, v in load_file(str(model / "model.safetensors")).items()}
    (model / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for i, (file, part) in enumerate(halves.items()):
        dtype = torch.bfloat16 if i == 0 else torch.float16
        save_file({k: tensors[k].to(dtype) for k in part}, str(model / file))
    (model / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, part in halves.items() for k in part}}))
    out = tmp_path / "o.gguf"
    assert _run(["convert", str(model), "--outtype", "f32", "-o", str(out), "--quiet"]) == 0
    got = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(out).tensors}
    for hf, file in (("model.layers.0.mlp.down_proj.weight", 0), ("model.norm.weight", 0),
                     ("model.layers.0.mlp.gate_proj.weight", 1)):
        dtype = torch.bfloat16 if hf in halves["model-00001-of-00002.safetensors"] else torch.float16
        expected = tensors[hf].to(dtype).float().numpy()
        name = {"model.layers.0.mlp.down_proj.weight": "blk.0.ffn_down.weight", "model.norm.weight": "output_norm.weight",
                "model.layers.0.mlp.gate_proj.weight": "blk.0.ffn_gate.weight"}[hf]
        np.testing.assert_array_equal(got[name].reshape(expected.shape), expected)


def test_unknown_type_is_one_line_before_the_model_is_read(tmp_path, capsys):
    """Checked before the model is opened: the path does not even exist."""
    from quant.mixes import file_type_names

    missing = tmp_path / "no-such-model"
    assert _run(["quantize", str(missing), "--type", "q9_x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "q9_x" in err and str(missing) not in err
    assert all(name in err for name in file_type_names())
    for bad in (["--type", "q4_0", "--tensor-type", "attn_v=q9_9"], ["--type", "q4_0", "--output-type", "iq9"],
                ["--type", "q4_0", "--token-embedding-type", "nope"], ["--type", "nvfp4"]):
        assert _run(["quantize", str(missing), *bad]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "use one of" in err and str(missing) not in err, err


def test_threads_default_to_the_usable_cores():
    import os

    from convkit.commands.quantize import quantize
    from convkit.quantization import available_cores
    assert available_cores() == len(os.sched_getaffinity(0))
    threads = next(p for p in quantize.params if p.name == "threads")
    assert threads.default is available_cores      # evaluated when the command runs


@pytest.mark.parametrize("ftype", ["q4_k_m", "iq4_nl", "q8_0"])
def test_bytes_do_not_depend_on_the_thread_count(model, tmp_path, ftype):
    outs = []
    for threads in (1, 2, 3, 7):
        out = tmp_path / f"{ftype}-{threads}.gguf"
        assert _run(["quantize", str(model), "--type", ftype, "-o", str(out), "--threads", str(threads),
                     "--quiet"]) == 0
        outs.append(out.read_bytes())
    assert all(o == outs[0] for o in outs[1:])


def test_imatrix_of_the_wrong_length_stops_before_writing(model, tmp_path, capsys, monkeypatch):
    from quant.imatrix import from_statistics, write_imatrix

    from convkit import convert_pipeline

    def no_run(*args, **kwargs):
        raise AssertionError("the wrong imatrix must be found before the writer starts")

    monkeypatch.setattr(convert_pipeline, "run", no_run)

    imatrix = tmp_path / "imatrix.gguf"
    stats = {"blk.0.attn_q.weight": (np.ones(63, np.float32), np.array([10]))}
    write_imatrix(imatrix, from_statistics(stats, ["x"], 1, 512))
    out = tmp_path / "o.gguf"
    assert _run(["quantize", str(model), "--type", "q4_0", "--imatrix", str(imatrix), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "blk.0.attn_q.weight" in err and "63" in err
    assert not out.exists() and list(tmp_path.glob("o.gguf*")) == []
