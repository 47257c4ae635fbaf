"""A GGUF's metadata checked against its own tensors, before any reader acts on it.

The layout (gguf_check) says the bytes are where the header says; this says the header
is self-consistent: hyperparameters of the right type and range, tensors of the shapes
those hyperparameters imply for the architecture (tensor_shapes, the converter's table),
a layer count no larger than the layers present, tokenizer ids inside the vocabulary.
Limits come from the file itself, so no value in it can make a reader loop or allocate
beyond what the file holds.
"""
import math
import re
from pathlib import Path

from convkit.errors import ConvkitError
from convkit.gguf_check import Layout
from convkit.tensor_shapes import check_tensors, expected_tensors

_INT_TYPES = {0, 1, 2, 3, 4, 5, 10, 11}
_FLOAT_TYPES = {6, 12}
_STRING = 8
MAX_DIM = 1 << 31
TOKEN_TYPES = range(0, 7)  # llama.cpp's token attributes: undefined .. byte
_LAYER = re.compile(r"blk\.(\d+)\.")


class Meta:
    def __init__(self, layout: Layout, path: Path):
        self.layout, self.path = layout, path

    def fail(self, key, problem):
        raise ConvkitError(f"{self.path}: metadata {key} {problem}; the file is corrupt or was written wrongly")

    def has(self, key):
        return key in self.layout.fields

    def int(self, key, default=None, low=1, high=MAX_DIM):
        if key not in self.layout.fields:
            if default is None:
                raise ConvkitError(f"{self.path}: metadata {key} is missing; the file is incomplete")
            return default
        value, vtype = self.layout.fields[key], self.layout.types[key]
        if vtype not in _INT_TYPES:
            self.fail(key, f"is not an integer ({value!r})"[:200])
        if not low <= value <= high:
            self.fail(key, f"= {value} is outside {low}..{high}")
        return value

    def float(self, key, default=None, low=0.0, high=math.inf):
        if key not in self.layout.fields:
            if default is None:
                raise ConvkitError(f"{self.path}: metadata {key} is missing; the file is incomplete")
            return default
        value, vtype = self.layout.fields[key], self.layout.types[key]
        if vtype not in _FLOAT_TYPES | _INT_TYPES:
            self.fail(key, f"is not a number ({value!r})"[:200])
        if not (math.isfinite(value) and low < value < high):
            self.fail(key, f"= {value} is outside the open range ({low}, {high})")
        return value

    def string(self, key, default=None):
        if key not in self.layout.fields:
            return default
        if self.layout.types[key] != _STRING:
            self.fail(key, "is not a string")
        return self.layout.fields[key]

    def array(self, key, element_types):
        if key not in self.layout.fields:
            return None
        vtype = self.layout.types[key]
        if not (isinstance(vtype, tuple) and vtype[1] in element_types):
            self.fail(key, "is not an array of the expected type")
        return self.layout.fields[key]


def numpy_shape(t) -> tuple:
    return tuple(reversed(t.shape))


def rope_and_rms(arch: str) -> bool:
    """Whether the architecture's module describes rotary positions and RMSNorm."""
    from convkit.arch import GGUF_REGISTRY

    structure = GGUF_REGISTRY[arch].structure
    return structure is not None and structure.positions == "rope" and structure.norm == "rms"


def hparams(meta: Meta, arch: str, shapes: dict) -> dict:
    """The hyperparameters the tensor table needs, read and range-checked."""
    k = f"{arch}."
    hidden = meta.int(k + "embedding_length")
    n_head = meta.int(k + "attention.head_count")
    n_head_kv = meta.int(k + "attention.head_count_kv", n_head)
    if n_head % n_head_kv:
        meta.fail(k + "attention.head_count_kv", f"= {n_head_kv} does not divide head_count {n_head}")
    if not meta.has(k + "attention.key_length") and hidden % n_head:
        meta.fail(k + "attention.head_count", f"= {n_head} does not divide embedding_length {hidden}")
    head_dim = meta.int(k + "attention.key_length", hidden // n_head)
    if rope_and_rms(arch):
        if head_dim % 2:
            meta.fail(k + "attention.key_length", f"= {head_dim} is odd; rotary positions need pairs")
        rope_dim = meta.int(k + "rope.dimension_count", head_dim, high=head_dim)
        meta.float(k + "rope.freq_base", 10000.0)
        meta.float(k + "attention.layer_norm_rms_epsilon", high=1.0)
    else:
        meta.float(k + "attention.layer_norm_epsilon", high=1.0)
    if meta.string(k + "rope.scaling.type", "none") == "linear":
        meta.float(k + "rope.scaling.factor")
    embd = shapes.get("token_embd.weight")
    if embd is None or len(embd) != 2:
        raise ConvkitError(f"{meta.path}: tensor token_embd.weight is missing or not 2-D; the file is incomplete")
    hp = {"n_layer": meta.int(k + "block_count"), "hidden": hidden, "n_head": n_head, "n_head_kv": n_head_kv,
          "head_dim": head_dim, "ff": meta.int(k + "feed_forward_length"), "vocab": embd[0],
          "n_ctx": meta.int(k + "context_length"), "tied": True}
    if rope_and_rms(arch):
        hp["rope_dim"] = rope_dim
    if meta.has(k + "expert_count"):
        hp["n_expert"] = meta.int(k + "expert_count")
        hp["ff_exp"] = meta.int(k + "expert_feed_forward_length", hp["ff"])  # llama's experts: feed_forward_length
        meta.int(k + "expert_used_count", high=hp["n_expert"])
    return hp


def check_layers(meta: Meta, arch: str, shapes: dict) -> None:
    """block_count within the layers present (a huge count would make every reader loop)."""
    key = f"{arch}.block_count"
    if not meta.has(key):
        return
    layers = {int(m.group(1)) for m in map(_LAYER.match, shapes) if m}
    n = meta.int(key, low=0)
    if n > len(layers):
        meta.fail(key, f"= {n} but the file holds tensors of {len(layers)} layers")


def check_tokenizer(meta: Meta, vocab_rows: int | None) -> None:
    """Token lists of one length, ids inside the vocabulary, merges of two parts."""
    tokens = meta.array("tokenizer.ggml.tokens", {_STRING})
    n = len(tokens) if tokens is not None else vocab_rows
    if tokens is not None and vocab_rows is not None and len(tokens) != vocab_rows:
        meta.fail("tokenizer.ggml.tokens", f"holds {len(tokens)} tokens but token_embd.weight has {vocab_rows} rows")
    for key, types in (("tokenizer.ggml.token_type", _INT_TYPES), ("tokenizer.ggml.scores", _FLOAT_TYPES)):
        values = meta.array(key, types)
        if values is not None and tokens is not None and len(values) != len(tokens):
            meta.fail(key, f"holds {len(values)} entries for {len(tokens)} tokens")
        if key.endswith("token_type") and values is not None and not all(v in TOKEN_TYPES for v in values):
            meta.fail(key, "holds a token type outside 0..6")
    merges = meta.array("tokenizer.ggml.merges", {_STRING})
    if merges is not None and not all(m.find(" ", 1) > 0 for m in merges):
        bad = next(m for m in merges if m.find(" ", 1) <= 0)
        meta.fail("tokenizer.ggml.merges", f"holds {bad[:40]!r}, not two tokens separated by a space")
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
        meta.string(key)
    for key in meta.layout.fields:
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
            meta.int(key, low=0, high=(n - 1) if n else MAX_DIM)


def check_model(layout: Layout, path) -> str:
    """Check the metadata against the tensors; returns the architecture name."""
    meta = Meta(layout, Path(path))
    arch = meta.string("general.architecture")
    if not arch:
        raise ConvkitError(f"{path}: GGUF without general.architecture; the file is incomplete")
    shapes = {t.name: numpy_shape(t) for t in layout.tensors}
    check_layers(meta, arch, shapes)
    embd = shapes.get("token_embd.weight")
    check_tokenizer(meta, embd[0] if embd is not None and len(embd) == 2 else None)
    if expected_tensors(arch, {"n_layer": 0, "hidden": 1, "n_head": 1, "n_head_kv": 1, "head_dim": 2,
                               "ff": 1, "vocab": 1, "n_ctx": 1}) is not None:
        hp = hparams(meta, arch, shapes)
        check_tensors(arch, hp, shapes, lambda name: path)
    return arch
