"""Qwen2: the llama layout plus q/k/v biases, NEOX rotary (no q/k permutation)."""
import gguf

from .base import register
from .llama import Llama


@register("Qwen2ForCausalLM")
class Qwen2(Llama):
    gguf_arch = gguf.MODEL_ARCH.QWEN2

    def expected_shape(self, name):
        if name.endswith(".bias"):
            kind = name.split(".")[-2]
            q, kv = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
            return {"attn_q": (q,), "attn_k": (kv,), "attn_v": (kv,)}.get(kind)
        return super().expected_shape(name)

    def transform(self, name, weight):
        return weight
