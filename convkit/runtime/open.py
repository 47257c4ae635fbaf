"""Opening a model for evaluation: the checks that turn bad input into one-line errors,
then the runtime model and its tokenizer (perplexity, drift, imatrix, calibration)."""
from convkit.errors import ConvkitError


def open_model(path, device, precision, numerics, dequantize_all):
    """(model, tokenizer) after the checks that turn bad input into one-line errors."""
    from convkit.runtime import ggml_numerics  # noqa: F401  (registers --numerics ggml)
    from convkit.runtime import load_model
    from convkit.runtime.load import check_model, resolve_device
    from convkit.runtime.tokenizer import load_tokenizer

    resolve_device(device)
    if numerics == "ggml" and precision != "fp32":
        raise ConvkitError("--numerics ggml reproduces llama.cpp's float32 CPU arithmetic; use --precision fp32")
    config = check_model(path)
    tok = load_tokenizer(path, config.vocab_size)
    model = load_model(path, device=device, precision=precision, dequantize_all=dequantize_all,
                       numerics="ggml" if numerics == "ggml" else None)
    return model, tok


def check_context(model, n_ctx: int, path) -> None:
    if n_ctx > model.config.context_limit:
        raise ConvkitError(f"--ctx {n_ctx} is longer than {path}'s context of {model.config.context_limit}; "
                           f"use --ctx {model.config.context_limit} or less")
