"""The embedded sample (samples/tiny-llama): loads in transformers, has K-quant-friendly
dimensions, its tokenizer.json agrees with HF tokenizers, and its held-out perplexity is
what TRAINING.md states and far below a uniform model's."""
import hashlib
import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "tiny-llama"
SCRIPT = SAMPLE.parent / "make_sample.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_sample", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def training_md():
    return (SAMPLE / "TRAINING.md").read_text()


@pytest.fixture(scope="module")
def held_out(script, training_md):
    text = script.split_pydoc_topics()[1]
    stated = re.search(r"sha256 `([0-9a-f]{64})`", training_md).group(1)
    assert hashlib.sha256(text.encode()).hexdigest() == stated, \
        "this Python's pydoc_data.topics differs from the one the sample was trained with"
    return text


def test_files_present():
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "TRAINING.md"):
        assert (SAMPLE / name).is_file(), name
    assert (SAMPLE / "model.safetensors").stat().st_size < 16 << 20


def test_config_lets_every_k_quant_apply():
    cfg = json.loads((SAMPLE / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    # every weight matrix's row length (its input dimension) is a multiple of the 256-wide super-block
    for row in (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"] * head_dim):
        assert row % 256 == 0, row
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # GQA
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    assert cfg["num_hidden_layers"] >= 4
    assert cfg["tie_word_embeddings"] is False
    assert cfg["torch_dtype" if "torch_dtype" in cfg else "dtype"] == "bfloat16"


def test_tokenizer_ids_match_hf(held_out):
    from tokenizers import Tokenizer

    from tokenizers_impl import formats

    hf = Tokenizer.from_file(str(SAMPLE / "tokenizer.json"))
    ours = formats.load(SAMPLE / "tokenizer.json")
    assert hf.get_vocab_size() == ours.vocab_size == 4096
    assert hf.token_to_id("<|endoftext|>") == ours.token_to_id("<|endoftext|>") == 0
    expected = hf.encode(held_out, add_special_tokens=False).ids
    assert ours.encode(held_out) == expected
    assert hf.decode(expected) == ours.decode(expected) == held_out


def test_held_out_perplexity(held_out, training_md):
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    torch.set_num_threads(2)
    ids = Tokenizer.from_file(str(SAMPLE / "tokenizer.json")).encode(held_out, add_special_tokens=False).ids
    model = LlamaForCausalLM.from_pretrained(SAMPLE, torch_dtype=torch.float32).eval()
    # llama.cpp: consecutive chunks of n_ctx, first token -> BOS, positions n_ctx/2 .. n_ctx-2 scored
    n_ctx, first = 256, 128
    chunks = torch.tensor([ids[i * n_ctx:(i + 1) * n_ctx] for i in range(len(ids) // n_ctx)])
    chunks[:, 0] = 0
    nll, count = 0.0, 0
    with torch.no_grad():
        for batch in chunks.split(8):
            logits = model(input_ids=batch).logits[:, first:n_ctx - 1].float()
            targets = batch[:, first + 1:]
            nll += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").double())
            count += targets.numel()
    ppl = math.exp(nll / count)
    vocab = model.config.vocab_size
    assert ppl < vocab / 20, f"held-out PPL {ppl:.1f} not far below uniform {vocab}"
    stated = float(re.search(r"held-out perplexity \| \*\*([0-9.]+)\*\*", training_md).group(1))
    assert abs(ppl - stated) / stated < 0.01, (ppl, stated)


def test_converted_sample_tokenizes_in_llama_cpp_as_ours(held_out, tmp_path, capsys):
    """The GGUF of the sample names the pre-tokenizer llama.cpp must run (plain ByteLevel is
    "gpt-2"), so llama.cpp's tokenizer gives our ids on the held-out text."""
    import gguf
    import llama_cpp

    from convkit.cli import main
    from tokenizers_impl import formats

    out = tmp_path / "sample-f16.gguf"
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(SAMPLE), "--outtype", "f16", "-o", str(out), "--quiet"])
    assert exit_.value.code == 0, capsys.readouterr().err
    field = gguf.GGUFReader(out).fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == "gpt-2"

    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    expected = formats.load(SAMPLE / "tokenizer.json").encode(held_out)
    assert llm.tokenize(held_out.encode(), add_bos=False, special=False) == expected
