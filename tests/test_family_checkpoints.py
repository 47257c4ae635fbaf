"""Every family as released checkpoints come (bfloat16 safetensors), and llama.cpp's
perplexity on each family's quantized file.

- bf16: the fixture's weights saved in bfloat16 (as the real models are published) convert
  to the same GGUF as llama.cpp's converter makes from that directory (f16 and q8_0: the out
  types that round its values),
  and our float32 logits from it equal transformers' on the same bf16 weights;
- perplexity: `--numerics ggml` on our Q4_K_M file of each family agrees with llama.cpp's
  perplexity on that file by the criterion test_numerics_ggml applies to SmolLM2: ggml
  mode's shift from the float products equals llama.cpp's within three standard errors.
"""
import copy
import math
import shutil

import llama_cpp
import numpy as np
import pytest
import torch

from family_fixtures import FAMILIES, cached_directory, family_checkpoint
from llama_peer import scored_logits
from realdata import CACHE, python_docs_text
from test_families import TOL, assert_same_gguf, our_command, peer_convert


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return request.param


def bf16_checkpoint(name):
    """(directory, transformers model on its weights in float32): the fixture saved in bfloat16."""
    import transformers

    f32_dir, model = family_checkpoint(name)
    target = CACHE / "families" / f"{f32_dir.name}-bf16"

    def fill(part):  # the tokenizer files beside weights saved in bfloat16
        shutil.copytree(f32_dir, part, ignore=shutil.ignore_patterns("*.safetensors*", ".complete"),
                        dirs_exist_ok=True)
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(part)  # the cached model stays float32

    cached_directory(target, fill)
    model_cls = getattr(transformers, FAMILIES[name][1])
    return target, model_cls.from_pretrained(target, dtype=torch.float32).eval()


def test_bf16_checkpoint_converts_as_llama_cpp(family, tmp_path, capsys):
    directory, _ = bf16_checkpoint(family)
    assert "bfloat16" in (directory / "config.json").read_text()
    for outtype in ("f16", "q8_0"):  # the conversions that round bf16 values (bf16 -> bf16 copies them)
        theirs = peer_convert(directory, outtype, tmp_path / f"theirs-{outtype}.gguf")
        ours = tmp_path / f"ours-{outtype}.gguf"
        our_command(["convert", str(directory), "--outtype", outtype, "-o", str(ours)], capsys)
        assert_same_gguf(ours, theirs)


def test_bf16_checkpoint_runs_as_transformers(family):
    from convkit.runtime import load_model

    directory, model = bf16_checkpoint(family)
    ids = torch.randint(0, model.config.vocab_size, (2, 96), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model(ids).logits
    assert (load_model(directory)(ids) - expected).abs().max().item() <= TOL


def test_q4_k_m_perplexity_agrees_with_llama_cpp(family, tmp_path, capsys):
    from convkit.eval.kld import KLDAccumulator
    from convkit.eval.perplexity import chunk_logits, perplexity_of_logits, plan_chunks, tokenize_for_perplexity
    from convkit.runtime import ggml_numerics  # noqa: F401  (registers numerics="ggml")
    from convkit.runtime import load_model
    from convkit.runtime.linear import FloatNumerics
    from convkit.runtime.tokenizer import load_tokenizer

    directory, _ = family_checkpoint(family)
    path = tmp_path / "q4_k_m.gguf"
    our_command(["quantize", str(directory), "--type", "q4_k_m", "-o", str(path)], capsys)
    text = python_docs_text()[:20000]
    tokens = tokenize_for_perplexity(load_tokenizer(path), text)
    plan = plan_chunks(len(tokens), 128, 4)
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=128, n_threads=2, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=True, special=False) == tokens  # the same vocabulary
    ref = list(scored_logits(llm, tokens, plan))  # before torch runs: its idle threads slow llama.cpp's down
    llm.close()
    llama = perplexity_of_logits(ref).ppl
    model = load_model(path, dequantize_all=True, numerics="ggml")
    ours = [(c.logits, c.targets) for c in chunk_logits(model, tokens, plan)]
    ggml = perplexity_of_logits(ours).ppl
    model.set_numerics(FloatNumerics())
    fp = perplexity_of_logits(chunk_logits(model, tokens, plan)).ppl
    against = KLDAccumulator()
    for (logits, targets), (theirs, _) in zip(ours, ref):
        against.add(logits, torch.log_softmax(theirs.float(), dim=-1), targets, floor=None)
    s = against.summary()
    assert np.isfinite([ggml, fp, llama]).all()
    assert 0 < s["ln_ppl_ratio_err"] < 0.05, s
    assert abs(math.log(ggml / fp) - math.log(llama / fp)) <= 3 * s["ln_ppl_ratio_err"], (ggml / fp, llama / fp, s)
