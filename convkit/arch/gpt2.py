"""GPT-2: learned positions, LayerNorm, Conv1D weights stored transposed."""
import gguf

from .base import Architecture, register


@register("GPT2LMHeadModel")
class GPT2(Architecture):
    gguf_arch = gguf.MODEL_ARCH.GPT2
    transposed = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")

    def gguf_name(self, hf_name):
        return super().gguf_name(hf_name if hf_name.startswith("transformer.") or hf_name.startswith("lm_head")
                                 else "transformer." + hf_name)

    def transform(self, name, weight):
        return weight.T.copy() if name.endswith(self.transposed) else weight

    def transformed_shape(self, name, shape):
        return tuple(reversed(shape)) if name.endswith(self.transposed) else tuple(shape)

    def write_hparams(self, w):
        w.add_context_length(int(self.hp("n_ctx", "n_positions")))
        w.add_embedding_length(int(self.hp("n_embd")))
        w.add_feed_forward_length(4 * int(self.hp("n_embd")))
        w.add_block_count(self.n_layer)
        w.add_head_count(int(self.hp("n_head")))
        w.add_layer_norm_eps(float(self.hp("layer_norm_epsilon")))
