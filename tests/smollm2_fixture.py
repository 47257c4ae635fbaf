"""SmolLM2-135M-Instruct as a Hugging Face checkpoint, made from its GGUF.

The only copy of SmolLM2 we can fetch is a Q4_1 GGUF (tests/realdata.py). This turns
it back into what `convert_hf_to_gguf.py` started from: tensors dequantized to float32
(gguf-py's dequantization, which equals ggml's bit for bit), HF tensor names, the llama
q/k row permutation undone, a config.json from the GGUF metadata, and a tokenizer.json
built from the GGUF vocabulary. Quantizing this checkpoint must therefore give the same
bytes as llama.cpp requantizing the GGUF itself.
"""
import functools
import json

import numpy as np

from realdata import CACHE, smollm2_gguf

# Keys llama.cpp's converter writes today that SmolLM2's own GGUF (an older converter's
# output) lacks, with the value we write; llama.cpp's default for the missing key is the same.
NEWER_CONVERTER_KEYS = {"tokenizer.ggml.add_eos_token": False}

FIXTURE_VERSION = 2  # 2: no head_dim in config.json, as in SmolLM2's own (transformers 4.42)

# GGUF tensor name (without "blk.N.") -> HF name inside "model.layers.N."
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

SPECIAL_TOKEN_TYPE = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL


def hf_tensor_name(gguf_name: str) -> str:
    stem, suffix = gguf_name.rsplit(".", 1)
    if stem.startswith("blk."):
        _, layer, kind = stem.split(".", 2)
        return f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{suffix}"
    return f"{_GLOBAL_NAMES[stem]}.{suffix}"


def unpermute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo the converter's q/k permutation (per head, interleaved rotary halves back to halves)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _field(reader, key):
    return reader.fields[key].contents()


def _tokenizer_json(reader) -> dict:
    tokens = _field(reader, "tokenizer.ggml.tokens")
    token_types = _field(reader, "tokenizer.ggml.token_type")
    merges = _field(reader, "tokenizer.ggml.merges")
    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, (tok, kind) in enumerate(zip(tokens, token_types)) if kind == SPECIAL_TOKEN_TYPE
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level],
        },
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }


def _tokenizer_config(reader) -> dict:
    tokens = _field(reader, "tokenizer.ggml.tokens")
    return {
        "add_prefix_space": False,
        "bos_token": tokens[_field(reader, "tokenizer.ggml.bos_token_id")],
        "eos_token": tokens[_field(reader, "tokenizer.ggml.eos_token_id")],
        "unk_token": tokens[_field(reader, "tokenizer.ggml.unknown_token_id")],
        "pad_token": tokens[_field(reader, "tokenizer.ggml.padding_token_id")],
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(tokens),
    }


def _config(reader) -> dict:
    arch = "llama"
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, f"{arch}.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv")),
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length")),
        "rms_norm_eps": 1e-05,
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base")),
        "rope_scaling": None,
        "vocab_size": int(_field(reader, f"{arch}.vocab_size")),
        "tie_word_embeddings": "output.weight" not in {t.name for t in reader.tensors},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id")),
        "torch_dtype": "float32",
    }


def _write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@functools.cache
def smollm2_tokenizer_json():
    """An HF tokenizer.json holding SmolLM2's vocabulary, merges and special tokens."""
    import gguf

    target = CACHE / f"smollm2-tokenizer-v{FIXTURE_VERSION}" / "tokenizer.json"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        _write_json(tmp, _tokenizer_json(gguf.GGUFReader(smollm2_gguf())))
        tmp.replace(target)
    return target


@functools.cache
def smollm2_checkpoint():
    """An HF model directory: model.safetensors (float32), config.json, tokenizer files."""
    import gguf
    from safetensors.numpy import save_file

    target = CACHE / f"smollm2-hf-v{FIXTURE_VERSION}"
    done = target / ".complete"
    if done.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(smollm2_gguf())
    config = _config(reader)
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    tensors = {}
    for t in reader.tensors:
        weight = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        weight = weight.reshape([int(d) for d in reversed(t.shape)]) if weight.ndim > 1 else weight.reshape(-1)
        kind = t.name.split(".")[-2]
        if kind in heads:
            weight = unpermute_rows(weight, heads[kind])
        tensors[hf_tensor_name(t.name)] = np.ascontiguousarray(weight)
    save_file(dict(sorted(tensors.items())), str(target / "model.safetensors"), metadata={"format": "pt"})
    _write_json(target / "config.json", config)
    _write_json(target / "generation_config.json", {
        "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"]})
    _write_json(target / "tokenizer.json", _tokenizer_json(reader))
    _write_json(target / "tokenizer_config.json", _tokenizer_config(reader))
    done.touch()
    return target
