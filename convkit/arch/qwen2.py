"""Qwen2: the llama layout plus q/k/v biases, NEOX rotary (no q/k permutation)."""
import gguf

from .base import register
from .llama import Llama


@register("Qwen2ForCausalLM")
class Qwen2(Llama):
    gguf_arch = gguf.MODEL_ARCH.QWEN2

    def transform(self, name, weight):
        return weight
