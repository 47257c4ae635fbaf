"""Bad inputs: one clear line, exit 2, no output file, no huge allocation, no traceback."""
import json
import random
import resource
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from convkit.cli import main
from synthetic import llama_shapes

CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
          "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "vocab_size": 32,
          "tie_word_embeddings": True}  # no lm_head.weight below


def _tiny_model(directory):
    rng = np.random.default_rng(0)
    h, ff, v = 64, 128, 32
    shapes = llama_shapes(1, h, ff, v, n_head=4, n_kv=2, untied=False)
    save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()},
              str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(CONFIG))
    vocab = {f"t{i}": i for i in range(v)}
    (directory / "tokenizer.json").write_text(json.dumps(
        {"added_tokens": [], "pre_tokenizer": None, "model": {"type": "BPE", "vocab": vocab, "merges": [["t", "1"]]}}))
    return directory


def _fails_cleanly(capsys, args, out, needle):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convkit: error:") and "\n" not in err, err
    assert needle in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
    return err


def _header(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write(path, header, body, length=None):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + body)


@pytest.fixture
def model(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    return _tiny_model(d)


def test_tiny_model_converts(model, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", str(model), "--type", "q8_0", "-o", str(tmp_path / "ok.gguf"), "--quiet"])
    assert exit_.value.code == 0 and (tmp_path / "ok.gguf").stat().st_size > 0


def test_truncated(model, tmp_path, capsys):
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    _fails_cleanly(capsys, ["quantize", str(model), "--type", "q8_0", "-o", str(tmp_path / "o.gguf")], tmp_path / "o.gguf", "outside the file")


def test_header_longer_than_file(model, tmp_path, capsys):
    f = model / "model.safetensors"
    header, body = _header(f)
    _write(f, header, body, length=10**15)
    _fails_cleanly(capsys, ["quantize", str(model), "--type", "q8_0", "-o", str(tmp_path / "o.gguf")], tmp_path / "o.gguf", "absurd")
    _write(f, header, body, length=len(json.dumps(header)) + len(body) + 1)
    _fails_cleanly(capsys, ["quantize", str(model), "--type", "q8_0", "-o", str(tmp_path / "o.gguf")], tmp_path / "o.gguf", "larger than the file")


def test_header_not_json(model, tmp_path, capsys):
    f = model / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 5) + b"{nope" + b"\0" * 64)
    _fails_cleanly(capsys, ["quantize", str(model), "--type", "q8_0", "-o", str(tmp_path / "o.gguf")], tmp_path / "o.gguf", "not JSON")


@pytest.mark.parametrize("mutation,needle", [
    (lambda h: h["model.norm.weight"].update(data_offsets=list(h["model.embed_tokens.weight"]["data_offsets"][:1]) * 1 +
                                               [h["model.embed_tokens.weight"]["data_offsets"][0] + 256]), "overlap"),
    (lambda h: h["model.norm.weight"].update(data_offsets=[10**12, 10**12 + 256]), "outside the file"),
    (lambda h: h["model.norm.weight"].update(dtype="F8_E9M9"), "does not know"),
])
def test_bad_offsets_and_dtype(model, tmp_path, capsys, mutation, needle):
    f = model / "model.safetensors"
    header, body = _header(f)
    mutation(header)
    _write(f, header, body)
    _fails_cleanly(capsys, ["quantize", str(model), "--type", "q8_0", "-o", str(tmp_path / "o.gguf")], tmp_path / "o.gguf", needle)


def test_config_missing_key(model, tmp_path, capsys):
    cfg = dict(CONFIG)
    del cfg["rms_norm_eps"]
    (model / "config.json").write_text(json.dumps(cfg))
    _fails_cleanly(capsys, ["quantize", str(model), "--type", "q8_0", "-o", str(tmp_path / "o.gguf")], tmp_path / "o.gguf", "rms_norm_eps")


def test_shape_disagrees_with_config(model, tmp_path, capsys):
    (model / "config.json").write_text(json.dumps({**CONFIG, "intermediate_size": 96}))
    _fails_cleanly(capsys, ["quantize", str(model), "--type", "q8_0", "-o", str(tmp_path / "o.gguf")], tmp_path / "o.gguf", "disagree")


def test_unknown_architecture(model, tmp_path, capsys):
    (model / "config.json").write_text(json.dumps({**CONFIG, "architectures": ["FooForCausalLM"]}))
    err = _fails_cleanly(capsys, ["quantize", str(model), "--type", "q8_0", "-o", str(tmp_path / "o.gguf")], tmp_path / "o.gguf", "not supported")
    assert "LlamaForCausalLM" in err and "BertModel" in err


@pytest.mark.parametrize("patch,needle", [
    (lambda b: b"GGUX" + b[4:], "not a GGUF"),
    (lambda b: b[:4] + struct.pack("<I", 99) + b[8:], "version"),
    (lambda b: b[:8] + struct.pack("<Q", 2**60) + b[16:], "absurd tensor count"),
])
def test_bad_gguf(model, tmp_path, capsys, patch, needle):
    good = tmp_path / "good.gguf"
    with pytest.raises(SystemExit):
        main(["quantize", str(model), "--type", "f16", "-o", str(good), "--quiet"])
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(patch(good.read_bytes()))
    _fails_cleanly(capsys, ["quantize", str(bad), "--type", "q8_0", "-o", str(tmp_path / "o.gguf")], tmp_path / "o.gguf", needle)
    _fails_cleanly(capsys, ["inspect", str(bad)], tmp_path / "o.gguf", needle)


def test_refuses_to_overwrite_input(model, capsys):
    f = model / "model.safetensors"
    before = f.read_bytes()
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", str(model), "--type", "q8_0", "-o", str(f)])
    assert exit_.value.code == 2 and f.read_bytes() == before


def test_fuzz_mutated_headers(model, tmp_path, capsys):
    """Random byte flips in the safetensors and GGUF headers: success or one clean error."""
    rng = random.Random(1234)
    st = (model / "model.safetensors").read_bytes()
    good = tmp_path / "good.gguf"
    with pytest.raises(SystemExit):
        main(["quantize", str(model), "--type", "f16", "-o", str(good), "--quiet"])
    gg = good.read_bytes()
    (n,) = struct.unpack("<Q", st[:8])
    out = tmp_path / "fuzz.gguf"
    for i in range(40):
        if i % 2 == 0:
            data = bytearray(st)
            target_file, span = model / "model.safetensors", 8 + n
        else:
            data = bytearray(gg)
            target_file, span = tmp_path / "in.gguf", 600
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(span)] = rng.randrange(256)
        target_file.write_bytes(bytes(data))
        src = model if i % 2 == 0 else target_file
        with pytest.raises(SystemExit) as exit_:
            main(["quantize", str(src), "--type", "q8_0", "-o", str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code in (0, 2), err
        if exit_.value.code == 2:
            assert err.startswith("convkit: error:") and "\n" not in err, err
            assert not out.exists()
        out.unlink(missing_ok=True)


def test_untied_config_without_lm_head(model, tmp_path, capsys):
    """A config that does not tie embeddings needs lm_head.weight: without it llama.cpp would
    silently use token_embd as the output (a different model), so converting it is an error."""
    (model / "config.json").write_text(json.dumps({**CONFIG, "tie_word_embeddings": False}))
    _fails_cleanly(capsys, ["quantize", str(model), "--type", "q8_0", "-o", str(tmp_path / "o.gguf")],
                   tmp_path / "o.gguf", "output.weight")


def test_unexpected_tensor_is_not_dropped(model, tmp_path, capsys):
    f = model / "model.safetensors"
    header, body = _header(f)
    header["model.layers.0.self_attn.q_norm.weight"] = header.pop("model.norm.weight")
    _write(f, header, body)
    _fails_cleanly(capsys, ["quantize", str(model), "--type", "q8_0", "-o", str(tmp_path / "o.gguf")],
                   tmp_path / "o.gguf", "q_norm")
