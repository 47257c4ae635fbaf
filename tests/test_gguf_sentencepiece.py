"""GGUF vocab of sentencepiece models: a llama checkpoint that carries a tokenizer.model
gets the tokenizer keys llama.cpp's convert_hf_to_gguf.py writes (model "llama", scores,
token types with BYTE pieces, added tokens, flags), and llama.cpp tokenizes with our ids."""
import json
import shutil

import numpy as np
import pytest
import sentencepiece as spm
from safetensors.numpy import save_file

from realdata import python_docs_text
from spm_models import spm_model
from synthetic import llama_shapes
from test_convert_peer import _convert_both
from tokenizers_impl import formats

H, FF, LAYERS, N_HEAD, N_KV = 64, 128, 2, 4, 2


def _llama_dir(directory, model_name, vocab_extra=0, tokenizer_config=None, added_tokens=None):
    path = spm_model(model_name)
    n = spm.SentencePieceProcessor(model_file=str(path)).get_piece_size() + vocab_extra
    shapes = llama_shapes(LAYERS, H, FF, n, N_HEAD, N_KV, untied=True, qkv_bias=False)
    rng = np.random.default_rng(1)
    directory.mkdir()
    save_file({k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in shapes.items()},
              str(directory / "model.safetensors"))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
              "intermediate_size": FF, "num_hidden_layers": LAYERS, "num_attention_heads": N_HEAD,
              "num_key_value_heads": N_KV, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
              "rope_theta": 10000.0, "vocab_size": n, "tie_word_embeddings": False, "torch_dtype": "float32",
              "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}
    (directory / "config.json").write_text(json.dumps(config))
    shutil.copy(path, directory / "tokenizer.model")
    if tokenizer_config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if added_tokens is not None:
        (directory / "added_tokens.json").write_text(json.dumps(added_tokens))
    return directory


LLAMA2_CONFIG = {
    "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    "add_prefix_space": True, "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    "added_tokens_decoder": {
        "0": {"content": "<unk>", "special": True}, "1": {"content": "<s>", "special": True},
        "2": {"content": "</s>", "special": True}, "1200": {"content": "<|im_end|>", "special": False},
        "1201": {"content": "▁tool▁call", "special": False},
    },
}


@pytest.mark.parametrize("case", ["plain", "llama2", "with_tokenizer_json"])
def test_tokenizer_keys_equal_convert_hf_to_gguf(tmp_path, capsys, case):
    if case == "plain":
        model = _llama_dir(tmp_path / case, "unigram_bytes")
    elif case == "with_tokenizer_json":
        # an HF llama repository: tokenizer.model beside the tokenizer.json transformers
        # makes of it (llama.cpp's converter still reads the sentencepiece model)
        from transformers import LlamaTokenizer

        model = _llama_dir(tmp_path / case, "bpe_llama")
        tok = LlamaTokenizer.from_pretrained(str(model), add_bos_token=True)
        tok.save_pretrained(str(model))
    else:
        model = _llama_dir(tmp_path / case, "bpe_llama", vocab_extra=3, tokenizer_config=LLAMA2_CONFIG,
                           added_tokens={"<extra>": 1202})
    ours, theirs = _convert_both(model, tmp_path, "-", capsys)
    keys = {k for k in theirs if k.startswith("tokenizer.")}
    assert {k for k in ours if k.startswith("tokenizer.")} == keys
    assert "tokenizer.ggml.scores" in keys and 6 in list(theirs["tokenizer.ggml.token_type"])
    for key in keys:
        a, b = ours[key], theirs[key]
        assert (list(a) == list(b)) if isinstance(a, (list, np.ndarray)) else a == b, key


@pytest.mark.parametrize("name", ["bpe_llama"])
def test_llama_cpp_tokenizes_our_vocab_with_our_ids(tmp_path, name):
    """A vocab-only GGUF from our metadata: llama.cpp's sentencepiece tokenizer gives the
    ids we (and sentencepiece) give. llama.cpp's "llama" tokenizer is sentencepiece's BPE
    without normalization: the Llama layout (BPE, byte fallback, identity, whitespace
    kept); it segments Unigram models by its BPE rule, as it does for any converted one."""
    import gguf
    import llama_cpp

    tok = formats.load(spm_model(name))
    meta = formats.gguf_vocab_metadata(tok)
    path = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_context_length, 512), (w.add_embedding_length, 64), (w.add_block_count, 1),
                       (w.add_feed_forward_length, 128), (w.add_head_count, 2), (w.add_head_count_kv, 2),
                       (w.add_layer_norm_rms_eps, 1e-5)):
        add(value)
    w.add_tokenizer_model(meta["tokenizer.ggml.model"])
    w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    w.add_token_scores(meta["tokenizer.ggml.scores"])
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    for key, value in meta.items():
        if key.endswith("_token_id"):
            w.add_uint32(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=16, verbose=False, vocab_only=True)
    text = python_docs_text()[-30_000:].split("\n") + ["日本語 😀 emoji ✓", "  two  spaces", "tabs\tand é"]
    try:
        for line in text:
            assert llm.tokenize(line.encode(), add_bos=False, special=False) == tok.encode(line), line
    finally:
        llm.close()
