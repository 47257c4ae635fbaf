"""`convkit perplexity MODEL --text FILE`: llama.cpp's perplexity, and KL divergence from a base."""
import sys
import time
from pathlib import Path

import click

from convkit.errors import ConvkitError
from convkit.output import emit


def say_cpu_path(device: str, verbose: bool) -> None:
    """--verbose: one line on stderr naming the CPU's bfloat16 product path."""
    if verbose and device == "cpu":
        from convkit.runtime.cpu_paths import summary_line

        click.echo(summary_line(), err=True)


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--text", "text_file", type=click.Path(path_type=str), help="UTF-8 text to score.")
@click.option("--ctx", "n_ctx", default=512, show_default=True, type=int, help="Tokens per chunk (llama.cpp -c).")
@click.option("--chunks", "n_chunks", default=None, type=int, help="Score at most this many chunks (default: all).")
@click.option("--batch", default=None, type=int,
              help="Tokens per forward pass (llama.cpp -b): a multiple of --ctx runs several chunks at once, a "
                   "divisor feeds a chunk in pieces through the KV cache. Default: --ctx.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--numerics", type=click.Choice(["fp", "ggml"]), default="fp", show_default=True,
              help="fp: plain products in --precision; ggml: llama.cpp's CPU arithmetic (quantized "
                   "activations, fp16 KV cache), so the PPL matches llama.cpp's for the same file.")
@click.option("--dequantize-all", is_flag=True, help="Dequantize every weight once at load (faster, more memory).")
@click.option("--save-logits", type=click.Path(path_type=str),
              help="Write this run's log-probabilities as a base for --base-logits (llama.cpp's format).")
@click.option("--base-logits", type=click.Path(path_type=str),
              help="Compare with a base model's saved log-probabilities: KL divergence and friends.")
@click.option("--base", "base_model", type=click.Path(path_type=str),
              help="Compare with this base model, evaluated on the same chunks (fp32 unless --precision).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or running PPL.")
@click.option("-v", "--verbose", is_flag=True, help="Say which kernel path this CPU takes for bf16 products.")
def perplexity(model, text_file, n_ctx, n_chunks, batch, device, precision, numerics, dequantize_all,
               save_logits, base_logits, base_model, as_json, quiet, verbose):
    """Perplexity of MODEL (a .gguf file or an HF directory) on a text, as llama-perplexity computes it."""
    from convkit.atomic import atomic_open
    from convkit.eval import kld as kldmod
    from convkit.eval.perplexity import (PerplexityAccumulator, chunk_logits, plan_chunks,
                                         tokenize_for_perplexity, token_nll)
    from convkit.eval.perplexity import read_text
    from convkit.progress import progress
    from convkit.runtime.open import check_context, open_model

    if base_logits and base_model:
        raise ConvkitError("give either --base-logits or --base, not both")
    if save_logits and base_logits and Path(save_logits).resolve() == Path(base_logits).resolve():
        raise ConvkitError(f"{save_logits}: --save-logits would overwrite --base-logits; choose another file")
    base_file = kldmod.LogitsFile(base_logits) if base_logits else None
    if base_file is None and not text_file:
        raise ConvkitError("--text FILE is required (the text to score), unless --base-logits gives the tokens")
    text = read_text(text_file) if text_file and base_file is None else None
    started = time.perf_counter()
    net, tok = open_model(model, device, precision, numerics, dequantize_all)
    say_cpu_path(device, verbose)
    if base_file is not None:
        if n_ctx not in (512, base_file.n_ctx):
            raise ConvkitError(f"{base_logits}: written with --ctx {base_file.n_ctx}, not {n_ctx}; drop --ctx")
        n_ctx = base_file.n_ctx
        if base_file.n_vocab != net.config.vocab_size:
            raise ConvkitError(f"{base_logits}: vocabulary of {base_file.n_vocab} tokens, {model} has "
                               f"{net.config.vocab_size}; the base must be the same model family")
        tokens = base_file.tokens()
        want = base_file.n_chunks if n_chunks is None else min(n_chunks, base_file.n_chunks)
        plan = plan_chunks(len(tokens), n_ctx, want, None, source=str(base_logits))
    else:
        tokens = tokenize_for_perplexity(tok, text)
        check_context(net, n_ctx, model)
        plan = plan_chunks(len(tokens), n_ctx, n_chunks, None, source=str(text_file))
    check_context(net, n_ctx, model)
    if tok.add_bos and tok.bos_id is not None:
        plan = type(plan)(plan.n_ctx, plan.n_chunks, tok.bos_id)
    base_net = None
    if base_model:
        base_net, _ = open_model(base_model, device, precision, "fp", dequantize_all)
        if base_net.config.vocab_size != net.config.vocab_size:
            raise ConvkitError(f"{base_model}: vocabulary of {base_net.config.vocab_size} tokens, {model} has "
                               f"{net.config.vocab_size}; the base must be the same model family")
    loaded = time.perf_counter()

    acc = PerplexityAccumulator()
    kacc = kldmod.KLDAccumulator() if (base_file or base_net) else None
    save_ctx = atomic_open(save_logits, "wb", inputs=[model]) if save_logits else None
    writer_file = save_ctx.__enter__() if save_ctx else None
    try:
        writer = (kldmod.LogitsWriter(writer_file, n_ctx, net.config.vocab_size, plan.n_chunks, tokens)
                  if writer_file else None)
        base_iter = chunk_logits(base_net, tokens, plan, batch) if base_net is not None else None
        bar = progress(total=plan.n_chunks, quiet=quiet or as_json, desc="chunks", unit="chunk")
        for chunk in chunk_logits(net, tokens, plan, batch):
            acc.add(token_nll(chunk.logits, chunk.targets))
            if writer:
                writer.add(chunk.logits)
            if base_file is not None:
                kacc.add(chunk.logits, base_file.chunk(chunk.index), chunk.targets)
            elif base_iter is not None:
                base = next(base_iter)
                kacc.add(chunk.logits, torch_log_softmax(base.logits), chunk.targets, floor=None)
            bar.update(1)
            if not (quiet or as_json):
                bar.write(f"[{chunk.index + 1}]{acc.ppl:.4f}", file=sys.stderr)
        bar.close()
    except BaseException:
        if save_ctx:
            save_ctx.__exit__(*sys.exc_info())
        raise
    if save_ctx:
        save_ctx.__exit__(None, None, None)
    seconds = time.perf_counter() - loaded
    n_tokens = plan.n_chunks * n_ctx
    result = {
        "model": str(model), "text": text_file, "n_ctx": n_ctx, "chunks": plan.n_chunks,
        "scored_tokens": acc.count, "ppl": acc.ppl, "ppl_err": acc.uncertainty,
        "running_ppl": [round(x, 6) for x in acc.running], "numerics": numerics, "precision": precision,
        "device": device, "seconds": round(seconds, 3), "load_seconds": round(loaded - started, 3),
        "tokens_per_second": round(n_tokens / seconds, 2) if seconds > 0 else None,
    }
    if device == "cpu":
        from convkit.runtime.cpu_paths import describe_cpu_path

        result["cpu_path"] = describe_cpu_path()
    if save_logits:
        result["saved_logits"] = save_logits
    lines = [f"Final estimate: PPL = {acc.ppl:.4f} +/- {acc.uncertainty:.5f}",
             f"[{plan.n_chunks} chunks of {n_ctx} tokens, {acc.count} scored, "
             f"{result['tokens_per_second']} tokens/s, numerics {numerics}, {precision}, {device}]"]
    if kacc is not None:
        summary = kacc.summary()
        result["kld"] = summary
        result["base"] = str(base_logits or base_model)
        lines = [kldmod.format_summary(summary), ""] + lines
    emit(result, as_json=as_json, text="\n".join(lines))


def torch_log_softmax(logits):
    import torch

    return torch.log_softmax(logits.float(), dim=-1)
