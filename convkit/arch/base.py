"""What every architecture shares: HF -> GGUF tensor names and hyperparameter keys."""
import functools
import re

import gguf
import numpy as np

from convkit import tensor_shapes
from convkit.errors import ConvkitError
from convkit.hf_config import ConfigFields

from .structure import Structure

REGISTRY = {}       # HF architectures name -> class
GGUF_REGISTRY = {}  # GGUF general.architecture -> class (the first registered for it)
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|layer)\.(\d+)\.")  # HF names of per-layer tensors
EXPERT_INDEX = re.compile(r"\.experts\.(\d+)\.")  # one expert's matrix; GGUF stacks them into one tensor


def register(*hf_names):
    def wrap(cls):
        for name in hf_names:
            REGISTRY[name] = cls
        if cls.gguf_arch is not None:
            GGUF_REGISTRY.setdefault(gguf.MODEL_ARCH_NAMES[cls.gguf_arch], cls)
        return cls
    return wrap


def shifted(ckpt, hf: str, shift: float) -> np.ndarray:
    """values + shift as float32, as llama.cpp's converter adds it: to the tensor as it
    loads it, float16 kept as float16 (the sum rounded to float16), anything else widened to
    float32 first."""
    if ckpt.tensors[hf].dtype == "F16":
        import torch

        return (torch.from_numpy(ckpt.read_raw(hf).copy()) + shift).float().numpy()
    return ckpt.read(hf) + np.float32(shift)


class Architecture:
    gguf_arch: gguf.MODEL_ARCH = None
    structure: Structure | None = None  # how the runtime builds the decoder; None: the runtime does not run it
    tensor_table: str | None = None  # which table of convkit/tensor_shapes.py checks its tensors
    qkv_bias_required = False        # (the "decoder" table) q/k/v biases always present, as qwen2's
    reads_prefix_space = False  # llama.cpp's llama converter copies tokenizer_config's add_prefix_space
    sentencepiece_vocab = None  # "first" / "required": tokenizer.model before / instead of tokenizer.json
    skip_suffixes = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attn.bias", "position_ids")

    def __init__(self, config: dict, path="config.json", hf_name=None):
        """Read every hyperparameter from config.json (already merged with any text_config)."""
        self.config, self.path = config, path
        self.hf_name = hf_name or type(self).__name__
        self.name = gguf.MODEL_ARCH_NAMES[self.gguf_arch]
        fields = ConfigFields(config, path)
        self.n_layer = fields.int("num_hidden_layers", "n_layer")
        self.read_hparams(fields)
        self.bos_token_id = fields.token_id("bos_token_id")
        self.eos_token_ids = fields.token_ids("eos_token_id")

    @functools.cached_property
    def names(self) -> gguf.TensorNameMap:
        """HF -> GGUF names; built once the layer count is known to fit the checkpoint."""
        return gguf.get_tensor_name_map(self.gguf_arch, self.n_layer)

    def read_hparams(self, fields: ConfigFields) -> None:
        """Set the architecture's hyperparameters from config.json, checking each."""
        raise NotImplementedError

    # --- tensors ---------------------------------------------------------------
    def gguf_name(self, hf_name: str):
        """The GGUF name, or None for tensors the converter drops."""
        if hf_name.endswith(self.skip_suffixes):
            return None
        name = self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConvkitError(f"{self.path}: tensor {hf_name!r} has no GGUF name for {self.name}; "
                               "the checkpoint does not match its config's architecture")
        return name

    def shape_hparams(self) -> dict | None:
        """What convkit.tensor_shapes needs (n_layer, hidden, n_head, n_head_kv, head_dim, ff,
        vocab, n_ctx, tied), or None for an architecture whose tensors are not checked."""
        return None

    n_expert = 0  # experts per MoE layer; their matrices are stacked into ffn_*_exps

    def map_checkpoint(self, ckpt) -> dict:
        """GGUF name -> HF name for every tensor of `ckpt` the converter keeps (for stacked
        experts, the tuple of one HF name per expert), after checking the checkpoint against
        the architecture: each required tensor present with the shape config.json implies,
        nothing unknown, no two tensors under one name, every expert present and alike."""
        layers = {int(m.group(1)) for n in ckpt.tensors if (m := LAYER_INDEX.search(n))}
        if self.n_layer > len(layers):
            raise ConvkitError(f"{self.path}: {self.n_layer} layers, but the checkpoint holds tensors of "
                               f"{len(layers)}; config.json and the weights disagree")
        names, shapes, files = {}, {}, {}
        for key, members in self._source_tensors(ckpt).items():
            entry = ckpt.tensors[members[0]]
            name = self.gguf_name(key)
            if name is None:
                continue
            if name in names:
                raise ConvkitError(f"{entry.file}: tensors {names[name]!r} and {key!r} both become {name}; "
                                   "the checkpoint does not match its config's architecture")
            names[name], files[name] = (members[0] if key == members[0] else members), entry.file
            shape = self.source_shape(ckpt, names[name])
            shapes[name] = self.transformed_shape(name, shape)
        hp = self.shape_hparams()
        if hp is not None:
            tensor_shapes.check_tensors(self.name, hp, shapes, lambda n: files.get(n, ckpt.directory))
        return names

    def _source_tensors(self, ckpt) -> dict:
        """HF name -> (itself,), and each experts group's common name -> its members by
        expert index (checked: every expert 0..n_expert-1 present, all of one shape and dtype)."""
        out = {}
        for hf_name in ckpt.tensors:
            m = EXPERT_INDEX.search(hf_name) if self.n_expert else None
            if m is None:
                out[hf_name] = hf_name
                continue
            group = hf_name[:m.start()] + ".experts." + hf_name[m.end():]
            out.setdefault(group, {})[int(m.group(1))] = hf_name
        for key, members in out.items():
            if isinstance(members, str):
                out[key] = (members,)
                continue
            missing = sorted(set(range(self.n_expert)) - set(members))
            extra = sorted(set(members) - set(range(self.n_expert)))
            some = ckpt.tensors[next(iter(members.values()))]
            if missing or extra:
                which = f"expert {missing[0]} is missing" if missing else f"expert {extra[0]} is beyond {self.n_expert}"
                raise ConvkitError(f"{some.file}: {key}: {which} (config.json gives {self.n_expert} experts); "
                                   "the checkpoint is incomplete or does not match its config")
            ordered = tuple(members[i] for i in range(self.n_expert))
            for hf_name in ordered:
                entry = ckpt.tensors[hf_name]
                if (entry.shape, entry.dtype) != (some.shape, some.dtype):
                    raise ConvkitError(f"{entry.file}: tensor {hf_name!r} is {entry.dtype} {list(entry.shape)}, "
                                       f"other experts are {some.dtype} {list(some.shape)}; the experts must match")
            out[key] = ordered
        return out

    @staticmethod
    def source_shape(ckpt, hf) -> tuple:
        """The shape of what `read_source` gives (experts stacked on a new first axis)."""
        if isinstance(hf, tuple):
            return (len(hf),) + tuple(ckpt.tensors[hf[0]].shape)
        return tuple(ckpt.tensors[hf].shape)

    def read_source(self, ckpt, hf, raw=False) -> np.ndarray:
        """A tensor as float32 with the converter's value shift (or as stored, with raw),
        experts stacked: one layer's experts of one kind at a time, never the whole model."""
        read = ckpt.read_raw if raw else ckpt.read
        if isinstance(hf, tuple):
            return np.stack([read(n) for n in hf])
        shift = 0.0 if raw else self.norm_shift(hf)
        if shift:
            return shifted(ckpt, hf, shift)
        return read(hf)

    def norm_shift(self, hf_name: str) -> float:
        """What the converter adds to a tensor's values (Gemma's RMSNorm scales by 1 + w, and
        the GGUF stores 1 + w). The runtime reading an HF checkpoint adds it too."""
        return 0.0

    def transform(self, gguf_name: str, weight: np.ndarray) -> np.ndarray:
        return weight

    def transposes(self, gguf_name: str) -> bool:
        """Whether the checkpoint stores this matrix transposed (gpt2's Conv1D)."""
        return False

    def transformed_shape(self, gguf_name: str, shape: tuple) -> tuple:
        """The shape after transform."""
        return tuple(reversed(shape)) if self.transposes(gguf_name) else tuple(shape)

    def extra_tensors(self):
        """Tensors derived from the config, as (gguf name, function giving float32 values);
        written before the checkpoint's own, where llama.cpp's converter puts them."""
        return []

    # --- runtime ----------------------------------------------------------------
    def runtime_hparams(self) -> dict:
        """The runtime's ModelConfig fields, from config.json (see convkit/runtime/model.py)."""
        rope = getattr(self, "rope", None)
        return dict(arch=self.name, structure=self.structure, vocab_size=self.vocab, hidden_size=self.hidden,
                    n_layers=self.n_layer, n_heads=self.n_head, n_kv_heads=self.n_head_kv, head_dim=self.head_dim,
                    ffn_size=self.ff, max_positions=self.context, norm_eps=self.norm_eps,
                    rope_theta=rope.theta if rope else 10000.0, rope_scaling=rope.as_hf() if rope else None,
                    tie_embeddings=self.tie_embeddings, sliding_window=getattr(self, "sliding_window", None),
                    swa_layers=getattr(self, "swa_layers", None),
                    bos_token_id=self.bos_token_id, eos_token_ids=self.eos_token_ids, **self.scales())

    def scales(self) -> dict:
        """Multipliers and other hyperparameters beyond the usual ones (Granite's, Gemma's), as
        ModelConfig fields."""
        return {}

    @classmethod
    def gguf_scales(cls, key) -> dict:
        """The same from a GGUF's metadata; `key(name, default)` reads `{arch}.name`."""
        return {}

    # --- metadata --------------------------------------------------------------
    @classmethod
    def write_vocab(cls, w, directory, config: dict) -> None:
        """The tokenizer's GGUF keys from the checkpoint's tokenizer files (a class method:
        the runtime's tokenizer reads an HF directory's vocabulary the same way)."""
        from convkit.gguf_vocab import write_vocab

        write_vocab(w, directory, config, reads_prefix_space=cls.reads_prefix_space,
                    sentencepiece=cls.sentencepiece_vocab)
        cls.write_vocab_extras(w, directory)

    @classmethod
    def write_vocab_extras(cls, w: gguf.GGUFWriter, directory) -> None:
        """Tokenizer keys the architecture's converter writes beside the vocabulary."""

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        raise NotImplementedError
