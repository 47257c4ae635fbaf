"""The families released since Llama 2, each converted, quantized and run exactly.

For every family of family_fixtures (a small checkpoint transformers itself made):
- convert: our GGUF equals llama.cpp's own converter's (pinned llama-cpp-python 0.3.36
  tree) on the same directory, every tensor byte for byte and every metadata key outside
  `general.*`, for f16, bf16 and q8_0; llama.cpp gives the same logits on both files;
- quantize: `convkit quantize --type q4_k_m`, from the directory and from llama.cpp's
  float32 file, gives the tensor types and bytes that
  llama_model_quantize gives on llama.cpp's converted float32 file;
- run: our float32 logits, from the directory and from our float32 GGUF, equal
  transformers' within 1e-4 on a batch of two 96-token prompts.
"""
import copy
import ctypes
import subprocess

import llama_cpp
import numpy as np
import pytest
import torch
from gguf import LlamaFileType

import gguf_lite
from convkit.cli import main
from convkit.runtime import load_model
from family_fixtures import FAMILIES, family_checkpoint
from realdata import llama_cpp_converter_command
from test_mixes import _quiet_llama

TOL = 1e-4
OUTTYPES = ("f16", "bf16", "q8_0")


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    directory, model = family_checkpoint(request.param)
    return request.param, directory, model


def peer_convert(directory, outtype, target):
    subprocess.run(llama_cpp_converter_command("smollm") + [str(directory), "--outtype", outtype,
                                                             "--outfile", str(target)],
                   check=True, capture_output=True)
    return target


def our_command(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--quiet"])
    assert exit_.value.code == 0, capsys.readouterr().err


def assert_same_gguf(ours, theirs):
    (meta, mine), (peer_meta, peer) = gguf_lite.read(ours), gguf_lite.read(theirs)
    assert list(mine) == list(peer)  # same tensors, in the same order
    for tensor, (qtype, shape, data) in peer.items():
        assert mine[tensor][:2] == (qtype, shape), tensor
        assert np.array_equal(mine[tensor][2], data), tensor
    drop = ("general.",)
    assert {k: v for k, v in meta.items() if not k.startswith(drop)} == \
        {k: v for k, v in peer_meta.items() if not k.startswith(drop)}
    return meta


def llama_quantize_file(src, dst, ftype):
    """llama_model_quantize, keeping the file it writes."""
    llama = _quiet_llama()  # one log callback for the whole process
    params = llama.llama_model_quantize_default_params()
    params.ftype, params.nthread = int(ftype), 2
    assert llama.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    return dst


def llama_cpp_logits(path, tokens):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[:len(tokens)])
    finally:
        llm.close()


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_convert_equals_llama_cpp_converter(family, outtype, tmp_path, capsys):
    name, directory, _ = family
    theirs = peer_convert(directory, outtype, tmp_path / "theirs.gguf")
    ours = tmp_path / "ours.gguf"
    our_command(["convert", str(directory), "--outtype", outtype, "-o", str(ours)], capsys)
    meta = assert_same_gguf(ours, theirs)
    assert meta["general.architecture"] == FAMILIES[name][3]
    if outtype == "f16":  # llama.cpp runs our file exactly as its own
        tokens = list(range(100, 196))
        assert np.array_equal(llama_cpp_logits(ours, tokens), llama_cpp_logits(theirs, tokens))


def test_q4_k_m_equals_llama_quantize(family, tmp_path, capsys):
    name, directory, _ = family
    theirs_f32 = peer_convert(directory, "f32", tmp_path / "theirs-f32.gguf")
    theirs = tmp_path / "theirs-q4_k_m.gguf"
    llama_quantize_file(theirs_f32, theirs, LlamaFileType.MOSTLY_Q4_K_M)
    (_, peer) = gguf_lite.read(theirs)
    for source in (directory, theirs_f32):  # from the checkpoint, and from the same file llama.cpp read
        ours = tmp_path / "ours-q4_k_m.gguf"
        our_command(["quantize", str(source), "--type", "q4_k_m", "-o", str(ours)], capsys)
        (_, mine) = gguf_lite.read(ours)
        assert {n: t[0] for n, t in mine.items()} == {n: t[0] for n, t in peer.items()}, source
        for tensor, (_, _, data) in peer.items():
            assert np.array_equal(mine[tensor][2], data), tensor


def test_runtime_equals_transformers(family, tmp_path, capsys):
    """From the directory and from our float32 GGUF (the structure read back from its metadata)."""
    name, directory, model = family
    ids = torch.randint(0, model.config.vocab_size, (2, 96), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(ids).logits
    assert (load_model(directory)(ids) - expected).abs().max().item() <= TOL
    target = tmp_path / "f32.gguf"
    our_command(["convert", str(directory), "--outtype", "f32", "-o", str(target)], capsys)
    assert (load_model(target)(ids) - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_transformers(family, side):
    """Two prompts of 96 and 60 tokens in one batch, padded on either side: transformers
    with the attention mask and generate's position ids (each token's position counts the
    tokens before it), ours with the same mask; every real token's logits equal."""
    _, directory, model = family
    ids = torch.randint(0, model.config.vocab_size, (2, 96), generator=torch.Generator().manual_seed(8))
    mask = torch.zeros(2, 96, dtype=torch.long)
    for row, length in enumerate((96, 60)):
        mask[row, 96 - length:] = 1 if side == "left" else 0
        mask[row, :length] = mask[row, :length] if side == "left" else 1
    with torch.no_grad():
        expected = model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    real = mask.bool()
    ours = load_model(directory)(ids, attention_mask=mask)
    assert (ours[real] - expected[real]).abs().max().item() <= TOL


@pytest.mark.parametrize("command", ["convert", "quantize", "perplexity"])
def test_unknown_architecture_lists_the_supported_ones(command, tmp_path, capsys):
    import json
    import shutil

    from convkit.arch import REGISTRY

    directory = tmp_path / "model"
    shutil.copytree(family_checkpoint("qwen3")[0], directory)
    config = json.loads((directory / "config.json").read_text())
    config["architectures"] = ["MadeUpForCausalLM"]
    (directory / "config.json").write_text(json.dumps(config))
    target = tmp_path / "out.gguf"
    argv = {"convert": ["convert", str(directory), "-o", str(target)],
            "quantize": ["quantize", str(directory), "--type", "q4_k_m", "-o", str(target)],
            "perplexity": ["perplexity", str(directory), "--text", str(directory / "config.json")]}[command]
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--quiet"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "MadeUpForCausalLM" in err
    for family in ("Qwen3ForCausalLM", "SmolLM3ForCausalLM", "Olmo2ForCausalLM", "GraniteForCausalLM"):
        assert family in err and family in REGISTRY
    assert not target.exists()


def _broken_experts(tmp_path, change):
    """A copy of the MoE fixture with its weights file rewritten by `change(tensors)`."""
    import shutil

    from safetensors.numpy import load_file, save_file

    directory = tmp_path / "moe"
    shutil.copytree(family_checkpoint("qwen3moe")[0], directory)
    tensors = load_file(directory / "model.safetensors")
    change(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


@pytest.mark.parametrize("change,needle", [
    (lambda t: t.pop("model.layers.1.mlp.experts.2.up_proj.weight"), "expert 2 is missing"),
    (lambda t: t.update({"model.layers.0.mlp.experts.3.down_proj.weight":
                         t["model.layers.0.mlp.experts.3.down_proj.weight"][:, :128].copy()}), "experts must match"),
])
@pytest.mark.parametrize("command", ["convert", "perplexity"])
def test_bad_experts_are_one_line(change, needle, command, tmp_path, capsys):
    directory = _broken_experts(tmp_path, change)
    assert_refused_in_one_line(directory, command, needle, tmp_path, capsys)


def assert_refused_in_one_line(directory, command, needle, tmp_path, capsys):
    """`convert` or `perplexity` on `directory`: exit 2, one line holding `needle`, nothing written."""
    target = tmp_path / "out.gguf"
    argv = {"convert": ["convert", str(directory), "-o", str(target)],
            "perplexity": ["perplexity", str(directory), "--text", str(directory / "config.json")]}[command]
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--quiet"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not target.exists()


# ------------------------------------------------------------------ sliding windows
# families whose window is shorter than the test prompts (Phi-3's fixture slides over its whole context)
SLIDING = [n for n, (_, _, kwargs, _) in FAMILIES.items() if (kwargs.get("sliding_window") or 96) < 96]


def _stepwise_logits(net, ids, prefix):
    """Logits of `ids` [1, T]: the first `prefix` positions at once, then one token at a time
    through the KV cache (as generate runs)."""
    cache = net.new_cache(1, ids.shape[1])
    out = [net(ids[:, :prefix], cache)]
    out += [net(ids[:, t:t + 1], cache) for t in range(prefix, ids.shape[1])]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("name", SLIDING)
def test_sliding_window_with_cache_equals_transformers(name):
    """Past the window, prompt and decoding steps alike (a prompt longer than the window,
    then steps; and a prompt shorter than it): local layers see only the last `window`."""
    directory, model = family_checkpoint(name)
    ids = torch.randint(0, model.config.vocab_size, (1, 96), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model(ids).logits
    net = load_model(directory)
    assert net.config.sliding_window < 96
    for prefix in (40, 8):
        assert (_stepwise_logits(net, ids, prefix) - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("family,extra", [
    ("Mistral", {}),  # every layer slides
    ("Qwen2", {"use_sliding_window": True, "max_window_layers": 1}),  # layers from index 1 on slide
])
def test_windows_beyond_them_equal_transformers(family, extra, tmp_path):
    """Mistral's and Qwen2's windows from config.json: a 96-token prompt over a 32-token
    window, at once and step by step through the cache."""
    import transformers

    torch.manual_seed(3)
    config_cls, model_cls = getattr(transformers, f"{family}Config"), getattr(transformers, f"{family}ForCausalLM")
    kwargs = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1,
                  tie_word_embeddings=False, **extra)
    import json

    model_cls(config_cls(**kwargs, sliding_window=32)).save_pretrained(tmp_path / "model")
    config_file = tmp_path / "model" / "config.json"  # as transformers 4 saved it: no layer_types
    config_file.write_text(json.dumps({k: v for k, v in json.loads(config_file.read_text()).items()
                                       if k != "layer_types"}))
    model = model_cls.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (2, 96), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(ids).logits
        unwindowed = model_cls(config_cls(**{**kwargs, "use_sliding_window": False}, sliding_window=None))
        unwindowed.load_state_dict(model.state_dict())
        far = (unwindowed.eval()(ids).logits - expected).abs().max().item()
    assert far > 100 * TOL  # the window changes the logits: the comparison below can fail
    net = load_model(tmp_path / "model")
    assert net.config.sliding_window == 32
    assert (net(ids) - expected).abs().max().item() <= TOL
    assert (_stepwise_logits(net, ids[:1], 40) - expected[:1]).abs().max().item() <= TOL


# ------------------------------------------------------------------ Gemma's sentencepiece families
GEMMA = [n for n in FAMILIES if FAMILIES[n][3].startswith("gemma")]


@pytest.mark.parametrize("ftype", ["q3_k_m", "q2_k"])
@pytest.mark.parametrize("name", GEMMA)
def test_gemma_low_bit_mixes_equal_llama_quantize(name, ftype, tmp_path, capsys):
    """The Q3_K_M and Q2_K mixes too (tied embedding, attn_v/ffn_down upgrades) on llama.cpp's f32 file."""
    directory, _ = family_checkpoint(name)
    theirs_f32 = peer_convert(directory, "f32", tmp_path / "theirs-f32.gguf")
    ftype_id = {"q3_k_m": LlamaFileType.MOSTLY_Q3_K_M, "q2_k": LlamaFileType.MOSTLY_Q2_K}[ftype]
    (_, peer) = gguf_lite.read(llama_quantize_file(theirs_f32, tmp_path / "theirs.gguf", ftype_id))
    ours = tmp_path / "ours.gguf"
    our_command(["quantize", str(theirs_f32), "--type", ftype, "-o", str(ours)], capsys)
    (_, mine) = gguf_lite.read(ours)
    assert {n: t[0] for n, t in mine.items()} == {n: t[0] for n, t in peer.items()}
    for tensor, (_, _, data) in peer.items():
        assert np.array_equal(mine[tensor][2], data), tensor


@pytest.mark.parametrize("name", GEMMA)
def test_gemma_commands_run_on_a_quantized_file(name, tmp_path, capsys):
    """perplexity (chunks longer than the window, both numerics), generate (past the window
    through the cache) and drift, on a Q4_K_M file of the family."""
    import json

    directory, _ = family_checkpoint(name)
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog near the river bank. " * 60)
    target = tmp_path / "q4_k_m.gguf"
    our_command(["quantize", str(directory), "--type", "q4_k_m", "-o", str(target)], capsys)
    capsys.readouterr()
    for numerics in ("fp", "ggml"):
        our_command(["perplexity", str(target), "--text", str(text), "--ctx", "128", "--numerics", numerics,
                     "--json"], capsys)
        result = json.loads(capsys.readouterr().out)
        assert np.isfinite(result["ppl"]) and result["ppl"] > 1, result
    our_command(["generate", str(target), "--prompt", "<start_of_turn>user\nThe fox", "--max-tokens", "48",
                 "--json"], capsys)
    assert json.loads(capsys.readouterr().out)["n_tokens"] == 48
    our_command(["drift", str(directory), "--types", "q8_0", "--text", str(text), "--ctx", "128",
                 "--cache", str(tmp_path / "drift"), "--json"], capsys)
    (row,) = json.loads(capsys.readouterr().out)["types"]
    assert row["type"] == "q8_0" and 0 <= row["kld"] < 0.01, row


def test_gemma3_transformers4_layout(tmp_path, capsys):
    """Gemma 3's config as transformers 4 wrote it (rope_theta, rope_scaling and
    rope_local_base_freq at the top level, sliding_window_pattern for layer_types): the same
    GGUF as llama.cpp's converter, and transformers' logits from the directory."""
    import json
    import shutil

    import transformers

    directory, model = family_checkpoint("gemma3")
    old = tmp_path / "gemma3-t4"
    shutil.copytree(directory, old)
    config = json.loads((old / "config.json").read_text())
    rope = config.pop("rope_parameters")
    for key in ("layer_types", "_sliding_window_pattern"):
        config.pop(key, None)
    full = dict(rope["full_attention"])
    config.update(rope_theta=full.pop("rope_theta"), rope_local_base_freq=rope["sliding_attention"]["rope_theta"],
                  rope_scaling=full, sliding_window_pattern=6)
    (old / "config.json").write_text(json.dumps(config))
    theirs = peer_convert(old, "f16", tmp_path / "theirs.gguf")
    ours = tmp_path / "ours.gguf"
    our_command(["convert", str(old), "--outtype", "f16", "-o", str(ours)], capsys)
    assert assert_same_gguf(ours, theirs)["gemma3.rope.scaling.factor"] == 8.0
    reloaded = transformers.Gemma3ForCausalLM.from_pretrained(old, dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 96), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = reloaded(ids).logits
        assert (model(ids).logits - expected).abs().max().item() == 0  # transformers reads both alike
    assert (load_model(old)(ids) - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("name,change,needle", [
    ("gemma2", {"query_pre_attn_scalar": 256}, "query_pre_attn_scalar"),
    ("gemma2", {"layer_types": ["full_attention"] * 4}, "layer_types"),
    ("gemma2", {"attn_logit_softcapping": None}, "attn_logit_softcapping"),
    ("gemma2", {"rope_parameters": {"rope_type": "default", "rope_theta": 20000.0}}, "rope_theta"),
    ("gemma2", {"hidden_activation": "gelu"}, "hidden_activation"),
    ("gemma2", {"tokenizer.model": None}, "tokenizer.model"),
    ("gemma3", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ("gemma3", {"sliding_window_pattern": 4}, "sliding_window_pattern"),
    ("gemma3", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                    "sliding_attention": {"rope_type": "linear", "factor": 2.0}}}, "sliding"),
    ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
])
def test_gemma_configs_llama_cpp_cannot_run_are_refused(name, change, needle, tmp_path, capsys):
    """What llama.cpp's Gemma files cannot express (its fixed window pattern and query scale,
    no RoPE base for Gemma 2, no attention cap for Gemma 3) or what the runtime does not do:
    one line, exit 2, nothing written."""
    import json
    import shutil

    directory = tmp_path / name
    shutil.copytree(family_checkpoint(name)[0], directory)
    config = json.loads((directory / "config.json").read_text())
    for key, value in change.items():
        if key == "tokenizer.model":
            (directory / key).unlink()
        elif value is None:
            config[key] = None
        else:
            config[key] = value
    (directory / "config.json").write_text(json.dumps(config))
    target = tmp_path / "out.gguf"
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(directory), "-o", str(target), "--quiet"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not target.exists()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", GEMMA)
def test_gemma_half_checkpoint_equals_llama_cpp_converter(name, dtype, tmp_path, capsys):
    """bfloat16 and float16 checkpoints: llama.cpp's converter widens bfloat16 to float32
    before it adds the norms' 1 but adds it to float16 as float16 (the sum rounded), and so
    must we."""
    import shutil

    directory, model = family_checkpoint(name)
    bf16 = tmp_path / f"{name}-{dtype}"
    copy.deepcopy(model).to(getattr(torch, dtype)).save_pretrained(bf16)  # the cached model stays float32
    for file in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(directory / file, bf16 / file)
    for outtype in ("f32", "bf16"):
        theirs = peer_convert(bf16, outtype, tmp_path / f"theirs-{outtype}.gguf")
        ours = tmp_path / f"ours-{outtype}.gguf"
        our_command(["convert", str(bf16), "--outtype", outtype, "-o", str(ours)], capsys)
        assert_same_gguf(ours, theirs)


@pytest.mark.parametrize("name", GEMMA)
def test_gemma_tokenizer_equals_llama_cpp(name, tmp_path, capsys):
    """The runtime's ids for the directory and for our GGUF equal llama.cpp's on our GGUF
    (turn markers parsed as special tokens, no space prefix, byte fallback)."""
    from convkit.runtime.tokenizer import load_tokenizer

    directory, _ = family_checkpoint(name)
    target = tmp_path / "f16.gguf"
    our_command(["convert", str(directory), "--outtype", "f16", "-o", str(target)], capsys)
    text = "<start_of_turn>user\nHello  world, x = 12345 café — 日本<end_of_turn>\n<start_of_turn>model\n"
    llm = llama_cpp.Llama(model_path=str(target), vocab_only=True, verbose=False)
    try:
        expected = llm.tokenize(text.encode(), add_bos=True, special=True)
    finally:
        llm.close()
    assert expected[:2] == [2, 4]  # <bos> <start_of_turn>
    assert load_tokenizer(directory).encode(text) == expected
    assert load_tokenizer(target).encode(text) == expected
