"""`convkit generate MODEL -p PROMPT`: continue a prompt, streaming tokens as they come."""
import sys
import time

import click

from convkit.errors import ConvkitError
from convkit.output import emit


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("-p", "--prompt", required=True, help="Text to continue (special tokens such as <|im_start|> are recognised).")
@click.option("-n", "--max-tokens", default=128, show_default=True, type=click.IntRange(1), help="Tokens to generate at most.")
@click.option("--temperature", default=0.8, show_default=True, type=click.FloatRange(0), help="0 means greedy.")
@click.option("--greedy", is_flag=True, help="Always take the most likely token (same as --temperature 0).")
@click.option("--top-k", default=40, show_default=True, type=click.IntRange(0), help="0: no limit.")
@click.option("--top-p", default=0.95, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--repeat-penalty", default=1.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="1.0: off; >1 discourages tokens seen in the last --repeat-last-n tokens.")
@click.option("--repeat-last-n", default=64, show_default=True, type=click.IntRange(0), help="0: the whole history.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same text.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--dequantize-all", is_flag=True, help="Dequantize every weight once at load (more memory; faster "
              "only for products that run on dense weights).")
@click.option("--numerics", type=click.Choice(["auto", "float", "ggml"]), default="auto", show_default=True,
              help="float: weights dequantized, float products. ggml: llama.cpp's CPU arithmetic (activations "
                   "quantized to Q8, block products read the quantized weights). auto: ggml on CPU in fp32 when "
                   "the weights have compiled block products (fastest, least memory), else float.")
@click.option("--no-bos", is_flag=True, help="Never put BOS before the prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document at the end instead of streaming.")
@click.option("-q", "--quiet", is_flag=True, help="No statistics on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Say which kernel path this CPU takes for bf16 products.")
def generate(model, prompt, max_tokens, temperature, greedy, top_k, top_p, repeat_penalty, repeat_last_n,
             seed, device, precision, dequantize_all, numerics, no_bos, as_json, quiet, verbose):
    """Generate text from MODEL (a .gguf file or an HF checkpoint directory)."""
    from convkit.commands.perplexity import say_cpu_path
    from convkit.runtime import load_model
    from convkit.runtime.cpu_paths import describe_cpu_path
    from convkit.runtime.load import check_model, resolve_device
    from convkit.runtime.sampling import SamplingParams, generate_tokens
    from convkit.runtime.tokenizer import load_tokenizer

    started = time.perf_counter()
    resolve_device(device)
    config = check_model(model)  # an unsupported architecture or type is named before tokenizer problems
    tok = load_tokenizer(model, config.vocab_size)  # before the model: its loader releases the parsed GGUF metadata
    if numerics == "ggml" and precision != "fp32":
        raise ConvkitError("--numerics ggml reproduces llama.cpp's float32 CPU arithmetic; use --precision fp32")
    net = load_model(model, device=device, precision=precision, dequantize_all=dequantize_all)
    numerics = choose_numerics(net, numerics, device, precision)
    say_cpu_path(device, verbose)
    ids = tok.encode(prompt, add_bos=False if no_bos else None)
    if not ids:
        raise ConvkitError("the prompt encodes to no tokens; give a non-empty --prompt")
    if len(ids) >= net.config.context_limit:
        raise ConvkitError(f"the prompt has {len(ids)} tokens but the model's context is "
                           f"{net.config.context_limit}; shorten --prompt")
    params = SamplingParams(temperature=0.0 if greedy else temperature, top_k=top_k, top_p=top_p,
                            repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed)
    loaded = time.perf_counter()
    stream = tok.stream()
    out, stop = [], "length"
    for token in generate_tokens(net, ids, max_tokens, params, stop_ids=set(tok.eos_ids)):
        if token in tok.eos_ids:
            stop = "eos"
            break
        out.append(token)
        if not as_json:
            sys.stdout.write(stream.push(token))
            sys.stdout.flush()
    seconds = time.perf_counter() - loaded
    rate = len(out) / seconds if seconds > 0 else 0.0
    if as_json:
        emit({"model": str(model), "prompt": prompt, "prompt_tokens": len(ids), "text": tok.decode(out),
              "tokens": out, "n_tokens": len(out), "stop": stop, "seed": seed, "numerics": numerics,
              "load_seconds": round(loaded - started, 3), "seconds": round(seconds, 3),
              "tokens_per_second": round(rate, 2),
              **({"cpu_path": describe_cpu_path()} if device == "cpu" else {})}, as_json=True)
        return
    sys.stdout.write(stream.flush() + "\n")
    if not quiet:
        click.echo(f"[{len(ids)} prompt tokens, {len(out)} generated ({stop}), {rate:.1f} tokens/s, "
                   f"load {loaded - started:.1f} s, numerics {numerics}]", err=True)


def choose_numerics(net, numerics: str, device: str, precision: str) -> str:
    """Install the numerics asked for; `auto` is ggml's when the block products can run
    (CPU, float32, a weight type the compiled helper has), else float. Returns its name,
    with the block products' instruction set when they are used."""
    from quant import qdot

    from convkit.runtime.ggml_numerics import GgmlNumerics
    from convkit.runtime.quantized_products import has_block_products

    if numerics == "auto":
        fast = device == "cpu" and precision == "fp32" and has_block_products(net)
        numerics = "ggml" if fast else "float"
    if numerics == "ggml":
        net.set_numerics(GgmlNumerics())
        if device == "cpu" and has_block_products(net):
            return f"ggml (block products: {qdot.isa()})"
    return numerics
