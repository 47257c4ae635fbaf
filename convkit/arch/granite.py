"""Granite: llama's layout with four multipliers: of the embedding, of each residual
branch, of the attention scores (in place of 1/sqrt(head_dim)), and a divisor of the logits."""
import gguf

from convkit.errors import ConvkitError

from .base import register
from .llama import Llama
from .structure import Structure

# config.json key -> (ModelConfig field, GGUF key under the architecture, writer method)
MULTIPLIERS = {"embedding_multiplier": ("embedding_scale", "embedding_scale", "add_embedding_scale"),
               "residual_multiplier": ("residual_scale", "residual_scale", "add_residual_scale"),
               "attention_multiplier": ("attention_scale", "attention.scale", "add_attention_scale"),
               "logits_scaling": ("logit_scale", "logit_scale", "add_logit_scale")}


@register("GraniteForCausalLM")
class Granite(Llama):
    gguf_arch = gguf.MODEL_ARCH.GRANITE
    structure = Structure(rope_rows_permuted=True)
    neutral_keys = {k: v for k, v in Llama.neutral_keys.items() if k not in MULTIPLIERS}

    def read_hparams(self, f):
        super().read_hparams(f)
        # llama.cpp's granite converter drops head_dim: only hidden_size / heads can be written
        if self.head_dim_given and self.head_dim * self.n_head != self.hidden:
            raise ConvkitError(f"{self.path}: head_dim = {self.head_dim} is not hidden_size / num_attention_heads, "
                               "which llama.cpp's granite architecture requires")
        self.head_dim_given = False
        # as llama.cpp's converter: a multiplier that is absent or 0 is not written (and means none)
        self.multipliers = {key: f.float(key) for key in MULTIPLIERS if f.raw.get(key)}

    def scales(self):
        return {MULTIPLIERS[key][0]: value for key, value in self.multipliers.items()}

    @classmethod
    def gguf_scales(cls, key):
        return {field: key(name) for field, name, _ in MULTIPLIERS.values() if key(name) is not None}

    def write_hparams(self, w):
        super().write_hparams(w)
        for key, value in self.multipliers.items():
            getattr(w, MULTIPLIERS[key][2])(value)
