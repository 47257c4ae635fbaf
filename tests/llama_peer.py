"""llama.cpp as the perplexity peer: its logits for the chunks of one of our plans."""
import numpy as np
import torch


def scored_logits(llm, tokens: list[int], plan):
    """For each chunk of `plan`: llama_cpp.Llama(logits_all=True)'s float32 logits at the
    scored positions (plan.first .. n_ctx-2) and the tokens they predict, as pairs that
    convkit.eval.perplexity.perplexity_of_logits takes."""
    for i in range(plan.n_chunks):
        llm.reset()
        llm.eval(plan.chunk(tokens, i))
        scores = np.array(llm.scores[:plan.n_ctx], dtype=np.float32)
        yield torch.from_numpy(scores[plan.first:plan.n_ctx - 1].copy()), torch.tensor(plan.targets(tokens, i))
