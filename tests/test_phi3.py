"""Phi-3 beyond what test_families checks for every family: LongRoPE's two sets of divisors
(which one applies for which length, through a KV cache too), transformers 4's config
layout, the K-quant mixes of the fused tensors, llama.cpp's run of our file against
transformers, Phi's vocabulary in the runtime's tokenizer, configs that transformers and
llama.cpp would run differently, and the commands on a quantized file."""
import json
import shutil

import llama_cpp
import numpy as np
import pytest
import torch
from gguf import LlamaFileType

import gguf_lite
from convkit.cli import main
from convkit.runtime import load_model
from convkit.runtime.tokenizer import load_tokenizer
from family_fixtures import PHI3_ORIGINAL_CONTEXT, family_checkpoint
from realdata import python_docs_text
from test_families import TOL, assert_refused_in_one_line, assert_same_gguf, llama_cpp_logits, llama_quantize_file, our_command, peer_convert


@pytest.fixture(scope="module")
def phi3():
    return family_checkpoint("phi3")


@pytest.fixture(scope="module")
def phi3_f32(phi3, tmp_path_factory):
    target = tmp_path_factory.mktemp("phi3") / "f32.gguf"
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(phi3[0]), "--outtype", "f32", "-o", str(target), "--quiet"])
    assert exit_.value.code == 0
    return target


def _ids(n, batch=2, seed=5, vocab=1216):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("length", [PHI3_ORIGINAL_CONTEXT - 16, PHI3_ORIGINAL_CONTEXT, 96])
def test_longrope_short_and_long_equal_transformers(phi3, phi3_f32, length):
    """Up to original_max_position_embeddings the short divisors apply, beyond it the long
    ones (to every position of the pass), from the directory and from our GGUF."""
    directory, model = phi3
    ids = _ids(length)
    with torch.no_grad():
        expected = model(ids).logits
    for source in (directory, phi3_f32):
        assert (load_model(source)(ids) - expected).abs().max().item() <= TOL, source


def test_longrope_through_the_cache_equals_transformers(phi3, phi3_f32):
    """A continuation that crosses the original context: its positions get the long divisors,
    the cached keys keep the short ones, as in transformers with past key values."""
    directory, model = phi3
    ids = _ids(80, seed=9)
    first, rest = ids[:, :48], ids[:, 48:]
    with torch.no_grad():
        out = model(first, use_cache=True)
        expected = model(rest, cache=out.past_key_values).logits
    for source in (directory, phi3_f32):
        ours = load_model(source)
        cache = ours.new_cache(batch=2, max_len=80)
        ours(first, cache)
        assert (ours(rest, cache) - expected).abs().max().item() <= TOL, source


def _transformers4_layout(directory, target):
    """The checkpoint as Phi-3's repositories ship it: rope_theta at the top level,
    rope_scaling with type "longrope" and the two lists, the original context at the top."""
    shutil.copytree(directory, target)
    config = json.loads((target / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope["rope_theta"]
    config["rope_scaling"] = {"type": rope["rope_type"], "short_factor": rope["short_factor"],
                              "long_factor": rope["long_factor"]}
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def test_transformers4_layout_converts_and_runs_alike(phi3, tmp_path, capsys):
    directory, model = phi3
    old = _transformers4_layout(directory, tmp_path / "phi3-t4")
    theirs = peer_convert(old, "f16", tmp_path / "theirs.gguf")
    ours = tmp_path / "ours.gguf"
    our_command(["convert", str(old), "--outtype", "f16", "-o", str(ours)], capsys)
    meta = assert_same_gguf(ours, theirs)
    assert meta["phi3.rope.scaling.original_context_length"] == PHI3_ORIGINAL_CONTEXT
    assert meta["phi3.rope.scaling.attn_factor"] == np.float32(np.sqrt(1 + np.log(512 / 64) / np.log(64)))
    ids = _ids(96)
    with torch.no_grad():
        expected = model(ids).logits
    assert (load_model(old)(ids) - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["phi3", "phi4"])
@pytest.mark.parametrize("ftype", ["q3_k_m", "q2_k"])
def test_k_quant_mixes_equal_llama_quantize(name, ftype, tmp_path, capsys):
    """attn_qkv and the double-width ffn_up under the mixes' rules, tied embeddings (phi4)."""
    directory, _ = family_checkpoint(name)
    theirs_f32 = peer_convert(directory, "f32", tmp_path / "theirs-f32.gguf")
    ftype_id = getattr(LlamaFileType, f"MOSTLY_{ftype.upper()}")
    theirs = llama_quantize_file(theirs_f32, tmp_path / "theirs.gguf", ftype_id)
    ours = tmp_path / "ours.gguf"
    our_command(["quantize", str(directory), "--type", ftype, "-o", str(ours)], capsys)
    (_, mine), (_, peer) = gguf_lite.read(ours), gguf_lite.read(theirs)
    assert {n: t[0] for n, t in mine.items()} == {n: t[0] for n, t in peer.items()}
    for tensor, (_, _, data) in peer.items():
        assert np.array_equal(mine[tensor][2], data), tensor


def test_llama_cpp_runs_our_file_as_transformers(phi3, phi3_f32):
    """llama.cpp on our float32 file, with a context beyond the original one (so it takes
    the long divisors, as transformers does for this 96-token prompt): the fused matrices,
    the partial layout and the cos/sin scale mean the same thing to both."""
    _, model = phi3
    ids = _ids(96, batch=1, seed=2)
    with torch.no_grad():
        expected = model(ids).logits[0].numpy()
    got = llama_cpp_logits(phi3_f32, ids[0].tolist())
    assert np.abs(got - expected).max() <= 1e-3


def test_phi4_llama_cpp_runs_our_file_as_transformers(tmp_path, capsys):
    directory, model = family_checkpoint("phi4")
    target = tmp_path / "f32.gguf"
    our_command(["convert", str(directory), "--outtype", "f32", "-o", str(target)], capsys)
    ids = _ids(96, batch=1, seed=2, vocab=model.config.vocab_size)
    with torch.no_grad():
        expected = model(ids).logits[0].numpy()
    assert np.abs(llama_cpp_logits(target, ids[0].tolist()) - expected).max() <= 1e-3


def test_tokenizer_gives_llama_cpp_ids(phi3, phi3_f32, tmp_path):
    """Phi's added tokens as special tokens, in the runtime's tokenizer of the directory and of
    our GGUF, as llama.cpp tokenizes with its own converter's file."""
    directory, _ = phi3
    theirs = peer_convert(directory, "f16", tmp_path / "theirs.gguf")
    llm = llama_cpp.Llama(model_path=str(theirs), vocab_only=True, verbose=False)
    lines = ["<|system|>\nYou answer briefly.<|end|>\n<|user|>\nWhat does str.split do?<|end|>\n<|assistant|>",
             "<|placeholder1|> and <tool> inside text<|endoftext|>"] + python_docs_text()[-4000:].split("\n")[:40]
    try:
        for tok in (load_tokenizer(directory), load_tokenizer(phi3_f32)):
            for line in lines:
                assert tok.encode(line) == llm.tokenize(line.encode(), add_bos=True, special=True), line
    finally:
        llm.close()


def _edited(directory, tmp_path, change):
    target = tmp_path / "phi3-edited"
    shutil.copytree(directory, target)
    config = json.loads((target / "config.json").read_text())
    change(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


def _factors(n):
    return [1.0] * n


@pytest.mark.parametrize("change,needle", [
    # transformers' Phi-3 runs "yarn" as LongRoPE, llama.cpp's as YaRN
    (lambda c: c["rope_parameters"].update(rope_type="yarn"), "'yarn'"),
    (lambda c: c["rope_parameters"].update(short_factor=_factors(31)), "short_factor has 31 values"),
    (lambda c: c["rope_parameters"].update(long_factor="1.0"), "long_factor"),
    # transformers scales cos/sin by this, llama.cpp by its own formula
    (lambda c: c["rope_parameters"].update(attention_factor=1.0), "attention factor"),
    (lambda c: c["rope_parameters"].update(factor=2.0), "attention factor"),
    # transformers' Phi-3 reads the top-level value (4096 when absent), llama.cpp the rope settings'
    (lambda c: c.pop("original_max_position_embeddings"), "original_max_position_embeddings is 64"),
    (lambda c: c.update(head_dim=32), "head_dim"),
    (lambda c: c["rope_parameters"].update(mscale=1.0), "mscale"),
    (lambda c: c.update(hidden_act="gelu"), "hidden_act"),
])
@pytest.mark.parametrize("command", ["convert", "perplexity"])
def test_configs_run_differently_are_refused(phi3, change, needle, command, tmp_path, capsys):
    directory = _edited(phi3[0], tmp_path, change)
    assert_refused_in_one_line(directory, command, needle, tmp_path, capsys)


def test_commands_run_on_a_quantized_file(phi3, tmp_path, capsys):
    """perplexity (both numerics), generate and drift on a Q4_K_M Phi-3."""
    directory = tmp_path / "phi3"
    shutil.copytree(phi3[0], directory)  # drift writes its files beside the model
    text = tmp_path / "text.txt"
    text.write_text(python_docs_text()[:60_000])
    q4 = tmp_path / "q4.gguf"
    our_command(["quantize", str(directory), "--type", "q4_k_m", "-o", str(q4)], capsys)
    for argv in (["perplexity", str(q4), "--text", str(text), "--ctx", "128", "--chunks", "2", "--json"],
                 ["perplexity", str(q4), "--text", str(text), "--ctx", "128", "--chunks", "2", "--json",
                  "--numerics", "ggml"],
                 ["generate", str(q4), "-p", "<|user|>\nHello<|end|>\n<|assistant|>", "-n", "8", "--seed", "1"],
                 ["drift", str(directory), "--types", "q4_k_m", "--text", str(text), "--ctx", "128", "--chunks", "2"]):
        capsys.readouterr()
        our_command(argv, capsys)
        out = capsys.readouterr().out
        assert out.strip(), argv
        if argv[0] == "perplexity":
            assert 1 < json.loads(out)["ppl"] < 1216 * 4
