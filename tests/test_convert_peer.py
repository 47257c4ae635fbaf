"""`convkit convert` against llama.cpp's own convert_hf_to_gguf.py on small random
Qwen2, Llama and GPT-2 checkpoints (SmolLM2's tokenizer files) and on MiniLM: the same tensors, byte for byte,
and the same value for every metadata key both write.

The tokenizer.json rebuilt from SmolLM2's GGUF does not reproduce the hash the peer uses
to name the pre-tokenizer, so the peer runs with that one lookup answered "smollm"
(realdata.llama_cpp_converter_command).
"""
import json
import shutil
import subprocess

import llama_cpp
import numpy as np
import pytest
from safetensors.numpy import save_file

import gguf_lite
from convkit.cli import main
from realdata import llama_cpp_converter_command, minilm_dir
from smollm2_fixture import smollm2_checkpoint
from synthetic import llama_shapes

H, FF, V, LAYERS, N_HEAD, N_KV = 64, 128, 49152, 2, 4, 2
# keys only one side writes: the peer adds a size label to the model card, and for llama
# attention.key_length/value_length because transformers' LlamaConfig fills in a head_dim
# that config.json does not state (convkit writes them only for an explicit head_dim; the
# value is hidden / heads, which llama.cpp assumes when they are absent)
KNOWN_EXTRA = {"general.size_label", "llama.attention.key_length", "llama.attention.value_length"}


def _checkpoint(directory, arch):
    shapes = llama_shapes(LAYERS, H, FF, V, N_HEAD, N_KV, untied=arch == "llama", qkv_bias=arch == "qwen2")
    if arch == "gpt2":
        shapes = {"wte.weight": (V, H), "wpe.weight": (128, H), "ln_f.weight": (H,), "ln_f.bias": (H,)}
        for i in range(LAYERS):  # Conv1D weights are stored [in, out]
            p = f"h.{i}."
            shapes.update({p + "ln_1.weight": (H,), p + "ln_1.bias": (H,), p + "ln_2.weight": (H,),
                           p + "ln_2.bias": (H,), p + "attn.c_attn.weight": (H, 3 * H), p + "attn.c_attn.bias": (3 * H,),
                           p + "attn.c_proj.weight": (H, H), p + "attn.c_proj.bias": (H,),
                           p + "mlp.c_fc.weight": (H, 4 * H), p + "mlp.c_fc.bias": (4 * H,),
                           p + "mlp.c_proj.weight": (4 * H, H), p + "mlp.c_proj.bias": (H,)})
    rng = np.random.default_rng(1)
    directory.mkdir()
    save_file({k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in shapes.items()},
              str(directory / "model.safetensors"))
    config = {"architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"], "model_type": arch,
              "hidden_size": H, "intermediate_size": FF, "num_hidden_layers": LAYERS, "num_attention_heads": N_HEAD,
              "num_key_value_heads": N_KV, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
              "rope_theta": 1000000.0, "vocab_size": V, "tie_word_embeddings": arch == "qwen2",
              "torch_dtype": "float32", "hidden_act": "silu"}
    if arch == "gpt2":
        config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_ctx": 128, "n_positions": 128,
                  "n_embd": H, "n_head": N_HEAD, "n_layer": LAYERS, "vocab_size": V, "layer_norm_epsilon": 1e-5}
    (directory / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(smollm2_checkpoint() / name, directory / name)
    return directory


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_convert_matches_convert_hf_to_gguf(tmp_path, capsys, arch):
    model = _checkpoint(tmp_path / arch, arch)
    a, b = _convert_both(model, tmp_path, "smollm", capsys)
    assert (set(a) ^ set(b)) <= KNOWN_EXTRA, set(a) ^ set(b)
    assert all(b[k] == H // N_HEAD for k in ("llama.attention.key_length", "llama.attention.value_length") if k in b)
    for key in set(a) & set(b) - {"general.name"}:
        assert a[key] == b[key], key


def _convert_both(model, tmp_path, pre, capsys):
    """Convert with the peer and with convkit (f16); assert equal tensors; return both metadata."""
    theirs, ours = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    subprocess.run(llama_cpp_converter_command(pre) + [str(model), "--outtype", "f16", "--outfile", str(theirs)],
                   check=True, capture_output=True)
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(model), "--outtype", "f16", "-o", str(ours), "--quiet"])
    assert exit_.value.code == 0, capsys.readouterr().err
    (a, mine), (b, peer) = gguf_lite.read(ours), gguf_lite.read(theirs)
    assert sorted(mine) == sorted(peer)
    for name, (qtype, shape, data) in peer.items():
        assert mine[name][:2] == (qtype, shape), name
        assert np.array_equal(mine[name][2], data), name
    return a, b


def test_minilm_matches_convert_hf_to_gguf(tmp_path, capsys):
    """The real BERT tokenizer (phantom-space vocab, lowercase, [CLS]/[SEP]) and weights;
    llama.cpp tokenizes the same text to the same ids with either file."""
    a, b = _convert_both(minilm_dir(), tmp_path, "-", capsys)
    card = {k for k in set(a) ^ set(b) if k.startswith("general.")}
    assert set(a) ^ set(b) == card
    for key in set(a) & set(b) - {"general.name"}:
        assert a[key] == b[key], key
    text = b"Converting MiniLM: llama.cpp's BERT tokenizer, unaffected!"
    ids = []
    for path in (tmp_path / "ours.gguf", tmp_path / "theirs.gguf"):
        llm = llama_cpp.Llama(model_path=str(path), embedding=True, vocab_only=True, verbose=False)
        ids.append(llm.tokenize(text, add_bos=True))
        llm.close()
    assert ids[0] == ids[1] and len(ids[0]) > 10
