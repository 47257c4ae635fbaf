"""Llama and Mistral: RMS norm, rotary (normal mode), so q/k rows are permuted per head."""
import math

import gguf
import numpy as np

from convkit.errors import ConvkitError
from convkit.hf_config import MAX_TOKENS, ConfigFields, read_rope, shown

from .base import Architecture, register
from .structure import Structure


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Per head, interleave the two rotary halves so ggml's normal RoPE applies."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def llama3_rope_factors(rope, head_dim: int) -> np.ndarray:
    """Llama 3.1's frequency scaling as the per-frequency divisors ggml applies
    (`rope_freqs.weight`). Computed in torch float32, in llama.cpp's converter's order of
    operations, so that the factors are its factors to the last bit."""
    import torch

    freqs = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    low_wavelen = rope.original_context / rope.low_freq_factor
    high_wavelen = rope.original_context / rope.high_freq_factor
    factors = []
    for freq in freqs:  # float32 scalars: every step below rounds to float32, as in the converter
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(rope.factor)
        else:
            smooth = (rope.original_context / wavelen - rope.low_freq_factor) / (
                rope.high_freq_factor - rope.low_freq_factor)
            factors.append(float(1 / ((1 - smooth) / rope.factor + smooth)))
    return np.array(factors, dtype=np.float32)


@register("LlamaForCausalLM")
class Llama(Architecture):
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    tensor_table = "decoder"
    structure = Structure(rope_rows_permuted=True)  # the converter permutes q/k rows; the runtime undoes it
    reads_prefix_space = True
    rope_kinds = ("default", "linear", "llama3", "yarn", "dynamic")
    writes_vocab_and_rope_dim = True  # llama.cpp's llama converter does; its qwen2 one does not
    slides = False  # whether config.json's sliding_window applies (transformers' Llama ignores it)

    def read_hparams(self, f: ConfigFields):
        self.hidden = f.int("hidden_size")
        self.n_head = f.int("num_attention_heads")
        self.n_head_kv = f.int("num_key_value_heads", default=self.n_head)
        if self.n_head % self.n_head_kv:
            raise ConvkitError(f"{self.path}: num_attention_heads ({self.n_head}) is not a multiple of "
                               f"num_key_value_heads ({self.n_head_kv}); fix config.json")
        self.head_dim_given = f.has("head_dim")
        if not self.head_dim_given and self.hidden % self.n_head:
            raise ConvkitError(f"{self.path}: hidden_size ({self.hidden}) is not a multiple of num_attention_heads "
                               f"({self.n_head}) and no head_dim is given; fix config.json")
        self.head_dim = f.int("head_dim", default=self.hidden // self.n_head)
        if self.head_dim % 2:
            raise ConvkitError(f"{self.path}: head_dim = {self.head_dim} is odd; rotary positions need pairs")
        self.ff = f.int("intermediate_size")
        self.vocab = f.int("vocab_size", hi=MAX_TOKENS)
        self.context = f.int("max_position_embeddings", hi=MAX_TOKENS)
        self.norm_eps = f.float("rms_norm_eps", hi=1.0)
        self.rope = read_rope(f, supported=self.rope_kinds, arch_name=self.hf_name)
        self.tie_embeddings = f.bool("tie_word_embeddings", False)
        self.attention_bias = f.bool("attention_bias", False)
        self.mlp_bias = f.bool("mlp_bias", False)
        self.sliding_window = self.read_sliding_window(f)
        f.require_neutral(self.neutral_keys, self.hf_name)

    # values (other than absent) under which these keys leave the computation unchanged
    neutral_keys = {"hidden_act": ("silu",), "hidden_activation": ("silu",), "is_causal": (True,),
                    "attn_logit_softcapping": (), "final_logit_softcapping": (), "query_pre_attn_scalar": (),
                    "logits_scaling": (1, 1.0), "embedding_multiplier": (1, 1.0), "residual_multiplier": (1, 1.0),
                    "attention_multiplier": (), "use_qk_norm": (False,), "qk_layernorm": (False,),
                    "num_local_experts": (), "num_experts": (), "no_rope_layers": (), "use_sliding_window": (False,)}

    def read_sliding_window(self, f: ConfigFields):
        """Mistral attends to the last `sliding_window` positions only, in every layer; the
        families that slide in some layers set `swa_layers` from layer_types."""
        layer_types = f.raw.get("layer_types")
        if layer_types is not None and (not isinstance(layer_types, list) or any(
                t not in ("full_attention", "sliding_attention") for t in layer_types)):
            raise ConvkitError(f"{self.path}: layer_types {shown(layer_types)} is not understood; "
                               "expected a list of full_attention / sliding_attention")
        if not self.slides:
            return None
        if layer_types is not None and "sliding_attention" not in layer_types:
            return None
        return f.int("sliding_window", hi=MAX_TOKENS) if f.has("sliding_window") else None

    def shape_hparams(self):
        return {"n_layer": self.n_layer, "hidden": self.hidden, "n_head": self.n_head, "n_head_kv": self.n_head_kv,
                "head_dim": self.head_dim, "ff": self.ff, "vocab": self.vocab,
                "tied": self.tie_embeddings, "attention_bias": self.attention_bias, "mlp_bias": self.mlp_bias}

    def transform(self, name, weight):
        if not self.structure.rope_rows_permuted:
            return weight
        if name.endswith(("attn_q.weight", "attn_q.bias")):
            return permute_rows(weight, self.n_head)
        if name.endswith(("attn_k.weight", "attn_k.bias")):
            return permute_rows(weight, self.n_head_kv)
        return weight

    def extra_tensors(self):
        if self.rope.kind == "llama3":
            return [("rope_freqs.weight", lambda: llama3_rope_factors(self.rope, self.head_dim))]
        return []

    def write_hparams(self, w):
        w.add_block_count(self.n_layer)
        w.add_context_length(self.context)
        w.add_embedding_length(self.hidden)
        w.add_feed_forward_length(self.ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        write_rope(w, self.rope)
        w.add_layer_norm_rms_eps(self.norm_eps)
        if self.head_dim_given:  # as llama.cpp's converter: only when config.json states it
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        if self.writes_vocab_and_rope_dim:
            w.add_vocab_size(self.vocab)
            w.add_rope_dimension_count(self.head_dim)


@register("MistralForCausalLM")
class Mistral(Llama):
    """Llama with a sliding window in every layer (transformers' Mistral ignores layer_types)."""
    slides = True


def write_rope(w: gguf.GGUFWriter, rope) -> None:
    """RoPE metadata as llama.cpp's converter writes it (llama3 is a tensor, dynamic nothing)."""
    if rope.kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope.factor)
    elif rope.kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope.factor)
        w.add_rope_scaling_orig_ctx_len(rope.original_context)
        if rope.extrapolation_factor is not None:
            w.add_rope_scaling_yarn_ext_factor(rope.extrapolation_factor)
        if rope.attention_factor is not None:
            w.add_rope_scaling_yarn_attn_factor(rope.attention_factor)
        if rope.beta_fast is not None:
            w.add_rope_scaling_yarn_beta_fast(rope.beta_fast)
        if rope.beta_slow is not None:
            w.add_rope_scaling_yarn_beta_slow(rope.beta_slow)
    w.add_rope_freq_base(rope.theta)

