"""Choosing the next token, and the decoding loop around the model's KV cache.

The sampler applies, in llama.cpp's default order: repetition penalty, top-k, top-p,
temperature, then draws from the distribution with a seeded generator (so a seed
always gives the same text). Temperature 0 means greedy: the highest logit after the
penalty, first index on ties (as torch.argmax, and transformers' greedy search).
"""
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40  # 0: no limit
    top_p: float = 0.95  # 1.0: no limit
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64  # how many previous tokens the penalty looks at (0: all)
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def apply_repeat_penalty(logits: torch.Tensor, history: list[int], penalty: float, last_n: int) -> torch.Tensor:
    """Make tokens already seen less likely: positive logits divided by the penalty, negative multiplied."""
    if penalty == 1.0 or not history:
        return logits
    seen = torch.tensor(sorted(set(history[-last_n:] if last_n > 0 else history)), dtype=torch.long)
    values = logits[seen]
    logits = logits.clone()
    logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits with every token outside the top-k and outside the top-p mass set to -inf."""
    if top_k > 0 and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
        drop = before >= top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        self.generator = torch.Generator().manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor, history: list[int]) -> int:
        """logits [vocab] (any device) -> the next token id."""
        p = self.params
        logits = apply_repeat_penalty(logits.detach().float().cpu(), history, p.repeat_penalty, p.repeat_last_n)
        if p.greedy:
            return int(torch.argmax(logits))
        logits = filter_top_k_top_p(logits, p.top_k, p.top_p) / p.temperature
        probs = logits.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def generate_tokens(model, prompt_ids: list[int], max_new_tokens: int, params: SamplingParams,
                    stop_ids=()) -> Iterator[int]:
    """Yield new token ids one by one: the prompt in one forward pass, then one pass per token."""
    if not prompt_ids:
        raise ValueError("the prompt has no tokens")
    total = min(len(prompt_ids) + max_new_tokens, model.config.context_limit)
    if len(prompt_ids) >= total:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the model's context is "
                         f"{model.config.context_limit}")
    cache = model.new_cache(max_len=total)
    sample = Sampler(params)
    history = list(prompt_ids)
    logits = model(torch.tensor([prompt_ids]), cache, logits_for=slice(-1, None))[0, -1]
    while True:
        token = sample(logits, history)
        history.append(token)
        yield token
        if token in stop_ids or len(history) >= total:
            return
        logits = model(torch.tensor([[token]]), cache)[0, -1]
