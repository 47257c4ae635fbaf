"""convkit: tokenizers, GGUF conversion and quantization, and drift measurement."""

__version__ = "0.1.0"
