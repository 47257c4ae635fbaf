"""An importance matrix as llama-imatrix collects it: the runtime over a text in llama.cpp's
chunks, each linear input's squared activations summed (convkit/runtime/imatrix.py), written
in the GGUF or legacy format. `convkit imatrix` and `drift --calibrate` call it."""
import time

from convkit.errors import ConvkitError

UBATCH_TOKENS = 512  # llama-imatrix's default micro-batch: chunks shorter than this share a pass


def make_imatrix(model, text_file, output, *, n_ctx=512, n_chunks=None, process_output=False, fmt="gguf",
                 device="cpu", precision="fp32", numerics="fp", dequantize_all=False, quiet=False) -> dict:
    """Write MODEL's importance matrix over `text_file` to `output`; the result summary."""
    from quant.imatrix import from_statistics, write_imatrix

    from convkit.atomic import atomic_path
    from convkit.eval.perplexity import plan_chunks, read_text, tokenize_for_perplexity
    from convkit.progress import progress
    from convkit.runtime.imatrix import collect
    from convkit.runtime.open import check_context, open_model

    if n_ctx < 4:
        raise ConvkitError(f"--ctx {n_ctx}: too small; use at least 4 (default 512)")
    text = read_text(text_file)
    started = time.perf_counter()
    net, tok = open_model(model, device, precision, numerics, dequantize_all)
    check_context(net, n_ctx, model)
    tokens = tokenize_for_perplexity(tok, text)
    if len(tokens) < 2 * n_ctx:  # imatrix.cpp's own requirement
        raise ConvkitError(f"{text_file} tokenizes to {len(tokens)} tokens; an imatrix with --ctx {n_ctx} needs "
                           f"at least {2 * n_ctx}: give a longer text or a smaller --ctx")
    bos = tok.bos_id if tok.add_bos else None
    plan = plan_chunks(len(tokens), n_ctx, n_chunks, bos, source=text_file)
    loaded = time.perf_counter()

    bar = progress(total=plan.n_chunks, quiet=quiet, desc="chunks", unit="chunk")
    stats = collect(net, tokens, plan, process_output=process_output,
                    chunks_per_pass=max(1, UBATCH_TOKENS // n_ctx), on_chunks=bar.update)
    bar.close()
    seconds = time.perf_counter() - loaded
    if not stats:
        raise ConvkitError(f"{model}: no product had the 16 tokens llama-imatrix needs; use a larger --ctx")
    chunk_count = max(count for _, count in stats.values()) // n_ctx  # imatrix.cpp's m_last_chunk
    matrix = from_statistics({name: (sums, [count]) for name, (sums, count) in stats.items()},
                             datasets=[text_file], chunk_count=chunk_count, chunk_size=n_ctx)
    with atomic_path(output, inputs=[model, text_file]) as tmp:
        write_imatrix(tmp, matrix, fmt, chunk_size=n_ctx, dataset=text_file)

    n_tokens = plan.n_chunks * n_ctx
    return {
        "model": str(model), "text": text_file, "output": output, "format": fmt, "n_ctx": n_ctx,
        "chunks": plan.n_chunks, "tokens": n_tokens, "tensors": len(stats), "chunk_count": chunk_count,
        "process_output": process_output, "numerics": numerics, "precision": precision, "device": device,
        "seconds": round(seconds, 3), "load_seconds": round(loaded - started, 3),
        "tokens_per_second": round(n_tokens / seconds, 2) if seconds > 0 else None,
    }
