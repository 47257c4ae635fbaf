"""A large synthetic Qwen3-MoE checkpoint (> 4 GiB of bf16), written tensor by tensor.

The tensor names are those transformers itself saves for Qwen3MoeForCausalLM (read from the
small qwen3moe fixture's header, so a layout change in transformers shows up here) and the
config is written by transformers' Qwen3MoeConfig. Values are seeded normal numbers made a
few MiB at a time, so writing the file never holds more than one slice in memory; the
checkpoint is cached in the test cache and reused while its key matches.
"""
import hashlib
import json
import shutil
import struct

import numpy as np

from family_fixtures import FAMILIES, family_checkpoint
from realdata import CACHE
from smollm2_fixture import smollm2_checkpoint

# 2 layers of 112 experts, each expert 3 x 1536 x 2048: 2.34 G parameters, 4.35 GiB as bf16.
# One layer's stacked expert tensor is 1.41 GB as float32, so a converter that gathers one
# (a list of experts plus their stack) cannot stay under 1.5 GB.
CONFIG = dict(FAMILIES["qwen3moe"][2], hidden_size=2048, num_hidden_layers=2, num_attention_heads=16,
              num_key_value_heads=4, head_dim=128, num_experts=112, num_experts_per_tok=8,
              moe_intermediate_size=1536, intermediate_size=6144)
SLICE_VALUES = 1 << 22  # values generated at a time (16 MiB as float32)


def _names_and_shapes(config) -> dict:
    """HF tensor name -> shape, by the small fixture's names with this config's sizes."""
    from safetensors import safe_open

    small, _ = family_checkpoint("qwen3moe")
    with safe_open(small / "model.safetensors", "np") as f:
        template = sorted(k for k in f.keys() if ".layers." not in k or ".layers.0." in k)
    h, ff, n_exp = config["hidden_size"], config["moe_intermediate_size"], config["num_experts"]
    hd = config["head_dim"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    by_suffix = {"embed_tokens.weight": (config["vocab_size"], h), "lm_head.weight": (config["vocab_size"], h),
                 "norm.weight": (h,), "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
                 "q_proj.weight": (q, h), "k_proj.weight": (kv, h), "v_proj.weight": (kv, h), "o_proj.weight": (h, q),
                 "q_norm.weight": (hd,), "k_norm.weight": (hd,), "mlp.gate.weight": (n_exp, h),
                 "gate_proj.weight": (ff, h), "up_proj.weight": (ff, h), "down_proj.weight": (h, ff)}

    def shape(name):
        return by_suffix[max((s for s in by_suffix if name.endswith(s)), key=len)]

    out = {}
    for name in template:
        for layer in range(config["num_hidden_layers"]) if ".layers.0." in name else [None]:
            named = name if layer is None else name.replace(".layers.0.", f".layers.{layer}.")
            if ".experts.0." not in named:
                if ".experts." not in named:
                    out[named] = shape(named)
                continue
            for e in range(n_exp):
                out[named.replace(".experts.0.", f".experts.{e}.")] = shape(named)
    return dict(sorted(out.items()))


def _write_tensor(f, index: int, shape) -> None:
    """Seeded values, as bf16 (the top half of each float32), a slice at a time; norms near 1."""
    rng = np.random.default_rng([7, index])
    count = int(np.prod(shape))
    for start in range(0, count, SLICE_VALUES):
        n = min(SLICE_VALUES, count - start)
        values = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
        if len(shape) == 1:
            values += np.float32(1.0)
        (values.view(np.uint32) >> 16).astype(np.uint16).tofile(f)


def key() -> str:
    import transformers

    text = json.dumps([CONFIG, transformers.__version__, SLICE_VALUES], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def large_moe_checkpoint():
    """The directory (cached): config.json, tokenizer files, model.safetensors in bf16."""
    import transformers

    target = CACHE / f"moe-large-{key()}"
    if (target / ".complete").exists():
        return target
    for stale in CACHE.glob("moe-large-*"):  # an older layout's 4 GiB is not kept
        shutil.rmtree(stale)
    part = target.with_name(target.name + ".part")
    part.mkdir(parents=True)
    config = transformers.Qwen3MoeConfig(**CONFIG)
    config.architectures = ["Qwen3MoeForCausalLM"]
    config.dtype = "bfloat16"
    config.to_json_file(part / "config.json")
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_checkpoint() / file, part / file)
    tensors = _names_and_shapes(CONFIG)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(part / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for index, shape in enumerate(tensors.values()):
            _write_tensor(f, index, shape)
    (part / ".complete").touch()
    part.rename(target)
    return target
