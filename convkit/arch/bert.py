"""BERT encoders (embedding models such as MiniLM): LayerNorm, absolute positions."""
import gguf

from convkit.hf_config import MAX_TOKENS

from .base import Architecture, register


@register("BertModel")
class Bert(Architecture):
    gguf_arch = gguf.MODEL_ARCH.BERT
    tensor_table = "bert"
    skip_suffixes = Architecture.skip_suffixes + ("pooler.dense.weight", "pooler.dense.bias")

    def read_hparams(self, f):
        self.hidden = f.int("hidden_size")
        self.n_head = self.n_head_kv = f.int("num_attention_heads")
        self.ff = f.int("intermediate_size")
        self.vocab = f.int("vocab_size", hi=MAX_TOKENS)
        self.context = f.int("max_position_embeddings", hi=MAX_TOKENS)
        self.norm_eps = f.float("layer_norm_eps", hi=1.0)
        f.require_neutral({"hidden_act": ("gelu",), "position_embedding_type": ("absolute",),
                           "is_decoder": (False,)}, self.hf_name)

    def gguf_name(self, hf_name):
        if hf_name.startswith("pooler.") or hf_name == "embeddings.position_ids":
            return None
        return super().gguf_name(hf_name)

    def shape_hparams(self):
        return {"n_layer": self.n_layer, "hidden": self.hidden, "n_head": self.n_head, "n_head_kv": self.n_head,
                "head_dim": self.hidden // self.n_head, "ff": self.ff, "vocab": self.vocab, "n_ctx": self.context}

    def write_hparams(self, w):
        w.add_context_length(self.context)
        w.add_embedding_length(self.hidden)
        w.add_feed_forward_length(self.ff)
        w.add_block_count(self.n_layer)
        w.add_head_count(self.n_head)
        w.add_layer_norm_eps(self.norm_eps)
        w.add_causal_attention(False)
        w.add_pooling_type(gguf.PoolingType.MEAN)
