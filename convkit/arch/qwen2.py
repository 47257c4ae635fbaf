"""Qwen2: the llama layout plus q/k/v biases, NEOX rotary (no q/k permutation)."""
import gguf

from convkit.errors import ConvkitError

from .base import register
from .structure import Structure
from .llama import Llama


@register("Qwen2ForCausalLM")
class Qwen2(Llama):
    gguf_arch = gguf.MODEL_ARCH.QWEN2
    structure = Structure()
    qkv_bias_required = True
    reads_prefix_space = False
    writes_vocab_and_rope_dim = False
    # llama.cpp's qwen2 has no rope_freqs tensor, so Llama 3's scaling cannot be written for it
    rope_kinds = ("default", "linear", "yarn", "dynamic")

    slides = True
    window_layers_key = "max_window_layers"  # layers from this index on slide (transformers' Qwen2, Qwen3)

    def read_sliding_window(self, f):
        """Qwen2 slides only when use_sliding_window is set; then the layers layer_types names,
        or without it those from max_window_layers on (transformers' rule, its default 28)."""
        if not f.bool("use_sliding_window", False):
            return None
        window = super().read_sliding_window(f)
        if window is None:
            return None
        types = f.raw.get("layer_types")
        if types is None and self.window_layers_key:
            first = f.int(self.window_layers_key, lo=0, default=28)
            types = ["sliding_attention" if i >= first else "full_attention" for i in range(self.n_layer)]
        if types is not None:
            if len(types) != self.n_layer:
                raise ConvkitError(f"{self.path}: layer_types has {len(types)} entries for {self.n_layer} layers; "
                                   "fix config.json")
            self.swa_layers = tuple(t == "sliding_attention" for t in types)
        return window

    neutral_keys = {**Llama.neutral_keys, "use_sliding_window": (False, True)}

