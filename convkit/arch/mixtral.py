"""Mixtral: llama (q/k rows permuted) with a router and experts in place of the MLP: the
top k of n experts per token, softmax over their router logits (the same as renormalizing
the top k of a softmax over all). Stored as GGUF architecture llama with an expert count."""
from .base import register
from .llama import Llama


@register("MixtralForCausalLM")
class Mixtral(Llama):
    slides = True  # in every layer, as Mistral
    neutral_keys = {k: v for k, v in Llama.neutral_keys.items() if k != "num_local_experts"}

    def read_hparams(self, f):
        super().read_hparams(f)
        self.n_expert = f.int("num_local_experts")
        self.n_expert_used = f.int("num_experts_per_tok", hi=self.n_expert)

    def shape_hparams(self):
        return {**super().shape_hparams(), "n_expert": self.n_expert, "ff_exp": self.ff}

    def runtime_hparams(self):
        return {**super().runtime_hparams(), "n_experts": self.n_expert, "n_experts_used": self.n_expert_used}

    def write_hparams(self, w):
        super().write_hparams(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
