"""`convkit drift MODEL --types ... --text FILE`: quantize to each type and measure the drift."""
from pathlib import Path

import click

from convkit.errors import ConvkitError


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
@click.option("--calibrate", type=click.Path(path_type=Path),
              help="Calibration text: per type, llama.cpp's best (an importance matrix of this text, then "
                   "--imatrix) beside ours (quantize --calibrate), on the same chunks.")
@click.option("--imatrix", type=click.Path(path_type=Path),
              help="Importance matrix (convkit imatrix / llama-imatrix) to quantize every type with; "
                   "iq2_m and the other low types need one, as in llama.cpp.")
@click.option("--plot", "plot_file", default=None, type=click.Path(path_type=str),
              help="Write KLD and ΔPPL against bits per weight to this image (needs matplotlib).")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@click.option("-q", "--quiet", is_flag=True)
def drift(model, types, text_file, n_ctx, n_chunks, batch, cache_dir, device, numerics, dequantize_all,
          calibrate, imatrix, plot_file, markdown, as_json, quiet):
    """Quantize MODEL to each type and compare each with MODEL: size, bpw, PPL, ΔPPL, KLD, same top-1."""
    from convkit.eval import drift as d

    qtypes = d.parse_types(types or d.DEFAULT_TYPES)
    if plot_file:  # fail before hours of work, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConvkitError("--plot needs matplotlib, which is not installed; `pip install matplotlib` "
                               "or drop --plot") from None
    quiet = quiet or as_json

    def report(row):
        if not quiet:
            click.echo(f"{row.label}: PPL {row.ppl:.4f}, KLD {max(row.kld, 0.0):.6f}", err=True)

    rows, summary = d.run_drift(model, qtypes, text_file, n_ctx=n_ctx, n_chunks=n_chunks, batch=batch,
                                cache=cache_dir, device=device, numerics=numerics, dequantize_all=dequantize_all,
                                calibrate=calibrate, imatrix=imatrix, quiet=quiet, report=report)
    base_ppl, base_err = summary["ppl"], summary["ppl_err"]
    if plot_file:
        d.plot(rows, plot_file, f"{model.name}: drift by quantization type")
    if as_json:
        click.echo(d.as_json(rows, summary))
    elif markdown:
        click.echo(d.markdown_table(rows, base_ppl, base_err))
    else:
        click.echo(d.text_table(rows, base_ppl, base_err))

