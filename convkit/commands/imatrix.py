"""`convkit imatrix MODEL --text FILE -o imatrix.gguf`: llama-imatrix's importance matrix."""
import click

from convkit.output import emit


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
    from convkit.importance import make_imatrix

    result = make_imatrix(model, text_file, output, n_ctx=n_ctx, n_chunks=n_chunks, process_output=process_output,
                          fmt=fmt, device=device, precision=precision, numerics=numerics,
                          dequantize_all=dequantize_all, quiet=quiet or as_json)
    emit(result, as_json=as_json,
         text=f"wrote {output}: {result['tensors']} tensors over {result['chunks']} chunks of {n_ctx} tokens "
              f"({result['tokens_per_second']} tokens/s, numerics {numerics}, {precision}, {device})")
