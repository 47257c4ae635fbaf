"""What every architecture shares: HF -> GGUF tensor names and hyperparameter keys."""
import gguf
import numpy as np

from convkit.errors import ConvkitError
from convkit.hf_config import ConfigFields

REGISTRY = {}


def register(*hf_names):
    def wrap(cls):
        for name in hf_names:
            REGISTRY[name] = cls
        return cls
    return wrap


class Architecture:
    gguf_arch: gguf.MODEL_ARCH = None
    reads_prefix_space = False  # llama.cpp's llama converter copies tokenizer_config's add_prefix_space
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
        self.names = gguf.get_tensor_name_map(self.gguf_arch, self.n_layer)

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

    def expected_shape(self, gguf_name: str):
        """The numpy shape config.json implies, or None when not checked."""
        return None

    def transform(self, gguf_name: str, weight: np.ndarray) -> np.ndarray:
        return weight

    def transformed_shape(self, gguf_name: str, shape: tuple) -> tuple:
        """The shape after transform (architectures that transpose override this)."""
        return tuple(shape)

    def extra_tensors(self):
        """Tensors derived from the config, as (gguf name, function giving float32 values);
        written before the checkpoint's own, where llama.cpp's converter puts them."""
        return []

    # --- metadata --------------------------------------------------------------
    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        raise NotImplementedError
