"""Checkpoints that transformers itself saved, in both config layouts, converted by convkit
and by llama.cpp's own converter (pinned llama-cpp-python 0.3.36 tree).

transformers 5 writes RoPE settings inside `rope_parameters`; transformers 4 wrote
`rope_theta` and `rope_scaling` at the top level (the second layout is made here by
rewriting the saved config.json). For every case and layout:
- the GGUF equals the peer's: every tensor byte for byte, every metadata key outside
  `general.*` with the same value;
- llama.cpp loads our file and gives the logits it gives on its own file;
- our runtime on the directory, and on our float32 GGUF, gives transformers' fp32 logits.
"""
import json
import shutil
import subprocess

import llama_cpp
import numpy as np
import pytest
import torch

import gguf_lite
from convkit.cli import main
from convkit.runtime import load_model
from realdata import llama_cpp_converter_command
from smollm2_fixture import smollm2_checkpoint

VOCAB = 49152  # SmolLM2's tokenizer, so both converters write a real vocabulary
TOL = 1e-4
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, rms_norm_eps=1e-5)

CASES = {
    # Llama 3.1 style: theta 500000, llama3 frequency scaling, explicit head_dim (not hidden / heads)
    "llama3_head_dim": ("LlamaConfig", "LlamaForCausalLM", dict(
        SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        tie_word_embeddings=False)),
    "llama_linear": ("LlamaConfig", "LlamaForCausalLM", dict(
        SMALL, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        rope_parameters={"rope_type": "linear", "rope_theta": 1000000.0, "factor": 4.0}, tie_word_embeddings=True)),
    # Mistral-Nemo style: head_dim 32 with 4 heads on a 64-wide model
    "mistral_head_dim": ("MistralConfig", "MistralForCausalLM", dict(
        SMALL, num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
        sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=False)),
    "qwen2_yarn": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        SMALL, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
                         "original_max_position_embeddings": 128}, tie_word_embeddings=True)),
}
LAYOUTS = ("transformers5", "transformers4")


def to_transformers4_layout(config: dict) -> dict:
    """The same config as transformers 4 wrote it: rope_theta and rope_scaling at the top level."""
    config = dict(config)
    rope = dict(config.pop("rope_parameters"))
    config["rope_theta"] = rope.pop("rope_theta")
    if "partial_rotary_factor" in rope:
        config["partial_rotary_factor"] = rope.pop("partial_rotary_factor")
    if rope.get("rope_type", "default") != "default":
        config["rope_scaling"] = rope
    return config


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(name, {layout: directory}, transformers model) for one case."""
    return save_case(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory):
    return save_case("llama_linear", tmp_path_factory)[1]


def save_case(name, tmp_path_factory):
    import transformers

    config_cls, model_cls, kwargs = CASES[name]
    torch.manual_seed(7)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(vocab_size=VOCAB, **kwargs)).eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: perturb them too
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    dirs = {}
    for layout in LAYOUTS:
        directory = tmp_path_factory.mktemp(f"{name}-{layout}")
        model.save_pretrained(directory)
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(smollm2_checkpoint() / file, directory / file)
        config = json.loads((directory / "config.json").read_text())
        assert "rope_parameters" in config and "rope_scaling" not in config  # what transformers 5 writes
        if layout == "transformers4":
            (directory / "config.json").write_text(json.dumps(to_transformers4_layout(config), indent=2))
        dirs[layout] = directory
    return name, dirs, model


def convert_both(model_dir, tmp_path, capsys, outtype="f16"):
    theirs, ours = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    subprocess.run(llama_cpp_converter_command("smollm") + [str(model_dir), "--outtype", outtype,
                                                             "--outfile", str(theirs)],
                   check=True, capture_output=True)
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(model_dir), "--outtype", outtype, "-o", str(ours), "--quiet"])
    assert exit_.value.code == 0, capsys.readouterr().err
    return ours, theirs


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gguf_equals_llama_cpp_converter(case, layout, tmp_path, capsys):
    name, dirs, model = case
    ours, theirs = convert_both(dirs[layout], tmp_path, capsys)
    (meta, mine), (peer_meta, peer) = gguf_lite.read(ours), gguf_lite.read(theirs)
    assert list(mine) == list(peer)  # same tensors, in the same order
    for tensor, (qtype, shape, data) in peer.items():
        assert mine[tensor][:2] == (qtype, shape), tensor
        assert np.array_equal(mine[tensor][2], data), tensor
    meta = {k: v for k, v in meta.items() if not k.startswith("general.")}
    peer_meta = {k: v for k, v in peer_meta.items() if not k.startswith("general.")}
    assert meta == peer_meta
    arch = "qwen2" if name.startswith("qwen2") else "llama"
    rope = model.config.rope_parameters
    assert meta[f"{arch}.rope.freq_base"] == np.float32(rope["rope_theta"])
    if "head_dim" in CASES[name][2]:
        assert meta[f"{arch}.attention.key_length"] == meta[f"{arch}.attention.value_length"] == 32
    if rope["rope_type"] == "llama3":
        assert "rope_freqs.weight" in mine

    # llama.cpp runs our file exactly as its own
    tokens = list(range(100, 140))
    logits = []
    for path in (ours, theirs):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
        llm.eval(tokens)
        logits.append(np.array(llm.scores[:len(tokens)]))
        llm.close()
    assert np.array_equal(logits[0], logits[1])


def reference_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("layout", LAYOUTS)
def test_runtime_on_directory_equals_transformers(case, layout):
    name, dirs, model = case
    ids = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(3))
    ours = load_model(dirs[layout])(ids)
    assert (ours - reference_logits(model, ids)).abs().max().item() <= TOL


def test_runtime_on_our_gguf_equals_transformers(case, tmp_path, capsys):
    """The RoPE metadata (and llama3's rope_freqs) read back from our own float32 file."""
    name, dirs, model = case
    target = tmp_path / "f32.gguf"
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(dirs["transformers4"]), "--outtype", "f32", "-o", str(target), "--quiet"])
    assert exit_.value.code == 0, capsys.readouterr().err
    ids = torch.randint(0, VOCAB, (1, 48), generator=torch.Generator().manual_seed(4))
    assert (load_model(target)(ids) - reference_logits(model, ids)).abs().max().item() <= TOL


@pytest.mark.parametrize("rope,needle", [
    ({"rope_type": "fancy", "rope_theta": 10000.0}, "rope_type = 'fancy'"),
    ({"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0], "long_factor": [1.0]},
     "not supported for LlamaForCausalLM"),
    ({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "mscale": 0.7}, "mscale"),
    ({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "truncate": False}, "truncate"),
    ({"rope_type": "linear", "rope_theta": 10000.0}, "factor"),
    ({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
])
def test_rope_settings_not_understood_are_refused(llama_dirs, rope, needle, tmp_path, capsys):
    """Both layouts; the converter and the runtime refuse alike, naming the key."""
    for layout in LAYOUTS:
        directory = tmp_path / layout
        shutil.copytree(llama_dirs["transformers5"], directory)
        config = json.loads((directory / "config.json").read_text())
        config["rope_parameters"] = rope
        if layout == "transformers4":
            config = to_transformers4_layout(config)
        (directory / "config.json").write_text(json.dumps(config))
        target = tmp_path / f"{layout}.gguf"
        for argv in (["convert", str(directory), "-o", str(target), "--quiet"],
                     ["perplexity", str(directory), "--text", str(directory / "config.json")]):
            with pytest.raises(SystemExit) as exit_:
                main(argv)
            err = capsys.readouterr().err
            assert exit_.value.code == 2, err
            assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
            assert not target.exists()
