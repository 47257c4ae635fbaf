"""Qwen2: the llama layout plus q/k/v biases, NEOX rotary (no q/k permutation)."""
import gguf

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

    def read_sliding_window(self, f):
        """Qwen2 slides only when use_sliding_window is set (then read as Mistral's)."""
        if not f.bool("use_sliding_window", False):
            return None
        return super().read_sliding_window(f)

    neutral_keys = {**Llama.neutral_keys, "use_sliding_window": (False, True)}

