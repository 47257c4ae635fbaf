"""Phi-3 and Phi-4: llama's decoder with q, k and v in one matrix (qkv_proj -> attn_qkv) and
gate and up in one (gate_up_proj -> ffn_up of twice the width, gate rows first), NEOX
rotary on all or part of each head, and LongRoPE: per-frequency divisors for sequences
within original_max_position_embeddings (short) and beyond (long), and a scale of cos/sin.

transformers picks the long divisors for a forward pass whose last position is beyond the
original context (every position of that pass); llama.cpp picks them once, when its context
size is beyond it. The GGUF holds both sets as rope_factors_long/short and the scale as
rope.scaling.attn_factor; the runtime follows transformers' rule for both sources.
"""
import math

import gguf
import numpy as np

from convkit.errors import ConvkitError
from convkit.hf_config import MAX_TOKENS, ConfigFields, read_rope

from .base import register
from .llama import Llama
from .structure import Structure

# transformers' Phi3Config default, used when config.json has no top-level value
TRANSFORMERS_ORIGINAL_CONTEXT = 4096


@register("Phi3ForCausalLM")
class Phi3(Llama):
    gguf_arch = gguf.MODEL_ARCH.PHI3
    tensor_table = "phi3"
    structure = Structure()  # NEOX rotary: rows stay in HF order
    reads_prefix_space = False
    rope_kinds = ("default", "longrope")  # transformers' Phi-3 takes "su" and "yarn" as longrope too

    def read_hparams(self, f: ConfigFields):
        self.hidden = f.int("hidden_size")
        self.n_head = f.int("num_attention_heads")
        self.n_head_kv = f.int("num_key_value_heads", default=self.n_head)
        if self.n_head % self.n_head_kv or self.hidden % self.n_head:
            raise ConvkitError(f"{self.path}: hidden_size ({self.hidden}), num_attention_heads ({self.n_head}) and "
                               f"num_key_value_heads ({self.n_head_kv}) do not divide; fix config.json")
        self.head_dim = self.hidden // self.n_head
        # llama.cpp's phi3 writes no head size: it is hidden_size / heads there
        if f.has("head_dim") and f.int("head_dim") != self.head_dim:
            raise ConvkitError(f"{self.path}: head_dim = {f.int('head_dim')} is not hidden_size / num_attention_heads "
                               f"({self.head_dim}), which llama.cpp's phi3 requires")
        self.head_dim_given = False
        self.ff = f.int("intermediate_size")
        self.vocab = f.int("vocab_size", hi=MAX_TOKENS)
        self.context = f.int("max_position_embeddings", "n_positions", hi=MAX_TOKENS)
        self.norm_eps = f.float("rms_norm_eps", hi=1.0)
        self.tie_embeddings = f.bool("tie_word_embeddings", False)
        self.attention_bias = self.mlp_bias = False
        kind = self._rope_kind(f)
        self.rope = read_rope(f, supported=self.rope_kinds, arch_name=self.hf_name, partial_ok=True)
        self.rope_dim = self._rope_dim()
        self.original_context = self._original_context(f, kind)
        self.attn_factor = self._longrope_checks() if self.rope.kind == "longrope" else None
        # transformers masks attention to the window; llama.cpp's phi3 ignores it (a window
        # longer than the context, as the 128k models have, changes nothing)
        self.sliding_window = f.int("sliding_window", hi=MAX_TOKENS) if f.has("sliding_window") else None
        f.require_neutral(self.neutral_keys, self.hf_name)

    def _rope_kind(self, f):
        params = f.raw.get("rope_scaling") or f.raw.get("rope_parameters") or {}
        kind = params.get("rope_type") or params.get("type") if isinstance(params, dict) else None
        if kind == "yarn":  # transformers runs it as longrope, llama.cpp as YaRN: they disagree
            raise ConvkitError(f"{self.path}: rope_type 'yarn' runs as LongRoPE in transformers' Phi-3 and as YaRN "
                               "in llama.cpp's; such a file would not run as the checkpoint does")
        return kind

    def _rope_dim(self) -> int:
        """Rotated dimensions per head; transformers and llama.cpp round the share differently."""
        ours, theirs = int(self.head_dim * self.rope.partial), int(self.rope.partial * self.hidden) // self.n_head
        if ours != theirs or ours % 2 or ours <= 0:
            raise ConvkitError(f"{self.path}: partial_rotary_factor = {self.rope.partial} gives {ours} rotary "
                               f"dimensions in transformers and {theirs} in llama.cpp (an even count is needed)")
        return ours

    def _original_context(self, f, kind) -> int:
        """original_max_position_embeddings. llama.cpp's converter requires it (rope settings'
        first, then the top level); transformers' Phi-3 takes the top level's (4096 without one)."""
        params = f.raw.get("rope_scaling") or f.raw.get("rope_parameters") or {}
        inner = ConfigFields(params, f"{self.path}: rope settings").int(
            "original_max_position_embeddings", hi=MAX_TOKENS, default=-1) if isinstance(params, dict) else -1
        top = f.int("original_max_position_embeddings", hi=MAX_TOKENS, default=-1)
        if inner < 0 and top < 0:
            raise ConvkitError(f"{self.path}: missing key 'original_max_position_embeddings', which llama.cpp's "
                               "phi3 needs; add the model's pretraining context (see the model card)")
        used_by_transformers = top if top > 0 else TRANSFORMERS_ORIGINAL_CONTEXT
        written = inner if inner > 0 else top
        if self.rope.kind == "longrope" and used_by_transformers != written:
            raise ConvkitError(f"{self.path}: original_max_position_embeddings is {written} for llama.cpp but "
                               f"{used_by_transformers} for transformers; give one value at the top level")
        return written

    def _longrope_checks(self) -> float:
        """The cos/sin scale, after checking that transformers and llama.cpp agree on it."""
        n = self.rope_dim // 2
        for name, values in (("short_factor", self.rope.short_factor), ("long_factor", self.rope.long_factor)):
            if len(values) != n:
                raise ConvkitError(f"{self.path}: rope {name} has {len(values)} values; {n} (half the rotary "
                                   "dimensions) are needed")
        orig = self.original_context
        scale = self.context / orig  # llama.cpp's converter: always this ratio
        theirs = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
        factor = self.rope.factor if self.rope.factor is not None else scale  # transformers' rule
        ours = self.rope.attention_factor
        if ours is None:
            ours = math.sqrt(1 + math.log(factor) / math.log(orig)) if factor > 1.0 else 1.0
        if not math.isclose(ours, theirs, rel_tol=1e-6):
            raise ConvkitError(f"{self.path}: LongRoPE's attention factor is {ours:.6g} in transformers (from factor / "
                               f"attention_factor) but {theirs:.6g} in llama.cpp (from max_position_embeddings / "
                               "original_max_position_embeddings); such a file would not run as the checkpoint does")
        return theirs

    def shape_hparams(self):
        return {**super().shape_hparams(), "rope_dim": self.rope_dim}

    def transform(self, name, weight):
        return weight

    def extra_tensors(self):
        if self.rope.kind != "longrope":
            return []
        return [("rope_factors_long.weight", lambda: np.array(self.rope.long_factor, dtype=np.float32)),
                ("rope_factors_short.weight", lambda: np.array(self.rope.short_factor, dtype=np.float32))]

    def runtime_hparams(self):
        out = {**super().runtime_hparams(), "rope_dim": self.rope_dim}
        if self.rope.kind == "longrope":
            out["rope_scaling"] = {"rope_type": "longrope", "short_factor": list(self.rope.short_factor),
                                   "long_factor": list(self.rope.long_factor),
                                   "original_max_position_embeddings": self.original_context,
                                   "attention_factor": self.attn_factor}
        return out

    def write_hparams(self, w):
        w.add_context_length(self.context)
        w.add_rope_scaling_orig_ctx_len(self.original_context)
        w.add_embedding_length(self.hidden)
        w.add_feed_forward_length(self.ff)
        w.add_block_count(self.n_layer)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_layer_norm_rms_eps(self.norm_eps)
        w.add_rope_dimension_count(self.rope_dim)
        w.add_rope_freq_base(self.rope.theta)
        w.add_sliding_window(self.sliding_window or 0)  # 0: none (Phi-4)
        if self.attn_factor is not None:
            w.add_rope_scaling_attn_factors(self.attn_factor)

    @classmethod
    def write_vocab(cls, w, directory, config):
        """As llama.cpp's phi3 converter: tokenizer_config.json's tokenizer_class GPT2Tokenizer
        (Phi-4) is a byte-level BPE, anything else Phi-3's sentencepiece model with its
        added tokens."""
        from convkit import gguf_vocab
        from convkit.json_files import read_json_object

        tcfg_path = directory / "tokenizer_config.json"
        tcfg = read_json_object(tcfg_path) if tcfg_path.is_file() else {}
        if tcfg.get("tokenizer_class") == "GPT2Tokenizer":
            if not (directory / "tokenizer.json").is_file():
                raise ConvkitError(f"{directory}: tokenizer_config.json names GPT2Tokenizer but there is no "
                                   "tokenizer.json beside it")
            gguf_vocab.write_vocab(w, directory, config)
            return
        model = directory / "tokenizer.model"
        if not model.is_file():
            raise ConvkitError(f"{model}: missing; a Phi-3 checkpoint carries its sentencepiece tokenizer.model "
                               "(Phi-4's tokenizer_config.json names GPT2Tokenizer instead)")
        gguf_vocab.write_sentencepiece(w, model, directory, config, added_tokens=gguf_vocab.phi3_added_tokens)
