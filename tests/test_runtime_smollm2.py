"""SmolLM2-135M through the runtime: the HF fixture and the original Q4_1 GGUF, against transformers."""
import json

import pytest
import torch

from convkit.runtime import load_model
from convkit.runtime.sampling import SamplingParams, generate_tokens
from convkit.runtime.tokenizer import load_tokenizer
from realdata import python_docs_text, smollm2_gguf
from smollm2_fixture import smollm2_checkpoint

pytestmark = pytest.mark.realdata
TOL = 1e-4


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_checkpoint(), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def gguf_model():
    """Dense weights: decoding tests run one forward per token."""
    return load_model(smollm2_gguf(), dequantize_all=True)


@pytest.fixture(scope="module")
def ids():
    tok = load_tokenizer(smollm2_gguf())
    return torch.tensor([tok.encode(python_docs_text()[:3000])[:96]])


@pytest.fixture(scope="module")
def reference(hf_model, ids):
    with torch.no_grad():
        return hf_model(ids).logits


def test_checkpoint_logits_equal_transformers(ids, reference):
    ours = load_model(smollm2_checkpoint())(ids)
    assert (ours - reference).abs().max().item() < TOL


def test_q4_1_gguf_equals_checkpoint_through_transformers(ids, reference):
    """The fixture holds the GGUF's dequantized weights, so both paths compute the same logits,
    with weights dequantized layer by layer as the forward pass reaches them."""
    from convkit.runtime.linear import QuantLinear

    per_layer = load_model(smollm2_gguf())
    assert (per_layer(ids) - reference).abs().max().item() < TOL
    # quantized matrices stayed as their blocks: the model holds the file's bytes, not floats
    linears = [m for m in per_layer.modules() if isinstance(m, QuantLinear)]
    assert all(m._dense is None for m in linears)
    held = sum(m.weight.nbytes for m in linears if m is not per_layer.lm_head) + per_layer.tok_embd.weight.nbytes
    assert held < smollm2_gguf().stat().st_size


def test_gguf_tokenizer_matches_the_checkpoints_tokenizer_json():
    from transformers import AutoTokenizer

    text = python_docs_text()[:4000] + " 2024 ünïcödé <|im_start|>user\nhi<|im_end|>"
    theirs = AutoTokenizer.from_pretrained(smollm2_checkpoint())(text)["input_ids"]
    for ours in (load_tokenizer(smollm2_gguf()), load_tokenizer(smollm2_checkpoint())):
        assert ours.encode(text) == theirs
        assert ours.decode(ours.encode(text)) == text
        stream = ours.stream()  # byte pieces of one character arrive in different tokens
        assert "".join(stream.push(i) for i in theirs) + stream.flush() == text


def test_dequantize_all_gives_the_same_logits(gguf_model, ids, reference):
    assert (gguf_model(ids) - reference).abs().max().item() < TOL


def test_kv_cache_incremental_equals_full_forward(gguf_model, ids, reference):
    cache = gguf_model.new_cache(max_len=128)
    parts = [gguf_model(ids[:, :50], cache)] + [gguf_model(ids[:, i:i + 1], cache) for i in range(50, 60)]
    parts.append(gguf_model(ids[:, 60:], cache))
    assert (torch.cat(parts, dim=1) - reference).abs().max().item() < TOL


def test_greedy_generation_matches_transformers(gguf_model, hf_model, ids):
    prompt = ids[:, :24]
    with torch.no_grad():
        theirs = hf_model.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8,
                                   pad_token_id=2)[0, 24:].tolist()
    ours = list(generate_tokens(gguf_model, prompt[0].tolist(), 8, SamplingParams(temperature=0)))
    assert ours == theirs


def test_seeded_sampling_is_deterministic(gguf_model, ids):
    prompt = ids[0, :16].tolist()
    params = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, repeat_penalty=1.1, seed=7)
    first = list(generate_tokens(gguf_model, prompt, 6, params))
    assert first == list(generate_tokens(gguf_model, prompt, 6, params))
    assert len(first) == 6


def test_bf16_agrees_with_fp32_on_most_predictions(ids, reference):
    bf16 = load_model(smollm2_gguf(), precision="bf16")(ids[:, :48])
    assert (bf16.argmax(-1) == reference[:, :48].argmax(-1)).float().mean().item() > 0.9


def test_generate_command_greedy_json(hf_model, capsys):
    from convkit.cli import main

    prompt = "The Python language"
    with pytest.raises(SystemExit) as exit_info:
        # float numerics: transformers' arithmetic (the default follows llama.cpp's, test_qdot.py)
        main(["generate", str(smollm2_gguf()), "-p", prompt, "-n", "6", "--greedy", "--json", "--dequantize-all",
              "--numerics", "float"])
    out = capsys.readouterr()
    assert exit_info.value.code == 0, out.err
    doc = json.loads(out.out)
    tok = load_tokenizer(smollm2_gguf())
    prompt_ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        theirs = hf_model.generate(prompt_ids, max_new_tokens=6, do_sample=False, pad_token_id=2)
    assert doc["tokens"] == theirs[0, prompt_ids.shape[1]:].tolist()
    assert doc["text"] == tok.decode(doc["tokens"])
