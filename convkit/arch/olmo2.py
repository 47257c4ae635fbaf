"""OLMo 2: norms after each sublayer (none before), RMSNorm of q and k over all heads,
NEOX RoPE (no q/k permutation)."""
import gguf

from .base import register
from .llama import Llama
from .structure import Structure


@register("Olmo2ForCausalLM")
class Olmo2(Llama):
    gguf_arch = gguf.MODEL_ARCH.OLMO2
    structure = Structure(post_norms=True, qk_norm="all")
    reads_prefix_space = False
    writes_vocab_and_rope_dim = False  # llama.cpp's olmo2 converter is its generic one
    rope_kinds = ("default", "linear", "yarn", "dynamic")
    # OLMo 3's sliding windows are not implemented
    neutral_keys = {**Llama.neutral_keys, "sliding_window": (), "layer_types": ()}
