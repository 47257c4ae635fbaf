"""Qwen3-MoE: qwen3's attention; in every layer a router picks the top k of n experts
(softmax, the k weights renormalized to sum 1) and each is a gated SiLU MLP. GGUF stacks
the experts' matrices into ffn_gate_exps / ffn_up_exps / ffn_down_exps."""
import gguf

from convkit.errors import ConvkitError
from convkit.hf_config import shown

from .base import register
from .qwen3 import Qwen3


@register("Qwen3MoeForCausalLM")
class Qwen3Moe(Qwen3):
    gguf_arch = gguf.MODEL_ARCH.QWEN3MOE
    neutral_keys = {k: v for k, v in Qwen3.neutral_keys.items() if k not in ("num_experts", "num_local_experts")}
    window_layers_key = None  # transformers' Qwen3-MoE slides in every layer

    def read_hparams(self, f):
        super().read_hparams(f)
        self.n_expert = f.int("num_experts", "num_local_experts")
        self.n_expert_used = f.int("num_experts_per_tok", hi=self.n_expert)
        self.ff_exp = f.int("moe_intermediate_size")
        # what llama.cpp's qwen3moe runs: every layer sparse, weights always renormalized
        for key, value, ok in (("norm_topk_prob", f.raw.get("norm_topk_prob"), True),
                               ("decoder_sparse_step", f.raw.get("decoder_sparse_step", 1), 1),
                               ("mlp_only_layers", f.raw.get("mlp_only_layers") or [], [])):
            if value != ok:
                raise ConvkitError(f"{self.path}: {key} = {shown(value)} is not {shown(ok)}, the only setting "
                                   "llama.cpp's qwen3moe runs; such a file would not run as the checkpoint does")

    def shape_hparams(self):
        return {**super().shape_hparams(), "n_expert": self.n_expert, "ff_exp": self.ff_exp}

    def runtime_hparams(self):
        return {**super().runtime_hparams(), "n_experts": self.n_expert, "n_experts_used": self.n_expert_used}

    def write_hparams(self, w):
        super().write_hparams(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        w.add_expert_feed_forward_length(self.ff_exp)
