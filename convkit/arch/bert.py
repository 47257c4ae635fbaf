"""BERT encoders (embedding models such as MiniLM): LayerNorm, absolute positions."""
import gguf

from .base import Architecture, register


@register("BertModel")
class Bert(Architecture):
    gguf_arch = gguf.MODEL_ARCH.BERT
    skip_suffixes = Architecture.skip_suffixes + ("pooler.dense.weight", "pooler.dense.bias")

    def gguf_name(self, hf_name):
        if hf_name.startswith("pooler.") or hf_name == "embeddings.position_ids":
            return None
        return super().gguf_name(hf_name)

    def shape_hparams(self):
        hidden, n_head = int(self.hp("hidden_size")), int(self.hp("num_attention_heads"))
        return {"n_layer": self.n_layer, "hidden": hidden, "n_head": n_head, "n_head_kv": n_head,
                "head_dim": hidden // max(n_head, 1), "ff": int(self.hp("intermediate_size")),
                "vocab": int(self.hp("vocab_size")), "n_ctx": int(self.hp("max_position_embeddings"))}

    def write_hparams(self, w):
        w.add_context_length(int(self.hp("max_position_embeddings")))
        w.add_embedding_length(int(self.hp("hidden_size")))
        w.add_feed_forward_length(int(self.hp("intermediate_size")))
        w.add_block_count(self.n_layer)
        w.add_head_count(int(self.hp("num_attention_heads")))
        w.add_layer_norm_eps(float(self.hp("layer_norm_eps")))
        w.add_causal_attention(False)
        w.add_pooling_type(gguf.PoolingType.MEAN)
