"""`convkit demo`: the whole chain on the embedded sample, with no network.

1. trains a byte-level BPE tokenizer on the sample's training text (pydoc topics) and
   checks it is the very tokenizer shipped with the sample (training is deterministic);
2. quantizes the sample model to each type and measures the drift of each against the
   unquantized model on held-out text it never saw (`convkit drift`), writing the table
   and the plot into the work directory.
"""
import time
from pathlib import Path

import click

from convkit.errors import ConvkitError

DEMO_TYPES = "f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0,q3_k_m,q2_k"
DEMO_CTX = 256  # the sample was trained on 256-token sequences


def _say(quiet, message):
    if not quiet:
        click.echo(message, err=True)


def train_demo_tokenizer(train_text: str, out: Path, sample: Path, quiet: bool) -> dict:
    from tokenizers_impl import ByteLevelBPE, formats

    from convkit.atomic import atomic_open
    from convkit.samples import SAMPLE_SPECIAL_TOKEN, SAMPLE_VOCAB_SIZE

    t0 = time.perf_counter()
    tok = ByteLevelBPE.train([train_text], vocab_size=SAMPLE_VOCAB_SIZE,
                             special_tokens=[SAMPLE_SPECIAL_TOKEN])
    seconds = time.perf_counter() - t0
    with atomic_open(out, "w", encoding="utf-8") as f:
        f.write(formats.dumps(tok, "hf"))
    shipped = formats.load(sample / "tokenizer.json")
    same = tok.vocab == shipped.vocab and list(tok.merges) == list(shipped.merges)
    if not same:
        raise ConvkitError(f"{sample / 'tokenizer.json'}: the tokenizer trained now differs from the one "
                           f"shipped with the sample; regenerate it with samples/make_sample.py")
    _say(quiet, f"[1/2] tokenizer: {len(tok.vocab)} tokens, {len(tok.merges)} merges in {seconds:.1f} s "
                f"-> {out} (identical to the sample's own tokenizer.json)")
    return {"path": str(out), "vocab_size": len(tok.vocab), "merges": len(tok.merges), "seconds": seconds}


@click.command()
@click.option("--workdir", default="convkit-demo", show_default=True, type=click.Path(path_type=Path),
              help="Where the tokenizer, quantized files, table and plot go.")
@click.option("--types", default=DEMO_TYPES, show_default=True, help="Comma-separated llama.cpp file types.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@click.option("-q", "--quiet", is_flag=True)
@click.pass_context
def demo(ctx, workdir, types, as_json, quiet):
    """Train a tokenizer, quantize the embedded sample model to several types, measure the drift."""
    from convkit.commands.drift import drift
    from convkit.samples import sample_model, split_pydoc_topics

    sample = sample_model()
    workdir.mkdir(parents=True, exist_ok=True)
    train_text, held_out = split_pydoc_topics()
    held_out_file = workdir / "held-out.txt"
    held_out_file.write_text(held_out, encoding="utf-8")

    train_demo_tokenizer(train_text, workdir / "tokenizer.json", sample, quiet or as_json)
    plot_file = workdir / "drift.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plot_file = None
        _say(quiet or as_json, "no plot: matplotlib is not installed (pip install 'convkit[plot]')")
    _say(quiet or as_json, f"[2/2] drift of {sample.name} on {held_out_file} ({len(held_out)} characters "
                           f"the model never saw), types {types}")
    ctx.invoke(drift, model=sample, types=types, text_file=str(held_out_file), n_ctx=DEMO_CTX,
               cache_dir=workdir / "cache", dequantize_all=True, plot_file=plot_file and str(plot_file),
               markdown=not as_json, as_json=as_json, quiet=quiet)
    if plot_file:
        _say(quiet or as_json, f"plot: {plot_file}")
