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

    def shape_hparams(self):
        hidden, n_head = int(self.hp("n_embd")), int(self.hp("n_head"))
        return {"n_layer": self.n_layer, "hidden": hidden, "n_head": n_head, "n_head_kv": n_head,
                "head_dim": hidden // max(n_head, 1), "ff": int(self.config.get("n_inner") or 4 * hidden),
                "vocab": int(self.hp("vocab_size")), "n_ctx": int(self.hp("n_positions", "n_ctx"))}

    def write_hparams(self, w):
        w.add_context_length(int(self.hp("n_ctx", "n_positions")))
        w.add_embedding_length(int(self.hp("n_embd")))
        w.add_feed_forward_length(4 * int(self.hp("n_embd")))
        w.add_block_count(self.n_layer)
        w.add_head_count(int(self.hp("n_head")))
        w.add_layer_norm_eps(float(self.hp("layer_norm_epsilon")))
