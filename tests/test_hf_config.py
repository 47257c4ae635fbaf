"""config.json through the one reader that converter and runtime share (convkit/hf_config.py).

Values of the wrong type or range and keys that change the computation in ways convkit
does not implement are refused by `quantize` and `perplexity` alike: one line, exit 2,
nothing written. The layouts of transformers 4 and 5 and a nested text_config give the
same hyperparameters.
"""
import json
import shutil
from pathlib import Path

import pytest

from convkit.arch import architecture_for
from convkit.cli import main
from convkit.hf_config import merge_text_config
from convkit.runtime.load import hf_config

SAMPLE = Path(__file__).parent.parent / "samples" / "tiny-llama"


@pytest.fixture
def sample(tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(SAMPLE, directory)
    return directory


def _config():
    return json.loads((SAMPLE / "config.json").read_text())


def _refused(capsys, tmp_path, directory, needle):
    for argv in (["quantize", str(directory), "--type", "q8_0", "-o", str(tmp_path / "out.gguf"), "--quiet"],
                 ["perplexity", str(directory), "--text", str(SAMPLE / "TRAINING.md")]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2, err
        assert err.startswith("convkit: error:") and "\n" not in err and needle in err, err
        assert str(directory / "config.json") in err, err
        assert not (tmp_path / "out.gguf").exists()


# (change to config.json, text the error names); each one came from a value that once
# crashed or was read silently wrong
BAD = [
    ({"head_dim": [256]}, "head_dim"),
    ({"head_dim": -1}, "head_dim"),
    ({"head_dim": 63}, "head_dim"),
    ({"num_attention_heads": ""}, "num_attention_heads"),
    ({"num_attention_heads": 3}, "num_attention_heads"),
    ({"num_hidden_layers": 2 ** 63}, "num_hidden_layers"),
    ({"num_hidden_layers": -256}, "num_hidden_layers"),
    ({"max_position_embeddings": -1}, "max_position_embeddings"),
    ({"rms_norm_eps": 1e300}, "rms_norm_eps"),
    ({"rms_norm_eps": True}, "rms_norm_eps"),
    ({"vocab_size": 2 ** 40}, "vocab_size"),
    ({"bos_token_id": {}}, "bos_token_id"),
    ({"eos_token_id": [0, -5]}, "eos_token_id"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"architectures": "LlamaForCausalLM"}, "architectures"),
    ({"rope_parameters": None, "rope_scaling": {"type": "linear"}}, "factor"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0}}, "factor"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": -5}}, "rope_theta"),
    ({"rope_parameters": [1, 2]}, "rope_parameters"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "attention_factor": 2.0}},
     "attention_factor"),
    ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ({"layer_types": ["full_attention", "chunked_attention", "full_attention", "full_attention"]}, "layer_types"),
]


@pytest.mark.parametrize("change,needle", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_values_are_refused_by_every_command(sample, tmp_path, capsys, change, needle):
    (sample / "config.json").write_text(json.dumps({**_config(), **change}))
    _refused(capsys, tmp_path, sample, needle)


def test_binary_config_is_refused(sample, tmp_path, capsys):
    (sample / "config.json").write_bytes(b"\xff\xfe\x00binary")
    _refused(capsys, tmp_path, sample, "not valid JSON")


def test_layouts_give_the_same_hyperparameters():
    """transformers 5's rope_parameters, 4's top-level keys and a nested text_config."""
    v5 = {**_config(), "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 64}}
    v4 = {k: v for k, v in v5.items() if k != "rope_parameters"}
    v4.update(rope_theta=500000.0, rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    text = merge_text_config({"architectures": ["LlamaForCausalLM"], "text_config": {
        k: v for k, v in v5.items() if k != "architectures"}})
    configs = [hf_config(c, Path("model")) for c in (v5, v4, text)]
    assert configs[0] == configs[1] == configs[2]
    assert configs[0].rope_theta == 500000.0 and configs[0].rope_scaling["rope_type"] == "llama3"
    arch = architecture_for(v4)
    assert (arch.rope.factor, arch.rope.original_context, arch.head_dim_given) == (8.0, 64, True)


def test_llama3_original_context_follows_transformers():
    """Without original_max_position_embeddings in the rope settings, transformers takes a
    top-level one, else the context length: the rope_freqs tensor must use the same."""
    base = {**_config(), "max_position_embeddings": 512}
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0}
    assert architecture_for({**base, "rope_parameters": rope}).rope.original_context == 512
    assert architecture_for({**base, "rope_parameters": rope,
                             "original_max_position_embeddings": 128}).rope.original_context == 128


def test_sliding_window_does_not_limit_the_runtime_context(sample):
    """Mistral's window is masked (tests/test_families.py compares it with transformers
    beyond the window), so the context is the model's own."""
    config = {**_config(), "architectures": ["MistralForCausalLM"], "sliding_window": 64}
    runtime = hf_config(config, sample)
    assert runtime.sliding_window == 64 and runtime.context_limit == config["max_position_embeddings"]
    assert all(runtime.window(i) == 64 for i in range(runtime.n_layers))
