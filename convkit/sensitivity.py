"""How much the model's output moves when one weight alone is quantized.

A linear layer's own output error (tr(E H E^T), convkit.allocate) does not reach the
logits equally from every layer: the residual stream's scale, the norms and the layers
after it amplify or damp it. Quantizing one weight alone to a probe type and measuring the
KL divergence of the model's next-token distribution from the unquantized model's, on a few
calibration chunks, gives each weight a factor: KLD per unit of its own output error. Both
are second order in the rounding error, so the factor carries to the other types.
"""
import numpy as np
import torch

from convkit.errors import ConvkitError


def _row_slices(model) -> dict:
    """GGUF weight name -> (linear layer, first row, end row) in the runtime's (fused) weights."""
    from convkit.runtime.imatrix import linear_names

    out = {}
    for layer, names in linear_names(model):
        rows = layer.out_features
        if len(names) == 1:
            out[names[0]] = (layer, 0, rows)
    return out


def output_kld(model_path, text_file: str, probes: dict, *, n_ctx: int = 512, n_chunks: int = 4,
               quiet: bool = False) -> dict:
    """{name: mean KLD of the next-token distribution when only `name` is replaced by
    probes[name]} (a function: float32 rows [rows, n] of the stored weight -> rounded rows)."""
    from convkit.eval.perplexity import ChunkPlan, read_text, tokenize_for_perplexity
    from convkit.progress import progress
    from convkit.runtime.linear import kept_form
    from convkit.runtime.open import open_model

    model, tok = open_model(str(model_path), "cpu", "fp32", "fp", True)
    n_ctx = min(n_ctx, model.config.context_limit)
    tokens = tokenize_for_perplexity(tok, read_text(text_file))
    available = len(tokens) // n_ctx
    if available < 1:
        raise ConvkitError(f"{text_file}: the calibration text is shorter than one chunk of {n_ctx} tokens")
    plan = ChunkPlan(n_ctx, min(n_chunks, available), tok.bos_id if tok.add_bos else None)
    scored = slice(plan.first, plan.n_ctx - 1)
    chunks = [torch.tensor([plan.chunk(tokens, i)], dtype=torch.long) for i in range(plan.n_chunks)]
    slices = _row_slices(model)

    def logprobs():
        with torch.inference_mode():
            return [torch.log_softmax(model(ids, logits_for=scored)[0].float(), dim=-1) for ids in chunks]

    base = logprobs()
    out = {}
    bar = progress(total=len(probes), quiet=quiet, unit="tensor", desc="sensitivity")
    try:
        for name, probe in probes.items():
            bar.update(1)
            if name not in slices:
                continue
            layer, r0, r1 = slices[name]
            kept = layer._dense
            dense = layer.dense_weight(torch.float32).float()
            w = dense[r0:r1].numpy()
            rounded = dense.clone()
            rounded[r0:r1] = torch.from_numpy(np.asarray(probe(w), dtype=np.float32).reshape(w.shape))
            layer._dense = kept_form(rounded)
            try:
                kl = [(b.exp() * (b - q)).sum(-1).mean().item() for b, q in zip(base, logprobs())]
            finally:
                layer._dense = kept
            out[name] = float(np.mean(kl))
    finally:
        bar.close()
    return out
