"""Qwen3: qwen2's layout without q/k/v biases, plus an RMSNorm of q and k per head."""
import gguf

from .base import register
from .qwen2 import Qwen2
from .structure import Structure


@register("Qwen3ForCausalLM")
class Qwen3(Qwen2):
    gguf_arch = gguf.MODEL_ARCH.QWEN3
    structure = Structure(qk_norm="head")
    qkv_bias_required = False  # attention_bias says (read as llama's)
