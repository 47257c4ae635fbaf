"""What every architecture shares: HF -> GGUF tensor names and hyperparameter keys."""
import gguf
import numpy as np

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

    def expected_shape(self, gguf_name: str):
        """The numpy shape config.json implies, or None when not checked."""
        return None

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
