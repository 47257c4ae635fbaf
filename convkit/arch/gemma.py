"""Gemma 2 and Gemma 3 (text): a norm before and after each sublayer, RMSNorm scaling by
1 + w (the GGUF stores 1 + w, as llama.cpp's converter adds the 1), the embedding scaled
by sqrt(hidden), a gated GELU (tanh) MLP, NEOX RoPE, tied embeddings, and layers that
attend to a sliding window beside layers that attend to the whole past (Gemma 2: every
other layer; Gemma 3: five local to one global). Gemma 2 soft-caps the attention scores
and the logits; Gemma 3 norms q and k per head and gives its local layers their own RoPE base.

llama.cpp fixes the window pattern and the query scale by architecture (and model size);
its GGUF stores neither, so a config.json that differs is refused rather than converted
into a file that would run differently."""
import math

import gguf

from convkit.errors import ConvkitError
from convkit.hf_config import ConfigFields, read_rope, shown

from .base import register
from .llama import Llama, write_rope
from .structure import Structure

GELU_TANH = ("gelu_pytorch_tanh",)  # transformers' name of GELU with the tanh approximation
# keys Llama refuses that Gemma reads; the rest of Llama's list still applies
_READ_HERE = ("hidden_act", "hidden_activation", "attn_logit_softcapping", "final_logit_softcapping",
              "query_pre_attn_scalar")


class _Gemma(Llama):
    reads_prefix_space = False
    sentencepiece_vocab = "required"  # llama.cpp's Gemma converters read tokenizer.model
    writes_vocab_and_rope_dim = False
    swa_pattern = 0
    large_layers = 0  # the layer count of the size whose queries llama.cpp scales by hidden / heads
    neutral_keys = {**{k: v for k, v in Llama.neutral_keys.items() if k not in _READ_HERE},
                    "hidden_act": GELU_TANH, "hidden_activation": GELU_TANH,
                    "use_bidirectional_attention": (False,), "attention_bias": (False,), "mlp_bias": (False,)}

    def read_hparams(self, f: ConfigFields):
        for key in ("head_dim", "num_key_value_heads"):  # transformers' defaults are not llama's
            f.int(key)
        super().read_hparams(f)
        self.tie_embeddings = f.bool("tie_word_embeddings", True)
        # transformers: queries scaled by query_pre_attn_scalar ** -0.5 (its default 256);
        # llama.cpp: by head_dim ** -0.5, or (hidden / heads) ** -0.5 for its largest size
        self.query_scalar = f.float("query_pre_attn_scalar", default=256)
        expected = self.llama_query_scalar(self.n_layer, self.hidden, self.n_head, self.head_dim)
        if self.query_scalar != expected:
            raise ConvkitError(f"{self.path}: query_pre_attn_scalar = {shown(self.query_scalar)} is not {expected}, "
                               f"the query scale llama.cpp's {self.name} uses for this model; such a file would "
                               "not run as the checkpoint does")

    @classmethod
    def llama_query_scalar(cls, n_layer, hidden, n_head, head_dim) -> int:
        return hidden // n_head if n_layer == cls.large_layers else head_dim

    def read_sliding_window(self, f: ConfigFields):
        """The window, and layer_types checked against llama.cpp's fixed pattern."""
        expected = ["sliding_attention" if self.structure.slides(i) else "full_attention" for i in range(self.n_layer)]
        given = f.raw.get("layer_types", expected)
        if given != expected:
            raise ConvkitError(f"{self.path}: layer_types = {shown(given)} is not every "
                               f"{self.structure.swa_pattern}th layer global and the others sliding, the only "
                               f"pattern llama.cpp's {self.name} runs")
        return f.int("sliding_window")

    def scales(self):
        return {"embedding_scale": math.sqrt(self.hidden), "attention_scale": self.query_scalar ** -0.5}

    @classmethod
    def gguf_scales(cls, key):
        hidden, n_head = key("embedding_length"), key("attention.head_count")
        head_dim = key("attention.key_length") or hidden // n_head
        scalar = cls.llama_query_scalar(key("block_count"), hidden, n_head, head_dim)
        return {"embedding_scale": math.sqrt(hidden), "attention_scale": 1.0 / math.sqrt(scalar)}

    def shape_hparams(self):
        return {**super().shape_hparams(), "attention_bias": False, "mlp_bias": False}

    def norm_shift(self, hf_name):
        return 1.0 if hf_name.endswith("norm.weight") else 0.0

    def transform(self, name, weight):
        return weight  # NEOX RoPE: no permutation; the norms' 1 + w comes with read_source

    @classmethod
    def write_vocab_extras(cls, w, directory):
        w.add_add_space_prefix(False)

    def write_common(self, w):
        w.add_context_length(self.context)
        w.add_embedding_length(self.hidden)
        w.add_block_count(self.n_layer)
        w.add_feed_forward_length(self.ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_layer_norm_rms_eps(self.norm_eps)
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)


@register("Gemma2ForCausalLM")
class Gemma2(_Gemma):
    gguf_arch = gguf.MODEL_ARCH.GEMMA2
    structure = Structure(sandwich_norms=True, activation="gelu_tanh", swa_pattern=2)
    rope_kinds = ("default",)
    large_layers = 46  # Gemma 2 27B
    skip_suffixes = Llama.skip_suffixes + ("lm_head.weight",)  # llama.cpp's converter drops it: always tied

    def read_hparams(self, f):
        super().read_hparams(f)
        # llama.cpp's gemma2 converter writes no RoPE base (its runtime uses 10000) and always ties
        if self.rope.theta != 10000.0:
            raise ConvkitError(f"{self.path}: rope_theta = {self.rope.theta} is not 10000, the only base llama.cpp's "
                               "gemma2 converter can write; such a file would not run as the checkpoint does")
        if not self.tie_embeddings:
            raise ConvkitError(f"{self.path}: tie_word_embeddings = false; llama.cpp's gemma2 always ties the output "
                               "to the embedding, so such a file would not run as the checkpoint does")
        self.attn_softcap = f.float("attn_logit_softcapping")
        self.final_softcap = f.float("final_logit_softcapping")

    def scales(self):
        return {**super().scales(), "attn_softcap": self.attn_softcap, "final_softcap": self.final_softcap}

    @classmethod
    def gguf_scales(cls, key):
        # llama.cpp's defaults where the file leaves them out (its converter always writes them)
        return {**super().gguf_scales(key), "attn_softcap": key("attention.logit_softcapping", 50.0),
                "final_softcap": key("final_logit_softcapping", 30.0),
                "sliding_window": int(key("attention.sliding_window", 4096))}

    def write_hparams(self, w):
        self.write_common(w)
        w.add_attn_logit_softcapping(self.attn_softcap)
        w.add_final_logit_softcapping(self.final_softcap)
        w.add_sliding_window(self.sliding_window)


ROPE_KINDS_KEYS = ("full_attention", "sliding_attention")


@register("Gemma3ForCausalLM")
class Gemma3(_Gemma):
    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    structure = Structure(sandwich_norms=True, qk_norm="head", activation="gelu_tanh", swa_pattern=6)
    rope_kinds = ("default", "linear")  # of the global layers; the local ones are unscaled, as in llama.cpp
    large_layers = 62  # Gemma 3 27B
    neutral_keys = {**_Gemma.neutral_keys, "attn_logit_softcapping": (), "sliding_window_pattern": (6, 1)}

    def read_hparams(self, f):
        raw = dict(f.raw)
        params = raw.get("rope_parameters")
        self.swa_theta_given = None
        if isinstance(params, dict) and any(k in params for k in ROPE_KINDS_KEYS):
            # transformers 5: one RoPE setting per kind of layer
            other = sorted(set(params) - set(ROPE_KINDS_KEYS))
            if other or raw.get("rope_scaling"):
                raise ConvkitError(f"{f.path}: rope_parameters mixes per-layer-kind settings with "
                                   f"{', '.join(other) or 'a rope_scaling'}; the config is not understood")
            local = params.get("sliding_attention") or {}
            where = f"{f.path}: rope_parameters.sliding_attention"
            local_rope = read_rope(ConfigFields({"rope_parameters": local}, where), supported=("default",),
                                   arch_name=f"{self.hf_name}'s sliding layers")
            if "rope_theta" in local:
                self.swa_theta_given = local_rope.theta
            raw["rope_parameters"] = dict(params.get("full_attention") or {})
            raw.pop("rope_theta", None)
            raw["rope_parameters"].setdefault("rope_theta", f.raw.get("rope_theta", 1000000.0))
        else:  # transformers 4: rope_theta and rope_scaling for the global layers, rope_local_base_freq
            if f.has("rope_local_base_freq"):
                self.swa_theta_given = f.float("rope_local_base_freq")
            if not f.has("rope_theta") and not (isinstance(params, dict) and "rope_theta" in params):
                raw["rope_theta"] = 1000000.0  # transformers' and llama.cpp's default for the global layers
        super().read_hparams(ConfigFields(raw, f.path))
        self.swa_theta = self.swa_theta_given if self.swa_theta_given is not None else 10000.0
        self.final_softcap = f.float("final_logit_softcapping") if f.raw.get("final_logit_softcapping") else None

    def read_sliding_window(self, f):
        if f.raw.get("sliding_window_pattern", 6) == 1:  # every layer global: llama.cpp writes no window
            if any(t != "full_attention" for t in f.raw.get("layer_types") or []):
                raise ConvkitError(f"{self.path}: sliding_window_pattern = 1 but layer_types has sliding layers; "
                                   "the config contradicts itself")
            return None
        return super().read_sliding_window(f)

    def scales(self):
        return {**super().scales(), "final_softcap": self.final_softcap, "swa_rope_theta": self.swa_theta}

    @classmethod
    def gguf_scales(cls, key):
        window = key("attention.sliding_window") or None
        return {**super().gguf_scales(key), "final_softcap": key("final_logit_softcapping") or None,
                "sliding_window": int(window) if window else None,
                "swa_rope_theta": key("rope.freq_base_swa", 10000.0)}

    def write_hparams(self, w):
        self.write_common(w)
        write_rope(w, self.rope)
        if self.swa_theta_given is not None:
            w.add_rope_freq_base_swa(self.swa_theta_given)
        if self.final_softcap:
            w.add_final_logit_softcapping(self.final_softcap)
        if self.sliding_window is not None:
            w.add_sliding_window(self.sliding_window)
