"""What every architecture shares: HF -> GGUF tensor names and hyperparameter keys."""
import gguf
import numpy as np

from convkit import tensor_shapes
from convkit.checkpoint import require
from convkit.errors import ConvkitError

REGISTRY = {}


def register(*hf_names):
    def wrap(cls):
        for name in hf_names:
            REGISTRY[name] = cls
        return cls
    return wrap


class Architecture:
    gguf_arch: gguf.MODEL_ARCH = None
    skip_suffixes = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attn.bias", "position_ids")

    def __init__(self, config: dict, path="config.json"):
        self.config, self.path = config, path
        self.name = gguf.MODEL_ARCH_NAMES[self.gguf_arch]
        self.n_layer = int(self.hp("num_hidden_layers", "n_layer"))
        self.names = gguf.get_tensor_name_map(self.gguf_arch, self.n_layer)

    def hp(self, *keys):
        for key in keys:
            if key in self.config:
                return self.config[key]
        return require(self.config, keys[0], self.path)

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

    def expected_shape(self, gguf_name: str):
        """The numpy shape config.json implies, or None when not checked."""
        table = self._table()
        return None if table is None or gguf_name not in table else table[gguf_name][0]

    def required_tensors(self) -> list:
        """GGUF names of the tensors a checkpoint of this architecture must hold."""
        return [name for name, (_, required) in (self._table() or {}).items() if required]

    def _table(self):
        hp = self.shape_hparams()
        return None if hp is None else tensor_shapes.expected_tensors(self.name, hp)

    def map_checkpoint(self, ckpt) -> dict:
        """GGUF name -> HF name for every tensor of `ckpt` the converter keeps, after checking
        the checkpoint against the architecture: each required tensor present with the shape
        config.json implies, nothing unknown, no two tensors under one name."""
        names, shapes, files = {}, {}, {}
        for hf_name, entry in ckpt.tensors.items():
            name = self.gguf_name(hf_name)
            if name is None:
                continue
            if name in names:
                raise ConvkitError(f"{entry.file}: tensors {names[name]!r} and {hf_name!r} both become {name}; "
                                   "the checkpoint does not match its config's architecture")
            names[name], files[name] = hf_name, entry.file
            shapes[name] = self.transformed_shape(name, entry.shape)
        try:
            hp = self.shape_hparams()
        except (TypeError, ValueError, OverflowError) as exc:  # until config.json is read by a typed schema
            raise ConvkitError(f"{self.path}: a hyperparameter has the wrong type or value ({exc})") from None
        if hp is not None:
            tensor_shapes.check_tensors(self.name, hp, shapes, lambda n: files.get(n, ckpt.directory))
        return names

    def transform(self, gguf_name: str, weight: np.ndarray) -> np.ndarray:
        return weight

    def transformed_shape(self, gguf_name: str, shape: tuple) -> tuple:
        """The shape after transform (architectures that transpose override this)."""
        return tuple(shape)

    def extra_tensors(self, gguf_names):
        """Tensors derived from the config (none by default)."""
        return []

    # --- metadata --------------------------------------------------------------
    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        raise NotImplementedError
