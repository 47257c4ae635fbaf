"""GPT-2: learned positions, LayerNorm, Conv1D weights stored transposed."""
import gguf

from convkit.errors import ConvkitError
from convkit.hf_config import MAX_TOKENS

from .base import Architecture, register
from .structure import Structure


@register("GPT2LMHeadModel")
class GPT2(Architecture):
    gguf_arch = gguf.MODEL_ARCH.GPT2
    tensor_table = "gpt2"
    structure = Structure(norm="layer", mlp="plain", activation="gelu_tanh", positions="learned")
    transposed = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")

    def read_hparams(self, f):
        self.hidden = f.int("n_embd")
        self.n_head = self.n_head_kv = f.int("n_head")
        if self.hidden % self.n_head:
            raise ConvkitError(f"{self.path}: n_embd ({self.hidden}) is not a multiple of n_head ({self.n_head})")
        self.head_dim = self.hidden // self.n_head
        self.ff = 4 * self.hidden  # llama.cpp's gpt2 has no other width
        if f.int("n_inner", hi=1 << 24, default=self.ff) != self.ff:
            raise ConvkitError(f"{self.path}: n_inner = {f.raw['n_inner']} is not 4 * n_embd, which llama.cpp's "
                               "gpt2 architecture requires")
        self.vocab = f.int("vocab_size", hi=MAX_TOKENS)
        self.context = f.int("n_ctx", "n_positions", hi=MAX_TOKENS)
        self.norm_eps = f.float("layer_norm_epsilon", hi=1.0)
        self.tie_embeddings = f.bool("tie_word_embeddings", True)
        f.require_neutral({"activation_function": ("gelu_new", "gelu_pytorch_tanh"),
                           "scale_attn_weights": (True,), "scale_attn_by_inverse_layer_idx": (False,),
                           "add_cross_attention": (False,)}, self.hf_name)

    def gguf_name(self, hf_name):
        return super().gguf_name(hf_name if hf_name.startswith("transformer.") or hf_name.startswith("lm_head")
                                 else "transformer." + hf_name)

    def transposes(self, name):
        return name.endswith(self.transposed)

    def transform(self, name, weight):
        return weight.T.copy() if self.transposes(name) else weight

    def shape_hparams(self):
        return {"n_layer": self.n_layer, "hidden": self.hidden, "n_head": self.n_head, "n_head_kv": self.n_head,
                "head_dim": self.head_dim, "ff": self.ff, "vocab": self.vocab, "n_ctx": self.context,
                "tied": self.tie_embeddings}

    def write_hparams(self, w):
        w.add_block_count(self.n_layer)
        w.add_context_length(self.context)
        w.add_embedding_length(self.hidden)
        w.add_feed_forward_length(self.ff)
        w.add_head_count(self.n_head)
        w.add_layer_norm_eps(self.norm_eps)
