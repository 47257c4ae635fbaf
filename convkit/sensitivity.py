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


def output_kld(model_path, text_file: str, probes: list, *, n_ctx: int = 512, n_chunks: int = 4,
               quiet: bool = False) -> dict:
    """{key: mean KLD of the next-token distribution when only weight `name` is replaced}
    for each (key, name, rounding) of `probes`; rounding: float32 rows [rows, n] of the stored
    weight -> the rounded rows. Names the runtime does not hold apart are left out."""
    from convkit.eval.perplexity import ChunkPlan, read_text, tokenize_for_perplexity
    from convkit.progress import progress
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
    bar = progress(total=len(probes), quiet=quiet, unit="probe", desc="sensitivity")
    try:
        for key, name, rounding in probes:
            bar.update(1)
            swap = _swapper(model, slices, name)
            if swap is None:
                continue
            restore = swap(rounding)
            try:
                kl = [(b.exp() * (b - q)).sum(-1).mean().item() for b, q in zip(base, logprobs())]
            finally:
                restore()
            out[key] = float(np.mean(kl))
    finally:
        bar.close()
    return out


def _swapper(model, slices, name):
    """A function that puts rounding(weight) in place of `name` and returns how to undo it."""
    from gguf import GGMLQuantizationType

    from convkit.runtime.linear import QTensor, kept_form

    tied = model.lm_head.weight is model.tok_embd.weight
    if name == "token_embd.weight":
        embd, head = model.tok_embd, model.lm_head

        def swap(rounding):
            stored, kept = embd.weight, head._dense
            w = stored.dequantize(torch.float32).float()
            rounded = torch.from_numpy(np.asarray(rounding(w.numpy()), dtype=np.float32).reshape(w.shape))
            embd.weight = QTensor(rounded, GGMLQuantizationType.F32)
            if tied:
                head._dense = kept_form(rounded)

            def restore():
                embd.weight, head._dense = stored, kept
            return restore
        return swap
    if name not in slices:
        return None
    layer, r0, r1 = slices[name]

    def swap(rounding):
        kept = layer._dense
        dense = layer.dense_weight(torch.float32).float()
        rounded = dense.clone()
        w = dense[r0:r1].numpy()
        rounded[r0:r1] = torch.from_numpy(np.asarray(rounding(w), dtype=np.float32).reshape(w.shape))
        layer._dense = kept_form(rounded)

        def restore():
            layer._dense = kept
        return restore
    return swap
