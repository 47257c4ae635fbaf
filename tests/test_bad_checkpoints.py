"""Broken inputs to `convkit quantize`: one clear line, exit 2, no traceback, no output file."""
import json
import random
import struct
import subprocess
import sys

import numpy as np
import pytest

from convkit.cli import main

CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
          "num_key_value_heads": 2, "num_hidden_layers": 1, "intermediate_size": 128, "vocab_size": 32,
          "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}


def _tensors():
    h, ff, v, kv = 64, 128, 32, 32
    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h),
              "model.layers.0.input_layernorm.weight": (h,),
              "model.layers.0.post_attention_layernorm.weight": (h,),
              "model.layers.0.self_attn.q_proj.weight": (h, h), "model.layers.0.self_attn.k_proj.weight": (kv, h),
              "model.layers.0.self_attn.v_proj.weight": (kv, h), "model.layers.0.self_attn.o_proj.weight": (h, h),
              "model.layers.0.mlp.gate_proj.weight": (ff, h), "model.layers.0.mlp.up_proj.weight": (ff, h),
              "model.layers.0.mlp.down_proj.weight": (h, ff)}
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in sorted(shapes.items())}


def safetensors_bytes(tensors, edit_header=None, header_length=None) -> bytes:
    """A safetensors file written by hand so its header can be broken on purpose."""
    header, blobs, offset = {}, [], 0
    for name, value in tensors.items():
        data = value.tobytes()
        header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if edit_header:
        edit_header(header)
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    n = len(raw) if header_length is None else header_length
    return struct.pack("<Q", n) + raw + b"".join(blobs)


def make_checkpoint(directory, config=CONFIG, **kwargs):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors").write_bytes(safetensors_bytes(_tensors(), **kwargs))
    return directory


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "convkit", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def assert_clean_failure(proc, out, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(out.name) or p.suffix == ".tmp"]


def _set(name, key, value):
    def edit(header):
        header[name][key] = value
    return edit


EMB, NORM = "model.embed_tokens.weight", "model.norm.weight"

CASES = {
    "header-not-json": (dict(edit_header=lambda h: None), "not JSON"),
    "unknown-dtype": (dict(edit_header=_set(NORM, "dtype", "F8_E9M9")), "dtype"),
    "out-of-range": (dict(edit_header=_set(NORM, "data_offsets", [0, 10 ** 9])), "outside"),
    "overlap": (dict(edit_header=_set(NORM, "data_offsets", [0, 256])), "overlap"),
    "span-mismatch": (dict(edit_header=_set(NORM, "shape", [65])), "bytes"),
    "header-longer-than-file": (dict(header_length=1 << 40), "header length"),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("good") / "tiny")


def test_pristine_checkpoint_plans(good):
    proc = run_cli("quantize", good, "--type", "q8_0", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert len(plan["tensors"]) == 12


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_safetensors_header(tmp_path, case):
    kwargs, word = CASES[case]
    ckpt = make_checkpoint(tmp_path / "m", **kwargs)
    if case == "header-not-json":
        raw = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(raw[:8] + b"{not json" + raw[17:])
    out = tmp_path / "out.gguf"
    assert_clean_failure(run_cli("quantize", ckpt, "--type", "q8_0", "-o", out), out, word, "model.safetensors")


def test_truncated_safetensors(tmp_path, good):
    ckpt = make_checkpoint(tmp_path / "m")
    raw = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(raw[: len(raw) - 1000])
    out = tmp_path / "out.gguf"
    assert_clean_failure(run_cli("quantize", ckpt, "--type", "q8_0", "-o", out), out, "model.safetensors")


def test_config_missing_key(tmp_path):
    config = {k: v for k, v in CONFIG.items() if k != "hidden_size"}
    ckpt = make_checkpoint(tmp_path / "m", config=config)
    out = tmp_path / "out.gguf"
    assert_clean_failure(run_cli("quantize", ckpt, "--type", "q8_0", "-o", out), out, "hidden_size", "config.json")


def test_shape_disagrees_with_config(tmp_path):
    ckpt = make_checkpoint(tmp_path / "m", config=dict(CONFIG, intermediate_size=96))
    out = tmp_path / "out.gguf"
    assert_clean_failure(run_cli("quantize", ckpt, "--type", "q8_0", "-o", out), out, "config.json", "shape")


def test_unknown_architecture_lists_supported(tmp_path):
    ckpt = make_checkpoint(tmp_path / "m", config=dict(CONFIG, architectures=["FancyForCausalLM"]))
    out = tmp_path / "out.gguf"
    assert_clean_failure(run_cli("quantize", ckpt, "--type", "q8_0", "-o", out), out,
                         "FancyForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM")


def _gguf_header(magic=b"GGUF", version=3, n_tensors=0, n_kv=0):
    return struct.pack("<4sIQQ", magic, version, n_tensors, n_kv) + b"\0" * 64


@pytest.mark.parametrize("header,word", [
    (_gguf_header(magic=b"GGUX"), "magic"),
    (_gguf_header(version=99), "version"),
    (_gguf_header(n_tensors=1 << 60), "tensor count"),
])
def test_broken_gguf(tmp_path, header, word):
    src = tmp_path / "broken.gguf"
    src.write_bytes(header)
    out = tmp_path / "out.gguf"
    assert_clean_failure(run_cli("quantize", src, "--type", "q4_0", "-o", out), out, word, "broken.gguf")


def test_refuses_to_overwrite_input(tmp_path, good):
    out = good / "model.safetensors"
    before = out.read_bytes()
    proc = run_cli("quantize", good, "--type", "q8_0", "-o", out)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert out.read_bytes() == before


def test_fuzzed_headers_fail_cleanly(tmp_path, capsys):
    """Random byte flips in the header: either a clean error (exit 2, no file) or a clean plan."""
    raw = safetensors_bytes(_tensors())
    (n,) = struct.unpack("<Q", raw[:8])
    rng = random.Random(4)
    ckpt = make_checkpoint(tmp_path / "m")
    for i in range(60):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(0, 8 + n)] = rng.randrange(256)
        (ckpt / "model.safetensors").write_bytes(bytes(data))
        with pytest.raises(SystemExit) as exit_:
            main(["quantize", str(ckpt), "--type", "q8_0", "--dry-run", "--json"])
        err = capsys.readouterr().err
        assert exit_.value.code in (0, 2), (i, err)
        if exit_.value.code == 2:
            assert len(err.strip().splitlines()) == 1, (i, err)
