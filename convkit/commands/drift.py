"""`convkit drift MODEL --types ... --text FILE`: quantize to each type and measure the drift."""
import hashlib
from pathlib import Path

import click

from convkit.errors import ConvkitError


def _evaluate(model_path, tokens, plan, batch, device, numerics, dequantize_all, base=None,
              base_target=None, quiet=False, label=""):
    """Run one model over the plan: PPL accumulator, and KLD against `base` (a drift.BaseLogits),
    or, with `base_target`, the model's logits and exact NLLs saved as the base."""
    import torch

    from convkit.atomic import atomic_open
    from convkit.commands.perplexity import open_model
    from convkit.eval import kld as kldmod
    from convkit.eval.perplexity import PerplexityAccumulator, chunk_logits, token_nll
    from convkit.progress import progress

    net, _ = open_model(model_path, device, "fp32", numerics, dequantize_all)
    acc, kacc = PerplexityAccumulator(), kldmod.KLDAccumulator()
    bar = progress(total=plan.n_chunks, quiet=quiet, desc=label, unit="chunk")
    if base_target is not None:
        nlls = []
        with atomic_open(base_target.logits, "wb") as f:
            writer = kldmod.LogitsWriter(f, plan.n_ctx, net.config.vocab_size, plan.n_chunks, tokens)
            for c in chunk_logits(net, tokens, plan, batch):
                nlls.append(token_nll(c.logits, c.targets))
                acc.add(nlls[-1])
                writer.add(c.logits)
                bar.update(1)
        with atomic_open(base_target.nll, "wb") as f:
            f.write(torch.stack(nlls).numpy().astype("<f8").tobytes())
    else:
        base_file, nll_base = base.file, base.nll_by_chunk()
        for c in chunk_logits(net, tokens, plan, batch):
            acc.add(token_nll(c.logits, c.targets))
            kacc.add(c.logits, base_file.chunk(c.index), c.targets, nll_base=torch.from_numpy(nll_base[c.index]))
            bar.update(1)
    bar.close()
    return acc, kacc


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--types", default=None, help="Comma-separated llama.cpp file types [default: "
              "f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0,q3_k_m,q2_k].")
@click.option("--text", "text_file", required=True, type=click.Path(path_type=str), help="UTF-8 text to score.")
@click.option("--ctx", "n_ctx", default=512, show_default=True, type=int)
@click.option("--chunks", "n_chunks", default=None, type=int, help="Score at most this many chunks.")
@click.option("--batch", default=None, type=int, help="Tokens per forward pass (see convkit perplexity).")
@click.option("--cache", "cache_dir", default=None, type=click.Path(path_type=Path),
              help="Where quantized files and base logits are kept [default: MODEL.drift beside MODEL].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--numerics", type=click.Choice(["fp", "ggml"]), default="fp", show_default=True,
              help="ggml: evaluate the quantized files with llama.cpp's CPU arithmetic.")
@click.option("--dequantize-all", is_flag=True, help="Dequantize every weight once at load (faster).")
@click.option("--plot", "plot_file", default=None, type=click.Path(path_type=str),
              help="Write KLD and ΔPPL against bits per weight to this image (needs matplotlib).")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@click.option("-q", "--quiet", is_flag=True)
def drift(model, types, text_file, n_ctx, n_chunks, batch, cache_dir, device, numerics, dequantize_all,
          plot_file, markdown, as_json, quiet):
    """Quantize MODEL to each type and compare each with MODEL: size, bpw, PPL, ΔPPL, KLD, same top-1."""
    from convkit.commands.perplexity import read_text
    from convkit.eval import drift as d
    from convkit.eval.perplexity import plan_chunks, tokenize_for_perplexity
    from convkit.runtime.load import check_model
    from convkit.runtime.tokenizer import load_tokenizer

    qtypes = d.parse_types(types or d.DEFAULT_TYPES)
    if plot_file:  # fail before hours of work, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConvkitError("--plot needs matplotlib, which is not installed; `pip install matplotlib` "
                               "or drop --plot") from None
    text = read_text(text_file)
    config = check_model(model)
    # each type's whole plan (imatrix needed, rows no block of it holds) before hours of work
    from convkit.commands.quantize import make_plan
    for qtype in qtypes:
        make_plan(model, qtype)
    tok = load_tokenizer(model, config.vocab_size)
    tokens = tokenize_for_perplexity(tok, text)
    if n_ctx > config.context_limit:
        raise ConvkitError(f"--ctx {n_ctx} is longer than {model}'s context of {config.context_limit}; "
                           f"use --ctx {config.context_limit} or less")
    plan = plan_chunks(len(tokens), n_ctx, n_chunks, tok.bos_id if tok.add_bos else None, source=text_file)
    cache = cache_dir or model.parent / f"{model.name}.drift"
    cache.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(("%d:%d:" % (n_ctx, plan.n_chunks)).encode() + text.encode()).hexdigest()[:16]
    base = d.BaseLogits(cache, digest)
    quiet = quiet or as_json
    if base.fresh(model):
        base_acc = base.accumulator()
    else:
        base_acc, _ = _evaluate(model, tokens, plan, batch, device, "fp", dequantize_all,
                                base_target=base, quiet=quiet, label="base")
    rows = []
    for qtype in qtypes:
        path = d.quantize_cached(model, qtype, cache, quiet)
        acc, kacc = _evaluate(path, tokens, plan, batch, device, numerics, dequantize_all, base=base,
                              quiet=quiet, label=qtype)
        rows.append(d.row_from_summary(qtype, path, kacc.summary()))
        if not quiet:
            click.echo(f"{qtype}: PPL {rows[-1].ppl:.4f}, KLD {max(rows[-1].kld, 0.0):.6f}", err=True)
    summary = {"model": str(model), "ppl": base_acc.ppl, "ppl_err": base_acc.uncertainty, "n_ctx": n_ctx,
            "chunks": plan.n_chunks, "scored_tokens": base_acc.count, "numerics": numerics, "text": text_file}
    if plot_file:
        d.plot(rows, plot_file, f"{model.name}: drift by quantization type")
    if as_json:
        click.echo(d.as_json(rows, summary))
    elif markdown:
        click.echo(d.markdown_table(rows, base_acc.ppl, base_acc.uncertainty))
    else:
        click.echo(d.text_table(rows, base_acc.ppl, base_acc.uncertainty))

