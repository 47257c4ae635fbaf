"""SmolLM3: llama's layout, with every fourth layer attending without RoPE."""
import gguf

from convkit.errors import ConvkitError
from convkit.hf_config import shown

from .base import register
from .llama import Llama
from .structure import Structure

NO_ROPE_EVERY = 4  # llama.cpp's smollm3 fixes the step; the GGUF stores no pattern


@register("SmolLM3ForCausalLM")
class SmolLM3(Llama):
    gguf_arch = gguf.MODEL_ARCH.SMOLLM3
    structure = Structure(rope_rows_permuted=True, no_rope_every=NO_ROPE_EVERY)
    neutral_keys = {k: v for k, v in Llama.neutral_keys.items() if k != "no_rope_layers"}

    def read_hparams(self, f):
        super().read_hparams(f)
        # transformers' no_rope_layers: 1 where a layer uses RoPE; llama.cpp can only run its fixed pattern
        expected = [int((i + 1) % NO_ROPE_EVERY != 0) for i in range(self.n_layer)]
        given = f.raw.get("no_rope_layers", expected)
        if given != expected:
            raise ConvkitError(f"{self.path}: no_rope_layers = {shown(given)} is not every {NO_ROPE_EVERY}th layer "
                               f"without RoPE, the only pattern llama.cpp's smollm3 runs")
