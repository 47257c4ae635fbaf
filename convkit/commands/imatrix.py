"""`convkit imatrix MODEL --text FILE -o imatrix.gguf`: llama-imatrix's importance matrix."""
import time

import click

from convkit.errors import ConvkitError
from convkit.output import emit

UBATCH_TOKENS = 512  # llama-imatrix's default micro-batch: chunks shorter than this share a pass


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--text", "text_file", required=True, type=click.Path(path_type=str),
              help="UTF-8 calibration text (llama-imatrix -f).")
@click.option("-o", "--output", default="imatrix.gguf", show_default=True, type=click.Path(path_type=str),
              help="Where to write the matrix.")
@click.option("--ctx", "n_ctx", default=512, show_default=True, type=int, help="Tokens per chunk (llama.cpp -c).")
@click.option("--chunks", "n_chunks", default=None, type=int, help="Use at most this many chunks (default: all).")
@click.option("--process-output", is_flag=True, help="Also collect output.weight (an untied output head).")
@click.option("--output-format", "fmt", type=click.Choice(["gguf", "dat"]), default="gguf", show_default=True,
              help="gguf: llama-imatrix's default format; dat: the legacy format.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--numerics", type=click.Choice(["fp", "ggml"]), default="fp", show_default=True,
              help="fp: plain products in --precision; ggml: llama.cpp's CPU arithmetic (quantized "
                   "activations, fp16 KV cache), so the activations follow llama.cpp's more closely.")
@click.option("--dequantize-all", is_flag=True, help="Dequantize every weight once at load (faster, more memory).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def imatrix(model, text_file, output, n_ctx, n_chunks, process_output, fmt, device, precision, numerics,
            dequantize_all, as_json, quiet):
    """Importance matrix of MODEL (.gguf or HF directory) over a text, as llama-imatrix collects it.

    The file is what `llama-quantize --imatrix` and `convkit quantize --imatrix` read."""
    from quant.imatrix import from_statistics, write_imatrix

    from convkit.atomic import atomic_path
    from convkit.commands.perplexity import check_context, open_model, read_text
    from convkit.eval.perplexity import plan_chunks, tokenize_for_perplexity
    from convkit.progress import progress
    from convkit.runtime.imatrix import collect

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

    bar = progress(total=plan.n_chunks, quiet=quiet or as_json, desc="chunks", unit="chunk")
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
    result = {
        "model": str(model), "text": text_file, "output": output, "format": fmt, "n_ctx": n_ctx,
        "chunks": plan.n_chunks, "tokens": n_tokens, "tensors": len(stats), "chunk_count": chunk_count,
        "process_output": process_output, "numerics": numerics, "precision": precision, "device": device,
        "seconds": round(seconds, 3), "load_seconds": round(loaded - started, 3),
        "tokens_per_second": round(n_tokens / seconds, 2) if seconds > 0 else None,
    }
    emit(result, as_json=as_json,
         text=f"wrote {output}: {len(stats)} tensors over {plan.n_chunks} chunks of {n_ctx} tokens "
              f"({result['tokens_per_second']} tokens/s, numerics {numerics}, {precision}, {device})")
