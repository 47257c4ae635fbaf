"""How a decoder is put together: what the runtime needs beyond the hyperparameters.

Each architecture module states its `Structure` once, and the runtime builds its layers
from it (convkit/runtime/model.py has no table of families of its own), for an HF
directory and for a GGUF file alike: the GGUF's general.architecture selects the same
module. Whether a layer is a mixture of experts is a hyperparameter (the expert count),
as in llama.cpp: Mixtral is a llama with experts. Biases are not listed: a layer adds one
when the checkpoint holds it, and the tensor table (convkit/tensor_shapes.py) says which
each family must or may hold.
"""
from dataclasses import dataclass

NORMS = ("rms", "layer")
QK_NORMS = (None, "head", "all")
MLPS = ("gated", "plain")
ACTIVATIONS = ("silu", "gelu_tanh")
POSITIONS = ("rope", "learned")


@dataclass(frozen=True)
class Structure:
    norm: str = "rms"              # RMSNorm, or LayerNorm with bias ("layer")
    post_norms: bool = False       # OLMo 2: x + norm(f(x)) instead of x + f(norm(x))
    qk_norm: str | None = None     # RMSNorm of q and k before RoPE: per head (Qwen3) or over all heads (OLMo 2)
    mlp: str = "gated"             # act(gate) * up, or act(up)
    activation: str = "silu"
    positions: str = "rope"        # rotary (halves layout, as transformers), or learned embeddings
    rope_rows_permuted: bool = False  # a GGUF stores q/k rows interleaved for ggml's normal RoPE
    no_rope_every: int = 0         # every n-th layer (1-based) attends without RoPE (SmolLM3); 0: none
    sandwich_norms: bool = False   # Gemma 2/3: a norm before and one after each sublayer, x + post(f(pre(x)))
    swa_pattern: int = 0           # with a sliding window, every n-th layer (1-based) attends to the whole
                                   # past and the others to the window, as llama.cpp's set_swa_pattern(n)
                                   # (Gemma 2: 2, Gemma 3: 6); 0: every layer slides (Mistral)

    def __post_init__(self):
        for value, allowed in ((self.norm, NORMS), (self.qk_norm, QK_NORMS), (self.mlp, MLPS),
                               (self.activation, ACTIVATIONS), (self.positions, POSITIONS)):
            if value not in allowed:
                raise ValueError(f"structure value {value!r} is not one of {allowed}")

    def uses_rope(self, layer: int) -> bool:
        if self.positions != "rope":
            return False
        return not (self.no_rope_every and (layer + 1) % self.no_rope_every == 0)

    def slides(self, layer: int) -> bool:
        """Whether the layer attends to a sliding window (when the model has one)."""
        return not self.swa_pattern or (layer + 1) % self.swa_pattern != 0
