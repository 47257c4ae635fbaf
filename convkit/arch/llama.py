"""Llama and Mistral: RMS norm, rotary (normal mode), so q/k rows are permuted per head."""
import gguf
import numpy as np

from convkit.errors import ConvkitError

from .base import Architecture, register


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Per head, interleave the two rotary halves so ggml's normal RoPE applies."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@register("LlamaForCausalLM", "MistralForCausalLM")
class Llama(Architecture):
    gguf_arch = gguf.MODEL_ARCH.LLAMA

    def __init__(self, config, path="config.json"):
        super().__init__(config, path)
        self.hidden = int(self.hp("hidden_size"))
        self.n_head = int(self.hp("num_attention_heads"))
        self.n_head_kv = int(self.config.get("num_key_value_heads") or self.n_head)
        self.head_dim = int(self.config.get("head_dim") or self.hidden // self.n_head)
        self.ff = int(self.hp("intermediate_size"))
        self.vocab = int(self.hp("vocab_size"))

    def shape_hparams(self):
        return {"n_layer": self.n_layer, "hidden": self.hidden, "n_head": self.n_head, "n_head_kv": self.n_head_kv,
                "head_dim": self.head_dim, "ff": self.ff, "vocab": self.vocab,
                "tied": bool(self.config.get("tie_word_embeddings", False))}

    def transform(self, name, weight):
        if name.endswith("attn_q.weight"):
            return permute_rows(weight, self.n_head)
        if name.endswith("attn_k.weight"):
            return permute_rows(weight, self.n_head_kv)
        return weight

    def write_hparams(self, w):
        c = self.config
        w.add_vocab_size(self.vocab)
        w.add_context_length(int(self.hp("max_position_embeddings")))
        w.add_embedding_length(self.hidden)
        w.add_block_count(self.n_layer)
        w.add_feed_forward_length(self.ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_layer_norm_rms_eps(float(self.hp("rms_norm_eps")))
        if "rope_theta" in c:
            w.add_rope_freq_base(float(c["rope_theta"]))
        w.add_rope_dimension_count(self.head_dim)
        scaling = c.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type")) == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(scaling["factor"]))
        elif scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise ConvkitError(f"{self.path}: rope_scaling {scaling!r} is not supported yet")
